//! Settings: built-in defaults, then an optional TOML file, then `APIKEYD_*`
//! environment variables, then flags (each overriding the one before).
//!
//! clap reads flags and environment variables together (so `--help` names
//! both); figment lays them over the file and the defaults.

mod database_target;
pub mod redis_target;
pub mod secret_url;

pub use database_target::DatabaseTarget;
pub use redis_target::RedisTarget;
pub use secret_url::{DatabaseUrl, RedisUrl, SecretUrl, redact_url};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::argon2_pool::{Argon2Budget, default_max_in_flight};
use crate::domain::limit::seed_tiers;
use crate::domain::{Algorithm, Limit, Tiers};
use crate::envoy::ratelimit_config::RateLimitConfig;
use crate::envoy::routes::{RouteRule, RouteTable};
use crate::ratelimit::memory::MemoryStore;
use crate::ratelimit::redis::RedisStore;
use crate::ratelimit::store::RateLimitStore;
use crate::ratelimit::usage::Retention;
use crate::ratelimit::{FailurePolicy, Keyspace, LimiterSettings, RateLimiter};
use crate::secrets::{Argon2Cost, Argon2Costs};

/// Every setting the service reads. In a TOML file the keys are these field
/// names, e.g. `grpc_addr = "0.0.0.0:50051"`; a section's keys sit at the
/// top level too (`redis_url`, `tls_cert`), named as its fields are renamed.
/// Unknown keys are refused by [`Settings::load`] (serde's
/// `deny_unknown_fields` does not combine with `flatten`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub server: ServerSettings,
    #[serde(flatten)]
    pub database: DatabaseSettings,
    #[serde(flatten)]
    pub limits: LimitSettings,
    #[serde(flatten)]
    pub argon2: Argon2Settings,
    #[serde(flatten)]
    pub hot_path: HotPathSettings,
    pub log_format: LogFormat,
    #[serde(flatten)]
    pub redis: RedisSettings,
    pub data_plane_auth: DataPlaneAuth,
    pub audit_retention_days: u32,
    #[serde(flatten)]
    pub envoy: EnvoySettings,
    /// GitHub's secret-scanning signing keys, as GitHub publishes them; when
    /// set, `POST /v1/leaked-keys` takes its reports.
    pub leak_report_keys: Option<PathBuf>,
    #[serde(flatten)]
    pub tls: TlsSettings,
    /// The web console (file only), e.g. `[console] scopes = ["posts:read"]`.
    pub console: ConsoleSettings,
}

/// The listeners and how they serve calls: the keys `grpc_addr`,
/// `http_addr`, `grpc_max_*`, `grpc_default_deadline_ms` and
/// `shutdown_grace_secs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerSettings {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    #[serde(rename = "grpc_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    #[serde(rename = "grpc_max_request_bytes")]
    pub max_request_bytes: u32,
    #[serde(rename = "grpc_default_deadline_ms")]
    pub default_deadline_ms: u64,
    pub shutdown_grace_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            grpc_addr: ([127, 0, 0, 1], 50051).into(),
            http_addr: ([127, 0, 0, 1], 8080).into(),
            max_concurrent_streams: 256,
            max_request_bytes: 64 * 1024,
            default_deadline_ms: 30_000,
            shutdown_grace_secs: 10,
        }
    }
}

impl ServerSettings {
    /// The deadline of a call that sets none (a longer one is cut to it).
    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }

    /// What in-flight calls get to finish after SIGTERM.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    fn problems(&self, problems: &mut Vec<String>) {
        if self.max_concurrent_streams == 0 {
            problems.push("grpc_max_concurrent_streams: must be at least 1".to_owned());
        }
        if self.max_request_bytes < 1024 {
            problems.push(
                "grpc_max_request_bytes: must be at least 1024 (a Validate request alone can need that)"
                    .to_owned(),
            );
        }
        if self.default_deadline_ms == 0 {
            problems.push("grpc_default_deadline_ms: must be at least 1".to_owned());
        }
        if self.grpc_addr.port() != 0 && self.grpc_addr == self.http_addr {
            problems.push(format!(
                "grpc_addr and http_addr are both {}; give each its own port",
                self.grpc_addr
            ));
        }
    }
}

/// Validate's hot path off the database: the keys `key_cache_max_mib`,
/// `key_cache_degraded_ttl_secs` and `last_used_flush_secs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HotPathSettings {
    pub key_cache_max_mib: u64,
    /// The longest a cached key is trusted while invalidations may be missed.
    pub key_cache_degraded_ttl_secs: u64,
    /// Seconds between batched writes of `last_used_at`.
    pub last_used_flush_secs: u64,
}

impl Default for HotPathSettings {
    fn default() -> Self {
        HotPathSettings {
            key_cache_max_mib: 128,
            key_cache_degraded_ttl_secs: 10,
            last_used_flush_secs: 5,
        }
    }
}

