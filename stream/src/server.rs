//! The server side: an accept loop, per-connection reader and writer tasks, a watchdog that
//! enforces timeouts, and graceful shutdown. Requests go to a user's [`Dispatch`].

mod config;
mod conn;
mod limit;
mod stream;

use std::{
    borrow::Cow,
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

use bytes::Bytes;
use futures_lite::FutureExt;
use parking_lot::Mutex;
use slab::Slab;

pub use self::config::{
    ServerConfig, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HANDSHAKES, DEFAULT_READ_TIMEOUT, DEFAULT_SERVER_MAX_IN_FLIGHT,
    DEFAULT_WRITE_TIMEOUT,
};
use self::conn::ConnState;
pub use self::limit::AdaptiveConcurrency;
pub use self::stream::{ReplySink, RequestStream};
use crate::{
    error::ErrorCode,
    io::{Budget, Stop, READER, TIMER},
    metadata::Metadata,
    runtime::Runtime,
    stats::ConnectionStats,
    transport::{Listener, Transport},
};

/// Routes requests to handlers. Implemented by generated service servers, or by hand for
/// proxies, routers and gateways that work on raw method ids and payload bytes.
///
/// # Examples
///
/// ```
/// use std::future::{ready, Ready};
/// use flumen_stream::{Bytes, Dispatch, ErrorCode, Reply, Request, Status};
///
/// /// Echoes method 1, refuses everything else.
/// struct Echo;
///
/// impl Dispatch for Echo {
///     type Future = Ready<Result<Reply, Status>>;
///
///     fn dispatch(&self, request: Request) -> Self::Future {
///         ready(match request.method() {
///             1 => Ok(request.into_body().into()),
///             _ => Err(Status::new(ErrorCode::UNKNOWN_METHOD, "no such method")),
///         })
///     }
/// }
/// ```
pub trait Dispatch: Send + Sync + 'static {
    /// The handler's future; resolves to the reply body (a [`Reply`]; `Bytes` convert with
    /// `into()`) or an error status.
    type Future: Future<Output = Result<Reply, Status>> + Send + 'static;

    /// Starts handling `request`. Many calls of one connection run at once; a panic while
    /// polling the future fails that call with `HANDLER_PANIC` and nothing else.
    fn dispatch(&self, request: Request) -> Self::Future;
}

/// One incoming call, as the server hands it to [`Dispatch`].
#[derive(Clone, Debug)]
pub struct Request {
    method: u32,
    seq: u64,
    body: Bytes,
    timeout: Option<Duration>,
    stream: Option<stream::CallStream>,
    metadata: Metadata,
}

impl Request {
    /// A request (for tests of `Dispatch` implementations).
    pub fn new(method: u32, body: Bytes, timeout: Option<Duration>) -> Self {
        Self {
            method,
            seq: 0,
            body,
            timeout,
            stream: None,
            metadata: Metadata::new(),
        }
    }

    /// The same request carrying `metadata` (for tests of `Dispatch` implementations).
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The metadata the caller sent (empty if none).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The method id.
    pub fn method(&self) -> u32 {
        self.method
    }

    /// The sequence id the client chose (unique among its calls in flight).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The request body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Takes the body.
    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// The timeout the caller set, counted from when the request was sent.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The client's items, for a client-streaming or bidirectional call (`None` otherwise).
    /// Take it once: clones share the same items.
    pub fn items(&self) -> Option<RequestStream> {
        self.stream.as_ref().and_then(stream::CallStream::items)
    }

    /// Where to send items, for a server-streaming or bidirectional call (`None` otherwise).
    pub fn sink(&self) -> Option<ReplySink> {
        self.stream.as_ref().and_then(stream::CallStream::sink)
    }
}

/// A successful reply's body: one part, or a message and an attachment that are written to the
/// socket back to back (vectored) without being joined, so a large attachment is never copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    head: Bytes,
    tail: Bytes,
}

impl Reply {
    /// A reply of `head` followed by `tail` on the wire.
    pub fn parts(head: Bytes, tail: Bytes) -> Self {
        Self { head, tail }
    }

    /// The body's length.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The two parts.
    pub fn into_parts(self) -> (Bytes, Bytes) {
        (self.head, self.tail)
    }
}

impl From<Bytes> for Reply {
    fn from(head: Bytes) -> Self {
        Self {
            head,
            tail: Bytes::new(),
        }
    }
}

