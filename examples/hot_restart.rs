//! Zero-downtime restarts: a server replaced three times by new processes of this program
//! while 16 callers keep calling a method that is not idempotent. Each new process takes the
//! listening socket over from the running one (`flumen::restart`), serves at once, and the old
//! one drains and exits. Prints the calls made and failed (none).
//!
//! ```text
//! cargo run --example hot_restart [-- --runtime smol]
//! ```
//!
//! To restart a server by hand, run the server half twice with the same control socket; the
//! second replaces the first:
//!
//! ```text
//! cargo run --example hot_restart -- --serve /tmp/counter.restart 127.0.0.1:7000
//! ```

mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::Error;
use flumen::{
    balance::{discovery::Static, BalanceConfig},
    restart::Restart,
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::{Listener, Transport},
    tcp::{SmolTcp, TokioTcp},
    Client, MsgPack, Server,
};

/// A counter per process: a call that must not run twice.
#[flumen::service]
pub trait Counter {
    /// Adds `n` to this process's total; answers the process's id and the new total.
    async fn add(&self, n: u64) -> (u32, u64);
}

#[derive(Default)]
struct Total(AtomicU64);

impl Counter for Total {
    async fn add(&self, n: u64) -> (u32, u64) {
        (
            std::process::id(),
            self.0.fetch_add(n, Ordering::Relaxed) + n,
        )
    }
}

/// Generations after the first.
const RESTARTS: usize = 3;
/// Calls each generation serves before the demo replaces it.
const CALLS_PER_GENERATION: u64 = 5_000;
const CALLERS: usize = 16;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let smol = common::smol_requested()?;
    if let Some(at) = args.iter().position(|a| a == "--serve") {
        let (Some(control), Some(addr)) = (args.get(at + 1), args.get(at + 2)) else {
            return Err("--serve CONTROL_SOCKET ADDR".into());
        };
        let restart = Restart::new(control)?;
        let listener = restart.tcp("api", addr.parse()?)?;
        return if smol {
            let listener = SmolTcp::default().listener_from_std(listener)?;
            smol::block_on(serve(SmolRuntime::global(), restart, listener))
        } else {
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let listener = {
                let _entered = tokio.enter();
                TokioTcp::default().listener_from_std(listener)?
            };
            tokio.block_on(serve(
                TokioRuntime::new(tokio.handle().clone()),
                restart,
                listener,
            ))
        };
    }
    if smol {
        smol::block_on(demo(SmolRuntime::global(), SmolTcp::default(), "smol"))
    } else {
        let tokio = tokio::runtime::Runtime::new()?;
        let rt = TokioRuntime::new(tokio.handle().clone());
        tokio.block_on(demo(rt, TokioTcp::default(), "tokio"))
    }
}

/// The server, as a user writes it: serves on the listener it inherited (or bound), tells the
/// previous generation to drain, and drains in turn once the next one has taken over.
async fn serve<R: Runtime, L: Listener>(rt: R, restart: Restart, listener: L) -> Result<(), Error>
where
    L::Addr: std::fmt::Display,
{
    let server = Server::new(CounterServer::new(Total::default())).serve(&rt, listener)?;
    restart.ready()?;
    println!(
        "serving {} (pid {})",
        server.local_addr(),
        std::process::id()
    );
    restart.handed_over().await;
    server.shutdown(Duration::from_secs(30)).await;
    println!("drained (pid {})", std::process::id());
    Ok(())
}

/// A server process of this program, and the lines it prints.
struct Generation {
    child: Child,
    lines: async_channel::Receiver<String>,
}

impl Generation {
    fn start(control: &str, addr: &str, runtime: &str) -> Result<Self, Error> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--serve", control, addr, "--runtime", runtime])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (sender, lines) = async_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send_blocking(line);
            }
        });
        Ok(Self { child, lines })
    }

    /// The next line that starts with `prefix`.
    async fn line(&self, prefix: &str) -> Result<String, Error> {
        loop {
            let line = self.lines.recv().await.map_err(|_| "the server ended")?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo: a first server, callers, and three restarts under their load.
async fn demo<R: Runtime, T: Transport<Addr = SocketAddr> + Clone>(
    rt: R,
    transport: T,
    runtime: &str,
) -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("flumen-hot-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let control = dir.join("control.sock").display().to_string();
    let mut current = Generation::start(&control, &common::loopback().to_string(), runtime)?;
    let line = current.line("serving ").await?;
    println!("generation 0: {line}");
    let addr: SocketAddr = line.split(' ').nth(1).ok_or("no address")?.parse()?;

    let client = Client::balanced_with(
        &rt,
        transport,
        Static::new(vec![addr]),
        BalanceConfig::new(),
        MsgPack::default(),
    );
    let counter = CounterClient::new(client);
    let (made, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let (done, finished) = async_channel::bounded::<()>(CALLERS);
    for _ in 0..CALLERS {
        let (counter, made, failed) = (counter.clone(), made.clone(), failed.clone());
        let (stop, done) = (stop.clone(), done.clone());
        rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if counter.add(1).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                made.fetch_add(1, Ordering::Relaxed);
            }
            let _ = done.send(()).await;
        });
    }

    let started = Instant::now();
    for generation in 1..=RESTARTS {
        let target = made.load(Ordering::Relaxed) + CALLS_PER_GENERATION;
        while made.load(Ordering::Relaxed) < target {
            rt.sleep_until(Instant::now() + Duration::from_millis(10))
                .await;
        }
        // The address is the one it inherits: what it is given is for a first generation.
        let next = Generation::start(&control, &common::loopback().to_string(), runtime)?;
        println!("generation {generation}: {}", next.line("serving ").await?);
        println!(
            "generation {}: {}",
            generation - 1,
            current.line("drained").await?
        );
        current = next;
    }
    let target = made.load(Ordering::Relaxed) + CALLS_PER_GENERATION;
    while made.load(Ordering::Relaxed) < target {
        rt.sleep_until(Instant::now() + Duration::from_millis(10))
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    for _ in 0..CALLERS {
        finished.recv().await?;
    }
    let (made, failed) = (made.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "{RESTARTS} restarts in {:?}: {made} calls made, {failed} failed",
        started.elapsed()
    );
    drop(current);
    let _ = std::fs::remove_dir_all(&dir);
    if failed > 0 {
        return Err(format!("{failed} calls failed").into());
    }
    Ok(())
}
