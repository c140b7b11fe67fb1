//! The systems under test: how each one serves, and how its callers call.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{atomic::AtomicU64, Arc},
};

use clap::ValueEnum;
use flumen::tls::TlsTransport;
use flumen::{
    balance::{discovery::Static, BalanceConfig},
    rt::{Runtime, SmolRuntime, TokioRuntime},
    shm::{SmolShm, TokioShm},
    stream::{ConnectionStats, Listener, Transport},
    tcp::{SmolTcp, TokioTcp},
    unix::{SmolUnix, TokioUnix},
    Blob, Bytes, Client, ClientConfig, MethodId, Router, Server, ServerConfig, Status,
};
use flumen_quic::QuicTransport;
use serde_bytes::ByteBuf;

use crate::{
    address::{addr_for, socket_path, Address, TransportAddr},
    measure::{Tally, Window},
    pipe,
};

/// What is measured.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum System {
    /// The socket ceiling: no RPC layer at all.
    Pipe,
    /// Flumen, typed calls (MessagePack-encoded byte string).
    Flumen,
    /// Flumen, raw `Bytes` calls (no codec), same server as `flumen`.
    FlumenRaw,
    /// Flumen, typed calls with a `Blob` (MessagePack byte string, decoded without a copy),
    /// same server as `flumen`.
    FlumenBlob,
    /// Flumen, typed calls through a balanced client over the one server (the balancer's
    /// cost), `--connections` per endpoint.
    FlumenBalanced,
    /// Flumen, typed calls through a balanced client over four endpoints: the server's port
    /// on 127.0.0.1 to 127.0.0.4 (it listens on every address), `--connections` each.
    #[value(name = "flumen-balanced-4")]
    FlumenBalanced4,
    /// tarpc 0.38, bincode over TCP (feature `peers`).
    Tarpc,
    /// tonic 0.14, gRPC unary over HTTP/2 (feature `peers`).
    Tonic,
    /// razor-rpc 0.9, msgpack over TCP on orb-tokio, window = in-flight (feature `peers`).
    Razor,
}

impl System {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Pipe => "pipe",
            Self::Flumen => "flumen",
            Self::FlumenRaw => "flumen-raw",
            Self::FlumenBlob => "flumen-blob",
            Self::FlumenBalanced => "flumen-balanced",
            Self::FlumenBalanced4 => "flumen-balanced-4",
            Self::Tarpc => "tarpc",
            Self::Tonic => "tonic",
            Self::Razor => "razor-rpc",
        }
    }

    /// The server process that serves this system (the other Flumen clients share
    /// `flumen`'s).
    pub(crate) fn server(self) -> Self {
        match self {
            Self::FlumenRaw | Self::FlumenBlob | Self::FlumenBalanced | Self::FlumenBalanced4 => {
                Self::Flumen
            }
            other => other,
        }
    }

    /// The endpoints a balanced client of this system spreads over, for a server at `addr`.
    pub(crate) fn endpoints(self, addr: &Address) -> Result<Vec<Address>, String> {
        Ok(match self {
            Self::FlumenBalanced4 => {
                let port = addr.ip()?.port();
                (1..=4)
                    .map(|i| Address::Ip(SocketAddr::from(([127, 0, 0, i], port))))
                    .collect()
            }
            _ => vec![addr.clone()],
        })
    }

    /// Where this system's server listens over `net`: every address for the four-endpoint
    /// client, a fresh socket path over Unix sockets.
    pub(crate) fn listen_addr(self, net: &Net) -> Address {
        match (self, net) {
            (_, Net::Unix | Net::Shm) => Address::Path(socket_path()),
            (Self::FlumenBalanced4, _) => Address::Ip(SocketAddr::from(([0, 0, 0, 0], 0))),
            _ => Address::Ip(SocketAddr::from(([127, 0, 0, 1], 0))),
        }
    }

    /// Peers run on tokio only.
    pub(crate) fn tokio_only(self) -> bool {
        matches!(self, Self::Tarpc | Self::Tonic | Self::Razor)
    }
}

/// The transport between the two sides.
#[derive(Clone, Debug)]
pub(crate) enum Net {
    Tcp,
    /// QUIC, configured for this process's runtime (certificate, trust).
    Quic(Box<QuicTransport>),
    /// TLS over TCP (certificate, trust).
    Tls(Box<TlsTransport<()>>),
    /// Unix domain sockets.
    Unix,
    /// Shared memory (rings in a sealed memfd, a Unix socket beside them; `FLUMEN_SHM_RING` and
    /// `FLUMEN_SHM_SPIN` tune it).
    Shm,
}