impl HotPathSettings {
    fn problems(&self, problems: &mut Vec<String>) {
        if self.last_used_flush_secs == 0 {
            problems.push("last_used_flush_secs: must be at least 1".to_owned());
        }
    }
}

/// What hashing and verifying keys costs, and how many may run at once: the
/// keys `api_key_argon2_*`, `root_key_argon2_*` and `argon2_max_*`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Argon2Settings {
    #[serde(rename = "api_key_argon2_memory_kib")]
    pub api_key_memory_kib: u32,
    #[serde(rename = "api_key_argon2_iterations")]
    pub api_key_iterations: u32,
    #[serde(rename = "api_key_argon2_parallelism")]
    pub api_key_parallelism: u32,
    #[serde(rename = "root_key_argon2_memory_kib")]
    pub root_key_memory_kib: u32,
    #[serde(rename = "root_key_argon2_iterations")]
    pub root_key_iterations: u32,
    #[serde(rename = "root_key_argon2_parallelism")]
    pub root_key_parallelism: u32,
    /// Unset: the CPUs this process may use (its cgroup quota).
    #[serde(rename = "argon2_max_in_flight")]
    pub max_in_flight: Option<u32>,
    #[serde(rename = "argon2_max_queued")]
    pub max_queued: u32,
}

impl Default for Argon2Settings {
    fn default() -> Self {
        let Argon2Costs {
            api_keys,
            root_keys,
        } = Argon2Costs::default();
        Argon2Settings {
            api_key_memory_kib: api_keys.memory_kib,
            api_key_iterations: api_keys.iterations,
            api_key_parallelism: api_keys.parallelism,
            root_key_memory_kib: root_keys.memory_kib,
            root_key_iterations: root_keys.iterations,
            root_key_parallelism: root_keys.parallelism,
            max_in_flight: None,
            max_queued: 256,
        }
    }
}

impl Argon2Settings {
    pub fn costs(&self) -> Argon2Costs {
        Argon2Costs {
            api_keys: Argon2Cost {
                memory_kib: self.api_key_memory_kib,
                iterations: self.api_key_iterations,
                parallelism: self.api_key_parallelism,
            },
            root_keys: Argon2Cost {
                memory_kib: self.root_key_memory_kib,
                iterations: self.root_key_iterations,
                parallelism: self.root_key_parallelism,
            },
        }
    }

    /// How many argon2 runs may be in flight and queued.
    pub fn budget(&self) -> Argon2Budget {
        Argon2Budget {
            max_in_flight: self
                .max_in_flight
                .and_then(|n| std::num::NonZeroUsize::new(usize::try_from(n).ok()?))
                .unwrap_or_else(default_max_in_flight),
            max_queued: usize::try_from(self.max_queued).unwrap_or(usize::MAX),
        }
    }

    fn problems(&self, problems: &mut Vec<String>) {
        let costs = self.costs();
        for (kind, cost) in [("api_key", costs.api_keys), ("root_key", costs.root_keys)] {
            if let Err(e) =
                argon2::Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            {
                problems.push(format!(
                    "{kind}_argon2_memory_kib / {kind}_argon2_iterations / {kind}_argon2_parallelism: {e} (memory must be at least 8 × parallelism KiB, iterations at least 1)"
                ));
            }
        }
        if self.max_in_flight == Some(0) {
            problems.push(
                "argon2_max_in_flight: must be at least 1 (unset it to follow the CPU quota)"
                    .to_owned(),
            );
        }
    }
}

/// Where the database is: the keys `data_dir` and `database_url`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatabaseSettings {
    /// The embedded SQLite database (without `database_url`) and the
    /// bootstrap root key's file.
    pub data_dir: PathBuf,
    #[serde(rename = "database_url")]
    pub url: Option<DatabaseUrl>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            data_dir: PathBuf::from("./data"),
            url: None,
        }
    }
}

impl DatabaseSettings {
    /// Which database `database_url` and `data_dir` name, interpreted once
    /// here for the server, the command line and the import.
    pub fn target(&self) -> Result<DatabaseTarget, String> {
        DatabaseTarget::parse(self.url.as_ref(), &self.data_dir)
    }
}

/// Where Redis is and how the limiter and the invalidations use it: the
/// keys `redis_*`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RedisSettings {
    /// Unset: the in-process limiter (one replica) and no invalidations.
    #[serde(rename = "redis_url")]
    pub url: Option<RedisUrl>,
    #[serde(rename = "redis_cluster")]
    pub cluster: bool,
    #[serde(rename = "redis_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(rename = "redis_probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    #[serde(rename = "redis_failure_policy")]
    pub failure_policy: FailurePolicy,
    #[serde(rename = "redis_key_prefix")]
    pub key_prefix: String,
    /// PEM CA certificates that sign the Redis server's certificate
    /// (`rediss://`); unset for the system's roots.
    #[serde(rename = "redis_ca_cert")]
    pub ca_cert: Option<PathBuf>,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: None,
            cluster: false,
            timeout_ms: 500,
            probe_timeout_ms: 1_000,
            failure_policy: FailurePolicy::Open,
            key_prefix: "apikeyd".to_owned(),
            ca_cert: None,
        }
    }
}

