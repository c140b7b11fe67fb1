//! Streaming calls on the server: the client's items as a stream, and a sink for the handler's
//! items, each direction under its own credit.

use std::{
    fmt,
    future::poll_fn,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_lite::Stream;

use super::{conn::ConnState, Status};
use crate::{
    error::ErrorCode,
    frame::flags,
    io::Outbox,
    streaming::{self, StreamState},
};

/// The stream parts of one call, shared by its [`Request`](super::Request) clones.
#[derive(Clone)]
pub(crate) struct CallStream {
    pub(crate) state: Arc<StreamState>,
    pub(crate) out: Outbox,
    pub(crate) flags: u8,
    pub(crate) peer_max_frame_len: u32,
}

impl fmt::Debug for CallStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallStream")
            .field("seq", &self.state.seq())
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl CallStream {
    pub(crate) fn items(&self) -> Option<RequestStream> {
        (self.flags & flags::STREAM_REQUEST != 0).then(|| RequestStream {
            stream: self.clone(),
            done: false,
        })
    }

    pub(crate) fn sink(&self) -> Option<ReplySink> {
        (self.flags & flags::STREAM_REPLY != 0).then(|| ReplySink {
            stream: self.clone(),
        })
    }
}

/// Removes a call's stream from its connection when the call ends, however it ends (reply,
/// cancel, deadline, connection end): the handler's sink then fails, its request stream ends.
pub(crate) struct StreamRegistration {
    pub(crate) conn: Arc<ConnState>,
    pub(crate) state: Arc<StreamState>,
}

impl Drop for StreamRegistration {
    fn drop(&mut self) {
        self.conn.forget_stream(&self.state);
        streaming::wake(self.state.close(ErrorCode::CANCELLED));
    }
}

/// The client's items of a client-streaming or bidirectional call, in order.
///
/// Yields each item; ends (`None`) when the client finishes its stream; yields an error status
/// (`CANCELLED`) if the client abandoned it. Taking an item grants the client credit for more,
/// so a handler that stops reading stops the client (and buffers at most the stream window).
pub struct RequestStream {
    stream: CallStream,
    done: bool,
}

impl fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestStream")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl RequestStream {
    /// Bytes of items received and not yet taken.
    pub fn buffered(&self) -> usize {
        self.stream.state.buffered()
    }
}

impl Stream for RequestStream {
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = self.stream.state.poll_item(cx, &self.stream.out);
        match polled {
            Poll::Ready(Some(Ok(item))) => Poll::Ready(Some(Ok(item))),
            Poll::Ready(Some(Err((code, message)))) => {
                self.done = true;
                Poll::Ready(Some(Err(Status::new(code, message))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Sends a handler's items to the client of a server-streaming or bidirectional call, each
/// when the client has granted credit. The handler's return value is the final reply, sent
/// after every item.
#[derive(Clone)]
pub struct ReplySink {
    stream: CallStream,
}

impl fmt::Debug for ReplySink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplySink")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl ReplySink {
    /// Sends one item, waiting while the client has granted no credit (it is not consuming).
    ///
    /// # Errors
    ///
    /// `RESPONSE_TOO_LARGE` for an item over the client's frame limit (nothing is sent);
    /// `CANCELLED` once the call is over (cancelled, past its deadline, connection gone).
    pub async fn send(&self, item: Bytes) -> Result<(), Status> {
        let stream = &self.stream;
        if item.len() > stream.peer_max_frame_len as usize {
            return Err(Status::new(
                ErrorCode::RESPONSE_TOO_LARGE,
                format!(
                    "stream item of {} bytes exceeds the caller's limit of {} bytes",
                    item.len(),
                    stream.peer_max_frame_len
                ),
            ));
        }
        let seq = stream.state.seq();
        poll_fn(|cx| stream.state.poll_send(cx, item.len()))
            .await
            .map_err(|code| Status::new(code, "the call is over"))?;
        if stream.out.send(streaming::item(seq, item)).await {
            Ok(())
        } else {
            Err(Status::new(
                ErrorCode::CANCELLED,
                "the connection is closed",
            ))
        }
    }

    /// Whether the call is over: further items would fail.
    pub fn is_closed(&self) -> bool {
        self.stream.state.closed().is_some()
    }
}
