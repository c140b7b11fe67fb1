//! The balanced client: picks an endpoint and a connection per call, retries what is safe to
//! retry, follows redirects.

use std::{
    borrow::Cow,
    future::{poll_fn, Future},
    io,
    pin::pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::Poll,
    time::{Duration, Instant},
};

use bytes::Bytes;
use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard};
use event_listener::{Event, Listener};
use flumen_stream::{
    AnyRuntime, CallError, CallOptions, ConnectionError, ReplyStream, RequestSender, Runtime,
    StreamMode,
};
use parking_lot::Mutex;

use crate::{
    budget::Budget,
    config::{BalanceConfig, Mode, MAX_REDIRECTS},
    endpoint::{Endpoint, Lease},
    hedge::{HedgePlan, Latencies},
    strategy::{Candidate, Picker},
    Strategy,
};

/// The longest a caller waiting for a connection sleeps before looking again (an endpoint's
/// overload backoff ends without an event).
const WAIT_SLICE: Duration = Duration::from_millis(20);

/// Adds the endpoint a redirect named (parsing its address) and starts its connector; `None`
/// if the address does not parse. Made by the driver, which knows the transport.
pub(crate) type AddEndpoint =
    Box<dyn Fn(&Arc<Shared>, &str) -> Option<Arc<Endpoint>> + Send + Sync>;

/// How one call may be routed and retried: set by the typed layer from the method's
/// declaration and the caller's affinity key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// The method may run twice without harm: a call that failed after it was sent (the
    /// connection broke) may be retried on another endpoint.
    pub idempotent: bool,
    /// The consistent-hashing key ([`Strategy::ConsistentHash`](crate::Strategy)).
    pub affinity: Option<u64>,
}

/// A client over many endpoints: a drop-in for one connection, for unary and streaming
/// calls alike. Cheap to clone; clones share the pools.
///
/// Per call it picks an endpoint with the configured [`Strategy`](crate::Strategy), then one
/// of the endpoint's open connections in turn. A stream stays on the connection where it
/// started.
///
/// **Retries.** A call is retried on another endpoint, automatically, only when it provably
/// never reached a handler: never written (the connection was closed or draining), refused as
/// `OVERLOADED` or `SHUTTING_DOWN`, or redirected. A call whose connection broke after it was
/// written is retried only when its method is idempotent ([`Route::idempotent`]). Every retry
/// takes a token from the [`RetryBudget`](crate::RetryBudget), at most
/// [`max_attempts`](BalanceConfig::max_attempts) attempts are made, and the deadline is the
/// first attempt's: a retry gets what is left of it, never more.
///
/// **Hedging** ([`BalanceConfig::hedging`], off by default). An idempotent call still
/// unanswered after the configured delay (a learned percentile of the method's latencies, or
/// a fixed wait) is sent to a second endpoint as well; the first answer wins and the other
/// attempt is cancelled. The hedge spends a retry-budget token and counts as an attempt.
#[derive(Clone)]
pub struct Balancer {
    pub(crate) shared: Arc<Shared>,
}

