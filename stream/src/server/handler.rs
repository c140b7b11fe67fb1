//! A call's life after dispatch: its place under the concurrency limit, the task of a handler
//! that waits on something (until it finishes, is cancelled, expires or loses its connection),
//! and the frames that answer it.

use std::{
    cell::Cell,
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_lite::FutureExt;

use super::{
    conn::{remove_same, ConnState},
    stream::StreamRegistration,
    Reply, Shared, Status,
};
use crate::{
    error::ErrorCode,
    frame::{FrameHeader, FrameKind},
    io::Outgoing,
    runtime::Runtime,
    signal::Signal,
    trace::CallSpan,
};

/// A call going to a task of its own, with what its task needs besides the handler.
pub(super) struct Spawned {
    pub(super) header: FrameHeader,
    pub(super) deadline: Option<Instant>,
    /// The call's stream, if it streams: forgotten when the task ends.
    pub(super) registration: Option<StreamRegistration>,
    pub(super) permit: Permit,
    /// The client's limit on reply bodies.
    pub(super) peer_max_frame_len: u32,
    /// The call's span: the task runs inside it.
    pub(super) span: CallSpan,
}

/// Runs a handler that waits on something in a task of its own, until it finishes, the client
/// cancels the call, its deadline passes, or the connection ends; then queues its reply.
pub(super) fn spawn<R, F>(
    rt: &R,
    conn: &Arc<ConnState>,
    shared: &Arc<Shared>,
    future: Pin<Box<F>>,
    call: Spawned,
) where
    R: Runtime,
    F: Future<Output = Result<Reply, Status>> + Send + 'static,
{
    let Spawned {
        header,
        deadline,
        registration,
        mut permit,
        peer_max_frame_len,
        span,
    } = call;
    permit.waited();
    let conn = conn.clone();
    let shared = shared.clone();
    let cancel = Arc::new(Cancel::default());
    conn.running.lock().insert(header.seq, cancel.clone());
    conn.in_flight.fetch_add(1, Ordering::SeqCst);
    conn.admitted.fetch_add(1, Ordering::SeqCst);
    let expiry = deadline.map(|at| rt.sleep_until(at));
    let task = span.clone().instrument(async move {
        let mut handler = CatchUnwind { future };
        let running = async { End::Done((&mut handler).await) };
        let cancelled = async { End::Cancelled(cancel.wait().await) };
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
        let end = running.or(cancelled).or(ended).or(expired).await;
        // A stopped handler's drop guards run here, where its dispatcher can tell why.
        match end {
            End::Done(Some(_)) => drop(handler),
            End::Done(None) => drop_as(handler, DropReason::HandlerPanic),
            End::Cancelled(false) => drop_as(handler, DropReason::Cancelled),
            End::Cancelled(true) => drop_as(handler, DropReason::DeadlineExceeded),
            End::Expired => drop_as(handler, DropReason::DeadlineExceeded),
            End::ConnectionEnded => drop_as(handler, DropReason::ConnectionEnded),
        }
        remove_same(&conn.running, header.seq, &cancel);
        drop((registration, permit));
        conn.admitted.fetch_sub(1, Ordering::SeqCst);
        let past_deadline = matches!(end, End::Cancelled(true));
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
            End::Cancelled(_) | End::ConnectionEnded => None,
        };
        span.finish(match &result {
            Some(Ok(_)) => Ok(()),
            Some(Err(status)) => Err(status.code()),
            None if past_deadline => Err(ErrorCode::DEADLINE_EXCEEDED),
            None => Err(ErrorCode::CANCELLED),
        });
        if let Some(result) = result {
            let reply = reply(&header, result, peer_max_frame_len);
            // The only call running: no other reply is on its way to batch this one with.
            let _ = match conn.in_flight.load(Ordering::Relaxed) {
                1 => conn.out.send_now(reply),
                _ => conn.out.send(reply),
            }
            .await;
        }
        if conn.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            conn.close_if_idle();
        }
    });
    rt.spawn(task);
}

/// A call's place under the adaptive concurrency limit (nothing when it is off); given back
/// when dropped, with the call's latency if it waited on something.
pub(super) struct Permit {
    shared: Option<Arc<Shared>>,
    /// Set when the call went to a task of its own: its latency is a sample for the limit.
    started: Option<Instant>,
}

impl Permit {
    /// A place, or the retry-after hint when the limit is reached.
    pub(super) fn acquire(shared: &Arc<Shared>) -> Result<Self, Duration> {
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
    pub(super) fn waited(&mut self) {
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
    /// The client cancelled the call (`true`: because its deadline passed).
    Cancelled(bool),
    Expired,
    ConnectionEnded,
}
/// Stops a handler running in a task of its own: set when the client cancels its call, with
/// whether the call's deadline is why.
#[derive(Default)]
pub(super) struct Cancel {
    signal: Signal,
    expired: AtomicBool,
}

impl Cancel {
    /// The client cancelled the call; `expired`: because the call's deadline passed.
    pub(super) fn set(&self, expired: bool) {
        self.expired.store(expired, Ordering::Release);
        self.signal.set();
    }

    /// Completes once the call is cancelled: whether its deadline is why.
    async fn wait(&self) -> bool {
        self.signal.wait().await;
        self.expired.load(Ordering::Acquire)
    }
}

/// Why the server drops the future of a handler that did not finish (see [`drop_reason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// The client cancelled the call: it dropped it, or gave up waiting.
    Cancelled,
    /// The call's deadline passed on the server.
    DeadlineExceeded,
    /// The connection ended: nobody is left to read a reply.
    ConnectionEnded,
    /// The handler panicked; the client is answered `HANDLER_PANIC`.
    HandlerPanic,
}

thread_local! {
    static DROP_REASON: Cell<Option<DropReason>> = const { Cell::new(None) };
}

/// While the server drops the future of a handler that did not finish, why it does; `None`
/// anywhere else. A [`Dispatch`](crate::Dispatch) future reads it in its `Drop`, to count the
/// call's outcome as the client sees it, say (`DEADLINE_EXCEEDED` rather than a cancel).
pub fn drop_reason() -> Option<DropReason> {
    DROP_REASON.get()
}

/// Drops `handler` with [`drop_reason`] telling `reason` meanwhile.
pub(super) fn drop_as<T>(handler: T, reason: DropReason) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DROP_REASON.set(None);
        }
    }
    DROP_REASON.set(Some(reason));
    let _reset = Reset;
    drop(handler);
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
pub(super) fn reply(
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
            return Outgoing::Parts(header, Box::new([head, tail, Bytes::new()]));
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
pub(super) fn overloaded(
    request: &FrameHeader,
    retry_after: Option<Duration>,
    reason: &str,
) -> Outgoing {
    let header = FrameHeader {
        method: request.method,
        aux: ErrorCode::OVERLOADED.as_u32(),
        ..FrameHeader::new(FrameKind::Error, request.seq)
    };
    Outgoing::frame(header, crate::body::overloaded(retry_after, reason))
}

pub(super) fn error_reply(
    request: &FrameHeader,
    status: Status,
    peer_max_frame_len: u32,
) -> Outgoing {
    let header = FrameHeader {
        method: request.method,
        aux: status.code().as_u32(),
        ..FrameHeader::new(FrameKind::Error, request.seq)
    };
    let mut message = status.into_body();
    message.truncate(peer_max_frame_len as usize);
    Outgoing::frame(header, message)
}
