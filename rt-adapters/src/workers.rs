//! [`Workers`]: a smol executor on several threads that keeps a woken task on the thread that
//! woke it.
//!
//! `smol::Executor` puts every woken task on one shared queue and wakes a sleeping thread for
//! it, so a task that wakes another (a connection's reader waking its writer, a reader waking
//! its callers) hands it to whichever thread looks first, often across cores, and pays a
//! futex call to do so. Here, as in tokio's multi-thread scheduler, a worker keeps what it
//! wakes: the last task it woke waits in a slot of its own and runs next, earlier ones go to
//! its local queue, and an idle worker is woken only while none is already looking for work.
//! Idle workers steal half of a busy one's queue. Timers and sockets are async-io's, as for
//! every smol executor: a worker with nothing to run waits on async-io's reactor.

use std::{
    cell::RefCell,
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
    thread,
};

use async_task::{Runnable, ScheduleInfo, WithInfo};
use concurrent_queue::ConcurrentQueue;
use parking_lot::Mutex;
use slab::Slab;

/// The most tasks a worker's local queue holds; more go to the shared queue.
///
/// Bounds what one worker can hoard (and what a thief scans); 256 is tokio's figure.
pub const LOCAL_QUEUE: usize = 256;

/// The most tasks a worker runs before it lets async-io's reactor look for I/O and checks for
/// a stop, so that a stream of ready tasks cannot starve sockets and timers.
pub const RUN_BUDGET: u32 = 64;

/// How many times in a row a worker runs the task it just woke before it turns to its queue,
/// so that two tasks waking each other cannot starve the rest.
const LIFO_RUNS: u32 = 3;

/// Every this many tasks, a worker looks at the shared queue first, so that tasks woken from
/// outside the workers are not starved by local ones.
const SHARED_EVERY: u32 = 61;

/// `n` threads running spawned tasks, each with a queue of its own (see the module docs);
/// [`runtime`](Self::runtime) is a [`SmolRuntime`](crate::SmolRuntime) spawning on them.
///
/// Dropping it stops the threads and drops every task not yet finished, including those
/// waiting on a socket or a timer; what is spawned afterwards is dropped unrun.
///
/// # Examples
///
/// ```
/// use flumen_stream::Runtime;
///
/// let workers = flumen_rt::Workers::new(2).unwrap();
/// let (done, finished) = smol::channel::bounded(1);
/// workers.runtime().spawn(async move {
///     let _ = done.send(1 + 2).await;
/// });
/// assert_eq!(smol::block_on(finished.recv()), Ok(3));
/// ```
pub struct Workers {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// What the workers, the wakers of their tasks and their runtimes share.
struct Shared {
    /// Tasks spawned or woken off the workers, and what overflows a local queue.
    injector: ConcurrentQueue<Runnable>,
    workers: Box<[Worker]>,
    /// Workers asleep, the last to fall asleep last (its cache is the warmest).
    sleepers: Mutex<Vec<usize>>,
    /// How many workers are asleep; read without the lock.
    sleeping: AtomicUsize,
    /// Workers woken to look for work that have not yet found any nor gone back to sleep.
    /// While one is looking, no other is woken: it takes the work, or wakes the next.
    searching: AtomicUsize,
    /// Every unfinished task's waker, sharded per worker, so that a stop can drop the tasks
    /// that wait on something.
    active: Box<[Mutex<Slab<Waker>>]>,
    /// Picks a shard of `active` for tasks spawned off the workers.
    next_shard: AtomicUsize,
    stopped: AtomicBool,
    counters: Counters,
}

/// One worker's part of [`Shared`].
struct Worker {
    /// Its local queue; other workers steal from it.
    local: ConcurrentQueue<Runnable>,
    /// Whether it is asleep (in `sleepers`, or about to be).
    asleep: AtomicBool,
    /// Set by whoever woke it to look for work.
    searching: AtomicBool,
    /// Wakes its thread: async-io's `block_on` waker, set while asleep.
    waker: Mutex<Option<Waker>>,
}

#[derive(Default)]
struct Counters {
    spawned: AtomicU64,
    woken_workers: AtomicU64,
    stolen: AtomicU64,
}

/// What [`Workers::stats`] counts since the workers started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Tasks spawned.
    pub spawned: u64,
    /// Times a worker asleep was woken from another thread because there was work for it
    /// (each one a futex call or a write to the reactor's notifier).
    pub woken_workers: u64,
    /// Batches of tasks an idle worker took from a busy one's queue.
    pub stolen: u64,
}

