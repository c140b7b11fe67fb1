//! The writer task: takes everything queued, encodes it into one batch, and writes it with as
//! few (vectored) syscalls as the transport allows; and the write from a producer's own task
//! while the writer task is parked with nothing of its own ([`Wire`]).

use std::{
    collections::VecDeque,
    future::poll_fn,
    io,
    mem::size_of,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
    task::{Context, Poll, Waker},
};

use futures_lite::FutureExt;

use super::{
    batch::{Flushed, WriteBatch},
    outbox::{Queue, WriteNow},
    Inbox, Outgoing, Quiet, Stop, WRITER,
};
use crate::{
    compress::{compress, Compression},
    sync::Mutex,
    transport::TransportWrite,
};

/// Lets a server's watchdog see a flush that makes no progress.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteWatch<'a> {
    /// The watchdog's coarse clock.
    pub(crate) clock: &'a AtomicU64,
    /// The clock value when the current flush started, 0 when the writer is idle.
    pub(crate) flush_started: &'a AtomicU64,
}

/// Yields to the scheduler at most this many times in a row while woken callers are expected
/// to queue more frames ([`Outbox::callers_woken`]); bounds what a caller that never runs can delay.
const MAX_COALESCE_YIELDS: usize = 16;

/// The writer task: takes everything queued, encodes it into one batch, writes it with as few
/// (vectored) syscalls as the socket allows, and parks when the queue is drained.
///
/// Coalescing does not rely on the order in which the runtime polls tasks: a batch is held
/// while a producer says it is adding to it ([`Outbox::hold`], the server's reader while it
/// dispatches what one read brought), and the writer yields a bounded number of times while
/// callers woken with their replies have not yet queued their next request
/// ([`Outbox::callers_woken`]). On a multi-thread runtime the writer is otherwise run the moment the
/// first of many producers wakes it, and writes one frame per syscall.
///
/// While it is parked with nothing of its own, a producer that knows no other frame is coming
/// writes from its own task instead of waking it ([`Outbox::send_now`], [`Wire`]): one task
/// hop less for a lone call.
///
/// Returns `Ok` when told to stop, when the queue closes, or after writing an
/// [`Outgoing::Close`] (then the write half is closed and `stop` is set). The transport's
/// write half is dropped before it returns.
///
/// [`Outbox::hold`]: super::Outbox::hold
/// [`Outbox::callers_woken`]: super::Outbox::callers_woken
/// [`Outbox::send_now`]: super::Outbox::send_now
pub(crate) async fn write_loop<W: TransportWrite>(
    mut rx: Inbox,
    w: W,
    stop: &Stop,
    quiet: &Quiet,
    watch: Option<WriteWatch<'_>>,
) -> io::Result<()> {
    let wire = Arc::new(Wire {
        lane: Mutex::new(Lane {
            w: Some(w),
            batch: WriteBatch::for_writer::<W>(),
            scratch: VecDeque::new(),
            idle: false,
            failed: None,
        }),
    });
    rx.attach(Arc::downgrade(&wire) as Weak<dyn WriteNow>);
    let result = drive(&mut rx, &wire, stop, quiet, watch).await;
    // The write half ends with the task, whoever still holds the wire.
    let w = wire.lane.lock().w.take();
    drop(w);
    result
}