/// State shared by a balancer's callers, connectors and discovery task.
pub(crate) struct Shared {
    pub(crate) endpoints: Endpoints,
    picker: Picker,
    /// The leader's id, in [`Mode::Leader`].
    leader: Mutex<Option<u64>>,
    budget: Budget,
    pub(crate) config: BalanceConfig,
    /// A connection opened or failed, or the endpoint set changed: waiting callers look again.
    pub(crate) changed: Event,
    /// Discovery delivered its first set (until then callers wait instead of failing).
    pub(crate) discovered: AtomicBool,
    pub(crate) closed: AtomicBool,
    /// The runtime the balancer was built on: its timers.
    pub(crate) rt: AnyRuntime,
    add_endpoint: AddEndpoint,
    redirects: AtomicU64,
    /// Per-method latencies, for [`Hedging::Percentile`](crate::Hedging).
    latencies: Latencies,
    hedges: AtomicU64,
    hedges_won: AtomicU64,
    /// Notified when the balancer goes (its last clone dropped) or is closed: the discovery
    /// task stops waiting on its source.
    pub(crate) gone: Arc<Event>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.gone.notify(usize::MAX);
    }
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoints = self.shared.endpoints.snapshot();
        f.debug_struct("Balancer")
            .field("strategy", &self.shared.picker.strategy())
            .field(
                "endpoints",
                &endpoints.iter().map(|e| &*e.label).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(config: BalanceConfig, rt: AnyRuntime, add_endpoint: AddEndpoint) -> Self {
        Self {
            endpoints: Endpoints(ShardedLock::new(Arc::from(Vec::new()))),
            picker: Picker::new(config.strategy),
            leader: Mutex::new(None),
            budget: Budget::new(&config.budget),
            config,
            changed: Event::new(),
            discovered: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            rt,
            add_endpoint,
            redirects: AtomicU64::new(0),
            latencies: Latencies::default(),
            hedges: AtomicU64::new(0),
            hedges_won: AtomicU64::new(0),
            gone: Arc::new(Event::new()),
        }
    }

    /// Takes a call's lease: `Ok(None)` if the caller should wait for a connection.
    fn try_lease(
        &self,
        route: &Route,
        now: Instant,
        avoid: Option<u64>,
    ) -> Result<Option<Lease>, CallError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(CallError::NotSent(ConnectionError::Closed));
        }
        let set = self.endpoints.read();
        if let [endpoint] = &**set {
            // One endpoint: nothing to choose.
            if !endpoint.is_available(now) && !endpoint.is_ejected(now) {
                return Ok(None); // overloaded: wait out its hint
            }
            return match endpoint.connection() {
                Some(conn) => Ok(Some(endpoint.clone().lease(conn, None))),
                None => self.nothing_open(&set),
            };
        }
        if self.config.mode == Mode::Leader {
            if let Some(lease) = self.leader_lease(&set, now) {
                return Ok(lease);
            }
        }
        if let (Strategy::ConsistentHash, Some(key)) = (self.picker.strategy(), route.affinity) {
            if let Some(lease) = self.keyed_lease(&set, key, now) {
                return Ok(lease);
            }
        }
        // Which endpoints can take the call; a connection is taken only from the one picked.
        let mut ready: Vec<&Arc<Endpoint>> = Vec::with_capacity(set.len());
        let mut ejected = Vec::new();
        let mut backing_off = false;
        for endpoint in set.iter() {
            if endpoint.is_removed() {
                continue;
            }
            if endpoint.open_count() == 0 {
                endpoint.want();
                continue;
            }
            let available = endpoint.is_available(now);
            if available && !endpoint.is_not_serving() {
                ready.push(endpoint);
            } else if endpoint.is_ejected(now) || available {
                // Ejected, or not serving: the fallback if nothing else can take the call.
                ejected.push(endpoint);
            } else {
                backing_off = true;
            }
        }
        if ready.is_empty() {
            // Every connected endpoint is ejected or not serving: better a suspect endpoint
            // than none.
            ready = ejected;
        }
        // A retry goes elsewhere if it can.
        if let Some(avoid) = avoid.filter(|_| ready.len() > 1) {
            ready.retain(|e| e.id != avoid);
        }
        if ready.is_empty() {
            return match backing_off {
                true => Ok(None),
                false => self.nothing_open(&set),
            };
        }
        let candidates: Vec<Candidate> = ready.iter().map(|e| e.candidate(now)).collect();
        let mut rng = fastrand::Rng::new();
        let endpoint = ready[self.picker.pick(&candidates, route.affinity, &mut rng)];
        // Its connection closed since it was counted: look again (the connector was woken).
        Ok(endpoint
            .connection()
            .map(|conn| endpoint.clone().lease(conn, Some(now))))
    }

    fn leader_lease(&self, set: &[Arc<Endpoint>], now: Instant) -> Option<Option<Lease>> {
        let leader = (*self.leader.lock())?;
        let endpoint = set.iter().find(|e| e.id == leader)?;
        Self::lease_or_wait(endpoint, now)
    }

    /// The lease of the endpoint a key hashes to among those that can be reached, waiting for
    /// its connection rather than sending the key elsewhere meanwhile.
    fn keyed_lease(&self, set: &[Arc<Endpoint>], key: u64, now: Instant) -> Option<Option<Lease>> {
        let reachable: Vec<&Arc<Endpoint>> =
            set.iter().filter(|e| Self::can_reach(e, now)).collect();
        let candidates: Vec<Candidate> = reachable.iter().map(|e| e.candidate(now)).collect();
        if candidates.is_empty() {
            return None;
        }
        let mut rng = fastrand::Rng::new();
        let index = self.picker.pick(&candidates, Some(key), &mut rng);
        Self::lease_or_wait(reachable[index], now)
    }

    /// Whether `endpoint` should get its calls: present, not ejected, serving, and connected
    /// or about to be (no failed connection attempt since its last success).
    fn can_reach(endpoint: &Endpoint, now: Instant) -> bool {
        !endpoint.is_removed()
            && !endpoint.is_ejected(now)
            && !endpoint.is_not_serving()
            && (endpoint.connect_failures() == 0 || endpoint.open_count() > 0)
    }

    fn lease_or_wait(endpoint: &Arc<Endpoint>, now: Instant) -> Option<Option<Lease>> {
        if !Self::can_reach(endpoint, now) {
            return None;
        }
        Some(
            endpoint
                .connection()
                .map(|conn| endpoint.clone().lease(conn, Some(now))),
        )
    }

    /// No endpoint has an open connection: wait while one is being opened for the first time
    /// (or discovery has not answered yet); otherwise fail now with the last connection error.
    fn nothing_open(&self, set: &[Arc<Endpoint>]) -> Result<Option<Lease>, CallError> {
        if !self.discovered.load(Ordering::Acquire) {
            return Ok(None);
        }
        let mut last = None;
        for endpoint in set.iter().filter(|e| !e.is_removed()) {
            endpoint.want();
            if endpoint.connect_failures() == 0 {
                return Ok(None);
            }
            last = last.or_else(|| endpoint.last_error());
        }
        let error = last.unwrap_or_else(|| {
            ConnectionError::Io(Arc::new(io::Error::new(
                io::ErrorKind::NotConnected,
                "no endpoint to call: discovery found none",
            )))
        });
        Err(CallError::NotSent(error))
    }

    /// Remembers the leader a follower named, adding it if it is new.
    fn follow(self: &Arc<Self>, address: &str) -> bool {
        let set = self.endpoints.snapshot();
        let endpoint = match set.iter().find(|e| &*e.label == address && !e.is_removed()) {
            Some(endpoint) => endpoint.clone(),
            None => match (self.add_endpoint)(self, address) {
                Some(endpoint) => endpoint,
                None => return false,
            },
        };
        endpoint.want();
        *self.leader.lock() = Some(endpoint.id);
        self.redirects.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn forget_leader(&self, endpoint: &Endpoint) {
        let mut leader = self.leader.lock();
        if *leader == Some(endpoint.id) {
            *leader = None;
        }
    }
}

