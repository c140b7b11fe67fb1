//! Balanced clients end to end, on both runtimes and every transport: calls spread over live
//! servers, move off a dead or draining one and come back when it returns, follow a leader's
//! redirects, follow discovery, and are retried only when that is safe and the budget allows.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{eventually, loopback, IpEnv as Env};
use flumen::{
    balance::{
        discovery::{self, Static, Target},
        Backoff, BalanceConfig, HealthCheck, Hedging, Mode, OutlierDetection, RetryBudget,
        Strategy,
    },
    health::{self, Health, ServingStatus},
    stream::CallError,
    Client, ClientConfig, MethodId, MsgPack, Router, RpcError, Server, ServerHandle, Status,
};

#[flumen::service]
pub trait Fleet {
    /// Waits `millis`, then answers the index of the server that ran it.
    async fn work(&self, millis: u64) -> u32;
    /// The same, declared safe to run twice.
    #[idempotent]
    async fn read(&self, millis: u64) -> u32;
}

/// The `millis` of the calls a test counts apart ([`Servers::marked`]).
const MARK: u64 = 1;

/// One server of a test fleet and what it ran.
struct Member<E: Env> {
    env: E,
    index: u32,
    /// Handler runs (every route and method).
    runs: Arc<AtomicU64>,
    /// Runs of `work` and `read` calls with `millis == MARK`.
    marked: Arc<AtomicU64>,
    /// Added to every `work` call: a slow server.
    delay_ms: Arc<AtomicU64>,
}

impl<E: Env> Fleet for Member<E> {
    async fn work(&self, millis: u64) -> u32 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if millis == MARK {
            self.marked.fetch_add(1, Ordering::SeqCst);
        }
        let delay = self.delay_ms.load(Ordering::SeqCst);
        self.env.sleep(Duration::from_millis(millis + delay)).await;
        self.index
    }

    async fn read(&self, millis: u64) -> u32 {
        self.work(millis).await
    }
}

/// A fleet of servers on loopback.
struct Servers<E: Env> {
    env: E,
    handles: Vec<Option<ServerHandle<SocketAddr>>>,
    addrs: Vec<SocketAddr>,
    runs: Vec<Arc<AtomicU64>>,
    marked: Vec<Arc<AtomicU64>>,
    delays: Vec<Arc<AtomicU64>>,
    /// Each server's health statuses (the standard health service, mounted on every one).
    healths: Vec<Health>,
    /// The address that followers name in their redirects, if any.
    leader: Option<SocketAddr>,
}

impl<E: Env> Servers<E> {
    async fn start(env: &E, n: usize) -> Self {
        let mut servers = Self {
            env: env.clone(),
            handles: Vec::new(),
            addrs: Vec::new(),
            runs: Vec::new(),
            marked: Vec::new(),
            delays: Vec::new(),
            healths: Vec::new(),
            leader: None,
        };
        for i in 0..n {
            servers.runs.push(Arc::new(AtomicU64::new(0)));
            servers.marked.push(Arc::new(AtomicU64::new(0)));
            servers.delays.push(Arc::new(AtomicU64::new(0)));
            servers.healths.push(Health::new());
            let handle = servers.bind(i, loopback()).await;
            servers.addrs.push(*handle.local_addr());
            servers.handles.push(Some(handle));
        }
        servers
    }

