//! The server's connection engine: what each frame from a client asks of the server, and the
//! rules that admit or refuse a request. The reader feeds it every frame of a read batch and
//! carries out the [`Event`]s: dispatching requests, stopping cancelled handlers, routing
//! stream frames and queueing answers, handed to the writer once per batch.

use std::time::Duration;

use bytes::Bytes;

use super::{is_stream_frame, pong, StreamEvent};
use crate::{
    error::{ConnectionError, ErrorCode},
    frame::{flags, Frame, FrameError, FrameHeader, FrameKind},
    io::Outgoing,
    metadata::{Metadata, MetadataError},
};

/// What one frame from the client asks of the server.
#[derive(Debug)]
pub(crate) enum Event {
    /// A call to admit and dispatch.
    Request(Incoming),
    /// The client gave up on call `seq` (and may reuse its sequence id at once): forget it
    /// and stop its handler. `true` when it gave up because the call's deadline passed.
    Cancel(u64, bool),
    /// A frame for a streaming call.
    Stream(StreamEvent),
    /// A frame to queue for the writer: the answer to a ping.
    Send(Outgoing),
    /// The client is leaving (its `GoAway`): a draining connection need not wait for more
    /// requests.
    PeerLeaving,
    /// Nothing to do (a `Pong`: any frame proves the client alive).
    Nothing,
}

/// A request frame, as it came.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) header: FrameHeader,
    /// The metadata block (if the `METADATA` flag is set) followed by the payload.
    pub(crate) body: Bytes,
}

/// Why a request is refused before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server drains: `SHUTTING_DOWN`, never run (the client may retry elsewhere).
    ShuttingDown,
    /// The connection is at its limit of calls in flight: `OVERLOADED`.
    TooManyInFlight,
}

/// What the admission rules look at: the connection's state when the request is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission {
    /// The server drains this connection.
    pub(crate) draining: bool,
    /// Calls counted against the limit now.
    pub(crate) admitted: usize,
    /// The connection's limit of calls in flight (`ServerConfig::max_in_flight`).
    pub(crate) max_in_flight: usize,
}

/// What a frame from the client asks of the server.
///
/// # Errors
///
/// The client broke the protocol (a `Response` or `Error` sent to a server): the connection
/// ends with a `GoAway` of the error's [`code`](ConnectionError::code).
pub(crate) fn on_frame(frame: Frame) -> Result<Event, ConnectionError> {
    let header = frame.header;
    Ok(match header.kind {
        FrameKind::Request => Event::Request(Incoming {
            header,
            body: frame.body,
        }),
        // Any code but DEADLINE_EXCEEDED (0 from older clients included) is a plain cancel.
        FrameKind::Cancel => Event::Cancel(
            header.seq,
            ErrorCode::from_u32(header.aux) == ErrorCode::DEADLINE_EXCEEDED,
        ),
        kind if is_stream_frame(kind) => Event::Stream(StreamEvent::Frame(frame)),
        FrameKind::Ping => Event::Send(pong(&header, frame.body)),
        FrameKind::GoAway => Event::PeerLeaving,
        FrameKind::Pong => Event::Nothing,
        kind => return Err(FrameError::UnexpectedKind(kind).into()),
    })
}

impl Admission {
    /// Whether a request may run: refused while draining, then at the in-flight limit.
    pub(crate) fn admit(&self) -> Result<(), Refusal> {
        if self.draining {
            Err(Refusal::ShuttingDown)
        } else if self.admitted >= self.max_in_flight {
            Err(Refusal::TooManyInFlight)
        } else {
            Ok(())
        }
    }
}

impl Refusal {
    /// The code the refusal is answered with.
    pub(crate) fn code(self) -> ErrorCode {
        match self {
            Self::ShuttingDown => ErrorCode::SHUTTING_DOWN,
            Self::TooManyInFlight => ErrorCode::OVERLOADED,
        }
    }

    /// The message the refusal is answered with.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::ShuttingDown => "server is shutting down",
            Self::TooManyInFlight => "too many calls in flight on this connection",
        }
    }
}

impl Incoming {
    /// The call's timeout, counted from when the server read it (`aux` in milliseconds, 0 for
    /// none).
    pub(crate) fn timeout(&self) -> Option<Duration> {
        (self.header.aux != 0).then(|| Duration::from_millis(self.header.aux.into()))
    }

    /// Whether the call streams, either way.
    pub(crate) fn streams(&self) -> bool {
        self.header.flags & (flags::STREAM_REQUEST | flags::STREAM_REPLY) != 0
    }

