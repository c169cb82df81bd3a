//! The fault suite (issue 12): each test breaks one dependency or replica
//! under load and checks that callers get no wrong answer, that errors are
//! the documented retryable ones, and that nothing is lost once the fault is
//! removed. Each prints its figures:
//! `cargo test --test api faults -- --nocapture --test-threads 1`.
//!
//! - Redis killed under load and restarted, under each failure policy.
//! - PostgreSQL (a server the test owns) stopped under load and started again.
//! - One of three replicas SIGKILLed mid-load, a key revoked meanwhile.
//! - A rolling restart: each of three replicas SIGTERMed and restarted in turn.
//! - The embedded SQLite's data directory full, then read-only.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use apikeyd::grpc::pb::{self, RateLimitAlgorithm, ValidationCode};
use apikeyd::ratelimit::limiter::PROBE_INTERVAL;
use sea_orm::{ConnectionTrait, Database, Statement};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::fault_harness::{
    PostgresServer, ReplicaSet, ServerOnOwnRedis, Tally, Tmpfs, eventually, health,
    server_on_own_redis, wait_for_health, wait_for_health_within, with_failover,
};
use crate::helpers::{ServerProcess, connect, create_request, measuring_alone, with_bearer};
use crate::limiter_harness::{check_request, millis, rate_limit, unique};

/// The longest window (30 days, epoch-aligned): a test never straddles its boundary.
const LONG_WINDOW_MS: u64 = 30 * 86_400_000;

/// A key whose own limit no test reaches (without one it would get the
/// default tier's 100 per hour).
fn unlimited_key(owner: &str) -> pb::CreateKeyRequest {
    let mut request = create_request(owner, &["*"]);
    request.rate_limits = vec![rate_limit(
        1_000_000_000,
        LONG_WINDOW_MS,
        RateLimitAlgorithm::SlidingWindow,
    )];
    request
}

fn code_name(response: &pb::ValidateResponse) -> ValidationCode {
    ValidationCode::try_from(response.code).expect("a known validation code")
}

fn validate_request(key: &str) -> pb::ValidateRequest {
    pb::ValidateRequest {
        key: key.to_owned(),
        ..Default::default()
    }
}

fn logged(log: &[String], needle: &str) -> Vec<serde_json::Value> {
    log.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["message"].as_str().is_some_and(|m| m.contains(needle)))
        .collect()
}

fn logged_at(event: &serde_json::Value) -> SystemTime {
    let at = chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str().unwrap()).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_micros(at.timestamp_micros() as u64)
}

/// Workers that loop until stopped; joined by `stop`.
struct Workers {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    fn new() -> Workers {
        Workers {
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
        }
    }

    /// Runs `one_call` in a loop (with a yield between calls) until `stop`.
    fn spawn<F, Fut>(&mut self, mut one_call: F)
    where
        F: FnMut(u64) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let stop = self.stop.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                one_call(i).await;
                i += 1;
                tokio::task::yield_now().await;
            }
        }));
    }

    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            task.await.expect("a load worker panicked");
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Redis killed under load and restarted.

/// One answer of the Redis test's load, stamped with when its call began and ended.
struct Observed {
    began: Instant,
    ended: Instant,
    kind: &'static str,
    outcome: Result<String, Code>,
}

