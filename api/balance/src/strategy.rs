//! Load-balancing strategies: which endpoint takes the next call (sans-IO).
//!
//! A strategy sees a snapshot of the endpoints that can take a call now ([`Candidate`]s) and
//! returns an index into it. It keeps no state of its own beyond a rotation counter, so the same
//! inputs and the same random source give the same choice: the tests drive it with fake
//! endpoints and a seeded generator.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How a balanced client spreads calls over its endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Each endpoint in turn.
    RoundRobin,
    /// An endpoint drawn at random.
    Random,
    /// The endpoint with the fewest calls in flight (ties rotate).
    LeastInFlight,
    /// Two endpoints drawn at random; the one with the lower cost wins, where the cost is the
    /// endpoint's latency average (peak EWMA) times its calls in flight plus one. Cheap, and
    /// steers away from a slow endpoint within a few calls without herding every client onto
    /// the one that looks fastest. The default.
    #[default]
    PowerOfTwoChoices,
    /// An endpoint drawn at random in proportion to its weight.
    Weighted,
    /// Rendezvous (highest-random-weight) hashing on the caller's affinity key: a key keeps its
    /// endpoint while that endpoint is up, and when one of N endpoints leaves only its 1/N of
    /// the keys move. Calls without a key fall back to power of two choices.
    ConsistentHash,
}

/// What a strategy knows about one endpoint that can take a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Candidate {
    /// A stable hash of the endpoint's address (for consistent hashing).
    pub id: u64,
    /// Calls in flight on the endpoint from this client.
    pub in_flight: u32,
    /// The endpoint's latency average in nanoseconds; 0 before its first reply.
    pub latency_ns: u64,
    /// The endpoint's weight (at least 1).
    pub weight: u32,
}

/// A strategy with its rotation counter.
#[derive(Debug, Default)]
pub(crate) struct Picker {
    strategy: Strategy,
    next: AtomicUsize,
}

impl Picker {
    pub(crate) fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Picks one of `candidates` (non-empty) for a call with affinity `key`.
    pub(crate) fn pick(
        &self,
        candidates: &[Candidate],
        key: Option<u64>,
        rng: &mut fastrand::Rng,
    ) -> usize {
        let n = candidates.len();
        debug_assert!(n > 0, "pick from no candidates");
        if n == 1 {
            return 0;
        }
        match self.strategy {
            Strategy::RoundRobin => self.rotate() % n,
            Strategy::Random => rng.usize(..n),
            Strategy::LeastInFlight => {
                let start = self.rotate() % n;
                (0..n)
                    .map(|i| (start + i) % n)
                    .min_by_key(|&i| candidates[i].in_flight)
                    .unwrap_or(start)
            }
            Strategy::PowerOfTwoChoices => two_choices(candidates, rng),
            Strategy::Weighted => weighted(candidates, rng),
            Strategy::ConsistentHash => match key {
                Some(key) => rendezvous(candidates, key),
                None => two_choices(candidates, rng),
            },
        }
    }