/// The endpoint set: read by every call, replaced when discovery changes it. A lock sharded per
/// thread, so that callers on many threads do not contend on one lock word.
pub(crate) struct Endpoints(ShardedLock<Arc<[Arc<Endpoint>]>>);

impl Endpoints {
    pub(crate) fn read(&self) -> ShardedLockReadGuard<'_, Arc<[Arc<Endpoint>]>> {
        // A panic while the lock is held poisons it; the set stays consistent regardless.
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn snapshot(&self) -> Arc<[Arc<Endpoint>]> {
        self.read().clone()
    }

    pub(crate) fn replace(&self, set: Vec<Arc<Endpoint>>) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::from(set);
    }
}

/// What a hedged attempt needs beside its lease.
struct Hedge<'p, 'a> {
    plan: &'p HedgePlan,
    /// How long the first attempt runs alone.
    delay: Duration,
    route: &'p Route,
    /// The call's options (a hedge gets what is left of their deadline).
    options: &'a CallOptions,
}

/// The bookkeeping of one call's attempts.
struct Attempts {
    /// When the call began (the first lease's clock too).
    started: Instant,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    made: u32,
    redirects: u32,
    /// The endpoint the last attempt failed on: a retry goes elsewhere if it can.
    avoid: Option<u64>,
}

