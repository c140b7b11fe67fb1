//! One server connection: what its tasks and the watchdog share ([`ConnState`]), the
//! watchdog's checks, registration in the server's table, and the writer task. The reader task
//! is in `read`, a call's life after dispatch in `handler`.

use std::{
    collections::HashMap,
    future::poll_fn,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_io::AsyncWrite;
use parking_lot::Mutex;

use super::{handler::Cancel, read::ReadTask, Dispatch, Shared};
use crate::{
    body, compress,
    error::ErrorCode,
    frame::{FrameHeader, FrameKind},
    hello::Hello,
    io::{outbox, write_all, write_loop, Inbox, Outbox, Outgoing, Quiet, Stop, WriteWatch, WRITER},
    keepalive::{Action, KeepAlive},
    runtime::Runtime,
    signal::Signal,
    stats::ConnectionStats,
    streaming::StreamState,
    trace::Peer,
    transport::TransportRead,
    transport::TransportWrite,
};

/// What the server's tasks and watchdog know about one connection.
pub(crate) struct ConnState {
    pub(super) stop: Stop,
    pub(super) out: Outbox,
    /// Asks the reader and writer to give their buffers back.
    pub(super) quiet: Quiet,
    /// `last_read` when the connection was last told it is quiet.
    pub(super) quiet_since: AtomicU64,
    /// Calls running in their own task.
    pub(super) in_flight: AtomicUsize,
    /// Calls counted against `max_in_flight`: like `in_flight`, but a call leaves it before its
    /// reply is queued, so a client that sends its next call as soon as a reply arrives is
    /// never refused for a call that is in fact over.
    pub(super) admitted: AtomicUsize,
    /// Cancel signals of the calls running in their own task, by sequence id.
    pub(super) running: Mutex<HashMap<u64, Arc<Cancel>>>,
    /// Streams of the streaming calls running, by sequence id.
    pub(super) streams: Mutex<HashMap<u64, Arc<StreamState>>>,
    pub(super) draining: Signal,
    /// The client said it is leaving (its `GoAway`): a draining connection closes as soon as
    /// no call runs.
    pub(super) peer_leaving: AtomicBool,
    /// Watchdog clock when a draining connection was first seen with no call running, 0 if
    /// not yet.
    pub(super) drained_since: AtomicU64,
    /// Set once a `Close` was queued or the connection was told to go away.
    pub(super) closing: AtomicBool,
    /// Watchdog clock at the last successful read.
    pub(super) last_read: AtomicU64,
    /// Watchdog clock when the frame now partly buffered began, 0 if none.
    pub(super) partial_since: AtomicU64,
    /// Watchdog clock when the current flush began, 0 if none.
    pub(super) flush_started: AtomicU64,
    /// Keep-alive state, in watchdog periods (only the watchdog touches it).
    pub(super) alive: Mutex<KeepAlive>,
    /// The client's address, as call spans show it.
    pub(super) peer: Peer,
    /// When the connection was accepted.
    pub(super) opened: std::time::Instant,
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
        self.out.force_send(
            body::go_away(
                ErrorCode::NO_ERROR,
                Bytes::from_static(b"server shutting down"),
            )
            .into(),
        );
    }

    /// Queues a `GoAway` with `code` and closes the connection after it.
    pub(super) fn go_away(&self, code: ErrorCode, reason: String) {
        if self.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::debug!(%code, %reason, "closing connection");
        let queued = self.out.force_send(body::go_away(code, reason).into())
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
    pub(super) fn close_if_idle(&self) {
        if self.draining.is_set()
            && self.peer_leaving.load(Ordering::SeqCst)
            && self.in_flight.load(Ordering::SeqCst) == 0
        {
            self.close();
        }
    }

    /// Closes after what is queued has been written. Handlers still running are cancelled
    /// when the writer stops.
    pub(super) fn close(&self) {
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
pub(super) struct Registration {
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
    peer: Peer,
    reader: Rd,
    writer: Wr,
) where
    R: Runtime,
    D: Dispatch,
    Rd: TransportRead,
    Wr: TransportWrite,
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
        // Set by `drain` below if the server drains, so that the GoAway is queued.
        draining: Signal::new(false),
        peer_leaving: AtomicBool::new(false),
        drained_since: AtomicU64::new(0),
        closing: AtomicBool::new(false),
        last_read: AtomicU64::new(now),
        partial_since: AtomicU64::new(now),
        flush_started: AtomicU64::new(0),
        alive: Mutex::new(keepalive(config, now)),
        peer,
        opened: std::time::Instant::now(),
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
        crate::runtime::spawn_task(rt, refuse(writer, config.max_frame_len));
        return;
    };
    let registration = Arc::new(Registration {
        shared: shared.clone(),
        key,
    });
    // A stop that came while this connection was being accepted did not see it in the
    // table: `abort` and `shutdown` set their flags before they look at the table, under the
    // same lock as the insert above. After an abort the connection is closed before its
    // hello, and leaves the table. A graceful shutdown serves it like the connections it
    // found: its hello, then `GoAway`, so that its client connects and takes its calls
    // elsewhere, instead of seeing its connect fail (a reset) and backing off.
    if shared.halted.is_stopped() {
        conn.stop.stop();
        return;
    }
    if shared.draining.load(Ordering::SeqCst) {
        conn.drain();
    }
    crate::runtime::spawn_task(
        rt,
        write_task(
            shared.clone(),
            conn.clone(),
            registration.clone(),
            writer,
            rx,
        ),
    );
    let reader_task = ReadTask::new(rt.clone(), shared.clone(), conn, dispatch.clone());
    crate::runtime::spawn_task(rt, reader_task.run(reader, registration));
}

async fn write_task<W: TransportWrite>(
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    _registration: Arc<Registration>,
    mut writer: W,
    rx: Inbox,
) {
    let config = &shared.config;
    let accepted = compress::advertised(config.compression.as_ref());
    let hello = Hello::with_features(config.max_frame_len, config.max_in_flight as u32, accepted);
    let hello = hello.encode();
    if let Some(Ok(())) = conn
        .stop
        .guard(WRITER, write_all(&mut writer, &hello))
        .await
    {
        let watch = WriteWatch {
            clock: &shared.clock,
            flush_started: &conn.flush_started,
        };
        let (stop, quiet) = (&conn.stop, &conn.quiet);
        if let Err(e) = write_loop(rx, writer, stop, quiet, Some(watch)).await {
            tracing::debug!(error = %e, "connection write failed");
        }
    }
    conn.stop.stop();
}

/// Tells a peer over the connection limit why it is refused, then closes.
async fn refuse<W: AsyncWrite + Unpin>(mut writer: W, max_frame_len: u32) {
    let mut bytes = BytesMut::from(&Hello::new(max_frame_len, 0).encode()[..]);
    body::go_away(
        ErrorCode::TOO_MANY_CONNECTIONS,
        Bytes::from_static(b"server is at its connection limit"),
    )
    .encode(&mut bytes);
    let _ = write_all(&mut writer, &bytes).await;
    let _ = poll_fn(|cx| Pin::new(&mut writer).poll_close(cx)).await;
}

/// Removes `seq` from `map` if it still maps to `value` (not to a newer call's).
pub(super) fn remove_same<T>(map: &Mutex<HashMap<u64, Arc<T>>>, seq: u64, value: &Arc<T>) {
    let mut map = map.lock();
    if map.get(&seq).is_some_and(|v| Arc::ptr_eq(v, value)) {
        map.remove(&seq);
    }
}
