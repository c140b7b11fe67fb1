//! Five members, each a process in a network namespace of its own, joined by a switch (a
//! namespace with two bridges): they join, one is killed and restarted, the network splits in
//! two and heals, one leaves. Each member prints its registry's events; this test times them.
//!
//! Needs the rights to make namespaces (`CAP_NET_ADMIN`, iproute2): without them the harness
//! (api/tests/common/external.rs) reports it ignored, or failed with
//! `FLUMEN_REQUIRE_EXTERNAL=1`. The namespaces and processes go when the test ends, whatever
//! way it ends.

#[path = "../../api/tests/common/external.rs"]
mod external;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use flumen_membership::{Config, Event, Membership, Tags};

/// Set in a child: `NAME IP SEED_IP`.
const ROLE: &str = "FLUMEN_NETNS_MEMBER";
const NODES: usize = 5;
const GOSSIP_PORT: u16 = 7946;

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The switch and the members' namespaces; removed on drop.
struct Network {
    prefix: String,
}

impl Network {
    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    fn member(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    fn port(&self, i: usize) -> String {
        format!("{}p{i}", self.prefix.replace("flm-", "fb"))
    }

    fn addr(i: usize) -> String {
        format!("10.215.0.{}", i + 1)
    }

    /// Makes it (the harness ran the test only with the rights to).
    fn create() -> Self {
        let prefix = format!("flm-{}", std::process::id() % 100_000);
        let network = Self { prefix };
        assert!(
            ip(&["netns", "add", &network.switch()]),
            "making namespace {}",
            network.switch()
        );
        let sw = network.switch();
        let mut ok = ip(&["-n", &sw, "link", "set", "lo", "up"]);
        for bridge in ["br0", "br1"] {
            ok &= ip(&["-n", &sw, "link", "add", bridge, "type", "bridge"])
                && ip(&["-n", &sw, "link", "set", bridge, "up"]);
        }
        for i in 0..NODES {
            let (ns, port) = (network.member(i), network.port(i));
            let inner = format!("{}i", port);
            ok &= ip(&["netns", "add", &ns])
                && ip(&[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", &inner,
                ])
                && ip(&["-n", &sw, "link", "set", &inner, "netns", &ns])
                && ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])
                && ip(&["-n", &ns, "link", "set", "lo", "up"])
                && ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", Self::addr(i)),
                    "dev",
                    &inner,
                ])
                && ip(&["-n", &ns, "link", "set", &inner, "up"]);
        }
        assert!(ok, "setting up the namespaces failed");
        network
    }

    /// Puts member `i` on bridge `bridge`: members on different bridges cannot reach each
    /// other, and nobody is told.
    fn attach(&self, i: usize, bridge: &str) {
        assert!(ip(&[
            "-n",
            &self.switch(),
            "link",
            "set",
            &self.port(i),
            "master",
            bridge
        ]));
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for i in 0..NODES {
            ip(&["netns", "del", &self.member(i)]);
        }
        ip(&["netns", "del", &self.switch()]);
    }
}

/// The child's half: not a test of its own (it returns at once unless started as a member).
/// It gossips from its namespace, prints every event of its registry as `EVENT kind name`,
/// and answers `stats` (`STATS bytes_sent bytes_received`) and `leave` on its stdin.
fn member() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let parts: Vec<&str> = role.split(' ').collect();
    let (name, own, seed) = (parts[0], parts[1], parts[2]);
    let gossip: SocketAddr = format!("{own}:{GOSSIP_PORT}").parse().unwrap();
    let seed: SocketAddr = format!("{seed}:{GOSSIP_PORT}").parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let rt = flumen_rt::TokioRuntime::current();
        let rpc = SocketAddr::new(gossip.ip(), 7000);
        let membership = Membership::builder(name, rpc)
            .tags(Tags::from_iter([("role", "worker")]))
            .seeds(&[seed])
            .config(Config::fast())
            .bind(&rt, gossip)
            .unwrap();
        let events = membership.registry().subscribe();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                let (kind, member) = match event {
                    Event::Joined(m) => ("joined", m),
                    Event::Suspect(m) => ("suspect", m),
                    Event::Recovered(m) => ("recovered", m),
                    Event::Failed(m) => ("failed", m),
                    Event::Left(m) => ("left", m),
                    Event::TagsChanged { member, .. } => ("tags", member),
                };
                println!("EVENT {kind} {}", member.name);
            }
        });
        let (lines, commands) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if lines.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        let mut commands = commands;
        while let Some(command) = commands.recv().await {
            match command.as_str() {
                "stats" => {
                    let stats = membership.stats();
                    println!("STATS {} {}", stats.bytes_sent, stats.bytes_received);
                }
                "leave" => {
                    membership.leave().await.unwrap();
                    println!("LEFT");
                    return;
                }
                _ => {}
            }
        }
    });
}

