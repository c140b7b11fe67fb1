//! The typed client.

use std::time::Duration;

use bytes::Bytes;
use flumen_balance::{Address, BalanceConfig, Balancer, Route};
use flumen_codec::Codec;
use flumen_codec::MsgPack;
use flumen_stream::{
    AnyRuntime, CallError, CallOptions, ClientConfig, ConnectError, ReplyStream, RequestSender,
    Runtime, StreamMode, Transport,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    observe::{ClientCall, Target},
    Error, MethodId,
};

/// A typed client: encodes requests and decodes replies with codec `C`. Cheap to clone; clones
/// share one multiplexed connection, or one [`Balancer`] over many endpoints
/// ([`balanced`](Client::balanced)), and may call from many tasks and threads at once.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use flumen::{rt::TokioRuntime, tcp::TokioTcp, Client};
///
/// let addr = "127.0.0.1:7000".parse()?;
/// let client = Client::connect(&TokioRuntime::current(), &TokioTcp::default(), &addr).await?;
/// let sum: u64 = client.call("add", &(2u64, 3u64)).await?;
/// assert_eq!(sum, 5);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "dropping the last clone closes its connections"]
pub struct Client<C = MsgPack> {
    channel: Channel,
    codec: C,
    /// Where the sending half of a bidirectional call runs, if set.
    rt: Option<AnyRuntime>,
}

/// Where a client's calls go.
#[derive(Clone, Debug)]
enum Channel {
    /// One connection.
    One(flumen_stream::Client),
    /// Many endpoints, each with its pool.
    Many(Balancer),
}

impl Client<MsgPack> {
    /// Connects with default settings and the MessagePack codec.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] if the connection or the handshake fails.
    pub async fn connect<R: Runtime, T: Transport>(
        rt: &R,
        transport: &T,
        addr: &T::Addr,
    ) -> Result<Self, ConnectError> {
        Self::connect_with(
            rt,
            transport,
            addr,
            ClientConfig::default(),
            MsgPack::default(),
        )
        .await
    }

    /// A balanced client with default settings (see [`balanced_with`](Client::balanced_with))
    /// and the MessagePack codec.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use flumen::{balance::discovery::Static, rt::TokioRuntime, tcp::TokioTcp, Client};
    ///
    /// let replicas = ["10.0.0.1:7000".parse()?, "10.0.0.2:7000".parse()?];
    /// let rt = TokioRuntime::current();
    /// let client = Client::balanced(&rt, TokioTcp::default(), Static::new(replicas));
    /// let sum: u64 = client.call("add", &(2u64, 3u64)).await?;
    /// # Ok(()) }
    /// ```
    pub fn balanced<R, T, D>(rt: &R, transport: T, discovery: D) -> Self
    where
        R: Runtime,
        T: Transport,
        T::Addr: Address,
        D: flumen_balance::discovery::Discover<T::Addr>,
    {
        Self::balanced_with(
            rt,
            transport,
            discovery,
            BalanceConfig::default(),
            MsgPack::default(),
        )
    }
}

impl<C: Codec> Client<C> {
    /// Connects with `config` and `codec`.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] if the connection or the handshake fails.
    pub async fn connect_with<R: Runtime, T: Transport>(
        rt: &R,
        transport: &T,
        addr: &T::Addr,
        config: ClientConfig,
        codec: C,
    ) -> Result<Self, ConnectError> {
        let raw = flumen_stream::Client::connect(rt, transport, addr, config).await?;
        #[cfg(feature = "metrics")]
        crate::metrics::start_publisher();
        Ok(Self::from_raw(raw, codec).with_runtime(rt))
    }

