//! A hashed timing wheel over integer ticks, backed by a slab.
//!
//! Deadlines are whole ticks. `insert` and `remove` are O(1); `poll(now)` visits only the
//! buckets of the ticks that passed, and expires every entry whose deadline is `<= now`.
//! An entry due more than one revolution away stays in its bucket and is skipped until its
//! round comes. The wheel never reads a clock: the driver converts instants to ticks.

use slab::Slab;

const NIL: usize = usize::MAX;

/// Identifies an entry in a [`Wheel`] for [`Wheel::remove`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey(usize);

/// A timing wheel holding values of type `T`.
#[derive(Debug)]
pub struct Wheel<T> {
    entries: Slab<Entry<T>>,
    /// One list head per bucket; allocated by the first insert, so that a connection whose
    /// calls never had deadlines holds none.
    heads: Box<[usize]>,
    /// Number of buckets (a power of two).
    buckets: usize,
    /// Every deadline `<= elapsed` has been expired.
    elapsed: u64,
}

#[derive(Debug)]
struct Entry<T> {
    deadline: u64,
    value: T,
    prev: usize,
    next: usize,
}

impl<T> Wheel<T> {
    /// A wheel with `buckets` slots (rounded up to a power of two) whose clock starts at `now`.
    pub fn new(buckets: usize, now: u64) -> Self {
        let buckets = buckets.max(1).next_power_of_two();
        Self {
            entries: Slab::new(),
            heads: Box::default(),
            buckets,
            elapsed: now,
        }
    }

    /// A wheel that holds up to `capacity` entries without reallocating.
    pub fn with_capacity(buckets: usize, now: u64, capacity: usize) -> Self {
        let mut wheel = Self::new(buckets, now);
        wheel.entries.reserve(capacity);
        wheel
    }

    /// Gives back the wheel's memory if it holds nothing (it is allocated again by the next
    /// insert).
    pub fn shrink_if_empty(&mut self) {
        if self.is_empty() {
            self.heads = Box::default();
            self.entries = Slab::new();
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the wheel holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The last tick passed to [`poll`](Self::poll).
    pub fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Adds `value` to expire at tick `deadline`. A deadline that already passed expires at
    /// the next `poll`.
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        let deadline = deadline.max(self.elapsed + 1);
        if self.heads.is_empty() {
            self.heads = vec![NIL; self.buckets].into_boxed_slice();
        }
        let bucket = self.bucket(deadline);
        let next = self.heads[bucket];
        let key = self.entries.insert(Entry {
            deadline,
            value,
            prev: NIL,
            next,
        });
        if next != NIL {
            self.entries[next].prev = key;
        }
        self.heads[bucket] = key;
        TimerKey(key)
    }

    /// Removes the entry for `key` and returns its value.
    ///
    /// A key is valid until its entry expires or is removed; after that the slab may hand the
    /// same key to a later entry, so the owner must forget keys that `poll` expired.
    pub fn remove(&mut self, key: TimerKey) -> Option<T> {
        if !self.entries.contains(key.0) {
            return None;
        }
        self.unlink(key.0);
        Some(self.entries.remove(key.0).value)
    }

    /// Advances the clock to `now` and hands every entry with `deadline <= now` to `expire`.
    pub fn poll(&mut self, now: u64, mut expire: impl FnMut(T)) {
        if now <= self.elapsed {
            return;
        }
        if self.heads.is_empty() {
            self.elapsed = now;
            return;
        }
        if now - self.elapsed >= self.buckets as u64 {
            // A whole revolution (or more) passed: one sweep over every bucket suffices.
            for bucket in 0..self.heads.len() {
                self.expire_bucket(bucket, now, &mut expire);
            }
        } else {
            for tick in self.elapsed + 1..=now {
                self.expire_bucket(self.bucket(tick), now, &mut expire);
            }
        }
        self.elapsed = now;
    }

    /// The earliest tick at which some entry is due, or `None` if the wheel is empty.
    pub fn next_expiry(&self) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        for tick in self.elapsed + 1..=self.elapsed + self.buckets as u64 {
            let mut key = self.heads[self.bucket(tick)];
            while key != NIL {
                let entry = &self.entries[key];
                if entry.deadline <= tick {
                    return Some(tick);
                }
                key = entry.next;
            }
        }
        self.entries.iter().map(|(_, entry)| entry.deadline).min()
    }

