//! Jittered exponential backoff between connection attempts (sans-IO).

use std::time::Duration;

/// Reconnection backoff: the wait before attempt `n` (after `n` failures in a row) is drawn
/// uniformly from `[cap / 2, cap]`, where `cap = min(max, base × 2ⁿ)`. The jitter keeps a fleet
/// of clients that lost the same server from reconnecting in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait's upper bound. Default 50 ms.
    pub base: Duration,
    /// The largest wait. Default 5 s.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait after `failures` failed attempts in a row (0: none, connect at once).
    pub fn delay(&self, failures: u32, rng: &mut fastrand::Rng) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doubling = (failures - 1).min(30);
        let cap = self.base.saturating_mul(1 << doubling).min(self.max);
        let cap_ns = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(cap_ns / 2..=cap_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_up_to_the_cap() {
        let backoff = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(9);
        assert_eq!(backoff.delay(0, &mut rng), Duration::ZERO);
        for failures in 1..20 {
            let cap = (backoff.base * (1 << (failures - 1).min(20))).min(backoff.max);
            for _ in 0..50 {
                let delay = backoff.delay(failures, &mut rng);
                assert!(delay >= cap / 2 && delay <= cap, "{failures}: {delay:?}");
            }
        }
    }

    #[test]
    fn jitter_spreads_a_fleet() {
        let backoff = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(3);
        let delays: std::collections::HashSet<Duration> =
            (0..100).map(|_| backoff.delay(4, &mut rng)).collect();
        assert!(delays.len() > 90);
    }
}
