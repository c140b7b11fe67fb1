//! QUIC for Flumen: quinn with rustls (TLS 1.3), on tokio (feature `tokio`) or smol (feature
//! `smol`).
//!
//! A Flumen connection is one QUIC connection carrying one bidirectional stream: the core's
//! framing, sequence ids and batched writes run on that stream unchanged, so one QUIC
//! connection multiplexes every call as a TCP connection does. ALPN is [`ALPN`].
//!
//! Why not a QUIC stream per call: measured side by side (`flumen-bench`'s `quic-mapping`), a
//! stream per call with no RPC layer at all reaches 0.17 x Flumen's calls/s for 32-byte calls
//! at 64 in flight, 0.30 x at 1 KiB and 0.73 x at 64 KiB; opening, flow-controlling and
//! finishing a stream costs more than a 24-byte frame header.
//!
//! TLS comes from [`flumen_tls`]: the same [`ServerTls`] / [`ClientTls`] as TLS over TCP,
//! mutual TLS included. A failed handshake is an `io::Error` carrying a [`HandshakeError`],
//! on the side that detects it and, through the TLS alert, on the other side.
#![warn(missing_docs)]

use std::{
    fmt,
    future::Future,
    io::{self, IoSlice},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use flumen_stream::{Listener, Transport, TransportRead, TransportWrite};
use flumen_tls::{
    rustls::AlertDescription, ClientTls, HandshakeError, ServerTls, TlsError, Verdict,
};
use futures_io::{AsyncRead, AsyncWrite};
use quinn::{
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
    ConnectionError, Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt,
};

pub use flumen_tls::ALPN;

/// Default keep-alive interval (10 s): an idle connection sends a QUIC PING this often, so
/// NAT bindings and the peer's idle timer stay fresh while a client holds the connection.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Default QUIC idle timeout (30 s): a connection that hears nothing from its peer for this
/// long (not even keep-alives) is dead, and every call on it fails with a connection error.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A QUIC transport: a client side (what it trusts, [`ClientTls`]) to connect, a server side
/// ([`ServerTls`]) to listen, and the connection's keep-alive and idle timeout.
///
/// ```no_run
/// # fn main() -> Result<(), flumen_tls::TlsError> {
/// use flumen_quic::QuicTransport;
/// use flumen_tls::{ClientTls, ServerTls};
///
/// let server = QuicTransport::tokio().server(ServerTls::from_pem_files("cert.pem", "key.pem")?)?;
/// let client = QuicTransport::tokio()
///     .client(ClientTls::from_ca_file("ca.pem", "rpc.internal")?)?
///     .keep_alive(Some(std::time::Duration::from_secs(5)));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct QuicTransport {
    runtime: Arc<dyn quinn::Runtime>,
    client: Option<ClientTls>,
    server: Option<Arc<QuicServerConfig>>,
    keep_alive: Option<Duration>,
    idle_timeout: Duration,
    endpoint: Arc<Mutex<Option<Endpoint>>>,
}

