//! Error codes on the wire and the errors the core reports.

use std::{fmt, io, sync::Arc, time::Duration};

use bytes::Bytes;

use crate::{frame::FrameError, hello::HelloError};

/// A 32-bit error code carried by `Error` and `GoAway` frames.
///
/// The set is open: codes this build does not know are kept and printed as numbers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(u32);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: Self = Self($value);)*

            /// The code's name in `PROTOCOL.md`, if this build knows it.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    /// No error: a graceful `GoAway`.
    NO_ERROR = 0;
    /// The peer broke the protocol (bad kind, flags, or an unexpected frame).
    PROTOCOL_ERROR = 1;
    /// A frame body was longer than the receiver's limit.
    FRAME_TOO_LARGE = 2;
    /// The connection did not start with the Flumen magic.
    BAD_MAGIC = 3;
    /// The peer speaks a protocol version this side does not.
    UNSUPPORTED_VERSION = 4;
    /// No handler is registered for the request's method id.
    UNKNOWN_METHOD = 5;
    /// The server is at its in-flight limit for this connection; the call did not run.
    OVERLOADED = 6;
    /// The server is shutting down; the call did not run.
    SHUTTING_DOWN = 7;
    /// The call's deadline passed on the server.
    DEADLINE_EXCEEDED = 8;
    /// The call was cancelled.
    CANCELLED = 9;
    /// The handler panicked; only this call failed.
    HANDLER_PANIC = 10;
    /// The request payload could not be decoded.
    BAD_REQUEST = 11;
    /// The connection was idle for longer than the server's idle timeout.
    IDLE_TIMEOUT = 12;
    /// A frame (or the handshake) took longer than the read timeout to arrive.
    READ_TIMEOUT = 13;
    /// The peer did not read what was written to it within the write timeout.
    WRITE_TIMEOUT = 14;
    /// The server is at its connection limit.
    TOO_MANY_CONNECTIONS = 15;
    /// The reply was larger than the caller accepts.
    RESPONSE_TOO_LARGE = 16;
    /// The handler failed with an application error.
    APPLICATION = 17;
    /// An internal server error.
    INTERNAL = 18;
    /// A stream item arrived without credit (a peer ignoring flow control).
    FLOW_CONTROL = 19;
    /// The peer answered no keep-alive ping within the keep-alive timeout.
    KEEPALIVE_TIMEOUT = 20;
    /// This server does not take the call; the message names the address that does (a
    /// follower naming its leader). The call did not run.
    REDIRECT = 21;
}

impl ErrorCode {
    /// The code for a raw value.
    pub const fn from_u32(value: u32) -> Self {
        Self(value)
    }

    /// The raw value.
    pub const fn as_u32(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "ERROR_{}", self.0),
        }
    }
}

/// Why a connection ended. Cheap to clone: every pending call gets a copy.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The socket failed.
    #[error("connection i/o error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Eof,
    /// The peer sent bytes that break the protocol; we closed the connection.
    #[error("peer violated the protocol: {0}")]
    Protocol(#[from] FrameError),
    /// The peer sent stream items past the credit it was given; we closed the connection.
    #[error("peer broke stream flow control: {0}")]
    FlowControl(#[from] crate::flow::FlowError),
    /// The peer closed the connection with an error.
    #[error("peer closed the connection: {code}: {reason}")]
    GoAway {
        /// The peer's error code.
        code: ErrorCode,
        /// The peer's explanation.
        reason: Arc<str>,
    },
    /// The peer answered no keep-alive ping within the timeout, nor sent anything else: it
    /// is gone or unreachable (see `ClientConfig::keepalive`).
    #[error("peer unresponsive: nothing received within {0:?} of a keep-alive ping")]
    KeepaliveTimeout(Duration),
    /// This side closed the connection (the client was dropped or closed).
    #[error("connection closed locally")]
    Closed,
}

impl ConnectionError {
    /// Whether the peer broke the protocol (this side then closes the connection with a
    /// `GoAway` naming the violation).
    pub fn is_violation(&self) -> bool {
        matches!(self, Self::Protocol(_) | Self::FlowControl(_))
    }

    /// The `GoAway` code that tells the peer about this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Protocol(e) => e.code(),
            Self::FlowControl(_) => ErrorCode::FLOW_CONTROL,
            Self::GoAway { code, .. } => *code,
            _ => ErrorCode::NO_ERROR,
        }
    }
}

