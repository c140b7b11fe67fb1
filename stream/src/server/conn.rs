//! One server connection: its reader task (handshake, decoding, dispatch) and writer task.

use std::{
    collections::HashMap,
    future::{poll_fn, Future},
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use atomic_waker::AtomicWaker;
use bytes::{Bytes, BytesMut};
use futures_io::AsyncWrite;
use futures_lite::FutureExt;
use parking_lot::Mutex;

use super::{
    stream::{CallStream, StreamRegistration},
    Dispatch, Reply, Request, Shared, Status,
};
use crate::{
    error::ErrorCode,
    frame::{Frame, FrameDecoder, FrameHeader, FrameKind},
    hello::{Hello, HELLO_LEN},
    io::{
        linger, outbox, read_at_least, write_all, write_loop, Inbox, Outbox, Outgoing, Quiet,
        ReadBuffer, Stop, WriteWatch, CLOSE_LINGER, READER, WRITER,
    },
    keepalive::{Action, KeepAlive},
    metadata::Metadata,
    runtime::Runtime,
    stats::ConnectionStats,
    streaming::{self, StreamState},
    transport::TransportRead,
};

/// Frames a connection's reader handles before it yields to the other tasks of its thread,
/// however fast its peer keeps sending.
const YIELD_EVERY_FRAMES: u32 = 1024;

/// Spare handler boxes a connection keeps for reuse.
const SPARE_FUTURES: usize = 16;

/// What the server's tasks and watchdog know about one connection.
pub(crate) struct ConnState {
    pub(super) stop: Stop,
    pub(super) out: Outbox,
    /// Asks the reader and writer to give their buffers back.
    quiet: Quiet,
    /// `last_read` when the connection was last told it is quiet.
    quiet_since: AtomicU64,
    /// Calls running in their own task.
    in_flight: AtomicUsize,
    /// Calls counted against `max_in_flight`: like `in_flight`, but a call leaves it before its
    /// reply is queued, so a client that sends its next call as soon as a reply arrives is
    /// never refused for a call that is in fact over.
    admitted: AtomicUsize,
    /// Cancel signals of the calls running in their own task, by sequence id.
    running: Mutex<HashMap<u64, Arc<Signal>>>,
    /// Streams of the streaming calls running, by sequence id.
    streams: Mutex<HashMap<u64, Arc<StreamState>>>,
    draining: Signal,
    /// The client said it is leaving (its `GoAway`): a draining connection closes as soon as
    /// no call runs.
    peer_leaving: AtomicBool,
    /// Watchdog clock when a draining connection was first seen with no call running, 0 if
    /// not yet.
    drained_since: AtomicU64,
    /// Set once a `Close` was queued or the connection was told to go away.
    closing: AtomicBool,
    /// Watchdog clock at the last successful read.
    last_read: AtomicU64,
    /// Watchdog clock when the frame now partly buffered began, 0 if none.
    partial_since: AtomicU64,
    /// Watchdog clock when the current flush began, 0 if none.
    flush_started: AtomicU64,
    /// Keep-alive state, in watchdog periods (only the watchdog touches it).
    alive: Mutex<KeepAlive>,
}

/// The watchdog's limits, in watchdog periods.
pub(super) struct Limits {
    pub(super) idle: u64,
    pub(super) read: u64,
    pub(super) write: u64,
    /// Whether keep-alive is on (its periods are in each connection's state).
    pub(super) keepalive: bool,
    /// How long a draining connection with no call left waits for the client to leave.
    pub(super) drain_linger: u64,
}

impl ConnState {
    /// Starts draining: `GoAway(NO_ERROR)`, then close once no call runs.
    pub(super) fn drain(&self) {
        if !self.draining.set() {
            return;
        }
        let goaway = FrameHeader::new(FrameKind::GoAway, 0);
        self.out.force_send(Outgoing::frame(
            goaway,
            Bytes::from_static(b"server shutting down"),
        ));
    }

    /// Queues a `GoAway` with `code` and closes the connection after it.
    fn go_away(&self, code: ErrorCode, reason: String) {
        if self.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::debug!(%code, %reason, "closing connection");
        let header = FrameHeader {
            aux: code.as_u32(),
            ..FrameHeader::new(FrameKind::GoAway, 0)
        };
        let queued = self
            .out
            .force_send(Outgoing::frame(header, Bytes::from(reason)))
            && self.out.force_send(Outgoing::Close);
        if !queued {
            self.stop.stop();
        }
    }

    /// Calls running in their own task.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Removes `state` from the streams, unless a newer call with its sequence id replaced it.
    pub(super) fn forget_stream(&self, state: &Arc<StreamState>) {
        remove_same(&self.streams, state.seq(), state);
    }

    /// While draining, closes the connection once no call runs and the client has said it is
    /// leaving. A client that has not may still have requests on the way, written before the
    /// `GoAway` reached it: those are answered `SHUTTING_DOWN` (never lost) until the client
    /// closes, or until the watchdog's drain linger ends.
    fn close_if_idle(&self) {
        if self.draining.is_set()
            && self.peer_leaving.load(Ordering::SeqCst)
            && self.in_flight.load(Ordering::SeqCst) == 0
        {
            self.close();
        }
    }

    /// Closes after what is queued has been written. Handlers still running are cancelled
    /// when the writer stops.
    fn close(&self) {
        if !self.closing.swap(true, Ordering::SeqCst) && !self.out.force_send(Outgoing::Close) {
            self.stop.stop();
        }
    }

    /// Applies the timeouts and keep-alive at watchdog clock `now`; returns the code if it
    /// closed the connection.
    pub(super) fn overdue(&self, now: u64, limits: &Limits) -> Option<ErrorCode> {
        let Limits {
            idle, read, write, ..
        } = *limits;
        if self.stop.is_stopped() {
            return None;
        }
        let since = |at: &AtomicU64| match at.load(Ordering::Relaxed) {
            0 => 0,
            at => now.saturating_sub(at),
        };
        if since(&self.flush_started) >= write {
            // The writer is stuck: a GoAway would queue behind it, so just close.
            self.stop.stop();
            return Some(ErrorCode::WRITE_TIMEOUT);
        }
        if self.closing.load(Ordering::Relaxed) {
            return None;
        }
        if since(&self.partial_since) >= read {
            self.go_away(
                ErrorCode::READ_TIMEOUT,
                "frame not completed within the read timeout".into(),
            );
            return Some(ErrorCode::READ_TIMEOUT);
        }
        let busy = self.in_flight.load(Ordering::Relaxed) > 0;
        if self.draining.is_set() && !busy {
            match self.drained_since.load(Ordering::Relaxed) {
                0 => self.drained_since.store(now, Ordering::Relaxed),
                at if now.saturating_sub(at) >= limits.drain_linger => self.close(),
                _ => {}
            }
            return None;
        }
        if !busy && since(&self.last_read) >= idle {
            self.go_away(ErrorCode::IDLE_TIMEOUT, "connection idle".into());
            return Some(ErrorCode::IDLE_TIMEOUT);
        }
        if limits.keepalive {
            let reads = self.out.counters().reads.load(Ordering::Relaxed);
            let mut alive = self.alive.lock();
            if !busy {
                // Silence with no call running needs nobody's attention.
                alive.reset(now, reads);
            } else {
                match alive.poll(now, reads) {
                    Action::Wait(_) => {}
                    Action::Ping(_) => {
                        let ping = FrameHeader::new(FrameKind::Ping, now);
                        self.out.try_send(Outgoing::frame(ping, Bytes::new()));
                    }
                    Action::Dead => {
                        drop(alive);
                        self.go_away(
                            ErrorCode::KEEPALIVE_TIMEOUT,
                            "no answer to a keep-alive ping".into(),
                        );
                        return Some(ErrorCode::KEEPALIVE_TIMEOUT);
                    }
                }
            }
        }
        // Nothing read for a whole period: the buffers go back until traffic returns (once
        // per quiet spell, so idle connections cost no wake-ups after that).
        let last_read = self.last_read.load(Ordering::Relaxed);
        if now.saturating_sub(last_read) >= 2
            && self.quiet_since.swap(last_read, Ordering::Relaxed) != last_read
        {
            self.quiet.signal();
        }
        None
    }
}

/// A connection's keep-alive state from the settings, in watchdog periods (off: never due).
fn keepalive(config: &super::ServerConfig, now: u64) -> KeepAlive {
    let period = config.watchdog_period();
    let periods = |d: Duration| d.as_nanos().div_ceil(period.as_nanos()) as u64;
    let (interval, timeout) = config
        .keepalive
        .map_or((u64::MAX / 4, u64::MAX / 4), |(i, t)| {
            (periods(i), periods(t))
        });
    let mut alive = KeepAlive::new(interval, timeout);
    alive.reset(now, 0);
    alive
}

/// Removes the connection from the server's table when its last task ends.
struct Registration {
    shared: Arc<Shared>,
    key: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let removed = self.shared.conns.lock().try_remove(self.key);
        if let Some(conn) = removed {
            let mut stats = ConnectionStats::from(conn.out.counters());
            stats.buffered_bytes = 0;
            self.shared.closed_io.lock().add(&stats);
        }
    }
}

