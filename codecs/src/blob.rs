//! [`Blob`]: bytes in a typed message that a decode takes from the received body, uncopied.
//!
//! serde hands a deserializer's byte strings to a visitor as slices, never as the `Bytes` they
//! came in. [`Codec::decode_body`](crate::Codec::decode_body) lends this thread the body it
//! decodes; a `Blob` given a slice of that body becomes a `Bytes` sharing its buffer
//! (`Bytes::slice_ref`), and a copy otherwise.

use std::{cell::RefCell, fmt, ops::Deref};

use bytes::Bytes;
use serde::{
    de::{self, Deserializer, SeqAccess, Visitor},
    Deserialize, Serialize, Serializer,
};

/// The smallest [`Blob`] that shares the body it was decoded from; a smaller one is copied.
/// A shared `Blob` keeps the buffer its body is in alive: Flumen's core cuts bodies under
/// 16 KiB out of a connection's read buffer (up to 128 KiB, other frames' bytes included),
/// and gives larger ones a buffer of their own. Copying a smaller `Blob` costs little.
pub const BLOB_SHARE_MIN: usize = 16 * 1024;

/// A [`Blob`] shares its body only if it is at least this fraction of it (1 / 8), so that a
/// `Blob` never pins more than eight times its own size: a small `Blob` in a large message is
/// copied.
const BLOB_SHARE_FRACTION: usize = 8;

