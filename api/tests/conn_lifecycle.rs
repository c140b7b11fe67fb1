//! How connections end: server killed, graceful shutdown, idle and write timeouts, client close,
//! and replies that arrive after their call gave up.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{connect, eventually, router, serve, Env, Gauge};
use flumen::{
    stream::{
        frame::{FrameHeader, FrameKind, HEADER_LEN},
        hello::{Hello, HELLO_LEN},
        Listener, Transport,
    },
    CallError, ClientConfig, ConnectionError, ErrorCode, MethodId, ServerConfig,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};

e2e!(
    server_killed_mid_load_fails_every_pending_call,
    graceful_shutdown_finishes_calls_in_flight,
    shutdown_grace_expires,
    idle_connection_is_closed_but_busy_one_is_not,
    peer_that_stops_reading_is_closed,
    client_close_fails_pending_calls,
    late_reply_after_timeout_is_dropped,
    dropping_a_call_stops_its_handler,
    server_enforces_the_callers_deadline,
    client_timer_wakes_for_a_sooner_deadline,
    a_request_crossing_the_drain_is_answered_not_lost,
    a_ping_round_trips_until_the_connection_ends,
    a_peer_accepted_as_shutdown_begins_is_told_goaway_not_dropped,
    an_abort_ends_the_handshakes_under_way,
);

/// Spawns `calls` calls of `method` and returns a channel of their results.
fn spawn_calls<E: Env, Req: serde::Serialize + Send + Sync + Clone + 'static>(
    env: &E,
    client: &flumen::Client,
    calls: usize,
    method: &'static str,
    request: Req,
) -> smol::channel::Receiver<Result<serde::de::IgnoredAny, flumen::Error>> {
    let (done, results) = smol::channel::unbounded();
    for _ in 0..calls {
        let (client, done, request) = (client.clone(), done.clone(), request.clone());
        env.spawn(async move {
            let _ = done.send(client.call(method, &request).await).await;
        });
    }
    results
}

