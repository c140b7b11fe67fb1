//! [`Runtime`](flumen_stream::Runtime) implementations: `TokioRuntime` behind the `tokio`
//! feature and `SmolRuntime` behind the `smol` feature.
#![warn(missing_docs)]

#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "smol")]
pub use crate::smol::{SmolRuntime, SmolSleep};
#[cfg(feature = "tokio")]
pub use crate::tokio::TokioRuntime;
