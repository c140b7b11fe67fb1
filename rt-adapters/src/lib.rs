//! [`Runtime`](flumen_stream::Runtime) implementations: `TokioRuntime` behind the `tokio`
//! feature and `SmolRuntime` behind the `smol` feature, with [`Workers`], a smol executor on several threads that keeps
//! woken tasks local; [`net`], each runtime's sockets (TCP,
//! Unix, UDP) behind one trait, over which the socket transports and cluster membership are
//! written once; [`Cores`], a single-threaded runtime per core; and [`io`], the connection
//! halves the socket transports share.
#![warn(missing_docs)]

#[cfg(any(feature = "tokio", feature = "smol"))]
mod cores;
#[cfg(any(feature = "tokio", feature = "smol"))]
pub mod io;
pub mod net;

#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;
#[cfg(feature = "smol")]
mod workers;

#[cfg(any(feature = "tokio", feature = "smol"))]
pub use crate::cores::Cores;
pub use crate::net::{Datagrams, Net};
#[cfg(feature = "smol")]
pub use crate::smol::SmolRuntime;
#[cfg(feature = "tokio")]
pub use crate::tokio::TokioRuntime;
#[cfg(feature = "smol")]
pub use crate::workers::{WorkerStats, Workers, LOCAL_QUEUE, RUN_BUDGET};
