//! The thin async layer shared by client and server drivers: the outgoing queue's message, the
//! batch writer, buffered reads, and the stop signal that ends a connection's tasks.

mod outbox;

use std::{
    collections::VecDeque,
    future::{poll_fn, Future},
    io::{self, IoSlice},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
};

use bytes::{Buf, Bytes, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::FutureExt;

pub(crate) use self::outbox::{outbox, Budget, Inbox, IoCounters, Outbox};
pub use self::outbox::{DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_QUEUED_BYTES_TOTAL};
pub(crate) use crate::signal::{Quiet, Stop, READER, TIMER, WRITER};
use crate::{
    compress::{compress, Compression},
    frame::{Frame, FrameDecoder, FrameError, FrameHeader, HEADER_LEN},
    transport::{TransportRead, TransportWrite},
};

/// Bodies up to this size are copied into the batch buffer; larger ones are written in place
/// with vectored writes (no copy).
const COPY_MAX: usize = 4 * 1024;

/// A batch stops taking queued frames once it holds this many bytes, so one flush never
/// buffers without bound while producers keep the queue full.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Most `IoSlice`s handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Smallest and largest amount a single read asks for. The read size adapts between the two:
/// it doubles when a read fills it and halves when reads come back small.
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 64 * 1024;

/// A fresh read buffer has room for this many reads of the current read size, so a buffer
/// grows with traffic (8 KiB at first, 128 KiB for bulk) instead of starting at its largest.
const READS_PER_BUFFER: usize = 2;

/// What a reader without a buffer (a new or quiet connection) reads into first, from memory
/// it already has; the buffer is allocated once bytes arrive.
const IDLE_READ: usize = 256;

/// Earlier read buffers a connection keeps to reuse once the frames cut from them are dropped
/// (at most this many, so at most `RETIRED_BUFFERS x 2 x MAX_READ` per busy connection).
const RETIRED_BUFFERS: usize = 4;

/// What a connection's writer task takes from its queue.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame; `header.len` equals `body.len()`.
    Frame(FrameHeader, Bytes),
    /// A frame whose body is up to three parts written back to back (metadata, message,
    /// attachment), so that none is copied to join them; `header.len` is their total length.
    /// Boxed, so that the common frame of one body moves as half as many bytes.
    Parts(FrameHeader, Box<[Bytes; 3]>),
    /// Write everything queued before this, close the write half, and stop the connection.
    Close,
}

impl Outgoing {
    /// A frame message for `body`, with the header's length set. The caller has checked the
    /// body against the peer's limit, which is a `u32`.
    pub(crate) fn frame(mut header: FrameHeader, body: Bytes) -> Self {
        header.len = body.len() as u32;
        Self::Frame(header, body)
    }

    /// What the message weighs against a queue's limit: its bytes on the wire.
    pub(crate) fn weight(&self) -> usize {
        crate::frame::HEADER_LEN
            + match self {
                Self::Frame(_, body) => body.len(),
                Self::Parts(header, _) => header.len as usize,
                Self::Close => 0,
            }
    }
}

impl From<Frame> for Outgoing {
    fn from(frame: Frame) -> Self {
        Self::Frame(frame.header, frame.body)
    }
}

/// Frames gathered for one write: small ones copied into a buffer, large bodies kept as their
/// own chunks and written with vectored I/O (sans-IO: the driver does the writing). For a
/// writer that carries whole frames ([`TransportWrite::CARRIES_FRAMES`]) the frames are kept
/// as they are and nothing is encoded.
#[derive(Debug, Default)]
pub(crate) struct WriteBatch {
    chunks: VecDeque<Bytes>,
    buf: BytesMut,
    len: usize,
    /// Frames pushed since the last flush.
    frames: u64,
    /// Whether frames are kept whole, in `whole`, instead of encoded.
    carries_frames: bool,
    whole: VecDeque<Frame>,
}

