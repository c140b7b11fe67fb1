//! Streaming calls on the client: a call that holds its slot of the window while items flow in
//! one or both directions, each direction under its own credit.

use std::{
    fmt,
    future::poll_fn,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_lite::Stream;

use super::{CallOptions, Client, Conn};
use crate::{
    error::{CallError, ConnectionError, ErrorCode},
    frame::flags,
    io::Outgoing,
    streaming::{self, StreamState},
};

/// Which directions of a streaming call carry items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamMode {
    /// The server sends items, then its final reply.
    ServerStreaming,
    /// The client sends items, then the server its one reply.
    ClientStreaming,
    /// Both send items; the server ends with its final reply.
    Bidirectional,
}

impl StreamMode {
    fn flags(self) -> u8 {
        match self {
            Self::ServerStreaming => flags::STREAM_REPLY,
            Self::ClientStreaming => flags::STREAM_REQUEST,
            Self::Bidirectional => flags::STREAM_REQUEST | flags::STREAM_REPLY,
        }
    }

    fn sends(self) -> bool {
        self != Self::ServerStreaming
    }
}

/// One open streaming call. Its slot of the window and its stream state go when both halves
/// are dropped; if the call is still pending then, the server is told to cancel it.
struct OpenCall {
    conn: Arc<Conn>,
    slot: u32,
    state: Arc<StreamState>,
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        let seq = self.state.seq();
        self.conn.forget_stream(seq);
        streaming::wake(self.state.close(ErrorCode::CANCELLED));
        if let Some(seq) = self.conn.release(self.slot, true) {
            let cancel = crate::proto::cancel(seq, ErrorCode::CANCELLED);
            self.conn.out.try_send(cancel);
        }
    }
}

impl Client {
    /// Opens a streaming call to `method` with first message `body`. The server's items (and
    /// its final reply) come through the [`ReplyStream`]; with a mode that sends, the
    /// [`RequestSender`] sends the client's items.
    ///
    /// The options' timeout bounds the whole call; unlike unary calls, a stream has no deadline
    /// unless the options set one (the client's default timeout does not apply). The deadline
    /// travels to the server, which stops the handler when it passes. Dropping both halves
    /// before the call ends cancels it.
    ///
    /// # Errors
    ///
    /// As [`Client::call`], for the opening request.
    pub async fn open_stream(
        &self,
        method: u32,
        body: Bytes,
        mode: StreamMode,
        options: &CallOptions,
    ) -> Result<(Option<RequestSender>, ReplyStream), CallError> {
        let conn = &self.handle.conn;
        conn.check_request(&body, options)?;
        // Streams run until they end: they get a deadline only when the options set one.
        let timeout = options.timeout.flatten();
        let deadline = timeout.map(|t| (conn.clock.deadline(t), t));
        let (slot, seq) = conn.start(deadline, false).await?;
        let (state, grant) = StreamState::new(seq, conn.stream_window);
        let state = Arc::new(state);
        conn.streams.lock().insert(seq, state.clone());
        conn.open_streams.fetch_add(1, Ordering::Relaxed);
        let call = Arc::new(OpenCall {
            conn: conn.clone(),
            slot,
            state,
        });
        let request = conn.request(
            method,
            seq,
            timeout,
            mode.flags(),
            (body, Bytes::new()),
            options.metadata.as_ref(),
        );
        let _ = conn.out.send(request).await;
        if grant > 0 && mode != StreamMode::ClientStreaming {
            // Through the ordered queue: a control frame could overtake the request, and the
            // server drops credit for a stream it does not know yet.
            let credit = Outgoing::frame(streaming::credit(seq, grant), Bytes::new());
            let _ = conn.out.send(credit).await;
        }
        let sender = mode.sends().then(|| RequestSender {
            call: call.clone(),
            finished: false,
        });
        Ok((
            sender,
            ReplyStream {
                call,
                outcome: None,
                done: false,
            },
        ))
    }
}

impl Conn {
    /// Removes stream `seq` from the reader's map.
    fn forget_stream(&self, seq: u64) {
        if self.streams.lock().remove(&seq).is_some() {
            self.open_streams.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Sends the client's items of a streaming call, each when the server has granted credit.
#[must_use = "dropping the sender without `finish` cancels the call's request stream"]
pub struct RequestSender {
    call: Arc<OpenCall>,
    finished: bool,
}

impl fmt::Debug for RequestSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSender")
            .field("seq", &self.call.state.seq())
            .finish_non_exhaustive()
    }
}

impl RequestSender {
    /// Sends one item, waiting while the server has granted no credit (it is not consuming).
    ///
    /// # Errors
    ///
    /// [`CallError::RequestTooLarge`] for an item over the server's frame limit; otherwise an
    /// error once the call is over (the server answered, the call was cancelled or timed out,
    /// or the connection ended).
    pub async fn send(&mut self, item: Bytes) -> Result<(), CallError> {
        let conn = &self.call.conn;
        conn.check_request(&item, &CallOptions::new())?;
        let state = &self.call.state;
        if let Err(code) = poll_fn(|cx| state.poll_send(cx, item.len())).await {
            return Err(call_over(conn, code));
        }
        if conn.out.send(streaming::item(state.seq(), item)).await {
            Ok(())
        } else {
            Err(call_over(conn, ErrorCode::CANCELLED))
        }
    }

