//! A throw-away certificate authority for tests and examples (rcgen). Never use in production:
//! keys live in memory and are written unencrypted.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    RootCertStore,
};

use crate::{ClientTls, ServerTls, TlsError};

/// A self-signed CA that issues server and client certificates.
///
/// ```
/// # fn main() -> Result<(), flumen_tls::TlsError> {
/// let ca = flumen_tls::DevCa::new()?;
/// let server = ca.server_tls(&["localhost"])?; // certificate for "localhost"
/// let client = ca.client_tls("localhost")?; // trusts the CA, expects "localhost"
/// # Ok(()) }
/// ```
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

fn generate(error: rcgen::Error) -> TlsError {
    TlsError::Generate(error.to_string())
}

impl DevCa {
    /// A new CA with a fresh key.
    ///
    /// # Errors
    ///
    /// [`TlsError::Generate`] if rcgen fails.
    pub fn new() -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(generate)?;
        // A name of its own (from its key), so that two CAs are never mistaken for each other.
        let id: String = key.public_key_raw()[1..9]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Flumen development CA {id}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(generate)?;
        Ok(Self { issuer })
    }

    /// The CA's certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        self.issuer.der()
    }

    /// A root store trusting this CA only.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        // The CA certificate was just generated as a valid trust anchor.
        let _ = roots.add(self.cert().clone());
        roots
    }

    /// The CA's certificate in PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns the path.
    ///
    /// # Errors
    ///
    /// [`TlsError::File`] (naming the file) if it cannot be written.
    pub fn write_pem(&self, dir: impl AsRef<Path>) -> Result<PathBuf, TlsError> {
        let path = dir.as_ref().join("ca.pem");
        write(&path, &self.pem())?;
        Ok(path)
    }

    /// Issues a certificate for `names` (DNS names or IP addresses), usable both to serve and
    /// as a client certificate.
    ///
    /// # Errors
    ///
    /// [`TlsError::Generate`] if rcgen fails (for example, an invalid name).
    pub fn issue(&self, names: &[&str]) -> Result<DevIdentity, TlsError> {
        let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).map_err(generate)?;
        if let Some(name) = names.first() {
            params.distinguished_name.push(DnType::CommonName, name);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(DevIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }

    /// A server configuration with a new certificate for `names`.
    ///
    /// # Errors
    ///
    /// As [`DevCa::issue`].
    pub fn server_tls(&self, names: &[&str]) -> Result<ServerTls, TlsError> {
        let identity = self.issue(names)?;
        ServerTls::new(identity.chain, identity.key.into())
    }

    /// A client configuration trusting this CA and expecting `server_name`.
    ///
    /// # Errors
    ///
    /// [`TlsError::ServerName`] if `server_name` is invalid.
    pub fn client_tls(&self, server_name: &str) -> Result<ClientTls, TlsError> {
        ClientTls::new(self.roots(), server_name)
    }
}

/// A certificate issued by a [`DevCa`] and its private key.
pub struct DevIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for DevIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevIdentity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl DevIdentity {
    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// Writes `dir/STEM.pem` (certificate) and `dir/STEM.key` (key) and returns both paths.
    ///
    /// # Errors
    ///
    /// [`TlsError::File`] (naming the file) if one cannot be written.
    pub fn write_pem(
        &self,
        dir: impl AsRef<Path>,
        stem: &str,
    ) -> Result<(PathBuf, PathBuf), TlsError> {
        let cert = dir.as_ref().join(format!("{stem}.pem"));
        let key = dir.as_ref().join(format!("{stem}.key"));
        write(&cert, &self.cert_pem)?;
        write(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    fs::write(path, contents).map_err(|source| TlsError::File {
        path: path.into(),
        source,
    })
}
