//! Keep-alive: a peer that goes silent mid-call (a frozen process, a host gone without a FIN)
//! is found out by pings, on both sides, on every transport: within a few times the configured
//! window (a ping after `INTERVAL` of silence, given up `TIMEOUT` later), and not before it.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{connect, eventually, serve, Env};
use flumen::{
    stream::{
        frame::{FrameHeader, FrameKind},
        hello::Hello,
        Listener, Transport, DEFAULT_TICK,
    },
    Bytes, CallError, ClientConfig, ConnectionError, ErrorCode, MethodId, Router, ServerConfig,
};

e2e!(
    client_fails_calls_to_a_silent_server,
    server_stops_handlers_of_a_silent_client,
    a_busy_connection_is_never_pinged,
);

const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(200);
/// Keep-alive's window: a ping after `INTERVAL` of silence, given up `TIMEOUT` later.
const WINDOW: Duration = INTERVAL.saturating_add(TIMEOUT);
/// How late the server's watchdog may wake with both cores busy.
const WATCHDOG_LATE: Duration = Duration::from_millis(100);
/// How late past its window a silent peer may be found out, with both cores busy: a few
/// timer wake-ups and task switches, never whole windows.
const SLACK: u32 = 3;

/// Asserts that `what` took at most [`SLACK`] windows (a keep-alive that fires late, or never
/// until something else gives up, fails here).
fn within_slack(what: &str, took: Duration) {
    assert!(
        took <= WINDOW * SLACK,
        "{what} after {took:?}: more than {SLACK} x the keep-alive window of {WINDOW:?}"
    );
}

/// A server that reads the hello and the first call, then never reads or writes again, and
/// keeps the connection open: the client's only way to know is keep-alive.
async fn client_fails_calls_to_a_silent_server<E: Env>(env: E) {
    let mut listener = env.transport().bind(&env.addr()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (held, hold) = smol::channel::bounded(1);
    env.spawn(async move {
        let mut peer = flumen_peer::Peer::accept(&mut listener).await.unwrap();
        peer.send_hello(Hello::new(1 << 20, 64)).await.unwrap();
        peer.read_hello().await.unwrap();
        peer.next_frame().await.unwrap().expect("the call");
        // Frozen, with the connection open, until the test ends.
        let _ = held.send(peer).await;
    });
    let config = ClientConfig::default()
        .default_timeout(None)
        .keepalive(Some(INTERVAL), TIMEOUT);
    let client = connect(&env, addr, config).await;
    // The client counts silence from the call's start at the earliest.
    let called = Instant::now();
    let err = client
        .call::<_, u64>("echo", &1u64)
        .await
        .expect_err("the call fails");
    let took = called.elapsed();
    match err {
        flumen::Error::Call(CallError::Connection(ConnectionError::KeepaliveTimeout(waited))) => {
            assert!(waited >= TIMEOUT, "gave up {waited:?} after the ping");
        }
        other => panic!("expected a keep-alive timeout, got {other}"),
    }
    within_slack("the client failed the call", took);
    // Not before the window: a ping after an interval of silence, then a whole timeout (the
    // client's clock rounds the start of the silence down to its tick).
    assert!(
        took + 2 * DEFAULT_TICK >= WINDOW,
        "the client gave up {took:?} after the call began, within the keep-alive window"
    );
    drop(hold);
}

/// A client that sends a call, then never reads or writes again: the server pings it, gets no
/// answer, says why in a `GoAway`, and stops the call's handler.
async fn server_stops_handlers_of_a_silent_client<E: Env>(env: E) {
    let running = Arc::new(AtomicUsize::new(0));
    let gauge = running.clone();
    let router = Router::new().route_raw("hold", move |_| {
        let guard = Running::enter(&gauge);
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok(Bytes::new())
        }
    });
    let (server, mut peer) = server_and_peer(&env, router).await;
    let request = flumen_peer::request(MethodId::from_name("hold").as_u32(), 1);
    // The server counts silence from the request's arrival at the earliest.
    let sent = Instant::now();
    peer.send_frame(request, b"").await.unwrap();
    eventually(&env, "the handler to start", || {
        running.load(Ordering::SeqCst) == 1
    })
    .await;
    // Silent from here on: the handler must be stopped by keep-alive alone.
    eventually(&env, "the handler to be stopped", || {
        running.load(Ordering::SeqCst) == 0
    })
    .await;
    let took = sent.elapsed();
    within_slack("the server stopped the handler", took);
    // Not before the window: the watchdog starts counting the silence at its first wake after
    // the request, and counts wakes, not time: a wake late under load starts it early by as
    // much.
    assert!(
        took + WATCHDOG_LATE >= WINDOW,
        "the server gave up {took:?} after the request, within the keep-alive window"
    );
    peer.read_hello().await.unwrap();
    let frames = peer.frames_until_close().await.unwrap();
    let kinds: Vec<_> = frames.iter().map(|f| f.header.kind).collect();
    assert_eq!(kinds, [FrameKind::Ping, FrameKind::GoAway], "{frames:?}");
    let go_away = &frames[1].header;
    assert_eq!(
        ErrorCode::from_u32(go_away.aux),
        ErrorCode::KEEPALIVE_TIMEOUT
    );
    assert_eq!(server.stats().timeouts, 1);
}

