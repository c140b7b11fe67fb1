//! The synchronisation primitives of the outgoing queue, the client's call table and window,
//! and the streams' credit, from `std`, `parking_lot`, `atomic-waker` and `event-listener`, or
//! from loom when the crate is built with `--cfg flumen_loom`, so that loom can check them
//! (the writer's doorbell in `io/outbox.rs`, the call table's slot hand-off, the window's
//! permits and late replies in `client.rs`, credit wake-ups in `streaming.rs`) under every
//! interleaving it allows:
//!
//! ```sh
//! RUSTFLAGS="--cfg flumen_loom" CARGO_TARGET_DIR=target/loom cargo test -p flumen-stream --lib --release loom
//! ```

#[cfg(not(flumen_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(flumen_loom))]
pub(crate) use atomic_waker::AtomicWaker;
#[cfg(flumen_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(flumen_loom))]
pub(crate) use parking_lot::Mutex;

#[cfg(not(flumen_loom))]
pub(crate) use event_listener::{Event, EventListener};

#[cfg(flumen_loom)]
pub(crate) use self::loom_shim::{AtomicWaker, Event, EventListener, Mutex};

/// Notifies one more listener of `event`, beyond those notified already.
#[cfg(not(flumen_loom))]
pub(crate) fn notify_one_more(event: &Event) {
    use event_listener::IntoNotification;
    event.notify(1.additional());
}

/// Blocks the thread until `listener` is notified, or until `deadline` if there is one;
/// `false` if the deadline came first.
#[cfg(not(flumen_loom))]
pub(crate) fn wait_until(listener: EventListener, deadline: Option<std::time::Instant>) -> bool {
    match deadline {
        None => {
            event_listener::Listener::wait(listener);
            true
        }
        Some(at) => event_listener::Listener::wait_deadline(listener, at).is_some(),
    }
}

#[cfg(flumen_loom)]
pub(crate) use self::loom_shim::{notify_one_more, wait_until};

#[cfg(flumen_loom)]
mod loom_shim {
    use std::{
        fmt,
        future::Future,
        pin::Pin,
        sync::PoisonError,
        task::{Context, Poll, Waker},
    };

    use loom::sync::Arc;

    /// `parking_lot::Mutex`'s interface over loom's mutex.
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn try_lock(&self) -> Option<loom::sync::MutexGuard<'_, T>> {
            match self.0.try_lock() {
                Ok(guard) => Some(guard),
                Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            }
        }
    }

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Self::new(T::default())
        }
    }

    impl<T> fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Mutex")
        }
    }

    /// `atomic_waker::AtomicWaker`'s interface over loom's.
    #[derive(Debug, Default)]
    pub(crate) struct AtomicWaker(loom::future::AtomicWaker);

    impl AtomicWaker {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        pub(crate) fn register(&self, waker: &Waker) {
            self.0.register_by_ref(waker);
        }

        pub(crate) fn wake(&self) {
            self.0.wake();
        }
    }

    /// `event_listener::Event`'s semantics over loom's mutex: `notify(n)` makes sure `n`
    /// listeners are notified (counting those notified already), `notify_one_more` notifies
    /// one beyond them, and a notified listener dropped before it saw its notification passes
    /// it on to the next.
    #[derive(Clone, Default)]
    pub(crate) struct Event(Arc<loom::sync::Mutex<Waiters>>);

    #[derive(Default)]
    struct Waiters {
        next_id: u64,
        /// In the order they began listening.
        entries: Vec<Entry>,
    }

    struct Entry {
        id: u64,
        notified: bool,
        waker: Option<Waker>,
    }

    impl Waiters {
        /// Notifies up to `n` more listeners; returns their wakers.
        fn notify_more(&mut self, mut n: usize) -> Vec<Waker> {
            let mut wakers = Vec::new();
            for entry in self.entries.iter_mut().filter(|e| !e.notified) {
                if n == 0 {
                    break;
                }
                n -= 1;
                entry.notified = true;
                wakers.extend(entry.waker.take());
            }
            wakers
        }
    }

    impl Event {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        fn waiters(&self) -> loom::sync::MutexGuard<'_, Waiters> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn listen(&self) -> EventListener {
            let mut waiters = self.waiters();
            let id = waiters.next_id;
            waiters.next_id += 1;
            waiters.entries.push(Entry {
                id,
                notified: false,
                waker: None,
            });
            EventListener {
                event: self.clone(),
                id,
                done: false,
            }
        }

        pub(crate) fn notify(&self, n: usize) {
            let wakers = {
                let mut waiters = self.waiters();
                let already = waiters.entries.iter().filter(|e| e.notified).count();
                waiters.notify_more(n.saturating_sub(already))
            };
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    impl fmt::Debug for Event {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Event")
        }
    }

    pub(crate) fn notify_one_more(event: &Event) {
        let wakers = event.waiters().notify_more(1);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Loom has no clock: waits until notified, whatever the deadline.
    pub(crate) fn wait_until(
        listener: EventListener,
        _deadline: Option<std::time::Instant>,
    ) -> bool {
        loom::future::block_on(listener);
        true
    }

    /// A listener of an [`Event`]: a future that resolves once it is notified.
    pub(crate) struct EventListener {
        event: Event,
        id: u64,
        done: bool,
    }

    impl Future for EventListener {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let this = &mut *self;
            let mut waiters = this.event.waiters();
            let Some(at) = waiters.entries.iter().position(|e| e.id == this.id) else {
                this.done = true;
                return Poll::Ready(());
            };
            if waiters.entries[at].notified {
                waiters.entries.remove(at);
                drop(waiters);
                this.done = true;
                return Poll::Ready(());
            }
            waiters.entries[at].waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    impl Drop for EventListener {
        fn drop(&mut self) {
            if self.done {
                return;
            }
            let wakers = {
                let mut waiters = self.event.waiters();
                let Some(at) = waiters.entries.iter().position(|e| e.id == self.id) else {
                    return;
                };
                match waiters.entries.remove(at).notified {
                    true => waiters.notify_more(1),
                    false => Vec::new(),
                }
            };
            wakers.into_iter().for_each(Waker::wake);
        }
    }
}