impl From<io::Error> for ConnectionError {
    fn from(err: io::Error) -> Self {
        Self::Io(Arc::new(err))
    }
}

/// An error returned by a call on a [`Client`](crate::Client).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No reply arrived before the deadline.
    #[error("call timed out after {0:?}")]
    Timeout(Duration),
    /// The connection failed while the call was in flight: it may or may not have run.
    #[error(transparent)]
    Connection(ConnectionError),
    /// The call was never sent: the connection was already closed or draining.
    #[error("call not sent: {0}")]
    NotSent(ConnectionError),
    /// The request body is larger than the server accepts; it was never sent.
    #[error("request of {len} bytes exceeds the server's limit of {max} bytes")]
    RequestTooLarge {
        /// The request body length.
        len: usize,
        /// The server's limit.
        max: u32,
    },
    /// The handler failed with the method's own error: its value, encoded by the server's
    /// codec (an `Error` frame with `APPLICATION`).
    #[error("application error: {}", String::from_utf8_lossy(.0))]
    Application(Bytes),
    /// The server refused the call before running it (`OVERLOADED`): at its in-flight limit
    /// for the connection, or at its adaptive concurrency limit. Safe to retry, after the
    /// hint if the server gave one, preferably elsewhere.
    #[error("server overloaded: {message}")]
    Overloaded {
        /// How long the server suggests waiting before a retry.
        retry_after: Option<Duration>,
        /// The server's message.
        message: Arc<str>,
    },
    /// The server answered with an error.
    #[error("server error {code}: {message}")]
    Remote {
        /// The server's error code.
        code: ErrorCode,
        /// The server's message.
        message: Arc<str>,
    },
}

impl CallError {
    /// The call timed out: here, or on the server (`DEADLINE_EXCEEDED`), whichever noticed
    /// first.
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Remote { code, .. } => *code == ErrorCode::DEADLINE_EXCEEDED,
            _ => false,
        }
    }

    /// The connection failed or was closed (before or during the call).
    pub fn is_connection(&self) -> bool {
        matches!(self, Self::Connection(_) | Self::NotSent(_))
    }

    /// The call provably did not run on the server, so it is safe to retry.
    pub fn is_not_sent(&self) -> bool {
        match self {
            Self::NotSent(_) | Self::RequestTooLarge { .. } | Self::Overloaded { .. } => true,
            Self::Remote { code, .. } => {
                *code == ErrorCode::OVERLOADED
                    || *code == ErrorCode::SHUTTING_DOWN
                    || *code == ErrorCode::REDIRECT
            }
            _ => false,
        }
    }

    /// The address a server redirected the call to (`REDIRECT`): the call did not run there,
    /// and should be sent to this address instead.
    pub fn redirect(&self) -> Option<&str> {
        match self {
            Self::Remote { code, message } if *code == ErrorCode::REDIRECT => Some(message),
            _ => None,
        }
    }

    /// How long an overloaded server asked the caller to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Overloaded { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The server answered with an error code; returns it.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote { code, .. } => Some(*code),
            Self::Overloaded { .. } => Some(ErrorCode::OVERLOADED),
            Self::Application(_) => Some(ErrorCode::APPLICATION),
            _ => None,
        }
    }
}

/// An error while opening a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The transport could not connect.
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    /// The connection or the handshake did not finish within the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The peer is not a compatible Flumen server.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HelloError),
    /// The peer accepted the connection, then refused it (for example at its connection limit).
    #[error("server refused the connection: {code}: {reason}")]
    Refused {
        /// The server's error code.
        code: ErrorCode,
        /// The server's explanation.
        reason: Arc<str>,
    },
}
