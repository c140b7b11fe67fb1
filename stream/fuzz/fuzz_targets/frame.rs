//! The frame decoder over arbitrary bytes: it never panics, never takes a frame over its
//! limit, and every frame it takes encodes back to the bytes it came from.
#![no_main]

use bytes::BytesMut;
use flumen_stream::frame::{FrameDecoder, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

/// A small limit, so that lengths over it are common in the input.
const MAX_LEN: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(MAX_LEN);
    let mut buf = BytesMut::from(data);
    let mut offset = 0;
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        assert!(frame.header.len <= MAX_LEN);
        assert_eq!(frame.body.len(), frame.header.len as usize);
        let mut again = BytesMut::new();
        frame.encode(&mut again);
        let end = offset + HEADER_LEN + frame.body.len();
        assert_eq!(&again[..], &data[offset..end]);
        offset = end;
    }
    assert!(offset <= data.len());
});
