//! A balanced client over a fleet of three servers, each in a network namespace of its own,
//! under steady load: one server is killed, another cut off (its link taken down), both come
//! back, and a fourth joins through discovery. Every call resolves; a call that may have run
//! is retried only if its method is idempotent, and one that provably never ran is retried
//! elsewhere, so writes fail only when a server is lost under them, at most one per caller
//! each time; traffic leaves the lost servers within the health budget and reaches the
//! returned and the new one. The namespaces are made and removed here; without the rights the
//! test is reported ignored (a failure with `FLUMEN_REQUIRE_EXTERNAL=1`).

mod common;
#[path = "common/external.rs"]
mod external;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{eventually, netns::Netns, run_smol, run_tokio, Env};
use flumen::{
    balance::{discovery, Backoff, BalanceConfig, Balancer, OutlierDetection},
    stream::{CallError, Transport},
    tcp::{SmolTcp, TokioTcp},
    Client, ClientConfig, MsgPack, RpcError, Server, ServerHandle,
};
use parking_lot::Mutex;

#[flumen::service]
pub trait Replica {
    /// Records `id` as written here and answers the replica's index. Not idempotent.
    async fn write(&self, id: u64) -> u32;
    /// Answers the replica's index.
    #[idempotent]
    async fn read(&self, id: u64) -> u32;
}

/// What one replica ran.
#[derive(Default)]
struct Ledger {
    writes: Mutex<Vec<u64>>,
    runs: AtomicU64,
}

struct Node {
    index: u32,
    ledger: Arc<Ledger>,
}

impl Replica for Node {
    async fn write(&self, id: u64) -> u32 {
        self.ledger.runs.fetch_add(1, Ordering::SeqCst);
        self.ledger.writes.lock().push(id);
        self.index
    }

    async fn read(&self, _id: u64) -> u32 {
        self.ledger.runs.fetch_add(1, Ordering::SeqCst);
        self.index
    }
}

const PORT: u16 = 7411;
/// Callers, each with one call at a time: what a lost server can have in flight.
const CALLERS: u64 = 8;
/// The client's keep-alive: what finds a cut-off server with calls in flight.
const KEEPALIVE: (Duration, Duration) = (Duration::from_millis(200), Duration::from_millis(300));

/// One replica: its namespace, ledger and (while it runs) server.
struct Host {
    netns: Netns,
    ledger: Arc<Ledger>,
    server: Option<ServerHandle<SocketAddr>>,
}

impl Host {
    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.netns.inside, PORT)
    }

    /// Starts (or restarts) the replica's server inside its namespace.
    fn start<E: Env, T: Transport<Addr = SocketAddr> + Clone>(
        &mut self,
        env: &E,
        transport: &T,
        index: u32,
    ) {
        let node = Node {
            index,
            ledger: self.ledger.clone(),
        };
        let router = ReplicaServer::new(node).into_router();
        let (rt, transport, addr) = (env.rt(), transport.clone(), self.addr());
        // A tokio listener registers with the reactor of the runtime it is made in.
        let tokio = tokio::runtime::Handle::try_current().ok();
        let server = self.netns.run_inside(move || {
            let _entered = tokio.as_ref().map(|handle| handle.enter());
            futures_lite::future::block_on(Server::new(router).bind(&rt, &transport, &addr))
                .expect("binding inside the namespace")
        });
        self.server = Some(server);
    }

    fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    fn runs(&self) -> u64 {
        self.ledger.runs.load(Ordering::SeqCst)
    }
}

/// Outcomes of the load's calls.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Writes that failed after they may have run (connection lost mid-call): not retried.
    /// Only the calls in flight on a server lost under them: at most one per caller each
    /// time a server is lost, none otherwise (a call that never ran is retried elsewhere).
    writes_failed: AtomicU64,
    /// Every other failure: none expected.
    unexpected: Mutex<Vec<String>>,
    next_id: AtomicU64,
}

impl Tally {
    fn writes_failed(&self) -> u64 {
        self.writes_failed.load(Ordering::SeqCst)
    }
}

/// The calls the client has in flight on `addr` now.
fn in_flight(balancer: &Balancer, addr: SocketAddr) -> u32 {
    let address = addr.to_string();
    balancer
        .stats()
        .endpoints
        .iter()
        .find(|e| *e.address == *address)
        .map_or(0, |e| e.in_flight)
}

/// Waits until the calls that were in flight on the lost `host` have ended (failed or
/// retried): from then on, losing it fails no more calls.
async fn calls_on_lost_end<E: Env>(env: &E, balancer: &Balancer, host: &Host, what: &str) {
    eventually(env, what, || in_flight(balancer, host.addr()) == 0).await;
}