/// A failed reply: an error code and a message for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    code: ErrorCode,
    message: Cow<'static, str>,
    /// The body sent instead of the message (an encoded application error value).
    details: Option<Bytes>,
}

impl Status {
    /// A status with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// An application error (`APPLICATION`) with `message`.
    pub fn application(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::APPLICATION, message)
    }

    /// An application error (`APPLICATION`) whose wire body is `value`, the method's own
    /// error encoded by the codec; `message` is for logs on this side.
    pub fn application_value(message: impl Into<Cow<'static, str>>, value: Bytes) -> Self {
        Self {
            details: Some(value),
            ..Self::new(ErrorCode::APPLICATION, message)
        }
    }

    /// The error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_body(self) -> Bytes {
        if let Some(details) = self.details {
            return details;
        }
        match self.message {
            Cow::Borrowed(s) => Bytes::from_static(s.as_bytes()),
            Cow::Owned(s) => Bytes::from(s),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

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
        let shared = Arc::new(Shared {
            config: self.config,
            conns: Mutex::new(Slab::new()),
            accepting: Stop::default(),
            halted: Stop::default(),
            clock: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            handshakes: AtomicUsize::new(0),
            counters: Counters::default(),
            closed_io: Mutex::default(),
            queued: Arc::new(Budget::new(total_queued)),
            limiter,
        });
        rt.spawn(accept_loop(
            rt.clone(),
            shared.clone(),
            listener,
            self.dispatch,
        ));
        rt.spawn(watchdog(rt.clone(), shared.clone()));
        let sleeper = rt.clone();
        let sleep: Sleep = Arc::new(move |at| Box::pin(sleeper.sleep_until(at)));
        Ok(ServerHandle {
            shared,
            local_addr,
            sleep,
        })
    }
}

type Sleep = Arc<dyn Fn(Instant) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Controls a running server. Dropping it aborts the server.
pub struct ServerHandle<A> {
    shared: Arc<Shared>,
    local_addr: A,
    sleep: Sleep,
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

impl<A> ServerHandle<A> {
    /// The address the server listens on.
    pub fn local_addr(&self) -> &A {
        &self.local_addr
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        let (active, in_flight) = {
            let conns = self.shared.conns.lock();
            let in_flight = conns.iter().map(|(_, conn)| conn.in_flight()).sum();
            (conns.len(), in_flight)
        };
        ServerStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            active,
            refused: c.refused.load(Ordering::Relaxed),
            handshake_failures: c.handshake_failures.load(Ordering::Relaxed),
            protocol_errors: c.protocol_errors.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            panics: c.panics.load(Ordering::Relaxed),
            io: self.io(),
            shed: c.shed.load(Ordering::Relaxed),
            concurrency_limit: self.shared.limiter.as_ref().map(limit::Limiter::limit),
            in_flight,
            queued_bytes: self.shared.queued.used(),
        }
    }

    /// The counters of each connection open now.
    pub fn connection_stats(&self) -> Vec<ConnectionStats> {
        let conns = self.shared.conns.lock();
        conns
            .iter()
            .map(|(_, conn)| conn.out.counters().into())
            .collect()
    }

    fn io(&self) -> ConnectionStats {
        let mut total = *self.shared.closed_io.lock();
        for stats in self.connection_stats() {
            total.add(&stats);
        }
        total
    }

