//! One endpoint of a balanced client: its pool of connections, its health, and the lease a
//! call holds on it.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crossbeam_utils::{sync::ShardedLock, CachePadded};
use event_listener::Event;
use flumen_stream::{CallError, ConnectionError, ErrorCode};
use parking_lot::Mutex;

use crate::{
    health::{Health, Latency, OutlierDetection},
    strategy::{stable_hash, Candidate},
};

/// An endpoint: an address, its connections and what its calls taught us about it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The address as text (how it is shown, hashed and named by redirects).
    pub(crate) label: Arc<str>,
    pub(crate) id: u64,
    weight: AtomicU32,
    /// Open (or recently open) connections; closed ones are pruned by the connector. Read by
    /// every call, written when connections come and go: a lock sharded per thread, so that
    /// callers on many threads do not contend on one lock word.
    conns: ShardedLock<Vec<flumen_stream::Client>>,
    next: AtomicUsize,
    /// What every call writes, on a cache line of its own: the fields the calls only read
    /// (health, the pool) are not invalidated on every core by each call.
    load: CachePadded<Load>,
    failures: AtomicU64,
    /// Failures and ejection, changed on failures (rare); a call reads the atomics below.
    health: Mutex<Health>,
    /// Whether `health` has no failure to forgive: a success then takes no lock.
    clean: AtomicBool,
    /// [`stamp`](Self::stamp) until which the endpoint takes no calls (ejected or backing
    /// off); 0 if it takes them.
    closed_until: AtomicU64,
    /// The stamp until which it is ejected; 0 if it is not.
    ejected_until: AtomicU64,
    /// A caller wants connections here (pools open lazily, on the first call).
    wanted: AtomicBool,
    /// Discovery dropped the endpoint: no new calls, connections close once their calls end.
    removed: AtomicBool,
    /// Its last health check by call said it does not serve: it takes calls only when no
    /// other endpoint serves.
    not_serving: AtomicBool,
    /// Connection attempts that failed in a row; the last one's error.
    connect_failures: AtomicU32,
    last_error: Mutex<Option<ConnectionError>>,
    /// `calls` when the connector last saw it change, and when (for idle closing).
    idle_mark: Mutex<(u64, Instant)>,
    epoch: Instant,
    /// Wakes the endpoint's connector: a connection is wanted, or one was found closed.
    pub(crate) wake: Event,
}

/// An endpoint's counters that change with every call.
#[derive(Debug, Default)]
struct Load {
    in_flight: AtomicU32,
    calls: AtomicU64,
    /// The latency average ([`Latency`]): its nanoseconds as `f64` bits, and the stamp of its
    /// last sample (0: none). Updated without a lock; a sample lost to a race is harmless.
    latency_bits: AtomicU64,
    sampled_at: AtomicU64,
}

impl Endpoint {
    pub(crate) fn new(label: Arc<str>, weight: u32) -> Self {
        Self {
            id: stable_hash(label.as_bytes()),
            label,
            weight: AtomicU32::new(weight.max(1)),
            conns: ShardedLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            load: CachePadded::default(),
            failures: AtomicU64::new(0),
            health: Mutex::new(Health::new()),
            clean: AtomicBool::new(true),
            closed_until: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            wanted: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            not_serving: AtomicBool::new(false),
            connect_failures: AtomicU32::new(0),
            last_error: Mutex::new(None),
            idle_mark: Mutex::new((0, Instant::now())),
            epoch: Instant::now(),
            wake: Event::new(),
        }
    }