    fn router(&self, i: usize) -> Router {
        let runs = self.runs[i].clone();
        let index = i as u32;
        let member = Member {
            env: self.env.clone(),
            index,
            runs: runs.clone(),
            marked: self.marked[i].clone(),
            delay_ms: self.delays[i].clone(),
        };
        let redirect = self
            .leader
            .filter(|leader| *leader != self.addrs.get(i).copied().unwrap_or(loopback()))
            .map(|leader| leader.to_string());
        let who = runs.clone();
        let refuse = runs.clone();
        Router::new()
            .service(FleetServer::new(member))
            .unwrap()
            .route("who", move |()| {
                who.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, Status>(index) }
            })
            .route("refuse", move |()| {
                refuse.fetch_add(1, Ordering::SeqCst);
                async move {
                    let wait = Some(Duration::from_millis(1));
                    Err::<(), _>(Status::overloaded(wait, "busy"))
                }
            })
            .route("write", move |()| {
                let redirect = redirect.clone();
                runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    match redirect {
                        Some(leader) => Err(Status::redirect(leader)),
                        None => Ok(index),
                    }
                }
            })
            .with_health(&self.healths[i])
            .unwrap()
    }

    async fn bind(&self, i: usize, addr: SocketAddr) -> ServerHandle<SocketAddr> {
        // A restarted server takes its old port back; the old socket may take a moment to go.
        // (A QUIC endpoint lets its socket go once its closed connections have drained.)
        for _ in 0..1000 {
            let bound = Server::new(self.router(i))
                .bind(&self.env.rt(), &self.env.transport(), &addr)
                .await;
            if let Ok(handle) = bound {
                return handle;
            }
            self.env.sleep(Duration::from_millis(10)).await;
        }
        panic!("could not bind {addr}");
    }

    async fn restart(&mut self, i: usize) {
        let handle = self.bind(i, self.addrs[i]).await;
        self.handles[i] = Some(handle);
    }

    fn kill(&mut self, i: usize) {
        if let Some(handle) = self.handles[i].take() {
            handle.abort();
        }
    }

    fn runs(&self) -> Vec<u64> {
        self.runs.iter().map(|r| r.load(Ordering::SeqCst)).collect()
    }

    /// Runs of `work` and `read` calls with `millis == MARK`, by server.
    fn marked(&self) -> Vec<u64> {
        self.marked
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .collect()
    }

    fn discovery(&self) -> Static<SocketAddr> {
        Static::new(self.addrs.clone())
    }
}

/// Settings that make a test's failures and recoveries quick.
fn quick() -> BalanceConfig {
    BalanceConfig::new()
        .backoff(Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(50),
        })
        .outlier_detection(OutlierDetection {
            consecutive_failures: 2,
            base_ejection: Duration::from_millis(50),
            max_ejection: Duration::from_millis(200),
        })
        .health_interval(Duration::from_millis(10))
        .client(ClientConfig::default().default_timeout(Some(Duration::from_secs(10))))
}

fn balanced<E: Env, D>(env: &E, discovery: D, config: BalanceConfig) -> Client
where
    D: discovery::Discover<SocketAddr>,
{
    Client::balanced_with(
        &env.rt(),
        env.transport(),
        discovery,
        config,
        MsgPack::default(),
    )
}

/// Waits until the balancer holds a connection to every endpoint. It connects to an endpoint
/// once a call wants one, and skips it until then: without this wait, the first calls all go
/// to whichever server connected first.
async fn all_connected<E: Env>(env: &E, client: &Client) {
    let balancer = client.balancer().unwrap();
    eventually(env, "every server connected", || {
        balancer.stats().endpoints.iter().all(|e| e.connections > 0)
    })
    .await;
}

fn spread(counts: &[u64], total: u64) -> bool {
    let fair = total / counts.len() as u64;
    counts.iter().all(|&c| c.abs_diff(fair) <= fair / 4)
}

