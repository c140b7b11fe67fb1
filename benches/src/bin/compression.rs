//! Compression on and off, side by side in one process: echo calls of 64 KiB bodies (text that
//! compresses well, or random bytes that do not) over TCP loopback, with compression off, LZ4,
//! and Zstandard at levels 1 and 3 on both sides. Reports calls/s, payload MB/s (each way), the
//! process's CPU per call (client and server together, from `/proc/self/stat`), and the bytes
//! on the wire per call (the client's counters). Rounds alternate between the settings so
//! that noise hits them alike.
//!
//! ```sh
//! cargo run --release -p flumen-bench --bin compression -- [IN_FLIGHT] [SECONDS] [ROUNDS]
//! ```

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use flumen::{
    compress::{Algorithm, Compression},
    rt::TokioRuntime,
    tcp::TokioTcp,
    Bytes, ClientConfig, Router, Server, ServerConfig,
};

const PAYLOAD: usize = 64 * 1024;

fn arg(n: usize, default: f64) -> f64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// User plus system CPU time of this process, from `/proc/self/stat` (clock ticks of 10 ms).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// 64 KiB of log-like text, different per call so that nothing is cached.
fn text(seed: u64) -> Bytes {
    let mut out = String::with_capacity(PAYLOAD + 128);
    let mut n = seed;
    while out.len() < PAYLOAD {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(&format!(
            "2026-11-24T08:{:02}:{:02}Z INFO request id={} user=u{} path=/api/v1/items status=200\n",
            (n >> 20) % 60,
            (n >> 30) % 60,
            n >> 40,
            (n >> 8) % 1000
        ));
    }
    Bytes::from(out.into_bytes()).slice(..PAYLOAD)
}

fn random(seed: u64) -> Bytes {
    let mut state = seed | 1;
    Bytes::from(
        (0..PAYLOAD)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect::<Vec<u8>>(),
    )
}

struct Row {
    calls_per_sec: f64,
    cpu_per_call: Duration,
    wire_per_call: f64,
}

fn measure(
    compression: Option<Compression>,
    compressible: bool,
    in_flight: usize,
    secs: f64,
) -> Row {
    let (bound_tx, bound_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let rt = TokioRuntime::current();
            let router =
                Router::new().route_raw("echo", |request| async move { Ok(request.into_body()) });
            let server = Server::new(router)
                .config(ServerConfig::default().compression(compression))
                .bind(&rt, &TokioTcp::default(), &"127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            bound_tx.send(*server.local_addr()).unwrap();
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            drop(server);
        });
    });
    let addr = bound_rx.recv().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let bodies: Vec<Bytes> = (0..64)
        .map(|i| if compressible { text(i) } else { random(i + 1) })
        .collect();
    let (calls, cpu_used, wire) = local.block_on(&runtime, async move {
        let rt = TokioRuntime::current();
        let config = ClientConfig::default()
            .max_in_flight(in_flight)
            .compression(compression);
        let client = flumen::stream::Client::connect(&rt, &TokioTcp::default(), &addr, config)
            .await
            .unwrap();
        let method = flumen::MethodId::from_name("echo").as_u32();
        let (cpu_before, io_before) = (cpu(), client.stats());
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let callers: Vec<_> = (0..in_flight)
            .map(|i| {
                let (client, bodies) = (client.clone(), bodies.clone());
                tokio::task::spawn_local(async move {
                    let mut calls = 0u64;
                    while Instant::now() < until {
                        let body = bodies[(i + calls as usize) % bodies.len()].clone();
                        let reply = client.call(method, body).await.unwrap();
                        assert_eq!(reply.len(), PAYLOAD);
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
        let io = client.stats().since(&io_before);
        (calls, cpu() - cpu_before, io.bytes_written + io.bytes_read)
    });
    let _ = stop_tx.send(());
    let _ = server.join();
    Row {
        calls_per_sec: calls as f64 / secs,
        cpu_per_call: cpu_used / calls.max(1) as u32,
        wire_per_call: wire as f64 / calls.max(1) as f64,
    }
}

fn main() {
    let in_flight = arg(1, 16.0) as usize;
    let secs = arg(2, 3.0);
    let rounds = arg(3, 3.0) as usize;
    let settings: [(&str, Option<Compression>, bool); 6] = [
        ("off, text", None, true),
        ("lz4, text", Some(Compression::new(Algorithm::Lz4)), true),
        (
            "zstd 1, text",
            Some(Compression::new(Algorithm::Zstd { level: 1 })),
            true,
        ),
        (
            "zstd 3, text",
            Some(Compression::new(Algorithm::Zstd { level: 3 })),
            true,
        ),
        ("off, random", None, false),
        ("lz4, random", Some(Compression::new(Algorithm::Lz4)), false),
    ];
    let mut totals = vec![(0.0, Duration::ZERO, 0.0); settings.len()];
    for round in 0..rounds {
        for ((name, compression, compressible), total) in settings.iter().zip(&mut totals) {
            let row = measure(*compression, *compressible, in_flight, secs);
            println!(
                "round {round} {name:<13} {:>8.0} calls/s {:>7.1} MB/s {:>7.1} us CPU/call {:>7.0} B/call on the wire",
                row.calls_per_sec,
                row.calls_per_sec * PAYLOAD as f64 / 1e6,
                row.cpu_per_call.as_secs_f64() * 1e6,
                row.wire_per_call
            );
            total.0 += row.calls_per_sec;
            total.1 += row.cpu_per_call;
            total.2 += row.wire_per_call;
        }
    }
    println!("\n64 KiB echo x {in_flight} in flight, TCP loopback, mean of {rounds} rounds:");
    println!(
        "{:<13} {:>9} {:>9} {:>13} {:>13}",
        "setting", "calls/s", "MB/s", "CPU us/call", "wire B/call"
    );
    for ((name, _, _), (rate, cpu, wire)) in settings.iter().zip(totals) {
        let rate = rate / rounds as f64;
        println!(
            "{name:<13} {rate:>9.0} {:>9.1} {:>13.1} {:>13.0}",
            rate * PAYLOAD as f64 / 1e6,
            (cpu / rounds as u32).as_secs_f64() * 1e6,
            wire / rounds as f64
        );
    }
}
