//! What typed calls tell the outside: a `tracing` span per call (feature `tracing`), the
//! caller's OpenTelemetry trace carried across the wire in W3C `traceparent` metadata (feature
//! `opentelemetry`), and per-method metrics through the `metrics` facade (feature `metrics`).
//! Without those features every item here is empty and free.
//!
//! The client opens a `flumen.client` span per typed call (generated clients name it after
//! the method: `otel.name` is `Service/method`); the core records the call's sequence id and
//! peer in it. The server's span (`flumen.server`) is opened by the core; the router records
//! the method's name in it and, with `opentelemetry`, makes it a child of the caller's span.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

#[cfg(feature = "metrics")]
use flumen_stream::ErrorCode;
use flumen_stream::{CallError, CallOptions, Request};

use crate::MethodId;

/// A method as a call names it: its id, and its name where the caller knows it (generated
/// clients do; calls by [`MethodId`] alone show the id).
#[derive(Clone, Copy, Debug)]
pub struct Target {
    id: MethodId,
    name: Option<&'static str>,
}

impl Target {
    /// The method `id`, named `name` (`Service.method`, its wire name).
    pub const fn named(id: MethodId, name: &'static str) -> Self {
        Self {
            id,
            name: Some(name),
        }
    }

    /// The method's id.
    pub fn id(self) -> MethodId {
        self.id
    }

    /// The method's wire name, if the caller gave it.
    pub fn name(self) -> Option<&'static str> {
        self.name
    }
}

impl From<MethodId> for Target {
    fn from(id: MethodId) -> Self {
        Self { id, name: None }
    }
}

/// How a call ended, as spans and metrics label it: `ok`, the server's error code (such as
/// `OVERLOADED`), `DEADLINE_EXCEEDED` when the deadline passed (here or on the server, as the
/// server labels it), `CANCELLED` when the caller dropped it, or what went wrong on this side
/// (`connection`, `not_sent`, `too_large`, `blocking_in_async`).
#[cfg(any(feature = "tracing", feature = "metrics"))]
pub(crate) fn outcome<T>(result: &Result<T, CallError>) -> std::borrow::Cow<'static, str> {
    let error = match result {
        Ok(_) => return "ok".into(),
        Err(error) => error,
    };
    if let Some(code) = error.remote_code() {
        return match code.name() {
            Some(name) => name.into(),
            None => code.to_string().into(),
        };
    }
    match error {
        CallError::Timeout(_) => "DEADLINE_EXCEEDED",
        CallError::NotSent(_) => "not_sent",
        CallError::RequestTooLarge { .. } => "too_large",
        CallError::BlockingInAsync => "blocking_in_async",
        _ if error.is_connection() => "connection",
        _ => "error",
    }
    .into()
}

pin_project_lite::pin_project! {
    /// A call's future that an observer watches: polled inside the call's span, its outcome
    /// recorded when it resolves. Written by hand rather than as an `async fn`, which would
    /// hold the call's future twice (as its argument and as what it awaits).
    pub(crate) struct Observed<F> {
        #[pin]
        call: F,
        // `None` when nothing observes the call, or once its outcome is recorded.
        observer: Option<ClientCall>,
    }
}

impl<F, T> Future for Observed<F>
where
    F: Future<Output = Result<T, CallError>>,
{
    type Output = Result<T, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        #[cfg(feature = "tracing")]
        let entered = this
            .observer
            .as_ref()
            .and_then(|observer| observer.span.as_ref())
            .map(tracing::Span::enter);
        let result = std::task::ready!(this.call.poll(cx));
        #[cfg(feature = "tracing")]
        drop(entered);
        if let Some(observer) = this.observer.take() {
            observer.finish(&result);
        }
        Poll::Ready(result)
    }
}

