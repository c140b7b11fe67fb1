//! The server side: [`Server`] and its handle (stats, graceful shutdown). Requests go to a
//! user's [`Dispatch`] (`dispatch`); the accept loop, handshakes and watchdog live in
//! `accept`, each connection's shared state and writer in `conn`, its reader in `read`, and a
//! call's life after dispatch in `handler`.

mod accept;
mod config;
mod conn;
mod dispatch;
mod handler;
mod limit;
mod read;
mod stream;

use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use slab::Slab;

pub use self::config::{
    ServerConfig, ServerLimits, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HANDSHAKES, DEFAULT_READ_TIMEOUT,
    DEFAULT_SERVER_MAX_IN_FLIGHT, DEFAULT_WRITE_TIMEOUT,
};
use self::conn::ConnState;
pub use self::dispatch::{Dispatch, Reply, Request, Status};
pub use self::handler::{drop_reason, DropReason};
pub use self::limit::AdaptiveConcurrency;
pub use self::stream::{ReplySink, RequestStream};
use crate::{
    io::{Budget, Stop},
    runtime::Runtime,
    stats::ConnectionStats,
    transport::{Listener, Transport},
};

/// A server waiting to be started on a listener.
#[derive(Debug)]
pub struct Server<D> {
    dispatch: Arc<D>,
    config: ServerConfig,
}

impl<D: Dispatch> Server<D> {
    /// A server that hands requests to `dispatch`, with default limits.
    pub fn new(dispatch: D) -> Self {
        Self {
            dispatch: Arc::new(dispatch),
            config: ServerConfig::default(),
        }
    }

    /// Replaces the limits.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Binds `addr` on `transport` and starts serving on `rt`.
    ///
    /// # Errors
    ///
    /// If the transport cannot bind the address.
    pub async fn bind<R: Runtime, T: Transport>(
        self,
        rt: &R,
        transport: &T,
        addr: &T::Addr,
    ) -> io::Result<ServerHandle<T::Addr>> {
        let listener = transport.bind(addr).await?;
        self.serve(rt, listener)
    }

    /// Starts one server per `(runtime, listener)` pair, sharing this dispatch and
    /// configuration, under one handle ([`ServerHandle::join`]): a server per core, each
    /// runtime single-threaded and accepting on its own listener (bound to one address with
    /// `SO_REUSEPORT`), serving its connections from accept to close. Each applies the limits
    /// to its own connections. `None` if `parts` is empty.
    ///
    /// # Errors
    ///
    /// If a listener cannot tell its local address.
    pub fn serve_each<R: Runtime, L: Listener>(
        self,
        parts: impl IntoIterator<Item = (R, L)>,
    ) -> io::Result<Option<ServerHandle<L::Addr>>> {
        let mut handles = Vec::new();
        for (rt, listener) in parts {
            let server = Self {
                dispatch: self.dispatch.clone(),
                config: self.config.clone(),
            };
            let mut handle = server.serve(&rt, listener)?;
            // One dispatch, told once that the servers drain.
            handle.parts[0].drains = handles.is_empty();
            handles.push(handle);
        }
        Ok(ServerHandle::join(handles))
    }

