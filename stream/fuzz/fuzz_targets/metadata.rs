//! The metadata block decoder over arbitrary bytes: no panic, the limits hold for what it
//! accepts, and what it accepts survives an encode/decode round trip.
#![no_main]

use bytes::Bytes;
use flumen_stream::metadata::{Metadata, MAX_METADATA_ENTRIES, MAX_METADATA_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut body = Bytes::copy_from_slice(data);
    let Ok(metadata) = Metadata::decode(&mut body) else {
        return;
    };
    assert!(metadata.len() <= MAX_METADATA_ENTRIES);
    let size: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(size <= MAX_METADATA_LEN);
    // The payload is what followed the block.
    assert!(data.ends_with(&body));
    let mut encoded = metadata.encode().expect("a decoded block encodes");
    let again = Metadata::decode(&mut encoded).expect("an encoded block decodes");
    assert!(encoded.is_empty());
    assert!(again.iter().eq(metadata.iter()));
});
