//! Server settings: every limit a server enforces.

use std::time::Duration;

use crate::frame::DEFAULT_MAX_FRAME_LEN;

/// Default limit on open connections (10 000). Past it a new connection is told
/// `TOO_MANY_CONNECTIONS` and closed, so a connection flood cannot exhaust memory or sockets.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default limit on calls running at once per connection (1024). It is announced in the hello
/// (clients size their window to it); a request past it is answered `OVERLOADED` without
/// running, so one client cannot queue unbounded work.
pub const DEFAULT_SERVER_MAX_IN_FLIGHT: usize = 1024;

/// Default idle timeout (5 min): a connection with no call running and nothing received for
/// this long is closed with `IDLE_TIMEOUT`, so abandoned connections do not pile up.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Default read timeout (30 s): the hello, and every frame once its first byte has arrived, must
/// be complete within it, or the connection is closed with `READ_TIMEOUT`. Stops a peer that
/// sends one byte a minute from holding a connection and its partial buffer forever.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Default write timeout (30 s): a flush that makes no progress for this long (the peer stopped
/// reading) closes the connection, so replies for a dead reader do not pin memory.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default handshake timeout (10 s): a transport handshake (TLS, QUIC) that has not finished
/// this long after the peer arrived is abandoned, so half-open peers cannot pile up.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default limit on transport handshakes in progress at once (256). A peer arriving past it is
/// dropped before any handshake work, so a flood of new connections costs bounded CPU and
/// memory while established connections keep being served.
pub const DEFAULT_MAX_HANDSHAKES: usize = 256;

/// Settings of a server. Build with [`ServerConfig::default`] and the setters.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub(crate) max_connections: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_frame_len: u32,
    pub(crate) idle_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) inline_dispatch: bool,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_handshakes: usize,
    pub(crate) stream_window: u32,
    pub(crate) max_queued_bytes: usize,
    pub(crate) max_queued_bytes_total: usize,
    pub(crate) keepalive: Option<(Duration, Duration)>,
    pub(crate) adaptive_concurrency: Option<super::AdaptiveConcurrency>,
    pub(crate) compression: Option<crate::compress::Compression>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_in_flight: DEFAULT_SERVER_MAX_IN_FLIGHT,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            inline_dispatch: true,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            stream_window: crate::flow::DEFAULT_STREAM_WINDOW,
            max_queued_bytes: crate::DEFAULT_MAX_QUEUED_BYTES,
            max_queued_bytes_total: crate::DEFAULT_MAX_QUEUED_BYTES_TOTAL,
            adaptive_concurrency: None,
            compression: None,
            keepalive: Some((
                crate::DEFAULT_KEEPALIVE_INTERVAL,
                crate::DEFAULT_KEEPALIVE_TIMEOUT,
            )),
        }
    }
}

/// A server's limits, as its [`ServerConfig`] sets them: what an operator's page shows beside
/// their current use ([`ServerStats`](crate::ServerStats)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerLimits {
    /// [`ServerConfig::max_connections`].
    pub max_connections: usize,
    /// [`ServerConfig::max_in_flight`], per connection.
    pub max_in_flight: usize,
    /// [`ServerConfig::max_frame_len`].
    pub max_frame_len: u32,
    /// [`ServerConfig::max_handshakes`].
    pub max_handshakes: usize,
    /// [`ServerConfig::max_queued_bytes`], per connection.
    pub max_queued_bytes: usize,
    /// [`ServerConfig::max_queued_bytes_total`].
    pub max_queued_bytes_total: usize,
    /// [`ServerConfig::stream_window`].
    pub stream_window: u32,
    /// [`ServerConfig::idle_timeout`].
    pub idle_timeout: Duration,
    /// [`ServerConfig::read_timeout`].
    pub read_timeout: Duration,
    /// [`ServerConfig::write_timeout`].
    pub write_timeout: Duration,
    /// [`ServerConfig::handshake_timeout`].
    pub handshake_timeout: Duration,
}

