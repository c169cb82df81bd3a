//! The Envoy side of the harness: requests built from Envoy's own protos (as
//! Envoy would send them) over real gRPC. The server build generates no
//! clients for Envoy's services, so a test calls them through tonic's
//! generic unary client with the generated message types.

use std::collections::HashMap;

use apikeyd::envoy::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use apikeyd::envoy::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttributeRequest,
};
use apikeyd::envoy::pb::envoy::service::auth::v3::check_response::HttpResponse;
use apikeyd::envoy::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// One unary call of `path` with Envoy's generated messages.
pub async fn unary<Req, Resp>(
    channel: Channel,
    path: &'static str,
    message: Req,
) -> Result<Resp, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(
        Request::new(message),
        http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

pub async fn check(channel: Channel, request: CheckRequest) -> Result<CheckResponse, Status> {
    unary(
        channel,
        "/envoy.service.auth.v3.Authorization/Check",
        request,
    )
    .await
}

/// A CheckRequest as Envoy's HTTP ext_authz filter sends it: lower-case
/// headers, the path with its query, the downstream peer's address.
pub fn check_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    extensions: &[(&str, &str)],
) -> CheckRequest {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([
            (":method".to_owned(), method.to_owned()),
            (":path".to_owned(), path.to_owned()),
        ])
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "203.0.113.7".to_owned(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(AttributeRequest {
                http: Some(HttpRequest {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    host: "api.example.com".to_owned(),
                    scheme: "https".to_owned(),
                    protocol: "HTTP/1.1".to_owned(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    }
}

pub fn ok_response(response: &CheckResponse) -> &OkHttpResponse {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!(
            "expected an ok_response, got {other:?} (status {:?})",
            response.status
        ),
    }
}

pub fn denied_response(response: &CheckResponse) -> &DeniedHttpResponse {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => denied,
        other => panic!("expected a denied_response, got {other:?}"),
    }
}

/// The value of header `name` in a list Envoy would apply, failing when absent.
pub fn header_value(
    headers: &[apikeyd::envoy::pb::envoy::config::core::v3::HeaderValueOption],
    name: &str,
) -> String {
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
        .value
        .clone()
}

/// The gRPC code of a CheckResponse's `status`.
pub fn status_code(response: &CheckResponse) -> tonic::Code {
    tonic::Code::from_i32(response.status.as_ref().expect("a status").code)
}
