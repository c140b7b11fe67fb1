//! Call metadata: a small map of string keys to byte values (tracing ids, auth tokens) that
//! travels at the front of a request whose `METADATA` flag is set (sans-IO).
//!
//! Layout (little-endian): `u32 block_len`, then `u16 count`, then per entry `u16 key_len`,
//! the key (UTF-8), `u32 value_len`, the value; the call's payload follows the block.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Most entries in one call's metadata (64).
pub const MAX_METADATA_ENTRIES: usize = 64;

/// Most bytes of one call's encoded metadata block (16 KiB), so metadata cannot be used to make
/// a server buffer or parse much more than a request.
pub const MAX_METADATA_LEN: usize = 16 * 1024;

/// A call's metadata: string keys, byte values, in insertion order. A key may repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(String, Bytes)>,
}

/// Metadata that does not fit the limits or is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// More than [`MAX_METADATA_ENTRIES`] entries, or a block over [`MAX_METADATA_LEN`].
    #[error(
        "metadata exceeds its limits ({MAX_METADATA_ENTRIES} entries, {MAX_METADATA_LEN} bytes)"
    )]
    TooLarge,
    /// The block is truncated or its lengths disagree.
    #[error("malformed metadata block")]
    Malformed,
    /// A key is not UTF-8.
    #[error("metadata key is not UTF-8")]
    BadKey,
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` = `value`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Bytes>) -> &mut Self {
        self.entries.push((key.into(), value.into()));
        self
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Every entry, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The encoded block, length prefix included.
    ///
    /// # Errors
    ///
    /// [`MetadataError::TooLarge`] past the limits (keys over 64 KiB included).
    pub fn encode(&self) -> Result<Bytes, MetadataError> {
        if self.entries.len() > MAX_METADATA_ENTRIES {
            return Err(MetadataError::TooLarge);
        }
        let len: usize = 2 + self
            .entries
            .iter()
            .map(|(k, v)| 2 + k.len() + 4 + v.len())
            .sum::<usize>();
        if len > MAX_METADATA_LEN {
            return Err(MetadataError::TooLarge);
        }
        let mut out = BytesMut::with_capacity(4 + len);
        out.put_u32_le(len as u32);
        out.put_u16_le(self.entries.len() as u16);
        for (key, value) in &self.entries {
            out.put_u16_le(key.len() as u16);
            out.put_slice(key.as_bytes());
            out.put_u32_le(value.len() as u32);
            out.put_slice(value);
        }
        Ok(out.freeze())
    }

    /// Splits the metadata block off the front of `body` (values share its memory); `body` is
    /// left holding the payload.
    ///
    /// # Errors
    ///
    /// [`MetadataError`] for a block over the limits or malformed; nothing is allocated for a
    /// block whose declared length is over the limit.
    pub fn decode(body: &mut Bytes) -> Result<Self, MetadataError> {
        if body.len() < 4 {
            return Err(MetadataError::Malformed);
        }
        let len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        if len > MAX_METADATA_LEN {
            return Err(MetadataError::TooLarge);
        }
        if body.len() < 4 + len || len < 2 {
            return Err(MetadataError::Malformed);
        }
        body.advance(4);
        let mut block = body.split_to(len);
        let count = block.get_u16_le() as usize;
        if count > MAX_METADATA_ENTRIES {
            return Err(MetadataError::TooLarge);
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            if block.remaining() < 2 {
                return Err(MetadataError::Malformed);
            }
            let key_len = block.get_u16_le() as usize;
            if block.remaining() < key_len + 4 {
                return Err(MetadataError::Malformed);
            }
            let key = block.split_to(key_len);
            let key = std::str::from_utf8(&key)
                .map_err(|_| MetadataError::BadKey)?
                .to_owned();
            let value_len = block.get_u32_le() as usize;
            if block.remaining() < value_len {
                return Err(MetadataError::Malformed);
            }
            entries.push((key, block.split_to(value_len)));
        }
        if block.has_remaining() {
            return Err(MetadataError::Malformed);
        }
        Ok(Self { entries })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn golden_bytes() {
        let mut metadata = Metadata::new();
        metadata.insert("trace", &b"ab"[..]);
        let encoded = metadata.encode().unwrap();
        assert_eq!(
            &encoded[..],
            &[
                15, 0, 0, 0, // block length: 2 + 2 + 5 + 4 + 2
                1, 0, // one entry
                5, 0, b't', b'r', b'a', b'c', b'e', // key
                2, 0, 0, 0, b'a', b'b', // value
            ]
        );
        let mut body = Bytes::from([&encoded[..], b"payload"].concat());
        assert_eq!(Metadata::decode(&mut body).unwrap(), metadata);
        assert_eq!(&body[..], b"payload");
    }

    #[test]
    fn limits() {
        let mut many = Metadata::new();
        for i in 0..=MAX_METADATA_ENTRIES {
            many.insert(i.to_string(), Bytes::new());
        }
        assert_eq!(many.encode(), Err(MetadataError::TooLarge));
        let mut huge = Bytes::from(vec![0xff; 8]);
        assert_eq!(Metadata::decode(&mut huge), Err(MetadataError::TooLarge));
    }

    proptest! {
        #[test]
        fn round_trip(entries in prop::collection::vec(("[a-z-]{0,12}", prop::collection::vec(any::<u8>(), 0..40)), 0..10)) {
            let mut metadata = Metadata::new();
            for (k, v) in &entries {
                metadata.insert(k.clone(), v.clone());
            }
            let mut body = metadata.encode().unwrap();
            prop_assert_eq!(Metadata::decode(&mut body).unwrap(), metadata);
            prop_assert!(body.is_empty());
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Metadata::decode(&mut Bytes::from(bytes));
        }
    }
}
