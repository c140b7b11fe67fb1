//! The client side of a connection: a cloneable handle whose calls are multiplexed on one
//! full-duplex connection.
//!
//! A call takes a slot from the window (waiting if all are taken), records itself in the call
//! table, hands its request frame to the writer task through the connection's outbox, and waits for
//! the reader task (reply), the timer task (deadline) or the connection's end to resolve it.

mod config;
mod driver;
mod exchange;
mod stream;

use std::{
    collections::HashMap,
    fmt,
    future::{poll_fn, Future},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    task::Poll,
    time::{Duration, Instant},
};

use bytes::Bytes;

#[allow(deprecated)]
pub use self::config::DEFAULT_MAX_IN_FLIGHT;
pub use self::config::{
    ClientConfig, DEFAULT_CLIENT_MAX_IN_FLIGHT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_TICK, DEFAULT_TIMEOUT,
    MAX_WINDOW,
};
pub use self::stream::{ReplyStream, RequestSender, StreamMode};
// `CallOptions` is defined below.
use crate::{
    call::CallTable,
    error::{CallError, ConnectError, ConnectionError, ErrorCode},
    frame::{FrameHeader, FrameKind},
    io::{Outbox, Outgoing, Quiet, Stop},
    metadata::{Metadata, MetadataError},
    proto,
    runtime::Runtime,
    signal::TimerGate,
    stats::ConnectionStats,
    streaming::StreamState,
    sync::{Event, EventListener, Mutex},
    trace::{self, Peer},
    transport::Transport,
};

/// A connection to a Flumen server. Cheap to clone; every clone shares the connection.
///
/// Calls from many tasks (or threads, with the `_blocking` methods) are in flight at once, up to
/// the window; replies may come back in any order. Dropping the last clone closes the
/// connection, failing calls still in flight with a connection error.
#[derive(Clone)]
#[must_use = "dropping the last clone closes the connection"]
pub struct Client {
    handle: Arc<Handle>,
}

/// Closes the connection when the last `Client` clone goes.
struct Handle {
    conn: Arc<Conn>,
}

impl crate::live::Source for Conn {
    fn snapshot(&self) -> crate::live::Snapshot {
        crate::live::Snapshot::Connection(self.out.counters().into())
    }
}

/// State shared by a connection's callers and its reader, writer and timer tasks.
pub(crate) struct Conn {
    table: Mutex<CallTable>,
    /// Set once `table` refuses new calls (the connection drains or ended), so that
    /// [`Client::is_closed`] reads an atomic instead of taking the table's lock.
    refusing: AtomicBool,
    /// Callers waiting for a slot of the window (the table hands slots out).
    window_free: Event,
    /// Frames for the writer task.
    out: Outbox,
    stop: Stop,
    /// Asks the reader and writer to give their buffers back.
    quiet: Quiet,
    timer: TimerGate,
    clock: Clock,
    default_timeout: Option<Duration>,
    /// The server's limit on request bodies.
    peer_max_frame_len: u32,
    window: usize,
    /// Open streaming calls by sequence id, for the reader to route stream frames.
    streams: Mutex<HashMap<u64, Arc<StreamState>>>,
    /// How many entries `streams` has: replies to unary calls skip its lock while it is 0.
    open_streams: AtomicUsize,
    /// Receive window of each streaming call, in bytes.
    stream_window: u32,
    /// Keep-alive interval and timeout, in ticks (see `ClientConfig::keepalive`).
    keepalive: Option<(u64, u64)>,
    /// Pings sent by [`Client::ping`], by token.
    pings: Mutex<Pings>,
    /// The server's address, as call spans show it.
    peer: Peer,
}

/// The top bit of the `seq` of a [`Client::ping`]: its `Pong` is told apart from the answers to
/// keep-alive pings (whose `seq` is a small tick count).
pub(crate) const PING_TOKEN: u64 = 1 << 63;

/// Pings waiting for their `Pong`.
#[derive(Default)]
pub(crate) struct Pings {
    next: u64,
    /// `None` once answered; otherwise the waiting caller.
    waiting: HashMap<u64, Option<Option<std::task::Waker>>>,
}

/// Converts instants to deadline ticks, in `u64` nanoseconds (a `u128` division on every
/// call costs more than the clock read).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    epoch: Instant,
    tick: Duration,
    /// `tick` in nanoseconds, at least 1.
    tick_nanos: u64,
}

/// `d` in nanoseconds, saturating (at about 584 years).
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

