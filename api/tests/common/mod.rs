//! The harness the end-to-end suites share: one `Env` per runtime, and the `e2e!` macro that
//! generates every test once for tokio and once for smol.
#![allow(dead_code, unreachable_pub)]

pub mod netns;

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use std::sync::atomic::{AtomicUsize, Ordering};

use flumen::{
    inproc::{InProc, InProcAddr},
    per_core::{self, Cores, Spread},
    rt::{Net, Runtime, SmolRuntime, TokioRuntime},
    shm::{SmolShm, TokioShm},
    stream::Transport,
    tcp::{SmolTcp, Tcp, TokioTcp},
    unix::{SmolUnix, TokioUnix},
    ClientConfig, Dispatch, Request, Router, Server, ServerConfig, ServerHandle, Status,
};
use flumen_quic::QuicTransport;
use flumen_tls::{DevCa, TlsTransport};
use futures_lite::FutureExt;
use serde_bytes::ByteBuf;

/// An environment whose transport is addressed by IP (TCP, TLS, QUIC): for tests that use
/// IP addresses themselves (raw peers over TCP, balancing, discovery). Such a test file
/// imports it as `Env` and lists its tests with `e2e_ip!`.
pub trait IpEnv: Env<Tr = Self::IpTr> {
    type IpTr: Transport<Addr = SocketAddr> + Clone;
}

impl<E: Env> IpEnv for E
where
    E::Tr: Transport<Addr = SocketAddr>,
{
    type IpTr = E::Tr;
}

/// The address type of an environment's transport.
pub type Addr<E> = <<E as Env>::Tr as Transport>::Addr;

/// A runtime plus a transport, as the tests see them.
pub trait Env: Clone + Send + Sync + 'static {
    type Rt: Runtime;
    type Tr: Transport + Clone;

    fn rt(&self) -> Self::Rt;

    fn transport(&self) -> Self::Tr;

    /// A fresh address for a server to bind: loopback with any port, or a new socket path.
    fn addr(&self) -> Addr<Self>;

    fn sleep(&self, duration: Duration) -> <Self::Rt as Runtime>::Sleep {
        self.rt().sleep_until(Instant::now() + duration)
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, future: F) {
        self.rt().spawn(future)
    }

    /// Starts `server` on a fresh address: on this environment's runtime, or (a server per
    /// core) on its cores.
    fn start<D: Dispatch>(
        &self,
        server: Server<D>,
    ) -> impl Future<Output = ServerHandle<Addr<Self>>> + Send {
        let (rt, transport, addr) = (self.rt(), self.transport(), self.addr());
        async move { server.bind(&rt, &transport, &addr).await.unwrap() }
    }
}

/// A server per core (`flumen::per_core`, two single-threaded runtimes) over TCP; the
/// clients run on the test's runtime. Tokio's runtimes each listen (`SO_REUSEPORT`); smol's
/// are handed their connections by an acceptor, so that the suites run over both spreads.
#[derive(Clone)]
pub struct PerCore<R: Net> {
    rt: R,
    cores: Arc<Cores<R>>,
    spread: Spread,
}

impl<R: Net> Env for PerCore<R> {
    type Rt = R;
    type Tr = Tcp<R>;

    fn rt(&self) -> R {
        self.rt.clone()
    }

    fn transport(&self) -> Tcp<R> {
        Tcp::default()
    }

    fn addr(&self) -> SocketAddr {
        loopback()
    }

    fn start<D: Dispatch>(
        &self,
        server: Server<D>,
    ) -> impl Future<Output = ServerHandle<SocketAddr>> + Send {
        let served = per_core::serve_with(
            server,
            &self.cores,
            &Tcp::default(),
            &loopback(),
            self.spread,
        );
        async move { served.unwrap() }
    }
}

pub type TokioPerCoreEnv = PerCore<TokioRuntime>;
pub type SmolPerCoreEnv = PerCore<SmolRuntime>;

/// Runtimes of a per-core server in the tests.
const PER_CORE: usize = 2;

/// Runs `test` with a tokio server per core, its clients on a two-worker runtime.
pub fn run_tokio_per_core<F, Fut>(test: F)
where
    F: FnOnce(TokioPerCoreEnv) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cores = Arc::new(Cores::tokio(PER_CORE).unwrap());
    run_tokio(|env: TokioEnv| {
        test(PerCore {
            rt: env.rt(),
            cores,
            spread: Spread::ReusePort,
        })
    });
}

