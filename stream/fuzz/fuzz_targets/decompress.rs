//! Compressed frame bodies over arbitrary bytes: decompression never panics, never yields more
//! than the receiver's limit or other than the length the body claims; and what the sender
//! side compresses decompresses to what it was.
#![no_main]

use flumen_stream::{
    compress::{decompress, Algorithm, Compression},
    frame::{flags, FrameHeader, FrameKind},
};
use libfuzzer_sys::fuzz_target;

/// The receiver's `max_frame_len` in this target.
const MAX_LEN: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let kind = match selector % 4 {
        0 => FrameKind::Request,
        1 => FrameKind::Response,
        2 => FrameKind::StreamItem,
        _ => FrameKind::Ping,
    };
    let header = FrameHeader {
        flags: flags::COMPRESSED,
        len: body.len() as u32,
        ..FrameHeader::new(kind, 1)
    };
    // Both algorithms advertised, or one of them.
    let accepted = [3u16, 1, 2][usize::from(selector / 4) % 3];
    if let Ok((header, out)) = decompress(&header, body, accepted, MAX_LEN) {
        assert!(out.len() as u32 <= MAX_LEN);
        assert_eq!(header.len as usize, out.len());
        assert_eq!(header.flags & flags::COMPRESSED, 0);
    }

    // The sending side: whatever it compresses comes back intact.
    let algorithm = if selector & 0x80 == 0 {
        Algorithm::Lz4
    } else {
        Algorithm::Zstd { level: 1 }
    };
    let plain = FrameHeader {
        len: body.len() as u32,
        ..FrameHeader::new(FrameKind::Request, 2)
    };
    let compression = Compression::new(algorithm).threshold(0);
    if let Some((packed_header, packed)) =
        flumen_stream::compress::compress_body(&compression, &plain, body)
    {
        let (header, out) = decompress(&packed_header, &packed, 3, u32::MAX).expect("round trip");
        assert_eq!(&out[..], body);
        assert_eq!(header.len as usize, body.len());
    }
});
