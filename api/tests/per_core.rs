//! A server per core (`flumen::per_core`), on tokio and on smol: connections spread over its
//! runtimes, each served on one runtime's thread from accept to close; the handle's stats are
//! the sums; a shutdown drains every runtime's calls and closes every connection. Linux: the
//! kernel balances `SO_REUSEPORT` there, and its table of sockets shows the listeners.
#![cfg(target_os = "linux")]

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_lite::{future::zip, FutureExt};

use flumen::{
    balance::{discovery::Static, BalanceConfig, Balancer},
    per_core::{self, Cores, Spread},
    rt::{Net, Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, Tcp, TokioTcp},
    Client, Router, Server, Status,
};

/// Runtimes the server runs.
const CORES: usize = 2;
/// Connections opened at most while looking for one on each runtime: the kernel spreads them
/// by a hash of their addresses, so that all of 64 land on one of two listeners with
/// probability 2^-63.
const MAX_CONNECTIONS: usize = 64;

/// The name of the thread a handler runs on: `flumen-core-N` for a server per core.
fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned()
}

/// `core` names the thread that serves; `hold` waits until `release` is closed; `block` says
/// it runs on `entered` (if given) and blocks its thread until then.
fn router(
    release: smol::channel::Receiver<()>,
    entered: Option<smol::channel::Sender<()>>,
) -> Router {
    let blocked = release.clone();
    Router::new()
        .route("core", |()| async move { Ok::<_, Status>(thread_name()) })
        .route("block", move |()| {
            if let Some(entered) = &entered {
                let _ = entered.try_send(());
            }
            let _ = blocked.recv_blocking();
            async move { Ok::<_, Status>(thread_name()) }
        })
        .route("hold", move |()| {
            let release = release.clone();
            async move {
                let _ = release.recv().await;
                Ok::<_, Status>(thread_name())
            }
        })
}

/// A server per core on `cores`, on loopback, with [`router`], its connections spread as
/// `spread` says.
fn serve_on<R: Net>(
    cores: &Cores<R>,
    held: smol::channel::Receiver<()>,
    spread: Spread,
) -> flumen::ServerHandle<SocketAddr> {
    per_core::serve_with(
        Server::new(router(held, None)),
        cores,
        &Tcp::<R>::default(),
        &SocketAddr::from(([127, 0, 0, 1], 0)),
        spread,
    )
    .unwrap()
}

