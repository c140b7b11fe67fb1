use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{scratch, Codec, CodecError};

/// postcard (feature `postcard`): the most compact of the codecs (varints, no field names or
/// tags), not self-describing: both sides must agree on the types exactly. Nesting is bounded
/// by the decoded type itself; declared lengths are checked against the body.
///
/// # Examples
///
/// ```
/// use flumen_codec::{Codec, Postcard};
///
/// let body = Postcard.encode(&("hello", 42u32)).unwrap();
/// assert_eq!(body.len(), 7);
/// let (text, n): (String, u32) = Postcard.decode(&body).unwrap();
/// assert_eq!((text.as_str(), n), ("hello", 42));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Postcard;

impl Codec for Postcard {
    fn name(&self) -> &'static str {
        "postcard"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        scratch::encode(|out| postcard::to_io(value, out).map(drop))
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, CodecError> {
        postcard::from_bytes(body).map_err(|e| CodecError::Decode(e.into()))
    }
}