impl RedisSettings {
    /// Where Redis is, when it is configured; reads `redis_ca_cert`.
    pub fn target(&self) -> anyhow::Result<Option<RedisTarget>> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let root_cert = match &self.ca_cert {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("redis_ca_cert: cannot read {}: {e}", path.display())
            })?),
            None => None,
        };
        Ok(Some(RedisTarget::new(url.clone(), self.cluster, root_cert)))
    }

    /// The longest wait for a Redis answer of a call without a deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The limiter: on Redis when a URL is configured, else in-process;
    /// usage counters kept as `retention` says.
    pub fn limiter(&self, retention: Retention) -> anyhow::Result<RateLimiter> {
        let limiter = LimiterSettings {
            policy: self.failure_policy,
            default_wait: Duration::from_millis(self.timeout_ms.max(1)),
            probe_timeout: Duration::from_millis(self.probe_timeout_ms.max(1)),
            retention,
        };
        let store: Arc<dyn RateLimitStore> = match self.target()? {
            Some(target) => Arc::new(
                RedisStore::new(&target, limiter.probe_timeout)
                    .with_context(|| format!("invalid Redis URL {target}"))?,
            ),
            None => Arc::new(MemoryStore::default()),
        };
        Ok(RateLimiter::new(
            store,
            Keyspace::new(&self.key_prefix)?,
            limiter,
        ))
    }

    fn problems(&self, problems: &mut Vec<String>) {
        if let Some(path) = &self.ca_cert {
            let tls = self
                .url
                .as_ref()
                .is_some_and(|url| url.expose().trim_start().starts_with("rediss://"));
            if !tls {
                problems.push(
                    "redis_ca_cert: needs a rediss:// redis_url (TLS); unset it, or use rediss://"
                        .to_owned(),
                );
            } else if let Err(e) = std::fs::read(path) {
                problems.push(format!(
                    "redis_ca_cert: cannot read {}: {e}",
                    path.display()
                ));
            }
        }
        if self.timeout_ms == 0 || self.probe_timeout_ms == 0 {
            problems
                .push("redis_timeout_ms and redis_probe_timeout_ms: must be at least 1".to_owned());
        }
    }
}

/// TLS on both listeners: the keys `tls_cert`, `tls_key`, `tls_client_ca`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TlsSettings {
    /// The PEM certificate chain and key (both or neither), read again when
    /// they change.
    #[serde(rename = "tls_cert")]
    pub cert: Option<PathBuf>,
    #[serde(rename = "tls_key")]
    pub key: Option<PathBuf>,
    /// PEM CA certificates that sign client certificates: mutual TLS.
    #[serde(rename = "tls_client_ca")]
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    /// The listeners' TLS files: `None` without TLS, an explanation when
    /// only some of them are given.
    pub fn files(&self) -> Result<Option<crate::tls::TlsFiles>, String> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
            })),
            (None, None) if self.client_ca.is_none() => Ok(None),
            (None, None) => Err(
                "tls_client_ca: mutual TLS needs tls_cert and tls_key too (the server's own certificate)"
                    .to_owned(),
            ),
            _ => Err("tls_cert and tls_key: give both (the PEM certificate chain and its key) or neither".to_owned()),
        }
    }

    fn problems(&self, problems: &mut Vec<String>) {
        match self.files() {
            Ok(Some(files)) => {
                if let Err(e) = crate::tls::ServerTls::load(files) {
                    problems.push(format!("tls_cert / tls_key / tls_client_ca: {e}"));
                }
            }
            Ok(None) => {}
            Err(problem) => problems.push(problem),
        }
    }
}

/// Who may hold how many keys, the tiers' limits and how long usage is kept:
/// the keys `max_active_keys_per_owner`, `default_tier`, `tiers` and
/// `usage_*` / `recent_requests_kept`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LimitSettings {
    /// Unrevoked keys one owner may hold at once.
    pub max_active_keys_per_owner: u32,
    pub default_tier: String,
    /// Tier name → its limits (file only), e.g.
    /// `pro = [{ limit = 1000, window_secs = 3600, algorithm = "sliding_window" }]`.
    pub tiers: BTreeMap<String, Vec<TierLimit>>,
    #[serde(rename = "usage_hourly_retention_hours")]
    pub hourly_retention_hours: u32,
    #[serde(rename = "usage_daily_retention_days")]
    pub daily_retention_days: u32,
    pub recent_requests_kept: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_active_keys_per_owner: 10,
            default_tier: "free".to_owned(),
            tiers: seed_tiers()
                .into_iter()
                .map(|(name, limits)| {
                    let limits = limits
                        .iter()
                        .map(|l| TierLimit {
                            limit: l.limit,
                            window_secs: l.window_ms / 1000,
                            algorithm: l.algorithm,
                        })
                        .collect();
                    (name, limits)
                })
                .collect(),
            hourly_retention_hours: 48,
            daily_retention_days: 90,
            recent_requests_kept: 100,
        }
    }
}

