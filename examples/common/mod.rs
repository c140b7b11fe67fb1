//! The one thing the service examples share that a user would not write: reading the
//! `--runtime` flag. Each example's `main` builds its runtime itself.

use std::net::SocketAddr;

/// Any error an example may end with.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// Whether `--runtime smol` was given (tokio is the default); an error for another runtime.
pub(crate) fn smol_requested() -> Result<bool, Error> {
    let runtime = std::env::args().skip_while(|arg| arg != "--runtime").nth(1);
    match runtime.as_deref() {
        None | Some("tokio") => Ok(false),
        Some("smol") => Ok(true),
        Some(other) => Err(format!("unknown runtime {other:?}: use tokio or smol").into()),
    }
}

/// Loopback, any free port.
pub(crate) fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