/// Registers an accepted connection and spawns its tasks, or refuses it at the limit.
pub(super) fn start<R, D, Rd, Wr>(
    rt: &R,
    shared: &Arc<Shared>,
    dispatch: &Arc<D>,
    reader: Rd,
    writer: Wr,
) where
    R: Runtime,
    D: Dispatch,
    Rd: TransportRead,
    Wr: AsyncWrite + Unpin + Send + 'static,
{
    let config = &shared.config;
    // When the peer stops reading, replies queue up to `max_queued_bytes`; then the reader
    // waits to queue the next one and so stops reading requests too (backpressure).
    let (out, rx) = outbox(config.max_queued_bytes, Some(shared.queued.clone()));
    let now = shared.now();
    let conn = Arc::new(ConnState {
        stop: Stop::default(),
        out,
        quiet: Quiet::default(),
        quiet_since: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        admitted: AtomicUsize::new(0),
        running: Mutex::new(HashMap::new()),
        streams: Mutex::new(HashMap::new()),
        draining: Signal::new(shared.draining.load(Ordering::SeqCst)),
        peer_leaving: AtomicBool::new(false),
        drained_since: AtomicU64::new(0),
        closing: AtomicBool::new(false),
        last_read: AtomicU64::new(now),
        partial_since: AtomicU64::new(now),
        flush_started: AtomicU64::new(0),
        alive: Mutex::new(keepalive(config, now)),
    });
    let key = {
        let mut conns = shared.conns.lock();
        if conns.len() >= config.max_connections {
            None
        } else {
            Some(conns.insert(conn.clone()))
        }
    };
    let Some(key) = key else {
        Shared::count(&shared.counters.refused);
        rt.spawn(refuse(writer, config.max_frame_len));
        return;
    };
    let registration = Arc::new(Registration {
        shared: shared.clone(),
        key,
    });
    rt.spawn(write_task(
        shared.clone(),
        conn.clone(),
        registration.clone(),
        writer,
        rx,
    ));
    let reader_task = ReadTask {
        rt: rt.clone(),
        shared: shared.clone(),
        conn,
        dispatch: dispatch.clone(),
        spare: Vec::new(),
        peer_max_frame_len: 0,
    };
    rt.spawn(reader_task.run(reader, registration));
}

