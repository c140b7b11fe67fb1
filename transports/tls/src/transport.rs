//! TLS over any Flumen byte transport (TCP on tokio or smol, or anything else that implements
//! [`Transport`]).
//!
//! The inner transport's two halves are joined into one duplex stream for rustls, and the TLS
//! stream is split again for the core's reader and writer tasks behind one short lock: each
//! poll holds it only while rustls moves bytes between its buffers and the socket.
//!
//! After the handshake only the reader half reads and only the writer half writes. The writer
//! half is polled by the core's writer task, or, while that task is parked, once by a task that
//! queued a frame (a lone call's caller, the server's reader) with a no-op waker: whatever that
//! poll cannot finish, its flush included, is left to the writer task, which polls again with
//! its own waker. (A TLS 1.3 key update makes the reader answer through the inner writer;
//! rustls starts one only after billions of records.)

use std::{
    fmt,
    future::Future,
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use flumen_stream::{Listener, Transport, TransportRead, TransportWrite};
use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use parking_lot::Mutex;

use crate::{classify_io, ClientTls, ServerTls, TlsError};

/// TLS 1.3 (rustls) over the byte transport `T`, for example `TlsTransport<TokioTcp>`.
///
/// A client side ([`client`](Self::client)) is needed to connect and a server side
/// ([`server`](Self::server)) to listen. A failed handshake returns an `io::Error` carrying a
/// [`HandshakeError`](crate::HandshakeError).
#[derive(Clone)]
pub struct TlsTransport<T> {
    inner: T,
    client: Option<ClientTls>,
    connector: Option<TlsConnector>,
    acceptor: Option<TlsAcceptor>,
}

impl<T: fmt::Debug> fmt::Debug for TlsTransport<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTransport")
            .field("inner", &self.inner)
            .field("client", &self.client)
            .field("server", &self.acceptor.is_some())
            .finish()
    }
}

impl<T> TlsTransport<T> {
    /// TLS over `inner`, with neither side configured yet.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            client: None,
            connector: None,
            acceptor: None,
        }
    }

    /// The same TLS settings over another byte transport.
    pub fn with_inner<U>(&self, inner: U) -> TlsTransport<U> {
        TlsTransport {
            inner,
            client: self.client.clone(),
            connector: self.connector.clone(),
            acceptor: self.acceptor.clone(),
        }
    }

    /// Connects as `tls` says (trusted CAs, server name, optional client certificate).
    ///
    /// # Errors
    ///
    /// If rustls refuses the configuration.
    pub fn client(mut self, tls: ClientTls) -> Result<Self, TlsError> {
        self.connector = Some(TlsConnector::from(Arc::new(tls.to_rustls()?)));
        self.client = Some(tls);
        Ok(self)
    }

    /// Listens as `tls` says (certificate, key, optional client CAs for mutual TLS).
    ///
    /// # Errors
    ///
    /// If rustls refuses the configuration.
    pub fn server(mut self, tls: ServerTls) -> Result<Self, TlsError> {
        self.acceptor = Some(TlsAcceptor::from(Arc::new(tls.to_rustls()?)));
        Ok(self)
    }
}

fn unconfigured(side: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("no {side} TLS configuration"),
    )
}

impl<T: Transport> Transport for TlsTransport<T> {
    type Addr = T::Addr;
    type Reader = TlsReader<T::Reader, T::Writer>;
    type Writer = TlsWriter<T::Reader, T::Writer>;
    type Listener = TlsListener<T::Listener>;

    async fn connect(&self, addr: &T::Addr) -> io::Result<(Self::Reader, Self::Writer)> {
        let (Some(connector), Some(client)) = (&self.connector, &self.client) else {
            return Err(unconfigured("client"));
        };
        let (reader, writer) = self.inner.connect(addr).await?;
        let stream = connector
            .connect(client.server_name().clone(), Duplex { reader, writer })
            .await
            .map_err(classify_io)?;
        Ok(split(stream.into()))
    }

    async fn bind(&self, addr: &T::Addr) -> io::Result<Self::Listener> {
        let acceptor = self
            .acceptor
            .clone()
            .ok_or_else(|| unconfigured("server"))?;
        Ok(TlsListener {
            inner: self.inner.bind(addr).await?,
            acceptor,
        })
    }
}

/// Accepts connections of the inner transport and runs the server side of the TLS handshake.
pub struct TlsListener<L> {
    inner: L,
    acceptor: TlsAcceptor,
}

impl<L: fmt::Debug> fmt::Debug for TlsListener<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The server side of one TLS handshake.
pub type TlsConnecting<R, W> =
    Pin<Box<dyn Future<Output = io::Result<(TlsReader<R, W>, TlsWriter<R, W>)>> + Send>>;

impl<L: Listener> Listener for TlsListener<L> {
    type Addr = L::Addr;
    type Reader = TlsReader<L::Reader, L::Writer>;
    type Writer = TlsWriter<L::Reader, L::Writer>;
    type Connecting = TlsConnecting<L::Reader, L::Writer>;

    async fn accept(&mut self) -> io::Result<(Self::Connecting, L::Addr)> {
        let (connecting, peer) = self.inner.accept().await?;
        let acceptor = self.acceptor.clone();
        let handshake = async move {
            let (reader, writer) = connecting.await?;
            let stream = acceptor
                .accept(Duplex { reader, writer })
                .await
                .map_err(classify_io)?;
            Ok(split(stream.into()))
        };
        Ok((Box::pin(handshake), peer))
    }

    fn local_addr(&self) -> io::Result<L::Addr> {
        self.inner.local_addr()
    }
}

/// The inner transport's halves as the one duplex stream rustls wants.
#[derive(Debug)]
pub struct Duplex<R, W> {
    reader: R,
    writer: W,
}

impl<R: AsyncRead + Unpin, W: Unpin> AsyncRead for Duplex<R, W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: AsyncWrite + Unpin> AsyncWrite for Duplex<R, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_close(cx)
    }
}

type Shared<R, W> = Arc<Mutex<TlsStream<Duplex<R, W>>>>;

fn split<R, W>(stream: TlsStream<Duplex<R, W>>) -> (TlsReader<R, W>, TlsWriter<R, W>) {
    let shared = Arc::new(Mutex::new(stream));
    (TlsReader(shared.clone()), TlsWriter(shared))
}

/// The receiving half of a TLS connection.
pub struct TlsReader<R, W>(Shared<R, W>);

/// The sending half of a TLS connection; closing it sends TLS `close_notify`, then closes the
/// inner transport's writer.
pub struct TlsWriter<R, W>(Shared<R, W>);

impl<R, W> fmt::Debug for TlsReader<R, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsReader").finish_non_exhaustive()
    }
}

impl<R, W> fmt::Debug for TlsWriter<R, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsWriter").finish_non_exhaustive()
    }
}

impl<R, W> TransportRead for TlsReader<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> AsyncRead for TlsReader<R, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        // An alert after the handshake (a server rejecting our client certificate) shows up
        // on the first read: report it as the handshake error it is.
        Pin::new(&mut *self.0.lock())
            .poll_read(cx, buf)
            .map_err(classify_io)
    }
}

impl<R, W> TransportWrite for TlsWriter<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> AsyncWrite for TlsWriter<R, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.lock())
            .poll_write(cx, buf)
            .map_err(classify_io)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.lock())
            .poll_write_vectored(cx, bufs)
            .map_err(classify_io)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.lock()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.lock()).poll_close(cx)
    }
}
