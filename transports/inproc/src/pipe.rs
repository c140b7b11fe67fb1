//! One direction of an in-process connection: a bounded byte buffer between a writer and a
//! reader, each waking the other.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use bytes::{Buf, BytesMut};
use flumen_stream::TransportRead;
use futures_io::{AsyncRead, AsyncWrite};
use parking_lot::Mutex;

/// Bytes a pipe holds before its writer waits for the reader: 256 KiB.
pub const PIPE_CAPACITY: usize = 256 * 1024;

#[derive(Debug, Default)]
struct State {
    bytes: BytesMut,
    /// The writer closed or went: the reader reads what is left, then the end.
    write_closed: bool,
    /// The reader went: writes fail.
    read_closed: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

type Shared = Arc<Mutex<State>>;

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
    /// Takes up to `max` bytes with `take`, or registers to be woken.
    fn poll_take(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        take: impl FnOnce(&mut BytesMut, usize),
    ) -> Poll<io::Result<usize>> {
        let mut state = self.0.lock();
        if state.bytes.is_empty() {
            if state.write_closed {
                return Poll::Ready(Ok(0));
            }
            state.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = max.min(state.bytes.len());
        take(&mut state.bytes, n);
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
        Poll::Ready(Ok(n))
    }
}

impl Drop for InProcReader {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.read_closed = true;
        state.bytes = BytesMut::new();
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
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

/// Appends straight to the core's buffer: no zero-fill, one copy.
impl TransportRead for InProcReader {
    const READS_UNINIT: bool = true;

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
}

impl InProcWriter {
    /// Appends what fits of `bufs`, or registers to be woken when there is room.
    fn poll_put(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut state = self.0.lock();
        if state.read_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if state.write_closed {
            return Poll::Ready(Err(io::Error::other("write after close")));
        }
        let room = PIPE_CAPACITY.saturating_sub(state.bytes.len());
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        if wanted == 0 {
            return Poll::Ready(Ok(0));
        }
        if room == 0 {
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut written = 0;
        for buf in bufs {
            let n = buf.len().min(room - written);
            state.bytes.extend_from_slice(&buf[..n]);
            written += n;
            if written == room {
                break;
            }
        }
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
        Poll::Ready(Ok(written))
    }

    fn close(&self) {
        let mut state = self.0.lock();
        state.write_closed = true;
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
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

#[cfg(test)]
mod tests {
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

    #[test]
    fn writes_fail_once_the_reader_is_gone() {
        let (mut writer, reader) = pipe();
        drop(reader);
        let err = block_on(writer.write_all(b"x")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
