//! The phi-accrual failure detector ([`PhiAccrual`](crate::PhiAccrual)).

use std::{collections::VecDeque, time::Duration};

/// Settings of a [`PhiAccrual`] detector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhiConfig {
    /// phi at or above which the member is taken for failed. Default 8.
    pub threshold: f64,
    /// Intervals remembered (the most recent ones). Default 200.
    pub window: usize,
    /// The least standard deviation assumed, so that a very regular member is not suspected
    /// for the first small delay. Default 100 ms.
    pub min_std_dev: Duration,
    /// Pauses a healthy member may take on top of its rhythm (garbage collection, a busy
    /// loop); added to the mean. Default 0.
    pub acceptable_pause: Duration,
    /// The interval assumed before the first two heartbeats give one. Default 1 s.
    pub first_interval: Duration,
}

impl Default for PhiConfig {
    fn default() -> Self {
        Self {
            threshold: 8.0,
            window: 200,
            min_std_dev: Duration::from_millis(100),
            acceptable_pause: Duration::ZERO,
            first_interval: Duration::from_secs(1),
        }
    }
}

/// A failure detector for one member. Times are durations since an epoch of the caller's
/// choosing (a monotonic clock).
///
/// The phi-accrual failure detector, sans-IO: the caller feeds arrival times and asks for phi
/// at a time of its choosing, so tests run on a fake clock.
///
/// phi is `-log10` of the probability that a heartbeat still comes, given how long it has been
/// since the last one and the mean and deviation of the intervals seen so far (a normal
/// distribution, as in Akka's detector). phi 1 means a 10% chance that the member is still
/// alive and merely late, phi 8 one in 10^8. A threshold of 8 is a common choice for members on
/// one network.
#[derive(Clone, Debug)]
pub struct PhiAccrual {
    config: PhiConfig,
    /// Intervals between heartbeats, in seconds, oldest first.
    intervals: VecDeque<f64>,
    sum: f64,
    sum_squares: f64,
    /// The last heartbeat: intervals are measured from it.
    last: Option<Duration>,
    /// The last sign of life, heartbeat or not: silence is measured from it.
    sign: Option<Duration>,
}

impl PhiAccrual {
    /// A detector that has heard nothing yet.
    pub fn new(config: PhiConfig) -> Self {
        Self {
            config,
            intervals: VecDeque::with_capacity(config.window.max(1)),
            sum: 0.0,
            sum_squares: 0.0,
            last: None,
            sign: None,
        }
    }

    /// A heartbeat arrived at `now`. Times that go backwards are ignored.
    pub fn heartbeat(&mut self, now: Duration) {
        match self.last {
            None => {
                // Two guesses of the rhythm until real intervals replace them.
                let first = self.config.first_interval.as_secs_f64();
                let spread = first / 4.0;
                self.push(first - spread);
                self.push(first + spread);
            }
            Some(last) if now >= last => self.push((now - last).as_secs_f64()),
            Some(_) => return,
        }
        self.last = Some(now);
        self.sign = self.sign.max(Some(now));
    }

    /// A sign of life at `now` that keeps no rhythm (an RPC answer): the silence starts over,
    /// but no interval is learned from it, so the rhythm the heartbeats taught stays as it
    /// was. Before the first heartbeat it does nothing.
    pub fn touch(&mut self, now: Duration) {
        if self.last.is_some() {
            self.sign = self.sign.max(Some(now));
        }
    }

    fn push(&mut self, interval: f64) {
        if self.intervals.len() == self.config.window.max(1) {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= old;
                self.sum_squares -= old * old;
            }
        }
        self.intervals.push_back(interval);
        self.sum += interval;
        self.sum_squares += interval * interval;
    }

    /// phi at `now`: 0 before the first heartbeat and right after one, growing with silence.
    pub fn phi(&self, now: Duration) -> f64 {
        let Some(last) = self.last.max(self.sign) else {
            return 0.0;
        };
        let n = self.intervals.len() as f64;
        let mean = self.sum / n + self.config.acceptable_pause.as_secs_f64();
        let variance = (self.sum_squares / n - (self.sum / n).powi(2)).max(0.0);
        let std_dev = variance.sqrt().max(self.config.min_std_dev.as_secs_f64());
        let elapsed = now.saturating_sub(last).as_secs_f64();
        phi(elapsed, mean, std_dev)
    }

    /// Whether phi at `now` reached the threshold.
    pub fn is_failed(&self, now: Duration) -> bool {
        self.phi(now) >= self.config.threshold
    }

    /// The mean interval seen, if any heartbeat came.
    pub fn mean_interval(&self) -> Option<Duration> {
        (self.last.is_some())
            .then(|| Duration::from_secs_f64(self.sum / self.intervals.len() as f64))
    }
}

