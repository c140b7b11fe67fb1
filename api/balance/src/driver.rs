//! The tasks behind a balanced client: one connector per endpoint (opens connections lazily,
//! reconnects with backoff, closes idle pools) and one discovery task (applies endpoint sets).

use std::{
    collections::HashMap,
    hash::Hash,
    io,
    str::FromStr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::Instant,
};

use flumen_stream::{AddressText, AnyRuntime, ConnectError, ConnectionError, Runtime, Transport};

use crate::{
    balancer::{AddEndpoint, Shared},
    discovery::{Discover, Target},
    endpoint::Endpoint,
    BalanceConfig, Balancer,
};

/// What an address type needs to be balanced over: compared and hashed to tell endpoints apart,
/// written as text (endpoint labels in stats, [`AddressText`]) and parsed from it (redirects,
/// discovery files).
pub trait Address: Clone + Eq + Hash + AddressText + FromStr + Send + Sync + 'static {}

impl<A: Clone + Eq + Hash + AddressText + FromStr + Send + Sync + 'static> Address for A {}

impl Balancer {
    /// A balanced client over the endpoints `discovery` finds, connecting over `transport` on
    /// `rt`. Returns at once: connections open on the first calls (which wait for them, up to
    /// their deadline), and the endpoint set follows discovery while calls run.
    pub fn new<R, T, D>(rt: &R, transport: T, discovery: D, config: BalanceConfig) -> Self
    where
        R: Runtime,
        T: Transport,
        T::Addr: Address,
        D: Discover<T::Addr>,
    {
        Self::spread(std::slice::from_ref(rt), transport, discovery, config)
    }

    /// As [`new`](Self::new), with the endpoints' pools spread over `runtimes`, each
    /// endpoint's on the next one in turn: a client that holds many connections uses several
    /// single-threaded runtimes (`flumen_rt::Cores`) as a server per core does, each
    /// connection's socket and tasks on one thread. Timers and discovery run on the first.
    ///
    /// # Panics
    ///
    /// If `runtimes` is empty.
    pub fn spread<R, T, D>(
        runtimes: &[R],
        transport: T,
        discovery: D,
        config: BalanceConfig,
    ) -> Self
    where
        R: Runtime,
        T: Transport,
        T::Addr: Address,
        D: Discover<T::Addr>,
    {
        assert!(!runtimes.is_empty(), "a balancer needs a runtime");
        let spread = Arc::new(Spread {
            runtimes: runtimes.into(),
            next: AtomicUsize::new(0),
        });
        let first = runtimes[0].clone();
        let transport = Arc::new(transport);
        let add_endpoint: AddEndpoint = {
            let (spread, transport) = (spread.clone(), transport.clone());
            Box::new(move |shared, address| {
                let address: T::Addr = address.parse().ok()?;
                let endpoint = start(&spread, &transport, shared, &Target::new(address));
                let mut endpoints = shared.endpoints.snapshot().to_vec();
                endpoints.push(endpoint.clone());
                shared.endpoints.replace(endpoints);
                Some(endpoint)
            })
        };
        let shared = Arc::new(Shared::new(config, AnyRuntime::new(&first), add_endpoint));
        first.spawn(discover(
            spread,
            transport,
            Arc::downgrade(&shared),
            discovery,
        ));
        Self { shared }
    }
}

/// The runtimes a balancer's connections are opened on, in turn.
struct Spread<R> {
    runtimes: Arc<[R]>,
    next: AtomicUsize,
}

impl<R> Spread<R> {
    /// The runtime the next connection runs on.
    fn pick(&self) -> &R {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.runtimes.len();
        &self.runtimes[i]
    }
}