    /// Stops gracefully: stops accepting, tells every peer `GoAway` (their new calls fail
    /// without running), lets calls in flight finish for up to `grace`, then closes whatever
    /// is left. Resolves when every connection is closed (its tasks ended).
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.accepting.stop();
        let conns: Vec<_> = self
            .shared
            .conns
            .lock()
            .iter()
            .map(|(_, c)| c.clone())
            .collect();
        conns.iter().for_each(|conn| conn.drain());
        while !self.shared.conns.lock().is_empty() && Instant::now() < deadline {
            let step = (Instant::now() + Duration::from_millis(5)).min(deadline);
            (self.sleep)(step).await;
        }
        self.abort();
        // Aborted connections end at once: their tasks only have to notice.
        while !self.shared.conns.lock().is_empty() {
            (self.sleep)(Instant::now() + Duration::from_millis(1)).await;
        }
    }

    /// Stops at once: closes the listener and every connection; calls in flight are lost and
    /// their callers see a connection error.
    pub fn abort(&self) {
        self.shared.accepting.stop();
        self.shared.halted.stop();
        for (_, conn) in self.shared.conns.lock().iter() {
            conn.stop.stop();
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
    config: ServerConfig,
    conns: Mutex<Slab<Arc<ConnState>>>,
    /// Ends the accept loop.
    accepting: Stop,
    /// Ends the watchdog.
    halted: Stop,
    /// The watchdog's coarse clock: periods since start, from 1.
    clock: AtomicU64,
    draining: AtomicBool,
    /// Transport handshakes in progress.
    handshakes: AtomicUsize,
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

async fn accept_loop<R: Runtime, L: Listener, D: Dispatch>(
    rt: R,
    shared: Arc<Shared>,
    mut listener: L,
    dispatch: Arc<D>,
) {
    loop {
        let accepted = match shared.accepting.guard(READER, listener.accept()).await {
            None => return,
            Some(accepted) => accepted,
        };
        let (connecting, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                let later = Instant::now() + Duration::from_millis(10);
                if shared
                    .accepting
                    .guard(READER, rt.sleep_until(later))
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
        };
        Shared::count(&shared.counters.accepted);
        tracing::debug!(?peer, "accepted connection");
        // The handshake slot is taken before any handshake work (even its first step).
        if shared.handshakes.fetch_add(1, Ordering::SeqCst) >= shared.config.max_handshakes {
            shared.handshakes.fetch_sub(1, Ordering::SeqCst);
            Shared::count(&shared.counters.refused);
            tracing::debug!(?peer, "dropped at the handshake limit");
            continue;
        }
        let mut connecting = Box::pin(connecting);
        // Transports without a handshake (TCP) are ready now: no task, no timer.
        let ready = futures_lite::future::poll_once(connecting.as_mut()).await;
        if ready.is_some() {
            shared.handshakes.fetch_sub(1, Ordering::SeqCst);
        }
        match ready {
            Some(Ok((reader, writer))) => conn::start(&rt, &shared, &dispatch, reader, writer),
            Some(Err(e)) => shared.handshake_failed(&e),
            None => {
                rt.spawn(handshake(
                    rt.clone(),
                    shared.clone(),
                    dispatch.clone(),
                    connecting,
                ));
            }
        }
    }
}

/// Finishes one transport handshake within the handshake timeout, then serves the connection.
async fn handshake<R, D, Rd, Wr>(
    rt: R,
    shared: Arc<Shared>,
    dispatch: Arc<D>,
    connecting: Pin<Box<impl Future<Output = io::Result<(Rd, Wr)>>>>,
) where
    R: Runtime,
    D: Dispatch,
    Rd: crate::transport::TransportRead,
    Wr: futures_io::AsyncWrite + Unpin + Send + 'static,
{
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let timeout = async {
        rt.sleep_until(deadline).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "transport handshake timed out",
        ))
    };
    let stopped = async {
        shared.accepting.ended().await;
        Err(io::Error::other("server stopped"))
    };
    let outcome = connecting.or(timeout).or(stopped).await;
    shared.handshakes.fetch_sub(1, Ordering::SeqCst);
    match outcome {
        Ok((reader, writer)) if !shared.accepting.is_stopped() => {
            conn::start(&rt, &shared, &dispatch, reader, writer);
        }
        Ok(_) => {}
        Err(e) => shared.handshake_failed(&e),
    }
}

async fn watchdog<R: Runtime>(rt: R, shared: Arc<Shared>) {
    let config = &shared.config;
    let period = config.watchdog_period();
    let periods = |d: Duration| (d.as_nanos().div_ceil(period.as_nanos()) as u64).max(1);
    let limits = conn::Limits {
        idle: periods(config.idle_timeout),
        read: periods(config.read_timeout),
        write: periods(config.write_timeout),
        keepalive: config.keepalive.is_some(),
    };
    let mut next = Instant::now();
    loop {
        next += period;
        if shared
            .halted
            .guard(TIMER, rt.sleep_until(next))
            .await
            .is_none()
        {
            return;
        }
        let now = shared.clock.fetch_add(1, Ordering::Relaxed) + 1;
        for (_, conn) in shared.conns.lock().iter() {
            if let Some(code) = conn.overdue(now, &limits) {
                tracing::debug!(%code, "closing connection");
                Shared::count(&shared.counters.timeouts);
            }
        }
    }
}
