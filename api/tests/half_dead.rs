//! A peer that vanishes without a FIN, mid-call: the server runs in a network namespace this
//! test makes, reached over a veth pair whose link the test takes down while a call runs.
//! Nothing is sent or answered any more, on either side; only keep-alive (Flumen's pings, or
//! the kernel's `TCP_USER_TIMEOUT`) can tell. Each test makes and removes its own namespace,
//! and is skipped with a message where it lacks the rights (`CAP_NET_ADMIN`).
#![allow(unsafe_code)]

mod common;

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{eventually, run_smol, run_tokio, Env};
use flumen::{
    stream::Transport,
    tcp::{SmolTcp, TcpOptions, TokioTcp},
    Bytes, CallError, Client, ClientConfig, ConnectionError, MsgPack, Router, Server, ServerConfig,
    ServerHandle,
};

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(300);

/// A network namespace joined to this one by a veth pair: `10.213.N.1` here, `10.213.N.2`
/// inside. Removed (with the pair) on drop.
struct Netns {
    name: String,
    host_if: String,
    inside: std::net::IpAddr,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success())
}

impl Netns {
    /// Makes namespace number `n` (distinct per test, so tests can run at once), or `None`
    /// without the rights.
    fn create(n: u8) -> Option<Self> {
        let pid = std::process::id() % 100_000;
        let name = format!("flumen-{pid}-{n}");
        if !ip(&["netns", "add", &name]) {
            eprintln!(
                "skipped: cannot create a network namespace (needs CAP_NET_ADMIN and iproute2)"
            );
            return None;
        }
        let host_if = format!("fh{pid}x{n}");
        let inner_if = format!("fi{pid}x{n}");
        let netns = Self {
            name,
            host_if,
            inside: format!("10.213.{n}.2").parse().ok()?,
        };
        let (host, inside) = (format!("10.213.{n}.1/24"), format!("10.213.{n}.2/24"));
        let exec = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &netns.name, "ip"];
            full.extend_from_slice(args);
            ip(&full)
        };
        let ok = ip(&[
            "link",
            "add",
            &netns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inner_if,
        ]) && ip(&["link", "set", &inner_if, "netns", &netns.name])
            && ip(&["addr", "add", &host, "dev", &netns.host_if])
            && ip(&["link", "set", &netns.host_if, "up"])
            && exec(&["addr", "add", &inside, "dev", &inner_if])
            && exec(&["link", "set", &inner_if, "up"])
            && exec(&["link", "set", "lo", "up"]);
        assert!(ok, "setting up namespace {} failed", netns.name);
        Some(netns)
    }

    /// Cuts the link: from now on nothing crosses it either way, and nobody is told.
    fn link_down(&self) {
        assert!(ip(&["link", "set", &self.host_if, "down"]));
    }

    /// Runs `f` on a thread that joined the namespace: sockets it opens live there.
    fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("the namespace's file");
            // SAFETY: `setns` with a valid namespace file descriptor only changes this
            // thread's network namespace; the thread is ours and ends after `f`.
            let joined = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["link", "del", &self.host_if]);
        ip(&["netns", "del", &self.name]);
    }
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
