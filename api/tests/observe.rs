//! Observability end to end. Spans: a call's client and server spans join into one
//! OpenTelemetry trace across the wire (the `traceparent` in the call's metadata), with the
//! method, sequence id, peer and outcome recorded on both sides; on every runtime and
//! transport. Metrics: a Prometheus `/metrics` page, scraped over HTTP, counts the calls by
//! method and outcome on both sides and shows the server's connection counters.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::OnceLock,
};

use common::{connect, eventually, serve, Env};
use flumen::{ClientConfig, Codec, Router, RpcError, ServerConfig};
use opentelemetry::{
    trace::{SpanId, SpanKind, Status as OtelStatus, TraceContextExt, TraceId, TracerProvider},
    Value,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// What `fail` fails with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(String);

#[flumen::service]
pub trait Greeter {
    /// Greets `name`.
    async fn hello(&self, name: String) -> String;
    /// Always fails with the method's error.
    async fn fail(&self) -> Result<(), Refused>;
}

/// The same methods again, for the metrics test alone (the recorder is global: its counts
/// must not take in the calls of the span tests running beside it).
#[flumen::service]
pub trait Tally {
    /// Greets `name`.
    async fn hello(&self, name: String) -> String;
    /// Always fails with the method's error.
    async fn fail(&self) -> Result<(), Refused>;
    /// Sleeps `millis`, counted in `NAPS` when it starts.
    async fn nap(&self, millis: u64);
    /// Panics.
    async fn boom(&self);
}

/// `nap` calls that started on the server.
static NAPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[derive(Clone)]
struct Greetings;

impl Tally for Greetings {
    async fn hello(&self, name: String) -> String {
        format!("hello, {name}")
    }

    async fn fail(&self) -> Result<(), Refused> {
        Err(Refused("always".into()))
    }

    async fn nap(&self, millis: u64) {
        NAPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async_io::Timer::after(std::time::Duration::from_millis(millis)).await;
    }

    async fn boom(&self) {
        panic!("boom, on purpose");
    }
}

impl Greeter for Greetings {
    async fn hello(&self, name: String) -> String {
        format!("hello, {name}")
    }

    async fn fail(&self) -> Result<(), Refused> {
        Err(Refused("always".into()))
    }
}

async fn greeter<E: Env>(env: &E) -> (flumen::ServerHandle<common::Addr<E>>, GreeterClient) {
    let router = Router::new()
        .service(GreeterServer::new(Greetings))
        .unwrap();
    let server = serve(env, router, ServerConfig::default()).await;
    let client = connect(env, server.local_addr().clone(), ClientConfig::default()).await;
    (server, GreeterClient::new(client))
}

/// The target of every span opened, by span name.
static TARGETS: std::sync::Mutex<Vec<(&'static str, &'static str)>> =
    std::sync::Mutex::new(Vec::new());

/// Records each new span's name and target in [`TARGETS`].
struct SpanTargets;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanTargets {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let metadata = attrs.metadata();
        TARGETS
            .lock()
            .unwrap()
            .push((metadata.name(), metadata.target()));
    }
}

/// The spans every test of this binary exports (one subscriber per process).
fn spans() -> &'static InMemorySpanExporter {
    static SPANS: OnceLock<InMemorySpanExporter> = OnceLock::new();
    SPANS.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("flumen-tests"));
        let subscriber = tracing_subscriber::registry().with(layer).with(SpanTargets);
        tracing::subscriber::set_global_default(subscriber).unwrap();
        exporter
    })
}

