//! A change on one replica reaches every replica's key cache: at once over
//! Redis pub/sub, and within the degraded TTL when the channel is lost.

use std::time::{Duration, Instant};

use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use apikeyd::grpc::pb::{self, ValidationCode};
use tonic::transport::Channel;

use crate::helpers::{
    ServerProcess, connect, create_request, fresh_postgres_database, with_bearer,
};
use crate::limiter_harness::{RedisServer, shared_redis_url, unique};

struct Replica {
    _process: ServerProcess,
    keys: KeyServiceClient<Channel>,
    validation: ValidationServiceClient<Channel>,
}

struct Cluster {
    replicas: Vec<Replica>,
    root_key: String,
    _dirs: Vec<tempfile::TempDir>,
}

async fn replicas(count: usize, redis_url: &str, extra: &[(&str, &str)]) -> Cluster {
    let database_url = fresh_postgres_database().await;
    let prefix = unique("apikeyd-inval");
    let mut env = vec![
        ("APIKEYD_DATABASE_URL", database_url.as_str()),
        ("APIKEYD_REDIS_URL", redis_url),
        ("APIKEYD_REDIS_KEY_PREFIX", prefix.as_str()),
        ("APIKEYD_REDIS_TIMEOUT_MS", "2000"),
    ];
    env.extend_from_slice(extra);
    let dirs: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for dir in &dirs {
        let process = ServerProcess::start(dir.path(), &env);
        let channel = connect(process.addr).await;
        replicas.push(Replica {
            _process: process,
            keys: KeyServiceClient::new(channel.clone()),
            validation: ValidationServiceClient::new(channel),
        });
    }
    let root_key = std::fs::read_to_string(dirs[0].path().join("bootstrap-root-key"))
        .unwrap()
        .trim()
        .to_owned();
    Cluster {
        replicas,
        root_key,
        _dirs: dirs,
    }
}

impl Cluster {
    async fn create(&self, owner: &str) -> (String, String) {
        let created = self.replicas[0]
            .keys
            .clone()
            .create_key(with_bearer(create_request(owner, &["*"]), &self.root_key))
            .await
            .unwrap()
            .into_inner();
        (created.key, created.api_key.unwrap().id)
    }

    async fn revoke_on(&self, replica: usize, id: &str) {
        self.replicas[replica]
            .keys
            .clone()
            .revoke_key(with_bearer(
                pb::RevokeKeyRequest {
                    id: id.to_owned(),
                    owner_id: String::new(),
                },
                &self.root_key,
            ))
            .await
            .unwrap();
    }
}

async fn code(replica: &Replica, key: &str) -> ValidationCode {
    let response = replica
        .validation
        .clone()
        .validate(pb::ValidateRequest {
            key: key.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ValidationCode::try_from(response.code).unwrap()
}

/// Polls `replica` until `key` stops validating; the time it took, or None
/// past `limit`.
async fn until_rejected(
    replica: &Replica,
    key: &str,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    while since.elapsed() < limit {
        if code(replica, key).await != ValidationCode::Valid {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_key_is_rejected_on_every_replica_within_milliseconds() {
    let cluster = replicas(3, &shared_redis_url(), &[]).await;
    let mut seen = Vec::new();

    for round in 0..20 {
        let (key, id) = cluster.create(&format!("owner_{round}")).await;
        for replica in &cluster.replicas {
            assert_eq!(
                code(replica, &key).await,
                ValidationCode::Valid,
                "warm every cache"
            );
        }
        let started = Instant::now();
        cluster.revoke_on(round % 3, &id).await;
        let waits = cluster
            .replicas
            .iter()
            .map(|replica| until_rejected(replica, &key, started, Duration::from_secs(2)));
        for (replica, wait) in futures_util::future::join_all(waits)
            .await
            .into_iter()
            .enumerate()
        {
            // Without the channel a cached key would stay valid for minutes.
            let wait = wait.unwrap_or_else(|| {
                panic!("replica {replica} still accepts a revoked key after 2 s")
            });
            seen.push(wait);
        }
    }

    seen.sort();
    println!(
        "revocation seen on every replica: {} observations, p50 {:?}, p99 {:?}, max {:?}",
        seen.len(),
        percentile(&seen, 0.50),
        percentile(&seen, 0.99),
        seen.last().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_channel_bounds_staleness_by_the_degraded_ttl_and_recovers() {
    let mut redis = RedisServer::start(false);
    let cluster = replicas(
        2,
        &redis.url(),
        &[("APIKEYD_KEY_CACHE_DEGRADED_TTL_SECS", "2")],
    )
    .await;
    let (before_outage, before_id) = cluster.create("a").await;
    let (during_outage, during_id) = cluster.create("b").await;
    for key in [&before_outage, &during_outage] {
        assert_eq!(code(&cluster.replicas[1], key).await, ValidationCode::Valid);
    }

    redis.stop();
    cluster.revoke_on(0, &during_id).await;
    let stale_for = until_rejected(
        &cluster.replicas[1],
        &during_outage,
        Instant::now(),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        stale_for.is_some(),
        "without the channel, the degraded TTL still ends staleness"
    );

    redis.restart();
    // Once the subscription is back, invalidations arrive again: a revoke is
    // seen well before the degraded TTL could explain it.
    let mut recovered = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (probe, _) = cluster.create("probe").await;
        if code(&cluster.replicas[1], &probe).await == ValidationCode::Valid {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "replica 1 answers again");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        code(&cluster.replicas[1], &before_outage).await,
        ValidationCode::Valid,
        "warm again"
    );
    let started = Instant::now();
    cluster.revoke_on(0, &before_id).await;
    let wait = until_rejected(
        &cluster.replicas[1],
        &before_outage,
        started,
        Duration::from_millis(1500),
    )
    .await;
    assert!(
        wait.is_some(),
        "after reconnecting, invalidations flow again"
    );
}
