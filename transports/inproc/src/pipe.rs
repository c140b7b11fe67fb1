//! One direction of an in-process connection: a bounded queue between a writer and a reader,
//! each waking the other. It carries bytes (the handshake) and whole frames (everything
//! after it) in one order; frames keep their bodies, so nothing is copied on the way.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use bytes::{Buf, BytesMut};
use flumen_stream::{
    frame::{Frame, HEADER_LEN},
    TransportRead, TransportWrite,
};
use futures_io::{AsyncRead, AsyncWrite};
use parking_lot::Mutex;

/// Bytes a pipe holds before its writer waits for the reader: 256 KiB. A frame counts its
/// header and body; one frame larger than this still passes, alone.
pub const PIPE_CAPACITY: usize = 256 * 1024;

/// What a pipe holds, in order.
#[derive(Debug)]
enum Chunk {
    /// Bytes written with `poll_write`.
    Bytes(BytesMut),
    /// A frame handed over whole.
    Frame(Frame),
}

#[derive(Debug, Default)]
struct State {
    chunks: VecDeque<Chunk>,
    /// Bytes the chunks stand for (a frame counts its header and body).
    held: usize,
    /// The writer closed or went: the reader reads what is left, then the end.
    write_closed: bool,
    /// The reader went: writes fail.
    read_closed: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl State {
    /// Takes `n` bytes off what is held and returns the writer to wake, if it waits.
    fn taken(&mut self, n: usize) -> Option<Waker> {
        self.held -= n;
        self.writer.take()
    }

    /// Whether the writer may add now; registers it to be woken otherwise.
    fn room(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        if self.read_closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if self.write_closed {
            return Err(io::Error::other("write after close"));
        }
        if self.held >= PIPE_CAPACITY {
            self.writer = Some(cx.waker().clone());
            return Ok(false);
        }
        Ok(true)
    }
}

type Shared = Arc<Mutex<State>>;

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// The receiving half of an in-process connection.
#[derive(Debug)]
pub struct InProcReader(Shared);

/// The sending half of an in-process connection; closing it ends the peer's reads.
#[derive(Debug)]
pub struct InProcWriter(Shared);

/// A new pipe: its writing and reading ends.
pub(crate) fn pipe() -> (InProcWriter, InProcReader) {
    let shared = Shared::default();
    (InProcWriter(shared.clone()), InProcReader(shared))
}

impl InProcReader {
    /// Takes up to `max` bytes with `take`, or registers to be woken. A frame at the front
    /// is encoded first: read as bytes, the pipe is a byte stream like any other.
    fn poll_take(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        take: impl FnOnce(&mut BytesMut, usize),
    ) -> Poll<io::Result<usize>> {
        let mut state = self.0.lock();
        if let Some(Chunk::Frame(frame)) = state.chunks.front() {
            let mut encoded = BytesMut::with_capacity(HEADER_LEN + frame.body.len());
            frame.encode(&mut encoded);
            state.chunks[0] = Chunk::Bytes(encoded);
        }
        // The front chunk, if any, is bytes now.
        let Some(Chunk::Bytes(bytes)) = state.chunks.front_mut() else {
            if state.write_closed {
                return Poll::Ready(Ok(0));
            }
            state.reader = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let n = max.min(bytes.len());
        take(bytes, n);
        if bytes.is_empty() {
            state.chunks.pop_front();
        }
        let writer = state.taken(n);
        drop(state);
        wake(writer);
        Poll::Ready(Ok(n))
    }
}

impl Drop for InProcReader {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.read_closed = true;
        state.chunks = VecDeque::new();
        state.held = 0;
        let writer = state.writer.take();
        drop(state);
        wake(writer);
    }
}

impl AsyncRead for InProcReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_take(cx, buf.len(), |bytes, n| bytes.copy_to_slice(&mut buf[..n]))
    }
}

/// Appends bytes straight to the core's buffer (no zero-fill, one copy), and hands frames
/// over whole (no copy).
impl TransportRead for InProcReader {
    const READS_UNINIT: bool = true;
    const CARRIES_FRAMES: bool = true;

