//! `POST /v1/leaked-keys`: the endpoint GitHub's secret-scanning partner
//! programme posts its reports to. The signature is checked over the raw
//! body before anything is parsed; an unsigned or badly signed report is
//! 401 and changes nothing. A good one is judged by [`LeakReports`] and
//! answered with one label per token, in order:
//! `[{"token_raw", "token_type", "label": "true_positive" | "false_positive"}]`.
//! Without `--leak-report-keys` the endpoint is off (404).

use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tonic::Code;

use super::ConnectionAddrs;
use super::error::ConnectError;
use crate::leak_report::github::{self, SignatureRefusal, SigningKeySource};
use crate::leak_report::{LeakReports, ReportOrigin, Reporter};

/// Where GitHub is told to post.
pub const PATH: &str = "/v1/leaked-keys";
/// The largest report accepted: thousands of matches. GitHub sends many at
/// once and expects an answer within 30 seconds.
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;
/// The audit events' method.
const METHOD: &str = "POST /v1/leaked-keys";

/// What the endpoint needs: the use case, and GitHub's signing keys when
/// configured (without them the endpoint is off).
#[derive(Clone)]
pub struct LeakEndpoint {
    pub reports: Arc<LeakReports>,
    pub signing_keys: Option<Arc<SigningKeySource>>,
}

pub fn router(endpoint: LeakEndpoint) -> axum::Router {
    axum::Router::new()
        .route(PATH, axum::routing::post(receive))
        .with_state(endpoint)
}

async fn receive(State(endpoint): State<LeakEndpoint>, request: Request) -> Response {
    match handle(endpoint, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle(endpoint: LeakEndpoint, request: Request) -> Result<Response, ConnectError> {
    let Some(signing_keys) = endpoint.signing_keys else {
        return Err(ConnectError::new(
            Code::NotFound,
            "leak reports are not taken here: the server has no --leak-report-keys",
        ));
    };
    let (parts, body) = request.into_parts();
    let peer_address = parts
        .extensions
        .get::<ConnectInfo<ConnectionAddrs>>()
        .map(|ConnectInfo(addrs)| addrs.remote.to_string())
        .unwrap_or_default();
    let (identifier, signature) = signature_headers(&parts.headers).map_err(refused)?;
    let body = read_body(body).await?;
    signing_keys
        .current()
        .await
        .verify(identifier, signature, &body)
        .map_err(refused)?;
    let tokens = github::parse_report(&body).map_err(|e| {
        refusal_counted("malformed");
        ConnectError::new(
            Code::InvalidArgument,
            format!(
                "the report is not a JSON list of {{\"token\", \"type\", \"url\", \"source\"}}: {e}"
            ),
        )
    })?;
    let origin = ReportOrigin {
        reporter: Reporter::GitHub {
            key_identifier: identifier,
        },
        method: METHOD,
        peer_address: &peer_address,
    };
    let verdicts = endpoint
        .reports
        .report(&origin, &tokens)
        .await
        .map_err(|e| ConnectError::from(tonic::Status::from(e)))?;
    let mut response = (StatusCode::OK, github::answer(&tokens, &verdicts)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The key identifier and signature headers, both present and ASCII.
fn signature_headers(headers: &HeaderMap) -> Result<(&str, &str), SignatureRefusal> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty())
    };
    match (
        text(github::KEY_IDENTIFIER_HEADER),
        text(github::SIGNATURE_HEADER),
    ) {
        (Some(identifier), Some(signature)) => Ok((identifier, signature)),
        _ => Err(SignatureRefusal::Unsigned),
    }
}

fn refused(refusal: SignatureRefusal) -> ConnectError {
    refusal_counted(refusal.as_str());
    tracing::warn!(
        reason = refusal.as_str(),
        "refused a leaked-key report: {refusal}"
    );
    ConnectError::new(Code::Unauthenticated, refusal.to_string())
}

fn refusal_counted(reason: &'static str) {
    ::metrics::counter!("apikeyd_leak_reports_refused_total", "reason" => reason).increment(1);
}

async fn read_body(body: axum::body::Body) -> Result<Bytes, ConnectError> {
    match Limited::new(body, MAX_REPORT_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            refusal_counted("too_large");
            Err(ConnectError::new(
                Code::ResourceExhausted,
                format!("the report is larger than the {MAX_REPORT_BYTES} bytes accepted; send it in parts"),
            )
            .with_http_status(StatusCode::PAYLOAD_TOO_LARGE))
        }
        Err(e) => Err(ConnectError::new(
            Code::InvalidArgument,
            format!("could not read the body: {e}"),
        )),
    }
}
