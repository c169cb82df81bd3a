//! Integration tests: a real server over real gRPC on a loopback port, on
//! SQLite and on PostgreSQL. One binary, one module per behaviour.

mod envoy_harness;
mod fault_harness;
mod helpers;
mod limiter_harness;
mod tls_harness;

mod access;
mod audit_trail;
mod backend_tls;
mod bad_input;
mod bootstrap;
mod busy_replicas;
mod cli;
mod envoy_ext_authz;
mod envoy_ratelimit;
mod faults;
mod findings;
mod hostile_input;
mod hot_path;
mod http_json;
mod imported_keys;
mod invalidation;
mod key_lifecycle;
mod late_answers;
mod leaked_keys;
mod limiter_bounds;
mod listing;
mod observability;
mod operability;
mod owner_limit;
mod rate_limits;
mod redis_outage;
mod replicas;
mod root_keys;
mod round_trips;
mod secrets_stay_secret;
mod seed_import;
mod service_credentials;
mod soak;
mod tls;
mod validate;
mod verification;
