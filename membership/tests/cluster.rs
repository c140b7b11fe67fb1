//! A cluster on loopback: members gossiping over UDP from their tasks, workers serving a
//! service, and a director calling "any worker with tag X" through the cluster client, on
//! tokio and smol and over every IP transport.

#[path = "../../api/tests/common/mod.rs"]
mod common;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{eventually, IpEnv as Env};
use flumen::{balance::BalanceConfig, Server, ServerConfig, ServerHandle};
use flumen_membership::{ClusterClient, Config, Event, Membership, Net, State, Tags};

/// A worker's service.
#[flumen::service]
pub trait Work {
    /// Which worker answered (safe to ask twice).
    #[idempotent]
    async fn whoami(&self) -> String;
    /// Takes a payment: must not run twice. The worker named `hold_on` holds it until it dies.
    async fn charge(&self, hold_on: String) -> String;
}

struct Worker {
    name: String,
    served: Arc<AtomicU64>,
    charges: Arc<AtomicU64>,
    charging: async_channel::Sender<()>,
}

impl Work for Worker {
    async fn whoami(&self) -> String {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.name.clone()
    }

    async fn charge(&self, hold_on: String) -> String {
        self.charges.fetch_add(1, Ordering::Relaxed);
        if hold_on == self.name {
            let _ = self.charging.send(()).await;
            futures_lite::future::pending::<()>().await;
        }
        self.name.clone()
    }
}

/// Fast gossip, with phi forgiving a pause of half a second: a loaded machine delaying a
/// heartbeat must not make a live member suspect (the tests halt the ones they mean).
fn config() -> Config {
    let mut config = Config::fast();
    config.phi.acceptable_pause = Duration::from_millis(500);
    config
}

fn member<E: Env>(
    env: &E,
    name: &str,
    rpc: SocketAddr,
    tags: &[(&str, &str)],
    seeds: &[SocketAddr],
    config: Config,
) -> Membership
where
    E::Rt: Net,
{
    Membership::builder(name, rpc)
        .tags(tags.iter().copied().collect())
        .seeds(seeds)
        .config(config)
        .bind(&env.rt(), common::loopback())
        .unwrap()
}

struct Node {
    membership: Membership,
    server: ServerHandle<SocketAddr>,
    served: Arc<AtomicU64>,
    /// Charges that reached the handler.
    charges: Arc<AtomicU64>,
    charging: async_channel::Receiver<()>,
}

async fn worker<E: Env>(
    env: &E,
    name: &str,
    tags: &[(&str, &str)],
    seed: SocketAddr,
    config: Config,
) -> Node
where
    E::Rt: Net,
{
    let served = Arc::new(AtomicU64::new(0));
    let charges = Arc::new(AtomicU64::new(0));
    let (charging, held) = async_channel::unbounded();
    let service = WorkServer::new(Worker {
        name: name.into(),
        served: served.clone(),
        charges: charges.clone(),
        charging,
    });
    let server = Server::new(service)
        .config(ServerConfig::default())
        .bind(&env.rt(), &env.transport(), &env.addr())
        .await
        .unwrap();
    let membership = member(env, name, *server.local_addr(), tags, &[seed], config);
    Node {
        membership,
        server,
        served,
        charges,
        charging: held,
    }
}

/// The director (tagged `role=director`, serving nothing) and three workers: w0 `zone=eu`,
/// w1 `zone=eu gpu`, w2 `zone=us`; returns once the director sees all four alive.
async fn cluster<E: Env>(env: &E, config: Config) -> (Membership, Vec<Node>)
where
    E::Rt: Net,
{
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let director = member(
        env,
        "director",
        unused,
        &[("role", "director")],
        &[],
        config.clone(),
    );
    let seed = director.identity().gossip_addr();
    let mut workers = Vec::new();
    for (name, tags) in [
        ("w0", &[("role", "worker"), ("zone", "eu")][..]),
        ("w1", &[("role", "worker"), ("zone", "eu"), ("gpu", "")][..]),
        ("w2", &[("role", "worker"), ("zone", "us")][..]),
    ] {
        workers.push(worker(env, name, tags, seed, config.clone()).await);
    }
    let registry = director.registry().clone();
    eventually(env, "the director sees every worker", || {
        registry.matching(&"role=worker".parse().unwrap()).len() == 3
    })
    .await;
    (director, workers)
}

