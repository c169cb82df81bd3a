//! The limiter side of the harness: a test server on each limiter backend
//! (in-process, the shared Redis, or a three-master Redis Cluster the test
//! starts), Redis servers a test owns (to stop and start them), and typed
//! helpers for limits.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apikeyd::config::{RedisUrl, Settings};
use apikeyd::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use apikeyd::grpc::pb::{self, RateLimitAlgorithm};
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::helpers::{Backend, TestApp, connect, create_request, spawn_app_with};

/// Which rate-limit store a test server uses; every limiter behaviour test runs on all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limiter {
    InProcess,
    Redis,
    Cluster,
}

/// The shared Redis `scripts/test` provides (or starts).
pub fn shared_redis_url() -> String {
    std::env::var("APIKEYD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    use rand_core::{OsRng, RngCore};
    format!("{prefix}-{:012x}", OsRng.next_u64() & 0xffff_ffff_ffff)
}

pub struct LimitedApp {
    pub app: TestApp,
    pub limits: RateLimitServiceClient<Channel>,
    /// Every Redis key this server writes starts with it.
    pub prefix: String,
    /// The Redis (or first cluster node) it uses.
    pub redis_url: Option<String>,
    /// The test's own cluster, stopped when the app is dropped.
    _cluster: Option<RedisCluster>,
}

pub async fn spawn_limited_app(limiter: Limiter) -> LimitedApp {
    spawn_limited_app_with(limiter, |_| {}).await
}

pub async fn spawn_limited_app_with(
    limiter: Limiter,
    adjust: impl FnOnce(&mut Settings),
) -> LimitedApp {
    let prefix = unique("apikeyd-test");
    let (cluster, urls) = match limiter {
        Limiter::InProcess => (None, None),
        Limiter::Redis => (None, Some(shared_redis_url())),
        Limiter::Cluster => {
            let cluster = RedisCluster::start();
            let urls = cluster.urls();
            (Some(cluster), Some(urls))
        }
    };
    let prefix_for_settings = prefix.clone();
    let urls_for_settings = urls.clone();
    let app = spawn_app_with(Backend::Sqlite, move |settings| {
        settings.redis.url = urls_for_settings.as_deref().map(RedisUrl::from);
        settings.redis.cluster = limiter == Limiter::Cluster;
        settings.redis.key_prefix = prefix_for_settings;
        // Generous: on a loaded two-core CI machine answers come late, and a
        // call without a deadline would fail UNAVAILABLE past this wait.
        settings.redis.timeout_ms = 2_000;
        adjust(settings);
    })
    .await;
    let limits = RateLimitServiceClient::new(connect(app.addr).await);
    LimitedApp {
        app,
        limits,
        prefix,
        redis_url: urls.map(|u| u.split(',').next().unwrap().to_owned()),
        _cluster: cluster,
    }
}

pub fn rate_limit(limit: u32, window_ms: u64, algorithm: RateLimitAlgorithm) -> pb::RateLimit {
    pb::RateLimit {
        limit,
        window: Some(window(window_ms)),
        algorithm: algorithm as i32,
    }
}

pub fn window(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A duration in milliseconds.
pub fn millis(d: &Option<prost_types::Duration>) -> i64 {
    let d = d.as_ref().expect("a duration");
    d.seconds * 1000 + i64::from(d.nanos) / 1_000_000
}

pub fn check_request(
    namespace: &str,
    identifier: &str,
    limit: u32,
    window_ms: u64,
    algorithm: RateLimitAlgorithm,
    cost: u32,
) -> pb::CheckRateLimitRequest {
    pb::CheckRateLimitRequest {
        namespace: namespace.to_owned(),
        identifier: identifier.to_owned(),
        limit,
        window: Some(window(window_ms)),
        cost,
        algorithm: algorithm as i32,
    }
}

impl LimitedApp {
    pub async fn check(&self, request: pb::CheckRateLimitRequest) -> pb::CheckRateLimitResponse {
        self.limits
            .clone()
            .check_rate_limit(request)
            .await
            .expect("CheckRateLimit answers")
            .into_inner()
    }

    /// Creates a key for `owner_id` with its own limits and an optional quota.
    pub async fn create_limited_key(
        &self,
        owner_id: &str,
        rate_limits: Vec<pb::RateLimit>,
        quota: Option<pb::UsageQuota>,
    ) -> (String, pb::ApiKey) {
        let mut request = create_request(owner_id, &["*"]);
        request.rate_limits = rate_limits;
        request.quota = quota;
        let created = self
            .app
            .keys
            .clone()
            .create_key(self.app.authed(request))
            .await
            .expect("CreateKey succeeds")
            .into_inner();
        (created.key, created.api_key.unwrap())
    }

    pub async fn validate_with(
        &self,
        key: &str,
        cost: u32,
        context: Option<pb::RequestContext>,
    ) -> pb::ValidateResponse {
        self.app
            .validation
            .clone()
            .validate(pb::ValidateRequest {
                key: key.to_owned(),
                required_scopes: Vec::new(),
                context,
                cost,
            })
            .await
            .expect("Validate answers")
            .into_inner()
    }

    /// A synchronous connection to the Redis this app uses.
    pub fn redis(&self) -> redis::Connection {
        redis_connection(self.redis_url.as_deref().expect("a Redis-backed app"))
    }
}

pub fn redis_connection(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .unwrap_or_else(|e| {
            panic!("Redis at {url} is needed for this test (run scripts/test): {e}")
        })
}

/// Sends `n` CheckRateLimit calls at once and returns every answer.
pub async fn concurrently(
    clients: &[RateLimitServiceClient<Channel>],
    n: usize,
    request: pb::CheckRateLimitRequest,
) -> Vec<pb::CheckRateLimitResponse> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let request = request.clone();
            tokio::spawn(async move { client.check_rate_limit(request).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for task in tasks {
        answers.push(
            task.await
                .expect("task joins")
                .expect("CheckRateLimit answers")
                .into_inner(),
        );
    }
    answers
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn redis_server_bin() -> PathBuf {
    std::env::var_os("REDIS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

pub fn redis_cli_bin() -> PathBuf {
    let server = redis_server_bin();
    match server.parent() {
        Some(dir) if dir.join("redis-cli").exists() => dir.join("redis-cli"),
        _ => PathBuf::from("redis-cli"),
    }
}

/// A redis-server this test owns, on a free loopback port, without
/// persistence; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    cluster: bool,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start(cluster: bool) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            cluster,
            dir: tempfile::tempdir().expect("a directory for redis"),
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers,
    /// as with a hung Redis or a network that drops packets.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running redis-server");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} redis-server");
    }

    /// Starts it again on the same port (empty: no persistence) and waits for PING.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new(redis_server_bin());
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        self.child = Some(
            command
                .spawn()
                .expect("start redis-server (REDIS_SERVER_BIN)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "redis-server on port {} did not answer within 10 s",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A local three-master Redis Cluster (no replicas), stopped when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start(true)).collect();
        let status = Command::new(redis_cli_bin())
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut redis_connection(&node.url()))
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not converge within 20 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes }
    }

    /// Kills every node (as a crash of the whole cluster would).
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }

    /// Every node's URL, comma-separated (the seed list apikeyd takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Runs each limiter behaviour test on every rate-limit store, as
/// `<module>::in_process::<name>`, `<module>::redis::<name>` and
/// `<module>::cluster::<name>`, each bounded to two minutes.
#[macro_export]
macro_rules! on_every_limiter {
    ($(async fn $name:ident($app:ident) $body:block)*) => {
        $crate::on_every_limiter!(@backend in_process, InProcess, $(async fn $name($app) $body)*);
        $crate::on_every_limiter!(@backend redis, Redis, $(async fn $name($app) $body)*);
        $crate::on_every_limiter!(@backend cluster, Cluster, $(async fn $name($app) $body)*);
    };
    (@backend $module:ident, $limiter:ident, $(async fn $name:ident($app:ident) $body:block)*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let test = async {
                        let $app = $crate::limiter_harness::spawn_limited_app(
                            $crate::limiter_harness::Limiter::$limiter,
                        )
                        .await;
                        $body
                    };
                    tokio::time::timeout(std::time::Duration::from_secs(120), test)
                        .await
                        .expect("the test finished within 2 minutes");
                }
            )*
        }
    };
}
