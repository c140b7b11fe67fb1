//! A connection's outgoing queue: callers, handlers and the reader push frames; the writer task
//! takes everything queued at once, and holds a small batch while more frames are known to be
//! on their way (write coalescing that does not depend on the order a scheduler polls tasks).
//!
//! The queue is a `VecDeque` behind a short lock that the writer swaps out whole, so one lock
//! hands over a whole batch and nothing is allocated per frame: both deques keep their
//! capacity while the connection is busy, and give it back when it goes quiet
//! ([`Inbox::release`]). A bounded channel would allocate room for its whole capacity up front,
//! which is what an idle connection must not pay for.

use std::{
    collections::VecDeque,
    future::{poll_fn, Future},
    mem,
    pin::Pin,
    sync::{Arc, OnceLock, Weak},
    task::{Context, Poll},
};

use bytes::Bytes;

use super::{
    batch::{WriteBatch, MAX_BATCH_BYTES},
    writer::pack,
    Outgoing,
};
use crate::{
    compress::Compression,
    frame::FrameHeader,
    sync::{
        AtomicBool, AtomicU64, AtomicUsize, AtomicWaker, Event, EventListener, Mutex, Ordering,
    },
};

/// Default limit on the bytes of frames queued for a connection's writer (1 MiB) before the
/// tasks producing them (callers, handlers, the server's reader) wait for it; a frame is always
/// taken when nothing is queued, whatever its size. Bounds what one connection can make its
/// side buffer while the peer does not read: producers wait (backpressure) instead of
/// queueing, and the server's reader stops reading requests whose replies cannot be written.
/// Set with `ServerConfig::max_queued_bytes` and `ClientConfig::max_queued_bytes`.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 1 << 20;

/// Default limit on the bytes of frames queued for writing on all of a server's connections
/// together (64 MiB), past which producers wait as they do at a connection's own limit. Bounds
/// what many connections whose peers do not read can make the server buffer: without it, the
/// bound is `max_connections x max_queued_bytes`. A connection with nothing queued may still
/// queue one frame, so that every connection makes progress. Set with
/// `ServerConfig::max_queued_bytes_total`.
pub const DEFAULT_MAX_QUEUED_BYTES_TOTAL: usize = 64 << 20;

/// Deques bigger than this (in messages) are shrunk back when the connection goes quiet.
const KEEP_CAPACITY: usize = 0;

/// The producing side of a connection's outgoing queue. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    queue: Arc<Queue>,
}

/// The writer's side of the outgoing queue.
#[derive(Debug)]
pub(crate) struct Inbox {
    queue: Arc<Queue>,
    /// Messages taken from the queue that did not fit in the last batch.
    taken: VecDeque<Outgoing>,
}

/// What a connection's reader and writer have done, for the stats. Kept beside the queue
/// because every task of the connection holds it.
#[derive(Debug, Default)]
pub(crate) struct IoCounters {
    /// Frames handed to the transport.
    pub(crate) frames_written: AtomicU64,
    /// Writes (one vectored write syscall each) that moved at least one byte.
    pub(crate) writes: AtomicU64,
    /// Frames decoded.
    pub(crate) frames_read: AtomicU64,
    /// Reads that returned bytes.
    pub(crate) reads: AtomicU64,
    /// Bytes handed to the transport.
    pub(crate) bytes_written: AtomicU64,
    /// Bytes read from the transport.
    pub(crate) bytes_read: AtomicU64,
    /// Times the writer yielded before writing, waiting for frames it was told to expect.
    pub(crate) coalesce_yields: AtomicU64,
    /// Flushes made by a producer's task while the writer task was parked.
    pub(crate) direct_writes: AtomicU64,
    /// Times a producer waited for room in the queue.
    pub(crate) queue_full_waits: AtomicU64,
    /// Times the client's deadline timer woke from a sleep.
    pub(crate) timer_wakeups: AtomicU64,
    /// Frames written with a compressed body.
    pub(crate) frames_compressed: AtomicU64,
    /// Frames read with a compressed body.
    pub(crate) frames_decompressed: AtomicU64,
    /// Bytes of buffer memory the writer holds (batch buffer and deques).
    pub(crate) write_buffered: AtomicUsize,
    /// Bytes of buffer memory the reader holds.
    pub(crate) read_buffered: AtomicUsize,
}

/// Bytes queued for writing on many connections together (a server's), with a limit.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Producers waiting for room in the budget.
    space: Event,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
            space: Event::new(),
        }
    }

    /// Bytes queued now on all the connections sharing it.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` off the count, without waking anyone yet.
    fn uncount(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Wakes the producers waiting for room, after `bytes` were taken off.
    fn wake(&self, bytes: usize) {
        if bytes > 0 {
            self.space.notify(usize::MAX);
        }
    }
}

