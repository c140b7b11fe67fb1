//! The v1 frame: a fixed 24-byte header followed by `len` body bytes.
//!
//! Everything here is sans-IO: pure functions over byte buffers, no allocation beyond the
//! caller's buffer, no clocks. `PROTOCOL.md` at the repository root is the normative description;
//! the golden vectors in the tests below pin it to the bytes.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::code::ErrorCode;

/// Size of every frame header on the wire, in bytes.
pub const HEADER_LEN: usize = 24;

/// Default for the largest frame body a peer accepts (16 MiB).
///
/// Stops a peer from making us allocate an arbitrary amount of memory with one length field:
/// the declared length is checked against this limit before any buffer grows for the body.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// What a frame means. The numeric values are part of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A call: `seq` names it, `method` routes it, `aux` is the caller's timeout in milliseconds.
    Request = 1,
    /// A successful reply to the request with the same `seq`.
    Response = 2,
    /// A failed reply to the request with the same `seq`; `aux` is the error code.
    Error = 3,
    /// The caller no longer wants the reply to `seq`.
    Cancel = 4,
    /// Liveness probe; the peer answers with a `Pong` carrying the same `seq` and body.
    Ping = 5,
    /// Answer to a `Ping`.
    Pong = 6,
    /// The sender will accept no new calls; `aux` is the error code (0 for a graceful drain).
    GoAway = 7,
    /// One item of the stream opened by request `seq` (reserved for streaming calls).
    StreamItem = 8,
    /// End of the stream opened by request `seq` (reserved for streaming calls).
    StreamEnd = 9,
    /// Flow-control credit for stream `seq`: `aux` more bytes may be sent (reserved for streaming).
    Credit = 10,
}

impl FrameKind {
    /// Parses the kind byte.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Error,
            4 => Self::Cancel,
            5 => Self::Ping,
            6 => Self::Pong,
            7 => Self::GoAway,
            8 => Self::StreamItem,
            9 => Self::StreamEnd,
            10 => Self::Credit,
            _ => return None,
        })
    }
}

/// Frame flag bits defined by protocol v1. Every other bit must be zero.
pub mod flags {
    /// On `StreamItem`: the last item of the sender's stream (as if a `StreamEnd` with
    /// `NO_ERROR` followed).
    pub const END: u8 = 0x01;
    /// On `Request`: the client will send `StreamItem`s for this call, ending with `StreamEnd`
    /// (client-streaming and bidirectional methods).
    pub const STREAM_REQUEST: u8 = 0x02;
    /// On `Request`: the client accepts `StreamItem`s before the final `Response` or `Error`
    /// (server-streaming and bidirectional methods).
    pub const STREAM_REPLY: u8 = 0x04;
    /// On `Request`: the body starts with a metadata block (see
    /// [`Metadata`](crate::metadata::Metadata)); the payload follows it.
    pub const METADATA: u8 = 0x08;
    /// On `Request`, `Response` and `StreamItem`: the body is compressed (see
    /// [`compress`](crate::compress)), with an algorithm the receiver's hello advertised.
    pub const COMPRESSED: u8 = 0x10;
    /// All bits a v1 peer accepts.
    pub const KNOWN: u8 = END | STREAM_REQUEST | STREAM_REPLY | METADATA | COMPRESSED;
}

/// The fixed-size part of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// What the frame means.
    pub kind: FrameKind,
    /// Flag bits, see [`flags`].
    pub flags: u8,
    /// Method id of a `Request` (echoed in its `Response`/`Error`), otherwise 0.
    pub method: u32,
    /// Sequence id: matches replies to requests on one connection.
    pub seq: u64,
    /// Body length in bytes, not counting the header.
    pub len: u32,
    /// Kind-specific word: timeout in milliseconds for `Request`, error code for `Error` and
    /// `GoAway`, credit for `Credit`, otherwise 0.
    pub aux: u32,
}

impl FrameHeader {
    /// A header of `kind` for call `seq` with every other field zero.
    pub fn new(kind: FrameKind, seq: u64) -> Self {
        Self {
            kind,
            flags: 0,
            method: 0,
            seq,
            len: 0,
            aux: 0,
        }
    }

