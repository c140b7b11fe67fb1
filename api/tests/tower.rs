//! tower on both sides: layers around a router's handlers (authentication from metadata, a
//! concurrency limit with load shedding, a timeout) and a concurrency limit around the client
//! used as a `tower::Service`.

mod common;

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use common::{connect, eventually, join_all, serve, Env, Gauge, TokioEnv};
use flumen::{
    tower::{Call, Route},
    CallOptions, ClientConfig, ErrorCode, Metadata, Request, Router, ServerConfig, Status,
};
use tower::{layer::layer_fn, service_fn, ServiceBuilder, ServiceExt};

e2e!(layers_guard_handlers_and_the_client);

/// Calls the guarded route serves at once; more are shed.
const GUARDED: usize = 2;
/// Calls the client lets out at once through its tower layer.
const CLIENT_LIMIT: usize = 3;

/// Refuses calls whose metadata lacks `authorization: let-me-in`.
fn auth(
    inner: Route,
) -> impl tower::Service<Request, Response = flumen::stream::Reply, Error = Status, Future = impl Send>
       + Clone
       + Send {
    service_fn(move |request: Request| {
        let inner = inner.clone();
        async move {
            match request.metadata().get("authorization") {
                Some(token) if &token[..] == b"let-me-in" => inner.oneshot(request).await,
                _ => Err(Status::new(ErrorCode::APPLICATION, "unauthenticated")),
            }
        }
    })
}

fn credentials() -> CallOptions {
    let mut metadata = Metadata::new();
    metadata.insert("authorization", &b"let-me-in"[..]);
    CallOptions::new().metadata(&metadata).unwrap()
}

async fn layers_guard_handlers_and_the_client<E: Env>(env: E) {
    let guarded = Arc::new(Gauge::default());
    let counted = Arc::new(Gauge::default());
    let (release, released) = smol::channel::unbounded::<()>();
    let (in_guarded, sleeper) = (guarded.clone(), env.clone());
    let in_counted = counted.clone();
    let router = Router::new()
        .route("guarded", move |n: u64| {
            let (gauge, released) = (in_guarded.clone(), released.clone());
            async move {
                gauge.enter();
                let _ = released.recv().await;
                gauge.leave();
                Ok::<_, Status>(n)
            }
        })
        .layer(
            ServiceBuilder::new()
                .load_shed()
                .concurrency_limit(GUARDED)
                .into_inner(),
        )
        .route("counted", move |n: u64| {
            let (gauge, sleep) = (in_counted.clone(), sleeper.sleep(Duration::from_millis(5)));
            async move {
                gauge.enter();
                sleep.await;
                gauge.leave();
                Ok::<_, Status>(n + 1)
            }
        })
        .layer(layer_fn(auth));
    let server = serve(&env, router, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;

    // No credentials: refused by the outer layer on both routes, before any handler runs.
    for method in ["guarded", "counted"] {
        let err = client.call::<_, u64>(method, &1u64).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::APPLICATION), "{method}: {err}");
        assert!(err.to_string().contains("unauthenticated"), "{err}");
    }
    assert_eq!(guarded.max.load(Ordering::SeqCst), 0);
    assert_eq!(counted.max.load(Ordering::SeqCst), 0);

    // The guarded route serves two at once and sheds the rest as OVERLOADED.
    let held: Vec<_> = (0..GUARDED as u64)
        .map(|n| {
            let (client, (done, reply)) = (client.clone(), smol::channel::bounded(1));
            let call = Call::<u64, u64>::new("guarded", n).options(credentials());
            env.spawn(async move {
                let _ = done.send(client.oneshot(call).await).await;
            });
            reply
        })
        .collect();
    eventually(&env, "the guarded route is full", || {
        guarded.now.load(Ordering::SeqCst) == GUARDED
    })
    .await;
    for n in 0..3u64 {
        let call = Call::<u64, u64>::new("guarded", n).options(credentials());
        let err = client.clone().oneshot(call).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::OVERLOADED), "{err}");
    }
    for _ in 0..GUARDED {
        release.send(()).await.unwrap();
    }
    for (n, reply) in held.into_iter().enumerate() {
        assert_eq!(reply.recv().await.unwrap().unwrap(), n as u64);
    }
    assert_eq!(guarded.max.load(Ordering::SeqCst), GUARDED);

    // The client's own layer keeps at most three of its calls out at once.
    let limited = ServiceBuilder::new()
        .concurrency_limit(CLIENT_LIMIT)
        .service(client.clone());
    let replies = join_all((0..24u64).map(|n| {
        let limited = limited.clone();
        async move {
            let call = Call::<u64, u64>::new("counted", n).options(credentials());
            limited.oneshot(call).await.unwrap()
        }
    }))
    .await;
    assert_eq!(replies, (1..25).collect::<Vec<u64>>());
    let most = counted.max.load(Ordering::SeqCst);
    assert!(
        (1..=CLIENT_LIMIT).contains(&most),
        "{most} calls ran at once past a client limit of {CLIENT_LIMIT}"
    );
}

/// tower's timeout layer (tokio's timer) around a handler that takes too long: the caller gets
/// `DEADLINE_EXCEEDED`, and the handler is dropped.
#[test]
fn a_tower_timeout_ends_a_slow_handler() {
    common::run_tokio(|env: TokioEnv| async move {
        let running = Arc::new(Gauge::default());
        let in_handler = running.clone();
        let router = Router::new()
            .route("slow", move |n: u64| {
                let running = in_handler.clone();
                async move {
                    running.enter();
                    let _leave = scopeguard(running);
                    std::future::pending::<()>().await;
                    Ok::<_, Status>(n)
                }
            })
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(20)));
        let server = serve(&env, router, ServerConfig::default()).await;
        let client = connect(&env, *server.local_addr(), ClientConfig::default()).await;
        let err = client.call::<_, u64>("slow", &7u64).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::DEADLINE_EXCEEDED), "{err}");
        assert_eq!(running.max.load(Ordering::SeqCst), 1);
        eventually(&env, "the timed-out handler is dropped", || {
            running.now.load(Ordering::SeqCst) == 0
        })
        .await;
    });
}

/// Leaves `gauge` when dropped.
fn scopeguard(gauge: Arc<Gauge>) -> impl Drop {
    struct Leave(Arc<Gauge>);
    impl Drop for Leave {
        fn drop(&mut self) {
            self.0.leave();
        }
    }
    Leave(gauge)
}
