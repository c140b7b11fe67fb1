//! The connection engine of each side, sans-IO in quinn-proto's manner: a batch of decoded
//! frames goes in, and what the connection's tasks must do comes out (calls completed with the
//! wakers to wake, frames to queue, stream events to route, requests to dispatch, `GoAway`s and
//! protocol violations as typed errors). Nothing here takes a lock of its own, reads a clock,
//! waits or names a runtime: the tasks around it (`client/driver.rs`, `server/read.rs`) read a
//! batch, feed it, release their locks, wake and write.
//!
//! What both sides share lives here: the answer to a `Ping`, and the routing of stream frames
//! (`StreamItem`, `StreamEnd`, `Credit`) to their call's [`StreamState`].

pub(crate) mod client;
pub(crate) mod server;

use std::task::Waker;

use bytes::Bytes;

use crate::{
    error::ErrorCode,
    flow::FlowError,
    frame::{flags, Frame, FrameHeader, FrameKind},
    io::Outgoing,
    streaming::StreamState,
};

/// Something that happened to a streaming call, in the order the frames said it.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// A `StreamItem`, `StreamEnd` or `Credit` frame for the stream of call `frame.header.seq`.
    Frame(Frame),
    /// The call `seq` ended (its reply, or its deadline): its stream takes no more items.
    End(u64, ErrorCode),
}

impl StreamEvent {
    /// The call the event is about.
    pub(crate) fn seq(&self) -> u64 {
        match self {
            Self::Frame(frame) => frame.header.seq,
            Self::End(seq, _) => *seq,
        }
    }

    /// Applies the event to the call's stream; returns the wakers to wake (after every lock
    /// is released).
    ///
    /// # Errors
    ///
    /// [`FlowError`] if the peer sent an item past the credit it was given.
    pub(crate) fn apply(self, state: &StreamState) -> Result<[Option<Waker>; 2], FlowError> {
        Ok(match self {
            Self::Frame(frame) => {
                let header = frame.header;
                let waker = match header.kind {
                    FrameKind::StreamItem => {
                        state.on_item(frame.body, header.flags & flags::END != 0)?
                    }
                    FrameKind::StreamEnd => {
                        let message = String::from_utf8_lossy(&frame.body).into_owned();
                        state.on_end(ErrorCode::from_u32(header.aux), message)
                    }
                    _ => state.on_credit(header.aux),
                };
                [waker, None]
            }
            Self::End(_, code) => state.close(code),
        })
    }
}

/// Whether a frame of `kind` belongs to a streaming call.
pub(crate) fn is_stream_frame(kind: FrameKind) -> bool {
    matches!(
        kind,
        FrameKind::StreamItem | FrameKind::StreamEnd | FrameKind::Credit
    )
}

/// The `Cancel` of call `seq`, saying why in `aux`: `CANCELLED` (the caller dropped it) or
/// `DEADLINE_EXCEEDED` (its deadline passed).
pub(crate) fn cancel(seq: u64, why: ErrorCode) -> Outgoing {
    let mut header = FrameHeader::new(FrameKind::Cancel, seq);
    header.aux = why.as_u32();
    Outgoing::frame(header, Bytes::new())
}

/// The `Pong` that answers a `Ping`: its `seq` and body echoed.
pub(crate) fn pong(ping: &FrameHeader, body: Bytes) -> Outgoing {
    Outgoing::frame(FrameHeader::new(FrameKind::Pong, ping.seq), body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::StreamState;

    fn frame(kind: FrameKind, seq: u64, aux: u32, flags: u8, body: &'static [u8]) -> Frame {
        let mut header = FrameHeader::new(kind, seq);
        header.aux = aux;
        header.flags = flags;
        Frame::new(header, Bytes::from_static(body))
    }

    #[test]
    fn a_pong_echoes_the_ping() {
        let ping = FrameHeader::new(FrameKind::Ping, 42);
        match pong(&ping, Bytes::from_static(b"t")) {
            Outgoing::Frame(header, body) => {
                assert_eq!((header.kind, header.seq), (FrameKind::Pong, 42));
                assert_eq!(header.len, 1);
                assert_eq!(body, &b"t"[..]);
            }
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn stream_items_past_the_window_are_a_flow_error() {
        // The smallest window is the initial credit, granted by the hello: nothing to send.
        let (state, grant) = StreamState::new(7, 4);
        assert_eq!(grant, 0);
        let window = crate::flow::INITIAL_STREAM_CREDIT as usize;
        let mut header = FrameHeader::new(FrameKind::StreamItem, 7);
        header.len = window as u32;
        let item = StreamEvent::Frame(Frame::new(header, vec![0; window].into()));
        assert_eq!(item.seq(), 7);
        assert!(item.apply(&state).is_ok());
        let over = StreamEvent::Frame(frame(FrameKind::StreamItem, 7, 0, 0, b"e"));
        assert_eq!(over.apply(&state).unwrap_err(), FlowError { len: 1 });
    }

    #[test]
    fn end_flag_stream_end_and_close_end_the_stream() {
        let (state, _) = StreamState::new(1, 64);
        let last = StreamEvent::Frame(frame(FrameKind::StreamItem, 1, 0, flags::END, b"x"));
        last.apply(&state).unwrap();
        assert_eq!(
            state.closed(),
            None,
            "the peer's end closes only its direction"
        );
        // Items after the end are dropped, not a violation.
        let late = StreamEvent::Frame(frame(FrameKind::StreamItem, 1, 0, 0, b"y"));
        assert!(late.apply(&state).is_ok());
        assert_eq!(state.buffered(), 1);

        let (state, _) = StreamState::new(2, 64);
        let aborted = frame(
            FrameKind::StreamEnd,
            2,
            ErrorCode::CANCELLED.as_u32(),
            0,
            b"gone",
        );
        StreamEvent::Frame(aborted).apply(&state).unwrap();
        let late = StreamEvent::Frame(frame(FrameKind::StreamItem, 2, 0, 0, b"y"));
        late.apply(&state).unwrap();
        assert_eq!(state.buffered(), 0);

        let (state, _) = StreamState::new(3, 64);
        StreamEvent::End(3, ErrorCode::DEADLINE_EXCEEDED)
            .apply(&state)
            .unwrap();
        assert_eq!(state.closed(), Some(ErrorCode::DEADLINE_EXCEEDED));
    }

    #[test]
    fn credit_is_granted_to_the_sender() {
        let (state, _) = StreamState::new(5, 64);
        let mut cx = std::task::Context::from_waker(Waker::noop());
        let initial = crate::flow::INITIAL_STREAM_CREDIT as usize;
        assert!(state.poll_send(&mut cx, initial).is_ready());
        assert!(
            state.poll_send(&mut cx, 10).is_pending(),
            "the credit is spent"
        );
        let credit = StreamEvent::Frame(frame(FrameKind::Credit, 5, 100, 0, b""));
        credit.apply(&state).unwrap();
        assert!(state.poll_send(&mut cx, 10).is_ready());
    }

    #[test]
    fn only_stream_kinds_are_stream_frames() {
        for kind in [
            FrameKind::StreamItem,
            FrameKind::StreamEnd,
            FrameKind::Credit,
        ] {
            assert!(is_stream_frame(kind));
        }
        for kind in [
            FrameKind::Request,
            FrameKind::Response,
            FrameKind::Error,
            FrameKind::Cancel,
            FrameKind::Ping,
            FrameKind::Pong,
            FrameKind::GoAway,
        ] {
            assert!(!is_stream_frame(kind));
        }
    }
}
