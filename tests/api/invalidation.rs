//! A change on one replica reaches every replica's key cache: within
//! milliseconds over the Redis Stream, within the documented bound when
//! Redis or a replica's link to it goes silent, and late rather than lost
//! when an append has to wait. Tests that pause or cut Redis start their own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use apikeyd::grpc::pb::{self, ValidationCode};
use tonic::transport::Channel;

use crate::helpers::{
    ServerProcess, connect, create_request, fresh_postgres_database, sample, sample_or_zero,
    scrape, with_bearer,
};
use crate::limiter_harness::{
    RedisCluster, RedisServer, redis_connection, shared_redis_url, unique,
};

/// The heartbeat deadline with `APIKEYD_REDIS_TIMEOUT_MS=2000` (as every
/// replica here runs): a 1 s block plus max(timeout, 1 s) of grace.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(3);
/// How often the tests below look at a replica's metrics.
const POLL: Duration = Duration::from_millis(20);

struct Replica {
    process: ServerProcess,
    keys: KeyServiceClient<Channel>,
    validation: ValidationServiceClient<Channel>,
}

struct Cluster {
    replicas: Vec<Replica>,
    root_key: String,
    /// The replicas' `--redis-key-prefix`.
    prefix: String,
    _dirs: Vec<tempfile::TempDir>,
}

async fn replicas(count: usize, redis_url: &str, extra: &[(&str, &str)]) -> Cluster {
    replicas_on(&vec![redis_url.to_owned(); count], extra).await
}

