//! Unary calls end to end, on tokio and smol over TCP.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{connect, eventually, join_all, router, serve, Env, Gauge};
use flumen::{Bytes, CallError, ClientConfig, Codec, ErrorCode, MethodId, ServerConfig};
use serde_bytes::ByteBuf;

e2e_and_per_core!(
    out_of_order_completion,
    ten_thousand_calls_512_in_flight,
    timeout_resolves_while_others_succeed,
    window_is_never_exceeded,
    server_limit_caps_the_window,
    unknown_method_is_a_clear_error,
    handler_panic_fails_only_that_call,
    request_too_large_is_not_sent,
    blocking_callers_from_plain_threads,
    raw_bodies_pass_through,
);

/// A blocking call on the one thread that runs the runtime: current-thread tokio and smol with
/// one thread, over TCP and in process (where the hang was seen).
mod blocking_in_async {
    use super::common;

    #[test]
    fn tokio_current_tcp() {
        common::run_tokio_current(
            super::a_blocking_call_in_async_code_fails_at_once::<common::TokioEnv>,
        )
    }

    #[test]
    fn tokio_current_inproc() {
        common::run_tokio_current(
            super::a_blocking_call_in_async_code_fails_at_once::<common::TokioInProcEnv>,
        )
    }

    #[test]
    fn smol_one_thread_tcp() {
        common::run_smol_with(
            1,
            super::a_blocking_call_in_async_code_fails_at_once::<common::SmolEnv>,
        )
    }

    #[test]
    fn smol_one_thread_inproc() {
        common::run_smol_with(
            1,
            super::a_blocking_call_in_async_code_fails_at_once::<common::SmolInProcEnv>,
        )
    }
}

async fn start<E: Env>(
    env: &E,
    config: ServerConfig,
) -> (flumen::ServerHandle<common::Addr<E>>, Arc<Gauge>) {
    let gauge = Arc::new(Gauge::default());
    (serve(env, router(env, gauge.clone()), config).await, gauge)
}

async fn out_of_order_completion<E: Env>(env: E) {
    let (server, _) = start(&env, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let (done, finished) = smol::channel::unbounded();
    // Earlier calls sleep longer, so replies come back in reverse order on one connection.
    // Calls a step apart that a stall of the loaded machine between two sends does not
    // bridge: the order asserted below holds while each send follows the last within a step.
    const CALLS: u64 = 8;
    const STEP: u64 = 200;
    for id in 0..CALLS {
        let client = client.clone();
        let done = done.clone();
        env.spawn(async move {
            let millis = (CALLS - id) * STEP;
            let got: u64 = client.call("sleep_echo", &(millis, id)).await.unwrap();
            done.send((id, got)).await.unwrap();
        });
        // Each request reaches the server before the next one is made.
        eventually(&env, "the request read", || {
            server.stats().io.frames_read > id
        })
        .await;
    }
    let mut order = Vec::new();
    for _ in 0..CALLS {
        let (id, got) = finished.recv().await.unwrap();
        assert_eq!(id, got, "reply matched to the wrong call");
        order.push(id);
    }
    assert_eq!(
        order.first(),
        Some(&(CALLS - 1)),
        "the shortest call finished first: {order:?}"
    );
    assert_eq!(
        order.last(),
        Some(&0),
        "the longest call finished last: {order:?}"
    );
}

async fn ten_thousand_calls_512_in_flight<E: Env>(env: E) {
    let (server, _) = start(&env, ServerConfig::default()).await;
    let client = connect(
        &env,
        server.local_addr().clone(),
        ClientConfig::default().max_in_flight(512),
    )
    .await;
    assert_eq!(client.raw().window(), 512);
    const CALLS: usize = 10_000;
    const TASKS: usize = 512;
    let (done, finished) = smol::channel::unbounded();
    for task in 0..TASKS {
        let client = client.clone();
        let done = done.clone();
        env.spawn(async move {
            let mut ok = 0;
            for i in (task..CALLS).step_by(TASKS) {
                let body = ByteBuf::from(format!("call {i}").into_bytes());
                let reply: ByteBuf = client.call("echo", &body).await.unwrap();
                assert_eq!(reply, body);
                ok += 1;
            }
            done.send(ok).await.unwrap();
        });
    }
    let mut total = 0;
    for _ in 0..TASKS {
        total += finished.recv().await.unwrap();
    }
    assert_eq!(total, CALLS);
}

async fn timeout_resolves_while_others_succeed<E: Env>(env: E) {
    let (server, _) = start(&env, ServerConfig::default()).await;
    let tick = Duration::from_millis(10);
    let client = connect(
        &env,
        server.local_addr().clone(),
        ClientConfig::default().tick(tick),
    )
    .await;
    let timeout = Duration::from_millis(150);
    let slow = {
        let client = client.clone();
        async move {
            let started = Instant::now();
            let result = client
                .call_with_timeout::<_, ()>("slow", &(), Some(timeout))
                .await;
            (result, started.elapsed())
        }
    };
    let fast = async {
        for i in 0..200u64 {
            let got: u64 = client.call("sleep_echo", &(0u64, i)).await.unwrap();
            assert_eq!(got, i);
        }
    };
    let ((result, elapsed), ()) = futures_lite::future::zip(slow, fast).await;
    let err = result.unwrap_err();
    assert!(err.is_timeout(), "expected a timeout, got {err}");
    assert!(elapsed >= timeout, "resolved early: {elapsed:?}");
    // Deadline plus one tick, plus slack for a loaded CI machine's scheduler.
    assert!(
        elapsed < timeout + tick + Duration::from_secs(2),
        "resolved late: {elapsed:?}"
    );
    // The connection is still good after the late reply would arrive.
    let got: u64 = client.call("sleep_echo", &(0u64, 7u64)).await.unwrap();
    assert_eq!(got, 7);
}

async fn window_is_never_exceeded<E: Env>(env: E) {
    let (server, gauge) = start(&env, ServerConfig::default()).await;
    let client = connect(
        &env,
        server.local_addr().clone(),
        ClientConfig::default().max_in_flight(8),
    )
    .await;
    let (done, finished) = smol::channel::unbounded();
    for _ in 0..200 {
        let client = client.clone();
        let done = done.clone();
        env.spawn(async move {
            let result: Result<(), _> = client.call("gauge", &()).await;
            done.send(result.is_ok()).await.unwrap();
        });
    }
    for _ in 0..200 {
        assert!(finished.recv().await.unwrap());
    }
    let max = gauge.max.load(Ordering::SeqCst);
    assert!(
        max <= 8,
        "server saw {max} calls at once with a window of 8"
    );
    assert!(max >= 2, "calls did not overlap at all ({max})");
}

async fn server_limit_caps_the_window<E: Env>(env: E) {
    let (server, gauge) = start(&env, ServerConfig::default().max_in_flight(4)).await;
    let client = connect(
        &env,
        server.local_addr().clone(),
        ClientConfig::default().max_in_flight(100),
    )
    .await;
    assert_eq!(client.raw().window(), 4);
    let calls = (0..40).map(|_| client.call::<_, ()>("gauge", &()));
    for result in join_all(calls).await {
        result.unwrap();
    }
    assert!(gauge.max.load(Ordering::SeqCst) <= 4);
}

async fn unknown_method_is_a_clear_error<E: Env>(env: E) {
    let (server, _) = start(&env, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let err = client
        .call::<_, ()>("no_such_method", &())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UNKNOWN_METHOD), "{err}");
    assert!(!err.is_connection());
    // A request the handler cannot decode is refused without running it.
    let err = client
        .call::<_, u64>("sleep_echo", &"not a pair")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BAD_REQUEST), "{err}");
    // A reply of the wrong type is a decode error on the client.
    let err = client
        .call::<_, String>("sleep_echo", &(0u64, 1u64))
        .await
        .unwrap_err();
    assert!(err.is_codec(), "{err}");
    let got: u64 = client.call("sleep_echo", &(0u64, 9u64)).await.unwrap();
    assert_eq!(got, 9);
}