impl Clock {
    /// A clock counting ticks of `tick` from now.
    fn new(tick: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            tick,
            tick_nanos: nanos(tick).max(1),
        }
    }

    pub(crate) fn now_tick(&self) -> u64 {
        self.ticks_at(Instant::now())
    }

    /// Ticks elapsed at `at`, rounded down.
    pub(crate) fn ticks_at(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.epoch)) / self.tick_nanos
    }

    /// The tick at which a call made now with `timeout` expires (rounded up, so never early).
    fn deadline(&self, timeout: Duration) -> u64 {
        let at = nanos(Instant::now().saturating_duration_since(self.epoch));
        at.saturating_add(nanos(timeout)).div_ceil(self.tick_nanos)
    }

    /// The instant tick `tick` begins.
    pub(crate) fn instant_of(&self, tick: u64) -> Instant {
        self.epoch + Duration::from_nanos(tick.saturating_mul(self.tick_nanos))
    }
}

/// Per-call settings beyond method and body: the timeout and the metadata that travel with
/// the request.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    timeout: Option<Option<Duration>>,
    metadata: Option<Bytes>,
}

impl CallOptions {
    /// Options that change nothing: the client's default timeout, no metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// The call's timeout (`None`: no deadline) instead of the client's default.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends `metadata` with the call (the server reads it from the request).
    ///
    /// # Errors
    ///
    /// If the metadata exceeds [`MAX_METADATA_ENTRIES`](crate::metadata::MAX_METADATA_ENTRIES)
    /// or [`MAX_METADATA_LEN`](crate::metadata::MAX_METADATA_LEN).
    pub fn metadata(mut self, metadata: &Metadata) -> Result<Self, MetadataError> {
        self.metadata = (!metadata.is_empty())
            .then(|| metadata.encode())
            .transpose()?;
        Ok(self)
    }

    /// Adds one entry to the metadata these options send (after those already set).
    ///
    /// # Errors
    ///
    /// As [`metadata`](Self::metadata): the entry would take the metadata past its limits.
    pub fn with_entry(
        mut self,
        key: impl Into<String>,
        value: impl Into<Bytes>,
    ) -> Result<Self, MetadataError> {
        let mut metadata = match &self.metadata {
            Some(block) => Metadata::decode(&mut block.clone())?,
            None => Metadata::new(),
        };
        metadata.insert(key, value);
        self.metadata = Some(metadata.encode()?);
        Ok(self)
    }

    /// The timeout these options set: `None` if they keep the client's default, `Some(None)`
    /// for no deadline.
    pub fn timeout_setting(&self) -> Option<Option<Duration>> {
        self.timeout
    }

    fn timeout_or(&self, default: Option<Duration>) -> Option<Duration> {
        self.timeout.unwrap_or(default)
    }
}

impl Client {
    /// Connects to `addr` over `transport`, runs the handshake, and starts the connection's
    /// tasks on `rt`.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] if the transport fails, the peer is not a compatible Flumen server,
    /// the server refuses the connection, or it all takes longer than the connect timeout.
    pub async fn connect<R: Runtime, T: Transport>(
        rt: &R,
        transport: &T,
        addr: &T::Addr,
        config: ClientConfig,
    ) -> Result<Self, ConnectError> {
        driver::connect(rt, transport, addr, config).await
    }

