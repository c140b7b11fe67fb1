//! An echo service and a load loop against it.
//!
//! ```text
//! cargo run --release --example echo                      # server + client in one process
//! cargo run --release --example echo -- --runtime smol --in-flight 1
//! cargo run --release --example echo -- --serve 127.0.0.1:7000
//! cargo run --release --example echo -- --connect 127.0.0.1:7000 --duration 10
//! ```
//!
//! In one process the server and the client each get one runtime thread of their own.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use flumen::{
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    Bytes, Client, ClientConfig, MethodId, Router, Server, ServerConfig, ServerHandle, Status,
};
use serde_bytes::ByteBuf;

#[derive(Parser, Debug, Clone)]
#[command(about = "Flumen echo: a server, a client, or both on loopback")]
struct Args {
    /// Runtime for this process.
    #[arg(long, value_enum, default_value_t = Rt::Tokio)]
    runtime: Rt,
    /// Only serve, on this address.
    #[arg(long, conflicts_with = "connect")]
    serve: Option<SocketAddr>,
    /// Only run the client, against this address.
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Calls in flight on the connection.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// How long the client runs, in seconds.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Send raw bytes (no codec) instead of a MessagePack-encoded byte string.
    #[arg(long)]
    raw: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Rt {
    Tokio,
    Smol,
}

const ECHO: &str = "echo";
const ECHO_RAW: &str = "echo_raw";

fn router() -> Router {
    Router::new()
        .route(ECHO, |body: ByteBuf| async move { Ok::<_, Status>(body) })
        .route_raw(ECHO_RAW, |request| async move {
            Ok(flumen::Request::into_body(request))
        })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    match (args.serve, args.connect) {
        (Some(addr), _) => {
            let (_server, local) = start_server(args.runtime, addr)?;
            println!(
                "serving echo on {local} ({:?}); Ctrl-C to stop",
                args.runtime
            );
            loop {
                std::thread::park();
            }
        }
        (None, Some(addr)) => run_client(&args, addr),
        (None, None) => {
            let (server, addr) = start_server(args.runtime, "127.0.0.1:0".parse()?)?;
            println!("server listening on {addr} ({:?})", args.runtime);
            let result = run_client(&args, addr);
            drop(server);
            result
        }
    }
}

/// A server on its own thread and single-threaded runtime; dropping the guard stops it.
struct ServerThread {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start_server(
    rt: Rt,
    addr: SocketAddr,
) -> Result<(ServerThread, SocketAddr), Box<dyn std::error::Error>> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (ready, bound) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let wait = move || {
            let _ = stopped.recv();
        };
        match rt {
            Rt::Tokio => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async {
                    let server = serve(TokioRuntime::current(), TokioTcp::default(), addr).await;
                    let _ = ready.send(
                        server
                            .as_ref()
                            .map(|s| *s.local_addr())
                            .map_err(|e| e.to_string()),
                    );
                    let stop = tokio::task::spawn_blocking(wait);
                    let _ = stop.await;
                    drop(server);
                });
            }
            Rt::Smol => {
                let executor = Arc::new(smol::Executor::new());
                smol::block_on(executor.run(async {
                    let server =
                        serve(SmolRuntime::new(executor.clone()), SmolTcp::default(), addr).await;
                    let _ = ready.send(
                        server
                            .as_ref()
                            .map(|s| *s.local_addr())
                            .map_err(|e| e.to_string()),
                    );
                    smol::unblock(wait).await;
                    drop(server);
                }));
            }
        }
    });
    let local = bound.recv()??;
    Ok((
        ServerThread {
            stop: Some(stop),
            thread: Some(thread),
        },
        local,
    ))
}

async fn serve<R: Runtime, T: Transport<Addr = SocketAddr>>(
    rt: R,
    transport: T,
    addr: SocketAddr,
) -> std::io::Result<ServerHandle<SocketAddr>> {
    Server::new(router())
        .config(ServerConfig::default())
        .bind(&rt, &transport, &addr)
        .await
}

fn run_client(args: &Args, addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let report = match args.runtime {
        Rt::Tokio => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(load(
                TokioRuntime::new(runtime.handle().clone()),
                TokioTcp::default(),
                addr,
                args.clone(),
            ))?
        }
        Rt::Smol => {
            let executor = Arc::new(smol::Executor::new());
            let rt = SmolRuntime::new(executor.clone());
            smol::block_on(executor.run(load(rt, SmolTcp::default(), addr, args.clone())))?
        }
    };
    let secs = report.elapsed.as_secs_f64();
    let rate = report.calls as f64 / secs;
    println!(
        "{} calls in {:.2} s: {:.0} calls/s, {:.1} MB/s each way, mean latency {:.1} us \
         ({} in flight, {} B payload, {:?}, {})",
        report.calls,
        secs,
        rate,
        rate * args.payload as f64 / 1e6,
        args.in_flight as f64 / rate * 1e6,
        args.in_flight,
        args.payload,
        args.runtime,
        if args.raw { "raw" } else { "msgpack" },
    );
    Ok(())
}

struct Report {
    calls: u64,
    elapsed: Duration,
}

/// `in_flight` tasks call in a loop until the duration is up; every reply is checked.
async fn load<R: Runtime, T: Transport<Addr = SocketAddr>>(
    rt: R,
    transport: T,
    addr: SocketAddr,
    args: Args,
) -> Result<Report, Box<dyn std::error::Error>> {
    let config = ClientConfig::default().max_in_flight(args.in_flight);
    let client =
        Client::connect_with(&rt, &transport, &addr, config, flumen::MsgPack::default()).await?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let (done, results) = std::sync::mpsc::channel();
    let (finished, all_done) = smol::channel::bounded::<()>(1);
    for task in 0..args.in_flight {
        let (client, done, finished) = (client.clone(), done.clone(), finished.clone());
        let (payload, raw) = (args.payload, args.raw);
        rt.spawn(async move {
            let body: Vec<u8> = (0..payload).map(|i| (i + task) as u8).collect();
            let raw_body = Bytes::from(body.clone());
            let body = ByteBuf::from(body);
            let echo_raw = MethodId::from_name(ECHO_RAW).as_u32();
            let mut calls = 0u64;
            let outcome = loop {
                if Instant::now() >= until {
                    break Ok(calls);
                }
                let ok = if raw {
                    client
                        .raw()
                        .call(echo_raw, raw_body.clone())
                        .await
                        .map(|r| r == raw_body)
                        .map_err(|e| e.to_string())
                } else {
                    client
                        .call::<_, ByteBuf>(ECHO, &body)
                        .await
                        .map(|r| r == body)
                        .map_err(|e| e.to_string())
                };
                match ok {
                    Ok(true) => calls += 1,
                    Ok(false) => break Err("reply differs from request".to_string()),
                    Err(e) => break Err(e),
                }
            };
            let _ = done.send(outcome);
            drop(finished);
        });
    }
    drop((done, finished));
    let _ = all_done.recv().await;
    let elapsed = started.elapsed();
    let mut calls = 0;
    for outcome in results.try_iter() {
        calls += outcome?;
    }
    Ok(Report { calls, elapsed })
}