    fn rotate(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// The cost power of two choices compares: latency × (in flight + 1). An endpoint without a
/// latency sample yet costs nothing, so new endpoints get tried.
fn cost(candidate: &Candidate) -> u128 {
    u128::from(candidate.latency_ns) * (u128::from(candidate.in_flight) + 1)
}

fn two_choices(candidates: &[Candidate], rng: &mut fastrand::Rng) -> usize {
    let n = candidates.len();
    let a = rng.usize(..n);
    let b = (a + 1 + rng.usize(..n - 1)) % n;
    match cost(&candidates[b]) < cost(&candidates[a]) {
        true => b,
        false => a,
    }
}

fn weighted(candidates: &[Candidate], rng: &mut fastrand::Rng) -> usize {
    let total: u64 = candidates.iter().map(|c| u64::from(c.weight.max(1))).sum();
    let mut point = rng.u64(..total);
    for (i, candidate) in candidates.iter().enumerate() {
        let weight = u64::from(candidate.weight.max(1));
        if point < weight {
            return i;
        }
        point -= weight;
    }
    candidates.len() - 1
}

/// The candidate whose mix with `key` scores highest.
fn rendezvous(candidates: &[Candidate], key: u64) -> usize {
    candidates
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| mix(c.id ^ mix(key)))
        .map_or(0, |(i, _)| i)
}

/// A 64-bit finaliser (splitmix64): spreads nearby inputs over the whole range.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable 64-bit hash of `bytes` (FNV-1a, then mixed): the same on every run and machine, so
/// clients agree on where a key goes.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u64) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                id: stable_hash(format!("10.0.0.{i}:7000").as_bytes()),
                weight: 1,
                ..Candidate::default()
            })
            .collect()
    }

    fn counts(picker: &Picker, candidates: &[Candidate], calls: usize, seed: u64) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut counts = vec![0; candidates.len()];
        for _ in 0..calls {
            counts[picker.pick(candidates, None, &mut rng)] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_takes_each_endpoint_in_turn() {
        let picker = Picker::new(Strategy::RoundRobin);
        let candidates = endpoints(3);
        let mut rng = fastrand::Rng::with_seed(1);
        let order: Vec<usize> = (0..6)
            .map(|_| picker.pick(&candidates, None, &mut rng))
            .collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn random_spreads_evenly_within_tolerance() {
        let counts = counts(&Picker::new(Strategy::Random), &endpoints(4), 40_000, 7);
        for count in counts {
            assert!(
                (9_000..11_000).contains(&count),
                "{count} of 40000 on one of 4"
            );
        }
    }

    #[test]
    fn least_in_flight_picks_the_idlest_and_rotates_ties() {
        let picker = Picker::new(Strategy::LeastInFlight);
        let mut candidates = endpoints(3);
        candidates[0].in_flight = 5;
        candidates[1].in_flight = 1;
        candidates[2].in_flight = 3;
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..5 {
            assert_eq!(picker.pick(&candidates, None, &mut rng), 1);
        }
        candidates[0].in_flight = 1;
        let picked: Vec<usize> = (0..4)
            .map(|_| picker.pick(&candidates, None, &mut rng))
            .collect();
        assert!(
            picked.contains(&0) && picked.contains(&1),
            "ties rotate: {picked:?}"
        );
    }

    #[test]
    fn two_choices_avoid_a_slow_endpoint() {
        let picker = Picker::new(Strategy::PowerOfTwoChoices);
        let mut candidates = endpoints(4);
        for candidate in &mut candidates {
            candidate.latency_ns = 200_000;
        }
        candidates[2].latency_ns = 20_000_000; // 100x slower
        let counts = counts(&picker, &candidates, 30_000, 3);
        // The slow one loses every draw it is in: it is only picked if drawn twice, never.
        assert_eq!(counts[2], 0, "{counts:?}");
        for i in [0, 1, 3] {
            assert!((8_500..11_500).contains(&counts[i]), "{counts:?}");
        }
    }

    #[test]
    fn two_choices_weigh_load_against_latency() {
        let picker = Picker::new(Strategy::PowerOfTwoChoices);
        let mut candidates = endpoints(2);
        candidates[0].latency_ns = 100_000;
        candidates[1].latency_ns = 150_000;
        let mut rng = fastrand::Rng::with_seed(5);
        assert_eq!(picker.pick(&candidates, None, &mut rng), 0);
        // The faster one with 3 calls waiting costs 400 µs against 150 µs.
        candidates[0].in_flight = 3;
        assert_eq!(picker.pick(&candidates, None, &mut rng), 1);
    }

    #[test]
    fn weighted_follows_the_weights_within_tolerance() {
        let mut candidates = endpoints(3);
        candidates[0].weight = 1;
        candidates[1].weight = 2;
        candidates[2].weight = 5;
        let counts = counts(&Picker::new(Strategy::Weighted), &candidates, 80_000, 11);
        for (count, expected) in counts.iter().zip([10_000, 20_000, 50_000]) {
            let tolerance = expected / 20;
            assert!(count.abs_diff(expected) < tolerance, "{counts:?}");
        }
    }

    #[test]
    fn consistent_hashing_keeps_keys_and_moves_at_most_one_nth() {
        let picker = Picker::new(Strategy::ConsistentHash);
        let all = endpoints(5);
        let mut rng = fastrand::Rng::with_seed(1);
        let keys: Vec<u64> = (0..10_000)
            .map(|k| stable_hash(format!("user-{k}").as_bytes()))
            .collect();
        let before: Vec<u64> = keys
            .iter()
            .map(|&k| all[picker.pick(&all, Some(k), &mut rng)].id)
            .collect();
        // The same key goes to the same endpoint every time.
        for (&key, &id) in keys.iter().zip(&before).take(100) {
            assert_eq!(all[picker.pick(&all, Some(key), &mut rng)].id, id);
        }
        // One of five leaves: only its keys move, about a fifth.
        let gone = all[3].id;
        let rest: Vec<Candidate> = all.iter().copied().filter(|c| c.id != gone).collect();
        let mut moved = 0;
        for (&key, &id) in keys.iter().zip(&before) {
            let now = rest[picker.pick(&rest, Some(key), &mut rng)].id;
            if now != id {
                assert_eq!(id, gone, "a key of a remaining endpoint moved");
                moved += 1;
            }
        }
        assert!(
            moved <= keys.len() / 5 + keys.len() / 50,
            "{moved} keys moved"
        );
        assert!(moved > 0);
    }
}