/// The writer's side that a producer can write through while the writer task is parked with
/// nothing of its own (the writer's `Wire`), without naming the transport.
pub(crate) trait WriteNow: std::marker::Send + Sync {
    /// Writes what `queue` holds from the calling task if the writer task is parked with
    /// nothing of its own: `true` if everything taken was written (the writer task may stay
    /// parked), `false` if it declined, or left something for the writer task (then the
    /// queue is kicked, and the caller wakes the writer task).
    fn write_now(&self, queue: &Queue) -> bool;
}

/// The state shared by a connection's producers and its writer.
pub(crate) struct Queue {
    state: Mutex<State>,
    /// Bytes queued before producers wait.
    limit: usize,
    /// The limit shared with other connections, if any.
    budget: Option<Arc<Budget>>,
    /// The writer parked and must be woken by the next push.
    parked: AtomicBool,
    waker: AtomicWaker,
    /// Producers waiting for the writer to take what is queued.
    space: Event,
    /// Producers that will push more frames in a moment and asked the writer to wait
    /// ([`Outbox::hold`]); the writer holds a small batch until this is zero.
    holds: AtomicUsize,
    /// Tasks expected to push a frame soon (callers the reader just woke with their replies);
    /// the writer yields a few times while this is above zero. A hint: it may be stale.
    expected: AtomicUsize,
    counters: IoCounters,
    /// The algorithm frames are compressed with, once the peers agreed on one.
    compression: OnceLock<Compression>,
    /// The writer's wire, once its task runs; weak, so that a queue outliving the task does
    /// not keep the transport's write half.
    wire: OnceLock<Weak<dyn WriteNow>>,
    /// A producer left part of its write for the writer task (set before it wakes the task).
    kicked: AtomicBool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("limit", &self.limit)
            .field("holds", &self.holds)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Outgoing>,
    /// Control frames (stream credit) that never wait behind a full queue; taken first.
    /// Bounded by construction: a stream queues a grant only after its application consumed
    /// half a window, which its peer could only send with credit.
    control: Vec<FrameHeader>,
    bytes: usize,
    /// The writer is gone: pushes fail.
    closed: bool,
}

/// The future of [`Outbox::send`]: `true` once the message is queued, `false` if the writer
/// is gone.
pub(crate) enum Send<'a> {
    /// The first attempt settled it.
    Done(bool),
    /// The queue was over a limit: waiting for room.
    Waiting(Pin<Box<dyn Future<Output = bool> + std::marker::Send + 'a>>),
}

impl Send<'_> {
    /// Whether the message was settled (queued, or the writer gone) without waiting.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Send::Done(_))
    }
}

impl Future for Send<'_> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        match self.get_mut() {
            Send::Done(sent) => Poll::Ready(*sent),
            Send::Waiting(waiting) => waiting.as_mut().poll(cx),
        }
    }
}

/// Keeps the writer from flushing a small batch until it is dropped.
#[derive(Debug)]
pub(crate) struct Hold<'a> {
    queue: &'a Queue,
    /// Released with [`release`](Hold::release)`(true)`.
    now: bool,
}

impl Hold<'_> {
    /// Ends the hold; with `now` (no other frame is on its way), what the hold kept queued
    /// is written from this task if the writer task is parked with nothing of its own (as
    /// [`Outbox::send_now`]).
    pub(crate) fn release(mut self, now: bool) {
        self.now = now;
    }
}

/// A queue of up to `limit` bytes (and within `budget`, shared with other connections, if
/// given) whose writer holds each batch while producers are known to be adding to it.
pub(crate) fn outbox(limit: usize, budget: Option<Arc<Budget>>) -> (Outbox, Inbox) {
    let queue = Arc::new(Queue {
        state: Mutex::new(State::default()),
        limit,
        budget,
        parked: AtomicBool::new(false),
        waker: AtomicWaker::new(),
        space: Event::new(),
        holds: AtomicUsize::new(0),
        expected: AtomicUsize::new(0),
        counters: IoCounters::default(),
        compression: OnceLock::new(),
        wire: OnceLock::new(),
        kicked: AtomicBool::new(false),
    });
    (
        Outbox {
            queue: queue.clone(),
        },
        Inbox {
            queue,
            taken: VecDeque::new(),
        },
    )
}

