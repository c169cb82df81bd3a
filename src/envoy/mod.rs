//! Envoy's two external services, answered by apikeyd so that an HTTP API
//! behind Envoy gets API keys, scopes and rate limits from configuration
//! alone.
//!
//! - [`ext_authz`]: `envoy.service.auth.v3.Authorization/Check`, a thin
//!   conversion around [`crate::authority::KeyAuthority::validate`].
//! - [`routes`]: the scopes and cost a request needs, from the route's
//!   `context_extensions` or the route table in the settings.
//! - [`ratelimit_config`]: envoyproxy/ratelimit's YAML configuration, read
//!   with their rules (and errors that name the file and line), and matched
//!   against request descriptors; [`yaml`] keeps every node's line.
//! - [`ratelimit_source`]: that configuration in force, reloaded when its
//!   files change (a bad change keeps the last good one).
//! - [`rls_plan`]: one `ShouldRateLimit` request worked out against it
//!   (replaces, unlimited, zero limits, shadow and quota modes, hits) and
//!   the store's answers turned into envoyproxy/ratelimit's response.
//! - [`rate_limit_service`]: Envoy's `RateLimitService/ShouldRateLimit`,
//!   every counted descriptor of a request decided at once by the limiter.

pub mod ext_authz;
pub mod rate_limit_service;
pub mod ratelimit_config;
pub mod ratelimit_source;
pub mod rls_plan;
pub mod routes;
pub mod yaml;

/// Code generated from the protos vendored in `proto/third_party`.
#[allow(clippy::all, clippy::pedantic, rustdoc::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/envoy.rs"));

    /// Descriptors of the Envoy services and their imports, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("envoy_descriptor");
}
