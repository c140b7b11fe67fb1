//! `#[flumen::service]` end to end, on every runtime and transport: every call shape, method
//! errors as their declared type, deadlines and cancellation reaching the handler, metadata,
//! flow control, several services on one server.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{connect, eventually, serve, Env};
use flumen::{
    Attachment, CallContext, ClientConfig, Metadata, Router, RpcError, ServerConfig, Stream,
    Streaming, WithAttachment,
};
use futures_lite::{stream, StreamExt};
use serde::{Deserialize, Serialize};

/// The error every `Lab` method may fail with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum LabError {
    /// No value under the key.
    #[error("no such key: {0}")]
    Missing(String),
    /// A stream failed on purpose.
    #[error("failed after {0} items")]
    FailedAfter(u32),
}

/// A service with one method of each kind.
#[flumen::service]
pub trait Lab {
    /// Adds two numbers.
    async fn add(&self, a: u64, b: u64) -> u64;
    /// Looks a key up.
    async fn get(&self, key: String) -> Result<String, LabError>;
    /// Sleeps, then answers; counts handlers dropped before they finished.
    async fn sleep(&self, ctx: CallContext, millis: u64) -> Result<Option<u64>, LabError>;
    /// The caller's `user` metadata.
    async fn whoami(&self, ctx: CallContext) -> Option<String>;
    /// `0..n`.
    async fn count(&self, n: u32) -> impl Stream<Item = Result<u32, LabError>>;
    /// `0..n`, then an error.
    async fn fail_after(&self, n: u32) -> impl Stream<Item = Result<u32, LabError>>;
    /// 16 KiB items forever.
    async fn flood(&self) -> impl Stream<Item = serde_bytes::ByteBuf>;
    /// Numbers forever; counts the stream dropped (its drop guard) when the call ends.
    async fn forever(&self) -> impl Stream<Item = u64>;
    /// Sums the items.
    async fn sum(&self, items: Streaming<u64>) -> Result<u64, LabError>;
    /// Echoes `data` back beside its length and `name`.
    async fn store(
        &self,
        name: String,
        data: Attachment,
    ) -> Result<WithAttachment<(String, u64)>, LabError>;
    /// Echoes each item, upper-cased, after `prefix`.
    async fn shout(
        &self,
        prefix: String,
        items: Streaming<String>,
    ) -> impl Stream<Item = Result<String, LabError>>;
}

#[derive(Clone, Default)]
struct LabImpl {
    dropped: Arc<AtomicUsize>,
    /// `sleep` calls that started.
    started: Arc<AtomicUsize>,
}