    fn bucket(&self, tick: u64) -> usize {
        (tick & (self.buckets as u64 - 1)) as usize
    }

    fn expire_bucket(&mut self, bucket: usize, now: u64, expire: &mut impl FnMut(T)) {
        let mut key = self.heads[bucket];
        while key != NIL {
            let entry = &self.entries[key];
            let next = entry.next;
            if entry.deadline <= now {
                self.unlink(key);
                expire(self.entries.remove(key).value);
            }
            key = next;
        }
    }

    fn unlink(&mut self, key: usize) {
        let (prev, next, deadline) = {
            let entry = &self.entries[key];
            (entry.prev, entry.next, entry.deadline)
        };
        if prev == NIL {
            let bucket = self.bucket(deadline);
            self.heads[bucket] = next;
        } else {
            self.entries[prev].next = next;
        }
        if next != NIL {
            self.entries[next].prev = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn drain(wheel: &mut Wheel<u32>, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.poll(now, |v| out.push(v));
        out.sort_unstable();
        out
    }

    #[test]
    fn expires_exactly_at_deadline() {
        let mut wheel = Wheel::new(8, 0);
        wheel.insert(3, 1);
        wheel.insert(3, 2);
        wheel.insert(5, 3);
        assert_eq!(wheel.next_expiry(), Some(3));
        assert_eq!(drain(&mut wheel, 2), Vec::<u32>::new());
        assert_eq!(drain(&mut wheel, 3), vec![1, 2]);
        assert_eq!(wheel.next_expiry(), Some(5));
        assert_eq!(drain(&mut wheel, 10), vec![3]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiry(), None);
    }

    #[test]
    fn far_deadlines_wait_for_their_round() {
        let mut wheel = Wheel::new(4, 0);
        wheel.insert(9, 7); // same bucket as ticks 1 and 5
        assert_eq!(drain(&mut wheel, 1), Vec::<u32>::new());
        assert_eq!(drain(&mut wheel, 5), Vec::<u32>::new());
        assert_eq!(wheel.next_expiry(), Some(9));
        assert_eq!(drain(&mut wheel, 8), Vec::<u32>::new());
        assert_eq!(drain(&mut wheel, 9), vec![7]);
    }

    #[test]
    fn past_deadline_expires_next_poll() {
        let mut wheel = Wheel::new(4, 100);
        wheel.insert(50, 1);
        assert_eq!(drain(&mut wheel, 101), vec![1]);
    }

    #[test]
    fn remove_unlinks_anywhere_in_a_bucket() {
        let mut wheel = Wheel::new(4, 0);
        let a = wheel.insert(2, 1);
        let b = wheel.insert(2, 2);
        let c = wheel.insert(2, 3);
        assert_eq!(wheel.remove(b), Some(2));
        assert_eq!(wheel.remove(b), None);
        assert_eq!(wheel.remove(c), Some(3));
        assert_eq!(drain(&mut wheel, 2), vec![1]);
        assert_eq!(wheel.remove(a), None);
    }

    proptest! {
        /// Whatever the order of inserts, removals and polls, every entry comes out exactly
        /// once: at the first poll whose `now` reaches its deadline, unless removed before.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..3, 0u64..40), 1..200)) {
            let mut wheel = Wheel::new(8, 0);
            let mut model: Vec<(TimerKey, u64, u32)> = Vec::new();
            let mut now = 0;
            for (i, (op, arg)) in ops.into_iter().enumerate() {
                let id = i as u32;
                match op {
                    0 => {
                        let deadline = now + arg;
                        let key = wheel.insert(deadline, id);
                        model.push((key, deadline.max(now + 1), id));
                    }
                    1 if !model.is_empty() => {
                        let (key, _, id) = model.remove(arg as usize % model.len());
                        prop_assert_eq!(wheel.remove(key), Some(id));
                    }
                    _ => {
                        now += arg;
                        let mut expected: Vec<u32> =
                            model.iter().filter(|e| e.1 <= now).map(|e| e.2).collect();
                        expected.sort_unstable();
                        model.retain(|e| e.1 > now);
                        prop_assert_eq!(drain(&mut wheel, now), expected);
                        let next = model.iter().map(|e| e.1).min();
                        prop_assert_eq!(wheel.next_expiry(), next);
                    }
                }
                prop_assert_eq!(wheel.len(), model.len());
            }
        }
    }
}
