//! Client settings.

use std::time::Duration;

use crate::frame::DEFAULT_MAX_FRAME_LEN;

/// Default window: calls one connection keeps in flight before callers wait.
///
/// Bounds the client's memory per connection (one slot per call) and the load one client can put
/// on a server; the server's own limit (sent in its hello) caps it further.
pub const DEFAULT_CLIENT_MAX_IN_FLIGHT: usize = 1024;

/// The former name of [`DEFAULT_CLIENT_MAX_IN_FLIGHT`].
#[deprecated(
    since = "0.1.1",
    note = "renamed `DEFAULT_CLIENT_MAX_IN_FLIGHT`, beside `DEFAULT_SERVER_MAX_IN_FLIGHT`"
)]
pub const DEFAULT_MAX_IN_FLIGHT: usize = DEFAULT_CLIENT_MAX_IN_FLIGHT;

/// Hard cap on the window, whatever is configured: sequence ids carry the slot in 32 bits and
/// the slot table is allocated up front.
pub const MAX_WINDOW: usize = 1 << 16;

/// Default timeout of a call that names none (30 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default granularity of call deadlines (10 ms). A call resolves no later than its deadline
/// plus one tick; a shorter tick wakes the timer task more often while calls are pending.
pub const DEFAULT_TICK: Duration = Duration::from_millis(10);

/// Default limit on connecting plus the handshake (10 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default keep-alive interval (15 s): while a side has calls in flight and has read nothing
/// for this long, it sends a `Ping`. Under traffic no ping is ever sent, so keep-alive costs
/// nothing while the connection is busy; it is on by default on both sides.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Default keep-alive timeout (15 s): a side that pinged and has read nothing at all since,
/// this long after, takes the peer for gone (a pulled cable, a frozen host, a partition) and
/// closes the connection, failing every call in flight on it.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Settings of a client connection. Build with [`ClientConfig::default`] and the setters.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub(crate) max_in_flight: usize,
    pub(crate) max_frame_len: u32,
    pub(crate) default_timeout: Option<Duration>,
    pub(crate) tick: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) stream_window: u32,
    pub(crate) max_queued_bytes: usize,
    /// Keep-alive interval and timeout; `None` is off.
    pub(crate) keepalive: Option<(Duration, Duration)>,
    /// Compression of outgoing bodies; `None` is off (both ways).
    pub(crate) compression: Option<crate::compress::Compression>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_in_flight: DEFAULT_CLIENT_MAX_IN_FLIGHT,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            default_timeout: Some(DEFAULT_TIMEOUT),
            tick: DEFAULT_TICK,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            stream_window: crate::flow::DEFAULT_STREAM_WINDOW,
            max_queued_bytes: crate::DEFAULT_MAX_QUEUED_BYTES,
            keepalive: Some((DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT)),
            compression: None,
        }
    }
}

impl ClientConfig {
    /// Most calls in flight on the connection; callers past it wait (async) or block.
    /// Default [`DEFAULT_CLIENT_MAX_IN_FLIGHT`]; clamped to `1..=`[`MAX_WINDOW`] and to the server's
    /// announced limit.
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.max_in_flight = calls.clamp(1, MAX_WINDOW);
        self
    }

    /// Largest reply body accepted; a longer one closes the connection with a protocol error.
    /// Default [`DEFAULT_MAX_FRAME_LEN`] (16 MiB).
    pub fn max_frame_len(mut self, bytes: u32) -> Self {
        self.max_frame_len = bytes.max(1);
        self
    }

    /// The timeout of a call that sets none, as [`default_timeout`](Self::default_timeout)
    /// set it (named as [`CallOptions::timeout_setting`](crate::CallOptions::timeout_setting)).
    pub fn default_timeout_setting(&self) -> Option<Duration> {
        self.default_timeout
    }

    /// The former name of [`default_timeout_setting`](Self::default_timeout_setting).
    #[deprecated(
        since = "0.1.1",
        note = "renamed `default_timeout_setting`: it reads what `default_timeout` sets"
    )]
    pub fn call_timeout(&self) -> Option<Duration> {
        self.default_timeout_setting()
    }

    /// Timeout of calls that name none; `None` lets them wait forever (until the connection
    /// ends). Default [`DEFAULT_TIMEOUT`] (30 s).
    pub fn default_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Deadline granularity. Default [`DEFAULT_TICK`] (10 ms); at least 1 ms.
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick.max(Duration::from_millis(1));
        self
    }

    /// Bytes of items each streaming call may have received and not yet consumed, per
    /// direction this side receives (plus one item, which may be larger); the peer is granted
    /// no more credit than that, so a consumer that stops reading costs at most this much
    /// memory. At least [`INITIAL_STREAM_CREDIT`](crate::flow::INITIAL_STREAM_CREDIT).
    /// Default [`DEFAULT_STREAM_WINDOW`](crate::flow::DEFAULT_STREAM_WINDOW) (256 KiB).
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.stream_window = bytes.max(crate::flow::INITIAL_STREAM_CREDIT);
        self
    }

    /// Bytes of frames queued for the connection's writer before the tasks producing them
    /// wait (backpressure); a frame is always taken when nothing is queued. Default
    /// [`DEFAULT_MAX_QUEUED_BYTES`](crate::DEFAULT_MAX_QUEUED_BYTES) (1 MiB).
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// Keep-alive: while calls are in flight and nothing has been read for `interval`, send a
    /// `Ping`; if nothing at all arrives within `timeout` after it, fail the connection with
    /// [`ConnectionError::KeepaliveTimeout`](crate::ConnectionError::KeepaliveTimeout), and
    /// with it every pending call. A peer that vanished is so noticed within
    /// `interval + timeout` (plus up to a second), even for calls without a deadline. `None`
    /// turns it off. Defaults [`DEFAULT_KEEPALIVE_INTERVAL`] and [`DEFAULT_KEEPALIVE_TIMEOUT`].
    pub fn keepalive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.keepalive = interval.map(|interval| (interval, timeout));
        self
    }

    /// Compresses the bodies this side sends (requests, replies, stream items) at or above
    /// the threshold with `compression`'s algorithm, when the peer can decompress it (its hello
    /// says so), and lets the peer compress what it sends here with any algorithm compiled in
    /// (features `lz4`, `zstd`). A compressed body is refused unless it decompresses to exactly
    /// the length it claims, at most `max_frame_len`. `None` (the default): nothing is
    /// compressed either way.
    pub fn compression(mut self, compression: Option<crate::compress::Compression>) -> Self {
        self.compression = compression;
        self
    }

    /// Limit on connecting and the handshake. Default [`DEFAULT_CONNECT_TIMEOUT`] (10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}
