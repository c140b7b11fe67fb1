//! The traits a byte transport implements so that the core can drive it.

use std::{fmt::Debug, future::Future, io};

use futures_io::{AsyncRead, AsyncWrite};

/// A way to open and accept reliable, ordered byte streams (TCP, QUIC streams, Unix sockets...).
///
/// A connection is a pair of halves: the core drives the reader and the writer from separate
/// tasks, so each half must work while the other is in use.
pub trait Transport: Send + Sync + 'static {
    /// The address type (`SocketAddr` for TCP).
    type Addr: Clone + Debug + Send + Sync + 'static;
    /// The receiving half of a connection.
    type Reader: AsyncRead + Unpin + Send + 'static;
    /// The sending half of a connection. Closing it (`poll_close`) must tell the peer that no
    /// more bytes follow (a TCP `FIN`).
    type Writer: AsyncWrite + Unpin + Send + 'static;
    /// A bound listener.
    type Listener: Listener<Addr = Self::Addr, Reader = Self::Reader, Writer = Self::Writer>;

    /// Opens a connection to `addr`.
    fn connect(
        &self,
        addr: &Self::Addr,
    ) -> impl Future<Output = io::Result<(Self::Reader, Self::Writer)>> + Send;

    /// Binds a listener on `addr`.
    fn bind(&self, addr: &Self::Addr) -> impl Future<Output = io::Result<Self::Listener>> + Send;
}

/// Accepts incoming connections.
pub trait Listener: Send + 'static {
    /// The address type.
    type Addr: Clone + Debug + Send + Sync + 'static;
    /// The receiving half of an accepted connection.
    type Reader: AsyncRead + Unpin + Send + 'static;
    /// The sending half of an accepted connection.
    type Writer: AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next connection and returns its halves and the peer's address.
    fn accept(
        &mut self,
    ) -> impl Future<Output = io::Result<(Self::Reader, Self::Writer, Self::Addr)>> + Send;

    /// The address this listener is bound to.
    ///
    /// # Errors
    ///
    /// If the operating system cannot tell.
    fn local_addr(&self) -> io::Result<Self::Addr>;
}
