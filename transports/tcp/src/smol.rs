use std::{
    future::{ready, Ready},
    io,
    net::{SocketAddr, TcpListener, TcpStream},
};

use async_io::Async;
use flumen_rt::io::SmolIo;
use flumen_stream::{Listener, Transport};
use socket2::SockRef;

use crate::TcpOptions;

/// TCP on smol (`async-io`'s reactor). Works with any executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmolTcp {
    options: TcpOptions,
}

/// The receiving half of a smol TCP connection.
pub type SmolTcpReader = SmolIo<TcpStream>;

/// The sending half of a smol TCP connection; closing it sends `FIN`.
pub type SmolTcpWriter = SmolIo<TcpStream>;

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

    /// Adopts a listener bound elsewhere (inherited from another process, or made with
    /// [`std_listener`](crate::std_listener)); accepted connections get this transport's
    /// options.
    ///
    /// # Errors
    ///
    /// If the listener cannot be made non-blocking or registered with the reactor.
    pub fn listener_from_std(&self, listener: TcpListener) -> io::Result<SmolTcpListener> {
        Ok(SmolTcpListener {
            listener: Async::new(listener)?,
            options: self.options,
        })
    }
}

fn split(
    stream: Async<TcpStream>,
    options: &TcpOptions,
) -> io::Result<(SmolTcpReader, SmolTcpWriter)> {
    options.apply(SockRef::from(stream.get_ref()))?;
    Ok(SmolIo::split(stream))
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
