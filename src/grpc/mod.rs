//! The gRPC layer: generated types, and thin services that convert requests
//! into domain calls and domain results into responses.

/// Runs `$self.$inner(request, &mut call)` as one audited management call
/// to `$method`, and answers with its outcome.
macro_rules! audited {
    ($self:ident, $request:ident, $method:literal, $kind:expr, $inner:ident) => {{
        let mut call = $crate::audit::AuditedCall::start($method, $kind, &$request);
        let outcome = $self.$inner($request, &mut call).await;
        $self
            .audit
            .finish(call, outcome)
            .await
            .map(tonic::Response::new)
    }};
}

mod audit_service;
pub mod convert;
pub mod deadline;
mod import_service;
mod key_service;
mod rate_limit_service;
mod root_key_service;
mod service_credential;
mod validate_reply;
mod validation_service;

pub use audit_service::AuditApi;
pub use import_service::{ImportApi, MAX_KEYS_PER_MESSAGE};
pub use key_service::{KeyApi, parse_create, parse_update};
pub use rate_limit_service::{RateLimitApi, parse_check};
pub use root_key_service::RootKeyApi;
pub use service_credential::{DataPlaneGuard, ServiceCredential};
pub use validation_service::{ValidationApi, ValidationServer};

/// Code generated from `proto/apikeyd/v1`.
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("apikeyd.v1");

    /// Descriptors of our services, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("apikeyd_descriptor");
}
