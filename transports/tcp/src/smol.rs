use std::{
    future::{ready, Ready},
    io::{self, IoSlice},
    net::{SocketAddr, TcpListener, TcpStream},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use async_io::Async;
use flumen_stream::{Listener, Transport, TransportRead};
use futures_io::{AsyncRead, AsyncWrite};

/// TCP on smol (`async-io`'s reactor). Works with any executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmolTcp;

/// The receiving half of a smol TCP connection.
#[derive(Debug)]
pub struct SmolTcpReader(Arc<Async<TcpStream>>);

/// The sending half of a smol TCP connection; closing it sends `FIN`.
#[derive(Debug)]
pub struct SmolTcpWriter(Arc<Async<TcpStream>>);

/// A smol TCP listener.
#[derive(Debug)]
pub struct SmolTcpListener(Async<TcpListener>);

fn split(stream: Async<TcpStream>) -> io::Result<(SmolTcpReader, SmolTcpWriter)> {
    stream.get_ref().set_nodelay(true)?;
    let stream = Arc::new(stream);
    Ok((SmolTcpReader(stream.clone()), SmolTcpWriter(stream)))
}

impl Transport for SmolTcp {
    type Addr = SocketAddr;
    type Reader = SmolTcpReader;
    type Writer = SmolTcpWriter;
    type Listener = SmolTcpListener;

    async fn connect(&self, addr: &SocketAddr) -> io::Result<(SmolTcpReader, SmolTcpWriter)> {
        split(Async::<TcpStream>::connect(*addr).await?)
    }

    async fn bind(&self, addr: &SocketAddr) -> io::Result<SmolTcpListener> {
        Ok(SmolTcpListener(Async::<TcpListener>::bind(*addr)?))
    }
}

impl Listener for SmolTcpListener {
    type Addr = SocketAddr;
    type Reader = SmolTcpReader;
    type Writer = SmolTcpWriter;
    type Connecting = Ready<io::Result<(SmolTcpReader, SmolTcpWriter)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((ready(split(stream)), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }
}

impl TransportRead for SmolTcpReader {}

impl AsyncRead for SmolTcpReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SmolTcpWriter {
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
