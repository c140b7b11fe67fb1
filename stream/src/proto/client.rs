//! The client's connection engine: what a batch of the server's frames does to the calls in
//! flight. The reader locks the call table once per batch, hands it here with the frames, and
//! carries out the [`Effects`] after the lock is released.

use std::task::Waker;

use super::{is_stream_frame, pong, StreamEvent};
use crate::{
    body,
    call::{CallTable, Outcome},
    client::PING_TOKEN,
    error::{CallError, ConnectionError, ErrorCode},
    frame::{Frame, FrameError, FrameKind},
    io::Outgoing,
};

/// What one batch of frames asks of the client's tasks. Reused from batch to batch: the
/// reader takes everything out of it before the next.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Callers whose calls completed, to wake once no lock is held.
    pub(crate) wakers: Vec<Waker>,
    /// Frames to queue for the writer (answers to the server's pings).
    pub(crate) frames: Vec<Outgoing>,
    /// Events of streaming calls, in the order their frames came, for the streams map.
    pub(crate) streams: Vec<StreamEvent>,
    /// Outcomes held back while streams are open: a call's stream events must be routed
    /// before its completion is visible (a caller that sees the call done stops taking items),
    /// so these complete after `streams`, with [`complete_held`].
    pub(crate) outcomes: Vec<(u64, Outcome)>,
    /// Tokens of the [`Client::ping`](crate::Client::ping)s answered.
    pub(crate) pings: Vec<u64>,
    /// The server sent a `GoAway`: the table refuses new calls.
    pub(crate) refusing: bool,
    /// A `GoAway` with an error code: the reason the connection will end.
    pub(crate) going_away: Option<ConnectionError>,
    /// The server drains (`GoAway` with `NO_ERROR`) and no call is left on the connection:
    /// the client leaves, so that the server can close at once.
    pub(crate) drained: Option<ConnectionError>,
}

/// Applies a batch of frames from the server to the calls in `table`. `streams` says whether
/// any streaming call is open: replies then end their call's stream too, and the outcomes are
/// held in `fx.outcomes`, to complete (with [`complete_held`]) once the stream events before
/// them are routed.
///
/// # Errors
///
/// The server broke the protocol (a `Request` sent to a client): the connection must end,
/// telling the server why with a `GoAway` of the error's [`code`](ConnectionError::code).
/// Effects of the frames before the violating one are kept.
pub(crate) fn on_frames(
    table: &mut CallTable,
    frames: impl IntoIterator<Item = Frame>,
    streams: bool,
    fx: &mut Effects,
) -> Result<(), ConnectionError> {
    for frame in frames {
        let header = frame.header;
        match header.kind {
            FrameKind::Response => {
                let outcome = Ok(frame.body);
                complete(table, header.seq, outcome, ErrorCode::NO_ERROR, streams, fx);
            }
            FrameKind::Error => {
                let code = ErrorCode::from_u32(header.aux);
                let outcome = Err(call_error(code, &frame));
                complete(table, header.seq, outcome, code, streams, fx);
            }
            // Frames for streams this client no longer has are dropped, like late replies.
            kind if is_stream_frame(kind) && streams => {
                fx.streams.push(StreamEvent::Frame(frame));
            }
            FrameKind::GoAway => {
                let (code, reason) = body::go_away_parts(&frame);
                let error = ConnectionError::GoAway { code, reason };
                if code != ErrorCode::NO_ERROR {
                    fx.going_away = Some(error.clone());
                }
                table.drain(error);
                fx.refusing = true;
            }
            FrameKind::Ping => fx.frames.push(pong(&header, frame.body)),
            FrameKind::Request => return Err(FrameError::UnexpectedKind(header.kind).into()),
            // Answers to `Client::ping`; those to keep-alive pings only prove the peer alive
            // (any frame does).
            FrameKind::Pong if header.seq & PING_TOKEN != 0 => fx.pings.push(header.seq),
            // Replies to pings we did not send, and cancels, are ignored.
            _ => {}
        }
    }
    if fx.going_away.is_none() && table.in_use() == 0 {
        if let Some(error @ ConnectionError::GoAway { code, .. }) = table.refusing() {
            if *code == ErrorCode::NO_ERROR {
                fx.drained = Some(error.clone());
            }
        }
    }
    Ok(())
}

