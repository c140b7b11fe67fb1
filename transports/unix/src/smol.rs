use std::{
    future::{ready, Ready},
    io::{self, IoSlice},
    os::unix::net::{UnixListener, UnixStream},
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use async_io::Async;
use flumen_stream::{Listener, Transport, TransportRead};
use futures_io::{AsyncRead, AsyncWrite};

use crate::{peer_path, Unlink};

/// Unix domain sockets on smol (`async-io`'s reactor). Works with any executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmolUnix;

/// The receiving half of a smol Unix socket connection.
#[derive(Debug)]
pub struct SmolUnixReader(Arc<Async<UnixStream>>);

/// The sending half of a smol Unix socket connection; closing it shuts the write side down.
#[derive(Debug)]
pub struct SmolUnixWriter(Arc<Async<UnixStream>>);

/// A smol Unix socket listener; dropping it removes its socket file.
#[derive(Debug)]
pub struct SmolUnixListener {
    listener: Async<UnixListener>,
    path: Unlink,
}

fn split(stream: Async<UnixStream>) -> (SmolUnixReader, SmolUnixWriter) {
    let stream = Arc::new(stream);
    (SmolUnixReader(stream.clone()), SmolUnixWriter(stream))
}

impl Transport for SmolUnix {
    type Addr = PathBuf;
    type Reader = SmolUnixReader;
    type Writer = SmolUnixWriter;
    type Listener = SmolUnixListener;

    async fn connect(&self, path: &PathBuf) -> io::Result<(SmolUnixReader, SmolUnixWriter)> {
        Ok(split(Async::<UnixStream>::connect(path).await?))
    }

    async fn bind(&self, path: &PathBuf) -> io::Result<SmolUnixListener> {
        Ok(SmolUnixListener {
            listener: Async::new(UnixListener::bind(path)?)?,
            path: Unlink(path.clone()),
        })
    }
}

impl Listener for SmolUnixListener {
    type Addr = PathBuf;
    type Reader = SmolUnixReader;
    type Writer = SmolUnixWriter;
    type Connecting = Ready<io::Result<(SmolUnixReader, SmolUnixWriter)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, PathBuf)> {
        let (stream, peer) = self.listener.accept().await?;
        Ok((ready(Ok(split(stream))), peer_path(&peer)))
    }

    fn local_addr(&self) -> io::Result<PathBuf> {
        Ok(self.path.0.clone())
    }
}

impl TransportRead for SmolUnixReader {}

impl AsyncRead for SmolUnixReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SmolUnixWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_close(cx)
    }
}
