//! Error codes on the wire: the 32-bit code of `Error`, `StreamEnd` and `GoAway` frames
//! (PROTOCOL.md §6). A leaf of the crate: frames, the hello and the errors all use it.

use std::fmt;

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
