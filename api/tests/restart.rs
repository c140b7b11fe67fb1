//! Restarts under load (`flumen::restart`): a server in a child process is replaced three
//! times by a new process of the same program, which takes its TCP and Unix listeners over;
//! each old one drains and exits. Balanced clients on both listeners call throughout, with a
//! method that is not idempotent: not one call fails, and every generation serves calls. On
//! tokio and on smol (each generation on the test's runtime).

mod common;
#[path = "common/external.rs"]
mod external;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::Env;
use flumen::{
    balance::{discovery::Static, BalanceConfig},
    restart::Restart,
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    unix::{SmolUnix, TokioUnix},
    Client, MsgPack, Router, Server, ServerHandle, Status,
};
use parking_lot::Mutex;

/// Set in a child: `RUNTIME GENERATION CONTROL_PATH UNIX_PATH`.
const CHILD: &str = "FLUMEN_RESTART_CHILD";
/// Generations after the first.
const RESTARTS: u32 = 3;
/// Callers per listener.
const CALLERS: usize = 8;
/// How long a generation may take to start, or to drain and exit.
const PATIENCE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(CHILD) {
        return generation(&spec);
    }
    external::run(vec![
        (
            "tokio::restarts_lose_no_call",
            external::Needs::Nothing,
            tokio_restarts,
        ),
        (
            "smol::restarts_lose_no_call",
            external::Needs::Nothing,
            smol_restarts,
        ),
    ])
}

fn tokio_restarts() {
    common::run_tokio(|env: common::TokioEnv| {
        restarts_lose_no_call(env.rt(), TokioTcp::default(), TokioUnix, "tokio")
    });
}

fn smol_restarts() {
    common::run_smol(|env: common::SmolEnv| {
        restarts_lose_no_call(env.rt(), SmolTcp::default(), SmolUnix, "smol")
    });
}

/// One generation, in a child process: takes the listeners over (or binds them), serves
/// `who` (its generation) on both, says `serving ADDR`, and once its successor has taken
/// over, drains, says `drained`, and exits.
fn generation(spec: &str) -> ExitCode {
    let parts: Vec<&str> = spec.split(' ').collect();
    let [runtime, generation, control, unix] = parts[..] else {
        panic!("{CHILD}={spec:?}");
    };
    let generation: u32 = generation.parse().unwrap();
    let restart = Restart::new(control).unwrap();
    assert_eq!(restart.is_successor(), generation > 0 || runtime == "fail");
    let tcp = restart.tcp("api", "127.0.0.1:0".parse().unwrap()).unwrap();
    let unix = restart.unix("local", Path::new(unix)).unwrap();
    if runtime == "fail" {
        // A successor that dies after taking the listeners, before it is ready.
        drop((tcp, unix));
        return ExitCode::from(3);
    }
    let router =
        || Router::new().route("who", move |()| async move { Ok::<_, Status>(generation) });
    let grace = Duration::from_secs(20);
    match runtime {
        "tokio" => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let rt = TokioRuntime::current();
                let tcp = TokioTcp::default().listener_from_std(tcp).unwrap();
                let unix = TokioUnix.listener_from_std(unix).unwrap();
                let a = Server::new(router()).serve(&rt, tcp).unwrap();
                let b = Server::new(router()).serve(&rt, unix).unwrap();
                serve_until_replaced(&restart, a, b, grace).await;
            });
        }
        _ => smol::block_on(async {
            let rt = SmolRuntime::global();
            let tcp = SmolTcp::default().listener_from_std(tcp).unwrap();
            let unix = SmolUnix.listener_from_std(unix).unwrap();
            let a = Server::new(router()).serve(&rt, tcp).unwrap();
            let b = Server::new(router()).serve(&rt, unix).unwrap();
            serve_until_replaced(&restart, a, b, grace).await;
        }),
    }
    ExitCode::SUCCESS
}

async fn serve_until_replaced(
    restart: &Restart,
    tcp: ServerHandle<SocketAddr>,
    unix: ServerHandle<PathBuf>,
    grace: Duration,
) {
    restart.ready().unwrap();
    println!("serving {}", tcp.local_addr());
    restart.handed_over().await;
    futures_lite::future::zip(tcp.shutdown(grace), unix.shutdown(grace)).await;
    println!("drained");
}