impl LimitSettings {
    /// The configured tiers, checked.
    pub fn tiers(&self) -> anyhow::Result<Tiers> {
        let mut tiers = BTreeMap::new();
        for (name, limits) in &self.tiers {
            let limits = limits
                .iter()
                .map(|l| {
                    Limit::parse(
                        "tiers",
                        l.limit,
                        l.window_secs.saturating_mul(1000),
                        l.algorithm,
                    )
                })
                .collect::<crate::error::Result<Vec<_>>>()
                .map_err(|e| anyhow::anyhow!("tier {name:?}: {e}"))?;
            tiers.insert(name.clone(), limits);
        }
        Tiers::new(tiers, self.default_tier.clone())
    }

    pub fn usage_retention(&self) -> Retention {
        Retention {
            hourly_secs: i64::from(self.hourly_retention_hours.max(1)) * 3_600,
            daily_secs: i64::from(self.daily_retention_days.max(1)) * 86_400,
            recent_requests: self.recent_requests_kept,
        }
    }

    fn problems(&self, problems: &mut Vec<String>) {
        if self.max_active_keys_per_owner == 0 {
            problems.push("max_active_keys_per_owner: must be at least 1".to_owned());
        }
        if let Err(e) = self.tiers() {
            problems.push(format!("tiers: {e}"));
        }
    }
}

/// What Envoy's ext_authz and ratelimit services are told: the keys
/// `envoy_routes` and `envoy_ratelimit_config`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EnvoySettings {
    /// Scopes and cost of requests Envoy's ext_authz asks about, for routes
    /// that set no `context_extensions` (file only), e.g.
    /// `[[envoy_routes]] path_prefix = "/v1/posts", methods = ["POST"], scopes = ["posts:write"]`.
    #[serde(rename = "envoy_routes")]
    pub routes: Vec<RouteRule>,
    /// envoyproxy/ratelimit's YAML configuration (a file or a directory of
    /// them) for `envoy.service.ratelimit.v3.RateLimitService`.
    #[serde(rename = "envoy_ratelimit_config")]
    pub ratelimit_config: Option<PathBuf>,
}

impl EnvoySettings {
    /// The ext_authz route table, checked.
    pub fn route_table(&self) -> anyhow::Result<RouteTable> {
        RouteTable::parse(&self.routes)
    }

    fn problems(&self, problems: &mut Vec<String>) {
        if let Err(e) = self.route_table() {
            problems.push(format!("{e}"));
        }
        if let Some(path) = &self.ratelimit_config {
            if let Err(e) = RateLimitConfig::load(path) {
                problems.push(format!("envoy_ratelimit_config: {e}"));
            }
        }
    }
}

/// What the web console offers; a `[console]` table in the settings file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// The scopes the create dialog offers as checkboxes (others can still be typed).
    pub scopes: Vec<String>,
}

/// One limit of a tier, as written in the settings file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimit {
    pub limit: u32,
    pub window_secs: u64,
    #[serde(default = "sliding_window")]
    pub algorithm: Algorithm,
}

fn sliding_window() -> Algorithm {
    Algorithm::SlidingWindow
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            limits: LimitSettings::default(),
            argon2: Argon2Settings::default(),
            hot_path: HotPathSettings::default(),
            log_format: LogFormat::Text,
            redis: RedisSettings::default(),
            data_plane_auth: DataPlaneAuth::None,
            audit_retention_days: 365,
            envoy: EnvoySettings::default(),
            leak_report_keys: None,
            tls: TlsSettings::default(),
            console: ConsoleSettings::default(),
        }
    }
}

