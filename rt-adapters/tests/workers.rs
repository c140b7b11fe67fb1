//! `Workers`, the smol executor that keeps woken tasks local: every task runs, whoever spawns
//! or wakes it, also when every worker was asleep; tasks that need each other run side by
//! side; two tasks waking each other stay on one thread; a panic costs only its task; a stop
//! (from outside or from one of its tasks) drops every task still waiting or queued.
#![cfg(feature = "smol")]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use flumen_rt::Workers;
use flumen_stream::Runtime;

/// How long a test waits for what it expects before it fails.
const LIMIT: Duration = Duration::from_secs(20);

/// Counts its drops.
struct Dropped(Arc<AtomicUsize>);

/// Says when it is dropped.
struct Told(mpsc::Sender<()>);

impl Drop for Told {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn every_task_runs_whoever_spawns_it() {
    let workers = Workers::new(2).unwrap();
    let rt = workers.runtime();
    let ran = Arc::new(AtomicUsize::new(0));
    let (done, finished) = mpsc::channel();
    const TASKS: usize = 2_000;
    for _ in 0..TASKS {
        let (inner, ran, done) = (rt.clone(), ran.clone(), done.clone());
        // Spawned from this thread; each spawns another from a worker.
        rt.spawn(async move {
            ran.fetch_add(1, Ordering::SeqCst);
            inner.spawn(async move {
                if ran.fetch_add(1, Ordering::SeqCst) + 1 == 2 * TASKS {
                    let _ = done.send(());
                }
            });
        });
    }
    finished.recv_timeout(LIMIT).expect("every task ran");
    assert_eq!(ran.load(Ordering::SeqCst), 2 * TASKS);
    assert_eq!(workers.stats().spawned, 2 * TASKS as u64);
}

#[test]
fn two_tasks_that_block_on_each_other_run_on_two_threads() {
    // Each task blocks its thread until the other answers: they finish only if an idle
    // worker takes the second task while the first holds the other.
    let workers = Workers::new(2).unwrap();
    let rt = workers.runtime();
    let (to_b, from_a) = mpsc::channel::<()>();
    let (to_a, from_b) = mpsc::channel::<()>();
    let (done, finished) = mpsc::channel();
    let done_b = done.clone();
    rt.spawn(async move {
        to_b.send(()).unwrap();
        let _ = done.send(from_b.recv_timeout(LIMIT).is_ok());
    });
    rt.spawn(async move {
        let answered = from_a.recv_timeout(LIMIT).is_ok() && to_a.send(()).is_ok();
        let _ = done_b.send(answered);
    });
    for _ in 0..2 {
        assert!(finished.recv_timeout(2 * LIMIT).unwrap(), "the tasks met");
    }
}

#[test]
fn tasks_woken_by_a_worker_stay_on_it() {
    // Two tasks wake each other 10,000 times; each wake queues the other task on the waking
    // worker, so the idle worker is not woken for them.
    let workers = Workers::new(2).unwrap();
    let rt = workers.runtime();
    let (ping, pinged) = smol::channel::bounded::<u32>(1);
    let (pong, ponged) = smol::channel::bounded::<u32>(1);
    let (done, finished) = mpsc::channel();
    const ROUNDS: u32 = 10_000;
    rt.spawn(async move {
        while let Ok(n) = pinged.recv().await {
            if pong.send(n).await.is_err() {
                break;
            }
        }
    });
    rt.spawn(async move {
        for n in 0..ROUNDS {
            ping.send(n).await.unwrap();
            assert_eq!(ponged.recv().await.unwrap(), n);
        }
        let _ = done.send(());
    });
    finished.recv_timeout(LIMIT).expect("the rounds finished");
    let woken = workers.stats().woken_workers;
    // The two spawns from this thread may each wake a worker; the rounds wake none.
    assert!(
        woken <= 4,
        "{woken} wake-ups of a sleeping worker for {ROUNDS} rounds"
    );
}

#[test]
fn a_panicking_task_leaves_its_worker_running() {
    let workers = Workers::new(1).unwrap();
    let rt = workers.runtime();
    let dropped = Arc::new(AtomicUsize::new(0));
    let guard = Dropped(dropped.clone());
    rt.spawn(async move {
        let _guard = guard;
        panic!("a task's panic");
    });
    let (done, finished) = mpsc::channel();
    rt.spawn(async move {
        let _ = done.send(());
    });
    finished
        .recv_timeout(LIMIT)
        .expect("the worker ran the next task");
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the panicked task was dropped"
    );
}

