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
use socket2::SockRef;

use crate::TcpOptions;
use futures_io::{AsyncRead, AsyncWrite};

/// TCP on smol (`async-io`'s reactor). Works with any executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmolTcp {
    options: TcpOptions,
}

/// The receiving half of a smol TCP connection.
#[derive(Debug)]
pub struct SmolTcpReader(Arc<Async<TcpStream>>);

/// The sending half of a smol TCP connection; closing it sends `FIN`.
#[derive(Debug)]
pub struct SmolTcpWriter(Arc<Async<TcpStream>>);

/// A smol TCP listener.
#[derive(Debug)]
pub struct SmolTcpListener {
    listener: Async<TcpListener>,
    options: TcpOptions,
}

impl SmolTcp {
    /// TCP with `options` on every connection it opens or accepts.
    pub const fn with_options(options: TcpOptions) -> Self {
        Self { options }
    }
}

fn split(
    stream: Async<TcpStream>,
    options: &TcpOptions,
) -> io::Result<(SmolTcpReader, SmolTcpWriter)> {
    options.apply(SockRef::from(stream.get_ref()))?;
    let stream = Arc::new(stream);
    Ok((SmolTcpReader(stream.clone()), SmolTcpWriter(stream)))
}

impl Transport for SmolTcp {
    type Addr = SocketAddr;
    type Reader = SmolTcpReader;
    type Writer = SmolTcpWriter;
    type Listener = SmolTcpListener;

    async fn connect(&self, addr: &SocketAddr) -> io::Result<(SmolTcpReader, SmolTcpWriter)> {
        split(Async::<TcpStream>::connect(*addr).await?, &self.options)
    }

    async fn bind(&self, addr: &SocketAddr) -> io::Result<SmolTcpListener> {
        Ok(SmolTcpListener {
            listener: Async::new(crate::listener(addr)?)?,
            options: self.options,
        })
    }
}

impl Listener for SmolTcpListener {
    type Addr = SocketAddr;
    type Reader = SmolTcpReader;
    type Writer = SmolTcpWriter;
    type Connecting = Ready<io::Result<(SmolTcpReader, SmolTcpWriter)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, SocketAddr)> {
        let (stream, peer) = self.listener.accept().await?;
        Ok((ready(split(stream, &self.options)), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.get_ref().local_addr()
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
