//! Hedged calls: an idempotent call still unanswered after a latency percentile is sent to a
//! second endpoint as well, and the first answer wins (tail latency against a little load).
//!
//! The percentile is learned per method from the answers the balancer sees, in a log-linear
//! histogram of atomic counters (about 12% wide buckets) that halves itself now and then so
//! that it follows a service whose latency changes.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crossbeam_utils::sync::ShardedLock;
use flumen_stream::CallError;

/// When a call is hedged: sent to a second endpoint while the first attempt still runs.
///
/// Only calls of idempotent methods (`Route::idempotent`, `#[idempotent]` in a service trait)
/// are hedged, at most once each; the hedge takes a token from the retry budget (none left:
/// no hedge) and counts as one of the call's attempts. The first answer wins and the other
/// attempt is cancelled. Blocking callers and streams are never hedged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hedging {
    /// Hedge once the call has waited longer than this share (0 to 1) of the method's recent
    /// answers took: 0.95 sends a hedge for about the slowest 5% of calls. No hedge before
    /// [`HEDGE_MIN_SAMPLES`] answers were seen, nor sooner than `min_delay`.
    Percentile {
        /// The percentile, as a share: 0.95 is the 95th.
        percentile: f64,
        /// The shortest wait before a hedge.
        min_delay: Duration,
    },
    /// Hedge after this fixed wait.
    After(Duration),
}

/// Answers of a method seen before [`Hedging::Percentile`] sends hedges.
pub const HEDGE_MIN_SAMPLES: u32 = 100;

/// Default `min_delay` of [`Hedging::percentile`].
pub const DEFAULT_HEDGE_MIN_DELAY: Duration = Duration::from_millis(1);

impl Hedging {
    /// Hedges after the `percentile` (a share, clamped to 0.5..=0.9999) of recent latencies,
    /// waiting at least [`DEFAULT_HEDGE_MIN_DELAY`].
    pub fn percentile(percentile: f64) -> Self {
        Self::Percentile {
            percentile: percentile.clamp(0.5, 0.9999),
            min_delay: DEFAULT_HEDGE_MIN_DELAY,
        }
    }

    /// Hedges after a fixed wait.
    pub fn after(delay: Duration) -> Self {
        Self::After(delay)
    }
}

/// Exact buckets below this many microseconds; above, 8 buckets per power of two.
const LINEAR: u64 = 8;
/// Buckets: up to 2^40 µs (twelve days).
const BUCKETS: usize = 8 + 38 * 8;
/// The percentile is computed again after this many new answers.
const RECOMPUTE_EVERY: u32 = 128;
/// The histogram halves its counts when it holds this many.
const DECAY_AT: u64 = 8192;

fn bucket(micros: u64) -> usize {
    if micros < LINEAR {
        return micros as usize;
    }
    let exponent = u64::from(63 - micros.leading_zeros()).min(40); // >= 3
    let mantissa = (micros >> (exponent - 3)) & 7;
    (LINEAR + (exponent - 3) * 8 + mantissa).min(BUCKETS as u64 - 1) as usize
}

/// The largest value (µs) in bucket `index`.
fn bucket_top(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let exponent = (index - LINEAR) / 8 + 3;
    let mantissa = (index - LINEAR) % 8;
    ((8 + mantissa + 1) << (exponent - 3)) - 1
}

/// One method's recent latencies and the hedge delay they give.
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    counts: Box<[AtomicU32]>,
    /// Answers since the delay was last computed.
    fresh: AtomicU32,
    /// The delay in µs; `u64::MAX` while too few answers were seen.
    delay_us: AtomicU64,
}

impl LatencyHistogram {
    pub(crate) fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            fresh: AtomicU32::new(0),
            delay_us: AtomicU64::new(u64::MAX),
        }
    }

    /// Records an answer's latency; every [`RECOMPUTE_EVERY`] answers the recording caller
    /// computes the percentile again.
    pub(crate) fn record(&self, latency: Duration, percentile: f64) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        if self.fresh.fetch_add(1, Ordering::Relaxed) + 1 >= RECOMPUTE_EVERY {
            self.fresh.store(0, Ordering::Relaxed);
            self.recompute(percentile);
        }
    }

    fn recompute(&self, percentile: f64) {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .collect();
        let total: u64 = counts.iter().sum();
        if total < u64::from(HEDGE_MIN_SAMPLES) {
            return;
        }
        let rank = ((total as f64) * percentile).ceil() as u64;
        let mut seen = 0;
        let mut top = bucket_top(BUCKETS - 1);
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank.max(1) {
                top = bucket_top(index);
                break;
            }
        }
        self.delay_us.store(top, Ordering::Relaxed);
        if total >= DECAY_AT {
            // Older answers weigh half as much from now on (racing records only lose a few).
            for count in self.counts.iter() {
                let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c / 2));
            }
        }
    }

    /// The wait before a hedge, once enough answers were seen.
    pub(crate) fn delay(&self) -> Option<Duration> {
        match self.delay_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }
}

