//! Errors as the Connect protocol sends them: an HTTP status derived from the
//! code, and a JSON body `{"code": "not_found", "message": "…"}`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tonic::Code;

/// What a status code is called in gRPC (`NOT_FOUND`) and in Connect
/// (`not_found`), and the HTTP status Connect answers it with
/// (<https://connectrpc.com/docs/protocol#error-codes>).
pub fn names(code: Code) -> (&'static str, &'static str, StatusCode) {
    match code {
        Code::Ok => ("OK", "ok", StatusCode::OK),
        Code::Cancelled => ("CANCELLED", "canceled", status(499)),
        Code::Unknown => ("UNKNOWN", "unknown", StatusCode::INTERNAL_SERVER_ERROR),
        Code::InvalidArgument => (
            "INVALID_ARGUMENT",
            "invalid_argument",
            StatusCode::BAD_REQUEST,
        ),
        Code::DeadlineExceeded => (
            "DEADLINE_EXCEEDED",
            "deadline_exceeded",
            StatusCode::GATEWAY_TIMEOUT,
        ),
        Code::NotFound => ("NOT_FOUND", "not_found", StatusCode::NOT_FOUND),
        Code::AlreadyExists => ("ALREADY_EXISTS", "already_exists", StatusCode::CONFLICT),
        Code::PermissionDenied => (
            "PERMISSION_DENIED",
            "permission_denied",
            StatusCode::FORBIDDEN,
        ),
        Code::ResourceExhausted => (
            "RESOURCE_EXHAUSTED",
            "resource_exhausted",
            StatusCode::TOO_MANY_REQUESTS,
        ),
        Code::FailedPrecondition => (
            "FAILED_PRECONDITION",
            "failed_precondition",
            StatusCode::BAD_REQUEST,
        ),
        Code::Aborted => ("ABORTED", "aborted", StatusCode::CONFLICT),
        Code::OutOfRange => ("OUT_OF_RANGE", "out_of_range", StatusCode::BAD_REQUEST),
        Code::Unimplemented => (
            "UNIMPLEMENTED",
            "unimplemented",
            StatusCode::NOT_IMPLEMENTED,
        ),
        Code::Internal => ("INTERNAL", "internal", StatusCode::INTERNAL_SERVER_ERROR),
        Code::Unavailable => (
            "UNAVAILABLE",
            "unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        Code::DataLoss => ("DATA_LOSS", "data_loss", StatusCode::INTERNAL_SERVER_ERROR),
        Code::Unauthenticated => (
            "UNAUTHENTICATED",
            "unauthenticated",
            StatusCode::UNAUTHORIZED,
        ),
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).expect("a valid HTTP status")
}

/// A call refused, by the services (their gRPC status) or by the HTTP layer
/// before it reached them (wrong content type, unknown procedure, …).
#[derive(Debug)]
pub struct ConnectError {
    pub code: Code,
    pub message: String,
    /// Set where the HTTP layer says more than the code's status can: 404
    /// for an unknown procedure, 413 for a body over the limit, 415 for a
    /// content type that is not served.
    pub http_status: Option<StatusCode>,
}

impl ConnectError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ConnectError {
            code,
            message: message.into(),
            http_status: None,
        }
    }

    pub fn with_http_status(mut self, status: StatusCode) -> Self {
        self.http_status = Some(status);
        self
    }
}

impl From<tonic::Status> for ConnectError {
    fn from(status: tonic::Status) -> Self {
        ConnectError::new(status.code(), status.message())
    }
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let (_, name, code_status) = names(self.code);
        let mut body = serde_json::json!({ "code": name });
        if !self.message.is_empty() {
            body["message"] = self.message.into();
        }
        let mut response = (
            self.http_status.unwrap_or(code_status),
            serde_json::to_vec(&body).expect("a JSON object serialises"),
        )
            .into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_connects_status() {
        let expected = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::Internal, 500),
            (Code::DataLoss, 500),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
        ];
        for (code, http) in expected {
            assert_eq!(names(code).2.as_u16(), http, "{code:?}");
        }
        assert_eq!(names(Code::Cancelled).1, "canceled");
        assert_eq!(names(Code::FailedPrecondition).0, "FAILED_PRECONDITION");
    }
}
