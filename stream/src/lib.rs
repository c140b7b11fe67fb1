//! Flumen's multiplexed full-duplex RPC core.
//!
//! The protocol core is sans-IO: [`frame`] and [`hello`] encode and decode bytes, a timing
//! wheel keeps deadlines in integer ticks, the call table matches replies to calls (both in
//! [`advanced`]), and each side's connection engine (`proto`) turns a batch of decoded frames
//! into effects (calls completed with the wakers to wake, frames to queue, stream events,
//! requests to dispatch, typed protocol violations). Around it sit thin async drivers, written
//! against two small traits so that no runtime or socket type is named here: [`Runtime`]
//! (spawn, sleep) and [`Transport`] (connect, accept, read and write halves).
//!
//! - [`Client`]: calls multiplexed on one connection, batched writes, a sliding window of calls
//!   in flight, deadlines on a timing wheel, async and blocking callers.
//! - [`Server`]: an accept loop and per-connection reader/writer tasks that hand requests to a
//!   [`Dispatch`] implementation and write replies in batches, within configured limits.
//!
//! The wire format is specified in `PROTOCOL.md` at the repository root.
#![warn(missing_docs)]

mod body;
mod call;
mod client;
pub mod code;
pub mod compress;
pub mod error;
pub mod flow;
pub mod frame;
pub mod hello;
mod io;
mod keepalive;
pub mod live;
pub mod metadata;
mod proto;
mod runtime;
mod server;
mod signal;
mod stats;
mod streaming;
mod sync;
#[cfg(test)]
mod testing;
#[cfg(feature = "tower")]
pub mod tower;
mod trace;
pub use crate::trace::SPAN_TARGET;
mod transport;
mod wheel;

pub use bytes::Bytes;

/// The core's sans-IO pieces and fixed constants, for benchmarks and custom drivers: nothing
/// here is needed to make or serve calls, and it may change between minor releases.
pub mod advanced {
    pub use crate::{
        call::{CallTable, Outcome},
        io::{CLOSE_LINGER, CLOSE_LINGER_BYTES},
        wheel::{TimerKey, Wheel},
    };
}

#[allow(deprecated)]
pub use crate::client::DEFAULT_MAX_IN_FLIGHT;

pub use crate::{
    client::{
        CallOptions, Client, ClientConfig, ReplyStream, RequestSender, StreamMode,
        DEFAULT_CLIENT_MAX_IN_FLIGHT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL,
        DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_TICK, DEFAULT_TIMEOUT, MAX_WINDOW,
    },
    error::{CallError, ConnectError, ConnectionError, ErrorCode},
    io::{DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_QUEUED_BYTES_TOTAL},
    metadata::Metadata,
    runtime::{allow_blocking, check_blocking, AnyRuntime, BoxFuture, Runtime},
    server::{
        drop_reason, AdaptiveConcurrency, Dispatch, DropReason, Reply, ReplySink, Request,
        RequestStream, Server, ServerConfig, ServerConnection, ServerHandle, ServerLimits,
        ServerStats, Status, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
        DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HANDSHAKES, DEFAULT_READ_TIMEOUT,
        DEFAULT_SERVER_MAX_IN_FLIGHT, DEFAULT_WRITE_TIMEOUT,
    },
    stats::ConnectionStats,
    transport::{AddressText, Listener, Transport, TransportRead, TransportWrite},
};
