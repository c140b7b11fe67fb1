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
        atomic::{fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
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
/// waiting on a socket or a timer; what is spawned afterwards is dropped unrun. Dropped by one
/// of its own tasks, it stops the workers without waiting for them: the last to end drops
/// the tasks left.
///
/// A task that blocks its thread (on a lock, a channel's blocking receive, a long
/// computation) holds back the task it woke last, which waits in that worker's slot: as in
/// any async executor, blocking work belongs on a thread of its own (`smol::unblock`).
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
    sleepers: Mutex<Sleepers>,
    /// How many workers are asleep; read without the lock.
    sleeping: AtomicUsize,
    /// Workers woken to look for work that have not yet found any nor gone back to sleep.
    /// While one is looking, no other is woken: it takes the work, or wakes the next. Raised
    /// only under the `sleepers` lock.
    searching: AtomicUsize,
    /// Every unfinished task's waker, sharded per worker, so that a stop can drop the tasks
    /// that wait on something.
    active: Box<[Mutex<Slab<Waker>>]>,
    /// Picks a shard of `active` for tasks spawned off the workers.
    next_shard: AtomicUsize,
    stopped: AtomicBool,
    /// Worker threads still in their loop; the last to leave drops the tasks left.
    running: AtomicUsize,
    counters: Counters,
}

/// The workers that may be asleep, each listed at most once.
struct Sleepers {
    /// The last to fall asleep last (its cache is the warmest). An entry may be stale (the
    /// worker woke by itself); `state` tells.
    list: Vec<usize>,
    listed: Box<[bool]>,
}

/// One worker's part of [`Shared`].
struct Worker {
    /// Its local queue; other workers steal from it.
    local: ConcurrentQueue<Runnable>,
    /// `AWAKE`, `ASLEEP`, or `SEARCHING` (woken to look for work; the worker has not yet
    /// seen it). One atomic, so that a wake and the worker's own return cannot disagree.
    state: AtomicU8,
    /// Wakes its thread: async-io's `block_on` waker, set before it sleeps.
    waker: Mutex<Option<Waker>>,
}

