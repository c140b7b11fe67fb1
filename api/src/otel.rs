//! The caller's OpenTelemetry trace across the wire (feature `opentelemetry`): the client puts
//! its span's context in the call's metadata as a W3C `traceparent`; the server makes its span
//! a child of it. Spans become OpenTelemetry spans through `tracing-opentelemetry`'s layer;
//! without that layer there is no context to carry and nothing is added.

use flumen_stream::{CallOptions, Metadata};
use opentelemetry::{
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
    Context,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The metadata key of the trace context (W3C Trace Context's header name).
pub(crate) const TRACEPARENT: &str = "traceparent";

/// `options` with `span`'s trace context as a `traceparent` entry; `None` if the span has no
/// OpenTelemetry context (no layer installed) or the metadata is full.
pub(crate) fn inject(span: &tracing::Span, options: &CallOptions) -> Option<CallOptions> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    let value = traceparent(&span_context);
    options.clone().with_entry(TRACEPARENT, value).ok()
}

/// Makes `span` a child of the caller's span named in `metadata`, if there is a valid one.
pub(crate) fn adopt(span: &tracing::Span, metadata: &Metadata) {
    let Some(parent) = metadata.get(TRACEPARENT).and_then(|v| parse(v)) else {
        return;
    };
    let _ = span.set_parent(Context::new().with_remote_span_context(parent));
}

/// `version-traceid-parentid-flags`, version 00.
fn traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// Parses a version-00 `traceparent`; `None` for anything malformed or all-zero ids, which
/// the W3C format says to ignore.
fn parse(value: &[u8]) -> Option<SpanContext> {
    let value = std::str::from_utf8(value).ok()?;
    let mut parts = value.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version != "00"
        || parts.next().is_some()
        || !lower_hex(trace, 32)
        || !lower_hex(parent, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(parent).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_refuses_malformed_values() {
        let context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let value = traceparent(&context);
        assert_eq!(
            value,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let parsed = parse(value.as_bytes()).unwrap();
        assert_eq!(parsed.trace_id(), context.trace_id());
        assert_eq!(parsed.span_id(), context.span_id());
        assert!(parsed.is_sampled() && parsed.is_remote());

        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
        }
    }
}