/// The writer task's loop (see [`write_loop`]).
async fn drive<W: TransportWrite>(
    rx: &mut Inbox,
    wire: &Wire<W>,
    stop: &Stop,
    quiet: &Quiet,
    watch: Option<WriteWatch<'_>>,
) -> io::Result<()> {
    let mut closing = false;
    while !closing {
        let parks = {
            let mut lane = wire.lane.lock();
            if quiet.take(WRITER) {
                let held = lane.release() + rx.release();
                rx.counters().write_buffered.store(held, Ordering::Relaxed);
            }
            // Nothing of its own to write: producers may write while it is parked.
            lane.idle = lane.batch.is_empty() && !rx.has_taken();
            lane.idle
        };
        if parks
            && stop
                .guard(WRITER, rx.ready().or(quiet.wait(WRITER)))
                .await
                .is_none()
        {
            return Ok(());
        }
        {
            let mut lane = wire.lane.lock();
            lane.idle = false;
            rx.take_kick();
            if let Some(error) = lane.failed.take() {
                return Err(error);
            }
            closing = fill(rx, &mut lane.batch);
            if lane.batch.is_empty() {
                // Woken to release buffers, or only a `Close` was queued.
                continue;
            }
        }
        let mut yields = 0;
        while !closing && !wire.lane.lock().batch.is_full() {
            if rx.is_held() {
                if stop.guard(WRITER, rx.unheld()).await.is_none() {
                    return Ok(());
                }
            } else if rx.awaits_callers() && yields < MAX_COALESCE_YIELDS {
                yields += 1;
                futures_lite::future::yield_now().await;
            } else {
                break;
            }
            closing = fill(rx, &mut wire.lane.lock().batch);
        }
        rx.counters()
            .coalesce_yields
            .fetch_add(yields as u64, Ordering::Relaxed);
        if let Some(watch) = watch {
            watch
                .flush_started
                .store(watch.clock.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let flushed = poll_fn(|cx| wire.poll_flush(cx));
        let flushed = match stop.guard(WRITER, flushed).await {
            None => return Ok(()),
            Some(result) => result?,
        };
        record(rx.counters(), flushed);
        {
            // Under the lane's lock, which a producer's write holds while it counts what the
            // batch grew by: neither count is lost to the other.
            let lane = wire.lane.lock();
            let held = lane.held_bytes() + rx.held_bytes();
            rx.counters().write_buffered.store(held, Ordering::Relaxed);
        }
        if let Some(watch) = watch {
            watch.flush_started.store(0, Ordering::Relaxed);
        }
    }
    let closed = poll_fn(|cx| {
        let mut lane = wire.lane.lock();
        match lane.w.as_mut() {
            Some(w) => std::pin::Pin::new(w).poll_close(cx),
            None => Poll::Ready(Ok(())),
        }
    });
    let _ = stop.guard(WRITER, closed).await;
    stop.stop();
    Ok(())
}

/// Adds a completed flush to the counters.
fn record(counters: &super::IoCounters, flushed: Flushed) {
    counters
        .frames_written
        .fetch_add(flushed.frames, Ordering::Relaxed);
    counters
        .bytes_written
        .fetch_add(flushed.bytes, Ordering::Relaxed);
    counters.writes.fetch_add(flushed.writes, Ordering::Relaxed);
}

/// Moves queued messages into `batch` until it is full; `true` if a `Close` was taken.
fn fill(rx: &mut Inbox, batch: &mut WriteBatch) -> bool {
    while !batch.is_full() {
        match rx.try_recv() {
            None => return false,
            Some(Outgoing::Close) => return true,
            Some(message) => pack(batch, message, rx.compression(), rx.counters()),
        }
    }
    false
}

/// Encodes a frame message into `batch`, compressed if the connection compresses and the
/// frame gains by it. A `Close` carries nothing to encode.
#[inline(always)]
pub(super) fn pack(
    batch: &mut WriteBatch,
    message: Outgoing,
    compression: Option<&Compression>,
    counters: &super::IoCounters,
) {
    match message {
        Outgoing::Frame(header, body) => {
            match compression.and_then(|c| compress(c, &header, &[&body])) {
                Some((header, body)) => {
                    counters.frames_compressed.fetch_add(1, Ordering::Relaxed);
                    batch.push(&header, body);
                }
                None => batch.push(&header, body),
            }
        }
        Outgoing::Parts(header, parts) => {
            let [first, second, third] = &*parts;
            match compression.and_then(|c| compress(c, &header, &[first, second, third])) {
                Some((header, body)) => {
                    counters.frames_compressed.fetch_add(1, Ordering::Relaxed);
                    batch.push(&header, body);
                }
                None => batch.push_parts(&header, *parts),
            }
        }
        Outgoing::Close => {}
    }
}

/// A connection's write half and the batch being written, shared by the writer task with the
/// producers that write from their own tasks while it is parked.
///
/// The writer task takes the lock for each step (fill, one poll of the flush), never across an
/// await; a producer only tries it, and writes only while the writer task is parked with
/// nothing of its own (`idle`) and the batch is empty, so every frame still leaves in the order
/// it was queued. What a producer cannot write at once stays in the batch for the writer task,
/// which it wakes.
pub(crate) struct Wire<W> {
    lane: Mutex<Lane<W>>,
}

struct Lane<W> {
    /// The transport's write half; `None` once the writer task ended.
    w: Option<W>,
    batch: WriteBatch,
    /// An empty deque that a producer's write swaps with the queue's.
    scratch: VecDeque<Outgoing>,
    /// The writer task is parked with nothing of its own: a producer may write.
    idle: bool,
    /// A producer's write failed: the writer task ends the connection with it.
    failed: Option<io::Error>,
}

impl<W> Lane<W> {
    /// Bytes of memory the batch and the scratch deque hold.
    fn held_bytes(&self) -> usize {
        held_bytes(&self.batch, &self.scratch)
    }

    /// Gives back the batch's and the scratch deque's memory if they are empty; returns the
    /// bytes still held.
    fn release(&mut self) -> usize {
        if self.scratch.is_empty() {
            self.scratch = VecDeque::new();
        }
        self.batch.release();
        self.held_bytes()
    }
}

/// Bytes of memory `batch` and `scratch` hold.
fn held_bytes(batch: &WriteBatch, scratch: &VecDeque<Outgoing>) -> usize {
    batch.held_bytes() + scratch.capacity() * size_of::<Outgoing>()
}

impl<W: TransportWrite> Wire<W> {
    /// One poll of the writer task's flush of the batch.
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<Flushed>> {
        let mut lane = self.lane.lock();
        let Lane { w, batch, .. } = &mut *lane;
        match w.as_mut() {
            Some(w) => batch.poll_flush(cx, w),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl<W: TransportWrite> WriteNow for Wire<W> {
    fn write_now(&self, queue: &Queue) -> bool {
        let Some(mut lane) = self.lane.try_lock() else {
            return false;
        };
        if !lane.idle || !lane.batch.is_empty() {
            return false;
        }
        let Lane {
            w: Some(w),
            batch,
            scratch,
            failed,
            idle,
        } = &mut *lane
        else {
            return false;
        };
        let held = held_bytes(batch, scratch);
        if !queue.drain_into(batch, scratch) {
            return false;
        }
        if batch.is_empty() {
            return true;
        }
        // The batch's memory is the writer's: what it grew by is counted with it.
        let grown = held_bytes(batch, scratch).saturating_sub(held);
        let counters = queue.counters();
        counters.write_buffered.fetch_add(grown, Ordering::Relaxed);
        // The writer task's waker is not at hand: what cannot be written at once is left to
        // the writer task, which polls again with its own.
        let mut cx = Context::from_waker(Waker::noop());
        match batch.poll_flush(&mut cx, w) {
            Poll::Ready(Ok(flushed)) => {
                record(counters, flushed);
                counters.direct_writes.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Poll::Ready(Err(error)) => *failed = Some(error),
            Poll::Pending => {}
        }
        *idle = false;
        queue.kick();
        false
    }
}

impl<W> std::fmt::Debug for Wire<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wire")
    }
}

#[cfg(all(test, not(flumen_loom)))]
mod tests {
    use std::{pin::Pin, sync::Arc};

    use bytes::Bytes;
    use futures_io::AsyncWrite;
    use futures_lite::future::{block_on, yield_now, zip};

    use super::*;
    use crate::{
        frame::{FrameHeader, FrameKind, HEADER_LEN},
        io::{outbox, Budget, Outbox, Sending, DEFAULT_MAX_QUEUED_BYTES},
    };

    /// What a [`Sink`] was given.
    #[derive(Debug)]
    struct Written {
        bytes: usize,
        /// Bytes it takes before answering `Pending` to writes (a full socket).
        room: usize,
        /// Flushes to answer `Pending` (without waking anyone, as a socket whose room comes
        /// back wakes only the waker it was polled with) before answering `Ready`.
        stalls: usize,
        flushes: usize,
    }

    impl Default for Written {
        fn default() -> Self {
            Self {
                bytes: 0,
                room: usize::MAX,
                stalls: 0,
                flushes: 0,
            }
        }
    }

    /// A write half that takes bytes while it has room and flushes as `Written::stalls` says.
    struct Sink(Arc<parking_lot::Mutex<Written>>);

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut written = self.0.lock();
            let n = buf.len().min(written.room);
            if n == 0 {
                return Poll::Pending;
            }
            written.room -= n;
            written.bytes += n;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let mut written = self.0.lock();
            if written.stalls > 0 {
                written.stalls -= 1;
                return Poll::Pending;
            }
            written.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl TransportWrite for Sink {}

    fn request(seq: u64) -> Outgoing {
        Outgoing::frame(
            FrameHeader::new(FrameKind::Request, seq),
            Bytes::from_static(&[7; 32]),
        )
    }

    /// A waker that counts its wakes.
    struct Counted {
        waker: Waker,
        wakes: Arc<AtomicU64>,
    }

    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::Relaxed);
            self.waker.wake_by_ref();
        }
    }

    /// Runs a writer task beside `producer` (first polled once the writer parked), then
    /// stops it. The producer is given the queue, what the sink was given and how many times
    /// the writer task was woken.
    fn beside_writer(
        stalls: usize,
        producer: impl AsyncFnOnce(&Outbox, &parking_lot::Mutex<Written>, &AtomicU64),
    ) {
        // A server's budget over all its connections: what is written comes off it.
        let budget = Arc::new(Budget::new(DEFAULT_MAX_QUEUED_BYTES));
        let (out, rx) = outbox(DEFAULT_MAX_QUEUED_BYTES, Some(budget.clone()));
        let written = Arc::new(parking_lot::Mutex::new(Written {
            stalls,
            ..Written::default()
        }));
        let (stop, quiet) = (Stop::default(), Quiet::default());
        let wakes = Arc::new(AtomicU64::new(0));
        let mut writer = Box::pin(write_loop(rx, Sink(written.clone()), &stop, &quiet, None));
        let writer = poll_fn(|cx| {
            let waker = Waker::from(Arc::new(Counted {
                waker: cx.waker().clone(),
                wakes: wakes.clone(),
            }));
            writer.as_mut().poll(&mut Context::from_waker(&waker))
        });
        let producer = async {
            producer(&out, &written, &wakes).await;
            assert_eq!(budget.used(), 0, "written bytes are off the budget");
            stop.stop();
        };
        let (result, ()) = block_on(zip(writer, producer));
        result.unwrap();
    }

    /// Lets the writer task run if it was woken.
    async fn settle() {
        for _ in 0..3 {
            yield_now().await;
        }
    }

    #[test]
    fn a_lone_frame_is_written_from_its_producer_task_without_waking_the_writer() {
        beside_writer(0, async |out, written, wakes| {
            assert!(matches!(out.send_now(request(1)), Sending::Done(true)));
            let counters = out.counters();
            assert_eq!(counters.direct_writes.load(Ordering::Relaxed), 1);
            assert_eq!(counters.frames_written.load(Ordering::Relaxed), 1);
            assert_eq!(
                counters.bytes_written.load(Ordering::Relaxed),
                (HEADER_LEN + 32) as u64
            );
            assert_eq!(written.lock().bytes, HEADER_LEN + 32);
            settle().await;
            assert_eq!(
                wakes.load(Ordering::Relaxed),
                0,
                "the writer task was woken for a frame written from its producer's task"
            );
            // `send` wakes the writer task, which writes the frame.
            assert!(matches!(out.send(request(2)), Sending::Done(true)));
            settle().await;
            assert_eq!(wakes.load(Ordering::Relaxed), 1);
            assert_eq!(counters.frames_written.load(Ordering::Relaxed), 2);
            assert_eq!(counters.direct_writes.load(Ordering::Relaxed), 1);
        });
    }

    /// A TLS writer takes every byte and can still answer `Pending` to the flush: the
    /// producer leaves that flush to the writer task, which must finish it although the
    /// batch holds no byte any more.
    #[test]
    fn a_direct_write_whose_flush_waits_is_finished_by_the_writer() {
        beside_writer(1, async |out, written, _| {
            assert!(matches!(out.send_now(request(1)), Sending::Done(true)));
            assert_eq!(written.lock().flushes, 0, "the flush waits");
            let counters = out.counters();
            assert_eq!(counters.direct_writes.load(Ordering::Relaxed), 0);
            settle().await;
            assert_eq!(
                written.lock().flushes,
                1,
                "the writer task finished the flush"
            );
            assert_eq!(written.lock().bytes, HEADER_LEN + 32);
            assert_eq!(counters.frames_written.load(Ordering::Relaxed), 1);
        });
    }

    /// A full socket takes part of a frame written from its producer's task: the writer task
    /// writes the rest once there is room.
    #[test]
    fn a_direct_write_cut_short_is_finished_by_the_writer() {
        beside_writer(0, async |out, written, _| {
            written.lock().room = 10;
            assert!(matches!(out.send_now(request(1)), Sending::Done(true)));
            assert_eq!(written.lock().bytes, 10);
            let counters = out.counters();
            assert_eq!(counters.direct_writes.load(Ordering::Relaxed), 0);
            // Room again (a socket would wake the task that last polled it: the writer task
            // polls it again when woken by the producer).
            written.lock().room = usize::MAX;
            settle().await;
            assert_eq!(
                written.lock().bytes,
                HEADER_LEN + 32,
                "the writer task wrote the rest"
            );
            assert_eq!(counters.frames_written.load(Ordering::Relaxed), 1);
            assert_eq!(
                counters.bytes_written.load(Ordering::Relaxed),
                (HEADER_LEN + 32) as u64
            );
        });
    }
}
