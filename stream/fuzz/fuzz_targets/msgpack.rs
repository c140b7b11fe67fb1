//! MessagePack decoding of untrusted bytes into typed values: errors, never panics, and
//! nesting stays within the codec's depth limit. What decodes re-encodes, and the re-encoding
//! always decodes again, to an equal value (NaN aside), and encodes to the same bytes: the
//! codec's own output is canonical.
#![no_main]

use std::collections::BTreeMap;

use flumen_codec::{Codec, MsgPack, DEFAULT_MAX_DEPTH};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Shape {
    Unit,
    Tuple(u8, i64),
    Struct { name: String, tags: Vec<String> },
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Message {
    id: u64,
    name: String,
    body: Vec<u8>,
    shapes: Vec<Shape>,
    map: BTreeMap<String, Option<f64>>,
    nested: Option<Box<Message>>,
}

impl Message {
    /// Messages nested in this one, itself included.
    fn depth(&self) -> usize {
        let mut depth = 1;
        let mut next = self.nested.as_deref();
        while let Some(message) = next {
            depth += 1;
            next = message.nested.as_deref();
        }
        depth
    }
}

fuzz_target!(|data: &[u8]| {
    let codec = MsgPack::default();
    if let Ok(message) = codec.decode::<Message>(data) {
        // Each message is one level of nesting (an array or a map).
        assert!(
            message.depth() < DEFAULT_MAX_DEPTH,
            "{} nested messages decoded under a depth limit of {DEFAULT_MAX_DEPTH}",
            message.depth()
        );
        let bytes = codec.encode(&message).expect("a decoded value encodes");
        // The re-encoding may nest one level deeper than the input did: a byte string the
        // input gave as `bin` (no nesting) where the value is a sequence (`Vec<u8>`, a tuple
        // variant's fields) is written back as an array. Decoded one level deeper, it must
        // decode: a value that decodes and cannot come back is a codec bug.
        let roomier = MsgPack::default().max_depth(DEFAULT_MAX_DEPTH + 1);
        let again = roomier
            .decode::<Message>(&bytes)
            .expect("the re-encoding of a decoded value decodes");
        let has_nan = format!("{message:?}").contains("NaN");
        assert!(has_nan || again == message, "{again:?} != {message:?}");
        // The codec's own output is canonical: encoding what it decoded gives the same bytes
        // (NaN included: its bits survive a round trip).
        let twice = codec.encode(&again).expect("a decoded value encodes");
        assert_eq!(twice, bytes, "the re-encoding is not stable");
    }
    let _ = codec.decode::<serde::de::IgnoredAny>(data);
    let _ = codec.decode::<(String, Vec<u64>, Shape)>(data);
});
