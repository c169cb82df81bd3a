//! Unary calls of the Connect protocol (<https://connectrpc.com/docs/protocol>):
//! `POST /apikeyd.v1.<Service>/<Method>` with a JSON (or binary protobuf)
//! body. Nothing here knows an RPC: the method is looked up in the descriptor
//! set, the body transcoded to protobuf, and the call handed as a gRPC request
//! to the very services the gRPC listener serves (same authorisation, rules
//! and metrics); their answer is transcoded back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use prost_reflect::MethodDescriptor;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tracing::Instrument;

use super::error::ConnectError;
use crate::proto_json;
use crate::telemetry::tracing_context;
use crate::tls::{ClientCertificate, TlsIncoming};

/// The in-process gRPC services a Connect call is delegated to.
pub type GrpcServices = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// The largest request body accepted. The largest valid request (CreateKey
/// with 50 scopes and 4 KiB of metadata) is far smaller.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The two addresses of an HTTP connection, and its verified client
/// certificate (mutual TLS), recorded by the listener so a delegated call
/// carries its caller's address and identity as a gRPC one does.
#[derive(Clone, Debug)]
pub struct ConnectionAddrs {
    pub local: Option<SocketAddr>,
    pub remote: SocketAddr,
    pub client_certificate: Option<ClientCertificate>,
}

impl Connected<IncomingStream<'_, TcpListener>> for ConnectionAddrs {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ConnectionAddrs {
            local: stream.io().local_addr().ok(),
            remote: *stream.remote_addr(),
            client_certificate: None,
        }
    }
}

impl Connected<IncomingStream<'_, TlsIncoming>> for ConnectionAddrs {
    fn connect_info(stream: IncomingStream<'_, TlsIncoming>) -> Self {
        let (tcp, session) = stream.io().get_ref();
        ConnectionAddrs {
            local: tcp.local_addr().ok(),
            remote: *stream.remote_addr(),
            client_certificate: session
                .peer_certificates()
                .and_then(ClientCertificate::from_chain),
        }
    }
}

/// The encodings of a unary Connect body; the answer uses the request's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codec {
    Json,
    Proto,
}

impl Codec {
    fn of(headers: &HeaderMap) -> Result<Codec, ConnectError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case("application/json") {
            Ok(Codec::Json)
        } else if essence.eq_ignore_ascii_case("application/proto") {
            Ok(Codec::Proto)
        } else {
            Err(ConnectError::new(
                Code::Unimplemented,
                format!(
                    "Content-Type must be application/json (or application/proto), not {content_type:?}"
                ),
            )
            .with_http_status(StatusCode::UNSUPPORTED_MEDIA_TYPE))
        }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Codec::Json => "application/json",
            Codec::Proto => "application/proto",
        })
    }
}

