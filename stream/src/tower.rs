//! `tower` integration (feature `tower`): a [`Client`] is a [`Service`] of [`RawCall`]s, so
//! tower's middleware (timeouts, concurrency limits, retries, load shedding, buffering) wraps
//! it like any other service.
//!
//! ```
//! use flumen_stream::{tower::RawCall, Bytes, CallOptions};
//! use std::time::Duration;
//!
//! let call = RawCall::new(7, Bytes::from_static(b"ping"))
//!     .options(CallOptions::new().timeout(Some(Duration::from_millis(50))));
//! assert_eq!(call.method(), 7);
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use tower_service::Service;

use crate::{error::CallError, CallOptions, Client};

/// One unary call for a [`Client`] used as a [`Service`]: method, body and options.
#[derive(Clone, Debug)]
pub struct RawCall {
    method: u32,
    body: Bytes,
    options: CallOptions,
}

impl RawCall {
    /// A call of `method` with `body` and default options (the client's default timeout).
    pub fn new(method: u32, body: Bytes) -> Self {
        Self {
            method,
            body,
            options: CallOptions::new(),
        }
    }

    /// The same call with `options` (timeout, metadata).
    pub fn options(mut self, options: CallOptions) -> Self {
        self.options = options;
        self
    }

    /// The method called.
    pub fn method(&self) -> u32 {
        self.method
    }
}

/// The future of a call made through [`Service::call`].
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Bytes, CallError>> + Send>>;

impl Service<RawCall> for Client {
    type Response = Bytes;
    type Error = CallError;
    type Future = CallFuture;

    /// Always ready: the connection's window of calls in flight is waited for inside the call
    /// (so readiness reserves nothing that a dropped caller could leak), and a call on a closed
    /// connection fails at once with [`CallError::NotSent`].
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: RawCall) -> CallFuture {
        let client = self.clone();
        Box::pin(async move {
            client
                .call_with_options(call.method, call.body, &call.options)
                .await
        })
    }
}
