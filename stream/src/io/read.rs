//! A connection's read buffer: adaptive read sizes, memory reused once the frames cut from it
//! are dropped, and given back when the connection goes quiet.

use std::{
    collections::VecDeque,
    future::poll_fn,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use bytes::{Bytes, BytesMut};
use futures_lite::FutureExt;
use parking_lot::Mutex;

use super::{IoCounters, Quiet, READER};
use crate::{
    frame::{Frame, FrameDecoder, FrameError, FrameHeader, HEADER_LEN},
    transport::TransportRead,
};

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

/// Frames with bodies at least this long are read into a frame buffer of their own, reused
/// once the frame is dropped, instead of the read buffer: there, fresh memory would have to be
/// zero-filled before every one (transports that read into initialised memory), and frames
/// held by the application pin the buffer, so that partial frames move to fresh ones.
const OWN_BODY_MIN: usize = 16 * 1024;

/// Bytes of frame buffers ([`OWN_BODY_MIN`]) a connection keeps for reuse: at most this much
/// per busy connection (16 buffers of 64 KiB frames), given back when it goes quiet. A frame
/// buffer that does not fit is freed with its frame.
const BODY_POOL_BYTES: usize = 1024 * 1024;

/// A connection's read buffer with an adaptive read size.
///
/// `futures-io` reads into initialised memory, so fresh buffer space must be zero-filled
/// before a read. To zero each byte of capacity once (not once per read), the initialised space
/// after the received bytes is kept as `spare` and read into directly; what a read fills is
/// joined back onto `buf` without copying (the two are contiguous halves of one allocation).
/// A transport that reads into uninitialised memory ([`TransportRead::READS_UNINIT`]) skips
/// all of that: it appends to `buf`'s spare capacity, and `spare` stays empty.
///
/// On either path, a large frame ([`OWN_BODY_MIN`]) skips the buffer: once its header has
/// arrived, the rest is read straight into a frame buffer from a pool of initialised ones
/// ([`Body`]), whose body is handed out with [`Bytes::from_owner`] and which goes back to the
/// pool when the frame is dropped. After a large frame, the next is expected to be as long:
/// it is read whole (header and body) into a frame buffer, so that bulk traffic neither
/// zero-fills nor copies anything once the pool is warm. A frame of another length moves its
/// bytes where they belong, once.
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
    /// A large frame being read into a buffer of its own (initialised-memory transports).
    body: Option<Body>,
    /// Frame buffers given back by dropped frames; `None` until a large frame arrives.
    pool: Option<Arc<BodyPool>>,
    /// The body length of the last frame read into a buffer of its own: the next frame is
    /// expected to be as long (0: no expectation).
    expect: usize,
    /// Bytes zero-filled before reads so far: what reading into initialised memory cost.
    zeroed: usize,
    /// Bytes moved between the read buffer and frame buffers so far.
    moved: usize,
}

/// A large frame being read into a buffer of its own: its header, then its body.
#[derive(Debug)]
struct Body {
    /// Initialised memory, at least `end` bytes.
    buf: Vec<u8>,
    /// Bytes received so far, header included.
    filled: usize,
    /// Where the frame ends in `buf`: as its header says, or as expected until it arrives.
    end: usize,
    /// The header, once received.
    header: Option<FrameHeader>,
}

/// Frame buffers for reuse, each fully initialised (`len == capacity`), at most
/// [`BODY_POOL_BYTES`] of them.
#[derive(Debug, Default)]
struct BodyPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// The capacity of the buffers in `free`: changed under its lock, read without it (the
    /// reader reports what it holds after every read).
    bytes: AtomicUsize,
    /// Set when the connection gave its memory back: buffers of frames dropped later are
    /// freed, not kept for a reader that is gone.
    closed: AtomicBool,
}