/// The histograms of the methods called with hedging, made on their first call.
#[derive(Debug, Default)]
pub(crate) struct Latencies(ShardedLock<HashMap<u32, Arc<LatencyHistogram>>>);

impl Latencies {
    pub(crate) fn method(&self, method: u32) -> Arc<LatencyHistogram> {
        // A panic while the lock is held poisons it; the map stays consistent regardless.
        if let Some(found) = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&method)
        {
            return found.clone();
        }
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(method)
            .or_insert_with(|| Arc::new(LatencyHistogram::new()))
            .clone()
    }
}

/// What hedging needs for one call: how long to wait, and where to record the answer.
pub(crate) struct HedgePlan {
    pub(crate) histogram: Option<Arc<LatencyHistogram>>,
    pub(crate) delay: Option<Duration>,
    pub(crate) percentile: f64,
}

impl HedgePlan {
    pub(crate) fn new(policy: Hedging, latencies: &Latencies, method: u32) -> Self {
        match policy {
            Hedging::After(delay) => Self {
                histogram: None,
                delay: Some(delay),
                percentile: 0.0,
            },
            Hedging::Percentile {
                percentile,
                min_delay,
            } => {
                let histogram = latencies.method(method);
                let delay = histogram.delay().map(|d| d.max(min_delay));
                Self {
                    histogram: Some(histogram),
                    delay,
                    percentile,
                }
            }
        }
    }

    /// An attempt that began at `started` ended with `result`: a handler's answer (a reply
    /// or an application error) is a latency sample.
    pub(crate) fn answered<T>(&self, result: &Result<T, CallError>, started: Instant) {
        if let (Some(histogram), Ok(_) | Err(CallError::Application(_))) = (&self.histogram, result)
        {
            histogram.record(started.elapsed(), self.percentile);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_hold_their_values() {
        let mut last = 0;
        for micros in (0..2_000_000u64).step_by(7).chain([u64::MAX / 2]) {
            let index = bucket(micros);
            assert!(index >= last, "{micros}");
            last = index;
            if micros < 1 << 40 {
                assert!(micros <= bucket_top(index), "{micros} above its bucket");
                // About 12% wide.
                assert!(bucket_top(index) <= micros + micros / 8 + 1, "{micros}");
            }
        }
    }

    #[test]
    fn the_delay_is_the_percentile_of_what_was_seen() {
        let histogram = LatencyHistogram::new();
        assert_eq!(histogram.delay(), None);
        // 1024 answers (the last one recomputes): 1 ms..=1024 ms, one each.
        for ms in 1..=1024u64 {
            histogram.record(Duration::from_millis(ms), 0.9);
        }
        let delay = histogram.delay().expect("enough samples").as_millis();
        assert!((920..=1050).contains(&delay), "p90 {delay} ms");
    }

    #[test]
    fn no_delay_before_enough_answers() {
        let histogram = LatencyHistogram::new();
        for _ in 0..HEDGE_MIN_SAMPLES - 1 {
            histogram.record(Duration::from_millis(5), 0.9);
        }
        histogram.recompute(0.9);
        assert_eq!(histogram.delay(), None);
        histogram.record(Duration::from_millis(5), 0.9);
        histogram.recompute(0.9);
        assert!(histogram.delay().is_some());
    }

    #[test]
    fn the_delay_follows_a_service_that_slows_down() {
        let histogram = LatencyHistogram::new();
        for _ in 0..20_000 {
            histogram.record(Duration::from_millis(1), 0.5);
        }
        assert!(histogram.delay().expect("samples") < Duration::from_millis(2));
        for _ in 0..20_000 {
            histogram.record(Duration::from_millis(50), 0.5);
        }
        let delay = histogram.delay().expect("samples");
        assert!(delay >= Duration::from_millis(45), "{delay:?}");
    }
}
