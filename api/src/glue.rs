//! The glue `#[flumen::service]` expands to: encoding, decoding and calling for generated
//! clients, and the handler adapters of generated servers. Not a stable API (re-exported
//! hidden as `flumen::__private`); the user-facing types it uses live in `service`.

use std::{fmt, future::Future, sync::Arc};

use bytes::Bytes;
use flumen_codec::{Codec, CodecError};
use flumen_stream::{CallOptions, ErrorCode, Request, Runtime, Status, StreamMode};
use futures_lite::{FutureExt, StreamExt};

use crate::{
    service::{
        attached, detach, rpc_error, Attachment, CallContext, NoError, Pump, ReplyItems, RpcError,
        Streaming, WithAttachment,
    },
    Client, Error, RouteError, Router,
};

pub use crate::observe::Target;
pub use crate::reflection::{MethodSpec, Shape};
pub use flumen_balance::Route;
pub use futures_lite::Stream;
pub use serde::{de::DeserializeOwned, Serialize};

fn bad_request(error: flumen_codec::CodecError) -> Status {
    Status::new(ErrorCode::BAD_REQUEST, error.to_string())
}

fn internal(error: flumen_codec::CodecError) -> Status {
    Status::new(ErrorCode::INTERNAL, error.to_string())
}

/// The reply to a handler's result: the value, or the method's error as `APPLICATION`.
fn reply<T: Serialize, E: Serialize + fmt::Display, C: Codec>(
    codec: &C,
    result: Result<T, E>,
) -> Result<Bytes, Status> {
    match result {
        Ok(value) => codec.encode(&value).map_err(internal),
        Err(error) => Err(application(codec, &error)),
    }
}

fn application<E: Serialize + fmt::Display, C: Codec>(codec: &C, error: &E) -> Status {
    match codec.encode(error) {
        Ok(body) => Status::application_value(error.to_string(), body),
        Err(e) => internal(e),
    }
}

/// A streaming call's arguments, decoded, and its context.
fn arguments<A: DeserializeOwned, C: Codec>(
    request: &Request,
    codec: &C,
) -> Result<(A, CallContext), Status> {
    let args = codec
        .decode_body::<A>(request.body())
        .map_err(bad_request)?;
    Ok((args, CallContext::from_request(request)))
}

fn stream_parts<C: Codec, I: DeserializeOwned>(
    request: &Request,
    codec: &C,
) -> Result<Streaming<I>, Status> {
    request
        .items()
        .map(|items| Streaming::new(items, codec.clone()))
        .ok_or_else(|| Status::new(ErrorCode::BAD_REQUEST, "expected a client stream"))
}

/// Records what the service macro knows of a method for reflection.
pub fn describe<C: Codec>(router: Router<C>, spec: &MethodSpec) -> Router<C> {
    router.describe(spec);
    router
}

/// Registers a unary method: decode the arguments, run, encode the result.
pub fn unary<S, A, T, E, C, F, Fut>(
    router: Router<C>,
    name: &str,
    service: Arc<S>,
    handler: F,
) -> Result<Router<C>, RouteError>
where
    S: Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    E: Serialize + fmt::Display + Send + 'static,
    C: Codec,
    F: Fn(Arc<S>, CallContext, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let codec = router.codec().clone();
    router.try_route_raw(name, move |request: Request| {
        let args = codec.decode_body::<A>(request.body()).map_err(bad_request);
        let context = CallContext::from_request(&request);
        let codec = codec.clone();
        let call = args.map(|args| handler(service.clone(), context, args));
        async move { reply(&codec, call?.await) }
    })
}