impl Attempts {
    /// A call begins: it pays into the retry budget.
    fn new(shared: &Shared, options: &CallOptions) -> Self {
        shared.budget.deposit();
        let timeout = options
            .timeout_setting()
            .unwrap_or_else(|| shared.config.client.default_timeout_setting());
        let started = Instant::now();
        Self {
            started,
            deadline: timeout.map(|t| started + t),
            timeout,
            made: 0,
            redirects: 0,
            avoid: None,
        }
    }

    /// The options of the next attempt: what is left of the deadline.
    fn options<'a>(&self, options: &'a CallOptions) -> Result<Cow<'a, CallOptions>, CallError> {
        if self.made == 0 && self.redirects == 0 {
            return Ok(Cow::Borrowed(options));
        }
        let Some(deadline) = self.deadline else {
            return Ok(Cow::Borrowed(options));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out());
        }
        Ok(Cow::Owned(options.clone().timeout(Some(left))))
    }

    /// How the attempt on `lease` ended: `Some` to return `result`, `None` to try again.
    fn settle<T>(
        &mut self,
        shared: &Arc<Shared>,
        lease: &Lease,
        route: &Route,
        result: Result<T, CallError>,
    ) -> Option<Result<T, CallError>> {
        match result {
            Err(error) if self.retry(shared, &error, lease, route) => None,
            result => Some(result),
        }
    }

    fn timed_out(&self) -> CallError {
        CallError::Timeout(self.timeout.unwrap_or_default())
    }

    /// Whether the call that failed with `error` on `lease` is tried again.
    fn retry(
        &mut self,
        shared: &Arc<Shared>,
        error: &CallError,
        lease: &Lease,
        route: &Route,
    ) -> bool {
        if let Some(address) = error.redirect() {
            self.redirects += 1;
            return self.redirects <= MAX_REDIRECTS && shared.follow(address);
        }
        if matches!(error, CallError::Connection(_) | CallError::Timeout(_)) {
            shared.forget_leader(&lease.endpoint);
        }
        self.made += 1;
        self.avoid = Some(lease.endpoint.id);
        let safe = match error {
            CallError::RequestTooLarge { .. } => false,
            CallError::Connection(_) => route.idempotent,
            error => error.is_not_sent(),
        };
        safe && self.made < shared.config.max_attempts
            && self.deadline.is_none_or(|d| Instant::now() < d)
            && shared.budget.try_withdraw(Instant::now())
    }
}

impl Balancer {
    /// Calls `method` with a body in two parts (see `flumen_stream::Client::call_parts`).
    ///
    /// # Errors
    ///
    /// The last attempt's [`CallError`]; `NotSent` if no endpoint could take the call, with the
    /// last connection error.
    pub async fn call_parts(
        &self,
        method: u32,
        head: Bytes,
        tail: Bytes,
        options: &CallOptions,
        route: Route,
    ) -> Result<Bytes, CallError> {
        let shared = &self.shared;
        let mut attempts = Attempts::new(shared, options);
        let hedge = match (shared.config.hedging, route.idempotent) {
            (Some(policy), true) => Some(HedgePlan::new(policy, &shared.latencies, method)),
            _ => None,
        };
        loop {
            let lease = self.lease(&route, &attempts).await?;
            let attempt = attempts.options(options)?;
            let (lease, result) = match hedge.as_ref().and_then(|p| Some((p, p.delay?))) {
                Some((plan, delay)) => {
                    let hedge = Hedge {
                        plan,
                        delay,
                        route: &route,
                        options,
                    };
                    // Boxed: the common, unhedged call's future stays small.
                    Box::pin(
                        self.hedged(lease, attempt, &mut attempts, hedge, |conn, options| {
                            let (head, tail) = (head.clone(), tail.clone());
                            async move { conn.call_parts(method, head, tail, &options).await }
                        }),
                    )
                    .await
                }
                None => {
                    // Not hedged; a method still learning its latencies records this one.
                    let started = hedge.as_ref().map(|_| Instant::now());
                    let result = lease
                        .conn
                        .call_parts(method, head.clone(), tail.clone(), &attempt)
                        .await;
                    if let (Some(plan), Some(started)) = (&hedge, started) {
                        plan.answered(&result, started);
                    }
                    (lease, result)
                }
            };
            lease.finish(result.as_ref().map(drop), &shared.config.outlier);
            if let Some(result) = attempts.settle(shared, &lease, &route, result) {
                return result;
            }
        }
    }

