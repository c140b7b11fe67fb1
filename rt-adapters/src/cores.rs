//! A runtime per core: [`Cores`], single-threaded runtimes each on a thread of its own, for a
//! server that serves each connection on one thread from accept to close (no work stealing,
//! no cross-thread wake-ups) and uses its cores by running one such server per runtime.

use std::{fmt, io, thread};

/// `n` single-threaded runtimes, each run by a thread of its own until the `Cores` is dropped:
/// tokio current-thread runtimes ([`Cores::tokio`]) or smol executors ([`Cores::smol`]).
///
/// Dropping it stops the runtimes (their tasks are dropped, and what is spawned on them
/// later is dropped unrun) and joins their threads. Shut a server or client running on them
/// down (or drop it) first: a `ServerHandle`'s graceful shutdown times itself on its first
/// runtime.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "tokio")] {
/// use flumen_stream::Runtime;
///
/// let cores = flumen_rt::Cores::tokio(2).unwrap();
/// for rt in cores.runtimes() {
///     rt.spawn(async { /* runs on that runtime's thread */ });
/// }
/// # }
/// ```
pub struct Cores<R> {
    runtimes: Vec<R>,
    /// Ends the thread's loop when dropped, one per thread.
    stops: Vec<Box<dyn Send + Sync>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl<R> Cores<R> {
    /// The runtimes, one per thread.
    pub fn runtimes(&self) -> &[R] {
        &self.runtimes
    }

    /// How many runtimes there are.
    pub fn len(&self) -> usize {
        self.runtimes.len()
    }

    /// Whether there are none (`Cores` made with `n = 0`).
    pub fn is_empty(&self) -> bool {
        self.runtimes.is_empty()
    }

    /// Starts `n` threads named `flumen-core-N`; each sends back the runtime it runs and
    /// runs it until its stop is dropped.
    fn start<S: Send + 'static>(
        n: usize,
        run: impl Fn(std::sync::mpsc::Sender<io::Result<R>>, S) + Clone + Send + 'static,
        stop: impl Fn() -> (Box<dyn Send + Sync>, S),
    ) -> io::Result<Self>
    where
        R: Send + 'static,
    {
        let mut cores = Self {
            runtimes: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let (tell, told) = std::sync::mpsc::channel();
            let (stop, stopped) = stop();
            let run = run.clone();
            let thread = thread::Builder::new()
                .name(format!("flumen-core-{i}"))
                .spawn(move || run(tell, stopped))?;
            cores.stops.push(stop);
            cores.threads.push(thread);
            let runtime = told.recv().map_err(|_| {
                io::Error::other(format!("the thread of runtime {i} ended before it started"))
            })??;
            cores.runtimes.push(runtime);
        }
        Ok(cores)
    }
}

#[cfg(feature = "tokio")]
impl Cores<crate::TokioRuntime> {
    /// `n` tokio current-thread runtimes (timers and I/O on), each on a thread of its own.
    ///
    /// # Errors
    ///
    /// If a thread or a runtime cannot be made.
    pub fn tokio(n: usize) -> io::Result<Self> {
        Self::start(
            n,
            |tell, stopped: tokio::sync::oneshot::Receiver<()>| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = tell.send(Ok(crate::TokioRuntime::new(runtime.handle().clone())));
                        // A current-thread runtime runs its tasks while this thread blocks on it.
                        let _ = runtime.block_on(stopped);
                    }
                    Err(e) => drop(tell.send(Err(e))),
                }
            },
            || {
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                (Box::new(stop) as Box<dyn Send + Sync>, stopped)
            },
        )
    }
}

#[cfg(feature = "smol")]
impl Cores<crate::SmolRuntime> {
    /// `n` smol executors, each run by a thread of its own (timers and I/O come from
    /// `async-io`'s reactor, as for every smol runtime).
    ///
    /// # Errors
    ///
    /// If a thread cannot be made.
    pub fn smol(n: usize) -> io::Result<Self> {
        Self::start(
            n,
            |tell, stopped: smol::channel::Receiver<()>| {
                // The only strong reference: the tasks' runtimes are weak, so that the
                // executor, and with it every task, goes when this thread ends.
                let executor = std::sync::Arc::new(smol::Executor::new());
                let _ = tell.send(Ok(crate::SmolRuntime::borrowed(&executor)));
                // Ends when the sender is dropped.
                let _ = smol::block_on(executor.run(stopped.recv()));
                drop(executor);
            },
            || {
                let (stop, stopped) = smol::channel::bounded::<()>(1);
                (Box::new(stop) as Box<dyn Send + Sync>, stopped)
            },
        )
    }
}

impl<R> fmt::Debug for Cores<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cores")
            .field("runtime", &std::any::type_name::<R>())
            .field("len", &self.runtimes.len())
            .finish()
    }
}

impl<R> Drop for Cores<R> {
    fn drop(&mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