async fn server_killed_mid_load_fails_every_pending_call<E: Env>(env: E) {
    let gauge = Arc::new(Gauge::default());
    let server = serve(&env, router(&env, gauge.clone()), ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let results = spawn_calls(&env, &client, 50, "slow", ());
    // Some quick calls complete first, so the connection is known good under load.
    for i in 0..100u64 {
        let got: u64 = client.call("sleep_echo", &(0u64, i)).await.unwrap();
        assert_eq!(got, i);
    }
    server.abort();
    for _ in 0..50 {
        let err = results.recv().await.unwrap().unwrap_err();
        assert!(
            err.is_connection(),
            "expected a connection error, got {err}"
        );
    }
    let err = client
        .call::<_, u64>("sleep_echo", &(0u64, 1u64))
        .await
        .unwrap_err();
    assert!(err.is_connection() && err.is_not_sent(), "{err}");
}

async fn graceful_shutdown_finishes_calls_in_flight<E: Env>(env: E) {
    let gauge = Arc::new(Gauge::default());
    let server = serve(&env, router(&env, gauge.clone()), ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let (done, results) = smol::channel::unbounded();
    for id in 0..10u64 {
        let (client, done) = (client.clone(), done.clone());
        env.spawn(async move {
            let _ = done
                // Long enough that all ten are running at once on a loaded machine.
                .send((
                    id,
                    client.call::<_, u64>("sleep_echo", &(2000u64, id)).await,
                ))
                .await;
        });
    }
    eventually(&env, "the ten calls to run", || {
        server.stats().in_flight == 10
    })
    .await;
    let started = Instant::now();
    server.shutdown(Duration::from_secs(10)).await;
    for _ in 0..10 {
        let (id, result) = results.recv().await.unwrap();
        assert_eq!(
            result.unwrap(),
            id,
            "calls in flight finish during a graceful shutdown"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited out its grace"
    );
    assert_eq!(server.stats().active, 0);
    // The client saw the GoAway: new calls fail before they are sent, safe to retry elsewhere.
    let err = client
        .call::<_, u64>("sleep_echo", &(0u64, 1u64))
        .await
        .unwrap_err();
    assert!(err.is_not_sent(), "{err}");
}

/// Calls that outlast the grace: shutdown waits the whole grace for them, then stops their
/// handlers and closes; their callers see the connection end.
async fn shutdown_grace_expires<E: Env>(env: E) {
    let gauge = Arc::new(Gauge::default());
    let server = serve(&env, router(&env, gauge.clone()), ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let results = spawn_calls(&env, &client, 3, "gauge_hold", ());
    eventually(&env, "the three calls to run", || {
        gauge.now.load(Ordering::SeqCst) == 3
    })
    .await;
    let grace = Duration::from_millis(100);
    let started = Instant::now();
    server.shutdown(grace).await;
    assert!(
        started.elapsed() >= grace,
        "shutdown did not wait for the grace"
    );
    assert_eq!(server.stats().active, 0);
    for _ in 0..3 {
        let err = results.recv().await.unwrap().unwrap_err();
        assert!(err.is_connection(), "{err}");
    }
    eventually(&env, "the handlers to be stopped", || {
        gauge.now.load(Ordering::SeqCst) == 0
    })
    .await;
}

async fn idle_connection_is_closed_but_busy_one_is_not<E: Env>(env: E) {
    let gauge = Arc::new(Gauge::default());
    // Long enough that a stall of the loaded machine between the connect and the call does
    // not make the busy connection idle.
    let config = ServerConfig::default().idle_timeout(Duration::from_millis(250));
    let server = serve(&env, router(&env, gauge), config).await;
    // A call that runs longer than the idle timeout keeps its connection open.
    let busy = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let got: u64 = busy.call("sleep_echo", &(1_000u64, 5u64)).await.unwrap();
    assert_eq!(got, 5);
    // A quiet one is closed, and its client learns why.
    let idle = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    eventually(&env, "idle connection closed", || idle.is_closed()).await;
    match idle
        .call::<_, u64>("sleep_echo", &(0u64, 1u64))
        .await
        .unwrap_err()
    {
        flumen::Error::Call(CallError::NotSent(ConnectionError::GoAway { code, .. })) => {
            assert_eq!(code, ErrorCode::IDLE_TIMEOUT)
        }
        other => panic!("expected an idle GoAway, got {other}"),
    }
    assert!(server.stats().timeouts >= 1);
}

async fn peer_that_stops_reading_is_closed<E: Env>(env: E) {
    let gauge = Arc::new(Gauge::default());
    let config = ServerConfig::default().write_timeout(Duration::from_millis(100));
    let server = serve(&env, router(&env, gauge), config).await;
    let good = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    // Ask for 32 MiB of echoes and never read a byte of them.
    let (reader, mut writer) = env.transport().connect(server.local_addr()).await.unwrap();
    let body = vec![7u8; 1 << 20];
    let raw = MethodId::from_name("raw").as_u32();
    writer
        .write_all(&Hello::new(u32::MAX, 64).encode())
        .await
        .unwrap();
    let mut header = [0u8; HEADER_LEN];
    for seq in 0..32 {
        let request = FrameHeader {
            method: raw,
            len: body.len() as u32,
            ..FrameHeader::new(FrameKind::Request, seq)
        };
        request.encode(&mut header);
        if writer.write_all(&header).await.is_err() || writer.write_all(&body).await.is_err() {
            break; // The server already gave up on us.
        }
    }
    eventually(&env, "write timeout fires", || server.stats().timeouts >= 1).await;
    eventually(&env, "connection closed", || server.stats().active == 1).await;
    drop((reader, writer));
    let got: u64 = good.call("sleep_echo", &(0u64, 3u64)).await.unwrap();
    assert_eq!(got, 3);
}

async fn client_close_fails_pending_calls<E: Env>(env: E) {
    let gauge = Arc::new(Gauge::default());
    let server = serve(&env, router(&env, gauge.clone()), ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    let results = spawn_calls(&env, &client, 5, "gauge_hold", ());
    eventually(&env, "calls reach the server", || {
        gauge.now.load(Ordering::SeqCst) == 5
    })
    .await;
    client.close();
    for _ in 0..5 {
        match results.recv().await.unwrap().unwrap_err() {
            flumen::Error::Call(CallError::Connection(ConnectionError::Closed)) => {}
            other => panic!("expected a local close, got {other}"),
        }
    }
    // The server notices the client left.
    eventually(&env, "server drops the connection", || {
        server.stats().active == 0
    })
    .await;
}

/// A reply that arrives after its call timed out is dropped, and never taken for the reply of
/// the call made next. A scripted server makes sure the late reply really comes, and comes
/// while the next call (on the same slot) is waiting.
async fn late_reply_after_timeout_is_dropped<E: Env>(env: E) {
    let mut listener = env.transport().bind(&env.addr()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    env.spawn(async move {
        let mut peer = flumen_peer::Peer::accept(&mut listener).await.unwrap();
        peer.send_hello(Hello::new(1 << 20, 64)).await.unwrap();
        peer.read_hello().await.unwrap();
        let first = peer.next_frame().await.unwrap().expect("call 1");
        // The client gives up on call 1 and says so, and makes call 2 (in either order);
        // only then does the reply to call 1 arrive, then call 2's.
        let (mut cancelled, mut second) = (false, None);
        while !cancelled || second.is_none() {
            let frame = peer.next_frame().await.unwrap().expect("a frame");
            match frame.header.kind {
                FrameKind::Cancel => cancelled = frame.header.seq == first.header.seq,
                FrameKind::Request => second = Some(frame),
                other => panic!("unexpected {other:?}"),
            }
        }
        let second = second.expect("call 2");
        assert_ne!(second.header.seq, first.header.seq);
        for (seq, value) in [(first.header.seq, 1u8), (second.header.seq, 2u8)] {
            let reply = FrameHeader {
                method: first.header.method,
                ..FrameHeader::new(FrameKind::Response, seq)
            };
            peer.send_frame(reply, &[value]).await.unwrap();
        }
        let _ = peer.frames_until_close().await;
    });
    // One slot, so that call 2 reuses the slot of call 1.
    let client = connect(&env, addr, ClientConfig::default().max_in_flight(1)).await;
    let err = client
        .call_with_timeout::<_, u64>("late", &(), Some(Duration::from_millis(20)))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let got: u64 = client.call("late", &()).await.unwrap();
    assert_eq!(got, 2, "call 2 got the late reply of call 1");
}

async fn dropping_a_call_stops_its_handler<E: Env>(env: E) {
    let gauge = Arc::new(Gauge::default());
    let server = serve(&env, router(&env, gauge.clone()), ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    // The call runs for 20 s unless stopped; give up on it as soon as the server runs it.
    let call = async { Some(client.call::<_, ()>("gauge_hold", &()).await) };
    let give_up = async {
        eventually(&env, "handler runs", || {
            gauge.now.load(Ordering::SeqCst) == 1
        })
        .await;
        None
    };
    assert!(
        call.or(give_up).await.is_none(),
        "the call cannot finish first"
    );
    // The Cancel frame reaches the server, which drops the handler: its drop guard runs.
    eventually(&env, "handler dropped", || {
        gauge.now.load(Ordering::SeqCst) == 0
    })
    .await;
    let got: u64 = client.call("sleep_echo", &(0u64, 4u64)).await.unwrap();
    assert_eq!(got, 4);
}

async fn server_enforces_the_callers_deadline<E: Env>(env: E) {
    let gauge = Arc::new(Gauge::default());
    let server = serve(&env, router(&env, gauge.clone()), ServerConfig::default()).await;
    // A raw peer that never cancels: only the deadline in the request can stop the handler.
    let (mut reader, mut writer) = env.transport().connect(server.local_addr()).await.unwrap();
    let unit = [0xc0u8]; // MessagePack nil: the handler's `()` argument
    let request = FrameHeader {
        method: MethodId::from_name("gauge_hold").as_u32(),
        len: unit.len() as u32,
        aux: 100, // ms
        ..FrameHeader::new(FrameKind::Request, 42)
    };
    let mut header = [0u8; HEADER_LEN];
    request.encode(&mut header);
    writer
        .write_all(&Hello::new(1 << 20, 8).encode())
        .await
        .unwrap();
    writer.write_all(&header).await.unwrap();
    writer.write_all(&unit).await.unwrap();
    let mut reply = [0u8; HELLO_LEN + HEADER_LEN];
    reader.read_exact(&mut reply).await.unwrap();
    let reply = FrameHeader::decode(reply[HELLO_LEN..].try_into().unwrap(), u32::MAX).unwrap();
    assert_eq!((reply.kind, reply.seq), (FrameKind::Error, 42));
    assert_eq!(ErrorCode::from_u32(reply.aux), ErrorCode::DEADLINE_EXCEEDED);
    eventually(&env, "handler dropped", || {
        gauge.now.load(Ordering::SeqCst) == 0
    })
    .await;
}

/// The client's timer sleeps until the earliest deadline (up to 100 ticks) while calls are
/// pending; a call with a sooner deadline must cut that sleep short and time out within its
/// deadline and a tick. The peer answers the handshake and then nothing, so only the client's
/// own timer can end either call.
async fn client_timer_wakes_for_a_sooner_deadline<E: Env>(env: E) {
    let mut listener = env.transport().bind(&env.addr()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    env.spawn(async move {
        let (connecting, _) = listener.accept().await.unwrap();
        let (mut reader, mut writer) = connecting.await.unwrap();
        writer
            .write_all(&Hello::new(1 << 20, 64).encode())
            .await
            .unwrap();
        writer.flush().await.unwrap();
        let mut sink = [0u8; 1024];
        while let Ok(n @ 1..) = reader.read(&mut sink).await {
            seen.fetch_add(n, Ordering::SeqCst);
        }
        drop((writer, listener));
    });
    // A coarse tick: with only a far deadline pending, the timer sleeps 100 ticks (5 s).
    let tick = Duration::from_millis(50);
    let client = connect(&env, addr, ClientConfig::default().tick(tick)).await;
    let far = client.clone();
    env.spawn(async move {
        let _ = far
            .call_with_timeout::<_, ()>("far", &(), Some(Duration::from_secs(20)))
            .await;
    });
    eventually(&env, "the far call reached the peer", || {
        received.load(Ordering::SeqCst) >= HELLO_LEN + HEADER_LEN
    })
    .await;
    // The timer's first sleep is a tick long; once it has woken from it, the far deadline is
    // its next target, 100 ticks away (or, while it works that out, any new deadline wakes it).
    // (It sleeps only while calls have deadlines, and the far call is the first.)
    eventually(&env, "the timer woke from its first sleep", || {
        client.raw().stats().timer_wakeups >= 1
    })
    .await;
    let timeout = Duration::from_millis(100);
    let started = Instant::now();
    let err = client
        .call_with_timeout::<_, ()>("near", &(), Some(timeout))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(err.is_timeout(), "expected a timeout, got {err}");
    assert!(elapsed >= timeout, "resolved early: {elapsed:?}");
    // Deadline plus one tick, plus slack for a loaded CI machine's scheduler (well under the
    // 5 s the timer would sleep if nothing woke it).
    assert!(
        elapsed < timeout + tick + Duration::from_secs(2),
        "resolved late: {elapsed:?}"
    );
}

/// A request the client wrote before the drain's `GoAway` reached it is answered
/// `SHUTTING_DOWN`, not lost in a close: the server keeps reading until the client leaves (or
/// the drain linger ends for a client that never does), and a client that leaves lets the
/// shutdown finish at once, even when its `GoAway` comes in the same write as the request
/// (the answer is queued before the close).
async fn a_request_crossing_the_drain_is_answered_not_lost<E: Env>(env: E) {
    use flumen_peer::{frame as bytes_of, request};

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Client {
        Leaves,
        Stays,
        LeavesInTheSameWrite,
    }
    for mode in [Client::Leaves, Client::Stays, Client::LeavesInTheSameWrite] {
        let server = serve(&env, common::Echo, ServerConfig::default()).await;
        let mut peer = flumen_peer::connect(&env.transport(), server.local_addr())
            .await
            .unwrap();
        peer.send_hello(Hello::new(1 << 20, 64)).await.unwrap();
        peer.read_hello().await.unwrap();
        let started = Instant::now();
        let shutdown = server.shutdown(Duration::from_secs(30));
        let client = async {
            let frame = peer.next_frame().await.unwrap().unwrap();
            assert_eq!(frame.header.kind, FrameKind::GoAway);
            assert_eq!(frame.header.aux, ErrorCode::NO_ERROR.as_u32());
            // Written as if before the GoAway arrived.
            let late = bytes_of(request(1, 7), b"late");
            let leaving = bytes_of(FrameHeader::new(FrameKind::GoAway, 0), b"");
            if mode == Client::LeavesInTheSameWrite {
                peer.send_bytes(&[late, leaving.clone()].concat())
                    .await
                    .unwrap();
            } else {
                peer.send_bytes(&late).await.unwrap();
            }
            let answer = peer.next_frame().await.unwrap();
            let answer = answer.unwrap_or_else(|| panic!("{mode:?}: closed unanswered"));
            assert_eq!(
                (answer.header.kind, answer.header.seq),
                (FrameKind::Error, 7)
            );
            assert_eq!(answer.header.aux, ErrorCode::SHUTTING_DOWN.as_u32());
            if mode == Client::Leaves {
                peer.send_bytes(&leaving).await.unwrap();
            }
            peer.frames_until_close().await.unwrap()
        };
        let ((), rest) = futures_lite::future::zip(shutdown, client).await;
        assert!(rest.is_empty(), "{rest:?}");
        // Bounds, not timings: far below the 30 s grace either way.
        assert!(started.elapsed() < Duration::from_secs(10), "{mode:?}");
        assert_eq!(server.stats().active, 0);
    }
}

/// `Client::ping` is answered by a live server, and fails once the connection ends.
async fn a_ping_round_trips_until_the_connection_ends<E: Env>(env: E) {
    let server = serve(&env, common::Echo, ServerConfig::default()).await;
    let client = connect(&env, server.local_addr().clone(), ClientConfig::default()).await;
    for _ in 0..3 {
        client.raw().ping().await.unwrap();
    }
    server.abort();
    eventually(&env, "the client to see the connection end", || {
        client.is_closed()
    })
    .await;
    assert!(client.raw().ping().await.is_err());
}

/// A listener whose connections finish their handshake only once `gate` closes: a peer caught
/// between its accept and its first frame when the server stops. Each message on `gate`
/// wakes the handshake, which counts it in `knocks` and waits on.
struct Held<L> {
    inner: L,
    gate: smol::channel::Receiver<()>,
    knocks: Arc<AtomicUsize>,
}

type Halves<L> = (<L as Listener>::Reader, <L as Listener>::Writer);

impl<L: Listener> Listener for Held<L> {
    type Addr = L::Addr;
    type Reader = L::Reader;
    type Writer = L::Writer;
    type Connecting =
        std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Halves<L>>> + Send>>;

    async fn accept(&mut self) -> std::io::Result<(Self::Connecting, Self::Addr)> {
        let (connecting, addr) = self.inner.accept().await?;
        let (gate, knocks) = (self.gate.clone(), self.knocks.clone());
        let held: Self::Connecting = Box::pin(async move {
            let halves = connecting.await?;
            while gate.recv().await.is_ok() {
                knocks.fetch_add(1, Ordering::SeqCst);
            }
            Ok(halves)
        });
        Ok((held, addr))
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A server on a [`Held`] listener with `config`, and a client connecting to it, its peer
/// accepted and its handshake held: messages on `open` wake the handshake (counted in
/// `knocks`), dropping `open` lets it finish, and `connected` gives the connect's outcome.
struct HeldPeer<A> {
    server: flumen::ServerHandle<A>,
    open: smol::channel::Sender<()>,
    knocks: Arc<AtomicUsize>,
    connected: smol::channel::Receiver<Result<flumen::Client, flumen::ConnectError>>,
}

async fn held_peer<E: Env>(env: &E, config: ServerConfig) -> HeldPeer<common::Addr<E>> {
    let (open, gate) = smol::channel::bounded::<()>(1);
    let knocks = Arc::new(AtomicUsize::new(0));
    let inner = env.transport().bind(&env.addr()).await.unwrap();
    let held = Held {
        inner,
        gate,
        knocks: knocks.clone(),
    };
    let server = flumen::Server::new(common::Echo)
        .config(config)
        .serve(&env.rt(), held)
        .unwrap();
    let (rt, transport, addr) = (env.rt(), env.transport(), server.local_addr().clone());
    let (done, connected) = smol::channel::bounded(1);
    env.spawn(async move {
        let client = flumen::Client::connect(&rt, &transport, &addr).await;
        let _ = done.send(client).await;
    });
    eventually(env, "the peer accepted", || server.stats().accepted == 1).await;
    HeldPeer {
        server,
        open,
        knocks,
        connected,
    }
}

/// A graceful shutdown that begins while a peer is being accepted (a restart's old process,
/// which shares its listener with the new one) serves that peer like the others: its hello,
/// then `GoAway`. Its connect succeeds and its calls are refused unrun, so a balanced client
/// goes elsewhere at once; a connection dropped before its hello would fail the connect, and
/// the balancer would fail calls while it backs off.
async fn a_peer_accepted_as_shutdown_begins_is_told_goaway_not_dropped<E: Env>(env: E) {
    let HeldPeer {
        server,
        open,
        knocks,
        connected,
    } = held_peer(&env, ServerConfig::default()).await;
    let started = Instant::now();
    let mut shutdown = std::pin::pin!(server.shutdown(Duration::from_secs(30)));
    // Its first poll stops accepting and starts the drain.
    let first = futures_lite::future::poll_once(shutdown.as_mut()).await;
    assert!(first.is_none());
    // The handshake's task runs again, with the drain under way, and goes on; the shutdown,
    // polled meanwhile, waits for it.
    open.send(()).await.unwrap();
    let knocked = eventually(&env, "the handshake polled in the drain", || {
        knocks.load(Ordering::SeqCst) == 1 || server.stats().handshake_failures > 0
    });
    let resolved = async {
        shutdown.as_mut().await;
        panic!("the shutdown ended with a handshake under way");
    };
    knocked.or(resolved).await;
    assert_eq!(server.stats().handshake_failures, 0, "the drain ended it");
    drop(open); // the handshake finishes
    let client = connected.recv().await.unwrap();
    let client = client.expect("connected, not dropped");
    // The client, told GoAway with no call running, leaves: the drain ends well before the
    // grace (a bound, not a timing).
    shutdown.await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "drained by its client");
    assert_eq!(server.stats().active, 0);
    let refused = client.call::<_, u32>("echo", &1u32).await.unwrap_err();
    // Refused for the drain: not a connection closed without a word.
    let drained = matches!(
        &refused,
        flumen::Error::Call(CallError::NotSent(ConnectionError::GoAway { code, .. }))
            if *code == ErrorCode::NO_ERROR
    );
    assert!(drained, "{refused}");
}

/// An abort, unlike a graceful shutdown, ends the handshakes under way at once: their peers'
/// connects fail, and the abort does not wait for the handshake timeout.
async fn an_abort_ends_the_handshakes_under_way<E: Env>(env: E) {
    let config = ServerConfig::default().handshake_timeout(Duration::from_secs(600));
    let HeldPeer {
        server,
        open,
        connected,
        ..
    } = held_peer(&env, config).await;
    server.abort();
    eventually(&env, "the handshake ended", || {
        server.stats().handshake_failures == 1
    })
    .await;
    let refused = connected.recv().await.unwrap();
    assert!(refused.is_err(), "connected to an aborted server");
    // Nothing is left counted: a shutdown now has nothing to wait for.
    let stuck = async {
        env.sleep(Duration::from_secs(10)).await;
        panic!("the shutdown waits for a handshake slot never given back");
    };
    server.shutdown(Duration::ZERO).or(stuck).await;
    drop(open);
}