impl WriteBatch {
    /// An empty batch for writer `W`; its buffer is allocated by the first frame and grows
    /// with traffic.
    pub(crate) fn for_writer<W: TransportWrite>() -> Self {
        Self {
            carries_frames: W::CARRIES_FRAMES,
            ..Self::default()
        }
    }

    /// Gives the buffer's memory back if the batch is empty; returns the bytes still held.
    pub(crate) fn release(&mut self) -> usize {
        if self.is_empty() {
            self.buf = BytesMut::new();
            self.chunks = VecDeque::new();
            self.whole = VecDeque::new();
        }
        self.held_bytes()
    }

    /// Bytes of memory the batch holds.
    pub(crate) fn held_bytes(&self) -> usize {
        self.buf.capacity()
            + self.chunks.capacity() * std::mem::size_of::<Bytes>()
            + self.whole.capacity() * std::mem::size_of::<Frame>()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the batch should be flushed before taking more frames.
    pub(crate) fn is_full(&self) -> bool {
        self.len >= MAX_BATCH_BYTES
    }

    /// Appends one frame.
    pub(crate) fn push(&mut self, header: &FrameHeader, body: Bytes) {
        self.frames += 1;
        self.len += HEADER_LEN;
        if self.carries_frames {
            self.len += body.len();
            self.whole.push_back(Frame {
                header: *header,
                body,
            });
            return;
        }
        header.put(&mut self.buf);
        self.push_body(body);
    }

    /// Appends one frame whose body is `parts` back to back. Whole frames need one body: the
    /// parts are joined (copied) only if more than one is non-empty.
    pub(crate) fn push_parts(&mut self, header: &FrameHeader, parts: [Bytes; 3]) {
        if self.carries_frames {
            self.push(header, join(parts));
            return;
        }
        let [first, second, third] = parts;
        self.push(header, first);
        self.push_body(second);
        self.push_body(third);
    }

    /// Appends more body bytes to the frame pushed last.
    fn push_body(&mut self, body: Bytes) {
        if body.is_empty() {
            return;
        }
        self.len += body.len();
        if body.len() <= COPY_MAX {
            self.buf.extend_from_slice(&body);
        } else {
            self.chunks.push_back(self.buf.split().freeze());
            self.chunks.push_back(body);
        }
    }

    /// Fills `out` with the next bytes to write, in order; returns how many slices it used.
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut n = 0;
        for chunk in self.chunks.iter().filter(|c| !c.is_empty()) {
            if n == MAX_IOVECS {
                return n;
            }
            out[n] = IoSlice::new(chunk);
            n += 1;
        }
        if n < MAX_IOVECS && !self.buf.is_empty() {
            out[n] = IoSlice::new(&self.buf);
            n += 1;
        }
        n
    }

    /// Drops the first `n` bytes, which were written.
    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let step = n.min(front.len());
            front.advance(step);
            n -= step;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.buf.advance(n);
        if self.len == 0 {
            self.chunks.clear();
            self.buf.clear();
        }
    }

    /// Writes (or hands over) the whole batch to `w`; returns the number of writes it took.
    pub(crate) async fn flush<W: TransportWrite>(&mut self, w: &mut W) -> io::Result<u64> {
        if !self.carries_frames {
            return self.flush_bytes(w).await;
        }
        let mut writes = 0;
        self.frames = 0;
        while !self.whole.is_empty() {
            poll_fn(|cx| Pin::new(&mut *w).poll_write_frames(cx, &mut self.whole)).await?;
            writes += 1;
        }
        self.len = 0;
        Ok(writes)
    }

    /// Writes the whole encoded batch to `w`; returns the number of writes it took.
    async fn flush_bytes<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<u64> {
        let mut writes = 0;
        self.frames = 0;
        while !self.is_empty() {
            let written = poll_fn(|cx| {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let n = self.slices(&mut slices);
                Pin::new(&mut *w).poll_write_vectored(cx, &slices[..n])
            })
            .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.advance(written);
            writes += 1;
        }
        poll_fn(|cx| Pin::new(&mut *w).poll_flush(cx)).await?;
        Ok(writes)
    }
}

