//! apikeyd, a key authority: it issues API keys, keeps them hashed, and
//! answers for every request other services receive whether a key is good
//! and may do what is asked.
//!
//! Map of the crate:
//! - [`domain`]: the rules, with no I/O: key format, checksum and redaction
//!   ([`domain::key_format`]), scopes ([`domain::scope`]), bounds on key
//!   settings ([`domain::key_settings`]), limits, tiers and CheckRateLimit
//!   subjects ([`domain::limit`]), usage quotas ([`domain::quota`]), the
//!   validation verdict ([`domain::api_key`]), root keys' permissions, owner
//!   scopes and no-escalation rules ([`domain::permission`],
//!   [`domain::owner_scope`], [`domain::root_key`]), the audit record
//!   ([`domain::audit`]), and keys of other stores and their import
//!   ([`domain::legacy_key`], [`domain::import`]).
//! - [`authority`]: the use cases (create, get, list, update, revoke, rotate,
//!   validate, usage, owner limits, import) over the store, the hasher and the
//!   limiter; keys imported from another store in `authority::imported_keys`.
//! - [`secrets`]: "is this the key's secret", for API keys and root keys:
//!   argon2id at a cost per key kind (rehashed when it changes), keyed
//!   digests of verified keys, single-flight verification.
//! - [`argon2_pool`]: the verification budget: argon2 runs on a fixed pool of
//!   threads behind a bounded queue that refuses, retryably, when full.
//! - [`store`]: SeaORM entities and data access (SQLite or PostgreSQL);
//!   migrations live in the `apikeyd-migrations` crate (`migrations/`).
//! - [`access`]: who may call: the root key a call carries, its
//!   permissions and owner scope (and, when required, the data plane's
//!   service credential).
//! - [`root_keys`]: the root-key lifecycle (create, get, list, revoke)
//!   within the caller's own reach; [`bootstrap`]: the first root key and
//!   its file.
//! - [`audit`]: the audit trail of changes and refused calls (database and
//!   `apikeyd::audit` log lines), its listing and retention.
//! - [`key_cache`]: key records (with the digest of their verified secret)
//!   cached for Validate: per-id generations against loads racing a change,
//!   a 60 s backstop, the degraded TTL while invalidations may be missed;
//!   imported keys' ids by digest.
//! - [`invalidation`]: cache invalidation between replicas over a Redis
//!   Stream: appends retried until taken, each replica replaying from its
//!   last entry and knowing when it may have missed one; staleness bounds in
//!   its module doc.
//! - [`last_used`]: `last_used_at`, batched off the hot path.
//! - [`per_thread`]: a value per thread on a cache line of its own, for what
//!   the hot path updates on every call (its counters, last-used times).
//! - [`leak_report`]: leaked-key reports (GitHub's secret scanning on
//!   `POST /v1/leaked-keys`, its signing keys and signatures in
//!   [`leak_report::github`]; `ReportLeakedKeys` for internal scanners): our
//!   keys among them, with their secrets, revoked and audited.
//! - [`ratelimit`]: the limiter, speaking in API keys: rate limits (sliding
//!   window, fixed window, GCRA), usage quotas and usage counters, decided
//!   by Redis (single node or cluster; decisions that arrive together share
//!   one script call) or in-process; waits bounded by the caller's deadline,
//!   and the failure policy for real Redis outages.
//! - [`grpc`]: generated protobuf types and the thin tonic services.
//! - [`envoy`]: Envoy's ext_authz (`Authorization/Check`, over the same
//!   validate use case) and an envoyproxy/ratelimit drop-in (`ShouldRateLimit`,
//!   their YAML format, decided by the limiter), with the protos vendored in
//!   `proto/third_party`.
//! - [`http`]: the same services over HTTP (Connect unary calls, gRPC-Web);
//!   [`proto_json`]: the proto3 JSON mapping it and the CLI share.
//! - [`console`]: the web console, its assets built into the binary.
//! - [`import`]: `apikeyd import`, reading another store's keys (the seed's
//!   tables, JSON Lines) into the authority's import.
//! - [`tls`]: TLS on the listeners (rustls): certificates reloaded when their
//!   files change, mutual TLS with a client CA, the handshakes off the
//!   accept loop, and the identity a client certificate names.
//! - [`startup`]: wiring, serving, health, draining.
//! - [`fuzzing`]: the bodies of the fuzz targets in `fuzz/` (key parser,
//!   scopes, configuration, request validation), replayed over the committed
//!   corpus by a stable test.
//! - [`config`]: settings (defaults, file, `APIKEYD_*`, flags), in sections
//!   (server, database, limits, argon2, hot path, Redis, Envoy, TLS) that
//!   each derive what they describe: the database
//!   ([`config::DatabaseTarget`]), Redis, TLS included
//!   ([`config::RedisTarget`]), the limiter; the keys stay flat. Passwords
//!   in URLs are redacted ([`config::SecretUrl`]).
//! - [`cli`]: the command tree (every subcommand's arguments, no behaviour);
//!   [`commands`]: parse, load settings, dispatch, and `root-key` straight
//!   to the database; [`client`]: the operator's commands (`keys`,
//!   `ratelimit check`, `validate`), a gRPC client of the API.
//! - [`telemetry`], [`shutdown`]: logs and metrics, signals.

pub mod access;
pub mod argon2_pool;
pub mod audit;
pub mod authority;
pub mod bootstrap;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod console;
pub mod domain;
pub mod envoy;
pub mod error;
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod import;
pub mod invalidation;
pub mod key_cache;
pub mod last_used;
pub mod leak_report;
pub mod per_thread;
pub mod proto_json;
pub mod ratelimit;
pub mod root_keys;
pub mod secrets;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
