//! Wiring: `Application::build` connects, migrates, bootstraps and binds
//! (port 0 allowed, for tests); `run_until_stopped` serves until the given
//! future resolves, then drains within the grace period.

mod preface;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::access::RootKeyGate;
use crate::audit::AuditTrail;
use crate::authority::{AuthorityPolicy, KeyAuthority};
use crate::config::{DataPlaneAuth, Settings};
use crate::domain::Permission;
use crate::envoy;
use crate::envoy::ext_authz::ExtAuthzApi;
use crate::envoy::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use crate::envoy::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer as EnvoyRateLimitServer;
use crate::envoy::rate_limit_service::EnvoyRateLimitApi;
use crate::envoy::ratelimit_source::RateLimitConfigSource;
use crate::envoy::routes::RouteTable;
use crate::grpc::pb::audit_service_server::AuditServiceServer;
use crate::grpc::pb::import_service_server::ImportServiceServer;
use crate::grpc::pb::key_service_server::KeyServiceServer;
use crate::grpc::pb::rate_limit_service_server::RateLimitServiceServer;
use crate::grpc::pb::root_key_service_server::RootKeyServiceServer;
use crate::grpc::pb::validation_service_server::ValidationServiceServer;
use crate::grpc::{
    AuditApi, ImportApi, KeyApi, RateLimitApi, RootKeyApi, ServiceCredential, ValidationApi, pb,
};
use crate::http::leaked_keys::LeakEndpoint;
use crate::http::{ConnectionAddrs, GrpcServices};
use crate::invalidation::{Invalidation, InvalidationBus, InvalidationSink};
use crate::key_cache::KeyCache;
use crate::last_used::LastUsedTracker;
use crate::leak_report::LeakReports;
use crate::leak_report::github::SigningKeySource;
use crate::ratelimit::memory::MemoryStore;
use crate::ratelimit::redis::RedisStore;
use crate::ratelimit::store::RateLimitStore;
use crate::ratelimit::{Keyspace, LimiterSettings, RateLimiter};
use crate::root_keys::RootKeys;
use crate::secrets::SecretHasher;
use crate::store::{self, KeyStore};
use crate::telemetry::metrics::{self, GrpcMetricsLayer, RpcLabels};
use crate::telemetry::tracing_context;

/// The backstop on cached key records, however invalidations fare: it
/// bounds staleness when a change never reaches the stream. A reload costs
/// one database read (the verified digest is kept while the hash is the same).
const KEY_CACHE_TTL: Duration = Duration::from_secs(60);
/// At shutdown, the longest wait for Redis to take queued invalidations.
const INVALIDATION_DRAIN: Duration = Duration::from_secs(2);
/// How often the database is pinged for the health service.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How often the gRPC listener PINGs a quiet HTTP/2 connection, and how long
/// it waits for the answer before closing it.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Services whose health follows the database's.
const SERVICES: [&str; 8] = [
    "apikeyd.v1.AuditService",
    "apikeyd.v1.ImportService",
    "apikeyd.v1.KeyService",
    "apikeyd.v1.RateLimitService",
    "apikeyd.v1.RootKeyService",
    "apikeyd.v1.ValidationService",
    "envoy.service.auth.v3.Authorization",
    "envoy.service.ratelimit.v3.RateLimitService",
];
/// The health name for liveness probes.
pub const LIVENESS: &str = "liveness";
/// The health entry of the rate-limit store, present when it is Redis:
/// NOT_SERVING during an outage while the services answer by the policy.
const REDIS_HEALTH: &str = "redis";