async fn spreads_and_drains<R: Net, C: Runtime, T: Transport<Addr = SocketAddr>>(
    cores: Cores<R>,
    spread: Spread,
    client_rt: C,
    client_transport: T,
) {
    let (release, held) = smol::channel::bounded::<()>(1);
    let server = serve_on(&cores, held, spread);
    assert_eq!(server.servers(), CORES);
    let addr = *server.local_addr();
    // A listener per runtime, or one handing out.
    let expected = match spread {
        Spread::ReusePort => CORES,
        Spread::HandOut => 1,
    };
    assert_eq!(listeners(addr), expected, "{spread:?}");

    // Connections until one is served on each runtime; each is served on one thread only.
    let mut clients: Vec<(Client, String)> = Vec::new();
    let mut seen = BTreeSet::new();
    // Handed out: past a full round, so that the turn is seen to wrap.
    let at_least = match spread {
        Spread::HandOut => 2 * CORES + 1,
        Spread::ReusePort => 0,
    };
    while seen.len() < CORES || clients.len() < at_least {
        assert!(
            clients.len() < MAX_CONNECTIONS,
            "{} connections, all served on {seen:?}",
            clients.len()
        );
        let client = Client::connect(&client_rt, &client_transport, &addr)
            .await
            .unwrap();
        let core: String = client.call("core", &()).await.unwrap();
        assert!(core.starts_with("flumen-core-"), "served on {core}");
        if spread == Spread::HandOut {
            // Handed out in turn: the n-th connection to the n-th runtime.
            let turn = format!("flumen-core-{}", clients.len() % CORES);
            assert_eq!(core, turn, "connection {} handed out", clients.len());
        }
        for _ in 0..3 {
            let again: String = client.call("core", &()).await.unwrap();
            assert_eq!(again, core, "a connection moved between runtimes");
        }
        seen.insert(core.clone());
        clients.push((client, core));
    }
    // The handle sums the runtimes' servers.
    let stats = server.stats();
    assert_eq!(stats.active, clients.len(), "{stats:?}");
    assert_eq!(stats.accepted, clients.len() as u64, "{stats:?}");
    assert_eq!(server.connections().len(), clients.len());

    // A call held on each runtime, then a shutdown: it waits for both.
    let hold = |core: &String| {
        let (client, _) = clients.iter().find(|(_, c)| c == core).unwrap();
        let client = client.clone();
        async move { client.call::<_, String>("hold", &()).await }
    };
    let [first, second] = [0, 1].map(|i| seen.iter().nth(i).unwrap().clone());
    let drain = async {
        // Once both run, the server drains; the calls go on until released.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.stats().in_flight < CORES {
            assert!(Instant::now() < deadline, "{:?}", server.stats());
            client_rt
                .sleep_until(Instant::now() + Duration::from_millis(2))
                .await;
        }
        let shutdown = server.shutdown(Duration::from_secs(10));
        let release_later = async {
            // Draining: a new call on any connection is refused unrun, on every runtime.
            for (client, core) in &clients {
                let refused = client.call::<_, String>("core", &()).await;
                assert!(
                    refused.as_ref().is_err_and(|e| e.is_not_sent()),
                    "a call on {core} while draining: {refused:?}"
                );
            }
            assert_eq!(server.stats().in_flight, CORES);
            release.close();
        };
        zip(shutdown, release_later).await;
    };
    let ((a, b), ()) = zip(zip(hold(&first), hold(&second)), drain).await;
    let held = [a, b];
    let mut cores_answered: Vec<String> = held.into_iter().map(Result::unwrap).collect();
    cores_answered.sort();
    assert_eq!(cores_answered, seen.into_iter().collect::<Vec<_>>());
    // Every connection closed, on every runtime.
    let stats = server.stats();
    assert_eq!(stats.active, 0, "{stats:?}");
    assert!(server.connections().is_empty());
    // And the listeners: nothing listens on the port any more (a hand-out acceptor stops once
    // the runtimes' servers drop their shares, at its runtime's next turn). Read from the
    // kernel's table, not by connecting: a connect would be accepted by a lingering acceptor
    // and end it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while listening(addr) {
        assert!(Instant::now() < deadline, "still listening after shutdown");
        client_rt
            .sleep_until(Instant::now() + Duration::from_millis(2))
            .await;
    }
}

/// Whether a socket listens on `addr` (IPv4), as the kernel's table of TCP sockets says.
fn listening(addr: SocketAddr) -> bool {
    listeners(addr) > 0
}