    /// A client over the endpoints `discovery` finds, balanced and failed over with `config`
    /// (see [`Balancer`]): a drop-in for a connected client, and what every generated service
    /// client runs over just as well. Returns at once; the first calls wait for connections.
    pub fn balanced_with<R, T, D>(
        rt: &R,
        transport: T,
        discovery: D,
        config: BalanceConfig,
        codec: C,
    ) -> Self
    where
        R: Runtime,
        T: Transport,
        T::Addr: Address,
        D: flumen_balance::discovery::Discover<T::Addr>,
    {
        let balancer = Balancer::new(rt, transport, discovery, config);
        Self::from_balancer(balancer, codec).with_runtime(rt)
    }

    /// Wraps a balancer. As with [`from_raw`](Self::from_raw), add
    /// [`with_runtime`](Self::with_runtime) for bidirectional calls.
    pub fn from_balancer(balancer: Balancer, codec: C) -> Self {
        Self {
            channel: Channel::Many(balancer),
            codec,
            rt: None,
        }
    }

    /// Wraps a raw client. Without a runtime to spawn on, a bidirectional call sends its
    /// items only while its reply stream is polled; [`with_runtime`](Self::with_runtime)
    /// lifts that.
    pub fn from_raw(raw: flumen_stream::Client, codec: C) -> Self {
        Self {
            channel: Channel::One(raw),
            codec,
            rt: None,
        }
    }

    /// The same client, spawning the sending side of bidirectional calls on `rt`.
    pub fn with_runtime<R: Runtime>(mut self, rt: &R) -> Self {
        self.rt = Some(AnyRuntime::new(rt));
        self
    }

    pub(crate) fn runtime(&self) -> Option<&AnyRuntime> {
        self.rt.as_ref()
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// The raw client underneath (calls with `Bytes` bodies, no codec).
    ///
    /// # Panics
    ///
    /// On a balanced client, which has no single connection: see
    /// [`connection`](Self::connection) and [`balancer`](Self::balancer).
    pub fn raw(&self) -> &flumen_stream::Client {
        match &self.channel {
            Channel::One(raw) => raw,
            Channel::Many(_) => panic!("a balanced client has no single connection"),
        }
    }

    /// The connection underneath, unless the client is balanced.
    pub fn connection(&self) -> Option<&flumen_stream::Client> {
        match &self.channel {
            Channel::One(raw) => Some(raw),
            Channel::Many(_) => None,
        }
    }

    /// The balancer underneath, if the client is balanced.
    pub fn balancer(&self) -> Option<&Balancer> {
        match &self.channel {
            Channel::One(_) => None,
            Channel::Many(balancer) => Some(balancer),
        }
    }

    /// Calls `method` with a two-part body on the connection or through the balancer.
    pub(crate) async fn call_parts(
        &self,
        method: impl Into<Target>,
        (head, tail): (Bytes, Bytes),
        options: &CallOptions,
        route: Route,
    ) -> Result<Bytes, CallError> {
        let method = method.into();
        let (observed, traced) = ClientCall::start_with(method, options);
        let options = traced.as_ref().unwrap_or(options);
        let id = method.id().as_u32();
        match (observed, &self.channel) {
            // The common call: the connection's future awaited here, not moved into layers.
            (None, Channel::One(raw)) => raw.call_parts(id, head, tail, options).await,
            (Some(observed), Channel::One(raw)) => {
                observed.run(raw.call_parts(id, head, tail, options)).await
            }
            // Boxed: the balancer's future (retries, leases, hedging) is several kilobytes,
            // and held inline it would make every call's future that large, to be moved at
            // each layer above.
            (observed, Channel::Many(balancer)) => {
                let call = balancer.call_parts(id, head, tail, options, route);
                Box::pin(ClientCall::run_if(observed, call)).await
            }
        }
    }

    /// [`call_parts`](Self::call_parts) from a plain thread.
    pub(crate) fn call_blocking_parts(
        &self,
        method: impl Into<Target>,
        (head, tail): (Bytes, Bytes),
        options: &CallOptions,
        route: Route,
    ) -> Result<Bytes, CallError> {
        let method = method.into();
        let (observed, traced) = ClientCall::start_with(method, options);
        let options = traced.as_ref().unwrap_or(options);
        let id = method.id().as_u32();
        let call = || match &self.channel {
            Channel::One(raw) => raw.call_blocking_parts(id, head, tail, options),
            Channel::Many(balancer) => balancer.call_blocking_parts(id, head, tail, options, route),
        };
        match observed {
            None => call(),
            Some(observed) => observed.run_blocking(call),
        }
    }

    /// Opens a streaming call (on one connection, wherever the balancer puts it). Its span
    /// and metrics cover the opening of the stream.
    pub(crate) async fn open_stream(
        &self,
        method: impl Into<Target>,
        body: Bytes,
        mode: StreamMode,
        options: &CallOptions,
        route: Route,
    ) -> Result<(Option<RequestSender>, ReplyStream), CallError> {
        let method = method.into();
        let (observed, traced) = ClientCall::start_with(method, options);
        let options = traced.as_ref().unwrap_or(options);
        let id = method.id().as_u32();
        let open = async {
            match &self.channel {
                Channel::One(raw) => raw.open_stream(id, body, mode, options).await,
                Channel::Many(balancer) => {
                    balancer.open_stream(id, body, mode, options, route).await
                }
            }
        };
        ClientCall::run_if(observed, open).await
    }

    /// Calls `method` with `request` and the default timeout.
    ///
    /// # Errors
    ///
    /// [`Error`]: the call failed, or a codec did.
    pub async fn call<Req, Resp>(
        &self,
        method: impl Into<MethodId>,
        request: &Req,
    ) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_with_options(method, request, &CallOptions::new())
            .await
    }