    /// Writes the 24 header bytes.
    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        out[0] = self.kind as u8;
        out[1] = self.flags;
        out[2..4].copy_from_slice(&[0, 0]);
        out[4..8].copy_from_slice(&self.method.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..20].copy_from_slice(&self.len.to_le_bytes());
        out[20..24].copy_from_slice(&self.aux.to_le_bytes());
    }

    /// Appends the 24 header bytes to `buf`.
    pub fn put(&self, buf: &mut BytesMut) {
        let mut bytes = [0u8; HEADER_LEN];
        self.encode(&mut bytes);
        buf.put_slice(&bytes);
    }

    /// Parses and validates 24 header bytes. `max_len` is the largest body this peer accepts.
    ///
    /// # Errors
    ///
    /// [`FrameError`] for an unknown kind, non-zero reserved bits, unknown flags, or a body
    /// longer than `max_len`. Each is a protocol violation by the peer.
    pub fn decode(bytes: &[u8; HEADER_LEN], max_len: u32) -> Result<Self, FrameError> {
        let kind = FrameKind::from_u8(bytes[0]).ok_or(FrameError::UnknownKind(bytes[0]))?;
        let flags = bytes[1];
        if flags & !flags::KNOWN != 0 {
            return Err(FrameError::UnknownFlags(flags));
        }
        let reserved = u16::from_le_bytes([bytes[2], bytes[3]]);
        if reserved != 0 {
            return Err(FrameError::Reserved(reserved));
        }
        let mut rest = &bytes[4..];
        let method = rest.get_u32_le();
        let seq = rest.get_u64_le();
        let len = rest.get_u32_le();
        let aux = rest.get_u32_le();
        if len > max_len {
            return Err(FrameError::TooLarge { len, max: max_len });
        }
        Ok(Self {
            kind,
            flags,
            method,
            seq,
            len,
            aux,
        })
    }
}

/// A whole frame: header and body. The body shares the read buffer (no copy).
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: FrameHeader,
    /// Exactly `header.len` bytes.
    pub body: Bytes,
}

impl Frame {
    /// A frame whose header `len` is set from `body`.
    ///
    /// # Panics
    ///
    /// If `body` is longer than `u32::MAX` bytes (no peer accepts such a frame).
    pub fn new(mut header: FrameHeader, body: Bytes) -> Self {
        header.len = u32::try_from(body.len()).expect("frame body longer than u32::MAX");
        Self { header, body }
    }

    /// Appends header and body to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(HEADER_LEN + self.body.len());
        self.header.put(buf);
        buf.put_slice(&self.body);
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("header", &self.header)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// What [`decode`] found at the front of a byte slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Not a whole frame yet: at least this many more bytes are needed.
    Incomplete(usize),
    /// A whole frame occupies the first `HEADER_LEN + header.len` bytes.
    Complete(FrameHeader),
}

/// Looks for one frame at the front of `buf` without consuming anything.
///
/// # Errors
///
/// As [`FrameHeader::decode`]; the length is checked as soon as the header is complete, so a
/// lying length is rejected before a single body byte is buffered.
pub fn decode(buf: &[u8], max_len: u32) -> Result<Decoded, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(Decoded::Incomplete(HEADER_LEN - buf.len()));
    };
    let header = FrameHeader::decode(head, max_len)?;
    let total = HEADER_LEN + header.len as usize;
    if buf.len() < total {
        Ok(Decoded::Incomplete(total - buf.len()))
    } else {
        Ok(Decoded::Complete(header))
    }
}

/// Splits whole frames off the front of a read buffer, zero-copy.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_len: u32,
    needed: usize,
}

impl FrameDecoder {
    /// A decoder that rejects bodies longer than `max_len`.
    pub fn new(max_len: u32) -> Self {
        Self {
            max_len,
            needed: HEADER_LEN,
        }
    }