/// The registry's next event, within 10 s (a missing event fails the test, never hangs it).
async fn next_event<E: Env>(env: &E, events: &async_channel::Receiver<Event>) -> Event {
    within(env, "the registry's next event", async {
        events.recv().await.ok()
    })
    .await
    .expect("the registry closed")
}

/// `future`'s output, or a failure naming `what` after 10 s.
async fn within<E: Env, T>(env: &E, what: &str, future: impl std::future::Future<Output = T>) -> T {
    let timeout = async {
        env.sleep(Duration::from_secs(10)).await;
        None
    };
    futures_lite::future::or(async { Some(future.await) }, timeout)
        .await
        .unwrap_or_else(|| panic!("timed out waiting for: {what}"))
}

fn balance() -> BalanceConfig {
    BalanceConfig::default()
}

/// Calls go to the workers whose tags pass the filter, raw and typed; an idempotent call
/// survives a worker's crash mid-stream and a non-idempotent call that had reached it fails
/// with a connection error; the crash is seen.
async fn calls_follow_tags_and_survive_a_crash<E: Env>(env: E)
where
    E::Rt: Net,
{
    let (director, workers) = cluster(&env, config()).await;
    let cluster = ClusterClient::with_config(
        &env.rt(),
        env.transport(),
        director.registry().clone(),
        balance(),
        flumen::MsgPack::default(),
    );
    let events = director.registry().subscribe();

    // Raw: by method name (the generated client's method id).
    for _ in 0..10 {
        let who: String = cluster
            .call_worker("zone=eu && gpu", WorkClient::WHOAMI, &())
            .await
            .unwrap();
        assert_eq!(who, "w1");
    }
    assert!(cluster
        .call_worker::<(), String>("zone=", WorkClient::WHOAMI, &())
        .await
        .is_err());
    // Typed, over a filtered pool.
    let eu = WorkClient::new(cluster.workers("role=worker && zone=eu").unwrap());
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        seen.insert(eu.whoami().await.unwrap());
    }
    assert!(seen.iter().all(|w| w == "w0" || w == "w1"), "{seen:?}");
    let us = WorkClient::new(cluster.workers("zone=us").unwrap());
    assert_eq!(us.whoami().await.unwrap(), "w2");

    // A non-idempotent call held on w2 when it dies fails, typed, and is not run again on
    // w1, the other worker of its pool. Charges go out one at a time until one lands on w2
    // (those landing on w1 return at once).
    let pair = WorkClient::new(cluster.workers("zone=us || gpu").unwrap());
    let (done, results) = async_channel::unbounded();
    env.spawn(async move {
        for _ in 0..1000 {
            let result = pair.charge("w2".into()).await;
            let failed = result.is_err();
            if done.send(result).await.is_err() || failed {
                return;
            }
        }
    });
    within(&env, "a charge held on w2", workers[2].charging.recv())
        .await
        .unwrap();
    let charged_on_w1 = workers[1].charges.load(Ordering::Relaxed);
    workers[2].server.abort();
    workers[2].membership.halt();
    let err = loop {
        // The charges that landed on w1 before the held one, then the held one's outcome.
        match within(&env, "the held charge's outcome", results.recv()).await {
            Ok(Ok(who)) => assert_eq!(who, "w1"),
            Ok(Err(err)) => break err,
            Err(_) => panic!("the held charge never failed"),
        }
    };
    assert!(err.is_connection(), "{err:?}");
    assert_eq!(
        workers[1].charges.load(Ordering::Relaxed),
        charged_on_w1,
        "the failed charge ran again on w1"
    );
    assert_eq!(workers[2].charges.load(Ordering::Relaxed), 1);

    // Idempotent calls keep succeeding while w0 dies under them.
    let (done, results) = async_channel::unbounded();
    for _ in 0..8 {
        let (eu, done) = (eu.clone(), done.clone());
        env.spawn(async move {
            for _ in 0..150 {
                let _ = done.send(eu.whoami().await).await;
            }
        });
    }
    drop(done);
    let mut ok = 0;
    let mut crashed = false;
    while let Ok(result) = results.recv().await {
        let who = result.unwrap_or_else(|e| panic!("an idempotent call was lost: {e:?}"));
        assert!(who == "w0" || who == "w1", "{who}");
        ok += 1;
        if ok == 200 && !crashed {
            crashed = true;
            assert!(
                workers[0].served.load(Ordering::Relaxed) > 0,
                "w0 served nothing"
            );
            workers[0].server.abort();
            workers[0].membership.halt();
        }
    }
    assert_eq!(ok, 8 * 150);

    // The director saw both crashes: suspected, then failed.
    let registry = director.registry().clone();
    eventually(&env, "w0 and w2 declared down", || {
        registry
            .members()
            .iter()
            .filter(|(m, s)| (m.name == "w0" || m.name == "w2") && *s == State::Down)
            .count()
            == 2
    })
    .await;
    let seen: Vec<Event> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    for name in ["w0", "w2"] {
        let suspected = seen
            .iter()
            .position(|e| matches!(e, Event::Suspect(m) if m.name == name));
        let failed = seen
            .iter()
            .position(|e| matches!(e, Event::Failed(m) if m.name == name));
        assert!(
            matches!((suspected, failed), (Some(s), Some(f)) if s < f),
            "{name}: not suspected, then failed: {seen:?}"
        );
    }
}