/// Runs `test` with a smol server per core (connections handed out), its clients on two
/// executor threads.
pub fn run_smol_per_core<F, Fut>(test: F)
where
    F: FnOnce(SmolPerCoreEnv) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cores = Arc::new(Cores::smol(PER_CORE).unwrap());
    run_smol(|env: SmolEnv| {
        test(PerCore {
            rt: env.rt(),
            cores,
            spread: Spread::HandOut,
        })
    });
}

/// A runtime and a transport.
#[derive(Clone)]
pub struct With<R, T> {
    rt: R,
    transport: T,
}

impl<R: Runtime, T: Transport + Clone + MakeTransport> Env for With<R, T> {
    type Rt = R;
    type Tr = T;

    fn addr(&self) -> T::Addr {
        T::any_addr()
    }

    fn rt(&self) -> R {
        self.rt.clone()
    }

    fn transport(&self) -> T {
        self.transport.clone()
    }
}

pub type TokioEnv = With<TokioRuntime, TokioTcp>;
pub type SmolEnv = With<SmolRuntime, SmolTcp>;
pub type TokioQuicEnv = With<TokioRuntime, QuicTransport>;
pub type SmolQuicEnv = With<SmolRuntime, QuicTransport>;
pub type TokioTlsEnv = With<TokioRuntime, TlsTransport<TokioTcp>>;
pub type SmolTlsEnv = With<SmolRuntime, TlsTransport<SmolTcp>>;
pub type TokioUnixEnv = With<TokioRuntime, TokioUnix>;
pub type SmolUnixEnv = With<SmolRuntime, SmolUnix>;
pub type TokioInProcEnv = With<TokioRuntime, InProc>;
pub type TokioShmEnv = With<TokioRuntime, TokioShm>;
pub type SmolShmEnv = With<SmolRuntime, SmolShm>;
pub type SmolInProcEnv = With<SmolRuntime, InProc>;

/// Makes the transport of an environment, and addresses for its servers.
pub trait MakeTransport: Transport + Sized {
    fn make(quic: QuicTransport) -> Self;

    /// A fresh address to bind.
    fn any_addr() -> Self::Addr;
}

impl MakeTransport for TokioTcp {
    fn make(_: QuicTransport) -> Self {
        TokioTcp::default()
    }

    fn any_addr() -> SocketAddr {
        loopback()
    }
}

impl MakeTransport for SmolTcp {
    fn make(_: QuicTransport) -> Self {
        SmolTcp::default()
    }

    fn any_addr() -> SocketAddr {
        loopback()
    }
}

impl MakeTransport for TokioUnix {
    fn make(_: QuicTransport) -> Self {
        TokioUnix
    }

    fn any_addr() -> PathBuf {
        socket_path()
    }
}

impl MakeTransport for SmolUnix {
    fn make(_: QuicTransport) -> Self {
        SmolUnix
    }

    fn any_addr() -> PathBuf {
        socket_path()
    }
}

impl MakeTransport for TokioShm {
    fn make(_: QuicTransport) -> Self {
        TokioShm::default()
    }

    fn any_addr() -> PathBuf {
        socket_path()
    }
}

impl MakeTransport for SmolShm {
    fn make(_: QuicTransport) -> Self {
        SmolShm::default()
    }

    fn any_addr() -> PathBuf {
        socket_path()
    }
}

impl MakeTransport for InProc {
    fn make(_: QuicTransport) -> Self {
        InProc
    }

    fn any_addr() -> InProcAddr {
        InProcAddr::any()
    }
}

/// The line a child process prints once it listens; see [`spawn_listening`].
pub const LISTENING: &str = "flumen-test-child-listening";

/// Tells the parent that started this process with [`spawn_listening`] that it listens.
pub fn announce_listening() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{LISTENING}").unwrap();
    out.flush().unwrap();
}