impl fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicTransport")
            .field("client", &self.client)
            .field("server", &self.server.is_some())
            .field("keep_alive", &self.keep_alive)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// A transport on tokio's reactor.
    #[cfg(feature = "tokio")]
    pub fn tokio() -> Self {
        Self::with_runtime(Arc::new(quinn::TokioRuntime))
    }

    /// A transport on `async-io`'s reactor (smol), whose QUIC driver tasks run on smol's global
    /// executor. Prefer [`smol_on`](Self::smol_on) to keep them on your own executor.
    #[cfg(feature = "smol")]
    pub fn smol() -> Self {
        Self::with_runtime(Arc::new(quinn::SmolRuntime))
    }

    /// A transport on `async-io`'s reactor whose QUIC driver tasks (endpoint and connections)
    /// are spawned on `rt`, the runtime that runs Flumen's own tasks: packets are then handled
    /// on the same threads as the calls, instead of hopping to smol's global executor (a
    /// third of the latency at one call in flight, measured).
    #[cfg(feature = "smol")]
    pub fn smol_on<R: flumen_stream::Runtime>(rt: R) -> Self {
        Self::smol().spawn_on(rt)
    }

    /// Spawns quinn's driver tasks on `rt` from now on; its timers and sockets stay on this
    /// transport's reactor. Call it before the first connect or bind: endpoints already made
    /// keep their tasks where they are.
    pub fn spawn_on<R: flumen_stream::Runtime>(mut self, rt: R) -> Self {
        self.runtime = Arc::new(SpawnOn {
            rt,
            io: self.runtime,
        });
        self.endpoint = Default::default();
        self
    }

    fn with_runtime(runtime: Arc<dyn quinn::Runtime>) -> Self {
        Self {
            runtime,
            client: None,
            server: None,
            keep_alive: Some(DEFAULT_KEEP_ALIVE),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            endpoint: Default::default(),
        }
    }

    /// Connects as `tls` says: the CAs it trusts, the server name, an optional client
    /// certificate.
    ///
    /// # Errors
    ///
    /// If rustls or quinn refuse the configuration.
    pub fn client(mut self, tls: ClientTls) -> Result<Self, TlsError> {
        client_crypto(&tls)?;
        self.client = Some(tls);
        Ok(self)
    }

    /// Listens as `tls` says: certificate and key, and optionally the CAs whose client
    /// certificates it requires.
    ///
    /// # Errors
    ///
    /// If rustls or quinn refuse the configuration.
    pub fn server(mut self, tls: ServerTls) -> Result<Self, TlsError> {
        let crypto = QuicServerConfig::try_from(tls.to_rustls()?)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        self.server = Some(Arc::new(crypto));
        Ok(self)
    }

    /// How often an idle connection sends a keep-alive; `None` sends none.
    /// Default [`DEFAULT_KEEP_ALIVE`].
    pub fn keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive = interval;
        self
    }

    /// How long a connection may hear nothing from its peer before it is declared dead; at
    /// most about 146 years. Default [`DEFAULT_IDLE_TIMEOUT`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// QUIC settings of one connection. A Flumen connection uses one bidirectional stream,
    /// opened by the client: the server accepts one, the client none.
    fn transport_config(&self, peer_streams: u32) -> Arc<TransportConfig> {
        let mut config = TransportConfig::default();
        config
            .keep_alive_interval(self.keep_alive)
            .max_idle_timeout(IdleTimeout::try_from(self.idle_timeout).ok())
            .max_concurrent_bidi_streams(VarInt::from_u32(peer_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0));
        Arc::new(config)
    }

    fn endpoint(
        &self,
        server: Option<quinn::ServerConfig>,
        addr: SocketAddr,
    ) -> io::Result<Endpoint> {
        let socket = std::net::UdpSocket::bind(addr)?;
        Endpoint::new(
            EndpointConfig::default(),
            server,
            socket,
            self.runtime.clone(),
        )
    }

    /// The client endpoint, made on first use (one UDP socket for every connection).
    fn client_endpoint(&self, peer: SocketAddr) -> io::Result<Endpoint> {
        let mut endpoint = self
            .endpoint
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        if let Some(endpoint) = endpoint.as_ref() {
            return Ok(endpoint.clone());
        }
        let any: SocketAddr = match peer {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let created = self.endpoint(None, any)?;
        *endpoint = Some(created.clone());
        Ok(created)
    }
}

/// quinn's timers and sockets from `io`, its tasks spawned on Flumen runtime `rt`.
struct SpawnOn<R, Q> {
    rt: R,
    io: Q,
}

impl<R, Q: fmt::Debug> fmt::Debug for SpawnOn<R, Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnOn")
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

impl<
        R: flumen_stream::Runtime,
        Q: std::ops::Deref<Target = dyn quinn::Runtime> + fmt::Debug + Send + Sync + 'static,
    > quinn::Runtime for SpawnOn<R, Q>
{
    fn new_timer(&self, at: std::time::Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        self.io.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.rt.spawn(future);
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        self.io.wrap_udp_socket(socket)
    }
}

/// The client's QUIC crypto for one connection and the verdict of its certificate check.
fn client_crypto(tls: &ClientTls) -> Result<(QuicClientConfig, Verdict), TlsError> {
    let (rustls, verdict) = tls.to_rustls_with_verdict()?;
    let crypto = QuicClientConfig::try_from(rustls).map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok((crypto, verdict))
}

/// The handshake failure behind a lost connection, if it was one: our own certificate check
/// (`verdict`) or the TLS alert the peer closed the connection with.
fn handshake_failure(error: &ConnectionError, verdict: Option<&Verdict>) -> Option<HandshakeError> {
    if let Some(rejected) = verdict.and_then(Verdict::rejected) {
        return Some(HandshakeError::from_rustls(&rejected));
    }
    let code = match error {
        ConnectionError::ConnectionClosed(close) => close.error_code,
        ConnectionError::TransportError(error) => error.code,
        _ => return None,
    };
    // QUIC carries a TLS alert as transport error 0x100 + alert (RFC 9001, section 4.8).
    let alert = u64::from(code).checked_sub(0x100).filter(|a| *a < 0x100)?;
    Some(HandshakeError::from_alert(AlertDescription::from(
        alert as u8,
    )))
}

fn connection_error(error: ConnectionError, verdict: Option<&Verdict>) -> io::Error {
    match handshake_failure(&error, verdict) {
        Some(failure) => failure.into_io(),
        None => io::Error::new(io::ErrorKind::ConnectionAborted, error),
    }
}