impl BodyPool {
    /// The smallest free buffer of at least `len` initialised bytes and at most twice that
    /// (a larger one would hold memory the frame does not use for as long as it lives).
    fn take(&self, len: usize) -> Option<Vec<u8>> {
        let mut free = self.free.lock();
        let (i, _) = free
            .iter()
            .enumerate()
            .filter(|(_, buf)| buf.len() >= len && buf.len() <= 2 * len)
            .min_by_key(|(_, buf)| buf.len())?;
        let buf = free.swap_remove(i);
        self.bytes.fetch_sub(buf.capacity(), Ordering::Relaxed);
        Some(buf)
    }

    /// Keeps `buf` for reuse if it fits in [`BODY_POOL_BYTES`] and the pool is open.
    fn give(&self, buf: Vec<u8>) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut free = self.free.lock();
        if self.bytes() + buf.capacity() <= BODY_POOL_BYTES {
            self.bytes.fetch_add(buf.capacity(), Ordering::Relaxed);
            free.push(buf);
        }
    }

    /// Frees what the pool keeps, and whatever is given back later.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let mut free = self.free.lock();
        *free = Vec::new();
        self.bytes.store(0, Ordering::Relaxed);
    }

    /// Bytes the pool keeps.
    fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// A frame's body in a frame buffer: `len` bytes after the header. Dropping the last `Bytes`
/// of it gives the buffer back to the pool.
struct PooledBody {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<BodyPool>,
}

impl AsRef<[u8]> for PooledBody {
    fn as_ref(&self) -> &[u8] {
        &self.buf[HEADER_LEN..HEADER_LEN + self.len]
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
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
            body: None,
            pool: None,
            expect: 0,
            zeroed: 0,
            moved: 0,
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
        let frame = self.frames.pop_front().map(|frame| decoder.check(frame));
        decoder.expect_header();
        frame.transpose()
    }

    /// Gives the memory back, all of it if no partial frame is buffered, all but the frame
    /// buffer if a large frame is partly read; returns the bytes still held. Frames already
    /// cut from the buffer keep their part of it alive until they are dropped.
    pub(crate) fn release(&mut self) -> usize {
        // A frame buffer waiting for a frame that has not begun holds nothing to keep.
        if self.body.as_ref().is_some_and(|body| body.filled == 0) {
            self.body = None;
        }
        if self.buf.is_empty() && self.frames.is_empty() {
            self.frames = VecDeque::new();
            self.buf = BytesMut::new();
            self.spare = BytesMut::new();
            self.retired = Vec::new();
            self.read_size = MIN_READ;
            if let Some(pool) = self.pool.take() {
                pool.close();
            }
            if self.body.is_none() {
                self.expect = 0;
            }
        }
        self.held_bytes()
    }

