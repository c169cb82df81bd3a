//! One span per RPC, joined to the caller's trace through the W3C
//! `traceparent` metadata it sent.

use opentelemetry::propagation::Extractor;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Reads propagation fields from HTTP/2 headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// Whether spans are exported; without an exporter no call makes a span,
/// so the hot path pays nothing for tracing it does not use.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_exporting(exporting: bool) {
    EXPORTING.store(exporting, std::sync::atomic::Ordering::Relaxed);
}

/// The span of one gRPC call. It records the method, never the request's
/// content, so no key or credential can become a span attribute.
pub fn rpc_span(request: &http::Request<()>) -> tracing::Span {
    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        return tracing::Span::none();
    }
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("unknown", "unknown"));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    span
}
