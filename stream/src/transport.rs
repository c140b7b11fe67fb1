//! The traits a byte transport implements so that the core can drive it.

use std::{
    fmt::Debug,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::BytesMut;
use futures_io::{AsyncRead, AsyncWrite};

/// A way to open and accept reliable, ordered byte streams (TCP, QUIC streams, Unix sockets...).
///
/// A connection is a pair of halves: the core drives the reader and the writer from separate
/// tasks, so each half must work while the other is in use.
pub trait Transport: Send + Sync + 'static {
    /// The address type (`SocketAddr` for TCP).
    type Addr: Clone + Debug + Send + Sync + 'static;
    /// The receiving half of a connection.
    type Reader: TransportRead;
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
///
/// Accepting is split in two so that a slow or hostile peer cannot hold up the accept loop:
/// [`accept`](Listener::accept) returns as soon as a peer arrives, with a [`Connecting`]
/// future that finishes the transport's own handshake (TLS, QUIC). The server runs each
/// `Connecting` in its own task under its handshake timeout and limit. Transports without a
/// handshake return a future that is already ready.
///
/// [`Connecting`]: Listener::Connecting
pub trait Listener: Send + 'static {
    /// The address type.
    type Addr: Clone + Debug + Send + Sync + 'static;
    /// The receiving half of an accepted connection.
    type Reader: TransportRead;
    /// The sending half of an accepted connection.
    type Writer: AsyncWrite + Unpin + Send + 'static;
    /// Finishes the transport's handshake with an accepted peer.
    type Connecting: Future<Output = io::Result<(Self::Reader, Self::Writer)>> + Send + 'static;

    /// Waits for the next peer and returns its handshake and address.
    ///
    /// An error here is about the listener (for example, out of file descriptors); a peer
    /// that fails its handshake fails its `Connecting` instead.
    fn accept(&mut self)
        -> impl Future<Output = io::Result<(Self::Connecting, Self::Addr)>> + Send;

    /// The address this listener is bound to.
    ///
    /// # Errors
    ///
    /// If the operating system cannot tell.
    fn local_addr(&self) -> io::Result<Self::Addr>;
}

/// The receiving half of a connection: an `AsyncRead`, plus, where the transport can, a read
/// straight into a buffer's spare capacity.
///
/// `futures-io` reads into initialised memory, so the core zero-fills buffer space before it
/// reads into it: for bulk traffic, one `memset` per byte received. A transport whose runtime
/// can read into uninitialised memory safely (tokio's `ReadBuf`) says so with
/// [`READS_UNINIT`](Self::READS_UNINIT) and implements
/// [`poll_read_buf`](Self::poll_read_buf); the others implement nothing
/// (`impl TransportRead for MyReader {}`).
pub trait TransportRead: AsyncRead + Unpin + Send + 'static {
    /// Whether [`poll_read_buf`](Self::poll_read_buf) fills uninitialised capacity, so that
    /// the core calls it instead of zero-filling and calling `poll_read`.
    const READS_UNINIT: bool = false;

    /// Reads once, appending at most `max` bytes to `buf` (which has at least that much spare
    /// capacity); returns the number of bytes appended, zero at the end of the stream. Nothing
    /// is appended unless the read completes. The default zero-fills the room and calls
    /// `poll_read`.
    ///
    /// # Errors
    ///
    /// What the transport's read returns.
    fn poll_read_buf(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let len = buf.len();
        buf.resize(len + max, 0);
        let polled = self.as_mut().poll_read(cx, &mut buf[len..]);
        let n = match &polled {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        buf.truncate(len + n);
        polled
    }
}
