//! MessagePack decoding of untrusted bytes into typed values: errors, never panics, and
//! nesting stays within the codec's depth limit.
#![no_main]

use std::collections::BTreeMap;

use flumen_codec::{Codec, MsgPack};
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

fuzz_target!(|data: &[u8]| {
    let codec = MsgPack::default();
    if let Ok(message) = codec.decode::<Message>(data) {
        // What decodes re-encodes and decodes to the same value (NaN aside).
        let bytes = codec.encode(&message).expect("a decoded value encodes");
        if let Ok(again) = codec.decode::<Message>(&bytes) {
            let has_nan = format!("{message:?}").contains("NaN");
            assert!(has_nan || again == message);
        }
    }
    let _ = codec.decode::<serde::de::IgnoredAny>(data);
    let _ = codec.decode::<(String, Vec<u64>, Shape)>(data);
});
