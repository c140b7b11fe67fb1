//! A director and four workers in one process, each a cluster member gossiping over its own
//! UDP socket on loopback, each worker serving RPC over TCP. The director sends calls to "any
//! worker with tag X"; a worker is killed (no goodbye), restarted, and another leaves; the
//! output shows the director's view of the cluster as it changes and where calls went.
//!
//! ```text
//! cargo run --example cluster_demo [-- --runtime smol]
//! ```
//!
//! Or one member per process (kill a worker with Ctrl-C and watch the director; `--for N`
//! makes a worker leave gracefully after N seconds):
//!
//! ```text
//! cargo run --example cluster_demo -- --role director [--gossip 127.0.0.1:7946] [--filter role=worker]
//! cargo run --example cluster_demo -- --role worker --name w1 --tags zone=eu,gpu [--seed 127.0.0.1:7946] [--for 30]
//! ```

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::Error;
use flumen::{
    rt::{Runtime, SmolRuntime, TokioRuntime},
    stream::Transport,
    tcp::{SmolTcp, TokioTcp},
    Server, ServerHandle,
};
use flumen_membership::{ClusterClient, Config, Event, Membership, Net, Registry, State, Tags};

/// What workers do.
#[flumen::service]
pub trait Jobs {
    /// Runs a job; returns the worker's name. Safe to run twice.
    #[idempotent]
    async fn run(&self, job: u64) -> String;
}

struct Worker {
    name: String,
    done: Arc<AtomicU64>,
}

impl Jobs for Worker {
    async fn run(&self, _job: u64) -> String {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.name.clone()
    }
}

/// A running worker: its server and its membership.
struct Running {
    server: ServerHandle<SocketAddr>,
    membership: Membership,
}

const WORKERS: [(&str, &str); 4] = [
    ("w1", "zone=eu,gpu"),
    ("w2", "zone=eu"),
    ("w3", "zone=us,gpu"),
    ("w4", "zone=us"),
];

fn tags(spec: &str) -> Tags {
    let mut tags = Tags::from_iter([("role", "worker")]);
    for tag in spec.split(',').filter(|t| !t.is_empty()) {
        let (name, value) = tag.split_once('=').unwrap_or((tag, ""));
        tags.insert(name, value);
    }
    tags
}

struct Demo {
    start: Instant,
}

impl Demo {
    fn say(&self, what: &str) {
        println!("[{:>6.2}s] {what}", self.start.elapsed().as_secs_f64());
    }

    /// A member gossiping on a loopback UDP port, with settings that answer within a second.
    fn member<R: Net>(
        rt: &R,
        name: &str,
        rpc: SocketAddr,
        tags: Tags,
        seeds: &[SocketAddr],
    ) -> Result<Membership, Error> {
        Ok(Membership::builder(name, rpc)
            .tags(tags)
            .seeds(seeds)
            .config(Config::fast())
            .bind(rt, common::loopback())?)
    }

    async fn worker<R: Net, T: Transport<Addr = SocketAddr>>(
        rt: &R,
        transport: &T,
        (name, spec): (&str, &str),
        seed: SocketAddr,
        done: &Arc<AtomicU64>,
    ) -> Result<Running, Error> {
        let worker = Worker {
            name: name.into(),
            done: done.clone(),
        };
        let server = Server::new(JobsServer::new(worker))
            .bind(rt, transport, &common::loopback())
            .await?;
        let membership = Self::member(rt, name, *server.local_addr(), tags(spec), &[seed])?;
        Ok(Running { server, membership })
    }

    /// Prints the director's events as they come, until the receiver closes.
    fn watch<R: Runtime>(&self, rt: &R, registry: &Registry) {
        let events = registry.subscribe();
        let start = self.start;
        rt.spawn(async move {
            while let Ok(event) = events.recv().await {
                let line = match event {
                    Event::Joined(m) => format!("{} joined ({})", m.name, show(&m.tags)),
                    Event::Suspect(m) => format!("{} suspected: no new calls", m.name),
                    Event::Recovered(m) => format!("{} answered again", m.name),
                    Event::Failed(m) => format!("{} declared down", m.name),
                    Event::Left(m) => format!("{} left", m.name),
                    Event::TagsChanged { member, .. } => {
                        format!("{} now tagged {}", member.name, show(&member.tags))
                    }
                };
                println!(
                    "[{:>6.2}s]   director sees: {line}",
                    start.elapsed().as_secs_f64()
                );
            }
        });
    }

