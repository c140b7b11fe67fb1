//! A [`Dispatch`] that routes method ids to typed handlers.

use std::{
    any::Any,
    collections::HashMap,
    fmt,
    future::Future,
    hash::{BuildHasherDefault, Hasher},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use flumen_codec::{Codec, MsgPack};
use flumen_stream::{Dispatch, ErrorCode, Reply, Request, Status};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    reflection::{Catalog, MethodSpec, Shape},
    MethodId,
};

#[cfg(feature = "tower")]
type BoxFuture = Pin<Box<dyn Future<Output = Result<Reply, Status>> + Send>>;
pub(crate) type Handler = Arc<dyn Endpoint>;

/// A route's handler, its type erased.
pub(crate) trait Endpoint: Send + Sync {
    /// Starts a call: its future.
    fn start(&self, request: Request) -> RouterFuture;

    /// Starts a call in `slot`, the finished future of an earlier call, reusing what it
    /// allocated where it can.
    fn start_in(&self, request: Request, slot: &mut RouterFuture) {
        *slot = self.start(request);
    }
}

impl<F: Fn(Request) -> RouterFuture + Send + Sync> Endpoint for F {
    fn start(&self, request: Request) -> RouterFuture {
        self(request)
    }
}

/// An endpoint whose calls' futures are all of one type, `Fut`: the box of a finished call
/// (kept by the server for the next call on its connection) takes the next call's future in
/// place, so that a routed call allocates nothing once the connection is warm.
struct Reusable<Fut> {
    make: Maker<Fut>,
}

/// What makes a call's future from its request.
type Maker<Fut> = Box<dyn Fn(Request) -> Fut + Send + Sync>;