    /// Calls `method` with `body` and the default timeout; resolves to the reply body.
    ///
    /// # Errors
    ///
    /// [`CallError`]: timeout, connection failure, a request over the server's size limit, or
    /// an error answered by the server.
    pub fn call(
        &self,
        method: u32,
        body: Bytes,
    ) -> impl Future<Output = Result<Bytes, CallError>> + Send + '_ {
        let timeout = self.handle.conn.default_timeout;
        self.exchange(method, (body, Bytes::new()), timeout, None)
    }

    /// Calls `method` with `body`; `timeout` of `None` waits until the reply or the end of the
    /// connection. Dropping the future before it resolves cancels the call (a `Cancel` frame
    /// tells the server).
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub fn call_with_timeout(
        &self,
        method: u32,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Bytes, CallError>> + Send + '_ {
        self.exchange(method, (body, Bytes::new()), timeout, None)
    }

    /// Calls `method` with `body` and `options` (timeout, metadata).
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub fn call_with_options(
        &self,
        method: u32,
        body: Bytes,
        options: &CallOptions,
    ) -> impl Future<Output = Result<Bytes, CallError>> + Send + '_ {
        self.call_parts(method, body, Bytes::new(), options)
    }

    /// The former name of [`call_with_options`](Self::call_with_options).
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    #[deprecated(
        since = "0.1.1",
        note = "renamed `call_with_options`, as on the typed client"
    )]
    pub fn call_with(
        &self,
        method: u32,
        body: Bytes,
        options: &CallOptions,
    ) -> impl Future<Output = Result<Bytes, CallError>> + Send + '_ {
        self.call_with_options(method, body, options)
    }

    /// Calls `method` with a body of `head` followed by `tail`, written back to back without
    /// being joined (a large `tail`, such as an attachment, is never copied).
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub fn call_parts(
        &self,
        method: u32,
        head: Bytes,
        tail: Bytes,
        options: &CallOptions,
    ) -> impl Future<Output = Result<Bytes, CallError>> + Send + '_ {
        let timeout = options.timeout_or(self.handle.conn.default_timeout);
        self.exchange(method, (head, tail), timeout, options.metadata.clone())
    }

    /// One call: the body in two parts, the timeout, the encoded metadata. Every async call
    /// method is this one future, with no layers of futures around it.
    fn exchange(
        &self,
        method: u32,
        (head, tail): (Bytes, Bytes),
        timeout: Option<Duration>,
        metadata: Option<Bytes>,
    ) -> exchange::Exchange<'_> {
        let request = exchange::Request {
            method,
            head,
            tail,
            timeout,
            metadata,
        };
        exchange::Exchange::new(&self.handle.conn, request)
    }

    /// [`call`](Self::call) from a plain thread, blocking it until the call resolves or its
    /// deadline passes (whether or not the connection's tasks run). Needs no runtime in the
    /// calling thread.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call); and [`CallError::BlockingInAsync`] at once on a thread that
    /// runs async tasks (see [`check_blocking`](crate::check_blocking)), where it could wait
    /// for a reply that only this thread would read.
    pub fn call_blocking(&self, method: u32, body: Bytes) -> Result<Bytes, CallError> {
        self.call_blocking_with_options(method, body, &CallOptions::new())
    }

    /// [`call_with_timeout`](Self::call_with_timeout) from a plain thread.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub fn call_blocking_with_timeout(
        &self,
        method: u32,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Bytes, CallError> {
        self.call_blocking_with_options(method, body, &CallOptions::new().timeout(timeout))
    }

    /// [`call_with_options`](Self::call_with_options) from a plain thread.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub fn call_blocking_with_options(
        &self,
        method: u32,
        body: Bytes,
        options: &CallOptions,
    ) -> Result<Bytes, CallError> {
        self.call_blocking_parts(method, body, Bytes::new(), options)
    }

    /// The former name of [`call_blocking_with_options`](Self::call_blocking_with_options).
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    #[deprecated(
        since = "0.1.1",
        note = "renamed `call_blocking_with_options`, as on the typed client"
    )]
    pub fn call_blocking_with(
        &self,
        method: u32,
        body: Bytes,
        options: &CallOptions,
    ) -> Result<Bytes, CallError> {
        self.call_blocking_with_options(method, body, options)
    }

    /// [`call_parts`](Self::call_parts) from a plain thread.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub fn call_blocking_parts(
        &self,
        method: u32,
        head: Bytes,
        tail: Bytes,
        options: &CallOptions,
    ) -> Result<Bytes, CallError> {
        crate::check_blocking()?;
        let conn = &*self.handle.conn;
        conn.check_len(head.len() + tail.len(), options.metadata.as_ref())?;
        let timeout = options.timeout_or(conn.default_timeout);
        let deadline = timeout.map(|t| (conn.clock.deadline(t), t));
        let expires = timeout.map(|t| (Instant::now() + t, t));
        // Every wait below ends at the deadline, whether or not a task of the connection runs.
        let (slot, seq, alone) = conn.start_blocking(deadline, expires)?;
        let mut guard = SlotGuard::begun(conn, slot);
        let request = conn.request(
            method,
            seq,
            timeout,
            0,
            (head, tail),
            options.metadata.as_ref(),
        );
        // The only call in flight: written from this thread if the writer task is parked.
        let sent = conn
            .out
            .send_blocking(request, expires.map(|(at, _)| at), alone);
        let waited = match sent {
            Some(_) => conn.wait_outcome(slot, expires),
            None => Err(CallError::Timeout(timeout.unwrap_or_default())),
        };
        let outcome = match waited {
            Ok(outcome) => outcome,
            Err(timeout) => {
                conn.abandon(slot, ErrorCode::DEADLINE_EXCEEDED);
                Err(timeout)
            }
        };
        guard.released();
        conn.out.caller_resumed();
        outcome
    }

    /// The number of calls this connection keeps in flight at most.
    pub fn window(&self) -> usize {
        self.handle.conn.window
    }

    /// The connection's counters: frames and writes each way (how well calls are batched),
    /// and the buffer memory it holds now.
    pub fn stats(&self) -> ConnectionStats {
        self.handle.conn.out.counters().into()
    }

    /// Sends a `Ping` and waits for its `Pong`: proof that the server still reads and answers
    /// on this connection (health checks of idle connections, which keep-alive leaves alone).
    /// Returns the round trip. The caller bounds the wait (a dead peer never answers).
    ///
    /// # Errors
    ///
    /// The connection's error if it ends before the answer.
    pub async fn ping(&self) -> Result<Duration, ConnectionError> {
        let conn = &*self.handle.conn;
        let started = Instant::now();
        let token = {
            let mut pings = conn.pings.lock();
            pings.next += 1;
            let token = PING_TOKEN | pings.next;
            pings.waiting.insert(token, Some(None));
            token
        };
        // A ping given up on (its future dropped) is forgotten.
        struct Forget<'a>(&'a Conn, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.pings.lock().waiting.remove(&self.1);
            }
        }
        let _forget = Forget(conn, token);
        let ping = FrameHeader::new(FrameKind::Ping, token);
        if !conn.out.send(Outgoing::frame(ping, Bytes::new())).await {
            return Err(conn.closed_error());
        }
        poll_fn(|cx| {
            if let Some(error) = conn.table.lock().refusing().cloned() {
                return Poll::Ready(Err(error));
            }
            let mut pings = conn.pings.lock();
            match pings.waiting.get_mut(&token) {
                Some(None) => Poll::Ready(Ok(started.elapsed())),
                Some(Some(waker)) => {
                    *waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                None => Poll::Ready(Err(ConnectionError::Closed)),
            }
        })
        .await
    }

    /// Whether the connection has ended or is draining (new calls fail at once).
    pub fn is_closed(&self) -> bool {
        self.handle.conn.refusing.load(Ordering::Acquire)
    }

    /// Closes the connection now: calls in flight fail with [`ConnectionError::Closed`].
    pub fn close(&self) {
        self.handle.conn.close(ConnectionError::Closed);
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("window", &self.window())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.conn.close(ConnectionError::Closed);
    }
}

