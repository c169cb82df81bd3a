//! A Validate with limits and a quota costs one Redis round trip (one
//! EVALSHA), one without costs none, and Validate calls that arrive together
//! share EVALSHAs (still exact); usage reaches Redis in background flushes,
//! one per key. Seen with MONITOR (every command a client sends, and
//! the commands scripts run, marked `lua`) on a Redis this test owns.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use apikeyd::config::RedisUrl;
use apikeyd::grpc::pb::{self, RateLimitAlgorithm};

use crate::helpers::{Backend, TestApp, spawn_app_with};
use crate::limiter_harness::{RedisServer, rate_limit, redis_cli_bin, redis_connection, unique};

const VALIDATIONS: usize = 20;
/// Validate calls sent at once, against a limit of `LIMIT`.
const CONCURRENT: usize = 300;
const LIMIT: u32 = 100;

/// A server whose limiter is a Redis this test owns (so MONITOR sees only it).
async fn server_with_own_redis() -> (RedisServer, TestApp) {
    let redis = RedisServer::start(false);
    let url = redis.url();
    let app = spawn_app_with(Backend::Sqlite, |settings| {
        settings.redis.url = Some(RedisUrl::from(url.as_str()));
        settings.redis.timeout_ms = 2_000;
    })
    .await;
    (redis, app)
}

/// Issues a key for `request`: the full key and its id.
async fn issue(app: &TestApp, request: pb::CreateKeyRequest) -> (String, String) {
    let created = app
        .keys
        .clone()
        .create_key(app.authed(request))
        .await
        .unwrap()
        .into_inner();
    (created.key, created.api_key.unwrap().id)
}

