//! Flumen: fast multiplexed RPC for internal services.
//!
//! Many calls share one full-duplex connection; requests are written in batches, a window
//! bounds the calls in flight, deadlines sit on a timing wheel, and the same client works from
//! async tasks and from plain threads. Pick the runtime (`tokio`, `smol`) and the transport
//! (`tcp`, `tls`, `quic`) with cargo features; MessagePack is the default codec.
//!
//! # Examples
//!
//! ```
//! use flumen::{rt::TokioRuntime, tcp::TokioTcp, Client, Router, Server, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = TokioRuntime::current();
//! let router = Router::new().route("add", |(a, b): (u64, u64)| async move { Ok::<_, Status>(a + b) });
//! let server = Server::new(router).bind(&rt, &TokioTcp, &"127.0.0.1:0".parse()?).await?;
//!
//! let client = Client::connect(&rt, &TokioTcp, server.local_addr()).await?;
//! let sum: u64 = client.call("add", &(2u64, 3u64)).await?;
//! assert_eq!(sum, 5);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod client;
mod error;
mod method;
mod router;
mod service;

pub use bytes::Bytes;
pub use flumen_codec::{Codec, CodecError, MsgPack};
/// The multiplexed core, for raw calls and custom [`Dispatch`] implementations.
pub use flumen_stream as stream;
pub use flumen_stream::{
    CallOptions, ClientConfig, Dispatch, Metadata, Request, Server, ServerConfig, ServerHandle,
    ServerStats, Status,
};

pub use crate::{
    client::Client,
    error::{CallError, ConnectError, ConnectionError, Error, ErrorCode},
    method::MethodId,
    router::{RouteError, Router, RouterFuture},
    service::{BoxStream, Context, NoError, ReplyItems, RpcError, Service, Streaming},
};

#[doc(hidden)]
pub use crate::service::__private;
pub use flumen_macros::service;

/// Runtimes: `TokioRuntime` (feature `tokio`) and `SmolRuntime` (feature `smol`).
pub mod rt {
    pub use flumen_rt::*;
    pub use flumen_stream::Runtime;
}

/// TCP transports: `TokioTcp` (features `tcp` + `tokio`) and `SmolTcp` (features `tcp` +
/// `smol`).
#[cfg(feature = "tcp")]
pub mod tcp {
    pub use flumen_tcp::*;
}

/// TLS (feature `tls`): `ServerTls` / `ClientTls` from PEM files, mutual TLS, `TlsTransport`
/// over any byte transport (`TlsTransport<TokioTcp>`), typed `HandshakeError`s, and `DevCa`
/// for tests and examples.
#[cfg(feature = "tls")]
pub mod tls {
    pub use flumen_tls::*;
}

/// QUIC (feature `quic`): `QuicTransport` on quinn, for tokio and smol, with the TLS settings
/// of [`tls`].
#[cfg(feature = "quic")]
pub mod quic {
    pub use flumen_quic::*;
}