impl Conn {
    /// The state of a connection with `window` slots whose frames go out through `out` and
    /// whose server takes request bodies up to `peer_max_frame_len`; its tasks start apart.
    pub(crate) fn new(
        window: usize,
        out: Outbox,
        config: &ClientConfig,
        peer_max_frame_len: u32,
        peer: Peer,
    ) -> Self {
        let ticks = |d: Duration| d.as_nanos().div_ceil(config.tick.as_nanos()) as u64;
        Self {
            table: Mutex::new(CallTable::new(window, 0)),
            refusing: AtomicBool::new(false),
            window_free: Event::new(),
            out,
            stop: Stop::default(),
            quiet: Quiet::default(),
            timer: TimerGate::default(),
            clock: Clock::new(config.tick),
            default_timeout: config.default_timeout,
            peer_max_frame_len,
            window,
            streams: Mutex::new(HashMap::new()),
            pings: Mutex::new(Pings::default()),
            open_streams: AtomicUsize::new(0),
            stream_window: config.stream_window,
            keepalive: config
                .keepalive
                .map(|(interval, timeout)| (ticks(interval), ticks(timeout))),
            peer,
        }
    }

    fn check_request(&self, body: &Bytes, options: &CallOptions) -> Result<(), CallError> {
        self.check_len(body.len(), options.metadata.as_ref())
    }

    fn check_len(&self, body_len: usize, metadata: Option<&Bytes>) -> Result<(), CallError> {
        let len = body_len + metadata.map_or(0, Bytes::len);
        if len > self.peer_max_frame_len as usize {
            return Err(CallError::RequestTooLarge {
                len,
                max: self.peer_max_frame_len,
            });
        }
        Ok(())
    }

