//! Prometheus metrics, through the `metrics` facade. Names:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `apikeyd_grpc_requests_total` | counter | `method`, `code` |
//! | `apikeyd_grpc_request_duration_seconds` | histogram | `method` |
//! | `apikeyd_validations_total` | counter | `code` |
//! | `apikeyd_key_cache_total` | counter | `result` (`hit`, `miss`) |
//! | `apikeyd_secret_memo_total` | counter | `result` (`hit`, `miss`) |
//! | `apikeyd_argon2_queue_depth` | gauge | |
//! | `apikeyd_argon2_in_flight` | gauge | |
//! | `apikeyd_argon2_duration_seconds` | histogram | `operation` (`hash`, `verify`) |
//! | `apikeyd_db_duration_seconds` | histogram | `operation` |
//! | `apikeyd_db_errors_total` | counter | `operation` |
//! | `apikeyd_rate_limit_decisions_total` | counter | `verdict`, `decided_by` (`store`, `policy`) |
//! | `apikeyd_rate_limit_decision_duration_seconds` | histogram | `stage` (`queue`, `redis`) |
//! | `apikeyd_rate_limit_unanswered_total` | counter | |
//! | `apikeyd_redis_duration_seconds` | histogram | `operation` |
//! | `apikeyd_redis_errors_total` | counter | `operation` |
//! | `apikeyd_invalidations_lost_total` | counter | |
//! | `apikeyd_invalidations_flowing` | gauge | |
//! | `apikeyd_invalidations_replayed_total` | counter | |
//! | `apikeyd_key_cache_flushes_total` | counter | `reason` (`start`, `gap`, `overflow`) |
//! | `apikeyd_key_cache_superseded_loads_total` | counter | |
//! | `apikeyd_usage_dropped_total` | counter | |

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: from a warm Validate (tens of µs) to a
/// database timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// The process's Prometheus recorder, installed on first use. It is global
/// (the `metrics` facade has one recorder per process), so servers started
/// side by side in one test process share it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
            .expect("buckets are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe();
        handle
    })
}

/// Histograms are summarised on render; upkeep keeps their memory bounded
/// between scrapes.
pub async fn run_upkeep() {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        ticks.tick().await;
        prometheus().run_upkeep();
    }
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "apikeyd_grpc_requests_total",
        "gRPC calls finished, by method and status code"
    );
    describe_histogram!(
        "apikeyd_grpc_request_duration_seconds",
        Unit::Seconds,
        "gRPC call latency, by method"
    );
    describe_counter!(
        "apikeyd_validations_total",
        "Validate outcomes, by validation code"
    );
    describe_counter!(
        "apikeyd_key_cache_total",
        "Validate lookups answered from the key cache (hit) or the database (miss)"
    );
    describe_counter!(
        "apikeyd_secret_memo_total",
        "Secret verifications answered from the memo (hit) or by argon2 (miss)"
    );
    describe_gauge!(
        "apikeyd_argon2_queue_depth",
        "argon2 runs queued or running"
    );
    describe_gauge!(
        "apikeyd_argon2_in_flight",
        "argon2 runs running now (at most argon2_max_in_flight, cancelled calls' runs included)"
    );
    describe_histogram!(
        "apikeyd_argon2_duration_seconds",
        Unit::Seconds,
        "argon2 time, queueing included"
    );
    describe_counter!(
        "apikeyd_rate_limit_decisions_total",
        "Limit and quota decisions, by verdict and by who decided (the store, or the failure policy during an outage)"
    );
    describe_histogram!(
        "apikeyd_rate_limit_decision_duration_seconds",
        Unit::Seconds,
        "Where a Redis decision's time goes: queue (waiting in this process before its EVALSHA leaves) or redis (that EVALSHA's round trip)"
    );
    describe_counter!(
        "apikeyd_rate_limit_unanswered_total",
        "Decisions whose answer came too late for the call, which failed UNAVAILABLE"
    );
    describe_histogram!(
        "apikeyd_redis_duration_seconds",
        Unit::Seconds,
        "Redis call latency, by operation"
    );
    describe_counter!(
        "apikeyd_redis_errors_total",
        "Redis calls that failed or timed out, by operation"
    );
    describe_counter!(
        "apikeyd_usage_dropped_total",
        "Validations whose usage could not be written (Redis unreachable, or the buffer full)"
    );
    describe_counter!(
        "apikeyd_invalidations_lost_total",
        "Cache invalidations dropped from a full publish queue (every replica flushes instead) or unpublished at shutdown"
    );
    describe_gauge!(
        "apikeyd_invalidations_flowing",
        "1 while this replica has applied every cache invalidation; 0 while it may miss some"
    );
    describe_counter!(
        "apikeyd_invalidations_replayed_total",
        "Cache invalidations applied while catching up after a reconnect"
    );
    describe_counter!(
        "apikeyd_key_cache_flushes_total",
        "Key cache flushes, by reason (start, gap in the invalidation stream, overflow of a publish queue)"
    );
    describe_counter!(
        "apikeyd_key_cache_superseded_loads_total",
        "Key cache loads not cached because their id was evicted while they read"
    );
    describe_histogram!(
        "apikeyd_db_duration_seconds",
        Unit::Seconds,
        "database operation latency"
    );
    describe_counter!("apikeyd_db_errors_total", "database operations that failed");
}

/// Runs a database operation in its own span (a child of the RPC's), timing
/// it and counting its failure.
pub async fn observe_db<T, E>(
    operation: &'static str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    use tracing::Instrument;
    // A child span inside a traced call only.
    let span = if tracing::Span::current().is_none() {
        tracing::Span::none()
    } else {
        tracing::info_span!(
            "db",
            otel.name = operation,
            otel.kind = "client",
            db.operation = operation
        )
    };
    let started = Instant::now();
    let result = work.instrument(span).await;
    ::metrics::histogram!("apikeyd_db_duration_seconds", "operation" => operation)
        .record(started.elapsed());
    if result.is_err() {
        ::metrics::counter!("apikeyd_db_errors_total", "operation" => operation).increment(1);
    }
    result
}

/// A tower layer counting and timing every gRPC call by method and status.
#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // An error is a trailers-only response, with grpc-status in the
            // headers; a success carries it in trailers, after this point.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32);
            ::metrics::counter!("apikeyd_grpc_requests_total", "method" => method, "code" => code_label(code))
                .increment(1);
            ::metrics::histogram!("apikeyd_grpc_request_duration_seconds", "method" => method)
                .record(started.elapsed());
            Ok(response)
        })
    }
}

/// Known methods by name; anything else as `other`, so that a client
/// probing random paths cannot create unbounded label values.
fn method_label(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "/apikeyd.v1.KeyService/CreateKey",
        "/apikeyd.v1.KeyService/GetKey",
        "/apikeyd.v1.KeyService/ListKeys",
        "/apikeyd.v1.KeyService/UpdateKey",
        "/apikeyd.v1.KeyService/RevokeKey",
        "/apikeyd.v1.KeyService/RotateKey",
        "/apikeyd.v1.ValidationService/Validate",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ];
    KNOWN
        .iter()
        .find(|known| **known == path)
        .map_or("other", |known| &known[1..])
}

/// The canonical name of a gRPC status code (`PERMISSION_DENIED`).
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(
            method_label("/apikeyd.v1.ValidationService/Validate"),
            "apikeyd.v1.ValidationService/Validate"
        );
        assert_eq!(method_label("/x/y"), "other");
    }
}
