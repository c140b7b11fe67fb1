//! Per-frame body compression (features `lz4`, `zstd`), sans-IO.
//!
//! Each side's hello advertises, in its `features` bits, the algorithms it can decompress
//! (every one compiled in, when its configuration turns compression on). A side compresses the
//! body of a `Request`, `Response` or `StreamItem` when the peer advertised its algorithm and the
//! body is at least the configured threshold, and only if that makes it smaller; the frame
//! then carries the `COMPRESSED` flag and its body is `algorithm: u8`, `len: u32` (the body's
//! length before compression, little-endian), then the compressed bytes. The receiver
//! decompresses before anything else reads the body, into exactly `len` bytes: a `len` above
//! its `max_frame_len` closes the connection with `FRAME_TOO_LARGE` before anything is
//! allocated, and data that does not decompress to exactly `len` bytes (a decompression bomb
//! among them) closes it with `PROTOCOL_ERROR`. Flow control and size limits count bodies
//! before compression.

use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};

use crate::{
    frame::{flags, Frame, FrameError, FrameHeader, FrameKind},
    io::IoCounters,
};

/// A compression algorithm for frame bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// LZ4 block format (`lz4_flex`): fast, modest ratios.
    #[cfg(feature = "lz4")]
    Lz4,
    /// Zstandard at `level` (1 fast to 22 small; 3 is zstd's default).
    #[cfg(feature = "zstd")]
    Zstd {
        /// The compression level.
        level: i32,
    },
}

/// The default of [`Compression::threshold`]: bodies below it are sent as they are.
pub const DEFAULT_COMPRESSION_THRESHOLD: usize = 1024;

/// Compression of a connection's outgoing bodies, as a client or server configures it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    /// The algorithm this side compresses with (if the peer can decompress it).
    pub algorithm: Algorithm,
    /// Bodies shorter than this many bytes are sent uncompressed.
    pub threshold: usize,
}

impl Compression {
    /// `algorithm` above [`DEFAULT_COMPRESSION_THRESHOLD`].
    pub fn new(algorithm: Algorithm) -> Self {
        Self {
            algorithm,
            threshold: DEFAULT_COMPRESSION_THRESHOLD,
        }
    }

    /// The same with bodies below `threshold` bytes left uncompressed.
    pub fn threshold(mut self, threshold: usize) -> Self {
        self.threshold = threshold;
        self
    }
}

impl Algorithm {
    /// Its id in a compressed body, and `1 << (id - 1)` its bit in the hello.
    fn id(self) -> u8 {
        match self {
            #[cfg(feature = "lz4")]
            Self::Lz4 => LZ4,
            #[cfg(feature = "zstd")]
            Self::Zstd { .. } => ZSTD,
        }
    }
}

const LZ4: u8 = 1;
const ZSTD: u8 = 2;
/// `algorithm` and `len` before the compressed bytes.
const PREFIX_LEN: usize = 5;

/// The hello `features` bits of what this side decompresses: every algorithm compiled in, if
/// `config` turns compression on; none otherwise.
pub(crate) fn advertised(config: Option<&Compression>) -> u16 {
    if config.is_none() {
        return 0;
    }
    let mut bits = 0;
    if cfg!(feature = "lz4") {
        bits |= bit(LZ4);
    }
    if cfg!(feature = "zstd") {
        bits |= bit(ZSTD);
    }
    bits
}

fn bit(id: u8) -> u16 {
    1 << (id - 1)
}

/// What one connection compresses with, once both hellos are known: this side's algorithm,
/// if the peer advertised it.
pub(crate) fn negotiate(config: Option<&Compression>, peer_features: u16) -> Option<Compression> {
    config
        .copied()
        .filter(|c| peer_features & bit(c.algorithm.id()) != 0)
}

/// A frame's body compressed, with its header updated, if `compression` applies to it and
/// makes it smaller; `None` to send it as it is. `parts` is the body, in pieces.
pub(crate) fn compress(
    compression: &Compression,
    header: &FrameHeader,
    parts: &[&Bytes],
) -> Option<(FrameHeader, Bytes)> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let eligible = matches!(
        header.kind,
        FrameKind::Request | FrameKind::Response | FrameKind::StreamItem
    );
    if !eligible || len < compression.threshold || len > u32::MAX as usize {
        return None;
    }
    let joined;
    let body: &[u8] = match parts {
        [one] => one,
        _ => {
            let mut all = Vec::with_capacity(len);
            for part in parts {
                all.extend_from_slice(part);
            }
            joined = all;
            &joined
        }
    };
    let packed = pack(compression.algorithm, body)?;
    if packed.len() + PREFIX_LEN >= len {
        return None;
    }
    let mut out = BytesMut::with_capacity(PREFIX_LEN + packed.len());
    out.put_u8(compression.algorithm.id());
    out.put_u32_le(len as u32);
    out.extend_from_slice(&packed);
    let header = FrameHeader {
        flags: header.flags | flags::COMPRESSED,
        len: out.len() as u32,
        ..*header
    };
    Some((header, out.freeze()))
}

