//! The wake primitives of a connection's tasks: flags that a task waits on and another sets,
//! each waking its waiter without a lost wake-up. [`Stop`] ends a connection's tasks, [`Quiet`]
//! asks its reader and writer to give their buffers back, [`Signal`] is a one-shot flag (a
//! call's cancel, a connection's drain), and [`TimerGate`] lets the client's timer sleep until
//! the earliest deadline.
//!
//! They are built on `crate::sync`'s atomics and wakers, so that the loom models at the bottom
//! (`--cfg flumen_loom`) check every interleaving of a setter against a waiter.

use std::{
    future::{poll_fn, Future},
    task::{Context, Poll},
};

use futures_lite::FutureExt;

use crate::sync::{AtomicBool, AtomicU64, AtomicWaker, Event, Ordering};

/// Roles of the tasks that wait on a [`Stop`].
pub(crate) const READER: usize = 0;
pub(crate) const WRITER: usize = 1;
pub(crate) const TIMER: usize = 2;

/// A one-way latch that tells a connection's tasks to end, waking each wherever it waits.
///
/// The reader, writer and timer each have a waker slot (no allocation to wait); any number of
/// other tasks (running handlers) can wait through [`Stop::ended`].
#[derive(Debug, Default)]
pub(crate) struct Stop {
    stopped: AtomicBool,
    wakers: [AtomicWaker; 3],
    others: Event,
}

impl Stop {
    /// Sets the latch and wakes every task. Returns `true` for the call that set it.
    pub(crate) fn stop(&self) -> bool {
        let first = !self.stopped.swap(true, Ordering::AcqRel);
        if first {
            self.wakers.iter().for_each(AtomicWaker::wake);
            self.others.notify(usize::MAX);
        }
        first
    }