    /// Starts serving connections from `listener` on `rt`.
    ///
    /// # Errors
    ///
    /// If the listener cannot tell its local address.
    pub fn serve<R: Runtime, L: Listener>(
        self,
        rt: &R,
        listener: L,
    ) -> io::Result<ServerHandle<L::Addr>> {
        let local_addr = listener.local_addr()?;
        let total_queued = self.config.max_queued_bytes_total;
        let limiter = self.config.adaptive_concurrency.map(limit::Limiter::new);
        let dispatch = self.dispatch.clone();
        let shared = Arc::new(Shared {
            on_drain: Box::new(move || dispatch.drain()),
            config: self.config,
            conns: Mutex::new(Slab::new()),
            accepting: Stop::default(),
            halted: Stop::default(),
            clock: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            handshakes: AtomicUsize::new(0),
            accept_loop_live: AtomicBool::new(true),
            counters: Counters::default(),
            closed_io: Mutex::default(),
            queued: Arc::new(Budget::new(total_queued)),
            limiter,
        });
        crate::runtime::spawn_task(
            rt,
            accept::accept_loop(
                rt.clone(),
                accept::AcceptLoop(shared.clone()),
                listener,
                self.dispatch,
            ),
        );
        crate::runtime::spawn_task(rt, accept::watchdog(rt.clone(), shared.clone()));
        crate::live::register_server(&local_addr, &shared);
        let sleeper = rt.clone();
        let sleep: Sleep = Arc::new(move |at| Box::pin(sleeper.sleep_until(at)));
        Ok(ServerHandle {
            parts: vec![Part {
                shared,
                sleep,
                drains: true,
            }],
            local_addr,
        })
    }
}

type Sleep = Arc<dyn Fn(Instant) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Controls a running server, or several serving one address as one (a server per core,
/// [`ServerHandle::join`]). Dropping it aborts the server.
#[must_use = "dropping the handle stops the server at once; keep it while the server should run"]
pub struct ServerHandle<A> {
    /// One server each, with a timer on its runtime.
    parts: Vec<Part>,
    local_addr: A,
}

/// One of the servers a handle controls.
struct Part {
    shared: Arc<Shared>,
    sleep: Sleep,
    /// Whether a shutdown tells this part's dispatch it drains: servers started together
    /// ([`Server::serve_each`]) share one, told once.
    drains: bool,
}

/// Counters of a running server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections accepted (including refused ones).
    pub accepted: u64,
    /// Connections open now.
    pub active: usize,
    /// Connections refused at the connection limit, or dropped at the handshake limit.
    pub refused: u64,
    /// Transport handshakes (TLS, QUIC) that failed or timed out.
    pub handshake_failures: u64,
    /// Connections closed because the peer broke the protocol (bad magic, version, frame).
    pub protocol_errors: u64,
    /// Connections closed by the idle, read or write timeout.
    pub timeouts: u64,
    /// Handler panics (each failed one call).
    pub panics: u64,
    /// Frames, reads and writes of every connection since the server started, and the
    /// buffer memory of the connections open now.
    pub io: ConnectionStats,
    /// Calls refused `OVERLOADED` by the adaptive concurrency limit (they did not run).
    pub shed: u64,
    /// The adaptive concurrency limit now, if it is on.
    pub concurrency_limit: Option<usize>,
    /// Calls running in a task of their own now (handlers that waited on something), on all
    /// connections: what a graceful shutdown waits for.
    pub in_flight: usize,
    /// Bytes of frames queued for writing on all connections now (within
    /// [`ServerConfig::max_queued_bytes_total`]).
    pub queued_bytes: usize,
}

impl ServerStats {
    /// Adds `other`'s counters to these (servers that serve as one); concurrency limits add
    /// up, as each server applies its own.
    pub fn add(&mut self, other: &Self) {
        self.accepted += other.accepted;
        self.active += other.active;
        self.refused += other.refused;
        self.handshake_failures += other.handshake_failures;
        self.protocol_errors += other.protocol_errors;
        self.timeouts += other.timeouts;
        self.panics += other.panics;
        self.io.add(&other.io);
        self.shed += other.shed;
        self.concurrency_limit = match (self.concurrency_limit, other.concurrency_limit) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.in_flight += other.in_flight;
        self.queued_bytes += other.queued_bytes;
    }
}

impl crate::live::Source for Shared {
    fn snapshot(&self) -> crate::live::Snapshot {
        crate::live::Snapshot::Server(self.stats())
    }

    fn connections(&self) -> Vec<ServerConnection> {
        Shared::connections(self)
    }

    fn limits(&self) -> Option<ServerLimits> {
        Some(self.config.limits())
    }
}

