use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{scratch, Codec, CodecError, DEFAULT_MAX_DEPTH};

/// MessagePack via rmp-serde. Structs are encoded as arrays (compact, field order matters),
/// or as maps keyed by field name with [`struct_maps`](Self::struct_maps) (larger, and a
/// reader ignores fields it does not know). Either decodes both.
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
    struct_maps: bool,
}

impl Default for MsgPack {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
            struct_maps: false,
        }
    }
}

impl MsgPack {
    /// Limit on nesting depth while decoding. Default [`DEFAULT_MAX_DEPTH`].
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }

    /// Encodes structs as maps keyed by field name instead of arrays. Default `false`.
    ///
    /// A struct of a later version with fields added then decodes in an earlier one (unknown
    /// keys are skipped; as an array, its extra elements are an error), at the cost of the
    /// names on the wire. Decoding accepts both layouts whatever this says.
    pub fn struct_maps(mut self, maps: bool) -> Self {
        self.struct_maps = maps;
        self
    }
}

impl Codec for MsgPack {
    fn name(&self) -> &'static str {
        "msgpack"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        if self.struct_maps {
            scratch::encode(|out| rmp_serde::encode::write_named(out, value))
        } else {
            scratch::encode(|out| rmp_serde::encode::write(out, value))
        }
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
    fn struct_maps_name_the_fields_and_skip_unknown_ones() {
        #[derive(Serialize)]
        struct Later {
            x: i64,
            added: bool,
        }
        #[derive(Debug, PartialEq, Deserialize)]
        struct Earlier {
            x: i64,
        }
        let codec = MsgPack::default().struct_maps(true);
        let body = codec.encode(&Later { x: 1, added: true }).unwrap();
        // fixmap of 2: "x" => 1, "added" => true.
        assert_eq!(&body[..], b"\x82\xa1x\x01\xa5added\xc3");
        assert_eq!(codec.decode::<Earlier>(&body).unwrap(), Earlier { x: 1 });
        let as_array = MsgPack::default()
            .encode(&Later { x: 1, added: true })
            .unwrap();
        assert!(MsgPack::default().decode::<Earlier>(&as_array).is_err());
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