    /// Takes the next whole frame off `buf`, or returns `None` if more bytes are needed.
    ///
    /// # Errors
    ///
    /// As [`decode`]. After an error the connection must be closed: the stream is out of sync.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match decode(buf, self.max_len)? {
            Decoded::Incomplete(more) => {
                self.needed = more;
                Ok(None)
            }
            Decoded::Complete(header) => {
                buf.advance(HEADER_LEN);
                let body = buf.split_to(header.len as usize).freeze();
                self.needed = HEADER_LEN;
                Ok(Some(Frame { header, body }))
            }
        }
    }

    /// Checks a frame a transport handed over whole
    /// ([`TransportRead::CARRIES_FRAMES`](crate::TransportRead::CARRIES_FRAMES)) as `decode`
    /// checks a decoded one: known flags, a length within the limit and equal to the body's.
    ///
    /// # Errors
    ///
    /// [`FrameError::UnknownFlags`], [`FrameError::TooLarge`], or
    /// [`FrameError::LengthMismatch`]. Each is a protocol violation by the peer.
    pub fn check(&self, frame: Frame) -> Result<Frame, FrameError> {
        let header = &frame.header;
        if header.flags & !flags::KNOWN != 0 {
            return Err(FrameError::UnknownFlags(header.flags));
        }
        if header.len > self.max_len {
            return Err(FrameError::TooLarge {
                len: header.len,
                max: self.max_len,
            });
        }
        if header.len as usize != frame.body.len() {
            return Err(FrameError::LengthMismatch {
                len: header.len,
                body: frame.body.len(),
            });
        }
        Ok(frame)
    }

    /// Forgets what `decode` last found missing: the next frame starts afresh (after a frame
    /// that arrived whole, not through `decode`).
    pub(crate) fn expect_header(&mut self) {
        self.needed = HEADER_LEN;
    }

    /// Reads and checks a frame header as `decode` does.
    ///
    /// # Errors
    ///
    /// As [`FrameHeader::decode`].
    pub(crate) fn header(&self, head: &[u8; HEADER_LEN]) -> Result<FrameHeader, FrameError> {
        FrameHeader::decode(head, self.max_len)
    }

    /// The header of an incomplete frame at the front of `buf`, once all of it has arrived
    /// (checked as `decode` checks it); `None` while it is incomplete, or invalid (`decode`
    /// reports that).
    pub(crate) fn pending_header(&self, buf: &[u8]) -> Option<FrameHeader> {
        let head = buf.first_chunk::<HEADER_LEN>()?;
        let header = FrameHeader::decode(head, self.max_len).ok()?;
        (buf.len() < HEADER_LEN + header.len as usize).then_some(header)
    }

    /// Bytes still missing for the frame at the front of the buffer after the last `decode`
    /// returned `None` (already checked against the limit, so safe to reserve).
    pub fn needed(&self) -> usize {
        self.needed
    }
}

/// A frame that breaks protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The kind byte is not one v1 defines.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A frame of a kind only the other side receives (a `Request` sent to a client, a
    /// `Response` sent to a server).
    #[error("unexpected {0:?} frame: only the other side receives it")]
    UnexpectedKind(FrameKind),
    /// A flag bit v1 does not define is set.
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    /// The reserved header bytes are not zero.
    #[error("reserved header bytes are {0:#06x}, not zero")]
    Reserved(u16),
    /// The declared body length is over the receiver's limit.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared body length.
        len: u32,
        /// The receiver's limit.
        max: u32,
    },
    /// A frame handed over whole whose header length is not its body's.
    #[error("frame header says {len} body bytes, the body has {body}")]
    LengthMismatch {
        /// The header's length.
        len: u32,
        /// The body's length.
        body: usize,
    },
    /// Whole frames arrived while the bytes of a partial frame were waiting: the transport
    /// broke the order of its stream.
    #[error("whole frames arrived inside a partial frame")]
    Interleaved,
    /// A compressed body that may not be one, names an algorithm the receiver did not
    /// advertise, or does not decompress to the length it claims.
    #[error("bad compressed body: {0}")]
    Compression(&'static str),
}