/// A worker whose gossip stops (its server still answering) is suspected and gets no new
/// calls, long before it could be declared down.
async fn a_suspected_worker_gets_no_new_calls<E: Env>(env: E)
where
    E::Rt: Net,
{
    let mut config = config();
    // Suspicion alone must move calls: the verdict is far away.
    config.swim.suspect_to_down_after = Duration::from_secs(600);
    let (director, workers) = cluster(&env, config).await;
    let cluster = ClusterClient::new(&env.rt(), env.transport(), director.registry().clone());
    let eu = WorkClient::new(cluster.workers("zone=eu").unwrap());
    let events = director.registry().subscribe();
    for _ in 0..20 {
        eu.whoami().await.unwrap();
    }

    workers[0].membership.halt();
    loop {
        match next_event(&env, &events).await {
            Event::Suspect(m) if m.name == "w0" => break,
            Event::Failed(m) | Event::Left(m) if m.name == "w0" => {
                panic!("w0 {m:?} gone without being suspected first")
            }
            _ => {}
        }
    }
    // The pool change reaches the balancer through its discovery task: wait until w0 is out
    // of the balancer's endpoints, then check that no call lands on it.
    let w0 = workers[0].server.local_addr().to_string();
    eventually(&env, "w0 out of the balancer's endpoints", || {
        let endpoints = eu.client().balancer().unwrap().stats().endpoints;
        endpoints.len() == 1 && endpoints.iter().all(|e| *e.address != *w0)
    })
    .await;
    let before = workers[0].served.load(Ordering::Relaxed);
    for _ in 0..100 {
        assert_eq!(eu.whoami().await.unwrap(), "w1");
    }
    assert_eq!(workers[0].served.load(Ordering::Relaxed), before);
    let state = director
        .registry()
        .members()
        .into_iter()
        .find(|(m, _)| m.name == "w0")
        .map(|(_, s)| s);
    assert_eq!(state, Some(State::Suspect), "still only suspected");
}

