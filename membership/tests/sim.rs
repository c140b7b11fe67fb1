//! The gossip protocol's behaviour on the in-memory network and virtual clock: joins, a
//! crash, a graceful leave, new tags, a partition and its heal. Every wait is bounded in
//! virtual time, so a broken behaviour fails the test instead of hanging it.

use std::time::Duration;

use flumen_membership::{sim::Simulation, Config, Event, State, Tags};

const LATENCY: Duration = Duration::from_millis(1);

fn cluster(n: usize, config: &Config) -> Simulation {
    let mut sim = Simulation::new(LATENCY);
    for i in 0..n {
        let tags = Tags::from_iter([("zone", if i % 2 == 0 { "eu" } else { "us" })]);
        sim.add(&format!("node{i}"), tags, config.clone()).unwrap();
    }
    for i in 1..n {
        sim.join(i, &[0]).unwrap();
    }
    // Gossip spreads most joins at once; the view syncs (every 30 s by default) the rest.
    sim.run_within(Duration::from_secs(90), |sim| {
        all_see(sim, 0..n, 0..n, State::Alive)
    })
    .expect("the cluster did not converge");
    sim
}

/// Whether every member of `observers` sees every member of `subjects` in `state`.
fn all_see(
    sim: &Simulation,
    observers: impl IntoIterator<Item = usize>,
    subjects: impl IntoIterator<Item = usize> + Clone,
    state: State,
) -> bool {
    observers.into_iter().all(|o| {
        subjects
            .clone()
            .into_iter()
            .all(|s| sim.state(o, s) == Some(state))
    })
}

#[test]
fn members_join_detect_a_crash_and_see_a_leave_and_new_tags() {
    let config = Config::fast();
    let mut sim = cluster(5, &config);
    let events = sim.registry(0).unwrap().subscribe();

    sim.crash(4);
    let suspect = sim
        .run_within(Duration::from_secs(10), |sim| {
            (0..4).all(|o| sim.state(o, 4) != Some(State::Alive))
        })
        .expect("the crash was not suspected");
    let down = sim
        .run_within(Duration::from_secs(10), |sim| {
            all_see(sim, 0..4, [4], State::Down)
        })
        .expect("the crashed member was not declared down");
    println!("crash: suspected everywhere after {suspect:?}, down {down:?} later");

    sim.leave(3).unwrap();
    sim.run_within(Duration::from_secs(10), |sim| {
        all_see(sim, 0..3, [3], State::Left)
    })
    .expect("the leave was not seen");

    sim.set_tags(2, Tags::from_iter([("zone", "eu"), ("gpu", "")]))
        .unwrap();
    sim.run_within(Duration::from_secs(10), |sim| {
        (0..2).all(|o| {
            sim.registry(o)
                .unwrap()
                .matching(&"gpu".parse().unwrap())
                .len()
                == 1
        })
    })
    .expect("the new tags did not spread");

    let seen: Vec<Event> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    let about = |name: &str| -> Vec<&'static str> {
        seen.iter()
            .filter_map(|e| match e {
                Event::Suspect(m) if m.name == name => Some("suspect"),
                Event::Failed(m) if m.name == name => Some("failed"),
                Event::Left(m) if m.name == name => Some("left"),
                Event::TagsChanged { member, .. } if member.name == name => Some("tags"),
                Event::Recovered(m) if m.name == name => Some("recovered"),
                _ => None,
            })
            .collect()
    };
    assert_eq!(about("node4"), ["suspect", "failed"]);
    assert_eq!(
        about("node3"),
        ["left"],
        "a graceful leave is not a failure"
    );
    assert_eq!(about("node2"), ["tags"]);
}

#[test]
fn a_partition_splits_the_view_and_its_heal_joins_it_again() {
    let config = Config::fast();
    let mut sim = cluster(5, &config);
    sim.partition(&[&[0, 1], &[2, 3, 4]]);
    sim.run_within(Duration::from_secs(20), |sim| {
        all_see(sim, [0, 1], [2, 3, 4], State::Down) && all_see(sim, [2, 3, 4], [0, 1], State::Down)
    })
    .expect("each side did not declare the other down");
    // Each side still sees its own half alive.
    assert!(all_see(&sim, [0, 1], [0, 1], State::Alive));
    assert!(all_see(&sim, [2, 3, 4], [2, 3, 4], State::Alive));

    sim.heal();
    let healed = sim
        .run_within(Duration::from_secs(30), |sim| {
            all_see(sim, 0..5, 0..5, State::Alive)
        })
        .expect("the healed partition did not converge");
    println!("partition healed: converged after {healed:?}");
}

