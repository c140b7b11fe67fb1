//! The TCP transport, written once over [`Net`].

use std::{
    fmt,
    future::{ready, Ready},
    io,
    marker::PhantomData,
    net::SocketAddr,
};

use flumen_rt::Net;
use flumen_stream::{Listener, Transport};

use crate::TcpOptions;

/// TCP on the runtime `R`: [`TokioTcp`](crate::TokioTcp) (feature `tokio`; used from within
/// a tokio runtime) or [`SmolTcp`](crate::SmolTcp) (feature `smol`; any executor).
pub struct Tcp<R> {
    pub(crate) options: TcpOptions,
    rt: PhantomData<fn() -> R>,
}

/// A TCP listener on the runtime `R`.
pub struct TcpListener<R: Net> {
    listener: R::TcpListener,
    options: TcpOptions,
}

impl<R> Tcp<R> {
    /// TCP with `options` on every connection it opens or accepts.
    pub const fn with_options(options: TcpOptions) -> Self {
        Self {
            options,
            rt: PhantomData,
        }
    }
}

impl<R: Net> Tcp<R> {
    /// Adopts a listener bound elsewhere (inherited from another process, or made with
    /// [`std_listener`](crate::std_listener)); accepted connections get this transport's
    /// options.
    ///
    /// # Errors
    ///
    /// If the listener cannot be made non-blocking or registered with the runtime.
    pub fn listener_from_std(&self, listener: std::net::TcpListener) -> io::Result<TcpListener<R>> {
        Ok(TcpListener {
            listener: R::tcp_listener(listener)?,
            options: self.options,
        })
    }
}

impl<R> Clone for Tcp<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Tcp<R> {}

impl<R> Default for Tcp<R> {
    fn default() -> Self {
        Self::with_options(TcpOptions::default())
    }
}

impl<R> fmt::Debug for Tcp<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tcp")
            .field("runtime", &std::any::type_name::<R>())
            .field("options", &self.options)
            .finish()
    }
}

impl<R: Net> fmt::Debug for TcpListener<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("listener", &self.listener)
            .field("options", &self.options)
            .finish()
    }
}

/// Applies `options` to a new connection and splits it.
pub(crate) fn split<R: Net>(
    stream: R::TcpStream,
    options: &TcpOptions,
) -> io::Result<(R::TcpReader, R::TcpWriter)> {
    options.apply(R::tcp_socket(&stream))?;
    Ok(R::tcp_split(stream))
}

impl<R: Net> Transport for Tcp<R> {
    type Addr = SocketAddr;
    type Reader = R::TcpReader;
    type Writer = R::TcpWriter;
    type Listener = TcpListener<R>;

    async fn connect(&self, addr: &SocketAddr) -> io::Result<(R::TcpReader, R::TcpWriter)> {
        split::<R>(R::tcp_connect(*addr).await?, &self.options)
    }

    async fn bind(&self, addr: &SocketAddr) -> io::Result<TcpListener<R>> {
        self.listener_from_std(crate::listener(addr)?)
    }
}

impl<R: Net> Listener for TcpListener<R> {
    type Addr = SocketAddr;
    type Reader = R::TcpReader;
    type Writer = R::TcpWriter;
    type Connecting = Ready<io::Result<(R::TcpReader, R::TcpWriter)>>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, SocketAddr)> {
        let (stream, peer) = R::tcp_accept(&self.listener).await?;
        Ok((ready(split::<R>(stream, &self.options)), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        R::tcp_local_addr(&self.listener)
    }
}
