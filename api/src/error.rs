//! The error a typed call returns.

use flumen_codec::CodecError;
pub use flumen_stream::{CallError, ConnectError, ConnectionError, ErrorCode};

/// Why a typed call failed. Branch on the predicates, not on the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call failed in the RPC layer: timeout, connection, or an error from the server.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The request could not be encoded; it was never sent.
    #[error("request could not be encoded: {0}")]
    Encode(#[source] CodecError),
    /// The reply arrived but could not be decoded as the expected type.
    #[error("reply could not be decoded: {0}")]
    Decode(#[source] CodecError),
}

impl Error {
    /// No reply arrived before the deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Call(e) if e.is_timeout())
    }

    /// The connection failed or was closed.
    pub fn is_connection(&self) -> bool {
        matches!(self, Self::Call(e) if e.is_connection())
    }

    /// The call provably did not run on the server, so retrying it is safe.
    pub fn is_not_sent(&self) -> bool {
        match self {
            Self::Call(e) => e.is_not_sent(),
            Self::Encode(_) => true,
            Self::Decode(_) => false,
        }
    }

    /// A codec failed (encoding the request or decoding the reply).
    pub fn is_codec(&self) -> bool {
        matches!(self, Self::Encode(_) | Self::Decode(_))
    }

    /// The error code the server answered with, if it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Call(e) => e.remote_code(),
            _ => None,
        }
    }
}
