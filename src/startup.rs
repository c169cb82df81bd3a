//! Wiring: `Application::build` connects, migrates, bootstraps and binds
//! (port 0 allowed, for tests); `run_until_stopped` serves until the given
//! future resolves, then drains within the grace period.

mod preface;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};

use crate::access::RootKeyGate;
use crate::audit::AuditTrail;
use crate::authority::{AuthorityPolicy, KeyAuthority};
use crate::config::{DataPlaneAuth, DatabaseTarget, Settings};
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
use crate::grpc::{
    AuditApi, DataPlaneGuard, ImportApi, KeyApi, RateLimitApi, RootKeyApi, ServiceCredential,
    ValidationApi, ValidationServer, pb,
};
use crate::http::leaked_keys::LeakEndpoint;
use crate::http::{ConnectionAddrs, GrpcServices};
use crate::invalidation::{Invalidation, InvalidationBus, InvalidationSink};
use crate::key_cache::KeyCache;
use crate::last_used::LastUsedTracker;
use crate::leak_report::LeakReports;
use crate::leak_report::github::SigningKeySource;
use crate::ratelimit::RateLimiter;
use crate::root_keys::RootKeys;
use crate::secrets::SecretHasher;
use crate::store::{self, KeyStore};
use crate::telemetry::metrics::{self, GrpcMetricsLayer, RpcLabels};
use crate::telemetry::tracing_context;
use crate::tls::{Listener, ServerTls, TlsIncoming};

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
    /// The database the settings name, for the serving log line.
    database: DatabaseTarget,
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
    /// The listeners' TLS, when a certificate is configured.
    tls: Option<Arc<ServerTls>>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let database = settings.database.target().map_err(anyhow::Error::msg)?;
        let db = database
            .connect()
            .await
            .context("cannot connect to the database")?;
        let argon2_budget = settings.argon2.budget();
        let hasher = Arc::new(SecretHasher::new(settings.argon2.costs(), argon2_budget)?);
        tracing::info!(
            max_in_flight = argon2_budget.max_in_flight,
            max_queued = argon2_budget.max_queued,
            "argon2 budget"
        );
        store::prepare(&db, None)
            .await
            .context("cannot migrate the database")?;
        if let Some(path) =
            crate::bootstrap::bootstrap_root_key(&db, &hasher, &settings.database.data_dir).await?
        {
            tracing::warn!(
                path = %path.display(),
                "created the first root key (all permissions) and wrote it to this file, readable only by its owner; \
                 keep it somewhere safe and delete the file"
            );
        }
        let tls = match settings.tls.files().map_err(anyhow::Error::msg)? {
            Some(files) => Some(Arc::new(
                ServerTls::load(files).context("cannot set up TLS")?,
            )),
            None => None,
        };
        let listener = TcpListener::bind(settings.server.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.server.grpc_addr))?;
        let http_listener = TcpListener::bind(settings.server.http_addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.server.http_addr))?;
        metrics::prometheus();
        let store = KeyStore::new(db.clone());
        let last_used = Arc::new(LastUsedTracker::default());
        let key_cache = Arc::new(KeyCache::new(
            settings.hot_path.key_cache_max_mib * 1024 * 1024,
            KEY_CACHE_TTL,
            Duration::from_secs(settings.hot_path.key_cache_degraded_ttl_secs),
        ));
        // With Redis, replicas tell each other what changed and the
        // follower decides how far the cache is trusted. Without it, one
        // process owning an SQLite file sees every change itself; replicas
        // sharing a PostgreSQL do not, so their entries stay short-lived.
        let redis = settings.redis.target()?;
        let invalidation_bus = match &redis {
            Some(target) => Some(InvalidationBus::over(target, &settings.redis)?),
            None => {
                key_cache.set_invalidations_flowing(database.single_process());
                None
            }
        };
        let limiter = Arc::new(settings.limiter()?);
        let tiers = Arc::new(settings.limits.tiers().context("invalid tiers")?);
        let authority = Arc::new(
            KeyAuthority::new(
                store.clone(),
                hasher.clone(),
                last_used.clone(),
                key_cache.clone(),
                limiter.clone(),
                tiers,
                AuthorityPolicy {
                    max_active_keys_per_owner: settings.limits.max_active_keys_per_owner,
                },
            )
            .publishing_to(invalidation_bus.clone()),
        );
        let gate = RootKeyGate::new(db.clone(), hasher.clone());
        let root_keys = Arc::new(
            RootKeys::new(db.clone(), hasher, gate.clone()).publishing_to(invalidation_bus.clone()),
        );
        let envoy_routes = Arc::new(settings.envoy.route_table()?);
        let envoy_ratelimit = match &settings.envoy.ratelimit_config {
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
            tls,
            database,
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

    /// Serves until `stop` resolves, then drains, in named steps: health,
    /// background tasks, the two listeners, and after `stop` the drain and
    /// the last writes.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (health, health_service) = start_health().await;
        let background = self.spawn_background(&health).await;
        let drain = DrainSignal::default();
        let api = self.api_services();
        let metrics_layer = GrpcMetricsLayer::new(RpcLabels::served_contract()?);
        let http_app = self.http_app(api.clone(), &metrics_layer, &health);
        let grpc_router = self.grpc_router(api, metrics_layer, health_service)?;
        self.log_serving();
        let leftovers = self.leftovers();
        let grace = self.settings.server.shutdown_grace();
        let mut http = serve_http(self.http_listener, self.tls.clone(), http_app, &drain);
        let mut grpc = serve_grpc(self.listener, self.tls, grpc_router, &drain);

        tokio::select! {
            finished = &mut grpc => {
                finished??;
                anyhow::bail!("the gRPC server stopped on its own");
            }
            finished = &mut http => {
                finished??;
                anyhow::bail!("the HTTP server stopped on its own");
            }
            () = stop => {}
        }

        drain_listeners(&health, drain, grace, grpc, http).await?;
        leftovers.write(background).await;
        tracing::info!("stopped");
        Ok(())
    }

    /// The tasks that run beside the listeners, each stopped after the drain.
    async fn spawn_background(&self, health: &HealthReporter) -> Background {
        let mut tasks = vec![
            tokio::spawn(metrics::run_upkeep()),
            tokio::spawn(watch_database(self.db.clone(), health.clone())),
            tokio::spawn(flush_last_used_periodically(
                self.last_used.clone(),
                self.store.clone(),
                Duration::from_secs(self.settings.hot_path.last_used_flush_secs.max(1)),
            )),
            tokio::spawn(crate::audit::prune_periodically(
                self.db.clone(),
                self.settings.audit_retention_days,
            )),
        ];
        if let Some(source) = &self.envoy_ratelimit {
            tasks.push(tokio::spawn(source.clone().watch()));
        }
        if let Some(tls) = &self.tls {
            tasks.push(tokio::spawn(tls.clone().watch()));
        }
        let publisher = self.invalidation_bus.as_ref().map(|bus| {
            tasks.push(tokio::spawn(bus.clone().follow_forever(
                Arc::new(Caches {
                    keys: self.key_cache.clone(),
                    root_keys: self.gate.clone(),
                }),
                self.limiter.watch_reachable(),
            )));
            bus.spawn_publisher()
        });
        if self.limiter.is_remote() {
            health
                .set_service_status(REDIS_HEALTH, ServingStatus::Serving)
                .await;
            tasks.push(tokio::spawn(self.limiter.clone().probe_periodically()));
            tasks.push(tokio::spawn(
                self.limiter.clone().flush_usage_periodically(),
            ));
            tasks.push(tokio::spawn(watch_limiter(
                self.limiter.clone(),
                health.clone(),
            )));
        }
        Background { tasks, publisher }
    }

    /// The HTTP listener's application: its routes and the health service.
    fn http_app(
        &self,
        api: Routes,
        metrics_layer: &GrpcMetricsLayer,
        health: &HealthReporter,
    ) -> IntoMakeServiceWithConnectInfo<axum::Router, ConnectionAddrs> {
        http_routes(
            api,
            metrics_layer,
            &self.settings.console,
            self.leak_endpoint(),
        )
        .merge(crate::http::health::router(health.clone()))
        .into_make_service_with_connect_info::<ConnectionAddrs>()
    }

    /// The gRPC listener's services: our API, health, reflection, the
    /// import stream and Envoy's services.
    fn grpc_router(
        &self,
        api: Routes,
        metrics_layer: GrpcMetricsLayer,
        health_service: HealthServer<impl Health>,
    ) -> anyhow::Result<Router<Stack<GrpcMetricsLayer, Identity>>> {
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
        Ok(Server::builder()
            .max_concurrent_streams(self.settings.server.max_concurrent_streams)
            // A peer that stops answering PINGs (gone, or a slowloris past
            // its preface) loses its connection and what it held.
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
            .timeout(self.settings.server.default_deadline())
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
            )))
    }

    /// The one line that says the server is up: addresses, TLS, database
    /// and limiter, credentials redacted.
    fn log_serving(&self) {
        tracing::info!(
            grpc = %self.grpc_addr(),
            http = %self.http_addr(),
            tls = match &self.tls {
                None => "off (plaintext)",
                Some(tls) if tls.mutual() => "on, client certificates verified (mutual TLS)",
                Some(_) => "on",
            },
            database = %self.database,
            limiter = %self.settings.redis.url.as_ref().map_or_else(
                || "in-process (this replica only)".to_owned(),
                |url| format!(
                    "redis{} at {url}, fail-{}",
                    if self.settings.redis.cluster { " cluster" } else { "" },
                    match self.settings.redis.failure_policy {
                        crate::ratelimit::FailurePolicy::Open => "open",
                        crate::ratelimit::FailurePolicy::Closed => "closed",
                    }
                ),
            ),
            "apikeyd is serving"
        );
    }

    fn leftovers(&self) -> Leftovers {
        Leftovers {
            invalidation_bus: self.invalidation_bus.clone(),
            limiter: self.limiter.clone(),
            last_used: self.last_used.clone(),
            store: self.store.clone(),
        }
    }
}