async fn redis_killed_under_load(policy: &'static str) {
    let ServerOnOwnRedis {
        mut redis,
        server,
        root_key,
        channel,
        data_dir: _data_dir,
    } = server_on_own_redis(policy, "2000").await;
    let mut request = create_request("owner", &["*"]);
    const KEY_LIMIT: u32 = 1_000_000_000;
    request.rate_limits = vec![rate_limit(
        KEY_LIMIT,
        LONG_WINDOW_MS,
        RateLimitAlgorithm::FixedWindow,
    )];
    let key = KeyServiceClient::new(channel.clone())
        .create_key(with_bearer(request, &root_key))
        .await
        .unwrap()
        .into_inner()
        .key;
    // A fresh identifier per call: the store answers it with 4 left of 5,
    // fail-open with all 5, fail-closed refuses it for 1 s.
    let fresh = || {
        check_request(
            "outage",
            &unique("id"),
            5,
            LONG_WINDOW_MS,
            RateLimitAlgorithm::FixedWindow,
            1,
        )
    };
    let by_store = |a: &pb::CheckRateLimitResponse| a.allowed && a.remaining == 4;
    let by_policy = move |a: &pb::CheckRateLimitResponse| match policy {
        "open" => a.allowed && a.remaining == 5,
        _ => !a.allowed && a.remaining == 0 && millis(&a.retry_after) == 1_000,
    };

    let observed = Arc::new(std::sync::Mutex::new(Vec::<Observed>::new()));
    let mut workers = Workers::new();
    for w in 0..6 {
        let channel = connect(server.addr).await;
        let observed = observed.clone();
        let key = key.clone();
        if w < 4 {
            let client = ValidationServiceClient::new(channel);
            workers.spawn(move |_| {
                let (mut client, observed, key) = (client.clone(), observed.clone(), key.clone());
                async move {
                    let began = Instant::now();
                    let outcome = match client.validate(validate_request(&key)).await {
                        Ok(answer) => Ok(format!("{:?}", code_name(answer.get_ref()))),
                        Err(status) => Err(status.code()),
                    };
                    observed.lock().unwrap().push(Observed {
                        began,
                        ended: Instant::now(),
                        kind: "Validate",
                        outcome,
                    });
                }
            });
        } else {
            let client = RateLimitServiceClient::new(channel);
            workers.spawn(move |_| {
                let (mut client, observed) = (client.clone(), observed.clone());
                let request = fresh();
                async move {
                    let began = Instant::now();
                    let outcome = match client.check_rate_limit(request).await {
                        Ok(answer) if by_store(answer.get_ref()) => Ok("store".to_owned()),
                        Ok(answer) if by_policy(answer.get_ref()) => Ok("policy".to_owned()),
                        Ok(answer) => Ok(format!("unexpected {:?}", answer.get_ref())),
                        Err(status) => Err(status.code()),
                    };
                    observed.lock().unwrap().push(Observed {
                        began,
                        ended: Instant::now(),
                        kind: "CheckRateLimit",
                        outcome,
                    });
                }
            });
        }
    }
    let count = |observed: &std::sync::Mutex<Vec<Observed>>, label: &str| {
        observed
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.outcome.as_deref().is_ok_and(|l| l == label))
            .count()
    };
    eventually(
        Duration::from_secs(30),
        "the store answers 200 checks",
        || async { count(&observed, "store") >= 200 },
    )
    .await;

    let killed_wall = SystemTime::now();
    let killed = Instant::now();
    redis.stop();
    let switched = eventually(Duration::from_secs(10), "the policy answers", || async {
        count(&observed, "policy") >= 1
    })
    .await;
    wait_for_health(&channel, "redis", ServingStatus::NotServing).await;
    assert_eq!(health(&channel, "").await, ServingStatus::Serving);
    let policy_phase = Instant::now();
    eventually(
        Duration::from_secs(30),
        "the policy answers 500 checks",
        || async { count(&observed, "policy") >= 500 },
    )
    .await;
    let policy_until = Instant::now();

    redis.restart();
    let restarted = Instant::now();
    let back = wait_for_health(&channel, "redis", ServingStatus::Serving).await;
    let recovered = Instant::now();
    let stores_before = count(&observed, "store");
    eventually(
        Duration::from_secs(30),
        "the store answers again",
        || async { count(&observed, "store") >= stores_before + 200 },
    )
    .await;
    workers.stop().await;

    // Counting resumes, exactly: the new Redis is empty (no persistence).
    let mut limits = RateLimitServiceClient::new(channel.clone());
    let after = check_request(
        "outage",
        &unique("id"),
        10,
        LONG_WINDOW_MS,
        RateLimitAlgorithm::FixedWindow,
        1,
    );
    for remaining in [9, 8, 7] {
        let answer = limits
            .check_rate_limit(after.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (answer.allowed, answer.remaining),
            (true, remaining),
            "counting resumes"
        );
    }
    let mut validation = ValidationServiceClient::new(channel.clone());
    let first = validation
        .validate(validate_request(&key))
        .await
        .unwrap()
        .into_inner();
    let second = validation
        .validate(validate_request(&key))
        .await
        .unwrap()
        .into_inner();
    assert!(first.valid && second.valid);
    assert_eq!(
        first.rate_limit.unwrap().remaining - 1,
        second.rate_limit.unwrap().remaining,
        "the key's limit counts again"
    );

    // Judge every answer by the phase its call began in.
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    let mut wrong = Vec::new();
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    let mut late = 0;
    let mut phases = std::collections::BTreeMap::<&str, usize>::new();
    for o in &observed {
        // A call still waiting for Redis when it died may get the policy's
        // answer: only calls over before the kill are judged "before".
        let phase = if o.ended < killed {
            "before"
        } else if o.began >= policy_phase && o.began < policy_until {
            "outage"
        } else if o.began >= recovered {
            "after"
        } else {
            "switching"
        };
        *phases.entry(phase).or_default() += 1;
        match (&o.outcome, o.kind, phase) {
            (Err(code), _, "switching") if *code == Code::Unavailable => late += 1,
            (Err(code), kind, phase) => {
                *errors
                    .entry(format!("{kind} {code:?} {phase}"))
                    .or_default() += 1
            }
            // The key's limit is never reached: VALID unless fail-closed
            // refuses it while Redis is down.
            (Ok(label), "Validate", "before" | "after") if label == "Valid" => {}
            (Ok(label), "Validate", "outage")
                if label
                    == if policy == "open" {
                        "Valid"
                    } else {
                        "RateLimited"
                    } => {}
            (Ok(label), "Validate", "switching") if label == "Valid" || label == "RateLimited" => {}
            (Ok(label), "CheckRateLimit", "before" | "after") if label == "store" => {}
            (Ok(label), "CheckRateLimit", "outage") if label == "policy" => {}
            (Ok(label), "CheckRateLimit", "switching") if label == "store" || label == "policy" => {
            }
            (Ok(label), kind, phase) => wrong.push(format!("{kind} answered {label} {phase}")),
        }
    }

    let (status, log) = server.terminate();
    assert!(status.success());
    let began = logged(&log, "rate-limit store unreachable");
    assert_eq!(began.len(), 1, "one line when the outage starts");
    let switch_over = logged_at(&began[0]).duration_since(killed_wall).unwrap();
    let ended = logged(&log, "rate-limit store reachable again");
    assert_eq!(ended.len(), 1, "one line when it ends");
    println!(
        "Redis killed under load, fail-{policy}: {} calls ({} Validate, {} CheckRateLimit); \
         switch-over {switch_over:?} after the kill (server log; the first policy answer reached a client after {switched:?}); \
         {late} calls UNAVAILABLE while switching; Redis back in health {back:?} after its restart ({:?} down); \
         calls by phase {phases:?}; errors outside the switch-over: {errors:?}; wrong answers: {}",
        observed.len(),
        observed.iter().filter(|o| o.kind == "Validate").count(),
        observed
            .iter()
            .filter(|o| o.kind == "CheckRateLimit")
            .count(),
        restarted - killed,
        wrong.len(),
    );
    assert!(
        wrong.is_empty(),
        "wrong answers: {:?}",
        &wrong[..wrong.len().min(10)]
    );
    assert!(
        errors.is_empty(),
        "errors outside the switch-over: {errors:?}"
    );
    assert!(
        switch_over <= 2 * PROBE_INTERVAL,
        "switch-over took {switch_over:?} (bound {:?})",
        2 * PROBE_INTERVAL
    );
    assert!(
        ended[0]["decisions_by_policy"].as_u64().unwrap() >= 200,
        "{}",
        ended[0]
    );
    assert!(
        !log.iter().any(|l| l.contains("panicked")),
        "nothing panics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_open_without_a_wrong_answer_and_counting_resumes() {
    let _alone = measuring_alone().await;
    tokio::time::timeout(Duration::from_secs(150), redis_killed_under_load("open"))
        .await
        .expect("the test finished within 150 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_closed_without_a_wrong_answer_and_counting_resumes() {
    let _alone = measuring_alone().await;
    tokio::time::timeout(Duration::from_secs(150), redis_killed_under_load("closed"))
        .await
        .expect("the test finished within 150 s");
}

// ---------------------------------------------------------------------------
// PostgreSQL stopped under load.

/// How long a cached key is trusted without invalidations (a replica on
/// PostgreSQL without Redis): the staleness bound of this test.
const DEGRADED_TTL: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_keeps_warm_keys_valid_within_the_staleness_bound_and_loses_nothing()
 {
    let _alone = measuring_alone().await;
    let test = async {
        let mut postgres = PostgresServer::start();
        let data_dir = tempfile::tempdir().unwrap();
        let database_url = postgres.url();
        let ttl_secs = DEGRADED_TTL.as_secs().to_string();
        let server = ServerProcess::start(
            data_dir.path(),
            &[
                ("APIKEYD_DATABASE_URL", database_url.as_str()),
                ("APIKEYD_KEY_CACHE_DEGRADED_TTL_SECS", ttl_secs.as_str()),
            ],
        );
        let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key"))
            .unwrap()
            .trim()
            .to_owned();
        let channel = connect(server.addr).await;
        let mut keys = KeyServiceClient::new(channel.clone());
        let mut created = Vec::new();
        for i in 0..25 {
            let answer = keys
                .create_key(with_bearer(
                    unlimited_key(&format!("owner_{}", i % 5)),
                    &root_key,
                ))
                .await
                .expect("CreateKey before the outage")
                .into_inner();
            created.push((answer.key, answer.api_key.unwrap().id));
        }
        let (warm, cold) = created.split_at(20);
        let mut validation = ValidationServiceClient::new(channel.clone());
        let warmed_from = Instant::now();
        for (key, _) in warm {
            let answer = validation
                .validate(validate_request(key))
                .await
                .unwrap()
                .into_inner();
            assert!(answer.valid);
        }
        let warmed_until = Instant::now();
        assert_eq!(health(&channel, "").await, ServingStatus::Serving);

        // Load on the warm keys until well past the staleness bound.
        let trusted_until = warmed_from + DEGRADED_TTL;
        let stale_from = warmed_until + DEGRADED_TTL;
        let load_until = stale_from + Duration::from_secs(3);
        let tally = Tally::new();
        // When the database went down, and the VALID answers since.
        let stopped_at = Arc::new(std::sync::OnceLock::<Instant>::new());
        let valid_during = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut workers = Workers::new();
        for w in 0..4 {
            let client = ValidationServiceClient::new(connect(server.addr).await);
            let (tally, warm) = (tally.clone(), warm.to_vec());
            let (stopped_at, valid_during) = (stopped_at.clone(), valid_during.clone());
            workers.spawn(move |i| {
                let (mut client, tally) = (client.clone(), tally.clone());
                let (stopped_at, valid_during) = (stopped_at.clone(), valid_during.clone());
                let key = warm[(w * 5 + i as usize) % warm.len()].0.clone();
                async move {
                    let began = Instant::now();
                    if began > load_until {
                        tokio::task::yield_now().await;
                        return;
                    }
                    let result = client.validate(validate_request(&key)).await;
                    let latency = began.elapsed();
                    match result {
                        Ok(answer) => {
                            let code = code_name(answer.get_ref());
                            tally.record("Validate", Ok(format!("{code:?}")), &[], latency);
                            if stopped_at.get().is_some_and(|at| began > *at) {
                                valid_during.fetch_add(1, Ordering::Relaxed);
                            }
                            if code != ValidationCode::Valid {
                                tally.wrong(format!("a warm key answered {code:?}"));
                            } else if began > stale_from + Duration::from_millis(500) {
                                tally.wrong("a warm key validated past the staleness bound with the database down".into());
                            }
                        }
                        Err(status) => {
                            tally.record("Validate", Err(&status), &[], latency);
                            if status.code() != Code::Unavailable {
                                tally.wrong(format!("{:?}: {}", status.code(), status.message()));
                            } else if began < trusted_until - Duration::from_millis(500) {
                                tally.wrong("a warm key was refused within the staleness bound".into());
                            }
                        }
                    }
                }
            });
        }

        let stopped = Instant::now();
        stopped_at.set(stopped).unwrap();
        postgres.stop_fast();
        let stop_took = stopped.elapsed();
        assert!(
            Instant::now() < trusted_until,
            "PostgreSQL stopped only after the warm entries' bound: the machine is too busy for this test"
        );
        let not_serving = wait_for_health_within(
            &channel,
            "",
            ServingStatus::NotServing,
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(
            health(&channel, "liveness").await,
            ServingStatus::Serving,
            "liveness stays SERVING"
        );
        assert_eq!(
            health(&channel, "apikeyd.v1.KeyService").await,
            ServingStatus::NotServing
        );

        // Management calls: UNAVAILABLE with a message that says what to do.
        let began = Instant::now();
        let refused = keys
            .create_key(with_bearer(create_request("owner_0", &["*"]), &root_key))
            .await
            .expect_err("CreateKey with the database down");
        let management_latency = began.elapsed();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains("unreachable") && refused.message().contains("retry"),
            "{refused:?}"
        );
        let listed = keys
            .list_keys(with_bearer(pb::ListKeysRequest::default(), &root_key))
            .await
            .expect_err("ListKeys with the database down");
        assert_eq!(listed.code(), Code::Unavailable, "{listed:?}");
        // A key never validated before: nothing is known of it, so
        // UNAVAILABLE, never NOT_FOUND; also for the callers that share
        // the one lookup of concurrent first calls.
        let first_calls: Vec<_> = (0..8)
            .map(|_| {
                let (mut client, key) = (validation.clone(), cold[0].0.clone());
                tokio::spawn(async move {
                    client
                        .validate(validate_request(&key))
                        .await
                        .map(|a| code_name(a.get_ref()))
                        .map_err(|s| (s.code(), s.message().to_owned()))
                })
            })
            .collect();
        for call in first_calls {
            let answer = call.await.unwrap();
            assert!(
                matches!(&answer, Err((Code::Unavailable, message)) if message.contains("unreachable")),
                "a cold key with the database down: {answer:?}"
            );
        }

        workers.stop().await;
        let outage = stopped.elapsed();
        postgres.start_again();
        let serving = wait_for_health_within(
            &channel,
            "",
            ServingStatus::Serving,
            Duration::from_secs(15),
        )
        .await;

        // Everything created before the outage is there and works.
        let listed = keys
            .list_keys(with_bearer(
                pb::ListKeysRequest {
                    page_size: 100,
                    ..Default::default()
                },
                &root_key,
            ))
            .await
            .expect("ListKeys after the restart")
            .into_inner();
        let ids: BTreeSet<_> = listed.api_keys.iter().map(|k| k.id.clone()).collect();
        for (key, id) in &created {
            assert!(ids.contains(id), "key {id} is listed after the restart");
            let answer = validation
                .validate(validate_request(key))
                .await
                .unwrap()
                .into_inner();
            assert!(
                answer.valid,
                "key {id} validates after the restart: {answer:?}"
            );
        }
        keys.create_key(with_bearer(create_request("owner_0", &["*"]), &root_key))
            .await
            .expect("CreateKey after the restart");

        tally.print("PostgreSQL stopped under load");
        let valid = valid_during.load(Ordering::Relaxed);
        println!(
            "  pg_ctl stop -m fast took {stop_took:?}; health NOT_SERVING {not_serving:?} after it; \
             CreateKey answered UNAVAILABLE in {management_latency:?}; outage {outage:?}; \
             health SERVING {serving:?} after the restart; {valid} warm Validate calls answered VALID with the database down \
             (staleness bound {DEGRADED_TTL:?}); {} keys created before the outage all listed and valid",
            created.len()
        );
        tally.assert_no_wrong_answer();
        assert!(valid > 0, "warm keys validated during the outage");
        // One wait for the pool (5 s), not a second one to audit the refusal.
        assert!(
            management_latency < Duration::from_secs(8),
            "CreateKey took {management_latency:?} to answer UNAVAILABLE"
        );
        let (status, log) = server.terminate();
        assert!(status.success());
        assert!(
            !log.iter().any(|l| l.contains("panicked")),
            "nothing panics"
        );
        let refusals: Vec<serde_json::Value> = log
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|e| e["target"] == "apikeyd::audit" && e["outcome_code"] == "UNAVAILABLE")
            .collect();
        assert!(
            refusals.len() >= 2 && refusals.iter().all(|e| e["recorded"] == false),
            "CreateKey and ListKeys refused, each in one log line (the database could not take them): {refusals:?}"
        );
    };
    tokio::time::timeout(Duration::from_secs(180), test)
        .await
        .expect("the test finished within 3 minutes");
}

