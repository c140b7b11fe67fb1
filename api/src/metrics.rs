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
//! `outcome` is `ok` or an error code's name, the same on both sides for the same end: the
//! server's code (`OVERLOADED`, `APPLICATION`, ...); `DEADLINE_EXCEEDED` when the deadline
//! passed, whichever side noticed first (the client's `Cancel` tells the server why);
//! `CANCELLED` when the caller dropped the call. Failures one side alone sees are named
//! there: on the client `connection`, `not_sent`, `too_large`, `blocking_in_async`; on the
//! server `connection` for a call whose connection ended while it ran. A client's streaming
//! call is counted when its stream opens.
//!
//! Per server (label `server`, its local address) and per client connection (label
//! `connection`, the peer's address and the connection's number, `127.0.0.1:7000#3`), the
//! core's counters: connections, bytes and frames each way, frames per write, frames
//! compressed each way (nonzero once compression was negotiated), calls in flight, bytes
//! queued, refusals. They are published without being asked for: once a recorder is installed,
//! the first call (or typed client connected) starts a thread, `flumen-metrics`, that sets them
//! every [`publish_interval`] (default [`DEFAULT_PUBLISH_INTERVAL`], one second) for every
//! server and connection alive ([`flumen_stream::live`]); nothing is added to the call path.
//! [`record_server`] and [`record_client`] set the same counters at once, under a name of the
//! caller's choosing.
//!
//! Install the recorder before the first call: a method's handles are made on its first call
//! with a recorder installed, against that recorder. While none is installed, calls record
//! nothing and pay one check for it.

use std::{
    borrow::Cow,
    cell::RefCell,
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Once, OnceLock,
    },
    time::Duration,
};

use flumen_stream::{ConnectionStats, ServerStats};
use metrics::{Counter, Gauge, Histogram};
use parking_lot::Mutex;

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
    Client = 0,
    Server = 1,
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

/// Every method's handles by side and id, made once per process. Leaked: there is one entry
/// per method a program calls or routes, a number its code bounds.
type Registry = Mutex<HashMap<(u8, u32), &'static MethodMetrics>>;

static REGISTRY: OnceLock<Registry> = OnceLock::new();

thread_local! {
    /// This thread's copy of the registry's entries, read without a lock or an atomic.
    static LOCAL: RefCell<HashMap<(u8, u32), &'static MethodMetrics, IdHash>> =
        RefCell::new(HashMap::default());
}

/// The handles of `id` on `side`, made on first use; `None` while no recorder is installed (so
/// that a program without one pays neither a lookup nor a clock read). The call enters the
/// in-flight gauge.
fn method(
    side: Side,
    id: MethodId,
    name: impl FnOnce() -> Arc<str>,
) -> Option<&'static MethodMetrics> {
    if !recorder_installed() {
        return None;
    }
    let key = (side as u8, id.as_u32());
    let cached = LOCAL.with(|local| local.borrow().get(&key).copied());
    let metrics = match cached {
        Some(metrics) => metrics,
        None => {
            // Once per method and thread, not per call: the first handles made start the
            // publisher of the servers' and connections' counters.
            start_publisher();
            let metrics = *REGISTRY
                .get_or_init(Registry::default)
                .lock()
                .entry(key)
                .or_insert_with(|| Box::leak(Box::new(MethodMetrics::new(side, name()))));
            LOCAL.with(|local| local.borrow_mut().insert(key, metrics));
            metrics
        }
    };
    metrics.in_flight.increment(1.0);
    Some(metrics)
}

/// Whether a recorder is installed (globally, or for this thread): the facade's stand-in when
/// none is, its no-op recorder, is zero-sized, and real recorders hold state.
fn recorder_installed() -> bool {
    metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
}

/// Hashes a method key by its id, already a hash of the method's name.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u8(&mut self, side: u8) {
        self.0 ^= u64::from(side) << 32;
    }

    fn write_u32(&mut self, id: u32) {
        self.0 ^= u64::from(id);
    }
}

type IdHash = BuildHasherDefault<IdHasher>;

/// A client call of `target` starts.
pub(crate) fn client(target: Target) -> Option<&'static MethodMetrics> {
    method(Side::Client, target.id(), || label(target))
}

/// A server call of method `id`, named `name`, starts.
pub(crate) fn server(id: MethodId, name: &str) -> Option<&'static MethodMetrics> {
    method(Side::Server, id, || Arc::from(name))
}

fn label(target: Target) -> Arc<str> {
    match target.name() {
        Some(name) => Arc::from(name),
        None => Arc::from(format!("{:#010x}", target.id().as_u32())),
    }
}

/// A server call being served, counted when it ends; if the server drops it first, as the
/// client counts it: `DEADLINE_EXCEEDED` at its deadline, `CANCELLED` when the client gave
/// up, `connection` when the connection ended.
pub(crate) struct Served {
    metrics: &'static MethodMetrics,
    started: std::time::Instant,
    done: bool,
}

impl Served {
    pub(crate) fn start(metrics: &'static MethodMetrics) -> Self {
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
        let outcome = match flumen_stream::drop_reason() {
            Some(flumen_stream::DropReason::DeadlineExceeded) => "DEADLINE_EXCEEDED",
            Some(flumen_stream::DropReason::ConnectionEnded) => "connection",
            Some(flumen_stream::DropReason::HandlerPanic) => "HANDLER_PANIC",
            _ => crate::observe::CANCELLED,
        };
        self.finish(outcome.into());
    }
}