/// Creates an endpoint and starts its connector.
fn start<R: Runtime, T: Transport>(
    spread: &Arc<Spread<R>>,
    transport: &Arc<T>,
    shared: &Arc<Shared>,
    target: &Target<T::Addr>,
) -> Arc<Endpoint>
where
    T::Addr: Address,
{
    let endpoint = Arc::new(Endpoint::new(
        target.address.to_text().into(),
        target.weight,
    ));
    // Checked by a call: unknown, so not preferred, until its first answer.
    if shared.config.health_check.is_some() {
        endpoint.set_serving(false);
    }
    // Each endpoint's pool on a runtime, in turn: its connector opens its connections there,
    // so that each socket is registered with the runtime that runs its tasks.
    let rt = spread.pick();
    rt.spawn(connector(
        rt.clone(),
        transport.clone(),
        target.address.clone(),
        endpoint.clone(),
        Arc::downgrade(shared),
    ));
    endpoint
}

/// Applies each endpoint set discovery reports: new endpoints start, missing ones are removed
/// (their connections close once their calls end), weights are updated.
async fn discover<R, T, D>(
    spread: Arc<Spread<R>>,
    transport: Arc<T>,
    shared: Weak<Shared>,
    mut discovery: D,
) where
    R: Runtime,
    T: Transport,
    T::Addr: Address,
    D: Discover<T::Addr>,
{
    let gone = match shared.upgrade() {
        Some(shared) => shared.gone.clone(),
        None => return,
    };
    loop {
        // A source that only polls (a file, DNS, etcd) would otherwise keep this task, and
        // itself, alive after the balancer went.
        let listener = gone.listen();
        let alive = || {
            shared
                .upgrade()
                .is_some_and(|s| !s.closed.load(Ordering::Acquire))
        };
        if !alive() {
            return;
        }
        let next = async { Some(discovery.next().await) };
        let ended = async {
            listener.await;
            None
        };
        let Some(Some(targets)) = futures_lite::future::or(next, ended).await else {
            return;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let current = shared.endpoints.snapshot();
        let mut by_label: HashMap<&str, &Arc<Endpoint>> = current
            .iter()
            .filter(|e| !e.is_removed())
            .map(|e| (&*e.label, e))
            .collect();
        let mut next = Vec::with_capacity(targets.len());
        for target in &targets {
            let label = target.address.to_text();
            match by_label.remove(label.as_str()) {
                Some(endpoint) => {
                    endpoint.set_weight(target.weight);
                    next.push(endpoint.clone());
                }
                None if next.iter().any(|e: &Arc<Endpoint>| *e.label == *label) => {}
                None => next.push(start(&spread, &transport, &shared, target)),
            }
        }
        for gone in by_label.into_values() {
            gone.remove();
        }
        shared.endpoints.replace(next);
        shared.discovered.store(true, Ordering::Release);
        shared.changed.notify(usize::MAX);
    }
}

/// Keeps one endpoint's pool: opens connections while they are wanted (backing off after
/// failures), replaces closed ones, closes the pool when idle, and ends when the endpoint is
/// removed or the balancer dropped.
async fn connector<R: Runtime, T: Transport>(
    rt: R,
    transport: Arc<T>,
    address: T::Addr,
    endpoint: Arc<Endpoint>,
    shared: Weak<Shared>,
) {
    let mut rng = fastrand::Rng::new();
    let mut next_ping = Instant::now();
    loop {
        let Some(strong) = shared.upgrade() else {
            endpoint.release_connections();
            return;
        };
        if endpoint.is_removed() || strong.closed.load(Ordering::Acquire) {
            endpoint.release_connections();
            strong.changed.notify(usize::MAX);
            return;
        }
        let config = &strong.config;
        let open = endpoint.prune();
        let now = Instant::now();
        if endpoint.is_wanted() && open < config.pool_size {
            let delay = config.backoff.delay(endpoint.connect_failures(), &mut rng);
            let client = config.client.clone();
            drop(strong);
            if !delay.is_zero() {
                rt.sleep_until(now + delay).await;
            }
            let result = flumen_stream::Client::connect(&rt, &*transport, &address, client).await;
            let Some(strong) = shared.upgrade() else {
                return;
            };
            // A new connection is pinged once it has been idle for a health interval, or
            // checked at once by a health check that calls.
            next_ping = match strong.config.health_check {
                Some(_) => Instant::now(),
                None => Instant::now() + strong.config.health_interval,
            };
            match result {
                Ok(conn) if !endpoint.is_removed() => {
                    endpoint.add_connection(conn, &strong.config.outlier)
                }
                Ok(_) => {}
                Err(error) => {
                    let config = &strong.config;
                    endpoint.connect_failed(connect_error(error), Instant::now(), &config.outlier);
                }
            }
            strong.changed.notify(usize::MAX);
            continue;
        }
        let idle = config.idle_timeout.is_some_and(|timeout| {
            open > 0 && endpoint.in_flight() == 0 && endpoint.idle_for(now) >= timeout
        });
        if idle {
            endpoint.release_connections();
            continue;
        }
        // A health check that calls runs busy or idle: what it asks can change under load.
        if let Some(check) = config
            .health_check
            .clone()
            .filter(|_| open > 0 && now >= next_ping)
        {
            next_ping = now + config.health_interval;
            let (timeout, policy) = (config.health_timeout, config.outlier);
            drop(strong);
            // Every connection is asked: the answer is the server's, and each check is also
            // that connection's liveness probe.
            for conn in endpoint.connections() {
                let reply = conn
                    .call_with_timeout(check.method, check.body.clone(), Some(timeout))
                    .await;
                match reply {
                    Ok(reply) => endpoint.set_serving((check.serving)(&reply)),
                    // Silence past the timeout: as an unanswered ping.
                    Err(error) if error.is_timeout() => {
                        endpoint.ping_failed(Instant::now(), &policy);
                        conn.close();
                    }
                    // Refused unrun (overloaded, draining) or the connection ended for a
                    // reason of its own: no verdict on the server's service.
                    Err(error) if error.is_not_sent() || error.is_connection() => {}
                    // The server answered with an error (no health service, say): not that
                    // it serves.
                    Err(_) => endpoint.set_serving(false),
                }
            }
            if let Some(strong) = shared.upgrade() {
                strong.changed.notify(usize::MAX);
            }
            continue;
        }
        // Idle connections are pinged (keep-alive watches those with calls in flight): one
        // that does not answer within the health timeout is closed, and counts against the
        // endpoint.
        if config.health_check.is_none()
            && open > 0
            && endpoint.in_flight() == 0
            && now >= next_ping
        {
            next_ping = now + config.health_interval;
            let (timeout, policy) = (config.health_timeout, config.outlier);
            drop(strong);
            for conn in endpoint.connections() {
                // `Some`: answered, or the connection ended for a reason of its own (a drain,
                // an error its calls see); `None`: silence past the timeout.
                let answered = async { Some(conn.ping().await.is_ok()) };
                let given_up = async {
                    rt.sleep_until(Instant::now() + timeout).await;
                    None
                };
                if futures_lite::future::or(answered, given_up).await.is_none() {
                    endpoint.ping_failed(Instant::now(), &policy);
                    conn.close();
                }
            }
            if let Some(strong) = shared.upgrade() {
                strong.changed.notify(usize::MAX);
            }
            continue;
        }
        let listener = endpoint.wake.listen();
        let short = endpoint.is_wanted() && endpoint.open_count() < config.pool_size;
        if short || endpoint.is_removed() {
            continue;
        }
        // The next health check: the next ping, if one is due later, else an interval away.
        let check = match next_ping > now {
            true => next_ping.min(now + config.health_interval),
            false => now + config.health_interval,
        };
        drop(strong);
        futures_lite::future::or(listener, rt.sleep_until(check)).await;
    }
}

/// A failed connection attempt as the error calls report.
fn connect_error(error: ConnectError) -> ConnectionError {
    match error {
        ConnectError::Io(error) => ConnectionError::Io(Arc::new(error)),
        ConnectError::Refused { code, reason } => ConnectionError::GoAway { code, reason },
        other => ConnectionError::Io(Arc::new(io::Error::other(other.to_string()))),
    }
}
