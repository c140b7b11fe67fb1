//! The bodies of control frames, encoded and decoded here for both sides (PROTOCOL.md §4, §5):
//! `GoAway` (code in `aux`, the reason as UTF-8) and the `Error OVERLOADED` body (a `u32`
//! retry-after hint in milliseconds, then the reason). Pure functions over bytes.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;

use crate::{
    error::ErrorCode,
    frame::{Frame, FrameHeader, FrameKind},
};

/// A `GoAway` frame: `code` in `aux`, `reason` as its body.
pub(crate) fn go_away(code: ErrorCode, reason: impl Into<Bytes>) -> Frame {
    let header = FrameHeader {
        aux: code.as_u32(),
        ..FrameHeader::new(FrameKind::GoAway, 0)
    };
    Frame::new(header, reason.into())
}

/// The code and reason of a `GoAway` frame (a reason that is not UTF-8 is shown lossily).
pub(crate) fn go_away_parts(frame: &Frame) -> (ErrorCode, Arc<str>) {
    (
        ErrorCode::from_u32(frame.header.aux),
        String::from_utf8_lossy(&frame.body).into(),
    )
}

/// The body of an `Error OVERLOADED` frame: the retry-after hint in milliseconds as a
/// little-endian `u32` (0: none; a hint under a millisecond is sent as 1, one over
/// `u32::MAX` milliseconds as `u32::MAX`), then the reason.
pub(crate) fn overloaded(retry_after: Option<Duration>, reason: &str) -> Bytes {
    let millis = retry_after.map_or(0, |d| d.as_millis().clamp(1, u32::MAX.into()) as u32);
    let mut body = Vec::with_capacity(4 + reason.len());
    body.extend_from_slice(&millis.to_le_bytes());
    body.extend_from_slice(reason.as_bytes());
    body.into()
}

/// The retry-after hint and reason of an `Error OVERLOADED` body; a body shorter than the
/// hint is all reason, with no hint.
pub(crate) fn overloaded_parts(body: &[u8]) -> (Option<Duration>, Arc<str>) {
    let (millis, reason) = match body.split_first_chunk::<4>() {
        Some((millis, reason)) => (u32::from_le_bytes(*millis), reason),
        None => (0, body),
    };
    (
        (millis > 0).then(|| Duration::from_millis(millis.into())),
        String::from_utf8_lossy(reason).into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_away_golden_bytes() {
        let frame = go_away(ErrorCode::FLOW_CONTROL, "too much");
        assert_eq!(frame.header.kind, FrameKind::GoAway);
        assert_eq!(frame.header.seq, 0);
        assert_eq!(frame.header.aux, ErrorCode::FLOW_CONTROL.as_u32());
        assert_eq!(&frame.body[..], b"too much");
        let (code, reason) = go_away_parts(&frame);
        assert_eq!((code, &*reason), (ErrorCode::FLOW_CONTROL, "too much"));
    }

    #[test]
    fn go_away_reason_that_is_not_utf8_is_shown_lossily() {
        let frame = go_away(ErrorCode::PROTOCOL_ERROR, Bytes::from_static(&[0x66, 0xff]));
        assert_eq!(&*go_away_parts(&frame).1, "f\u{fffd}");
    }

    #[test]
    fn overloaded_golden_bytes() {
        let body = overloaded(Some(Duration::from_millis(258)), "busy");
        assert_eq!(&body[..], &[2, 1, 0, 0, b'b', b'u', b's', b'y']);
        assert_eq!(
            overloaded_parts(&body),
            (Some(Duration::from_millis(258)), Arc::from("busy"))
        );
    }

    #[test]
    fn overloaded_hints_at_the_edges() {
        // None is 0; under a millisecond is 1; past u32::MAX milliseconds is u32::MAX.
        assert_eq!(&overloaded(None, "")[..], &[0, 0, 0, 0]);
        assert_eq!(
            overloaded_parts(&overloaded(None, "x")),
            (None, Arc::from("x"))
        );
        let tiny = overloaded(Some(Duration::from_micros(10)), "");
        assert_eq!(overloaded_parts(&tiny).0, Some(Duration::from_millis(1)));
        let huge = overloaded(Some(Duration::from_secs(u64::MAX / 2)), "");
        assert_eq!(&huge[..], &u32::MAX.to_le_bytes());
    }

    #[test]
    fn overloaded_body_shorter_than_the_hint_is_all_reason() {
        assert_eq!(overloaded_parts(b"ab"), (None, Arc::from("ab")));
        assert_eq!(overloaded_parts(b""), (None, Arc::from("")));
    }
}