/// One Connect unary call, answered in the request's encoding.
pub(super) async fn unary(services: GrpcServices, request: Request) -> Response {
    match call(services, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn call(services: GrpcServices, request: Request) -> Result<Response, ConnectError> {
    let (parts, body) = request.into_parts();
    let method = procedure(parts.uri.path())?;
    check_protocol_version(&parts.headers)?;
    let codec = Codec::of(&parts.headers)?;
    check_content_encoding(&parts.headers)?;
    let timeout = timeout(&parts.headers)?;
    let body = read_body(body).await?;
    let message = match codec {
        Codec::Json => proto_json::json_to_protobuf(method.input(), &body).map_err(|e| {
            ConnectError::new(
                Code::InvalidArgument,
                format!("the body is not a {} in JSON: {e}", method.input().name()),
            )
        })?,
        Codec::Proto => {
            prost_reflect::DynamicMessage::decode(method.input(), body.as_ref()).map_err(|e| {
                ConnectError::new(
                    Code::InvalidArgument,
                    format!(
                        "the body is not a {} in protobuf: {e}",
                        method.input().name()
                    ),
                )
            })?;
            body.to_vec()
        }
    };
    let grpc_request = grpc_request(&method, &parts, message);
    let span = rpc_span(&grpc_request);
    let delegated = async move {
        let response = services
            .oneshot(grpc_request)
            .await
            .unwrap_or_else(|never| match never {});
        grpc_reply(response).await
    }
    .instrument(span);
    let reply = match timeout {
        Some(limit) => tokio::time::timeout(limit, delegated).await.map_err(|_| {
            ConnectError::new(
                Code::DeadlineExceeded,
                format!(
                    "no answer within the {} ms of Connect-Timeout-Ms",
                    limit.as_millis()
                ),
            )
        })??,
        None => delegated.await?,
    };
    let body = match codec {
        Codec::Json => {
            let json = proto_json::protobuf_to_json(method.output(), &reply).map_err(|e| {
                tracing::error!(error = %e, method = method.full_name(), "a service's answer did not decode");
                ConnectError::new(Code::Internal, "internal error; the server log has the cause")
            })?;
            serde_json::to_vec(&json).expect("JSON serialises")
        }
        Codec::Proto => reply.to_vec(),
    };
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, codec.content_type());
    Ok(response)
}

/// The unary method named by `/<service>/<method>`, or 404 `unimplemented`.
fn procedure(path: &str) -> Result<MethodDescriptor, ConnectError> {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or_default();
    proto_json::unary_method(service, method).ok_or_else(|| {
        let served: Vec<String> = proto_json::services()
            .map(|s| s.full_name().to_owned())
            .collect();
        ConnectError::new(
            Code::Unimplemented,
            format!(
                "no unary RPC at {path}; POST /<service>/<method> with one of the services {}",
                served.join(", ")
            ),
        )
        .with_http_status(StatusCode::NOT_FOUND)
    })
}

/// Clients may omit `Connect-Protocol-Version` (curl does); a version other
/// than 1 is one this server does not speak.
fn check_protocol_version(headers: &HeaderMap) -> Result<(), ConnectError> {
    match headers.get("connect-protocol-version") {
        None => Ok(()),
        Some(version) if version == "1" => Ok(()),
        Some(version) => Err(ConnectError::new(
            Code::InvalidArgument,
            format!("Connect-Protocol-Version must be 1, not {version:?}"),
        )),
    }
}

/// Request bodies are not compressed: they are small.
fn check_content_encoding(headers: &HeaderMap) -> Result<(), ConnectError> {
    match headers.get(header::CONTENT_ENCODING) {
        None => Ok(()),
        Some(encoding) if encoding == "identity" => Ok(()),
        Some(encoding) => Err(ConnectError::new(
            Code::Unimplemented,
            format!("Content-Encoding {encoding:?} is not supported; send the body uncompressed"),
        )),
    }
}

/// `Connect-Timeout-Ms`: at most 10 digits of milliseconds.
fn timeout(headers: &HeaderMap) -> Result<Option<Duration>, ConnectError> {
    let Some(value) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|digits| (1..=10).contains(&digits.len()))
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u64>().ok())
        .map(|millis| Some(Duration::from_millis(millis)))
        .ok_or_else(|| {
            ConnectError::new(
                Code::InvalidArgument,
                format!(
                    "Connect-Timeout-Ms must be a whole number of milliseconds (at most 10 digits), not {value:?}"
                ),
            )
        })
}

async fn read_body(body: axum::body::Body) -> Result<Bytes, ConnectError> {
    match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ConnectError::new(
            Code::ResourceExhausted,
            format!("the body is larger than the {MAX_REQUEST_BYTES} bytes a request may have"),
        )
        .with_http_status(StatusCode::PAYLOAD_TOO_LARGE)),
        Err(e) => Err(ConnectError::new(
            Code::InvalidArgument,
            format!("could not read the body: {e}"),
        )),
    }
}