async fn write_task<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    _registration: Arc<Registration>,
    mut writer: W,
    rx: Inbox,
) {
    let config = &shared.config;
    let hello = Hello::new(config.max_frame_len, config.max_in_flight as u32).encode();
    if let Some(Ok(())) = conn
        .stop
        .guard(WRITER, write_all(&mut writer, &hello))
        .await
    {
        let watch = WriteWatch {
            clock: &shared.clock,
            flush_started: &conn.flush_started,
        };
        if let Err(e) = write_loop(rx, writer, &conn.stop, &conn.quiet, Some(watch)).await {
            tracing::debug!(error = %e, "connection write failed");
        }
    }
    conn.stop.stop();
}

/// Tells a peer over the connection limit why it is refused, then closes.
async fn refuse<W: AsyncWrite + Unpin>(mut writer: W, max_frame_len: u32) {
    let mut bytes = BytesMut::from(&Hello::new(max_frame_len, 0).encode()[..]);
    let header = FrameHeader {
        aux: ErrorCode::TOO_MANY_CONNECTIONS.as_u32(),
        ..FrameHeader::new(FrameKind::GoAway, 0)
    };
    Frame::new(
        header,
        Bytes::from_static(b"server is at its connection limit"),
    )
    .encode(&mut bytes);
    let _ = write_all(&mut writer, &bytes).await;
    let _ = poll_fn(|cx| Pin::new(&mut writer).poll_close(cx)).await;
}