    /// One attempt of an idempotent call on `first`, hedged on a second endpoint if it is
    /// still unanswered after `hedge.delay`. Returns the lease whose answer is returned
    /// (the other attempt, if any, is cancelled, or was recorded as failed).
    async fn hedged<'a, Fut>(
        &self,
        first: Lease,
        attempt: Cow<'a, CallOptions>,
        attempts: &mut Attempts,
        hedge: Hedge<'_, 'a>,
        call: impl Fn(flumen_stream::Client, Cow<'a, CallOptions>) -> Fut,
    ) -> (Lease, Result<Bytes, CallError>)
    where
        Fut: Future<Output = Result<Bytes, CallError>>,
    {
        let Hedge {
            plan,
            delay,
            route,
            options,
        } = hedge;
        let shared = &self.shared;
        let started = Instant::now();
        let mut one = pin!(call(first.conn.clone(), attempt));
        let mut timer = shared.rt.sleep_until(started + delay);
        let early = poll_fn(|cx| match one.as_mut().poll(cx) {
            Poll::Ready(result) => Poll::Ready(Some(result)),
            Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
        })
        .await;
        if let Some(result) = early {
            plan.answered(&result, started);
            return (first, result);
        }
        let Some((second, hedge_options)) = self.hedge_lease(route, &first, attempts, options)
        else {
            let result = one.await;
            plan.answered(&result, started);
            return (first, result);
        };
        let hedge_started = Instant::now();
        let mut two = pin!(call(second.conn.clone(), hedge_options));
        let (first_answered, result) = poll_fn(|cx| match one.as_mut().poll(cx) {
            Poll::Ready(result) => Poll::Ready((true, result)),
            Poll::Pending => two.as_mut().poll(cx).map(|result| (false, result)),
        })
        .await;
        let (winner, winner_started, loser, loser_started, mut rest) = match first_answered {
            true => (first, started, second, hedge_started, two),
            false => (second, hedge_started, first, started, one),
        };
        if is_answer(&result) {
            // The other attempt is cancelled as `rest` and `loser` drop.
            plan.answered(&result, winner_started);
            if !first_answered {
                shared.hedges_won.fetch_add(1, Ordering::Relaxed);
            }
            return (winner, result);
        }
        // The first to end failed: the other may still answer.
        winner.finish(result.as_ref().map(drop), &shared.config.outlier);
        drop(winner);
        let result = rest.as_mut().await;
        plan.answered(&result, loser_started);
        if first_answered && result.is_ok() {
            shared.hedges_won.fetch_add(1, Ordering::Relaxed);
        }
        (loser, result)
    }

