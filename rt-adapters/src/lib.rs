//! [`Runtime`](flumen_stream::Runtime) implementations: `TokioRuntime` behind the `tokio`
//! feature and `SmolRuntime` behind the `smol` feature; and [`io`], the connection halves
//! the socket transports (TCP, Unix) share on each runtime.
#![warn(missing_docs)]

#[cfg(any(feature = "tokio", feature = "smol"))]
pub mod io;

#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "smol")]
pub use crate::smol::SmolRuntime;
#[cfg(feature = "tokio")]
pub use crate::tokio::TokioRuntime;
