//! Paths of PROTOCOL.md that only a misbehaving or unlucky peer reaches: the in-flight limit
//! (`OVERLOADED`), requests read while draining (`SHUTTING_DOWN`), replies over the caller's
//! limit (`RESPONSE_TOO_LARGE`), malformed metadata (`BAD_REQUEST`), a connect that never
//! completes, and a hello with a zero frame limit. On every runtime and transport.

mod common;

use std::time::Duration;

use common::{connect, eventually, serve, Env};
use flumen::{
    stream::{
        frame::{flags, FrameHeader, FrameKind},
        hello::{Hello, HelloError},
        Listener, Transport,
    },
    Bytes, ClientConfig, ConnectError, ErrorCode, MethodId, Router, ServerConfig,
};

e2e_and_per_core!(
    requests_past_the_in_flight_limit_are_overloaded,
    requests_read_while_draining_are_refused,
    replies_over_the_callers_limit_are_refused,
    malformed_metadata_is_a_bad_request,
    connect_timeout_bounds_a_server_that_never_answers,
    a_hello_with_a_zero_frame_limit_is_refused,
);

fn method(name: &str) -> u32 {
    MethodId::from_name(name).as_u32()
}

/// `hold` never answers (until cancelled), `big` answers 4 KiB, `echo` echoes.
fn router() -> Router {
    Router::new()
        .route_raw("hold", |_| async move {
            std::future::pending::<()>().await;
            Ok(Bytes::new())
        })
        .route_raw("big", |_| async move { Ok(Bytes::from(vec![7u8; 4096])) })
        .route_raw("echo", |request| async move { Ok(request.into_body()) })
}

/// A raw peer that has exchanged hellos with the server at `addr`.
async fn peer<E: Env>(env: &E, addr: &common::Addr<E>) -> flumen_peer::TransportPeer<E::Tr> {
    let mut peer = flumen_peer::connect(&env.transport(), addr).await.unwrap();
    peer.send_hello(Hello::new(1 << 20, 64)).await.unwrap();
    peer.read_hello().await.unwrap();
    peer
}

/// A peer that ignores the server's announced limit gets `OVERLOADED` for the call past it,
/// without the call running; the connection stays up.
async fn requests_past_the_in_flight_limit_are_overloaded<E: Env>(env: E) {
    let server = serve(&env, router(), ServerConfig::default().max_in_flight(2)).await;
    let mut peer = peer(&env, server.local_addr()).await;
    for seq in 1..=3 {
        peer.send_frame(flumen_peer::request(method("hold"), seq), b"")
            .await
            .unwrap();
    }
    let reply = peer.next_frame().await.unwrap().expect("a reply");
    assert_eq!((reply.header.kind, reply.header.seq), (FrameKind::Error, 3));
    assert_eq!(ErrorCode::from_u32(reply.header.aux), ErrorCode::OVERLOADED);
    assert_eq!(server.stats().in_flight, 2, "the third call did not run");
    // Room again once a call ends.
    peer.send_frame(FrameHeader::new(FrameKind::Cancel, 1), b"")
        .await
        .unwrap();
    eventually(&env, "the cancelled call to end", || {
        server.stats().in_flight == 1
    })
    .await;
    peer.send_frame(flumen_peer::request(method("echo"), 4), b"hi")
        .await
        .unwrap();
    let reply = peer.next_frame().await.unwrap().expect("a reply");
    assert_eq!(
        (reply.header.kind, reply.header.seq),
        (FrameKind::Response, 4)
    );
}

/// Once draining, the server answers requests it still reads with `SHUTTING_DOWN` (they did
/// not run), finishes the call it was running, then closes.
async fn requests_read_while_draining_are_refused<E: Env>(env: E) {
    let server = std::sync::Arc::new(serve(&env, router(), ServerConfig::default()).await);
    let mut peer = peer(&env, server.local_addr()).await;
    peer.send_frame(flumen_peer::request(method("hold"), 1), b"")
        .await
        .unwrap();
    eventually(&env, "the call to run", || server.stats().in_flight == 1).await;
    let (stopped, shut) = smol::channel::bounded(1);
    let draining = server.clone();
    env.spawn(async move {
        draining.shutdown(Duration::from_secs(30)).await;
        let _ = stopped.send(()).await;
    });
    let go_away = peer.next_frame().await.unwrap().expect("the GoAway");
    assert_eq!(go_away.header.kind, FrameKind::GoAway);
    assert_eq!(ErrorCode::from_u32(go_away.header.aux), ErrorCode::NO_ERROR);
    peer.send_frame(flumen_peer::request(method("echo"), 2), b"late")
        .await
        .unwrap();
    let refused = peer.next_frame().await.unwrap().expect("a reply");
    assert_eq!(
        (refused.header.kind, refused.header.seq),
        (FrameKind::Error, 2)
    );
    assert_eq!(
        ErrorCode::from_u32(refused.header.aux),
        ErrorCode::SHUTTING_DOWN
    );
    // The running call ends (here: cancelled); with nothing left, the server closes.
    peer.send_frame(FrameHeader::new(FrameKind::Cancel, 1), b"")
        .await
        .unwrap();
    assert!(peer.frames_until_close().await.unwrap().is_empty());
    shut.recv().await.unwrap();
}

