//! TLS settings a user can read: who the server is, what the client trusts, whether clients
//! must show a certificate. Loaded from PEM files or built from DER values.

use std::{fmt, fs, path::Path, sync::Arc};

use parking_lot::Mutex;
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::WebPkiClientVerifier,
    DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::{TlsError, ALPN};

/// The crypto provider Flumen builds every configuration with (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in the PEM file at `path`, in file order (leaf first for a chain).
///
/// # Errors
///
/// [`TlsError::File`] if the file cannot be read, [`TlsError::Pem`] if it is malformed,
/// [`TlsError::NoCertificates`] if it holds none.
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = path.as_ref();
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates { path: path.into() });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
///
/// # Errors
///
/// [`TlsError::File`], [`TlsError::Pem`], or [`TlsError::NoPrivateKey`] if it holds none.
pub fn load_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = path.as_ref();
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey { path: path.into() },
        e => pem_error(path, e),
    })
}

/// A root store trusting every certificate in the PEM file at `path` (a CA bundle).
///
/// # Errors
///
/// As [`load_certs`], and [`TlsError::BadCa`] if a certificate cannot be a trust anchor.
pub fn load_roots(path: impl AsRef<Path>) -> Result<RootCertStore, TlsError> {
    let path = path.as_ref();
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: path.into(),
            source,
        })?;
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::File {
        path: path.into(),
        source,
    })
}

fn pem_error(path: &Path, error: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.into(),
        reason: error.to_string(),
    }
}