/// One typed call on the client that something observes, from its start to its outcome.
pub(crate) struct ClientCall {
    /// The call's span, if a subscriber records it.
    #[cfg(feature = "tracing")]
    span: Option<tracing::Span>,
    #[cfg(feature = "metrics")]
    metrics: Option<&'static crate::metrics::MethodMetrics>,
    #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
    started: Instant,
    /// Its outcome was recorded.
    #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
    finished: bool,
}

impl ClientCall {
    /// Starts observing a call of `target`; `None` when nothing would observe it (no span
    /// recorded, no metrics recorder), which is all a call then pays.
    #[cfg_attr(
        not(any(feature = "tracing", feature = "metrics")),
        allow(unused_variables)
    )]
    #[inline]
    pub(crate) fn start(target: Target) -> Option<Self> {
        #[cfg(feature = "tracing")]
        let span = client_span(target);
        #[cfg(feature = "metrics")]
        let metrics = crate::metrics::client(target);
        #[cfg(feature = "metrics")]
        let measured = metrics.is_some();
        #[cfg(not(feature = "metrics"))]
        let measured = false;
        #[cfg(feature = "tracing")]
        let measured = measured || span.is_some();
        measured.then(|| Self {
            #[cfg(feature = "tracing")]
            span,
            #[cfg(feature = "metrics")]
            metrics,
            started: Instant::now(),
            finished: false,
        })
    }

    /// [`start`](Self::start), and the options to send (with the trace context, if any):
    /// `None` to send `options` unchanged.
    #[inline]
    pub(crate) fn start_with(
        target: Target,
        options: &CallOptions,
    ) -> (Option<Self>, Option<CallOptions>) {
        let observed = Self::start(target);
        let traced = observed.as_ref().and_then(|o| o.options(options));
        (observed, traced)
    }

    /// Runs `call`, observed if `observed` is `Some`.
    pub(crate) fn run_if<F, T>(observed: Option<Self>, call: F) -> Observed<F>
    where
        F: Future<Output = Result<T, CallError>>,
    {
        Observed {
            call,
            observer: observed,
        }
    }

    /// `options` with this call's trace context added (with `opentelemetry`, when the span is
    /// recorded); `None` when they go unchanged.
    #[cfg_attr(not(feature = "opentelemetry"), allow(unused_variables))]
    #[inline]
    pub(crate) fn options(&self, options: &CallOptions) -> Option<CallOptions> {
        #[cfg(feature = "opentelemetry")]
        if let Some(span) = &self.span {
            return crate::otel::inject(span, options);
        }
        None
    }

    /// Runs the call inside its span and records how it ended.
    pub(crate) fn run<F, T>(self, call: F) -> Observed<F>
    where
        F: Future<Output = Result<T, CallError>>,
    {
        Self::run_if(Some(self), call)
    }

    /// Runs a blocking call inside its span and records how it ended.
    pub(crate) fn run_blocking<T>(
        self,
        call: impl FnOnce() -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        #[cfg(feature = "tracing")]
        let result = match &self.span {
            None => call(),
            Some(span) => span.in_scope(call),
        };
        #[cfg(not(feature = "tracing"))]
        let result = call();
        self.finish(&result);
        result
    }

    #[cfg_attr(
        not(any(feature = "tracing", feature = "metrics")),
        allow(unused_variables)
    )]
    #[inline]
    fn finish<T>(mut self, result: &Result<T, CallError>) {
        self.finished = true;
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        self.record(&outcome(result));
    }

    /// Records how the call ended, `outcome`, in its span and metrics.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    #[inline]
    fn record(&self, outcome: &str) {
        let elapsed = self.started.elapsed();
        #[cfg(feature = "tracing")]
        if let Some(span) = &self.span {
            record(span, elapsed, outcome);
        }
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.finish(elapsed, outcome);
        }
    }
}

impl Drop for ClientCall {
    /// A call dropped before it resolved was cancelled, as the server counts it too.
    fn drop(&mut self) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        if !self.finished {
            self.record(CANCELLED);
        }
    }
}