/// Sockets listening on `addr` (IPv4), as the kernel's table of TCP sockets says.
fn listeners(addr: SocketAddr) -> usize {
    let SocketAddr::V4(addr) = addr else {
        panic!("IPv4 only: {addr}")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(addr.ip().octets()),
        addr.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("the kernel's TCP table");
    // Columns: slot, local address, remote address, state (0A: listening), ...
    let listening = |line: &&str| {
        let mut columns = line.split_whitespace().skip(1);
        columns.next() == Some(local.as_str()) && columns.nth(1) == Some("0A")
    };
    table.lines().skip(1).filter(listening).count()
}

#[test]
fn linux_spreads_with_reuse_port() {
    // The kernel balances `SO_REUSEPORT` here: no acceptor in between.
    assert_eq!(Spread::native(), Spread::ReusePort);
}

fn spreads_and_drains_on_tokio(spread: Spread) {
    let cores = Cores::tokio(CORES).unwrap();
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = TokioRuntime::new(client.handle().clone());
    client.block_on(spreads_and_drains(cores, spread, rt, TokioTcp::default()));
}

fn spreads_and_drains_on_smol(spread: Spread) {
    let cores = Cores::smol(CORES).unwrap();
    let executor = std::sync::Arc::new(smol::Executor::new());
    let rt = SmolRuntime::new(executor.clone());
    let test = spreads_and_drains(cores, spread, rt, SmolTcp::default());
    smol::block_on(executor.run(test));
}

#[test]
fn a_server_per_core_spreads_and_drains_on_tokio() {
    spreads_and_drains_on_tokio(Spread::ReusePort);
}

#[test]
fn a_server_per_core_spreads_and_drains_on_smol() {
    spreads_and_drains_on_smol(Spread::ReusePort);
}

#[test]
fn a_server_per_core_hands_out_in_turn_and_drains_on_tokio() {
    spreads_and_drains_on_tokio(Spread::HandOut);
}

#[test]
fn a_server_per_core_hands_out_in_turn_and_drains_on_smol() {
    spreads_and_drains_on_smol(Spread::HandOut);
}

/// A connection handed to the second runtime is served by that runtime's reactor alone: calls
/// on it go on while a handler blocks the first runtime's thread (tokio's runtimes each have a
/// reactor; one that held the socket would never wake the call).
#[test]
fn a_handed_out_connection_is_registered_with_its_own_runtime() {
    let cores = Cores::tokio(CORES).unwrap();
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = TokioRuntime::new(client.handle().clone());
    client.block_on(async {
        let (release, held) = smol::channel::bounded::<()>(1);
        let (entered, blocking_runs) = smol::channel::bounded::<()>(1);
        let server = per_core::serve_with(
            Server::new(router(held, Some(entered))),
            &cores,
            &TokioTcp::default(),
            &SocketAddr::from(([127, 0, 0, 1], 0)),
            Spread::HandOut,
        )
        .unwrap();
        let addr = *server.local_addr();
        let mut clients = Vec::new();
        for turn in 0..CORES {
            let client = Client::connect(&rt, &TokioTcp::default(), &addr)
                .await
                .unwrap();
            let core: String = client.call("core", &()).await.unwrap();
            assert_eq!(core, format!("flumen-core-{turn}"));
            clients.push(client);
        }
        let blocking = clients[0].clone();
        let blocked = tokio::spawn(async move { blocking.call::<_, String>("block", &()).await });
        blocking_runs.recv().await.unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            clients[1].call::<_, String>("core", &()),
        )
        .await;
        release.close();
        let answer = answer.expect("a call on the second runtime waited for the first");
        assert_eq!(answer.unwrap(), "flumen-core-1");
        assert_eq!(blocked.await.unwrap().unwrap(), "flumen-core-0");
        server.shutdown(Duration::from_secs(5)).await;
    });
}