#[test]
fn a_stop_drops_every_waiting_task_and_what_is_spawned_later() {
    let workers = Workers::new(2).unwrap();
    let rt = workers.runtime();
    let dropped = Arc::new(AtomicUsize::new(0));
    let (started, all_started) = mpsc::channel();
    // Waits on nothing that will ever wake it.
    let (guard, tell) = (Dropped(dropped.clone()), started.clone());
    rt.spawn(async move {
        let _guard = guard;
        let _ = tell.send(());
        std::future::pending::<()>().await;
    });
    // Waits on a socket: its waker sits in the reactor, which its own future keeps.
    let (guard, tell) = (Dropped(dropped.clone()), started.clone());
    rt.spawn(async move {
        let _guard = guard;
        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _ = tell.send(());
        let _ = listener.accept().await;
    });
    // Waits on a timer an hour away.
    let (guard, tell) = (Dropped(dropped.clone()), started);
    rt.spawn(async move {
        let _guard = guard;
        let _ = tell.send(());
        smol::Timer::after(Duration::from_secs(3600)).await;
    });
    for _ in 0..3 {
        all_started.recv_timeout(LIMIT).expect("the task started");
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    drop(workers);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        3,
        "every waiting task dropped"
    );
    let polled = Arc::new(AtomicUsize::new(0));
    let (guard, flag) = (Dropped(dropped.clone()), polled.clone());
    rt.spawn(async move {
        let _guard = guard;
        flag.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        4,
        "spawned after the stop: dropped"
    );
    assert_eq!(polled.load(Ordering::SeqCst), 0, "and never run");
}

#[test]
fn sockets_and_timers_work_on_the_workers() {
    let workers = Workers::new(2).unwrap();
    let rt = workers.runtime();
    let (done, finished) = mpsc::channel();
    rt.spawn(async move {
        use smol::io::{AsyncReadExt, AsyncWriteExt};
        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = async move {
            let mut stream = smol::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(b"ping").await.unwrap();
            let mut reply = [0; 4];
            stream.read_exact(&mut reply).await.unwrap();
            reply
        };
        let server = async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0; 4];
            stream.read_exact(&mut request).await.unwrap();
            smol::Timer::after(Duration::from_millis(5)).await;
            stream.write_all(&request).await.unwrap();
        };
        let (reply, ()) = smol::future::zip(client, server).await;
        let _ = done.send(reply);
    });
    assert_eq!(&finished.recv_timeout(LIMIT).unwrap(), b"ping");
}

#[test]
fn no_wake_up_is_lost_while_the_workers_sleep() {
    // Each round starts with every worker asleep (the last one finished): a lost wake-up
    // leaves the round's task queued and the round times out.
    for n in [1, 2, 4] {
        let workers = Workers::new(n).unwrap();
        let rt = workers.runtime();
        let (done, finished) = mpsc::channel::<u32>();
        // Spawned from outside.
        for round in 0..3_000 {
            let done = done.clone();
            rt.spawn(async move {
                let _ = done.send(round);
            });
            assert_eq!(
                finished.recv_timeout(LIMIT),
                Ok(round),
                "{n} workers, spawned"
            );
        }
        // Woken from outside.
        let (poke, poked) = smol::channel::bounded::<u32>(1);
        let echo = done.clone();
        rt.spawn(async move {
            while let Ok(round) = poked.recv().await {
                let _ = echo.send(round);
            }
        });
        for round in 0..3_000 {
            smol::block_on(poke.send(round)).unwrap();
            assert_eq!(
                finished.recv_timeout(LIMIT),
                Ok(round),
                "{n} workers, woken"
            );
        }
        // Spawned by a task, which waits for it.
        for round in 0..3_000 {
            let (inner, done) = (rt.clone(), done.clone());
            rt.spawn(async move {
                let (child_done, child_finished) = smol::channel::bounded::<()>(1);
                inner.spawn(async move {
                    let _ = child_done.send(()).await;
                });
                let _ = child_finished.recv().await;
                let _ = done.send(round);
            });
            assert_eq!(
                finished.recv_timeout(LIMIT),
                Ok(round),
                "{n} workers, child"
            );
        }
    }
}

#[test]
fn a_task_spawned_by_a_task_that_then_blocks_runs_on_another_worker() {
    // The spawner blocks its thread until the spawned task has run: it must not wait in the
    // spawner's own slot or queue out of the idle worker's reach.
    let workers = Workers::new(2).unwrap();
    let rt = workers.runtime();
    let (done, finished) = mpsc::channel();
    let inner = rt.clone();
    rt.spawn(async move {
        let (ran, has_run) = mpsc::channel();
        inner.spawn(async move {
            let _ = ran.send(());
        });
        let _ = done.send(has_run.recv_timeout(LIMIT).is_ok());
    });
    assert!(
        finished.recv_timeout(2 * LIMIT).unwrap(),
        "the spawned task ran"
    );
}

#[test]
fn a_stop_from_inside_a_task_drops_every_task_left() {
    // One worker: its task queues 300 tasks (more than a local queue holds), then drops the
    // workers. Whether or not they ran, all 301 are dropped once the worker has left.
    let workers = Workers::new(1).unwrap();
    let rt = workers.runtime();
    let (dropped, told) = mpsc::channel();
    let inner = rt.clone();
    let parent = Told(dropped.clone());
    rt.spawn(async move {
        let _parent = parent;
        for _ in 0..300 {
            let child = Told(dropped.clone());
            inner.spawn(async move {
                let _child = child;
                std::future::pending::<()>().await;
            });
        }
        drop(workers);
    });
    for i in 0..301 {
        told.recv_timeout(LIMIT)
            .unwrap_or_else(|_| panic!("only {i} of 301 tasks dropped"));
    }
}