/// The health service, every entry SERVING.
async fn start_health() -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::Serving).await;
    // Liveness says only "the process answers": it stays SERVING through
    // database outages and draining, so an orchestrator restarts a stuck
    // process but not a healthy one waiting for its database.
    reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    (reporter, service)
}

/// One signal that drains both listeners.
struct DrainSignal {
    sender: tokio::sync::watch::Sender<()>,
}

impl Default for DrainSignal {
    fn default() -> Self {
        DrainSignal {
            sender: tokio::sync::watch::channel(()).0,
        }
    }
}

impl DrainSignal {
    /// Resolves when the drain starts.
    fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.sender.subscribe();
        async move {
            let _ = receiver.changed().await;
        }
    }

    fn start(&self) {
        self.sender.send_replace(());
    }
}

fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    app: IntoMakeServiceWithConnectInfo<axum::Router, ConnectionAddrs>,
    drain: &DrainSignal,
) -> JoinHandle<std::io::Result<()>> {
    match tls {
        Some(tls) => {
            let incoming = TlsIncoming::new(listener, tls, Listener::Http);
            let http = axum::serve(incoming, app).with_graceful_shutdown(drain.started());
            tokio::spawn(async move { http.await })
        }
        None => {
            let http = axum::serve(listener, app).with_graceful_shutdown(drain.started());
            tokio::spawn(async move { http.await })
        }
    }
}

