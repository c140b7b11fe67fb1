//! An adaptive limit on the calls a server runs at once, in the style of the gradient limits of
//! Netflix's concurrency-limits: it compares the latency of calls now (a short average) with
//! the latency the server shows when it does not queue (the least seen), shrinks the limit
//! when calls slow down because too many run at once, and grows it while they do not. Calls past the limit
//! are refused `OVERLOADED` before they run, with a hint of when to retry, instead of joining
//! a queue that only makes every call late.
//!
//! The limit itself is sans-IO ([`Gradient`]); [`Limiter`] wraps it with the atomics the
//! server's readers and handler tasks share.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use parking_lot::Mutex;

/// Settings of the adaptive concurrency limit (`ServerConfig::adaptive_concurrency`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveConcurrency {
    /// The limit to start from (default 8): low, so that the first calls show the latency of
    /// a server that does not queue.
    pub initial: usize,
    /// The limit never goes below this (default 4): some calls always run.
    pub min: usize,
    /// The limit never goes above this (default 4096).
    pub max: usize,
    /// How much slower than the long-term latency calls may get before the limit shrinks
    /// (default 2.0: calls twice as slow as usual mean the server queues).
    pub tolerance: f64,
}

impl Default for AdaptiveConcurrency {
    fn default() -> Self {
        Self {
            initial: 8,
            min: 4,
            max: 4096,
            tolerance: 2.0,
        }
    }
}

/// Samples in a window of the no-load latency. A limit that sat at its minimum for a whole
/// window means the service itself got slower: the least latency of that window becomes the
/// new no-load latency, instead of shedding against an old best case forever.
const NO_LOAD_WINDOW: u64 = 1_000;

/// Samples the short-term latency averages over.
const SHORT_WINDOW: f64 = 10.0;

/// How far each update moves the limit toward its new estimate.
const SMOOTHING: f64 = 0.2;

/// The gradient limit (sans-IO): fed each call's latency and the calls running when it
/// ended, it says how many may run at once.
#[derive(Clone, Debug)]
pub(crate) struct Gradient {
    settings: AdaptiveConcurrency,
    limit: f64,
    /// The least latency seen (the no-load latency) and the short-term average, in
    /// nanoseconds (0 before the first sample).
    no_load: f64,
    short: f64,
    /// Samples in this window, the least latency among them, and whether the limit stayed at
    /// its minimum all along.
    samples: u64,
    window_min: f64,
    pinned: bool,
}

impl Gradient {
    pub(crate) fn new(settings: AdaptiveConcurrency) -> Self {
        let min = settings.min.max(1);
        let settings = AdaptiveConcurrency {
            min,
            max: settings.max.max(min),
            ..settings
        };
        Self {
            limit: settings.initial.clamp(settings.min, settings.max) as f64,
            settings,
            no_load: 0.0,
            short: 0.0,
            samples: 0,
            window_min: f64::MAX,
            pinned: true,
        }
    }

    /// The limit now.
    pub(crate) fn limit(&self) -> usize {
        self.limit as usize
    }

    /// The short-term latency: how long a call takes now, the time a refused caller should
    /// wait before trying again.
    pub(crate) fn latency(&self) -> Duration {
        Duration::from_nanos(self.short as u64)
    }

    /// A call took `latency` and `in_flight` calls (itself included) were running when it
    /// ended. Returns the new limit.
    pub(crate) fn update(&mut self, latency: Duration, in_flight: usize) -> usize {
        let sample = (latency.as_nanos() as f64).max(1.0);
        if self.short == 0.0 {
            (self.no_load, self.short) = (sample, sample);
        } else {
            self.short += (sample - self.short) / SHORT_WINDOW;
            self.no_load = self.no_load.min(sample);
        }
        self.window_min = self.window_min.min(sample);
        self.pinned &= self.limit() <= self.settings.min;
        self.samples += 1;
        if self.samples >= NO_LOAD_WINDOW {
            if self.pinned {
                self.no_load = self.window_min;
            }
            (self.samples, self.window_min, self.pinned) = (0, f64::MAX, true);
        }
        let gradient = (self.settings.tolerance * self.no_load / self.short).clamp(0.5, 1.0);
        let queue = self.limit.sqrt();
        let mut estimate = self.limit * gradient + queue;
        // A server that does not use its limit has not shown it can take more.
        if (in_flight as f64) < self.limit / 2.0 {
            estimate = estimate.min(self.limit);
        }
        self.limit = (self.limit * (1.0 - SMOOTHING) + estimate * SMOOTHING)
            .clamp(self.settings.min as f64, self.settings.max as f64);
        self.limit()
    }
}

