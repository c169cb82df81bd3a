//! A busy replica must not switch rate limits off (issue 14). Three `apikeyd`
//! processes over one PostgreSQL and a three-master Redis Cluster this test
//! starts, with Redis's timeout at the 50 ms that once made a busy replica
//! declare an outage, and the machine saturated by concurrent limited calls:
//! every run admits exactly the limit, no replica declares an outage, and no
//! decision is left to the failure policy. With the cluster killed, every
//! replica follows the configured policy within the documented switch-over
//! time.
//!
//! `cargo test --test api busy_replicas -- --nocapture` prints the runs, how
//! saturated the machine was and each replica's switch-over time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use apikeyd::grpc::pb::{self, RateLimitAlgorithm, ValidationCode};
use apikeyd::ratelimit::limiter::PROBE_INTERVAL;
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::helpers::{
    ServerProcess, connect, create_request, fresh_postgres_database, sample, scrape, with_bearer,
};
use crate::limiter_harness::{RedisCluster, check_request, millis, rate_limit, unique};

/// Saturated runs per test execution, each on fresh counters.
const RUNS: usize = 20;
/// Each run: CheckRateLimit calls against one identifier's limit, and
/// Validate calls against one key's (the 90 against 30).
const CHECKS: usize = 300;
const CHECK_LIMIT: u32 = 100;
const VALIDATES: usize = 90;
const KEY_LIMIT: u32 = 30;
/// Background calls kept in flight per core, on other identifiers.
const NOISE_PER_CORE: usize = 24;
/// The deadline callers of the measured calls send.
const DEADLINE: Duration = Duration::from_secs(10);
/// One hour, as in the issue.
const WINDOW_MS: u64 = 3_600_000;
const ALGORITHMS: [RateLimitAlgorithm; 3] = [
    RateLimitAlgorithm::FixedWindow,
    RateLimitAlgorithm::SlidingWindow,
    RateLimitAlgorithm::TokenBucket,
];

struct Replicas {
    servers: Vec<ServerProcess>,
    cluster: RedisCluster,
    root_key: String,
    /// Four connections per replica, so calls spread over several HTTP/2 streams' owners.
    limiters: Vec<RateLimitServiceClient<Channel>>,
    validators: Vec<ValidationServiceClient<Channel>>,
    keys: KeyServiceClient<Channel>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start_replicas(policy: &str) -> Replicas {
    let cluster = RedisCluster::start();
    let database_url = fresh_postgres_database().await;
    let redis_urls = cluster.urls();
    let prefix = unique("apikeyd-test");
    let env = [
        ("APIKEYD_DATABASE_URL", database_url.as_str()),
        ("APIKEYD_REDIS_URL", redis_urls.as_str()),
        ("APIKEYD_REDIS_CLUSTER", "true"),
        ("APIKEYD_REDIS_KEY_PREFIX", prefix.as_str()),
        ("APIKEYD_REDIS_TIMEOUT_MS", "50"),
        ("APIKEYD_REDIS_FAILURE_POLICY", policy),
    ];
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers: Vec<_> = dirs
        .iter()
        .map(|d| ServerProcess::start(d.path(), &env))
        .collect();
    let root_key = std::fs::read_to_string(dirs[0].path().join("bootstrap-root-key"))
        .unwrap()
        .trim()
        .to_owned();
    let mut limiters = Vec::new();
    let mut validators = Vec::new();
    for server in &servers {
        for _ in 0..4 {
            let channel = connect(server.addr).await;
            limiters.push(RateLimitServiceClient::new(channel.clone()));
            validators.push(ValidationServiceClient::new(channel));
        }
    }
    let keys = KeyServiceClient::new(connect(servers[0].addr).await);
    Replicas {
        servers,
        cluster,
        root_key,
        limiters,
        validators,
        keys,
        _dirs: dirs,
    }
}

fn with_deadline<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(DEADLINE);
    request
}

