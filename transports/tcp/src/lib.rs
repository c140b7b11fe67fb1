//! TCP for Flumen: `TokioTcp` behind the `tokio` feature, `SmolTcp` behind the `smol`
//! feature. Both turn Nagle's algorithm off (`TCP_NODELAY`): Flumen batches writes itself.
#![warn(missing_docs)]

#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "smol")]
pub use crate::smol::{SmolTcp, SmolTcpListener, SmolTcpReader, SmolTcpWriter};
#[cfg(feature = "tokio")]
pub use crate::tokio::{TokioTcp, TokioTcpListener, TokioTcpReader, TokioTcpWriter};