/// A worker whose heartbeats stop but which keeps answering calls is not suspected by phi
/// while its answers come (the cluster client reports them); once they stop, it is.
async fn answers_hold_off_suspicion<E: Env>(env: E)
where
    E::Rt: Net,
{
    let mut config = config();
    // Probes an hour apart: only phi judges here. A pause of half a second is forgiven, so
    // that a loaded machine delaying the reports does not look like silence.
    config.swim.probe_period = Duration::from_secs(3600);
    config.phi.acceptable_pause = Duration::from_millis(500);
    let (director, workers) = cluster(&env, config).await;
    let cluster = ClusterClient::for_member(&env.rt(), env.transport(), &director);
    let gpus = WorkClient::new(cluster.workers("gpu").unwrap());
    assert_eq!(gpus.whoami().await.unwrap(), "w1");
    let events = director.registry().subscribe();
    // Phi judges a member once it has its rhythm: let a dozen heartbeats from each worker
    // arrive (three workers beat the director every 100 ms).
    let start = director.stats().packets_received;
    eventually(&env, "the director hears the workers' heartbeats", || {
        director.stats().packets_received >= start + 36
    })
    .await;

    workers[1].membership.halt();
    // Phi suspects a silent member 850-950 ms after its last answer at these settings (the
    // control below prints it); answer for over three times that.
    let answering = std::time::Instant::now();
    while answering.elapsed() < Duration::from_secs(3) {
        assert_eq!(gpus.whoami().await.unwrap(), "w1");
        env.sleep(Duration::from_millis(2)).await;
    }
    let seen: Vec<Event> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Suspect(m) if m.name == "w1")),
        "suspected while answering: {seen:?}"
    );

    // The control: once it stops answering (the balancer's health pings get no answer
    // either), phi suspects it.
    workers[1].server.abort();
    let silent = std::time::Instant::now();
    loop {
        match next_event(&env, &events).await {
            Event::Suspect(m) if m.name == "w1" => break,
            _ => {}
        }
    }
    println!("suspected {:?} after its last answer", silent.elapsed());
}

/// A worker that leaves is reported left (not failed) and leaves its pools; new tags move a
/// worker into a pool.
async fn leaves_and_new_tags_reach_the_pools<E: Env>(env: E)
where
    E::Rt: Net,
{
    let (director, workers) = cluster(&env, config()).await;
    let cluster = ClusterClient::new(&env.rt(), env.transport(), director.registry().clone());
    let events = director.registry().subscribe();
    let gpus = WorkClient::new(cluster.workers("gpu").unwrap());
    assert_eq!(gpus.whoami().await.unwrap(), "w1");

    workers[1].membership.leave().await.unwrap();
    assert!(workers[1].membership.leave().await.is_err(), "left twice");
    workers[2]
        .membership
        .set_tags(Tags::from_iter([
            ("role", "worker"),
            ("zone", "us"),
            ("gpu", ""),
        ]))
        .await
        .unwrap();
    let mut left = false;
    let mut retagged = false;
    while !(left && retagged) {
        match next_event(&env, &events).await {
            Event::Left(m) if m.name == "w1" => left = true,
            Event::Failed(m) if m.name == "w1" => panic!("a leave reported as a failure"),
            Event::TagsChanged { member, .. } if member.name == "w2" => retagged = true,
            _ => {}
        }
    }
    // The pool follows at once; the balancer's discovery task a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(who) = gpus.whoami().await {
            assert_ne!(who, "w0", "w0 has no gpu");
            if who == "w2" {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "calls to gpu workers never reached w2"
        );
        env.sleep(Duration::from_millis(5)).await;
    }
    // w1 is gone from the pool: every call now lands on w2.
    for _ in 0..20 {
        assert_eq!(gpus.whoami().await.unwrap(), "w2");
    }
}

e2e_ip!(
    calls_follow_tags_and_survive_a_crash,
    a_suspected_worker_gets_no_new_calls,
    leaves_and_new_tags_reach_the_pools,
    answers_hold_off_suspicion,
);
