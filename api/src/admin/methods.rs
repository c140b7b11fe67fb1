//! Per-method statistics for the admin page: calls, errors, calls running, and a latency
//! histogram per routed method, kept once an admin endpoint has served in the process
//! ([`recording`]).
//!
//! The histogram has four buckets per power of two of microseconds (each bucket's width is a
//! quarter of its lower bound), so a percentile is read within 25% of the truth; it takes two
//! kilobytes per method and one relaxed add per call.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Weak,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;

/// Buckets of a histogram: four per power of two up to 2^64 microseconds.
const BUCKETS: usize = 256;

/// Whether an admin endpoint serves, so that routers time their calls.
static RECORDING: AtomicBool = AtomicBool::new(false);

/// Every method's statistics, under its name; swept as the live registry is.
static METHODS: Mutex<Vec<(Arc<str>, Weak<MethodStats>)>> = Mutex::new(Vec::new());

/// Calls, errors and latencies of one method on one router.
#[derive(Debug)]
pub(crate) struct MethodStats {
    calls: AtomicU64,
    errors: AtomicU64,
    running: AtomicU64,
    max_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// A call being timed: its method's statistics and when it started.
#[derive(Debug)]
pub(crate) struct Timed {
    stats: Arc<MethodStats>,
    started: Instant,
    done: bool,
}

/// One method's statistics, summed over every router that routes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MethodSummary {
    pub(crate) name: String,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) running: u64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) p999: Duration,
    pub(crate) max: Duration,
}

impl MethodStats {
    /// New statistics for `name`, registered for the admin page.
    pub(crate) fn register(name: &str) -> Arc<Self> {
        let stats = Arc::new(Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            running: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
        });
        let mut methods = METHODS.lock();
        if methods.len() >= 64 && methods.len().is_power_of_two() {
            methods.retain(|(_, stats)| stats.strong_count() > 0);
        }
        methods.push((name.into(), Arc::downgrade(&stats)));
        stats
    }

    /// Starts timing a call, if an admin endpoint serves.
    #[inline]
    pub(crate) fn start(self: &Arc<Self>) -> Option<Timed> {
        if !RECORDING.load(Ordering::Relaxed) {
            return None;
        }
        self.running.fetch_add(1, Ordering::Relaxed);
        Some(Timed {
            stats: self.clone(),
            started: Instant::now(),
            done: false,
        })
    }

    fn record(&self, elapsed: Duration, failed: bool) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        self.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Timed {
    /// The call ended (`failed`: with an error).
    pub(crate) fn finish(&mut self, failed: bool) {
        if !std::mem::replace(&mut self.done, true) {
            self.stats.record(self.started.elapsed(), failed);
        }
    }
}

impl Drop for Timed {
    /// A call dropped before it ended (cancelled, timed out, its connection gone) failed.
    fn drop(&mut self) {
        self.finish(true);
    }
}

/// Turns timing on for every router in the process (an admin endpoint serves).
pub(crate) fn record() {
    RECORDING.store(true, Ordering::Relaxed);
}

/// Whether calls are timed.
pub(crate) fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Every method's statistics, summed by name, sorted by name.
pub(crate) fn summaries() -> Vec<MethodSummary> {
    let alive: Vec<(Arc<str>, Arc<MethodStats>)> = {
        let mut methods = METHODS.lock();
        methods.retain(|(_, stats)| stats.strong_count() > 0);
        methods
            .iter()
            .filter_map(|(name, stats)| Some((name.clone(), stats.upgrade()?)))
            .collect()
    };
    let mut by_name: std::collections::BTreeMap<Arc<str>, (MethodSummary, Vec<u64>)> =
        std::collections::BTreeMap::new();
    for (name, stats) in alive {
        let (summary, buckets) = by_name.entry(name.clone()).or_insert_with(|| {
            let summary = MethodSummary {
                name: name.to_string(),
                ..MethodSummary::default()
            };
            (summary, vec![0; BUCKETS])
        });
        summary.calls += stats.calls.load(Ordering::Relaxed);
        summary.errors += stats.errors.load(Ordering::Relaxed);
        summary.running += stats.running.load(Ordering::Relaxed);
        let max = Duration::from_micros(stats.max_us.load(Ordering::Relaxed));
        summary.max = summary.max.max(max);
        for (total, bucket) in buckets.iter_mut().zip(&stats.buckets) {
            *total += bucket.load(Ordering::Relaxed);
        }
    }
    by_name
        .into_values()
        .map(|(mut summary, buckets)| {
            // A bucket's largest value may lie above the largest call seen.
            summary.p50 = percentile(&buckets, 0.5).min(summary.max);
            summary.p99 = percentile(&buckets, 0.99).min(summary.max);
            summary.p999 = percentile(&buckets, 0.999).min(summary.max);
            summary
        })
        .collect()
}

/// The bucket of `us` microseconds: values below 4 each have their own; above, four buckets
/// split each power of two.
fn bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let exponent = 63 - us.leading_zeros() as usize; // at least 2
    let quarter = ((us >> (exponent - 2)) & 3) as usize;
    4 * (exponent - 1) + quarter
}

/// The largest value in bucket `index`, in microseconds.
fn bucket_max(index: usize) -> u64 {
    if index < 4 {
        return index as u64;
    }
    let (exponent, quarter) = (index / 4 + 1, (index % 4) as u128);
    let end = (5 + quarter) << (exponent - 2);
    u64::try_from(end - 1).unwrap_or(u64::MAX)
}

/// The `q` quantile of the histogram `buckets` (the largest value of its bucket); zero when
/// empty.
fn percentile(buckets: &[u64], q: f64) -> Duration {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return Duration::ZERO;
    }
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (index, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Duration::from_micros(bucket_max(index));
        }
    }
    Duration::from_micros(bucket_max(BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_a_bucket_that_bounds_it_within_a_quarter() {
        for us in (0..10_000).chain([1 << 20, (1 << 40) + 12345, u64::MAX]) {
            let index = bucket(us);
            assert!(index < BUCKETS, "{us}");
            let max = bucket_max(index);
            assert!(us <= max, "{us} above its bucket's max {max}");
            assert!(max - us <= us / 4 + 1, "{us}: bucket max {max} too far");
            if index > 0 {
                assert!(
                    bucket_max(index - 1) < us,
                    "{us} belongs to an earlier bucket"
                );
            }
        }
    }

    #[test]
    fn percentiles_of_a_known_spread() {
        let mut buckets = vec![0; BUCKETS];
        // 990 calls of 100 us, 9 of 10 ms, 1 of 1 s.
        buckets[bucket(100)] += 990;
        buckets[bucket(10_000)] += 9;
        buckets[bucket(1_000_000)] += 1;
        let within = |d: Duration, us: u64| {
            d.as_micros() as u64 >= us && d.as_micros() as u64 <= us + us / 4
        };
        assert!(within(percentile(&buckets, 0.5), 100));
        assert!(within(percentile(&buckets, 0.99), 100));
        assert!(within(percentile(&buckets, 0.999), 10_000));
        assert!(within(percentile(&buckets, 1.0), 1_000_000));
        assert_eq!(percentile(&[0; BUCKETS], 0.5), Duration::ZERO);
    }
}