    /// Splits the metadata block off the body (empty metadata without the `METADATA` flag).
    ///
    /// # Errors
    ///
    /// [`MetadataError`] if the block does not decode or breaks its limits: the call is
    /// answered `BAD_REQUEST`, and the connection goes on.
    pub(crate) fn take_metadata(&mut self) -> Result<Metadata, MetadataError> {
        if self.header.flags & flags::METADATA == 0 {
            return Ok(Metadata::new());
        }
        Metadata::decode(&mut self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, seq: u64, body: &'static [u8]) -> Frame {
        Frame::new(FrameHeader::new(kind, seq), Bytes::from_static(body))
    }

    #[test]
    fn every_frame_kind_maps_to_its_event() {
        match on_frame(frame(FrameKind::Request, 3, b"req")).unwrap() {
            Event::Request(incoming) => {
                assert_eq!(incoming.header.seq, 3);
                assert_eq!(incoming.body, &b"req"[..]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            on_frame(frame(FrameKind::Cancel, 4, b"")).unwrap(),
            Event::Cancel(4, false)
        ));
        let mut expired = frame(FrameKind::Cancel, 4, b"");
        expired.header.aux = ErrorCode::DEADLINE_EXCEEDED.as_u32();
        assert!(matches!(on_frame(expired).unwrap(), Event::Cancel(4, true)));
        let mut dropped = frame(FrameKind::Cancel, 4, b"");
        dropped.header.aux = ErrorCode::CANCELLED.as_u32();
        assert!(matches!(
            on_frame(dropped).unwrap(),
            Event::Cancel(4, false)
        ));
        for kind in [
            FrameKind::StreamItem,
            FrameKind::StreamEnd,
            FrameKind::Credit,
        ] {
            match on_frame(frame(kind, 5, b"")).unwrap() {
                Event::Stream(event) => assert_eq!(event.seq(), 5),
                other => panic!("{kind:?}: {other:?}"),
            }
        }
        match on_frame(frame(FrameKind::Ping, 6, b"p")).unwrap() {
            Event::Send(Outgoing::Frame(header, body)) => {
                assert_eq!((header.kind, header.seq), (FrameKind::Pong, 6));
                assert_eq!(body, &b"p"[..]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            on_frame(crate::body::go_away(ErrorCode::NO_ERROR, "bye")).unwrap(),
            Event::PeerLeaving
        ));
        assert!(matches!(
            on_frame(frame(FrameKind::Pong, 7, b"")).unwrap(),
            Event::Nothing
        ));
    }

    #[test]
    fn replies_sent_to_a_server_are_protocol_violations() {
        for kind in [FrameKind::Response, FrameKind::Error] {
            let error = on_frame(frame(kind, 1, b"")).unwrap_err();
            assert!(error.is_violation(), "{kind:?}");
            assert_eq!(error.code(), ErrorCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn admission_refuses_while_draining_then_at_the_limit() {
        let at = |draining, admitted| {
            Admission {
                draining,
                admitted,
                max_in_flight: 2,
            }
            .admit()
        };
        assert_eq!(at(false, 0), Ok(()));
        assert_eq!(at(false, 1), Ok(()));
        assert_eq!(at(false, 2), Err(Refusal::TooManyInFlight));
        assert_eq!(at(true, 0), Err(Refusal::ShuttingDown));
        assert_eq!(at(true, 5), Err(Refusal::ShuttingDown), "draining first");
        assert_eq!(Refusal::ShuttingDown.code(), ErrorCode::SHUTTING_DOWN);
        assert_eq!(Refusal::TooManyInFlight.code(), ErrorCode::OVERLOADED);
    }

    #[test]
    fn timeouts_and_streaming_flags_are_read_from_the_header() {
        let mut header = FrameHeader::new(FrameKind::Request, 1);
        let mut incoming = Incoming {
            header,
            body: Bytes::new(),
        };
        assert_eq!(incoming.timeout(), None);
        assert!(!incoming.streams());
        header.aux = 1500;
        header.flags = flags::STREAM_REPLY;
        incoming.header = header;
        assert_eq!(incoming.timeout(), Some(Duration::from_millis(1500)));
        assert!(incoming.streams());
        incoming.header.flags = flags::STREAM_REQUEST;
        assert!(incoming.streams());
    }

    #[test]
    fn metadata_is_split_off_the_body_and_bad_metadata_is_an_error() {
        let mut metadata = Metadata::new();
        metadata.insert("k", Bytes::from_static(b"v"));
        let block = metadata.encode().unwrap();
        let mut header = FrameHeader::new(FrameKind::Request, 1);
        header.flags = flags::METADATA;
        let mut incoming = Incoming {
            header,
            body: [block, Bytes::from_static(b"payload")].concat().into(),
        };
        let taken = incoming.take_metadata().unwrap();
        assert_eq!(taken.get("k").map(|v| &v[..]), Some(&b"v"[..]));
        assert_eq!(incoming.body, &b"payload"[..]);

        let mut plain = Incoming {
            header: FrameHeader::new(FrameKind::Request, 2),
            body: Bytes::from_static(b"\xff\xff"),
        };
        assert!(
            plain.take_metadata().unwrap().is_empty(),
            "no flag, no block"
        );
        assert_eq!(plain.body.len(), 2);

        let mut bad = Incoming {
            header,
            body: Bytes::from_static(b"\xff\xff\xff"),
        };
        assert!(bad.take_metadata().is_err());
    }
}
