//! A server connection's reader task: the hello, decoding, and a thin loop around the
//! server's engine (`proto::server`): each read batch's frames are fed to it one after the
//! other and its events carried out (requests dispatched, inline when their handler is ready at
//! once); the replies and answers of a batch go to the writer together, with one lock of the
//! outbox.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use futures_lite::FutureExt;

use super::{
    conn::{ConnState, Registration},
    handler::{self, error_reply, overloaded, reply, DropReason, Permit, Spawned},
    stream::{CallStream, StreamRegistration},
    Dispatch, Request, Shared, Status,
};
use crate::{
    compress,
    error::ErrorCode,
    frame::{Frame, FrameDecoder, FrameHeader},
    hello::{Hello, HELLO_LEN},
    io::{linger, read_at_least, Outgoing, ReadBuffer, CLOSE_LINGER, READER},
    proto::{
        self,
        server::{Admission, Event as Frames, Incoming, Refusal},
        StreamEvent,
    },
    runtime::Runtime,
    streaming::{self, StreamState},
    trace::CallSpan,
    transport::TransportRead,
};

/// Frames a connection's reader handles before it yields to the other tasks of its thread,
/// however fast its peer keeps sending.
const YIELD_EVERY_FRAMES: u32 = 1024;

/// Spare handler boxes a connection keeps for reuse.
const SPARE_FUTURES: usize = 16;

/// Bytes of replies the reader collects from one read before it hands them to the writer,
/// even in the middle of the read. Bounds what a connection's reader holds outside its outbox
/// (and so outside `max_queued_bytes` and `max_queued_bytes_total`) while it waits for room:
/// this much and one reply. Small enough that many stuck connections add little to those
/// limits, large enough that a read of small calls takes the outbox's lock a few times at
/// most (16 KiB: about 300 replies of 32 bytes).
const MAX_HELD_REPLY_BYTES: usize = 16 * 1024;

/// What wakes the reader.
enum Event {
    Read(std::io::Result<usize>),
    Drain,
    Quiet,
}

/// The reader task of one connection: decodes frames and dispatches requests.
pub(super) struct ReadTask<R, D: Dispatch> {
    rt: R,
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    dispatch: Arc<D>,
    /// Boxes of finished handler futures, reused so that inline calls allocate nothing.
    spare: Vec<Pin<Box<D::Future>>>,
    /// The client's limit on reply bodies.
    peer_max_frame_len: u32,
    /// When the frames being handled were read, once a deadline needed it: one clock read
    /// per read, and none for calls answered inline.
    read_at: Option<Instant>,
    /// Replies and answers to the frames of the current read, in order, for the writer.
    held: Vec<Outgoing>,
    /// What `held` weighs, in bytes.
    held_bytes: usize,
}

impl<R: Runtime, D: Dispatch> ReadTask<R, D> {
    pub(super) fn new(rt: R, shared: Arc<Shared>, conn: Arc<ConnState>, dispatch: Arc<D>) -> Self {
        Self {
            rt,
            shared,
            conn,
            dispatch,
            spare: Vec::new(),
            peer_max_frame_len: 0,
            read_at: None,
            held: Vec::new(),
            held_bytes: 0,
        }
    }

