//! The request context: correlation ids (taken from a client when well-formed, else
//! minted) and W3C trace context, kept as request extensions and in task-local scope.

use axum::http::{HeaderName, HeaderValue};
use rand::RngCore;

pub const CORRELATION_HEADER: &str = "x-correlation-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The names above as header names: looking one up by `&str` parses and lower-cases the
/// name on every call, a cost every request paid a few times.
pub static CORRELATION_NAME: HeaderName = HeaderName::from_static(CORRELATION_HEADER);
pub static TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT_HEADER);

tokio::task_local! {
    pub(crate) static CORRELATION_ID: CorrelationId;
}

/// The correlation id of the request being handled, when inside one.
pub fn current_correlation_id() -> Option<String> {
    CORRELATION_ID.try_with(|id| id.as_str().to_string()).ok()
}

/// Runs `f` with `correlation` as the current correlation id (for envelopes made
/// outside a request's task scope).
pub(crate) fn in_correlation_scope<R>(correlation: CorrelationId, f: impl FnOnce() -> R) -> R {
    CORRELATION_ID.sync_scope(correlation, f)
}

/// Correlation id accepted from a client: 1–128 characters of `[A-Za-z0-9._:-]`; anything
/// else is replaced by a fresh id (never reflected back).
pub fn valid_correlation_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// W3C trace context of one request: the caller's trace (or a new one) and this hop's span.
/// The ids are kept as bytes and the `traceparent` naming this hop is encoded once: every
/// request carries one, so it costs one small allocation, not a string per id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub parent_id: Option<[u8; 8]>,
    pub span_id: [u8; 8],
    pub sampled: bool,
    traceparent: HeaderValue,
}

/// Lower-case hex of an id, formatted only when a log line or span field is written.
pub struct Hex<'a>(pub &'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A random (v4) UUID from the thread's CSPRNG: `Uuid::new_v4` asks the kernel
/// (`getrandom`) every time, one system call per id on the request path.
pub fn fast_uuid() -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Random bytes from the thread's CSPRNG, never all zero (invalid in W3C trace context).
fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    while id.iter().all(|b| *b == 0) {
        rand::rng().fill_bytes(&mut id);
    }
    id
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `s` is `2 * N` lower-case hex digits, not all zero: the id they encode.
fn trace_id_from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut id = [0u8; N];
    (is_lower_hex(s, 2 * N)
        && hex::decode_to_slice(s, &mut id).is_ok()
        && id.iter().any(|b| *b != 0))
    .then_some(id)
}

impl TraceContext {
    fn new(
        trace_id: [u8; 16],
        parent_id: Option<[u8; 8]>,
        span_id: [u8; 8],
        sampled: bool,
    ) -> TraceContext {
        // "00-" 32 hex "-" 16 hex "-" 2 hex
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        let _ = hex::encode_to_slice(trace_id, &mut text[3..35]);
        text[35] = b'-';
        let _ = hex::encode_to_slice(span_id, &mut text[36..52]);
        text[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
        let traceparent = HeaderValue::from_bytes(&text).unwrap_or_else(|_| {
            HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-00")
        });
        TraceContext {
            trace_id,
            parent_id,
            span_id,
            sampled,
            traceparent,
        }
    }

    /// Continues a valid `traceparent` (version 00) or starts a new trace.
    pub fn from_header(value: Option<&str>) -> Self {
        let parsed = value.and_then(|v| {
            let mut parts = v.trim().split('-');
            let (version, trace, parent, flags) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() || version != "00" {
                return None;
            }
            let mut flag_byte = [0u8; 1];
            if !is_lower_hex(flags, 2) || hex::decode_to_slice(flags, &mut flag_byte).is_err() {
                return None;
            }
            Some((
                trace_id_from_hex::<16>(trace)?,
                trace_id_from_hex::<8>(parent)?,
                flag_byte[0] & 1 == 1,
            ))
        });
        match parsed {
            Some((trace_id, parent, sampled)) => {
                TraceContext::new(trace_id, Some(parent), random_id(), sampled)
            }
            None => TraceContext::new(random_id(), None, random_id(), true),
        }
    }

    /// The `traceparent` naming this hop as the parent (for upstream calls and the echo).
    pub fn header_value(&self) -> HeaderValue {
        self.traceparent.clone()
    }

    /// The `traceparent` as text.
    pub fn header_str(&self) -> &str {
        self.traceparent.to_str().unwrap_or_default()
    }
}

/// When spans are exported (OTLP), makes the caller's trace the parent of `span` and uses
/// the exported span's id as this hop's id, so forwarded and echoed `traceparent`s match
/// what the collector sees. Without an exporter the context is returned unchanged.
pub(crate) fn link_span(span: &tracing::Span, mut trace: TraceContext) -> TraceContext {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if let Some(parent) = trace.parent_id {
        let (trace_id, span_id) = (
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent),
        );
        let flags = if trace.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let context = span.context();
    let exported = context.span().span_context().clone();
    if exported.is_valid() {
        trace = TraceContext::new(
            exported.trace_id().to_bytes(),
            trace.parent_id,
            exported.span_id().to_bytes(),
            trace.sampled,
        );
    }
    trace
}

/// Correlation id of the current request, as a request extension: a header value, so
/// passing it on (upstream, the echo, the error envelope) copies no bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrelationId(HeaderValue);

impl CorrelationId {
    /// The client's id when it is valid ([`valid_correlation_id`]), else a fresh UUID.
    pub fn accept_or_mint(value: Option<&HeaderValue>) -> CorrelationId {
        match value {
            Some(value) if value.to_str().is_ok_and(valid_correlation_id) => {
                CorrelationId(value.clone())
            }
            _ => CorrelationId::mint(),
        }
    }

    /// A fresh random UUID.
    pub fn mint() -> CorrelationId {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = fast_uuid().hyphenated().encode_lower(&mut text);
        CorrelationId(HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-")))
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_are_bounded_and_plain() {
        assert!(valid_correlation_id("abc-123_X:y.z"));
        assert!(!valid_correlation_id(""));
        assert!(!valid_correlation_id(&"a".repeat(129)));
        assert!(!valid_correlation_id("a b"));
        assert!(!valid_correlation_id("a\r\nx-admin: 1"));
        assert!(!valid_correlation_id("<script>"));
    }

    #[test]
    fn traceparent_is_continued_or_started() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::from_header(Some(parent));
        assert_eq!(
            Hex(&ctx.trace_id).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            ctx.parent_id.map(|p| Hex(&p).to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(ctx.sampled);
        assert_ne!(Hex(&ctx.span_id).to_string(), "00f067aa0ba902b7");
        let echoed = ctx.header_str();
        assert!(
            echoed.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{echoed}"
        );
        assert!(echoed.ends_with("-01"), "{echoed}");
        assert_eq!(echoed.len(), 55);
        assert_eq!(&echoed[36..52], Hex(&ctx.span_id).to_string());
        let unsampled = TraceContext::from_header(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(!unsampled.sampled && unsampled.parent_id.is_some());
        assert!(unsampled.header_str().ends_with("-00"));
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let fresh = TraceContext::from_header(Some(bad));
            assert!(fresh.parent_id.is_none(), "{bad}");
            assert!(fresh.trace_id.iter().any(|b| *b != 0));
            assert_eq!(fresh.header_str().len(), 55);
        }
    }
}
