//! TCP for Flumen: `TokioTcp` behind the `tokio` feature, `SmolTcp` behind the `smol`
//! feature. Both turn Nagle's algorithm off (`TCP_NODELAY`): Flumen batches writes itself.
//! [`TcpOptions`] adds keepalive probes and `TCP_USER_TIMEOUT`.
#![warn(missing_docs)]

mod options;

#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

pub use crate::options::TcpOptions;
#[cfg(feature = "smol")]
pub use crate::smol::{SmolTcp, SmolTcpListener, SmolTcpReader, SmolTcpWriter};
#[cfg(feature = "tokio")]
pub use crate::tokio::{TokioTcp, TokioTcpListener, TokioTcpReader, TokioTcpWriter};
