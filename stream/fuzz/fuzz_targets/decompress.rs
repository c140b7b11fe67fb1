//! Compressed frame bodies over arbitrary bytes, as a receiver meets them: decompression never
//! panics; the flag on a kind that is never compressed, an algorithm the receiver did not
//! advertise, and a declared length over its limit are refused (the last as `TooLarge`, at
//! the limit exactly still taken); what it accepts is exactly the length the body declares,
//! with the header's other fields and flags kept, and, for LZ4, exactly what an independent
//! decoder of the block format makes of the data; a body that decompresses is refused once it
//! claims one byte more or one byte less. And what the sending side compresses is smaller,
//! says so in its prefix, and decompresses to what it was.
//!
//! Input: a selector byte, then the compressed body (`algorithm: u8`, `len: u32`, data).
//! Selector bits 0-1: the frame kind (3: one that is never compressed); bits 2-3: what the
//! receiver advertised (both, LZ4, Zstandard, nothing); bits 4-6: other flags on the frame
//! (and which never-compressed kind); bit 7: the sending side's algorithm.
#![no_main]

use flumen_stream::{
    compress::{compress_body, decompress, Algorithm, Compression},
    frame::{flags, FrameError, FrameHeader, FrameKind},
};
use libfuzzer_sys::fuzz_target;

/// The receiver's `max_frame_len` in this target.
const MAX_LEN: u32 = 64 * 1024;

/// Algorithm ids in a compressed body (PROTOCOL.md §9a); `1 << (id - 1)` is the hello bit.
const LZ4: u8 = 1;
const ZSTD: u8 = 2;

/// `algorithm` and `len` before the compressed bytes.
const PREFIX_LEN: usize = 5;

/// Kinds that never carry a compressed body.
const NEVER_COMPRESSED: [FrameKind; 8] = [
    FrameKind::Ping,
    FrameKind::Pong,
    FrameKind::Error,
    FrameKind::Cancel,
    FrameKind::GoAway,
    FrameKind::StreamEnd,
    FrameKind::Credit,
    FrameKind::Ping,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    receive(selector, body);
    send(selector, body);
});

/// The receiving side: `body` arrived with the `COMPRESSED` flag.
fn receive(selector: u8, body: &[u8]) {
    let other_flags = (selector >> 4) & 0x07;
    let eligible = selector & 3 != 3;
    let kind = match selector & 3 {
        0 => FrameKind::Request,
        1 => FrameKind::Response,
        2 => FrameKind::StreamItem,
        _ => NEVER_COMPRESSED[usize::from(other_flags)],
    };
    let accepted = [0b11u16, 0b01, 0b10, 0][usize::from(selector >> 2) & 3];
    let header = FrameHeader {
        kind,
        flags: flags::COMPRESSED | other_flags,
        method: 0xA1B2_C3D4,
        seq: 7,
        len: body.len() as u32,
        aux: 250,
    };
    let result = decompress(&header, body, accepted, MAX_LEN);

    let Some((&[id, a, b, c, d], packed)) = body.split_first_chunk::<PREFIX_LEN>() else {
        assert!(
            matches!(result, Err(FrameError::Compression(_))),
            "a body shorter than its prefix: {result:?}"
        );
        return;
    };
    let declared = u32::from_le_bytes([a, b, c, d]);
    let advertised = matches!(id, LZ4 | ZSTD) && accepted & (1 << (id - 1)) != 0;
    if !eligible {
        assert!(
            matches!(result, Err(FrameError::Compression(_))),
            "{kind:?} taken as compressed: {result:?}"
        );
        return;
    }
    if !advertised {
        assert!(
            matches!(result, Err(FrameError::Compression(_))),
            "algorithm {id} taken though the receiver advertised {accepted:#04b}: {result:?}"
        );
        return;
    }
    if declared > MAX_LEN {
        assert_eq!(
            result.err(),
            Some(FrameError::TooLarge {
                len: declared,
                max: MAX_LEN
            }),
            "a claim over the limit"
        );
        return;
    }
    if id == LZ4 {
        // Taken exactly when the data is an LZ4 block of exactly the declared length.
        let expected =
            lz4_block(packed, declared as usize).filter(|out| out.len() == declared as usize);
        let got = result.as_ref().ok().map(|(_, out)| &out[..]);
        assert_eq!(
            got,
            expected.as_deref(),
            "LZ4 data claiming {declared} bytes"
        );
    }
    let Ok((inflated, out)) = result else {
        return;
    };
    assert_eq!(out.len(), declared as usize);
    assert!(out.len() <= MAX_LEN as usize);
    // Only the flag goes and the length changes: kind, method, seq, aux and the other flags
    // are the frame's.
    let expected = FrameHeader {
        flags: header.flags & !flags::COMPRESSED,
        len: declared,
        ..header
    };
    assert_eq!(inflated, expected);

    // The limit is inclusive: a limit of exactly the claim takes it, one byte less refuses it.
    let (_, again) =
        decompress(&header, body, accepted, declared).expect("a claim at exactly the limit");
    assert_eq!(again, out);
    if let Some(below) = declared.checked_sub(1) {
        assert_eq!(
            decompress(&header, body, accepted, below).err(),
            Some(FrameError::TooLarge {
                len: declared,
                max: below
            }),
            "a claim one byte over the limit"
        );
    }
    // The data decompresses to exactly its claim: the same data claiming one byte more or
    // one byte less is refused.
    for claim in [declared.checked_add(1), declared.checked_sub(1)]
        .into_iter()
        .flatten()
    {
        let mut lying = body.to_vec();
        lying[1..PREFIX_LEN].copy_from_slice(&claim.to_le_bytes());
        let refused = decompress(&header, &lying, accepted, MAX_LEN + 1);
        assert!(
            matches!(refused, Err(FrameError::Compression(_))),
            "data of {declared} bytes taken for a claim of {claim}: {refused:?}"
        );
    }
}