// ---------------------------------------------------------------------------
// Replicas killed and restarted.

/// Creates `n` keys through replica 0; returns (key, id) pairs.
async fn create_keys(
    replicas: &ReplicaSet,
    channels: &[Channel],
    n: usize,
) -> Vec<(String, String)> {
    let mut keys = KeyServiceClient::new(channels[0].clone());
    let mut created = Vec::new();
    for i in 0..n {
        let answer = keys
            .create_key(with_bearer(
                unlimited_key(&format!("owner_{}", i % 5)),
                &replicas.root_key,
            ))
            .await
            .expect("CreateKey")
            .into_inner();
        created.push((answer.key, answer.api_key.unwrap().id));
    }
    created
}

/// A key the test revokes during the load.
#[derive(Clone)]
struct Revocation {
    key: String,
    /// When RevokeKey answered; unset until then.
    answered_at: Arc<std::sync::Mutex<Option<Instant>>>,
    /// From `answered_at + lag` on, every replica must refuse the key.
    lag: Duration,
}

/// Load with failover, from six workers: Validate of good keys (always
/// VALID; worker 0 validates the `revoked` key instead, VALID until its
/// revocation, REVOKED from its lag on), CheckRateLimit on a limit it never
/// reaches (workers 3 and 4), and GetKey (worker 5).
fn start_failover_load(
    channels: &[Channel],
    root_key: &str,
    good: &[(String, String)],
    revoked: Option<Revocation>,
    tally: &Arc<Tally>,
) -> Workers {
    let mut workers = Workers::new();
    for w in 0..6usize {
        let (channels, tally, good, revoked) = (
            channels.to_vec(),
            tally.clone(),
            good.to_vec(),
            revoked.clone(),
        );
        let root_key = root_key.to_owned();
        workers.spawn(move |i| {
            let (channels, tally, good, revoked, root_key) = (
                channels.clone(),
                tally.clone(),
                good.clone(),
                revoked.clone(),
                root_key.clone(),
            );
            async move {
                let first = (w + i as usize) % channels.len();
                match (w, i % 4) {
                    (0..=2, _) | (3, 0..=1) => {
                        let (key, judge_revoked) = match (&revoked, w) {
                            (Some(r), 0) => (r.key.clone(), Some((r.answered_at.clone(), r.lag))),
                            _ => (good[(w * 7 + i as usize) % good.len()].0.clone(), None),
                        };
                        let began = Instant::now();
                        let result = with_failover(&channels, first, |c| {
                            let key = key.clone();
                            async move {
                                ValidationServiceClient::new(c)
                                    .validate(validate_request(&key))
                                    .await
                                    .map(|a| code_name(a.get_ref()))
                            }
                        })
                        .await;
                        match result {
                            Ok(answered) => {
                                let code = answered.value;
                                tally.record(
                                    "Validate",
                                    Ok(format!("{code:?}")),
                                    &answered.failed_over,
                                    answered.latency,
                                );
                                let must_refuse = judge_revoked.as_ref().and_then(|(at, lag)| {
                                    at.lock().unwrap().map(|at| began > at + *lag)
                                });
                                let expected_valid = match (&judge_revoked, must_refuse) {
                                    (None, _) => Some(true),
                                    (Some(_), Some(true)) => Some(false),
                                    // Before the revocation's answer, or within its lag: either.
                                    (Some(_), _) => None,
                                };
                                match expected_valid {
                                    Some(true) if code != ValidationCode::Valid => {
                                        tally.wrong(format!(
                                            "a good key answered {code:?} on replica {}",
                                            answered.replica
                                        ))
                                    }
                                    Some(false) if code != ValidationCode::Revoked => {
                                        tally.wrong(format!(
                                            "the revoked key answered {code:?} on replica {}",
                                            answered.replica
                                        ))
                                    }
                                    None if !matches!(
                                        code,
                                        ValidationCode::Valid | ValidationCode::Revoked
                                    ) =>
                                    {
                                        tally.wrong(format!(
                                            "the key being revoked answered {code:?}"
                                        ))
                                    }
                                    _ => {}
                                }
                            }
                            Err((status, failed_over)) => tally.record(
                                "Validate",
                                Err(&status),
                                &failed_over,
                                began.elapsed(),
                            ),
                        }
                    }
                    (3, _) | (4, _) => {
                        let began = Instant::now();
                        let request = check_request(
                            "faults",
                            &format!("client-{w}"),
                            1_000_000_000,
                            LONG_WINDOW_MS,
                            RateLimitAlgorithm::SlidingWindow,
                            1,
                        );
                        let result = with_failover(&channels, first, |c| {
                            let request = request.clone();
                            async move {
                                RateLimitServiceClient::new(c)
                                    .check_rate_limit(request)
                                    .await
                                    .map(|a| a.into_inner().allowed)
                            }
                        })
                        .await;
                        match result {
                            Ok(answered) => {
                                tally.record(
                                    "CheckRateLimit",
                                    Ok(format!("allowed={}", answered.value)),
                                    &answered.failed_over,
                                    answered.latency,
                                );
                                if !answered.value {
                                    tally.wrong(
                                        "CheckRateLimit refused a call far below its limit".into(),
                                    );
                                }
                            }
                            Err((status, failed_over)) => tally.record(
                                "CheckRateLimit",
                                Err(&status),
                                &failed_over,
                                began.elapsed(),
                            ),
                        }
                    }
                    _ => {
                        let began = Instant::now();
                        let (_, id) = &good[i as usize % good.len()];
                        let result = with_failover(&channels, first, |c| {
                            let request =
                                with_bearer(pb::GetKeyRequest { id: id.clone() }, &root_key);
                            async move {
                                KeyServiceClient::new(c)
                                    .get_key(request)
                                    .await
                                    .map(|a| a.into_inner().api_key.map(|k| k.id))
                            }
                        })
                        .await;
                        match result {
                            Ok(answered) => {
                                tally.record(
                                    "GetKey",
                                    Ok("OK".into()),
                                    &answered.failed_over,
                                    answered.latency,
                                );
                                if answered.value.as_ref() != Some(id) {
                                    tally.wrong(format!(
                                        "GetKey {id} answered {:?}",
                                        answered.value
                                    ));
                                }
                            }
                            Err((status, failed_over)) => {
                                tally.record("GetKey", Err(&status), &failed_over, began.elapsed())
                            }
                        }
                    }
                }
            }
        });
    }
    workers
}