/// A call's future in a box that outlives it: `None` once the call finished.
trait Call: Send {
    fn poll_call(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Reply, Status>>;

    /// Starts the next call in this box, taking `request`, if `make` makes futures of its
    /// type (`make` is a [`Maker`]); leaves `request` alone if not.
    fn restart(self: Pin<&mut Self>, make: &dyn Any, request: &mut Option<Request>);
}

impl<Fut> Endpoint for Reusable<Fut>
where
    Fut: Future<Output = Result<Reply, Status>> + Send + 'static,
{
    fn start(&self, request: Request) -> RouterFuture {
        RouterFuture::new(Inner::Call(Box::pin(Some((self.make)(request)))))
    }

    fn start_in(&self, request: Request, slot: &mut RouterFuture) {
        let mut request = Some(request);
        if let Inner::Call(call) = &mut slot.inner {
            call.as_mut().restart(&self.make, &mut request);
        }
        if let Some(request) = request {
            *slot = self.start(request);
        }
    }
}

impl<Fut> Call for Option<Fut>
where
    Fut: Future<Output = Result<Reply, Status>> + Send + 'static,
{
    fn poll_call(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Reply, Status>> {
        let Some(future) = self.as_mut().as_pin_mut() else {
            return Poll::Ready(Err(Status::new(
                ErrorCode::INTERNAL,
                "polled after completion",
            )));
        };
        let result = std::task::ready!(future.poll(cx));
        // What the call held goes now, not when the box is next used.
        self.set(None);
        Poll::Ready(result)
    }

    fn restart(mut self: Pin<&mut Self>, make: &dyn Any, request: &mut Option<Request>) {
        if let Some(make) = make.downcast_ref::<Maker<Fut>>() {
            if let Some(request) = request.take() {
                self.set(Some(make(request)));
            }
        }
    }
}

/// Routes by method id, hashed with [`MethodIdHasher`].
type Routes = HashMap<u32, Route, BuildHasherDefault<MethodIdHasher>>;

/// One method's handler, under its name.
struct Route {
    name: String,
    handler: Handler,
    /// Its calls, errors and latencies for the admin page.
    #[cfg(feature = "admin")]
    stats: Arc<crate::admin::MethodStats>,
}

/// Hashes a method id with one multiplication (Fibonacci hashing) instead of SipHash on every
/// call. Ids are hashes of names already; only the server's own methods are inserted (a peer's
/// ids are looked up, never stored), so no peer can choose keys that collide.
#[derive(Default)]
struct MethodIdHasher(u64);

impl Hasher for MethodIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u32(self.0 as u32 ^ u32::from(byte));
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Routes requests by method id to handlers registered with [`route`](Self::route) (typed,
/// decoded and encoded with codec `C`) or [`route_raw`](Self::route_raw) (raw bodies).
///
/// # Examples
///
/// ```
/// use flumen::{Router, Status};
///
/// let router = Router::new()
///     .route("add", |(a, b): (u64, u64)| async move { Ok::<_, Status>(a + b) })
///     .route("shout", |text: String| async move { Ok::<_, Status>(text.to_uppercase()) });
/// assert_eq!(router.len(), 2);
/// ```
pub struct Router<C = MsgPack> {
    codec: C,
    routes: Routes,
    /// Told when the server starts a graceful shutdown (the health service's statuses).
    on_drain: Vec<Arc<dyn Fn() + Send + Sync>>,
    /// What reflection tells of the routes.
    catalog: Catalog,
}

impl Router<MsgPack> {
    /// An empty router using MessagePack.
    pub fn new() -> Self {
        Self::with_codec(MsgPack::default())
    }
}

impl Default for Router<MsgPack> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Codec> Router<C> {
    /// An empty router using `codec`.
    pub fn with_codec(codec: C) -> Self {
        Self {
            catalog: Catalog::new(codec.name()),
            codec,
            routes: Routes::default(),
            on_drain: Vec::new(),
        }
    }

    /// Registers `handler` for `method`: the request body is decoded as `Req`, the handler's
    /// `Ok` value encoded as the reply. An undecodable request is answered `BAD_REQUEST`
    /// without calling the handler.
    ///
    /// # Panics
    ///
    /// If `method` (or another name with the same id) is already registered: a collision is a
    /// programming error that must not mis-route calls. Use [`try_route`](Self::try_route) to
    /// handle it instead.
    pub fn route<Req, Resp, F, Fut>(self, method: &str, handler: F) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        match self.try_route(method, handler) {
            Ok(router) => router,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`route`](Self::route) that reports a method id collision as an error.
    ///
    /// # Errors
    ///
    /// [`RouteError`] if the method id is taken.
    pub fn try_route<Req, Resp, F, Fut>(self, method: &str, handler: F) -> Result<Self, RouteError>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let codec = self.codec.clone();
        let handler = Arc::new(handler);
        let router = self.insert_reusable(method, move |request: Request| {
            let (codec, handler) = (codec.clone(), handler.clone());
            async move {
                let decoded: Req = codec
                    .decode_body(request.body())
                    .map_err(|e| Status::new(ErrorCode::BAD_REQUEST, e.to_string()))?;
                let reply = handler(decoded).await?;
                codec
                    .encode(&reply)
                    .map(Reply::from)
                    .map_err(|e| Status::new(ErrorCode::INTERNAL, e.to_string()))
            }
        })?;
        let (request, response) = (type_name::<Req>(), type_name::<Resp>());
        router.catalog.add(method, Some(&request), Some(&response));
        Ok(router)
    }

    /// Registers a raw handler for `method`: it gets the whole [`Request`] (body untouched) and
    /// returns the reply body.
    ///
    /// # Panics
    ///
    /// If the method id is taken, as [`route`](Self::route).
    pub fn route_raw<F, Fut>(self, method: &str, handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Status>> + Send + 'static,
    {
        match self.try_route_raw(method, handler) {
            Ok(router) => router,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`route_raw`](Self::route_raw) that reports a method id collision as an error.
    ///
    /// # Errors
    ///
    /// [`RouteError`] if the method id is taken.
    pub fn try_route_raw<F, Fut>(self, method: &str, handler: F) -> Result<Self, RouteError>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Status>> + Send + 'static,
    {
        self.try_route_reply(method, move |request| {
            let reply = handler(request);
            async move { reply.await.map(Reply::from) }
        })
    }

    /// [`try_route_raw`](Self::try_route_raw) for a handler that answers with a [`Reply`] in
    /// two parts (a message and an attachment written without joining them).
    ///
    /// # Errors
    ///
    /// [`RouteError`] if the method id is taken.
    pub fn try_route_reply<F, Fut>(self, method: &str, handler: F) -> Result<Self, RouteError>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, Status>> + Send + 'static,
    {
        self.insert_reusable(method, handler)
    }

    /// Adds every method of `service` (a server generated by `#[flumen::service]`).
    ///
    /// # Errors
    ///
    /// [`RouteError`] if one of its method ids is already taken: two services can share a
    /// router, but never a method id.
    pub fn service<S: crate::Service<C>>(self, service: S) -> Result<Self, RouteError> {
        service.register(self)
    }

    /// Mounts the health service (`FlumenHealth`, see [`crate::health`]) serving `health`'s
    /// statuses; when the server starts a graceful shutdown, every status turns not serving.
    ///
    /// # Errors
    ///
    /// [`RouteError`] if a route already takes one of its method ids.
    pub fn with_health(self, health: &crate::health::Health) -> Result<Self, RouteError> {
        let mut router = self.service(crate::health::FlumenHealthServer::new(health.clone()))?;
        let health = health.clone();
        router
            .on_drain
            .push(Arc::new(move || health.set_all_not_serving()));
        Ok(router)
    }

    /// Mounts the reflection service (`FlumenReflection`, see [`crate::reflection`]): it
    /// describes every method this router routes, those added later included.
    ///
    /// # Errors
    ///
    /// [`RouteError`] if a route already takes its method id.
    pub fn with_reflection(self) -> Result<Self, RouteError> {
        let catalog = self.catalog.clone();
        let router = self.try_route_raw(crate::reflection::DESCRIBE, move |_: Request| {
            std::future::ready(catalog.reply())
        })?;
        router.describe(&MethodSpec {
            name: crate::reflection::DESCRIBE,
            service: "FlumenReflection",
            shape: Shape::Unary,
            idempotent: true,
            args: &[],
            request_item: None,
            response: "ServerDescription",
            error: None,
            request_attachment: false,
            reply_attachment: false,
            raw: true,
            doc: "What this server routes. The reply is MessagePack whatever the server's codec.",
        });
        Ok(router)
    }

    /// Replaces the reflection's description of a method with what the service macro knows.
    pub(crate) fn describe(&self, spec: &MethodSpec) {
        self.catalog.refine(spec);
    }

    /// The codec typed routes use.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// Number of registered methods.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no method is registered.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Replaces every registered handler with what `wrap` makes of it.
    #[cfg(feature = "tower")]
    pub(crate) fn map_handlers(&mut self, mut wrap: impl FnMut(Handler) -> Handler) {
        for route in self.routes.values_mut() {
            route.handler = wrap(route.handler.clone());
        }
    }

    /// Registers `make` for `method`, its futures reusing the boxes of finished calls.
    fn insert_reusable<M, Fut>(self, method: &str, make: M) -> Result<Self, RouteError>
    where
        M: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, Status>> + Send + 'static,
    {
        let make: Maker<Fut> = Box::new(make);
        self.insert(method, Arc::new(Reusable { make }))
    }

    fn insert(mut self, method: &str, handler: Handler) -> Result<Self, RouteError> {
        let id = MethodId::from_name(method);
        if let Some(existing) = self.routes.get(&id.as_u32()) {
            return Err(RouteError {
                method: method.to_owned(),
                existing: existing.name.clone(),
                id,
            });
        }
        let route = Route {
            name: method.to_owned(),
            handler,
            #[cfg(feature = "admin")]
            stats: crate::admin::MethodStats::register(method),
        };
        self.routes.insert(id.as_u32(), route);
        self.catalog.add(method, None, None);
        Ok(self)
    }
}

/// `T`'s name without module paths (`Vec<String>`, not `alloc::vec::Vec<alloc::string::String>`).
fn type_name<T: ?Sized>() -> String {
    crate::reflection::short_type(std::any::type_name::<T>())
}

impl<C: Codec> Dispatch for Router<C> {
    type Future = RouterFuture;

    fn drain(&self) {
        for on_drain in &self.on_drain {
            on_drain();
        }
    }

    fn dispatch(&self, request: Request) -> RouterFuture {
        let mut future = RouterFuture::new(Inner::Ready(None));
        self.dispatch_in(request, Pin::new(&mut future));
        future
    }

    fn dispatch_in(&self, request: Request, slot: Pin<&mut RouterFuture>) {
        let slot = slot.get_mut();
        let Some(route) = self.routes.get(&request.method()) else {
            *slot = RouterFuture::ready(Err(Status::new(
                ErrorCode::UNKNOWN_METHOD,
                format!("no method with id {:#010x}", request.method()),
            )));
            return;
        };
        crate::observe::served(&route.name, &request);
        #[cfg(feature = "metrics")]
        let served = crate::metrics::server(MethodId::from_u32(request.method()), &route.name)
            .map(crate::metrics::Served::start);
        #[cfg(feature = "admin")]
        let timed = route.stats.start();
        route.handler.start_in(request, slot);
        #[cfg(feature = "metrics")]
        {
            slot.served = served;
        }
        #[cfg(feature = "admin")]
        {
            slot.timed = timed;
        }
    }
}

impl<C> fmt::Debug for Router<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self
            .routes
            .values()
            .map(|route| route.name.as_str())
            .collect();
        names.sort_unstable();
        f.debug_struct("Router").field("methods", &names).finish()
    }
}

/// Two method names map to the same id.
#[derive(Debug, Clone, thiserror::Error)]
#[error("method {method:?} has id {id:?}, already taken by {existing:?}")]
pub struct RouteError {
    method: String,
    existing: String,
    id: MethodId,
}

/// The future of a [`Router`] call: ready at once for refused requests, boxed otherwise (a
/// box the server reuses for the connection's next call).
pub struct RouterFuture {
    inner: Inner,
    /// Counts the call in the metrics when it ends.
    #[cfg(feature = "metrics")]
    served: Option<crate::metrics::Served>,
    /// Times the call for the admin page when it ends.
    #[cfg(feature = "admin")]
    timed: Option<crate::admin::Timed>,
}

enum Inner {
    Ready(Option<Result<Reply, Status>>),
    #[cfg(feature = "tower")]
    Boxed(BoxFuture),
    /// A call of a route whose futures all have one type: the box is reused.
    Call(Pin<Box<dyn Call>>),
}

impl RouterFuture {
    fn ready(result: Result<Reply, Status>) -> Self {
        Self::new(Inner::Ready(Some(result)))
    }

    #[cfg(feature = "tower")]
    pub(crate) fn boxed(future: BoxFuture) -> Self {
        Self::new(Inner::Boxed(future))
    }

    fn new(inner: Inner) -> Self {
        Self {
            inner,
            #[cfg(feature = "metrics")]
            served: None,
            #[cfg(feature = "admin")]
            timed: None,
        }
    }
}

impl Future for RouterFuture {
    type Output = Result<Reply, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match &mut self.inner {
            Inner::Ready(result) => match result.take() {
                Some(result) => result,
                None => Err(Status::new(ErrorCode::INTERNAL, "polled after completion")),
            },
            #[cfg(feature = "tower")]
            Inner::Boxed(future) => std::task::ready!(future.as_mut().poll(cx)),
            Inner::Call(call) => std::task::ready!(call.as_mut().poll_call(cx)),
        };
        #[cfg(feature = "metrics")]
        if let Some(served) = &mut self.served {
            let code = result.as_ref().err().map(Status::code);
            served.finish(crate::observe::server_outcome(code));
        }
        #[cfg(feature = "admin")]
        if let Some(timed) = &mut self.timed {
            timed.finish(result.is_err());
        }
        Poll::Ready(result)
    }
}

impl fmt::Debug for RouterFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(future: F) -> F::Output {
        futures_lite::future::block_on(future)
    }