/// One body made of `parts` back to back: the only non-empty part as it is, or a copy of them
/// joined.
fn join(parts: [Bytes; 3]) -> Bytes {
    let total = parts.iter().map(Bytes::len).sum();
    if parts.iter().any(|part| part.len() == total) {
        // At most one part is non-empty: it is the body.
        return parts
            .into_iter()
            .find(|part| part.len() == total)
            .unwrap_or_default();
    }
    let mut joined = BytesMut::with_capacity(total);
    parts.iter().for_each(|part| joined.extend_from_slice(part));
    joined.freeze()
}

/// A connection's read buffer with an adaptive read size.
///
/// `futures-io` reads into initialised memory, so fresh buffer space must be zero-filled
/// before a read. To zero each byte of capacity once (not once per read), the initialised space
/// after the received bytes is kept as `spare` and read into directly; what a read fills is
/// joined back onto `buf` without copying (the two are contiguous halves of one allocation).
/// A transport that reads into uninitialised memory ([`TransportRead::READS_UNINIT`]) skips
/// all of that: it appends to `buf`'s spare capacity, and `spare` stays empty.
///
/// A transport that hands over whole frames ([`TransportRead::CARRIES_FRAMES`]) fills
/// `frames` instead; they are checked as decoded frames are, and their bodies used as they are.
///
/// The buffer holds no memory until bytes arrive, and gives it back on [`release`]
/// (a quiet connection).
///
/// [`release`]: Self::release
#[derive(Debug)]
pub(crate) struct ReadBuffer {
    /// Received bytes not yet decoded.
    pub(crate) buf: BytesMut,
    /// Whole frames received and not yet taken, after the bytes in `buf`.
    frames: VecDeque<Frame>,
    /// Zero-filled memory right after `buf`; the next read lands here.
    spare: BytesMut,
    read_size: usize,
    /// Earlier buffers, possibly still referenced by frames the application holds; one is
    /// reused as soon as nothing references it, instead of allocating (and faulting in) new
    /// memory while slow consumers pin the current one.
    retired: Vec<BytesMut>,
}