impl Outbox {
    /// Queues `message`, waiting while the queue is over its limit; `false` once the writer
    /// is gone.
    ///
    /// The first attempt is made at once, not on the first poll: a message that fits (the
    /// common case) is queued before the future exists, which then holds only the outcome.
    pub(crate) fn send(&self, message: Outgoing) -> Send<'_> {
        self.send_with(message, false)
    }

    /// [`send`](Self::send) from a producer that knows no other frame is on its way (a lone
    /// call's request, the reply to the only call running): if the writer task is parked with
    /// nothing of its own, the message is written from this task, and the writer task is not
    /// woken. One task hop less per call when calls come one at a time; with several
    /// producers at work, each would write alone, so they use `send` and the writer batches.
    pub(crate) fn send_now(&self, message: Outgoing) -> Send<'_> {
        self.send_with(message, true)
    }

    fn send_with(&self, message: Outgoing, now: bool) -> Send<'_> {
        let mut slot = Some(message);
        match self.push(&mut slot, false, now) {
            Ok(sent) => Send::Done(sent),
            // Over a limit: the rare path, which waits for room, goes in a box.
            Err(_) => Send::Waiting(Box::pin(async move {
                loop {
                    match self.attempt_or_listen(|| self.push(&mut slot, false, false)) {
                        Ok(sent) => return sent,
                        Err(listener) => listener.await,
                    }
                }
            })),
        }
    }

    /// Queues every message of `messages`, in order, with one lock of the queue for as many
    /// as fit, waiting for room for the rest; `messages` is left empty. `false` once the
    /// writer is gone.
    pub(crate) async fn send_all(&self, messages: &mut Vec<Outgoing>) -> bool {
        loop {
            match self.attempt_or_listen(|| self.push_all(messages)) {
                Ok(sent) => return sent,
                Err(listener) => listener.await,
            }
        }
    }

    /// Pushes messages from the front of `messages` while they fit: `Ok(true)` all queued,
    /// `Ok(false)` the writer is gone (`messages` cleared), `Err` the event that says when
    /// there is room for the next one.
    fn push_all(&self, messages: &mut Vec<Outgoing>) -> Result<bool, &Event> {
        let mut stopped = None;
        let (taken, queued) = {
            let mut state = self.queue.state.lock();
            if state.closed {
                drop(state);
                messages.clear();
                return Ok(false);
            }
            let mut taken = 0;
            let mut added = 0;
            for message in messages.iter() {
                let weight = message.weight();
                if let Err(full) = self.room(state.bytes, added, weight) {
                    stopped = Some(full);
                    break;
                }
                added += weight;
                taken += 1;
            }
            state.bytes += added;
            if let Some(budget) = &self.queue.budget {
                budget.used.fetch_add(added, Ordering::AcqRel);
            }
            state.items.extend(messages.drain(..taken));
            (taken, state.bytes)
        };
        if taken > 0 {
            self.queue.pushed(queued, false);
        }
        stopped.map_or(Ok(true), Err)
    }

    /// [`send`](Self::send) for a thread without a runtime, blocking while the queue is full,
    /// until `deadline` if there is one: `None` if it came first (the message not queued).
    /// With `now`, as [`send_now`](Self::send_now): written from this thread if it can be.
    pub(crate) fn send_blocking(
        &self,
        message: Outgoing,
        deadline: Option<std::time::Instant>,
        now: bool,
    ) -> Option<bool> {
        let mut message = Some(message);
        loop {
            match self.attempt_or_listen(|| self.push(&mut message, false, now)) {
                Ok(sent) => return Some(sent),
                Err(listener) => {
                    if !crate::sync::wait_until(listener, deadline) {
                        return None;
                    }
                }
            }
        }
    }

    /// Queues `message` unless the queue is over its limit or the writer is gone.
    pub(crate) fn try_send(&self, message: Outgoing) -> bool {
        self.push(&mut Some(message), false, false).unwrap_or(false)
    }

    /// Queues `message` whatever the queue holds (a connection's last words: `GoAway`,
    /// `Close`); `false` once the writer is gone.
    pub(crate) fn force_send(&self, message: Outgoing) -> bool {
        self.push(&mut Some(message), true, false).unwrap_or(false)
    }

    /// Runs `push` (a push of one message or of several); if a limit stopped it, returns a
    /// listener for that limit, registered before a last try so that the room it waits for
    /// cannot be missed.
    fn attempt_or_listen<'a>(
        &'a self,
        mut push: impl FnMut() -> Result<bool, &'a Event>,
    ) -> Result<bool, EventListener> {
        let mut full = match push() {
            Ok(sent) => return Ok(sent),
            Err(full) => full,
        };
        loop {
            let listener = full.listen();
            match push() {
                Ok(sent) => return Ok(sent),
                // Still full for the same reason: wait for room there.
                Err(again) if std::ptr::eq(again, full) => {
                    let waits = &self.queue.counters.queue_full_waits;
                    waits.fetch_add(1, Ordering::Relaxed);
                    // A hold may have kept the writer parked: it must take what is queued
                    // for room to come.
                    self.queue.ring(false);
                    return Err(listener);
                }
                Err(other) => full = other,
            }
        }
    }

    /// Queues a bodiless control frame ahead of everything else, without ever waiting.
    pub(crate) fn send_control(&self, header: FrameHeader) {
        {
            let mut state = self.queue.state.lock();
            if state.closed {
                return;
            }
            state.control.push(header);
        }
        self.queue.ring(false);
    }

    /// Pushes the message out of `slot`: `Ok(true)` queued, `Ok(false)` the writer is gone (or
    /// `slot` was empty), `Err` over a limit: the event that says when there is room (the
    /// message stays in `slot`). With `now`, writes from this task if it can
    /// ([`send_now`](Self::send_now)).
    fn push(&self, slot: &mut Option<Outgoing>, force: bool, now: bool) -> Result<bool, &Event> {
        let queued = {
            let mut state = self.queue.state.lock();
            if state.closed {
                return Ok(false);
            }
            let Some(message) = slot.take() else {
                return Ok(false);
            };
            let weight = message.weight();
            if !force {
                if let Err(full) = self.room(state.bytes, 0, weight) {
                    *slot = Some(message);
                    return Err(full);
                }
            }
            state.bytes += weight;
            if let Some(budget) = &self.queue.budget {
                budget.used.fetch_add(weight, Ordering::AcqRel);
            }
            state.items.push_back(message);
            state.bytes
        };
        self.queue.pushed(queued, now);
        Ok(true)
    }

    /// Whether a message of `weight` bytes fits after the `queued` bytes of the queue and the
    /// `adding` bytes being pushed with it; if not, the event that says when there is room.
    /// A connection with nothing queued always takes a frame, whatever its size.
    fn room(&self, queued: usize, adding: usize, weight: usize) -> Result<(), &Event> {
        if queued + adding == 0 {
            return Ok(());
        }
        if queued + adding + weight > self.queue.limit {
            return Err(&self.queue.space);
        }
        match &self.queue.budget {
            Some(budget) if budget.used() + adding + weight > budget.limit => Err(&budget.space),
            _ => Ok(()),
        }
    }

    /// Asks the writer to hold small batches until the returned guard is dropped: the caller
    /// is about to push several frames (a reader dispatching what one read brought).
    pub(crate) fn hold(&self) -> Hold<'_> {
        self.queue.holds.fetch_add(1, Ordering::SeqCst);
        Hold {
            queue: &self.queue,
            now: false,
        }
    }

    /// Sets the algorithm frames are compressed with from now on; the first one set stays.
    pub(crate) fn compress_with(&self, compression: Compression) {
        let _ = self.queue.compression.set(compression);
    }

    /// Tells the writer that about `n` tasks are about to be woken and will each push a frame
    /// soon. Called before those tasks can see why they are woken (under the call table's
    /// lock), so that each one's [`caller_resumed`](Self::caller_resumed) comes after it.
    pub(crate) fn callers_woken(&self, n: usize) {
        self.queue.expected.store(n, Ordering::Relaxed);
    }

    /// One of the tasks [`callers_woken`](Self::callers_woken) announced has run.
    pub(crate) fn caller_resumed(&self) {
        let expected = &self.queue.expected;
        if expected.load(Ordering::Relaxed) > 0 {
            let _ =
                expected.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// The writer's counters.
    pub(crate) fn counters(&self) -> &IoCounters {
        &self.queue.counters
    }

    /// The algorithm frames are compressed with, if the peers agreed on one.
    pub(crate) fn compression(&self) -> Option<Compression> {
        self.queue.compression.get().copied()
    }
}

impl Queue {
    /// Rings after a push that left `queued` bytes in the queue: not while a producer holds
    /// the batch (its release rings), unless the queue holds a batch's worth already, or half
    /// its limit (so that producers do not wait for room the writer was not asked to make).
    #[inline]
    fn pushed(&self, queued: usize, now: bool) {
        if queued < MAX_BATCH_BYTES.min(self.limit / 2) && self.holds.load(Ordering::SeqCst) > 0 {
            return;
        }
        self.ring(now);
    }

    /// Wakes the writer if it parked; with `now`, first tries to write what is queued from
    /// this task instead, which leaves the writer parked if all of it was written.
    #[inline]
    fn ring(&self, now: bool) {
        // Pairs with the swap in `Inbox::park`. Both are read-modify-writes of `parked`, so
        // they are ordered: if the writer's comes first, this one sees `true` and wakes it;
        // if this one comes first, the writer's acquires it, and with it the push just made,
        // which the writer's second look then finds. (A relaxed store and load fenced on both
        // sides would do as well on paper, at the same cost, but no model checker can show it.)
        if self.parked.swap(false, Ordering::AcqRel) && !(now && self.write_now()) {
            self.waker.wake();
        }
    }

    /// Writes what is queued through the writer's wire, from this task, after `ring` took the
    /// writer's wake-up: `true` if all of it was written and the writer parked again.
    #[inline(never)]
    fn write_now(&self) -> bool {
        // Nothing asks for a bigger batch: no hold, no woken caller about to queue.
        if self.holds.load(Ordering::SeqCst) > 0 || self.expected.load(Ordering::Relaxed) > 0 {
            return false;
        }
        let Some(wire) = self.wire.get().and_then(Weak::upgrade) else {
            return false;
        };
        if !wire.write_now(self) {
            return false;
        }
        // The writer still parks: ring it again if more came since (as `Inbox::park` does).
        self.parked.swap(true, Ordering::AcqRel);
        let more = {
            let state = self.state.lock();
            !state.items.is_empty() || !state.control.is_empty()
        };
        if more && self.parked.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
        true
    }

    /// Moves what is queued into `batch` for a write from a producer's task, in the order the
    /// writer task would: control frames first, then the queue, taken whole with one lock
    /// (into `scratch`, an empty deque the caller keeps, so nothing is allocated). `false`,
    /// and nothing taken, if a `Close` is queued: closing is the writer task's.
    pub(crate) fn drain_into(
        &self,
        batch: &mut WriteBatch,
        scratch: &mut VecDeque<Outgoing>,
    ) -> bool {
        let taken = {
            let mut state = self.state.lock();
            if state.items.iter().any(|m| matches!(m, Outgoing::Close)) {
                return false;
            }
            while let Some(header) = state.control.pop() {
                batch.push(&header, Bytes::new());
            }
            mem::swap(&mut state.items, scratch);
            let taken = mem::take(&mut state.bytes);
            // Off the budget under the same lock, as `Inbox::try_recv` does.
            if let Some(budget) = &self.budget {
                budget.uncount(taken);
            }
            taken
        };
        let compression = self.compression.get();
        for message in scratch.drain(..) {
            pack(batch, message, compression, &self.counters);
        }
        if taken > 0 {
            self.space.notify(usize::MAX);
            if let Some(budget) = &self.budget {
                budget.wake(taken);
            }
        }
        true
    }

    /// Tells the writer task that a producer left part of a write for it.
    pub(crate) fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
    }

    /// The connection's counters.
    pub(crate) fn counters(&self) -> &IoCounters {
        &self.counters
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if self.queue.holds.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.queue.ring(self.now);
        }
    }
}

