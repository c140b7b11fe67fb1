use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{scratch, Codec, CodecError, DEFAULT_MAX_DEPTH};

/// CBOR (RFC 8949) via ciborium (feature `cbor`): self-describing and compact, understood by
/// many languages. Decoding stops at `max_depth` levels of nesting.
///
/// # Examples
///
/// ```
/// use flumen_codec::{Cbor, Codec};
///
/// let codec = Cbor::default();
/// let body = codec.encode(&("hello", 42u32)).unwrap();
/// let (text, n): (String, u32) = codec.decode(&body).unwrap();
/// assert_eq!((text.as_str(), n), ("hello", 42));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Cbor {
    max_depth: usize,
}

impl Default for Cbor {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

impl Cbor {
    /// Limit on nesting depth while decoding. Default [`DEFAULT_MAX_DEPTH`].
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }
}

impl Codec for Cbor {
    fn name(&self) -> &'static str {
        "cbor"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        scratch::encode(|out| ciborium::into_writer(value, out))
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, CodecError> {
        // Never lent, even inside another codec's lent decode: ciborium reads byte strings to
        // lend only into its 4 KiB scratch buffer (and copies them anyway), so its `Blob`s must
        // ask for owned buffers.
        crate::without_lending(|| {
            ciborium::de::from_reader_with_recursion_limit(body, self.max_depth)
                .map_err(|e| CodecError::Decode(e.to_string().into()))
        })
    }

    /// [`decode`](Codec::decode): nothing lent (see there).
    fn decode_body<T: DeserializeOwned>(&self, body: &Bytes) -> Result<T, CodecError> {
        self.decode(body)
    }
}