/// Round robin spreads calls evenly; a killed server's share moves to the others with every
/// call answered (the calls are idempotent: one written just as the server died is retried);
/// once it is back it gets calls again.
async fn calls_move_off_a_dead_server_and_back<E: Env>(env: E) {
    let mut servers = Servers::start(&env, 3).await;
    let client = balanced(
        &env,
        servers.discovery(),
        quick().strategy(Strategy::RoundRobin),
    );
    let fleet = FleetClient::new(client.clone());
    fleet.read(0).await.unwrap();
    all_connected(&env, &client).await;
    let start = servers.runs();
    for _ in 0..300 {
        fleet.read(0).await.unwrap();
    }
    let runs: Vec<u64> = servers
        .runs()
        .iter()
        .zip(&start)
        .map(|(a, b)| a - b)
        .collect();
    assert!(spread(&runs, 300), "{runs:?}");

    servers.kill(1);
    // The kill is a signal to the server's tasks: count from when the client has seen it.
    let balancer = client.balancer().unwrap().clone();
    eventually(&env, "server 1's connection gone", || {
        balancer.stats().endpoints[1].connections == 0
    })
    .await;
    let before = servers.runs();
    for _ in 0..300 {
        assert_ne!(fleet.read(0).await.unwrap(), 1);
    }
    let after = servers.runs();
    assert_eq!(after[1], before[1], "the dead server ran nothing");
    assert_eq!(after[0] + after[2] - before[0] - before[2], 300);

    servers.restart(1).await;
    let back = servers.runs()[1];
    let mut calls = 0;
    while servers.runs()[1] == back {
        fleet.read(0).await.unwrap();
        calls += 1;
        assert!(calls < 10_000, "the restarted server never got a call");
        env.sleep(Duration::from_millis(1)).await;
    }
    let stats = client.balancer().unwrap().stats();
    assert_eq!(stats.endpoints.len(), 3);
}

/// With health checks that call the health service, a server takes calls only once it says
/// it serves (a new one is unknown until its first answer), and none while it says it does
/// not, though its connection stays up. (With pings alone it would get its share from the
/// start: the mutation of ignoring the answer leaves it in rotation.)
async fn a_server_not_serving_gets_no_calls_until_it_serves<E: Env>(env: E) {
    let servers = Servers::start(&env, 2).await;
    // Server 1 has set no status yet: `Unknown`.
    servers.healths[0].set("Fleet", ServingStatus::Serving);
    let check = health::balancer_check("Fleet", &MsgPack::default());
    let config = quick()
        .strategy(Strategy::RoundRobin)
        .health_check(Some(check));
    let client = balanced(&env, servers.discovery(), config);
    let fleet = FleetClient::new(client.clone());
    fleet.read(0).await.unwrap();
    all_connected(&env, &client).await;
    let balancer = client.balancer().unwrap().clone();
    // Until its first check answers, server 0 is not preferred either, and with no endpoint
    // serving the calls go to both.
    eventually(&env, "server 0 seen serving", || {
        !balancer.stats().endpoints[0].not_serving
    })
    .await;
    let only_server_0 = |what: &'static str| {
        let (fleet, servers) = (&fleet, &servers);
        async move {
            let before = servers.runs();
            for _ in 0..100 {
                assert_eq!(fleet.read(0).await.unwrap(), 0, "{what}");
            }
            assert_eq!(servers.runs()[1], before[1], "{what}: server 1 ran calls");
        }
    };
    only_server_0("unknown").await;

    servers.healths[1].set("Fleet", ServingStatus::Serving);
    eventually(&env, "server 1 seen serving", || {
        !balancer.stats().endpoints[1].not_serving
    })
    .await;
    let back = servers.runs()[1];
    for _ in 0..100 {
        fleet.read(0).await.unwrap();
    }
    // Round robin over two: half of them.
    let share = servers.runs()[1] - back;
    assert!((40..=60).contains(&share), "{share} of 100 calls");

    servers.healths[1].set("Fleet", ServingStatus::NotServing);
    eventually(&env, "server 1 seen not serving", || {
        balancer.stats().endpoints[1].not_serving
    })
    .await;
    only_server_0("not serving").await;
    assert_eq!(
        balancer.stats().endpoints[1].connections,
        1,
        "its connection stays"
    );
}

