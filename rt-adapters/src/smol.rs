use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::Instant,
};

use flumen_stream::Runtime;
use smol::{Executor, Timer};

/// Runs Flumen's tasks on smol: on smol's global executor, or on an executor of your own;
/// timers come from `async-io`'s reactor either way.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
///
/// // One executor, run by the thread that blocks on it.
/// let executor = Arc::new(smol::Executor::new());
/// let rt = flumen_rt::SmolRuntime::new(executor.clone());
/// smol::block_on(executor.run(async move {
///     let _ = rt;
/// }));
/// ```
#[derive(Clone)]
pub struct SmolRuntime {
    executor: Exec,
}

/// Where a [`SmolRuntime`] spawns.
#[derive(Clone)]
enum Exec {
    /// smol's global executor.
    Global,
    /// An executor the runtime keeps alive.
    Owned(Arc<Executor<'static>>),
    /// An executor its thread keeps alive ([`Cores`](crate::Cores)): the tasks, which hold
    /// runtimes, do not keep it (and so themselves) alive once the thread ends.
    Borrowed(Weak<Executor<'static>>),
    /// [`Workers`](crate::Workers)' threads.
    Workers(crate::workers::Spawner),
}

impl SmolRuntime {
    /// Spawns on `executor`; someone must run it (for example `smol::block_on(executor.run(..))`
    /// on one or more threads).
    pub fn new(executor: Arc<Executor<'static>>) -> Self {
        Self {
            executor: Exec::Owned(executor),
        }
    }

    /// Spawns on `executor` while something else keeps it alive; once it is gone, what is
    /// spawned is dropped unrun.
    pub(crate) fn borrowed(executor: &Arc<Executor<'static>>) -> Self {
        Self {
            executor: Exec::Borrowed(Arc::downgrade(executor)),
        }
    }

    /// Spawns on `workers` (what [`Workers::runtime`](crate::Workers::runtime) returns).
    pub(crate) fn workers(workers: crate::workers::Spawner) -> Self {
        Self {
            executor: Exec::Workers(workers),
        }
    }

    /// Spawns on smol's global executor (`smol::spawn`), which runs on its own threads
    /// (`SMOL_THREADS`, default 1).
    pub fn global() -> Self {
        Self {
            executor: Exec::Global,
        }
    }
}

impl fmt::Debug for SmolRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmolRuntime")
            .field("global", &matches!(self.executor, Exec::Global))
            .finish()
    }
}

impl Runtime for SmolRuntime {
    type Sleep = SmolSleep;

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.executor {
            Exec::Owned(executor) => executor.spawn(future).detach(),
            Exec::Borrowed(executor) => {
                // A runtime that stopped drops what is spawned on it, as tokio's does.
                if let Some(executor) = executor.upgrade() {
                    executor.spawn(future).detach();
                }
            }
            Exec::Workers(workers) => workers.spawn(future),
            Exec::Global => smol::spawn(future).detach(),
        }
    }

    fn sleep_until(&self, deadline: Instant) -> SmolSleep {
        SmolSleep(Timer::at(deadline))
    }
}

/// A sleep on `async-io`'s timer.
#[derive(Debug)]
pub struct SmolSleep(Timer);

impl Future for SmolSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(drop)
    }
}
