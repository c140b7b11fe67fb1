//! The 16-byte hello each side sends first: magic, version, and the sender's limits.

use crate::code::ErrorCode;

/// The four bytes that open every Flumen connection, in both directions.
pub const MAGIC: [u8; 4] = *b"FLMN";

/// The protocol version this build speaks.
pub const VERSION: u16 = 1;

/// Size of the hello on the wire.
pub const HELLO_LEN: usize = 16;

/// What a peer announces about itself before any frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version.
    pub version: u16,
    /// Optional features the sender supports (bit set; v1 defines none, unknown bits are ignored).
    pub features: u16,
    /// Largest frame body the sender accepts.
    pub max_frame_len: u32,
    /// Most calls the sender keeps in flight on this connection (a server's limit, or a
    /// client's window).
    pub max_in_flight: u32,
}

impl Hello {
    /// A v1 hello with the given limits.
    pub fn new(max_frame_len: u32, max_in_flight: u32) -> Self {
        Self::with_features(max_frame_len, max_in_flight, 0)
    }

    /// A hello that also advertises `features` (bits of optional features, such as the
    /// compression algorithms the sender decompresses).
    pub fn with_features(max_frame_len: u32, max_in_flight: u32, features: u16) -> Self {
        Self {
            version: VERSION,
            features,
            max_frame_len,
            max_in_flight,
        }
    }

    /// The 16 bytes on the wire.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.version.to_le_bytes());
        out[6..8].copy_from_slice(&self.features.to_le_bytes());
        out[8..12].copy_from_slice(&self.max_frame_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.max_in_flight.to_le_bytes());
        out
    }

    /// Parses a peer's hello.
    ///
    /// # Errors
    ///
    /// [`HelloError::BadMagic`] if the peer is not speaking Flumen,
    /// [`HelloError::UnsupportedVersion`] if it speaks another version.
    pub fn decode(bytes: &[u8; HELLO_LEN]) -> Result<Self, HelloError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(HelloError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(HelloError::UnsupportedVersion {
                ours: VERSION,
                theirs: version,
            });
        }
        Ok(Self {
            version,
            features: u16::from_le_bytes([bytes[6], bytes[7]]),
            max_frame_len: u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            max_in_flight: u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
        })
    }
}

/// A hello that this side cannot accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The first four bytes are not `FLMN`: the peer is not a Flumen endpoint.
    #[error("bad magic {0:02x?}: the peer is not a Flumen endpoint")]
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {theirs}, this build speaks {ours}")]
    UnsupportedVersion {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The peer announced a limit of zero (no frames or no calls).
    #[error("peer announced a zero limit")]
    ZeroLimit,
}

impl HelloError {
    /// The `GoAway` code that reports this error to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadMagic(_) => ErrorCode::BAD_MAGIC,
            Self::UnsupportedVersion { .. } => ErrorCode::UNSUPPORTED_VERSION,
            Self::ZeroLimit => ErrorCode::PROTOCOL_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_hello() {
        let hello = Hello::new(16 * 1024 * 1024, 1024);
        let bytes = hello.encode();
        assert_eq!(
            bytes,
            [b'F', b'L', b'M', b'N', 1, 0, 0, 0, 0, 0, 0, 1, 0, 4, 0, 0],
        );
        assert_eq!(Hello::decode(&bytes), Ok(hello));
    }

    #[test]
    fn rejects_foreign_peers() {
        let mut bytes = Hello::new(1, 1).encode();
        bytes[0] = b'G';
        assert_eq!(Hello::decode(&bytes), Err(HelloError::BadMagic(*b"GLMN")));
        assert_eq!(HelloError::BadMagic(*b"GLMN").code(), ErrorCode::BAD_MAGIC);

        let mut bytes = Hello::new(1, 1).encode();
        bytes[4] = 2;
        assert_eq!(
            Hello::decode(&bytes),
            Err(HelloError::UnsupportedVersion { ours: 1, theirs: 2 })
        );
    }
}
