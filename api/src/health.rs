//! A standard health service every server can mount ([`Router::with_health`]): per service,
//! serving, not serving or unknown, as the application sets it; a unary check and a watch
//! stream, which a load balancer, an orchestrator or the `flumen` command line can call.
//!
//! The application owns the [`Health`] handle and sets each service's status (the empty name
//! stands for the server as a whole). When the server starts a graceful shutdown
//! ([`ServerHandle::shutdown`]), every status turns [`ServingStatus::NotServing`] before the
//! connections close, so that a watcher learns it at once rather than from a refused call.
//!
//! On the wire it is the service `FlumenHealth`, methods `check` and `watch`, taking the
//! service's name (a `String`) and answering a [`ServingStatus`].
//!
//! ```
//! use flumen::{health::{Health, ServingStatus}, rt::TokioRuntime, tcp::TokioTcp};
//! use flumen::{Client, Router, Server, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = TokioRuntime::current();
//! let health = Health::new();
//! let router = Router::new()
//!     .route("Kv.get", |key: String| async move { Ok::<_, Status>(key) })
//!     .with_health(&health)?;
//! let server = Server::new(router).bind(&rt, &TokioTcp::default(), &"127.0.0.1:0".parse()?).await?;
//! health.set("Kv", ServingStatus::Serving);
//!
//! let client = Client::connect(&rt, &TokioTcp::default(), server.local_addr()).await?;
//! let checker = flumen::health::FlumenHealthClient::new(client);
//! assert_eq!(checker.check("Kv".into()).await?, ServingStatus::Serving);
//! assert_eq!(checker.check("Other".into()).await?, ServingStatus::Unknown);
//! # Ok(()) }
//! ```
//!
//! [`Router::with_health`]: crate::Router::with_health
//! [`ServerHandle::shutdown`]: crate::ServerHandle::shutdown

use std::{collections::HashMap, sync::Arc};

use event_listener::Event;
use futures_lite::Stream;
use serde::{Deserialize, Serialize};

/// Whether a service serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServingStatus {
    /// No status was set for the service.
    Unknown,
    /// The service takes calls.
    Serving,
    /// The service does not take calls (it is starting, stopping, or unwell).
    NotServing,
}

/// The statuses of a server's services, set by the application and served by the
/// `FlumenHealth` service. Cheap to clone; clones share the statuses.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    statuses: parking_lot::Mutex<HashMap<String, ServingStatus>>,
    /// Notified at every change, for the watch streams.
    changed: Event,
}

impl Health {
    /// No status set: every service is [`ServingStatus::Unknown`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `service`'s status (`""`: the server as a whole); watchers of it see the change.
    pub fn set(&self, service: &str, status: ServingStatus) {
        let changed = self
            .inner
            .statuses
            .lock()
            .insert(service.to_owned(), status)
            != Some(status);
        if changed {
            self.inner.changed.notify(usize::MAX);
        }
    }

    /// `service`'s status now.
    pub fn get(&self, service: &str) -> ServingStatus {
        let statuses = self.inner.statuses.lock();
        statuses
            .get(service)
            .copied()
            .unwrap_or(ServingStatus::Unknown)
    }

    /// Every status set, and the server's own (`""`), turns [`ServingStatus::NotServing`]:
    /// what a graceful shutdown does.
    pub fn set_all_not_serving(&self) {
        {
            let mut statuses = self.inner.statuses.lock();
            statuses.insert(String::new(), ServingStatus::NotServing);
            for status in statuses.values_mut() {
                *status = ServingStatus::NotServing;
            }
        }
        self.inner.changed.notify(usize::MAX);
    }

    /// `service`'s status now, then at every change (a status set again to the same value is
    /// not repeated).
    pub fn watch(&self, service: String) -> impl Stream<Item = ServingStatus> + Send + 'static {
        let health = self.clone();
        futures_lite::stream::unfold(None, move |last: Option<ServingStatus>| {
            let (health, service) = (health.clone(), service.clone());
            async move {
                loop {
                    // Listening before reading: a change after the read wakes the wait.
                    let listener = health.inner.changed.listen();
                    let now = health.get(&service);
                    if last != Some(now) {
                        return Some((now, Some(now)));
                    }
                    listener.await;
                }
            }
        })
    }
}

/// The health service on the wire.
#[crate::service(crate = "crate")]
pub trait FlumenHealth {
    /// The status of `service` (`""`: the server as a whole).
    #[idempotent]
    async fn check(&self, service: String) -> ServingStatus;
    /// The status of `service` now, then at every change, until the caller drops the stream
    /// or the server closes the connection.
    async fn watch(&self, service: String) -> impl Stream<Item = ServingStatus>;
}

impl FlumenHealth for Health {
    async fn check(&self, service: String) -> ServingStatus {
        self.get(&service)
    }

    async fn watch(&self, service: String) -> impl Stream<Item = ServingStatus> {
        Health::watch(self, service)
    }
}

/// The balancer's health check of the standard service
/// ([`BalanceConfig::health_check`](crate::balance::BalanceConfig::health_check)): it calls
/// `FlumenHealth.check` for `service` (`""`: the server as a whole) in `codec`, the servers'
/// codec, and the endpoint serves while the answer is [`ServingStatus::Serving`].
///
/// ```
/// use flumen::{balance::BalanceConfig, health, MsgPack};
///
/// let config = BalanceConfig::new().health_check(Some(health::balancer_check("Kv", &MsgPack::default())));
/// # let _ = config;
/// ```
pub fn balancer_check<C: crate::Codec>(service: &str, codec: &C) -> crate::balance::HealthCheck {
    // A name always encodes: a string in a one-element tuple.
    let body = codec.encode(&(service,)).unwrap_or_default();
    let codec = codec.clone();
    crate::balance::HealthCheck::new(FlumenHealthClient::CHECK.as_u32(), body, move |reply| {
        matches!(codec.decode(reply), Ok(ServingStatus::Serving))
    })
}