    /// Whether part of a frame has arrived and waits for the rest (in the buffer, or in a
    /// large frame's own buffer).
    pub(crate) fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.body.as_ref().is_some_and(|body| body.filled > 0)
    }

    /// Bytes of memory the buffer holds (retired buffers, the body being read, the pool of
    /// body buffers and the queue of whole frames included; those frames' bodies are the
    /// peer's memory, bounded by its transport).
    pub(crate) fn held_bytes(&self) -> usize {
        let pooled = self.pool.as_ref().map_or(0, |pool| pool.bytes());
        self.buf.capacity()
            + self.frames.capacity() * std::mem::size_of::<Frame>()
            + self.spare.capacity()
            + self.retired.iter().map(BytesMut::capacity).sum::<usize>()
            + self.body.as_ref().map_or(0, |body| body.buf.capacity())
            + pooled
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
    /// zero means end of stream. Cancel-safe: no byte is lost if the read is dropped (a large
    /// frame's start may have moved into its own buffer meanwhile).
    pub(crate) async fn read_from<R: TransportRead>(
        &mut self,
        r: &mut R,
        decoder: &FrameDecoder,
    ) -> io::Result<usize> {
        if R::CARRIES_FRAMES {
            let (frames, buf) = (&mut self.frames, &mut self.buf);
            return poll_fn(|cx| Pin::new(&mut *r).poll_read_frames(cx, frames, buf)).await;
        }
        if let Some(n) = self.read_body(r, decoder).await {
            return n;
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

    /// Reads into a large frame's own buffer, if one is being read, one starts at the front
    /// of the buffer (its header received, its body [`OWN_BODY_MIN`] or longer), or one is
    /// expected (the last frame was large, and nothing of the next has arrived); `None`
    /// otherwise. A completed frame joins the whole frames, taken after the bytes in `buf`
    /// (none then: `buf` held only this frame's start, or nothing).
    async fn read_body<R: TransportRead>(
        &mut self,
        r: &mut R,
        decoder: &FrameDecoder,
    ) -> Option<io::Result<usize>> {
        if self.body.is_none() {
            let body = if self.buf.is_empty() {
                if self.expect == 0 {
                    return None;
                }
                self.frame_buffer(self.expect, &[])
            } else {
                let header = decoder.pending_header(&self.buf)?;
                if (header.len as usize) < OWN_BODY_MIN {
                    return None;
                }
                self.move_to_frame_buffer(header)
            };
            self.body = Some(body);
        }
        let body = self.body.as_mut()?;
        let rest = &mut body.buf[body.filled..body.end];
        let n = match poll_fn(|cx| Pin::new(&mut *r).poll_read(cx, rest)).await {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        body.filled += n;
        if n > 0 {
            self.after_body_read(decoder);
        }
        Some(Ok(n))
    }

    /// After a read into the frame buffer: reads its header once whole, and hands over the
    /// frame once complete. A frame unlike the one expected (another length, or a header the
    /// decoder must reject) goes back to the read buffer, decoded there as any other.
    fn after_body_read(&mut self, decoder: &FrameDecoder) {
        let Some(body) = self.body.as_mut() else {
            return;
        };
        if body.header.is_none() {
            let Some(head) = body.buf[..body.filled].first_chunk::<HEADER_LEN>() else {
                return;
            };
            let header = decoder.header(head).ok();
            let end = header.map_or(0, |header| HEADER_LEN + header.len as usize);
            match header {
                Some(header) if header.len as usize >= OWN_BODY_MIN && body.filled <= end => {
                    if body.buf.len() < end {
                        self.zeroed += end - body.buf.len();
                        body.buf.resize(end, 0);
                    }
                    body.end = end;
                    body.header = Some(header);
                }
                _ => {
                    // Small, invalid, or shorter than expected with the next frame's bytes
                    // read after it: the read buffer sorts it out.
                    self.expect = header
                        .map(|header| header.len as usize)
                        .filter(|&len| len >= OWN_BODY_MIN)
                        .unwrap_or(0);
                    if let Some(body) = self.body.take() {
                        self.moved += body.filled;
                        self.buf.extend_from_slice(&body.buf[..body.filled]);
                        self.give_back(body.buf);
                    }
                    return;
                }
            }
        }
        if body.filled == body.end {
            if let Some(Body {
                buf,
                header: Some(header),
                ..
            }) = self.body.take()
            {
                let len = header.len as usize;
                self.expect = len;
                let pool = self.pool.get_or_insert_with(Default::default).clone();
                let body = Bytes::from_owner(PooledBody { buf, len, pool });
                self.frames.push_back(Frame { header, body });
            }
        }
    }

    /// A frame buffer for a frame with a `len`-byte body, holding `received` (its first
    /// bytes): from the pool if it has one, zero-filled where never filled.
    fn frame_buffer(&mut self, len: usize, received: &[u8]) -> Body {
        let end = HEADER_LEN + len;
        let pooled = self.pool.as_ref().and_then(|pool| pool.take(end));
        let mut buf = pooled.unwrap_or_else(|| {
            self.zeroed += end;
            // Zeroed by the allocator: fresh pages from the system need no filling.
            vec![0; end]
        });
        self.moved += received.len();
        buf[..received.len()].copy_from_slice(received);
        Body {
            buf,
            filled: received.len(),
            end,
            header: None,
        }
    }

    /// A frame buffer for `header`'s frame, with what `buf` holds of it moved in. The memory
    /// those bytes took in `buf` becomes spare room again, still initialised, so that the
    /// next read into `buf` zero-fills nothing.
    fn move_to_frame_buffer(&mut self, header: FrameHeader) -> Body {
        let mut taken = self.buf.split_to(self.buf.len());
        let mut body = self.frame_buffer(header.len as usize, &taken);
        body.header = Some(header);
        self.expect = header.len as usize;
        // `taken` ends where `spare` begins (`grow` split them so): joined, without copying.
        if self.spare.capacity() > 0 && taken.as_ptr_range().end == self.spare.as_ptr() {
            taken.unsplit(std::mem::take(&mut self.spare));
            self.spare = taken;
        }
        body
    }

    /// Returns a frame buffer that was not handed out to the pool.
    fn give_back(&mut self, buf: Vec<u8>) {
        if let Some(pool) = &self.pool {
            pool.give(buf);
        }
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
            self.zeroed += needed - self.buf.len();
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

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use bytes::Bytes;
    use futures_io::AsyncRead;

    use super::*;
    use crate::frame::{FrameHeader, FrameKind, HEADER_LEN};

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
            while let Some(frame) = read.next_frame(&mut decoder).unwrap() {
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
        // Large frames of one length, then shorter, longer, small and invalid-looking
        // neighbours: the frame expected after a large one is not always the one that comes.
        let lengths = [
            0, 1, 31, 4096, 70_000, 5, 200_000, 17, 70_000, 70_000, 20_000, 90_000, 16_384, 16_383,
            65_536, 65_536, 1, 65_536,
        ];
        for (i, len) in lengths.into_iter().enumerate() {
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

    #[test]
    fn large_bodies_reuse_their_buffers_instead_of_zero_filling() {
        const FRAMES: usize = 20;
        const BODY: usize = 64 * 1024;
        let mut wire = BytesMut::new();
        for i in 0..FRAMES {
            let body = Bytes::from(vec![i as u8; BODY]);
            Frame::new(FrameHeader::new(FrameKind::Request, i as u64), body).encode(&mut wire);
        }
        let mut source = Source::<false> {
            bytes: wire.freeze(),
            step: 16 * 1024,
        };
        let mut read = ReadBuffer::new();
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut taken = 0;
        loop {
            while let Some(frame) = read.next_frame(&mut decoder).unwrap() {
                assert_eq!(frame.body, vec![taken as u8; BODY], "frame {taken}");
                taken += 1;
                // Dropped at once, as a typed call's body is once decoded.
            }
            let n = futures_lite::future::block_on(read.read_from(&mut source, &decoder));
            if n.unwrap() == 0 {
                break;
            }
        }
        assert_eq!(taken, FRAMES);
        // The first body's buffer is zero-filled once and then reused, and headers land in
        // the read buffer's small spare room: nowhere near one fill per byte received.
        let received = FRAMES * (BODY + HEADER_LEN);
        assert!(
            read.zeroed < 2 * BODY,
            "{} bytes zero-filled for {received} received",
            read.zeroed
        );
        // Only the first frame's start is moved (from the read buffer); the others are read
        // whole into their frame buffers.
        assert!(
            read.moved <= BODY,
            "{} bytes moved for {received} received",
            read.moved
        );
        assert!(
            read.held_bytes() >= BODY,
            "the pooled body buffer is counted"
        );
        assert_eq!(read.release(), 0, "and given back when quiet");
    }

    /// `count` frames with `body`-byte bodies, each of its own byte.
    fn large_frames(count: usize, body: usize) -> Bytes {
        let mut wire = BytesMut::new();
        for i in 0..count {
            let frame = Frame::new(
                FrameHeader::new(FrameKind::Request, i as u64),
                Bytes::from(vec![i as u8; body]),
            );
            frame.encode(&mut wire);
        }
        wire.freeze()
    }

    #[test]
    fn frame_buffers_are_counted_and_given_back() {
        const BODY: usize = 64 * 1024;
        let mut source = Source::<false> {
            bytes: large_frames(3, BODY),
            step: usize::MAX,
        };
        let mut read = ReadBuffer::new();
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut held = Vec::new();
        while held.len() < 3 {
            while let Some(frame) = read.next_frame(&mut decoder).unwrap() {
                held.push(frame);
            }
            if held.len() < 3 {
                let n = futures_lite::future::block_on(read.read_from(&mut source, &decoder));
                assert!(n.unwrap() > 0);
            }
        }
        let pool = read.pool.clone().expect("frame buffers were used");
        // Two dropped: their buffers wait in the pool, and the connection counts them.
        let last = held.pop();
        drop(held);
        assert!(pool.bytes() >= 2 * BODY);
        assert!(read.held_bytes() >= pool.bytes(), "the pool is counted");
        // Quiet: everything goes, and the frame still held frees its buffer when dropped.
        assert_eq!(read.release(), 0);
        assert_eq!(read.expect, 0, "a quiet connection expects no large frame");
        drop(last);
        assert_eq!(pool.bytes(), 0, "a buffer went back to a released pool");
    }

    #[test]
    fn the_pool_keeps_fitting_buffers_within_its_bound() {
        let pool = BodyPool::default();
        // A buffer much larger than the frame is not handed out for it.
        pool.give(vec![0; 200_000]);
        assert!(pool.take(20_000).is_none());
        assert!(pool.take(150_000).is_some());
        // Never more than its bound.
        for _ in 0..20 {
            pool.give(vec![0; HEADER_LEN + 64 * 1024]);
        }
        assert!(pool.bytes() <= BODY_POOL_BYTES, "{}", pool.bytes());
        assert!(pool.bytes() > BODY_POOL_BYTES / 2);
    }

    #[test]
    fn an_oversized_header_after_a_large_frame_is_refused_before_its_body() {
        const BODY: usize = 64 * 1024;
        let mut wire = BytesMut::from(&large_frames(1, BODY)[..]);
        let mut header = [0u8; HEADER_LEN];
        FrameHeader {
            len: 1 << 30,
            ..FrameHeader::new(FrameKind::Request, 9)
        }
        .encode(&mut header);
        wire.extend_from_slice(&header);
        let mut source = Source::<false> {
            bytes: wire.freeze(),
            step: usize::MAX,
        };
        let mut read = ReadBuffer::new();
        let mut decoder = FrameDecoder::new(128 * 1024);
        let mut frames = 0;
        let refused = loop {
            match read.next_frame(&mut decoder) {
                Ok(Some(_)) => frames += 1,
                Ok(None) => {
                    let n = futures_lite::future::block_on(read.read_from(&mut source, &decoder));
                    assert!(n.unwrap() > 0, "ended without a verdict");
                }
                Err(e) => break e,
            }
            assert!(
                read.held_bytes() < 1 << 20,
                "{} bytes held",
                read.held_bytes()
            );
        };
        assert_eq!(frames, 1);
        assert!(
            matches!(refused, FrameError::TooLarge { .. }),
            "{refused:?}"
        );
    }

    #[test]
    fn a_partly_read_large_frame_survives_release() {
        const BODY: usize = 64 * 1024;
        let mut source = Source::<false> {
            bytes: large_frames(2, BODY),
            step: 10_000,
        };
        let mut read = ReadBuffer::new();
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut read_once = |read: &mut ReadBuffer, decoder: &FrameDecoder| {
            let n = futures_lite::future::block_on(read.read_from(&mut source, decoder));
            n.unwrap()
        };
        // The header and some of the body: the frame moves into its own buffer.
        while read.body.is_none() {
            assert_eq!(read.next_frame(&mut decoder).unwrap(), None);
            read_once(&mut read, &decoder);
        }
        assert!(read.buf.is_empty() && read.has_partial(), "{read:?}");
        // Quiet meanwhile: all but the frame's own buffer goes.
        let body = read.body.as_ref().map_or(0, |body| body.buf.capacity());
        assert_eq!(read.release(), body);
        let mut bodies = Vec::new();
        while bodies.len() < 2 {
            match read.next_frame(&mut decoder).unwrap() {
                Some(frame) => bodies.push(frame.body),
                None => assert!(read_once(&mut read, &decoder) > 0, "ended early"),
            }
        }
        assert_eq!(bodies, [vec![0u8; BODY], vec![1u8; BODY]]);
        assert!(!read.has_partial());
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
}
