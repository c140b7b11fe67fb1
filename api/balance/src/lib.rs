//! Balanced Flumen clients: many endpoints behind one client.
//!
//! A [`Balancer`] keeps a pool of connections per endpoint (opened lazily, replaced with
//! jittered exponential [`Backoff`] when they fail, closed when idle), spreads calls with a
//! [`Strategy`] (power of two choices on latency by default), ejects endpoints that keep
//! failing ([`OutlierDetection`]) and lets them back in on probation, follows a leader's
//! redirects in [`Mode::Leader`], retries only what is safe to retry within a [`RetryBudget`],
//! hedges idempotent calls stuck in the latency tail ([`Hedging`]), and follows a
//! [`Discover`](discovery::Discover) source while calls run.
//!
//! It sits above the single-connection core and uses only its public API; the typed
//! `flumen::Client` and every generated service client run over it as over one connection.
#![warn(missing_docs)]

mod backoff;
mod balancer;
mod budget;
mod config;
pub mod discovery;
mod driver;
mod endpoint;
mod health;
mod hedge;
mod strategy;

pub use crate::{
    backoff::Backoff,
    balancer::{BalanceStats, Balancer, EndpointStats, Route},
    budget::RetryBudget,
    config::{
        BalanceConfig, HealthCheck, Mode, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT,
        DEFAULT_MAX_ATTEMPTS, DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_POOL_SIZE, MAX_REDIRECTS,
    },
    driver::Address,
    health::OutlierDetection,
    hedge::{Hedging, DEFAULT_HEDGE_MIN_DELAY, HEDGE_MIN_SAMPLES},
    strategy::{Candidate, Strategy},
};

/// The affinity key of `key` for [`Strategy::ConsistentHash`]: a stable hash, the same on
/// every client and run.
pub fn affinity(key: impl AsRef<[u8]>) -> u64 {
    strategy::stable_hash(key.as_ref())
}