/// Waits until `host` has run at least `calls` more calls than now; returns how long it took.
async fn traffic_reaches<E: Env>(env: &E, host: &Host, calls: u64, what: &str) -> Duration {
    let started = Instant::now();
    let target = host.runs() + calls;
    eventually(env, what, || host.runs() >= target).await;
    started.elapsed()
}

/// Waits until the client sends `addr` no more calls for `quiet` (counted on the client: a
/// cut-off server never sees what is sent to it); returns how long after `since` the last one
/// was sent.
async fn traffic_leaves<E: Env>(
    env: &E,
    balancer: &Balancer,
    addr: SocketAddr,
    since: Instant,
    quiet: Duration,
) -> Duration {
    let sent = || {
        let stats = balancer.stats();
        let address = addr.to_string();
        stats
            .endpoints
            .iter()
            .find(|e| *e.address == *address)
            .map_or(0, |e| e.calls)
    };
    let mut last = sent();
    let mut last_at = since;
    let mut still = Instant::now();
    loop {
        env.sleep(Duration::from_millis(10)).await;
        let now = sent();
        if now != last {
            last = now;
            last_at = Instant::now();
            still = last_at;
        } else if still.elapsed() >= quiet {
            return last_at.saturating_duration_since(since);
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "traffic never left"
        );
    }
}