thread_local! {
    /// The worker this thread runs, if any.
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// A worker thread's own state.
struct Current {
    shared: Arc<Shared>,
    index: usize,
    /// The task this worker woke last: it runs next.
    lifo: Option<Runnable>,
}

impl Workers {
    /// Starts `n` (at least 1) worker threads named `flumen-worker-N`.
    ///
    /// # Errors
    ///
    /// If a thread cannot be made.
    pub fn new(n: usize) -> io::Result<Self> {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            injector: ConcurrentQueue::unbounded(),
            workers: (0..n)
                .map(|_| Worker {
                    local: ConcurrentQueue::bounded(LOCAL_QUEUE),
                    asleep: AtomicBool::new(false),
                    searching: AtomicBool::new(false),
                    waker: Mutex::new(None),
                })
                .collect(),
            sleepers: Mutex::new(Vec::with_capacity(n)),
            sleeping: AtomicUsize::new(0),
            searching: AtomicUsize::new(0),
            active: (0..n).map(|_| Mutex::new(Slab::new())).collect(),
            next_shard: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let mut workers = Self {
            shared,
            threads: Vec::with_capacity(n),
        };
        for index in 0..n {
            let shared = workers.shared.clone();
            let thread = thread::Builder::new()
                .name(format!("flumen-worker-{index}"))
                .spawn(move || run(shared, index))?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// A runtime spawning on these workers.
    pub fn runtime(&self) -> crate::SmolRuntime {
        crate::SmolRuntime::workers(self.spawner())
    }

    pub(crate) fn spawner(&self) -> Spawner {
        Spawner(self.shared.clone())
    }

    /// How many worker threads there are.
    pub fn len(&self) -> usize {
        self.shared.workers.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// What the workers have counted since they started.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.shared.counters;
        WorkerStats {
            spawned: c.spawned.load(Ordering::Relaxed),
            woken_workers: c.woken_workers.load(Ordering::Relaxed),
            stolen: c.stolen.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("len", &self.len())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.stopped.store(true, Ordering::SeqCst);
        for worker in shared.workers.iter() {
            if let Some(waker) = worker.waker.lock().take() {
                waker.wake();
            }
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // Every task left is queued or waits on something: woken, the latter are queued
        // too, and dropping the queued ones drops their futures (which may wake others).
        // Until no task is left (each takes itself out of `active` when dropped).
        loop {
            let mut wakers = Vec::new();
            for shard in shared.active.iter() {
                wakers.extend(shard.lock().iter().map(|(_, waker)| waker.clone()));
            }
            if wakers.is_empty() {
                break;
            }
            wakers.into_iter().for_each(Waker::wake);
            while let Ok(runnable) = shared.injector.pop() {
                drop(runnable);
            }
            for worker in shared.workers.iter() {
                while let Ok(runnable) = worker.local.pop() {
                    drop(runnable);
                }
            }
        }
    }
}

/// Spawns on [`Workers`]; held by their runtimes.
#[derive(Clone)]
pub(crate) struct Spawner(Arc<Shared>);

impl Spawner {
    /// Spawns `future`; dropped unrun once the workers have stopped.
    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shared = &self.0;
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        shared.counters.spawned.fetch_add(1, Ordering::Relaxed);
        let shard = CURRENT
            .try_with(|current| match current.try_borrow() {
                Ok(current) => current
                    .as_ref()
                    .filter(|c| Arc::ptr_eq(&c.shared, shared))
                    .map(|c| c.index),
                Err(_) => None,
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                shared.next_shard.fetch_add(1, Ordering::Relaxed) % shared.active.len()
            });
        let mut active = shared.active[shard].lock();
        let entry = active.vacant_entry();
        let key = entry.key();
        let guard = Finished {
            shared: shared.clone(),
            shard,
            key,
        };
        let future = async move {
            let _guard = guard;
            future.await;
        };
        let schedule = {
            let shared = shared.clone();
            WithInfo(move |runnable, info| shared.schedule(runnable, info))
        };
        let (runnable, task) = async_task::Builder::new()
            .propagate_panic(true)
            .spawn(|()| future, schedule);
        entry.insert(runnable.waker());
        drop(active);
        task.detach();
        runnable.schedule();
    }
}

/// Takes a task out of `active` when it finishes or is dropped.
struct Finished {
    shared: Arc<Shared>,
    shard: usize,
    key: usize,
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.shared.active[self.shard].lock().try_remove(self.key);
    }
}

impl Shared {
    /// Queues a woken task: on this worker if it is one of ours (in its slot, unless the task
    /// woke itself), on the shared queue otherwise.
    fn schedule(&self, runnable: Runnable, info: ScheduleInfo) {
        if self.stopped.load(Ordering::Acquire) {
            // The stop drops it. Not here: a waker may be woken under a lock that dropping
            // the task's future would take again.
            let _ = self.injector.push(runnable);
            return;
        }
        let mut pending = Some(runnable);
        let here = CURRENT
            .try_with(|current| {
                let mut current = current.try_borrow_mut().ok()?;
                let current = current
                    .as_mut()
                    .filter(|c| std::ptr::eq(Arc::as_ptr(&c.shared), self))?;
                let runnable = pending.take()?;
                Some(if info.woken_while_running {
                    // A task that yields goes behind the others.
                    (current.index, Some(runnable), false)
                } else {
                    (current.index, current.lifo.replace(runnable), true)
                })
            })
            .ok()
            .flatten();
        match here {
            Some((index, displaced, slotted)) => {
                if let Some(runnable) = displaced {
                    if let Err(full) = self.workers[index].local.push(runnable) {
                        let _ = self.injector.push(full.into_inner());
                    }
                    self.wake_idle();
                }
                if slotted && self.workers[index].asleep.load(Ordering::SeqCst) {
                    // Woken by I/O that this worker's thread processes while it sleeps.
                    self.wake_worker(index, false);
                }
            }
            None => {
                if let Some(runnable) = pending {
                    let _ = self.injector.push(runnable);
                    self.wake_idle();
                }
            }
        }
    }

    /// Wakes a sleeping worker to look for work, unless one is already looking or none sleeps.
    fn wake_idle(&self) {
        fence(Ordering::SeqCst);
        if self.searching.load(Ordering::SeqCst) != 0 || self.sleeping.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut sleepers = self.sleepers.lock();
        if self.searching.load(Ordering::SeqCst) != 0 {
            return;
        }
        while let Some(index) = sleepers.pop() {
            if self.workers[index].asleep.load(Ordering::SeqCst) {
                drop(sleepers);
                self.wake_worker(index, true);
                return;
            }
        }
    }

    /// Wakes worker `index` if it is asleep; `search`: to look for work (counted in
    /// `searching` until it finds some or sleeps again).
    fn wake_worker(&self, index: usize, search: bool) {
        let worker = &self.workers[index];
        if search {
            // Counted before it can be seen awake, so that no other is woken meanwhile.
            self.searching.fetch_add(1, Ordering::SeqCst);
        }
        if !worker.asleep.swap(false, Ordering::SeqCst) {
            if search {
                self.searching.fetch_sub(1, Ordering::SeqCst);
            }
            return;
        }
        self.sleeping.fetch_sub(1, Ordering::SeqCst);
        if search {
            worker.searching.store(true, Ordering::SeqCst);
            self.counters.woken_workers.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(waker) = worker.waker.lock().clone() {
            waker.wake();
        }
    }

    /// Whether any queue holds a task (a worker's own slot aside).
    fn has_work(&self) -> bool {
        !self.injector.is_empty() || self.workers.iter().any(|w| !w.local.is_empty())
    }
}

/// A worker thread: runs its loop on async-io's `block_on`, which waits on the reactor
/// whenever the loop has nothing to run.
fn run(shared: Arc<Shared>, index: usize) {
    CURRENT.with(|current| {
        *current.borrow_mut() = Some(Current {
            shared: shared.clone(),
            index,
            lifo: None,
        });
    });
    async_io::block_on(Run {
        shared,
        index,
        ticks: 0,
        lifo_runs: 0,
        rng: fastrand::Rng::new(),
    });
    // Its slot's task, if any, is dropped here (or by the stop's sweep of `active`).
    let current = CURRENT.with(|current| current.borrow_mut().take());
    drop(current);
}

/// A worker's loop, as a future.
struct Run {
    shared: Arc<Shared>,
    index: usize,
    ticks: u32,
    lifo_runs: u32,
    rng: fastrand::Rng,
}

impl Run {
    /// The next task to run: this worker's slot, its queue, the shared queue, or another
    /// worker's queue.
    fn next(&mut self) -> Option<Runnable> {
        let shared = &*self.shared;
        let own = &shared.workers[self.index].local;
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks % SHARED_EVERY == 0 {
            if let Ok(runnable) = shared.injector.pop() {
                return Some(runnable);
            }
        }
        let lifo = CURRENT.with(|current| current.borrow_mut().as_mut()?.lifo.take());
        if let Some(runnable) = lifo {
            if self.lifo_runs < LIFO_RUNS {
                self.lifo_runs += 1;
                return Some(runnable);
            }
            // Its turn is over: behind the others.
            if let Err(full) = own.push(runnable) {
                let _ = shared.injector.push(full.into_inner());
            }
        }
        self.lifo_runs = 0;
        if let Ok(runnable) = own.pop() {
            return Some(runnable);
        }
        if let Ok(runnable) = shared.injector.pop() {
            steal(&shared.injector, own, &shared.injector);
            return Some(runnable);
        }
        let n = shared.workers.len();
        let start = self.rng.usize(..n);
        for victim in (start..start + n).map(|i| i % n) {
            if victim == self.index {
                continue;
            }
            let theirs = &shared.workers[victim].local;
            if let Ok(runnable) = theirs.pop() {
                steal(theirs, own, &shared.injector);
                shared.counters.stolen.fetch_add(1, Ordering::Relaxed);
                return Some(runnable);
            }
        }
        None
    }

    /// This worker found work: if it was woken to look for some, it has stopped looking, and
    /// if it was the last one looking, another is woken for what may be left.
    fn found(&self) {
        let shared = &*self.shared;
        if shared.workers[self.index]
            .searching
            .swap(false, Ordering::SeqCst)
            && shared.searching.fetch_sub(1, Ordering::SeqCst) == 1
            && shared.has_work()
        {
            shared.wake_idle();
        }
    }

    /// Goes to sleep until `waker` is woken; false if work turned up meanwhile (it stays
    /// awake).
    fn sleep(&self, waker: &Waker) -> bool {
        let shared = &*self.shared;
        let worker = &shared.workers[self.index];
        {
            let mut slot = worker.waker.lock();
            if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *slot = Some(waker.clone());
            }
        }
        if worker.searching.swap(false, Ordering::SeqCst) {
            shared.searching.fetch_sub(1, Ordering::SeqCst);
        }
        worker.asleep.store(true, Ordering::SeqCst);
        shared.sleeping.fetch_add(1, Ordering::SeqCst);
        shared.sleepers.lock().push(self.index);
        // Whoever queued a task before seeing this worker asleep is seen here.
        fence(Ordering::SeqCst);
        let lifo = CURRENT.with(|current| {
            current
                .borrow()
                .as_ref()
                .is_some_and(|current| current.lifo.is_some())
        });
        if lifo || shared.has_work() || shared.stopped.load(Ordering::SeqCst) {
            self.wake_self();
            return false;
        }
        true
    }

    /// Marks this worker awake if it was asleep (it was woken by its own I/O, not by a
    /// `wake_worker`).
    fn wake_self(&self) {
        let shared = &*self.shared;
        if shared.workers[self.index]
            .asleep
            .swap(false, Ordering::SeqCst)
        {
            shared.sleeping.fetch_sub(1, Ordering::SeqCst);
            shared.sleepers.lock().retain(|&i| i != self.index);
        }
    }
}

impl Future for Run {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.wake_self();
        loop {
            if self.shared.stopped.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            let mut ran = 0;
            while ran < RUN_BUDGET {
                let Some(runnable) = self.next() else { break };
                if ran == 0 {
                    self.found();
                }
                runnable.run();
                ran += 1;
            }
            if ran == RUN_BUDGET {
                // Let the reactor look for I/O, then come back.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if self.sleep(cx.waker()) {
                return Poll::Pending;
            }
        }
    }
}

/// Moves half of `from`'s tasks (rounded up) to `to`, as far as `to` has room; a task that
/// finds no room after all goes to `spill`.
fn steal(
    from: &ConcurrentQueue<Runnable>,
    to: &ConcurrentQueue<Runnable>,
    spill: &ConcurrentQueue<Runnable>,
) {
    let room = to.capacity().unwrap_or(usize::MAX) - to.len();
    let count = from.len().div_ceil(2).min(room);
    for _ in 0..count {
        let Ok(runnable) = from.pop() else { break };
        if let Err(full) = to.push(runnable) {
            // Only its owner (this thread) pushes to it, and room was counted: not expected.
            let _ = spill.push(full.into_inner());
            break;
        }
    }
}
