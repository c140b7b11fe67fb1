//! A peer that vanishes without a FIN, mid-call: the server runs in a network namespace this
//! test makes, reached over a veth pair whose link the test takes down while a call runs.
//! Nothing is sent or answered any more, on either side; only keep-alive (Flumen's pings, or
//! the kernel's `TCP_USER_TIMEOUT`) can tell. Each test makes and removes its own namespace,
//! and is skipped with a message where it lacks the rights (`CAP_NET_ADMIN`).

mod common;

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
    stream::Transport,
    tcp::{SmolTcp, TcpOptions, TokioTcp},
    Bytes, CallError, Client, ClientConfig, ConnectionError, MsgPack, Router, Server, ServerConfig,
    ServerHandle,
};

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(300);

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
/// it with `KeepaliveTimeout`, and the server stops its handler, each within about
/// `INTERVAL + TIMEOUT`.
async fn keepalive_finds_a_vanished_peer<E: Env, T>(env: E, transport: T, n: u8)
where
    T: Transport<Addr = SocketAddr> + Clone,
{
    let Some(netns) = Netns::create(n) else {
        return;
    };
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
    env.spawn(async move {
        let _ = done.send(call.await).await;
    });
    eventually(&env, "the handler to start", || running.now() == 1).await;
    netns.link_down();
    let cut = Instant::now();
    let outcome = result.recv().await.unwrap();
    let client_saw = cut.elapsed();
    match outcome {
        Err(CallError::Connection(ConnectionError::KeepaliveTimeout(_))) => {}
        other => panic!("expected a keep-alive timeout, got {other:?}"),
    }
    eventually(&env, "the server to stop the handler", || {
        running.now() == 0
    })
    .await;
    println!(
        "link down: the client failed the call after {client_saw:?}, the server stopped the \
         handler after {:?} (keep-alive {INTERVAL:?} + {TIMEOUT:?})",
        cut.elapsed()
    );
    assert_eq!(
        server.stats().timeouts,
        1,
        "the server's keep-alive closed it"
    );
}

/// The kernel's view: with Flumen's keep-alive off, `TCP_USER_TIMEOUT` fails the connection
/// once a request stays unacknowledged past it, and with it the call that was running.
async fn tcp_user_timeout_finds_a_vanished_peer<E: Env, T>(env: E, transport: T, n: u8)
where
    T: Transport<Addr = SocketAddr> + Clone,
{
    let Some(netns) = Netns::create(n) else {
        return;
    };
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
    env.spawn(call(done));
    // The second request is never acknowledged: the kernel gives up on the connection.
    let cut = Instant::now();
    for _ in 0..2 {
        match result.recv().await.unwrap() {
            Err(CallError::Connection(ConnectionError::Io(e))) => {
                assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
            }
            other => panic!("expected the connection to time out, got {other:?}"),
        }
    }
    println!(
        "link down: TCP_USER_TIMEOUT failed both calls after {:?}",
        cut.elapsed()
    );
}

fn user_timeout() -> TcpOptions {
    TcpOptions::new().user_timeout(Some(Duration::from_millis(500)))
}

#[test]
fn tokio_keepalive_finds_a_vanished_peer() {
    run_tokio(|env: common::TokioEnv| keepalive_finds_a_vanished_peer(env, TokioTcp::default(), 1));
}

#[test]
fn smol_keepalive_finds_a_vanished_peer() {
    run_smol(|env: common::SmolEnv| keepalive_finds_a_vanished_peer(env, SmolTcp::default(), 2));
}

#[test]
fn tokio_tcp_user_timeout_finds_a_vanished_peer() {
    run_tokio(|env: common::TokioEnv| {
        tcp_user_timeout_finds_a_vanished_peer(env, TokioTcp::with_options(user_timeout()), 3)
    });
}

#[test]
fn smol_tcp_user_timeout_finds_a_vanished_peer() {
    run_smol(|env: common::SmolEnv| {
        tcp_user_timeout_finds_a_vanished_peer(env, SmolTcp::with_options(user_timeout()), 4)
    });
}