/// With every runtime's queue full, the acceptor waits for room (and loses nothing): the
/// connection after `HAND_OUT_QUEUE` each goes out once a runtime takes one.
#[test]
fn a_full_hand_out_waits_for_room() {
    use flumen::stream::Listener;
    use flumen::tcp::HAND_OUT_QUEUE;

    let cores = Cores::tokio(CORES).unwrap();
    let listener = flumen::tcp::std_listener(&SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut shares = TokioTcp::default()
        .hand_out(listener, cores.runtimes())
        .unwrap();
    let total = CORES * HAND_OUT_QUEUE + 1;
    // Completed by the kernel (its backlog), accepted by the acceptor as it can.
    let peers: Vec<_> = (0..total)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let accept = |share: &mut flumen::tcp::HandedOut<TokioRuntime>| {
        let timeout = async {
            smol::Timer::after(Duration::from_secs(10)).await;
            None
        };
        let accepted = async { Some(share.accept().await.map(drop)) };
        futures_lite::future::block_on(accepted.or(timeout))
    };
    // Every queue fills; the last connection waits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while shares.iter().any(|share| share.waiting() < HAND_OUT_QUEUE) {
        assert!(Instant::now() < deadline, "queues never filled: {shares:?}");
        std::thread::yield_now();
    }
    // Each runtime's turn in order; the last connection goes out once the first runtime
    // (its turn) takes one.
    let mut accepted = 0;
    for turn in (0..CORES).cycle().take(total) {
        let got = accept(&mut shares[turn]);
        assert!(
            matches!(got, Some(Ok(()))),
            "connection {accepted} of {total}: {got:?}"
        );
        accepted += 1;
    }
    assert_eq!(accepted, total);
    drop(peers);

    // Once more on one runtime: its queue full, the acceptor waits without keeping the
    // runtime's thread (a task there still runs), and stops when the share is dropped.
    let listener = flumen::tcp::std_listener(&SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let first = &cores.runtimes()[..1];
    let mut share = TokioTcp::default().hand_out(listener, first).unwrap();
    let peers: Vec<_> = (0..=HAND_OUT_QUEUE)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while share[0].waiting() < HAND_OUT_QUEUE {
        assert!(
            Instant::now() < deadline,
            "the queue never filled: {share:?}"
        );
        std::thread::yield_now();
    }
    let (ran, runs) = smol::channel::bounded::<()>(1);
    first[0].spawn(async move {
        let _ = ran.send(()).await;
    });
    let ran = futures_lite::future::block_on(async { runs.recv().await.ok() }.or(async {
        smol::Timer::after(Duration::from_secs(10)).await;
        None
    }));
    assert!(ran.is_some(), "the acceptor keeps its runtime's thread");
    share.clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    while listening(addr) {
        assert!(
            Instant::now() < deadline,
            "a full acceptor outlived its shares"
        );
        std::thread::yield_now();
    }
    drop(peers);
}

/// A runtime that counts the tasks spawned on it.
#[derive(Clone)]
struct Counted {
    rt: TokioRuntime,
    spawned: Arc<AtomicUsize>,
}

impl Runtime for Counted {
    type Sleep = <TokioRuntime as Runtime>::Sleep;

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, future: F) {
        self.spawned.fetch_add(1, Ordering::Relaxed);
        self.rt.spawn(future);
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        self.rt.sleep_until(deadline)
    }
}

#[test]
fn a_balanced_client_spreads_its_connections_over_runtimes() {
    let server_cores = Cores::tokio(CORES).unwrap();
    let client_cores = Cores::tokio(CORES).unwrap();
    let runtimes: Vec<Counted> = client_cores
        .runtimes()
        .iter()
        .map(|rt| Counted {
            rt: rt.clone(),
            spawned: Arc::new(AtomicUsize::new(0)),
        })
        .collect();
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    main.block_on(async {
        // Two endpoints, each a server per core.
        let servers: Vec<_> = (0..2)
            .map(|_| {
                let (_, held) = smol::channel::bounded::<()>(1);
                serve_on(&server_cores, held, Spread::native())
            })
            .collect();
        let pool = 2;
        let balancer = Balancer::spread(
            &runtimes,
            TokioTcp::default(),
            Static::new(servers.iter().map(|server| *server.local_addr())),
            BalanceConfig::default().pool_size(pool),
        );
        let client = Client::from_balancer(balancer, flumen::MsgPack::default());
        // Calls until both pools are full: each endpoint's connections were opened on a
        // runtime of their own.
        let deadline = Instant::now() + Duration::from_secs(10);
        while servers.iter().any(|server| server.stats().active < pool) {
            assert!(Instant::now() < deadline, "pools not full");
            let _: String = client.call("core", &()).await.unwrap();
        }
        let spawned: Vec<usize> = runtimes
            .iter()
            .map(|rt| rt.spawned.load(Ordering::Relaxed))
            .collect();
        assert!(
            spawned.iter().all(|&n| n > 0),
            "tasks spawned on each runtime: {spawned:?}"
        );
        drop(client);
        for server in servers {
            server.shutdown(Duration::from_secs(5)).await;
        }
    });
}

/// Dropping the runtimes ends their servers' tasks: the listeners close (a connection is
/// refused), none left in the port's `SO_REUSEPORT` group (or a hand-out acceptor) to take
/// connections nobody serves.
fn dropped_cores_close_their_listeners<R: Net>(cores: Cores<R>, spread: Spread) {
    let (_release, held) = smol::channel::bounded::<()>(1);
    let server = serve_on(&cores, held, spread);
    let addr = *server.local_addr();
    assert!(std::net::TcpStream::connect(addr).is_ok(), "serving");
    drop(server);
    drop(cores);
    let refused = std::net::TcpStream::connect(addr);
    assert!(refused.is_err(), "a listener outlived its runtime");
}