/// What the members printed: (member, line, when).
type Lines = mpsc::Receiver<(usize, String, Instant)>;

struct Members {
    network: Network,
    children: Vec<Option<(Child, ChildStdin)>>,
    lines: mpsc::Sender<(usize, String, Instant)>,
    /// Every `EVENT` line so far: (member, kind, subject) -> when.
    seen: HashMap<(usize, String, String), Instant>,
    stats: HashMap<usize, (u64, u64)>,
}

impl Members {
    fn spawn(&mut self, i: usize) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.network.member(i)])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "member", "--nocapture", "--test-threads=1"])
            .env(
                ROLE,
                format!("node{i} {} {}", Network::addr(i), Network::addr(0)),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = child;
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = self.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send((i, line, Instant::now())).is_err() {
                    break;
                }
            }
        });
        self.children[i] = Some((child, stdin));
    }

    fn kill(&mut self, i: usize) {
        if let Some((mut child, _)) = self.children[i].take() {
            // `ip netns exec` runs the member in its own process: kill that one.
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn tell(&mut self, i: usize, command: &str) {
        let (_, stdin) = self.children[i].as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
    }

    /// Reads lines until `done` holds of what was seen, for at most `limit`.
    fn until(&mut self, from: &Lines, what: &str, limit: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (i, line, at) = from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
            // The harness prints `test member ... ` before the first line: skip to the word.
            let start = ["EVENT ", "STATS "]
                .iter()
                .filter_map(|word| line.find(word))
                .min();
            let Some(start) = start else { continue };
            let mut words = line[start..].split(' ');
            match words.next() {
                Some("EVENT") => {
                    let (kind, subject) = (words.next().unwrap(), words.next().unwrap());
                    self.seen
                        .entry((i, kind.to_owned(), subject.to_owned()))
                        .or_insert(at);
                }
                Some("STATS") => {
                    let sent = words.next().unwrap().parse().unwrap();
                    let received = words.next().unwrap().parse().unwrap();
                    self.stats.insert(i, (sent, received));
                }
                _ => {}
            }
        }
    }

    /// When member `observer` first reported `kind` about `subject`, if it did (after `since`).
    fn when(&self, observer: usize, kind: &str, subject: usize, since: Instant) -> Option<Instant> {
        self.seen
            .get(&(observer, kind.to_owned(), format!("node{subject}")))
            .copied()
            .filter(|&at| at >= since)
    }

    fn all_saw(
        &self,
        observers: &[usize],
        kind: &str,
        subjects: &[usize],
        since: Instant,
    ) -> Option<(Duration, Duration)> {
        let mut times = Vec::new();
        for &o in observers {
            for &s in subjects {
                times.push(self.when(o, kind, s, since)?);
            }
        }
        let first = times.iter().min()?.duration_since(since);
        let last = times.iter().max()?.duration_since(since);
        Some((first, last))
    }

    /// Forgets events, so that the next phase's are told apart.
    fn forget(&mut self) {
        self.seen.clear();
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill(i);
        }
    }
}

