//! Bulk bytes in the typed message against the same bytes as an attachment: an echo of 64 KiB
//! and 1 MiB, both ways, side by side in one run. Server and client each on their own
//! single-threaded tokio runtime over loopback TCP, 16 calls in flight, every reply checked.
//!
//! ```text
//! cargo run --release -p flumen-bench --bin attachments -- [SECONDS]
//! ```

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use flumen::{
    rt::{Runtime, TokioRuntime},
    tcp::TokioTcp,
    Attachment, Client, ClientConfig, MsgPack, Server, WithAttachment,
};
use serde_bytes::ByteBuf;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The same echo two ways.
#[flumen::service]
pub trait Bulk {
    /// The bytes inside the MessagePack message (a `bin` value, encoded and decoded).
    async fn inline(&self, data: ByteBuf) -> ByteBuf;
    /// The bytes as an attachment (no codec, no copy).
    async fn attached(&self, data: Attachment) -> WithAttachment<()>;
}

struct Echo;

impl Bulk for Echo {
    async fn inline(&self, data: ByteBuf) -> ByteBuf {
        data
    }

    async fn attached(&self, data: Attachment) -> WithAttachment<()> {
        WithAttachment::new((), data)
    }
}

const IN_FLIGHT: usize = 16;

fn main() -> Result<(), Error> {
    let seconds: f64 = std::env::args().nth(1).map_or(Ok(2.0), |s| s.parse())?;
    let duration = Duration::from_secs_f64(seconds);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let rt = TokioRuntime::current();
            let server = Server::new(BulkServer::new(Echo).into_router())
                .bind(
                    &rt,
                    &TokioTcp::default(),
                    &"127.0.0.1:0".parse().expect("address"),
                )
                .await
                .expect("bind");
            let _ = addr_tx.send(*server.local_addr());
            std::future::pending::<()>().await;
        });
    });
    let addr: SocketAddr = addr_rx.recv()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let rt = TokioRuntime::current();
        let config = ClientConfig::default().max_in_flight(IN_FLIGHT);
        let client =
            Client::connect_with(&rt, &TokioTcp::default(), &addr, config, MsgPack::default())
                .await?;
        let bulk = BulkClient::new(client);
        println!("size       way          calls/s      MB/s  x inline");
        for size in [64 * 1024, 1 << 20] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let inline = run(&rt, duration, {
                let (bulk, data) = (bulk.clone(), ByteBuf::from(data.clone()));
                move || {
                    let (bulk, data) = (bulk.clone(), data.clone());
                    async move {
                        let reply = bulk.inline(data.clone()).await.map_err(|e| e.to_string())?;
                        check(reply == data)
                    }
                }
            })
            .await?;
            let attached = run(&rt, duration, {
                let (bulk, data) = (bulk.clone(), Attachment::from(data));
                move || {
                    let (bulk, data) = (bulk.clone(), data.clone());
                    async move {
                        let reply = bulk
                            .attached(data.clone())
                            .await
                            .map_err(|e| e.to_string())?;
                        check(reply.attachment == data)
                    }
                }
            })
            .await?;
            for (way, rate) in [("inline", inline), ("attachment", attached)] {
                println!(
                    "{size:>8}   {way:<10} {rate:>10.0} {:>9.1}  {:.2}",
                    rate * size as f64 / 1e6,
                    rate / inline
                );
            }
        }
        Ok(())
    })
}

fn check(equal: bool) -> Result<(), String> {
    if equal {
        Ok(())
    } else {
        Err("echo returned different bytes".into())
    }
}

/// Runs `IN_FLIGHT` loops of `call` for `duration`; returns calls per second.
async fn run<F, Fut>(rt: &TokioRuntime, duration: Duration, call: F) -> Result<f64, Error>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (done, finished) = smol::channel::bounded::<Result<(), String>>(IN_FLIGHT);
    let start = Instant::now();
    for _ in 0..IN_FLIGHT {
        let (call, calls, stop, done) = (call.clone(), calls.clone(), stop.clone(), done.clone());
        rt.spawn(async move {
            let mut result = Ok(());
            while result.is_ok() && !stop.load(Ordering::Relaxed) {
                result = call().await;
                calls.fetch_add(1, Ordering::Relaxed);
            }
            let _ = done.send(result).await;
        });
    }
    rt.sleep_until(start + duration).await;
    stop.store(true, Ordering::Relaxed);
    let rate = calls.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    for _ in 0..IN_FLIGHT {
        finished.recv().await??;
    }
    Ok(rate)
}
