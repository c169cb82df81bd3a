//! `GET /healthz` and `GET /healthz/{service}`: the gRPC health service's
//! answer over plain HTTP, for probes that cannot speak gRPC over TLS
//! (Kubernetes' gRPC probes are plaintext only; its HTTPS probes verify no
//! certificate and present none, which the HTTP listener accepts even with
//! mutual TLS). 200 `SERVING`, 503 `NOT_SERVING`, 404 for an unknown name.

use axum::extract::{Path, State};
use http::StatusCode;
use tonic::Request;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::server::{HealthReporter, HealthService};

pub fn router(reporter: HealthReporter) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(overall))
        .route("/healthz/{service}", axum::routing::get(named))
        .with_state(reporter)
}

async fn overall(State(reporter): State<HealthReporter>) -> (StatusCode, &'static str) {
    check(reporter, String::new()).await
}

async fn named(
    State(reporter): State<HealthReporter>,
    Path(service): Path<String>,
) -> (StatusCode, &'static str) {
    check(reporter, service).await
}

async fn check(reporter: HealthReporter, service: String) -> (StatusCode, &'static str) {
    let health = HealthService::from_health_reporter(reporter);
    match health
        .check(Request::new(HealthCheckRequest { service }))
        .await
    {
        Ok(answer) if answer.get_ref().status() == ServingStatus::Serving => {
            (StatusCode::OK, "SERVING")
        }
        Ok(_) => (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING"),
        Err(_) => (StatusCode::NOT_FOUND, "no such service"),
    }
}
