//! Flumen: fast multiplexed RPC for internal services.
//!
//! Many calls share one full-duplex connection; requests are written in batches, a window
//! bounds the calls in flight, deadlines sit on a timing wheel, and the same client works from
//! async tasks and from plain threads. Pick the runtime (`tokio`, `smol`) and the transport
//! (`tcp`, `unix`, `inproc`, `tls`, `quic`) with cargo features; MessagePack is the default codec.
//!
//! # Which type for what
//!
//! - [`Client`] is the typed client: arguments and replies go through a codec, and every
//!   generated service client (`KvClient`) wraps one. [`stream::Client`] is the raw connection
//!   underneath (bodies as [`Bytes`], method ids as `u32`), for custom protocols and
//!   benchmarks; [`Client::raw`] reaches it.
//! - Functions that only use a transport borrow it (`Client::connect(&rt, &transport, ..)`,
//!   `Server::bind`); those that keep it for later connections take it
//!   ([`Client::balanced`]). The runtime is always borrowed (handles are cheap clones).
//! - [`CallContext`] is what a handler learns about its call; [`errors`] says which error a
//!   caller meets where.
//! - [`stream::advanced`] holds the core's sans-IO pieces (call table, timing wheel) for
//!   benchmarks and custom drivers; no call needs them.
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
//! let server = Server::new(router).bind(&rt, &TokioTcp::default(), &"127.0.0.1:0".parse()?).await?;
//!
//! let client = Client::connect(&rt, &TokioTcp::default(), server.local_addr()).await?;
//! let sum: u64 = client.call("add", &(2u64, 3u64)).await?;
//! assert_eq!(sum, 5);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

#[cfg(feature = "admin")]
pub mod admin;
mod client;
mod error;
pub mod health;
mod method;
#[cfg(feature = "metrics")]
pub mod metrics;
mod observe;
#[cfg(feature = "opentelemetry")]
mod otel;
#[cfg(all(feature = "tcp", any(feature = "tokio", feature = "smol")))]
pub mod per_core;
pub mod reflection;
#[cfg(unix)]
pub mod restart;
mod router;
mod service;
#[cfg(feature = "tower")]
pub mod tower;

pub use bytes::Bytes;
/// Balanced clients: pools per endpoint, strategies, failover, retries, discovery
/// ([`Client::balanced`]).
pub use flumen_balance as balance;
#[cfg(feature = "cbor")]
pub use flumen_codec::Cbor;
#[cfg(feature = "json")]
pub use flumen_codec::Json;
#[cfg(feature = "postcard")]
pub use flumen_codec::Postcard;
#[cfg(feature = "bincode")]
pub use flumen_codec::{Bincode, BINCODE_MAX_ALLOC};
pub use flumen_codec::{Blob, Codec, CodecError, MsgPack, BLOB_SHARE_MIN};
/// The multiplexed core, for raw calls and custom [`Dispatch`] implementations.
pub use flumen_stream as stream;
pub use flumen_stream::compress;
pub use flumen_stream::{
    AdaptiveConcurrency, CallOptions, ClientConfig, Dispatch, Metadata, Request, Server,
    ServerConfig, ServerHandle, ServerStats, Status,
};
/// The stream trait of streaming methods (`futures_core`'s, as `futures-lite` re-exports it).
pub use futures_lite::Stream;

pub use crate::{
    client::Client,
    error::{CallError, ConnectError, ConnectionError, Error, ErrorCode},
    method::MethodId,
    router::{RouteError, Router, RouterFuture},
    service::{
        Attachment, BoxStream, CallContext, NoError, ReplyItems, RpcError, Service, Streaming,
        WithAttachment,
    },
};

/// The former name of [`CallContext`].
#[deprecated(
    since = "0.1.1",
    note = "renamed `CallContext`: `Context` shadowed `std::task::Context` in handler code"
)]
pub type Context = CallContext;