    #[test]
    fn routes_typed_calls_and_refuses_the_rest() {
        let router =
            Router::new().route(
                "add",
                |(a, b): (u32, u32)| async move { Ok::<_, Status>(a + b) },
            );
        let codec = MsgPack::default();
        let add = MethodId::from_name("add").as_u32();

        let reply = block_on(router.dispatch(Request::new(
            add,
            codec.encode(&(2u32, 3u32)).unwrap(),
            None,
        )));
        assert_eq!(
            codec.decode::<u32>(&reply.unwrap().into_parts().0).unwrap(),
            5
        );

        let bad = block_on(router.dispatch(Request::new(add, Bytes::from_static(b"\xc1"), None)));
        assert_eq!(bad.unwrap_err().code(), ErrorCode::BAD_REQUEST);

        let unknown = block_on(router.dispatch(Request::new(add + 1, Bytes::new(), None)));
        assert_eq!(unknown.unwrap_err().code(), ErrorCode::UNKNOWN_METHOD);
    }

    #[test]
    fn reflection_describes_methods_added_after_it() {
        let router = Router::new()
            .with_reflection()
            .unwrap()
            .route("late", |x: u8| async move { Ok::<_, Status>(x) });
        let reflect = MethodId::from_name(crate::reflection::DESCRIBE).as_u32();
        let reply = block_on(router.dispatch(Request::new(reflect, Bytes::new(), None))).unwrap();
        let description: crate::reflection::ServerDescription =
            MsgPack::default().decode(&reply.into_parts().0).unwrap();
        let late = description.method("late").expect("described");
        assert_eq!(
            (late.request.as_str(), late.response.as_str()),
            ("u8", "u8")
        );
    }

    #[test]
    fn type_names_lose_their_paths() {
        assert_eq!(type_name::<Vec<String>>(), "Vec<String>");
        assert_eq!(
            type_name::<(u8, Option<std::collections::HashMap<String, bool>>)>(),
            "(u8, Option<HashMap<String, bool>>)"
        );
        assert_eq!(type_name::<&[u8]>(), "&[u8]");
    }

    #[test]
    fn duplicate_method_is_an_error() {
        let router = Router::new().route_raw("echo", |r: Request| async move { Ok(r.into_body()) });
        let err = router
            .try_route("echo", |x: u8| async move { Ok::<_, Status>(x) })
            .unwrap_err();
        assert!(err.to_string().contains("already taken"), "{err}");
    }
}