/// The limit shared by a server's connections: admission is one atomic step; the gradient
/// is updated (under a lock) only when a call that ran in its own task ends.
#[derive(Debug)]
pub(crate) struct Limiter {
    running: AtomicUsize,
    limit: AtomicUsize,
    gradient: Mutex<Gradient>,
}

impl Limiter {
    pub(crate) fn new(settings: AdaptiveConcurrency) -> Self {
        let gradient = Gradient::new(settings);
        Self {
            running: AtomicUsize::new(0),
            limit: AtomicUsize::new(gradient.limit()),
            gradient: Mutex::new(gradient),
        }
    }

    /// Takes a place for a call, or `Err` with the time to suggest before a retry.
    pub(crate) fn try_acquire(&self) -> Result<(), Duration> {
        let running = self.running.fetch_add(1, Ordering::AcqRel);
        if running < self.limit.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.running.fetch_sub(1, Ordering::AcqRel);
        Err(self.gradient.lock().latency())
    }

    /// A call that finished at once (it never waited): its place goes back; its latency
    /// says nothing about queueing.
    pub(crate) fn release(&self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }

    /// A call that ran in its own task ended after `latency`.
    pub(crate) fn release_after(&self, latency: Duration) {
        let running = self.running.fetch_sub(1, Ordering::AcqRel);
        let limit = self.gradient.lock().update(latency, running);
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The limit now.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Latency of a server with `workers` that take `service` each: calls past the workers
    /// queue.
    fn queueing(in_flight: usize, workers: usize, service: Duration) -> Duration {
        service * (in_flight.div_ceil(workers) as u32)
    }

    #[test]
    fn the_limit_settles_near_what_the_server_can_run_without_queueing() {
        let mut gradient = Gradient::new(AdaptiveConcurrency::default());
        let (workers, service) = (8, Duration::from_millis(5));
        // A load that always fills the limit.
        for _ in 0..5_000 {
            let in_flight = gradient.limit();
            gradient.update(queueing(in_flight, workers, service), in_flight);
        }
        let limit = gradient.limit();
        assert!(
            (workers..=4 * workers).contains(&limit),
            "limit {limit} for {workers} workers"
        );
    }

    #[test]
    fn the_limit_grows_while_latency_holds() {
        let mut gradient = Gradient::new(AdaptiveConcurrency::default());
        for _ in 0..2_000 {
            let in_flight = gradient.limit();
            gradient.update(Duration::from_millis(5), in_flight);
        }
        assert_eq!(gradient.limit(), AdaptiveConcurrency::default().max);
    }

    #[test]
    fn a_service_that_got_slower_for_good_is_not_shed_forever() {
        let mut gradient = Gradient::new(AdaptiveConcurrency::default());
        let (workers, service) = (8, Duration::from_millis(5));
        for _ in 0..5_000 {
            let in_flight = gradient.limit();
            gradient.update(queueing(in_flight, workers, service), in_flight);
        }
        // Ten times slower from now on: the limit drops to its floor, then learns the new
        // no-load latency and settles as before.
        for _ in 0..20_000 {
            let in_flight = gradient.limit();
            gradient.update(queueing(in_flight, workers, service * 10), in_flight);
        }
        let limit = gradient.limit();
        assert!(
            (workers..=4 * workers).contains(&limit),
            "limit {limit} for {workers} workers"
        );
    }

    #[test]
    fn an_idle_server_does_not_grow_its_limit() {
        let mut gradient = Gradient::new(AdaptiveConcurrency::default());
        for _ in 0..2_000 {
            gradient.update(Duration::from_millis(5), 1);
        }
        assert_eq!(gradient.limit(), AdaptiveConcurrency::default().initial);
    }

    #[test]
    fn the_limiter_refuses_past_the_limit_and_hints_the_latency() {
        let limiter = Limiter::new(AdaptiveConcurrency {
            initial: 2,
            min: 2,
            ..Default::default()
        });
        assert!(limiter.try_acquire().is_ok());
        assert!(limiter.try_acquire().is_ok());
        limiter.release_after(Duration::from_millis(7));
        assert!(limiter.try_acquire().is_ok());
        assert_eq!(limiter.try_acquire(), Err(Duration::from_millis(7)));
        limiter.release();
        assert!(limiter.try_acquire().is_ok());
    }
}