fn serve_grpc(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    router: Router<Stack<GrpcMetricsLayer, Identity>>,
    drain: &DrainSignal,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    match tls {
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
            TlsIncoming::new(listener, tls, Listener::Grpc),
            drain.started(),
        )),
        // Without TCP_NODELAY a response written in pieces waits out
        // Nagle's delay (about 40 ms) on the client's delayed ACK; a
        // connection that sends no preface is closed (see `preface`; over
        // TLS the handshake's own deadline does this).
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            futures_util::StreamExt::map(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                |accepted| accepted.map(preface::PrefaceDeadline::new),
            ),
            drain.started(),
        )),
    }
}

/// Drain: tell load balancers first, then stop accepting and let in-flight
/// calls finish within the grace period.
async fn drain_listeners(
    health: &HealthReporter,
    drain: DrainSignal,
    grace: Duration,
    mut grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    mut http: JoinHandle<std::io::Result<()>>,
) -> anyhow::Result<()> {
    set_health(health, ServingStatus::NotServing).await;
    drain.start();
    match tokio::time::timeout(grace, &mut grpc).await {
        Ok(finished) => finished??,
        Err(_) => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "grace period ended with calls still in flight; cutting them short"
            );
            grpc.abort();
        }
    }
    if tokio::time::timeout(Duration::from_secs(1), &mut http)
        .await
        .is_err()
    {
        http.abort();
    }
    Ok(())
}

/// The tasks beside the listeners, and the invalidation publisher, which
/// is finished rather than stopped.
struct Background {
    tasks: Vec<JoinHandle<()>>,
    publisher: Option<JoinHandle<()>>,
}

/// What is written after the drain: queued invalidations, usage, and
/// last_used_at.
struct Leftovers {
    invalidation_bus: Option<Arc<InvalidationBus>>,
    limiter: Arc<RateLimiter>,
    last_used: Arc<LastUsedTracker>,
    store: KeyStore,
}

impl Leftovers {
    /// Stops the background tasks, then writes what they had not.
    async fn write(self, background: Background) {
        for task in background.tasks {
            task.abort();
        }
        if let (Some(bus), Some(publisher)) = (&self.invalidation_bus, background.publisher) {
            bus.finish(publisher, INVALIDATION_DRAIN).await;
        }
        self.limiter.flush_usage().await;
        if let Err(e) = self.last_used.flush(&self.store).await {
            tracing::warn!(error = %e, "could not write the last batch of last_used_at");
        }
    }
}

/// A data-plane service, behind a service credential when configured.
fn data_plane<S>(
    service: S,
    auth: DataPlaneAuth,
    gate: &RootKeyGate,
    permission: Permission,
) -> ServiceCredential<S> {
    let guard = match auth {
        DataPlaneAuth::None => DataPlaneGuard::Open,
        DataPlaneAuth::RootKey => DataPlaneGuard::RootKey(gate.clone()),
        DataPlaneAuth::Mtls => DataPlaneGuard::ClientCertificate,
    };
    ServiceCredential::new(service, guard, permission)
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
            usize::try_from(self.settings.server.max_request_bytes).unwrap_or(usize::MAX);
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
            ValidationServer::new(
                ValidationApi {
                    authority: self.authority.clone(),
                },
                max_request,
            ),
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
/// GitHub's leaked-key reports and the web console (and, added where the
/// health reporter is, the health service for HTTP probes). Calls over HTTP pass
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
            axum::routing::get(|| async { metrics::render() }),
        )
        .merge(crate::http::leaked_keys::router(leaks))
        .merge(crate::http::router(api))
        .merge(crate::console::routes(console))
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
