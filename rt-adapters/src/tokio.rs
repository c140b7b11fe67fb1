use std::{future::Future, time::Instant};

use flumen_stream::Runtime;
use tokio::runtime::Handle;

/// Runs Flumen's tasks on a tokio runtime.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let rt = flumen_rt::TokioRuntime::current();
/// # let _ = rt;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: Handle,
}

impl TokioRuntime {
    /// The runtime the calling task runs on.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime; use [`TokioRuntime::new`] with a handle there.
    pub fn current() -> Self {
        Self {
            handle: Handle::current(),
        }
    }

    /// The runtime behind `handle` (works from any thread).
    pub fn new(handle: Handle) -> Self {
        Self { handle }
    }

    /// The runtime's handle (to enter its context, for resources that need it).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Runtime for TokioRuntime {
    type Sleep = tokio::time::Sleep;

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(future));
    }

    fn sleep_until(&self, deadline: Instant) -> tokio::time::Sleep {
        // Timers must be created inside the runtime's context.
        let _guard = self.handle.enter();
        tokio::time::sleep_until(deadline.into())
    }
}