async fn handler_panic_fails_only_that_call<E: Env>(env: E) {
    let (server, _) = start(&env, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let err = client.call::<_, ()>("panic", &true).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::HANDLER_PANIC), "{err}");
    client.call::<_, ()>("panic", &false).await.unwrap();
    assert_eq!(server.stats().panics, 1);
    assert!(!client.is_closed());
}

async fn request_too_large_is_not_sent<E: Env>(env: E) {
    let (server, _) = start(&env, ServerConfig::default().max_frame_len(1024)).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let err = client
        .raw()
        .call(
            MethodId::from_name("raw").as_u32(),
            Bytes::from(vec![0u8; 2048]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::RequestTooLarge {
                len: 2048,
                max: 1024
            }
        ),
        "{err}"
    );
    assert!(err.is_not_sent());
    let reply = client
        .raw()
        .call(
            MethodId::from_name("raw").as_u32(),
            Bytes::from(vec![1u8; 1000]),
        )
        .await
        .unwrap();
    assert_eq!(reply.len(), 1000);
}

async fn blocking_callers_from_plain_threads<E: Env>(env: E) {
    let (server, _) = start(&env, ServerConfig::default()).await;
    let client = connect(
        &env,
        server.local_addr().clone(),
        ClientConfig::default().max_in_flight(4),
    )
    .await;
    // Eight threads share a window of four: some of them block on it.
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let id = t * 1000 + i;
                    let got: u64 = client.call_blocking("sleep_echo", &(0u64, id)).unwrap();
                    assert_eq!(got, id);
                }
                let raw = client.raw().call_blocking(
                    MethodId::from_name("raw").as_u32(),
                    Bytes::from_static(b"hi"),
                );
                assert_eq!(raw.unwrap(), Bytes::from_static(b"hi"));
            })
        })
        .collect();
    let finished = Arc::new(AtomicUsize::new(0));
    let watcher = finished.clone();
    std::thread::spawn(move || {
        for thread in threads {
            thread.join().expect("a blocking caller failed");
            watcher.fetch_add(1, Ordering::SeqCst);
        }
    });
    eventually(&env, "blocking callers finish", || {
        finished.load(Ordering::SeqCst) == 8
    })
    .await;
    // A blocking call's timeout works without a runtime in the caller too.
    let unit = flumen::MsgPack::default().encode(&()).unwrap();
    let timed_out = {
        let client = client.clone();
        std::thread::spawn(move || {
            client.raw().call_blocking_with_timeout(
                MethodId::from_name("slow").as_u32(),
                unit,
                Some(Duration::from_millis(50)),
            )
        })
    };
    eventually(&env, "blocking call times out", || timed_out.is_finished()).await;
    assert!(timed_out.join().unwrap().unwrap_err().is_timeout());
}