/// A check the servers answer with an error (here a method they do not have) says they do
/// not serve; with none serving, calls still go to them rather than fail.
async fn a_check_answered_with_an_error_is_not_serving<E: Env>(env: E) {
    let servers = Servers::start(&env, 2).await;
    let check = HealthCheck::new(
        MethodId::from_name("Nobody.check").as_u32(),
        Default::default(),
        |_| true,
    );
    let client = balanced(&env, servers.discovery(), quick().health_check(Some(check)));
    let fleet = FleetClient::new(client.clone());
    fleet.read(0).await.unwrap();
    all_connected(&env, &client).await;
    let balancer = client.balancer().unwrap().clone();
    for _ in 0..20 {
        fleet.read(0).await.unwrap();
    }
    assert!(
        balancer.stats().endpoints.iter().all(|e| e.not_serving),
        "{:?}",
        balancer.stats().endpoints
    );
}

/// A call whose server dies while it runs is not retried: it may have run. Declared
/// idempotent, the same call is retried on the other server and succeeds.
async fn only_idempotent_calls_are_retried_after_they_ran<E: Env>(env: E) {
    let mut servers = Servers::start(&env, 2).await;
    let client = FleetClient::new(balanced(&env, servers.discovery(), quick()));
    // Kills the server that runs the next call once it runs (counted from `before`, taken
    // before the call starts: the call may run before this is first polled); returns its
    // index.
    async fn kill_when_running<E: Env>(
        env: &E,
        servers: &mut Servers<E>,
        before: Vec<u64>,
    ) -> usize {
        let total: u64 = before.iter().sum();
        eventually(env, "the call running", || {
            servers.runs().iter().sum::<u64>() > total
        })
        .await;
        let now = servers.runs();
        let i = (0..now.len()).find(|&i| now[i] > before[i]).unwrap();
        servers.kill(i);
        i
    }

    let runs_before: u64 = servers.runs().iter().sum();
    let before = servers.runs();
    let (result, killed) = futures_lite::future::zip(
        client.work(10_000),
        kill_when_running(&env, &mut servers, before),
    )
    .await;
    match result {
        Err(RpcError::Rpc(flumen::Error::Call(error))) => {
            assert!(matches!(error, CallError::Connection(_)), "{error}")
        }
        other => panic!("a call that ran must fail, not be retried: {other:?}"),
    }
    assert_eq!(
        servers.runs().iter().sum::<u64>(),
        runs_before + 1,
        "it ran once"
    );

    servers.restart(killed).await;
    let balancer = client.client().balancer().unwrap().clone();
    eventually(&env, "both servers connected", || {
        let stats = balancer.stats();
        stats.endpoints.iter().all(|e| e.connections > 0)
    })
    .await;
    let counts = servers.runs();
    let (result, killed) = futures_lite::future::zip(
        client.read(1000),
        kill_when_running(&env, &mut servers, counts.clone()),
    )
    .await;
    let answered = result.expect("an idempotent call is retried on the other server");
    assert_ne!(answered as usize, killed);
    let after = servers.runs();
    assert_eq!(after[killed] - counts[killed], 1);
    assert_eq!(after[answered as usize] - counts[answered as usize], 1);
    assert_eq!(balancer.stats().retries, 1);
}

/// A draining server (graceful shutdown) finishes the calls it runs and refuses new ones
/// without running them; the client sends those elsewhere at once.
async fn calls_leave_a_draining_server<E: Env>(env: E) {
    let mut servers = Servers::start(&env, 2).await;
    let client = balanced(
        &env,
        servers.discovery(),
        quick()
            .strategy(Strategy::RoundRobin)
            // A loaded machine may take a while to deliver the GoAway: calls that meet the
            // drain before it are refused, and retried, more than once.
            .max_attempts(6),
    );
    let balancer = client.balancer().unwrap().clone();
    while balancer
        .stats()
        .endpoints
        .iter()
        .any(|e| e.connections == 0)
    {
        let _: u32 = client.call("who", &()).await.unwrap();
    }
    // A call on its own connection keeps server 0 draining (not yet closed) for a while.
    let direct = common::connect(&env, servers.addrs[0], ClientConfig::default()).await;
    let direct = FleetClient::new(direct);
    let slow = direct.work(300);
    let base = servers.runs()[0];
    let handle = servers.handles[0].take().unwrap();
    let drain_and_call = async {
        eventually(&env, "the slow call running on server 0", || {
            servers.runs()[0] > base
        })
        .await;
        let drained = handle.shutdown(Duration::from_secs(10));
        let calls = async {
            let before = servers.runs();
            for _ in 0..50 {
                let _: u32 = client.call("who", &()).await.unwrap();
            }
            (before, servers.runs())
        };
        futures_lite::future::zip(drained, calls).await.1
    };
    let (slow, (before, after)) = futures_lite::future::zip(slow, drain_and_call).await;
    assert_eq!(slow.unwrap(), 0, "the call on the draining server finished");
    assert_eq!(after[0], before[0], "the draining server ran no new call");
    assert_eq!(after[1] - before[1], 50);
    servers.kill(1);
}