/// Shared-memory settings for both the client and the server process: the defaults, or
/// `FLUMEN_SHM_RING` (bytes a ring) and `FLUMEN_SHM_SPIN` (checks before parking) from the
/// environment, for tuning runs.
fn shm_config() -> flumen::shm::ShmConfig {
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    };
    let mut config = flumen::shm::ShmConfig::default();
    if let Some(bytes) = env("FLUMEN_SHM_RING") {
        config = config.ring_capacity(bytes);
    }
    if let Some(checks) = env("FLUMEN_SHM_SPIN") {
        config = config.spin_checks(u32::try_from(checks).unwrap_or(u32::MAX));
    }
    config
}

/// Calls `$body` with the runtime handle and the transport for `$net` on `$spawner`; with
/// `unix: $unix`, evaluates `$unix` instead for the transports addressed by a socket path, Unix
/// sockets and shared memory (for bodies that need an IP address type).
macro_rules! with_transport {
    ($net:expr, $spawner:expr, |$rt:ident, $transport:ident| $body:expr) => {
        with_transport!($net, $spawner, |$rt, $transport| $body, unix: match ($net, $spawner) {
            (Net::Shm, Spawner::Tokio($rt)) => {
                let $transport = TokioShm::new(shm_config());
                $body
            }
            (Net::Shm, Spawner::Smol($rt)) => {
                let $transport = SmolShm::new(shm_config());
                $body
            }
            (_, Spawner::Tokio($rt)) => {
                let $transport = TokioUnix;
                $body
            }
            (_, Spawner::Smol($rt)) => {
                let $transport = SmolUnix;
                $body
            }
        })
    };
    ($net:expr, $spawner:expr, |$rt:ident, $transport:ident| $body:expr, unix: $unix:expr) => {
        match ($net, $spawner) {
            (Net::Tcp, Spawner::Tokio($rt)) => {
                let $transport = TokioTcp::default();
                $body
            }
            (Net::Tcp, Spawner::Smol($rt)) => {
                let $transport = SmolTcp::default();
                $body
            }
            (Net::Quic(quic), Spawner::Tokio($rt)) => {
                let $transport = (**quic).clone();
                $body
            }
            (Net::Quic(quic), Spawner::Smol($rt)) => {
                let $transport = (**quic).clone().spawn_on($rt.clone());
                $body
            }
            (Net::Tls(tls), Spawner::Tokio($rt)) => {
                let $transport = tls.with_inner(TokioTcp::default());
                $body
            }
            (Net::Tls(tls), Spawner::Smol($rt)) => {
                let $transport = tls.with_inner(SmolTcp::default());
                $body
            }
            (Net::Unix | Net::Shm, _) => $unix,
        }
    };
}

/// Which async runtime a side runs on.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rt {
    Tokio,
    Smol,
    /// smol's reactor with `flumen_rt::Workers` for executor (woken tasks stay local).
    SmolW,
}

impl Rt {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Tokio => "tokio",
            Self::Smol => "smol",
            Self::SmolW => "smol-w",
        }
    }

    /// Runs `make(rt)` to completion. With `threads` 0, on one runtime thread: a current-thread
    /// tokio runtime, or a smol executor driven by this thread. Otherwise on a multi-thread
    /// tokio runtime with `threads` workers, or a smol executor driven by `threads` threads, or
    /// `threads` `flumen_rt::Workers` (smol-w: 1 for 0) with the future on this thread.
    pub(crate) fn block_on<T: Send + 'static>(
        self,
        threads: usize,
        make: impl FnOnce(Spawner) -> BoxFuture<T>,
    ) -> T {
        match self {
            Self::Tokio => {
                let runtime = match threads {
                    0 => tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build(),
                    n => tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(n)
                        .enable_all()
                        .build(),
                }
                .expect("tokio runtime");
                let spawner = Spawner::Tokio(TokioRuntime::new(runtime.handle().clone()));
                runtime.block_on(make(spawner))
            }
            Self::Smol => {
                let executor = Arc::new(smol::Executor::new());
                let (stop, stopped) = smol::channel::bounded::<()>(1);
                let helpers: Vec<_> = (1..threads)
                    .map(|_| {
                        let (executor, stopped) = (executor.clone(), stopped.clone());
                        std::thread::spawn(move || {
                            let _ = smol::block_on(executor.run(stopped.recv()));
                        })
                    })
                    .collect();
                let spawner = Spawner::Smol(SmolRuntime::new(executor.clone()));
                let result = smol::block_on(executor.run(make(spawner)));
                drop(stop);
                helpers.into_iter().for_each(|h| drop(h.join()));
                result
            }
            Self::SmolW => {
                let workers = flumen::rt::Workers::new(threads).expect("worker threads");
                smol::block_on(make(Spawner::Smol(workers.runtime())))
            }
        }
    }
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A runtime handle the load and serve code can spawn on, whichever runtime it is.
#[derive(Clone, Debug)]
pub(crate) enum Spawner {
    Tokio(TokioRuntime),
    Smol(SmolRuntime),
}