/// The glue `#[flumen::service]` expands to. Not a stable API.
#[doc(hidden)]
#[path = "glue.rs"]
pub mod __private;
/// Defines a service from a trait of `async fn`s: a typed client, a server adapter and stable
/// method ids.
///
/// For `trait Kv` it generates:
///
/// - the trait itself, for the server's implementation (`Send + Sync + 'static`, each method
///   returning a `Send` future);
/// - `KvClient<C = MsgPack>`: cloneable, usable from many tasks at once; one `async fn` per
///   method (and `name_blocking` for unary methods, for plain threads), with
///   [`with_timeout`](crate::CallOptions::timeout) / `with_metadata` builders; method ids as
///   constants (`KvClient::GET`, the FNV-1a hash of `"Kv.get"`); a compile-time error if two
///   methods of one service hash alike;
/// - `KvServer<S>`: registers an implementation on a [`Router`] with [`Router::service`]
///   (several services on one router, so one port; an id taken twice is a [`RouteError`]),
///   or makes a router of its own with `into_router()`.
///
/// Method shapes, told apart by their signature:
///
/// | Declared as | Shape | Client method |
/// |-------------|-------|---------------|
/// | `async fn m(&self, a: A, b: B) -> Result<T, E>` (or `-> T`) | unary | `m(a, b) -> Result<T, RpcError<E>>` |
/// | `... -> impl Stream<Item = Result<T, E>>` (or `Item = T`) | server streaming | `m(a) -> Result<ReplyItems<T, E>, RpcError<E>>` |
/// | `async fn m(&self, a: A, items: Streaming<I>) -> Result<T, E>` | client streaming | `m(a, impl Stream<Item = I>) -> Result<T, RpcError<E>>` |
/// | `async fn m(&self, items: Streaming<I>) -> impl Stream<...>` | bidirectional | `m(impl Stream<Item = I>) -> Result<ReplyItems<..>, ..>` |
///
/// A first parameter of type [`CallContext`] receives the call's deadline and metadata. Arguments
/// must be owned (they are decoded from the request); a method's error type `E` must be
/// `Serialize + DeserializeOwned + Display` and reaches the caller as
/// [`RpcError::Method`]`(E)`; framework failures are [`RpcError::Rpc`]. An implementation of
/// a streaming method is written as the trait declares it, `-> impl Stream<Item = ...>`
/// ([`Stream`] is re-exported here): any `Send` stream of the items, which may borrow
/// `&self` (the server forwards it while it holds the service). Returning a [`BoxStream`]
/// compiles too, but rustc's `refining_impl_trait` lint then asks for `impl Stream`.
///
/// `#[idempotent]` on a method declares it safe to run twice: a balanced client
/// ([`Client::balanced`]) may then retry it on another endpoint after its connection broke
/// mid-call. Calls that provably never reached a handler are retried whatever the mark; the
/// others never are. `with_affinity(key)` on the generated client routes calls by a key under
/// [`balance::Strategy::ConsistentHash`].
///
/// `#[service(crate = "path")]` names the `flumen` crate if the macro cannot find it (it finds
/// renamed dependencies on its own).
///
/// # Examples
///
/// ```
/// use flumen::{rt::TokioRuntime, tcp::TokioTcp, Client, RpcError, Server, Stream};
/// use futures_lite::StreamExt;
///
/// #[derive(Debug, serde::Serialize, serde::Deserialize, thiserror::Error)]
/// #[error("division by zero")]
/// pub struct DivByZero;
///
/// #[flumen::service]
/// pub trait Calc {
///     /// Divides.
///     async fn div(&self, a: u64, b: u64) -> Result<u64, DivByZero>;
///     /// Counts up to `n`.
///     async fn upto(&self, n: u64) -> impl Stream<Item = u64>;
/// }
///
/// struct Calculator;
///
/// impl Calc for Calculator {
///     async fn div(&self, a: u64, b: u64) -> Result<u64, DivByZero> {
///         a.checked_div(b).ok_or(DivByZero)
///     }
///
///     async fn upto(&self, n: u64) -> impl Stream<Item = u64> {
///         futures_lite::stream::iter(1..=n)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = TokioRuntime::current();
/// let router = CalcServer::new(Calculator).into_router();
/// let server = Server::new(router).bind(&rt, &TokioTcp::default(), &"127.0.0.1:0".parse()?).await?;
/// let calc = CalcClient::new(Client::connect(&rt, &TokioTcp::default(), server.local_addr()).await?);
///
/// assert_eq!(calc.div(7, 2).await?, 3);
/// assert!(matches!(calc.div(1, 0).await, Err(RpcError::Method(DivByZero))));
/// let counted: Vec<u64> = calc.upto(3).await?.map(Result::unwrap).collect().await;
/// assert_eq!(counted, [1, 2, 3]);
/// # Ok(()) }
/// ```
pub use flumen_macros::service;

