use std::{
    future::{ready, Ready},
    io,
    net::SocketAddr,
};

use crate::TcpOptions;
use flumen_rt::io::TokioIo;
use flumen_stream::{Listener, Transport};
use socket2::SockRef;
use tokio::net::{
    tcp::{OwnedReadHalf, OwnedWriteHalf},
    TcpListener, TcpStream,
};

/// TCP on tokio. Must be used from within a tokio runtime.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioTcp {
    options: TcpOptions,
}

/// The receiving half of a tokio TCP connection.
pub type TokioTcpReader = TokioIo<OwnedReadHalf>;

/// The sending half of a tokio TCP connection; closing it sends `FIN`.
pub type TokioTcpWriter = TokioIo<OwnedWriteHalf>;

/// A tokio TCP listener.
#[derive(Debug)]
pub struct TokioTcpListener {
    listener: TcpListener,
    options: TcpOptions,
}

impl TokioTcp {
    /// TCP with `options` on every connection it opens or accepts.
    pub const fn with_options(options: TcpOptions) -> Self {
        Self { options }
    }

    /// Adopts a listener bound elsewhere (inherited from another process, or made with
    /// [`std_listener`](crate::std_listener)); accepted connections get this transport's
    /// options.
    ///
    /// # Errors
    ///
    /// If the listener cannot be made non-blocking or registered with tokio.
    pub fn listener_from_std(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<TokioTcpListener> {
        listener.set_nonblocking(true)?;
        Ok(TokioTcpListener {
            listener: TcpListener::from_std(listener)?,
            options: self.options,
        })
    }
}

fn split(stream: TcpStream, options: &TcpOptions) -> io::Result<(TokioTcpReader, TokioTcpWriter)> {
    options.apply(SockRef::from(&stream))?;
    let (reader, writer) = stream.into_split();
    Ok((TokioIo(reader), TokioIo(writer)))
}

impl Transport for TokioTcp {
    type Addr = SocketAddr;
    type Reader = TokioTcpReader;
    type Writer = TokioTcpWriter;
    type Listener = TokioTcpListener;

    async fn connect(&self, addr: &SocketAddr) -> io::Result<(TokioTcpReader, TokioTcpWriter)> {
        split(TcpStream::connect(addr).await?, &self.options)
    }

    async fn bind(&self, addr: &SocketAddr) -> io::Result<TokioTcpListener> {
        Ok(TokioTcpListener {
            listener: TcpListener::from_std(crate::listener(addr)?)?,
            options: self.options,
        })
    }
}

impl Listener for TokioTcpListener {
    type Addr = SocketAddr;
    type Reader = TokioTcpReader;
    type Writer = TokioTcpWriter;
    type Connecting = Ready<io::Result<(TokioTcpReader, TokioTcpWriter)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, SocketAddr)> {
        let (stream, peer) = self.listener.accept().await?;
        Ok((ready(split(stream, &self.options)), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}
