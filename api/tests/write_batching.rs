//! Write coalescing on every scheduler: with 64 calls in flight, client requests and server
//! replies are written many frames per write syscall, on a current-thread tokio runtime, a
//! multi-thread tokio runtime with one, two and four workers, and smol with one, two and four
//! executor threads; with one call in flight nothing waits (no added latency). Read through
//! the connection counters, not timed.

mod common;

use common::{
    connect, eventually, run_smol_with, run_tokio_with, serve, Echo, Env, SmolEnv, TokioEnv,
};
use flumen::{
    stream::{Bytes, ConnectionStats, Dispatch, Reply, Request},
    ClientConfig, ServerConfig, Status,
};

/// Calls in flight, as in the benchmark's headline row.
const IN_FLIGHT: usize = 64;
/// Calls each caller makes.
const CALLS_EACH: usize = 300;
/// The least average frames per write the test accepts, client and server.
const MIN_FRAMES_PER_WRITE: f64 = 8.0;

/// Runs 64 callers in a loop and returns the client's and the server's counters.
async fn load<E: Env>(env: E) -> (ConnectionStats, ConnectionStats) {
    load_with(env, Echo).await
}

/// [`load`] against `dispatch`.
async fn load_with<E: Env, D: Dispatch>(env: E, dispatch: D) -> (ConnectionStats, ConnectionStats) {
    let server = serve(&env, dispatch, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let (done, finished) = smol::channel::bounded::<()>(IN_FLIGHT);
    for task in 0..IN_FLIGHT {
        let (client, done) = (client.clone(), done.clone());
        env.spawn(async move {
            for i in 0..CALLS_EACH {
                let body = Bytes::from(vec![(task + i) as u8; 32]);
                let reply = client.raw().call(1, body.clone()).await.unwrap();
                assert_eq!(reply, body);
            }
            let _ = done.send(()).await;
        });
    }
    for _ in 0..IN_FLIGHT {
        finished.recv().await.unwrap();
    }
    // A writer counts its last batch once that batch's write returns, which can be after the
    // peer answered it: wait until every request and every reply is counted.
    let calls = (IN_FLIGHT * CALLS_EACH) as u64;
    eventually(&env, "the last batches counted", || {
        client.raw().stats().frames_written >= calls && server.stats().io.frames_written >= calls
    })
    .await;
    let client_stats = client.raw().stats();
    let server_stats = server.stats().io;
    (client_stats, server_stats)
}

fn check(setup: &str, (client, server): (ConnectionStats, ConnectionStats)) {
    let calls = (IN_FLIGHT * CALLS_EACH) as u64;
    println!(
        "{setup}: client {:.1} frames/write ({} writes, {} direct), server {:.1} frames/write ({} writes, {} direct)",
        client.frames_per_write(),
        client.writes,
        client.direct_writes,
        server.frames_per_write(),
        server.writes,
        server.direct_writes
    );
    // Every request and every reply went through the counters.
    assert_eq!(client.frames_read, calls, "{setup}: replies read");
    assert!(server.frames_read >= calls, "{setup}: requests read");
    for (side, stats) in [("client", client), ("server", server)] {
        assert!(
            stats.frames_per_write() >= MIN_FRAMES_PER_WRITE,
            "{setup}: {side} wrote {:.2} frames per write ({} frames, {} writes)",
            stats.frames_per_write(),
            stats.frames_written,
            stats.writes
        );
        // With calls in flight the writer task writes most batches: a producer writes its
        // own frames only when it finds itself alone (the last calls, or a read that brought
        // one request, which a loaded multi-thread runtime makes common on the server).
        assert!(
            stats.direct_writes * 4 <= stats.writes * 3,
            "{setup}: {side} made {} of its {} writes from producers' tasks at {IN_FLIGHT} in flight",
            stats.direct_writes,
            stats.writes
        );
    }
}

fn tokio(workers: Option<usize>) {
    let (report, result) = std::sync::mpsc::channel();
    run_tokio_with(workers, |env: TokioEnv| async move {
        report.send(load(env).await).unwrap();
    });
    let setup = match workers {
        Some(n) => format!("tokio multi-thread, {n} worker(s)"),
        None => "tokio current-thread".to_string(),
    };
    check(&setup, result.recv().unwrap());
}

fn smol(threads: usize) {
    let (report, result) = std::sync::mpsc::channel();
    run_smol_with(threads, |env: SmolEnv| async move {
        report.send(load(env).await).unwrap();
    });
    check(
        &format!("smol, {threads} thread(s)"),
        result.recv().unwrap(),
    );
}

/// Runs `test` on a multi-thread tokio runtime with two workers; returns its counters.
fn on_tokio<Fut>(test: impl FnOnce(TokioEnv) -> Fut) -> (ConnectionStats, ConnectionStats)
where
    Fut: std::future::Future<Output = (ConnectionStats, ConnectionStats)> + Send + 'static,
{
    let (report, result) = std::sync::mpsc::channel();
    run_tokio_with(Some(2), |env: TokioEnv| {
        let run = test(env);
        async move { report.send(run.await).unwrap() }
    });
    result.recv().unwrap()
}

/// Runs `test` on smol with two executor threads; returns its counters.
fn on_smol<Fut>(test: impl FnOnce(SmolEnv) -> Fut) -> (ConnectionStats, ConnectionStats)
where
    Fut: std::future::Future<Output = (ConnectionStats, ConnectionStats)> + Send + 'static,
{
    let (report, result) = std::sync::mpsc::channel();
    run_smol_with(2, |env: SmolEnv| {
        let run = test(env);
        async move { report.send(run.await).unwrap() }
    });
    result.recv().unwrap()
}

#[test]
fn tokio_current_thread_batches_writes() {
    tokio(None);
}

#[test]
fn tokio_one_worker_batches_writes() {
    tokio(Some(1));
}

#[test]
fn tokio_two_workers_batch_writes() {
    tokio(Some(2));
}

#[test]
fn tokio_four_workers_batch_writes() {
    tokio(Some(4));
}

#[test]
fn smol_one_thread_batches_writes() {
    smol(1);
}

#[test]
fn smol_two_threads_batch_writes() {
    smol(2);
}

#[test]
fn smol_four_threads_batch_writes() {
    smol(4);
}

/// One caller, one call at a time: each request is written as soon as it is queued. The writer
/// never yields waiting for more (nothing is expected), so coalescing adds no latency here;
/// and the writer tasks are not even woken: the caller writes its request, the server's
/// reader its reply.
async fn one_at_a_time<E: Env, D: Dispatch>(
    env: E,
    dispatch: D,
) -> (ConnectionStats, ConnectionStats) {
    let server = serve(&env, dispatch, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    for i in 0..CALLS_EACH {
        let body = Bytes::from(vec![i as u8; 32]);
        assert_eq!(client.raw().call(1, body.clone()).await.unwrap(), body);
    }
    // The last request is counted once its write returns, which can be after the reply came.
    eventually(&env, "the last request counted", || {
        client.raw().stats().frames_written >= CALLS_EACH as u64
    })
    .await;
    (client.raw().stats(), server.stats().io)
}

fn check_one_at_a_time(setup: &str, (client, server): (ConnectionStats, ConnectionStats)) {
    println!(
        "{setup}, one in flight: {} writes, {} yields, {} written by the caller, {} by the server's reader",
        client.writes, client.coalesce_yields, client.direct_writes, server.direct_writes
    );
    assert_eq!(client.frames_written, CALLS_EACH as u64, "{setup}");
    assert_eq!(
        client.writes, CALLS_EACH as u64,
        "{setup}: one write per call"
    );
    assert_eq!(client.coalesce_yields, 0, "{setup}: the writer waited");
    // Nearly every write skips the writer task: one that comes while the writer task is
    // awake for something else (giving back buffers after a quiet spell) goes through it.
    for (side, stats) in [("client", client), ("server", server)] {
        assert!(
            stats.direct_writes >= CALLS_EACH as u64 * 9 / 10,
            "{setup}: {side}: {} of {CALLS_EACH} calls written without the writer task",
            stats.direct_writes
        );
    }
}

#[test]
fn one_call_in_flight_is_written_at_once_on_tokio() {
    check_one_at_a_time(
        "tokio multi-thread, 2 workers",
        on_tokio(|env| one_at_a_time(env, Echo)),
    );
}

#[test]
fn one_call_in_flight_is_written_at_once_on_smol() {
    check_one_at_a_time("smol, 2 threads", on_smol(|env| one_at_a_time(env, Echo)));
}

/// Echoes after yielding once, so that every call runs in a task of its own.
struct YieldingEcho;

impl Dispatch for YieldingEcho {
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, Status>> + Send>>;

    fn dispatch(&self, request: Request) -> Self::Future {
        Box::pin(async move {
            smol::future::yield_now().await;
            Ok(request.into_body().into())
        })
    }
}

/// The reply of the only handler running is written from the handler's own task.
#[test]
fn the_only_running_handler_writes_its_reply_on_tokio() {
    check_one_at_a_time(
        "tokio multi-thread, 2 workers, handler tasks",
        on_tokio(|env| one_at_a_time(env, YieldingEcho)),
    );
}

#[test]
fn the_only_running_handler_writes_its_reply_on_smol() {
    check_one_at_a_time(
        "smol, 2 threads, handler tasks",
        on_smol(|env| one_at_a_time(env, YieldingEcho)),
    );
}

/// A blocking caller with the only call in flight writes its request from its own thread.
async fn one_blocking_call_at_a_time<E: Env>(env: E) -> (ConnectionStats, ConnectionStats) {
    let server = serve(&env, Echo, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let (done, finished) = smol::channel::bounded(1);
    let caller = client.clone();
    std::thread::spawn(move || {
        for i in 0..CALLS_EACH {
            let body = Bytes::from(vec![i as u8; 32]);
            assert_eq!(caller.raw().call_blocking(1, body.clone()).unwrap(), body);
        }
        done.send_blocking(()).unwrap();
    });
    finished.recv().await.unwrap();
    eventually(&env, "the last request counted", || {
        client.raw().stats().frames_written >= CALLS_EACH as u64
    })
    .await;
    (client.raw().stats(), server.stats().io)
}

#[test]
fn a_lone_blocking_call_is_written_by_its_thread_on_tokio() {
    check_one_at_a_time(
        "tokio multi-thread, 2 workers, blocking caller",
        on_tokio(one_blocking_call_at_a_time),
    );
}

#[test]
fn a_lone_blocking_call_is_written_by_its_thread_on_smol() {
    check_one_at_a_time(
        "smol, 2 threads, blocking caller",
        on_smol(one_blocking_call_at_a_time),
    );
}

/// Handlers in tasks of their own, 64 calls in flight: a handler writes its reply from its
/// own task only when it is the only call running, so nearly all replies go through the
/// writer task. (Frames per write are not asserted here: on a multi-thread tokio runtime
/// nothing holds a batch for replies from handler tasks, and the writer, run at once by the
/// first handler that wakes it, writes about two a time.)
fn check_handler_tasks(setup: &str, (client, server): (ConnectionStats, ConnectionStats)) {
    let calls = (IN_FLIGHT * CALLS_EACH) as u64;
    println!(
        "{setup}: client {} direct writes, server {} direct writes, {:.1} frames/write",
        client.direct_writes,
        server.direct_writes,
        server.frames_per_write()
    );
    assert_eq!(client.frames_read, calls, "{setup}: replies read");
    for (side, stats) in [("client", client), ("server", server)] {
        assert!(
            stats.direct_writes <= calls / 20,
            "{setup}: {side} wrote {} times from producers' tasks at {IN_FLIGHT} in flight",
            stats.direct_writes
        );
    }
}

#[test]
fn handler_tasks_leave_their_replies_to_the_writer_on_tokio() {
    check_handler_tasks(
        "tokio multi-thread, 2 workers, handler tasks",
        on_tokio(|env| load_with(env, YieldingEcho)),
    );
}

#[test]
fn handler_tasks_leave_their_replies_to_the_writer_on_smol() {
    check_handler_tasks(
        "smol, 2 threads, handler tasks",
        on_smol(|env| load_with(env, YieldingEcho)),
    );
}