/// Which error a call meets where: a page of documentation, no items.
///
/// | Where | Error | What it holds |
/// |-------|-------|---------------|
/// | A method of a generated client (`KvClient::get`) | [`RpcError<E>`](crate::RpcError) | [`RpcError::Method`]`(E)`, the method's own error type as the handler returned it; or [`RpcError::Rpc`]`(`[`Error`]`)` for everything the framework saw |
/// | A typed call by name ([`Client::call`], `call_blocking`) | [`Error`] | [`Error::Call`]`(`[`CallError`]`)`, or the codec failing to encode the request / decode the reply |
/// | A raw call ([`stream::Client::call`], bodies as `Bytes`) | [`CallError`] | timeout, the connection ([`ConnectionError`] inside), not sent, too large, overloaded, a remote [`ErrorCode`] with its message, an application error's encoded body, a blocking call made in async code |
/// | Connecting ([`Client::connect`]) | [`ConnectError`] | the transport, the handshake (TLS failures inside: `flumen::tls::HandshakeError::find`), a refusing server, the connect timeout |
/// | Building a router ([`Router::service`], [`Router::try_route`]; `route` panics instead) | [`RouteError`] | two method names with one id |
///
/// Each tier narrows to the one below: an [`RpcError`] holds an
/// [`Error`], which holds a [`CallError`]. The predicates
/// answer the usual questions at every tier: `is_timeout()`, `is_connection()`,
/// `is_not_sent()` (provably never ran: safe to retry), `code()` (the server's
/// [`ErrorCode`]); [`RpcError`] adds `method()`,
/// `is_unknown_method()`, `is_overloaded()` and more.
///
/// On the server, a handler fails a call with its method's error type (a generated server) or
/// a [`Status`] (a route); the client sees the first as
/// [`RpcError::Method`] and the second as a remote code.
pub mod errors {}

/// Runtimes: `TokioRuntime` (feature `tokio`) and `SmolRuntime` (feature `smol`), with
/// `Workers` (feature `smol`), a smol executor on several threads that keeps woken tasks local.
pub mod rt {
    #[cfg(any(feature = "tokio", feature = "smol"))]
    pub use flumen_rt::*;
    pub use flumen_stream::Runtime;
}

/// TCP transports: `TokioTcp` (features `tcp` + `tokio`) and `SmolTcp` (features `tcp` +
/// `smol`).
#[cfg(feature = "tcp")]
pub mod tcp {
    pub use flumen_tcp::*;
}

/// Unix domain sockets (feature `unix`, on Unix): `Unix<R>` over any runtime with sockets
/// (`flumen_rt::Net`), as `TokioUnix` and `SmolUnix`, addressed by the socket's path.
#[cfg(all(feature = "unix", unix))]
pub mod unix {
    pub use flumen_unix::*;
}

/// Shared memory between processes on one host (feature `shm`, on Unix): `TokioShm` and
/// `SmolShm`, addressed by the path of the listener's socket.
#[cfg(all(feature = "shm", unix))]
pub mod shm {
    pub use flumen_shm::*;
}

/// The in-process transport (feature `inproc`): `InProc`, client and server in one process
/// over in-memory pipes, on any runtime; servers bind an `InProcAddr` name.
#[cfg(feature = "inproc")]
pub mod inproc {
    pub use flumen_inproc::*;
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
