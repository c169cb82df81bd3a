//! The API over HTTP: every unary RPC of our services as a Connect unary
//! call (JSON or binary protobuf), delegated to the same in-process tonic
//! services the gRPC listener serves.

mod connect;
pub mod error;

pub use connect::{ConnectionAddrs, GrpcServices, MAX_REQUEST_BYTES, router};
