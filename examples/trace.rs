//! One OpenTelemetry trace across three processes' worth of calls: a `frontend` handler calls
//! a `backend` service, and the client's, frontend's and backend's spans join into one trace
//! (the `traceparent` each call carries in its metadata). The spans go to an in-memory
//! OpenTelemetry exporter and are printed as a tree.
//!
//! ```text
//! cargo run --example trace [-- --runtime smol]
//! ```

mod common;

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use common::Error;
use flumen::{
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    Client, Router, Server,
};
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// The service the outside calls.
#[flumen::service]
pub trait Frontend {
    /// Greets the user with this id, by the name the backend has for it.
    async fn greet(&self, user: u32) -> String;
}

/// The service the frontend calls.
#[flumen::service]
pub trait Backend {
    /// The name of a user.
    async fn name(&self, user: u32) -> String;
}

struct Greeter {
    backend: BackendClient,
}

impl Frontend for Greeter {
    async fn greet(&self, user: u32) -> String {
        // This call runs inside the server's span of `greet`: its span is that span's child,
        // and its traceparent carries the trace on to the backend.
        match self.backend.name(user).await {
            Ok(name) => format!("hello, {name}"),
            Err(e) => format!("hello, stranger ({e})"),
        }
    }
}

struct Names;

impl Backend for Names {
    async fn name(&self, user: u32) -> String {
        tracing::info!(user, "looking the user up");
        ["ada", "grace", "edsger"][user as usize % 3].to_owned()
    }
}

/// The demo, on runtime `rt` over `transport`.
async fn run<R: Runtime, T: Transport<Addr = SocketAddr> + Clone>(
    spans: InMemorySpanExporter,
    rt: R,
    transport: T,
) -> Result<(), Error> {
    let backend = Server::new(BackendServer::new(Names))
        .bind(&rt, &transport, &common::loopback())
        .await?;
    let to_backend = Client::connect(&rt, &transport, backend.local_addr()).await?;
    let frontend = Greeter {
        backend: BackendClient::new(to_backend),
    };
    let router = Router::new().service(FrontendServer::new(frontend))?;
    let server = Server::new(router)
        .bind(&rt, &transport, &common::loopback())
        .await?;
    let client = FrontendClient::new(Client::connect(&rt, &transport, server.local_addr()).await?);

    let request = tracing::info_span!("handle_request");
    let greeting = client.greet(1).instrument(request).await?;
    println!("{greeting}\n");

    // The servers' spans end when their replies are queued: wait for all five.
    for _ in 0..200 {
        if spans.get_finished_spans()?.len() >= 5 {
            break;
        }
        rt.sleep_until(std::time::Instant::now() + std::time::Duration::from_millis(5))
            .await;
    }
    print_tree(&spans.get_finished_spans()?);
    Ok(())
}

/// Prints spans as a tree per trace: name, kind, what the call recorded, ids.
fn print_tree(spans: &[SpanData]) {
    let mut children: HashMap<_, Vec<&SpanData>> = HashMap::new();
    for span in spans {
        children.entry(span.parent_span_id).or_default().push(span);
    }
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| {
            !spans
                .iter()
                .any(|p| p.span_context.span_id() == s.parent_span_id)
        })
        .collect();
    for root in roots {
        println!("trace {}", root.span_context.trace_id());
        print_span(root, &children, 1);
    }
}

fn print_span(
    span: &SpanData,
    children: &HashMap<opentelemetry::trace::SpanId, Vec<&SpanData>>,
    depth: usize,
) {
    let field = |key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    let mut line = format!(
        "{:indent$}{} [{:?}]",
        "",
        span.name,
        span.span_kind,
        indent = depth * 2
    );
    for key in ["rpc.seq", "net.peer", "outcome", "duration_us"] {
        if let Some(value) = field(key) {
            line.push_str(&format!(" {key}={value}"));
        }
    }
    println!(
        "{line}  span={} parent={}",
        span.span_context.span_id(),
        span.parent_span_id
    );
    for event in span.events.iter() {
        println!(
            "{:indent$}event: {}",
            "",
            event.name,
            indent = depth * 2 + 2
        );
    }
    let mut kids = children
        .get(&span.span_context.span_id())
        .cloned()
        .unwrap_or_default();
    kids.sort_by_key(|s| s.start_time);
    for child in kids {
        print_span(child, children, depth + 1);
    }
}

fn main() -> Result<(), Error> {
    let spans = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("trace-example"));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::set_global_default(subscriber)?;
    let _keep = Arc::new(provider);
    // The same demo on either runtime: only the runtime, its spawner and the transport differ.
    if common::smol_requested()? {
        // smol's global executor runs the server's and the client's tasks.
        smol::block_on(run(
            spans.clone(),
            SmolRuntime::global(),
            SmolTcp::default(),
        ))
    } else {
        let tokio = tokio::runtime::Runtime::new()?;
        let rt = TokioRuntime::new(tokio.handle().clone());
        tokio.block_on(run(spans.clone(), rt, TokioTcp::default()))
    }
}
