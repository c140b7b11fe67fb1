//! `flumen-bench`: the load generator. `serve` starts a server of any measured system, `load`
//! runs callers against one, and `compare` runs every system side by side (each server in its
//! own process) and reports each against `pipe`, the socket ceiling.

mod address;
mod conns;
mod measure;
mod overload;
#[cfg(feature = "peers")]
mod peers;
mod pipe;
mod plot;
mod soak;
mod system;
mod tails;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use address::Address;
use clap::{Args, Parser, Subcommand};
use flumen::per_core::Spread;
use measure::{print_table, Report, Tally, Window};
use system::{Load, Rt, System};

#[derive(Parser, Debug)]
#[command(
    name = "flumen-bench",
    about = "Flumen's load generator: serve, load, compare"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve one system until standard input closes.
    Serve {
        #[arg(long, value_enum, default_value_t = System::Flumen)]
        system: System,
        #[arg(long, value_enum, default_value_t = Rt::Tokio)]
        runtime: Rt,
        /// `host:port`, or a socket path with `--transport unix`.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: Address,
        #[arg(long, value_enum, default_value_t = Wire::Tcp)]
        transport: Wire,
        /// With QUIC or TLS: where to write the throw-away CA (PEM) that signed the server's
        /// certificate, for clients to trust.
        #[arg(long, default_value = "flumen-bench-ca.pem")]
        cert_out: std::path::PathBuf,
        /// Runtime threads: 0 for a current-thread runtime (one thread), N for a multi-thread
        /// tokio runtime with N workers or a smol executor on N threads.
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// With `--threads N` (Flumen over TCP): a server per core, N single-threaded
        /// runtimes each accepting on its own `SO_REUSEPORT` listener.
        #[arg(long)]
        per_core: bool,
        /// With `--per-core`: one listener, its connections handed to the runtimes in turn
        /// (`per_core::Spread::HandOut`), instead of a listener each.
        #[arg(long, requires = "per_core")]
        hand_out: bool,
    },
    /// Run callers against a server and report.
    Load {
        #[arg(long, value_enum, default_value_t = System::Flumen)]
        system: System,
        #[arg(long, value_enum, default_value_t = Rt::Tokio)]
        runtime: Rt,
        /// The server's address (`host:port`, or a socket path).
        #[arg(long)]
        connect: Address,
        /// The server's process id, to report its CPU time per call (Linux).
        #[arg(long)]
        server_pid: Option<u32>,
        #[command(flatten)]
        run: RunArgs,
        /// Payload bytes per call.
        #[arg(long, default_value_t = 32)]
        payload: usize,
        /// Calls in flight per connection.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Runtime threads of the load generator (0: current-thread; see `serve --threads`).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Run several systems side by side, each server in its own process.
    Compare {
        /// Systems to run (pipe is always run first: every figure is a ratio to it).
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = default_systems())]
        systems: Vec<System>,
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Rt::Tokio])]
        runtimes: Vec<Rt>,
        #[arg(long, value_delimiter = ',', default_values_t = [32])]
        payloads: Vec<usize>,
        /// Calls in flight per connection.
        #[arg(long, value_delimiter = ',', default_values_t = [64])]
        in_flight: Vec<usize>,
        /// Runtime threads per side, each a row of its own: 0 for current-thread runtimes
        /// (the default), N for multi-thread ones with N workers (tokio) or N executor threads
        /// (smol). `--suite` runs 0, 1 and 2 unless this is given.
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
        /// Every payload (32 B, 1 KiB, 64 KiB) at every in-flight count (1, 64, 512), plus
        /// 200 connections x 4 in flight and 1000 x 1 (32 B, current-thread).
        #[arg(long)]
        suite: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Open idle connections to a Flumen server and report the memory each one costs, on
    /// the server and on the client (resident memory before and after, per connection).
    Conns {
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, value_enum, default_value_t = Rt::Tokio)]
        runtime: Rt,
        /// Runtime threads per side (0: current-thread).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Make one call on each connection (all at once) before measuring, so that buffers
        /// were used and had to be given back.
        #[arg(long)]
        call_first: bool,
    },
    /// A mixed workload (unary calls, deadlines, cancellations, every stream shape) while
    /// client connections are closed and the server restarted under it; accounts for every
    /// call (succeeded + typed failures + cancelled = started, none lost or misrouted) and
    /// checks that resident memory stays flat after the warm-up (the first quarter).
    Soak {
        /// Seconds to run.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
    },
    /// Goodput under twice the load a handler can serve, open-loop, with the adaptive
    /// concurrency limit off and on: calls answered within their deadline, shed, late.
    Overload {
        /// Seconds per row.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
    /// How a server's calls/s grow with its cores: many client connections against Flumen
    /// servers on 1, 2, ... cores (tokio multi-thread, a tokio server per core, smol's executor
    /// on N threads, N `flumen_rt::Workers`, a smol server per core) and pipe on a multi-thread tokio runtime; calls/s, per
    /// server core, and the server's CPU per call. TCP only.
    Scaling {
        /// Server cores (runtime threads) to run, each a row per flavor.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
        cores: Vec<usize>,
        /// Payload bytes per call.
        #[arg(long, default_value_t = 32)]
        payload: usize,
        /// Calls in flight per connection.
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
        /// Threads of the load generator (a multi-thread runtime of its own).
        #[arg(long, default_value_t = 2)]
        client_threads: usize,
        #[command(flatten)]
        run: RunArgs,
    },
    /// The fast calls' latency distribution at an open-loop rate, without slow calls and with
    /// 1% of calls waiting 5 ms in their handler, on a current-thread, a multi-thread, a
    /// per-core and a smol server: how much slow calls drag the others.
    Tails {
        /// Calls a second, sent open-loop.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        /// Measured seconds per row (after one of warm-up).
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Client connections (the calls go round them).
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
}

/// The transport between load generator and server.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Tcp,
    /// QUIC (quinn, TLS 1.3) with a throw-away certificate made by the server.
    Quic,
    /// TLS 1.3 over TCP (rustls) with a throw-away certificate made by the server.
    Tls,
    /// Unix domain sockets (a socket path in the temporary directory).
    Unix,
    /// Shared memory: rings in a mapped file, a Unix socket for wake-ups (no pipe ceiling
    /// exists for it: compare with `unix`).
    Shm,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[arg(long, value_enum, default_value_t = Wire::Tcp)]
    transport: Wire,
    /// With QUIC or TLS: the CA (PEM) to trust, as written by `serve --cert-out`.
    #[arg(long, default_value = "flumen-bench-ca.pem")]
    cert: std::path::PathBuf,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Write a latency-percentile plot (SVG) to this file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// With feature `observe` and `FLUMEN_BENCH_OBSERVE=1` (inherited by the servers `compare`
/// starts): a tracing registry that keeps every span and a Prometheus recorder, so that the
/// calls measured pay for their spans and metrics.
fn observe() {
    #[cfg(feature = "observe")]
    if std::env::var_os("FLUMEN_BENCH_OBSERVE").is_some_and(|v| v == "1") {
        let spans = tracing::subscriber::set_global_default(tracing_subscriber::registry());
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();
        if let Err(e) = spans
            .map_err(|e| e.to_string())
            .and(metrics.map(drop).map_err(|e| e.to_string()))
        {
            eprintln!("cannot turn observability on: {e}");
            std::process::exit(2);
        }
    }
}

fn default_systems() -> Vec<System> {
    let mut systems = vec![System::Pipe, System::Flumen, System::FlumenRaw];
    if cfg!(feature = "peers") {
        systems.extend([System::Razor, System::Tarpc, System::Tonic]);
    }
    systems
}

/// How long past its warm-up and measured window a load may take (connecting, the last
/// replies) before it counts as hung.
const LOAD_GRACE: Duration = Duration::from_secs(60);

fn main() {
    let cli = Cli::parse();
    observe();
    raise_fd_limit();
    let result = match cli.command {
        Cmd::Serve {
            system,
            runtime,
            addr,
            transport,
            cert_out,
            threads,
            per_core,
            hand_out,
        } => match (per_core, hand_out) {
            (true, false) => {
                serve_per_core(system, runtime, threads, addr, transport, Spread::ReusePort)
            }
            (true, true) => {
                serve_per_core(system, runtime, threads, addr, transport, Spread::HandOut)
            }
            (false, _) => serve(system, runtime, threads, addr, transport, &cert_out),
        },
        Cmd::Load {
            system,
            runtime,
            connect,
            server_pid,
            run,
            payload,
            in_flight,
            threads,
        } => {
            let load = Load {
                payload,
                in_flight,
                connections: run.connections,
            };
            let side = Setup { runtime, threads };
            run_load(system, side, connect, load, &run, server_pid)
                .map(|report| emit(&[report], &run))
        }
        Cmd::Compare {
            systems,
            runtimes,
            payloads,
            in_flight,
            threads,
            suite,
            run,
        } => {
            let (payloads, in_flight) = if suite {
                (vec![32, 1024, 64 * 1024], vec![1, 64, 512])
            } else {
                (payloads, in_flight)
            };
            let threads = match (threads.is_empty(), suite) {
                (false, _) => threads,
                (true, true) => vec![0, 1, 2],
                (true, false) => vec![0],
            };
            let matrix = Matrix {
                suite,
                systems: &systems,
                runtimes: &runtimes,
                threads: &threads,
                payloads: &payloads,
                in_flights: &in_flight,
            };
            compare(&matrix, &run)
        }
        Cmd::Conns {
            count,
            runtime,
            threads,
            call_first,
        } => conns::run(Setup { runtime, threads }, count, call_first),
        Cmd::Soak { duration } => soak::run(Duration::from_secs_f64(duration)),
        Cmd::Overload { duration } => overload::run(Duration::from_secs_f64(duration)),
        Cmd::Scaling {
            cores,
            payload,
            in_flight,
            client_threads,
            run,
        } => scaling(&cores, payload, in_flight, client_threads, &run),
        Cmd::Tails {
            rate,
            duration,
            connections,
        } => tails::run(rate, Duration::from_secs_f64(duration), connections),
    };
    if let Err(e) = result {
        eprintln!("flumen-bench: {e}");
        std::process::exit(1);
    }
}

/// TLS settings for one side: a server's, with a fresh CA written to `ca` and a certificate
/// for "localhost", or a client's, trusting the CA in `ca`.
enum Side {
    Server(flumen::tls::ServerTls),
    Client(flumen::tls::ClientTls),
}

fn side(ca: &std::path::Path, serving: bool) -> Result<Side, String> {
    use flumen::tls::{ClientTls, DevCa};
    if serving {
        let dev = DevCa::new().map_err(|e| e.to_string())?;
        std::fs::write(ca, dev.pem()).map_err(|e| format!("{}: {e}", ca.display()))?;
        Ok(Side::Server(
            dev.server_tls(&["localhost"]).map_err(|e| e.to_string())?,
        ))
    } else {
        Ok(Side::Client(
            ClientTls::from_ca_file(ca, "localhost").map_err(|e| e.to_string())?,
        ))
    }
}

fn net(
    wire: Wire,
    runtime: Rt,
    ca: &std::path::Path,
    serving: bool,
) -> Result<system::Net, String> {
    let tls = |side: Side, tls: flumen::tls::TlsTransport<()>| match side {
        Side::Server(server) => tls.server(server),
        Side::Client(client) => tls.client(client),
    };
    match wire {
        Wire::Tcp => Ok(system::Net::Tcp),
        Wire::Unix => Ok(system::Net::Unix),
        Wire::Shm => Ok(system::Net::Shm),
        Wire::Tls => {
            let transport = tls(side(ca, serving)?, flumen::tls::TlsTransport::new(()));
            Ok(system::Net::Tls(Box::new(
                transport.map_err(|e| e.to_string())?,
            )))
        }
        Wire::Quic => {
            let base = match runtime {
                Rt::Tokio => flumen_quic::QuicTransport::tokio(),
                Rt::Smol | Rt::SmolW => flumen_quic::QuicTransport::smol(),
            };
            let transport = match side(ca, serving)? {
                Side::Server(server) => base.server(server),
                Side::Client(client) => base.client(client),
            };
            Ok(system::Net::Quic(Box::new(
                transport.map_err(|e| e.to_string())?,
            )))
        }
    }
}

/// A runtime and its thread count (0: current-thread).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Setup {
    pub(crate) runtime: Rt,
    pub(crate) threads: usize,
}