    /// Completes once the latch is set; for tasks without a waker slot of their own.
    pub(crate) async fn ended(&self) {
        while !self.is_stopped() {
            let listener = self.others.listen();
            if self.is_stopped() {
                return;
            }
            listener.await;
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Completes once the latch is set; `role` says which task waits.
    pub(crate) fn wait(&self, role: usize) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.is_stopped() {
                return Poll::Ready(());
            }
            self.wakers[role].register(cx.waker());
            if self.is_stopped() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Runs `fut` unless the latch is set first; `None` means stopped.
    pub(crate) async fn guard<T>(&self, role: usize, fut: impl Future<Output = T>) -> Option<T> {
        async { Some(fut.await) }
            .or(async {
                self.wait(role).await;
                None
            })
            .await
    }
}

/// Tells a connection's reader and writer that it went quiet, so that they give their buffers
/// back (to be allocated again, small, when traffic returns).
#[derive(Debug, Default)]
pub(crate) struct Quiet {
    flags: [AtomicBool; 2],
    wakers: [AtomicWaker; 2],
}

impl Quiet {
    /// Asks both tasks to release their buffers.
    pub(crate) fn signal(&self) {
        for (flag, waker) in self.flags.iter().zip(&self.wakers) {
            if !flag.swap(true, Ordering::AcqRel) {
                waker.wake();
            }
        }
    }

    /// Whether `role` was asked to release, clearing the request.
    pub(crate) fn take(&self, role: usize) -> bool {
        self.flags[role].load(Ordering::Relaxed) && self.flags[role].swap(false, Ordering::AcqRel)
    }

    /// Completes once `role` is asked to release (never resolves on its own otherwise).
    pub(crate) fn wait(&self, role: usize) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.flags[role].load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.wakers[role].register(cx.waker());
            if self.flags[role].load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// A one-way flag a task can wait on: a connection starting to drain, a call being cancelled.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    pub(crate) fn new(set: bool) -> Self {
        Self {
            set: AtomicBool::new(set),
            waker: AtomicWaker::new(),
        }
    }

    /// Sets the flag and wakes the waiter; `true` for the call that set it.
    pub(crate) fn set(&self) -> bool {
        let first = !self.set.swap(true, Ordering::SeqCst);
        self.waker.wake();
        first
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Completes once the flag is set (one waiting task at a time).
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| {
            if self.is_set() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.is_set() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}
/// Lets the timer task sleep while no call has a deadline, and until the earliest deadline
/// while some have; wakes it when a call needs it sooner.
#[derive(Debug)]
pub(crate) struct TimerGate {
    idle: AtomicBool,
    /// The tick the sleeping timer will wake at (`u64::MAX` while idle).
    target: AtomicU64,
    /// Set when a deadline earlier than `target` arrived.
    sooner: AtomicBool,
    waker: AtomicWaker,
}

impl Default for TimerGate {
    fn default() -> Self {
        Self {
            // Parked from the start: nothing was armed before the first park.
            idle: AtomicBool::new(true),
            target: AtomicU64::new(u64::MAX),
            sooner: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }
}

impl TimerGate {
    /// The timer sleeps until `tick` (`u64::MAX`: it is idle; 0: it is working out its next
    /// target, and any new deadline must wake it).
    pub(crate) fn sleeping_until(&self, tick: u64) {
        self.target.store(tick, Ordering::Relaxed);
    }

    /// Called after a call with deadline tick `deadline` entered the table.
    pub(crate) fn arm(&self, deadline: u64) {
        // A relaxed load suffices: the table's mutex orders it after the timer's check.
        if self.idle.load(Ordering::Relaxed) && self.idle.swap(false, Ordering::AcqRel) {
            self.waker.wake();
            return;
        }
        // 0: the timer is working out its next target (it looked at the table before this
        // call entered it) and must look again.
        let target = self.target.load(Ordering::Relaxed);
        if target == 0 || deadline < target {
            self.sooner.swap(true, Ordering::AcqRel);
            self.waker.wake();
        }
    }

    /// Completes when a deadline earlier than the one the timer sleeps for arrives.
    pub(crate) fn sooner(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.sooner.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.sooner.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Ready with [`Parked::Work`] once `has_work` holds; with [`Parked::Missed`] when the
    /// timer was armed since it last parked but the work is gone already (calls that began and
    /// ended before the timer ran: the connection went quiet without it); otherwise parks the
    /// timer until `arm`.
    pub(crate) fn park(&self, cx: &mut Context<'_>, has_work: impl Fn() -> bool) -> Poll<Parked> {
        self.waker.register(cx.waker());
        // Set by the timer, cleared by `arm` (or by the timer going to work): found clear,
        // something was armed since the last park.
        let armed = !self.idle.swap(true, Ordering::SeqCst);
        if has_work() {
            self.idle.store(false, Ordering::Relaxed);
            Poll::Ready(Parked::Work)
        } else if armed {
            Poll::Ready(Parked::Missed)
        } else {
            Poll::Pending
        }
    }
}

/// Why [`TimerGate::park`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parked {
    /// Calls with deadlines (or to keep alive) are in the table.
    Work,
    /// Calls were armed and are gone: the connection went quiet since the timer last looked.
    Missed,
}

#[cfg(all(test, flumen_loom))]
mod loom_models {
    use loom::{future::block_on, sync::Arc, thread};

    use super::*;

    #[test]
    fn loom_stop_wakes_the_role_waiting_and_the_others() {
        loom::model(|| {
            let stop = Arc::new(Stop::default());
            let setter = {
                let stop = stop.clone();
                thread::spawn(move || assert!(stop.stop()))
            };
            let other = {
                let stop = stop.clone();
                thread::spawn(move || {
                    block_on(stop.wait(WRITER));
                    block_on(stop.wait(TIMER));
                    block_on(stop.ended());
                })
            };
            block_on(stop.wait(READER));
            other.join().unwrap();
            setter.join().unwrap();
            assert!(!stop.stop(), "only the first call sets the latch");
        });
    }

    #[test]
    fn loom_quiet_reaches_both_roles_once() {
        loom::model(|| {
            let quiet = Arc::new(Quiet::default());
            let setter = {
                let quiet = quiet.clone();
                thread::spawn(move || quiet.signal())
            };
            block_on(quiet.wait(WRITER));
            assert!(quiet.take(WRITER));
            assert!(!quiet.take(WRITER), "taking clears the request");
            block_on(quiet.wait(READER));
            assert!(quiet.take(READER), "the other role was asked too");
            setter.join().unwrap();
        });
    }

    #[test]
    fn loom_signal_wakes_its_waiter() {
        loom::model(|| {
            let signal = Arc::new(Signal::default());
            let setter = {
                let signal = signal.clone();
                thread::spawn(move || signal.set())
            };
            block_on(signal.wait());
            assert!(signal.is_set());
            assert!(setter.join().unwrap(), "the only set is the first");
        });
    }

    #[test]
    fn loom_timer_gate_wakes_a_parked_timer_for_new_work() {
        loom::model(|| {
            let gate = Arc::new(TimerGate::default());
            // The work the timer looks for (a call table with a deadline, in the client).
            let work = Arc::new(AtomicBool::new(false));
            let caller = {
                let (gate, work) = (gate.clone(), work.clone());
                thread::spawn(move || {
                    work.store(true, Ordering::SeqCst);
                    gate.arm(5);
                })
            };
            gate.sleeping_until(u64::MAX);
            // Armed before it looked but the work not seen yet (the store is, in this model),
            // the timer may hear of a call gone, and parks again.
            while block_on(poll_fn(|cx| gate.park(cx, || work.load(Ordering::SeqCst))))
                != Parked::Work
            {}
            caller.join().unwrap();
        });
    }

    #[test]
    fn loom_timer_gate_wakes_a_timer_working_out_its_target() {
        loom::model(|| {
            let gate = Arc::new(TimerGate::default());
            // The timer is awake (not idle), expired what was due and looked at the table: no
            // deadline yet.
            gate.idle.store(false, Ordering::SeqCst);
            gate.sleeping_until(0);
            let caller = {
                let gate = gate.clone();
                thread::spawn(move || gate.arm(10))
            };
            // It sleeps until its cap; the call that entered the table meanwhile cuts it short.
            gate.sleeping_until(100);
            block_on(gate.sooner());
            caller.join().unwrap();
        });
    }

    #[test]
    fn loom_timer_gate_cuts_a_sleep_short_for_a_sooner_deadline() {
        loom::model(|| {
            let gate = Arc::new(TimerGate::default());
            // The timer is awake (not idle) and sleeps until tick 100.
            gate.idle.store(false, Ordering::SeqCst);
            gate.sleeping_until(100);
            let caller = {
                let gate = gate.clone();
                thread::spawn(move || gate.arm(10))
            };
            block_on(gate.sooner());
            caller.join().unwrap();
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::{poll_fn, Future},
        pin::pin,
        sync::atomic::{AtomicBool, Ordering},
        task::{Context, Poll, Waker},
    };

    use super::{Parked, TimerGate};

    #[test]
    fn a_call_armed_and_gone_before_the_timer_looks_is_reported() {
        let gate = TimerGate::default();
        let work = AtomicBool::new(false);
        let mut cx = Context::from_waker(Waker::noop());
        let mut park = || {
            let mut parked = pin!(poll_fn(|cx| gate.park(cx, || work.load(Ordering::SeqCst))));
            parked.as_mut().poll(&mut cx)
        };
        // A fresh timer with nothing armed sleeps.
        assert_eq!(park(), Poll::Pending);
        // A call armed it, and is still there.
        work.store(true, Ordering::SeqCst);
        gate.arm(5);
        assert_eq!(park(), Poll::Ready(Parked::Work));
        // Worked until the table emptied, then parks: it might have missed a call, so it says
        // so once, then sleeps.
        work.store(false, Ordering::SeqCst);
        assert_eq!(park(), Poll::Ready(Parked::Missed));
        assert_eq!(park(), Poll::Pending);
        // A call armed it and ended before the timer ran: reported, not slept through.
        gate.arm(7);
        assert_eq!(park(), Poll::Ready(Parked::Missed));
        assert_eq!(park(), Poll::Pending);
    }
}