    /// Takes a slot of the window (waiting while every slot is in use) and begins a call in
    /// it, with one lock of the call table: returns the slot and the call's sequence id. With
    /// `wake`, the task's waker is kept, so that a reply that comes before the caller looks
    /// for it wakes the caller.
    pub(crate) async fn start(
        &self,
        deadline: Option<(u64, Duration)>,
        wake: bool,
    ) -> Result<(u32, u64), CallError> {
        let mut waiting = Waiting::new(self);
        loop {
            let attempt = poll_fn(|cx| {
                let waker = wake.then(|| cx.waker());
                Poll::Ready(self.try_start(&mut waiting.counted, deadline, waker))
            });
            match attempt.await? {
                Ok((slot, seq, _)) => return Ok((slot, seq)),
                Err(listener) => listener.await,
            }
        }
    }

    /// [`start`](Self::start) for a thread without a runtime; also says whether the call is
    /// the only one in flight.
    /// Waits no longer than `expires` (the instant, and the timeout to fail with).
    fn start_blocking(
        &self,
        deadline: Option<(u64, Duration)>,
        expires: Option<(Instant, Duration)>,
    ) -> Result<(u32, u64, bool), CallError> {
        let mut waiting = Waiting::new(self);
        loop {
            match self.try_start(&mut waiting.counted, deadline, None)? {
                Ok(started) => return Ok(started),
                Err(listener) => {
                    if !crate::sync::wait_until(listener, expires.map(|(at, _)| at)) {
                        let timeout = expires.map_or(Duration::ZERO, |(_, t)| t);
                        return Err(CallError::Timeout(timeout));
                    }
                }
            }
        }
    }

    /// One attempt to start a call: the slot, the sequence id and whether it is the only call
    /// in flight, or (the window is full) the
    /// listener to wait on, registered under the table's lock so that no release is missed.
    /// `counted` says whether the caller is counted among those waiting for a slot; the
    /// attempt counts it while it must wait and uncounts it once it starts.
    fn try_start(
        &self,
        counted: &mut bool,
        deadline: Option<(u64, Duration)>,
        waker: Option<&std::task::Waker>,
    ) -> Result<Result<(u32, u64, bool), EventListener>, CallError> {
        let mut table = self.table.lock();
        // A caller that stops waiting, with a slot or with the table's refusal, is uncounted.
        let slot = match table.acquire() {
            Ok(Some(slot)) => slot,
            Ok(None) => {
                if !*counted {
                    *counted = true;
                    table.add_waiter();
                }
                return Ok(Err(self.window_free.listen()));
            }
            Err(refused) => {
                if std::mem::take(counted) {
                    table.remove_waiter();
                }
                return Err(refused);
            }
        };
        if std::mem::take(counted) {
            table.remove_waiter();
        }
        let seq = match table.begin(slot, deadline, waker.cloned()) {
            Ok(seq) => seq,
            Err(e) => {
                table.release(slot);
                return Err(e);
            }
        };
        let alone = table.in_use() == 1;
        drop(table);
        trace::record_client(seq, &self.peer);
        if let Some((tick, _)) = deadline {
            self.timer.arm(tick);
        } else if let Some((interval, _)) = self.keepalive {
            // No deadline, but the timer keeps the connection alive while the call runs.
            self.timer.arm(self.clock.now_tick() + interval);
        }
        Ok(Ok((slot, seq, alone)))
    }

    /// Takes the outcome of the call in `slot` and gives the slot back to the window, with
    /// one lock of the call table; or registers `cx`'s waker.
    fn poll_outcome(
        &self,
        slot: u32,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<Bytes, CallError>> {
        let mut table = self.table.lock();
        let outcome = std::task::ready!(table.poll(slot, cx));
        let waits = table.release(slot);
        let drained = self.drained(&table);
        drop(table);
        self.wake_a_waiter(waits);
        if let Some(error) = drained {
            self.close(error);
        }
        Poll::Ready(outcome)
    }

    /// The `GoAway` to leave with, if the server drains and the call just released was this
    /// side's last: the server waits for the client to close (answering requests that crossed
    /// its `GoAway`), and the reader, which leaves when a batch of frames ends the last call,
    /// may have read that batch before the caller took its outcome.
    fn drained(&self, table: &CallTable) -> Option<ConnectionError> {
        // The table's own record, read under its lock: the `refusing` flag is set only once
        // the reader has released it, after the caller may have taken its outcome.
        if table.in_use() > 0 {
            return None;
        }
        match table.refusing() {
            Some(error @ ConnectionError::GoAway { code, .. }) if *code == ErrorCode::NO_ERROR => {
                Some(error.clone())
            }
            _ => None,
        }
    }

    /// Waits on this thread for the outcome of the call in `slot` and takes it, giving the
    /// slot back. With `expires` (the instant and the timeout), it waits no longer than
    /// that: the timer task ends the call at its deadline, but a blocking call does not count
    /// on it to run. `Err` (the slot kept) if it expired first.
    fn wait_outcome(
        &self,
        slot: u32,
        expires: Option<(Instant, Duration)>,
    ) -> Result<Result<Bytes, CallError>, CallError> {
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = std::task::Context::from_waker(&waker);
        loop {
            if let Poll::Ready(outcome) = self.poll_outcome(slot, &mut cx) {
                return Ok(outcome);
            }
            match expires {
                None => std::thread::park(),
                Some((at, timeout)) => match at.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => std::thread::park_timeout(left),
                    _ => return Err(CallError::Timeout(timeout)),
                },
            }
        }
    }

