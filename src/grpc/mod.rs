//! The gRPC layer: generated types, and thin services that convert requests
//! into domain calls and domain results into responses.

pub mod convert;
pub mod deadline;
mod import_service;
mod key_service;
mod rate_limit_service;
mod validation_service;

pub use import_service::{ImportApi, MAX_KEYS_PER_MESSAGE};
pub use key_service::KeyApi;
pub use rate_limit_service::RateLimitApi;
pub use validation_service::ValidationApi;

/// Code generated from `proto/apikeyd/v1`.
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("apikeyd.v1");

    /// Descriptors of our services, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("apikeyd_descriptor");
}