/// What wakes the reader.
enum Event {
    Read(std::io::Result<usize>),
    Drain,
    Quiet,
}

/// The reader task of one connection: decodes frames and dispatches requests.
struct ReadTask<R, D: Dispatch> {
    rt: R,
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    dispatch: Arc<D>,
    /// Boxes of finished handler futures, reused so that inline calls allocate nothing.
    spare: Vec<Pin<Box<D::Future>>>,
    /// The client's limit on reply bodies.
    peer_max_frame_len: u32,
}

impl<R: Runtime, D: Dispatch> ReadTask<R, D> {
    async fn run<Rd: TransportRead>(mut self, mut reader: Rd, registration: Arc<Registration>) {
        let peer_left = self.serve(&mut reader).await;
        // The peer left, broke the protocol, or the connection was stopped: nobody will read
        // replies to calls still running.
        self.conn.close();
        if !peer_left {
            // This side ends the connection and its GoAway is on its way: what the peer still
            // sends is read and dropped, so that closing does not reset the connection under
            // the GoAway before the peer reads it.
            // An aborted server lingers no more.
            let until = self
                .rt
                .sleep_until(Instant::now() + CLOSE_LINGER)
                .or(self.shared.halted.ended());
            linger(&mut reader, until).await;
        }
        drop(registration);
    }