    /// Gives `slot` back to the window; with `abandon`, first ends its call if it is still
    /// pending and returns its sequence id, for the server to be told.
    pub(crate) fn release(&self, slot: u32, abandon: bool) -> Option<u64> {
        let (seq, waits, drained) = {
            let mut table = self.table.lock();
            let seq = abandon.then(|| table.abandon(slot)).flatten();
            let waits = table.release(slot);
            (seq, waits, self.drained(&table))
        };
        self.wake_a_waiter(waits);
        if let Some(error) = drained {
            // An abandoned call's cancel is not worth keeping the connection for: the server
            // ends the calls of a client that leaves.
            self.close(error);
        }
        seq
    }

    /// Gives `slot` back for a caller that gave up on its call: a call still pending ends,
    /// and the server is told why (best effort: if the queue is full, the server's deadline
    /// ends the call).
    fn abandon(&self, slot: u32, why: ErrorCode) {
        if let Some(seq) = self.release(slot, true) {
            self.out.try_send(proto::cancel(seq, why));
        }
    }

    /// Wakes one caller waiting for a slot, if `waits` says one does (the table's lock
    /// released: the woken caller takes it at once).
    fn wake_a_waiter(&self, waits: bool) {
        if waits {
            crate::sync::notify_one_more(&self.window_free);
        }
    }

    /// The request frame of call `seq`, with `flags` and the options' metadata.
    fn request(
        &self,
        method: u32,
        seq: u64,
        timeout: Option<Duration>,
        flags: u8,
        (body, attachment): (Bytes, Bytes),
        metadata: Option<&Bytes>,
    ) -> Outgoing {
        let mut header = FrameHeader::new(FrameKind::Request, seq);
        header.method = method;
        header.flags = flags;
        header.aux = timeout.map_or(0, timeout_millis);
        match metadata {
            None if attachment.is_empty() => Outgoing::frame(header, body),
            None => {
                header.len = (body.len() + attachment.len()) as u32;
                Outgoing::Parts(header, Box::new([body, attachment, Bytes::new()]))
            }
            Some(metadata) => {
                header.flags |= crate::frame::flags::METADATA;
                header.len = (metadata.len() + body.len() + attachment.len()) as u32;
                Outgoing::Parts(header, Box::new([metadata.clone(), body, attachment]))
            }
        }
    }

    /// Ends the connection with `error`: fails pending calls and streams, and stops the tasks.
    pub(crate) fn close(&self, error: ConnectionError) {
        self.fail(&error);
        self.stop.stop();
    }

    /// Fails pending calls and streams with `error` and refuses new calls; the tasks go on
    /// (the writer still sends what is queued).
    pub(crate) fn fail(&self, error: &ConnectionError) {
        let mut wakers = Vec::new();
        self.table.lock().fail_all(error, &mut wakers);
        self.refusing.store(true, Ordering::Release);
        wakers.into_iter().for_each(std::task::Waker::wake);
        // Pings waiting for an answer see the error.
        for waiter in self.pings.lock().waiting.values_mut() {
            if let Some(waker) = waiter.as_mut().and_then(Option::take) {
                waker.wake();
            }
        }
        // Callers waiting for a slot now fail as not sent.
        self.window_free.notify(usize::MAX);
        for state in self.streams.lock().values() {
            crate::streaming::wake(state.close(ErrorCode::CANCELLED));
        }
    }

