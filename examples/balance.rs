//! A balanced client over three servers: calls spread, one server is killed, its calls move to
//! the other two without one failing, and it comes back.
//!
//! ```text
//! cargo run --example balance [-- --runtime smol]
//! ```

mod common;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::Error;
use flumen::{
    balance::{discovery::Static, Backoff, BalanceConfig, Strategy},
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    Client, MsgPack, Server, ServerHandle,
};

/// A replicated lookup service.
#[flumen::service]
pub trait Lookup {
    /// The name of the replica that answered (safe to ask twice).
    #[idempotent]
    async fn whoami(&self) -> String;
}

struct Replica {
    name: String,
    served: Arc<AtomicU64>,
}

impl Lookup for Replica {
    async fn whoami(&self) -> String {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.name.clone()
    }
}

const REPLICAS: usize = 3;
const CALLS_PER_ROUND: u64 = 3_000;

/// Starts replica `i` on `addr`, counting its calls in `served`.
async fn start<R: Runtime, T: Transport<Addr = SocketAddr>>(
    rt: &R,
    transport: &T,
    i: usize,
    addr: SocketAddr,
    served: &Arc<AtomicU64>,
) -> Result<ServerHandle<SocketAddr>, Error> {
    let replica = Replica {
        name: format!("replica-{i}"),
        served: served.clone(),
    };
    Ok(Server::new(LookupServer::new(replica))
        .bind(rt, transport, &addr)
        .await?)
}

/// Runs a round of calls from 16 concurrent callers; returns the calls each replica served
/// meanwhile. Fails if any call fails.
async fn round<R: Runtime>(
    rt: &R,
    lookup: &LookupClient,
    served: &[Arc<AtomicU64>],
) -> Result<Vec<u64>, Error> {
    let before: Vec<u64> = served.iter().map(|s| s.load(Ordering::Relaxed)).collect();
    let (done, results) = async_channel::unbounded();
    for _ in 0..16 {
        let (lookup, done) = (lookup.clone(), done.clone());
        rt.spawn(async move {
            for _ in 0..CALLS_PER_ROUND / 16 {
                if let Err(e) = lookup.whoami().await {
                    let _ = done.send(Err(e)).await;
                    return;
                }
            }
            let _ = done.send(Ok(())).await;
        });
    }
    drop(done);
    while let Ok(result) = results.recv().await {
        result?;
    }
    Ok(served
        .iter()
        .zip(before)
        .map(|(s, b)| s.load(Ordering::Relaxed) - b)
        .collect())
}

/// The demo, on runtime `rt` over `transport`.
async fn run<R: Runtime, T: Transport<Addr = SocketAddr> + Clone>(
    rt: R,
    transport: T,
) -> Result<(), Error> {
    let served: Vec<Arc<AtomicU64>> = (0..REPLICAS).map(|_| Arc::default()).collect();
    let mut servers = Vec::new();
    for (i, served) in served.iter().enumerate() {
        servers.push(Some(
            start(&rt, &transport, i, common::loopback(), served).await?,
        ));
    }
    let addrs: Vec<SocketAddr> = servers.iter().flatten().map(|s| *s.local_addr()).collect();
    println!("replicas on {addrs:?}");

    let config = BalanceConfig::new()
        .strategy(Strategy::RoundRobin)
        .backoff(Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(200),
        });
    let client = Client::balanced_with(
        &rt,
        transport.clone(),
        Static::new(addrs.clone()),
        config,
        MsgPack::default(),
    );
    let lookup = LookupClient::new(client.clone());

    let spread = round(&rt, &lookup, &served).await?;
    println!("{CALLS_PER_ROUND} calls, round robin: served {spread:?}");

    if let Some(server) = servers[1].take() {
        server.abort();
    }
    let killed = Instant::now();
    let spread = round(&rt, &lookup, &served).await?;
    println!(
        "replica-1 killed: {CALLS_PER_ROUND} calls, none failed, served {spread:?} (the round took {:?})",
        killed.elapsed()
    );

    servers[1] = Some(start(&rt, &transport, 1, addrs[1], &served[1]).await?);
    let balancer = client.balancer().ok_or("the client is balanced")?;
    // Calls reconnect the pool; wait until it holds every replica again.
    let restarted = Instant::now();
    while balancer
        .stats()
        .endpoints
        .iter()
        .any(|e| e.connections == 0)
    {
        if restarted.elapsed() > Duration::from_secs(10) {
            return Err("replica-1 never came back".into());
        }
        lookup.whoami().await?;
        rt.sleep_until(Instant::now() + Duration::from_millis(5))
            .await;
    }
    let spread = round(&rt, &lookup, &served).await?;
    println!("replica-1 restarted: {CALLS_PER_ROUND} calls, served {spread:?}");
    let stats = balancer.stats();
    println!(
        "retries {} (refused by the budget: {}); per endpoint: {}",
        stats.retries,
        stats.retries_refused,
        stats
            .endpoints
            .iter()
            .map(|e| format!("{} {} calls, {} failures", e.address, e.calls, e.failures))
            .collect::<Vec<_>>()
            .join("; ")
    );
    if spread.contains(&0) {
        return Err("a replica got no calls after the restart".into());
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    // The same demo on either runtime: only the runtime, its spawner and the transport differ.
    if common::smol_requested()? {
        // smol's global executor runs the server's and the client's tasks.
        smol::block_on(run(SmolRuntime::global(), SmolTcp::default()))
    } else {
        let tokio = tokio::runtime::Runtime::new()?;
        let rt = TokioRuntime::new(tokio.handle().clone());
        tokio.block_on(run(rt, TokioTcp::default()))
    }
}