    /// Serves the connection; `true` when it ended because the peer closed it (or the read
    /// failed), `false` when this side ended it.
    async fn serve<Rd: TransportRead>(&mut self, reader: &mut Rd) -> bool {
        let conn = self.conn.clone();
        let mut read = ReadBuffer::new();
        match conn
            .stop
            .guard(READER, read_at_least(reader, &mut read.buf, HELLO_LEN))
            .await
        {
            Some(Ok(())) => {}
            Some(Err(_)) => return true,
            None => return false,
        }
        let head = read.buf.split_to(HELLO_LEN);
        let Some(head) = head.first_chunk::<HELLO_LEN>() else {
            return false;
        };
        match Hello::decode(head) {
            Ok(hello) => self.peer_max_frame_len = hello.max_frame_len,
            Err(e) => {
                Shared::count(&self.shared.counters.protocol_errors);
                conn.go_away(e.code(), e.to_string());
                return false;
            }
        }
        conn.partial_since.store(0, Ordering::Relaxed);
        let mut decoder = FrameDecoder::new(self.shared.config.max_frame_len);
        let mut drain_seen = false;
        let counters = conn.out.counters();
        // Frames handled since this task last let others run.
        let mut unyielded = 0;
        loop {
            let mut progressed = false;
            // Replies to what this read brought are written together, however the runtime
            // schedules the writer.
            let hold = conn.out.hold();
            loop {
                match decoder.decode(&mut read.buf) {
                    Ok(Some(frame)) => {
                        progressed = true;
                        unyielded += 1;
                        counters.frames_read.fetch_add(1, Ordering::Relaxed);
                        if !self.on_frame(frame).await {
                            return false;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        Shared::count(&self.shared.counters.protocol_errors);
                        conn.go_away(e.code(), e.to_string());
                        return false;
                    }
                }
            }
            drop(hold);
            // A peer that keeps the socket full (a flood of tiny frames) would otherwise keep
            // this task running, since its reads never wait: on an executor without
            // cooperative budgeting (smol) the other connections on this thread would wait.
            if unyielded >= YIELD_EVERY_FRAMES {
                unyielded = 0;
                futures_lite::future::yield_now().await;
            }
            // A frame must complete within the read timeout of its first byte.
            if read.buf.is_empty() {
                conn.partial_since.store(0, Ordering::Relaxed);
            } else if progressed || conn.partial_since.load(Ordering::Relaxed) == 0 {
                conn.partial_since
                    .store(self.shared.now(), Ordering::Relaxed);
            }
            let read_more = async {
                match read
                    .read_or_release(reader, &decoder, &conn.quiet, counters)
                    .await
                {
                    Some(result) => Event::Read(result),
                    None => Event::Quiet,
                }
            };
            let event = if drain_seen {
                conn.stop.guard(READER, read_more).await
            } else {
                let drained = async {
                    conn.draining.wait().await;
                    Event::Drain
                };
                conn.stop.guard(READER, read_more.or(drained)).await
            };
            match event {
                None => return false,
                Some(Event::Read(Ok(0) | Err(_))) => return true,
                Some(Event::Read(Ok(_))) => {
                    conn.last_read.store(self.shared.now(), Ordering::Relaxed)
                }
                // The buffers went back; wait for the next bytes.
                Some(Event::Quiet) => {}
                Some(Event::Drain) => {
                    drain_seen = true;
                    conn.close_if_idle();
                }
            }
        }
    }

    /// Handles one frame; `false` ends the connection.
    async fn on_frame(&mut self, frame: Frame) -> bool {
        let header = frame.header;
        match header.kind {
            FrameKind::Request => self.on_request(header, frame.body).await,
            FrameKind::Ping => {
                let pong = FrameHeader::new(FrameKind::Pong, header.seq);
                send(&self.conn, Outgoing::frame(pong, frame.body)).await
            }
            FrameKind::Cancel => {
                // The call is over for the client, which may reuse its sequence id at once:
                // forget it now, and stop its handler. A call that already finished (or never
                // ran in a task) has nothing to stop.
                let running = self.conn.running.lock().remove(&header.seq);
                if let Some(cancel) = running {
                    cancel.set();
                }
                if self.conn.in_flight.load(Ordering::Relaxed) > 0 {
                    self.conn.streams.lock().remove(&header.seq);
                }
                true
            }
            FrameKind::StreamItem | FrameKind::StreamEnd | FrameKind::Credit => {
                self.on_stream_frame(frame)
            }
            FrameKind::Pong => true,
            // A client's GoAway means it is leaving: a draining connection need not wait for
            // more requests.
            FrameKind::GoAway => {
                self.conn.peer_leaving.store(true, Ordering::SeqCst);
                self.conn.close_if_idle();
                true
            }
            FrameKind::Response | FrameKind::Error => {
                Shared::count(&self.shared.counters.protocol_errors);
                let reason = format!("unexpected {:?} frame from a client", header.kind);
                self.conn.go_away(ErrorCode::PROTOCOL_ERROR, reason);
                false
            }
        }
    }

    /// Routes a stream frame to its call; frames for calls that ended are dropped.
    fn on_stream_frame(&mut self, frame: Frame) -> bool {
        let header = frame.header;
        let Some(state) = self.conn.streams.lock().get(&header.seq).cloned() else {
            return true;
        };
        let waker = match header.kind {
            FrameKind::StreamItem => {
                let end = header.flags & crate::frame::flags::END != 0;
                match state.on_item(frame.body, end) {
                    Ok(waker) => waker,
                    Err(e) => {
                        Shared::count(&self.shared.counters.protocol_errors);
                        self.conn.go_away(ErrorCode::FLOW_CONTROL, e.to_string());
                        return false;
                    }
                }
            }
            FrameKind::StreamEnd => {
                let message = String::from_utf8_lossy(&frame.body).into_owned();
                state.on_end(ErrorCode::from_u32(header.aux), message)
            }
            _ => state.on_credit(header.aux),
        };
        streaming::wake([waker]);
        true
    }

    /// Opens the stream of a streaming request; grants the client its initial window.
    fn open_stream(&self, header: &FrameHeader) -> (CallStream, StreamRegistration) {
        let (state, grant) = StreamState::new(header.seq, self.shared.config.stream_window);
        let state = Arc::new(state);
        self.conn.streams.lock().insert(header.seq, state.clone());
        if grant > 0 && header.flags & crate::frame::flags::STREAM_REQUEST != 0 {
            self.conn
                .out
                .send_control(streaming::credit(header.seq, grant));
        }
        let stream = CallStream {
            state: state.clone(),
            out: self.conn.out.clone(),
            flags: header.flags,
            peer_max_frame_len: self.peer_max_frame_len,
        };
        let registration = StreamRegistration {
            conn: self.conn.clone(),
            state,
        };
        (stream, registration)
    }

    async fn on_request(&mut self, header: FrameHeader, mut body: Bytes) -> bool {
        let conn = &*self.conn;
        if conn.draining.is_set() {
            let status = Status::new(ErrorCode::SHUTTING_DOWN, "server is shutting down");
            return send(
                &self.conn,
                error_reply(&header, status, self.peer_max_frame_len),
            )
            .await;
        }
        if conn.admitted.load(Ordering::SeqCst) >= self.shared.config.max_in_flight {
            let reason = "too many calls in flight on this connection";
            return send(&self.conn, overloaded(&header, None, reason)).await;
        }
        let permit = match Permit::acquire(&self.shared) {
            Ok(permit) => permit,
            Err(retry_after) => {
                Shared::count(&self.shared.counters.shed);
                let reason = "the server is at its concurrency limit";
                return send(&self.conn, overloaded(&header, Some(retry_after), reason)).await;
            }
        };
        // Only calls in a task of their own outlive their request's dispatch, and each of
        // them (streams included) is in `running`: one lookup, and none while none runs.
        if conn.in_flight.load(Ordering::Relaxed) > 0
            && conn.running.lock().contains_key(&header.seq)
        {
            // Its replies could not be told apart from those of the call still running.
            Shared::count(&self.shared.counters.protocol_errors);
            let reason = format!("sequence id {} reused while its call runs", header.seq);
            conn.go_away(ErrorCode::PROTOCOL_ERROR, reason);
            return false;
        }
        let metadata = if header.flags & crate::frame::flags::METADATA != 0 {
            match Metadata::decode(&mut body) {
                Ok(metadata) => metadata,
                Err(e) => {
                    let status = Status::new(ErrorCode::BAD_REQUEST, e.to_string());
                    let reply = error_reply(&header, status, self.peer_max_frame_len);
                    return send(&self.conn, reply).await;
                }
            }
        } else {
            Metadata::new()
        };
        let timeout = (header.aux != 0).then(|| Duration::from_millis(header.aux.into()));
        // Counted from when the request was read: the caller's clock is not ours.
        let deadline = timeout.map(|t| Instant::now() + t);
        let streaming = header.flags
            & (crate::frame::flags::STREAM_REQUEST | crate::frame::flags::STREAM_REPLY)
            != 0;
        let (stream, registration) = match streaming {
            true => {
                let (stream, registration) = self.open_stream(&header);
                (Some(stream), Some(registration))
            }
            false => (None, None),
        };
        let request = Request {
            method: header.method,
            seq: header.seq,
            body,
            timeout,
            stream,
            metadata,
        };
        let dispatch = &self.dispatch;
        let Ok(future) = catch_unwind(AssertUnwindSafe(|| dispatch.dispatch(request))) else {
            return self.panicked(&header).await;
        };
        let mut future = match self.spare.pop() {
            Some(mut spare) => {
                spare.as_mut().set(future);
                spare
            }
            None => Box::pin(future),
        };
        if !self.shared.config.inline_dispatch {
            self.spawn_handler(header, future, deadline, registration, permit);
            return true;
        }
        let polled = {
            let mut cx = Context::from_waker(Waker::noop());
            catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))).map_err(drop)
        };
        match polled {
            Ok(Poll::Ready(result)) => {
                if self.spare.len() < SPARE_FUTURES {
                    self.spare.push(future);
                }
                drop((registration, permit));
                send(&self.conn, reply(&header, result, self.peer_max_frame_len)).await
            }
            Ok(Poll::Pending) => {
                // It waits on something: give it a task of its own. Its next poll registers
                // the task's waker, so nothing it waits for is missed.
                self.spawn_handler(header, future, deadline, registration, permit);
                true
            }
            Err(_) => self.panicked(&header).await,
        }
    }

    /// Runs a handler that waits on something in a task of its own, until it finishes, the
    /// client cancels the call, its deadline passes, or the connection ends.
    fn spawn_handler(
        &self,
        header: FrameHeader,
        future: Pin<Box<D::Future>>,
        deadline: Option<Instant>,
        registration: Option<StreamRegistration>,
        mut permit: Permit,
    ) {
        permit.waited();
        let conn = self.conn.clone();
        let shared = self.shared.clone();
        let peer_max_frame_len = self.peer_max_frame_len;
        let cancel = Arc::new(Signal::default());
        conn.running.lock().insert(header.seq, cancel.clone());
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        conn.admitted.fetch_add(1, Ordering::SeqCst);
        let expiry = deadline.map(|at| self.rt.sleep_until(at));
        self.rt.spawn(async move {
            let handler = async { End::Done(CatchUnwind { future }.await) };
            let cancelled = async {
                cancel.wait().await;
                End::Cancelled
            };
            let ended = async {
                conn.stop.ended().await;
                End::ConnectionEnded
            };
            let expired = async {
                match expiry {
                    Some(expiry) => expiry.await,
                    None => std::future::pending().await,
                }
                End::Expired
            };
            // Whatever ends first drops the others: a stopped handler's drop guards run here.
            let end = handler.or(cancelled).or(ended).or(expired).await;
            remove_same(&conn.running, header.seq, &cancel);
            drop((registration, permit));
            conn.admitted.fetch_sub(1, Ordering::SeqCst);
            let result = match end {
                End::Done(Some(result)) => Some(result),
                End::Done(None) => {
                    Shared::count(&shared.counters.panics);
                    Some(Err(Status::new(
                        ErrorCode::HANDLER_PANIC,
                        "handler panicked",
                    )))
                }
                End::Expired => Some(Err(Status::new(
                    ErrorCode::DEADLINE_EXCEEDED,
                    "the call's deadline passed on the server",
                ))),
                // The caller gave up, or nobody is left to read a reply.
                End::Cancelled | End::ConnectionEnded => None,
            };
            if let Some(result) = result {
                let _ = conn
                    .out
                    .send(reply(&header, result, peer_max_frame_len))
                    .await;
            }
            if conn.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
                conn.close_if_idle();
            }
        });
    }

    async fn panicked(&mut self, header: &FrameHeader) -> bool {
        Shared::count(&self.shared.counters.panics);
        let status = Status::new(ErrorCode::HANDLER_PANIC, "handler panicked");
        send(
            &self.conn,
            error_reply(header, status, self.peer_max_frame_len),
        )
        .await
    }
}