impl FrameError {
    /// The code a `GoAway` carries for this violation.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            _ => ErrorCode::PROTOCOL_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn kinds() -> impl Strategy<Value = FrameKind> {
        (1u8..=10).prop_map(|k| FrameKind::from_u8(k).unwrap())
    }

    fn frames() -> impl Strategy<Value = Frame> {
        (
            kinds(),
            prop_oneof![
                Just(0u8),
                Just(flags::END),
                Just(flags::STREAM_REQUEST | flags::STREAM_REPLY)
            ],
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(kind, flags, method, seq, aux, body)| {
                let header = FrameHeader {
                    kind,
                    flags,
                    method,
                    seq,
                    len: 0,
                    aux,
                };
                Frame::new(header, Bytes::from(body))
            })
    }

    #[test]
    fn golden_request() {
        let header = FrameHeader {
            kind: FrameKind::Request,
            flags: 0,
            method: 0xA1B2_C3D4,
            seq: 0x0000_0001_0000_0007,
            len: 0,
            aux: 250,
        };
        let frame = Frame::new(header, Bytes::from_static(b"ping"));
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let expected: &[u8] = &[
            0x01, 0x00, 0x00, 0x00, // kind=Request, flags, reserved
            0xD4, 0xC3, 0xB2, 0xA1, // method
            0x07, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // seq
            0x04, 0x00, 0x00, 0x00, // len
            0xFA, 0x00, 0x00, 0x00, // aux: 250 ms timeout
            b'p', b'i', b'n', b'g',
        ];
        assert_eq!(&buf[..], expected);
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Some(frame));
        assert!(buf.is_empty());
    }

    #[test]
    fn golden_response_from_the_protocol_document() {
        let header = FrameHeader {
            method: 0xA1B2_C3D4,
            ..FrameHeader::new(FrameKind::Response, 0x0000_0001_0000_0007)
        };
        let mut buf = BytesMut::new();
        Frame::new(header, Bytes::from_static(b"ping")).encode(&mut buf);
        let expected: &[u8] = &[
            0x02, 0, 0, 0, 0xD4, 0xC3, 0xB2, 0xA1, 7, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0,
            0x70, 0x69, 0x6E, 0x67,
        ];
        assert_eq!(&buf[..], expected);
    }

    #[test]
    fn golden_error_and_goaway() {
        let mut header = FrameHeader::new(FrameKind::Error, 3);
        header.method = 9;
        header.aux = ErrorCode::UNKNOWN_METHOD.as_u32();
        let mut buf = BytesMut::new();
        Frame::new(header, Bytes::from_static(b"no")).encode(&mut buf);
        assert_eq!(
            &buf[..],
            &[
                0x03, 0, 0, 0, 9, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, b'n',
                b'o'
            ]
        );

        let mut header = FrameHeader::new(FrameKind::GoAway, 0);
        header.aux = ErrorCode::FRAME_TOO_LARGE.as_u32();
        let mut buf = BytesMut::new();
        Frame::new(header, Bytes::new()).encode(&mut buf);
        assert_eq!(
            &buf[..],
            &[7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]
        );
    }

    #[test]
    fn rejects_bad_headers() {
        let mut bytes = [0u8; HEADER_LEN];
        FrameHeader::new(FrameKind::Ping, 1).encode(&mut bytes);

        let mut bad = bytes;
        bad[0] = 0;
        assert_eq!(
            FrameHeader::decode(&bad, 10),
            Err(FrameError::UnknownKind(0))
        );
        bad[0] = 11;
        assert_eq!(
            FrameHeader::decode(&bad, 10),
            Err(FrameError::UnknownKind(11))
        );

        let mut bad = bytes;
        bad[1] = 0x80;
        assert_eq!(
            FrameHeader::decode(&bad, 10),
            Err(FrameError::UnknownFlags(0x80))
        );

        let mut bad = bytes;
        bad[3] = 1;
        assert_eq!(
            FrameHeader::decode(&bad, 10),
            Err(FrameError::Reserved(0x0100))
        );

        let mut bad = bytes;
        bad[16..20].copy_from_slice(&11u32.to_le_bytes());
        assert_eq!(
            FrameHeader::decode(&bad, 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(
            FrameError::TooLarge { len: 11, max: 10 }.code(),
            ErrorCode::FRAME_TOO_LARGE
        );
    }

    #[test]
    fn length_is_checked_before_body_arrives() {
        let mut bytes = [0u8; HEADER_LEN];
        let mut header = FrameHeader::new(FrameKind::Request, 1);
        header.len = u32::MAX;
        header.encode(&mut bytes);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut decoder = FrameDecoder::new(1024);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn whole_frames_are_checked_as_decoded_ones() {
        let decoder = FrameDecoder::new(8);
        let good = Frame::new(
            FrameHeader::new(FrameKind::Request, 1),
            Bytes::from_static(b"ok"),
        );
        assert_eq!(decoder.check(good.clone()), Ok(good.clone()));
        let mut flagged = good.clone();
        flagged.header.flags = 0x80;
        assert_eq!(decoder.check(flagged), Err(FrameError::UnknownFlags(0x80)));
        let large = Frame::new(
            FrameHeader::new(FrameKind::Request, 1),
            Bytes::from(vec![0; 9]),
        );
        assert_eq!(
            decoder.check(large),
            Err(FrameError::TooLarge { len: 9, max: 8 })
        );
        let mut lying = good;
        lying.header.len = 3;
        assert_eq!(
            decoder.check(lying),
            Err(FrameError::LengthMismatch { len: 3, body: 2 })
        );
    }

    proptest! {
        #[test]
        fn encode_decode_identity(frames in proptest::collection::vec(frames(), 1..8)) {
            let mut buf = BytesMut::new();
            for frame in &frames {
                frame.encode(&mut buf);
            }
            let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
            for frame in &frames {
                let decoded = decoder.decode(&mut buf).unwrap();
                prop_assert_eq!(decoded.as_ref(), Some(frame));
            }
            prop_assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        }

        #[test]
        fn every_truncation_needs_more(frame in frames()) {
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            for cut in 0..buf.len() {
                match decode(&buf[..cut], DEFAULT_MAX_FRAME_LEN).unwrap() {
                    Decoded::Incomplete(more) => prop_assert!(more > 0 && cut + more <= buf.len()),
                    Decoded::Complete(_) => prop_assert!(false, "a truncated frame decoded"),
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut decoder = FrameDecoder::new(64);
            while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        }
    }
}