const AWAKE: u8 = 0;
const ASLEEP: u8 = 1;
const SEARCHING: u8 = 2;

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
    /// Times a worker asleep was woken to look for work (each one a futex call or a write to
    /// the reactor's notifier).
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
                    state: AtomicU8::new(AWAKE),
                    waker: Mutex::new(None),
                })
                .collect(),
            sleepers: Mutex::new(Sleepers {
                list: Vec::with_capacity(n),
                listed: vec![false; n].into(),
            }),
            sleeping: AtomicUsize::new(0),
            searching: AtomicUsize::new(0),
            active: (0..n).map(|_| Mutex::new(Slab::new())).collect(),
            next_shard: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            counters: Counters::default(),
        });
        let mut workers = Self {
            shared,
            threads: Vec::with_capacity(n),
        };
        for index in 0..n {
            let shared = workers.shared.clone();
            workers.shared.running.fetch_add(1, Ordering::SeqCst);
            let thread = thread::Builder::new()
                .name(format!("flumen-worker-{index}"))
                .spawn(move || run(shared, index));
            match thread {
                Ok(thread) => workers.threads.push(thread),
                Err(e) => {
                    workers.shared.running.fetch_sub(1, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        Ok(workers)
    }

    /// A runtime spawning on these workers.
    pub fn runtime(&self) -> crate::SmolRuntime {
        crate::SmolRuntime::workers(Spawner(self.shared.clone()))
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
            let waker = worker.waker.lock().take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        if shared.is_current() {
            // One of its own tasks: this thread is a worker, which cannot wait for itself.
            // The last worker to leave its loop drops the tasks left.
            return;
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // The last worker has dropped every task; a stop with no thread started has not.
        shared.drop_tasks();
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
        let here = shared.current_index();
        let shard = here.unwrap_or_else(|| {
            shared.next_shard.fetch_add(1, Ordering::Relaxed) % shared.active.len()
        });
        let mut active = shared.active[shard].lock();
        // Checked under the lock that the stop's sweep takes after it sets `stopped`: a
        // task added here is either refused or seen by the sweep.
        if shared.stopped.load(Ordering::SeqCst) {
            drop(active);
            drop(future);
            return;
        }
        shared.counters.spawned.fetch_add(1, Ordering::Relaxed);
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
        // Behind the tasks already queued, where an idle worker can take it: a task that
        // spawns another and waits for it must not hold it in its own slot.
        shared.push(here, runnable);
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
        let waker = self.shared.active[self.shard].lock().try_remove(self.key);
        // Dropped once the lock is released.
        drop(waker);
    }
}

impl Shared {
    /// The index of the worker this thread runs, if it runs one of these workers.
    fn current_index(&self) -> Option<usize> {
        CURRENT
            .try_with(|current| {
                let current = current.try_borrow().ok()?;
                let current = current.as_ref()?;
                std::ptr::eq(Arc::as_ptr(&current.shared), self).then_some(current.index)
            })
            .ok()
            .flatten()
    }

    fn is_current(&self) -> bool {
        self.current_index().is_some()
    }

    /// Queues a woken task: in this worker's slot if it is one of ours (a task that woke
    /// itself goes behind the others), on the shared queue otherwise.
    fn schedule(&self, runnable: Runnable, info: ScheduleInfo) {
        if self.stopped.load(Ordering::Acquire) {
            // The stop drops it. Not here: a waker may be woken under a lock that dropping
            // the task's future would take again.
            let _ = self.injector.push(runnable);
            return;
        }
        if info.woken_while_running {
            return self.push(self.current_index(), runnable);
        }
        let mut pending = Some(runnable);
        let slotted = CURRENT
            .try_with(|current| {
                let mut current = current.try_borrow_mut().ok()?;
                let current = current
                    .as_mut()
                    .filter(|c| std::ptr::eq(Arc::as_ptr(&c.shared), self))?;
                let displaced = current.lifo.replace(pending.take()?);
                Some((current.index, displaced))
            })
            .ok()
            .flatten();
        match slotted {
            Some((index, displaced)) => {
                if let Some(runnable) = displaced {
                    self.push(Some(index), runnable);
                }
                // Woken by I/O that this worker's thread processes while its loop sleeps.
                if self.workers[index]
                    .state
                    .compare_exchange(ASLEEP, AWAKE, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    self.sleeping.fetch_sub(1, Ordering::SeqCst);
                    let waker = self.workers[index].waker.lock().clone();
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
            }
            None => {
                if let Some(runnable) = pending {
                    self.push(None, runnable);
                }
            }
        }
    }

    /// Queues `runnable` on worker `here`'s queue (the shared one when `None` or full), and
    /// wakes an idle worker for it.
    fn push(&self, here: Option<usize>, runnable: Runnable) {
        self.enqueue(here, runnable);
        self.wake_idle();
    }

    /// Queues `runnable` on worker `here`'s queue (the shared one when `None` or full).
    fn enqueue(&self, here: Option<usize>, runnable: Runnable) {
        let runnable = match here {
            Some(index) => match self.workers[index].local.push(runnable) {
                Ok(()) => None,
                Err(full) => Some(full.into_inner()),
            },
            None => Some(runnable),
        };
        if let Some(runnable) = runnable {
            let _ = self.injector.push(runnable);
        }
    }

    /// Wakes a sleeping worker to look for work, unless one is already looking or none sleeps.
    fn wake_idle(&self) {
        // Against `Run::sleep`: either it sees the task just queued, or this sees it asleep.
        fence(Ordering::SeqCst);
        if self.searching.load(Ordering::SeqCst) != 0 || self.sleeping.load(Ordering::SeqCst) == 0 {
            return;
        }
        let waker = {
            let mut sleepers = self.sleepers.lock();
            if self.searching.load(Ordering::SeqCst) != 0 {
                return;
            }
            let mut woken = None;
            while let Some(index) = sleepers.list.pop() {
                sleepers.listed[index] = false;
                let worker = &self.workers[index];
                if worker
                    .state
                    .compare_exchange(ASLEEP, SEARCHING, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    self.sleeping.fetch_sub(1, Ordering::SeqCst);
                    self.searching.fetch_add(1, Ordering::SeqCst);
                    woken = worker.waker.lock().clone();
                    break;
                }
            }
            woken
        };
        if let Some(waker) = waker {
            self.counters.woken_workers.fetch_add(1, Ordering::Relaxed);
            waker.wake();
        }
    }

    /// Whether any queue holds a task (the workers' slots aside).
    fn has_work(&self) -> bool {
        !self.injector.is_empty() || self.workers.iter().any(|w| !w.local.is_empty())
    }

    /// Drops every task left once the workers have left their loops: the waiting ones are
    /// woken (which queues them) and the queued ones dropped, which drops their futures
    /// (which may wake others), until no task is left.
    fn drop_tasks(&self) {
        loop {
            let mut wakers = Vec::new();
            for shard in self.active.iter() {
                wakers.extend(shard.lock().iter().map(|(_, waker)| waker.clone()));
            }
            if wakers.is_empty() {
                return;
            }
            wakers.into_iter().for_each(Waker::wake);
            while let Ok(runnable) = self.injector.pop() {
                drop(runnable);
            }
            for worker in self.workers.iter() {
                while let Ok(runnable) = worker.local.pop() {
                    drop(runnable);
                }
            }
        }
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
        shared: shared.clone(),
        index,
        searching: false,
        ticks: 0,
        lifo_runs: 0,
        rng: fastrand::Rng::new(),
    });
    // Its slot's task, if any, is dropped here, off the thread's state.
    let current = CURRENT.with(|current| current.borrow_mut().take());
    drop(current);
    if shared.running.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.drop_tasks();
    }
}

/// A worker's loop, as a future.
struct Run {
    shared: Arc<Shared>,
    index: usize,
    /// Woken to look for work, and has not yet found any.
    searching: bool,
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
            // Its turn is over: behind the others, on this worker (which goes on running its
            // queue; no other is woken for it, as in tokio).
            shared.enqueue(Some(self.index), runnable);
        }
        self.lifo_runs = 0;
        if let Ok(runnable) = own.pop() {
            return Some(runnable);
        }
        if let Ok(runnable) = shared.injector.pop() {
            if steal(&shared.injector, own, &shared.injector) {
                shared.wake_idle();
            }
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

    /// Takes in how this worker was woken: to look for work, or by itself.
    fn woke(&mut self) {
        let shared = &*self.shared;
        match shared.workers[self.index]
            .state
            .swap(AWAKE, Ordering::SeqCst)
        {
            SEARCHING => self.searching = true,
            ASLEEP => {
                // Not by `wake_idle`: its entry in `sleepers` is stale now.
                shared.sleeping.fetch_sub(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }

    /// This worker found work: it stops looking, and if it was the last one looking,
    /// another is woken for what may be left.
    fn found(&mut self) {
        if std::mem::take(&mut self.searching) {
            let shared = &*self.shared;
            if shared.searching.fetch_sub(1, Ordering::SeqCst) == 1 && shared.has_work() {
                shared.wake_idle();
            }
        }
    }

    /// Goes to sleep until `waker` is woken; false if work turned up meanwhile (it stays
    /// awake, and looks for it as a searcher would).
    fn sleep(&mut self, waker: &Waker) -> bool {
        let shared = &*self.shared;
        let worker = &shared.workers[self.index];
        {
            let mut slot = worker.waker.lock();
            if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *slot = Some(waker.clone());
            }
        }
        let was_searching = std::mem::take(&mut self.searching);
        if was_searching {
            shared.searching.fetch_sub(1, Ordering::SeqCst);
        }
        {
            let mut sleepers = shared.sleepers.lock();
            shared.sleeping.fetch_add(1, Ordering::SeqCst);
            worker.state.store(ASLEEP, Ordering::SeqCst);
            if !sleepers.listed[self.index] {
                sleepers.listed[self.index] = true;
                sleepers.list.push(self.index);
            }
            debug_assert!(sleepers.list.len() <= shared.workers.len());
        }
        // Against `wake_idle`: either it sees this worker asleep, or this sees its task.
        fence(Ordering::SeqCst);
        let lifo = CURRENT.with(|current| {
            current
                .borrow()
                .as_ref()
                .is_some_and(|current| current.lifo.is_some())
        });
        let work = lifo || shared.has_work() || shared.stopped.load(Ordering::SeqCst);
        if work {
            self.woke();
            if was_searching && !self.searching {
                // It gave up looking an instant too soon: it looks again, so that finding
                // the work wakes the next worker as a searcher's would.
                self.shared.searching.fetch_add(1, Ordering::SeqCst);
                self.searching = true;
            }
            return false;
        }
        true
    }
}

impl Future for Run {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.woke();
        loop {
            if self.shared.stopped.load(Ordering::Acquire) {
                self.found();
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
/// finds no room after all goes to `spill`. Whether any moved.
fn steal(
    from: &ConcurrentQueue<Runnable>,
    to: &ConcurrentQueue<Runnable>,
    spill: &ConcurrentQueue<Runnable>,
) -> bool {
    let room = to.capacity().unwrap_or(usize::MAX) - to.len();
    let count = from.len().div_ceil(2).min(room);
    let mut moved = false;
    for _ in 0..count {
        let Ok(runnable) = from.pop() else { break };
        moved = true;
        if let Err(full) = to.push(runnable) {
            // Only its owner (this thread) pushes to it, and room was counted: not expected.
            let _ = spill.push(full.into_inner());
            break;
        }
    }
    moved
}