/// Registers a server-streaming method: the handler gets the call's [`Replies`] and forwards
/// its stream there (inside its own future, so the stream may borrow the service).
pub fn server_streaming<S, A, C, F, Fut>(
    router: Router<C>,
    name: &str,
    service: Arc<S>,
    handler: F,
) -> Result<Router<C>, RouteError>
where
    S: Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    C: Codec,
    F: Fn(Arc<S>, CallContext, A, Replies<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, Status>> + Send + 'static,
{
    streaming_route(router, name, move |request, replies| {
        let (args, context) = arguments(request, &replies.codec)?;
        Ok(handler(service.clone(), context, args, replies))
    })
}

/// Registers a bidirectional method: as [`server_streaming`], with the client's items
/// handed to the handler as a [`Streaming`].
pub fn bidirectional<S, A, I, C, F, Fut>(
    router: Router<C>,
    name: &str,
    service: Arc<S>,
    handler: F,
) -> Result<Router<C>, RouteError>
where
    S: Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    C: Codec,
    F: Fn(Arc<S>, CallContext, A, Streaming<I>, Replies<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, Status>> + Send + 'static,
{
    streaming_route(router, name, move |request, replies| {
        let (args, context) = arguments(request, &replies.codec)?;
        let items = stream_parts(request, &replies.codec)?;
        Ok(handler(service.clone(), context, args, items, replies))
    })
}

fn streaming_route<C, F, Fut>(
    router: Router<C>,
    name: &str,
    start: F,
) -> Result<Router<C>, RouteError>
where
    C: Codec,
    F: Fn(&Request, Replies<C>) -> Result<Fut, Status> + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, Status>> + Send + 'static,
{
    let codec = router.codec().clone();
    router.try_route_raw(name, move |request: Request| {
        let started = request
            .sink()
            .ok_or_else(|| Status::new(ErrorCode::BAD_REQUEST, "expected a stream"))
            .and_then(|sink| {
                let codec = codec.clone();
                start(&request, Replies { sink, codec })
            });
        async move { started?.await }
    })
}

/// Where a streaming call's items go: its reply sink, and the server's codec to encode them.
pub struct Replies<C> {
    sink: flumen_stream::ReplySink,
    codec: C,
}

impl<C> fmt::Debug for Replies<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replies").finish_non_exhaustive()
    }
}

impl<C: Codec> Replies<C> {
    /// Sends each item `stream` yields as the client grants credit; its first error ends the
    /// call with that error.
    pub async fn forward<T, E, St>(self, stream: St) -> Result<Bytes, Status>
    where
        T: Serialize,
        E: Serialize + fmt::Display,
        St: Stream<Item = Result<T, E>>,
    {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(value) => {
                    let body = self.codec.encode(&value).map_err(internal)?;
                    self.sink.send(body).await?;
                }
                Err(error) => return Err(application(&self.codec, &error)),
            }
        }
        Ok(Bytes::new())
    }
}

/// Items of a stream declared without an error type, as `Ok`s.
pub fn ok_items<T, St: Stream<Item = T>>(stream: St) -> impl Stream<Item = Result<T, NoError>> {
    stream.map(Ok)
}

/// Registers a client-streaming method: the handler gets the client's items as a
/// [`Streaming`] and returns one result.
pub fn client_streaming<S, A, I, T, E, C, F, Fut>(
    router: Router<C>,
    name: &str,
    service: Arc<S>,
    handler: F,
) -> Result<Router<C>, RouteError>
where
    S: Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    E: Serialize + fmt::Display + Send + 'static,
    C: Codec,
    F: Fn(Arc<S>, CallContext, A, Streaming<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let codec = router.codec().clone();
    router.try_route_raw(name, move |request: Request| {
        let codec = codec.clone();
        let started = (|| {
            let args = codec
                .decode_body::<A>(request.body())
                .map_err(bad_request)?;
            let items = stream_parts(&request, &codec)?;
            let context = CallContext::from_request(&request);
            Ok(handler(service.clone(), context, args, items))
        })();
        async move { reply(&codec, started?.await) }
    })
}

/// A unary call.
pub async fn call<A, T, E, C>(
    client: &Client<C>,
    options: &CallOptions,
    method: Target,
    route: Route,
    args: &A,
) -> Result<T, RpcError<E>>
where
    A: Serialize + ?Sized,
    T: DeserializeOwned,
    E: DeserializeOwned,
    C: Codec,
{
    let body = client.codec().encode(args).map_err(Error::Encode)?;
    match client
        .call_parts(method, (body, Bytes::new()), options, route)
        .await
    {
        Ok(reply) => client
            .codec()
            .decode_body(&reply)
            .map_err(|e| Error::Decode(e).into()),
        Err(e) => Err(rpc_error(client.codec(), e)),
    }
}