/// The usage of key `id`.
async fn usage_of(app: &TestApp, id: &str) -> pb::GetKeyUsageResponse {
    app.keys
        .clone()
        .get_key_usage(app.authed(pb::GetKeyUsageRequest {
            id: id.to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
}

/// Validates `key`, sending `context`.
async fn validate(
    app: &TestApp,
    key: &str,
    context: Option<pb::RequestContext>,
) -> pb::ValidateResponse {
    app.validation
        .clone()
        .validate(pb::ValidateRequest {
            key: key.to_owned(),
            context,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validate_with_limits_quota_and_usage_is_one_round_trip() {
    let test = async {
        let (redis, app) = server_with_own_redis().await;
        app.keys
            .clone()
            .set_owner_limits(app.authed(pb::SetOwnerLimitsRequest {
                owner_id: "owner".into(),
                tier: "pro".into(),
                rate_limits: vec![],
            }))
            .await
            .unwrap();
        let mut request = crate::helpers::create_request("owner", &["*"]);
        request.rate_limits = vec![
            rate_limit(100, 1_000, RateLimitAlgorithm::TokenBucket),
            rate_limit(1_000, 3_600_000, RateLimitAlgorithm::SlidingWindow),
        ];
        request.quota = Some(pb::UsageQuota {
            remaining: 1_000,
            refill_amount: 1_000,
            refill_interval: pb::RefillInterval::Monthly as i32,
        });
        let (key, id) = issue(&app, request).await;
        let context = pb::RequestContext {
            endpoint: "/v1/posts".into(),
            method: "GET".into(),
            ip: "192.0.2.1".into(),
            user_agent: "bench".into(),
        };
        let validate = || validate(&app, &key, Some(context.clone()));
        // The first call loads the script (EVALSHA, NOSCRIPT, SCRIPT LOAD,
        // EVALSHA); reading usage flushes what was gathered (and loads that
        // script too).
        assert!(validate().await.valid);
        let read_usage = || usage_of(&app, &id);
        read_usage().await;

        let sent = commands_sent_during(&redis, async {
            for _ in 0..VALIDATIONS {
                assert!(validate().await.valid);
            }
        })
        .await;

        // Decisions name the limit and quota keys; background usage flushes
        // name the key's usage base.
        let (flushes, decisions): (Vec<&String>, Vec<&String>) = sent
            .iter()
            .filter(|l| !by_script(l))
            .partition(|l| l.contains(":usage\""));
        assert_eq!(
            decisions.len(),
            VALIDATIONS,
            "one round trip per Validate: {decisions:#?}"
        );
        assert!(
            decisions
                .iter()
                .all(|l| l.to_lowercase().contains("\"evalsha\"")),
            "{decisions:#?}"
        );
        assert!(
            flushes.len() <= 2,
            "usage is flushed per key, not per call: {flushes:#?}"
        );
        let usage = read_usage().await;
        let total: u64 = usage.buckets.iter().map(|b| b.total).sum();
        assert_eq!(
            total,
            VALIDATIONS as u64 + 1,
            "every validation was counted"
        );
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test finished within 2 minutes");
}

/// Commands apikeyd sends while `work` runs (the health probe's PING and
/// the invalidation stream's heartbeat reads aside), and those its scripts
/// run ([`by_script`]), seen with MONITOR on `redis`. MONITOR is known to be attached
/// before `work` starts: a marker sent from another connection must come
/// back in its stream first; a second marker after `work` closes the window,
/// so every command `work` caused is in it and nothing from before.
async fn commands_sent_during(
    redis: &RedisServer,
    work: impl std::future::Future<Output = ()>,
) -> Vec<String> {
    let mut monitor = Command::new(redis_cli_bin())
        .args(["-p", &redis.port.to_string(), "monitor"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli monitor");
    let stdout = BufReader::new(monitor.stdout.take().unwrap());
    let (lines, mut seen) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut markers = redis_connection(&redis.url());
    let (start, end) = (unique("monitor-start"), unique("monitor-end"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        redis::cmd("ECHO")
            .arg(&start)
            .query::<String>(&mut markers)
            .unwrap();
        if wait_for(&start, &mut seen, &mut Vec::new()).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "MONITOR did not attach within 10 s"
        );
    }

    work.await;

    redis::cmd("ECHO")
        .arg(&end)
        .query::<String>(&mut markers)
        .unwrap();
    let mut window = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if wait_for(&end, &mut seen, &mut window).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "MONITOR never showed the end marker"
        );
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    window
        .into_iter()
        .filter(|l| {
            l.contains(" [")
                && !l.contains(&start)
                && !l.to_lowercase().contains("\"ping\"")
                && !l.contains(":invalidations\"")
        })
        .collect()
}

/// Whether a MONITOR line is a command a script ran (`[db lua]`), not one a
/// client sent.
fn by_script(line: &str) -> bool {
    line.contains(" lua]")
}

/// Collects what MONITOR shows into `lines` until `marker` (an ECHO
/// argument) comes (true), or nothing more comes for 100 ms (false).
async fn wait_for(
    marker: &str,
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    lines: &mut Vec<String>,
) -> bool {
    let marker = format!("\"{marker}\"");
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(100), seen.recv()).await {
        if line.contains(&marker) {
            return true;
        }
        lines.push(line);
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_validates_share_script_calls_and_stay_exact() {
    let test = async {
        let (redis, app) = server_with_own_redis().await;
        let mut request = crate::helpers::create_request("owner", &["*"]);
        request.rate_limits = vec![rate_limit(
            LIMIT,
            30 * 86_400_000,
            RateLimitAlgorithm::FixedWindow,
        )];
        let key = app
            .keys
            .clone()
            .create_key(app.authed(request))
            .await
            .unwrap()
            .into_inner()
            .key;
        let valid = Arc::new(AtomicUsize::new(0));

        let sent = commands_sent_during(&redis, async {
            let calls: Vec<_> = (0..CONCURRENT)
                .map(|_| {
                    let mut client = app.validation.clone();
                    let (key, valid) = (key.clone(), valid.clone());
                    tokio::spawn(async move {
                        let verdict = client
                            .validate(pb::ValidateRequest {
                                key,
                                ..Default::default()
                            })
                            .await
                            .unwrap()
                            .into_inner();
                        if verdict.valid {
                            valid.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for call in calls {
                call.await.unwrap();
            }
        })
        .await;

        let evalshas = sent
            .iter()
            .filter(|l| !by_script(l) && l.to_lowercase().contains("\"evalsha\""))
            .count();
        println!(
            "{CONCURRENT} concurrent Validate calls: {evalshas} EVALSHA ({:.1} decisions per round trip)",
            CONCURRENT as f64 / evalshas as f64
        );
        let counter_writes = sent
            .iter()
            .filter(|l| by_script(l) && l.to_lowercase().contains("\"hset\""))
            .count();
        println!("{counter_writes} HSET of the counter by those scripts");
        assert_eq!(valid.load(Ordering::Relaxed), LIMIT as usize, "exact");
        assert!(evalshas >= 1);
        assert!(counter_writes >= 1, "the admitted decisions were charged");
        assert!(
            counter_writes <= evalshas,
            "{counter_writes} writes in {evalshas} script calls: one per call, however many of its decisions charged the key"
        );
        assert!(
            2 * evalshas <= CONCURRENT,
            "{evalshas} EVALSHA for {CONCURRENT} calls: decisions that arrive together share them"
        );
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test finished within 2 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validate_without_limits_costs_no_round_trip_and_its_usage_still_arrives() {
    let test = async {
        let (redis, app) = server_with_own_redis().await;
        let (key, created) = app.create_key("owner", &["*"]).await;
        app.keys
            .clone()
            .update_key(app.authed(pb::UpdateKeyRequest {
                id: created.id.clone(),
                limits: Some(pb::update_key_request::Limits::RateLimits(
                    pb::RateLimitList {
                        rate_limits: vec![],
                    },
                )),
                ..Default::default()
            }))
            .await
            .unwrap();
        assert!(app.validate(&key, &[]).await.valid);
        let usage = || async {
            app.keys
                .clone()
                .get_key_usage(app.authed(pb::GetKeyUsageRequest {
                    id: created.id.clone(),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
        };
        // Reading usage flushes what was gathered (and loads the script).
        usage().await;

        let sent = commands_sent_during(&redis, async {
            for _ in 0..VALIDATIONS {
                assert!(app.validate(&key, &[]).await.valid);
            }
        })
        .await;

        // The background flush may land inside the window; never one per call.
        let sent: Vec<&String> = sent.iter().filter(|l| !by_script(l)).collect();
        assert!(
            sent.len() <= 2,
            "validations without limits went to Redis: {sent:#?}"
        );
        let usage = usage().await;
        let total: u64 = usage.buckets.iter().map(|b| b.total).sum();
        assert_eq!(
            total,
            VALIDATIONS as u64 + 1,
            "every validation was counted"
        );
        assert_eq!(usage.recent_requests.len(), VALIDATIONS + 1);
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test finished within 2 minutes");
}

/// A key over its limit is refused again without a round trip until its
/// wait is over (the denial is remembered); the refusals are still counted
/// as usage, and raising the key's limit ends the remembered denial at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_limit_is_refused_again_without_a_round_trip() {
    const REFUSED_AGAIN: usize = 20;
    let test = async {
        let (redis, app) = server_with_own_redis().await;
        let mut request = crate::helpers::create_request("owner", &["*"]);
        request.rate_limits = vec![rate_limit(2, 3_600_000, RateLimitAlgorithm::SlidingWindow)];
        let (key, id) = issue(&app, request).await;
        let validate = || validate(&app, &key, None);
        assert!(validate().await.valid);
        assert!(validate().await.valid);
        let first_refusal = validate().await;
        assert_eq!(first_refusal.code(), pb::ValidationCode::RateLimited);
        let first_wait = first_refusal.rate_limit.unwrap().retry_after.unwrap();

        let mut answers = Vec::new();
        let sent = commands_sent_during(&redis, async {
            for _ in 0..REFUSED_AGAIN {
                answers.push(validate().await);
            }
        })
        .await;

        let decisions: Vec<&String> = sent
            .iter()
            .filter(|l| !by_script(l) && l.to_lowercase().contains("\"evalsha\""))
            .filter(|l| !l.contains(":usage\""))
            .collect();
        assert!(
            decisions.is_empty(),
            "a remembered denial asks Redis nothing: {decisions:#?}"
        );
        for answer in &answers {
            assert_eq!(answer.code(), pb::ValidationCode::RateLimited);
            let status = answer.rate_limit.as_ref().expect("the refusing limit");
            assert_eq!(status.limit, 2);
            let wait = status.retry_after.unwrap();
            assert!(
                (wait.seconds, wait.nanos) <= (first_wait.seconds, first_wait.nanos)
                    && (wait.seconds, wait.nanos) > (0, 0),
                "the wait counts down: {wait:?} after {first_wait:?}"
            );
        }

        let usage = usage_of(&app, &id).await;
        let refused: u64 = usage
            .buckets
            .iter()
            .flat_map(|b| &b.counts)
            .filter(|c| c.code() == pb::ValidationCode::RateLimited)
            .map(|c| c.count)
            .sum();
        assert_eq!(
            refused,
            REFUSED_AGAIN as u64 + 1,
            "every refusal is counted"
        );

        app.keys
            .clone()
            .update_key(app.authed(pb::UpdateKeyRequest {
                id,
                limits: Some(pb::update_key_request::Limits::RateLimits(
                    pb::RateLimitList {
                        rate_limits: vec![rate_limit(
                            100,
                            3_600_000,
                            RateLimitAlgorithm::SlidingWindow,
                        )],
                    },
                )),
                ..Default::default()
            }))
            .await
            .unwrap();
        assert!(
            validate().await.valid,
            "a raised limit ends the remembered denial"
        );
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test finished within 2 minutes");
}