async fn a_fleet_survives_kill_partition_return_and_growth<E, T>(env: E, transport: T, base: u8)
where
    E: Env,
    T: Transport<Addr = SocketAddr> + Clone,
{
    let mut hosts = Vec::new();
    for i in 0..4 {
        let netns = Netns::create(base + i);
        hosts.push(Host {
            netns,
            ledger: Arc::default(),
            server: None,
        });
    }
    for (i, host) in hosts.iter_mut().enumerate() {
        host.start(&env, &transport, i as u32);
    }
    let (updater, watch) = discovery::channel(
        hosts[..3]
            .iter()
            .map(|h| discovery::Target::new(h.addr()))
            .collect(),
    );
    let config = BalanceConfig::new()
        .client(
            ClientConfig::default()
                .default_timeout(Some(Duration::from_secs(5)))
                .connect_timeout(Duration::from_millis(300))
                .keepalive(Some(KEEPALIVE.0), KEEPALIVE.1),
        )
        .backoff(Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        })
        .outlier_detection(OutlierDetection {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(100),
            max_ejection: Duration::from_millis(400),
        })
        .health_interval(Duration::from_millis(50));
    let client = ReplicaClient::new(Client::balanced_with(
        &env.rt(),
        transport.clone(),
        watch,
        config,
        MsgPack::default(),
    ));

    // Steady load: eight callers, writes and reads in turn, until told to stop.
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (done, finished) = smol::channel::unbounded::<()>();
    for worker in 0..CALLERS {
        let (client, tally, stop, done) =
            (client.clone(), tally.clone(), stop.clone(), done.clone());
        env.spawn(async move {
            let mut n = worker;
            while !stop.load(Ordering::SeqCst) {
                let id = tally.next_id.fetch_add(1, Ordering::SeqCst);
                let write = n % 2 == 0;
                n += 1;
                let result = match write {
                    true => client.write(id).await,
                    false => client.read(id).await,
                };
                match result {
                    Ok(_) => {
                        tally.ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(RpcError::Rpc(flumen::Error::Call(CallError::Connection(_)))) if write => {
                        tally.writes_failed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(error) => tally.unexpected.lock().push(format!("{write}: {error}")),
                }
            }
            drop(done);
        });
    }
    drop(done);

    // Everyone gets traffic; with every server up, no write fails.
    for host in &hosts[..3] {
        traffic_reaches(&env, host, 50, "every server under load").await;
    }
    let balancer = client.client().balancer().unwrap().clone();
    assert_eq!(tally.writes_failed(), 0, "a write failed, no server lost");

    // Kill server 0: its calls go elsewhere at once.
    let killed = Instant::now();
    hosts[0].kill();
    let quiet = Duration::from_millis(500);
    let left_killed = traffic_leaves(&env, &balancer, hosts[0].addr(), killed, quiet).await;
    traffic_reaches(&env, &hosts[1], 200, "the survivors serving").await;
    calls_on_lost_end(&env, &balancer, &hosts[0], "calls on server 0 to end").await;
    let failed_kill = tally.writes_failed();
    assert!(
        failed_kill <= CALLERS,
        "{failed_kill} writes failed when one server was killed: more than the {CALLERS} \
         calls in flight there (unsent writes were failed, not retried elsewhere)"
    );

    // Cut server 1 off: calls in flight there wait for the keep-alive, new ones go elsewhere.
    let cut = Instant::now();
    hosts[1].netns.link_down();
    let left_cut = traffic_leaves(&env, &balancer, hosts[1].addr(), cut, quiet).await;
    traffic_reaches(&env, &hosts[2], 200, "the last server serving").await;
    calls_on_lost_end(&env, &balancer, &hosts[1], "calls on server 1 to end").await;
    let failed_cut = tally.writes_failed() - failed_kill;
    assert!(
        failed_cut <= CALLERS,
        "{failed_cut} writes failed when one server was cut off: more than the {CALLERS} \
         calls in flight there (unsent writes were failed, not retried elsewhere)"
    );

    // Both come back and get traffic again.
    let back = Instant::now();
    hosts[0].start(&env, &transport, 0);
    hosts[1].netns.link_up();
    let killed_back = traffic_reaches(&env, &hosts[0], 50, "the restarted server serving").await;
    let cut_back = traffic_reaches(&env, &hosts[1], 50, "the mended server serving").await;
    let returned = back.elapsed().max(killed_back).max(cut_back);

    // A fourth joins through discovery.
    let joined = Instant::now();
    updater.update(|set| set.push(discovery::Target::new(hosts[3].addr())));
    let new_serving = traffic_reaches(&env, &hosts[3], 50, "the new server serving").await;

    stop.store(true, Ordering::SeqCst);
    // Every call resolves: the callers finish.
    let _ = finished.recv().await;
    let unexpected = tally.unexpected.lock().clone();
    assert!(unexpected.is_empty(), "calls failed: {unexpected:?}");
    // Once both were back, nothing was lost under any call: no write failed after that.
    let writes_failed = tally.writes_failed();
    assert_eq!(
        writes_failed,
        failed_kill + failed_cut,
        "writes failed with no server lost under them"
    );
    // No write that reached a replica ran twice (it was not retried), anywhere.
    let mut seen = HashSet::new();
    for host in &hosts {
        for id in host.ledger.writes.lock().iter() {
            assert!(seen.insert(*id), "write {id} ran twice");
        }
    }
    let stats = balancer.stats();
    let keepalive = KEEPALIVE.0 + KEEPALIVE.1;
    let (ok, issued) = (
        tally.ok.load(Ordering::SeqCst),
        tally.next_id.load(Ordering::SeqCst),
    );
    let runs: u64 = hosts.iter().map(Host::runs).sum();
    println!(
        "fleet: {ok} of {issued} calls answered, {writes_failed} writes failed as possibly run \
         (not retried: {failed_kill} when a server was killed, {failed_cut} when one was cut \
         off), {} retries ({} refused by the budget); traffic left the killed server \
         {left_killed:?} and the cut-off one {left_cut:?} after (keep-alive {keepalive:?}); \
         both served again within {returned:?}, the new one within {:?}; calls per server {:?}",
        stats.retries,
        stats.retries_refused,
        new_serving.max(joined.elapsed()),
        hosts.iter().map(Host::runs).collect::<Vec<_>>(),
    );
    // Every call was answered but the few writes lost with their server...
    assert_eq!(ok + writes_failed, issued, "calls unaccounted for");
    // ...and a floor counted on the servers: every handler run was an answered call's, a
    // failed write's or an attempt the balancer retried, so the answers are at least the runs
    // less those.
    assert!(
        ok + writes_failed + stats.retries >= runs,
        "the servers ran {runs} calls, more than the {ok} answered, {writes_failed} failed and \
         {} retried",
        stats.retries
    );
    // Deadlines, not timings: within the keep-alive plus the slack of a loaded test machine.
    assert!(left_killed < Duration::from_secs(2), "{left_killed:?}");
    assert!(
        left_cut < keepalive + Duration::from_secs(2),
        "{left_cut:?}"
    );
    for host in &mut hosts {
        host.kill();
    }
}

fn tokio_fleet_survives_kill_partition_return_and_growth() {
    run_tokio(|env: common::TokioEnv| {
        a_fleet_survives_kill_partition_return_and_growth(env, TokioTcp::default(), 21)
    });
}

fn smol_fleet_survives_kill_partition_return_and_growth() {
    run_smol(|env: common::SmolEnv| {
        a_fleet_survives_kill_partition_return_and_growth(env, SmolTcp::default(), 31)
    });
}

/// Runs under the harness of common/external.rs: ignored without the rights to make
/// namespaces, a failure then with `FLUMEN_REQUIRE_EXTERNAL=1`.
fn main() -> std::process::ExitCode {
    use external::Needs::Netns;
    external::run(vec![
        (
            "tokio_fleet_survives_kill_partition_return_and_growth",
            Netns,
            tokio_fleet_survives_kill_partition_return_and_growth,
        ),
        (
            "smol_fleet_survives_kill_partition_return_and_growth",
            Netns,
            smol_fleet_survives_kill_partition_return_and_growth,
        ),
    ])
}