/// Within this of RevokeKey's answer, every replica refuses the key (Redis
/// reachable: one XREAD round trip; generous for a loaded machine).
const REVOCATION_LAG: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_load_loses_no_call_and_every_survivor_refuses_a_key_revoked_meanwhile()
 {
    let _alone = measuring_alone().await;
    let test = async {
        let mut replicas = ReplicaSet::start(3, &[]).await;
        let channels = replicas.channels();
        let created = create_keys(&replicas, &channels, 21).await;
        let (good, doomed) = created.split_at(20);
        let (doomed_key, doomed_id) = doomed[0].clone();
        let revoked_at = Arc::new(std::sync::Mutex::new(None));
        let tally = Tally::new();
        let workers = start_failover_load(
            &channels,
            &replicas.root_key,
            good,
            Some(Revocation {
                key: doomed_key.clone(),
                answered_at: revoked_at.clone(),
                lag: REVOCATION_LAG,
            }),
            &tally,
        );
        eventually(
            Duration::from_secs(30),
            "300 calls before the kill",
            || async { tally.calls() >= 300 },
        )
        .await;

        let calls_at_kill = tally.calls();
        replicas.kill(1);
        eventually(
            Duration::from_secs(30),
            "300 calls after the kill",
            || async { tally.calls() >= calls_at_kill + 300 },
        )
        .await;

        // Revoked on a survivor, mid-load.
        KeyServiceClient::new(channels[2].clone())
            .revoke_key(with_bearer(
                pb::RevokeKeyRequest {
                    id: doomed_id.clone(),
                    owner_id: String::new(),
                },
                &replicas.root_key,
            ))
            .await
            .expect("RevokeKey on a survivor");
        let answered_at = Instant::now();
        *revoked_at.lock().unwrap() = Some(answered_at);
        let mut lags = Vec::new();
        for (i, _) in replicas.running() {
            let mut client = ValidationServiceClient::new(channels[i].clone());
            eventually(
                REVOCATION_LAG,
                &format!("replica {i} refuses the revoked key"),
                || {
                    let (mut client, key) = (client.clone(), doomed_key.clone());
                    async move {
                        client
                            .validate(validate_request(&key))
                            .await
                            .is_ok_and(|a| code_name(a.get_ref()) == ValidationCode::Revoked)
                    }
                },
            )
            .await;
            let lag = answered_at.elapsed();
            assert!(
                lag <= REVOCATION_LAG,
                "replica {i} refused the revoked key only after {lag:?}"
            );
            lags.push((i, lag));
            let answer = client
                .validate(validate_request(&doomed_key))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                code_name(&answer),
                ValidationCode::Revoked,
                "replica {i} keeps refusing it"
            );
        }
        let calls_at_revoke = tally.calls();
        eventually(
            Duration::from_secs(30),
            "300 calls after the revocation",
            || async { tally.calls() >= calls_at_revoke + 300 },
        )
        .await;
        workers.stop().await;

        tally.print("One of three replicas SIGKILLed mid-load");
        println!(
            "  the revoked key refused by each survivor after (from RevokeKey's answer): {lags:?}"
        );
        tally.assert_no_wrong_answer();
        assert_eq!(
            tally.errors(),
            Default::default(),
            "every call answered, after failing over if it had to"
        );
        assert!(
            !tally.failed_over().is_empty(),
            "some calls met the dead replica and failed over"
        );
    };
    tokio::time::timeout(Duration::from_secs(180), test)
        .await
        .expect("the test finished within 3 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_three_replicas_loses_no_call_and_gives_no_wrong_answer() {
    let _alone = measuring_alone().await;
    let test = async {
        let mut replicas = ReplicaSet::start(3, &[]).await;
        let channels = replicas.channels();
        let good = create_keys(&replicas, &channels, 20).await;
        let tally = Tally::new();
        let workers = start_failover_load(&channels, &replicas.root_key, &good, None, &tally);
        eventually(
            Duration::from_secs(30),
            "300 calls before the restarts",
            || async { tally.calls() >= 300 },
        )
        .await;
        let mut restarts = Vec::new();
        for i in 0..replicas.len() {
            let began = Instant::now();
            let status = replicas.terminate(i);
            assert!(
                status.success(),
                "replica {i} drained and exited 0: {status:?}"
            );
            let drained = began.elapsed();
            replicas.restart(i);
            let back = began.elapsed();
            let calls = tally.calls();
            eventually(
                Duration::from_secs(30),
                "200 calls with the restarted replica",
                || async { tally.calls() >= calls + 200 },
            )
            .await;
            restarts.push((i, drained, back));
        }
        workers.stop().await;
        tally.print("Rolling restart of three replicas");
        for (i, drained, back) in &restarts {
            println!("  replica {i}: SIGTERM to exit {drained:?}, serving again after {back:?}");
        }
        tally.assert_no_wrong_answer();
        assert_eq!(
            tally.errors(),
            Default::default(),
            "no call lost: every call answered, after failing over if it had to"
        );
    };
    tokio::time::timeout(Duration::from_secs(240), test)
        .await
        .expect("the test finished within 4 minutes");
}

