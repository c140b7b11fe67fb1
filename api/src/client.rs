//! The typed client.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use flumen_codec::Codec;
use flumen_codec::MsgPack;
use flumen_stream::{ClientConfig, ConnectError, Runtime, Transport};
use serde::{de::DeserializeOwned, Serialize};

use crate::{Error, MethodId};

/// A typed client: encodes requests and decodes replies with codec `C`. Cheap to clone; clones
/// share one multiplexed connection and may call from many tasks and threads at once.
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
pub struct Client<C = MsgPack> {
    raw: flumen_stream::Client,
    codec: C,
    spawner: Option<Spawner>,
}

/// Spawns tasks on the runtime a client was connected with (to send a bidirectional call's
/// items while the caller reads replies).
#[derive(Clone)]
pub(crate) struct Spawner(Arc<dyn Fn(BoxFuture) + Send + Sync>);

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Spawner {
    fn new<R: Runtime>(rt: &R) -> Self {
        let rt = rt.clone();
        Self(Arc::new(move |future| rt.spawn(future)))
    }

    pub(crate) fn spawn(&self, future: BoxFuture) {
        (self.0)(future);
    }
}

impl fmt::Debug for Spawner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Spawner")
    }
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
        Ok(Self {
            raw,
            codec,
            spawner: Some(Spawner::new(rt)),
        })
    }

    /// Wraps a raw client. Without a runtime to spawn on, a bidirectional call sends its
    /// items only while its reply stream is polled; [`with_runtime`](Self::with_runtime)
    /// lifts that.
    pub fn from_raw(raw: flumen_stream::Client, codec: C) -> Self {
        Self {
            raw,
            codec,
            spawner: None,
        }
    }

    /// The same client, spawning the sending side of bidirectional calls on `rt`.
    pub fn with_runtime<R: Runtime>(mut self, rt: &R) -> Self {
        self.spawner = Some(Spawner::new(rt));
        self
    }

    pub(crate) fn spawner(&self) -> Option<&Spawner> {
        self.spawner.as_ref()
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// The raw client underneath (calls with `Bytes` bodies, no codec).
    pub fn raw(&self) -> &flumen_stream::Client {
        &self.raw
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
        let body = self.encode(request)?;
        let reply = self.raw.call(method.into().as_u32(), body).await?;
        self.decode(&reply)
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
        let body = self.encode(request)?;
        let reply = self
            .raw
            .call_with_timeout(method.into().as_u32(), body, timeout)
            .await?;
        self.decode(&reply)
    }

    /// [`call`](Self::call) from a plain thread, without a runtime; blocks until it resolves.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub fn call_blocking<Req, Resp>(
        &self,
        method: impl Into<MethodId>,
        request: &Req,
    ) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let body = self.encode(request)?;
        let reply = self.raw.call_blocking(method.into().as_u32(), body)?;
        self.decode(&reply)
    }

    /// Whether the connection has ended or is draining.
    pub fn is_closed(&self) -> bool {
        self.raw.is_closed()
    }

    /// Closes the connection; calls in flight fail with a connection error.
    pub fn close(&self) {
        self.raw.close();
    }

    fn encode<Req: Serialize + ?Sized>(&self, request: &Req) -> Result<Bytes, Error> {
        self.codec.encode(request).map_err(Error::Encode)
    }

    fn decode<Resp: DeserializeOwned>(&self, reply: &[u8]) -> Result<Resp, Error> {
        self.codec.decode(reply).map_err(Error::Decode)
    }
}