/// Followers answer REDIRECT naming the leader: the client follows, remembers the leader, and
/// sends every later call straight there.
async fn a_leader_redirect_is_followed_and_remembered<E: Env>(env: E) {
    let mut servers = Servers::start(&env, 3).await;
    // Restart every server knowing that server 2 leads.
    servers.leader = Some(servers.addrs[2]);
    for i in 0..3 {
        servers.kill(i);
        servers.restart(i).await;
    }
    let client = balanced(
        &env,
        servers.discovery(),
        quick().mode(Mode::Leader).strategy(Strategy::RoundRobin),
    );
    for _ in 0..100 {
        let index: u32 = client.call("write", &()).await.unwrap();
        assert_eq!(index, 2);
    }
    let runs = servers.runs();
    assert_eq!(runs[2], 100, "the leader ran every call");
    assert!(
        runs[0] + runs[1] <= 1,
        "followers were asked at most once: {runs:?}"
    );
    assert!(client.balancer().unwrap().stats().redirects <= 1);
}

/// Discovery adds and removes endpoints while calls run: a new one gets calls, a removed one
/// gets none and its connection closes.
async fn discovery_changes_apply_while_calls_run<E: Env>(env: E) {
    let servers = Servers::start(&env, 2).await;
    let (updater, watch) = discovery::channel(vec![Target::new(servers.addrs[0])]);
    let client = balanced(&env, watch, quick());
    for _ in 0..50 {
        let _: u32 = client.call("who", &()).await.unwrap();
    }
    assert_eq!(servers.runs(), [50, 0]);
    updater.update(|set| set.push(Target::new(servers.addrs[1])));
    let mut calls = 0;
    while servers.runs()[1] == 0 {
        let _: u32 = client.call("who", &()).await.unwrap();
        calls += 1;
        assert!(calls < 10_000, "the added server never got a call");
    }
    updater.set(vec![Target::new(servers.addrs[1])]);
    let server0 = servers.handles[0].as_ref().unwrap();
    eventually(&env, "the removed server's connection closed", || {
        server0.stats().active == 0
    })
    .await;
    let before = servers.runs();
    for _ in 0..50 {
        let _: u32 = client.call("who", &()).await.unwrap();
    }
    let after = servers.runs();
    assert_eq!(after[0], before[0]);
    assert_eq!(after[1] - before[1], 50);
}

/// Refused calls are retried elsewhere, but never beyond the budget: with every server
/// refusing, retries stay within 20% of the calls plus the floor.
async fn retries_stay_within_the_budget<E: Env>(env: E) {
    let servers = Servers::start(&env, 2).await;
    let config = quick()
        .retry_budget(RetryBudget {
            ratio: 0.2,
            floor_per_sec: 5,
            max_saved: 100,
        })
        .max_attempts(3)
        // No overload backoff in the way: each refusal is retried at once.
        .strategy(Strategy::RoundRobin);
    let client = balanced(&env, servers.discovery(), config);
    let calls = 500u64;
    let started = std::time::Instant::now();
    for _ in 0..calls {
        let error = client.call::<_, ()>("refuse", &()).await.unwrap_err();
        assert!(
            matches!(error, flumen::Error::Call(ref e) if e.is_not_sent()),
            "{error}"
        );
    }
    let ran: u64 = servers.runs().iter().sum();
    let stats = client.balancer().unwrap().stats();
    assert_eq!(ran, calls + stats.retries, "every attempt reached a server");
    // 20% of the calls, plus at most 5 a second for the seconds the test ran (and the
    // budget's first second).
    let seconds = started.elapsed().as_secs() + 2;
    assert!(stats.retries >= calls / 5, "{} retries", stats.retries);
    assert!(
        stats.retries <= calls / 5 + 5 * seconds,
        "{} retries in {seconds} s",
        stats.retries
    );
    assert!(stats.retries_refused > 0);
}