pub struct Application {
    settings: Settings,
    /// Key records for Validate; the invalidation follower feeds it.
    key_cache: Arc<KeyCache>,
    /// Present when replicas share Redis.
    invalidation_bus: Option<Arc<InvalidationBus>>,
    listener: TcpListener,
    http_listener: TcpListener,
    db: DatabaseConnection,
    store: KeyStore,
    authority: Arc<KeyAuthority>,
    root_keys: Arc<RootKeys>,
    gate: RootKeyGate,
    last_used: Arc<LastUsedTracker>,
    limiter: Arc<RateLimiter>,
    /// Scopes and cost of ext_authz requests whose route names none.
    envoy_routes: Arc<RouteTable>,
    /// envoyproxy/ratelimit's configuration, when one is given.
    envoy_ratelimit: Option<Arc<RateLimitConfigSource>>,
    /// Leaked-key reports, from GitHub (over HTTP) and internal scanners.
    leaks: Arc<LeakReports>,
    /// GitHub's signing keys, when leak reports from GitHub are taken.
    leak_report_keys: Option<Arc<SigningKeySource>>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let db = store::connect(
            settings.database_url.as_ref().map(|u| u.expose()),
            &settings.data_dir,
        )
        .await
        .context("cannot connect to the database")?;
        let argon2_budget = settings.argon2_budget();
        let hasher = Arc::new(SecretHasher::new(settings.argon2_costs(), argon2_budget)?);
        tracing::info!(
            max_in_flight = argon2_budget.max_in_flight,
            max_queued = argon2_budget.max_queued,
            "argon2 budget"
        );
        store::prepare(&db, None)
            .await
            .context("cannot migrate the database")?;
        if let Some(path) =
            crate::bootstrap::bootstrap_root_key(&db, &hasher, &settings.data_dir).await?
        {
            tracing::warn!(
                path = %path.display(),
                "created the first root key (all permissions) and wrote it to this file, readable only by its owner; \
                 keep it somewhere safe and delete the file"
            );
        }
        let listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.grpc_addr))?;
        let http_listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
        metrics::prometheus();
        let store = KeyStore::new(db.clone());
        let last_used = Arc::new(LastUsedTracker::default());
        let key_cache = Arc::new(KeyCache::new(
            settings.key_cache_max_mib * 1024 * 1024,
            KEY_CACHE_TTL,
            Duration::from_secs(settings.key_cache_degraded_ttl_secs),
        ));
        // With Redis, replicas tell each other what changed and the
        // follower decides how far the cache is trusted. Without it, one
        // process owning an SQLite file sees every change itself; replicas
        // sharing a PostgreSQL do not, so their entries stay short-lived.
        let invalidation_bus = match &settings.redis_url {
            Some(url) => Some(Arc::new(
                InvalidationBus::connect(
                    url.expose(),
                    settings.redis_cluster,
                    &settings.redis_key_prefix,
                    Duration::from_millis(settings.redis_timeout_ms),
                )
                .with_context(|| format!("invalid Redis URL {url}"))?,
            )),
            None => {
                let single_process = settings
                    .database_url
                    .as_ref()
                    .is_none_or(|url| url.expose().starts_with("sqlite:"));
                key_cache.set_invalidations_flowing(single_process);
                None
            }
        };
        let limiter = Arc::new(build_limiter(&settings)?);
        let tiers = Arc::new(settings.tiers().context("invalid tiers")?);
        let authority = Arc::new(
            KeyAuthority::new(
                store.clone(),
                hasher.clone(),
                last_used.clone(),
                key_cache.clone(),
                limiter.clone(),
                tiers,
                AuthorityPolicy {
                    max_active_keys_per_owner: settings.max_active_keys_per_owner,
                },
            )
            .publishing_to(invalidation_bus.clone()),
        );
        let gate = RootKeyGate::new(db.clone(), hasher.clone());
        let root_keys = Arc::new(
            RootKeys::new(db.clone(), hasher, gate.clone()).publishing_to(invalidation_bus.clone()),
        );
        let envoy_routes = Arc::new(RouteTable::parse(&settings.envoy_routes)?);
        let envoy_ratelimit = match &settings.envoy_ratelimit_config {
            Some(path) => Some(Arc::new(RateLimitConfigSource::load(path)?)),
            None => None,
        };
        let leak_report_keys = match &settings.leak_report_keys {
            Some(path) => Some(Arc::new(SigningKeySource::load(path)?)),
            None => None,
        };
        Ok(Application {
            leaks: Arc::new(LeakReports::new(authority.clone(), root_keys.clone())),
            leak_report_keys,
            settings,
            listener,
            http_listener,
            db,
            store,
            authority,
            root_keys,
            gate,
            last_used,
            limiter,
            key_cache,
            invalidation_bus,
            envoy_routes,
            envoy_ratelimit,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (grpc_addr, http_addr) = (self.grpc_addr(), self.http_addr());
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        set_health(&health_reporter, ServingStatus::Serving).await;
        // Liveness says only "the process answers": it stays SERVING through
        // database outages and draining, so an orchestrator restarts a stuck
        // process but not a healthy one waiting for its database.
        health_reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(envoy::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(envoy::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let mut background = vec![
            tokio::spawn(metrics::run_upkeep()),
            tokio::spawn(watch_database(self.db.clone(), health_reporter.clone())),
            tokio::spawn(flush_last_used_periodically(
                self.last_used.clone(),
                self.store.clone(),
                Duration::from_secs(self.settings.last_used_flush_secs.max(1)),
            )),
            tokio::spawn(crate::audit::prune_periodically(
                self.db.clone(),
                self.settings.audit_retention_days,
            )),
        ];
        if let Some(source) = &self.envoy_ratelimit {
            background.push(tokio::spawn(source.clone().watch()));
        }
        let invalidation_publisher = self.invalidation_bus.as_ref().map(|bus| {
            background.push(tokio::spawn(bus.clone().follow_forever(
                Arc::new(Caches {
                    keys: self.key_cache.clone(),
                    root_keys: self.gate.clone(),
                }),
                self.limiter.watch_reachable(),
            )));
            bus.spawn_publisher()
        });
        if self.limiter.is_remote() {
            health_reporter
                .set_service_status(REDIS_HEALTH, ServingStatus::Serving)
                .await;
            background.push(tokio::spawn(self.limiter.clone().probe_periodically()));
            background.push(tokio::spawn(
                self.limiter.clone().flush_usage_periodically(),
            ));
            background.push(tokio::spawn(watch_limiter(
                self.limiter.clone(),
                health_reporter.clone(),
            )));
        }

        // One signal drains both listeners.
        let (drain_tx, drain_rx) = tokio::sync::watch::channel(());
        let drained = move || {
            let mut drain_rx = drain_rx.clone();
            async move {
                let _ = drain_rx.changed().await;
            }
        };
        let api = self.api_services();
        let leaks = self.leak_endpoint();
        let metrics_layer = GrpcMetricsLayer::new(RpcLabels::served_contract()?);
        let http = axum::serve(
            self.http_listener,
            http_routes(api.clone(), &metrics_layer, &self.settings.console, leaks)
                .into_make_service_with_connect_info::<ConnectionAddrs>(),
        )
        .with_graceful_shutdown(drained());
        let mut http = tokio::spawn(async move { http.await });
        let server = Server::builder()
            .max_concurrent_streams(self.settings.grpc_max_concurrent_streams)
            // A peer that stops answering PINGs (gone, or a slowloris past
            // its preface) loses its connection and what it held.
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
            .timeout(Duration::from_millis(
                self.settings.grpc_default_deadline_ms,
            ))
            .trace_fn(tracing_context::rpc_span)
            .layer(metrics_layer)
            .add_routes(api)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            // Streaming both ways: gRPC only (Connect and gRPC-Web carry
            // unary calls here).
            .add_service(ImportServiceServer::new(ImportApi {
                authority: self.authority.clone(),
                gate: self.gate.clone(),
                audit: AuditTrail::new(self.db.clone()),
            }))
            // Envoy's services: gRPC only (Envoy speaks nothing else to them),
            // behind the same service credential as Validate and CheckRateLimit.
            .add_service(data_plane(
                AuthorizationServer::new(ExtAuthzApi {
                    authority: self.authority.clone(),
                    routes: self.envoy_routes.clone(),
                }),
                self.settings.data_plane_auth,
                &self.gate,
                Permission::Validate,
            ))
            .add_service(data_plane(
                EnvoyRateLimitServer::new(EnvoyRateLimitApi {
                    limiter: self.limiter.clone(),
                    config: self.envoy_ratelimit.clone(),
                }),
                self.settings.data_plane_auth,
                &self.gate,
                Permission::RateLimit,
            ))
            // Without TCP_NODELAY a response written in pieces waits out
            // Nagle's delay (about 40 ms) on the client's delayed ACK; a
            // connection that sends no preface is closed (see `preface`).
            .serve_with_incoming_shutdown(
                futures_util::StreamExt::map(
                    TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                    |accepted| accepted.map(preface::PrefaceDeadline::new),
                ),
                drained(),
            );
        let mut server = tokio::spawn(server);
        tracing::info!(
            grpc = %grpc_addr,
            http = %http_addr,
            database = %self.settings.database_url.as_ref().map_or_else(
                || format!("sqlite (embedded) in {}", self.settings.data_dir.display()),
                |url| url.to_string(),
            ),
            limiter = %self.settings.redis_url.as_ref().map_or_else(
                || "in-process (this replica only)".to_owned(),
                |url| format!(
                    "redis{} at {url}, fail-{}",
                    if self.settings.redis_cluster { " cluster" } else { "" },
                    match self.settings.redis_failure_policy {
                        crate::ratelimit::FailurePolicy::Open => "open",
                        crate::ratelimit::FailurePolicy::Closed => "closed",
                    }
                ),
            ),
            "apikeyd is serving"
        );

        tokio::select! {
            finished = &mut server => {
                finished??;
                anyhow::bail!("the gRPC server stopped on its own");
            }
            finished = &mut http => {
                finished??;
                anyhow::bail!("the HTTP server stopped on its own");
            }
            () = stop => {}
        }

        // Drain: tell load balancers first, then stop accepting and let
        // in-flight calls finish within the grace period.
        set_health(&health_reporter, ServingStatus::NotServing).await;
        drain_tx.send_replace(());
        let grace = Duration::from_secs(self.settings.shutdown_grace_secs);
        match tokio::time::timeout(grace, &mut server).await {
            Ok(finished) => finished??,
            Err(_) => {
                tracing::warn!(
                    grace_secs = grace.as_secs(),
                    "grace period ended with calls still in flight; cutting them short"
                );
                server.abort();
            }
        }
        if tokio::time::timeout(Duration::from_secs(1), &mut http)
            .await
            .is_err()
        {
            http.abort();
        }
        for task in background {
            task.abort();
        }
        if let (Some(bus), Some(publisher)) = (&self.invalidation_bus, invalidation_publisher) {
            bus.finish(publisher, INVALIDATION_DRAIN).await;
        }
        self.limiter.flush_usage().await;
        if let Err(e) = self.last_used.flush(&self.store).await {
            tracing::warn!(error = %e, "could not write the last batch of last_used_at");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// A data-plane service, behind a service credential when configured.
fn data_plane<S>(
    service: S,
    auth: DataPlaneAuth,
    gate: &RootKeyGate,
    permission: Permission,
) -> ServiceCredential<S> {
    let gate = match auth {
        DataPlaneAuth::None => None,
        DataPlaneAuth::RootKey => Some(gate.clone()),
    };
    ServiceCredential::new(service, gate, permission)
}

/// What the invalidation bus feeds: the key cache, and the root-key records
/// of the data plane. The caches and the bus do not know each other.
struct Caches {
    keys: Arc<KeyCache>,
    root_keys: RootKeyGate,
}

impl InvalidationSink for Caches {
    fn apply(&self, change: &Invalidation) {
        match change {
            Invalidation::Key(id) => self.keys.evict(id),
            Invalidation::Owner(owner_id) => self.keys.evict_owner(owner_id),
            Invalidation::RootKey(_) => self.root_keys.root_key_revoked(),
            Invalidation::ImportedKeys => self.keys.forget_imported_lookups(),
            Invalidation::All => {
                self.keys.evict_all();
                self.root_keys.root_key_revoked();
            }
        }
    }

    fn set_trusted(&self, trusted: bool) {
        self.keys.set_invalidations_flowing(trusted);
    }
}

impl Application {
    /// Our API's services, served on both listeners: over gRPC, and over
    /// HTTP/JSON by delegation to these same services.
    fn api_services(&self) -> Routes {
        let max_request =
            usize::try_from(self.settings.grpc_max_request_bytes).unwrap_or(usize::MAX);
        Routes::new(
            KeyServiceServer::new(KeyApi {
                authority: self.authority.clone(),
                gate: self.gate.clone(),
                audit: AuditTrail::new(self.db.clone()),
                leaks: self.leaks.clone(),
            })
            .max_decoding_message_size(max_request),
        )
        .add_service(
            RootKeyServiceServer::new(RootKeyApi {
                root_keys: self.root_keys.clone(),
                gate: self.gate.clone(),
                audit: AuditTrail::new(self.db.clone()),
            })
            .max_decoding_message_size(max_request),
        )
        .add_service(
            AuditServiceServer::new(AuditApi {
                gate: self.gate.clone(),
                audit: AuditTrail::new(self.db.clone()),
            })
            .max_decoding_message_size(max_request),
        )
        .add_service(data_plane(
            ValidationServiceServer::new(ValidationApi {
                authority: self.authority.clone(),
            })
            .max_decoding_message_size(max_request),
            self.settings.data_plane_auth,
            &self.gate,
            Permission::Validate,
        ))
        .add_service(data_plane(
            RateLimitServiceServer::new(RateLimitApi {
                limiter: self.limiter.clone(),
            })
            .max_decoding_message_size(max_request),
            self.settings.data_plane_auth,
            &self.gate,
            Permission::RateLimit,
        ))
    }
}

impl Application {
    fn leak_endpoint(&self) -> LeakEndpoint {
        LeakEndpoint {
            reports: self.leaks.clone(),
            signing_keys: self.leak_report_keys.clone(),
        }
    }
}

/// The HTTP listener's routes: Prometheus metrics, the API over HTTP/JSON,
/// GitHub's leaked-key reports and the web console. Calls over HTTP pass
/// the gRPC metrics layer like calls over gRPC.
fn http_routes(
    api: Routes,
    metrics_layer: &GrpcMetricsLayer,
    console: &crate::config::ConsoleSettings,
    leaks: LeakEndpoint,
) -> axum::Router {
    let api = GrpcServices::new(tower::Layer::layer(metrics_layer, api));
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async { metrics::prometheus().render() }),
        )
        .merge(crate::http::leaked_keys::router(leaks))
        .merge(crate::http::router(api))
        .merge(crate::console::routes(console))
}

/// Redis when a URL is configured, else the in-process store.
pub(crate) fn build_limiter(settings: &Settings) -> anyhow::Result<RateLimiter> {
    let limiter = LimiterSettings {
        policy: settings.redis_failure_policy,
        default_wait: Duration::from_millis(settings.redis_timeout_ms.max(1)),
        probe_timeout: Duration::from_millis(settings.redis_probe_timeout_ms.max(1)),
        retention: settings.usage_retention(),
    };
    let store: Arc<dyn RateLimitStore> = match &settings.redis_url {
        Some(url) => Arc::new(
            RedisStore::new(url.expose(), settings.redis_cluster, limiter.probe_timeout)
                .with_context(|| format!("invalid Redis URL {url}"))?,
        ),
        None => Arc::new(MemoryStore::default()),
    };
    Ok(RateLimiter::new(
        store,
        Keyspace::new(&settings.redis_key_prefix)?,
        limiter,
    ))
}

/// Mirrors the limiter's reachability into the `redis` health entry.
async fn watch_limiter(limiter: Arc<RateLimiter>, reporter: HealthReporter) {
    let mut reachable = limiter.watch_reachable();
    while reachable.changed().await.is_ok() {
        let status = if *reachable.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status(REDIS_HEALTH, status).await;
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// NOT_SERVING while the database is unreachable, SERVING again once it answers.
async fn watch_database(db: DatabaseConnection, reporter: HealthReporter) {
    let mut healthy = true;
    let mut ticks = tokio::time::interval(HEALTH_PROBE_INTERVAL);
    loop {
        ticks.tick().await;
        let now_healthy = tokio::time::timeout(HEALTH_PROBE_INTERVAL, db.ping())
            .await
            .is_ok_and(|pinged| pinged.is_ok());
        if now_healthy != healthy {
            if now_healthy {
                tracing::info!("database reachable again; health is SERVING");
                set_health(&reporter, ServingStatus::Serving).await;
            } else {
                tracing::warn!("database unreachable; health is NOT_SERVING");
                set_health(&reporter, ServingStatus::NotServing).await;
            }
            healthy = now_healthy;
        }
    }
}

async fn flush_last_used_periodically(
    tracker: Arc<LastUsedTracker>,
    store: KeyStore,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        if let Err(e) = tracker.flush(&store).await {
            tracing::warn!(error = %e, "could not write last_used_at; will retry");
        }
    }
}