impl Spawner {
    pub(crate) fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        match self {
            Self::Tokio(rt) => rt.spawn(future),
            Self::Smol(rt) => rt.spawn(future),
        }
    }
}

pub(crate) const ECHO: MethodId = MethodId::from_name("echo");
pub(crate) const ECHO_RAW: MethodId = MethodId::from_name("echo_raw");
pub(crate) const ECHO_BLOB: MethodId = MethodId::from_name("echo_blob");

pub(crate) fn router() -> Router {
    Router::new()
        .route("echo", |body: ByteBuf| async move { Ok::<_, Status>(body) })
        .route(
            "echo_blob",
            |body: Blob| async move { Ok::<_, Status>(body) },
        )
        .route_raw("echo_raw", |request| async move {
            Ok(flumen::Request::into_body(request))
        })
}

/// Binds `addr`, reports the bound address through `bound`, and serves `system` forever.
pub(crate) async fn serve(
    system: System,
    net: &Net,
    spawner: Spawner,
    addr: Address,
    bound: impl FnOnce(Address),
) -> std::io::Result<()> {
    match (system, &spawner) {
        (System::Pipe, _) => {
            with_transport!(net, &spawner, |_rt, transport| serve_pipe(
                transport,
                spawner.clone(),
                addr,
                bound
            )
            .await)
        }
        (System::Flumen | System::FlumenRaw | System::FlumenBlob, _) => {
            with_transport!(net, &spawner, |rt, transport| serve_flumen(
                rt, transport, addr, bound
            )
            .await)
        }
        #[cfg(feature = "peers")]
        (System::Tarpc | System::Tonic | System::Razor, Spawner::Tokio(_)) => {
            let addr = addr.ip().map_err(std::io::Error::other)?;
            crate::peers::serve(system, addr, |bound_at| bound(Address::Ip(bound_at))).await
        }
        _ => Err(std::io::Error::other(format!(
            "{} does not run on this runtime or build",
            system.name()
        ))),
    }
}

/// Serves Flumen over TCP with a server per core: `cores` single-threaded runtimes of
/// `runtime`, the connections spread as `spread` says; returns once bound, the servers
/// running until the process exits.
pub(crate) fn serve_flumen_per_core(
    runtime: Rt,
    cores: usize,
    addr: std::net::SocketAddr,
    spread: flumen::per_core::Spread,
) -> std::io::Result<std::net::SocketAddr> {
    fn start<R: flumen::rt::Net>(
        cores: flumen::per_core::Cores<R>,
        addr: std::net::SocketAddr,
        spread: flumen::per_core::Spread,
    ) -> std::io::Result<std::net::SocketAddr> {
        let server = flumen::per_core::serve_with(
            Server::new(router()),
            &cores,
            &flumen::tcp::Tcp::<R>::default(),
            &addr,
            spread,
        )?;
        let bound = *server.local_addr();
        let server = Arc::new(server);
        let stats = server.clone();
        let _ = SERVER_STATS.set(Box::new(move || stats.stats().io));
        // Both live as long as the process: it ends by `exit`.
        std::mem::forget(server);
        std::mem::forget(cores);
        Ok(bound)
    }
    match runtime {
        Rt::Tokio => start(flumen::per_core::Cores::tokio(cores)?, addr, spread),
        Rt::Smol | Rt::SmolW => start(flumen::per_core::Cores::smol(cores)?, addr, spread),
    }
}

async fn serve_flumen<R: Runtime, T: Transport>(
    rt: &R,
    transport: T,
    addr: Address,
    bound: impl FnOnce(Address),
) -> std::io::Result<()>
where
    T::Addr: TransportAddr,
{
    let addr = addr_for(&transport, &addr).map_err(std::io::Error::other)?;
    let server = Server::new(router())
        .config(ServerConfig::default())
        .bind(rt, &transport, &addr)
        .await?;
    bound(server.local_addr().clone().into_address());
    let server = Arc::new(server);
    let stats = server.clone();
    let _ = SERVER_STATS.set(Box::new(move || stats.stats().io));
    std::future::pending::<()>().await;
    drop(server);
    Ok(())
}