/// Starts `command` (a child that calls [`announce_listening`]) with its stdout piped, and
/// waits at most 10 s for the announcement. A Unix socket's file is no such sign: `bind`
/// makes it before `listen`, and a connect in between is refused.
pub fn spawn_listening(command: &mut std::process::Command) -> std::process::Child {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (listening, announced) = std::sync::mpsc::channel();
    // Reads to the end, so that the child never blocks on a full pipe. libtest may print
    // `test child ... ` on the same line before the test's own output.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.ends_with(LISTENING) {
                let _ = listening.send(());
            }
        }
    });
    if announced.recv_timeout(Duration::from_secs(10)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child process never said it was listening");
    }
    child
}

/// A socket path no other test uses (the listener removes its file when dropped). The
/// process id alone is not enough: a file left by an earlier process with the same id (one
/// that crashed, or a server a test leaked) would make the bind fail with `AddrInUse`, so the
/// name also carries when this process first asked, and a path already taken is skipped.
pub fn socket_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static STAMP: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let stamp = STAMP.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("flumen-test-{}-{stamp:x}-{n}.sock", std::process::id());
        let path = std::env::temp_dir().join(name);
        if !path.exists() {
            return path;
        }
    }
}

impl MakeTransport for QuicTransport {
    fn make(base: QuicTransport) -> Self {
        // A fresh throw-away CA per test; the server's certificate is for "localhost".
        let ca = DevCa::new().unwrap();
        base.server(ca.server_tls(&["localhost"]).unwrap())
            .unwrap()
            .client(ca.client_tls("localhost").unwrap())
            .unwrap()
    }

    fn any_addr() -> SocketAddr {
        loopback()
    }
}

impl<T: MakeTransport + Clone> MakeTransport for TlsTransport<T>
where
    TlsTransport<T>: Transport<Addr = T::Addr>,
{
    fn make(base: QuicTransport) -> Self {
        // Mutual TLS: the server requires a client certificate from the test's CA.
        let ca = DevCa::new().unwrap();
        let client = ca.issue(&["client.test"]).unwrap();
        TlsTransport::new(T::make(base))
            .server(
                ca.server_tls(&["localhost"])
                    .unwrap()
                    .require_client_certs(ca.roots())
                    .unwrap(),
            )
            .unwrap()
            .client(
                ca.client_tls("localhost")
                    .unwrap()
                    .identity(client.chain().to_vec(), client.key())
                    .unwrap(),
            )
            .unwrap()
    }

    fn any_addr() -> T::Addr {
        T::any_addr()
    }
}

/// No test may hang: each one fails after this long.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Runs `test` on a two-thread tokio runtime.
pub fn run_tokio<T, F, Fut>(test: F)
where
    T: Clone + MakeTransport,
    F: FnOnce(With<TokioRuntime, T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_tokio_with(Some(2), test)
}

/// Runs `test` on a current-thread tokio runtime.
pub fn run_tokio_current<T, F, Fut>(test: F)
where
    T: Clone + MakeTransport,
    F: FnOnce(With<TokioRuntime, T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_tokio_with(None, test)
}

/// Runs `test` on a multi-thread tokio runtime with `workers` worker threads, or on a
/// current-thread runtime for `None`.
pub fn run_tokio_with<T, F, Fut>(workers: Option<usize>, test: F)
where
    T: Clone + MakeTransport,
    F: FnOnce(With<TokioRuntime, T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let runtime = match workers {
        Some(workers) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap(),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    };
    let _guard = runtime.enter();
    let env = With {
        rt: TokioRuntime::new(runtime.handle().clone()),
        transport: T::make(QuicTransport::tokio()),
    };
    let limit = env.sleep(TEST_LIMIT);
    let test = test(env);
    runtime.block_on(test.or(async move {
        limit.await;
        panic!("test did not finish within {TEST_LIMIT:?}");
    }));
}

/// Runs `test` on a smol executor driven by two threads.
pub fn run_smol<T, F, Fut>(test: F)
where
    T: Clone + MakeTransport,
    F: FnOnce(With<SmolRuntime, T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_smol_with(2, test)
}

