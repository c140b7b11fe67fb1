//! `flumen-bench tails`: the latency of fast calls when a few calls are slow (brpc's method).
//!
//! A client sends calls open-loop at a fixed rate (a new call on schedule, whatever the others
//! do) over a few TCP connections, from a current-thread runtime on a thread of its own. Every
//! call but a share of them asks for `fast` (an echo); the others ask for `slow`, whose handler
//! waits [`SLOW`] on the server's timer. Each server flavor (current-thread, multi-thread,
//! smol, a server per core) runs twice, without slow calls and
//! with [`SLOW_SHARE`] of them, and the fast calls' latency distribution of both is printed
//! with the ratio of their p99s: how much slow calls drag the others.
//!
//! Calls are sent in bursts, one per millisecond tick (the runtime's timer resolution), each
//! timed from its own send; both rows of a flavor have the same bursts, so their ratio holds.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

use flumen::{
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    Client, Router, Server, Status,
};
use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// What a slow call's handler waits.
const SLOW: Duration = Duration::from_millis(5);
/// The share of calls that are slow in the second row of each flavor.
const SLOW_SHARE: f64 = 0.01;
/// Seconds sent, but not measured, at the start of each row.
const WARMUP: Duration = Duration::from_secs(1);
/// The quantiles printed.
const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 0.9999];

/// How the server runs.
#[derive(Clone, Copy, Debug)]
enum Flavor {
    /// A tokio current-thread runtime on one thread.
    CurrentThread,
    /// A tokio multi-thread runtime with two workers.
    MultiThread,
    /// One thread running a smol executor.
    Smol,
    /// A server per core: two tokio current-thread runtimes, each with its own listener.
    PerCore,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Self::CurrentThread => "tokio current-thread",
            Self::MultiThread => "tokio 2 workers",
            Self::Smol => "smol 1 thread",
            Self::PerCore => "tokio per core, 2",
        }
    }
}

/// Runs every row and prints them.
pub(crate) fn run(rate: f64, duration: Duration, connections: usize) -> Result<(), String> {
    println!(
        "open-loop {rate:.0} calls/s over {connections} connections (TCP, loopback), \
         {:.0} s a row after {:.0} s of warm-up; slow calls wait {SLOW:?} in their handler",
        duration.as_secs_f64(),
        WARMUP.as_secs_f64()
    );
    println!("fast calls' latency (us):");
    println!(
        "{:<22} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "server", "slow", "calls", "p50", "p90", "p99", "p99.9", "p99.99", "max", "p99 ratio"
    );
    for flavor in [
        Flavor::CurrentThread,
        Flavor::MultiThread,
        Flavor::Smol,
        Flavor::PerCore,
    ] {
        let mut without = None;
        for share in [0.0, SLOW_SHARE] {
            let server = ServerThread::start(flavor)?;
            let fast = drive(server.addr, rate, duration, connections, share);
            server.stop();
            let fast = fast?;
            let p99 = fast.value_at_quantile(0.99) as f64;
            let ratio = match without {
                None => {
                    without = Some(p99);
                    String::from("-")
                }
                Some(base) => format!("{:.2}x", p99 / base),
            };
            print!(
                "{:<22} {:>5.0}% {:>9}",
                flavor.name(),
                share * 100.0,
                fast.len()
            );
            for q in QUANTILES {
                print!(" {:>8}", fast.value_at_quantile(q));
            }
            println!(" {:>8} {ratio:>10}", fast.max());
        }
    }
    Ok(())
}

/// A timer of the runtime a handler runs on.
type Sleep = fn(Instant) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// tokio's timer, of whichever tokio runtime the handler runs on.
fn tokio_sleep(at: Instant) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(tokio::time::sleep_until(at.into()))
}

/// `async-io`'s timer.
fn smol_sleep(at: Instant) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        smol::Timer::at(at).await;
    })
}

/// The methods: `fast` echoes, `slow` waits [`SLOW`] on `sleep` first.
fn router(sleep: Sleep) -> Router {
    Router::new()
        .route("fast", |n: u64| async move { Ok::<_, Status>(n) })
        .route("slow", move |n: u64| {
            let wait = sleep(Instant::now() + SLOW);
            async move {
                wait.await;
                Ok::<_, Status>(n)
            }
        })
}