/// One affinity key always lands on the same server.
async fn an_affinity_key_sticks_to_one_server<E: Env>(env: E) {
    let servers = Servers::start(&env, 3).await;
    let client = FleetClient::new(balanced(
        &env,
        servers.discovery(),
        quick().strategy(Strategy::ConsistentHash),
    ));
    for user in 0..20 {
        let keyed = client.with_affinity(format!("user-{user}"));
        let first = keyed.work(0).await.unwrap();
        for _ in 0..5 {
            assert_eq!(keyed.work(0).await.unwrap(), first);
        }
    }
    assert!(
        servers.runs().iter().all(|&r| r > 0),
        "{:?}",
        servers.runs()
    );
}

/// Power of two choices sends almost nothing to a server far slower than the others.
async fn two_choices_avoid_a_slow_server<E: Env>(env: E) {
    let servers = Servers::start(&env, 3).await;
    // Far slower than any stall of a loaded machine, so that the slow one is always the
    // slowest.
    servers.delays[2].store(250, Ordering::SeqCst);
    let client = FleetClient::new(balanced(&env, servers.discovery(), quick()));
    let mut answered = [0u32; 3];
    for _ in 0..300 {
        answered[client.work(0).await.unwrap() as usize] += 1;
    }
    assert_eq!(servers.runs(), answered.map(u64::from), "nothing retried");
    // Each server is tried before it has a latency; then the slow one loses every draw.
    assert!(answered[2] <= 5, "{answered:?}");
    assert!(answered[0] > 20 && answered[1] > 20, "{answered:?}");
}

/// Blocking callers use a balanced client too.
async fn blocking_calls_are_balanced<E: Env>(env: E) {
    let servers = Servers::start(&env, 2).await;
    let client = balanced(
        &env,
        servers.discovery(),
        quick().strategy(Strategy::RoundRobin),
    );
    let _: u32 = client.call("who", &()).await.unwrap();
    all_connected(&env, &client).await;
    let caller = client.clone();
    let thread = std::thread::spawn(move || {
        (0..100)
            .map(|_| caller.call_blocking::<_, u32>("who", &()).unwrap())
            .collect::<Vec<_>>()
    });
    eventually(&env, "the blocking calls", || thread.is_finished()).await;
    let answers = thread.join().unwrap();
    assert!(answers.contains(&0) && answers.contains(&1));
}

/// With no endpoint reachable a call fails at once as not sent, with the connection error,
/// instead of waiting for its deadline.
async fn no_reachable_endpoint_fails_fast_as_not_sent<E: Env>(env: E) {
    let mut servers = Servers::start(&env, 1).await;
    servers.kill(0);
    // A QUIC handshake with a dead port only ends at the connect timeout.
    let client_config = ClientConfig::default()
        .default_timeout(Some(Duration::from_secs(60)))
        .connect_timeout(Duration::from_millis(500));
    let config = quick().client(client_config);
    let client = balanced(&env, servers.discovery(), config);
    let started = std::time::Instant::now();
    let error = client.call::<_, u32>("who", &()).await.unwrap_err();
    assert!(
        matches!(error, flumen::Error::Call(ref e) if e.is_not_sent()),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it waited for the deadline"
    );
}