    /// What a strategy sees of this endpoint.
    pub(crate) fn candidate(&self, now: Instant) -> Candidate {
        Candidate {
            id: self.id,
            in_flight: self.load.in_flight.load(Ordering::Relaxed),
            latency_ns: self.latency_at(now),
            weight: self.weight.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    /// An open connection, in turn; `None` (and the connector woken) if none is open.
    pub(crate) fn connection(&self) -> Option<flumen_stream::Client> {
        let conns = self.read_conns();
        let n = conns.len();
        let start = match n {
            0 | 1 => 0,
            _ => self.next.fetch_add(1, Ordering::Relaxed),
        };
        let mut found = None;
        let mut short = false;
        for i in 0..n {
            let conn = &conns[(start + i) % n];
            if conn.is_closed() {
                short = true;
            } else if found.is_none() {
                found = Some(conn.clone());
            }
        }
        drop(conns);
        if short || found.is_none() {
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
        let mut conns = self.write_conns();
        conns.retain(|conn| !conn.is_closed());
        conns.len()
    }

    /// The open connections.
    pub(crate) fn connections(&self) -> Vec<flumen_stream::Client> {
        self.read_conns()
            .iter()
            .filter(|conn| !conn.is_closed())
            .cloned()
            .collect()
    }

    /// A health ping went unanswered (its connection is closed).
    pub(crate) fn ping_failed(&self, now: Instant, policy: &OutlierDetection) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.change_health(|health| health.on_failure(now, policy));
        self.want();
    }

    /// The I/O counters of the open connections, summed.
    pub(crate) fn io(&self) -> flumen_stream::ConnectionStats {
        let mut total = flumen_stream::ConnectionStats::default();
        for conn in self.read_conns().iter() {
            total.add(&conn.stats());
        }
        total
    }

    pub(crate) fn open_count(&self) -> usize {
        self.read_conns()
            .iter()
            .filter(|conn| !conn.is_closed())
            .count()
    }

    pub(crate) fn add_connection(&self, conn: flumen_stream::Client, policy: &OutlierDetection) {
        self.write_conns().push(conn);
        self.connect_failures.store(0, Ordering::Release);
        self.change_health(|health| health.on_connected(policy));
    }

    /// Closes every connection gracefully: dropping our handles lets each close once the
    /// calls still using it end. The pool goes back to opening lazily.
    pub(crate) fn release_connections(&self) {
        self.write_conns().clear();
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
        self.change_health(|health| health.on_failure(now, policy))
    }

    fn read_conns(
        &self,
    ) -> crossbeam_utils::sync::ShardedLockReadGuard<'_, Vec<flumen_stream::Client>> {
        // A panic while the lock is held poisons it; the list stays consistent regardless.
        self.conns
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_conns(
        &self,
    ) -> crossbeam_utils::sync::ShardedLockWriteGuard<'_, Vec<flumen_stream::Client>> {
        self.conns
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `at` as a stamp: nanoseconds since the endpoint's epoch, plus one (0 means none).
    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
            + 1
    }

    /// Changes the health under its lock and publishes what calls read without it.
    fn change_health<T>(&self, change: impl FnOnce(&mut Health) -> T) -> T {
        let mut health = self.health.lock();
        let result = change(&mut health);
        let stamp = |at: Option<Instant>| at.map_or(0, |at| self.stamp(at));
        self.closed_until
            .store(stamp(health.closed_until()), Ordering::Release);
        self.ejected_until
            .store(stamp(health.ejected_until()), Ordering::Release);
        self.clean.store(health.is_clean(), Ordering::Release);
        result
    }

    /// The latency average at `now`, in nanoseconds.
    fn latency_at(&self, now: Instant) -> u64 {
        self.latency().at(self.stamp(now))
    }

    fn latency(&self) -> Latency {
        Latency {
            ns: f64::from_bits(self.load.latency_bits.load(Ordering::Relaxed)),
            at: self.load.sampled_at.load(Ordering::Relaxed),
        }
    }

    /// A call that began at stamp `started` (0: not timed) was answered.
    fn on_success(&self, started: u64) {
        if started != 0 {
            let now = self.stamp(Instant::now());
            let next = self.latency().sampled(now, now.saturating_sub(started));
            self.load
                .latency_bits
                .store(next.ns.to_bits(), Ordering::Relaxed);
            self.load.sampled_at.store(next.at, Ordering::Relaxed);
        }
        if !self.clean.load(Ordering::Acquire) {
            self.change_health(Health::on_success);
        }
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
        match self.closed_until.load(Ordering::Acquire) {
            0 => true,
            until => self.stamp(now) >= until,
        }
    }

    /// When the endpoint takes calls again, if it does not now.
    pub(crate) fn opens_at(&self, now: Instant) -> Option<Instant> {
        let until = self.closed_until.load(Ordering::Acquire);
        (until > self.stamp(now)).then(|| self.epoch + Duration::from_nanos(until - 1))
    }

    /// Records what the endpoint's health check answered.
    pub(crate) fn set_serving(&self, serving: bool) {
        self.not_serving.store(!serving, Ordering::Release);
    }

    /// Its last health check said it does not serve.
    pub(crate) fn is_not_serving(&self) -> bool {
        self.not_serving.load(Ordering::Acquire)
    }

    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        match self.ejected_until.load(Ordering::Acquire) {
            0 => false,
            until => self.stamp(now) < until,
        }
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.load.in_flight.load(Ordering::Relaxed)
    }

