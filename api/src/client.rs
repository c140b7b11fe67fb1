//! The typed client.

use std::time::Duration;

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
/// let client = Client::connect(&TokioRuntime::current(), &TokioTcp, &addr).await?;
/// let sum: u64 = client.call("add", &(2u64, 3u64)).await?;
/// assert_eq!(sum, 5);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client<C = MsgPack> {
    raw: flumen_stream::Client,
    codec: C,
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
        Ok(Self { raw, codec })
    }

    /// Wraps a raw client.
    pub fn from_raw(raw: flumen_stream::Client, codec: C) -> Self {
        Self { raw, codec }
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