fn of_trace(trace: TraceId) -> Vec<SpanData> {
    let spans = spans().get_finished_spans().unwrap();
    spans
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect()
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn text(span: &SpanData, key: &str) -> String {
    match attribute(span, key) {
        Some(value) => value.as_str().into_owned(),
        None => panic!("span {} has no {key}: {:?}", span.name, span.attributes),
    }
}

e2e!(client_and_server_spans_join_across_the_wire);

async fn client_and_server_spans_join_across_the_wire<E: Env>(env: E) {
    let exporter = spans();
    let (_server, client) = greeter(&env).await;
    let root = tracing::info_span!("test.root");
    let trace = root.context().span().span_context().trace_id();
    assert_ne!(trace, TraceId::INVALID, "no OpenTelemetry layer");
    let reply = client.hello("ada".into()).instrument(root.clone()).await;
    assert_eq!(reply.unwrap(), "hello, ada");
    let failed = client.fail().instrument(root.clone()).await;
    assert!(
        matches!(failed, Err(RpcError::Method(Refused(_)))),
        "{failed:?}"
    );
    drop(root);
    let _ = exporter;
    // The root, and a client and a server span per call (a server span ends when its reply is
    // queued, which may be just after the client has it).
    eventually(&env, "five spans in the trace", || {
        of_trace(trace).len() == 5
    })
    .await;
    // One target for both sides' spans, which one filter directive selects.
    let targets = TARGETS.lock().unwrap().clone();
    for side in ["flumen.client", "flumen.server"] {
        let of_side: Vec<_> = targets.iter().filter(|(name, _)| *name == side).collect();
        assert!(!of_side.is_empty(), "no {side} span");
        assert!(
            of_side
                .iter()
                .all(|(_, target)| *target == flumen::stream::SPAN_TARGET),
            "{of_side:?}"
        );
    }
    let spans = of_trace(trace);
    let root = spans.iter().find(|s| s.name == "test.root").unwrap();
    for (method, outcome) in [("hello", "ok"), ("fail", "APPLICATION")] {
        let name = format!("Greeter/{method}");
        let client = spans
            .iter()
            .find(|s| s.name == name && s.span_kind == SpanKind::Client)
            .unwrap_or_else(|| panic!("no client span {name}: {spans:#?}"));
        let server = spans
            .iter()
            .find(|s| s.name == name && s.span_kind == SpanKind::Server)
            .unwrap_or_else(|| panic!("no server span {name}: {spans:#?}"));
        assert_eq!(client.parent_span_id, root.span_context.span_id());
        // Joined across the wire: the server's span is the client's child.
        assert_eq!(server.parent_span_id, client.span_context.span_id());
        assert_ne!(server.parent_span_id, SpanId::INVALID);
        for span in [client, server] {
            assert_eq!(text(span, "rpc.system"), "flumen");
            assert_eq!(text(span, "rpc.service"), "Greeter");
            assert_eq!(text(span, "rpc.method"), method);
            assert_eq!(text(span, "outcome"), outcome);
            assert!(attribute(span, "rpc.seq").is_some(), "{span:?}");
            assert!(attribute(span, "duration_us").is_some(), "{span:?}");
            let failed = matches!(span.status, OtelStatus::Error { .. });
            assert_eq!(failed, outcome != "ok", "{span:?}");
        }
        // The same call on both sides, and each side names the other.
        assert_eq!(attribute(client, "rpc.seq"), attribute(server, "rpc.seq"));
        assert!(!text(client, "net.peer").is_empty());
        assert!(!text(server, "net.peer").is_empty());
    }
}

/// A free loopback port for the exporter's listener.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET /metrics`, the body.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    page
}

/// The value of the sample `name` (with its labels, as the page writes them).
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

const CALLS: u64 = 20;
const FAILURES: u64 = 3;

#[test]
fn a_prometheus_page_counts_calls_and_connections() {
    let addr = free_port();
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .unwrap();
    // Servers and connections publish on their own: often, so that the test sees it soon.
    flumen::metrics::set_publish_interval(std::time::Duration::from_millis(20));
    common::run_tokio(|env: common::TokioEnv| exercise(env, addr, 1));
    common::run_smol(|env: common::SmolEnv| exercise(env, addr, 2));
}