/// One replica per URL, each reaching the same Redis through its own URL.
async fn replicas_on(redis_urls: &[String], extra: &[(&str, &str)]) -> Cluster {
    let database_url = fresh_postgres_database().await;
    let prefix = unique("apikeyd-inval");
    let dirs: Vec<_> = redis_urls
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut replicas = Vec::new();
    for (dir, redis_url) in dirs.iter().zip(redis_urls) {
        let mut env = vec![
            ("APIKEYD_DATABASE_URL", database_url.as_str()),
            ("APIKEYD_REDIS_URL", redis_url.as_str()),
            ("APIKEYD_REDIS_KEY_PREFIX", prefix.as_str()),
            ("APIKEYD_REDIS_TIMEOUT_MS", "2000"),
        ];
        env.extend_from_slice(extra);
        let process = ServerProcess::start(dir.path(), &env);
        let channel = connect(process.addr).await;
        replicas.push(Replica {
            process,
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
        prefix,
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

/// The sum of every sample of `metric` (all label sets) on `replica`;
/// panics when the replica does not export it.
async fn metric(replica: &Replica, metric: &str) -> f64 {
    let text = scrape(replica.process.http_addr).await;
    let samples: Vec<f64> = text
        .lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        !samples.is_empty(),
        "{metric} is missing from the replica's metrics"
    );
    samples.iter().sum()
}

/// Waits until `replica` does (or does not) trust invalidations to reach
/// it; how long that took, or None past `limit`.
/// How long a replica may take to report its stream flowing before a test
/// begins: a precondition, not a figure, so it leaves room for a machine
/// busy with other test binaries.
const SETTLE: Duration = Duration::from_secs(30);

async fn until_flowing(replica: &Replica, flowing: bool, limit: Duration) -> Option<Duration> {
    let since = Instant::now();
    let wanted = if flowing { 1.0 } else { 0.0 };
    while since.elapsed() < limit {
        if metric(replica, "apikeyd_invalidations_flowing").await == wanted {
            return Some(since.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// Pauses every client of the test's own Redis (the server stays up and
/// silent) for `pause`; it resumes by itself.
fn pause(redis: &RedisServer, pause: Duration) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause.as_millis() as u64)
        .arg("ALL")
        .query(&mut redis_connection(&redis.url()))
        .expect("CLIENT PAUSE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_key_is_rejected_on_every_replica_within_milliseconds() {
    let _alone = crate::helpers::measuring_alone().await;
    let cluster = replicas(3, &shared_redis_url(), &[]).await;
    // (wait, round, replica): which revocation was slow where, if one is.
    let mut seen = Vec::new();

    // 34 rounds of 3 replicas: the p99 of 102 observations is not their maximum.
    for round in 0..34 {
        let (key, id) = cluster.create(&format!("owner_{round}")).await;
        for replica in &cluster.replicas {
            assert_eq!(
                code(replica, &key).await,
                ValidationCode::Valid,
                "warm every cache"
            );
        }
        // Timed from the revocation's answer: how long the other replicas
        // lag behind a committed change, not how long the commit took.
        cluster.revoke_on(round % 3, &id).await;
        let started = Instant::now();
        let waits = cluster
            .replicas
            .iter()
            .map(|replica| until_rejected(replica, &key, started, Duration::from_secs(2)));
        for (replica, wait) in futures_util::future::join_all(waits)
            .await
            .into_iter()
            .enumerate()
        {
            // Without the stream a cached key would stay valid for the TTL.
            let wait = wait.unwrap_or_else(|| {
                panic!("replica {replica} still accepts a revoked key after 2 s")
            });
            seen.push((wait, round, replica));
        }
    }

    seen.sort();
    let waits: Vec<Duration> = seen.iter().map(|(wait, ..)| *wait).collect();
    let p99 = percentile(&waits, 0.99);
    let slowest: Vec<String> = seen[seen.len() - 3..]
        .iter()
        .map(|(wait, round, replica)| {
            format!("{wait:?} on replica {replica} (revoked on {})", round % 3)
        })
        .collect();
    println!(
        "revocation seen on every replica: {} observations, p50 {:?}, p99 {p99:?}; slowest: {}",
        waits.len(),
        percentile(&waits, 0.50),
        slowest.join(", ")
    );
    assert!(
        p99 <= Duration::from_millis(100),
        "p99 {p99:?} from RevokeKey's answer to every replica refusing the key; slowest: {slowest:?}"
    );
}

/// In a Redis Cluster, appends and reads follow the stream key's slot
/// (through cluster connections, not the first seed node).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_reach_every_replica_over_a_redis_cluster() {
    let redis = RedisCluster::start();
    let cluster = replicas(2, &redis.urls(), &[("APIKEYD_REDIS_CLUSTER", "true")]).await;
    for replica in &cluster.replicas {
        assert!(
            until_flowing(replica, true, SETTLE).await.is_some(),
            "the follower reads the stream on the cluster"
        );
    }
    for revoker in 0..2 {
        let (key, id) = cluster.create(&format!("owner_{revoker}")).await;
        for replica in &cluster.replicas {
            assert_eq!(code(replica, &key).await, ValidationCode::Valid, "warm");
        }
        let started = Instant::now();
        cluster.revoke_on(revoker, &id).await;
        let other = &cluster.replicas[1 - revoker];
        let wait = until_rejected(other, &key, started, Duration::from_secs(2))
            .await
            .expect("the other replica refuses the key within 2 s");
        println!("over a Redis Cluster, revocation seen after {wait:?}");
    }
}

/// Redis paused (silent, not closed) while a key is revoked: the append
/// waits, every replica notices the silence and stops trusting old
/// entries, so the key is refused everywhere within the documented bound;
/// once Redis answers again the append lands (late, not lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_whose_append_is_held_up_is_refused_everywhere_within_the_bound() {
    let _alone = crate::helpers::measuring_alone().await;
    const DEGRADED_TTL: Duration = Duration::from_secs(2);
    // README: max(degraded TTL 2 s, heartbeat deadline 3 s) + 1 s of append retry.
    const BOUND: Duration = Duration::from_secs(3 + 1);
    const PAUSE: Duration = Duration::from_secs(9);
    let redis = RedisServer::start(false);
    let cluster = replicas(
        3,
        &redis.url(),
        &[("APIKEYD_KEY_CACHE_DEGRADED_TTL_SECS", "2")],
    )
    .await;
    let (key, id) = cluster.create("owner").await;
    for replica in &cluster.replicas {
        assert_eq!(code(replica, &key).await, ValidationCode::Valid, "warm");
        assert!(
            until_flowing(replica, true, SETTLE).await.is_some(),
            "every replica trusts its cache before the pause"
        );
    }

    pause(&redis, PAUSE);
    let started = Instant::now();
    let waits = cluster
        .replicas
        .iter()
        .map(|replica| until_rejected(replica, &key, started, BOUND + DEGRADED_TTL));
    let ((), waits) = tokio::join!(
        cluster.revoke_on(1, &id),
        futures_util::future::join_all(waits)
    );
    println!("with Redis paused, the revoked key was refused after {waits:?} (bound {BOUND:?})");
    for (replica, wait) in waits.iter().enumerate() {
        let wait = wait.unwrap_or_else(|| panic!("replica {replica} never refused the key"));
        assert!(wait <= BOUND, "replica {replica} refused it after {wait:?}");
    }

    // Late, not lost: the append lands once Redis answers again.
    let (stream, url) = (format!("{}:invalidations", cluster.prefix), redis.url());
    let appended = tokio::task::spawn_blocking(move || {
        let mut redis_connection = redis_connection(&url);
        let deadline = Instant::now() + PAUSE + Duration::from_secs(10);
        while Instant::now() < deadline {
            let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .query(&mut redis_connection)
                .unwrap_or_default();
            if entries.iter().any(|(_, fields)| fields.contains(&id)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    })
    .await
    .unwrap();
    assert!(
        appended,
        "the revocation reached the stream after the pause"
    );
    assert_eq!(
        metric(&cluster.replicas[1], "apikeyd_invalidations_lost_total").await,
        0.0
    );
    for replica in &cluster.replicas {
        assert!(
            until_flowing(replica, true, SETTLE).await.is_some(),
            "every replica trusts its cache again"
        );
    }
}

/// A Redis that stops answering without closing anything: each replica
/// stops trusting its cache within the heartbeat deadline, its stream
/// reader notices by itself (not only through the limiter's probe), and
/// once Redis answers it catches up without flushing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_stream_is_noticed_within_the_heartbeat_deadline() {
    let _alone = crate::helpers::measuring_alone().await;
    const PAUSE: Duration = Duration::from_secs(6);
    let redis = RedisServer::start(false);
    let cluster = replicas(1, &redis.url(), &[]).await;
    let replica = &cluster.replicas[0];
    assert!(until_flowing(replica, true, SETTLE).await.is_some());
    let flushes = metric(replica, "apikeyd_key_cache_flushes_total").await;

    pause(&redis, PAUSE);
    let noticed = until_flowing(replica, false, PAUSE)
        .await
        .expect("the replica noticed the silence while it lasted");
    println!(
        "silent Redis noticed after {noticed:?} (heartbeat deadline {HEARTBEAT_DEADLINE:?}, polled every {POLL:?})"
    );
    assert!(
        noticed <= HEARTBEAT_DEADLINE + POLL,
        "noticed after {noticed:?}"
    );
    let heartbeat_missed = |log: Vec<String>| {
        log.iter()
            .any(|line| line.contains("did not answer within its heartbeat"))
    };
    let mut reader_noticed = false;
    while !reader_noticed && noticed + POLL < PAUSE {
        reader_noticed = heartbeat_missed(replica.process.log());
        tokio::time::sleep(POLL).await;
    }
    assert!(reader_noticed, "the stream reader's own heartbeat fired");

    assert!(
        until_flowing(replica, true, PAUSE + Duration::from_secs(10))
            .await
            .is_some(),
        "trusted again once Redis answers"
    );
    assert_eq!(
        metric(replica, "apikeyd_key_cache_flushes_total").await,
        flushes,
        "nothing was missed, so nothing was flushed"
    );
}

/// A TCP relay to Redis that a test can freeze: while frozen, open
/// connections stay open but carry nothing and new ones are held, as over
/// a dead link; on thawing, the frozen connections are closed.
struct FreezableRelay {
    addr: SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    accepting: tokio::task::JoinHandle<()>,
}

impl FreezableRelay {
    async fn start(upstream: SocketAddr) -> FreezableRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = tokio::sync::watch::Sender::new(false);
        let signal = frozen.subscribe();
        let accepting = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(Self::relay(inbound, upstream, signal.clone()));
            }
        });
        FreezableRelay {
            addr,
            frozen,
            accepting,
        }
    }

    async fn relay(
        mut inbound: tokio::net::TcpStream,
        upstream: SocketAddr,
        mut frozen: tokio::sync::watch::Receiver<bool>,
    ) {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
            return;
        };
        let froze = tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
            changed = frozen.wait_for(|f| *f) => changed.is_ok(),
        };
        if froze {
            // Both ends stay open and silent until the thaw closes them.
            let _ = frozen.wait_for(|f| !*f).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

impl Drop for FreezableRelay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// A replica cut off from Redis while another revokes a key: once its link
/// is back it replays the entries it missed and refuses the key, without
/// flushing its cache and long before its degraded TTL could explain it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_missed_while_cut_off_are_replayed_without_a_flush() {
    let redis = RedisServer::start(false);
    let relay = FreezableRelay::start(([127, 0, 0, 1], redis.port).into()).await;
    // A degraded TTL of a minute: only the replay can end the staleness soon.
    let cluster = replicas_on(
        &[redis.url(), relay.url()],
        &[("APIKEYD_KEY_CACHE_DEGRADED_TTL_SECS", "60")],
    )
    .await;
    let cut_off = &cluster.replicas[1];
    let (key, id) = cluster.create("owner").await;
    for replica in &cluster.replicas {
        assert_eq!(code(replica, &key).await, ValidationCode::Valid, "warm");
        assert!(until_flowing(replica, true, SETTLE).await.is_some());
    }
    let flushes = metric(cut_off, "apikeyd_key_cache_flushes_total").await;
    // Nothing may have been replayed yet: the counter appears with the first.
    let replayed = sample_or_zero(
        &scrape(cut_off.process.http_addr).await,
        "apikeyd_invalidations_replayed_total",
    );

    relay.freeze(true);
    assert!(
        until_flowing(cut_off, false, HEARTBEAT_DEADLINE + Duration::from_secs(1))
            .await
            .is_some(),
        "the cut-off replica notices"
    );
    cluster.revoke_on(0, &id).await;
    assert_eq!(
        code(&cluster.replicas[0], &key).await,
        ValidationCode::Revoked
    );
    assert_eq!(
        code(cut_off, &key).await,
        ValidationCode::Valid,
        "cut off, it still serves its entry (within its degraded TTL)"
    );

    let thawed = Instant::now();
    relay.freeze(false);
    let wait = until_rejected(cut_off, &key, thawed, Duration::from_secs(10))
        .await
        .expect("the replayed revocation evicted the key");
    println!("after the link came back, the missed revocation was applied in {wait:?}");
    assert!(
        metric(cut_off, "apikeyd_invalidations_replayed_total").await > replayed,
        "applied as a replay"
    );
    assert_eq!(
        metric(cut_off, "apikeyd_key_cache_flushes_total").await,
        flushes,
        "without a flush"
    );
}

/// Redis restarted without its data: while it is down, staleness ends
/// with the degraded TTL; once it is back, each replica finds the stream it
/// followed gone, cannot know what it missed, flushes, and follows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_stream_bounds_staleness_by_the_degraded_ttl_then_flushes_and_recovers() {
    // README: max(degraded TTL 2 s, heartbeat deadline 3 s) + 1 s of append retry.
    const BOUND: Duration = Duration::from_secs(3 + 1);
    let mut redis = RedisServer::start(false);
    let cluster = replicas(
        2,
        &redis.url(),
        &[("APIKEYD_KEY_CACHE_DEGRADED_TTL_SECS", "2")],
    )
    .await;
    let follower = &cluster.replicas[1];
    let (before_outage, before_id) = cluster.create("a").await;
    let (during_outage, during_id) = cluster.create("b").await;
    let (earlier, earlier_id) = cluster.create("c").await;
    for key in [&before_outage, &during_outage, &earlier] {
        assert_eq!(code(follower, key).await, ValidationCode::Valid);
    }
    for replica in &cluster.replicas {
        assert!(until_flowing(replica, true, SETTLE).await.is_some());
    }
    // An entry the follower reads, so that the stream it follows is not empty.
    let started = Instant::now();
    cluster.revoke_on(0, &earlier_id).await;
    assert!(
        until_rejected(follower, &earlier, started, Duration::from_secs(1))
            .await
            .is_some()
    );

    redis.stop();
    let started = Instant::now();
    cluster.revoke_on(0, &during_id).await;
    let stale_for = until_rejected(follower, &during_outage, started, BOUND + BOUND)
        .await
        .expect("without Redis, the degraded TTL still ends staleness");
    println!("with Redis down, the revoked key was refused after {stale_for:?} (bound {BOUND:?})");
    assert!(stale_for <= BOUND, "refused after {stale_for:?}");

    redis.restart();
    assert!(
        until_flowing(follower, true, Duration::from_secs(15))
            .await
            .is_some(),
        "the follower trusts its cache again"
    );
    let gaps = sample(
        &scrape(follower.process.http_addr).await,
        "apikeyd_key_cache_flushes_total{reason=\"gap\"}",
    );
    assert!(gaps >= 1.0, "the lost stream was a gap, flushed");
    assert_eq!(
        code(follower, &before_outage).await,
        ValidationCode::Valid,
        "warm again"
    );
    let started = Instant::now();
    cluster.revoke_on(0, &before_id).await;
    assert!(
        until_rejected(
            follower,
            &before_outage,
            started,
            Duration::from_millis(1500)
        )
        .await
        .is_some(),
        "after reconnecting, invalidations flow again"
    );
}