/// Under traffic, the peer's frames are proof of life: no ping is sent, however long the
/// connection runs with a call in flight, as long as the client keeps sending.
async fn a_busy_connection_is_never_pinged<E: Env>(env: E) {
    let router = Router::new()
        .route("echo", |n: u64| async move { Ok::<_, flumen::Status>(n) })
        .route_raw("hold", |_| async move {
            std::future::pending::<()>().await;
            Ok(Bytes::new())
        });
    let (_server, mut peer) = server_and_peer(&env, router).await;
    peer.read_hello().await.unwrap();
    // A call in flight all along, so that keep-alive is armed...
    let hold = MethodId::from_name("hold").as_u32();
    peer.send_frame(flumen_peer::request(hold, 0), b"")
        .await
        .unwrap();
    // ...and calls going back and forth for ten keep-alive intervals.
    let echo = MethodId::from_name("echo").as_u32();
    let mut seq = 0;
    // A watchdog delayed by a loaded machine catches up on the ticks it missed, and may see
    // one stretch without reads: one ping is forgiven (and answered); a keep-alive that
    // ignored the traffic would ping about ten times.
    let mut pings = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < INTERVAL * 10 {
        seq += 1;
        peer.send_frame(flumen_peer::request(echo, seq), &[0x05])
            .await
            .unwrap();
        let mut reply = peer.next_frame().await.unwrap().expect("a reply");
        while reply.header.kind == FrameKind::Ping {
            pings += 1;
            assert!(pings <= 1, "pinged {pings} times while calls kept coming");
            let pong = FrameHeader::new(FrameKind::Pong, reply.header.seq);
            peer.send_frame(pong, &reply.body).await.unwrap();
            reply = peer.next_frame().await.unwrap().expect("a reply");
        }
        assert_eq!(
            (reply.header.kind, reply.header.seq),
            (FrameKind::Response, seq),
            "only replies arrive"
        );
        // Slower than the watchdog, so that it looks at the connection between calls.
        env.sleep(Duration::from_millis(10)).await;
    }
    peer.send_frame(FrameHeader::new(FrameKind::GoAway, 0), b"")
        .await
        .unwrap();
}

/// A server with short keep-alive, and a raw peer that sent it a hello (the server's hello is
/// left unread).
async fn server_and_peer<E: Env>(
    env: &E,
    router: Router,
) -> (
    flumen::ServerHandle<common::Addr<E>>,
    flumen_peer::TransportPeer<E::Tr>,
) {
    let config = ServerConfig::default().keepalive(Some(INTERVAL), TIMEOUT);
    let server = serve(env, router, config).await;
    let mut peer = flumen_peer::connect(&env.transport(), server.local_addr())
        .await
        .unwrap();
    peer.send_hello(Hello::new(1 << 20, 64)).await.unwrap();
    (server, peer)
}

/// Counts a handler as running until it is dropped.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