/// The client alone on a current-thread runtime (its server on a thread and runtime of its
/// own): a blocking call made right after connecting fails at once, though nothing but
/// `connect` has run on this thread yet.
#[test]
fn a_blocking_call_right_after_connecting_fails_at_once() {
    use flumen::{
        rt::{SmolRuntime, TokioRuntime},
        tcp::{SmolTcp, TokioTcp},
        Router, Server, Status,
    };
    let (bound, addr) = std::sync::mpsc::channel();
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let server = std::thread::spawn(move || {
        smol::block_on(async move {
            let rt = SmolRuntime::global();
            let router =
                Router::new().route("echo", |body: ByteBuf| async move { Ok::<_, Status>(body) });
            let any = "127.0.0.1:0".parse().unwrap();
            let server = Server::new(router)
                .bind(&rt, &SmolTcp::default(), &any)
                .await
                .unwrap();
            bound.send(*server.local_addr()).unwrap();
            let _ = stopped.recv().await;
        })
    });
    let addr = addr.recv().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let rt = TokioRuntime::current();
        let client = flumen::Client::connect(&rt, &TokioTcp::default(), &addr)
            .await
            .unwrap();
        let started = Instant::now();
        let body = flumen::MsgPack::default()
            .encode(&ByteBuf::from(vec![1u8]))
            .unwrap();
        let echo = MethodId::from_name("echo").as_u32();
        let refused = client
            .raw()
            .call_blocking_with_timeout(echo, body, Some(Duration::from_secs(5)))
            .unwrap_err();
        assert!(matches!(refused, CallError::BlockingInAsync), "{refused:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    });
    drop(stop);
    server.join().unwrap();
}

/// On a thread that runs the connection's tasks, a blocking call would wait for a reply only
/// this thread could read (it hung past its deadline): it fails at once with a typed error, on
/// the raw, typed and balanced clients, and the connection goes on serving async calls.
async fn a_blocking_call_in_async_code_fails_at_once<E: Env>(env: E)
where
    common::Addr<E>: flumen::balance::Address,
{
    let (server, _) = start(&env, ServerConfig::default()).await;
    let addr = server.local_addr().clone();
    let client = connect(&env, addr.clone(), ClientConfig::default()).await;
    let raw = MethodId::from_name("raw").as_u32();
    let body = Bytes::from_static(b"hi");
    let timeout = Some(Duration::from_secs(20));
    let started = Instant::now();
    // Right after connecting, before any call has been answered here.
    let first = client
        .raw()
        .call_blocking_with_timeout(raw, body.clone(), timeout)
        .unwrap_err();
    assert!(
        matches!(first, CallError::BlockingInAsync),
        "first: {first:?}"
    );
    // After a reply read on this thread.
    assert_eq!(client.raw().call(raw, body.clone()).await.unwrap(), body);
    let refused = client
        .raw()
        .call_blocking_with_timeout(raw, body.clone(), timeout)
        .unwrap_err();
    assert!(
        matches!(refused, CallError::BlockingInAsync),
        "raw: {refused:?}"
    );
    assert!(refused.to_string().contains("await the async method"));
    let typed = client.call_blocking::<_, u64>("sleep_echo", &(0u64, 7u64));
    assert!(
        matches!(typed, Err(flumen::Error::Call(CallError::BlockingInAsync))),
        "typed: {typed:?}"
    );
    let balanced = flumen::Client::balanced(
        &env.rt(),
        env.transport(),
        flumen::balance::discovery::Static::new([addr]),
    );
    let answer = balanced.call_blocking::<_, u64>("sleep_echo", &(0u64, 7u64));
    assert!(
        matches!(answer, Err(flumen::Error::Call(CallError::BlockingInAsync))),
        "balanced: {answer:?}"
    );
    // At once, not at the deadline (which a hang would reach first).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Nothing was sent or held: async calls go on.
    let got: u64 = client.call("sleep_echo", &(0u64, 9u64)).await.unwrap();
    assert_eq!(got, 9);
}

async fn raw_bodies_pass_through<E: Env>(env: E) {
    let (server, _) = start(&env, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let raw = MethodId::from_name("raw").as_u32();
    for len in [0usize, 1, 4096, 4097, 64 * 1024, 1 << 20] {
        let body = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!(
            client.raw().call(raw, body.clone()).await.unwrap(),
            body,
            "len {len}"
        );
    }
}