/// Queues `message` for the writer; `false` once the writer is gone.
async fn send(conn: &ConnState, message: Outgoing) -> bool {
    conn.out.send(message).await
}

/// Removes `seq` from `map` if it still maps to `value` (not to a newer call's).
fn remove_same<T>(map: &Mutex<HashMap<u64, Arc<T>>>, seq: u64, value: &Arc<T>) {
    let mut map = map.lock();
    if map.get(&seq).is_some_and(|v| Arc::ptr_eq(v, value)) {
        map.remove(&seq);
    }
}

/// A call's place under the adaptive concurrency limit (nothing when it is off); given back
/// when dropped, with the call's latency if it waited on something.
struct Permit {
    shared: Option<Arc<Shared>>,
    /// Set when the call went to a task of its own: its latency is a sample for the limit.
    started: Option<Instant>,
}

impl Permit {
    /// A place, or the retry-after hint when the limit is reached.
    fn acquire(shared: &Arc<Shared>) -> Result<Self, Duration> {
        let Some(limiter) = &shared.limiter else {
            return Ok(Self {
                shared: None,
                started: None,
            });
        };
        limiter.try_acquire()?;
        Ok(Self {
            shared: Some(shared.clone()),
            started: None,
        })
    }

    /// The call waits on something: from now on its latency counts.
    fn waited(&mut self) {
        if self.shared.is_some() {
            self.started = Some(Instant::now());
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(limiter) = self.shared.as_ref().and_then(|s| s.limiter.as_ref()) else {
            return;
        };
        match self.started {
            Some(started) => limiter.release_after(started.elapsed()),
            None => limiter.release(),
        }
    }
}

/// How a spawned handler's task ended.
enum End {
    /// The handler finished (`None`: it panicked).
    Done(Option<Result<Reply, Status>>),
    Cancelled,
    Expired,
    ConnectionEnded,
}

/// A one-way flag a task can wait on: a connection starting to drain, a call being cancelled.
#[derive(Debug, Default)]
struct Signal {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    fn new(set: bool) -> Self {
        Self {
            set: AtomicBool::new(set),
            waker: AtomicWaker::new(),
        }
    }