    fn poll_read_buf(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        self.poll_take(cx, max, |bytes, n| {
            buf.extend_from_slice(&bytes[..n]);
            bytes.advance(n);
        })
    }

    fn poll_read_frames(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<Frame>,
        bytes: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let mut state = self.0.lock();
        let mut n = 0;
        match state.chunks.pop_front() {
            None if state.write_closed => return Poll::Ready(Ok(0)),
            None => {
                state.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Some(Chunk::Bytes(front)) => {
                n = front.len();
                bytes.extend_from_slice(&front);
            }
            Some(Chunk::Frame(first)) => {
                n += HEADER_LEN + first.body.len();
                frames.push_back(first);
                while let Some(Chunk::Frame(_)) = state.chunks.front() {
                    if let Some(Chunk::Frame(frame)) = state.chunks.pop_front() {
                        n += HEADER_LEN + frame.body.len();
                        frames.push_back(frame);
                    }
                }
            }
        }
        let writer = state.taken(n);
        drop(state);
        wake(writer);
        Poll::Ready(Ok(n))
    }
}

impl InProcWriter {
    /// Appends what fits of `bufs`, or registers to be woken when there is room.
    fn poll_put(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        let mut state = self.0.lock();
        match state.room(cx) {
            Err(e) => return Poll::Ready(Err(e)),
            Ok(_) if wanted == 0 => return Poll::Ready(Ok(0)),
            Ok(false) => return Poll::Pending,
            Ok(true) => {}
        }
        let room = PIPE_CAPACITY - state.held;
        let mut data = BytesMut::with_capacity(wanted.min(room));
        for buf in bufs {
            let n = buf.len().min(room - data.len());
            data.extend_from_slice(&buf[..n]);
            if data.len() == room {
                break;
            }
        }
        let written = data.len();
        match state.chunks.back_mut() {
            Some(Chunk::Bytes(tail)) => tail.extend_from_slice(&data),
            _ => state.chunks.push_back(Chunk::Bytes(data)),
        }
        state.held += written;
        let reader = state.reader.take();
        drop(state);
        wake(reader);
        Poll::Ready(Ok(written))
    }

    fn close(&self) {
        let mut state = self.0.lock();
        state.write_closed = true;
        let reader = state.reader.take();
        drop(state);
        wake(reader);
    }
}

impl Drop for InProcWriter {
    fn drop(&mut self) {
        self.close();
    }
}

impl AsyncWrite for InProcWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_put(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_put(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close();
        Poll::Ready(Ok(()))
    }
}

/// Moves frames as they are: the reader gets the writer's bodies, not copies.
impl TransportWrite for InProcWriter {
    const CARRIES_FRAMES: bool = true;

