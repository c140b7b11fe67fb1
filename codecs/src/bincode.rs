use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{scratch, Codec, CodecError};

/// The most bytes one [`Bincode`] decode allocates, whatever lengths the body declares:
/// 64 MiB (Flumen's frame limit keeps real bodies far below it).
pub const BINCODE_MAX_ALLOC: usize = 64 << 20;

/// bincode 2 through its serde support (feature `bincode`), standard configuration (varint
/// integers): fast and compact, not self-describing. A decode allocates at most
/// [`BINCODE_MAX_ALLOC`] bytes.
///
/// # Examples
///
/// ```
/// use flumen_codec::{Bincode, Codec};
///
/// let body = Bincode.encode(&("hello", 42u32)).unwrap();
/// let (text, n): (String, u32) = Bincode.decode(&body).unwrap();
/// assert_eq!((text.as_str(), n), ("hello", 42));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Bincode;

impl Codec for Bincode {
    fn name(&self) -> &'static str {
        "bincode"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError> {
        scratch::encode(|mut out| {
            bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
                .map(drop)
        })
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, CodecError> {
        let config = bincode::config::standard().with_limit::<BINCODE_MAX_ALLOC>();
        bincode::serde::decode_from_slice(body, config)
            .map(|(value, _)| value)
            .map_err(|e| CodecError::Decode(e.into()))
    }
}