/// Completes call `seq` with `outcome` at once, or (while streams are open) ends its stream
/// with `code` and holds the outcome until the stream events are routed.
fn complete(
    table: &mut CallTable,
    seq: u64,
    outcome: Outcome,
    code: ErrorCode,
    streams: bool,
    fx: &mut Effects,
) {
    if streams {
        fx.streams.push(StreamEvent::End(seq, code));
        fx.outcomes.push((seq, outcome));
    } else {
        table.complete(seq, outcome, &mut fx.wakers);
    }
}

/// Completes the calls whose outcomes [`on_frames`] held back, once their stream events are
/// routed.
pub(crate) fn complete_held(table: &mut CallTable, fx: &mut Effects) {
    for (seq, outcome) in fx.outcomes.drain(..) {
        table.complete(seq, outcome, &mut fx.wakers);
    }
}

/// The error of a call the server answered with an `Error` frame of `code`.
fn call_error(code: ErrorCode, frame: &Frame) -> CallError {
    if code == ErrorCode::APPLICATION {
        CallError::Application(frame.body.clone())
    } else if code == ErrorCode::OVERLOADED {
        let (retry_after, message) = body::overloaded_parts(&frame.body);
        CallError::Overloaded {
            retry_after,
            message,
        }
    } else {
        CallError::Remote {
            code,
            message: String::from_utf8_lossy(&frame.body).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        task::{Context, Poll},
        time::Duration,
    };

    use bytes::Bytes;

    use super::*;
    use crate::{frame::FrameHeader, testing::Count};

    fn frame(kind: FrameKind, seq: u64, aux: u32, body: &[u8]) -> Frame {
        let mut header = FrameHeader::new(kind, seq);
        header.aux = aux;
        Frame::new(header, Bytes::copy_from_slice(body))
    }

    /// A table with one call per waker, each in its own slot; returns the sequence ids.
    fn calls(table: &mut CallTable, wakers: &[Arc<Count>]) -> Vec<u64> {
        (0..wakers.len())
            .map(|i| {
                let waker = Waker::from(wakers[i].clone());
                table.begin(i as u32, None, Some(waker)).unwrap()
            })
            .collect()
    }

    fn outcome(table: &mut CallTable, slot: u32) -> Option<Outcome> {
        match table.poll(slot, &mut Context::from_waker(Waker::noop())) {
            Poll::Ready(outcome) => Some(outcome),
            Poll::Pending => None,
        }
    }

    fn apply(table: &mut CallTable, frames: Vec<Frame>, fx: &mut Effects) {
        on_frames(table, frames, false, fx).expect("no violation");
    }

    #[test]
    fn a_batch_completes_its_calls_and_wakes_each_caller_once_after() {
        let mut table = CallTable::new(4, 0);
        let counts: Vec<_> = (0..3).map(|_| Arc::new(Count::default())).collect();
        let seqs = calls(&mut table, &counts);
        let mut fx = Effects::default();
        let batch = vec![
            frame(FrameKind::Response, seqs[2], 0, b"c"),
            frame(FrameKind::Response, seqs[0], 0, b"a"),
        ];
        apply(&mut table, batch, &mut fx);
        // Nobody is woken inside the engine: the wakers come out, to wake after the lock.
        assert!(counts.iter().all(|c| c.get() == 0));
        assert_eq!(fx.wakers.len(), 2);
        fx.wakers.drain(..).for_each(Waker::wake);
        let woken: Vec<_> = counts.iter().map(|c| c.get()).collect();
        assert_eq!(woken, [1, 0, 1]);
        assert_eq!(outcome(&mut table, 0).unwrap().unwrap(), &b"a"[..]);
        assert!(outcome(&mut table, 1).is_none(), "call 1 still waits");
        assert_eq!(outcome(&mut table, 2).unwrap().unwrap(), &b"c"[..]);
    }

    #[test]
    fn late_duplicate_and_forged_replies_are_dropped() {
        let mut table = CallTable::new(2, 0);
        let seq = table.begin(0, None, None).unwrap();
        let mut fx = Effects::default();
        let batch = vec![
            frame(FrameKind::Response, seq, 0, b"first"),
            frame(FrameKind::Response, seq, 0, b"again"),
            // The next generation of the slot, and a slot that never held a call.
            frame(FrameKind::Response, seq + (1 << 32), 0, b"forged"),
            frame(FrameKind::Response, 1, 0, b"nobody"),
            frame(FrameKind::Error, seq, ErrorCode::INTERNAL.as_u32(), b"late"),
        ];
        apply(&mut table, batch, &mut fx);
        assert_eq!(outcome(&mut table, 0).unwrap().unwrap(), &b"first"[..]);
    }

    #[test]
    fn error_frames_become_typed_call_errors() {
        let mut table = CallTable::new(3, 0);
        let seqs = calls(&mut table, &[(); 3].map(|_| Arc::new(Count::default())));
        let mut overloaded = 250u32.to_le_bytes().to_vec();
        overloaded.extend_from_slice(b"busy");
        let batch = vec![
            frame(
                FrameKind::Error,
                seqs[0],
                ErrorCode::APPLICATION.as_u32(),
                b"app",
            ),
            frame(
                FrameKind::Error,
                seqs[1],
                ErrorCode::OVERLOADED.as_u32(),
                &overloaded,
            ),
            frame(FrameKind::Error, seqs[2], 12345, b"odd"),
        ];
        apply(&mut table, batch, &mut Effects::default());
        match outcome(&mut table, 0).unwrap() {
            Err(CallError::Application(body)) => assert_eq!(body, &b"app"[..]),
            other => panic!("{other:?}"),
        }
        match outcome(&mut table, 1).unwrap() {
            Err(CallError::Overloaded {
                retry_after,
                message,
            }) => {
                assert_eq!(retry_after, Some(Duration::from_millis(250)));
                assert_eq!(&*message, "busy");
            }
            other => panic!("{other:?}"),
        }
        match outcome(&mut table, 2).unwrap() {
            Err(CallError::Remote { code, message }) => {
                assert_eq!(code.as_u32(), 12345);
                assert_eq!(&*message, "odd");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pings_are_answered_and_ping_tokens_reported() {
        let mut table = CallTable::new(1, 0);
        let mut fx = Effects::default();
        let batch = vec![
            frame(FrameKind::Ping, 9, 0, b"p"),
            frame(FrameKind::Pong, PING_TOKEN | 3, 0, b""),
            // A keep-alive pong and a stray cancel change nothing.
            frame(FrameKind::Pong, 17, 0, b""),
            frame(FrameKind::Cancel, 4, 0, b""),
        ];
        apply(&mut table, batch, &mut fx);
        assert_eq!(fx.pings, [PING_TOKEN | 3]);
        match fx.frames.as_slice() {
            [Outgoing::Frame(header, body)] => {
                assert_eq!((header.kind, header.seq), (FrameKind::Pong, 9));
                assert_eq!(body, &b"p"[..]);
            }
            other => panic!("{other:?}"),
        }
        assert!(!fx.refusing && fx.going_away.is_none() && fx.drained.is_none());
    }

    #[test]
    fn a_request_from_the_server_is_a_protocol_violation() {
        let mut table = CallTable::new(1, 0);
        let seq = table.begin(0, None, None).unwrap();
        let mut fx = Effects::default();
        let batch = vec![
            frame(FrameKind::Response, seq, 0, b"kept"),
            frame(FrameKind::Request, 1, 0, b""),
        ];
        let error = on_frames(&mut table, batch, false, &mut fx).unwrap_err();
        assert!(error.is_violation());
        assert_eq!(error.code(), ErrorCode::PROTOCOL_ERROR);
        assert_eq!(outcome(&mut table, 0).unwrap().unwrap(), &b"kept"[..]);
    }

    #[test]
    fn a_graceful_go_away_refuses_new_calls_and_drains_once_idle() {
        let mut table = CallTable::new(2, 0);
        let slot = table.acquire().unwrap().unwrap();
        let seq = table.begin(slot, None, None).unwrap();
        let go_away = || body::go_away(ErrorCode::NO_ERROR, "bye");
        let mut fx = Effects::default();
        apply(&mut table, vec![go_away()], &mut fx);
        assert!(fx.refusing);
        assert!(fx.going_away.is_none(), "a graceful GoAway is no error");
        assert!(fx.drained.is_none(), "a call is still in flight");
        assert!(matches!(table.acquire(), Err(CallError::NotSent(_))));
        // Its reply comes; once the slot is released, the next batch finds the table empty.
        apply(
            &mut table,
            vec![frame(FrameKind::Response, seq, 0, b"r")],
            &mut fx,
        );
        assert!(outcome(&mut table, slot).unwrap().is_ok());
        table.release(slot);
        let mut fx = Effects::default();
        apply(&mut table, vec![frame(FrameKind::Pong, 1, 0, b"")], &mut fx);
        match fx.drained {
            Some(ConnectionError::GoAway { code, reason }) => {
                assert_eq!(code, ErrorCode::NO_ERROR);
                assert_eq!(&*reason, "bye");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_go_away_with_an_error_names_why_the_connection_ends() {
        let mut table = CallTable::new(1, 0);
        let mut fx = Effects::default();
        let batch = vec![body::go_away(ErrorCode::IDLE_TIMEOUT, "idle")];
        apply(&mut table, batch, &mut fx);
        assert!(fx.refusing);
        assert!(fx.drained.is_none(), "an error is not a drain");
        match fx.going_away {
            Some(ConnectionError::GoAway { code, .. }) => {
                assert_eq!(code, ErrorCode::IDLE_TIMEOUT)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stream_frames_and_call_ends_come_out_in_order_while_streams_are_open() {
        let mut table = CallTable::new(1, 0);
        let seq = table.begin(0, None, None).unwrap();
        let batch = || {
            vec![
                frame(FrameKind::StreamItem, seq, 0, b"i"),
                frame(FrameKind::Credit, seq, 10, b""),
                frame(FrameKind::Error, seq, ErrorCode::CANCELLED.as_u32(), b""),
            ]
        };
        let mut fx = Effects::default();
        on_frames(&mut table, batch(), true, &mut fx).unwrap();
        let kinds: Vec<_> = fx
            .streams
            .iter()
            .map(|event| match event {
                StreamEvent::Frame(frame) => Some(frame.header.kind),
                StreamEvent::End(s, code) => {
                    assert_eq!((*s, *code), (seq, ErrorCode::CANCELLED));
                    None
                }
            })
            .collect();
        assert_eq!(
            kinds,
            [Some(FrameKind::StreamItem), Some(FrameKind::Credit), None]
        );
        // The call's outcome waits until its stream events are routed: a caller that saw the
        // call done before its last items would stop reading them.
        assert!(
            outcome(&mut table, 0).is_none(),
            "completed before its stream events"
        );
        assert!(fx.wakers.is_empty());
        complete_held(&mut table, &mut fx);
        assert!(matches!(
            outcome(&mut table, 0),
            Some(Err(CallError::Remote { .. }))
        ));
        // A `Response` ends the stream normally.
        let mut table = CallTable::new(1, 0);
        let seq = table.begin(0, None, None).unwrap();
        let mut fx = Effects::default();
        let response = vec![frame(FrameKind::Response, seq, 0, b"r")];
        on_frames(&mut table, response, true, &mut fx).unwrap();
        assert!(matches!(
            fx.streams.as_slice(),
            [StreamEvent::End(s, ErrorCode::NO_ERROR)] if *s == seq
        ));
        // With no stream open, nothing is routed.
        let mut table = CallTable::new(1, 0);
        table.begin(0, None, None).unwrap();
        let mut fx = Effects::default();
        on_frames(&mut table, batch(), false, &mut fx).unwrap();
        assert!(fx.streams.is_empty());
    }
}