/// An idle pooled connection whose server stopped answering is found by the health ping:
/// closed, and counted against its endpoint, before any call is sent into it.
async fn a_silent_idle_connection_is_found_by_a_health_ping<E: Env>(env: E) {
    use flumen::stream::{
        frame::{FrameHeader, FrameKind},
        hello::Hello,
        Listener, Transport,
    };

    let mut listener = env.transport().bind(&loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (done, seen) = smol::channel::bounded(1);
    env.spawn(async move {
        let mut peer = flumen_peer::Peer::accept(&mut listener).await.unwrap();
        peer.send_hello(Hello::new(1 << 20, 64)).await.unwrap();
        peer.read_hello().await.unwrap();
        // Answers pings and the first call (7, in MessagePack), then nothing: later pings go
        // unanswered.
        loop {
            let frame = peer.next_frame().await.unwrap().expect("a frame");
            let header = frame.header;
            if header.kind == FrameKind::Ping {
                let pong = FrameHeader::new(FrameKind::Pong, header.seq);
                peer.send_frame(pong, &frame.body).await.unwrap();
                continue;
            }
            let reply = FrameHeader {
                method: header.method,
                ..FrameHeader::new(FrameKind::Response, header.seq)
            };
            peer.send_frame(reply, &[7]).await.unwrap();
            break;
        }
        // Until the connection ends (cleanly or not: TLS and QUIC see an abrupt close).
        let mut pinged = false;
        while let Ok(Some(frame)) = peer.next_frame().await {
            pinged |= frame.header.kind == FrameKind::Ping;
        }
        let _ = done.send(pinged).await;
    });
    let config = quick()
        .health_interval(Duration::from_millis(20))
        .health_timeout(Duration::from_millis(200));
    let client = balanced(&env, Static::new([addr]), config);
    assert_eq!(client.call::<_, u32>("who", &()).await.unwrap(), 7);
    // Closed by this side: the peer sees the end of the connection after a ping.
    assert!(seen.recv().await.unwrap(), "the idle connection was pinged");
    let stats = client.balancer().unwrap().stats();
    assert!(stats.endpoints[0].failures >= 1, "{stats:?}");
}

/// A discovery source that answers once, then never again; says when it is dropped.
struct Quiet {
    first: Option<Vec<Target<SocketAddr>>>,
    dropped: Arc<AtomicU64>,
}

impl discovery::Discover<SocketAddr> for Quiet {
    async fn next(&mut self) -> Option<Vec<Target<SocketAddr>>> {
        match self.first.take() {
            Some(set) => Some(set),
            None => std::future::pending().await,
        }
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// Dropping the client stops its discovery, even a source that never says anything more
/// (a polled file, DNS or etcd would otherwise poll forever).
async fn dropping_the_client_stops_its_discovery<E: Env>(env: E) {
    let servers = Servers::start(&env, 1).await;
    let dropped = Arc::new(AtomicU64::new(0));
    let source = Quiet {
        first: Some(vec![Target::new(servers.addrs[0])]),
        dropped: dropped.clone(),
    };
    let client = balanced(&env, source, quick());
    let _: u32 = client.call("who", &()).await.unwrap();
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    drop(client);
    eventually(&env, "the discovery source dropped", || {
        dropped.load(Ordering::SeqCst) == 1
    })
    .await;
}

/// An idempotent call stuck on a server that hangs is hedged to the other server after the
/// learned percentile, and the hedge's answer wins; the stuck attempt is cancelled. A call of
/// a method not declared idempotent is never hedged.
async fn idempotent_calls_stuck_in_the_tail_are_hedged<E: Env>(env: E) {
    let servers = Servers::start(&env, 2).await;
    let generous = RetryBudget {
        ratio: 1.0,
        floor_per_sec: 10,
        max_saved: 1000,
    };
    let client = balanced(
        &env,
        servers.discovery(),
        quick()
            .strategy(Strategy::RoundRobin)
            .retry_budget(generous)
            .hedging(Some(Hedging::percentile(0.9))),
    );
    let balancer = client.balancer().unwrap().clone();
    let fleet = FleetClient::new(client);
    // Both fast: the balancer learns the method's latencies (a few calls in the tail are
    // hedged, and answered by either server).
    for _ in 0..300 {
        fleet.read(0).await.unwrap();
    }
    let before = balancer.stats();

    // Server 0 hangs (far past the calls' 10 s deadline): every call sent there is hedged to
    // server 1, which answers. These calls are marked, so that a losing attempt of the calls
    // above, still on its way, is not counted with them.
    servers.delays[0].store(60_000, Ordering::SeqCst);
    let runs = servers.marked();
    for _ in 0..20 {
        assert_eq!(fleet.read(MARK).await.unwrap(), 1);
    }
    let stats = balancer.stats();
    let (hedges, won) = (
        stats.hedges - before.hedges,
        stats.hedges_won - before.hedges_won,
    );
    // Every run on server 0 is one hedge: a first attempt there (hedged to server 1, whose
    // answer won) or a hedge of a call first sent to server 1 (which lost). A losing hedge can
    // be cancelled before server 0 runs it (a loaded machine), so the runs are at most the
    // hedges; and server 0 runs every first attempt it was sent, so at least the hedges won.
    let stuck = servers.marked()[0] - runs[0];
    assert!(stuck <= hedges, "{stuck} runs on server 0: {stats:?}");
    eventually(
        &env,
        "server 0 ran the first attempts that were hedged",
        || servers.marked()[0] - runs[0] >= won,
    )
    .await;
    assert!(
        won >= 5,
        "round robin sent about half to server 0: {stats:?}"
    );
    assert_eq!(
        servers.marked()[1] - runs[1],
        20,
        "server 1 answered each call once"
    );
    // The stuck attempts were cancelled: server 0 runs nothing now.
    let server0 = servers.handles[0].as_ref().unwrap();
    eventually(&env, "the stuck attempts cancelled", || {
        server0.stats().in_flight == 0
    })
    .await;

    // Not idempotent: never hedged, however slow, even with a fixed 1 ms hedge delay (which
    // hedges the same calls of an idempotent method).
    servers.delays[0].store(0, Ordering::SeqCst);
    let client = balanced(
        &env,
        servers.discovery(),
        quick()
            .strategy(Strategy::RoundRobin)
            .retry_budget(generous)
            .hedging(Some(Hedging::after(Duration::from_millis(1)))),
    );
    let balancer = client.balancer().unwrap().clone();
    let fleet = FleetClient::new(client);
    fleet.work(0).await.unwrap();
    eventually(&env, "both servers connected", || {
        balancer.stats().endpoints.iter().all(|e| e.connections > 0)
    })
    .await;
    servers.delays[0].store(300, Ordering::SeqCst);
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(fleet.work(0).await.unwrap());
    }
    answers.sort();
    assert_eq!(answers, [0, 1], "the slow server answered its own call");
    assert_eq!(balancer.stats().hedges, 0);
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(fleet.read(0).await.unwrap());
    }
    assert_eq!(answers, [1, 1], "the slow server's call was hedged");
    assert!(balancer.stats().hedges_won >= 1);
}

e2e_ip!(
    idempotent_calls_stuck_in_the_tail_are_hedged,
    dropping_the_client_stops_its_discovery,
    a_silent_idle_connection_is_found_by_a_health_ping,
    calls_move_off_a_dead_server_and_back,
    a_server_not_serving_gets_no_calls_until_it_serves,
    a_check_answered_with_an_error_is_not_serving,
    only_idempotent_calls_are_retried_after_they_ran,
    calls_leave_a_draining_server,
    a_leader_redirect_is_followed_and_remembered,
    discovery_changes_apply_while_calls_run,
    retries_stay_within_the_budget,
    an_affinity_key_sticks_to_one_server,
    two_choices_avoid_a_slow_server,
    blocking_calls_are_balanced,
    no_reachable_endpoint_fails_fast_as_not_sent,
);