/// A reply longer than the caller's announced `max_frame_len` is not sent; the caller gets
/// `RESPONSE_TOO_LARGE` instead, and the connection stays up.
async fn replies_over_the_callers_limit_are_refused<E: Env>(env: E) {
    let server = serve(&env, router(), ServerConfig::default()).await;
    let client = connect(
        &env,
        server.local_addr().clone(),
        ClientConfig::default().max_frame_len(1024),
    )
    .await;
    let err = client
        .raw()
        .call(method("big"), Bytes::new())
        .await
        .unwrap_err();
    match err {
        flumen::CallError::Remote { code, .. } => assert_eq!(code, ErrorCode::RESPONSE_TOO_LARGE),
        other => panic!("expected RESPONSE_TOO_LARGE, got {other}"),
    }
    let echoed = client
        .raw()
        .call(method("echo"), Bytes::from_static(b"still here"))
        .await
        .unwrap();
    assert_eq!(&echoed[..], b"still here");
}

/// A metadata block that is cut short is answered `BAD_REQUEST` (the call does not run);
/// the connection stays up.
async fn malformed_metadata_is_a_bad_request<E: Env>(env: E) {
    let server = serve(&env, router(), ServerConfig::default()).await;
    let mut peer = peer(&env, server.local_addr()).await;
    let mut block = flumen_peer::metadata_block(2, &[(b"key", b"value"), (b"k2", b"v2")]);
    // Declares the whole block, carries half of it.
    block.truncate(block.len() / 2);
    let request = FrameHeader {
        flags: flags::METADATA,
        ..flumen_peer::request(method("echo"), 1)
    };
    peer.send_frame(request, &block).await.unwrap();
    let reply = peer.next_frame().await.unwrap().expect("a reply");
    assert_eq!((reply.header.kind, reply.header.seq), (FrameKind::Error, 1));
    assert_eq!(
        ErrorCode::from_u32(reply.header.aux),
        ErrorCode::BAD_REQUEST
    );
    peer.send_frame(flumen_peer::request(method("echo"), 2), b"ok")
        .await
        .unwrap();
    let reply = peer.next_frame().await.unwrap().expect("a reply");
    assert_eq!(
        (reply.header.kind, &reply.body[..]),
        (FrameKind::Response, &b"ok"[..])
    );
}

/// A listener that takes connections and never answers: connecting gives up after
/// `connect_timeout`, with `ConnectError::Timeout`.
async fn connect_timeout_bounds_a_server_that_never_answers<E: Env>(env: E) {
    let listener = env.transport().bind(&env.addr()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let timeout = Duration::from_millis(100);
    let err = flumen::Client::connect_with(
        &env.rt(),
        &env.transport(),
        &addr,
        ClientConfig::default().connect_timeout(timeout),
        flumen::MsgPack::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ConnectError::Timeout(t) if t == timeout),
        "{err}"
    );
    drop(listener);
}

/// A server hello that announces `max_frame_len = 0` (no request could ever be sent) fails
/// the connect with a handshake error.
async fn a_hello_with_a_zero_frame_limit_is_refused<E: Env>(env: E) {
    let mut listener = env.transport().bind(&env.addr()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    env.spawn(async move {
        let mut peer = flumen_peer::Peer::accept(&mut listener).await.unwrap();
        peer.send_hello(Hello::new(0, 64)).await.unwrap();
        let _ = peer.frames_until_close().await;
    });
    let err = flumen::Client::connect(&env.rt(), &env.transport(), &addr)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Handshake(HelloError::ZeroLimit)),
        "{err}"
    );
}