/// What the writer sends for a body in one piece (for tests and fuzzing): the frame's header
/// and body as this side would send them compressed, or `None` if it would send them as they
/// are.
pub fn compress_body(
    compression: &Compression,
    header: &FrameHeader,
    body: &[u8],
) -> Option<(FrameHeader, Bytes)> {
    compress(compression, header, &[&Bytes::copy_from_slice(body)])
}

/// `body` compressed with `algorithm`; `None` if the compressor fails.
#[cfg_attr(not(any(feature = "lz4", feature = "zstd")), allow(unused_variables))]
fn pack(algorithm: Algorithm, body: &[u8]) -> Option<Vec<u8>> {
    match algorithm {
        #[cfg(feature = "lz4")]
        Algorithm::Lz4 => Some(lz4_flex::block::compress(body)),
        #[cfg(feature = "zstd")]
        Algorithm::Zstd { level } => zstd::bulk::compress(body, level).ok(),
    }
}

/// The body of a frame received with the `COMPRESSED` flag, decompressed, with its header's
/// flag cleared and length set; `accepted` is the hello bits this side advertised and
/// `max_len` its `max_frame_len`.
///
/// # Errors
///
/// [`FrameError::TooLarge`] if the body claims to decompress past `max_len`;
/// [`FrameError::Compression`] if the frame may not be compressed, names an algorithm this
/// side did not advertise, or does not decompress to exactly the length it claims.
pub fn decompress(
    header: &FrameHeader,
    body: &[u8],
    accepted: u16,
    max_len: u32,
) -> Result<(FrameHeader, Bytes), FrameError> {
    let eligible = matches!(
        header.kind,
        FrameKind::Request | FrameKind::Response | FrameKind::StreamItem
    );
    if !eligible {
        return Err(FrameError::Compression(
            "flag on a frame kind never compressed",
        ));
    }
    let Some((&[id, a, b, c, d], packed)) = body.split_first_chunk::<PREFIX_LEN>() else {
        return Err(FrameError::Compression("body shorter than its prefix"));
    };
    if id == 0 || id > 16 || accepted & bit(id) == 0 {
        return Err(FrameError::Compression("algorithm not advertised"));
    }
    let len = u32::from_le_bytes([a, b, c, d]);
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let mut out = vec![0u8; len as usize];
    let written =
        unpack(id, packed, &mut out).ok_or(FrameError::Compression("body does not decompress"))?;
    if written != out.len() {
        return Err(FrameError::Compression(
            "body decompresses to another length",
        ));
    }
    let header = FrameHeader {
        flags: header.flags & !flags::COMPRESSED,
        len,
        ..*header
    };
    Ok((header, Bytes::from(out)))
}

/// `frame` as its sender meant it: decompressed if it carries the `COMPRESSED` flag.
///
/// # Errors
///
/// As [`decompress`].
#[inline(always)]
pub(crate) fn inflate(
    frame: Frame,
    accepted: u16,
    max_len: u32,
    counters: &IoCounters,
) -> Result<Frame, FrameError> {
    if frame.header.flags & flags::COMPRESSED == 0 {
        return Ok(frame);
    }
    let inflated = inflate_compressed(&frame, accepted, max_len)?;
    counters.frames_decompressed.fetch_add(1, Ordering::Relaxed);
    Ok(inflated)
}

/// [`inflate`] for a frame that is compressed: kept out of line, so that the check every
/// frame pays is all the reader inlines.
#[cold]
#[inline(never)]
fn inflate_compressed(frame: &Frame, accepted: u16, max_len: u32) -> Result<Frame, FrameError> {
    let (header, body) = decompress(&frame.header, &frame.body, accepted, max_len)?;
    Ok(Frame::new(header, body))
}

/// Decompresses `packed` (algorithm `id`) into `out`, never past its end; the bytes written.
#[cfg_attr(not(any(feature = "lz4", feature = "zstd")), allow(unused_variables))]
fn unpack(id: u8, packed: &[u8], out: &mut [u8]) -> Option<usize> {
    match id {
        #[cfg(feature = "lz4")]
        LZ4 => lz4_flex::block::decompress_into(packed, out).ok(),
        #[cfg(feature = "zstd")]
        ZSTD => zstd::bulk::decompress_to_buffer(packed, out).ok(),
        _ => None,
    }
}

