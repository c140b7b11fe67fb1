//! The client's table of in-flight calls: slots, sequence ids and deadlines (sans-IO).
//!
//! Public for custom drivers and benchmarks; [`Client`](crate::Client) is built on it.
//!
//! The table has up to one slot per unit of window, created as calls need them (an idle
//! connection with a large window holds only the slots its busiest moment used). A caller
//! `acquire`s a free slot (none while the window is full), `begin`s a call in it, takes the
//! outcome with `poll`, and `release`s the slot. The reader
//! `complete`s calls by sequence id, the timer `expire`s them by tick, and a dead connection
//! `fail_all`s them. A sequence id is `generation << 32 | slot`, so a reply is matched in O(1)
//! and a reply for a call that already timed out or was abandoned (its slot's generation moved
//! on, or the slot is no longer pending) is recognised as stale and dropped.

use std::{
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;

use crate::{
    error::{CallError, ConnectionError},
    wheel::{TimerKey, Wheel},
};

/// Buckets in the deadline wheel; with the default 10 ms tick one revolution is 2.56 s.
const WHEEL_BUCKETS: usize = 256;

/// A call's outcome: the reply body or why there is none.
pub type Outcome = Result<Bytes, CallError>;

/// In-flight calls of one connection.
///
/// # Examples
///
/// ```
/// use std::task::{Context, Waker};
/// use flumen_stream::{advanced::CallTable, Bytes};
///
/// let mut table = CallTable::new(8, 0);
/// let seq = table.begin(3, None, None).unwrap();
/// assert!(table.complete(seq, Ok(Bytes::from_static(b"hi")), &mut Vec::new()));
/// let reply = table.poll(3, &mut Context::from_waker(Waker::noop()));
/// assert!(reply.is_ready());
/// ```
#[derive(Debug)]
pub struct CallTable {
    slots: Vec<Slot>,
    /// Slots handed out and released, ready for the next call.
    free: Vec<u32>,
    /// Slots `0..fresh` have been handed out at least once.
    fresh: u32,
    window: usize,
    wheel: Wheel<u32>,
    /// Set once the connection drains or dies: new calls fail with this error.
    refusing: Option<ConnectionError>,
    /// Callers waiting for a free slot (counted by the driver, under the same lock as the
    /// slots): a released slot wakes one of them only while some wait.
    waiters: usize,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    state: State,
    timer: Option<TimerKey>,
    timeout: Duration,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Free,
    Pending(Option<Waker>),
    Done(Outcome),
}

impl CallTable {
    /// A table of up to `window` slots whose clock starts at tick `now`. Slots are created
    /// as calls need them.
    pub fn new(window: usize, now: u64) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            fresh: 0,
            window,
            wheel: Wheel::new(WHEEL_BUCKETS, now),
            refusing: None,
            waiters: 0,
        }
    }

    /// Takes a free slot of the window; `None` while every slot is in use.
    ///
    /// # Errors
    ///
    /// [`CallError::NotSent`] once the connection drains or is closed.
    pub fn acquire(&mut self) -> Result<Option<u32>, CallError> {
        if let Some(error) = &self.refusing {
            return Err(CallError::NotSent(error.clone()));
        }
        if let Some(slot) = self.free.pop() {
            return Ok(Some(slot));
        }
        if (self.fresh as usize) < self.window {
            let slot = self.fresh;
            self.fresh += 1;
            return Ok(Some(slot));
        }
        Ok(None)
    }

    /// Returns `slot` to the window (after [`abandon`](Self::abandon) or a taken outcome).
    /// Returns whether a caller waits for a slot (counted by the driver): one should be woken.
    pub fn release(&mut self, slot: u32) -> bool {
        debug_assert!(!self.free.contains(&slot), "slot {slot} released twice");
        self.free.push(slot);
        self.waiters > 0
    }

    /// A caller found the window full and waits for a slot.
    pub(crate) fn add_waiter(&mut self) {
        self.waiters += 1;
    }

    /// How many callers wait for a slot.
    #[cfg(all(test, not(flumen_loom)))]
    pub(crate) fn waiters(&self) -> usize {
        self.waiters
    }

    /// A caller counted by [`add_waiter`](Self::add_waiter) stopped waiting.
    pub(crate) fn remove_waiter(&mut self) {
        self.waiters -= 1;
    }

    /// Slots in use now (acquired and not released).
    pub fn in_use(&self) -> usize {
        self.fresh as usize - self.free.len()
    }

    /// Starts a call in the free `slot` and returns its sequence id.
    ///
    /// `deadline` is the tick at which the call times out and the timeout the caller asked for;
    /// `waker` (if known) is woken when the call resolves.
    ///
    /// # Errors
    ///
    /// [`CallError::NotSent`] once the connection drains or is closed.
    ///
    /// # Panics
    ///
    /// If `slot` is not below the window ([`acquire`](Self::acquire) hands out slots
    /// `0..window`).
    pub fn begin(
        &mut self,
        slot: u32,
        deadline: Option<(u64, Duration)>,
        waker: Option<Waker>,
    ) -> Result<u64, CallError> {
        if let Some(error) = &self.refusing {
            return Err(CallError::NotSent(error.clone()));
        }
        assert!(
            (slot as usize) < self.window,
            "slot {slot} is outside the window"
        );
        if self.slots.len() <= slot as usize {
            self.slots.resize_with(slot as usize + 1, Slot::default);
        }
        let entry = &mut self.slots[slot as usize];
        debug_assert!(matches!(entry.state, State::Free), "slot {slot} is busy");
        entry.generation = entry.generation.wrapping_add(1);
        entry.state = State::Pending(waker);
        if let Some((tick, timeout)) = deadline {
            entry.timeout = timeout;
            entry.timer = Some(self.wheel.insert(tick, slot));
        }
        Ok((u64::from(entry.generation) << 32) | u64::from(slot))
    }

    /// Refuses new calls with `error`; pending calls go on.
    pub fn drain(&mut self, error: ConnectionError) {
        self.refusing.get_or_insert(error);
    }

    /// The error new calls fail with, if the table refuses them.
    pub fn refusing(&self) -> Option<&ConnectionError> {
        self.refusing.as_ref()
    }

    /// Resolves the call `seq` with `outcome`. Returns `false` (and drops `outcome`) if no
    /// such call is pending: a late, duplicate or forged reply.
    pub fn complete(&mut self, seq: u64, outcome: Outcome, wakers: &mut Vec<Waker>) -> bool {
        let slot = (seq & u64::from(u32::MAX)) as usize;
        let generation = (seq >> 32) as u32;
        let Some(entry) = self.slots.get_mut(slot) else {
            return false;
        };
        if entry.generation != generation || !matches!(entry.state, State::Pending(_)) {
            return false;
        }
        if let Some(key) = entry.timer.take() {
            self.wheel.remove(key);
        }
        if let State::Pending(Some(waker)) =
            std::mem::replace(&mut entry.state, State::Done(outcome))
        {
            wakers.push(waker);
        }
        true
    }

    /// Takes the outcome of the call in `slot` (freeing the slot), or registers `cx`'s waker.
    /// A slot that never held a call reads as a call that was never sent.
    pub fn poll(&mut self, slot: u32, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return Poll::Ready(Err(CallError::NotSent(ConnectionError::Closed)));
        };
        match &mut entry.state {
            State::Pending(waker) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Done(_) => match std::mem::take(&mut entry.state) {
                State::Done(outcome) => Poll::Ready(outcome),
                _ => unreachable!("state checked above"),
            },
            State::Free => Poll::Ready(Err(CallError::NotSent(ConnectionError::Closed))),
        }
    }

    /// Frees `slot` whatever its state. Returns the sequence id if the call was still pending,
    /// so that the driver can tell the server to cancel it.
    pub fn abandon(&mut self, slot: u32) -> Option<u64> {
        let entry = self.slots.get_mut(slot as usize)?;
        if let Some(key) = entry.timer.take() {
            self.wheel.remove(key);
        }
        match std::mem::take(&mut entry.state) {
            State::Pending(_) => Some((u64::from(entry.generation) << 32) | u64::from(slot)),
            _ => None,
        }
    }

    /// Times out every call whose deadline is `<= now`, pushing the wakers to wake and the
    /// sequence ids to cancel on the server.
    pub fn expire(&mut self, now: u64, wakers: &mut Vec<Waker>, expired: &mut Vec<u64>) {
        let slots = &mut self.slots;
        self.wheel.poll(now, |slot| {
            let entry = &mut slots[slot as usize];
            entry.timer = None;
            let outcome = Err(CallError::Timeout(entry.timeout));
            if let State::Pending(waker) = std::mem::replace(&mut entry.state, State::Done(outcome))
            {
                wakers.extend(waker);
                expired.push((u64::from(entry.generation) << 32) | u64::from(slot));
            }
        });
    }

    /// Fails every pending call with `error` and refuses new ones.
    pub fn fail_all(&mut self, error: &ConnectionError, wakers: &mut Vec<Waker>) {
        self.refusing = Some(error.clone());
        for entry in self.slots.iter_mut() {
            if !matches!(entry.state, State::Pending(_)) {
                continue;
            }
            if let Some(key) = entry.timer.take() {
                self.wheel.remove(key);
            }
            let outcome = Err(CallError::Connection(error.clone()));
            if let State::Pending(Some(waker)) =
                std::mem::replace(&mut entry.state, State::Done(outcome))
            {
                wakers.push(waker);
            }
        }
    }

    /// Gives back the deadline wheel's memory if no call has a deadline (a quiet connection).
    pub fn shrink_if_idle(&mut self) {
        self.wheel.shrink_if_empty();
    }

    /// Whether any call has a deadline (the timer has work).
    pub fn has_deadlines(&self) -> bool {
        !self.wheel.is_empty()
    }

    /// The earliest tick at which a call times out.
    pub fn next_expiry(&self) -> Option<u64> {
        self.wheel.next_expiry()
    }

    /// Number of calls that are pending (begun, not resolved).
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, State::Pending(_)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use proptest::prelude::*;

    use super::*;

    fn poll_now(table: &mut CallTable, slot: u32) -> Poll<Outcome> {
        table.poll(slot, &mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn replies_match_by_seq_in_any_order() {
        let mut table = CallTable::new(4, 0);
        let a = table.begin(0, None, None).unwrap();
        let b = table.begin(1, None, None).unwrap();
        let mut wakers = Vec::new();
        assert!(table.complete(b, Ok(Bytes::from_static(b"b")), &mut wakers));
        assert!(table.complete(a, Ok(Bytes::from_static(b"a")), &mut wakers));
        assert_eq!(
            poll_now(&mut table, 0).map(Result::unwrap),
            Poll::Ready(Bytes::from_static(b"a"))
        );
        assert_eq!(
            poll_now(&mut table, 1).map(Result::unwrap),
            Poll::Ready(Bytes::from_static(b"b"))
        );
        assert_eq!(table.pending(), 0);
    }

    #[test]
    fn times_out_at_deadline_tick_not_before() {
        let mut table = CallTable::new(2, 100);
        let seq = table
            .begin(0, Some((105, Duration::from_millis(50))), None)
            .unwrap();
        let (mut wakers, mut expired) = (Vec::new(), Vec::new());
        table.expire(104, &mut wakers, &mut expired);
        assert!(poll_now(&mut table, 0).is_pending());
        assert_eq!(table.next_expiry(), Some(105));
        table.expire(105, &mut wakers, &mut expired);
        assert_eq!(expired, vec![seq]);
        match poll_now(&mut table, 0) {
            Poll::Ready(Err(CallError::Timeout(d))) => assert_eq!(d, Duration::from_millis(50)),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(!table.has_deadlines());
    }

    #[test]
    fn late_reply_after_timeout_is_dropped() {
        let mut table = CallTable::new(1, 0);
        let old = table
            .begin(0, Some((1, Duration::from_millis(10))), None)
            .unwrap();
        let (mut wakers, mut expired) = (Vec::new(), Vec::new());
        table.expire(1, &mut wakers, &mut expired);
        assert!(matches!(
            poll_now(&mut table, 0),
            Poll::Ready(Err(CallError::Timeout(_)))
        ));
        // The slot is reused; the old reply must not resolve the new call.
        let new = table.begin(0, None, None).unwrap();
        assert_ne!(old, new);
        assert!(!table.complete(old, Ok(Bytes::new()), &mut wakers));
        assert!(poll_now(&mut table, 0).is_pending());
        assert!(table.complete(new, Ok(Bytes::new()), &mut wakers));
    }

    #[test]
    fn abandoned_call_is_cancelled_and_its_reply_ignored() {
        let mut table = CallTable::new(1, 0);
        let seq = table
            .begin(0, Some((9, Duration::from_millis(90))), None)
            .unwrap();
        assert_eq!(table.abandon(0), Some(seq));
        assert!(!table.has_deadlines());
        assert!(!table.complete(seq, Ok(Bytes::new()), &mut Vec::new()));
        assert_eq!(table.abandon(0), None);
    }

    #[test]
    fn forged_seq_out_of_range_is_ignored() {
        let mut table = CallTable::new(1, 0);
        assert!(!table.complete(u64::MAX, Ok(Bytes::new()), &mut Vec::new()));
        assert!(!table.complete(7, Ok(Bytes::new()), &mut Vec::new()));
    }

    #[test]
    fn fail_all_resolves_every_pending_call_and_wakes_it() {
        let mut table = CallTable::new(3, 0);
        table
            .begin(
                0,
                Some((50, Duration::from_secs(1))),
                Some(Waker::noop().clone()),
            )
            .unwrap();
        table.begin(2, None, Some(Waker::noop().clone())).unwrap();
        let mut wakers = Vec::new();
        table.fail_all(&ConnectionError::Eof, &mut wakers);
        assert_eq!(wakers.len(), 2);
        assert!(matches!(
            table.begin(1, None, None),
            Err(CallError::NotSent(ConnectionError::Eof))
        ));
        for slot in [0, 2] {
            assert!(matches!(
                poll_now(&mut table, slot),
                Poll::Ready(Err(CallError::Connection(ConnectionError::Eof)))
            ));
        }
        assert!(!table.has_deadlines());
    }

    proptest! {
        /// Driven by arbitrary begin/complete/expire/abandon sequences, every begun call
        /// resolves exactly once, and never later than its deadline tick.
        #[test]
        fn every_call_resolves_once(ops in proptest::collection::vec((0u8..4, 0u32..8, 0u64..6), 1..150)) {
            const WINDOW: u32 = 8;
            let mut table = CallTable::new(WINDOW as usize, 0);
            let mut now = 0u64;
            let mut live: Vec<Option<(u64, u64)>> = vec![None; WINDOW as usize]; // (seq, deadline)
            let (mut wakers, mut expired) = (Vec::new(), Vec::new());
            for (op, slot, arg) in ops {
                let idx = slot as usize;
                match op {
                    0 if live[idx].is_none() => {
                        let deadline = now + 1 + arg;
                        let seq = table.begin(slot, Some((deadline, Duration::ZERO)), None).unwrap();
                        live[idx] = Some((seq, deadline));
                    }
                    1 => {
                        if let Some((seq, _)) = live[idx] {
                            if table.complete(seq, Ok(Bytes::new()), &mut wakers) {
                                prop_assert!(poll_now(&mut table, slot).is_ready());
                                live[idx] = None;
                            }
                        }
                    }
                    2 => {
                        now += arg;
                        table.expire(now, &mut wakers, &mut expired);
                        for (i, call) in live.iter_mut().enumerate() {
                            if let Some((_, deadline)) = *call {
                                let outcome = poll_now(&mut table, i as u32);
                                prop_assert_eq!(outcome.is_ready(), deadline <= now);
                                if outcome.is_ready() {
                                    *call = None;
                                }
                            }
                        }
                    }
                    _ => {
                        let cancelled = table.abandon(slot);
                        prop_assert_eq!(cancelled, live[idx].map(|c| c.0));
                        live[idx] = None;
                    }
                }
            }
            prop_assert_eq!(table.pending(), live.iter().flatten().count());
        }
    }
}
