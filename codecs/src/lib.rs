//! Turns serde values into message bodies and back.
//!
//! [`Codec`] is what Flumen's typed layer needs; [`MsgPack`] (rmp-serde, feature `msgpack`, on by
//! default) is the default implementation. Behind features: `Json` (serde_json), `Postcard`,
//! `Cbor` (ciborium) and `Bincode` (bincode 2). Each bounds what a decode of untrusted bytes
//! may cost (nesting, declared lengths). A raw [`bytes::Bytes`] body needs no codec at all:
//! `Dispatch` implementations and raw client calls pass it through untouched. Within a typed
//! message, a [`Blob`] is bytes that decode without a copy.
#![warn(missing_docs)]

#[cfg(feature = "bincode")]
mod bincode;
mod blob;
#[cfg(feature = "cbor")]
mod cbor;
#[cfg(feature = "json")]
mod json;
#[cfg(feature = "msgpack")]
mod msgpack;
#[cfg(feature = "postcard")]
mod postcard;
mod scratch;

use std::error::Error as StdError;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

#[cfg(feature = "bincode")]
pub use crate::bincode::{Bincode, BINCODE_MAX_ALLOC};
pub use crate::blob::{without_lending, Blob, BLOB_SHARE_MIN};
#[cfg(feature = "cbor")]
pub use crate::cbor::Cbor;
#[cfg(feature = "json")]
pub use crate::json::Json;
#[cfg(feature = "msgpack")]
pub use crate::msgpack::MsgPack;
#[cfg(feature = "postcard")]
pub use crate::postcard::Postcard;

/// Default limit on nesting depth while decoding (128), for the self-describing codecs that
/// take one ([`MsgPack`], `Cbor`). Stops a small, deeply nested payload from exhausting the
/// stack.
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// Encodes and decodes message bodies.
///
/// Decoding reads bytes from the network: implementations bound the work and memory it takes
/// (nesting depth, declared lengths checked against the input) and return an error, never panic.
pub trait Codec: Clone + Send + Sync + 'static {
    /// Encodes `value` into a new body.
    ///
    /// # Errors
    ///
    /// If `value` cannot be represented (for example a map with non-string keys in a format
    /// that needs them).
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes, CodecError>;

    /// Decodes a value from `body`.
    ///
    /// # Errors
    ///
    /// If `body` is not a valid encoding of `T` or nests deeper than the codec allows.
    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, CodecError>;

    /// Decodes a value from `body`, a body as received, as [`decode`](Self::decode) does;
    /// the [`Blob`]s in it share `body`'s buffer where the format reads byte strings in place.
    /// Flumen's typed clients and servers decode through this.
    ///
    /// The default lends `body` to the `Blob`s, which then ask the deserializer for bytes to
    /// borrow (`deserialize_bytes`). A codec whose deserializer cannot give byte strings of
    /// any length that way (ciborium's reads at most 4 KiB so) overrides this with
    /// [`decode`](Self::decode), its `Blob`s then copies, and decodes within
    /// [`without_lending`], so that it does not see another codec's body lent when it runs
    /// inside that codec's decode (as `Cbor` does).
    ///
    /// # Errors
    ///
    /// As [`decode`](Self::decode).
    fn decode_body<T: DeserializeOwned>(&self, body: &Bytes) -> Result<T, CodecError> {
        if body.len() < BLOB_SHARE_MIN {
            // No Blob in it can be large enough to share: nothing to lend.
            return self.decode(body);
        }
        blob::lending(body, || self.decode(body))
    }

    /// The format's short name: `"msgpack"`, `"json"`, `"cbor"`, `"postcard"` or `"bincode"`
    /// for the codecs of this crate, `"custom"` unless an implementation says otherwise.
    /// Reflection reports it, so that a tool such as the `flumen` command line knows how to
    /// encode requests for a server it has never seen.
    fn name(&self) -> &'static str {
        "custom"
    }
}

/// A value that could not be encoded, or bytes that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Encoding failed.
    #[error("encode failed: {0}")]
    Encode(#[source] Box<dyn StdError + Send + Sync>),
    /// Decoding failed.
    #[error("decode failed: {0}")]
    Decode(#[source] Box<dyn StdError + Send + Sync>),
}
