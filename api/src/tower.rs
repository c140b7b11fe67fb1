//! `tower` integration (feature `tower`).
//!
//! - A [`Client`] is a [`Service`] of typed [`Call`]s (and the raw client one of
//!   [`RawCall`]s), so tower's middleware wraps it: timeouts, concurrency limits, retries,
//!   load shedding.
//! - [`Router::layer`] wraps the handlers of a router (generated services included) in a
//!   [`Layer`]: authentication, timeouts, concurrency limits, load shedding, metrics.
//!
//! # Examples
//!
//! ```
//! use flumen::{tower::Route, Request, Router, Status};
//! use tower::{layer::layer_fn, service_fn, ServiceExt};
//!
//! // A layer that refuses calls without an `authorization` entry in their metadata.
//! let auth = layer_fn(|inner: Route| {
//!     service_fn(move |request: Request| {
//!         let inner = inner.clone();
//!         async move {
//!             if request.metadata().get("authorization").is_none() {
//!                 return Err(Status::new(flumen::ErrorCode::APPLICATION, "unauthenticated"));
//!             }
//!             inner.oneshot(request).await
//!         }
//!     })
//! });
//! let router = Router::new()
//!     .route("add", |(a, b): (u64, u64)| async move { Ok::<_, Status>(a + b) })
//!     .layer(auth);
//! # let _ = router;
//! ```

use std::{
    fmt,
    future::{poll_fn, Future},
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use flumen_balance::Route as Pick;
use flumen_codec::Codec;
pub use flumen_stream::tower::{CallFuture as RawCallFuture, RawCall};
use flumen_stream::{CallOptions, ErrorCode, Reply, Request, Status};
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Serialize};
pub use tower::{Layer, Service};

use crate::{router::RouterFuture, Client, Error, MethodId, Router};

/// The error type tower's middleware passes around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One typed unary call for a [`Client`] used as a [`Service`]: the method, the request, and
/// its options; the reply is decoded as `Resp`.
pub struct Call<Req, Resp> {
    method: MethodId,
    request: Req,
    options: CallOptions,
    reply: PhantomData<fn() -> Resp>,
}

impl<Req, Resp> Call<Req, Resp> {
    /// A call of `method` with `request` and default options.
    pub fn new(method: impl Into<MethodId>, request: Req) -> Self {
        Self {
            method: method.into(),
            request,
            options: CallOptions::new(),
            reply: PhantomData,
        }
    }

    /// The same call with `options` (timeout, metadata).
    pub fn options(mut self, options: CallOptions) -> Self {
        self.options = options;
        self
    }

    /// The same call with `timeout` (`None`: no deadline).
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options = self.options.timeout(timeout);
        self
    }

    /// The method called.
    pub fn method(&self) -> MethodId {
        self.method
    }

    /// The request.
    pub fn request(&self) -> &Req {
        &self.request
    }
}

impl<Req: Clone, Resp> Clone for Call<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            method: self.method,
            request: self.request.clone(),
            options: self.options.clone(),
            reply: PhantomData,
        }
    }
}

impl<Req: fmt::Debug, Resp> fmt::Debug for Call<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("method", &self.method)
            .field("request", &self.request)
            .field("options", &self.options)
            .finish()
    }
}

/// The future of a typed call made through [`Service::call`].
pub type CallFuture<Resp> = Pin<Box<dyn Future<Output = Result<Resp, Error>> + Send>>;

impl<C, Req, Resp> Service<Call<Req, Resp>> for Client<C>
where
    C: Codec,
    Req: Serialize,
    Resp: DeserializeOwned + Send + 'static,
{
    type Response = Resp;
    type Error = Error;
    type Future = CallFuture<Resp>;

    /// Always ready: the connection's window of calls in flight (or the balancer's choice of
    /// an endpoint) is waited for inside the call, so readiness reserves nothing.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call<Req, Resp>) -> CallFuture<Resp> {
        // Encoded now, so the future does not hold the request (which need not be `Sync`).
        let body = self.encode(&call.request);
        let client = self.clone();
        Box::pin(async move {
            let body = (body?, Bytes::new());
            let reply = client
                .call_parts(call.method, body, &call.options, Pick::default())
                .await?;
            client.decode(&reply)
        })
    }
}

/// One route of a [`Router`] as a [`Service`]: what a layer given to [`Router::layer`] wraps.
/// Cheap to clone.
#[derive(Clone)]
pub struct Route {
    handler: crate::router::Handler,
}

impl Service<Request> for Route {
    type Response = Reply;
    type Error = Status;
    type Future = RouterFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> RouterFuture {
        self.handler.start(request)
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route").finish_non_exhaustive()
    }
}

impl<C: Codec> Router<C> {
    /// Wraps every route registered so far in `layer` (routes added afterwards are not
    /// wrapped, so `layer` can be called between groups of routes).
    ///
    /// Each call clones the layered service, waits until it is ready, and calls it, as tower
    /// expects of a service shared between callers: middleware that keeps its state behind
    /// an `Arc` (concurrency limits, load shedding) limits all calls of a route together;
    /// middleware with state of its own per instance (tower's rate limit) goes behind
    /// `tower::buffer` to be shared. Errors become a [`Status`]: a `Status` is kept, tower's
    /// elapsed timeout becomes `DEADLINE_EXCEEDED`, its load-shed refusal `OVERLOADED` (which a
    /// client may retry elsewhere), anything else `INTERNAL` with the error's message.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<Route>,
        L::Service: Service<Request, Response = Reply> + Clone + Send + 'static,
        <L::Service as Service<Request>>::Error: Into<BoxError>,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.map_handlers(|handler| {
            let service = Mutex::new(layer.layer(Route { handler }));
            Arc::new(move |request: Request| {
                let mut service = service.lock().clone();
                RouterFuture::boxed(Box::pin(async move {
                    poll_fn(|cx| service.poll_ready(cx)).await.map_err(status)?;
                    service.call(request).await.map_err(status)
                }))
            })
        });
        self
    }
}

/// The [`Status`] a layered route's error becomes.
fn status(error: impl Into<BoxError>) -> Status {
    let error = error.into();
    match error.downcast::<Status>() {
        Ok(status) => *status,
        Err(error) if error.is::<tower::timeout::error::Elapsed>() => Status::new(
            ErrorCode::DEADLINE_EXCEEDED,
            "the handler's timeout (a tower layer) elapsed",
        ),
        Err(error) if error.is::<tower::load_shed::error::Overloaded>() => {
            Status::overloaded(None, "the service is overloaded (a tower load-shed layer)")
        }
        Err(error) => Status::new(ErrorCode::INTERNAL, error.to_string()),
    }
}
