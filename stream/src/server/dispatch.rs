//! What a handler sees and returns: the [`Dispatch`] trait, the [`Request`] it gets, and the
//! [`Reply`] or [`Status`] it answers with.

use std::{borrow::Cow, fmt, future::Future, pin::Pin, time::Duration};

use bytes::Bytes;

use super::stream::{CallStream, ReplySink, RequestStream};
use crate::{error::ErrorCode, metadata::Metadata};

/// Routes requests to handlers. Implemented by generated service servers, or by hand for
/// proxies, routers and gateways that work on raw method ids and payload bytes.
///
/// # Examples
///
/// ```
/// use std::future::{ready, Ready};
/// use flumen_stream::{Bytes, Dispatch, ErrorCode, Reply, Request, Status};
///
/// /// Echoes method 1, refuses everything else.
/// struct Echo;
///
/// impl Dispatch for Echo {
///     type Future = Ready<Result<Reply, Status>>;
///
///     fn dispatch(&self, request: Request) -> Self::Future {
///         ready(match request.method() {
///             1 => Ok(request.into_body().into()),
///             _ => Err(Status::new(ErrorCode::UNKNOWN_METHOD, "no such method")),
///         })
///     }
/// }
/// ```
pub trait Dispatch: Send + Sync + 'static {
    /// The handler's future; resolves to the reply body (a [`Reply`]; `Bytes` convert with
    /// `into()`) or an error status.
    type Future: Future<Output = Result<Reply, Status>> + Send + 'static;

    /// Starts handling `request`. Many calls of one connection run at once; a panic while
    /// polling the future fails that call with `HANDLER_PANIC` and nothing else.
    fn dispatch(&self, request: Request) -> Self::Future;

    /// Told once a graceful shutdown begins ([`ServerHandle::shutdown`]): the server stops
    /// accepting and refuses new calls from here on. A router uses it to report itself not
    /// serving to health watchers before its connections close. The default does nothing.
    /// Called on the task that shuts down; it may be called again by a second shutdown.
    ///
    /// [`ServerHandle::shutdown`]: crate::ServerHandle::shutdown
    fn drain(&self) {}

    /// Starts handling `request` in `slot`, which holds the finished future of an earlier
    /// call on the same connection: an implementation may reuse what that future allocated
    /// (the `flumen` router reuses its box when both calls are of one route). The server
    /// calls it for calls that it keeps a spare future for; the default puts
    /// [`dispatch`](Self::dispatch)'s future in the slot.
    fn dispatch_in(&self, request: Request, mut slot: Pin<&mut Self::Future>) {
        slot.set(self.dispatch(request));
    }
}

/// One incoming call, as the server hands it to [`Dispatch`].
#[derive(Clone, Debug)]
pub struct Request {
    pub(super) method: u32,
    pub(super) seq: u64,
    pub(super) body: Bytes,
    pub(super) timeout: Option<Duration>,
    pub(super) stream: Option<CallStream>,
    pub(super) metadata: Metadata,
    /// The call's span, not yet entered (the handler runs inside it); `None` when not
    /// recorded.
    #[cfg(feature = "tracing")]
    pub(super) span: Option<tracing::Span>,
}

impl Request {
    /// A request (for tests of `Dispatch` implementations).
    pub fn new(method: u32, body: Bytes, timeout: Option<Duration>) -> Self {
        Self {
            method,
            seq: 0,
            body,
            timeout,
            stream: None,
            metadata: Metadata::new(),
            #[cfg(feature = "tracing")]
            span: None,
        }
    }

    /// The call's span (feature `tracing`; disabled when no subscriber wants it). It is not
    /// entered yet when [`Dispatch::dispatch`] gets the request, so a dispatcher can still
    /// record fields in it or give it a parent (a caller's trace context); the handler's
    /// future then runs inside it.
    #[cfg(feature = "tracing")]
    pub fn span(&self) -> &tracing::Span {
        static NOT_RECORDED: tracing::Span = tracing::Span::none();
        self.span.as_ref().unwrap_or(&NOT_RECORDED)
    }

    /// The same request carrying `metadata` (for tests of `Dispatch` implementations).
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The metadata the caller sent (empty if none).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The method id.
    pub fn method(&self) -> u32 {
        self.method
    }

    /// The sequence id the client chose (unique among its calls in flight).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The request body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Takes the body.
    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// The timeout the caller set, counted from when the request was sent.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The client's items, for a client-streaming or bidirectional call (`None` otherwise).
    /// Take it once: clones share the same items.
    pub fn items(&self) -> Option<RequestStream> {
        self.stream.as_ref().and_then(CallStream::items)
    }

    /// Where to send items, for a server-streaming or bidirectional call (`None` otherwise).
    pub fn sink(&self) -> Option<ReplySink> {
        self.stream.as_ref().and_then(CallStream::sink)
    }
}

/// A successful reply's body: one part, or a message and an attachment that are written to the
/// socket back to back (vectored) without being joined, so a large attachment is never copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    head: Bytes,
    tail: Bytes,
}

impl Reply {
    /// A reply of `head` followed by `tail` on the wire.
    pub fn parts(head: Bytes, tail: Bytes) -> Self {
        Self { head, tail }
    }

    /// The body's length.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The two parts.
    pub fn into_parts(self) -> (Bytes, Bytes) {
        (self.head, self.tail)
    }
}

impl From<Bytes> for Reply {
    fn from(head: Bytes) -> Self {
        Self {
            head,
            tail: Bytes::new(),
        }
    }
}

/// A failed reply: an error code and a message for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    code: ErrorCode,
    message: Cow<'static, str>,
    /// The body sent instead of the message (an encoded application error value).
    details: Option<Bytes>,
}

impl Status {
    /// A status with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// An application error (`APPLICATION`) with `message`.
    pub fn application(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::APPLICATION, message)
    }

    /// An application error (`APPLICATION`) whose wire body is `value`, the method's own
    /// error encoded by the codec; `message` is for logs on this side.
    pub fn application_value(message: impl Into<Cow<'static, str>>, value: Bytes) -> Self {
        Self {
            details: Some(value),
            ..Self::new(ErrorCode::APPLICATION, message)
        }
    }

    /// Refuses the call without running it because the server is too busy (`OVERLOADED`),
    /// suggesting the caller wait `retry_after` before trying again (preferably elsewhere).
    pub fn overloaded(
        retry_after: Option<Duration>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        let message = message.into();
        Self {
            details: Some(crate::body::overloaded(retry_after, &message)),
            ..Self::new(ErrorCode::OVERLOADED, message)
        }
    }

    /// Refuses the call without running it, naming the address that takes it instead
    /// (`REDIRECT`): a follower pointing at its leader. A balanced client in leader mode follows
    /// it and remembers the leader.
    pub fn redirect(to: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::REDIRECT, to)
    }

    /// The error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_body(self) -> Bytes {
        if let Some(details) = self.details {
            return details;
        }
        if self.code == ErrorCode::OVERLOADED {
            // The wire body of OVERLOADED starts with its retry-after hint (none here).
            return crate::body::overloaded(None, &self.message);
        }
        match self.message {
            Cow::Borrowed(s) => Bytes::from_static(s.as_bytes()),
            Cow::Owned(s) => Bytes::from(s),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}
