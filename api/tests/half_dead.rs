//! A peer that vanishes without a FIN, mid-call: the server runs in a network namespace this
//! test makes, reached over a veth pair whose link the test takes down while a call runs.
//! Nothing is sent or answered any more, on either side; only keep-alive (Flumen's pings, or
//! the kernel's `TCP_USER_TIMEOUT`) can tell, and each must tell within a few times its
//! configured window, and not before the window allows. Each test makes and removes its own
//! namespace, and is skipped with a message where it lacks the rights (`CAP_NET_ADMIN`).

mod common;
#[path = "common/external.rs"]
mod external;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{eventually, netns::Netns, run_smol, run_tokio, Env};
use flumen::{
    stream::{Transport, DEFAULT_TICK},
    tcp::{SmolTcp, TcpOptions, TokioTcp},
    Bytes, CallError, Client, ClientConfig, ConnectionError, MsgPack, Router, Server, ServerConfig,
    ServerHandle,
};

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(300);
/// The kernel's limit on unacknowledged data, in the `TCP_USER_TIMEOUT` tests.
const USER_TIMEOUT: Duration = Duration::from_millis(500);
/// The kernel's least retransmission (and zero-window probe) timeout: it looks at the user
/// timeout only when one of those timers fires, so its window is the two together.
const TCP_RTO_MIN: Duration = Duration::from_millis(200);
/// How late past its configured window a peer may be found out, with both cores busy: a few
/// timer wake-ups and task switches, never whole windows.
const SLACK: u32 = 3;

/// Keep-alive's window: a ping after `INTERVAL` of silence, given up `TIMEOUT` later.
const WINDOW: Duration = INTERVAL.saturating_add(TIMEOUT);
/// How late the server's watchdog may wake with both cores busy.
const WATCHDOG_LATE: Duration = Duration::from_millis(100);

/// Asserts that `what` took `took`, at most [`SLACK`] times `window` (a keep-alive that fires
/// late, or never until something else gives up, fails here).
fn within(what: &str, took: Duration, window: Duration) {
    assert!(
        took <= window * SLACK,
        "{what} after {took:?}: more than {SLACK} x its window of {window:?}"
    );
}

/// Counts handlers running; each counts itself out when dropped (finished or stopped).
#[derive(Clone, Default)]
struct Running(Arc<AtomicUsize>);

struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Running {
    fn enter(&self) -> Guard {
        self.0.fetch_add(1, Ordering::SeqCst);
        Guard(self.0.clone())
    }

    fn now(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Starts a server inside `netns` (its listener opened there) running a `hold` handler that
/// never answers.
fn serve_inside<E: Env, T>(
    env: &E,
    netns: &Netns,
    transport: T,
    config: ServerConfig,
    running: &Running,
) -> ServerHandle<SocketAddr>
where
    T: Transport<Addr = SocketAddr> + Clone,
{
    let gauge = running.clone();
    let router = Router::new().route_raw("hold", move |_| {
        let guard = gauge.enter();
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok(Bytes::new())
        }
    });
    let rt = env.rt();
    let addr = SocketAddr::new(netns.inside, 0);
    // A tokio listener registers with the reactor of the runtime it is made in.
    let tokio = tokio::runtime::Handle::try_current().ok();
    netns.run_inside(move || {
        let _entered = tokio.as_ref().map(|handle| handle.enter());
        let bind = Server::new(router)
            .config(config)
            .bind(&rt, &transport, &addr);
        futures_lite::future::block_on(bind).expect("binding inside the namespace")
    })
}

/// A client of `server` without call deadlines, with keep-alive at `interval` (or off).
async fn connect<E: Env, T>(
    env: &E,
    transport: &T,
    server: &ServerHandle<SocketAddr>,
    interval: Option<Duration>,
) -> Client
where
    T: Transport<Addr = SocketAddr>,
{
    let config = ClientConfig::default()
        .default_timeout(None)
        .keepalive(interval, TIMEOUT);
    Client::connect_with(
        &env.rt(),
        transport,
        server.local_addr(),
        config,
        MsgPack::default(),
    )
    .await
    .unwrap()
}

/// Flumen's keep-alive: the link goes down under a call without a deadline; the client fails
/// it with `KeepaliveTimeout`, and the server stops its handler, each within a few times
/// `INTERVAL + TIMEOUT` of the cut, and neither before that window (a ping after `INTERVAL`
/// of silence left unanswered for `TIMEOUT`) has passed since the call began.
async fn keepalive_finds_a_vanished_peer<E: Env, T>(env: E, transport: T, n: u8)
where
    T: Transport<Addr = SocketAddr> + Clone,
{
    let netns = Netns::create(n);
    let running = Running::default();
    let config = ServerConfig::default().keepalive(Some(INTERVAL), TIMEOUT);
    let server = serve_inside(&env, &netns, transport.clone(), config, &running);
    let client = connect(&env, &transport, &server, Some(INTERVAL)).await;
    let call = {
        let client = client.clone();
        async move {
            client
                .raw()
                .call(flumen::MethodId::from_name("hold").as_u32(), Bytes::new())
                .await
        }
    };
    let (done, result) = smol::channel::bounded(1);
    // Both sides count silence from the call's start at the earliest.
    let called = Instant::now();
    env.spawn(async move {
        let _ = done.send(call.await).await;
    });
    eventually(&env, "the handler to start", || running.now() == 1).await;
    // Taken before the cut: the time each side took is measured from no later than the cut.
    let cut = Instant::now();
    netns.link_down();
    // Each side watched apart, so that neither's time includes the other's.
    let client_side = async {
        let outcome = result.recv().await.unwrap();
        (outcome, Instant::now())
    };
    let server_side = async {
        eventually(&env, "the server to stop the handler", || {
            running.now() == 0
        })
        .await;
        Instant::now()
    };
    let ((outcome, client_at), server_at) =
        futures_lite::future::zip(client_side, server_side).await;
    match outcome {
        Err(CallError::Connection(ConnectionError::KeepaliveTimeout(waited))) => {
            assert!(waited >= TIMEOUT, "gave up {waited:?} after the ping");
        }
        other => panic!("expected a keep-alive timeout, got {other:?}"),
    }
    let (client_saw, server_saw) = (client_at - cut, server_at - cut);
    println!(
        "link down: the client failed the call after {client_saw:?}, the server stopped the \
         handler after {server_saw:?} (keep-alive {INTERVAL:?} + {TIMEOUT:?})"
    );
    assert_eq!(
        server.stats().timeouts,
        1,
        "the server's keep-alive closed it"
    );
    // Found out within a few windows of the cut: the last thing either side heard came
    // before it, the ping is due an interval after that, and the peer is given up a timeout
    // after the ping.
    within("the client failed the call", client_saw, WINDOW);
    within("the server stopped the handler", server_saw, WINDOW);
    // And not before the window: the client's clock counts the silence from the call's start
    // (rounded down to its tick), and pings only after an interval of it.
    let client_took = client_at - called;
    assert!(
        client_took + 2 * DEFAULT_TICK >= WINDOW,
        "the client gave up {client_took:?} after the call began, before a ping could go \
         unanswered for {TIMEOUT:?} after {INTERVAL:?} of silence"
    );
    // The server's watchdog starts counting the silence at its first wake after the request,
    // and counts wakes, not time: a wake late under load starts it early by as much.
    let server_took = server_at - called;
    assert!(
        server_took + WATCHDOG_LATE >= WINDOW,
        "the server gave up {server_took:?} after the call began, before a ping could go \
         unanswered for {TIMEOUT:?} after {INTERVAL:?} of silence"
    );
}

/// The kernel's view: with Flumen's keep-alive off, `TCP_USER_TIMEOUT` fails the connection
/// once a request stays unacknowledged past it, and with it the call that was running.
async fn tcp_user_timeout_finds_a_vanished_peer<E: Env, T>(env: E, transport: T, n: u8)
where
    T: Transport<Addr = SocketAddr> + Clone,
{
    let netns = Netns::create(n);
    let running = Running::default();
    let config = ServerConfig::default().keepalive(None, TIMEOUT);
    let server = serve_inside(&env, &netns, transport.clone(), config, &running);
    let client = connect(&env, &transport, &server, None).await;
    let hold = flumen::MethodId::from_name("hold").as_u32();
    let (done, result) = smol::channel::bounded(2);
    let call = |done: smol::channel::Sender<_>| {
        let client = client.clone();
        async move {
            let _ = done.send(client.raw().call(hold, Bytes::new()).await).await;
        }
    };
    env.spawn(call(done.clone()));
    eventually(&env, "the handler to start", || running.now() == 1).await;
    netns.link_down();
    // The second request is never acknowledged: the kernel gives up on the connection
    // `USER_TIMEOUT` after it was sent (it is sent after this instant).
    let sent = Instant::now();
    env.spawn(call(done));
    for _ in 0..2 {
        match result.recv().await.unwrap() {
            Err(CallError::Connection(ConnectionError::Io(e))) => {
                assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
            }
            other => panic!("expected the connection to time out, got {other:?}"),
        }
    }
    let took = sent.elapsed();
    println!("link down: TCP_USER_TIMEOUT ({USER_TIMEOUT:?}) failed both calls after {took:?}");
    within(
        "TCP_USER_TIMEOUT failed the calls",
        took,
        USER_TIMEOUT + TCP_RTO_MIN,
    );
    // Not before: the kernel counts from the request's first transmission (in milliseconds,
    // its timer in ticks of a few).
    assert!(
        took + Duration::from_millis(20) >= USER_TIMEOUT,
        "the connection failed {took:?} after the request, before {USER_TIMEOUT:?}"
    );
}

fn user_timeout() -> TcpOptions {
    TcpOptions::new().user_timeout(Some(USER_TIMEOUT))
}

fn tokio_keepalive_finds_a_vanished_peer() {
    run_tokio(|env: common::TokioEnv| keepalive_finds_a_vanished_peer(env, TokioTcp::default(), 1));
}

fn smol_keepalive_finds_a_vanished_peer() {
    run_smol(|env: common::SmolEnv| keepalive_finds_a_vanished_peer(env, SmolTcp::default(), 2));
}

fn tokio_tcp_user_timeout_finds_a_vanished_peer() {
    run_tokio(|env: common::TokioEnv| {
        tcp_user_timeout_finds_a_vanished_peer(env, TokioTcp::with_options(user_timeout()), 3)
    });
}

fn smol_tcp_user_timeout_finds_a_vanished_peer() {
    run_smol(|env: common::SmolEnv| {
        tcp_user_timeout_finds_a_vanished_peer(env, SmolTcp::with_options(user_timeout()), 4)
    });
}

/// Runs under the harness of common/external.rs: ignored without the rights to make
/// namespaces, a failure then with `FLUMEN_REQUIRE_EXTERNAL=1`.
fn main() -> std::process::ExitCode {
    use external::Needs::Netns;
    external::run(vec![
        (
            "tokio_keepalive_finds_a_vanished_peer",
            Netns,
            tokio_keepalive_finds_a_vanished_peer,
        ),
        (
            "smol_keepalive_finds_a_vanished_peer",
            Netns,
            smol_keepalive_finds_a_vanished_peer,
        ),
        (
            "tokio_tcp_user_timeout_finds_a_vanished_peer",
            Netns,
            tokio_tcp_user_timeout_finds_a_vanished_peer,
        ),
        (
            "smol_tcp_user_timeout_finds_a_vanished_peer",
            Netns,
            smol_tcp_user_timeout_finds_a_vanished_peer,
        ),
    ])
}
