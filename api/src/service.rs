//! What `#[flumen::service]` builds on: the call context, the per-method error type and typed
//! streams in both directions (the glue the generated code calls is in `glue`).

use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use flumen_codec::{Codec, CodecError, MsgPack};
use flumen_stream::{ErrorCode, Metadata, Request, RequestStream, Status};
use futures_lite::Stream;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{Error, RouteError, Router};

/// What a handler knows about its call: when the caller stops waiting, and the caller's
/// metadata. Declare a first parameter of this type on a service method to receive it.
#[derive(Clone, Debug, Default)]
pub struct CallContext {
    deadline: Option<Instant>,
    metadata: Metadata,
}

impl CallContext {
    /// The context of `request`: its deadline counted from now (when the server got it).
    pub fn from_request(request: &Request) -> Self {
        Self {
            deadline: request.timeout().map(|t| Instant::now() + t),
            metadata: request.metadata().clone(),
        }
    }

    /// A context with `deadline` and `metadata` (for calling handlers directly in tests).
    pub fn new(deadline: Option<Instant>, metadata: Metadata) -> Self {
        Self { deadline, metadata }
    }

    /// When the caller stops waiting, if it set a deadline. The server also stops the handler
    /// then, answering `DEADLINE_EXCEEDED`.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (zero once it passed); `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// The metadata the caller sent.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

/// A boxed stream of items (`Box::pin(stream)`): for a streaming method whose implementation
/// picks one of several streams at run time, inside its `impl Stream<Item = ...>`.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

/// Raw bytes beside a method's typed message: they bypass the codec, go to the socket by
/// reference (vectored writes, never copied into the frame) and arrive as a slice of the read
/// buffer (no copy). Declare a parameter of this type (the last, after the message arguments)
/// to send one with the request; return [`WithAttachment`] to send one with the reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachment(pub Bytes);

impl Attachment {
    /// The bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl From<Bytes> for Attachment {
    fn from(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

impl From<Vec<u8>> for Attachment {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes.into())
    }
}

impl std::ops::Deref for Attachment {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// A reply value with an [`Attachment`] beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WithAttachment<T> {
    /// The typed value.
    pub value: T,
    /// The raw bytes.
    pub attachment: Attachment,
}

impl<T> WithAttachment<T> {
    /// `value` with `attachment`.
    pub fn new(value: T, attachment: impl Into<Attachment>) -> Self {
        Self {
            value,
            attachment: attachment.into(),
        }
    }
}

/// Joins an encoded message and an attachment as methods with attachments lay them out: a
/// `u32` (little-endian) message length, the message, then the attachment's bytes. Only the
/// small message is copied; the attachment is written from its own buffer.
pub(crate) fn attached(message: Bytes, attachment: Attachment) -> (Bytes, Bytes) {
    let mut head = bytes::BytesMut::with_capacity(4 + message.len());
    head.extend_from_slice(&(message.len() as u32).to_le_bytes());
    head.extend_from_slice(&message);
    (head.freeze(), attachment.0)
}

/// Splits a body laid out by [`attached`] into message and attachment, without copying.
pub(crate) fn detach(mut body: Bytes) -> Result<(Bytes, Attachment), CodecError> {
    let len = body
        .first_chunk::<4>()
        .map(|prefix| u32::from_le_bytes(*prefix) as usize)
        .filter(|len| 4 + len <= body.len())
        .ok_or_else(|| CodecError::Decode("attachment framing: bad message length".into()))?;
    let _ = body.split_to(4);
    let message = body.split_to(len);
    Ok((message, Attachment(body)))
}

/// The error type of a service method declared without one (it returns `T`, not
/// `Result<T, E>`): it has no values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoError {}

impl fmt::Display for NoError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl std::error::Error for NoError {}

/// How a typed service call fails: with the method's own error `E` (as the handler returned
/// it), or in the framework (connection, timeout, cancelled, overloaded, codec, unknown method,
/// protocol), as a [`flumen::Error`](Error) with its `is_*` predicates.
#[derive(Debug)]
pub enum RpcError<E> {
    /// The handler returned this error.
    Method(E),
    /// The call failed in the framework.
    Rpc(Error),
}

impl<E> RpcError<E> {
    /// The method's error, if that is why the call failed.
    pub fn method(&self) -> Option<&E> {
        match self {
            Self::Method(e) => Some(e),
            Self::Rpc(_) => None,
        }
    }

    /// Takes the method's error, if that is why the call failed.
    pub fn into_method(self) -> Option<E> {
        match self {
            Self::Method(e) => Some(e),
            Self::Rpc(_) => None,
        }
    }

    /// The framework error, if that is why the call failed.
    pub fn rpc(&self) -> Option<&Error> {
        match self {
            Self::Rpc(e) => Some(e),
            Self::Method(_) => None,
        }
    }

    /// No reply before the deadline (here or on the server).
    pub fn is_timeout(&self) -> bool {
        self.rpc().is_some_and(Error::is_timeout)
    }

    /// The connection failed or was closed.
    pub fn is_connection(&self) -> bool {
        self.rpc().is_some_and(Error::is_connection)
    }

    /// The call provably did not run on the server: safe to retry.
    pub fn is_not_sent(&self) -> bool {
        self.rpc().is_some_and(Error::is_not_sent)
    }

    /// The call was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.code() == Some(ErrorCode::CANCELLED)
    }

    /// The server was at its in-flight limit; the call did not run.
    pub fn is_overloaded(&self) -> bool {
        self.code() == Some(ErrorCode::OVERLOADED)
    }

    /// The server has no such method (or service).
    pub fn is_unknown_method(&self) -> bool {
        self.code() == Some(ErrorCode::UNKNOWN_METHOD)
    }

