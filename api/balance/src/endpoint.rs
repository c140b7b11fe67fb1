//! One endpoint of a balanced client: its pool of connections, its health, and the lease a
//! call holds on it.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use event_listener::Event;
use flumen_stream::{CallError, ConnectionError};
use parking_lot::{Mutex, RwLock};

use crate::{
    health::{Health, OutlierDetection},
    strategy::{stable_hash, Candidate},
};

/// An endpoint: an address, its connections and what its calls taught us about it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The address as text (how it is shown, hashed and named by redirects).
    pub(crate) label: Arc<str>,
    pub(crate) id: u64,
    weight: AtomicU32,
    /// Open (or recently open) connections; closed ones are pruned by the connector.
    conns: RwLock<Vec<flumen_stream::Client>>,
    next: AtomicUsize,
    in_flight: AtomicU32,
    calls: AtomicU64,
    failures: AtomicU64,
    health: Mutex<Health>,
    /// A caller wants connections here (pools open lazily, on the first call).
    wanted: AtomicBool,
    /// Discovery dropped the endpoint: no new calls, connections close once their calls end.
    removed: AtomicBool,
    /// Connection attempts that failed in a row; the last one's error.
    connect_failures: AtomicU32,
    last_error: Mutex<Option<ConnectionError>>,
    /// When the endpoint last leased a call, in milliseconds since `epoch` (for idle closing).
    last_used_ms: AtomicU64,
    epoch: Instant,
    /// Wakes the endpoint's connector: a connection is wanted, or one was found closed.
    pub(crate) wake: Event,
}

impl Endpoint {
    pub(crate) fn new(label: Arc<str>, weight: u32) -> Self {
        Self {
            id: stable_hash(label.as_bytes()),
            label,
            weight: AtomicU32::new(weight.max(1)),
            conns: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            in_flight: AtomicU32::new(0),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            health: Mutex::new(Health::new()),
            wanted: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            connect_failures: AtomicU32::new(0),
            last_error: Mutex::new(None),
            last_used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            wake: Event::new(),
        }
    }

    /// What a strategy sees of this endpoint.
    pub(crate) fn candidate(&self, now: Instant) -> Candidate {
        Candidate {
            id: self.id,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            latency_ns: self.health.lock().latency_ns(now),
            weight: self.weight.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    /// An open connection, in turn; `None` (and the connector woken) if none is open.
    pub(crate) fn connection(&self) -> Option<flumen_stream::Client> {
        let conns = self.conns.read();
        let n = conns.len();
        let start = match n {
            0 => 0,
            1 => 0,
            _ => self.next.fetch_add(1, Ordering::Relaxed),
        };
        let found = (0..n)
            .map(|i| &conns[(start + i) % n])
            .find(|conn| !conn.is_closed())
            .cloned();
        let short = found.is_none() || conns.iter().any(flumen_stream::Client::is_closed);
        drop(conns);
        if short {
            self.want();
        }
        found
    }

    /// Asks the connector for connections.
    pub(crate) fn want(&self) {
        if !self.wanted.swap(true, Ordering::AcqRel) || self.open_count() == 0 {
            self.wake.notify(1);
        }
    }

    pub(crate) fn is_wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }

    /// Drops closed connections; returns how many stay open.
    pub(crate) fn prune(&self) -> usize {
        let mut conns = self.conns.write();
        conns.retain(|conn| !conn.is_closed());
        conns.len()
    }

    pub(crate) fn open_count(&self) -> usize {
        self.conns
            .read()
            .iter()
            .filter(|conn| !conn.is_closed())
            .count()
    }

    pub(crate) fn add_connection(&self, conn: flumen_stream::Client, policy: &OutlierDetection) {
        self.conns.write().push(conn);
        self.connect_failures.store(0, Ordering::Release);
        self.health.lock().on_connected(policy);
    }

    /// Closes every connection gracefully: dropping our handles lets each close once the
    /// calls still using it end. The pool goes back to opening lazily.
    pub(crate) fn release_connections(&self) {
        self.conns.write().clear();
        self.wanted.store(false, Ordering::Release);
    }

    /// A connection attempt failed with `error`. Returns whether that ejected the endpoint.
    pub(crate) fn connect_failed(
        &self,
        error: ConnectionError,
        now: Instant,
        policy: &OutlierDetection,
    ) -> bool {
        self.connect_failures.fetch_add(1, Ordering::AcqRel);
        *self.last_error.lock() = Some(error);
        self.health.lock().on_failure(now, policy)
    }

    /// Failed connection attempts in a row.
    pub(crate) fn connect_failures(&self) -> u32 {
        self.connect_failures.load(Ordering::Acquire)
    }

    pub(crate) fn last_error(&self) -> Option<ConnectionError> {
        self.last_error.lock().clone()
    }

    pub(crate) fn remove(&self) {
        self.removed.store(true, Ordering::Release);
        self.wake.notify(usize::MAX);
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub(crate) fn is_available(&self, now: Instant) -> bool {
        self.health.lock().is_available(now)
    }

    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.health.lock().is_ejected(now)
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// How long since the endpoint last took a call.
    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        let used = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(self.epoch)
            .saturating_sub(used)
    }

    /// Starts a call on `conn`.
    pub(crate) fn lease(self: Arc<Self>, conn: flumen_stream::Client, now: Instant) -> Lease {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        if self.last_used_ms.load(Ordering::Relaxed) != ms {
            self.last_used_ms.store(ms, Ordering::Relaxed);
        }
        Lease {
            endpoint: self,
            conn,
            started: now,
        }
    }

    /// Counters for [`EndpointStats`](crate::EndpointStats).
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn latency(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.health.lock().latency_ns(now))
    }

    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }
}

/// A call's hold on an endpoint: counts it in flight until dropped, and reports the outcome.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) conn: flumen_stream::Client,
    started: Instant,
}

/// How long an endpoint that answered `OVERLOADED` without a hint gets no new calls.
pub(crate) const OVERLOADED_BACKOFF: Duration = Duration::from_millis(20);

impl Lease {
    /// Records how the call ended: latency and health for the balancer.
    pub(crate) fn finish<T>(&self, result: &Result<T, CallError>, policy: &OutlierDetection) {
        let now = Instant::now();
        let endpoint = &self.endpoint;
        let blame = match result {
            Ok(_) | Err(CallError::Application(_)) => false,
            Err(CallError::Overloaded { retry_after, .. }) => {
                let wait = retry_after.unwrap_or(OVERLOADED_BACKOFF);
                endpoint.health.lock().on_overloaded(now, wait);
                false
            }
            Err(CallError::Connection(_) | CallError::Timeout(_)) => true,
            Err(CallError::NotSent(_)) => {
                // The connection closed or drains: find another.
                endpoint.want();
                false
            }
            Err(_) => false,
        };
        if blame {
            endpoint.failures.fetch_add(1, Ordering::Relaxed);
            endpoint.health.lock().on_failure(now, policy);
        } else if result.is_ok() || matches!(result, Err(CallError::Application(_))) {
            let latency = now.saturating_duration_since(self.started);
            endpoint.health.lock().on_success(now, latency);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
