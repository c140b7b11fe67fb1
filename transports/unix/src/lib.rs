//! Unix domain sockets for Flumen, for services on one host: [`Unix<R>`](Unix), written once
//! over the runtime's sockets ([`flumen_rt::Net`]), with `TokioUnix` behind the `tokio`
//! feature and `SmolUnix` behind the `smol` feature. The address is the socket's path.
//!
//! Binding fails if a file exists at the path (`AddrInUse`), as `bind(2)` does: a socket
//! left by a server that crashed is the operator's to remove, never silently replaced. A
//! listener removes its socket file when it is dropped, unless it was adopted with
//! `listener_from_std` (bound elsewhere, perhaps shared with another process after a
//! restart: its file is its binder's to remove).
#![warn(missing_docs)]
#![cfg(unix)]

#[cfg(any(feature = "tokio", feature = "smol"))]
mod transport;

#[cfg(any(feature = "tokio", feature = "smol"))]
pub use crate::transport::{Unix, UnixListener};

/// Unix domain sockets on tokio. Must be used from within a tokio runtime.
#[cfg(feature = "tokio")]
pub type TokioUnix = Unix<flumen_rt::TokioRuntime>;
/// The tokio Unix transport, as a value: `TokioUnix` reads as the unit struct it once was.
#[cfg(feature = "tokio")]
#[allow(non_upper_case_globals)]
pub const TokioUnix: TokioUnix = Unix::new();
/// A tokio Unix socket listener; dropping it removes its socket file if it bound it.
#[cfg(feature = "tokio")]
pub type TokioUnixListener = UnixListener<flumen_rt::TokioRuntime>;
/// The receiving half of a tokio Unix socket connection.
#[cfg(feature = "tokio")]
pub type TokioUnixReader = <flumen_rt::TokioRuntime as flumen_rt::Net>::UnixReader;
/// The sending half of a tokio Unix socket connection; closing it shuts the write side down.
#[cfg(feature = "tokio")]
pub type TokioUnixWriter = <flumen_rt::TokioRuntime as flumen_rt::Net>::UnixWriter;

/// Unix domain sockets on smol (`async-io`'s reactor). Works with any executor.
#[cfg(feature = "smol")]
pub type SmolUnix = Unix<flumen_rt::SmolRuntime>;
/// The smol Unix transport, as a value: `SmolUnix` reads as the unit struct it once was.
#[cfg(feature = "smol")]
#[allow(non_upper_case_globals)]
pub const SmolUnix: SmolUnix = Unix::new();
/// A smol Unix socket listener; dropping it removes its socket file if it bound it.
#[cfg(feature = "smol")]
pub type SmolUnixListener = UnixListener<flumen_rt::SmolRuntime>;
/// The receiving half of a smol Unix socket connection.
#[cfg(feature = "smol")]
pub type SmolUnixReader = <flumen_rt::SmolRuntime as flumen_rt::Net>::UnixReader;
/// The sending half of a smol Unix socket connection; closing it shuts the write side down.
#[cfg(feature = "smol")]
pub type SmolUnixWriter = <flumen_rt::SmolRuntime as flumen_rt::Net>::UnixWriter;