impl Settings {
    /// What is wrong with these settings, in sentences; empty when usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        self.argon2.problems(&mut problems);
        self.server.problems(&mut problems);
        self.limits.problems(&mut problems);
        self.hot_path.problems(&mut problems);
        if let Err(problem) = self.database.target() {
            problems.push(problem);
        }
        self.envoy.problems(&mut problems);
        if let Some(path) = &self.leak_report_keys {
            if let Err(e) = crate::leak_report::github::SigningKeySource::load(path) {
                problems.push(format!("leak_report_keys: {e}"));
            }
        }
        self.tls.problems(&mut problems);
        if self.data_plane_auth == DataPlaneAuth::Mtls && self.tls.client_ca.is_none() {
            problems.push(
                "data_plane_auth = mtls needs tls_client_ca (and tls_cert, tls_key): the CA that signs the callers' certificates"
                    .to_owned(),
            );
        }
        self.redis.problems(&mut problems);
        for scope in &self.console.scopes {
            if let Err(e) = crate::domain::Scope::parse(scope) {
                problems.push(format!("console.scopes: {e}"));
            }
        }
        problems
    }

    /// The effective settings, one `key = value` per line, secrets redacted.
    pub fn describe(&self) -> String {
        let mut value = serde_json::to_value(self).expect("settings serialise");
        if let Some(url) = &self.database.url {
            value["database_url"] = serde_json::Value::String(url.to_string());
        }
        if let Some(url) = &self.redis.url {
            value["redis_url"] = serde_json::Value::String(url.to_string());
        }
        value
            .as_object()
            .expect("settings are a struct")
            .iter()
            .map(|(key, value)| format!("{key} = {value}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The limiter, from the Redis section and the usage retention.
    pub fn limiter(&self) -> anyhow::Result<RateLimiter> {
        self.redis.limiter(self.limits.usage_retention())
    }

    /// The settings a TOML document gives, over the defaults: what
    /// [`Settings::load`] makes of a configuration file when no flag or
    /// variable is set.
    pub fn from_toml(text: &str) -> Result<Settings, Box<figment::Error>> {
        let figment =
            Figment::from(Serialized::defaults(Settings::default())).merge(Toml::string(text));
        refuse_unknown_keys(&figment)?;
        figment.extract().map_err(Box::new)
    }

    /// Lays `flags` (flags and environment, as clap read them) over the
    /// TOML file they name, over the defaults.
    pub fn load(flags: &SettingsArgs) -> Result<Settings, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = &flags.config {
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment.merge(Serialized::defaults(flags));
        refuse_unknown_keys(&figment)?;
        figment.extract().map_err(Box::new)
    }
}

/// A key that is no setting (a typo like `grpc_adr`) is an error, not
/// silently ignored: what `deny_unknown_fields` did before the sections were
/// flattened into the same top-level keys.
fn refuse_unknown_keys(figment: &Figment) -> Result<(), Box<figment::Error>> {
    let known = serde_json::to_value(Settings::default()).expect("settings serialise");
    let given: figment::value::Dict = figment.extract().map_err(Box::new)?;
    match given.keys().find(|key| known.get(key.as_str()).is_none()) {
        Some(key) => Err(Box::new(figment::Error::from(format!(
            "unknown field: found `{key}`, expected one of the keys `apikeyd config check` prints"
        )))),
        None => Ok(()),
    }
}

/// Who may call Validate and CheckRateLimit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DataPlaneAuth {
    /// Anyone who reaches the port (keep it behind your network boundary).
    None,
    /// A root key with `validate` (Validate) or `ratelimit` (CheckRateLimit)
    /// in `authorization: Bearer` metadata: the production setting.
    RootKey,
    /// A client certificate the client CA (`tls_client_ca`) signed, verified
    /// at the TLS handshake: the production setting where callers have
    /// certificates (a service mesh, SPIFFE).
    Mtls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings as flags; each is also an `APIKEYD_*` environment variable. An
/// unset flag falls back to the TOML file, then to the default shown.
#[derive(Debug, Default, Args, Serialize)]
pub struct SettingsArgs {
    /// TOML file with settings (keys as below, with underscores).
    #[arg(long, env = "APIKEYD_CONFIG", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address the gRPC server listens on [default: 127.0.0.1:50051].
    #[arg(long, env = "APIKEYD_GRPC_ADDR", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<SocketAddr>,

    /// Address of the HTTP listener: Prometheus metrics at /metrics, the API over HTTP/JSON, and the web console at / [default: 127.0.0.1:8080].
    #[arg(long, env = "APIKEYD_HTTP_ADDR", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,

    /// Directory for the embedded SQLite database and the bootstrap root key [default: ./data].
    #[arg(long, env = "APIKEYD_DATA_DIR", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// postgres://user:password@host/db for PostgreSQL, or sqlite://path; unset for SQLite in the data directory.
    #[arg(
        long,
        env = "APIKEYD_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,

    /// Unrevoked keys one owner may hold at once [default: 10].
    #[arg(long, env = "APIKEYD_MAX_ACTIVE_KEYS_PER_OWNER", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_active_keys_per_owner: Option<u32>,

    /// argon2id memory per API-key hash, in KiB; API keys hold 256 random bits, so a light cost suffices [default: 256].
    #[arg(long, env = "APIKEYD_API_KEY_ARGON2_MEMORY_KIB", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_argon2_memory_kib: Option<u32>,

    /// argon2id passes per API-key hash [default: 1].
    #[arg(long, env = "APIKEYD_API_KEY_ARGON2_ITERATIONS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_argon2_iterations: Option<u32>,

    /// argon2id lanes per API-key hash [default: 1].
    #[arg(long, env = "APIKEYD_API_KEY_ARGON2_PARALLELISM", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_argon2_parallelism: Option<u32>,

    /// argon2id memory per root-key hash, in KiB (OWASP's minimum) [default: 19456].
    #[arg(long, env = "APIKEYD_ROOT_KEY_ARGON2_MEMORY_KIB", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_key_argon2_memory_kib: Option<u32>,

    /// argon2id passes per root-key hash [default: 2].
    #[arg(long, env = "APIKEYD_ROOT_KEY_ARGON2_ITERATIONS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_key_argon2_iterations: Option<u32>,

    /// argon2id lanes per root-key hash [default: 1].
    #[arg(long, env = "APIKEYD_ROOT_KEY_ARGON2_PARALLELISM", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_key_argon2_parallelism: Option<u32>,

    /// argon2 runs (key verifications and hashes) in flight at once [default: the CPUs of the cgroup quota, else of the machine].
    #[arg(long, env = "APIKEYD_ARGON2_MAX_IN_FLIGHT", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argon2_max_in_flight: Option<u32>,

    /// argon2 runs waiting for a thread before further calls get RESOURCE_EXHAUSTED [default: 256].
    #[arg(long, env = "APIKEYD_ARGON2_MAX_QUEUED", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argon2_max_queued: Option<u32>,

    /// HTTP/2 streams (calls) at once on one gRPC connection [default: 256].
    #[arg(long, env = "APIKEYD_GRPC_MAX_CONCURRENT_STREAMS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_max_concurrent_streams: Option<u32>,

    /// Largest request message the gRPC server decodes, in bytes [default: 65536].
    #[arg(long, env = "APIKEYD_GRPC_MAX_REQUEST_BYTES", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_max_request_bytes: Option<u32>,

    /// Deadline of a gRPC call that sets none, in milliseconds; a caller's shorter grpc-timeout wins, a longer one is cut to this [default: 30000].
    #[arg(long, env = "APIKEYD_GRPC_DEFAULT_DEADLINE_MS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_default_deadline_ms: Option<u64>,

    /// Seconds between batched writes of last_used_at [default: 5].
    #[arg(long, env = "APIKEYD_LAST_USED_FLUSH_SECS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_flush_secs: Option<u64>,

    /// Memory bound of the cache of key records, in MiB [default: 128].
    #[arg(long, env = "APIKEYD_KEY_CACHE_MAX_MIB", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_cache_max_mib: Option<u64>,

    /// Longest a cached key is trusted while invalidations may be missed, in seconds [default: 10].
    #[arg(long, env = "APIKEYD_KEY_CACHE_DEGRADED_TTL_SECS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_cache_degraded_ttl_secs: Option<u64>,

    /// Seconds in-flight calls get to finish after SIGTERM [default: 10].
    #[arg(long, env = "APIKEYD_SHUTDOWN_GRACE_SECS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_secs: Option<u64>,

    /// Log line format [default: text]. The level comes from APIKEYD_LOG or RUST_LOG.
    #[arg(long, env = "APIKEYD_LOG_FORMAT", global = true, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    /// redis://[:password@]host:port for limits, quotas and usage shared by every replica (with --redis-cluster: seed nodes, comma-separated); unset for the in-process limiter (one replica).
    #[arg(long, env = "APIKEYD_REDIS_URL", global = true, hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,

    /// Treat --redis-url as the seed nodes of a Redis Cluster [default: false].
    #[arg(long, env = "APIKEYD_REDIS_CLUSTER", global = true, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_cluster: Option<bool>,

    /// Longest wait for a limiter answer from Redis, in milliseconds, for a call without a gRPC deadline (a call with one waits until shortly before it); a later answer fails the call UNAVAILABLE [default: 500].
    #[arg(long, env = "APIKEYD_REDIS_TIMEOUT_MS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_timeout_ms: Option<u64>,

    /// Longest wait for Redis to answer the probe's PING, in milliseconds, before an outage is declared and the failure policy takes over [default: 1000].
    #[arg(long, env = "APIKEYD_REDIS_PROBE_TIMEOUT_MS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_probe_timeout_ms: Option<u64>,

    /// While Redis is unreachable: open admits (limits unenforced), closed refuses what has a limit or quota [default: open].
    #[arg(long, env = "APIKEYD_REDIS_FAILURE_POLICY", global = true, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_failure_policy: Option<FailurePolicy>,

    /// Start of every Redis key apikeyd writes, so deployments can share a Redis [default: apikeyd].
    #[arg(long, env = "APIKEYD_REDIS_KEY_PREFIX", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_key_prefix: Option<String>,

    /// PEM CA certificate(s) that sign the Redis server's certificate, for a rediss:// URL [default: the system's roots].
    #[arg(long, env = "APIKEYD_REDIS_CA_CERT", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_cert: Option<PathBuf>,

    /// Hours hourly usage counters are kept [default: 48].
    #[arg(long, env = "APIKEYD_USAGE_HOURLY_RETENTION_HOURS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_hourly_retention_hours: Option<u32>,

    /// Days daily usage counters (and the recent-requests log) are kept [default: 90].
    #[arg(long, env = "APIKEYD_USAGE_DAILY_RETENTION_DAYS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_daily_retention_days: Option<u32>,

    /// Entries kept in each key's recent-requests log [default: 100].
    #[arg(long, env = "APIKEYD_RECENT_REQUESTS_KEPT", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_requests_kept: Option<u32>,

    /// Tier of keys created with neither a tier nor their own limits [default: free].
    #[arg(long, env = "APIKEYD_DEFAULT_TIER", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_tier: Option<String>,

    /// Who may call Validate and CheckRateLimit (and Envoy's ext_authz and ShouldRateLimit): none (anyone who reaches the port), root-key (a root key with the validate / ratelimit permission) or mtls (a client certificate signed by --tls-client-ca); root-key or mtls in production [default: none].
    #[arg(long, env = "APIKEYD_DATA_PLANE_AUTH", global = true, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_plane_auth: Option<DataPlaneAuth>,

    /// Days audit events are kept; 0 keeps them forever [default: 365].
    #[arg(long, env = "APIKEYD_AUDIT_RETENTION_DAYS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_retention_days: Option<u32>,

    /// envoyproxy/ratelimit's YAML configuration (a file, or a directory of .yaml files) for Envoy's ShouldRateLimit; reloaded when it changes [default: none].
    #[arg(long, env = "APIKEYD_ENVOY_RATELIMIT_CONFIG", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envoy_ratelimit_config: Option<PathBuf>,

    /// GitHub's secret-scanning signing keys (the JSON of https://api.github.com/meta/public_keys/secret_scanning); turns on POST /v1/leaked-keys on the HTTP listener; read again when it changes [default: none, the endpoint answers 404].
    #[arg(long, env = "APIKEYD_LEAK_REPORT_KEYS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leak_report_keys: Option<PathBuf>,

    /// PEM certificate chain of both listeners (gRPC and HTTP), with --tls-key; read again when it changes, so a rotation needs no restart [default: none, plaintext].
    #[arg(long, env = "APIKEYD_TLS_CERT", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1) [default: none].
    #[arg(long, env = "APIKEYD_TLS_KEY", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) of client certificates: mutual TLS, the gRPC listener refuses a client without a certificate it signed at the handshake (the HTTP listener verifies one when presented) [default: none].
    #[arg(long, env = "APIKEYD_TLS_CLIENT_CA", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("apikeyd.toml");
        std::fs::write(
            &file,
            "grpc_addr = \"0.0.0.0:6000\"\nmax_active_keys_per_owner = 3\n",
        )
        .unwrap();
        let flags = SettingsArgs {
            config: Some(file),
            max_active_keys_per_owner: Some(7),
            ..Default::default()
        };
        let settings = Settings::load(&flags).unwrap();
        assert_eq!(settings.server.grpc_addr, "0.0.0.0:6000".parse().unwrap());
        assert_eq!(settings.limits.max_active_keys_per_owner, 7);
        assert_eq!(settings.hot_path.last_used_flush_secs, 5);
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("apikeyd.toml");
        std::fs::write(&file, "grpc_adr = \"0.0.0.0:6000\"\n").unwrap();
        let flags = SettingsArgs {
            config: Some(file),
            ..Default::default()
        };
        let error = Settings::load(&flags).unwrap_err().to_string();
        assert!(error.contains("grpc_adr"), "{error}");
    }

    #[test]
    fn problems_are_explained_and_secrets_never_described() {
        let settings = Settings {
            argon2: Argon2Settings {
                root_key_memory_kib: 1,
                ..Argon2Settings::default()
            },
            limits: LimitSettings {
                max_active_keys_per_owner: 0,
                ..LimitSettings::default()
            },
            database: DatabaseSettings {
                url: Some(DatabaseUrl::from("mysql://root:hunter2@db/keys")),
                ..DatabaseSettings::default()
            },
            ..Settings::default()
        };
        let problems = settings.problems().join("\n");
        assert!(
            problems.contains("root_key_argon2_memory_kib"),
            "{problems}"
        );
        assert!(problems.contains("max_active_keys_per_owner"), "{problems}");
        assert!(problems.contains("database_url"), "{problems}");
        assert!(!problems.contains("hunter2"), "{problems}");
        assert!(!settings.describe().contains("hunter2"));
        assert!(Settings::default().problems().is_empty());
    }

    #[test]
    fn a_bad_envoy_ratelimit_file_is_a_problem_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rl.yaml");
        std::fs::write(
            &file,
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n",
        )
        .unwrap();
        let settings = Settings {
            envoy: EnvoySettings {
                ratelimit_config: Some(file.clone()),
                ..EnvoySettings::default()
            },
            ..Settings::default()
        };
        let problems = settings.problems().join("\n");
        assert!(
            problems.contains(&format!(
                "envoy_ratelimit_config: {}:5: invalid rate limit unit 'fortnight'",
                file.display()
            )),
            "{problems}"
        );
    }

    #[test]
    fn a_leak_report_keys_file_that_does_not_read_is_a_problem_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("github-keys.json");
        std::fs::write(&file, r#"{"public_keys": []}"#).unwrap();
        let missing = dir.path().join("missing.json");

        let problems = [&file, &missing].map(|path| {
            Settings {
                leak_report_keys: Some(path.clone()),
                ..Settings::default()
            }
            .problems()
            .join("\n")
        });

        assert!(
            problems[0].starts_with(&format!(
                "leak_report_keys: {} lists no keys",
                file.display()
            )),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].starts_with(&format!(
                "leak_report_keys: cannot read {}",
                missing.display()
            )),
            "{}",
            problems[1]
        );
    }

    #[test]
    fn database_passwords_are_redacted_when_printed() {
        let url = DatabaseUrl::from("postgres://app:hunter2@db:5432/keys");
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/keys");
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    #[test]
    fn tiers_come_from_the_file_and_default_to_the_seeds() {
        assert_eq!(
            Settings::default()
                .limits
                .tiers()
                .unwrap()
                .resolve(&crate::domain::LimitSource::Tier("pro".into()))[0]
                .limit,
            1_000
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("apikeyd.toml");
        std::fs::write(
            &file,
            "default_tier = \"basic\"\n[tiers]\nbasic = [{ limit = 10, window_secs = 1 }, { limit = 1000, window_secs = 3600, algorithm = \"token_bucket\" }]\nfree = [{ limit = 7, window_secs = 60 }]\n",
        )
        .unwrap();
        let flags = SettingsArgs {
            config: Some(file),
            ..Default::default()
        };
        let tiers = Settings::load(&flags).unwrap().limits.tiers().unwrap();
        let source = crate::domain::LimitSource::Tier("basic".into());
        let basic = tiers.resolve(&source);
        assert_eq!(basic.len(), 2);
        assert_eq!(basic[1].algorithm, Algorithm::TokenBucket);
        let free = crate::domain::LimitSource::Tier("free".into());
        assert_eq!(
            tiers.resolve(&free)[0].limit,
            7,
            "a file tier replaces the built-in one"
        );
        let pro = crate::domain::LimitSource::Tier("pro".into());
        assert_eq!(tiers.resolve(&pro)[0].limit, 1_000, "built-in tiers stay");
    }

    #[test]
    fn passwords_in_the_query_string_are_redacted() {
        let url = DatabaseUrl::from(
            "postgres://app@db/keys?sslmode=verify-full&password=hunter2&SSLPassword=s3cret",
        );
        let shown = url.to_string();
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("sslmode=verify-full"), "{shown}");
        assert!(shown.contains("password=***"), "{shown}");
    }

    #[test]
    fn console_scopes_come_from_the_file_and_are_checked() {
        assert!(Settings::default().console.scopes.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("apikeyd.toml");
        std::fs::write(
            &file,
            "[console]\nscopes = [\"posts:read\", \"not a scope\"]\n",
        )
        .unwrap();
        let flags = SettingsArgs {
            config: Some(file),
            ..Default::default()
        };
        let settings = Settings::load(&flags).unwrap();
        assert_eq!(settings.console.scopes, ["posts:read", "not a scope"]);
        let problems = settings.problems().join("\n");
        assert!(problems.contains("console.scopes"), "{problems}");
        assert!(problems.contains("not a scope"), "{problems}");
        assert!(!problems.contains("posts:read"), "{problems}");
    }

    #[test]
    fn redis_passwords_are_redacted_even_in_a_node_list() {
        let url = RedisUrl::from("redis://:s3cret@a:7000,redis://:s3cret@b:7001");
        assert!(!url.to_string().contains("s3cret"), "{url}");
    }

    #[test]
    fn tls_settings_that_cannot_work_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        let problems = |settings: Settings| settings.problems().join("\n");

        let half = problems(Settings {
            tls: TlsSettings {
                cert: Some(dir.path().join("tls.crt")),
                ..TlsSettings::default()
            },
            ..Settings::default()
        });
        assert!(half.contains("tls_cert and tls_key: give both"), "{half}");

        let ca_alone = problems(Settings {
            tls: TlsSettings {
                client_ca: Some(dir.path().join("ca.crt")),
                ..TlsSettings::default()
            },
            ..Settings::default()
        });
        assert!(
            ca_alone.contains("needs tls_cert and tls_key"),
            "{ca_alone}"
        );

        let missing = problems(Settings {
            tls: TlsSettings {
                cert: Some(dir.path().join("tls.crt")),
                key: Some(dir.path().join("tls.key")),
                client_ca: None,
            },
            ..Settings::default()
        });
        assert!(missing.contains("cannot read"), "{missing}");
        assert!(missing.contains("tls.crt"), "{missing}");

        let mtls = problems(Settings {
            data_plane_auth: DataPlaneAuth::Mtls,
            ..Settings::default()
        });
        assert!(
            mtls.contains("data_plane_auth = mtls needs tls_client_ca"),
            "{mtls}"
        );

        let redis_ca = problems(Settings {
            redis: RedisSettings {
                url: Some(RedisUrl::from("redis://cache:6379")),
                ca_cert: Some(dir.path().join("redis-ca.crt")),
                ..RedisSettings::default()
            },
            ..Settings::default()
        });
        assert!(
            redis_ca.contains("redis_ca_cert: needs a rediss://"),
            "{redis_ca}"
        );
    }
}