/// Runs `test` on a smol executor driven by `threads` threads (this one included).
pub fn run_smol_with<T, F, Fut>(threads: usize, test: F)
where
    T: Clone + MakeTransport,
    F: FnOnce(With<SmolRuntime, T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let executor = Arc::new(smol::Executor::<'static>::new());
    let (done, finished) = smol::channel::bounded::<()>(1);
    let helpers: Vec<_> = (1..threads.max(1))
        .map(|_| {
            let (executor, finished) = (executor.clone(), finished.clone());
            std::thread::spawn(move || smol::block_on(executor.run(finished.recv())))
        })
        .collect();
    let env = With {
        rt: SmolRuntime::new(executor.clone()),
        transport: T::make(QuicTransport::smol_on(SmolRuntime::new(executor.clone()))),
    };
    let limit = env.sleep(TEST_LIMIT);
    let test = test(env);
    smol::block_on(executor.run(test.or(async move {
        limit.await;
        panic!("test did not finish within {TEST_LIMIT:?}");
    })));
    drop(done);
    for helper in helpers {
        let _ = helper.join();
    }
}

/// Runs `test` on this thread, its tasks on two `flumen::rt::Workers`.
pub fn run_smol_workers<T, F, Fut>(test: F)
where
    T: Clone + MakeTransport,
    F: FnOnce(With<SmolRuntime, T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let workers = flumen::rt::Workers::new(2).unwrap();
    let env = With {
        rt: workers.runtime(),
        transport: T::make(QuicTransport::smol_on(workers.runtime())),
    };
    let limit = env.sleep(TEST_LIMIT);
    let test = test(env);
    smol::block_on(test.or(async move {
        limit.await;
        panic!("test did not finish within {TEST_LIMIT:?}");
    }));
    drop(workers);
}

/// `e2e!` for tests that need IP addresses (balancing, discovery, chaos through TLS): on tokio
/// (a two-worker multi-thread runtime) and on smol (two executor threads), over TCP, over
/// TLS-TCP (mutual TLS) and over QUIC; over TCP on a current-thread tokio runtime; and over
/// TCP on smol with two `flumen::rt::Workers` for executor.
#[macro_export]
macro_rules! e2e_ip {
    ($($name:ident),* $(,)?) => {
        mod tokio_tcp {
            $(#[test] fn $name() { $crate::common::run_tokio(super::$name::<$crate::common::TokioEnv>) })*
        }
        mod tokio_current_tcp {
            $(#[test] fn $name() { $crate::common::run_tokio_current(super::$name::<$crate::common::TokioEnv>) })*
        }
        mod smol_tcp {
            $(#[test] fn $name() { $crate::common::run_smol(super::$name::<$crate::common::SmolEnv>) })*
        }
        mod smol_workers_tcp {
            $(#[test] fn $name() { $crate::common::run_smol_workers(super::$name::<$crate::common::SmolEnv>) })*
        }
        mod tokio_quic {
            $(#[test] fn $name() { $crate::common::run_tokio(super::$name::<$crate::common::TokioQuicEnv>) })*
        }
        mod smol_quic {
            $(#[test] fn $name() { $crate::common::run_smol(super::$name::<$crate::common::SmolQuicEnv>) })*
        }
        mod tokio_tls {
            $(#[test] fn $name() { $crate::common::run_tokio(super::$name::<$crate::common::TokioTlsEnv>) })*
        }
        mod smol_tls {
            $(#[test] fn $name() { $crate::common::run_smol(super::$name::<$crate::common::SmolTlsEnv>) })*
        }
    };
}

/// Generates each listed `async fn name<E: Env>(env: E)` as a test in every environment of
/// `e2e_ip!`, and over Unix sockets, in process and over shared memory on both runtimes.
#[macro_export]
macro_rules! e2e {
    ($($name:ident),* $(,)?) => {
        $crate::e2e_ip!($($name),*);
        mod tokio_unix {
            $(#[test] fn $name() { $crate::common::run_tokio(super::$name::<$crate::common::TokioUnixEnv>) })*
        }
        mod smol_unix {
            $(#[test] fn $name() { $crate::common::run_smol(super::$name::<$crate::common::SmolUnixEnv>) })*
        }
        mod tokio_inproc {
            $(#[test] fn $name() { $crate::common::run_tokio(super::$name::<$crate::common::TokioInProcEnv>) })*
        }
        mod smol_inproc {
            $(#[test] fn $name() { $crate::common::run_smol(super::$name::<$crate::common::SmolInProcEnv>) })*
        }
        mod tokio_shm {
            $(#[test] fn $name() { $crate::common::run_tokio(super::$name::<$crate::common::TokioShmEnv>) })*
        }
        mod smol_shm {
            $(#[test] fn $name() { $crate::common::run_smol(super::$name::<$crate::common::SmolShmEnv>) })*
        }
    };
}

/// `e2e!`, and the tests again against a server per core (two single-threaded runtimes, TCP),
/// on tokio and on smol: for suites whose tests use [`serve`] and no per-server limit.
#[macro_export]
macro_rules! e2e_and_per_core {
    ($($name:ident),* $(,)?) => {
        $crate::e2e!($($name),*);
        mod tokio_per_core {
            $(#[test] fn $name() { $crate::common::run_tokio_per_core(super::$name::<$crate::common::TokioPerCoreEnv>) })*
        }
        mod smol_per_core {
            $(#[test] fn $name() { $crate::common::run_smol_per_core(super::$name::<$crate::common::SmolPerCoreEnv>) })*
        }
    };
}

/// Echoes every request's body, without allocating.
pub struct Echo;

impl Dispatch for Echo {
    type Future = std::future::Ready<Result<flumen::stream::Reply, Status>>;

    fn dispatch(&self, request: Request) -> Self::Future {
        std::future::ready(Ok(request.into_body().into()))
    }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Starts `dispatch` on a fresh address with `config`.
pub async fn serve<E: Env, D: Dispatch>(
    env: &E,
    dispatch: D,
    config: ServerConfig,
) -> ServerHandle<Addr<E>> {
    env.start(Server::new(dispatch).config(config)).await
}

/// A typed client to `addr`.
pub async fn connect<E: Env>(env: &E, addr: Addr<E>, config: ClientConfig) -> flumen::Client {
    flumen::Client::connect_with(
        &env.rt(),
        &env.transport(),
        &addr,
        config,
        flumen::MsgPack::default(),
    )
    .await
    .unwrap()
}

/// Waits until `cond` holds, checking every 5 ms, for at most 10 s.
pub async fn eventually<E: Env>(env: &E, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        env.sleep(Duration::from_millis(5)).await;
    }
}

/// Handlers shared by the tests.
pub fn router<E: Env>(env: &E, concurrency: Arc<Gauge>) -> Router {
    let sleeper = env.clone();
    let slow = env.clone();
    let gauge_env = env.clone();
    Router::new()
        .route("echo", |body: ByteBuf| async move { Ok::<_, Status>(body) })
        .route("sleep_echo", move |(millis, id): (u64, u64)| {
            let sleep = sleeper.sleep(Duration::from_millis(millis));
            async move {
                sleep.await;
                Ok::<_, Status>(id)
            }
        })
        .route("slow", move |()| {
            let sleep = slow.sleep(Duration::from_secs(20));
            async move {
                sleep.await;
                Ok::<_, Status>(())
            }
        })
        .route("gauge", {
            let concurrency = concurrency.clone();
            move |()| {
                let gauge = concurrency.clone();
                let sleep = gauge_env.sleep(Duration::from_millis(5));
                async move {
                    gauge.enter();
                    sleep.await;
                    gauge.leave();
                    Ok::<_, Status>(())
                }
            }
        })
        .route("gauge_hold", {
            let gauge = concurrency.clone();
            let env = env.clone();
            move |()| {
                let gauge = gauge.clone();
                let sleep = env.sleep(Duration::from_secs(20));
                async move {
                    gauge.enter();
                    let _leave = Leave(gauge);
                    sleep.await;
                    Ok::<_, Status>(())
                }
            }
        })
        .route("panic", |fail: bool| async move {
            assert!(!fail, "handler asked to panic");
            Ok::<_, Status>(())
        })
        .route_raw(
            "raw",
            |request: Request| async move { Ok(request.into_body()) },
        )
}

/// Counts handlers running at once and remembers the most.
#[derive(Default)]
pub struct Gauge {
    pub now: AtomicUsize,
    pub max: AtomicUsize,
}

/// Leaves the gauge when the handler ends or is dropped.
struct Leave(Arc<Gauge>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Gauge {
    pub fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }

    pub fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Polls all futures to completion, concurrently.
pub async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}