thread_local! {
    /// The body being decoded on this thread, lent by `lending`.
    static LENT: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` with `body` lent to the [`Blob`]s it decodes. `Codec::decode_body` lends
/// only bodies of [`BLOB_SHARE_MIN`] bytes or more: no Blob in a shorter one could share it.
pub(crate) fn lending<T>(body: &Bytes, decode: impl FnOnce() -> T) -> T {
    lend(Some(body.clone()), decode)
}

/// Runs `decode` with no body lent to [`Blob`]s, which then ask the deserializer for an owned
/// buffer (`deserialize_byte_buf`), as every deserializer can give. A codec that does not lend
/// ([`Codec::decode_body`](crate::Codec::decode_body)) decodes within this, so that it does
/// not see another codec's body lent when it runs inside that codec's decode (a
/// `Deserialize` that decodes a body of its own).
pub fn without_lending<T>(decode: impl FnOnce() -> T) -> T {
    if LENT.with_borrow(Option::is_none) {
        return decode();
    }
    lend(None, decode)
}

/// Runs `decode` with `body` lent, then puts back what was lent before (a decode inside a
/// decode), even if `decode` panics.
fn lend<T>(body: Option<Bytes>, decode: impl FnOnce() -> T) -> T {
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LENT.with_borrow_mut(|lent| *lent = self.0.take());
        }
    }
    let _restore = Restore(LENT.with_borrow_mut(|lent| std::mem::replace(lent, body)));
    decode()
}

/// `bytes` as a slice of the lent body if it is one, and large enough to share (see
/// [`BLOB_SHARE_MIN`] and [`BLOB_SHARE_FRACTION`]); else a copy.
fn share_or_copy(bytes: &[u8]) -> Bytes {
    if bytes.len() >= BLOB_SHARE_MIN {
        // Taken out of the cell first: nothing below runs while it is borrowed.
        let body = LENT.with_borrow(Clone::clone);
        if let Some(body) = body.filter(|body| bytes.len() * BLOB_SHARE_FRACTION >= body.len()) {
            let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
            let at = bytes.as_ptr() as usize;
            if at >= start && at + bytes.len() <= end {
                return body.slice_ref(bytes);
            }
        }
    }
    Bytes::copy_from_slice(bytes)
}

/// Bytes in a typed message (an argument, a reply, a field) that decode without a copy: where
/// the codec reads byte strings in place ([`MsgPack`](crate::MsgPack), `Postcard`, `Bincode`)
/// and the body came through
/// [`Codec::decode_body`](crate::Codec::decode_body), as Flumen's typed clients and servers
/// decode, a `Blob` of [`BLOB_SHARE_MIN`] bytes or more, and at least an eighth of its body, is
/// a slice of the frame it arrived in. Otherwise it is a copy: with CBOR, with JSON's arrays
/// of numbers (a JSON string is shared), or for a smaller `Blob`.
///
/// On the wire it is a byte string, as `serde_bytes::ByteBuf` is (JSON: an array of numbers),
/// so a `Blob` on one side reads a `ByteBuf` or a `#[serde(with = "serde_bytes")] Vec<u8>` on
/// the other. Encoding copies it into the body, once.
///
/// A shared `Blob` keeps the buffer of the frame it came in alive, at most eight times its own
/// size: to keep a `Blob` for long when memory is tight, copy it (`Bytes::copy_from_slice`).
///
/// ```
/// use flumen_codec::{Blob, Codec, MsgPack};
///
/// let codec = MsgPack::default();
/// let body = codec.encode(&Blob::from(vec![7u8; 64 * 1024])).unwrap();
/// let blob: Blob = codec.decode_body(&body).unwrap();
/// assert_eq!(blob.len(), 64 * 1024);
/// // The same memory as the body's (after its few bytes of header).
/// assert!(body.as_ptr_range().contains(&blob.as_ptr()));
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blob(Bytes);

impl Blob {
    /// A `Blob` of `bytes`.
    pub const fn new(bytes: Bytes) -> Self {
        Self(bytes)
    }

    /// The bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Blob {
    type Target = Bytes;

    fn deref(&self) -> &Bytes {
        &self.0
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for Blob {
    fn from(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes.into())
    }
}

impl From<&'static [u8]> for Blob {
    fn from(bytes: &'static [u8]) -> Self {
        Self(Bytes::from_static(bytes))
    }
}

impl From<Blob> for Bytes {
    fn from(blob: Blob) -> Self {
        blob.0
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    /// Asks for bytes to borrow while a body is lent, for an owned buffer otherwise: some
    /// decoders read only short byte strings when asked to lend them (ciborium: 4 KiB into
    /// its scratch buffer), and their codecs do not lend (see `Codec::decode_body`).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if LENT.with_borrow(Option::is_some) {
            deserializer.deserialize_bytes(BlobVisitor)
        } else {
            deserializer.deserialize_byte_buf(BlobVisitor)
        }
    }
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, bytes: &'de [u8]) -> Result<Blob, E> {
        Ok(Blob(share_or_copy(bytes)))
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Blob, E> {
        Ok(Blob(Bytes::copy_from_slice(bytes)))
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob(bytes.into()))
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Blob, E> {
        self.visit_borrowed_bytes(text.as_bytes())
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Blob, E> {
        self.visit_bytes(text.as_bytes())
    }

    /// JSON's arrays of numbers. Their declared length is not trusted: the vector grows with
    /// the elements that came.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Blob(bytes.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(len: usize) -> Bytes {
        Bytes::from(vec![3u8; len])
    }

    fn within(body: &Bytes, bytes: &Bytes) -> bool {
        body.as_ptr_range().contains(&bytes.as_ptr())
    }

    #[test]
    fn only_a_large_slice_of_the_lent_body_is_shared() {
        let (lent, other) = (body(4 * BLOB_SHARE_MIN), body(4 * BLOB_SHARE_MIN));
        let huge = body(BLOB_SHARE_FRACTION * BLOB_SHARE_MIN + 1);
        lending(&huge, || {
            // Less than an eighth of its body: a copy, not a pin on the whole.
            assert!(!within(&huge, &share_or_copy(&huge[..BLOB_SHARE_MIN])));
            assert!(within(&huge, &share_or_copy(&huge[..BLOB_SHARE_MIN + 1])));
        });
        lending(&lent, || {
            let shared = share_or_copy(&lent[10..10 + BLOB_SHARE_MIN]);
            assert!(within(&lent, &shared));
            assert_eq!(shared.len(), BLOB_SHARE_MIN);
            // Too small to share.
            assert!(!within(&lent, &share_or_copy(&lent[..BLOB_SHARE_MIN - 1])));
            // Another body's bytes: a copy.
            assert!(!within(&other, &share_or_copy(&other[..BLOB_SHARE_MIN])));
        });
        // Nothing lent any more.
        assert!(!within(&lent, &share_or_copy(&lent[..BLOB_SHARE_MIN])));
    }

    /// Whether a body was lent while it was decoded.
    #[cfg(feature = "msgpack")]
    struct SawLent(bool);

    #[cfg(feature = "msgpack")]
    impl<'de> Deserialize<'de> for SawLent {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            serde_bytes::ByteBuf::deserialize(deserializer)?;
            Ok(Self(LENT.with_borrow(Option::is_some)))
        }
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn only_a_body_large_enough_to_share_is_lent() {
        use crate::{Codec, MsgPack};
        let codec = MsgPack::default();
        for (len, lent) in [
            (100, false),
            (BLOB_SHARE_MIN - 8, false),
            (BLOB_SHARE_MIN, true),
        ] {
            let body = codec.encode(&Blob::from(vec![1u8; len])).unwrap();
            let SawLent(saw) = codec.decode_body(&body).unwrap();
            assert_eq!(saw, lent, "a body of {} bytes", body.len());
        }
        assert!(LENT.with_borrow(Option::is_none), "a lent body stayed lent");
    }

    #[test]
    fn a_decode_within_a_decode_gives_back_the_outer_body() {
        let (outer, inner) = (body(2 * BLOB_SHARE_MIN), body(2 * BLOB_SHARE_MIN));
        lending(&outer, || {
            lending(&inner, || {
                assert!(within(&inner, &share_or_copy(&inner[..BLOB_SHARE_MIN])));
            });
            assert!(within(&outer, &share_or_copy(&outer[..BLOB_SHARE_MIN])));
            // A codec that does not lend decodes with nothing lent, then gives the outer back.
            without_lending(|| LENT.with_borrow(|lent| assert!(lent.is_none())));
            assert!(within(&outer, &share_or_copy(&outer[..BLOB_SHARE_MIN])));
            // Given back when the inner decode panics, too.
            let panicked = std::panic::catch_unwind(|| lending(&inner, || panic!("bad body")));
            assert!(panicked.is_err());
            assert!(within(&outer, &share_or_copy(&outer[..BLOB_SHARE_MIN])));
        });
    }
}