    /// A codec failed on either side.
    pub fn is_codec(&self) -> bool {
        self.rpc().is_some_and(Error::is_codec)
            || matches!(self.code(), Some(ErrorCode::BAD_REQUEST))
    }

    /// The error code the server answered with, for framework failures.
    pub fn code(&self) -> Option<ErrorCode> {
        self.rpc().and_then(Error::code)
    }
}

impl<E> From<Error> for RpcError<E> {
    fn from(error: Error) -> Self {
        Self::Rpc(error)
    }
}

impl<E: fmt::Display> fmt::Display for RpcError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Method(e) => write!(f, "{e}"),
            Self::Rpc(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RpcError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Method(e) => Some(e),
            Self::Rpc(e) => Some(e),
        }
    }
}

/// The client's items of a client-streaming or bidirectional call, decoded, as the handler
/// sees them. Ends when the client finishes; yields an error status if the client abandoned
/// the stream or sent an item that does not decode.
pub struct Streaming<T> {
    items: RequestStream,
    decode: Decoder<T>,
}

type Decoder<T> = std::sync::Arc<dyn Fn(&Bytes) -> Result<T, CodecError> + Send + Sync>;

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming")
            .field("items", &self.items)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Streaming<T> {
    /// Decodes `items` with `codec`.
    pub fn new<C: Codec>(items: RequestStream, codec: C) -> Self {
        Self {
            items,
            decode: std::sync::Arc::new(move |body| codec.decode_body(body)),
        }
    }
}

impl<T> Streaming<T> {
    /// Bytes received and not yet taken (bounded by the server's stream window).
    pub fn buffered(&self) -> usize {
        self.items.buffered()
    }
}

impl<T> Stream for Streaming<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        Pin::new(&mut this.items).poll_next(cx).map(|item| {
            item.map(|item| {
                item.and_then(|body| {
                    (this.decode)(&body)
                        .map_err(|e| Status::new(ErrorCode::BAD_REQUEST, e.to_string()))
                })
            })
        })
    }
}

pub(crate) type Pump = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// The server's items of a server-streaming or bidirectional call, decoded, as the caller
/// sees them: each item, then the end; or an error (the method's own, or the framework's) and
/// then the end. A bidirectional call's items are sent by a task of their own on the client's
/// runtime (or, for a client made with `Client::from_raw`, as this stream is polled).
pub struct ReplyItems<T, E, C = MsgPack> {
    replies: flumen_stream::ReplyStream,
    codec: C,
    /// The caller's items still being sent (bidirectional calls). In a `Mutex` only so that
    /// the stream is `Sync`; it is reached through `get_mut`, never locked.
    pump: Option<std::sync::Mutex<Pump>>,
    done: bool,
    types: PhantomData<fn() -> (T, E)>,
}

impl<T, E, C> fmt::Debug for ReplyItems<T, E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyItems")
            .field("replies", &self.replies)
            .field("sending", &self.pump.is_some())
            .finish_non_exhaustive()
    }
}

impl<T, E, C> ReplyItems<T, E, C> {
    /// The items of `replies`, decoded with `codec`; `pump` sends the caller's items
    /// (bidirectional calls) as the stream is polled, if no task sends them.
    pub(crate) fn new(replies: flumen_stream::ReplyStream, codec: C, pump: Option<Pump>) -> Self {
        Self {
            replies,
            codec,
            pump: pump.map(std::sync::Mutex::new),
            done: false,
            types: PhantomData,
        }
    }

    /// Bytes received and not yet taken (bounded by the client's stream window).
    pub fn buffered(&self) -> usize {
        self.replies.buffered()
    }
}

// No field is pinned structurally.
impl<T, E, C> Unpin for ReplyItems<T, E, C> {}

impl<T: DeserializeOwned, E: DeserializeOwned, C: Codec> Stream for ReplyItems<T, E, C> {
    type Item = Result<T, RpcError<E>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(pump) = this.pump.as_mut() {
            let pump = match pump.get_mut() {
                Ok(pump) => pump,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Poll::Ready(sent) = pump.as_mut().poll(cx) {
                this.pump = None;
                if let Err(e) = sent {
                    this.done = true;
                    return Poll::Ready(Some(Err(RpcError::Rpc(e))));
                }
            }
        }
        let polled = Pin::new(&mut this.replies).poll_next(cx);
        polled.map(|item| match item {
            None => {
                this.done = true;
                None
            }
            Some(Ok(body)) => Some(
                this.codec
                    .decode_body(&body)
                    .map_err(|e| RpcError::Rpc(Error::Decode(e))),
            ),
            Some(Err(e)) => {
                this.done = true;
                Some(Err(rpc_error(&this.codec, e)))
            }
        })
    }
}

/// A call error as the typed caller sees it: an `APPLICATION` error decodes as `E`.
pub(crate) fn rpc_error<E: DeserializeOwned, C: Codec>(
    codec: &C,
    error: flumen_stream::CallError,
) -> RpcError<E> {
    match error {
        flumen_stream::CallError::Application(body) => match codec.decode_body(&body) {
            Ok(e) => RpcError::Method(e),
            Err(e) => RpcError::Rpc(Error::Decode(e)),
        },
        other => RpcError::Rpc(Error::Call(other)),
    }
}

/// A set of methods that registers itself on a [`Router`]; generated by
/// `#[flumen::service]` for each service's server type. Several services share one router,
/// so one server and port.
pub trait Service<C: Codec> {
    /// Adds the service's methods to `router`.
    ///
    /// # Errors
    ///
    /// [`RouteError`] if a method id is already taken on `router` (two services whose
    /// `Service.method` names hash alike): a collision is never a silent mis-route.
    fn register(self, router: Router<C>) -> Result<Router<C>, RouteError>;
}