fn five_members_in_namespaces() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let network = Network::create();
    let (lines, from) = mpsc::channel();
    let mut members = Members {
        network,
        children: (0..NODES).map(|_| None).collect(),
        lines,
        seen: HashMap::new(),
        stats: HashMap::new(),
    };
    let all: Vec<usize> = (0..NODES).collect();
    let limit = Duration::from_secs(20);
    let config = Config::fast();
    println!(
        "settings: probe period {:?}, probe rtt {:?}, suspect to down {:?}, heartbeats every {:?}, phi threshold {}",
        config.swim.probe_period,
        config.swim.probe_rtt,
        config.swim.suspect_to_down_after,
        config.heartbeat_interval,
        config.phi.threshold,
    );

    // Join.
    let start = Instant::now();
    for i in 0..NODES {
        members.spawn(i);
    }
    members.until(&from, "every member sees every other", limit, |m| {
        all.iter().all(|&o| {
            all.iter()
                .all(|&s| o == s || m.when(o, "joined", s, start).is_some())
        })
    });
    let (_, joined) = members.all_saw(&all[1..], "joined", &[0], start).unwrap();
    println!("join: every member saw every other within {joined:?} of the first start");

    // Traffic of a steady cluster: each member's bytes over a few seconds.
    let stats = |members: &mut Members, what: &str| {
        members.stats.clear();
        for i in 0..NODES {
            members.tell(i, "stats");
        }
        members.until(&from, what, limit, |m| m.stats.len() == NODES);
        members.stats.clone()
    };
    let (t0, before) = (Instant::now(), stats(&mut members, "stats"));
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let after = stats(&mut members, "stats again");
    let span = t0.elapsed().as_secs_f64();
    let rates: Vec<f64> = (0..NODES)
        .map(|i| (after[&i].0 - before[&i].0) as f64 / span)
        .collect();
    println!("traffic: bytes sent per second per member {rates:.0?}");
    assert!(rates.iter().all(|&r| r > 0.0 && r < 50_000.0), "{rates:?}");

    // A crash.
    members.forget();
    let crash = Instant::now();
    members.kill(4);
    let survivors = [0, 1, 2, 3];
    members.until(&from, "the crash is declared everywhere", limit, |m| {
        m.all_saw(&survivors, "failed", &[4], crash).is_some()
    });
    let suspected = survivors
        .iter()
        .filter_map(|&o| m_first(&members, o, 4, crash))
        .min()
        .unwrap();
    let (first_down, all_down) = members.all_saw(&survivors, "failed", &[4], crash).unwrap();
    println!(
        "crash: first suspected after {suspected:?}; declared down first after {first_down:?}, by every member after {all_down:?}"
    );

    // A restart: the new process beats what the cluster remembers of the old one.
    members.forget();
    let restart = Instant::now();
    members.spawn(4);
    members.until(
        &from,
        "the restarted member is back everywhere",
        limit,
        |m| m.all_saw(&survivors, "joined", &[4], restart).is_some(),
    );
    let (_, back) = members
        .all_saw(&survivors, "joined", &[4], restart)
        .unwrap();
    println!("restart: back in every view after {back:?}");

    // A partition, and its heal.
    members.forget();
    let (a, b) = ([0, 1], [2, 3, 4]);
    let split = Instant::now();
    for &i in &b {
        members.network.attach(i, "br1");
    }
    members.until(&from, "each side declares the other down", limit, |m| {
        m.all_saw(&a, "failed", &b, split).is_some() && m.all_saw(&b, "failed", &a, split).is_some()
    });
    let (_, a_down) = members.all_saw(&a, "failed", &b, split).unwrap();
    let (_, b_down) = members.all_saw(&b, "failed", &a, split).unwrap();
    println!(
        "partition: each side declared the other down after {:?}",
        a_down.max(b_down)
    );
    members.forget();
    let heal = Instant::now();
    for &i in &b {
        members.network.attach(i, "br0");
    }
    members.until(&from, "the healed cluster converges", limit, |m| {
        m.all_saw(&a, "joined", &b, heal).is_some() && m.all_saw(&b, "joined", &a, heal).is_some()
    });
    let (_, a_back) = members.all_saw(&a, "joined", &b, heal).unwrap();
    let (_, b_back) = members.all_saw(&b, "joined", &a, heal).unwrap();
    println!(
        "heal: every member saw the other side again after {:?}",
        a_back.max(b_back)
    );

    // A graceful leave: reported left, never failed.
    members.forget();
    let leave = Instant::now();
    members.tell(3, "leave");
    let stay = [0, 1, 2, 4];
    members.until(&from, "the leave is seen everywhere", limit, |m| {
        m.all_saw(&stay, "left", &[3], leave).is_some()
    });
    let (_, left) = members.all_saw(&stay, "left", &[3], leave).unwrap();
    println!("leave: seen by every member after {left:?}");
    assert!(
        stay.iter()
            .all(|&o| members.when(o, "failed", 3, leave).is_none()),
        "a leave was reported as a failure"
    );
}

/// When `observer` first suspected or declared `subject` down, after `since`.
fn m_first(members: &Members, observer: usize, subject: usize, since: Instant) -> Option<Duration> {
    ["suspect", "failed"]
        .iter()
        .filter_map(|kind| members.when(observer, kind, subject, since))
        .min()
        .map(|at| at.duration_since(since))
}

fn main() -> std::process::ExitCode {
    use external::Needs;
    external::run(vec![
        ("member", Needs::Nothing, member),
        (
            "five_members_in_namespaces",
            Needs::Netns,
            five_members_in_namespaces,
        ),
    ])
}