/// A server on a thread of its own, in one flavor.
struct ServerThread {
    addr: SocketAddr,
    stop: smol::channel::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl ServerThread {
    fn start(flavor: Flavor) -> Result<Self, String> {
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let (tell, addr) = mpsc::channel();
        let thread = thread::spawn(move || match flavor {
            Flavor::CurrentThread | Flavor::MultiThread => {
                let mut builder = match flavor {
                    Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
                    _ => {
                        let mut builder = tokio::runtime::Builder::new_multi_thread();
                        builder.worker_threads(2);
                        builder
                    }
                };
                match builder.enable_all().build() {
                    Ok(runtime) => runtime.block_on(serve_until(
                        TokioRuntime::current,
                        tokio_sleep,
                        TokioTcp::default(),
                        tell,
                        stopped,
                    )),
                    Err(e) => drop(tell.send(Err(e.to_string()))),
                }
            }
            Flavor::PerCore => match flumen::per_core::Cores::tokio(2) {
                Ok(cores) => {
                    let served = flumen::per_core::serve(
                        Server::new(router(tokio_sleep)),
                        &cores,
                        &TokioTcp::default(),
                        &SocketAddr::from(([127, 0, 0, 1], 0)),
                    );
                    match served {
                        Ok(server) => {
                            let _ = tell.send(Ok(*server.local_addr()));
                            let _ = smol::block_on(stopped.recv());
                            server.abort();
                        }
                        Err(e) => drop(tell.send(Err(e.to_string()))),
                    }
                }
                Err(e) => drop(tell.send(Err(e.to_string()))),
            },
            Flavor::Smol => {
                let executor = Arc::new(smol::Executor::new());
                let rt = SmolRuntime::new(executor.clone());
                smol::block_on(executor.run(serve_until(
                    move || rt,
                    smol_sleep,
                    SmolTcp::default(),
                    tell,
                    stopped,
                )));
            }
        });
        let addr = addr
            .recv()
            .map_err(|_| String::from("the server thread ended"))??;
        Ok(Self { addr, stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.try_send(());
        let _ = self.thread.join();
    }
}

/// Binds the server on loopback (the runtime made inside it, for tokio's context), tells its
/// address, and serves until told to stop.
async fn serve_until<R: Runtime, T: Transport<Addr = SocketAddr>>(
    rt: impl FnOnce() -> R,
    sleep: Sleep,
    transport: T,
    tell: mpsc::Sender<Result<SocketAddr, String>>,
    stopped: smol::channel::Receiver<()>,
) {
    let rt = rt();
    let bound = Server::new(router(sleep))
        .bind(&rt, &transport, &SocketAddr::from(([127, 0, 0, 1], 0)))
        .await;
    match bound {
        Ok(server) => {
            let _ = tell.send(Ok(*server.local_addr()));
            let _ = stopped.recv().await;
            server.abort();
        }
        Err(e) => drop(tell.send(Err(e.to_string()))),
    }
}

/// Sends open-loop for warm-up plus `duration` and returns the fast calls' latencies (in
/// microseconds) after the warm-up.
fn drive(
    addr: SocketAddr,
    rate: f64,
    duration: Duration,
    connections: usize,
    slow_share: f64,
) -> Result<Histogram<u64>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let rt = TokioRuntime::current();
        let mut clients: Vec<Client> = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            clients.push(
                Client::connect(&rt, &TokioTcp::default(), &addr)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let fast = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
        ));
        let slow_every = (slow_share > 0.0).then(|| (1.0 / slow_share).round() as u64);
        let started = Instant::now();
        let measured = started + WARMUP;
        let end = measured + duration;
        let mut sent = 0u64;
        let mut calls = tokio::task::JoinSet::new();
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let due = (now.duration_since(started).as_secs_f64() * rate) as u64;
            while sent < due {
                sent += 1;
                let client = clients[sent as usize % clients.len()].clone();
                let slow = slow_every.is_some_and(|every| sent % every == 0);
                let fast = fast.clone();
                calls.spawn(async move {
                    let method = if slow { "slow" } else { "fast" };
                    let at = Instant::now();
                    let answer = client.call::<_, u64>(method, &sent).await;
                    let micros = at.elapsed().as_micros() as u64;
                    match answer {
                        Ok(n) if n == sent => {
                            if !slow && at >= measured {
                                let _ = fast.lock().record(micros.max(1));
                            }
                            Ok(())
                        }
                        Ok(n) => Err(format!("call {sent} answered {n}")),
                        Err(e) => Err(format!("call {sent}: {e}")),
                    }
                });
            }
            // Reap what finished, so that the set stays as large as the calls in flight.
            while let Some(done) = calls.try_join_next() {
                done.map_err(|e| e.to_string())??;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        while let Some(done) = calls.join_next().await {
            done.map_err(|e| e.to_string())??;
        }
        let fast = fast.lock().clone();
        Ok(fast)
    })
}