/// The sending side: whatever it compresses comes back intact.
fn send(selector: u8, body: &[u8]) {
    let (algorithm, id) = if selector & 0x80 == 0 {
        (Algorithm::Lz4, LZ4)
    } else {
        (Algorithm::Zstd { level: 1 }, ZSTD)
    };
    let plain = FrameHeader {
        len: body.len() as u32,
        ..FrameHeader::new(FrameKind::Request, 2)
    };
    let compression = Compression::new(algorithm).threshold(0);
    let Some((packed_header, packed)) = compress_body(&compression, &plain, body) else {
        return;
    };
    // Only when that makes it smaller; the header has the flag and the compressed length,
    // the prefix the algorithm and the length before compression.
    assert!(packed.len() < body.len(), "compressed larger than it was");
    assert_eq!(
        packed_header,
        FrameHeader {
            flags: flags::COMPRESSED,
            len: packed.len() as u32,
            ..plain
        }
    );
    assert_eq!(packed[0], id);
    assert_eq!(
        u32::from_le_bytes([packed[1], packed[2], packed[3], packed[4]]) as usize,
        body.len()
    );
    // A receiver that advertised only this algorithm takes it, and gets the frame back.
    let (header, out) =
        decompress(&packed_header, &packed, 1 << (id - 1), u32::MAX).expect("round trip");
    assert_eq!(&out[..], body);
    assert_eq!(header, plain);
    if id == LZ4 {
        assert_eq!(
            lz4_block(&packed[PREFIX_LEN..], body.len()).as_deref(),
            Some(body),
            "the sender's LZ4 is not a block the format describes"
        );
    }
}

/// An LZ4 block decoded into at most `cap` bytes, written from the block format's description
/// (not from the decoder under test): sequences of a token (high nibble: literal count, low
/// nibble: match length less 4; a nibble of 15 is extended by following bytes, added up while
/// they are 255), the literals, then a 2-byte little-endian offset back into the output (not
/// 0, not before its start) and the match, copied byte by byte (so it may overlap itself).
/// The block may end right after any sequence's literals. `None` for a block that breaks the
/// format or needs more than `cap` bytes.
fn lz4_block(mut input: &[u8], cap: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let (&token, rest) = input.split_first()?;
        input = rest;
        let mut literals = usize::from(token >> 4);
        if literals == 15 {
            literals += extension(&mut input)?;
        }
        if literals > input.len() || out.len() + literals > cap {
            return None;
        }
        let (copy, rest) = input.split_at(literals);
        out.extend_from_slice(copy);
        input = rest;
        if input.is_empty() {
            return Some(out);
        }
        let (&[lo, hi], rest) = input.split_first_chunk::<2>()?;
        input = rest;
        let offset = usize::from(u16::from_le_bytes([lo, hi]));
        let mut len = 4 + usize::from(token & 15);
        if len == 4 + 15 {
            len += extension(&mut input)?;
        }
        if offset == 0 || offset > out.len() || out.len() + len > cap {
            return None;
        }
        for _ in 0..len {
            out.push(out[out.len() - offset]);
        }
    }
}

/// The bytes extending a nibble of 15: added up through the first that is not 255.
fn extension(input: &mut &[u8]) -> Option<usize> {
    let mut sum = 0;
    loop {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        sum += usize::from(byte);
        if byte != 255 {
            return Some(sum);
        }
    }
}