/// Sets a server's metrics from `stats` (a [`ServerHandle::stats`] snapshot), labelled
/// `server` with a name of the caller's choosing (a process may run several servers).
///
/// [`ServerHandle::stats`]: crate::ServerHandle::stats
pub fn record_server(server: &str, stats: &ServerStats) {
    let (gauge, counter) = publishers("server", server);
    gauge("flumen_server_connections", stats.active as f64);
    counter("flumen_server_connections_accepted_total", stats.accepted);
    counter("flumen_server_connections_refused_total", stats.refused);
    counter(
        "flumen_server_handshake_failures_total",
        stats.handshake_failures,
    );
    counter("flumen_server_protocol_errors_total", stats.protocol_errors);
    counter("flumen_server_timeouts_total", stats.timeouts);
    counter("flumen_server_panics_total", stats.panics);
    counter("flumen_server_shed_total", stats.shed);
    gauge("flumen_server_in_flight", stats.in_flight as f64);
    gauge("flumen_server_queued_bytes", stats.queued_bytes as f64);
    if let Some(limit) = stats.concurrency_limit {
        gauge("flumen_server_concurrency_limit", limit as f64);
    }
    let io = &stats.io;
    counter("flumen_server_bytes_written_total", io.bytes_written);
    counter("flumen_server_bytes_read_total", io.bytes_read);
    counter("flumen_server_frames_written_total", io.frames_written);
    counter("flumen_server_frames_read_total", io.frames_read);
    counter("flumen_server_writes_total", io.writes);
    counter(
        "flumen_server_frames_compressed_total",
        io.frames_compressed,
    );
    counter(
        "flumen_server_frames_decompressed_total",
        io.frames_decompressed,
    );
    gauge("flumen_server_frames_per_write", io.frames_per_write());
    gauge("flumen_server_buffered_bytes", io.buffered_bytes as f64);
}

/// How often the `flumen-metrics` thread publishes servers' and connections' counters when
/// [`set_publish_interval`] was not called.
pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// The publishing period in milliseconds.
static PUBLISH_MILLIS: AtomicU64 = AtomicU64::new(DEFAULT_PUBLISH_INTERVAL.as_millis() as u64);

/// How often servers' and connections' counters are published.
pub fn publish_interval() -> Duration {
    Duration::from_millis(PUBLISH_MILLIS.load(Ordering::Relaxed))
}

/// Sets how often servers' and connections' counters are published (at least every
/// millisecond; the new period applies from the next one).
pub fn set_publish_interval(every: Duration) {
    let millis = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
    PUBLISH_MILLIS.store(millis, Ordering::Relaxed);
}

/// Starts the `flumen-metrics` thread if a recorder is installed and it is not running yet.
/// A thread rather than a task: it serves every runtime a process uses, and sleeps between
/// rounds.
pub(crate) fn start_publisher() {
    static STARTED: Once = Once::new();
    if STARTED.is_completed() || !recorder_installed() {
        return;
    }
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("flumen-metrics".into())
            .spawn(|| loop {
                publish_live();
                std::thread::sleep(publish_interval());
            });
        if let Err(e) = spawned {
            eprintln!("flumen: no `flumen-metrics` thread ({e}): connection counters unpublished");
        }
    });
}

/// Publishes the counters of every server and connection alive now.
fn publish_live() {
    for live in flumen_stream::live::live() {
        match live.snapshot {
            flumen_stream::live::Snapshot::Server(stats) => record_server(&live.name, &stats),
            flumen_stream::live::Snapshot::Connection(stats) => record_client(&live.name, &stats),
            _ => {}
        }
    }
}

/// Setters of gauges and absolute counters labelled `label` = `value`.
fn publishers(
    label: &'static str,
    value: &str,
) -> (impl Fn(&'static str, f64), impl Fn(&'static str, u64)) {
    let labels = [(label, value.to_owned())];
    let counter_labels = labels.clone();
    (
        move |name: &'static str, v: f64| metrics::gauge!(name, &labels).set(v),
        move |name: &'static str, v: u64| metrics::counter!(name, &counter_labels).absolute(v),
    )
}

/// Sets one client connection's metrics from `stats` (a [`Client::stats`] snapshot of the
/// connection underneath), labelled `connection` with a name of the caller's choosing.
///
/// [`Client::stats`]: crate::stream::Client::stats
pub fn record_client(connection: &str, stats: &ConnectionStats) {
    let (gauge, counter) = publishers("connection", connection);
    counter("flumen_client_bytes_written_total", stats.bytes_written);
    counter("flumen_client_bytes_read_total", stats.bytes_read);
    counter("flumen_client_frames_written_total", stats.frames_written);
    counter("flumen_client_frames_read_total", stats.frames_read);
    counter("flumen_client_writes_total", stats.writes);
    counter(
        "flumen_client_frames_compressed_total",
        stats.frames_compressed,
    );
    counter(
        "flumen_client_frames_decompressed_total",
        stats.frames_decompressed,
    );
    gauge("flumen_client_frames_per_write", stats.frames_per_write());
    gauge("flumen_client_buffered_bytes", stats.buffered_bytes as f64);
}

#[cfg(test)]
mod tests {
    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::*;

    /// A recorder that hands out no-op handles but holds state, as real ones do.
    struct Holding(#[allow(dead_code)] u64);

    impl Recorder for Holding {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn calls_are_measured_only_while_a_recorder_is_installed() {
        let id = MethodId::from_name("Test.method");
        assert!(!recorder_installed());
        assert!(server(id, "Test.method").is_none());
        let recorder = Holding(1);
        metrics::with_local_recorder(&recorder, || {
            assert!(recorder_installed());
            let first = server(id, "Test.method").unwrap();
            // The same handles for the next call.
            assert!(std::ptr::eq(first, server(id, "Test.method").unwrap()));
        });
        assert!(server(id, "Test.method").is_none());
    }
}
