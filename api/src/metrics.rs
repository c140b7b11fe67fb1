//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`), for any
//! exporter (Prometheus, StatsD, OpenTelemetry).
//!
//! Per call, labelled by `method` (the wire name, `Service.method`, or the id in hex where
//! the caller gave only an id):
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `flumen_client_calls_total`, `flumen_server_calls_total` | counter | `method`, `outcome` |
//! | `flumen_client_call_duration_seconds`, `flumen_server_call_duration_seconds` | histogram | `method` |
//! | `flumen_client_calls_in_flight`, `flumen_server_calls_in_flight` | gauge | `method` |
//!
//! `outcome` is `ok`, the server's error code (`OVERLOADED`, `DEADLINE_EXCEEDED`,
//! `APPLICATION`, ...), or on the client what failed there (`timeout`, `connection`,
//! `not_sent`, `too_large`); a server call whose caller left is `cancelled`. A client's
//! streaming call is counted when its stream opens.
//!
//! Per connection or server, the core's counters, set by [`record_server`] and
//! [`record_client`] (call them on a timer or before each scrape; nothing is added to the
//! call path): connections, bytes and frames each way, frames per write, calls in flight,
//! bytes queued, refusals.
//!
//! Install the recorder before the first call: a method's handles are made on its first
//! call, against the recorder installed then.

use std::{borrow::Cow, collections::HashMap, sync::Arc, time::Duration};

use flumen_stream::{ConnectionStats, ServerStats};
use metrics::{Counter, Gauge, Histogram};
use parking_lot::RwLock;

use crate::{observe::Target, MethodId};

/// The handles of one method on one side.
pub(crate) struct MethodMetrics {
    side: Side,
    method: Arc<str>,
    ok: Counter,
    duration: Histogram,
    in_flight: Gauge,
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
}

impl MethodMetrics {
    fn new(side: Side, method: Arc<str>) -> Self {
        let label = method.to_string();
        let (calls, duration, in_flight) = names(side);
        Self {
            side,
            ok: metrics::counter!(calls, "method" => label.clone(), "outcome" => "ok"),
            duration: metrics::histogram!(duration, "method" => label.clone()),
            in_flight: metrics::gauge!(in_flight, "method" => label),
            method,
        }
    }

    /// Counts a call that ended with `outcome` after `elapsed`; it leaves the in-flight gauge.
    pub(crate) fn finish(&self, elapsed: Duration, outcome: &str) {
        self.in_flight.decrement(1.0);
        self.duration.record(elapsed.as_secs_f64());
        if outcome == "ok" {
            self.ok.increment(1);
        } else {
            let (calls, _, _) = names(self.side);
            let (method, outcome) = (self.method.to_string(), outcome.to_owned());
            metrics::counter!(calls, "method" => method, "outcome" => outcome).increment(1);
        }
    }
}

fn names(side: Side) -> (&'static str, &'static str, &'static str) {
    match side {
        Side::Client => (
            "flumen_client_calls_total",
            "flumen_client_call_duration_seconds",
            "flumen_client_calls_in_flight",
        ),
        Side::Server => (
            "flumen_server_calls_total",
            "flumen_server_call_duration_seconds",
            "flumen_server_calls_in_flight",
        ),
    }
}

type Cache = RwLock<HashMap<u32, Arc<MethodMetrics>>>;

static CLIENT: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
static SERVER: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();

/// The handles of `id` on `side`, made on first use; the call enters the in-flight gauge.
fn method(side: Side, id: MethodId, name: impl FnOnce() -> Arc<str>) -> Arc<MethodMetrics> {
    let cache = match side {
        Side::Client => &CLIENT,
        Side::Server => &SERVER,
    }
    .get_or_init(Cache::default);
    let found = cache.read().get(&id.as_u32()).cloned();
    let metrics = match found {
        Some(metrics) => metrics,
        None => cache
            .write()
            .entry(id.as_u32())
            .or_insert_with(|| Arc::new(MethodMetrics::new(side, name())))
            .clone(),
    };
    metrics.in_flight.increment(1.0);
    metrics
}