/// A unary call from a plain thread.
pub fn call_blocking<A, T, E, C>(
    client: &Client<C>,
    options: &CallOptions,
    method: Target,
    route: Route,
    args: &A,
) -> Result<T, RpcError<E>>
where
    A: Serialize + ?Sized,
    T: DeserializeOwned,
    E: DeserializeOwned,
    C: Codec,
{
    let body = client.codec().encode(args).map_err(Error::Encode)?;
    match client.call_blocking_parts(method, (body, Bytes::new()), options, route) {
        Ok(reply) => client
            .codec()
            .decode_body(&reply)
            .map_err(|e| Error::Decode(e).into()),
        Err(e) => Err(rpc_error(client.codec(), e)),
    }
}

/// Opens a server-streaming call.
pub async fn server_stream<A, T, E, C>(
    client: &Client<C>,
    options: &CallOptions,
    method: Target,
    route: Route,
    args: &A,
) -> Result<ReplyItems<T, E, C>, RpcError<E>>
where
    A: Serialize + ?Sized,
    C: Codec,
{
    let body = client.codec().encode(args).map_err(Error::Encode)?;
    let (_, replies) = client
        .open_stream(method, body, StreamMode::ServerStreaming, options, route)
        .await
        .map_err(|e| RpcError::Rpc(Error::Call(e)))?;
    Ok(ReplyItems::new(replies, client.codec().clone(), None))
}

/// Sends every item of `items`, then ends the client's stream.
fn pump<I, S, C>(mut sender: flumen_stream::RequestSender, items: S, codec: C) -> Pump
where
    I: Serialize + Send,
    S: Stream<Item = I> + Send + 'static,
    C: Codec,
{
    Box::pin(async move {
        let mut items = std::pin::pin!(items);
        loop {
            // Stop waiting for the caller's next item once the call is over.
            let next = async { Some(items.next().await) };
            let over = async {
                sender.closed().await;
                None
            };
            let Some(Some(item)) = next.or(over).await else {
                break;
            };
            let body = codec.encode(&item).map_err(Error::Encode)?;
            if sender.send(body).await.is_err() {
                // The call is over (the server answered early, or it failed): the reply
                // says why.
                return Ok(());
            }
        }
        if sender.is_open() {
            sender.finish().await;
        }
        Ok(())
    })
}

/// A client-streaming call: sends `items`, returns the server's one reply (which may come
/// before every item was sent).
pub async fn client_stream<A, I, S, T, E, C>(
    client: &Client<C>,
    options: &CallOptions,
    method: Target,
    route: Route,
    args: &A,
    items: S,
) -> Result<T, RpcError<E>>
where
    A: Serialize + ?Sized,
    I: Serialize + Send,
    S: Stream<Item = I> + Send + 'static,
    T: DeserializeOwned,
    E: DeserializeOwned,
    C: Codec,
{
    let codec = client.codec();
    let body = codec.encode(args).map_err(Error::Encode)?;
    let (sender, replies) = client
        .open_stream(method, body, StreamMode::ClientStreaming, options, route)
        .await
        .map_err(|e| RpcError::Rpc(Error::Call(e)))?;
    let sender = sender.ok_or(RpcError::Rpc(Error::Call(
        flumen_stream::CallError::NotSent(flumen_stream::ConnectionError::Closed),
    )))?;
    let pump = pump(sender, items, codec.clone());
    let sending = async move {
        match pump.await {
            Ok(()) => std::future::pending().await,
            Err(e) => Err(RpcError::Rpc(e)),
        }
    };
    let reply = async move {
        match replies.response().await {
            Ok(body) => codec
                .decode_body(&body)
                .map_err(|e| RpcError::Rpc(Error::Decode(e))),
            Err(e) => Err(rpc_error(codec, e)),
        }
    };
    reply.or(sending).await
}

/// Opens a bidirectional call: `items` are sent as the returned stream is polled.
pub async fn bidi_stream<A, I, S, T, E, C>(
    client: &Client<C>,
    options: &CallOptions,
    method: Target,
    route: Route,
    args: &A,
    items: S,
) -> Result<ReplyItems<T, E, C>, RpcError<E>>
where
    A: Serialize + ?Sized,
    I: Serialize + Send,
    S: Stream<Item = I> + Send + 'static,
    C: Codec,
{
    let codec = client.codec();
    let body = codec.encode(args).map_err(Error::Encode)?;
    let (sender, replies) = client
        .open_stream(method, body, StreamMode::Bidirectional, options, route)
        .await
        .map_err(|e| RpcError::Rpc(Error::Call(e)))?;
    let mut pump = sender.map(|sender| pump(sender, items, codec.clone()));
    if let (Some(rt), Some(sending)) = (client.runtime(), pump.take()) {
        // An item that does not encode drops the sender unfinished: the server sees the
        // stream abandoned and ends the call with an error.
        rt.spawn(async move {
            let _ = sending.await;
        });
    }
    Ok(ReplyItems::new(replies, codec.clone(), pump))
}