    /// Runs `calls` jobs from 8 callers against workers passing `filter`; returns how many each
    /// worker ran. Any failed call fails the demo.
    async fn round<R: Runtime>(
        &self,
        rt: &R,
        cluster: &ClusterClient,
        filter: &str,
        calls: u64,
        done: &[Arc<AtomicU64>],
    ) -> Result<String, Error> {
        let before: Vec<u64> = done.iter().map(|d| d.load(Ordering::Relaxed)).collect();
        let jobs = JobsClient::new(cluster.workers(filter)?);
        let (tx, rx) = async_channel::unbounded();
        for caller in 0..8 {
            let (jobs, tx) = (jobs.clone(), tx.clone());
            rt.spawn(async move {
                for job in 0..calls / 8 {
                    let result = jobs.run(caller * 1_000_000 + job).await;
                    if tx.send(result.map(|_| ())).await.is_err() {
                        return;
                    }
                    // Spread the round over a few hundred milliseconds.
                    if job % 8 == 0 {
                        futures_lite::future::yield_now().await;
                    }
                }
            });
        }
        drop(tx);
        while let Ok(result) = rx.recv().await {
            result?;
        }
        let ran: Vec<String> = WORKERS
            .iter()
            .zip(done.iter().zip(before))
            .map(|((name, _), (d, b))| format!("{name} {}", d.load(Ordering::Relaxed) - b))
            .collect();
        Ok(ran.join(", "))
    }
}

