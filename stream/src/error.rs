//! The errors the core reports, and the error codes on the wire (defined in
//! [`code`](crate::code), which the frame and hello codecs use without depending on these).

use std::{io, sync::Arc, time::Duration};

use bytes::Bytes;

pub use crate::code::ErrorCode;
use crate::{frame::FrameError, hello::HelloError};

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
    /// A `_blocking` call was made on a thread that runs async tasks (see
    /// [`check_blocking`](crate::check_blocking)); it was never sent. On such a thread the
    /// call could wait for a reply that only this thread would read: await the async method
    /// instead, or make the blocking call from a thread meant for blocking (or, where the
    /// check cannot tell, inside [`allow_blocking`](crate::allow_blocking)).
    #[error(
        "a blocking call was made on a thread that runs async tasks, where it could wait \
         forever; await the async method instead, or call from a thread meant for blocking \
         (std::thread::spawn, tokio::task::spawn_blocking, smol::unblock)"
    )]
    BlockingInAsync,
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
