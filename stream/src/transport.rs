//! The traits a byte transport implements so that the core can drive it.

use std::{
    collections::VecDeque,
    fmt::Debug,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::BytesMut;
use futures_io::{AsyncRead, AsyncWrite};

use crate::frame::Frame;

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
    type Writer: TransportWrite;
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

/// An address as text, as its `FromStr` reads it back: endpoint labels in statistics,
/// redirects, discovery files. Implemented for IP socket addresses and Unix socket paths; a
/// transport whose address type is its own implements it for that type, so that its
/// connections can be balanced.
pub trait AddressText {
    /// The address as text.
    fn to_text(&self) -> String;
}

impl AddressText for std::net::SocketAddr {
    fn to_text(&self) -> String {
        self.to_string()
    }
}

/// A path that is not UTF-8 is written lossily.
impl AddressText for std::path::PathBuf {
    fn to_text(&self) -> String {
        self.display().to_string()
    }
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
    type Writer: TransportWrite;
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

    /// Whether the peer's writer can hand over whole frames
    /// ([`TransportWrite::CARRIES_FRAMES`]), so that the core receives through
    /// [`poll_read_frames`](Self::poll_read_frames) instead of reading and decoding bytes.
    const CARRIES_FRAMES: bool = false;

    /// Receives what the peer sent next: the frames it handed over whole, appended to `frames`
    /// in order, or the bytes it wrote, appended to `bytes` (the core decodes those); never
    /// both in one call, so that order is kept. Returns the number of bytes received (a frame
    /// counts its header and body), zero at the end of the stream.
    ///
    /// The core checks every frame as it checks decoded ones (flags, length against its
    /// limit); the bodies are used as they are, without a copy. Called only when
    /// [`CARRIES_FRAMES`](Self::CARRIES_FRAMES) is set; the default fails with
    /// [`io::ErrorKind::Unsupported`].
    ///
    /// # Errors
    ///
    /// What the transport's receive returns.
    fn poll_read_frames(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<Frame>,
        bytes: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let _ = (cx, frames, bytes);
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

/// The sending half of a connection: an `AsyncWrite`, plus, where the transport can, a way to
/// hand whole frames to the peer without encoding them into bytes.
///
/// A byte transport implements nothing (`impl TransportWrite for MyWriter {}`). A transport
/// that never leaves the process (an in-process pipe) sets
/// [`CARRIES_FRAMES`](Self::CARRIES_FRAMES) and moves frames as they are, so that bodies
/// reach the peer without a copy; its reader then sets
/// [`TransportRead::CARRIES_FRAMES`]. The handshake still goes through `poll_write`: such a
/// transport carries bytes and frames in one ordered stream.
pub trait TransportWrite: AsyncWrite + Unpin + Send + 'static {
    /// Whether [`poll_write_frames`](Self::poll_write_frames) works, so that the core hands
    /// over frames instead of encoding and writing them.
    const CARRIES_FRAMES: bool = false;

    /// Takes frames from the front of `frames`, as many as the transport has room for.
    /// `Ready(Ok(()))` once at least one was taken (the core calls again while some are left);
    /// `Pending` while none can be (the transport wakes the task when there is room). A
    /// transport bounds what it holds by bytes, but takes one frame even when it is larger
    /// than that bound, so that every frame the peer accepts can pass.
    ///
    /// Called only when [`CARRIES_FRAMES`](Self::CARRIES_FRAMES) is set; the default fails
    /// with [`io::ErrorKind::Unsupported`].
    ///
    /// # Errors
    ///
    /// What the transport's send returns (the peer is gone).
    fn poll_write_frames(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<Frame>,
    ) -> Poll<io::Result<()>> {
        let _ = (cx, frames);
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}