#[cfg(all(test, feature = "lz4", feature = "zstd"))]
mod tests {
    use super::*;

    fn request(len: usize) -> FrameHeader {
        FrameHeader {
            len: len as u32,
            ..FrameHeader::new(FrameKind::Request, 7)
        }
    }

    fn text(len: usize) -> Bytes {
        Bytes::from(b"flumen compresses text ".repeat(len / 23 + 1)[..len].to_vec())
    }

    #[test]
    fn bodies_round_trip_with_each_algorithm_in_one_or_many_parts() {
        for algorithm in [Algorithm::Lz4, Algorithm::Zstd { level: 3 }] {
            let compression = Compression::new(algorithm);
            let body = text(10_000);
            let (header, packed) = compress_body(&compression, &request(10_000), &body).unwrap();
            assert_ne!(header.flags & flags::COMPRESSED, 0);
            assert!(packed.len() < 1000, "{algorithm:?}: {}", packed.len());
            let (header, out) = decompress(&header, &packed, 3, 10_000).unwrap();
            assert_eq!((out, header.len, header.flags), (body.clone(), 10_000, 0));

            // In parts (metadata, body, attachment), joined by compression.
            let (head, tail) = (body.slice(..3000), body.slice(3000..));
            let (header, packed) = compress(
                &compression,
                &request(10_000),
                &[&head, &tail, &Bytes::new()],
            )
            .unwrap();
            assert_eq!(decompress(&header, &packed, 3, 10_000).unwrap().1, body);
        }
    }

    #[test]
    fn only_large_compressible_bodies_of_payload_frames_are_compressed() {
        let compression = Compression::new(Algorithm::Lz4).threshold(1024);
        assert!(compress_body(&compression, &request(1000), &text(1000)).is_none());
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(compress_body(&compression, &request(4096), &noise).is_none());
        let ping = FrameHeader::new(FrameKind::Ping, 1);
        assert!(compress_body(&compression, &ping, &text(4096)).is_none());
        let item = FrameHeader::new(FrameKind::StreamItem, 1);
        assert!(compress_body(&compression, &item, &text(4096)).is_some());
    }

    #[test]
    fn negotiation_takes_this_sides_algorithm_if_the_peer_decompresses_it() {
        let zstd = Compression::new(Algorithm::Zstd { level: 1 });
        assert_eq!(advertised(None), 0);
        assert_eq!(advertised(Some(&zstd)), 0b11);
        assert_eq!(negotiate(Some(&zstd), 0b11), Some(zstd));
        assert_eq!(negotiate(Some(&zstd), 0b01), None);
        assert_eq!(negotiate(None, 0b11), None);
    }

    #[test]
    fn bombs_and_lies_are_refused_without_writing_past_the_claim() {
        let zeros = vec![0u8; 1 << 20];
        let bomb = zstd::bulk::compress(&zeros, 3).unwrap();
        let body = |id: u8, claim: u32, data: &[u8]| {
            let mut body = vec![id];
            body.extend(claim.to_le_bytes());
            body.extend(data);
            body
        };
        let header = request(0);
        // Claims 4 KiB, holds 1 MiB.
        let err = decompress(&header, &body(2, 4096, &bomb), 3, 1 << 30).unwrap_err();
        assert!(matches!(err, FrameError::Compression(_)), "{err:?}");
        // Claims more than the limit.
        let err = decompress(&header, &body(2, 1 << 20, &bomb), 3, 65536).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 1 << 20,
                max: 65536
            }
        );
        // Claims more than it holds.
        let err = decompress(&header, &body(2, (1 << 20) + 1, &bomb), 3, 1 << 30).unwrap_err();
        assert!(matches!(err, FrameError::Compression(_)), "{err:?}");
        // Not advertised, unknown, or no prefix.
        for (accepted, data) in [
            (1, body(2, 10, &bomb)),
            (3, body(3, 10, b"")),
            (3, vec![1, 0]),
        ] {
            let err = decompress(&header, &data, accepted, 1 << 30).unwrap_err();
            assert!(matches!(err, FrameError::Compression(_)), "{err:?}");
        }
        // On a frame kind that is never compressed.
        let pong = FrameHeader::new(FrameKind::Pong, 1);
        assert!(decompress(&pong, &body(2, 4096, &bomb), 3, 1 << 30).is_err());
    }
}