/// One open connection of a server, as [`ServerHandle::connections`] lists it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConnection {
    /// The client's address, as the transport's address type prints it (`Debug`).
    pub peer: Arc<str>,
    /// How long it has been open.
    pub age: Duration,
    /// Calls running now.
    pub in_flight: usize,
    /// Streaming calls open now.
    pub streams: usize,
    /// What replies are compressed with, once the client's hello agreed on it.
    pub compression: Option<crate::compress::Compression>,
    /// Its I/O counters.
    pub io: ConnectionStats,
}

impl<A> ServerHandle<A> {
    /// One handle over `handles`, servers that serve one address together (one per core,
    /// each on its own runtime and listener): its stats are their sums, its connections all
    /// of theirs, and shutting it down drains them all at once. The address is the first
    /// one's. `None` if `handles` is empty.
    pub fn join(handles: impl IntoIterator<Item = Self>) -> Option<Self> {
        let mut handles = handles.into_iter();
        let mut first = handles.next()?;
        for mut handle in handles {
            first.parts.append(&mut handle.parts);
        }
        Some(first)
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> &A {
        &self.local_addr
    }

    /// How many servers this handle controls: 1, or as many as were [joined](Self::join).
    pub fn servers(&self) -> usize {
        self.parts.len()
    }

    /// A snapshot of the server's counters (summed over joined servers).
    pub fn stats(&self) -> ServerStats {
        let mut stats = ServerStats::default();
        for part in &self.parts {
            stats.add(&part.shared.stats());
        }
        stats
    }

    /// The server's limits, as its configuration set them (the first joined server's: each
    /// applies them to its own connections).
    pub fn limits(&self) -> ServerLimits {
        self.parts[0].shared.config.limits()
    }

    /// Each connection open now: its peer, age, calls and streams running, compression and
    /// I/O counters.
    pub fn connections(&self) -> Vec<ServerConnection> {
        self.parts
            .iter()
            .flat_map(|part| part.shared.connections())
            .collect()
    }

    /// The I/O counters of each connection open now.
    pub fn connection_stats(&self) -> Vec<ConnectionStats> {
        self.parts
            .iter()
            .flat_map(|part| part.shared.connection_stats())
            .collect()
    }

    /// Stops gracefully: stops accepting, tells every peer `GoAway` (their new calls fail
    /// without running), lets calls in flight finish for up to `grace`, then closes whatever
    /// is left. A peer it was accepting as it stopped is served and drained too: its transport
    /// handshake goes on (within `ServerConfig::handshake_timeout` and `grace`), then its
    /// hello and a `GoAway`. Resolves when every connection is closed (its tasks ended) and
    /// no handshake is under way. Joined servers drain together, under one deadline, timed on
    /// the first one's runtime (which must still run).
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for part in &self.parts {
            let shared = &part.shared;
            shared.draining.store(true, Ordering::SeqCst);
            shared.accepting.stop();
            if part.drains {
                (shared.on_drain)();
            }
            let conns: Vec<_> = shared.conns.lock().iter().map(|(_, c)| c.clone()).collect();
            conns.iter().for_each(|conn| conn.drain());
        }
        let sleep = &self.parts[0].sleep;
        while !self.is_closed(true) && Instant::now() < deadline {
            let step = (Instant::now() + Duration::from_millis(5)).min(deadline);
            sleep(step).await;
        }
        self.abort();
        // Aborted connections end at once: their tasks only have to notice. A peer an accept
        // loop takes from now on is closed before its hello; the loop is not waited for (its
        // runtime may no longer run it).
        while !self.is_closed(false) {
            sleep(Instant::now() + Duration::from_millis(1)).await;
        }
    }

    /// Whether no connection is open on any of the servers, nor being accepted: with
    /// `accept_loops`, the accept loops ended too. A peer is held by the accept loop until it
    /// is counted in `handshakes`, and counted there until its connection is in the table;
    /// reading them in that order, the loop first, misses none.
    fn is_closed(&self, accept_loops: bool) -> bool {
        self.parts.iter().all(|part| {
            let shared = &part.shared;
            !(accept_loops && shared.accept_loop_live.load(Ordering::SeqCst))
                && shared.handshakes.load(Ordering::SeqCst) == 0
                && shared.conns.lock().is_empty()
        })
    }