// ---------------------------------------------------------------------------
// The embedded backend's disk full, then read-only.

/// SQLite's own verdict on the file, read without writing anything
/// (`immutable` for a read-only directory, where SQLite cannot share the WAL index).
async fn integrity_check(data_dir: &std::path::Path, immutable: bool) -> String {
    let db = Database::connect(format!(
        "sqlite://{}?mode=ro&immutable={immutable}",
        data_dir.join("apikeyd.db").display()
    ))
    .await
    .expect("open the database read-only");
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            "PRAGMA integrity_check",
        ))
        .await
        .expect("PRAGMA integrity_check")
        .expect("one row");
    let verdict: String = row.try_get_by_index(0).unwrap();
    db.close().await.ok();
    verdict
}

async fn create(
    keys: &mut KeyServiceClient<Channel>,
    root_key: &str,
    owner: &str,
) -> Result<(String, String), Status> {
    keys.create_key(with_bearer(unlimited_key(owner), root_key))
        .await
        .map(|a| {
            let a = a.into_inner();
            (a.key, a.api_key.unwrap().id)
        })
}

/// Every key in `created` is listed (revoked or not) and validates.
async fn all_there(channel: &Channel, root_key: &str, created: &[(String, String)]) {
    let mut keys = KeyServiceClient::new(channel.clone());
    let mut ids = BTreeSet::new();
    let mut token = String::new();
    loop {
        let page = keys
            .list_keys(with_bearer(
                pb::ListKeysRequest {
                    page_size: 100,
                    page_token: token.clone(),
                    include_revoked: true,
                    ..Default::default()
                },
                root_key,
            ))
            .await
            .expect("ListKeys")
            .into_inner();
        ids.extend(page.api_keys.into_iter().map(|k| k.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut validation = ValidationServiceClient::new(channel.clone());
    for (key, id) in created {
        assert!(ids.contains(id), "key {id} is listed");
        let answer = validation
            .validate(validate_request(key))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.valid, "key {id} validates: {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_resource_exhausted_keeps_validating_and_corrupts_nothing()
{
    let test = async {
        let disk = Tmpfs::mount("16m");
        let server = ServerProcess::start(disk.path(), &[]);
        let root_key = std::fs::read_to_string(disk.path().join("bootstrap-root-key"))
            .unwrap()
            .trim()
            .to_owned();
        let channel = connect(server.addr).await;
        let mut keys = KeyServiceClient::new(channel.clone());
        let mut created = Vec::new();
        for i in 0..20 {
            created.push(
                create(&mut keys, &root_key, &format!("owner_{}", i % 4))
                    .await
                    .expect("CreateKey"),
            );
        }
        let mut validation = ValidationServiceClient::new(channel.clone());
        for (key, _) in &created[..10] {
            assert!(
                validation
                    .validate(validate_request(key))
                    .await
                    .unwrap()
                    .into_inner()
                    .valid
            );
        }

        let ballast = disk.fill();
        // SQLite may still find room in pages it already has: create until it cannot.
        let mut refused = None;
        let mut created_while_full = 0;
        for i in 0..500 {
            match create(&mut keys, &root_key, &format!("full_{i}")).await {
                Ok(key) => {
                    created.push(key);
                    created_while_full += 1;
                }
                Err(status) => {
                    refused = Some(status);
                    break;
                }
            }
        }
        let refused = refused.expect("a full disk refuses CreateKey within 500 calls");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(
            refused.message().contains("disk is full") && refused.message().contains("free space"),
            "{refused:?}"
        );
        // Reads go on: warm keys and cold ones validate.
        for (key, id) in &created {
            let answer = validation
                .validate(validate_request(key))
                .await
                .unwrap()
                .into_inner();
            assert!(
                answer.valid,
                "key {id} validates on a full disk: {answer:?}"
            );
        }
        let integrity_full = integrity_check(disk.path(), false).await;

        disk.free();
        let after = create(&mut keys, &root_key, "after")
            .await
            .expect("CreateKey once space is free");
        created.push(after);
        all_there(&channel, &root_key, &created).await;
        let integrity = integrity_check(disk.path(), false).await;
        println!(
            "Disk full (a 16 MiB tmpfs, {ballast} bytes of ballast): {created_while_full} keys still created in pages SQLite had, \
             then CreateKey {:?} \"{}\"; {} keys validated on the full disk; integrity_check {integrity_full:?} full, {integrity:?} after; \
             all {} keys listed and valid once space was freed",
            refused.code(),
            refused.message(),
            created.len() - 1,
            created.len()
        );
        assert_eq!(integrity_full, "ok");
        assert_eq!(integrity, "ok");
        let (status, log) = server.terminate();
        assert!(status.success());
        assert!(
            !log.iter().any(|l| l.contains("panicked")),
            "nothing panics"
        );
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test finished within 2 minutes");
}

/// Runs `apikeyd serve` on `data_dir` and waits for it to give up (killed,
/// and the test failed, if it still runs after `limit`).
fn serve_until_exit(data_dir: &std::path::Path, limit: Duration) -> std::process::Output {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_apikeyd"))
        .arg("serve")
        .env_clear()
        .env("APIKEYD_GRPC_ADDR", "127.0.0.1:0")
        .env("APIKEYD_HTTP_ADDR", "127.0.0.1:0")
        .env("APIKEYD_DATA_DIR", data_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run apikeyd serve");
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done_rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait for apikeyd serve"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("apikeyd serve still runs after {limit:?} on a read-only data directory");
        }
    }
}

/// A read-only data directory, in the two states a restart can meet: empty
/// (serve refuses, saying why), and holding a database its last server
/// left with a WAL (after a crash: serve starts, answers Validate from what
/// it can read, and refuses writes UNAVAILABLE saying the store is
/// read-only). The kernel refuses `remount,ro` while a server has the
/// files open for writing, so the fault is met at a (re)start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_directory_refuses_writes_clearly_keeps_validating_and_corrupts_nothing() {
    let test = async {
        let disk = Tmpfs::mount("16m");
        let remount = |mode: &str| {
            let output = disk.remount(mode);
            assert!(
                output.status.success(),
                "remount,{mode}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };

        // Empty and read-only: serve refuses, naming the directory and the cause.
        remount("ro");
        let output = serve_until_exit(disk.path(), Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains("is not writable (Read-only file system"),
            "the refusal says why: {stderr}"
        );
        let refusal = stderr.lines().last().unwrap_or_default().to_owned();
        remount("rw");

        // A server writes keys, then crashes (its WAL stays behind).
        let mut created = Vec::new();
        {
            let server = ServerProcess::start(disk.path(), &[]);
            let root_key = std::fs::read_to_string(disk.path().join("bootstrap-root-key")).unwrap();
            let mut keys = KeyServiceClient::new(connect(server.addr).await);
            for i in 0..10 {
                created.push(
                    create(&mut keys, root_key.trim(), &format!("owner_{}", i % 4))
                        .await
                        .expect("CreateKey"),
                );
            }
            let busy = disk.remount("ro");
            println!(
                "remount,ro under a running server: {} ({})",
                busy.status,
                String::from_utf8_lossy(&busy.stderr).trim()
            );
            // Dropped: SIGKILL.
        }
        remount("ro");
        let root_key = std::fs::read_to_string(disk.path().join("bootstrap-root-key"))
            .unwrap()
            .trim()
            .to_owned();
        let server = ServerProcess::start(disk.path(), &[]);
        let channel = connect(server.addr).await;
        let mut keys = KeyServiceClient::new(channel.clone());
        let refused = create(&mut keys, &root_key, "read_only")
            .await
            .expect_err("CreateKey on a read-only directory");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("read-only"), "{refused:?}");
        let mut validation = ValidationServiceClient::new(channel.clone());
        for (key, id) in &created {
            let answer = validation
                .validate(validate_request(key))
                .await
                .unwrap()
                .into_inner();
            assert!(
                answer.valid,
                "key {id} validates from a read-only directory: {answer:?}"
            );
        }
        let (status, log) = server.terminate();
        assert!(status.success());
        assert!(
            !log.iter().any(|l| l.contains("panicked")),
            "nothing panics"
        );
        let integrity_ro = integrity_check(disk.path(), true).await;

        remount("rw");
        let server = ServerProcess::start(disk.path(), &[]);
        let channel = connect(server.addr).await;
        let mut keys = KeyServiceClient::new(channel.clone());
        created.push(
            create(&mut keys, &root_key, "after")
                .await
                .expect("CreateKey once writable"),
        );
        all_there(&channel, &root_key, &created).await;
        let integrity = integrity_check(disk.path(), false).await;
        println!(
            "Read-only data directory: empty, serve exits {} \"{refusal}\"; after a crash, serve starts, \
             CreateKey {:?} \"{}\", {} keys validate; integrity_check {integrity_ro:?} read-only, {integrity:?} after; \
             all {} keys listed and valid once writable",
            output.status,
            refused.code(),
            refused.message(),
            created.len() - 1,
            created.len()
        );
        assert_eq!(integrity_ro, "ok");
        assert_eq!(integrity, "ok");
        let (status, _) = server.terminate();
        assert!(status.success());
    };
    tokio::time::timeout(Duration::from_secs(180), test)
        .await
        .expect("the test finished within 3 minutes");
}
