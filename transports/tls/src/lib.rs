//! TLS for Flumen.
//!
//! - [`ServerTls`] and [`ClientTls`]: what a server shows and what a client trusts, from PEM
//!   files ([`ServerTls::from_pem_files`], [`ClientTls::from_ca_file`]) or DER values, with
//!   mutual TLS ([`ServerTls::require_client_certs`], [`ClientTls::identity`]). TLS 1.3 only,
//!   ALPN [`ALPN`]. Every file problem is a [`TlsError`] naming the file.
//! - [`TlsTransport`]: TLS over any Flumen byte transport, for example TCP on tokio or smol.
//!   The QUIC transport builds its TLS from the same two types.
//! - [`HandshakeError`]: why a peer failed the handshake (untrusted certificate, wrong server
//!   name, missing client certificate...), found in any connect error with
//!   [`HandshakeError::find`].
//! - [`DevCa`]: a throw-away CA issuing server and client certificates, for tests and examples.
#![warn(missing_docs)]

mod config;
mod dev;
mod error;
mod transport;

pub use rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer},
    RootCertStore,
};

pub(crate) use crate::error::classify_io;
pub use crate::{
    config::{load_certs, load_key, load_roots, ClientTls, ServerTls, Verdict},
    dev::{DevCa, DevIdentity},
    error::{HandshakeError, TlsError},
    transport::{Duplex, TlsConnecting, TlsListener, TlsReader, TlsTransport, TlsWriter},
};

/// The ALPN protocol id of Flumen v1. A peer that does not offer it fails the handshake with
/// [`HandshakeError::NoCommonProtocol`].
pub const ALPN: &[u8] = b"flumen/1";