impl Inbox {
    /// Whether messages are waiting (taken or queued), or a producer left part of a write.
    fn has_work(&self, state: &State) -> bool {
        !self.taken.is_empty()
            || !state.items.is_empty()
            || !state.control.is_empty()
            || self.queue.kicked.load(Ordering::Acquire)
    }

    /// Lets producers write through `wire` while the writer task is parked.
    pub(crate) fn attach(&self, wire: Weak<dyn WriteNow>) {
        let _ = self.queue.wire.set(wire);
    }

    /// Whether messages taken from the queue wait for the next batch.
    pub(crate) fn has_taken(&self) -> bool {
        !self.taken.is_empty()
    }

    /// Clears a producer's kick: the writer task is awake and looks at the batch.
    pub(crate) fn take_kick(&self) {
        self.queue.kicked.store(false, Ordering::Relaxed);
    }

    /// The algorithm frames are compressed with, if any.
    pub(crate) fn compression(&self) -> Option<&Compression> {
        self.queue.compression.get()
    }

    /// Parks until `ready` holds, checking it again after announcing the park so that no
    /// push is missed.
    fn park<'a>(
        &'a mut self,
        ready: impl Fn(&Self, &State) -> bool + 'a,
    ) -> impl Future<Output = ()> + 'a {
        poll_fn(move |cx| {
            if ready(self, &self.queue.state.lock()) {
                return Poll::Ready(());
            }
            self.queue.waker.register(cx.waker());
            self.queue.parked.swap(true, Ordering::AcqRel);
            if ready(self, &self.queue.state.lock()) {
                // A read-modify-write like the others on `parked`, not a plain store: with a
                // relaxed store here, loom's model lets a later `ring` read a stale `false`
                // and skip the wake (the three-pushes model below deadlocks), an order the
                // state lock rules out on paper. The swap costs the same and leaves no doubt.
                self.queue.parked.swap(false, Ordering::AcqRel);
                return Poll::Ready(());
            }
            Poll::Pending
        })
    }

    /// Completes once something is queued.
    pub(crate) fn ready(&mut self) -> impl Future<Output = ()> + '_ {
        self.park(|inbox, state| inbox.has_work(state))
    }

    /// Completes once no producer holds the batch, or something new is queued.
    pub(crate) fn unheld(&mut self) -> impl Future<Output = ()> + '_ {
        self.park(|inbox, state| {
            inbox.queue.holds.load(Ordering::SeqCst) == 0 || inbox.has_work(state)
        })
    }

    /// Whether a producer asked to hold the batch.
    pub(crate) fn is_held(&self) -> bool {
        self.queue.holds.load(Ordering::SeqCst) > 0
    }

    /// Whether tasks that will push soon have not run yet.
    pub(crate) fn awaits_callers(&self) -> bool {
        self.queue.expected.load(Ordering::Relaxed) > 0
    }

    /// The next message, without waiting: control frames first, then the queue in order.
    pub(crate) fn try_recv(&mut self) -> Option<Outgoing> {
        if let Some(message) = self.taken.pop_front() {
            return Some(message);
        }
        let taken = {
            let mut state = self.queue.state.lock();
            if let Some(header) = state.control.pop() {
                return Some(Outgoing::frame(header, Bytes::new()));
            }
            if state.items.is_empty() {
                return None;
            }
            // Take everything at once; our empty deque (with its capacity) goes back.
            mem::swap(&mut state.items, &mut self.taken);
            let taken = mem::take(&mut state.bytes);
            // Off the server's count under the same lock that empties the queue: a producer
            // that finds the queue empty finds its bytes gone from the budget too, so no
            // byte is ever counted twice (taken, then pushed anew).
            if let Some(budget) = &self.queue.budget {
                budget.uncount(taken);
            }
            taken
        };
        self.queue.space.notify(usize::MAX);
        if let Some(budget) = &self.queue.budget {
            budget.wake(taken);
        }
        self.taken.pop_front()
    }

    /// The writer's counters.
    pub(crate) fn counters(&self) -> &IoCounters {
        &self.queue.counters
    }

    /// Gives back the deques' memory if nothing is queued; returns the bytes still held.
    pub(crate) fn release(&mut self) -> usize {
        if self.taken.is_empty() {
            self.taken.shrink_to(KEEP_CAPACITY);
        }
        {
            let mut state = self.queue.state.lock();
            if state.items.is_empty() {
                state.items.shrink_to(KEEP_CAPACITY);
            }
            if state.control.is_empty() {
                state.control.shrink_to(KEEP_CAPACITY);
            }
        }
        self.held_bytes()
    }

    /// Bytes the deques hold now.
    pub(crate) fn held_bytes(&self) -> usize {
        let state = self.queue.state.lock();
        (self.taken.capacity() + state.items.capacity()) * mem::size_of::<Outgoing>()
            + state.control.capacity() * mem::size_of::<FrameHeader>()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let (dropped, bytes) = {
            let mut state = self.queue.state.lock();
            state.closed = true;
            let bytes = mem::take(&mut state.bytes);
            if let Some(budget) = &self.queue.budget {
                budget.uncount(bytes);
            }
            (mem::take(&mut state.items), bytes)
        };
        drop(dropped);
        self.queue.space.notify(usize::MAX);
        if let Some(budget) = &self.queue.budget {
            budget.wake(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameKind;

    fn frame(seq: u64, len: usize) -> Outgoing {
        Outgoing::frame(
            FrameHeader::new(FrameKind::Request, seq),
            Bytes::from(vec![0; len]),
        )
    }

    fn seq_of(message: Outgoing) -> u64 {
        match message {
            Outgoing::Frame(header, _) | Outgoing::Parts(header, _) => header.seq,
            Outgoing::Close => u64::MAX,
        }
    }

    #[test]
    fn messages_come_out_in_order_with_control_frames_first() {
        let (out, mut rx) = outbox(DEFAULT_MAX_QUEUED_BYTES, None);
        for seq in 0..3 {
            assert!(out.try_send(frame(seq, 8)));
        }
        out.send_control(FrameHeader::new(FrameKind::Credit, 9));
        let order: Vec<u64> = std::iter::from_fn(|| rx.try_recv()).map(seq_of).collect();
        assert_eq!(order, [9, 0, 1, 2]);
    }

    #[test]
    fn producers_wait_past_the_limit_and_the_first_message_always_fits() {
        let (out, mut rx) = outbox(DEFAULT_MAX_QUEUED_BYTES, None);
        assert!(
            out.try_send(frame(0, 2 * DEFAULT_MAX_QUEUED_BYTES)),
            "an empty queue takes anything"
        );
        assert!(!out.try_send(frame(1, 1)), "over the limit");
        assert!(out.force_send(Outgoing::Close), "last words always fit");
        assert_eq!(rx.try_recv().map(seq_of), Some(0));
        assert!(out.try_send(frame(2, 1)), "taking the queue makes room");
        drop(rx);
        assert!(!out.try_send(frame(3, 1)), "the writer is gone");
    }

    #[test]
    fn the_configured_limit_counts_headers_and_bodies() {
        // 24-byte header + 50-byte body = 74 bytes a frame.
        let (out, mut rx) = outbox(150, None);
        assert!(out.try_send(frame(0, 50)));
        assert!(out.try_send(frame(1, 50)), "148 bytes fit in 150");
        assert!(!out.try_send(frame(2, 0)), "172 bytes do not");
        while rx.try_recv().is_some() {}
        assert!(out.try_send(frame(3, 50)));
    }

    #[test]
    fn holds_and_woken_callers_are_visible_to_the_writer() {
        let (out, rx) = outbox(DEFAULT_MAX_QUEUED_BYTES, None);
        {
            let _hold = out.hold();
            assert!(rx.is_held());
        }
        assert!(!rx.is_held());
        out.callers_woken(2);
        out.caller_resumed();
        assert!(rx.awaits_callers());
        out.caller_resumed();
        out.caller_resumed();
        assert!(!rx.awaits_callers());
    }

    /// Loom models of the doorbell (`Queue::ring` against `Inbox::park`, a swap of `parked`
    /// on each side). Each model deadlocks (loom reports it) if a wake-up can be lost. Run
    /// with `--cfg flumen_loom` (`src/sync.rs`).
    #[cfg(flumen_loom)]
    mod loom_models {
        use loom::{future::block_on, thread};

        use super::*;

        #[test]
        fn loom_a_push_from_another_thread_wakes_the_writer() {
            loom::model(|| {
                let (out, mut rx) = outbox(DEFAULT_MAX_QUEUED_BYTES, None);
                let producer = thread::spawn(move || assert!(out.try_send(frame(1, 8))));
                block_on(rx.ready());
                assert_eq!(rx.try_recv().map(seq_of), Some(1));
                producer.join().unwrap();
            });
        }

        #[test]
        fn loom_two_producers_are_both_taken() {
            loom::model(|| {
                let (out, mut rx) = outbox(DEFAULT_MAX_QUEUED_BYTES, None);
                let other = out.clone();
                let first = thread::spawn(move || assert!(out.try_send(frame(1, 8))));
                let second = thread::spawn(move || assert!(other.try_send(frame(2, 8))));
                let mut seqs = Vec::new();
                while seqs.len() < 2 {
                    block_on(rx.ready());
                    seqs.extend(rx.try_recv().map(seq_of));
                }
                seqs.sort_unstable();
                assert_eq!(seqs, [1, 2]);
                first.join().unwrap();
                second.join().unwrap();
            });
        }

        /// The writer parks again and again while one producer pushes: a push whose ring
        /// comes late, or that the writer finds before it parks, must not leave the next
        /// park unwoken.
        #[test]
        fn loom_a_writer_parking_between_pushes_takes_them_all() {
            loom::model(|| {
                let (out, mut rx) = outbox(DEFAULT_MAX_QUEUED_BYTES, None);
                let producer = thread::spawn(move || {
                    for seq in 1..=3 {
                        assert!(out.try_send(frame(seq, 8)));
                    }
                    // Kept alive until joined: dropping it is not what wakes the writer.
                    out
                });
                let mut seqs = Vec::new();
                while seqs.len() < 3 {
                    block_on(rx.ready());
                    seqs.extend(std::iter::from_fn(|| rx.try_recv().map(seq_of)));
                }
                assert_eq!(seqs, [1, 2, 3]);
                drop(producer.join().unwrap());
            });
        }

        #[test]
        fn loom_the_last_hold_dropped_wakes_a_writer_waiting_for_it() {
            loom::model(|| {
                let (out, mut rx) = outbox(DEFAULT_MAX_QUEUED_BYTES, None);
                let holder = thread::spawn(move || {
                    let hold = out.hold();
                    assert!(out.try_send(frame(1, 8)));
                    drop(hold);
                });
                block_on(rx.ready());
                block_on(rx.unheld());
                assert_eq!(rx.try_recv().map(seq_of), Some(1));
                holder.join().unwrap();
            });
        }

        /// A stand-in for the writer's wire: counts what a producer writes while the writer
        /// is parked with nothing of its own; with `stall`, takes it and leaves it for the
        /// writer task instead (a write that could not finish).
        #[derive(Default)]
        struct FakeWire {
            lane: Mutex<FakeLane>,
            /// Notified when producers wrote the last frame: the writer task has nothing to
            /// be woken for then.
            finished: Event,
        }

        #[derive(Default)]
        struct FakeLane {
            idle: bool,
            stall: bool,
            batch: WriteBatch,
            scratch: VecDeque<Outgoing>,
            /// Frames written, by producers or by the writer task.
            written: u64,
            want: u64,
        }

        impl WriteNow for FakeWire {
            fn write_now(&self, queue: &Queue) -> bool {
                let Some(mut lane) = self.lane.try_lock() else {
                    return false;
                };
                if !lane.idle || !lane.batch.is_empty() {
                    return false;
                }
                let FakeLane { batch, scratch, .. } = &mut *lane;
                if !queue.drain_into(batch, scratch) {
                    return false;
                }
                if lane.stall && !lane.batch.is_empty() {
                    lane.idle = false;
                    queue.kick();
                    return false;
                }
                lane.written += std::mem::take(&mut lane.batch).frames();
                if lane.written == lane.want {
                    self.finished.notify(usize::MAX);
                }
                true
            }
        }

        /// The writer task's loop over a `FakeWire`, until `want` frames were written.
        fn write_all_of(rx: &mut Inbox, wire: &FakeWire) {
            loop {
                let finished = wire.finished.listen();
                {
                    let mut lane = wire.lane.lock();
                    lane.written += std::mem::take(&mut lane.batch).frames();
                    if lane.written == lane.want {
                        return;
                    }
                    lane.idle = !rx.has_taken();
                }
                block_on(futures_lite::FutureExt::or(rx.ready(), finished));
                let mut lane = wire.lane.lock();
                lane.idle = false;
                rx.take_kick();
                lane.written += std::mem::take(&mut lane.batch).frames();
                while rx.try_recv().is_some() {
                    lane.written += 1;
                }
            }
        }

        /// Producers that write from their own task while the writer is parked, beside one
        /// that queues: every frame is written, by one or the other, and a writer parked
        /// while frames wait in the queue is always woken (loom reports a deadlock if not).
        fn direct_model(stall: bool, control: bool) {
            loom::model(move || {
                let (out, mut rx) = outbox(DEFAULT_MAX_QUEUED_BYTES, None);
                let wire = std::sync::Arc::new(FakeWire::default());
                {
                    let mut lane = wire.lane.lock();
                    lane.stall = stall;
                    lane.want = 3;
                }
                rx.attach(std::sync::Arc::downgrade(&wire) as Weak<dyn WriteNow>);
                let other = out.clone();
                let lone = thread::spawn(move || {
                    for seq in 1..=2 {
                        assert!(matches!(out.send_now(frame(seq, 8)), Send::Done(true)));
                    }
                });
                let queueing = thread::spawn(move || match control {
                    // Stream credit, which goes in front of the queue.
                    true => other.send_control(FrameHeader::new(FrameKind::Credit, 3)),
                    false => assert!(other.try_send(frame(3, 8))),
                });
                write_all_of(&mut rx, &wire);
                lone.join().unwrap();
                queueing.join().unwrap();
                assert_eq!(wire.lane.lock().written, 3);
            });
        }

        #[test]
        fn loom_frames_written_from_a_producer_task_or_by_the_writer_are_all_written() {
            direct_model(false, false);
        }

        #[test]
        fn loom_credit_queued_beside_a_producer_write_is_written() {
            direct_model(false, true);
        }

        #[test]
        fn loom_a_producer_write_left_unfinished_is_finished_by_the_writer() {
            direct_model(true, false);
        }
    }

    /// A waker that counts its wakes.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Parks the writer side of `rx` (nothing queued) with a waker that counts its wakes.
    fn park(rx: &mut Inbox) -> Arc<Wakes> {
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut ready = std::pin::pin!(rx.ready());
        let polled = ready.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(polled.is_pending());
        wakes
    }

    /// Frames pushed under a hold wait for its release, unless they fill half the queue (or a
    /// batch's worth): then the writer is woken to take them, and a producer that must wait
    /// for room always wakes it first, since nobody else would.
    #[test]
    fn pushes_under_a_hold_wake_the_writer_only_when_it_must_make_room() {
        let (out, mut rx) = outbox(1000, None);
        let wakes = park(&mut rx);
        let hold = out.hold();
        assert!(out.try_send(frame(0, 300)));
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            0,
            "under the hold, below half"
        );
        assert!(out.try_send(frame(1, 300)));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "half the queue: woken");
        drop(hold);

        let (out, mut rx) = outbox(1000, None);
        let wakes = park(&mut rx);
        let _hold = out.hold();
        assert!(out.try_send(frame(0, 400)));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
        let waited = out.send_blocking(frame(1, 700), Some(std::time::Instant::now()), false);
        assert_eq!(waited, None, "no room before the deadline");
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "a producer waiting for room woke the writer"
        );
    }

    #[test]
    fn release_gives_back_an_empty_queue() {
        let (out, mut rx) = outbox(DEFAULT_MAX_QUEUED_BYTES, None);
        for seq in 0..100 {
            assert!(out.try_send(frame(seq, 1)));
        }
        assert!(rx.held_bytes() > 0);
        while rx.try_recv().is_some() {}
        assert_eq!(rx.release(), 0);
    }
}