/// Makes calls and failures, then checks the page; `round` counts the runs so far (the
/// recorder is global, so counts add up).
async fn exercise<E: Env>(env: E, addr: SocketAddr, round: u64) {
    let router = Router::new().service(TallyServer::new(Greetings)).unwrap();
    let server = serve(&env, router, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let client = TallyClient::new(client);
    for i in 0..CALLS {
        client.hello(format!("n{i}")).await.unwrap();
    }
    for _ in 0..FAILURES {
        client.fail().await.unwrap_err();
    }
    // A call past its deadline, and a call its caller drops once the server runs it: each
    // counted alike on both sides.
    client.boom().await.unwrap_err();
    let short = client.with_timeout(Some(std::time::Duration::from_millis(100)));
    assert!(short.nap(60_000).await.unwrap_err().is_timeout());
    let naps = NAPS.load(std::sync::atomic::Ordering::SeqCst);
    let mut dropped = Box::pin(client.nap(60_000));
    assert!(futures_lite::future::poll_once(&mut dropped)
        .await
        .is_none());
    eventually(&env, "the nap runs", || {
        NAPS.load(std::sync::atomic::Ordering::SeqCst) > naps
    })
    .await;
    drop(dropped);
    // A client whose deadline passed says so in its Cancel (`aux`): the server counts that
    // call DEADLINE_EXCEEDED though its own deadline (none here) never came.
    let mut peer = flumen_peer::connect(&env.transport(), server.local_addr())
        .await
        .unwrap();
    peer.send_hello(flumen::stream::hello::Hello::new(1 << 20, 64))
        .await
        .unwrap();
    peer.read_hello().await.unwrap();
    let nap = flumen::MethodId::from_name("Tally.nap").as_u32();
    let body = flumen::MsgPack::default().encode(&(60_000u64,)).unwrap();
    let mut request = flumen_peer::request(nap, 1);
    request.len = body.len() as u32;
    let naps = NAPS.load(std::sync::atomic::Ordering::SeqCst);
    peer.send_frame(request, &body).await.unwrap();
    eventually(&env, "the raw nap runs", || {
        NAPS.load(std::sync::atomic::Ordering::SeqCst) > naps
    })
    .await;
    let mut cancel =
        flumen::stream::frame::FrameHeader::new(flumen::stream::frame::FrameKind::Cancel, 1);
    cancel.aux = flumen::ErrorCode::DEADLINE_EXCEEDED.as_u32();
    peer.send_frame(cancel, &[]).await.unwrap();
    eventually(&env, "all naps ended on the server", || {
        server.stats().in_flight == 0
    })
    .await;
    drop(peer);
    eventually(&env, "the raw peer gone", || server.stats().active == 1).await;
    let stats = server.stats();
    let name = format!("round{round}");
    flumen::metrics::record_server(&name, &stats);
    let page = scrape(addr);
    for side in ["client", "server"] {
        let calls = |method: &str, outcome: &str| {
            let name = format!(
                "flumen_{side}_calls_total{{method=\"Tally.{method}\",outcome=\"{outcome}\"}}"
            );
            sample(&page, &name).unwrap_or_else(|| panic!("no {name} in\n{page}"))
        };
        assert_eq!(calls("hello", "ok"), (CALLS * round) as f64, "{side}");
        assert_eq!(
            calls("fail", "APPLICATION"),
            (FAILURES * round) as f64,
            "{side}"
        );
        // The server counts the raw peer's call too.
        let expired = if side == "server" { 2 * round } else { round };
        assert_eq!(calls("nap", "DEADLINE_EXCEEDED"), expired as f64, "{side}");
        assert_eq!(calls("nap", "CANCELLED"), round as f64, "{side}");
        assert_eq!(calls("boom", "HANDLER_PANIC"), round as f64, "{side}");
        let count = format!("flumen_{side}_call_duration_seconds_count{{method=\"Tally.hello\"}}");
        assert_eq!(
            sample(&page, &count),
            Some((CALLS * round) as f64),
            "{count}\n{page}"
        );
        let in_flight = format!("flumen_{side}_calls_in_flight{{method=\"Tally.hello\"}}");
        assert_eq!(sample(&page, &in_flight), Some(0.0), "{in_flight}\n{page}");
    }
    // The server's own counters, as of the snapshot recorded.
    let labelled = |metric: &str| format!("{metric}{{server=\"{name}\"}}");
    let bytes = sample(&page, &labelled("flumen_server_bytes_read_total")).unwrap();
    assert_eq!(bytes, stats.io.bytes_read as f64);
    assert!(
        stats.io.bytes_read > (CALLS + FAILURES) * 16,
        "{:?}",
        stats.io
    );
    assert!(
        stats.io.bytes_written > (CALLS + FAILURES) * 16,
        "{:?}",
        stats.io
    );
    assert_eq!(
        sample(&page, &labelled("flumen_server_connections")),
        Some(1.0)
    );
    let frames = sample(&page, &labelled("flumen_server_frames_read_total")).unwrap();
    assert!(frames >= (CALLS + FAILURES) as f64, "{frames}");
    // With no record call: the `flumen-metrics` thread publishes the server under its
    // address, and the client's connection under the server's address and a number.
    let address = format!("{:?}", server.local_addr());
    let published = format!("flumen_server_connections{{server=\"{address}\"}}");
    let connection = format!("flumen_client_bytes_written_total{{connection=\"{address}#");
    let written = |page: &str| {
        page.lines()
            .find_map(|line| line.strip_prefix(&connection)?.split_once("\"} "))
            .and_then(|(_, value)| value.parse::<f64>().ok())
    };
    // Traffic has stopped: the published values settle on the handles' own counters.
    let raw = client
        .client()
        .connection()
        .expect("a connected client")
        .stats();
    let server_read = format!("flumen_server_bytes_read_total{{server=\"{address}\"}}");
    eventually(
        &env,
        "the server and its client's connection published",
        || {
            let page = scrape(addr);
            sample(&page, &published) == Some(1.0)
                && written(&page) == Some(raw.bytes_written as f64)
                && sample(&page, &server_read) == Some(server.stats().io.bytes_read as f64)
        },
    )
    .await;
    eventually(&env, "no call in flight", || server.stats().in_flight == 0).await;
}