impl ReadBuffer {
    /// A buffer that holds no memory until bytes arrive.
    pub(crate) fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            frames: VecDeque::new(),
            spare: BytesMut::new(),
            read_size: MIN_READ,
            retired: Vec::new(),
        }
    }

    /// Takes the next frame: decoded from the bytes received, or one received whole and
    /// checked by `decoder`. `None` means more must be received.
    ///
    /// # Errors
    ///
    /// As [`FrameDecoder::decode`] and [`FrameDecoder::check`], and [`FrameError::Interleaved`]
    /// when whole frames arrive while bytes of a partial frame wait.
    pub(crate) fn next_frame(
        &mut self,
        decoder: &mut FrameDecoder,
    ) -> Result<Option<Frame>, FrameError> {
        if !self.buf.is_empty() {
            if let Some(frame) = decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if !self.frames.is_empty() {
                return Err(FrameError::Interleaved);
            }
            return Ok(None);
        }
        self.frames
            .pop_front()
            .map(|frame| decoder.check(frame))
            .transpose()
    }

    /// Gives the memory back if no partial frame is buffered; returns the bytes still held.
    /// Frames already cut from the buffer keep their part of it alive until they are dropped.
    pub(crate) fn release(&mut self) -> usize {
        if self.buf.is_empty() && self.frames.is_empty() {
            self.frames = VecDeque::new();
            self.buf = BytesMut::new();
            self.spare = BytesMut::new();
            self.retired = Vec::new();
            self.read_size = MIN_READ;
        }
        self.held_bytes()
    }

    /// Bytes of memory the buffer holds (retired buffers and the queue of whole frames
    /// included; those frames' bodies are the peer's memory, bounded by its transport).
    pub(crate) fn held_bytes(&self) -> usize {
        self.buf.capacity()
            + self.frames.capacity() * std::mem::size_of::<Frame>()
            + self.spare.capacity()
            + self.retired.iter().map(BytesMut::capacity).sum::<usize>()
    }

    /// Reads once from `r` while no memory is held: into a small scratch array, then into a
    /// buffer sized for what arrived.
    async fn read_idle<R: TransportRead>(&mut self, r: &mut R) -> io::Result<usize> {
        let mut scratch = [0u8; IDLE_READ];
        let n = poll_fn(|cx| Pin::new(&mut *r).poll_read(cx, &mut scratch)).await?;
        if n == 0 {
            return Ok(0);
        }
        if R::READS_UNINIT {
            // The buffer's spare capacity stays uninitialised; no zero-filled `spare`.
            self.make_room(self.read_size);
            self.buf.extend_from_slice(&scratch[..n]);
        } else {
            self.grow(self.read_size);
            self.spare[..n].copy_from_slice(&scratch[..n]);
            let filled = self.spare.split_to(n);
            self.buf.unsplit(filled);
        }
        Ok(n)
    }

    /// Reads once from `r` (as [`read_from`](Self::read_from)), unless the connection is told
    /// it went quiet first: then gives the memory back and returns `None`. Keeps the
    /// connection's read counters.
    pub(crate) async fn read_or_release<R: TransportRead>(
        &mut self,
        r: &mut R,
        decoder: &FrameDecoder,
        quiet: &Quiet,
        counters: &IoCounters,
    ) -> Option<io::Result<usize>> {
        let read = async { Some(self.read_from(r, decoder).await) };
        let released = async {
            quiet.wait(READER).await;
            None
        };
        let outcome = read.or(released).await;
        match &outcome {
            None => {
                quiet.take(READER);
                self.release();
            }
            Some(Ok(n)) if *n > 0 => {
                counters.reads.fetch_add(1, Ordering::Relaxed);
                counters.bytes_read.fetch_add(*n as u64, Ordering::Relaxed);
            }
            Some(_) => {}
        }
        counters
            .read_buffered
            .store(self.held_bytes(), Ordering::Relaxed);
        outcome
    }

    /// Reads once from `r`, with room for at least what `decoder` still needs for its current
    /// frame (already checked against the frame limit). Returns the number of bytes read;
    /// zero means end of stream. Cancel-safe: nothing changes unless the read completes.
    pub(crate) async fn read_from<R: TransportRead>(
        &mut self,
        r: &mut R,
        decoder: &FrameDecoder,
    ) -> io::Result<usize> {
        if R::CARRIES_FRAMES {
            let (frames, buf) = (&mut self.frames, &mut self.buf);
            return poll_fn(|cx| Pin::new(&mut *r).poll_read_frames(cx, frames, buf)).await;
        }
        if self.buf.capacity() == 0 && self.spare.capacity() == 0 && self.retired.is_empty() {
            return self.read_idle(r).await;
        }
        let want = self.read_size.max(decoder.needed());
        let n = if R::READS_UNINIT {
            // Straight into spare capacity: nothing to zero-fill. At most `want` bytes, so that
            // a read of a large frame's rest ends on the frame's boundary and the next buffer
            // starts without a partial frame to copy over.
            self.make_room(want);
            let buf = &mut self.buf;
            poll_fn(|cx| Pin::new(&mut *r).poll_read_buf(cx, buf, want)).await?
        } else {
            if self.spare.len() < want {
                self.grow(want);
            }
            let spare = &mut self.spare;
            let n = poll_fn(|cx| Pin::new(&mut *r).poll_read(cx, &mut spare[..])).await?;
            let filled = self.spare.split_to(n);
            self.buf.unsplit(filled);
            n
        };
        self.read_size = if n >= self.read_size {
            (self.read_size * 2).min(MAX_READ)
        } else if n < self.read_size / 4 {
            (self.read_size / 2).max(MIN_READ)
        } else {
            self.read_size
        };
        Ok(n)
    }

    /// The size of a new buffer: one small read while traffic is light (a quiet connection
    /// waking up), room for several reads once reads come back full.
    fn fresh_size(&self) -> usize {
        if self.read_size <= MIN_READ {
            MIN_READ
        } else {
            READS_PER_BUFFER * self.read_size
        }
    }

    /// Makes `spare` at least `want` bytes, zero-filling only memory that was never filled.
    fn grow(&mut self, want: usize) {
        let len = self.buf.len();
        self.buf.unsplit(std::mem::take(&mut self.spare));
        let needed = len + want;
        if self.buf.len() < needed {
            // Room in place (the buffer is free again, or has capacity left): use it.
            // Otherwise frames still held pin it: move the partial frame to a retired buffer
            // nobody references any more, or to a new one.
            if !self.buf.try_reclaim(needed - self.buf.len()) {
                self.move_to_fresh(len, needed);
            }
            self.buf.resize(needed, 0);
        }
        self.spare = self.buf.split_off(len);
    }

    /// Makes `buf`'s spare capacity at least `want` bytes, without initialising it (for
    /// transports that read into uninitialised memory).
    fn make_room(&mut self, want: usize) {
        let len = self.buf.len();
        if self.buf.capacity() - len < want && !self.buf.try_reclaim(want) {
            self.move_to_fresh(len, len + want);
        }
    }

    /// Moves the first `len` bytes (a partial frame) to a retired buffer nobody references any
    /// more, or to a new one, with room for `needed` bytes; the current buffer, pinned by
    /// frames still held, is retired.
    fn move_to_fresh(&mut self, len: usize, needed: usize) {
        let reusable = self.retired.iter_mut().position(|b| b.try_reclaim(needed));
        let mut next = match reusable {
            Some(i) => self.retired.swap_remove(i),
            None => BytesMut::with_capacity(needed.max(self.fresh_size())),
        };
        next.extend_from_slice(&self.buf[..len]);
        let mut pinned = std::mem::replace(&mut self.buf, next);
        pinned.clear();
        if self.retired.len() == RETIRED_BUFFERS {
            self.retired.remove(0);
        }
        self.retired.push(pinned);
    }
}

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
        let (frames, bytes) = (batch.frames, batch.len as u64);
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
                    Some((header, body)) => batch.push(&header, body),
                    None => batch.push(&header, body),
                }
            }
            Some(Outgoing::Parts(header, parts)) => {
                let [first, second, third] = &*parts;
                match compression.and_then(|c| compress(c, &header, &[first, second, third])) {
                    Some((header, body)) => batch.push(&header, body),
                    None => batch.push_parts(&header, *parts),
                }
            }
            Some(Outgoing::Close) => return true,
        }
    }
    false
}

