//! The attachment split of a reply body (`u32` message length, message, attachment): a length
//! that lies is an error, never a panic or an out-of-bounds slice; when it splits, the parts
//! are exactly the body's.
#![no_main]

use bytes::Bytes;
use flumen::{__private::detach_reply, MsgPack, NoError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let split = detach_reply::<serde_bytes_like::Any, NoError, _>(&MsgPack::default(), body);
    if let Ok(reply) = split {
        let declared = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
        assert_eq!(reply.attachment.0.len(), data.len() - 4 - declared);
        assert!(data.ends_with(&reply.attachment.0));
    }
});

mod serde_bytes_like {
    /// Accepts any MessagePack value and keeps nothing.
    pub struct Any;

    impl<'de> serde::Deserialize<'de> for Any {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            serde::de::IgnoredAny::deserialize(d).map(|_| Any)
        }
    }
}