    /// Carries out what the engine made of a batch of frames, once the call table's lock is
    /// released: routes stream events, answers pings, and wakes the callers.
    ///
    /// # Errors
    ///
    /// The server sent a stream item past its credit: the connection must end.
    pub(crate) fn apply(&self, fx: &mut proto::client::Effects) -> Result<(), ConnectionError> {
        if std::mem::take(&mut fx.refusing) {
            self.refusing.store(true, Ordering::Release);
        }
        let mut violation = None;
        if !fx.streams.is_empty() {
            let streams = self.streams.lock();
            for event in fx.streams.drain(..) {
                // Events for streams this client no longer has are dropped, like late replies.
                let Some(state) = streams.get(&event.seq()) else {
                    continue;
                };
                match event.apply(state) {
                    Ok(wakers) => fx.wakers.extend(wakers.into_iter().flatten()),
                    Err(e) => {
                        violation = Some(e.into());
                        break;
                    }
                }
            }
            fx.streams.clear();
        }
        if !fx.outcomes.is_empty() {
            // Only now, their stream events routed, may the callers see their calls done.
            let mut table = self.table.lock();
            let routed = fx.wakers.len();
            proto::client::complete_held(&mut table, fx);
            // The callers just completed (not the stream tasks woken above), announced before
            // the lock goes, as the reader does for the calls the engine completed: see
            // `callers_woken`.
            self.out.callers_woken(fx.wakers.len() - routed);
        }
        for token in fx.pings.drain(..) {
            self.answer_ping(token);
        }
        fx.wakers.drain(..).for_each(std::task::Waker::wake);
        violation.map_or(Ok(()), Err)
    }

    /// The `Pong` of a [`Client::ping`] arrived.
    pub(crate) fn answer_ping(&self, token: u64) {
        let waker = match self.pings.lock().waiting.get_mut(&token) {
            Some(waiter) => waiter.take().flatten(),
            None => None,
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The error of a closed connection.
    fn closed_error(&self) -> ConnectionError {
        self.table
            .lock()
            .refusing()
            .cloned()
            .unwrap_or(ConnectionError::Closed)
    }

    /// The call `seq` ended (reply, timeout): its stream, if it has one, takes no more items.
    pub(crate) fn end_stream(&self, seq: u64, code: ErrorCode) {
        if self.open_streams.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(state) = self.streams.lock().get(&seq) {
            crate::streaming::wake(state.close(code));
        }
    }
}

/// The request's timeout on the wire: whole milliseconds, rounded up, at least 1.
fn timeout_millis(timeout: Duration) -> u32 {
    // In `u64`: a `u128` division on every call costs more than building the whole frame.
    let millis = timeout
        .as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(timeout.subsec_nanos().div_ceil(1_000_000)));
    u32::try_from(millis).unwrap_or(u32::MAX).max(1)
}

/// Owns a slot of the window for one call: returns it on every path, and cancels the call if
/// its future is dropped while it is still pending.
struct SlotGuard<'a> {
    conn: &'a Conn,
    slot: u32,
    /// The outcome was taken and the slot went back with it.
    released: bool,
}

impl<'a> SlotGuard<'a> {
    /// Guards `slot`, in which a call has begun.
    fn begun(conn: &'a Conn, slot: u32) -> Self {
        Self {
            conn,
            slot,
            released: false,
        }
    }

    /// The slot went back to the window with the call's outcome.
    fn released(&mut self) {
        self.released = true;
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.conn.abandon(self.slot, ErrorCode::CANCELLED);
    }
}

/// Wakes a thread blocked in a `_blocking` call.
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// A caller's place among those waiting for a slot of the window: counted in the call table
/// while it waits, and taken off if the caller gives up (its future dropped).
struct Waiting<'a> {
    conn: &'a Conn,
    counted: bool,
}

impl<'a> Waiting<'a> {
    fn new(conn: &'a Conn) -> Self {
        Self {
            conn,
            counted: false,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.conn.table.lock().remove_waiter();
        }
    }
}

#[cfg(all(test, not(flumen_loom)))]
mod tests {
    use super::*;

    #[test]
    fn wire_timeout_rounds_up() {
        assert_eq!(timeout_millis(Duration::from_nanos(1)), 1);
        assert_eq!(timeout_millis(Duration::from_micros(1500)), 2);
        assert_eq!(timeout_millis(Duration::from_secs(2)), 2000);
        assert_eq!(timeout_millis(Duration::from_secs(u64::MAX)), u32::MAX);
        // The same as the exact division, at the edges of whole milliseconds and seconds.
        for nanos in [0, 1, 999_999, 1_000_000, 1_000_001, 999_999_999] {
            for secs in [0, 1, 7, 4_294_967, 4_294_968] {
                let timeout = Duration::new(secs, nanos);
                let exact = timeout.as_nanos().div_ceil(1_000_000);
                let exact = u32::try_from(exact).unwrap_or(u32::MAX).max(1);
                assert_eq!(timeout_millis(timeout), exact, "{timeout:?}");
            }
        }
    }

