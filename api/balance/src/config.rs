//! The balanced client's settings.

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use flumen_stream::ClientConfig;

use crate::{Backoff, Hedging, OutlierDetection, RetryBudget, Strategy};

/// Default [`BalanceConfig::pool_size`]: connections per endpoint.
pub const DEFAULT_POOL_SIZE: usize = 1;
/// Default [`BalanceConfig::health_interval`].
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`BalanceConfig::health_timeout`].
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`BalanceConfig::idle_timeout`].
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default [`BalanceConfig::max_attempts`]: the first try and two retries.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Redirects one call follows at most (a loop of followers naming each other ends there).
pub const MAX_REDIRECTS: u32 = 4;

/// Which endpoint a call goes to beyond the strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Stateless: any endpoint serves any call; a failed endpoint's calls go to the others.
    #[default]
    Any,
    /// Stateful: one endpoint (the leader) serves the calls. A follower answers
    /// [`Status::redirect`](flumen_stream::Status::redirect) naming the leader; the client
    /// follows, remembers it, and sends later calls there until it fails.
    Leader,
}

/// Settings of a [`Balancer`](crate::Balancer).
#[derive(Clone, Debug)]
pub struct BalanceConfig {
    pub(crate) strategy: Strategy,
    pub(crate) mode: Mode,
    pub(crate) pool_size: usize,
    pub(crate) client: ClientConfig,
    pub(crate) backoff: Backoff,
    pub(crate) outlier: OutlierDetection,
    pub(crate) budget: RetryBudget,
    pub(crate) health_interval: Duration,
    pub(crate) health_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_attempts: u32,
    pub(crate) hedging: Option<Hedging>,
    pub(crate) health_check: Option<HealthCheck>,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::default(),
            mode: Mode::default(),
            pool_size: DEFAULT_POOL_SIZE,
            client: ClientConfig::default(),
            backoff: Backoff::default(),
            outlier: OutlierDetection::default(),
            budget: RetryBudget::default(),
            health_interval: DEFAULT_HEALTH_INTERVAL,
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
            idle_timeout: Some(DEFAULT_POOL_IDLE_TIMEOUT),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            hedging: None,
            health_check: None,
        }
    }
}

impl BalanceConfig {
    /// Default settings: power of two choices, one connection per endpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// How calls are spread. Default [`Strategy::PowerOfTwoChoices`].
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Stateless or leader-following. Default [`Mode::Any`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Connections per endpoint, opened lazily (the first on an endpoint's first call, the
    /// rest right after). Default [`DEFAULT_POOL_SIZE`] (1); at least 1. More than one helps
    /// only when one connection's reader or writer thread is the bottleneck.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// Settings of each connection (window, timeouts, keep-alive: the keep-alive pings are
    /// what finds a silently dead endpoint under load).
    pub fn client(mut self, config: ClientConfig) -> Self {
        self.client = config;
        self
    }

    /// Backoff between connection attempts to one endpoint. Default [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// When an endpoint is ejected. Default [`OutlierDetection::default`].
    pub fn outlier_detection(mut self, policy: OutlierDetection) -> Self {
        self.outlier = policy;
        self
    }

    /// How many retries the client may add. Default [`RetryBudget::default`] (20% + 10/s).
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// How often each endpoint's pool is checked: closed connections replaced, idle
    /// connections pinged (see [`health_timeout`](Self::health_timeout)), idle pools closed.
    /// Default [`DEFAULT_HEALTH_INTERVAL`] (1 s). A connection found closed by a call is
    /// replaced at once, not at the next check.
    pub fn health_interval(mut self, interval: Duration) -> Self {
        self.health_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long a health ping of an idle connection may wait for its answer; a connection
    /// that does not answer is closed and counts as a failure of its endpoint (outlier
    /// detection). Default [`DEFAULT_HEALTH_TIMEOUT`] (2 s).
    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.health_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Closes an endpoint's connections after this long without a call (`None`: never);
    /// the next call opens them again. Default [`DEFAULT_POOL_IDLE_TIMEOUT`] (5 min).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Attempts per call, the first included, for the retries that are allowed (see
    /// [`Balancer`](crate::Balancer)). Default [`DEFAULT_MAX_ATTEMPTS`] (3); at least 1.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Hedges calls of idempotent methods: one still unanswered after the [`Hedging`] delay
    /// is sent to a second endpoint too, and the first answer wins. Each hedge takes a token
    /// from the [`retry_budget`](Self::retry_budget) and counts as an attempt. Default `None`
    /// (no hedging).
    pub fn hedging(mut self, hedging: Option<Hedging>) -> Self {
        self.hedging = hedging;
        self
    }

    /// Checks each endpoint by calling its health service instead of pinging idle
    /// connections (`flumen::health::balancer_check` makes the check of the standard one).
    ///
    /// Every [`health_interval`](Self::health_interval), busy or idle, the check is called on
    /// each of the endpoint's connections with [`health_timeout`](Self::health_timeout) as its
    /// deadline. An endpoint takes no calls while another one serves until an answer says it
    /// serves (a new endpoint is checked at once, on its first connection); one whose answer
    /// says it does not (or an error the server answered, such as a server without the
    /// service) leaves the rotation again, keeping its connections. When no endpoint serves,
    /// calls go to those that do not rather than fail. A check unanswered in time counts as an
    /// unanswered ping: the connection is closed and it counts against the endpoint; a check
    /// refused unrun (overloaded, draining) or cut by its connection's end changes nothing.
    /// Default `None`: pings.
    pub fn health_check(mut self, check: Option<HealthCheck>) -> Self {
        self.health_check = check;
        self
    }
}

/// A health check made by a call: its method, its request body, and what in the reply means
/// the endpoint serves (see [`BalanceConfig::health_check`]).
#[derive(Clone)]
pub struct HealthCheck {
    pub(crate) method: u32,
    pub(crate) body: Bytes,
    pub(crate) serving: Arc<Verdict>,
}

/// Whether a health check's reply says the endpoint serves.
type Verdict = dyn Fn(&[u8]) -> bool + Send + Sync;

impl HealthCheck {
    /// Calls `method` with `body`; the endpoint serves while `serving` says so of the reply.
    pub fn new(
        method: u32,
        body: Bytes,
        serving: impl Fn(&[u8]) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            method,
            body,
            serving: Arc::new(serving),
        }
    }
}

impl fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheck")
            .field("method", &format_args!("{:#010x}", self.method))
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}