    /// Sets the flag and wakes the waiter; `true` for the call that set it.
    fn set(&self) -> bool {
        let first = !self.set.swap(true, Ordering::SeqCst);
        self.waker.wake();
        first
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Completes once the flag is set (one waiting task at a time).
    fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| {
            if self.is_set() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.is_set() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// Polls a handler, turning a panic into `None`.
struct CatchUnwind<F> {
    future: Pin<Box<F>>,
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.future.as_mut();
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(poll) => poll.map(Some),
            Err(_) => Poll::Ready(None),
        }
    }
}

/// The frame that answers `request` with `result`.
fn reply(
    request: &FrameHeader,
    result: Result<Reply, Status>,
    peer_max_frame_len: u32,
) -> Outgoing {
    let status = match result {
        Ok(body) if body.len() <= peer_max_frame_len as usize => {
            let header = FrameHeader {
                method: request.method,
                ..FrameHeader::new(FrameKind::Response, request.seq)
            };
            let (head, tail) = body.into_parts();
            if tail.is_empty() {
                return Outgoing::frame(header, head);
            }
            let header = FrameHeader {
                len: (head.len() + tail.len()) as u32,
                ..header
            };
            return Outgoing::Parts(header, [head, tail, Bytes::new()]);
        }
        Ok(body) => Status::new(
            ErrorCode::RESPONSE_TOO_LARGE,
            format!(
                "reply of {} bytes exceeds the caller's limit of {peer_max_frame_len} bytes",
                body.len()
            ),
        ),
        Err(status) => status,
    };
    error_reply(request, status, peer_max_frame_len)
}

/// An `Error OVERLOADED` for `request`: the body is the retry-after hint in milliseconds (a
/// `u32`, 0 for none), then the reason.
fn overloaded(request: &FrameHeader, retry_after: Option<Duration>, reason: &str) -> Outgoing {
    let header = FrameHeader {
        method: request.method,
        aux: ErrorCode::OVERLOADED.as_u32(),
        ..FrameHeader::new(FrameKind::Error, request.seq)
    };
    Outgoing::frame(
        header,
        super::dispatch::overloaded_body(retry_after, reason),
    )
}

fn error_reply(request: &FrameHeader, status: Status, peer_max_frame_len: u32) -> Outgoing {
    let header = FrameHeader {
        method: request.method,
        aux: status.code().as_u32(),
        ..FrameHeader::new(FrameKind::Error, request.seq)
    };
    let mut message = status.into_body();
    message.truncate(peer_max_frame_len as usize);
    Outgoing::frame(header, message)
}