/// Calls on other identifiers, kept in flight until `stop`, with no
/// deadline (so the 50 ms default wait applies to them). Counts the ones
/// answered UNAVAILABLE because their answer was late.
struct Noise {
    stop: Arc<AtomicBool>,
    late: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Noise {
    fn start(limiters: &[RateLimitServiceClient<Channel>]) -> Noise {
        let stop = Arc::new(AtomicBool::new(false));
        let late = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let tasks = (0..NOISE_PER_CORE * cores)
            .map(|i| {
                let mut client = limiters[i % limiters.len()].clone();
                let (stop, late, calls) = (stop.clone(), late.clone(), calls.clone());
                tokio::spawn(async move {
                    let request = check_request(
                        "noise",
                        &unique("id"),
                        1_000_000_000,
                        WINDOW_MS,
                        RateLimitAlgorithm::SlidingWindow,
                        1,
                    );
                    while !stop.load(Ordering::Relaxed) {
                        calls.fetch_add(1, Ordering::Relaxed);
                        match client.check_rate_limit(request.clone()).await {
                            Ok(_) => {}
                            Err(status) if status.code() == Code::Unavailable => {
                                late.fetch_add(1, Ordering::Relaxed);
                            }
                            // The cluster killed under it: nothing to count.
                            Err(_) => {}
                        }
                        // A refused connection answers at once: yield, so
                        // this loop never starves the runtime (or its
                        // shutdown, when a failed test drops it).
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        Noise {
            stop,
            late,
            calls,
            tasks,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (
            self.calls.load(Ordering::Relaxed),
            self.late.load(Ordering::Relaxed),
        )
    }
}

/// Busy and total CPU time of the whole machine since boot, from /proc/stat.
fn cpu_times() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields[4];
    (total - idle, total)
}

/// One saturated run: returns (CheckRateLimit admitted, Validate valid).
async fn run(replicas: &Replicas, algorithm: RateLimitAlgorithm) -> (usize, usize) {
    let mut request = create_request(&unique("owner"), &["*"]);
    request.rate_limits = vec![rate_limit(KEY_LIMIT, WINDOW_MS, algorithm)];
    let key = replicas
        .keys
        .clone()
        .create_key(with_bearer(request, &replicas.root_key))
        .await
        .expect("CreateKey succeeds")
        .into_inner()
        .key;
    let check = check_request("busy", &unique("id"), CHECK_LIMIT, WINDOW_MS, algorithm, 1);
    let checks: Vec<_> = (0..CHECKS)
        .map(|i| {
            let mut client = replicas.limiters[i % replicas.limiters.len()].clone();
            let request = with_deadline(check.clone());
            tokio::spawn(async move { client.check_rate_limit(request).await })
        })
        .collect();
    let validates: Vec<_> = (0..VALIDATES)
        .map(|i| {
            let mut client = replicas.validators[i % replicas.validators.len()].clone();
            let request = with_deadline(pb::ValidateRequest {
                key: key.clone(),
                ..Default::default()
            });
            tokio::spawn(async move { client.validate(request).await })
        })
        .collect();
    let mut admitted = 0;
    for call in checks {
        let answer = call.await.unwrap().expect("CheckRateLimit answers");
        admitted += usize::from(answer.into_inner().allowed);
    }
    let mut valid = 0;
    for call in validates {
        let answer = call.await.unwrap().expect("Validate answers").into_inner();
        match ValidationCode::try_from(answer.code).unwrap() {
            ValidationCode::Valid => valid += 1,
            ValidationCode::RateLimited => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    (admitted, valid)
}

/// Decisions the failure policy made on one replica, from its /metrics.
fn policy_decisions(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("apikeyd_rate_limit_decisions_total{")
                && l.contains("decided_by=\"policy\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Mean of a histogram series (`<name>_sum` over `<name>_count`), in ms.
fn mean_ms(metrics: &str, name: &str, labels: &str) -> f64 {
    let count = sample(metrics, &format!("{name}_count{labels}"));
    assert!(count > 0.0, "no {name}{labels} in the metrics");
    sample(metrics, &format!("{name}_sum{labels}")) / count * 1_000.0
}

fn logged(log: &[String], needle: &str) -> Vec<serde_json::Value> {
    log.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["message"].as_str().is_some_and(|m| m.contains(needle)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saturated_machine_keeps_every_limit_exact_across_three_replicas_over_a_cluster() {
    let _alone = crate::helpers::measuring_alone().await;
    let test = async {
        let replicas = start_replicas("open").await;
        let noise = Noise::start(&replicas.limiters);
        let (busy_before, total_before) = cpu_times();
        let started = Instant::now();

        for i in 0..RUNS {
            let algorithm = ALGORITHMS[i % ALGORITHMS.len()];
            let (admitted, valid) = run(&replicas, algorithm).await;
            println!(
                "run {i:2} {algorithm:?}: CheckRateLimit {admitted}/{CHECK_LIMIT}, Validate {valid}/{KEY_LIMIT}"
            );
            assert_eq!(
                admitted, CHECK_LIMIT as usize,
                "run {i}: {algorithm:?} CheckRateLimit"
            );
            assert_eq!(valid, KEY_LIMIT as usize, "run {i}: {algorithm:?} Validate");
        }

        let elapsed = started.elapsed();
        let (busy_after, total_after) = cpu_times();
        let (noise_calls, noise_late) = noise.stop().await;
        let busy = (busy_after - busy_before) as f64 / (total_after - total_before) as f64;
        println!(
            "{RUNS} runs in {elapsed:.1?}: machine CPU {:.0}% busy; {noise_calls} background calls, {noise_late} of them UNAVAILABLE (late past the 50 ms default wait)",
            busy * 100.0
        );
        for (i, server) in replicas.servers.iter().enumerate() {
            let metrics = scrape(server.http_addr).await;
            let name = "apikeyd_rate_limit_decision_duration_seconds";
            println!(
                "replica {i}: mean wait in this process before Redis {:.2} ms, mean Redis round trip {:.2} ms, {} decisions",
                mean_ms(&metrics, name, "{stage=\"queue\"}"),
                mean_ms(&metrics, name, "{stage=\"redis\"}"),
                sample(&metrics, &format!("{name}_count{{stage=\"queue\"}}")),
            );
            assert_eq!(
                policy_decisions(&metrics),
                0.0,
                "replica {i} left decisions to the policy"
            );
        }
        assert!(
            busy >= 0.9,
            "the machine was only {:.0}% busy",
            busy * 100.0
        );
        for (i, server) in replicas.servers.into_iter().enumerate() {
            let (_, log) = server.terminate();
            assert!(
                logged(&log, "rate-limit store unreachable").is_empty(),
                "replica {i} declared an outage"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(300), test)
        .await
        .expect("the test finished within 5 minutes");
}

/// Kills the whole cluster under load; every replica must follow `policy`
/// within two probe intervals (a crash refuses connections at once).
async fn killed_cluster_follows(policy: &str) {
    let mut replicas = start_replicas(policy).await;
    let noise = Noise::start(&replicas.limiters);
    // A fresh identifier: the store would admit it with 4 left; fail-open
    // admits it with the whole limit left, fail-closed refuses it for 1 s.
    let by_policy = |answer: &pb::CheckRateLimitResponse| match policy {
        "open" => answer.allowed && answer.remaining == 5,
        _ => !answer.allowed && answer.remaining == 0 && millis(&answer.retry_after) == 1_000,
    };
    let fresh = || {
        with_deadline(check_request(
            "killed",
            &unique("id"),
            5,
            WINDOW_MS,
            RateLimitAlgorithm::FixedWindow,
            1,
        ))
    };
    for client in &replicas.limiters {
        let answer = client.clone().check_rate_limit(fresh()).await.unwrap();
        assert_eq!(answer.into_inner().remaining, 4, "the store answers first");
    }

    let killed_at = SystemTime::now();
    replicas.cluster.stop();

    for (i, client) in replicas.limiters.iter().enumerate().step_by(4) {
        let mut client = client.clone();
        let mut late = 0;
        loop {
            assert!(
                killed_at.elapsed().unwrap() < Duration::from_secs(10),
                "replica {}: no switch-over within 10 s",
                i / 4
            );
            match client.check_rate_limit(fresh()).await {
                Ok(answer) if by_policy(answer.get_ref()) => break,
                Ok(answer) => panic!("a store answer from a dead cluster: {answer:?}"),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    late += 1;
                }
            }
        }
        for _ in 0..20 {
            let answer = client.check_rate_limit(fresh()).await.unwrap();
            assert!(by_policy(answer.get_ref()), "replica {}: {answer:?}", i / 4);
        }
        println!(
            "replica {}: {late} calls UNAVAILABLE before the policy answered",
            i / 4
        );
    }
    noise.stop().await;
    let bound = 2 * PROBE_INTERVAL;
    for (i, server) in replicas.servers.into_iter().enumerate() {
        let (_, log) = server.terminate();
        let began = logged(&log, "rate-limit store unreachable");
        assert_eq!(
            began.len(),
            1,
            "replica {i}: one line when the outage starts"
        );
        let at =
            chrono::DateTime::parse_from_rfc3339(began[0]["timestamp"].as_str().unwrap()).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(at.timestamp_micros() as u64);
        let switch_over = at.duration_since(killed_at).unwrap();
        println!(
            "fail-{policy}, replica {i}: switch-over {switch_over:?} after the kill (bound {bound:?})"
        );
        assert!(
            switch_over <= bound,
            "replica {i}: switch-over took {switch_over:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_cluster_fails_open_on_every_replica_within_the_switch_over_time() {
    let _alone = crate::helpers::measuring_alone().await;
    tokio::time::timeout(Duration::from_secs(180), killed_cluster_follows("open"))
        .await
        .expect("the test finished within 3 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_cluster_fails_closed_on_every_replica_within_the_switch_over_time() {
    let _alone = crate::helpers::measuring_alone().await;
    tokio::time::timeout(Duration::from_secs(180), killed_cluster_follows("closed"))
        .await
        .expect("the test finished within 3 minutes");
}
