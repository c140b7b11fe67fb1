//! The synchronisation primitives of the outgoing queue, from `std`, `parking_lot` and
//! `atomic-waker`, or from loom when the crate is built with `--cfg flumen_loom`, so that loom can
//! check the writer's doorbell (`io/outbox.rs`) under every interleaving it allows:
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

#[cfg(flumen_loom)]
pub(crate) use self::loom_shim::{AtomicWaker, Mutex};

#[cfg(flumen_loom)]
mod loom_shim {
    use std::{fmt, sync::PoisonError, task::Waker};

    /// `parking_lot::Mutex`'s interface over loom's mutex.
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
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
}