/// The gRPC request the services expect: the message in one uncompressed
/// frame, the caller's headers as metadata (`authorization`, `traceparent`,
/// …) minus the HTTP and protocol ones, and its connection's addresses.
fn grpc_request(
    method: &MethodDescriptor,
    parts: &http::request::Parts,
    message: Vec<u8>,
) -> http::Request<tonic::body::Body> {
    let length = u32::try_from(message.len()).expect("bodies are limited far below 4 GiB");
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(&message);
    let mut request = http::Request::new(tonic::body::Body::new(Full::new(Bytes::from(framed))));
    *request.method_mut() = http::Method::POST;
    *request.version_mut() = http::Version::HTTP_2;
    *request.uri_mut() = format!("/{}/{}", method.parent_service().full_name(), method.name())
        .parse()
        .expect("service and method names are valid paths");
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        if is_metadata(name) {
            headers.append(name, value.clone());
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    carry_peer(&parts.extensions, request.extensions_mut());
    request
}

/// Puts the connection's addresses where tonic looks for them
/// (`Request::remote_addr`), and its client certificate where
/// [`ClientCertificate::of`] does, from where the HTTP listener put them.
pub(super) fn carry_peer(from: &http::Extensions, to: &mut http::Extensions) {
    let Some(ConnectInfo(addrs)) = from.get::<ConnectInfo<ConnectionAddrs>>() else {
        return;
    };
    to.insert(TcpConnectInfo {
        local_addr: addrs.local,
        remote_addr: Some(addrs.remote),
    });
    if let Some(certificate) = &addrs.client_certificate {
        to.insert(certificate.clone());
    }
}

/// Whether a request header is the caller's metadata rather than HTTP's or
/// a protocol's (which the services must not be handed as metadata).
fn is_metadata(name: &http::HeaderName) -> bool {
    const NOT_METADATA: [http::HeaderName; 9] = [
        header::HOST,
        header::CONNECTION,
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::ACCEPT_ENCODING,
        header::TRANSFER_ENCODING,
        header::TE,
        header::UPGRADE,
    ];
    let name_str = name.as_str();
    !NOT_METADATA.contains(name)
        && name_str != "keep-alive"
        && !name_str.starts_with("connect-")
        && !name_str.starts_with("grpc-")
}

/// The span of the delegated call, as the gRPC listener would make it.
fn rpc_span(request: &http::Request<tonic::body::Body>) -> tracing::Span {
    let mut head = http::Request::new(());
    *head.uri_mut() = request.uri().clone();
    *head.headers_mut() = request.headers().clone();
    tracing_context::rpc_span(&head)
}

/// The reply message of a unary gRPC response, or its status as an error.
async fn grpc_reply(response: http::Response<tonic::body::Body>) -> Result<Bytes, ConnectError> {
    // An error without a message is a trailers-only response.
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        if status.code() != Code::Ok {
            return Err(status.into());
        }
    }
    let collected = response.into_body().collect().await.map_err(|e| {
        tracing::error!(error = %e, "a service's response body failed");
        ConnectError::new(
            Code::Internal,
            "internal error; the server log has the cause",
        )
    })?;
    let status = collected
        .trailers()
        .and_then(tonic::Status::from_header_map)
        .unwrap_or_else(|| tonic::Status::internal("the service ended without a status"));
    if status.code() != Code::Ok {
        return Err(status.into());
    }
    unframe(collected.to_bytes())
}