    /// The lease of a hedge: another endpoint than `first`'s, if the attempts and the
    /// budget allow one, with what is left of the deadline.
    fn hedge_lease<'a>(
        &self,
        route: &Route,
        first: &Lease,
        attempts: &mut Attempts,
        options: &'a CallOptions,
    ) -> Option<(Lease, Cow<'a, CallOptions>)> {
        let shared = &self.shared;
        let now = Instant::now();
        // No attempt or time left: no lease taken, no budget spent.
        if attempts.made + 1 >= shared.config.max_attempts
            || attempts.deadline.is_some_and(|d| now >= d)
        {
            return None;
        }
        let lease = shared
            .try_lease(route, now, Some(first.endpoint.id))
            .ok()
            .flatten()
            .filter(|lease| lease.endpoint.id != first.endpoint.id)?;
        if !shared.budget.try_spend(now) {
            return None;
        }
        attempts.made += 1;
        let options = attempts.options(options).ok()?;
        shared.hedges.fetch_add(1, Ordering::Relaxed);
        Some((lease, options))
    }

    /// [`call_parts`](Self::call_parts) from a plain thread; blocks until it resolves.
    ///
    /// # Errors
    ///
    /// As [`call_parts`](Self::call_parts).
    pub fn call_blocking_parts(
        &self,
        method: u32,
        head: Bytes,
        tail: Bytes,
        options: &CallOptions,
        route: Route,
    ) -> Result<Bytes, CallError> {
        flumen_stream::check_blocking()?;
        let shared = &self.shared;
        let mut attempts = Attempts::new(shared, options);
        loop {
            let lease = self.lease_blocking(&route, &attempts)?;
            let options = attempts.options(options)?;
            let result =
                lease
                    .conn
                    .call_blocking_parts(method, head.clone(), tail.clone(), &options);
            lease.finish(result.as_ref().map(drop), &shared.config.outlier);
            if let Some(result) = attempts.settle(shared, &lease, &route, result) {
                return result;
            }
        }
    }

    /// Opens a streaming call on one endpoint; it stays there. Opening is retried elsewhere
    /// only if the stream never started (the same rules as unary calls, idempotence aside).
    ///
    /// # Errors
    ///
    /// As [`call_parts`](Self::call_parts).
    pub async fn open_stream(
        &self,
        method: u32,
        body: Bytes,
        mode: StreamMode,
        options: &CallOptions,
        route: Route,
    ) -> Result<(Option<RequestSender>, ReplyStream), CallError> {
        let shared = &self.shared;
        let mut attempts = Attempts::new(shared, options);
        let route = Route {
            idempotent: false,
            ..route
        };
        loop {
            let lease = self.lease(&route, &attempts).await?;
            let options = attempts.options(options)?;
            let result = lease
                .conn
                .open_stream(method, body.clone(), mode, &options)
                .await;
            // An open stream's latency says nothing of the endpoint's: only failures count.
            if let Err(error) = &result {
                lease.finish(Err(error), &shared.config.outlier);
            }
            if let Some(result) = attempts.settle(shared, &lease, &route, result) {
                return result;
            }
        }
    }

    /// A lease, waiting (at most until `deadline`) while connections are being opened.
    async fn lease(&self, route: &Route, attempts: &Attempts) -> Result<Lease, CallError> {
        let shared = &self.shared;
        let (started, deadline) = (attempts.started, attempts.deadline);
        // The first attempt's lease reads the clock the call began with.
        let now = match attempts.made + attempts.redirects {
            0 => started,
            _ => Instant::now(),
        };
        if let Some(lease) = shared.try_lease(route, now, attempts.avoid)? {
            return Ok(lease);
        }
        loop {
            let listener = shared.changed.listen();
            if let Some(lease) = shared.try_lease(route, Instant::now(), attempts.avoid)? {
                return Ok(lease);
            }
            let wake = wake_at(shared, deadline);
            futures_lite::future::or(listener, shared.rt.sleep_until(wake)).await;
            check_deadline(deadline, started)?;
        }
    }

    fn lease_blocking(&self, route: &Route, attempts: &Attempts) -> Result<Lease, CallError> {
        let shared = &self.shared;
        let (started, deadline) = (attempts.started, attempts.deadline);
        if let Some(lease) = shared.try_lease(route, Instant::now(), attempts.avoid)? {
            return Ok(lease);
        }
        loop {
            let listener = shared.changed.listen();
            if let Some(lease) = shared.try_lease(route, Instant::now(), attempts.avoid)? {
                return Ok(lease);
            }
            listener.wait_deadline(wake_at(shared, deadline));
            check_deadline(deadline, started)?;
        }
    }

    /// Per-endpoint figures and retry counts.
    pub fn stats(&self) -> BalanceStats {
        let shared = &self.shared;
        let endpoints = shared.endpoints.snapshot();
        let now = Instant::now();
        let (retries, retries_refused) = shared.budget.counts();
        BalanceStats {
            endpoints: endpoints
                .iter()
                .map(|e| {
                    let (calls, failures) = e.counts();
                    EndpointStats {
                        address: e.label.clone(),
                        calls,
                        failures,
                        in_flight: e.in_flight(),
                        connections: e.open_count(),
                        latency: e.latency_now(now),
                        ejected: e.is_ejected(now),
                        not_serving: e.is_not_serving(),
                        weight: e.weight(),
                        io: e.io(),
                    }
                })
                .collect(),
            retries,
            retries_refused,
            redirects: shared.redirects.load(Ordering::Relaxed),
            hedges: shared.hedges.load(Ordering::Relaxed),
            hedges_won: shared.hedges_won.load(Ordering::Relaxed),
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Stops discovery and closes every pool; calls in flight end with their connections.
    pub fn close(&self) {
        let shared = &self.shared;
        shared.closed.store(true, Ordering::Release);
        for endpoint in shared.endpoints.read().iter() {
            endpoint.remove();
        }
        shared.changed.notify(usize::MAX);
        shared.gone.notify(usize::MAX);
    }
}

/// When a waiting caller looks again: when the first endpoint backing off takes calls again,
/// at the latest after [`WAIT_SLICE`], and never after the deadline.
fn wake_at(shared: &Shared, deadline: Option<Instant>) -> Instant {
    let now = Instant::now();
    let opens = shared
        .endpoints
        .read()
        .iter()
        .filter_map(|e| e.opens_at(now))
        .min();
    let slice = opens.map_or(now + WAIT_SLICE, |at| at.min(now + WAIT_SLICE));
    deadline.map_or(slice, |deadline| deadline.min(slice))
}

/// Whether an attempt's outcome is the call's: an answer, or an error another attempt would
/// meet as well (the deadline passed, the request is too large).
fn is_answer<T>(result: &Result<T, CallError>) -> bool {
    match result {
        Ok(_) | Err(CallError::RequestTooLarge { .. }) => true,
        Err(error) => {
            !(error.is_not_sent()
                || error.redirect().is_some()
                || matches!(error, CallError::Connection(_)))
        }
    }
}

fn check_deadline(deadline: Option<Instant>, started: Instant) -> Result<(), CallError> {
    match deadline {
        Some(deadline) if Instant::now() >= deadline => Err(CallError::Timeout(
            deadline.saturating_duration_since(started),
        )),
        _ => Ok(()),
    }
}

/// A balanced client's figures ([`Balancer::stats`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BalanceStats {
    /// Each endpoint, in discovery order.
    pub endpoints: Vec<EndpointStats>,
    /// Retries made.
    pub retries: u64,
    /// Retries the budget refused (the call failed with its error instead).
    pub retries_refused: u64,
    /// Redirects followed.
    pub redirects: u64,
    /// Hedges sent ([`Hedging`](crate::Hedging)).
    pub hedges: u64,
    /// Calls whose answer came from the hedge rather than the first attempt.
    pub hedges_won: u64,
}

/// One endpoint's figures.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointStats {
    /// The address.
    pub address: Arc<str>,
    /// Calls started here (retries included).
    pub calls: u64,
    /// Calls that failed in a way that blames the endpoint (connection lost, timeout).
    pub failures: u64,
    /// Calls in flight now.
    pub in_flight: u32,
    /// Open connections.
    pub connections: usize,
    /// The latency average (peak EWMA), kept while the balancer has more than one endpoint
    /// to choose from (a lone endpoint's calls do not read the clock).
    pub latency: Duration,
    /// Ejected by outlier detection now.
    pub ejected: bool,
    /// Its last health check by call ([`BalanceConfig::health_check`](crate::BalanceConfig::health_check))
    /// said it does not serve.
    pub not_serving: bool,
    /// The weight discovery gave it.
    pub weight: u32,
    /// I/O counters of its open connections (frames per write, bytes buffered).
    pub io: flumen_stream::ConnectionStats,
}