    /// Stops at once: closes every connection, and the listener once its accept loop next
    /// runs; calls in flight are lost and their callers see a connection error.
    pub fn abort(&self) {
        for part in &self.parts {
            let shared = &part.shared;
            shared.accepting.stop();
            shared.halted.stop();
            for (_, conn) in shared.conns.lock().iter() {
                conn.stop.stop();
            }
        }
    }
}

impl<A: fmt::Debug> fmt::Debug for ServerHandle<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<A> Drop for ServerHandle<A> {
    fn drop(&mut self) {
        self.abort();
    }
}

/// State shared by a server's tasks and its handle.
pub(crate) struct Shared {
    /// Tells the dispatch that a graceful shutdown began.
    on_drain: Box<dyn Fn() + Send + Sync>,
    config: ServerConfig,
    conns: Mutex<Slab<Arc<ConnState>>>,
    /// Ends the accept loop: set by `shutdown` and by `abort`.
    accepting: Stop,
    /// Set by `abort` only: ends the watchdog, handshakes under way and lingering closes, and
    /// tells a connection accepted as the server stopped to close rather than drain.
    halted: Stop,
    /// The watchdog's coarse clock: periods since start, from 1.
    clock: AtomicU64,
    draining: AtomicBool,
    /// Peers accepted and not yet in `conns` (their transport handshake under way); one past
    /// `max_handshakes` for a moment when a peer is refused. `shutdown` waits for them.
    handshakes: AtomicUsize,
    /// The accept loop has not ended: it may hold a peer it took and has not counted yet.
    accept_loop_live: AtomicBool,
    counters: Counters,
    /// I/O counters of the connections that have closed.
    closed_io: Mutex<ConnectionStats>,
    /// Bytes queued for writing on all connections, within `max_queued_bytes_total`.
    queued: Arc<Budget>,
    /// The adaptive concurrency limit, if on.
    limiter: Option<limit::Limiter>,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    handshake_failures: AtomicU64,
    protocol_errors: AtomicU64,
    timeouts: AtomicU64,
    panics: AtomicU64,
    shed: AtomicU64,
}

impl Shared {
    fn stats(&self) -> ServerStats {
        let c = &self.counters;
        let (active, in_flight) = {
            let conns = self.conns.lock();
            let in_flight = conns.iter().map(|(_, conn)| conn.in_flight()).sum();
            (conns.len(), in_flight)
        };
        let mut io = *self.closed_io.lock();
        for stats in self.connection_stats() {
            io.add(&stats);
        }
        ServerStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            active,
            refused: c.refused.load(Ordering::Relaxed),
            handshake_failures: c.handshake_failures.load(Ordering::Relaxed),
            protocol_errors: c.protocol_errors.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            panics: c.panics.load(Ordering::Relaxed),
            io,
            shed: c.shed.load(Ordering::Relaxed),
            concurrency_limit: self.limiter.as_ref().map(limit::Limiter::limit),
            in_flight,
            queued_bytes: self.queued.used(),
        }
    }

    fn connection_stats(&self) -> Vec<ConnectionStats> {
        let conns = self.conns.lock();
        conns
            .iter()
            .map(|(_, conn)| conn.out.counters().into())
            .collect()
    }

    fn connections(&self) -> Vec<ServerConnection> {
        let conns = self.conns.lock();
        conns
            .iter()
            .map(|(_, conn)| ServerConnection {
                peer: conn.peer.text().clone(),
                age: conn.opened.elapsed(),
                in_flight: conn.in_flight(),
                streams: conn.streams.lock().len(),
                compression: conn.out.compression(),
                io: conn.out.counters().into(),
            })
            .collect()
    }

    fn now(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    fn handshake_failed(&self, error: &io::Error) {
        Self::count(&self.counters.handshake_failures);
        tracing::debug!(%error, "transport handshake failed");
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