async fn serve_pipe<T: Transport>(
    transport: T,
    spawner: Spawner,
    addr: Address,
    bound: impl FnOnce(Address),
) -> std::io::Result<()>
where
    T::Addr: TransportAddr,
{
    let addr = addr_for(&transport, &addr).map_err(std::io::Error::other)?;
    let mut listener = transport.bind(&addr).await?;
    bound(listener.local_addr()?.into_address());
    let _ = SERVER_STATS.set(Box::new(pipe::stats));
    loop {
        let (connecting, _) = listener.accept().await?;
        spawner.spawn(async move {
            if let Ok((reader, writer)) = connecting.await {
                let _ = pipe::serve(reader, writer).await;
            }
        });
    }
}

/// The I/O counters of the Flumen server this process serves, if it serves one.
pub(crate) static SERVER_STATS: std::sync::OnceLock<
    Box<dyn Fn() -> flumen::stream::ConnectionStats + Send + Sync>,
> = std::sync::OnceLock::new();

/// The load of one run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Load {
    pub(crate) payload: usize,
    pub(crate) in_flight: usize,
    pub(crate) connections: usize,
}

/// Runs the callers of `system` against `addr` until the window ends; returns their tallies.
/// `make_window` is called once every connection is open.
pub(crate) async fn load(
    system: System,
    net: &Net,
    spawner: Spawner,
    addr: Address,
    load: Load,
    make_window: impl FnOnce() -> Window,
    progress: Arc<AtomicU64>,
) -> Result<(Vec<Tally>, Option<ConnectionStats>), String> {
    match system {
        System::Pipe => {
            with_transport!(net, &spawner, |_rt, transport| {
                load_pipe(
                    transport,
                    spawner.clone(),
                    addr,
                    load,
                    make_window,
                    progress,
                )
                .await
                .map(|tallies| (tallies, Some(pipe::stats())))
            })
        }
        System::Flumen | System::FlumenRaw | System::FlumenBlob => {
            let config = ClientConfig::default().max_in_flight(load.in_flight);
            let mut clients = Vec::new();
            for _ in 0..load.connections {
                let client = with_transport!(net, &spawner, |rt, transport| {
                    let addr = addr_for(&transport, &addr)?;
                    Client::connect_with(
                        rt,
                        &transport,
                        &addr,
                        config.clone(),
                        flumen::MsgPack::default(),
                    )
                    .await
                    .map_err(|e| e.to_string())
                });
                clients.push(client?);
            }
            let window = make_window();
            let stats_of = clients.clone();
            let body: Vec<u8> = (0..load.payload).map(|i| i as u8).collect();
            let (typed, bytes) = (ByteBuf::from(body.clone()), Bytes::from(body));
            let blob = Blob::from(bytes.clone());
            let mut tasks: Vec<BoxFuture<Tally>> = Vec::new();
            for client in clients {
                for _ in 0..load.in_flight {
                    let (client, typed, bytes) = (client.clone(), typed.clone(), bytes.clone());
                    let blob = blob.clone();
                    let tally = Tally::new(progress.clone());
                    tasks.push(Box::pin(async move {
                        match system {
                            System::FlumenRaw => call_loop!(window, tally, {
                                client
                                    .raw()
                                    .call(ECHO_RAW.as_u32(), bytes.clone())
                                    .await
                                    .is_ok_and(|r| r == bytes)
                            }),
                            System::FlumenBlob => call_loop!(window, tally, {
                                client
                                    .call::<_, Blob>(ECHO_BLOB, &blob)
                                    .await
                                    .is_ok_and(|r| r == blob)
                            }),
                            _ => call_loop!(window, tally, {
                                client
                                    .call::<_, ByteBuf>(ECHO, &typed)
                                    .await
                                    .is_ok_and(|r| r == typed)
                            }),
                        }
                    }));
                }
            }
            let tallies = run_tasks(&spawner, tasks).await;
            let mut stats = ConnectionStats::default();
            for client in &stats_of {
                let one = client.raw().stats();
                stats.frames_written += one.frames_written;
                stats.writes += one.writes;
            }
            Ok((tallies, Some(stats)))
        }
        System::FlumenBalanced | System::FlumenBalanced4 => {
            let endpoints = system.endpoints(&addr)?;
            let config = BalanceConfig::new()
                .pool_size(load.connections)
                .client(ClientConfig::default().max_in_flight(load.in_flight));
            let client = with_transport!(net, &spawner, |rt, transport| {
                let targets = endpoints
                    .iter()
                    .map(|e| addr_for(&transport, e))
                    .collect::<Result<Vec<_>, _>>()?;
                Client::balanced_with(
                    rt,
                    transport,
                    Static::new(targets),
                    config,
                    flumen::MsgPack::default(),
                )
            }, unix: return Err("balanced clients need IP addresses (socket paths have no text form to balance on)".into()));
            let balancer = client.balancer().cloned().ok_or("not balanced")?;
            // Pools open lazily: call until every connection of every endpoint is open.
            let body: Vec<u8> = (0..load.payload).map(|i| i as u8).collect();
            let typed = ByteBuf::from(body);
            let opened = std::time::Instant::now();
            let open = |stats: flumen::balance::BalanceStats| {
                stats.endpoints.len() == endpoints.len()
                    && stats
                        .endpoints
                        .iter()
                        .all(|e| e.connections == load.connections)
            };
            while !open(balancer.stats()) {
                if opened.elapsed() > std::time::Duration::from_secs(10) {
                    return Err("the balanced client's pools did not open".into());
                }
                client
                    .call::<_, ByteBuf>(ECHO, &typed)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let window = make_window();
            let mut tasks: Vec<BoxFuture<Tally>> = Vec::new();
            for _ in 0..load.connections * endpoints.len() * load.in_flight {
                let (client, typed) = (client.clone(), typed.clone());
                let tally = Tally::new(progress.clone());
                tasks.push(Box::pin(async move {
                    call_loop!(window, tally, {
                        client
                            .call::<_, ByteBuf>(ECHO, &typed)
                            .await
                            .is_ok_and(|r| r == typed)
                    })
                }));
            }
            let tallies = run_tasks(&spawner, tasks).await;
            let mut stats = ConnectionStats::default();
            for endpoint in balancer.stats().endpoints {
                stats.add(&endpoint.io);
            }
            Ok((tallies, Some(stats)))
        }
        #[cfg(feature = "peers")]
        System::Tarpc | System::Tonic | System::Razor => {
            crate::peers::load(system, spawner, addr.ip()?, load, make_window, progress)
                .await
                .map(|tallies| (tallies, None))
        }
        #[cfg(not(feature = "peers"))]
        System::Tarpc | System::Tonic | System::Razor => Err(format!(
            "{} needs flumen-bench built with --features peers",
            system.name()
        )),
    }
}

async fn load_pipe<T: Transport>(
    transport: T,
    spawner: Spawner,
    addr: Address,
    load: Load,
    make_window: impl FnOnce() -> Window,
    progress: Arc<AtomicU64>,
) -> Result<Vec<Tally>, String>
where
    T::Addr: TransportAddr,
{
    let addr = addr_for(&transport, &addr)?;
    let mut conns = Vec::new();
    for _ in 0..load.connections {
        conns.push(transport.connect(&addr).await.map_err(|e| e.to_string())?);
    }
    let window = make_window();
    let (done, results) = smol::channel::unbounded();
    for (reader, writer) in conns {
        let (done, progress) = (done.clone(), progress.clone());
        spawner.spawn(async move {
            let mut tally = Tally::new(progress);
            let result = pipe::load(
                reader,
                writer,
                load.payload,
                load.in_flight,
                window,
                &mut tally,
            )
            .await;
            let _ = done
                .send(result.map(|()| tally).map_err(|e| e.to_string()))
                .await;
        });
    }
    drop(done);
    let mut tallies = Vec::new();
    while let Ok(result) = results.recv().await {
        tallies.push(result?);
    }
    Ok(tallies)
}

/// One caller's loop: makes calls with `$call` (an expression that awaits one call and yields
/// whether its reply was right) until the window ends, and returns the tally.
macro_rules! call_loop {
    ($window:expr, $tally:expr, $call:block) => {{
        let (window, mut tally) = ($window, $tally);
        loop {
            let start = std::time::Instant::now();
            if start >= window.end {
                break tally;
            }
            let ok: bool = async { $call }.await;
            tally.record(&window, start, ok);
        }
    }};
}
pub(crate) use call_loop;

/// Spawns each caller on its own task and collects the tallies.
pub(crate) async fn run_tasks(spawner: &Spawner, tasks: Vec<BoxFuture<Tally>>) -> Vec<Tally> {
    let (done, results) = smol::channel::unbounded();
    for task in tasks {
        let done = done.clone();
        spawner.spawn(async move {
            let _ = done.send(task.await).await;
        });
    }
    drop(done);
    let mut tallies = Vec::new();
    while let Ok(tally) = results.recv().await {
        tallies.push(tally);
    }
    tallies
}
