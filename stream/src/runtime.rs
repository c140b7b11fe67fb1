//! The one trait through which the core reaches an async runtime.

use std::{future::Future, time::Instant};

/// What the core needs from an async runtime: spawning detached tasks and sleeping.
///
/// Implemented for tokio and smol in the `flumen-rt` crate. The core never names a runtime's
/// types, so a user can bring any executor that can spawn `Send` futures and keep time.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// The future [`sleep_until`](Self::sleep_until) returns.
    type Sleep: Future<Output = ()> + Send + 'static;

    /// Runs `future` to completion in the background. The core drops no handle to it: tasks end
    /// by themselves when their connection closes.
    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static;

    /// A future that completes at `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep;
}