/// A client call of `target` starts.
pub(crate) fn client(target: Target) -> Option<Arc<MethodMetrics>> {
    Some(method(Side::Client, target.id(), || label(target)))
}

/// A server call of method `id`, named `name`, starts.
pub(crate) fn server(id: MethodId, name: &str) -> Arc<MethodMetrics> {
    method(Side::Server, id, || Arc::from(name))
}

fn label(target: Target) -> Arc<str> {
    match target.name() {
        Some(name) => Arc::from(name),
        None => Arc::from(format!("{:#010x}", target.id().as_u32())),
    }
}

/// A server call being served, counted when it ends (`cancelled` if it is dropped first).
pub(crate) struct Served {
    metrics: Arc<MethodMetrics>,
    started: std::time::Instant,
    done: bool,
}

impl Served {
    pub(crate) fn start(metrics: Arc<MethodMetrics>) -> Self {
        Self {
            metrics,
            started: std::time::Instant::now(),
            done: false,
        }
    }

    /// The handler ended with `outcome`.
    pub(crate) fn finish(&mut self, outcome: Cow<'static, str>) {
        if !std::mem::replace(&mut self.done, true) {
            self.metrics.finish(self.started.elapsed(), &outcome);
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.finish("cancelled".into());
    }
}

/// Sets the server-wide metrics from `stats` (a [`ServerHandle::stats`] snapshot).
///
/// [`ServerHandle::stats`]: crate::ServerHandle::stats
pub fn record_server(stats: &ServerStats) {
    metrics::gauge!("flumen_server_connections").set(stats.active as f64);
    metrics::counter!("flumen_server_connections_accepted_total").absolute(stats.accepted);
    metrics::counter!("flumen_server_connections_refused_total").absolute(stats.refused);
    metrics::counter!("flumen_server_handshake_failures_total").absolute(stats.handshake_failures);
    metrics::counter!("flumen_server_protocol_errors_total").absolute(stats.protocol_errors);
    metrics::counter!("flumen_server_timeouts_total").absolute(stats.timeouts);
    metrics::counter!("flumen_server_panics_total").absolute(stats.panics);
    metrics::counter!("flumen_server_shed_total").absolute(stats.shed);
    metrics::gauge!("flumen_server_in_flight").set(stats.in_flight as f64);
    metrics::gauge!("flumen_server_queued_bytes").set(stats.queued_bytes as f64);
    if let Some(limit) = stats.concurrency_limit {
        metrics::gauge!("flumen_server_concurrency_limit").set(limit as f64);
    }
    let io = &stats.io;
    metrics::counter!("flumen_server_bytes_written_total").absolute(io.bytes_written);
    metrics::counter!("flumen_server_bytes_read_total").absolute(io.bytes_read);
    metrics::counter!("flumen_server_frames_written_total").absolute(io.frames_written);
    metrics::counter!("flumen_server_frames_read_total").absolute(io.frames_read);
    metrics::counter!("flumen_server_writes_total").absolute(io.writes);
    metrics::gauge!("flumen_server_frames_per_write").set(io.frames_per_write());
    metrics::gauge!("flumen_server_buffered_bytes").set(io.buffered_bytes as f64);
}

/// Sets one client connection's metrics from `stats` (a [`Client::stats`] snapshot of the
/// connection underneath), labelled `connection` with a name of the caller's choosing.
///
/// [`Client::stats`]: crate::stream::Client::stats
pub fn record_client(connection: &str, stats: &ConnectionStats) {
    let labels = [("connection", connection.to_owned())];
    metrics::counter!("flumen_client_bytes_written_total", &labels).absolute(stats.bytes_written);
    metrics::counter!("flumen_client_bytes_read_total", &labels).absolute(stats.bytes_read);
    metrics::counter!("flumen_client_frames_written_total", &labels).absolute(stats.frames_written);
    metrics::counter!("flumen_client_frames_read_total", &labels).absolute(stats.frames_read);
    metrics::counter!("flumen_client_writes_total", &labels).absolute(stats.writes);
    metrics::gauge!("flumen_client_frames_per_write", &labels).set(stats.frames_per_write());
    metrics::gauge!("flumen_client_buffered_bytes", &labels).set(stats.buffered_bytes as f64);
}
