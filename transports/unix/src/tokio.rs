use std::{
    future::{ready, Ready},
    io::{self, IoSlice},
    path::PathBuf,
    pin::Pin,
    task::{ready, Context, Poll},
};

use flumen_stream::{Listener, Transport, TransportRead};
use futures_io::{AsyncRead, AsyncWrite};
use tokio::{
    io::{AsyncRead as _, AsyncWrite as _, ReadBuf},
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixListener, UnixStream,
    },
};

use crate::Unlink;

/// Unix domain sockets on tokio. Must be used from within a tokio runtime.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioUnix;

/// The receiving half of a tokio Unix socket connection.
#[derive(Debug)]
pub struct TokioUnixReader(OwnedReadHalf);

/// The sending half of a tokio Unix socket connection; closing it shuts the write side down.
#[derive(Debug)]
pub struct TokioUnixWriter(OwnedWriteHalf);

/// A tokio Unix socket listener; dropping it removes its socket file.
#[derive(Debug)]
pub struct TokioUnixListener {
    listener: UnixListener,
    path: Unlink,
}

fn split(stream: UnixStream) -> (TokioUnixReader, TokioUnixWriter) {
    let (reader, writer) = stream.into_split();
    (TokioUnixReader(reader), TokioUnixWriter(writer))
}

impl Transport for TokioUnix {
    type Addr = PathBuf;
    type Reader = TokioUnixReader;
    type Writer = TokioUnixWriter;
    type Listener = TokioUnixListener;

    async fn connect(&self, path: &PathBuf) -> io::Result<(TokioUnixReader, TokioUnixWriter)> {
        Ok(split(UnixStream::connect(path).await?))
    }

    async fn bind(&self, path: &PathBuf) -> io::Result<TokioUnixListener> {
        Ok(TokioUnixListener {
            listener: UnixListener::bind(path)?,
            path: Unlink(path.clone()),
        })
    }
}

impl Listener for TokioUnixListener {
    type Addr = PathBuf;
    type Reader = TokioUnixReader;
    type Writer = TokioUnixWriter;
    type Connecting = Ready<io::Result<(TokioUnixReader, TokioUnixWriter)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, PathBuf)> {
        let (stream, peer) = self.listener.accept().await?;
        let peer = peer
            .as_pathname()
            .map(ToOwned::to_owned)
            .unwrap_or_default();
        Ok((ready(Ok(split(stream))), peer))
    }

    fn local_addr(&self) -> io::Result<PathBuf> {
        Ok(self.path.0.clone())
    }
}

/// Reads straight into the core's buffer capacity through tokio's `ReadBuf` (no zero-fill).
impl TransportRead for TokioUnixReader {
    const READS_UNINIT: bool = true;

    fn poll_read_buf(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut bytes::BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        use bytes::BufMut;
        tokio_util::io::poll_read_buf(Pin::new(&mut self.0), cx, &mut buf.limit(max))
    }
}

impl AsyncRead for TokioUnixReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().len()))
    }
}

impl AsyncWrite for TokioUnixWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