/// The span of a client call of `target`, if a subscriber records it.
#[cfg(feature = "tracing")]
fn client_span(target: Target) -> Option<tracing::Span> {
    use tracing::field::Empty;
    // Nothing to build before a subscriber exists (see `flumen_stream`'s spans).
    if !tracing::dispatcher::has_been_set() {
        return None;
    }
    let span = tracing::info_span!(
        target: flumen_stream::SPAN_TARGET,
        "flumen.client",
        otel.name = Empty,
        otel.kind = "client",
        otel.status_code = Empty,
        rpc.system = "flumen",
        rpc.service = Empty,
        rpc.method = Empty,
        rpc.method_id = target.id.as_u32(),
        rpc.seq = Empty,
        net.peer = Empty,
        outcome = Empty,
        duration_us = Empty,
    );
    if span.is_disabled() {
        return None;
    }
    if let Some(name) = target.name {
        name_span(&span, name);
    }
    Some(span)
}

/// Records a method's wire name (`Service.method`) in a call's span.
#[cfg(feature = "tracing")]
fn name_span(span: &tracing::Span, name: &str) {
    let (service, method) = name.rsplit_once('.').unwrap_or(("", name));
    if !service.is_empty() {
        span.record("rpc.service", service);
        span.record("otel.name", format!("{service}/{method}").as_str());
    } else {
        span.record("otel.name", method);
    }
    span.record("rpc.method", method);
}

/// Records a call's outcome and duration in its span.
#[cfg(feature = "tracing")]
fn record(span: &tracing::Span, elapsed: std::time::Duration, outcome: &str) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    span.record("duration_us", micros);
    span.record("outcome", outcome);
    if outcome != "ok" {
        span.record("otel.status_code", "ERROR");
    }
}

/// What the router adds to the server's span of `request` (opened by the core, not yet
/// entered): the method's name and, with `opentelemetry`, the caller's trace as its parent.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
#[inline]
pub(crate) fn served(name: &str, request: &Request) {
    #[cfg(feature = "tracing")]
    {
        let span = request.span();
        if !span.is_disabled() {
            name_span(span, name);
            #[cfg(feature = "opentelemetry")]
            crate::otel::adopt(span, request.metadata());
        }
    }
}

/// The outcome of a call its caller dropped, on both sides.
#[cfg(any(feature = "tracing", feature = "metrics"))]
pub(crate) const CANCELLED: &str = "CANCELLED";

/// Outcome label of a server call that ended with `status` (`None`: a reply).
#[cfg(feature = "metrics")]
pub(crate) fn server_outcome(status: Option<ErrorCode>) -> std::borrow::Cow<'static, str> {
    match status {
        None => "ok".into(),
        Some(code) => match code.name() {
            Some(name) => name.into(),
            None => code.to_string().into(),
        },
    }
}

#[cfg(all(test, any(feature = "tracing", feature = "metrics")))]
mod tests {
    use std::{sync::Arc, time::Duration};

    use flumen_stream::{CallError, ConnectionError, ErrorCode};

    use super::outcome;

    /// Outcomes are named as the server names them where both sides can see the same end.
    #[test]
    fn a_local_timeout_is_named_as_the_servers_deadline() {
        let local = outcome::<()>(&Err(CallError::Timeout(Duration::from_millis(5))));
        let remote = outcome::<()>(&Err(CallError::Remote {
            code: ErrorCode::DEADLINE_EXCEEDED,
            message: Arc::from("late"),
        }));
        assert_eq!(local, "DEADLINE_EXCEEDED");
        assert_eq!(local, remote);
        assert_eq!(outcome::<()>(&Ok(())), "ok");
        let closed = CallError::Connection(ConnectionError::Closed);
        assert_eq!(outcome::<()>(&Err(closed)), "connection");
        assert_eq!(
            outcome::<()>(&Err(CallError::BlockingInAsync)),
            "blocking_in_async"
        );
    }
}
