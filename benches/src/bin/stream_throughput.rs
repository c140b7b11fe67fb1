//! Streaming throughput: a server streams items to a client over loopback TCP, one or many
//! streams on one connection, each under its own credit. Server and client each run on their
//! own single-threaded runtime (like `flumen-bench`'s processes), every item's length checked.
//!
//! ```text
//! cargo run --release -p flumen-bench --bin stream-throughput -- [--runtime tokio|smol] \
//!     [--window BYTES] [--sizes 32,65536] [--streams 1,16] [SECONDS]
//! ```

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use flumen::{
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::{CallOptions, StreamMode, Transport},
    tcp::{SmolTcp, TokioTcp},
    ClientConfig, ErrorCode, MethodId, Router, Server, Status,
};
use futures_lite::StreamExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

const FLOOD: MethodId = MethodId::from_name("flood");

/// Streams items of the requested size until the client goes away.
fn router() -> Router {
    Router::new().route_raw("flood", |request| async move {
        let sink = request
            .sink()
            .ok_or(Status::new(ErrorCode::BAD_REQUEST, "not a stream"))?;
        let size = request
            .body()
            .first_chunk::<4>()
            .map_or(0, |b| u32::from_le_bytes(*b) as usize);
        let item = Bytes::from(vec![0x5au8; size]);
        loop {
            sink.send(item.clone()).await?;
        }
    })
}

struct Figures {
    items: u64,
    elapsed: Duration,
}

/// Runs `streams` streams of `size`-byte items for `duration` on the client side.
async fn measure<R: Runtime, T: Transport<Addr = SocketAddr>>(
    rt: R,
    transport: T,
    addr: SocketAddr,
    size: usize,
    streams: usize,
    duration: Duration,
    window: u32,
) -> Result<Figures, Error> {
    let config = ClientConfig::default().stream_window(window);
    let client = flumen::stream::Client::connect(&rt, &transport, &addr, config).await?;
    let items = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (done, finished) = smol::channel::bounded::<Result<(), String>>(streams);
    let start = Instant::now();
    for _ in 0..streams {
        let (client, items, stop, done) =
            (client.clone(), items.clone(), stop.clone(), done.clone());
        rt.spawn(async move {
            let body = Bytes::from((size as u32).to_le_bytes().to_vec());
            let opened = client
                .open_stream(
                    FLOOD.as_u32(),
                    body,
                    StreamMode::ServerStreaming,
                    &CallOptions::new(),
                )
                .await;
            let result = match opened {
                Ok((_, mut replies)) => loop {
                    if stop.load(Ordering::Relaxed) {
                        break Ok(());
                    }
                    match replies.next().await {
                        Some(Ok(item)) if item.len() == size => {
                            items.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Ok(item)) => break Err(format!("item of {} bytes", item.len())),
                        Some(Err(e)) => break Err(e.to_string()),
                        None => break Err("stream ended".into()),
                    }
                },
                Err(e) => Err(e.to_string()),
            };
            let _ = done.send(result).await;
        });
    }
    rt.sleep_until(start + duration).await;
    stop.store(true, Ordering::Relaxed);
    let counted = items.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    for _ in 0..streams {
        finished.recv().await??;
    }
    Ok(Figures {
        items: counted,
        elapsed,
    })
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = args
        .iter()
        .position(|a| a == "--runtime")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "tokio".into());
    let window: u32 = args
        .iter()
        .position(|a| a == "--window")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(flumen::stream::flow::DEFAULT_STREAM_WINDOW), |w| {
            w.parse()
        })?;
    // The one argument that is neither a flag nor a flag's value.
    let seconds: f64 = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || !args[i - 1].starts_with("--")))
        .map_or(Ok(2.0), |(_, s)| s.parse())?;
    let duration = Duration::from_secs_f64(seconds);
    println!("stream window {window} bytes");
    println!("runtime  item size  streams      items/s      MB/s");
    let list = |flag: &str, default: &[usize]| -> Vec<usize> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_else(|| default.to_vec())
    };
    for size in list("--sizes", &[32, 64 * 1024]) {
        for streams in list("--streams", &[1, 16]) {
            let figures = match runtime.as_str() {
                "smol" => on_smol(size, streams, duration, window)?,
                _ => on_tokio(size, streams, duration, window)?,
            };
            let secs = figures.elapsed.as_secs_f64();
            let per_sec = figures.items as f64 / secs;
            println!(
                "{runtime:<7} {size:>10} {streams:>8} {per_sec:>12.0} {:>9.1}",
                per_sec * size as f64 / 1e6
            );
        }
    }
    Ok(())
}

fn on_tokio(
    size: usize,
    streams: usize,
    duration: Duration,
    window: u32,
) -> Result<Figures, Error> {
    let server_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    let server = std::thread::spawn(move || {
        server_rt.block_on(async move {
            let rt = TokioRuntime::current();
            let handle = Server::new(router())
                .bind(
                    &rt,
                    &TokioTcp::default(),
                    &"127.0.0.1:0".parse().expect("address"),
                )
                .await
                .expect("bind");
            let _ = addr_tx.send(*handle.local_addr());
            let _ = stop_rx.recv().await;
        });
    });
    let addr = addr_rx.recv()?;
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let figures = client_rt.block_on(async {
        measure(
            TokioRuntime::current(),
            TokioTcp::default(),
            addr,
            size,
            streams,
            duration,
            window,
        )
        .await
    });
    drop(stop_tx);
    let _ = server.join();
    figures
}

fn on_smol(size: usize, streams: usize, duration: Duration, window: u32) -> Result<Figures, Error> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    let server = std::thread::spawn(move || {
        let executor = Arc::new(smol::Executor::new());
        let rt = SmolRuntime::new(executor.clone());
        smol::block_on(executor.run(async move {
            let handle = Server::new(router())
                .bind(
                    &rt,
                    &SmolTcp::default(),
                    &"127.0.0.1:0".parse().expect("address"),
                )
                .await
                .expect("bind");
            let _ = addr_tx.send(*handle.local_addr());
            let _ = stop_rx.recv().await;
        }));
    });
    let addr = addr_rx.recv()?;
    let executor = Arc::new(smol::Executor::new());
    let rt = SmolRuntime::new(executor.clone());
    let figures = smol::block_on(executor.run(measure(
        rt,
        SmolTcp::default(),
        addr,
        size,
        streams,
        duration,
        window,
    )));
    drop(stop_tx);
    let _ = server.join();
    figures
}
