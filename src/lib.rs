//! apikeyd, a key authority: it issues API keys, keeps them hashed, and
//! answers for every request other services receive whether a key is good
//! and may do what is asked.
//!
//! Map of the crate:
//! - [`domain`]: the rules, with no I/O: key format and checksum
//!   ([`domain::key_format`]), scopes ([`domain::scope`]), bounds on key
//!   settings ([`domain::key_settings`]), and the validation verdict
//!   ([`domain::api_key`]).
//! - [`authority`]: the use cases (create, get, list, update, revoke, rotate,
//!   validate, usage, owner limits) over the store, the hasher and the limiter.
//! - [`secrets`]: "is this the key's secret", for API keys and root keys:
//!   argon2id at a cost per key kind (rehashed when it changes), keyed
//!   digests of verified keys, single-flight verification.
//! - [`argon2_pool`]: the verification budget: argon2 runs on a fixed pool of
//!   threads behind a bounded queue that refuses, retryably, when full.
//! - [`store`]: SeaORM entities and data access (SQLite or PostgreSQL);
//!   migrations live in the `apikeyd-migrations` crate (`migrations/`).
//! - [`access`]: root keys and the permission each management call needs.
//! - [`key_cache`]: key records (with the digest of their verified secret)
//!   cached for Validate.
//! - [`invalidation`]: cache invalidation between replicas over Redis pub/sub.
//! - [`last_used`]: `last_used_at`, batched off the hot path.
//! - [`ratelimit`]: rate limits (sliding window, fixed window, GCRA), usage
//!   quotas and usage counters, decided in one round trip by Redis (single
//!   node or cluster) or in-process; the failure policy for Redis outages.
//! - [`grpc`]: generated protobuf types and the thin tonic services.
//! - [`startup`]: wiring, serving, health, draining.
//! - [`config`], [`telemetry`], [`shutdown`], [`cli`]: settings, logs,
//!   signals and the command line.

pub mod access;
pub mod argon2_pool;
pub mod authority;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod invalidation;
pub mod key_cache;
pub mod last_used;
pub mod ratelimit;
pub mod secrets;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