/// Reads until `buf` holds at least `n` bytes.
pub(crate) async fn read_at_least<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    n: usize,
) -> io::Result<()> {
    let mut scratch = [0u8; 1024];
    while buf.len() < n {
        let got = poll_fn(|cx| Pin::new(&mut *r).poll_read(cx, &mut scratch)).await?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&scratch[..got]);
    }
    Ok(())
}

/// How long a side that closes a connection after queueing a `GoAway` keeps reading (and
/// discarding) what the peer still sends. Closing a TCP socket with unread input sends a reset,
/// which can destroy the `GoAway` before the peer reads it; draining until the peer closes its
/// side (or this long) lets the `GoAway` arrive. Bounds how long a closed connection keeps its
/// socket.
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// The most bytes read and discarded while lingering after a `GoAway`, so that a peer that
/// keeps sending cannot keep a closed connection busy.
pub const CLOSE_LINGER_BYTES: usize = 1 << 20;

/// Reads and discards until the peer closes its side, the read fails, [`CLOSE_LINGER_BYTES`]
/// were read, or `until` completes (the caller's [`CLOSE_LINGER`] timer).
pub(crate) async fn linger<R: AsyncRead + Unpin>(r: &mut R, until: impl Future<Output = ()>) {
    let drain = async {
        let mut scratch = [0u8; 2048];
        let mut discarded = 0;
        while discarded < CLOSE_LINGER_BYTES {
            match poll_fn(|cx| Pin::new(&mut *r).poll_read(cx, &mut scratch)).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    drain.or(until).await;
}

/// Writes all of `bytes`.
pub(crate) async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    let mut batch = WriteBatch::default();
    batch.buf.extend_from_slice(bytes);
    batch.len = bytes.len();
    batch.flush_bytes(w).await.map(drop)
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use super::*;
    use crate::frame::FrameKind;

    /// A reader over fixed bytes that hands out at most `step` bytes a read; `UNINIT` picks
    /// the core's read path (into spare capacity, or into zero-filled memory).
    struct Source<const UNINIT: bool> {
        bytes: Bytes,
        step: usize,
    }

    impl<const UNINIT: bool> AsyncRead for Source<UNINIT> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes.split_to(n));
            Poll::Ready(Ok(n))
        }
    }

    impl<const UNINIT: bool> TransportRead for Source<UNINIT> {
        const READS_UNINIT: bool = UNINIT;

        fn poll_read_buf(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut BytesMut,
            max: usize,
        ) -> Poll<io::Result<usize>> {
            assert!(
                buf.capacity() - buf.len() >= max,
                "the core makes room first"
            );
            let n = max.min(self.step).min(self.bytes.len());
            buf.extend_from_slice(&self.bytes.split_to(n));
            Poll::Ready(Ok(n))
        }
    }

    /// Decodes every frame of `wire` through `read`, holding all of them (so that buffers
    /// stay pinned and get retired), and returns their bodies.
    fn read_all<const UNINIT: bool>(wire: Bytes, step: usize) -> Vec<Bytes> {
        let mut source = Source::<UNINIT> { bytes: wire, step };
        let mut read = ReadBuffer::new();
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut frames = Vec::new();
        loop {
            while let Some(frame) = decoder.decode(&mut read.buf).unwrap() {
                frames.push(frame.body);
            }
            let n = futures_lite::future::block_on(read.read_from(&mut source, &decoder));
            if UNINIT {
                assert_eq!(read.spare.capacity(), 0, "no zero-filled room on this path");
            }
            if n.unwrap() == 0 {
                return frames;
            }
        }
    }

    #[test]
    fn both_read_paths_cut_the_same_frames_across_buffers() {
        let mut wire = BytesMut::new();
        let mut bodies = Vec::new();
        for (i, len) in [0, 1, 31, 4096, 70_000, 5, 200_000, 17]
            .into_iter()
            .enumerate()
        {
            let body = Bytes::from(vec![i as u8 + 1; len]);
            Frame::new(FrameHeader::new(FrameKind::Request, i as u64), body.clone())
                .encode(&mut wire);
            bodies.push(body);
        }
        let wire = wire.freeze();
        for step in [7, 1000, 65_536, usize::MAX] {
            assert_eq!(
                read_all::<true>(wire.clone(), step),
                bodies,
                "uninit, step {step}"
            );
            assert_eq!(
                read_all::<false>(wire.clone(), step),
                bodies,
                "zeroed, step {step}"
            );
        }
    }

    /// Fills the spare room completely, as a read would, and cuts it off as a frame the
    /// application holds.
    fn fill_and_hold(read: &mut ReadBuffer) -> Bytes {
        let len = read.spare.len();
        let filled = read.spare.split_to(len);
        read.buf.unsplit(filled);
        read.buf.split_to(len).freeze()
    }

    #[test]
    fn read_buffer_reuses_retired_memory_once_its_frames_are_dropped() {
        let mut read = ReadBuffer::new();
        // One maximal read fills the first buffer; its frame is held.
        read.read_size = MAX_READ / READS_PER_BUFFER;
        read.grow(MAX_READ);
        let first = fill_and_hold(&mut read);
        read.read_size = MAX_READ;
        // That buffer is pinned: the next reads go to a new one, whose frames are held too.
        let second: Vec<Bytes> = (0..READS_PER_BUFFER)
            .map(|_| {
                read.grow(MAX_READ);
                fill_and_hold(&mut read)
            })
            .collect();
        assert!(second.iter().all(|frame| frame.as_ptr() != first.as_ptr()));
        let start = first.as_ptr();
        drop(first);
        // The second buffer is pinned and full; the first is free again: reused, not
        // allocated, and zeroed where the next read lands.
        read.grow(MAX_READ);
        assert_eq!(read.spare.as_ptr(), start);
        assert!(read.spare.iter().all(|&b| b == 0));
        drop(second);
    }

    #[test]
    fn bytes_decode_before_whole_frames_and_never_around_them() {
        let frame = |seq| {
            Frame::new(
                FrameHeader::new(FrameKind::Request, seq),
                Bytes::from_static(b"body"),
            )
        };
        let mut read = ReadBuffer::new();
        let mut decoder = FrameDecoder::new(1024);
        frame(1).encode(&mut read.buf);
        read.frames.extend([frame(2), frame(3)]);
        let seqs: Vec<u64> = std::iter::from_fn(|| read.next_frame(&mut decoder).unwrap())
            .map(|f| f.header.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        // Whole frames behind a partial one break the stream's order.
        let mut partial = BytesMut::new();
        frame(4).encode(&mut partial);
        read.buf.extend_from_slice(&partial[..HEADER_LEN + 1]);
        read.frames.push_back(frame(5));
        assert_eq!(read.next_frame(&mut decoder), Err(FrameError::Interleaved));
    }

    #[test]
    fn whole_frames_keep_their_bodies_and_join_parts_only_when_needed() {
        let mut batch = WriteBatch {
            carries_frames: true,
            ..WriteBatch::default()
        };
        let body = Bytes::from(vec![1u8; 100]);
        let header = FrameHeader::new(FrameKind::Response, 1);
        batch.push_parts(&header, [Bytes::new(), body.clone(), Bytes::new()]);
        batch.push_parts(
            &header,
            [
                Bytes::from_static(b"m"),
                body.clone(),
                Bytes::from_static(b"a"),
            ],
        );
        assert_eq!(batch.len, 2 * HEADER_LEN + 100 + 102);
        assert!(
            batch.buf.is_empty() && batch.chunks.is_empty(),
            "nothing encoded"
        );
        assert_eq!(batch.whole[0].body.as_ptr(), body.as_ptr());
        let joined = &batch.whole[1].body;
        assert_eq!(&joined[..1], b"m");
        assert_eq!(&joined[1..101], &body[..]);
        assert_eq!(&joined[101..], b"a");
    }

    fn drain(batch: &mut WriteBatch, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !batch.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = batch.slices(&mut slices);
            let mut take = step;
            for s in &slices[..n] {
                let k = s.len().min(take);
                out.extend_from_slice(&s[..k]);
                take -= k;
                if take == 0 {
                    break;
                }
            }
            let wrote = step.min(batch.len);
            batch.advance(wrote);
        }
        out
    }

    #[test]
    fn batch_keeps_frame_order_across_small_and_large_bodies() {
        let bodies = [
            vec![1u8; 10],
            vec![2u8; COPY_MAX + 1],
            vec![3u8; 5],
            vec![4u8; 3 * COPY_MAX],
        ];
        for step in [1, 7, 4096, 1 << 20] {
            let mut batch = WriteBatch::default();
            let mut expected = BytesMut::new();
            for (i, body) in bodies.iter().enumerate() {
                let frame = Frame::new(
                    FrameHeader::new(FrameKind::Request, i as u64),
                    Bytes::from(body.clone()),
                );
                frame.encode(&mut expected);
                batch.push(&frame.header, frame.body);
            }
            assert_eq!(batch.len, expected.len());
            assert_eq!(
                drain(&mut batch, step),
                expected.to_vec(),
                "write step {step}"
            );
        }
    }
}