    /// Whether the call still takes items.
    pub fn is_open(&self) -> bool {
        self.call.state.closed().is_none()
    }

    /// Completes once the call is over (the server answered, the call was cancelled or timed
    /// out, or the connection ended): items sent from then on fail.
    pub async fn closed(&self) {
        poll_fn(|cx| self.call.state.poll_closed(cx)).await;
    }

    /// Ends the client's items normally; the server then sends its reply.
    pub async fn finish(mut self) {
        self.finished = true;
        let seq = self.call.state.seq();
        let _ = self
            .call
            .conn
            .out
            .send(streaming::end(seq, ErrorCode::NO_ERROR, ""))
            .await;
    }
}

impl Drop for RequestSender {
    fn drop(&mut self) {
        // Dropped without `finish`: the server's handler sees its request stream fail.
        if !self.finished && self.call.state.closed().is_none() {
            let seq = self.call.state.seq();
            let end = streaming::end(seq, ErrorCode::CANCELLED, "the client dropped its stream");
            self.call.conn.out.try_send(end);
        }
    }
}

/// The error of an item the call no longer takes: the connection's end, or the code the call
/// ended with (`NO_ERROR` once the server has answered; its reply is on the reply stream).
fn call_over(conn: &Conn, code: ErrorCode) -> CallError {
    match conn.table.lock().refusing() {
        Some(error) if code == ErrorCode::CANCELLED => CallError::Connection(error.clone()),
        _ if code == ErrorCode::NO_ERROR => CallError::Remote {
            code,
            message: "the server already answered; the item was not sent".into(),
        },
        _ => CallError::Remote {
            code,
            message: "the call is over; the item was not sent".into(),
        },
    }
}

/// The server's side of a streaming call: its items in order, then its final reply.
///
/// As a [`Stream`] it yields each item, then ends (`None`) after a successful final reply, or
/// yields the call's error and then ends. [`ReplyStream::response`] waits for the final reply
/// itself (client-streaming calls).
pub struct ReplyStream {
    call: Arc<OpenCall>,
    outcome: Option<Result<Bytes, CallError>>,
    done: bool,
}

impl fmt::Debug for ReplyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyStream")
            .field("seq", &self.call.state.seq())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ReplyStream {
    /// The next item; `Ready(None)` once the items ended and the final reply arrived (kept for
    /// [`response`](Self::response)).
    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, CallError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let call = &*self.call;
        loop {
            if let Poll::Ready(Some(Ok(item))) = call.state.poll_item(cx, &call.conn.out) {
                return Poll::Ready(Some(Ok(item)));
            }
            // The queue was empty after the reply arrived: every item has been taken (the
            // reader queues a call's items before completing it).
            if self.outcome.is_some() {
                return Poll::Ready(None);
            }
            match call.conn.table.lock().poll(call.slot, cx) {
                // Items may have arrived between the two looks: look at the queue again.
                Poll::Ready(outcome) => self.outcome = Some(outcome),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Waits for the server's final reply, dropping any items still to come (or none, once
    /// the items were read to their end as a [`Stream`]).
    ///
    /// # Errors
    ///
    /// The call's error: the server's error, a timeout, cancellation or a connection failure.
    pub async fn response(mut self) -> Result<Bytes, CallError> {
        loop {
            if poll_fn(|cx| self.poll_item(cx)).await.is_none() {
                break;
            }
        }
        self.outcome
            .take()
            .unwrap_or(Err(CallError::NotSent(ConnectionError::Closed)))
    }

    /// Bytes of items received and not yet taken (at most the stream window plus one item).
    pub fn buffered(&self) -> usize {
        self.call.state.buffered()
    }
}

impl Stream for ReplyStream {
    type Item = Result<Bytes, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.poll_item(cx) {
            Poll::Ready(None) => {
                self.done = true;
                // An error ends the stream as its last item; a final reply stays for
                // `response`, which a caller may still ask for once the items are read.
                if matches!(self.outcome, Some(Err(_))) {
                    if let Some(Err(e)) = self.outcome.take() {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }
}