/// A generation's process: its output lines as they come. Killed on drop if still running.
struct Generation {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Generation {
    fn start(runtime: &str, generation: u32, dir: &Path) -> Self {
        let spec = format!(
            "{runtime} {generation} {} {}",
            dir.join("control.sock").display(),
            dir.join("api.sock").display()
        );
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, spec)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().push(line);
            }
        });
        Self { child, lines }
    }

    /// The line starting with `prefix`, once printed.
    async fn line<R: Runtime>(&self, rt: &R, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.lines.lock().iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "no {prefix:?} line");
            rt.sleep_until(Instant::now() + Duration::from_millis(5))
                .await;
        }
    }

    /// Waits for the process to exit; asserts it exited cleanly.
    async fn exited<R: Runtime>(&mut self, rt: &R) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "a generation failed: {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "a replaced generation did not exit"
            );
            rt.sleep_until(Instant::now() + Duration::from_millis(5))
                .await;
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the callers saw: calls answered by each generation, and failures.
#[derive(Default)]
struct Tally {
    served: [AtomicU64; RESTARTS as usize + 1],
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl Tally {
    fn served(&self, generation: usize) -> u64 {
        self.served[generation].load(Ordering::SeqCst)
    }
}

/// Calls `who` on `client` until `stop`, counting answers by generation. After a failure it
/// waits a millisecond: a call that fails at once must not starve the runtime.
async fn call_until<R: Runtime>(rt: R, client: Client, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match client.call::<_, u32>("who", &()).await {
            Ok(generation) => {
                tally.served[generation as usize].fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                tally.failed.fetch_add(1, Ordering::SeqCst);
                tally.first_failure.lock().get_or_insert(e.to_string());
                rt.sleep_until(Instant::now() + Duration::from_millis(1))
                    .await;
            }
        }
    }
}

async fn restarts_lose_no_call<R, T, U>(rt: R, tcp: T, unix: U, runtime: &'static str)
where
    R: Runtime,
    T: Transport<Addr = SocketAddr> + Clone,
    U: Transport<Addr = PathBuf> + Clone,
{
    let dir = std::env::temp_dir().join(format!("flumen-restart-{}-{runtime}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut current = Generation::start(runtime, 0, &dir);
    let addr: SocketAddr = current.line(&rt, "serving ").await["serving ".len()..]
        .parse()
        .unwrap();
    let tcp_client = Client::balanced_with(
        &rt,
        tcp,
        Static::new(vec![addr]),
        BalanceConfig::new(),
        MsgPack::default(),
    );
    let unix_client = Client::balanced_with(
        &rt,
        unix,
        Static::new(vec![dir.join("api.sock")]),
        BalanceConfig::new(),
        MsgPack::default(),
    );
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let mut callers = Vec::new();
    for i in 0..CALLERS * 2 {
        let client = if i % 2 == 0 {
            &tcp_client
        } else {
            &unix_client
        };
        let done = Arc::new(AtomicBool::new(false));
        let notify = done.clone();
        let call = call_until(rt.clone(), client.clone(), tally.clone(), stop.clone());
        rt.spawn(async move {
            call.await;
            notify.store(true, Ordering::SeqCst);
        });
        callers.push(done);
    }
    let wait_for = |what: &'static str, cond: Box<dyn Fn() -> bool + Send>| {
        let rt = rt.clone();
        async move {
            let deadline = Instant::now() + PATIENCE;
            while !cond() {
                assert!(Instant::now() < deadline, "timed out waiting for: {what}");
                rt.sleep_until(Instant::now() + Duration::from_millis(5))
                    .await;
            }
        }
    };

    for generation in 1..=RESTARTS as usize {
        let before = tally.clone();
        wait_for(
            "calls served by the running generation",
            Box::new(move || before.served(generation - 1) >= 100),
        )
        .await;
        if generation == 2 {
            // A successor that fails before it is ready changes nothing.
            let mut failed = Generation::start("fail", 99, &dir);
            let status = loop {
                if let Some(status) = failed.child.try_wait().unwrap() {
                    break status;
                }
                rt.sleep_until(Instant::now() + Duration::from_millis(5))
                    .await;
            };
            assert_eq!(status.code(), Some(3));
            let served = tally.served(generation - 1);
            let after = tally.clone();
            wait_for(
                "calls served after a failed successor",
                Box::new(move || after.served(generation - 1) >= served + 100),
            )
            .await;
        }
        let next = Generation::start(runtime, generation as u32, &dir);
        let line = next.line(&rt, "serving ").await;
        assert_eq!(line, format!("serving {addr}"), "the address is kept");
        current.line(&rt, "drained").await;
        current.exited(&rt).await;
        current = next;
    }
    let last = tally.clone();
    wait_for(
        "calls served by the last generation",
        Box::new(move || last.served(RESTARTS as usize) >= 100),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let done = callers.clone();
    wait_for(
        "the callers stopped",
        Box::new(move || done.iter().all(|d| d.load(Ordering::SeqCst))),
    )
    .await;

    let served: Vec<u64> = (0..=RESTARTS as usize).map(|g| tally.served(g)).collect();
    let made: u64 = served.iter().sum::<u64>() + tally.failed.load(Ordering::SeqCst);
    println!("{runtime}: {RESTARTS} restarts, {made} calls made, served by generation {served:?}");
    assert_eq!(
        tally.failed.load(Ordering::SeqCst),
        0,
        "calls failed across the restarts (of {made}); the first: {:?}",
        tally.first_failure.lock()
    );
    assert!(served.iter().all(|&n| n >= 100), "{served:?}");
    drop(current);
    let _ = std::fs::remove_dir_all(&dir);
}