/// A reply value as the server sends it: plain, or with an attachment.
pub trait ReplyBody: Send + 'static {
    /// The reply's body.
    fn into_reply<C: Codec>(self, codec: &C) -> Result<flumen_stream::Reply, CodecError>;
}

/// A plain reply value.
#[derive(Debug)]
pub struct Plain<T>(pub T);

impl<T: Serialize + Send + 'static> ReplyBody for Plain<T> {
    fn into_reply<C: Codec>(self, codec: &C) -> Result<flumen_stream::Reply, CodecError> {
        codec.encode(&self.0).map(Into::into)
    }
}

impl<T: Serialize + Send + 'static> ReplyBody for WithAttachment<T> {
    fn into_reply<C: Codec>(self, codec: &C) -> Result<flumen_stream::Reply, CodecError> {
        let (head, tail) = attached(codec.encode(&self.value)?, self.attachment);
        Ok(flumen_stream::Reply::parts(head, tail))
    }
}

/// Registers a unary method with an attachment on its request (`request_attached`), its
/// reply (`R` is [`WithAttachment`]), or both.
pub fn unary_attached<S, A, R, E, C, F, Fut>(
    router: Router<C>,
    name: &str,
    service: Arc<S>,
    request_attached: bool,
    handler: F,
) -> Result<Router<C>, RouteError>
where
    S: Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    R: ReplyBody,
    E: Serialize + fmt::Display + Send + 'static,
    C: Codec,
    F: Fn(Arc<S>, CallContext, A, Attachment) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
{
    let codec = router.codec().clone();
    router.try_route_reply(name, move |request: Request| {
        let context = CallContext::from_request(&request);
        let body = request.into_body();
        let parts = match request_attached {
            true => detach(body).map_err(bad_request),
            false => Ok((body, Attachment::default())),
        };
        let call = parts.and_then(|(message, attachment)| {
            let args = codec.decode_body::<A>(&message).map_err(bad_request)?;
            Ok(handler(service.clone(), context, args, attachment))
        });
        let codec = codec.clone();
        async move {
            match call?.await {
                Ok(value) => value.into_reply(&codec).map_err(internal),
                Err(error) => Err(application(&codec, &error)),
            }
        }
    })
}

/// A unary call with an attachment on the request, the reply, or both: returns the raw
/// reply, for [`decode_reply`] or [`detach_reply`].
pub async fn call_attached<A, E, C>(
    client: &Client<C>,
    options: &CallOptions,
    method: Target,
    route: Route,
    args: &A,
    attachment: Option<Attachment>,
) -> Result<Bytes, RpcError<E>>
where
    A: Serialize + ?Sized,
    E: DeserializeOwned,
    C: Codec,
{
    let codec = client.codec();
    let message = codec.encode(args).map_err(Error::Encode)?;
    let (head, tail) = match attachment {
        Some(attachment) => attached(message, attachment),
        None => (message, Bytes::new()),
    };
    client
        .call_parts(method, (head, tail), options, route)
        .await
        .map_err(|e| rpc_error(codec, e))
}

/// Decodes a plain reply.
pub fn decode_reply<T: DeserializeOwned, E, C: Codec>(
    codec: &C,
    body: Bytes,
) -> Result<T, RpcError<E>> {
    codec
        .decode_body(&body)
        .map_err(|e| Error::Decode(e).into())
}

/// Decodes a reply laid out with an attachment.
pub fn detach_reply<T: DeserializeOwned, E, C: Codec>(
    codec: &C,
    body: Bytes,
) -> Result<WithAttachment<T>, RpcError<E>> {
    let (message, attachment) = detach(body).map_err(Error::Decode)?;
    Ok(WithAttachment {
        value: codec.decode_body(&message).map_err(Error::Decode)?,
        attachment,
    })
}
