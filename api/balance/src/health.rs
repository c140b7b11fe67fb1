//! An endpoint's health as its calls see it (sans-IO): a latency average for the balancer to
//! compare, and outlier detection that ejects an endpoint after consecutive failures and lets
//! it back in, on probation, once its ejection time is over.

use std::time::{Duration, Instant};

/// Outlier detection: when an endpoint is taken out of rotation, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive failed calls or connection attempts that eject an endpoint. Default 5.
    pub consecutive_failures: u32,
    /// The first ejection's length; each ejection in a row doubles it. Default 1 s.
    pub base_ejection: Duration,
    /// The longest ejection. Default 30 s.
    pub max_ejection: Duration,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
        }
    }
}

/// How long the latency average remembers: a sample's weight halves in about 0.7× this.
pub(crate) const LATENCY_DECAY: Duration = Duration::from_secs(10);

/// An endpoint's latency average: peak EWMA. A slower sample is taken at once, faster ones
/// pull the average down gradually, so a degrading endpoint is noticed on its first slow
/// reply; without new samples it decays towards zero, so an endpoint avoided for being slow is
/// tried again after a while instead of starving for good. Times are nanosecond stamps on the
/// endpoint's own clock (0: never).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Latency {
    /// The average in nanoseconds.
    pub(crate) ns: f64,
    /// The stamp of the last sample; 0 before the first.
    pub(crate) at: u64,
}

impl Latency {
    /// The average at stamp `now`, in nanoseconds (0 before the first sample).
    pub(crate) fn at(&self, now: u64) -> u64 {
        if self.at == 0 {
            return 0;
        }
        (self.ns * decay(now.saturating_sub(self.at))) as u64
    }

    /// The average after a call answered in `latency_ns` at stamp `now`.
    pub(crate) fn sampled(self, now: u64, latency_ns: u64) -> Self {
        let sample = latency_ns as f64;
        let ns = match self.at {
            0 => sample,
            _ if sample >= self.ns => sample,
            at => {
                let keep = decay(now.saturating_sub(at));
                self.ns * keep + sample * (1.0 - keep)
            }
        };
        Self { ns, at: now.max(1) }
    }
}

/// The weight a sample keeps after `elapsed_ns`.
fn decay(elapsed_ns: u64) -> f64 {
    (-(elapsed_ns as f64) / LATENCY_DECAY.as_nanos() as f64).exp()
}

/// The health of one endpoint: failures, ejection, overload backoff.
#[derive(Debug)]
pub(crate) struct Health {
    consecutive_failures: u32,
    /// Ejections in a row without a success in between.
    ejections: u32,
    ejected_until: Option<Instant>,
    /// Refused as overloaded: no new calls until then.
    backoff_until: Option<Instant>,
}

impl Health {
    pub(crate) fn new() -> Self {
        Self {
            consecutive_failures: 0,
            ejections: 0,
            ejected_until: None,
            backoff_until: None,
        }
    }

    /// Whether the endpoint may take calls at `now`.
    #[cfg(test)]
    pub(crate) fn is_available(&self, now: Instant) -> bool {
        let open = |until: Option<Instant>| until.is_none_or(|until| now >= until);
        open(self.ejected_until) && open(self.backoff_until)
    }

