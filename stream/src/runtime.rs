//! The one trait through which the core reaches an async runtime.

use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use crate::error::CallError;

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

thread_local! {
    /// Whether this thread has polled one of the core's connection tasks: it is a thread of an
    /// async runtime, where a blocking call could wait for work that only this thread would do.
    static RUNS_CONNECTIONS: Cell<bool> = const { Cell::new(false) };
}

pin_project_lite::pin_project! {
    /// One of the core's connection tasks (reader, writer, timer, accept loop), marking each
    /// thread that polls it.
    struct Marked<F> {
        #[pin]
        task: F,
    }
}

impl<F: Future> Future for Marked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        RUNS_CONNECTIONS.set(true);
        self.project().task.poll(cx)
    }
}

/// Spawns one of the core's connection tasks on `rt`, so that the threads that run it are
/// known to run async tasks (see [`check_blocking`]).
pub(crate) fn spawn_task<R: Runtime>(rt: &R, task: impl Future<Output = ()> + Send + 'static) {
    rt.spawn(Marked { task });
}

/// Fails with [`CallError::BlockingInAsync`] on a thread that runs Flumen's connection tasks
/// (the thread of a current-thread runtime, a worker of a multi-thread one, an executor's
/// thread): a blocking call there could wait for a reply that only this thread would read,
/// and hang past its deadline. Every `_blocking` call checks this first; code of its own that
/// blocks on Flumen can check it too.
///
/// A thread is known once it has polled one of the connection tasks of any connection, so a
/// runtime's thread that has not yet run one passes. Threads meant for blocking work
/// (`tokio::task::spawn_blocking`, `smol::unblock`, `std::thread::spawn`) always pass.
///
/// # Errors
///
/// [`CallError::BlockingInAsync`], as above.
pub fn check_blocking() -> Result<(), CallError> {
    match RUNS_CONNECTIONS.get() {
        true => Err(CallError::BlockingInAsync),
        false => Ok(()),
    }
}