#[test]
fn a_steady_cluster_suspects_nobody() {
    // Default (LAN) settings: phi's threshold must hold against the rhythm of heartbeats and
    // probes that a healthy cluster has.
    let mut sim = cluster(24, &Config::default());
    let events = sim.registry(0).unwrap().subscribe();
    sim.run_for(Duration::from_secs(60));
    let noise: Vec<Event> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert_eq!(noise, vec![], "a healthy cluster saw changes");
    assert!(all_see(&sim, 0..24, 0..24, State::Alive));
}

#[test]
fn view_syncs_repair_what_gossip_missed() {
    // Gossip that reaches almost nobody: each update sent once, no periodic gossip or
    // announcements, probes far apart. Only the view syncs can spread the joins.
    let quiet = |sync: Option<Duration>| {
        let mut config = Config::fast();
        config.swim.max_transmissions = std::num::NonZeroU8::MIN;
        config.swim.periodic_gossip = None;
        config.swim.periodic_announce = None;
        config.swim.probe_period = Duration::from_secs(3600);
        config.heartbeat_interval = None;
        config.sync_interval = sync;
        config
    };
    let converge = |config: Config| {
        let mut sim = Simulation::new(LATENCY);
        for i in 0..8 {
            sim.add(&format!("node{i}"), Tags::new(), config.clone())
                .unwrap();
        }
        for i in 1..8 {
            sim.join(i, &[0]).unwrap();
        }
        sim.run_within(Duration::from_secs(30), |sim| {
            all_see(sim, 0..8, 0..8, State::Alive)
        })
    };
    assert_eq!(
        converge(quiet(None)),
        None,
        "gossip alone converged: the test shows nothing"
    );
    let took =
        converge(quiet(Some(Duration::from_millis(500)))).expect("the syncs did not converge");
    println!("view syncs every 500 ms: converged after {took:?}");
}

#[test]
fn phi_suspects_a_silent_member_before_any_probe_does() {
    // Probes an hour apart: only phi, fed by the heartbeats, can notice the crash.
    let config = |heartbeats: Option<Duration>| {
        let mut config = Config::fast();
        config.swim.probe_period = Duration::from_secs(3600);
        config.heartbeat_interval = heartbeats;
        config
    };
    let detect = |config: Config| {
        let mut sim = cluster(5, &config);
        // Let each member learn its peers' rhythm.
        sim.run_for(Duration::from_secs(5));
        sim.crash(4);
        sim.run_within(Duration::from_secs(20), |sim| {
            all_see(sim, 0..4, [4], State::Suspect)
        })
    };
    assert_eq!(
        detect(config(None)),
        None,
        "suspected without heartbeats: the test shows nothing"
    );
    let took = detect(config(Some(Duration::from_millis(100))))
        .expect("phi did not suspect the silent member");
    println!("phi on heartbeats every 100 ms: suspected everywhere after {took:?}");
}

#[test]
fn a_full_view_refuses_new_members() {
    let mut small = Config::fast();
    small.max_members = 2;
    let mut sim = Simulation::new(LATENCY);
    sim.add("node0", Tags::new(), small).unwrap();
    for i in 1..6 {
        sim.add(&format!("node{i}"), Tags::new(), Config::fast())
            .unwrap();
    }
    for i in [0, 2, 3, 4, 5] {
        sim.join(i, &[1]).unwrap();
    }
    // The others find each other through node1; node0 stops at two peers.
    sim.run_within(Duration::from_secs(20), |sim| {
        all_see(sim, 1..6, 1..6, State::Alive)
    })
    .expect("the others did not converge");
    sim.run_for(Duration::from_secs(5));
    let known = sim.registry(0).unwrap().members().len();
    assert_eq!(known, 3, "itself and two peers");
    assert!(sim.node(0).unwrap().stats().packets_refused > 0);
}