/// Reports a stream error caused by a failed handshake (a server rejecting the client's
/// certificate closes the connection after the client thinks it is up) as that failure.
fn stream_error(error: io::Error) -> io::Error {
    let lost = error.get_ref().and_then(|inner| {
        if let Some(quinn::ReadError::ConnectionLost(lost)) = inner.downcast_ref() {
            Some(lost)
        } else if let Some(quinn::WriteError::ConnectionLost(lost)) = inner.downcast_ref() {
            Some(lost)
        } else {
            None
        }
    });
    match lost.and_then(|lost| handshake_failure(lost, None)) {
        Some(failure) => failure.into_io(),
        None => error,
    }
}

impl Transport for QuicTransport {
    type Addr = SocketAddr;
    type Reader = QuicReader;
    type Writer = QuicWriter;
    type Listener = QuicListener;

    async fn connect(&self, addr: &SocketAddr) -> io::Result<(QuicReader, QuicWriter)> {
        let tls = self.client.as_ref().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no client TLS configuration")
        })?;
        let (crypto, verdict) = client_crypto(tls).map_err(io::Error::other)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.transport_config(0));
        let endpoint = self.client_endpoint(*addr)?;
        let name = tls.server_name().to_str();
        let connecting = endpoint
            .connect_with(config, *addr, &name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connection = connecting
            .await
            .map_err(|e| connection_error(e, Some(&verdict)))?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| connection_error(e, None))?;
        Ok((QuicReader(recv), QuicWriter::new(send)))
    }

    async fn bind(&self, addr: &SocketAddr) -> io::Result<QuicListener> {
        let crypto = self.server.clone().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no server TLS configuration")
        })?;
        let mut config = quinn::ServerConfig::with_crypto(crypto);
        config.transport_config(self.transport_config(1));
        Ok(QuicListener {
            endpoint: self.endpoint(Some(config), *addr)?,
        })
    }
}

/// Accepts QUIC connections and their first bidirectional stream.
#[derive(Debug)]
pub struct QuicListener {
    endpoint: Endpoint,
}

/// The server side of one QUIC handshake and the client's first stream.
pub type QuicConnecting =
    Pin<Box<dyn Future<Output = io::Result<(QuicReader, QuicWriter)>> + Send>>;

impl Listener for QuicListener {
    type Addr = SocketAddr;
    type Reader = QuicReader;
    type Writer = QuicWriter;
    type Connecting = QuicConnecting;

    async fn accept(&mut self) -> io::Result<(QuicConnecting, SocketAddr)> {
        let incoming = self
            .endpoint
            .accept()
            .await
            .ok_or_else(|| io::Error::other("endpoint closed"))?;
        let peer = incoming.remote_address();
        let connecting = async move {
            let connection = incoming.await.map_err(|e| connection_error(e, None))?;
            let (send, recv) = connection
                .accept_bi()
                .await
                .map_err(|e| connection_error(e, None))?;
            Ok((QuicReader(recv), QuicWriter::new(send)))
        };
        Ok((Box::pin(connecting), peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }
}

/// The receiving half of a Flumen connection over QUIC.
#[derive(Debug)]
pub struct QuicReader(quinn::RecvStream);

impl TransportRead for QuicReader {}

impl TransportWrite for QuicWriter {}

impl AsyncRead for QuicReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        AsyncRead::poll_read(Pin::new(&mut self.0), cx, buf).map_err(stream_error)
    }
}

/// The sending half of a Flumen connection over QUIC.
///
/// Closing it finishes the stream and then waits until the peer has read everything (or stopped
/// reading): a QUIC connection drops unacknowledged data once its last handle goes, so a
/// `GoAway` written just before closing would otherwise be lost.
pub struct QuicWriter {
    send: quinn::SendStream,
    stopped: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl QuicWriter {
    fn new(send: quinn::SendStream) -> Self {
        Self {
            send,
            stopped: None,
        }
    }
}

impl fmt::Debug for QuicWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicWriter")
            .field("send", &self.send)
            .finish_non_exhaustive()
    }
}

impl AsyncWrite for QuicWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf).map_err(stream_error)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write_vectored(Pin::new(&mut self.send), cx, bufs).map_err(stream_error)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.stopped.is_none() {
            // finish() is idempotent in effect: an error means the stream already ended.
            let _ = self.send.finish();
            let stopped = self.send.stopped();
            self.stopped = Some(Box::pin(async move {
                let _ = stopped.await;
            }));
        }
        match self.stopped.as_mut() {
            Some(stopped) => stopped.as_mut().poll(cx).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}