    /// A blocking call does not count on the timer task to end it: here no task runs at all
    /// (as on a runtime whose only thread is blocked), and its deadline still fires.
    #[test]
    fn a_blocking_calls_deadline_fires_with_no_task_running() {
        let (client, mut rx) = model(1, crate::io::DEFAULT_MAX_QUEUED_BYTES);
        let timeout = Duration::from_millis(50);
        let started = Instant::now();
        let (outcome, client) = blocking_call(client, timeout);
        assert!(
            matches!(outcome, Err(CallError::Timeout(t)) if t == timeout),
            "{outcome:?}"
        );
        assert!(started.elapsed() >= timeout);
        // The request went out, then the cancel, and the slot is free again.
        let frames: Vec<_> = std::iter::from_fn(|| rx.try_recv())
            .filter_map(|message| match message {
                Outgoing::Frame(header, _) => Some((header.kind, header.aux)),
                _ => None,
            })
            .collect();
        let expired = ErrorCode::DEADLINE_EXCEEDED.as_u32();
        assert_eq!(
            frames[1],
            (FrameKind::Cancel, expired),
            "the cancel says why"
        );
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0].0, FrameKind::Request);
        assert!(client.handle.conn.table.lock().acquire().unwrap().is_some());
    }

    /// The deadline also ends the waits before the request is queued: for a slot of a full
    /// window, and for room in a full outbox.
    #[test]
    fn a_blocking_calls_deadline_ends_its_waits_for_a_slot_and_for_room() {
        let timeout = Duration::from_millis(50);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        // The only slot taken by a call that is never answered.
        let (client, _rx) = model(1, crate::io::DEFAULT_MAX_QUEUED_BYTES);
        let other = client.clone();
        let mut holder = Box::pin(other.call(1, Bytes::from_static(b"a")));
        assert!(holder.as_mut().poll(&mut cx).is_pending());
        let (outcome, client) = blocking_call(client, timeout);
        assert!(matches!(outcome, Err(CallError::Timeout(_))), "{outcome:?}");
        assert_eq!(client.handle.conn.table.lock().waiters(), 0);
        drop(holder);
        // An outbox of 64 bytes that a request of 100 fills.
        let (client, _rx) = model(4, 64);
        let other = client.clone();
        let mut filler = Box::pin(other.call(1, Bytes::from(vec![0u8; 100])));
        assert!(filler.as_mut().poll(&mut cx).is_pending());
        let (outcome, client) = blocking_call(client, timeout);
        assert!(matches!(outcome, Err(CallError::Timeout(_))), "{outcome:?}");
        assert_eq!(
            client.handle.conn.table.lock().in_use(),
            1,
            "its slot went back"
        );
        drop(filler);
    }

    /// A client over no socket with `window` slots and an outbox of `queued` bytes; no task
    /// runs for it.
    fn model(window: usize, queued: usize) -> (Client, crate::io::Inbox) {
        let config = ClientConfig::default().keepalive(None, Duration::from_secs(1));
        let (out, rx) = crate::io::outbox(queued, None);
        let conn = Arc::new(Conn::new(window, out, &config, u32::MAX, Peer::default()));
        let client = Client {
            handle: Arc::new(Handle { conn }),
        };
        (client, rx)
    }

    /// A blocking call with `timeout` from a thread of its own; fails the test (rather than
    /// hanging it) if the call is not over within 10 s.
    fn blocking_call(client: Client, timeout: Duration) -> (Result<Bytes, CallError>, Client) {
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result =
                client.call_blocking_with_timeout(1, Bytes::from_static(b"b"), Some(timeout));
            let _ = done.send((result, client));
        });
        outcome
            .recv_timeout(Duration::from_secs(10))
            .expect("the blocking call ended at its deadline")
    }

    #[test]
    fn deadline_ticks_never_expire_early() {
        let clock = Clock::new(Duration::from_millis(10));
        let deadline = clock.deadline(Duration::from_millis(25));
        assert!(clock.instant_of(deadline) >= clock.epoch + Duration::from_millis(25));
    }
}