/// Raises the soft limit on open files to the hard limit, so that runs with thousands of
/// connections do not fail on the default of 1024 (`ulimit -n` tells the hard limit).
fn raise_fd_limit() {
    #[allow(unsafe_code)]
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `serve --per-core`: a Flumen server per core over TCP, until standard input closes.
fn serve_per_core(
    system: System,
    runtime: Rt,
    cores: usize,
    addr: Address,
    wire: Wire,
    spread: Spread,
) -> Result<(), String> {
    if system != System::Flumen || wire != Wire::Tcp || cores == 0 {
        return Err("--per-core serves Flumen over TCP, with --threads 1 or more".into());
    }
    let addr = addr.ip()?;
    let bound =
        system::serve_flumen_per_core(runtime, cores, addr, spread).map_err(|e| e.to_string())?;
    println!("listening on {bound}");
    let _ = std::io::stdout().flush();
    serve_until_stdin_closes()
}

/// The parent closes a server's standard input to stop it; a Flumen server reports its I/O
/// counters first ("stats FRAMES_WRITTEN WRITES"). Exits the process.
fn serve_until_stdin_closes() -> ! {
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    if let Some(stats) = system::SERVER_STATS.get() {
        let stats = stats();
        println!("stats {} {}", stats.frames_written, stats.writes);
        let _ = std::io::stdout().flush();
    }
    std::process::exit(0);
}

/// `flumen-bench scaling`: see [`Cmd::Scaling`].
fn scaling(
    cores: &[usize],
    payload: usize,
    in_flight: usize,
    client_threads: usize,
    run: &RunArgs,
) -> Result<(), String> {
    if run.transport != Wire::Tcp {
        return Err("scaling runs over TCP".into());
    }
    let load = Load {
        payload,
        in_flight,
        connections: run.connections,
    };
    println!(
        "{} connections x {in_flight} in flight, {payload} B, load generator on {client_threads} \
         threads, {:.0} s a row",
        run.connections, run.duration
    );
    println!(
        "{:<22} {:>6} {:>11} {:>14} {:>16} {:>9}",
        "server", "cores", "calls/s", "calls/s/core", "server us/call", "p99 us"
    );
    let flavors: [(&str, System, Rt, Option<Spread>); 7] = [
        ("pipe, tokio", System::Pipe, Rt::Tokio, None),
        ("tokio multi-thread", System::Flumen, Rt::Tokio, None),
        (
            "tokio per core",
            System::Flumen,
            Rt::Tokio,
            Some(Spread::ReusePort),
        ),
        (
            "tokio per core, handed",
            System::Flumen,
            Rt::Tokio,
            Some(Spread::HandOut),
        ),
        ("smol N threads", System::Flumen, Rt::Smol, None),
        ("smol N workers", System::Flumen, Rt::SmolW, None),
        (
            "smol per core",
            System::Flumen,
            Rt::Smol,
            Some(Spread::ReusePort),
        ),
    ];
    for &n in cores {
        for (name, system, runtime, per_core) in flavors {
            let server = ServerProcess::start_with(
                system,
                Setup {
                    runtime,
                    threads: n,
                },
                run,
                per_core,
            )?;
            let client = Setup {
                runtime,
                threads: client_threads,
            };
            let report = run_load(
                system,
                client,
                server.addr.clone(),
                load,
                run,
                Some(server.child.id()),
            )?;
            drop(server);
            let cpu = report
                .server_cpu_us_per_call
                .map_or_else(|| "-".to_owned(), |us| format!("{us:.2}"));
            println!(
                "{name:<22} {n:>6} {:>11.0} {:>14.0} {cpu:>16} {:>9.0}",
                report.calls_per_s,
                report.calls_per_s / n as f64,
                report.p99_us
            );
        }
    }
    Ok(())
}

fn serve(
    system: System,
    runtime: Rt,
    threads: usize,
    addr: Address,
    wire: Wire,
    cert: &std::path::Path,
) -> Result<(), String> {
    let net = net(wire, runtime, cert, true)?;
    std::thread::spawn(|| serve_until_stdin_closes());
    runtime
        .block_on(threads, move |spawner| {
            Box::pin(async move {
                system::serve(system, &net, spawner, addr, |bound| {
                    println!("listening on {bound}");
                    let _ = std::io::stdout().flush();
                })
                .await
            })
        })
        .map_err(|e| e.to_string())
}

/// Runs one load and measures it.
fn run_load(
    system: System,
    setup: Setup,
    addr: Address,
    load: Load,
    run: &RunArgs,
    server_pid: Option<u32>,
) -> Result<Report, String> {
    let progress = Arc::new(AtomicU64::new(0));
    let (warmup, duration) = (
        Duration::from_secs_f64(run.warmup),
        Duration::from_secs_f64(run.duration),
    );
    let (window_tx, window_rx) = std::sync::mpsc::channel::<Window>();
    // Samples CPU time at the start and the end of the measured window.
    let sampler = std::thread::spawn(move || {
        let window = window_rx.recv().ok()?;
        std::thread::sleep(window.warm.saturating_duration_since(Instant::now()));
        let (client0, server0) = (
            measure::own_cpu(),
            server_pid.and_then(measure::process_cpu),
        );
        std::thread::sleep(window.end.saturating_duration_since(Instant::now()));
        let (client1, server1) = (
            measure::own_cpu(),
            server_pid.and_then(measure::process_cpu),
        );
        let rss = server_pid.and_then(measure::process_rss);
        let server = server0.zip(server1).map(|(a, b)| b.saturating_sub(a));
        Some((client1.saturating_sub(client0), server, rss))
    });
    let done = Arc::new(AtomicBool::new(false));
    let bar = (!run.quiet && !run.json).then(|| {
        let (progress, done) = (progress.clone(), done.clone());
        let label = format!(
            "{} {} {}B x{}",
            system.name(),
            setup.runtime.name(),
            load.payload,
            load.in_flight
        );
        std::thread::spawn(move || progress_bar(&label, warmup + duration, &progress, &done))
    });
    let counter = progress.clone();
    let runtime = setup.runtime;
    let net = net(run.transport, runtime, &run.cert, false)?;
    let tallies = runtime.block_on(setup.threads, move |spawner| {
        Box::pin(async move {
            let make_window = move || {
                let window = Window::new(warmup, duration);
                let _ = window_tx.send(window);
                window
            };
            let load = system::load(system, &net, spawner, addr, load, make_window, counter);
            // A phase that does not end (a hung transport) fails this row, not the whole run.
            let limit = warmup + duration + LOAD_GRACE;
            let hung = async move {
                smol::Timer::after(limit).await;
                Err(format!("the load did not end within {limit:?}"))
            };
            futures_lite::future::or(load, hung).await
        })
    });
    done.store(true, Ordering::SeqCst);
    if let Some(bar) = bar {
        let _ = bar.join();
    }
    let (tallies, client_stats) = tallies?;
    let (client_cpu, server_cpu, server_rss) = sampler
        .join()
        .ok()
        .flatten()
        .ok_or("the load never started")?;
    let tally = Tally::merge(tallies).ok_or("no callers ran")?;
    let mut report = Report::new(
        system.name(),
        runtime.name(),
        load.payload,
        load.in_flight,
        load.connections,
        &tally,
        duration.as_secs_f64(),
        client_cpu,
        server_cpu,
    );
    report.threads = setup.threads;
    report.client_frames_per_write = client_stats.map(|s| s.frames_per_write());
    report.server_rss_mib = server_rss.map(|b| b as f64 / (1024.0 * 1024.0));
    Ok(report)
}

fn progress_bar(label: &str, total: Duration, progress: &AtomicU64, done: &AtomicBool) {
    let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:28} [{bar:30}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    let started = Instant::now();
    let mut last = (started, 0);
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        let calls = progress.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (calls - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, calls);
        bar.set_position(started.elapsed().as_millis() as u64);
        bar.set_message(format!("{rate:.0} calls/s"));
    }
    bar.finish_and_clear();
}

