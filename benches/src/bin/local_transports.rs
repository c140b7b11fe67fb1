//! Flumen over the transports for one host, side by side in one process: TCP loopback, Unix
//! sockets, shared memory and the in-process transport (which cannot cross processes, so `flumen-bench`, which
//! runs its server in a process of its own, cannot measure it). The server runs on a thread
//! with its own current-thread tokio runtime, the callers on another; rounds alternate between
//! the transports so that noise hits them alike.
//!
//! ```sh
//! cargo run --release -p flumen-bench --bin local-transports -- [PAYLOAD] [IN_FLIGHT] [SECONDS] [ROUNDS] [raw]
//! ```
//!
//! `FLUMEN_LOCAL_ONLY=inproc` (or `tcp`, `unix`, `shm`) runs that transport alone, for a
//! profiler.
//! `FLUMEN_LOCAL_WORKERS=N` gives each side a multi-thread runtime with `N` workers instead.
//!
//! Calls are typed (a MessagePack byte string each way); with `raw` they carry `Bytes` bodies
//! without a codec, so that what the transport copies is all that is copied.

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use flumen::{
    inproc::{InProc, InProcAddr},
    rt::TokioRuntime,
    shm::{ShmConfig, TokioShm},
    stream::Transport,
    tcp::TokioTcp,
    unix::TokioUnix,
    Bytes, Client, ClientConfig, MethodId, Request, Router, Server, Status,
};
use serde_bytes::ByteBuf;

fn arg(n: usize, default: f64) -> f64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// What one measurement runs.
#[derive(Clone, Copy)]
struct Load {
    payload: usize,
    in_flight: usize,
    secs: f64,
    raw: bool,
}

/// Calls per second of `in_flight` callers echoing `payload` bytes over `transport` for
/// `secs`.
fn measure<T: Transport + Clone>(transport: T, addr: T::Addr, load: Load) -> f64 {
    let Load {
        payload,
        in_flight,
        secs,
        raw,
    } = load;
    let (bound_tx, bound_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let server_transport = transport.clone();
    let server = std::thread::spawn(move || {
        runtime().block_on(async move {
            let rt = TokioRuntime::current();
            let router = Router::new()
                .route("echo", |body: ByteBuf| async move { Ok::<_, Status>(body) })
                .route_raw(
                    "raw",
                    |request: Request| async move { Ok(request.into_body()) },
                );
            let server = Server::new(router)
                .bind(&rt, &server_transport, &addr)
                .await
                .unwrap();
            bound_tx.send(server.local_addr().clone()).unwrap();
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            drop(server);
        });
    });
    let addr = bound_rx.recv().unwrap();
    let calls = runtime().block_on(async move {
        let rt = TokioRuntime::current();
        let config = ClientConfig::default().max_in_flight(in_flight);
        let client =
            Client::connect_with(&rt, &transport, &addr, config, flumen::MsgPack::default())
                .await
                .unwrap();
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let body = ByteBuf::from(vec![7u8; payload]);
        let raw_body = Bytes::from(vec![7u8; payload]);
        let raw_method = MethodId::from_name("raw").as_u32();
        let callers: Vec<_> = (0..in_flight)
            .map(|_| {
                let (client, body, raw_body) = (client.clone(), body.clone(), raw_body.clone());
                tokio::spawn(async move {
                    let mut calls = 0u64;
                    while Instant::now() < until {
                        let len = if raw {
                            let reply = client.raw().call(raw_method, raw_body.clone()).await;
                            reply.unwrap().len()
                        } else {
                            let reply: ByteBuf = client.call("echo", &body).await.unwrap();
                            reply.len()
                        };
                        assert_eq!(len, payload);
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        let mut calls = 0;
        for caller in callers {
            calls += caller.await.unwrap();
        }
        calls
    });
    let _ = stop_tx.send(());
    let _ = server.join();
    calls as f64 / secs
}

/// A current-thread runtime, or a multi-thread one with `FLUMEN_LOCAL_WORKERS` workers.
fn runtime() -> tokio::runtime::Runtime {
    let workers = std::env::var("FLUMEN_LOCAL_WORKERS")
        .ok()
        .and_then(|w| w.parse::<usize>().ok());
    let mut builder = match workers {
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        None => tokio::runtime::Builder::new_current_thread(),
    };
    builder.enable_all().build().unwrap()
}

/// Shared memory as configured by `FLUMEN_SHM_RING` (bytes a ring) and `FLUMEN_SHM_SPIN`
/// (checks before parking), defaults otherwise.
fn shm() -> TokioShm {
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    };
    let mut config = ShmConfig::default();
    if let Some(bytes) = env("FLUMEN_SHM_RING") {
        config = config.ring_capacity(bytes);
    }
    if let Some(checks) = env("FLUMEN_SHM_SPIN") {
        config = config.spin_checks(checks as u32);
    }
    TokioShm::new(config)
}

fn socket_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("flumen-local-{}.sock", std::process::id()))
}

fn main() {
    let payload = arg(1, 32.0) as usize;
    let in_flight = arg(2, 64.0) as usize;
    let secs = arg(3, 3.0);
    let rounds = arg(4, 3.0) as usize;
    let raw = std::env::args().nth(5).as_deref() == Some("raw");
    let load = Load {
        payload,
        in_flight,
        secs,
        raw,
    };
    if let Ok(only) = std::env::var("FLUMEN_LOCAL_ONLY") {
        let rate = match only.as_str() {
            "tcp" => measure(TokioTcp::default(), "127.0.0.1:0".parse().unwrap(), load),
            "unix" => measure(TokioUnix, socket_path(), load),
            "inproc" => measure(InProc, InProcAddr::any(), load),
            "shm" => measure(shm(), socket_path(), load),
            other => panic!("FLUMEN_LOCAL_ONLY={other}: tcp, unix, inproc or shm"),
        };
        println!("{only}: {rate:.0} calls/s");
        return;
    }
    let mut totals = [0.0f64; 4];
    for round in 0..rounds {
        let tcp = measure(TokioTcp::default(), "127.0.0.1:0".parse().unwrap(), load);
        let unix = measure(TokioUnix, socket_path(), load);
        let inproc = measure(InProc, InProcAddr::any(), load);
        let shm = measure(shm(), socket_path(), load);
        println!(
            "round {round}: tcp {tcp:.0} calls/s, unix {unix:.0} ({:.2}x tcp), inproc {inproc:.0} ({:.2}x tcp), shm {shm:.0} ({:.2}x unix)",
            unix / tcp,
            inproc / tcp,
            shm / unix
        );
        for (total, rate) in totals.iter_mut().zip([tcp, unix, inproc, shm]) {
            *total += rate;
        }
    }
    let [tcp, unix, inproc, shm] = totals.map(|t| t / rounds as f64);
    println!(
        "{payload} B x {in_flight}{}, mean of {rounds}: tcp {tcp:.0}, unix {unix:.0} ({:.2}x), inproc {inproc:.0} ({:.2}x), shm {shm:.0} ({:.2}x unix)",
        if raw { " raw" } else { "" },
        unix / tcp,
        inproc / tcp,
        shm / unix
    );
}