/// A certificate chain (leaf first) and its private key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The server side of TLS: its certificate chain and key, and optionally the CAs whose client
/// certificates it accepts (mutual TLS). TLS 1.3 only; ALPN [`ALPN`].
///
/// ```no_run
/// # fn main() -> Result<(), flumen_tls::TlsError> {
/// let tls = flumen_tls::ServerTls::from_pem_files("server.pem", "server.key")?
///     .require_client_certs_from_file("clients-ca.pem")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    identity: Identity,
    client_roots: Option<Arc<RootCertStore>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("chain_len", &self.identity.chain.len())
            .field("mutual", &self.client_roots.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Serves with `chain` (leaf first) and its private `key`.
    ///
    /// # Errors
    ///
    /// [`TlsError::Rustls`] if the key does not match the certificate or is unsupported.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let tls = Self {
            identity: Identity { chain, key },
            client_roots: None,
        };
        tls.to_rustls()?;
        Ok(tls)
    }

    /// Serves with the chain in `cert_path` and the key in `key_path` (PEM).
    ///
    /// # Errors
    ///
    /// A typed error naming the file that is missing or wrong; see [`load_certs`],
    /// [`load_key`] and [`ServerTls::new`].
    pub fn from_pem_files(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        Self::new(load_certs(cert_path)?, load_key(key_path)?)
    }

    /// Requires every client to show a certificate signed by one of `roots` (mutual TLS).
    /// A client without one fails its handshake; the server goes on serving others.
    ///
    /// # Errors
    ///
    /// [`TlsError::ClientVerifier`] if `roots` is empty.
    pub fn require_client_certs(mut self, roots: RootCertStore) -> Result<Self, TlsError> {
        self.client_roots = Some(Arc::new(roots));
        self.to_rustls()?;
        Ok(self)
    }

    /// [`require_client_certs`](Self::require_client_certs) with the CA bundle in `ca_path`.
    ///
    /// # Errors
    ///
    /// As [`load_roots`] and [`require_client_certs`](Self::require_client_certs).
    pub fn require_client_certs_from_file(
        self,
        ca_path: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        self.require_client_certs(load_roots(ca_path)?)
    }

    /// The rustls configuration (TLS 1.3, ALPN set).
    ///
    /// # Errors
    ///
    /// As [`ServerTls::new`] and [`require_client_certs`](Self::require_client_certs).
    pub fn to_rustls(&self) -> Result<rustls::ServerConfig, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match &self.client_roots {
            Some(roots) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                        .build()
                        .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let identity = self.identity.clone();
        let mut config = builder.with_single_cert(identity.chain, identity.key)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// The client side of TLS: the CAs it trusts, the name it expects in the server's certificate,
/// and optionally its own certificate for servers that require one. TLS 1.3 only; ALPN
/// [`ALPN`].
///
/// ```no_run
/// # fn main() -> Result<(), flumen_tls::TlsError> {
/// let tls = flumen_tls::ClientTls::from_ca_file("ca.pem", "rpc.internal")?
///     .identity_from_pem_files("client.pem", "client.key")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientTls {
    roots: Arc<RootCertStore>,
    server_name: ServerName<'static>,
    identity: Option<Identity>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots.len())
            .field("server_name", &self.server_name)
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Trusts `roots` and expects `server_name` (a DNS name or an IP address) in the server's
    /// certificate.
    ///
    /// # Errors
    ///
    /// [`TlsError::ServerName`] if `server_name` is neither.
    pub fn new(roots: RootCertStore, server_name: &str) -> Result<Self, TlsError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsError::ServerName(server_name.to_owned()))?;
        Ok(Self {
            roots: Arc::new(roots),
            server_name,
            identity: None,
        })
    }

    /// [`ClientTls::new`] trusting the CA bundle in `ca_path` (PEM).
    ///
    /// # Errors
    ///
    /// As [`load_roots`] and [`ClientTls::new`].
    pub fn from_ca_file(ca_path: impl AsRef<Path>, server_name: &str) -> Result<Self, TlsError> {
        Self::new(load_roots(ca_path)?, server_name)
    }

    /// Shows `chain` (leaf first) and proves `key` to servers that ask for a client certificate.
    ///
    /// # Errors
    ///
    /// [`TlsError::Rustls`] if the key does not match the certificate or is unsupported.
    pub fn identity(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        self.identity = Some(Identity { chain, key });
        self.to_rustls()?;
        Ok(self)
    }

    /// [`identity`](Self::identity) from PEM files.
    ///
    /// # Errors
    ///
    /// As [`load_certs`], [`load_key`] and [`identity`](Self::identity).
    pub fn identity_from_pem_files(
        self,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        self.identity(load_certs(cert_path)?, load_key(key_path)?)
    }

    /// The name expected in the server's certificate.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// The rustls configuration (TLS 1.3, ALPN set).
    ///
    /// # Errors
    ///
    /// As [`identity`](Self::identity).
    pub fn to_rustls(&self) -> Result<rustls::ClientConfig, TlsError> {
        Ok(self.to_rustls_with_verdict()?.0)
    }

    /// The rustls configuration for one connection, and the [`Verdict`] its certificate check
    /// leaves: stacks that report a failed handshake only as a TLS alert (QUIC) use it to tell
    /// the caller exactly why.
    ///
    /// # Errors
    ///
    /// As [`identity`](Self::identity).
    pub fn to_rustls_with_verdict(&self) -> Result<(rustls::ClientConfig, Verdict), TlsError> {
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let verdict = Verdict::default();
        let verifier = Arc::new(Recording {
            inner,
            verdict: verdict.clone(),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match self.identity.clone() {
            Some(identity) => builder.with_client_auth_cert(identity.chain, identity.key)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok((config, verdict))
    }
}

/// What the client's certificate check decided during one handshake: the error, if it
/// rejected the server's certificate.
#[derive(Clone, Debug, Default)]
pub struct Verdict(Arc<Mutex<Option<rustls::Error>>>);

impl Verdict {
    /// The error the check returned, if any.
    pub fn rejected(&self) -> Option<rustls::Error> {
        self.0.lock().clone()
    }
}

/// The standard WebPKI check (chain to a trusted root, validity, name), remembering its
/// verdict. Every decision is the inner verifier's.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    verdict: Verdict,
}

impl Recording {
    fn record<T>(&self, result: Result<T, rustls::Error>) -> Result<T, rustls::Error> {
        if let Err(e) = &result {
            *self.verdict.0.lock() = Some(e.clone());
        }
        result
    }
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.record(self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.record(self.inner.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.record(self.inner.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DevCa;

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = ServerTls::from_pem_files(&missing, &missing).unwrap_err();
        assert!(
            matches!(&err, TlsError::File { path, .. } if path == &missing),
            "{err}"
        );
        assert!(err.to_string().contains("missing.pem"));

        let garbage = dir.path().join("garbage.pem");
        fs::write(&garbage, "-----BEGIN CERTIFICATE-----\n!!!!\n").unwrap();
        assert!(matches!(load_certs(&garbage), Err(TlsError::Pem { .. })));

        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "no pem here\n").unwrap();
        assert!(matches!(
            load_certs(&empty),
            Err(TlsError::NoCertificates { .. })
        ));
        assert!(matches!(
            load_key(&empty),
            Err(TlsError::NoPrivateKey { .. })
        ));
    }

    #[test]
    fn key_must_match_certificate_and_name_must_parse() {
        let ca = DevCa::new().unwrap();
        let a = ca.issue(&["localhost"]).unwrap();
        let b = ca.issue(&["localhost"]).unwrap();
        let mismatched = ServerTls::new(a.chain().to_vec(), b.key());
        assert!(matches!(mismatched, Err(TlsError::Rustls(_))));
        assert!(matches!(
            ClientTls::new(ca.roots(), "not a name!"),
            Err(TlsError::ServerName(_))
        ));
        assert!(matches!(
            ServerTls::new(a.chain().to_vec(), a.key())
                .unwrap()
                .require_client_certs(RootCertStore::empty()),
            Err(TlsError::ClientVerifier(_))
        ));
    }

    #[test]
    fn pem_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new().unwrap();
        let server = ca.issue(&["localhost"]).unwrap();
        let (cert, key) = server.write_pem(dir.path(), "server").unwrap();
        let ca_path = ca.write_pem(dir.path()).unwrap();
        let tls = ServerTls::from_pem_files(&cert, &key)
            .unwrap()
            .require_client_certs_from_file(&ca_path)
            .unwrap();
        assert!(tls.to_rustls().unwrap().alpn_protocols == vec![ALPN.to_vec()]);
        let client = ClientTls::from_ca_file(&ca_path, "localhost")
            .unwrap()
            .identity_from_pem_files(&cert, &key)
            .unwrap();
        assert_eq!(
            client.to_rustls().unwrap().alpn_protocols,
            vec![ALPN.to_vec()]
        );
    }
}
