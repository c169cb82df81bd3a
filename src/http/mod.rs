//! The API over HTTP: every unary RPC of our services as a Connect unary
//! call (JSON or binary protobuf), and gRPC-Web for browser gRPC clients,
//! both delegated to the same in-process tonic services the gRPC listener
//! serves; GitHub's leaked-key reports ([`leaked_keys`]); and the health
//! service for HTTP probes ([`health`]).

mod connect;
pub mod error;
pub mod health;
pub mod leaked_keys;

use axum::extract::{Request, State};
use axum::response::Response;
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::{Layer, ServiceExt};

pub use connect::{ConnectionAddrs, GrpcServices, MAX_REQUEST_BYTES};

/// The two protocols a `POST /<service>/<method>` may speak.
#[derive(Clone)]
struct Protocols {
    connect: GrpcServices,
    grpc_web: GrpcWebService<GrpcServices>,
}

/// `POST /{service}/{method}`: gRPC-Web by its content type, else Connect.
pub fn router(services: GrpcServices) -> axum::Router {
    let protocols = Protocols {
        grpc_web: GrpcWebLayer::new().layer(services.clone()),
        connect: services,
    };
    axum::Router::new()
        .route("/{service}/{method}", axum::routing::post(call))
        .with_state(protocols)
}

async fn call(State(protocols): State<Protocols>, mut request: Request) -> Response {
    let grpc_web = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc-web"));
    if !grpc_web {
        return connect::unary(protocols.connect, request).await;
    }
    let mut peer = http::Extensions::new();
    connect::carry_peer(request.extensions(), &mut peer);
    request.extensions_mut().extend(peer);
    protocols
        .grpc_web
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {})
        .map(axum::body::Body::new)
}
