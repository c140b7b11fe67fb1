//! The retry budget: retries may add at most a fixed share of the calls, plus a small floor,
//! so that retrying cannot multiply the load on a failing fleet.

use std::{
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
    time::Instant,
};

use parking_lot::Mutex;

/// A retry budget, as a token bucket: every call deposits `ratio` of a token, every retry
/// withdraws one, and `floor_per_sec` retries a second are allowed whatever the balance, so a
/// client making few calls can still retry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Retries allowed per call made. Default 0.2 (retries add at most 20% to the load).
    pub ratio: f64,
    /// Retries allowed each second beyond the ratio. Default 10.
    pub floor_per_sec: u32,
    /// The most tokens saved up for a burst of retries. Default 100.
    pub max_saved: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            floor_per_sec: 10,
            max_saved: 100,
        }
    }
}

/// Thousandths of a token.
const MILLI: i64 = 1000;

/// The budget's running state.
#[derive(Debug)]
pub(crate) struct Budget {
    deposit: i64,
    cap: i64,
    floor: u32,
    balance: AtomicI64,
    /// The current second's start and the floor retries it spent.
    window: Mutex<(Option<Instant>, u32)>,
    retries: AtomicU64,
    refused: AtomicU64,
}

impl Budget {
    pub(crate) fn new(settings: &RetryBudget) -> Self {
        Self {
            deposit: (settings.ratio.clamp(0.0, 1000.0) * MILLI as f64) as i64,
            cap: i64::from(settings.max_saved) * MILLI,
            floor: settings.floor_per_sec,
            balance: AtomicI64::new(0),
            window: Mutex::new((None, 0)),
            retries: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// A call was made.
    pub(crate) fn deposit(&self) {
        // Saved up to the cap (the usual state with few retries): a read, not a write every
        // caller would contend on.
        if self.deposit == 0 || self.balance.load(Ordering::Relaxed) >= self.cap {
            return;
        }
        let before = self.balance.fetch_add(self.deposit, Ordering::Relaxed);
        if before + self.deposit > self.cap {
            // Clamp (racy clamps only ever lower it towards the cap).
            let _ = self.balance.fetch_min(self.cap, Ordering::Relaxed);
        }
    }

    /// Takes a retry from the budget; `false` if it is spent.
    pub(crate) fn try_withdraw(&self, now: Instant) -> bool {
        let taken = self.try_spend(now);
        match taken {
            true => self.retries.fetch_add(1, Ordering::Relaxed),
            false => self.refused.fetch_add(1, Ordering::Relaxed),
        };
        taken
    }

    /// Takes a token for an extra attempt that is not a retry (a hedge), uncounted.
    pub(crate) fn try_spend(&self, now: Instant) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                (balance >= MILLI).then_some(balance - MILLI)
            })
            .is_ok()
            || self.take_floor(now)
    }

    fn take_floor(&self, now: Instant) -> bool {
        let mut window = self.window.lock();
        let (start, used) = &mut *window;
        if start.is_none_or(|start| now.saturating_duration_since(start).as_secs() >= 1) {
            *start = Some(now);
            *used = 0;
        }
        if *used < self.floor {
            *used += 1;
            return true;
        }
        false
    }

    /// Retries made, and retries the budget refused.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.retries.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn retries_stay_within_the_ratio_plus_the_floor() {
        let budget = Budget::new(&RetryBudget::default());
        let now = Instant::now();
        // An outage: every call fails and wants a retry. 1000 calls in one second.
        let mut retried = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.try_withdraw(now) {
                retried += 1;
            }
        }
        // 20% of 1000, plus the floor of 10.
        assert!((200..=210).contains(&retried), "{retried}");
        assert_eq!(budget.counts(), (retried, 1000 - retried));
    }

    #[test]
    fn the_floor_refills_each_second() {
        let budget = Budget::new(&RetryBudget {
            ratio: 0.0,
            floor_per_sec: 3,
            max_saved: 100,
        });
        let t0 = Instant::now();
        let first: usize = (0..10).filter(|_| budget.try_withdraw(t0)).count();
        assert_eq!(first, 3);
        assert!(!budget.try_withdraw(t0 + Duration::from_millis(999)));
        let later = t0 + Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| budget.try_withdraw(later)).count(), 3);
    }

    #[test]
    fn savings_are_capped() {
        let budget = Budget::new(&RetryBudget {
            ratio: 1.0,
            floor_per_sec: 0,
            max_saved: 5,
        });
        for _ in 0..1000 {
            budget.deposit();
        }
        let now = Instant::now();
        assert_eq!((0..100).filter(|_| budget.try_withdraw(now)).count(), 5);
    }
}
