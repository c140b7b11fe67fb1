//! QUIC for Flumen: quinn with rustls (TLS 1.3), on tokio (feature `tokio`) or smol (feature
//! `smol`).
//!
//! A Flumen connection is one QUIC connection carrying one bidirectional stream: the core's
//! framing, sequence ids and batched writes run on that stream unchanged, so one QUIC
//! connection multiplexes every call as a TCP connection does. ALPN is [`ALPN`].
#![warn(missing_docs)]

use std::{
    fmt,
    future::Future,
    io::{self, IoSlice},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use flumen_stream::{Listener, Transport};
use futures_io::AsyncWrite;
use quinn::{
    crypto::rustls::QuicClientConfig, crypto::rustls::QuicServerConfig, Endpoint, EndpointConfig,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use rustls::RootCertStore;

/// The ALPN protocol id of Flumen v1.
pub const ALPN: &[u8] = b"flumen/1";

/// A QUIC transport: a client side (trusted roots, server name) and, to listen, a server side
/// (certificate chain and key).
#[derive(Clone)]
pub struct QuicTransport {
    runtime: Arc<dyn quinn::Runtime>,
    client: Option<quinn::ClientConfig>,
    server: Option<quinn::ServerConfig>,
    server_name: String,
    endpoint: Arc<Mutex<Option<Endpoint>>>,
}

impl fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicTransport")
            .field("client", &self.client.is_some())
            .field("server", &self.server.is_some())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// A transport on tokio's reactor.
    #[cfg(feature = "tokio")]
    pub fn tokio() -> Self {
        Self::with_runtime(Arc::new(quinn::TokioRuntime))
    }

    /// A transport on `async-io`'s reactor (smol).
    #[cfg(feature = "smol")]
    pub fn smol() -> Self {
        Self::with_runtime(Arc::new(quinn::SmolRuntime))
    }

    fn with_runtime(runtime: Arc<dyn quinn::Runtime>) -> Self {
        Self {
            runtime,
            client: None,
            server: None,
            server_name: "localhost".into(),
            endpoint: Default::default(),
        }
    }

    /// Connects trusting the certificates in `roots` and expecting `server_name` in the server's
    /// certificate.
    ///
    /// # Errors
    ///
    /// If rustls cannot build a TLS 1.3 configuration from them.
    pub fn client(
        mut self,
        roots: rustls::RootCertStore,
        server_name: &str,
    ) -> Result<Self, TlsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
        self.client = Some(quinn::ClientConfig::new(Arc::new(crypto)));
        self.server_name = server_name.to_owned();
        Ok(self)
    }

    /// Listens with `chain` (leaf first) and its private `key`.
    ///
    /// # Errors
    ///
    /// If the key does not match the certificate or rustls refuses them.
    pub fn server(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
        self.server = Some(quinn::ServerConfig::with_crypto(Arc::new(crypto)));
        Ok(self)
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Transport for QuicTransport {
    type Addr = SocketAddr;
    type Reader = quinn::RecvStream;
    type Writer = QuicWriter;
    type Listener = QuicListener;

    async fn connect(&self, addr: &SocketAddr) -> io::Result<(quinn::RecvStream, QuicWriter)> {
        let config = self
            .client
            .clone()
            .ok_or_else(|| io::Error::other("no client TLS configuration"))?;
        let endpoint = self.client_endpoint(*addr)?;
        let connecting = endpoint
            .connect_with(config, *addr, &self.server_name)
            .map_err(io::Error::other)?;
        let connection = connecting.await.map_err(io::Error::other)?;
        let (send, recv) = connection.open_bi().await.map_err(io::Error::other)?;
        Ok((recv, QuicWriter::new(send)))
    }

    async fn bind(&self, addr: &SocketAddr) -> io::Result<QuicListener> {
        let config = self
            .server
            .clone()
            .ok_or_else(|| io::Error::other("no server TLS configuration"))?;
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

impl Listener for QuicListener {
    type Addr = SocketAddr;
    type Reader = quinn::RecvStream;
    type Writer = QuicWriter;

    async fn accept(&mut self) -> io::Result<(quinn::RecvStream, QuicWriter, SocketAddr)> {
        loop {
            let incoming = self
                .endpoint
                .accept()
                .await
                .ok_or_else(|| io::Error::other("endpoint closed"))?;
            // A peer that fails the handshake or opens no stream is skipped, not fatal.
            let Ok(connection) = incoming.await else {
                continue;
            };
            let Ok((send, recv)) = connection.accept_bi().await else {
                continue;
            };
            return Ok((recv, QuicWriter::new(send), connection.remote_address()));
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
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
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write_vectored(Pin::new(&mut self.send), cx, bufs)
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

/// A throw-away self-signed certificate for tests and examples (rcgen). Never use in production.
#[derive(Debug)]
pub struct DevCert {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    /// Its private key (PKCS#8 DER).
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl DevCert {
    /// A self-signed certificate for `names` (for example `localhost`).
    ///
    /// # Errors
    ///
    /// If rcgen cannot generate a key or certificate.
    pub fn generate(names: &[&str]) -> Result<Self, TlsError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let certified =
            rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Cert(e.to_string()))?;
        Ok(Self {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        })
    }

    /// A root store that trusts this certificate.
    ///
    /// # Errors
    ///
    /// If rustls refuses the certificate as a trust anchor.
    pub fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone())?;
        Ok(roots)
    }

    /// Both sides of a transport using this certificate: `base` configured to serve with it and
    /// to trust it for `server_name`.
    ///
    /// # Errors
    ///
    /// As [`QuicTransport::client`] and [`QuicTransport::server`].
    pub fn transport(
        &self,
        base: QuicTransport,
        server_name: &str,
    ) -> Result<QuicTransport, TlsError> {
        base.client(self.roots()?, server_name)?.server(
            vec![self.cert.clone()],
            PrivateKeyDer::Pkcs8(self.key.clone_key()),
        )
    }
}

/// A TLS configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the rustls configuration (for example, no TLS 1.3).
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// A certificate could not be generated.
    #[error("certificate generation: {0}")]
    Cert(String),
}