impl ServerConfig {
    /// The limits these settings set.
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections,
            max_in_flight: self.max_in_flight,
            max_frame_len: self.max_frame_len,
            max_handshakes: self.max_handshakes,
            max_queued_bytes: self.max_queued_bytes,
            max_queued_bytes_total: self.max_queued_bytes_total,
            stream_window: self.stream_window,
            idle_timeout: self.idle_timeout,
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            handshake_timeout: self.handshake_timeout,
        }
    }

    /// Most open connections. Default [`DEFAULT_MAX_CONNECTIONS`].
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// Most calls running at once per connection; at least 1, at most 65 536.
    /// Default [`DEFAULT_SERVER_MAX_IN_FLIGHT`].
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.max_in_flight = calls.clamp(1, crate::client::MAX_WINDOW);
        self
    }

    /// Largest request body accepted; a longer frame closes the connection with
    /// `FRAME_TOO_LARGE` before any of its body is buffered.
    /// Default [`DEFAULT_MAX_FRAME_LEN`](crate::frame::DEFAULT_MAX_FRAME_LEN) (16 MiB).
    pub fn max_frame_len(mut self, bytes: u32) -> Self {
        self.max_frame_len = bytes.max(1);
        self
    }

    /// Idle timeout. Default [`DEFAULT_IDLE_TIMEOUT`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Read timeout. Default [`DEFAULT_READ_TIMEOUT`].
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Write timeout. Default [`DEFAULT_WRITE_TIMEOUT`].
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Handshake timeout. Default [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Most transport handshakes in progress at once; at least 1.
    /// Default [`DEFAULT_MAX_HANDSHAKES`].
    pub fn max_handshakes(mut self, handshakes: usize) -> Self {
        self.max_handshakes = handshakes.max(1);
        self
    }

    /// Bytes of items each streaming call may have received and not yet consumed, per
    /// direction this side receives (plus one item, which may be larger); the peer is granted
    /// no more credit than that, so a consumer that stops reading costs at most this much
    /// memory. At least [`INITIAL_STREAM_CREDIT`](crate::flow::INITIAL_STREAM_CREDIT).
    /// Default [`DEFAULT_STREAM_WINDOW`](crate::flow::DEFAULT_STREAM_WINDOW) (256 KiB).
    ///
    /// A connection's streaming calls count against `max_in_flight`, so the client items a
    /// connection can make the server buffer are bounded by
    /// `max_in_flight x (stream_window + max_frame_len)`; lower either for many-stream loads.
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.stream_window = bytes.max(crate::flow::INITIAL_STREAM_CREDIT);
        self
    }

    /// Bytes of frames queued for the connection's writer before the tasks producing them
    /// wait (backpressure); a frame is always taken when nothing is queued. Default
    /// [`DEFAULT_MAX_QUEUED_BYTES`](crate::DEFAULT_MAX_QUEUED_BYTES) (1 MiB).
    ///
    /// What one connection whose peer does not read can make the server hold is about twice
    /// this (what is queued, plus what the writer took and is still writing), plus one frame.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// Bytes of frames queued for writing on all connections together before producers wait,
    /// as at [`max_queued_bytes`](Self::max_queued_bytes); a connection with nothing queued
    /// may still queue one frame. Default
    /// [`DEFAULT_MAX_QUEUED_BYTES_TOTAL`](crate::DEFAULT_MAX_QUEUED_BYTES_TOTAL) (64 MiB).
    pub fn max_queued_bytes_total(mut self, bytes: usize) -> Self {
        self.max_queued_bytes_total = bytes;
        self
    }

    /// Keep-alive: while calls run on a connection and nothing has been read from it for
    /// `interval`, send a `Ping`; if nothing at all arrives within `timeout` after it, send
    /// `GoAway KEEPALIVE_TIMEOUT` and close the connection, stopping its handlers. A client
    /// that vanished mid-call so costs its handlers at most `interval + timeout` (plus a
    /// watchdog period). `None` turns it off. Defaults
    /// [`DEFAULT_KEEPALIVE_INTERVAL`](crate::DEFAULT_KEEPALIVE_INTERVAL) and
    /// [`DEFAULT_KEEPALIVE_TIMEOUT`](crate::DEFAULT_KEEPALIVE_TIMEOUT) (15 s each).
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

    /// Load shedding: an adaptive limit on the calls the whole server runs at once, that
    /// shrinks when calls slow down because too many run (they queue for CPU, a lock, a
    /// database) and grows while they do not. A request past the limit is answered
    /// `OVERLOADED` with a retry-after hint before it runs (safe to retry elsewhere), so that
    /// the calls admitted keep their latency instead of all of them growing late together.
    /// Calls that finish at their first poll take a place only while they run.
    ///
    /// Off by default (`None`): it turns a slow-down into refusals, which a service whose
    /// latency varies by design (a mix of fast and slow methods) may not want; turn it on for
    /// services whose callers can retry elsewhere or back off. See [`AdaptiveConcurrency`]
    /// for its settings.
    ///
    /// [`AdaptiveConcurrency`]: super::AdaptiveConcurrency
    pub fn adaptive_concurrency(mut self, limit: Option<super::AdaptiveConcurrency>) -> Self {
        self.adaptive_concurrency = limit;
        self
    }

    /// Whether the connection's reader polls each new handler once itself before giving it a
    /// task of its own. Default `true`: handlers that finish at once (most) cost no task, no
    /// allocation and no wake-up; handlers that wait are moved to their own task, so a slow
    /// call never blocks the connection. Turn it off when handlers burn CPU before their first
    /// `.await`, so that a multi-threaded runtime spreads that work over its threads.
    pub fn inline_dispatch(mut self, inline: bool) -> Self {
        self.inline_dispatch = inline;
        self
    }

    /// How often the watchdog looks at connections: a quarter of the shortest timeout, between
    /// 5 ms and 1 s. Timeouts fire within one period of their due time.
    pub(crate) fn watchdog_period(&self) -> Duration {
        let (interval, timeout) = self.keepalive.unwrap_or((Duration::MAX, Duration::MAX));
        let shortest = self
            .idle_timeout
            .min(self.read_timeout)
            .min(self.write_timeout)
            .min(interval)
            .min(timeout);
        (shortest / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
    }
}
