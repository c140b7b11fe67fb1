//! The writer task: takes everything queued, encodes it into one batch, and writes it with as
//! few (vectored) syscalls as the transport allows.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
};

use futures_lite::FutureExt;

use super::{batch::WriteBatch, Inbox, Outgoing, Quiet, Stop, WRITER};
use crate::{
    compress::{compress, Compression},
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
/// Returns `Ok` when told to stop, when the queue closes, or after writing an
/// [`Outgoing::Close`] (then the write half is closed and `stop` is set).
pub(crate) async fn write_loop<W: TransportWrite>(
    mut rx: Inbox,
    mut w: W,
    stop: &Stop,
    quiet: &Quiet,
    watch: Option<WriteWatch<'_>>,
    compression: &OnceLock<Compression>,
) -> io::Result<()> {
    let mut batch = WriteBatch::for_writer::<W>();
    let mut closing = false;
    while !closing {
        if quiet.take(WRITER) {
            let held = batch.release() + rx.release();
            rx.counters().write_buffered.store(held, Ordering::Relaxed);
        }
        if stop
            .guard(WRITER, rx.ready().or(quiet.wait(WRITER)))
            .await
            .is_none()
        {
            return Ok(());
        }
        closing = fill(&mut rx, &mut batch, compression.get());
        if batch.is_empty() {
            // Woken to release buffers, or only a `Close` was queued.
            continue;
        }
        let mut yields = 0;
        while !closing && !batch.is_full() {
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
            closing = fill(&mut rx, &mut batch, compression.get());
        }
        rx.counters()
            .coalesce_yields
            .fetch_add(yields as u64, Ordering::Relaxed);
        if let Some(watch) = watch {
            watch
                .flush_started
                .store(watch.clock.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let (frames, bytes) = (batch.frames(), batch.len() as u64);
        let writes = match stop.guard(WRITER, batch.flush(&mut w)).await {
            None => return Ok(()),
            Some(result) => result?,
        };
        let counters = rx.counters();
        counters.frames_written.fetch_add(frames, Ordering::Relaxed);
        counters.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        counters.writes.fetch_add(writes, Ordering::Relaxed);
        counters
            .write_buffered
            .store(batch.held_bytes() + rx.held_bytes(), Ordering::Relaxed);
        if let Some(watch) = watch {
            watch.flush_started.store(0, Ordering::Relaxed);
        }
    }
    let _ = stop
        .guard(WRITER, poll_fn(|cx| Pin::new(&mut w).poll_close(cx)))
        .await;
    stop.stop();
    Ok(())
}

/// Moves queued messages into `batch` until it is full; `true` if a `Close` was taken.
fn fill(rx: &mut Inbox, batch: &mut WriteBatch, compression: Option<&Compression>) -> bool {
    while !batch.is_full() {
        match rx.try_recv() {
            None => return false,
            Some(Outgoing::Frame(header, body)) => {
                let packed = compression.and_then(|c| compress(c, &header, &[&body]));
                match packed {
                    Some((header, body)) => {
                        rx.counters()
                            .frames_compressed
                            .fetch_add(1, Ordering::Relaxed);
                        batch.push(&header, body);
                    }
                    None => batch.push(&header, body),
                }
            }
            Some(Outgoing::Parts(header, parts)) => {
                let [first, second, third] = &*parts;
                match compression.and_then(|c| compress(c, &header, &[first, second, third])) {
                    Some((header, body)) => {
                        rx.counters()
                            .frames_compressed
                            .fetch_add(1, Ordering::Relaxed);
                        batch.push(&header, body);
                    }
                    None => batch.push_parts(&header, *parts),
                }
            }
            Some(Outgoing::Close) => return true,
        }
    }
    false
}
