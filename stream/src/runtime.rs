//! The one trait through which the core reaches an async runtime.

use std::{
    cell::Cell,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
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

/// A boxed task or timer, as [`AnyRuntime`] takes and gives them.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Any [`Runtime`], its type erased: for code that must keep a runtime without being generic
/// over it (a client that spawns the sending half of bidirectional calls, a balancer's timers).
/// Cheap to clone (one `Arc`); it is itself a `Runtime`, whose tasks and timers are boxed.
///
/// # Examples
///
/// ```
/// # fn demo<R: flumen_stream::Runtime>(rt: &R) {
/// use flumen_stream::{AnyRuntime, Runtime};
///
/// let any = AnyRuntime::new(rt);
/// any.spawn(async { /* runs on `rt` */ });
/// # }
/// ```
#[derive(Clone)]
pub struct AnyRuntime(Arc<dyn Erased>);

/// The object-safe face of a [`Runtime`].
trait Erased: Send + Sync + 'static {
    fn spawn(&self, future: BoxFuture);
    fn sleep_until(&self, deadline: Instant) -> BoxFuture;
}

impl<R: Runtime> Erased for R {
    fn spawn(&self, future: BoxFuture) {
        Runtime::spawn(self, future);
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture {
        Box::pin(Runtime::sleep_until(self, deadline))
    }
}

impl AnyRuntime {
    /// Erases `rt`'s type (a clone of it is kept).
    pub fn new<R: Runtime>(rt: &R) -> Self {
        Self(Arc::new(rt.clone()))
    }
}

impl fmt::Debug for AnyRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyRuntime")
    }
}

impl Runtime for AnyRuntime {
    type Sleep = BoxFuture;

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.0.spawn(Box::pin(future));
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture {
        self.0.sleep_until(deadline)
    }
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
/// (`tokio::task::spawn_blocking`, `smol::unblock`, `std::thread::spawn`) pass, unless they
/// ran the runtime's tasks before: tokio hands a worker's thread over to its blocking pool
/// after `block_in_place`. Code that knows it may block there says so with
/// [`allow_blocking`].
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

/// Runs `f` with this thread taken for one that may block: `_blocking` calls inside it pass
/// [`check_blocking`]. For the threads the check cannot tell from a runtime's own: inside
/// `tokio::task::block_in_place`, and in tokio's blocking pool on a thread that was once a
/// worker. Calls that do need this thread's tasks then wait until their deadline.
pub fn allow_blocking<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            RUNS_CONNECTIONS.set(self.0);
        }
    }
    let _restore = Restore(RUNS_CONNECTIONS.replace(false));
    f()
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        pin::pin,
        task::{Context, Waker},
    };

    use super::{allow_blocking, check_blocking, Marked};
    use crate::error::CallError;

    #[test]
    fn a_thread_that_polled_a_connection_task_refuses_blocking_unless_allowed() {
        std::thread::spawn(|| {
            assert!(check_blocking().is_ok(), "a fresh thread may block");
            let mut task = pin!(Marked { task: async {} });
            let _ = task.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            assert!(matches!(check_blocking(), Err(CallError::BlockingInAsync)));
            assert!(allow_blocking(|| check_blocking().is_ok()));
            // Nested, and restored after.
            allow_blocking(|| allow_blocking(|| assert!(check_blocking().is_ok())));
            assert!(matches!(check_blocking(), Err(CallError::BlockingInAsync)));
        })
        .join()
        .unwrap();
    }
}