/// Counts itself when dropped before `defuse`.
struct DropGuard(Option<Arc<AtomicUsize>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Lab for LabImpl {
    async fn add(&self, a: u64, b: u64) -> u64 {
        a + b
    }

    async fn get(&self, key: String) -> Result<String, LabError> {
        match key.as_str() {
            "answer" => Ok("42".into()),
            _ => Err(LabError::Missing(key)),
        }
    }

    async fn sleep(&self, ctx: CallContext, millis: u64) -> Result<Option<u64>, LabError> {
        let mut guard = DropGuard(Some(self.dropped.clone()));
        self.started.fetch_add(1, Ordering::SeqCst);
        let remaining = ctx.remaining().map(|d| d.as_millis() as u64);
        async_io::Timer::after(Duration::from_millis(millis)).await;
        guard.0 = None;
        Ok(remaining)
    }

    async fn whoami(&self, ctx: CallContext) -> Option<String> {
        ctx.metadata()
            .get("user")
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    async fn count(&self, n: u32) -> impl Stream<Item = Result<u32, LabError>> {
        Box::pin(stream::iter((0..n).map(Ok)))
    }

    async fn fail_after(&self, n: u32) -> impl Stream<Item = Result<u32, LabError>> {
        let items = (0..n).map(Ok).chain([Err(LabError::FailedAfter(n))]);
        Box::pin(stream::iter(items))
    }

    async fn flood(&self) -> impl Stream<Item = serde_bytes::ByteBuf> {
        let item = serde_bytes::ByteBuf::from(vec![7u8; 16 * 1024]);
        Box::pin(stream::repeat(item))
    }

    async fn store(
        &self,
        name: String,
        data: Attachment,
    ) -> Result<WithAttachment<(String, u64)>, LabError> {
        if name.is_empty() {
            return Err(LabError::Missing("name".into()));
        }
        let len = data.len() as u64;
        Ok(WithAttachment::new((name, len), data))
    }

    async fn forever(&self) -> impl Stream<Item = u64> {
        let guard = DropGuard(Some(self.dropped.clone()));
        Box::pin(stream::iter(0..).map(move |n| {
            let _ = &guard;
            n
        }))
    }

    async fn sum(&self, mut items: Streaming<u64>) -> Result<u64, LabError> {
        let mut total = 0;
        while let Some(item) = items.next().await {
            total += item.map_err(|_| LabError::Missing("item".into()))?;
        }
        Ok(total)
    }

    async fn shout(
        &self,
        prefix: String,
        items: Streaming<String>,
    ) -> impl Stream<Item = Result<String, LabError>> {
        Box::pin(items.map(move |item| {
            item.map(|text| format!("{prefix}{}", text.to_uppercase()))
                .map_err(|status| LabError::Missing(status.to_string()))
        }))
    }
}

/// A service the test server does not serve.
#[flumen::service]
pub trait Elsewhere {
    /// Never served.
    async fn ping(&self) -> String;
}

/// A service whose methods carry attributes the macro passes through.
#[flumen::service]
pub trait Legacy {
    /// Still served, while callers move on.
    #[deprecated = "call `add` on `Lab`"]
    async fn old_add(&self, a: u64, b: u64) -> u64;
    /// Only in a build no one makes: compiled out of the trait, the client and the routes.
    #[cfg(any())]
    async fn hidden(&self) -> u64;
    /// Eight arguments, which the lint allowed here would count against.
    #[allow(clippy::too_many_arguments)]
    #[idempotent]
    async fn sum8(&self, a: u8, b: u8, c: u8, d: u8, e: u8, f: u8, g: u8, h: u8) -> u64;
    /// One of two alternatives under `cfg`, with one name: only the one compiled in exists,
    /// its method id included.
    #[cfg(unix)]
    async fn flavor(&self) -> String;
    /// The other alternative.
    #[cfg(not(unix))]
    async fn flavor(&self) -> String;
    /// A lint expected on the method (`expect` reaches the trait's method; the client's
    /// methods, where the lint may or may not fire, get it as an `allow`).
    #[expect(non_snake_case)]
    async fn Shout(&self) -> u8;
    /// Attributes under `cfg_attr` pass through as well (an `expect` under it becomes an
    /// `allow` on the client's methods, as a plain one does).
    #[cfg_attr(all(), deprecated = "call `Shout`", expect(non_snake_case))]
    async fn Mumble(&self) -> u8;
}

struct LegacyImpl;

// No `hidden`: the trait has no such method in this build.
impl Legacy for LegacyImpl {
    async fn old_add(&self, a: u64, b: u64) -> u64 {
        a + b
    }

    async fn sum8(&self, a: u8, b: u8, c: u8, d: u8, e: u8, f: u8, g: u8, h: u8) -> u64 {
        [a, b, c, d, e, f, g, h].into_iter().map(u64::from).sum()
    }

    async fn flavor(&self) -> String {
        "compiled in".into()
    }

    #[allow(non_snake_case)]
    async fn Shout(&self) -> u8 {
        7
    }

    #[allow(non_snake_case)]
    async fn Mumble(&self) -> u8 {
        3
    }
}

/// `deprecated`, `cfg` and lint attributes on methods pass through the macro: a deprecated
/// method is still served, a compiled-out one is neither implemented nor routed.
#[allow(deprecated)]
async fn method_attributes_pass_through<E: Env>(env: E) {
    let router = Router::new()
        .service(LegacyServer::new(LegacyImpl))
        .unwrap();
    let server = serve(&env, router, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let legacy = LegacyClient::new(client.clone());
    assert_eq!(legacy.old_add(2, 3).await.unwrap(), 5);
    assert_eq!(legacy.sum8(1, 2, 3, 4, 5, 6, 7, 8).await.unwrap(), 36);
    assert_eq!(legacy.flavor().await.unwrap(), "compiled in");
    assert_eq!(legacy.Shout().await.unwrap(), 7);
    assert_eq!(legacy.Mumble().await.unwrap(), 3);
    let hidden = client
        .call::<_, u64>("Legacy.hidden", &())
        .await
        .unwrap_err();
    assert_eq!(
        hidden.code(),
        Some(flumen::ErrorCode::UNKNOWN_METHOD),
        "{hidden}"
    );
}

async fn lab<E: Env>(env: &E) -> (flumen::ServerHandle<common::Addr<E>>, LabClient, LabImpl) {
    let service = LabImpl::default();
    let router = Router::new()
        .service(LabServer::new(service.clone()))
        .unwrap();
    let server = serve(env, router, ServerConfig::default()).await;
    let client = connect(env, server.local_addr().clone(), ClientConfig::default()).await;
    (server, LabClient::new(client), service)
}

async fn unary_calls_and_their_errors<E: Env>(env: E) {
    let (_server, lab, _) = lab(&env).await;
    assert_eq!(lab.add(2, 3).await.unwrap(), 5);
    assert_eq!(lab.get("answer".into()).await.unwrap(), "42");
    match lab.get("nope".into()).await {
        Err(RpcError::Method(LabError::Missing(key))) => assert_eq!(key, "nope"),
        other => panic!("expected the method's error, got {other:?}"),
    }
    // From a plain thread, on the same connection (the test task awaits, never blocks).
    let blocking = lab.clone();
    let (done, result) = smol::channel::bounded(1);
    std::thread::spawn(move || done.send_blocking(blocking.add_blocking(40, 2)));
    let sum = result.recv().await.unwrap().unwrap();
    assert_eq!(sum, 42);
}

async fn unknown_service_is_a_clear_error<E: Env>(env: E) {
    let (_server, lab, _) = lab(&env).await;
    let elsewhere = ElsewhereClient::new(lab.client().clone());
    let err = elsewhere.ping().await.unwrap_err();
    assert!(err.is_unknown_method(), "{err}");
}

async fn hundred_streams_each_in_order<E: Env>(env: E) {
    let (_server, lab, _) = lab(&env).await;
    let streams = (0..100u32).map(|i| {
        let lab = lab.clone();
        async move {
            let items: Vec<u32> = lab
                .count(50 + i)
                .await
                .unwrap()
                .map(Result::unwrap)
                .collect()
                .await;
            assert_eq!(items, (0..50 + i).collect::<Vec<_>>());
        }
    });
    common::join_all(streams).await;
}

async fn error_mid_stream_arrives_typed<E: Env>(env: E) {
    let (_server, lab, _) = lab(&env).await;
    let items: Vec<_> = lab.fail_after(3).await.unwrap().collect().await;
    assert_eq!(items.len(), 4);
    assert!(items[..3].iter().all(Result::is_ok));
    match &items[3] {
        Err(RpcError::Method(LabError::FailedAfter(3))) => {}
        other => panic!("expected the typed error, got {other:?}"),
    }
}

async fn client_streaming_and_bidirectional<E: Env>(env: E) {
    let (_server, lab, _) = lab(&env).await;
    let total = lab.sum(stream::iter(1..=1000u64)).await.unwrap();
    assert_eq!(total, 500_500);
    let words = stream::iter(["a", "b", "c"].map(String::from));
    let shouted: Vec<String> = lab
        .shout("> ".into(), words)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(shouted, ["> A", "> B", "> C"]);
}

/// A consumer that never reads holds at most its window plus one item, and unary calls on the
/// same connection go on.
async fn unread_stream_is_bounded_and_blocks_nothing<E: Env>(env: E) {
    let (_server, lab, _) = lab(&env).await;
    let flood = lab.flood().await.unwrap();
    let window = flumen::stream::flow::DEFAULT_STREAM_WINDOW as usize;
    eventually(&env, "window filled", || flood.buffered() >= window).await;
    for i in 0..100 {
        assert_eq!(lab.add(i, 1).await.unwrap(), i + 1);
    }
    // msgpack adds a few bytes of framing to each 16 KiB item.
    let bound = window + 16 * 1024 + 16;
    assert!(flood.buffered() <= bound, "{} > {bound}", flood.buffered());
}

async fn dropped_call_runs_the_handlers_drop_guard<E: Env>(env: E) {
    let (_server, lab, service) = lab(&env).await;
    let call = lab.sleep(10_000);
    let gave_up = async {
        eventually(&env, "the handler to start", || {
            service.started.load(Ordering::SeqCst) == 1
        })
        .await;
        Err(RpcError::Rpc(flumen::Error::Call(
            flumen::CallError::Timeout(Duration::ZERO),
        )))
    };
    assert!(futures_lite::future::or(call, gave_up).await.is_err());
    eventually(&env, "handler dropped", || {
        service.dropped.load(Ordering::SeqCst) == 1
    })
    .await;
}

async fn dropped_stream_drops_the_servers_stream<E: Env>(env: E) {
    let (_server, lab, service) = lab(&env).await;
    let mut numbers = lab.forever().await.unwrap();
    assert_eq!(numbers.next().await.unwrap().unwrap(), 0);
    assert_eq!(numbers.next().await.unwrap().unwrap(), 1);
    drop(numbers);
    eventually(&env, "server dropped the stream", || {
        service.dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    // The connection and its window are intact.
    assert_eq!(lab.add(1, 2).await.unwrap(), 3);
}

async fn deadline_reaches_the_handler<E: Env>(env: E) {
    let (_server, lab, service) = lab(&env).await;
    let remaining = lab
        .with_timeout(Some(Duration::from_secs(5)))
        .sleep(1)
        .await
        .unwrap()
        .expect("the handler sees the deadline");
    assert!(remaining > 1000 && remaining <= 5000, "{remaining} ms");
    let err = lab
        .with_timeout(Some(Duration::from_millis(50)))
        .sleep(10_000)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    eventually(&env, "handler stopped at its deadline", || {
        service.dropped.load(Ordering::SeqCst) == 1
    })
    .await;
}

async fn metadata_reaches_the_handler<E: Env>(env: E) {
    let (_server, lab, _) = lab(&env).await;
    assert_eq!(lab.whoami().await.unwrap(), None);
    let mut metadata = Metadata::new();
    metadata.insert("user", "ada");
    let ada = lab.with_metadata(&metadata).unwrap();
    assert_eq!(ada.whoami().await.unwrap().as_deref(), Some("ada"));
}

async fn two_services_one_port_and_collisions_refused<E: Env>(env: E) {
    struct Here;
    impl Elsewhere for Here {
        async fn ping(&self) -> String {
            "pong".into()
        }
    }
    let router = Router::new()
        .service(LabServer::new(LabImpl::default()))
        .unwrap()
        .service(ElsewhereServer::new(Here))
        .unwrap();
    let twice = Router::new()
        .service(ElsewhereServer::new(Here))
        .unwrap()
        .service(ElsewhereServer::new(Here));
    assert!(twice.is_err(), "a duplicate method id must be refused");
    let server = serve(&env, router, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    assert_eq!(LabClient::new(client.clone()).add(1, 1).await.unwrap(), 2);
    assert_eq!(ElsewhereClient::new(client).ping().await.unwrap(), "pong");
    // A generated server is also a Dispatch of its own.
    let alone = serve(&env, ElsewhereServer::new(Here), ServerConfig::default()).await;
    let client = connect(&env, alone.local_addr().clone(), ClientConfig::default()).await;
    assert_eq!(ElsewhereClient::new(client).ping().await.unwrap(), "pong");
}

/// Raw bytes beside the typed message, both ways, unchanged.
async fn attachments_travel_beside_the_message<E: Env>(env: E) {
    let (_server, lab, _) = lab(&env).await;
    for len in [0usize, 1, 64 * 1024, 1 << 20] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let reply = lab
            .store("blob".into(), Attachment::from(data.clone()))
            .await
            .unwrap();
        assert_eq!(reply.value, ("blob".to_owned(), len as u64));
        assert_eq!(&reply.attachment[..], &data[..]);
    }
    let err = lab
        .store(String::new(), Attachment::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RpcError::Method(LabError::Missing(_))),
        "{err:?}"
    );
}

e2e_and_per_core!(
    attachments_travel_beside_the_message,
    unary_calls_and_their_errors,
    unknown_service_is_a_clear_error,
    hundred_streams_each_in_order,
    error_mid_stream_arrives_typed,
    client_streaming_and_bidirectional,
    unread_stream_is_bounded_and_blocks_nothing,
    dropped_call_runs_the_handlers_drop_guard,
    dropped_stream_drops_the_servers_stream,
    deadline_reaches_the_handler,
    metadata_reaches_the_handler,
    two_services_one_port_and_collisions_refused,
    method_attributes_pass_through,
);
