//! Frames gathered for one write (sans-IO): small bodies copied into one buffer, large ones
//! kept as their own chunks for vectored writes, whole frames kept as they are for a transport
//! that carries frames.

use std::{
    collections::VecDeque,
    future::poll_fn,
    io::{self, IoSlice},
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use futures_io::AsyncWrite;

use crate::{
    frame::{Frame, FrameHeader, HEADER_LEN},
    transport::TransportWrite,
};

/// Bodies up to this size are copied into the batch buffer; larger ones are written in place
/// with vectored writes (no copy).
const COPY_MAX: usize = 4 * 1024;

/// A batch stops taking queued frames once it holds this many bytes, so one flush never
/// buffers without bound while producers keep the queue full.
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Most `IoSlice`s handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Frames gathered for one write: small ones copied into a buffer, large bodies kept as their
/// own chunks and written with vectored I/O (sans-IO: the driver does the writing). For a
/// writer that carries whole frames ([`TransportWrite::CARRIES_FRAMES`]) the frames are kept
/// as they are and nothing is encoded.
#[derive(Debug, Default)]
pub(crate) struct WriteBatch {
    chunks: VecDeque<Bytes>,
    buf: BytesMut,
    len: usize,
    /// Frames pushed since the last completed flush.
    frames: u64,
    /// Bytes pushed since the last completed flush.
    bytes: u64,
    /// Writes made since the last completed flush.
    writes: u64,
    /// Whether frames are kept whole, in `whole`, instead of encoded.
    carries_frames: bool,
    whole: VecDeque<Frame>,
}

/// What one completed flush wrote, for the connection's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flushed {
    /// Frames written.
    pub(crate) frames: u64,
    /// Bytes written (headers and bodies).
    pub(crate) bytes: u64,
    /// Writes (syscalls, or hand-overs of whole frames) it took.
    pub(crate) writes: u64,
}

impl WriteBatch {
    /// Frames pushed since the last completed flush.
    #[cfg(flumen_loom)]
    pub(crate) fn frames(&self) -> u64 {
        self.frames
    }

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

    /// Whether nothing is left to do: every frame pushed was written and the transport
    /// flushed. (After the bytes are written, a flush that returned `Pending` still counts:
    /// a TLS writer can hold the last records until then.)
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0 && self.frames == 0
    }

    /// Whether the batch should be flushed before taking more frames.
    pub(crate) fn is_full(&self) -> bool {
        self.len >= MAX_BATCH_BYTES
    }

    /// Appends one frame.
    pub(crate) fn push(&mut self, header: &FrameHeader, body: Bytes) {
        self.frames += 1;
        self.len += HEADER_LEN;
        self.bytes += HEADER_LEN as u64;
        if self.carries_frames {
            self.len += body.len();
            self.bytes += body.len() as u64;
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
        self.bytes += body.len() as u64;
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

    /// Writes (or hands over) the whole batch to `w`, and flushes `w`; returns what was
    /// written since the last completed flush. Resumable: `Pending` keeps what is left, and
    /// the next call, with any task's context, goes on from there.
    ///
    /// # Errors
    ///
    /// What the transport's write or flush returns.
    pub(crate) fn poll_flush<W: TransportWrite>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<Flushed>> {
        if self.carries_frames {
            while !self.whole.is_empty() {
                ready!(Pin::new(&mut *w).poll_write_frames(cx, &mut self.whole))?;
                self.writes += 1;
            }
            self.len = 0;
        } else {
            ready!(self.poll_write_bytes(cx, w))?;
        }
        ready!(Pin::new(&mut *w).poll_flush(cx))?;
        Poll::Ready(Ok(self.flushed()))
    }

    /// Writes the encoded bytes left in the batch to `w`.
    fn poll_write_bytes<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<()>> {
        while self.len > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self.slices(&mut slices);
            let written = ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
            self.writes += 1;
        }
        Poll::Ready(Ok(()))
    }

    /// What was written since the last completed flush; starts the next count.
    fn flushed(&mut self) -> Flushed {
        let flushed = Flushed {
            frames: self.frames,
            bytes: self.bytes,
            writes: self.writes,
        };
        (self.frames, self.bytes, self.writes) = (0, 0, 0);
        flushed
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

/// Writes all of `bytes`, and flushes.
pub(crate) async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    let mut batch = WriteBatch::default();
    batch.buf.extend_from_slice(bytes);
    batch.len = bytes.len();
    poll_fn(|cx| batch.poll_write_bytes(cx, w)).await?;
    poll_fn(|cx| Pin::new(&mut *w).poll_flush(cx)).await
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use bytes::BytesMut;

    use super::*;
    use crate::frame::{Frame, FrameKind};

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
        while batch.len > 0 {
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
