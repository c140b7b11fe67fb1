//! Gossip traffic and detection times of a simulated cluster: real members (foca, phi, the
//! registry) on an in-memory network and a virtual clock, so sizes no single host can run
//! are measured in seconds.
//!
//! ```text
//! cargo run --release -p flumen-membership --example traffic -- [NODES] [SECONDS] [lan|fast]
//! ```
//!
//! Defaults: 500 members, a 30 s window, the LAN settings (`Config::default`). It joins the
//! members through the first one, waits until every member sees every other, measures the
//! bytes and datagrams each member sends over the window (and counts suspicions, which a
//! healthy cluster should not have), then kills one member and times how long until every
//! other sees it suspected, then down.

use std::time::{Duration, Instant};

use flumen_membership::{sim::Simulation, Config, Event, State, Tags};

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let (config, profile) = match args.next().as_deref() {
        Some("fast") => (Config::fast(), "fast"),
        _ => (Config::lan(u32::try_from(nodes).unwrap_or(u32::MAX)), "lan"),
    };
    println!(
        "{nodes} members, {profile} settings: probe every {:?}, suspect to down {:?}, heartbeats every {:?} to {}, max {} transmissions per update",
        config.swim.probe_period,
        config.swim.suspect_to_down_after,
        config.heartbeat_interval,
        config.heartbeat_fanout,
        config.swim.max_transmissions,
    );
    let wall = Instant::now();
    let mut sim = Simulation::new(Duration::from_millis(1));
    for i in 0..nodes {
        let tags = Tags::from_iter([("zone", if i % 2 == 0 { "eu" } else { "us" })]);
        if let Err(e) = sim.add(&format!("node{i}"), tags, config.clone()) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
    // Members start 20 ms apart, each joining through one that started before it.
    for i in 1..nodes {
        if let Err(e) = sim.join(i, &[fastrand::usize(..i)]) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        sim.run_for(Duration::from_millis(20));
    }
    let started = Duration::from_millis(20 * (nodes as u64 - 1));

    let converged = |sim: &Simulation| {
        (0..nodes).all(|o| {
            sim.registry(o).is_some_and(|r| {
                let members = r.members();
                members.len() == nodes && members.iter().all(|(_, s)| *s == State::Alive)
            })
        })
    };
    let mut joined = None;
    for step in 1..=300 {
        sim.run_for(Duration::from_secs(1));
        if converged(&sim) {
            joined = Some(Duration::from_secs(step));
            break;
        }
    }
    let Some(joined) = joined else {
        eprintln!("error: the cluster did not converge within 300 s of virtual time");
        std::process::exit(1);
    };
    println!(
        "join: members started over {started:?}; every member saw all {nodes} alive {joined:?} after the last start (virtual time, checked each second)"
    );

    let events: Vec<_> = (0..nodes)
        .filter_map(|i| sim.registry(i).map(|r| r.subscribe()))
        .collect();
    let before: Vec<_> = (0..nodes)
        .filter_map(|i| sim.node(i).map(|n| n.stats()))
        .collect();
    let window = Duration::from_secs(seconds);
    sim.run_for(window);
    let after: Vec<_> = (0..nodes)
        .filter_map(|i| sim.node(i).map(|n| n.stats()))
        .collect();
    let per_second = |f: &dyn Fn(&flumen_membership::Stats) -> u64| -> (f64, f64) {
        let rates: Vec<f64> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| (f(a) - f(b)) as f64 / window.as_secs_f64())
            .collect();
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let max = rates.iter().copied().fold(0.0, f64::max);
        (mean, max)
    };
    let (bytes, bytes_max) = per_second(&|s| s.bytes_sent);
    let (packets, packets_max) = per_second(&|s| s.packets_sent);
    let (beats, _) = per_second(&|s| s.heartbeats_sent);
    let (syncs, _) = per_second(&|s| s.sync_bytes_sent);
    let suspicions: usize = events
        .iter()
        .map(|rx| {
            std::iter::from_fn(|| rx.try_recv().ok())
                .filter(|e| matches!(e, Event::Suspect(_)))
                .count()
        })
        .sum();
    println!(
        "steady {seconds} s: per member {bytes:.0} B/s sent (max {bytes_max:.0}; view syncs {syncs:.0} of them), {packets:.1} datagrams/s (max {packets_max:.1}, of which heartbeats {beats:.1}); suspicions: {suspicions}"
    );

    let victim = nodes - 1;
    sim.crash(victim);
    let observers = 0..victim;
    let seen = |sim: &Simulation, ok: &dyn Fn(Option<State>) -> bool| {
        observers.clone().all(|o| ok(sim.state(o, victim)))
    };
    let mut suspected = None;
    let mut down = None;
    for step in 1..=12_000u64 {
        sim.run_for(Duration::from_millis(10));
        let at = Duration::from_millis(10 * step);
        if suspected.is_none() && seen(&sim, &|s| s != Some(State::Alive)) {
            suspected = Some(at);
        }
        if seen(&sim, &|s| s == Some(State::Down)) {
            down = Some(at);
            break;
        }
    }
    println!(
        "crash of one member: suspected by every other after {suspected:?}, down everywhere after {down:?} (virtual time)"
    );
    println!(
        "({} datagrams delivered in {:.1?} of wall time)",
        sim.delivered(),
        wall.elapsed()
    );
}
