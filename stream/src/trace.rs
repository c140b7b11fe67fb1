//! A `tracing` span per call (feature `tracing`); without the feature every item here is empty
//! and free.
//!
//! The server opens a `flumen.server` span per request: its method id, sequence id and peer at
//! once, then its outcome (`ok` or the error code's name) and its duration in microseconds when
//! the reply is queued. The handler runs inside it, so what it logs is tied to the call, and a
//! layer above (the typed router) records the method's name and the caller's trace context in
//! it. On the client, a layer above opens the call's span; the core records the sequence id
//! and the peer in it ([`record_client`]), since only the core knows them.
//!
//! Both sides' spans have the target `flumen` ([`SPAN_TARGET`]): one filter directive
//! (`flumen=info`) turns them on. `rpc.seq` is the call's sequence id as it goes on the wire:
//! a Flumen client puts a slot of its window in the low 32 bits and that slot's generation
//! (1 for its first call) above them (PROTOCOL.md §5), so the first call in slot 0 is
//! `4294967296`.
//!
//! Spans are at `INFO`. Until a `tracing` subscriber is installed, nothing is built or
//! recorded (one relaxed load per call; this also keeps `tracing`'s `log` fallback, which
//! turns every disabled span into a log record, out of the call path); after that, a span
//! the subscriber does not want costs a check of its callsite's interest.

#[cfg(feature = "tracing")]
use std::time::Instant;
use std::{fmt::Debug, sync::Arc};

use crate::{error::ErrorCode, frame::FrameHeader};

/// The target of every call span, client and server (`flumen.client`, `flumen.server`).
pub const SPAN_TARGET: &str = "flumen";

/// The peer of a connection, as spans and a server's connection list show it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Peer(Arc<str>);

impl Peer {
    /// `addr` as spans show it (once per connection).
    pub(crate) fn of(addr: &impl Debug) -> Self {
        Self(format!("{addr:?}").into())
    }

    /// The address as text.
    pub(crate) fn text(&self) -> &Arc<str> {
        &self.0
    }
}

/// The span of one call a server runs: nothing without the feature, and nothing while no
/// subscriber wants it.
#[derive(Clone)]
pub(crate) struct CallSpan {
    /// The span and when the request was read, if the span is recorded.
    #[cfg(feature = "tracing")]
    recorded: Option<(tracing::Span, Instant)>,
}

impl CallSpan {
    /// The span of the request `header` from `peer`.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    #[inline]
    pub(crate) fn server(header: &FrameHeader, peer: &Peer) -> Self {
        #[cfg(feature = "tracing")]
        {
            if !tracing::dispatcher::has_been_set() {
                return Self { recorded: None };
            }
            let span = tracing::info_span!(
                target: SPAN_TARGET,
                "flumen.server",
                otel.name = tracing::field::Empty,
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                rpc.system = "flumen",
                rpc.service = tracing::field::Empty,
                rpc.method = tracing::field::Empty,
                rpc.method_id = header.method,
                rpc.seq = header.seq,
                net.peer = &*peer.0,
                outcome = tracing::field::Empty,
                duration_us = tracing::field::Empty,
            );
            let recorded = (!span.is_disabled()).then(|| (span, Instant::now()));
            Self { recorded }
        }
        #[cfg(not(feature = "tracing"))]
        Self {}
    }

    /// The span itself, if it is recorded.
    #[cfg(feature = "tracing")]
    pub(crate) fn span(&self) -> Option<tracing::Span> {
        self.recorded.as_ref().map(|(span, _)| span.clone())
    }

    /// Runs `f` inside the span.
    #[inline]
    pub(crate) fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        #[cfg(feature = "tracing")]
        if let Some((span, _)) = &self.recorded {
            return span.in_scope(f);
        }
        f()
    }

    /// Records how the call ended: `Ok` for a reply, or the code of the error it ended with.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    #[inline]
    pub(crate) fn finish(&self, outcome: Result<(), ErrorCode>) {
        #[cfg(feature = "tracing")]
        if let Some((span, started)) = &self.recorded {
            finish(span, *started, outcome);
        }
    }

    /// `future`, polled inside the span.
    #[cfg(feature = "tracing")]
    pub(crate) fn instrument<F: std::future::Future>(
        self,
        future: F,
    ) -> tracing::instrument::Instrumented<F> {
        let span = self
            .recorded
            .map_or_else(tracing::Span::none, |(span, _)| span);
        tracing::Instrument::instrument(future, span)
    }

    /// `future`, unchanged (no spans without the feature).
    #[cfg(not(feature = "tracing"))]
    #[inline]
    pub(crate) fn instrument<F: std::future::Future>(self, future: F) -> F {
        future
    }
}

/// Records a call's outcome and duration in its span.
#[cfg(feature = "tracing")]
fn finish(span: &tracing::Span, started: Instant, outcome: Result<(), ErrorCode>) {
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    span.record("duration_us", micros);
    match outcome {
        Ok(()) => span.record("outcome", "ok"),
        Err(code) => {
            span.record("otel.status_code", "ERROR");
            span.record("outcome", tracing::field::display(code))
        }
    };
}

/// Records a client call's sequence id and peer in the current span, if it is a call's span
/// (one that declares `rpc.seq` and `net.peer`; others ignore what they do not declare).
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
#[inline]
pub(crate) fn record_client(seq: u64, peer: &Peer) {
    #[cfg(feature = "tracing")]
    if tracing::dispatcher::has_been_set() {
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("rpc.seq", seq);
            span.record("net.peer", &*peer.0);
        }
    }
}
