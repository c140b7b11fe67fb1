use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{scratch, Codec, CodecError};

/// JSON via serde_json (feature `json`): readable bodies, for debugging and for peers that
/// speak JSON. Decoding stops at serde_json's nesting limit (128 levels); byte strings are
/// arrays of numbers, several times their size.
///
/// # Examples
///
/// ```
/// use flumen_codec::{Codec, Json};
///
/// let body = Json.encode(&("hello", 42u32)).unwrap();
/// assert_eq!(&body[..], br#"["hello",42]"#);
/// let (text, n): (String, u32) = Json.decode(&body).unwrap();
/// assert_eq!((text.as_str(), n), ("hello", 42));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl Codec for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        scratch::encode(|out| serde_json::to_writer(out, value))
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(body).map_err(|e| CodecError::Decode(e.into()))
    }
}