/// The one message of a unary response: a zero flag (uncompressed), a
/// big-endian length, the message.
fn unframe(mut frame: Bytes) -> Result<Bytes, ConnectError> {
    let malformed = || {
        tracing::error!("a service answered with a malformed gRPC frame");
        ConnectError::new(
            Code::Internal,
            "internal error; the server log has the cause",
        )
    };
    if frame.len() < 5 || frame[0] != 0 {
        return Err(malformed());
    }
    frame.advance(1);
    let length = frame.get_u32() as usize;
    if frame.len() != length {
        return Err(malformed());
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use prost::Message;

    use super::*;
    use crate::grpc::pb;

    /// What the fake services saw of the delegated request.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Option<http::Request<Bytes>>>>);

    /// Services that record the request and answer with `reply`.
    fn services(seen: Seen, reply: Result<Vec<u8>, tonic::Status>) -> GrpcServices {
        BoxCloneSyncService::new(tower::service_fn(
            move |request: http::Request<tonic::body::Body>| {
                let (seen, reply) = (seen.clone(), reply.clone());
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    *seen.0.lock().unwrap() = Some(http::Request::from_parts(parts, body));
                    Ok::<_, Infallible>(grpc_response(reply))
                }
            },
        ))
    }

    fn grpc_response(reply: Result<Vec<u8>, tonic::Status>) -> http::Response<tonic::body::Body> {
        match reply {
            Err(status) => status.into_http(),
            Ok(message) => {
                let mut framed = vec![0];
                framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
                framed.extend_from_slice(&message);
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let body = Full::new(Bytes::from(framed))
                    .with_trailers(async { Some(Ok::<_, Infallible>(trailers)) });
                http::Response::new(tonic::body::Body::new(body))
            }
        }
    }

    fn post(path: &str, content_type: &str) -> http::request::Builder {
        http::Request::post(path).header(header::CONTENT_TYPE, content_type)
    }

    async fn send(
        services: GrpcServices,
        request: http::Request<axum::body::Body>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let response = super::super::router(services)
            .oneshot(request)
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, json)
    }

    fn validate_reply() -> Vec<u8> {
        pb::ValidateResponse {
            valid: true,
            code: pb::ValidationCode::Valid as i32,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[tokio::test]
    async fn a_json_call_becomes_a_framed_grpc_call_with_the_callers_metadata() {
        let seen = Seen::default();
        let mut request = post(
            "/apikeyd.v1.ValidationService/Validate",
            "application/json; charset=utf-8",
        )
        .header("authorization", "Bearer rk_x")
        .header("connect-protocol-version", "1")
        .header("grpc-timeout", "1n")
        .header("x-request-id", "abc")
        .body(axum::body::Body::from(
            r#"{"key": "sk_live_x", "requiredScopes": ["a:b"]}"#,
        ))
        .unwrap();
        let remote: SocketAddr = "192.0.2.7:4242".parse().unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(ConnectionAddrs {
                local: None,
                remote,
                client_certificate: None,
            }));

        let (status, headers, json) =
            send(services(seen.clone(), Ok(validate_reply())), request).await;

        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            json,
            serde_json::json!({"valid": true, "code": "VALIDATION_CODE_VALID"})
        );
        let delegated = seen.0.lock().unwrap().take().unwrap();
        assert_eq!(
            delegated.uri().path(),
            "/apikeyd.v1.ValidationService/Validate"
        );
        assert_eq!(
            delegated.headers()[header::CONTENT_TYPE],
            "application/grpc"
        );
        assert_eq!(delegated.headers()["authorization"], "Bearer rk_x");
        assert_eq!(delegated.headers()["x-request-id"], "abc");
        assert!(
            delegated
                .headers()
                .get("connect-protocol-version")
                .is_none()
        );
        assert!(
            delegated.headers().get("grpc-timeout").is_none(),
            "callers cannot set gRPC headers"
        );
        let body = delegated.body();
        assert_eq!(body[0], 0, "uncompressed");
        assert_eq!(
            u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize,
            body.len() - 5
        );
        let message = pb::ValidateRequest::decode(&body[5..]).unwrap();
        assert_eq!(message.key, "sk_live_x");
        assert_eq!(message.required_scopes, ["a:b"]);
        let info = delegated.extensions().get::<TcpConnectInfo>().unwrap();
        assert_eq!(info.remote_addr(), Some(remote));
    }

    #[tokio::test]
    async fn a_protobuf_call_is_answered_in_protobuf() {
        let seen = Seen::default();
        let message = pb::ValidateRequest {
            key: "sk_live_x".to_owned(),
            ..Default::default()
        };
        let request = http::Request::post("/apikeyd.v1.ValidationService/Validate")
            .header(header::CONTENT_TYPE, "application/proto")
            .body(axum::body::Body::from(message.encode_to_vec()))
            .unwrap();

        let response = super::super::router(services(seen, Ok(validate_reply())))
            .oneshot(request)
            .await
            .unwrap();

        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/proto"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(pb::ValidateResponse::decode(body).unwrap().valid);
    }

    #[tokio::test]
    async fn a_service_error_keeps_its_code_and_message() {
        let request = post("/apikeyd.v1.KeyService/GetKey", "application/json")
            .body(axum::body::Body::from(r#"{"id": "key_1"}"#))
            .unwrap();
        let refused = tonic::Status::not_found("no API key with id \"key_1\"");

        let (status, headers, json) = send(services(Seen::default(), Err(refused)), request).await;

        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            json,
            serde_json::json!({"code": "not_found", "message": "no API key with id \"key_1\""})
        );
    }

    #[tokio::test]
    async fn requests_the_layer_cannot_serve_never_reach_the_services() {
        let cases = [
            (
                "/apikeyd.v1.KeyService/Nope",
                "application/json",
                None,
                StatusCode::NOT_FOUND,
                "unimplemented",
            ),
            (
                "/apikeyd.v1.Nope/GetKey",
                "application/json",
                None,
                StatusCode::NOT_FOUND,
                "unimplemented",
            ),
            (
                "/apikeyd.v1.KeyService/GetKey",
                "text/plain",
                None,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unimplemented",
            ),
            (
                "/apikeyd.v1.KeyService/GetKey",
                "application/json",
                Some(("connect-protocol-version", "2")),
                StatusCode::BAD_REQUEST,
                "invalid_argument",
            ),
            (
                "/apikeyd.v1.KeyService/GetKey",
                "application/json",
                Some(("connect-timeout-ms", "soon")),
                StatusCode::BAD_REQUEST,
                "invalid_argument",
            ),
            (
                "/apikeyd.v1.KeyService/GetKey",
                "application/json",
                Some(("content-encoding", "gzip")),
                StatusCode::NOT_IMPLEMENTED,
                "unimplemented",
            ),
        ];
        for (path, content_type, extra, expected_status, expected_code) in cases {
            let seen = Seen::default();
            let mut request = post(path, content_type);
            if let Some((name, value)) = extra {
                request = request.header(name, value);
            }
            let request = request.body(axum::body::Body::from("{}")).unwrap();

            let (status, _, json) = send(services(seen.clone(), Ok(Vec::new())), request).await;

            assert_eq!(
                status, expected_status,
                "{path} {content_type} {extra:?}: {json}"
            );
            assert_eq!(json["code"], expected_code, "{json}");
            assert!(
                seen.0.lock().unwrap().is_none(),
                "{path} reached the services"
            );
        }
    }

    #[tokio::test]
    async fn malformed_json_is_invalid_argument_with_the_parsers_message() {
        let request = post("/apikeyd.v1.KeyService/GetKey", "application/json")
            .body(axum::body::Body::from(r#"{"id": 7}"#))
            .unwrap();

        let (status, _, json) = send(services(Seen::default(), Ok(Vec::new())), request).await;

        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["code"], "invalid_argument");
        let message = json["message"].as_str().unwrap();
        assert!(
            message.contains("GetKeyRequest") && message.contains("string"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_before_it_is_parsed() {
        let request = post("/apikeyd.v1.KeyService/GetKey", "application/json")
            .body(axum::body::Body::from(vec![b' '; MAX_REQUEST_BYTES + 1]))
            .unwrap();

        let (status, _, json) = send(services(Seen::default(), Ok(Vec::new())), request).await;

        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json["code"], "resource_exhausted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_connect_timeout_ms_is_deadline_exceeded() {
        let never_answers = BoxCloneSyncService::new(tower::service_fn(
            |_: http::Request<tonic::body::Body>| async {
                std::future::pending::<Result<http::Response<tonic::body::Body>, Infallible>>()
                    .await
            },
        ));
        let request = post("/apikeyd.v1.KeyService/GetKey", "application/json")
            .header("connect-timeout-ms", "250")
            .body(axum::body::Body::from("{}"))
            .unwrap();

        let (status, _, json) = send(never_answers, request).await;

        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(json["code"], "deadline_exceeded");
        assert!(
            json["message"].as_str().unwrap().contains("250 ms"),
            "{json}"
        );
    }
}
