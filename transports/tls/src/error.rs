//! The two kinds of TLS failure: a configuration that cannot be used ([`TlsError`], at start-up)
//! and a handshake a peer failed ([`HandshakeError`], per connection).

use std::{error::Error as StdError, io, path::PathBuf};

use rustls::{AlertDescription, CertificateError};

/// A TLS configuration that cannot be used: a missing or malformed file, a key that does not
/// match its certificate, an invalid server name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written (missing, no permission).
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not valid PEM.
    #[error("{} is not valid PEM: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate file holds no `CERTIFICATE` section.
    #[error("{} holds no certificate", path.display())]
    NoCertificates {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key (PKCS#8, PKCS#1 or SEC1).
    #[error("{} holds no private key", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A certificate could not be used as a trust anchor (CA bundle).
    #[error("certificate in {} cannot be trusted as a CA: {source}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The server name is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// rustls refused the configuration (for example, the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (for example, an empty CA bundle).
    #[error("client certificate verifier: {0}")]
    ClientVerifier(String),
    /// The QUIC stack refused the rustls configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// A development certificate could not be generated.
    #[error("certificate generation: {0}")]
    Generate(String),
}

/// Why a TLS handshake failed, as seen from this side of the connection.
///
/// Transports return it inside the [`io::Error`] of a failed connect or read; find it in any
/// error chain (a `ConnectError`, a call error) with [`HandshakeError::find`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer's certificate is not signed by a trusted CA, expired, revoked or malformed.
    #[error("peer certificate not trusted: {0}")]
    UntrustedCertificate(CertificateError),
    /// The server's certificate is valid but not for the name the client asked for.
    #[error("server certificate is not valid for the requested server name")]
    WrongServerName,
    /// The server requires a client certificate and none was sent.
    #[error("the server requires a client certificate")]
    ClientCertificateRequired,
    /// The peer rejected this side's certificate (the alert it sent).
    #[error("the peer rejected our certificate: {0:?}")]
    CertificateRejected(AlertDescription),
    /// The peers share no application protocol (ALPN): the other side is not Flumen v1.
    #[error("no common application protocol (ALPN)")]
    NoCommonProtocol,
    /// Any other TLS failure.
    #[error("TLS handshake: {0}")]
    Other(rustls::Error),
}

impl HandshakeError {
    /// Classifies a rustls error.
    pub fn from_rustls(error: &rustls::Error) -> Self {
        use rustls::Error as E;
        match error {
            E::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => Self::WrongServerName,
            E::InvalidCertificate(e) => Self::UntrustedCertificate(e.clone()),
            E::NoCertificatesPresented => Self::ClientCertificateRequired,
            E::NoApplicationProtocol => Self::NoCommonProtocol,
            E::AlertReceived(alert) => Self::from_alert(*alert),
            other => Self::Other(other.clone()),
        }
    }

    /// Classifies a TLS alert received from the peer (QUIC reports them as close codes).
    pub fn from_alert(alert: AlertDescription) -> Self {
        use AlertDescription as A;
        match alert {
            A::CertificateRequired => Self::ClientCertificateRequired,
            A::NoApplicationProtocol => Self::NoCommonProtocol,
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied => Self::CertificateRejected(alert),
            other => Self::Other(rustls::Error::AlertReceived(other)),
        }
    }

    /// Wraps the handshake error as the `io::Error` a transport returns.
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// The handshake error somewhere in `error`'s chain (through `io::Error`s and sources).
    pub fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a Self> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(found) = error.downcast_ref::<Self>() {
                return Some(found);
            }
            if let Some(inner) = error
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
            {
                if let Some(found) = Self::find(inner) {
                    return Some(found);
                }
            }
            next = error.source();
        }
        None
    }
}

/// Turns rustls errors inside an `io::Error` into [`HandshakeError`]s; leaves others alone.
pub(crate) fn classify_io(error: io::Error) -> io::Error {
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(tls) => HandshakeError::from_rustls(tls).into_io(),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_through_io_and_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("connect failed")]
        struct Outer(#[source] io::Error);

        let outer = Outer(HandshakeError::WrongServerName.into_io());
        assert_eq!(
            HandshakeError::find(&outer),
            Some(&HandshakeError::WrongServerName)
        );
        let plain = Outer(io::Error::other("refused"));
        assert_eq!(HandshakeError::find(&plain), None);
    }

    #[test]
    fn classifies_rustls_errors() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            HandshakeError::from_rustls(&unknown),
            HandshakeError::UntrustedCertificate(CertificateError::UnknownIssuer)
        );
        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert_eq!(
            HandshakeError::from_rustls(&alert),
            HandshakeError::ClientCertificateRequired
        );
        let io = classify_io(io::Error::new(io::ErrorKind::InvalidData, unknown));
        assert!(matches!(
            HandshakeError::find(&io),
            Some(HandshakeError::UntrustedCertificate(_))
        ));
    }
}