    fn poll_write_frames(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<Frame>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.0.lock();
        match state.room(cx) {
            Err(e) => return Poll::Ready(Err(e)),
            Ok(false) => return Poll::Pending,
            Ok(true) => {}
        }
        while state.held < PIPE_CAPACITY {
            let Some(frame) = frames.pop_front() else {
                break;
            };
            state.held += HEADER_LEN + frame.body.len();
            state.chunks.push_back(Chunk::Frame(frame));
        }
        let reader = state.reader.take();
        drop(state);
        wake(reader);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use flumen_stream::frame::{FrameHeader, FrameKind};
    use futures_lite::{future::block_on, AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn bytes_arrive_in_order_then_the_end() {
        let (mut writer, mut reader) = pipe();
        block_on(async {
            writer.write_all(b"hello ").await.unwrap();
            writer.write_all(b"world").await.unwrap();
            AsyncWriteExt::close(&mut writer).await.unwrap();
            let mut got = Vec::new();
            reader.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hello world");
        });
    }

    #[test]
    fn a_full_pipe_stops_its_writer_until_the_reader_reads() {
        let (mut writer, mut reader) = pipe();
        let big = vec![7u8; PIPE_CAPACITY + 10];
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let first = Pin::new(&mut writer).poll_write(&mut cx, &big);
        assert!(matches!(first, Poll::Ready(Ok(PIPE_CAPACITY))));
        assert!(Pin::new(&mut writer)
            .poll_write(&mut cx, &big[PIPE_CAPACITY..])
            .is_pending());
        let mut chunk = [0u8; 100];
        block_on(reader.read_exact(&mut chunk)).unwrap();
        let again = Pin::new(&mut writer).poll_write(&mut cx, &big[PIPE_CAPACITY..]);
        assert!(matches!(again, Poll::Ready(Ok(10))));
    }

    fn frame(seq: u64, body: &[u8]) -> Frame {
        Frame::new(
            FrameHeader::new(FrameKind::Request, seq),
            Bytes::copy_from_slice(body),
        )
    }

    fn poll_frames(reader: &mut InProcReader) -> (VecDeque<Frame>, BytesMut, usize) {
        let mut cx = Context::from_waker(Waker::noop());
        let (mut frames, mut bytes) = (VecDeque::new(), BytesMut::new());
        let n = match Pin::new(reader).poll_read_frames(&mut cx, &mut frames, &mut bytes) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("no frames ready: {other:?}"),
        };
        (frames, bytes, n)
    }

    fn send_frames(writer: &mut InProcWriter, frames: &mut VecDeque<Frame>) -> Poll<()> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(writer)
            .poll_write_frames(&mut cx, frames)
            .map(|r| r.unwrap())
    }

    #[test]
    fn frames_pass_whole_after_the_bytes_written_before_them() {
        let (mut writer, mut reader) = pipe();
        block_on(writer.write_all(b"hello")).unwrap();
        let sent = frame(1, &[9; 100]);
        let body = sent.body.as_ptr();
        let mut queue = VecDeque::from([sent.clone(), frame(2, b"x")]);
        assert!(send_frames(&mut writer, &mut queue).is_ready());
        assert!(queue.is_empty());
        let (frames, bytes, n) = poll_frames(&mut reader);
        assert_eq!((frames.len(), &bytes[..], n), (0, &b"hello"[..], 5));
        let (frames, bytes, n) = poll_frames(&mut reader);
        assert!(bytes.is_empty());
        assert_eq!(n, 2 * HEADER_LEN + 101);
        assert_eq!(frames[0], sent);
        assert_eq!(
            frames[0].body.as_ptr(),
            body,
            "the body is the one sent, not a copy"
        );
        assert_eq!(frames[1].header.seq, 2);
    }

    #[test]
    fn frames_read_as_bytes_are_encoded() {
        let (mut writer, mut reader) = pipe();
        let sent = frame(7, b"body");
        assert!(send_frames(&mut writer, &mut VecDeque::from([sent.clone()])).is_ready());
        drop(writer);
        let mut got = Vec::new();
        block_on(reader.read_to_end(&mut got)).unwrap();
        let mut expected = BytesMut::new();
        sent.encode(&mut expected);
        assert_eq!(got, expected.to_vec());
    }

    #[test]
    fn a_full_pipe_stops_frames_but_one_larger_frame_passes_alone() {
        let (mut writer, mut reader) = pipe();
        let big = frame(1, &vec![1; PIPE_CAPACITY + 1]);
        let mut queue = VecDeque::from([big, frame(2, b"small")]);
        assert!(send_frames(&mut writer, &mut queue).is_ready());
        assert_eq!(queue.len(), 1, "the pipe is full after the large frame");
        assert!(send_frames(&mut writer, &mut queue).is_pending());
        let (frames, _, _) = poll_frames(&mut reader);
        assert_eq!(frames.len(), 1);
        assert!(send_frames(&mut writer, &mut queue).is_ready());
        assert!(queue.is_empty());
    }

    #[test]
    fn writes_fail_once_the_reader_is_gone() {
        let (mut writer, reader) = pipe();
        drop(reader);
        let err = block_on(writer.write_all(b"x")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
