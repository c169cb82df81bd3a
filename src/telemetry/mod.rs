//! What operators see: logs (text or JSON, to stderr), traces (OpenTelemetry
//! over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set) and Prometheus
//! metrics ([`metrics`]).
//!
//! stdout is kept for what commands print, such as a new root key. The log
//! level comes from `APIKEYD_LOG`, else `RUST_LOG`, else `info`.

pub mod hot_counter;
pub mod metrics;
pub mod tracing_context;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes the spans
/// still buffered, so the last calls before exit are not lost.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("apikeyd: could not flush traces: {e}");
            }
        }
    }
}

/// Installs the global subscriber: a log layer, and an OpenTelemetry layer
/// when an OTLP endpoint is configured through the standard `OTEL_*`
/// variables. A second call (tests start several servers in one process)
/// keeps the first subscriber.
pub fn init(format: LogFormat) -> Telemetry {
    let filter = std::env::var("APIKEYD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    };
    let (tracer_provider, traces) = match otlp_tracer_provider() {
        Some(Ok(provider)) => {
            let tracer = provider.tracer("apikeyd");
            let layer = tracing_opentelemetry::layer().with_tracer(tracer);
            (Some(provider), Some(layer))
        }
        Some(Err(e)) => {
            eprintln!("apikeyd: tracing disabled, the OTLP exporter could not be built: {e}");
            (None, None)
        }
        None => (None, None),
    };
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(filter)
        .with(traces)
        .try_init();
    if installed.is_ok() {
        tracing_context::set_exporting(tracer_provider.is_some());
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    Telemetry { tracer_provider }
}

/// An OTLP/gRPC span exporter, configured by the standard `OTEL_*`
/// variables (endpoint, headers, timeout), or `None` when no endpoint is set.
fn otlp_tracer_provider()
-> Option<Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError>> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()));
    if !configured {
        return None;
    }
    Some(
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map(|exporter| {
                // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win when set.
                let mut resource = opentelemetry_sdk::Resource::builder();
                if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
                    resource = resource.with_service_name("apikeyd");
                }
                let resource = resource.build();
                // The batch processor runs on our tokio runtime: the tonic
                // exporter needs its reactor, which the SDK's default
                // thread-based processor lacks.
                let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                    exporter,
                    opentelemetry_sdk::runtime::Tokio,
                )
                .build();
                SdkTracerProvider::builder()
                    .with_span_processor(processor)
                    .with_resource(resource)
                    .build()
            }),
    )
}