    /// Serves the connection until it ends, then lingers if this side ended it.
    pub(super) async fn run<Rd: TransportRead>(
        mut self,
        mut reader: Rd,
        registration: Arc<Registration>,
    ) {
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
            Ok(hello) => {
                self.peer_max_frame_len = hello.max_frame_len;
                let config = self.shared.config.compression.as_ref();
                if let Some(compression) = compress::negotiate(config, hello.features) {
                    conn.out.compress_with(compression);
                }
            }
            Err(e) => {
                Shared::count(&self.shared.counters.protocol_errors);
                conn.go_away(e.code(), e.to_string());
                return false;
            }
        }
        conn.partial_since.store(0, Ordering::Relaxed);
        let max_len = self.shared.config.max_frame_len;
        let mut decoder = FrameDecoder::new(max_len);
        let accepted = compress::advertised(self.shared.config.compression.as_ref());
        let mut drain_seen = false;
        let counters = conn.out.counters();
        // Frames handled since this task last let others run.
        let mut unyielded = 0;
        loop {
            // Replies to what this read brought are written together, however the runtime
            // schedules the writer.
            let hold = conn.out.hold();
            let mut frames = 0;
            // Whether the connection ends with this read.
            let ends = loop {
                let decoded = read.next_frame(&mut decoder).and_then(|frame| {
                    frame
                        .map(|f| compress::inflate(f, accepted, max_len, counters))
                        .transpose()
                });
                match decoded {
                    Ok(Some(frame)) => {
                        frames += 1;
                        if !self.on_frame(frame)
                            || (self.held_bytes >= MAX_HELD_REPLY_BYTES && !self.hand_over().await)
                        {
                            break true;
                        }
                    }
                    Ok(None) => break false,
                    Err(e) => {
                        Shared::count(&self.shared.counters.protocol_errors);
                        self.go_away(e.code(), e.to_string());
                        break true;
                    }
                }
            };
            counters.frames_read.fetch_add(frames, Ordering::Relaxed);
            if ends {
                return false;
            }
            unyielded += frames as u32;
            let progressed = frames > 0;
            if !self.hand_over().await {
                return false;
            }
            // One request read, and at most its own handler still running: no other reply
            // is on its way, so if the writer is parked, what is queued (the reply, or that
            // handler's if it came under the hold) is written from this task. With more, the
            // client keeps several calls in flight: the writer task writes, beside this one
            // reading (on a multi-thread runtime) and with the next read's replies (on one
            // thread).
            hold.release(frames == 1 && conn.in_flight() <= 1);
            // A peer that keeps the socket full (a flood of tiny frames) would otherwise keep
            // this task running, since its reads never wait: on an executor without
            // cooperative budgeting (smol) the other connections on this thread would wait.
            if unyielded >= YIELD_EVERY_FRAMES {
                unyielded = 0;
                futures_lite::future::yield_now().await;
            }
            // A frame must complete within the read timeout of its first byte.
            if !read.has_partial() {
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
                    self.read_at = None;
                    conn.last_read.store(self.shared.now(), Ordering::Relaxed)
                }
                // The buffers went back; wait for the next bytes.
                Some(Event::Quiet) => {
                    self.held = Vec::new();
                }
                Some(Event::Drain) => {
                    drain_seen = true;
                    conn.close_if_idle();
                }
            }
        }
    }

    /// Carries out what one frame asks; `false` ends the connection.
    fn on_frame(&mut self, frame: Frame) -> bool {
        match proto::server::on_frame(frame) {
            Ok(Frames::Request(request)) => self.on_request(request),
            Ok(Frames::Send(answer)) => {
                self.hold(answer);
                true
            }
            Ok(Frames::Cancel(seq, expired)) => {
                // The call is over for the client, which may reuse its sequence id at once:
                // forget it now, and stop its handler. A call that already finished (or never
                // ran in a task) has nothing to stop.
                let running = self.conn.running.lock().remove(&seq);
                if let Some(cancel) = running {
                    cancel.set(expired);
                }
                if self.conn.in_flight.load(Ordering::Relaxed) > 0 {
                    self.conn.streams.lock().remove(&seq);
                }
                true
            }
            Ok(Frames::Stream(event)) => self.on_stream_event(event),
            Ok(Frames::PeerLeaving) => {
                self.conn.peer_leaving.store(true, Ordering::SeqCst);
                // Closing queues a `Close`, which the replies to the frames before the
                // client's GoAway must precede.
                self.release_held();
                self.conn.close_if_idle();
                true
            }
            Ok(Frames::Nothing) => true,
            Err(e) => {
                Shared::count(&self.shared.counters.protocol_errors);
                self.go_away(e.code(), e.to_string());
                false
            }
        }
    }

    /// Routes a stream frame to its call; frames for calls that ended are dropped.
    fn on_stream_event(&mut self, event: StreamEvent) -> bool {
        let Some(state) = self.conn.streams.lock().get(&event.seq()).cloned() else {
            return true;
        };
        match event.apply(&state) {
            Ok(wakers) => {
                streaming::wake(wakers);
                true
            }
            Err(e) => {
                Shared::count(&self.shared.counters.protocol_errors);
                self.go_away(ErrorCode::FLOW_CONTROL, e.to_string());
                false
            }
        }
    }

    /// Keeps `message` for the writer, with the rest of this read's replies.
    fn hold(&mut self, message: Outgoing) {
        self.held_bytes += message.weight();
        self.held.push(message);
    }

    /// Hands the replies held so far to the writer, in one lock of its queue (waiting while
    /// the queue is full); `false` once the writer is gone.
    async fn hand_over(&mut self) -> bool {
        self.held_bytes = 0;
        self.held.is_empty() || self.conn.out.send_all(&mut self.held).await
    }

    /// Ends the connection with a `GoAway`, after the replies already held.
    fn go_away(&mut self, code: ErrorCode, reason: String) {
        self.release_held();
        self.conn.go_away(code, reason);
    }

    /// Queues the replies held so far at once, whatever the queue holds (they are few: at
    /// most [`MAX_HELD_REPLY_BYTES`]): for what must follow them, a `Close` or a `GoAway`.
    fn release_held(&mut self) {
        self.held_bytes = 0;
        for message in self.held.drain(..) {
            self.conn.out.force_send(message);
        }
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

    fn on_request(&mut self, mut request: Incoming) -> bool {
        let header = request.header;
        let conn = &*self.conn;
        let span = CallSpan::server(&header, &conn.peer);
        let admission = Admission {
            draining: conn.draining.is_set(),
            admitted: conn.admitted.load(Ordering::SeqCst),
            max_in_flight: self.shared.config.max_in_flight,
        };
        if let Err(refusal) = admission.admit() {
            span.finish(Err(refusal.code()));
            let answer = match refusal {
                Refusal::ShuttingDown => error_reply(
                    &header,
                    Status::new(refusal.code(), refusal.reason()),
                    self.peer_max_frame_len,
                ),
                Refusal::TooManyInFlight => overloaded(&header, None, refusal.reason()),
            };
            self.hold(answer);
            return true;
        }
        let permit = match Permit::acquire(&self.shared) {
            Ok(permit) => permit,
            Err(retry_after) => {
                Shared::count(&self.shared.counters.shed);
                let reason = "the server is at its concurrency limit";
                span.finish(Err(ErrorCode::OVERLOADED));
                self.hold(overloaded(&header, Some(retry_after), reason));
                return true;
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
            span.finish(Err(ErrorCode::PROTOCOL_ERROR));
            self.go_away(ErrorCode::PROTOCOL_ERROR, reason);
            return false;
        }
        let metadata = match request.take_metadata() {
            Ok(metadata) => metadata,
            Err(e) => {
                span.finish(Err(ErrorCode::BAD_REQUEST));
                let status = Status::new(ErrorCode::BAD_REQUEST, e.to_string());
                let reply = error_reply(&header, status, self.peer_max_frame_len);
                self.hold(reply);
                return true;
            }
        };
        let timeout = request.timeout();
        let (stream, registration) = match request.streams() {
            true => {
                let (stream, registration) = self.open_stream(&header);
                (Some(stream), Some(registration))
            }
            false => (None, None),
        };
        let request = Request {
            method: header.method,
            seq: header.seq,
            body: request.body,
            timeout,
            stream,
            metadata,
            #[cfg(feature = "tracing")]
            span: span.span(),
        };
        let dispatch = &self.dispatch;
        // Not inside the span: the dispatcher may still give it a parent. A finished call's
        // box takes the future, and the dispatcher may reuse what that call allocated.
        let spare = self.spare.pop();
        let dispatched = catch_unwind(AssertUnwindSafe(|| match spare {
            Some(mut spare) => {
                dispatch.dispatch_in(request, spare.as_mut());
                spare
            }
            None => Box::pin(dispatch.dispatch(request)),
        }));
        let Ok(mut future) = dispatched else {
            span.finish(Err(ErrorCode::HANDLER_PANIC));
            self.panicked(&header);
            return true;
        };
        if !self.shared.config.inline_dispatch {
            let call = self.spawned(header, timeout, registration, permit, span);
            handler::spawn(&self.rt, &self.conn, &self.shared, future, call);
            return true;
        }
        let polled = span.in_scope(|| {
            let mut cx = Context::from_waker(Waker::noop());
            catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))).map_err(drop)
        });
        match polled {
            Ok(Poll::Ready(result)) => {
                if self.spare.len() < SPARE_FUTURES {
                    self.spare.push(future);
                }
                drop((registration, permit));
                span.finish(result.as_ref().map(drop).map_err(Status::code));
                self.hold(reply(&header, result, self.peer_max_frame_len));
            }
            Ok(Poll::Pending) => {
                // It waits on something: give it a task of its own. Its next poll registers
                // the task's waker, so nothing it waits for is missed.
                let call = self.spawned(header, timeout, registration, permit, span);
                handler::spawn(&self.rt, &self.conn, &self.shared, future, call);
            }
            Err(_) => {
                span.finish(Err(ErrorCode::HANDLER_PANIC));
                self.panicked(&header);
                handler::drop_as(future, DropReason::HandlerPanic);
            }
        }
        true
    }

    fn spawned(
        &mut self,
        header: FrameHeader,
        timeout: Option<Duration>,
        registration: Option<StreamRegistration>,
        permit: Permit,
        span: CallSpan,
    ) -> Spawned {
        // Counted from when the request was read: the caller's clock is not ours.
        let deadline = timeout.map(|t| *self.read_at.get_or_insert_with(Instant::now) + t);
        Spawned {
            header,
            deadline,
            registration,
            permit,
            peer_max_frame_len: self.peer_max_frame_len,
            span,
        }
    }

    fn panicked(&mut self, header: &FrameHeader) {
        Shared::count(&self.shared.counters.panics);
        let status = Status::new(ErrorCode::HANDLER_PANIC, "handler panicked");
        self.hold(error_reply(header, status, self.peer_max_frame_len));
    }
}