    /// How long the endpoint has taken no call, as the connector sees it at `now` (it asks
    /// at every health check, so calls cost nothing here).
    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        let calls = self.load.calls.load(Ordering::Relaxed);
        let mut mark = self.idle_mark.lock();
        if mark.0 != calls {
            *mark = (calls, now);
        }
        now.saturating_duration_since(mark.1)
    }

    /// Starts a call on `conn`, timed from `now` if given (the latency average is kept only
    /// where a strategy has a choice to make: a lone endpoint's calls skip the clock).
    pub(crate) fn lease(
        self: Arc<Self>,
        conn: flumen_stream::Client,
        now: Option<Instant>,
    ) -> Lease {
        self.load.in_flight.fetch_add(1, Ordering::Relaxed);
        self.load.calls.fetch_add(1, Ordering::Relaxed);
        let started = now.map_or(0, |now| self.stamp(now));
        Lease {
            endpoint: self,
            conn,
            started,
        }
    }

    /// Counters for [`EndpointStats`](crate::EndpointStats).
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.load.calls.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn latency_now(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.latency_at(now))
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
    /// The endpoint's stamp when the call began; 0 if the call is not timed.
    started: u64,
}

/// How long an endpoint that answered `OVERLOADED` without a hint gets no new calls.
pub(crate) const OVERLOADED_BACKOFF: Duration = Duration::from_millis(20);

impl Lease {
    /// Records how the call ended: latency and health for the balancer.
    pub(crate) fn finish(&self, result: Result<(), &CallError>, policy: &OutlierDetection) {
        let endpoint = &self.endpoint;
        if let Ok(()) | Err(CallError::Application(_)) = result {
            // Answered: the endpoint is healthy.
            endpoint.on_success(self.started);
            return;
        }
        let now = Instant::now();
        let blame = match result {
            Ok(_) | Err(CallError::Application(_)) => false,
            Err(CallError::Overloaded { retry_after, .. }) => {
                let wait = retry_after.unwrap_or(OVERLOADED_BACKOFF);
                endpoint.change_health(|health| health.on_overloaded(now, wait));
                false
            }
            Err(CallError::Connection(_) | CallError::Timeout(_)) => true,
            Err(CallError::NotSent(_)) => {
                // The connection closed or drains: find another.
                endpoint.want();
                false
            }
            Err(error) if error.remote_code() == Some(ErrorCode::SHUTTING_DOWN) => {
                // The server drains; its GoAway may not have arrived yet. No new calls there
                // meanwhile.
                endpoint.change_health(|health| health.on_overloaded(now, OVERLOADED_BACKOFF));
                endpoint.want();
                false
            }
            Err(_) => false,
        };
        if blame {
            endpoint.failures.fetch_add(1, Ordering::Relaxed);
            endpoint.change_health(|health| health.on_failure(now, policy));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
