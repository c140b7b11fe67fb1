//! Unix domain sockets for Flumen: `TokioUnix` behind the `tokio` feature, `SmolUnix` behind
//! the `smol` feature, for services on one host. The address is the socket's path.
//!
//! Binding fails if a file exists at the path (`AddrInUse`), as `bind(2)` does: a socket
//! left by a server that crashed is the operator's to remove, never silently replaced. A
//! listener removes its socket file when it is dropped, unless it was adopted with
//! `listener_from_std` (bound elsewhere, perhaps shared with another process after a
//! restart: its file is its binder's to remove).
#![warn(missing_docs)]
#![cfg(unix)]

#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "smol")]
pub use crate::smol::{SmolUnix, SmolUnixListener, SmolUnixReader, SmolUnixWriter};
#[cfg(feature = "tokio")]
pub use crate::tokio::{TokioUnix, TokioUnixListener, TokioUnixReader, TokioUnixWriter};

/// Removes the socket file of a listener when it goes.
#[cfg(any(feature = "smol", feature = "tokio"))]
#[derive(Debug)]
struct Unlink(std::path::PathBuf);

#[cfg(any(feature = "smol", feature = "tokio"))]
impl Drop for Unlink {
    fn drop(&mut self) {
        // Best effort: the file may already be gone.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The path of a listener bound elsewhere (empty if unnamed).
#[cfg(any(feature = "smol", feature = "tokio"))]
fn bound_path(listener: &std::os::unix::net::UnixListener) -> std::io::Result<std::path::PathBuf> {
    Ok(listener
        .local_addr()?
        .as_pathname()
        .map(ToOwned::to_owned)
        .unwrap_or_default())
}

/// The path a peer connected from: unnamed (empty) unless the peer bound its socket.
#[cfg(feature = "smol")]
fn peer_path(addr: &std::os::unix::net::SocketAddr) -> std::path::PathBuf {
    addr.as_pathname()
        .map(ToOwned::to_owned)
        .unwrap_or_default()
}