    /// Whether the endpoint is ejected at `now`.
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// A call was answered: the endpoint is alive; failures are forgiven.
    pub(crate) fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.ejections = 0;
    }

    /// Whether a success would change anything (failures to forgive).
    pub(crate) fn is_clean(&self) -> bool {
        self.consecutive_failures == 0 && self.ejections == 0
    }

    /// Until when the endpoint takes no calls (ejected or backing off), if it does not now.
    pub(crate) fn closed_until(&self) -> Option<Instant> {
        self.ejected_until.max(self.backoff_until)
    }

    /// Until when the endpoint is ejected.
    pub(crate) fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// A call or connection attempt failed in a way that blames the endpoint. Returns whether
    /// this failure ejected it.
    pub(crate) fn on_failure(&mut self, now: Instant, policy: &OutlierDetection) -> bool {
        self.consecutive_failures += 1;
        if self.consecutive_failures < policy.consecutive_failures.max(1) || self.is_ejected(now) {
            return false;
        }
        let doubling = self.ejections.min(16);
        let length = policy
            .base_ejection
            .saturating_mul(1 << doubling)
            .min(policy.max_ejection);
        self.ejected_until = Some(now + length);
        self.ejections += 1;
        // On probation once back: one more failure ejects it again, for longer.
        self.consecutive_failures = policy.consecutive_failures.saturating_sub(1);
        true
    }

    /// A connection to the endpoint opened: it is reachable again, so an ejection (most
    /// likely for failed connection attempts) ends. It stays on probation: one more failure
    /// ejects it again, for longer.
    pub(crate) fn on_connected(&mut self, policy: &OutlierDetection) {
        if self.ejected_until.take().is_some() {
            self.consecutive_failures = policy.consecutive_failures.saturating_sub(1);
        }
    }

    /// The endpoint refused a call as overloaded: send it nothing new for `wait`.
    pub(crate) fn on_overloaded(&mut self, now: Instant, wait: Duration) {
        self.backoff_until = Some(now + wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        const NS_MS: u64 = 1_000_000;
        const NS_S: u64 = 1_000_000_000;
        let t0 = 1;
        let latency = Latency::default().sampled(t0, 100 * NS_MS);
        assert_eq!(latency.at(t0), 100_000_000);
        let t1 = t0 + NS_MS;
        let latency = latency.sampled(t1, 300 * NS_MS);
        assert_eq!(
            latency.at(t1),
            300_000_000,
            "a slower sample is taken at once"
        );
        let t2 = t0 + 10 * NS_S;
        let latency = latency.sampled(t2, 100 * NS_MS);
        let after = latency.at(t2);
        assert!(after < 300_000_000 && after > 100_000_000, "{after}");
        let t3 = t0 + 100 * NS_S;
        let latency = latency.sampled(t3, 100 * NS_MS);
        assert!(latency.at(t3) < 101_000_000);
        // Unsampled, it fades: a once-slow endpoint is tried again.
        assert!(latency.at(t3 + 60 * NS_S) < 1_000_000);
        assert_eq!(Latency::default().at(t3), 0);
    }

    #[test]
    fn consecutive_failures_eject_with_doubling_and_a_success_forgives() {
        let policy = OutlierDetection::default();
        let t0 = Instant::now();
        let mut health = Health::new();
        for _ in 0..4 {
            assert!(!health.on_failure(t0, &policy));
        }
        assert!(health.is_available(t0));
        assert!(health.on_failure(t0, &policy));
        assert!(!health.is_available(t0));
        assert!(health.is_available(t0 + Duration::from_secs(1)));
        // On probation: the next failure ejects again, for twice as long.
        let t1 = t0 + Duration::from_secs(1);
        assert!(health.on_failure(t1, &policy));
        assert!(!health.is_available(t1 + Duration::from_millis(1999)));
        assert!(health.is_available(t1 + Duration::from_secs(2)));
        // A success ends probation and resets the doubling.
        let t2 = t1 + Duration::from_secs(2);
        health.on_success();
        for _ in 0..4 {
            assert!(!health.on_failure(t2, &policy));
        }
        assert!(health.on_failure(t2, &policy));
        assert!(health.is_available(t2 + Duration::from_secs(1)));
    }

    #[test]
    fn a_new_connection_ends_an_ejection_on_probation() {
        let policy = OutlierDetection::default();
        let t0 = Instant::now();
        let mut health = Health::new();
        for _ in 0..5 {
            health.on_failure(t0, &policy);
        }
        assert!(health.is_ejected(t0));
        health.on_connected(&policy);
        assert!(health.is_available(t0));
        assert!(
            health.on_failure(t0, &policy),
            "one failure ejects it again"
        );
        let again = t0 + Duration::from_millis(1999);
        assert!(health.is_ejected(again), "for twice as long");
    }

    #[test]
    fn ejection_is_capped() {
        let policy = OutlierDetection {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(4),
        };
        let mut now = Instant::now();
        let mut health = Health::new();
        for _ in 0..40 {
            assert!(health.on_failure(now, &policy));
            now += Duration::from_secs(4);
            assert!(health.is_available(now));
        }
    }

    #[test]
    fn overloaded_backs_off_for_the_hint() {
        let t0 = Instant::now();
        let mut health = Health::new();
        health.on_overloaded(t0, 50 * MS);
        assert!(!health.is_available(t0 + 49 * MS));
        assert!(health.is_available(t0 + 50 * MS));
        assert!(!health.is_ejected(t0));
    }
}