/// `-log10(P(X > elapsed))` for X normal with `mean` and `std_dev`, through the logistic
/// approximation of the normal distribution's tail (error below 1.4e-4), kept finite.
fn phi(elapsed: f64, mean: f64, std_dev: f64) -> f64 {
    let y = (elapsed - mean) / std_dev;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p_later = if elapsed > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    -p_later.max(f64::MIN_POSITIVE).log10()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A member beating every 100 ms, with `jitter` ms of alternating jitter; the window is
    /// shorter than the run, so the guesses made before the first interval have rolled out.
    fn steady(jitter: u64) -> (PhiAccrual, Duration) {
        let mut detector = PhiAccrual::new(PhiConfig {
            min_std_dev: ms(10),
            window: 50,
            ..PhiConfig::default()
        });
        let mut now = ms(0);
        for i in 0..100 {
            now += ms(100) + if i % 2 == 0 { ms(jitter) } else { ms(0) };
            detector.heartbeat(now);
        }
        (detector, now)
    }

    #[test]
    fn silence_raises_phi_and_a_heartbeat_resets_it() {
        let (mut detector, last) = steady(0);
        assert!(detector.phi(last) < 0.5);
        assert!(detector.phi(last + ms(100)) < 1.0);
        assert!(!detector.is_failed(last + ms(110)));
        assert!(
            detector.is_failed(last + ms(300)),
            "{}",
            detector.phi(last + ms(300))
        );
        // phi only grows with silence.
        let mut previous = 0.0;
        for t in (0..1000).step_by(10) {
            let phi = detector.phi(last + ms(t));
            assert!(phi >= previous, "phi fell at {t} ms");
            previous = phi;
        }
        detector.heartbeat(last + ms(300));
        assert!(!detector.is_failed(last + ms(310)));
    }

    #[test]
    fn a_touch_restarts_the_silence_but_teaches_no_interval() {
        let (mut detector, last) = steady(0);
        let mean = detector.mean_interval();
        assert!(detector.is_failed(last + ms(300)));
        detector.touch(last + ms(250));
        assert!(
            !detector.is_failed(last + ms(300)),
            "an RPC answer is a sign of life"
        );
        assert!(detector.is_failed(last + ms(550)));
        assert_eq!(detector.mean_interval(), mean);
        // The next heartbeat's interval is measured from the last heartbeat, not the touch.
        detector.heartbeat(last + ms(400));
        let window = 50.0;
        let expected = (mean.unwrap().as_secs_f64() * (window - 1.0) + 0.4) / window;
        let got = detector.mean_interval().unwrap().as_secs_f64();
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
        // Before any heartbeat a touch does nothing.
        let mut fresh = PhiAccrual::new(PhiConfig::default());
        fresh.touch(ms(5));
        assert_eq!(fresh.phi(ms(5)), 0.0);
    }

    #[test]
    fn a_jittery_member_is_given_more_slack() {
        let (regular, at) = steady(0);
        let (jittery, jat) = steady(60);
        let silence = ms(200);
        assert!(jittery.phi(jat + silence) < regular.phi(at + silence));
    }

    #[test]
    fn the_first_heartbeat_starts_from_the_assumed_interval() {
        let mut detector = PhiAccrual::new(PhiConfig::default());
        assert_eq!(detector.phi(ms(5000)), 0.0);
        detector.heartbeat(ms(0));
        assert!(!detector.is_failed(ms(1000)));
        assert!(detector.is_failed(ms(10_000)));
        assert_eq!(detector.mean_interval(), Some(ms(1000)));
    }

    #[test]
    fn an_acceptable_pause_delays_the_verdict() {
        let (detector, last) = steady(0);
        let mut patient = PhiAccrual::new(PhiConfig {
            min_std_dev: ms(10),
            window: 50,
            acceptable_pause: ms(500),
            ..PhiConfig::default()
        });
        let mut now = ms(0);
        for _ in 0..100 {
            now += ms(100);
            patient.heartbeat(now);
        }
        assert!(detector.is_failed(last + ms(400)));
        assert!(!patient.is_failed(now + ms(400)));
    }

    proptest! {
        #[test]
        fn phi_is_finite_and_never_negative(
            intervals in proptest::collection::vec(0u64..5_000, 1..300),
            silence in 0u64..1_000_000,
        ) {
            let mut detector = PhiAccrual::new(PhiConfig { window: 50, ..PhiConfig::default() });
            let mut now = Duration::ZERO;
            for interval in intervals {
                now += Duration::from_millis(interval);
                detector.heartbeat(now);
            }
            let phi = detector.phi(now + Duration::from_millis(silence));
            prop_assert!(phi.is_finite() && phi >= 0.0, "{phi}");
        }
    }
}
