use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{scratch, Codec, CodecError, DEFAULT_MAX_DEPTH};

/// MessagePack via rmp-serde. Structs are encoded as arrays (compact, field order matters).
///
/// # Examples
///
/// ```
/// use flumen_codec::{Codec, MsgPack};
///
/// let codec = MsgPack::default();
/// let body = codec.encode(&("hello", 42u32)).unwrap();
/// let (text, n): (String, u32) = codec.decode(&body).unwrap();
/// assert_eq!((text.as_str(), n), ("hello", 42));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct MsgPack {
    max_depth: usize,
}

impl Default for MsgPack {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

impl MsgPack {
    /// Limit on nesting depth while decoding. Default [`DEFAULT_MAX_DEPTH`].
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }
}

impl Codec for MsgPack {
    fn name(&self) -> &'static str {
        "msgpack"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        scratch::encode(|out| rmp_serde::encode::write(out, value))
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, CodecError> {
        // Reads straight from the slice: byte strings and strings are not staged in a buffer.
        let mut de = rmp_serde::Deserializer::from_read_ref(body);
        de.set_max_depth(self.max_depth);
        T::deserialize(&mut de).map_err(|e| CodecError::Decode(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i64,
        name: String,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }

    #[test]
    fn golden_struct_is_an_array() {
        let body = MsgPack::default().encode(&(1u8, "a")).unwrap();
        assert_eq!(&body[..], &[0x92, 0x01, 0xa1, b'a']);
    }

    #[test]
    fn rejects_deep_nesting() {
        // 1000 nested one-element arrays.
        let mut body = vec![0x91u8; 1000];
        body.push(0x00);
        let err = MsgPack::default()
            .decode::<serde::de::IgnoredAny>(&body)
            .unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
    }

    #[test]
    fn lying_length_is_an_error_not_an_allocation() {
        // A bin32 claiming 4 GiB, followed by 3 bytes.
        let body = [0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(MsgPack::default()
            .decode::<serde_bytes::ByteBuf>(&body)
            .is_err());
        // An array32 claiming 4 billion strings.
        let body = [0xdd, 0xff, 0xff, 0xff, 0xff, 0xa0];
        assert!(MsgPack::default().decode::<Vec<String>>(&body).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(x in any::<i64>(), name in ".{0,20}", data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let codec = MsgPack::default();
            let point = Point { x, name, data };
            let body = codec.encode(&point).unwrap();
            prop_assert_eq!(codec.decode::<Point>(&body).unwrap(), point);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = MsgPack::default().decode::<Point>(&bytes);
            let _ = MsgPack::default().decode::<serde::de::IgnoredAny>(&bytes);
        }
    }
}