    /// Calls `method` with `request` and `timeout` (`None`: no deadline).
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub async fn call_with_timeout<Req, Resp>(
        &self,
        method: impl Into<MethodId>,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let options = CallOptions::new().timeout(timeout);
        self.call_with_options(method, request, &options).await
    }

    /// Calls `method` with `request` and `options` (timeout, metadata such as credentials or a
    /// trace context).
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub async fn call_with_options<Req, Resp>(
        &self,
        method: impl Into<MethodId>,
        request: &Req,
        options: &CallOptions,
    ) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let method: MethodId = method.into();
        let body = (self.encode(request)?, Bytes::new());
        let reply = self
            .call_parts(method, body, options, Route::default())
            .await?;
        self.decode(&reply)
    }

    /// [`call`](Self::call) from a plain thread, without a runtime; blocks until it resolves.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call); `CallError::BlockingInAsync` at once on a thread that runs
    /// async tasks.
    pub fn call_blocking<Req, Resp>(
        &self,
        method: impl Into<MethodId>,
        request: &Req,
    ) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let method: MethodId = method.into();
        let body = (self.encode(request)?, Bytes::new());
        let options = CallOptions::new();
        let reply = self.call_blocking_parts(method, body, &options, Route::default())?;
        self.decode(&reply)
    }

    /// Whether the connection has ended or is draining (a balanced client: whether it was
    /// closed).
    pub fn is_closed(&self) -> bool {
        match &self.channel {
            Channel::One(raw) => raw.is_closed(),
            Channel::Many(balancer) => balancer.is_closed(),
        }
    }

    /// Closes the connection; calls in flight fail with a connection error. A balanced client
    /// closes its pools.
    pub fn close(&self) {
        match &self.channel {
            Channel::One(raw) => raw.close(),
            Channel::Many(balancer) => balancer.close(),
        }
    }

    pub(crate) fn encode<Req: Serialize + ?Sized>(&self, request: &Req) -> Result<Bytes, Error> {
        self.codec.encode(request).map_err(Error::Encode)
    }

    pub(crate) fn decode<Resp: DeserializeOwned>(&self, reply: &Bytes) -> Result<Resp, Error> {
        self.codec.decode_body(reply).map_err(Error::Decode)
    }
}