/// A server process of `system`, stopped when dropped.
pub(crate) struct ServerProcess {
    pub(crate) child: std::process::Child,
    pub(crate) addr: Address,
    stdout: BufReader<std::process::ChildStdout>,
}

impl ServerProcess {
    /// Starts the server `system` calls (its [`System::server`]).
    pub(crate) fn start(system: System, setup: Setup, run: &RunArgs) -> Result<Self, String> {
        Self::start_with(system, setup, run, None)
    }

    /// As [`start`](Self::start); with `per_core`, a server per core on `setup.threads`
    /// runtimes, its connections spread so.
    pub(crate) fn start_with(
        system: System,
        setup: Setup,
        run: &RunArgs,
        per_core: Option<Spread>,
    ) -> Result<Self, String> {
        let runtime = setup.runtime;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let wire = match run.transport {
            Wire::Tcp => "tcp",
            Wire::Quic => "quic",
            Wire::Tls => "tls",
            Wire::Unix => "unix",
            Wire::Shm => "shm",
        };
        let listen = match run.transport {
            Wire::Unix => system.listen_addr(&system::Net::Unix),
            Wire::Shm => system.listen_addr(&system::Net::Shm),
            _ => system.listen_addr(&system::Net::Tcp),
        };
        let mut child = Command::new(exe)
            .args([
                "serve",
                "--system",
                system_arg(system.server()),
                "--runtime",
                runtime.name(),
                "--threads",
                &setup.threads.to_string(),
                "--addr",
                &listen.to_string(),
            ])
            .args(["--transport", wire, "--cert-out"])
            .arg(&run.cert)
            .args(per_core.map(|_| "--per-core"))
            .args((per_core == Some(Spread::HandOut)).then_some("--hand-out"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("{} server did not start: {line:?}", system.name()))?;
        Ok(Self {
            child,
            addr,
            stdout,
        })
    }

    /// Stops the server; returns its frames per write if it reported its counters.
    fn finish(mut self) -> Option<f64> {
        drop(self.child.stdin.take());
        let mut line = String::new();
        while self.stdout.read_line(&mut line).ok()? > 0 {
            let mut words = line.split_whitespace();
            if words.next() == Some("stats") {
                let frames: f64 = words.next()?.parse().ok()?;
                let writes: f64 = words.next()?.parse().ok()?;
                return Some(if writes > 0.0 { frames / writes } else { 0.0 });
            }
            line.clear();
        }
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn system_arg(system: System) -> &'static str {
    match system {
        System::Pipe => "pipe",
        System::Flumen
        | System::FlumenRaw
        | System::FlumenBlob
        | System::FlumenBalanced
        | System::FlumenBalanced4 => "flumen",
        System::Tarpc => "tarpc",
        System::Tonic => "tonic",
        System::Razor => "razor",
    }
}

/// What `compare` runs: every system at every point of the rest.
struct Matrix<'a> {
    /// Adds the many-connection rows ([`SUITE_MANY_CONNECTIONS`]).
    suite: bool,
    systems: &'a [System],
    runtimes: &'a [Rt],
    threads: &'a [usize],
    payloads: &'a [usize],
    in_flights: &'a [usize],
}

/// The many-connection rows `--suite` adds on each runtime (current-thread, 32 B):
/// (connections, calls in flight on each).
const SUITE_MANY_CONNECTIONS: [(usize, usize); 2] = [(200, 4), (1000, 1)];

fn compare(matrix: &Matrix<'_>, run: &RunArgs) -> Result<(), String> {
    let mut systems = matrix.systems.to_vec();
    systems.retain(|s| *s != System::Pipe);
    systems.insert(0, System::Pipe);
    let mut points = Vec::new();
    for &runtime in matrix.runtimes {
        for &threads in matrix.threads {
            for &payload in matrix.payloads {
                for &in_flight in matrix.in_flights {
                    let load = Load {
                        payload,
                        in_flight,
                        connections: run.connections,
                    };
                    points.push((Setup { runtime, threads }, load));
                }
            }
        }
    }
    if matrix.suite {
        for &runtime in matrix.runtimes {
            for (connections, in_flight) in SUITE_MANY_CONNECTIONS {
                let load = Load {
                    payload: 32,
                    in_flight,
                    connections,
                };
                points.push((
                    Setup {
                        runtime,
                        threads: 0,
                    },
                    load,
                ));
            }
        }
    }
    let many = points.len() > 1;
    let mut all = Vec::new();
    for (setup, load) in points {
        let mut reports: Vec<Report> = Vec::new();
        for &system in &systems {
            if system.tokio_only() && (setup.runtime != Rt::Tokio || run.transport != Wire::Tcp) {
                continue;
            }
            let server = ServerProcess::start(system, setup, run)?;
            let mut report = run_load(
                system,
                setup,
                server.addr.clone(),
                load,
                run,
                Some(server.child.id()),
            )?;
            report.server_frames_per_write = server.finish();
            reports.push(report);
        }
        let pipe = reports.first().map(|r| r.calls_per_s);
        for r in &mut reports {
            r.ratio_to_pipe = pipe.map(|p| r.calls_per_s / p);
        }
        if let Some(path) = &run.plot {
            plot_point(path, many, setup, &load, &reports)?;
        }
        if !run.json {
            print_table(&reports);
            println!();
        }
        all.extend(reports);
    }
    if run.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).map_err(|e| e.to_string())?
        );
    }
    Ok(())
}

/// Writes the latency plot of one point of a comparison (one file per point when `many`).
fn plot_point(
    path: &std::path::Path,
    many: bool,
    setup: Setup,
    load: &Load,
    reports: &[Report],
) -> Result<(), String> {
    let (runtime, payload, in_flight) = (setup.runtime.name(), load.payload, load.in_flight);
    let path = if many {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("latency");
        path.with_file_name(format!(
            "{stem}-{runtime}-t{}-c{}-{payload}B-{in_flight}.svg",
            setup.threads, load.connections
        ))
    } else {
        path.to_path_buf()
    };
    let title = format!(
        "Latency, {payload} B, {} x {in_flight} in flight, {runtime}",
        load.connections
    );
    std::fs::write(&path, plot::svg(&title, reports)).map_err(|e| e.to_string())
}

fn emit(reports: &[Report], run: &RunArgs) {
    if let Some(path) = &run.plot {
        if let Err(e) = std::fs::write(path, plot::svg("Latency", reports)) {
            eprintln!("flumen-bench: cannot write {}: {e}", path.display());
        }
    }
    if run.json {
        println!(
            "{}",
            serde_json::to_string_pretty(reports).unwrap_or_default()
        );
    } else {
        print_table(reports);
    }
}