fn show(tags: &Tags) -> String {
    tags.iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.to_owned()
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn table(registry: &Registry) -> String {
    let members: BTreeMap<String, State> = registry
        .members()
        .into_iter()
        .map(|(m, s)| (m.name, s))
        .collect();
    members
        .iter()
        .map(|(name, state)| format!("{name}:{state:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn until<R: Runtime>(
    rt: &R,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        rt.sleep_until(Instant::now() + Duration::from_millis(10))
            .await;
    }
    Ok(())
}

fn state_of(registry: &Registry, name: &str) -> Option<State> {
    registry
        .members()
        .into_iter()
        .find(|(m, _)| m.name == name)
        .map(|(_, s)| s)
}

async fn script<R: Net, T: Transport<Addr = SocketAddr> + Clone>(
    demo: Demo,
    rt: R,
    transport: T,
) -> Result<(), Error> {
    let (demo, rt, transport) = (&demo, &rt, &transport);
    let nowhere: SocketAddr = "127.0.0.1:9".parse()?;
    let director = Demo::member(
        rt,
        "director",
        nowhere,
        Tags::from_iter([("role", "director")]),
        &[],
    )?;
    let seed = director.identity().gossip_addr();
    let registry = director.registry().clone();
    demo.say(&format!("director gossiping on {seed}"));
    demo.watch(rt, &registry);

    let done: Vec<Arc<AtomicU64>> = WORKERS.iter().map(|_| Arc::default()).collect();
    let mut running = Vec::new();
    for (spec, done) in WORKERS.iter().zip(&done) {
        running.push(Some(Demo::worker(rt, transport, *spec, seed, done).await?));
    }
    let workers: flumen_membership::Filter = "role=worker".parse()?;
    until(rt, "every worker is seen", || {
        registry.matching(&workers).len() == WORKERS.len()
    })
    .await?;
    demo.say(&format!("cluster: {}", table(&registry)));

    let cluster = ClusterClient::for_member(rt, transport.clone(), &director);
    for filter in ["role=worker", "gpu", "zone=eu && !gpu"] {
        let ran = demo.round(rt, &cluster, filter, 2_000, &done).await?;
        demo.say(&format!("2000 jobs for `{filter}`: {ran}"));
    }

    demo.say("killing w2 (its server and its gossip stop, nothing announced)");
    if let Some(w2) = running[1].take() {
        w2.server.abort();
        w2.membership.halt();
    }
    let killed = Instant::now();
    let ran = demo.round(rt, &cluster, "zone=eu", 4_000, &done).await?;
    demo.say(&format!(
        "4000 jobs for `zone=eu` across the crash, none failed: {ran}"
    ));
    until(rt, "w2 is declared down", || {
        state_of(&registry, "w2") == Some(State::Down)
    })
    .await?;
    demo.say(&format!(
        "w2 declared down {:?} after the kill",
        killed.elapsed()
    ));

    demo.say("restarting w2");
    running[1] = Some(Demo::worker(rt, transport, WORKERS[1], seed, &done[1]).await?);
    until(rt, "w2 is back", || {
        state_of(&registry, "w2") == Some(State::Alive)
    })
    .await?;
    let ran = demo.round(rt, &cluster, "zone=eu", 2_000, &done).await?;
    demo.say(&format!("2000 jobs for `zone=eu`: {ran}"));

    demo.say("w3 leaves gracefully");
    if let Some(w3) = running[2].take() {
        w3.membership.leave().await?;
        w3.server.shutdown(Duration::from_secs(1)).await;
    }
    until(rt, "w3 is seen leaving", || {
        state_of(&registry, "w3") == Some(State::Left)
    })
    .await?;
    let ran = demo.round(rt, &cluster, "gpu", 2_000, &done).await?;
    demo.say(&format!("2000 jobs for `gpu`: {ran}"));

    demo.say(&format!("cluster: {}", table(&registry)));
    let stats = director.stats();
    demo.say(&format!(
        "director's gossip: {} datagrams ({} bytes) sent, {} ({} bytes) received in {:.1}s",
        stats.packets_sent,
        stats.bytes_sent,
        stats.packets_received,
        stats.bytes_received,
        demo.start.elapsed().as_secs_f64()
    ));
    for worker in running.iter().flatten() {
        worker.membership.leave().await?;
    }
    director.leave().await?;
    Ok(())
}

/// The value of option `--name`, if given.
fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// `--role director`: a director that joins nobody, prints the cluster's events, and sends
/// 200 jobs a second to the workers passing `--filter`, printing who ran them.
async fn director<R: Net, T: Transport<Addr = SocketAddr> + Clone>(
    demo: Demo,
    rt: R,
    transport: T,
) -> Result<(), Error> {
    let gossip: SocketAddr = arg("--gossip")
        .unwrap_or_else(|| "127.0.0.1:7946".into())
        .parse()?;
    let filter = arg("--filter").unwrap_or_else(|| "role=worker".into());
    let director = Membership::builder("director", "127.0.0.1:9".parse()?)
        .tags(Tags::from_iter([("role", "director")]))
        .config(Config::fast())
        .bind(&rt, gossip)?;
    demo.say(&format!(
        "director gossiping on {gossip}; jobs go to `{filter}`"
    ));
    demo.watch(&rt, director.registry());
    let cluster = ClusterClient::for_member(&rt, transport, &director);
    let jobs = JobsClient::new(cluster.workers(&filter)?);
    loop {
        let second = Instant::now() + Duration::from_secs(1);
        let mut ran: BTreeMap<String, u64> = BTreeMap::new();
        let mut failed = 0;
        for job in 0..200 {
            match jobs.run(job).await {
                Ok(worker) => *ran.entry(worker).or_default() += 1,
                Err(_) => failed += 1,
            }
        }
        let ran: Vec<String> = ran.iter().map(|(w, n)| format!("{w} {n}")).collect();
        demo.say(&format!("200 jobs: {} (failed: {failed})", ran.join(", ")));
        rt.sleep_until(second).await;
    }
}

/// `--role worker`: a worker that joins through `--seed`, serves jobs, and leaves after
/// `--for` seconds (or runs until killed: a crash, to the cluster).
async fn worker<R: Net, T: Transport<Addr = SocketAddr> + Clone>(
    demo: Demo,
    rt: R,
    transport: T,
) -> Result<(), Error> {
    let name = arg("--name").ok_or("--name is required")?;
    let seed: SocketAddr = arg("--seed")
        .unwrap_or_else(|| "127.0.0.1:7946".into())
        .parse()?;
    let spec = arg("--tags").unwrap_or_default();
    let done = Arc::default();
    let running = Demo::worker(&rt, &transport, (&name, &spec), seed, &done).await?;
    demo.say(&format!(
        "{name} ({}) serving on {}, gossiping on {}",
        show(&tags(&spec)),
        running.server.local_addr(),
        running.membership.identity().gossip_addr()
    ));
    let lifetime = arg("--for").map(|s| s.parse::<u64>()).transpose()?;
    let end = lifetime.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        rt.sleep_until(Instant::now() + Duration::from_secs(1))
            .await;
        demo.say(&format!(
            "{name}: {} jobs run; sees {}",
            done.load(Ordering::Relaxed),
            table(running.membership.registry())
        ));
        if end.is_some_and(|end| Instant::now() >= end) {
            running.membership.leave().await?;
            running.server.shutdown(Duration::from_secs(1)).await;
            demo.say(&format!("{name} left"));
            return Ok(());
        }
    }
}

/// Runs what `--role` asks for (default: the scripted demo in one process).
async fn role<R: Net, T: Transport<Addr = SocketAddr> + Clone>(
    demo: Demo,
    rt: R,
    transport: T,
) -> Result<(), Error> {
    match arg("--role").as_deref() {
        None | Some("demo") => script(demo, rt, transport).await,
        Some("director") => director(demo, rt, transport).await,
        Some("worker") => worker(demo, rt, transport).await,
        Some(other) => Err(format!("unknown role {other:?}: use director or worker").into()),
    }
}

fn main() -> Result<(), Error> {
    let demo = Demo {
        start: Instant::now(),
    };
    // The same roles on either runtime: only the runtime, its spawner and the transport differ.
    if common::smol_requested()? {
        // smol's global executor runs the members' and the servers' tasks.
        smol::block_on(role(demo, SmolRuntime::global(), SmolTcp::default()))
    } else {
        let tokio = tokio::runtime::Runtime::new()?;
        let rt = TokioRuntime::new(tokio.handle().clone());
        tokio.block_on(role(demo, rt, TokioTcp::default()))
    }
}