#[test]
fn dropped_tokio_cores_close_their_listeners() {
    for spread in [Spread::ReusePort, Spread::HandOut] {
        dropped_cores_close_their_listeners(Cores::tokio(CORES).unwrap(), spread);
    }
}

#[test]
fn dropped_smol_cores_close_their_listeners() {
    for spread in [Spread::ReusePort, Spread::HandOut] {
        dropped_cores_close_their_listeners(Cores::smol(CORES).unwrap(), spread);
    }
}

/// A runtime that holds what is spawned on it until [`Deferred::release`]: a server whose
/// accept loop has not run yet.
#[derive(Clone)]
struct Deferred {
    rt: TokioRuntime,
    held: Arc<parking_lot::Mutex<Option<Vec<Task>>>>,
}

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Deferred {
    fn new(rt: TokioRuntime) -> Self {
        Self {
            rt,
            held: Arc::new(parking_lot::Mutex::new(Some(Vec::new()))),
        }
    }

    /// Spawns what was held, and from now on spawns at once.
    fn release(&self) {
        let held = self.held.lock().take().unwrap_or_default();
        held.into_iter().for_each(|task| self.rt.spawn(task));
    }
}

impl Runtime for Deferred {
    type Sleep = <TokioRuntime as Runtime>::Sleep;

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, future: F) {
        match &mut *self.held.lock() {
            Some(held) => held.push(Box::pin(future)),
            None => self.rt.spawn(future),
        }
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        self.rt.sleep_until(deadline)
    }
}

/// Peers already handed to a runtime when its server stops gracefully are served and
/// drained (their hello, then `GoAway`), not closed unanswered with the share: the accept
/// loop, first run after the stop, takes what its queue holds.
#[test]
fn peers_queued_for_a_runtime_are_drained_not_dropped_by_a_shutdown() {
    use flumen::stream::{frame::FrameKind, hello::Hello};
    use flumen::ErrorCode;

    const PEERS: usize = 3;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let rt = TokioRuntime::current();
        let listener = flumen::tcp::std_listener(&SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut shares = TokioTcp::default()
            .hand_out(listener, std::slice::from_ref(&rt))
            .unwrap();
        let share = shares.pop().unwrap();
        let mut peers = Vec::new();
        for _ in 0..PEERS {
            peers.push(
                flumen_peer::connect(&TokioTcp::default(), &addr)
                    .await
                    .unwrap(),
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while share.waiting() < PEERS {
            assert!(Instant::now() < deadline, "never queued: {share:?}");
            rt.sleep_until(Instant::now() + Duration::from_millis(5))
                .await;
        }
        let deferred = Deferred::new(rt.clone());
        let (_release, held) = smol::channel::bounded(1);
        let server = Server::new(router(held, None))
            .serve(&deferred, share)
            .unwrap();
        let mut shutdown = std::pin::pin!(server.shutdown(Duration::from_secs(30)));
        let first = futures_lite::future::poll_once(shutdown.as_mut()).await;
        assert!(first.is_none(), "the accept loop has not run");
        deferred.release();
        for (i, peer) in peers.iter_mut().enumerate() {
            peer.send_hello(Hello::new(1 << 20, 64)).await.unwrap();
            let hello = peer.read_hello().await;
            assert!(hello.is_ok(), "peer {i} got no hello: {hello:?}");
            let frame = peer.next_frame().await.unwrap().expect("a GoAway");
            assert_eq!(frame.header.kind, FrameKind::GoAway, "peer {i}");
            assert_eq!(frame.header.aux, ErrorCode::NO_ERROR.as_u32(), "peer {i}");
        }
        drop(peers);
        shutdown.await;
        assert_eq!(server.stats().accepted, PEERS as u64);
        assert_eq!(server.stats().active, 0);
    });
}
