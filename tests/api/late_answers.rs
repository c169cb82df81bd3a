//! The boundary between a slow answer and an outage, on a Redis this test
//! owns and freezes (SIGSTOP): an answer that is merely late fails that call
//! UNAVAILABLE at its deadline and never switches limits off; a Redis that
//! stays silent past the probe timeout is an outage, and the failure policy
//! takes over within the documented switch-over time.

use std::time::{Duration, Instant, SystemTime};

use apikeyd::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use apikeyd::grpc::pb::{self, RateLimitAlgorithm};
use apikeyd::ratelimit::limiter::PROBE_INTERVAL;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{ServerProcess, assert_status, connect, scrape};
use crate::limiter_harness::{RedisServer, check_request, millis, unique};

/// The longest window (30 days, epoch-aligned): a test never straddles its boundary.
const LONG_WINDOW_MS: u64 = 30 * 86_400_000;

fn limited(identifier: &str) -> pb::CheckRateLimitRequest {
    check_request(
        "late",
        identifier,
        10,
        LONG_WINDOW_MS,
        RateLimitAlgorithm::FixedWindow,
        1,
    )
}

fn with_deadline<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

async fn redis_health(channel: &Channel) -> ServingStatus {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "redis".to_owned(),
        })
        .await
        .expect("health answers")
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

/// Decisions the failure policy made, summed over verdicts, from /metrics.
async fn policy_decisions(server: &ServerProcess) -> f64 {
    scrape(server.http_addr)
        .await
        .lines()
        .filter(|l| {
            l.starts_with("apikeyd_rate_limit_decisions_total{")
                && l.contains("decided_by=\"policy\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The log lines whose message contains `needle`, as JSON.
fn logged(log: &[String], needle: &str) -> Vec<serde_json::Value> {
    log.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["message"].as_str().is_some_and(|m| m.contains(needle)))
        .collect()
}

/// When a log line was written, by its RFC 3339 timestamp.
fn logged_at(event: &serde_json::Value) -> SystemTime {
    let at = chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str().unwrap()).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_micros(at.timestamp_micros() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_fails_unavailable_and_never_switches_limits_off() {
    let _alone = crate::helpers::measuring_alone().await;
    let test = async {
        let redis = RedisServer::start(false);
        let data_dir = tempfile::tempdir().unwrap();
        let url = redis.url();
        let server = ServerProcess::start(
            data_dir.path(),
            &[
                ("APIKEYD_REDIS_URL", url.as_str()),
                ("APIKEYD_REDIS_TIMEOUT_MS", "300"),
                // The probe would call a minute of silence an outage; this
                // test stays well below it.
                ("APIKEYD_REDIS_PROBE_TIMEOUT_MS", "60000"),
                ("APIKEYD_REDIS_FAILURE_POLICY", "open"),
            ],
        );
        let channel = connect(server.addr).await;
        let mut limits = RateLimitServiceClient::new(channel.clone());
        let id = unique("id");
        let first = limits.check_rate_limit(limited(&id)).await.unwrap();
        assert_eq!(first.into_inner().remaining, 9);

        redis.pause();
        let started = Instant::now();
        let late = limits
            .check_rate_limit(with_deadline(limited(&id), Duration::from_secs(2)))
            .await;
        let waited_with_deadline = started.elapsed();
        let started = Instant::now();
        let late_without_deadline = limits.check_rate_limit(limited(&id)).await;
        let waited_without = started.elapsed();
        let health_while_late = redis_health(&channel).await;
        redis.resume();

        assert_status(late, Code::Unavailable, "did not answer");
        assert!(
            (Duration::from_millis(1_800)..Duration::from_secs(2)).contains(&waited_with_deadline),
            "a call with a 2 s deadline waited {waited_with_deadline:?}"
        );
        assert_status(late_without_deadline, Code::Unavailable, "did not answer");
        assert!(
            (Duration::from_millis(300)..Duration::from_millis(1_800)).contains(&waited_without),
            "a call without a deadline waited {waited_without:?} (the default wait is 300 ms)"
        );
        assert_eq!(
            health_while_late,
            ServingStatus::Serving,
            "late is no outage"
        );
        // Both late decisions were counted once Redis caught up (the README
        // says so), and nothing was admitted by the policy: 10 - 1 - 2 left.
        let mut admitted = 0;
        for _ in 0..10 {
            let answer = limits.check_rate_limit(limited(&id)).await.unwrap();
            admitted += usize::from(answer.into_inner().allowed);
        }
        assert_eq!(admitted, 7);
        assert_eq!(policy_decisions(&server).await, 0.0);
        let (_, log) = server.terminate();
        assert!(logged(&log, "rate-limit store unreachable").is_empty());
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test finished within 2 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_is_an_outage_within_the_switch_over_bound() {
    let _alone = crate::helpers::measuring_alone().await;
    let test = async {
        let probe_timeout = Duration::from_millis(500);
        let redis = RedisServer::start(false);
        let data_dir = tempfile::tempdir().unwrap();
        let url = redis.url();
        let probe_timeout_ms = probe_timeout.as_millis().to_string();
        let server = ServerProcess::start(
            data_dir.path(),
            &[
                ("APIKEYD_REDIS_URL", url.as_str()),
                ("APIKEYD_REDIS_PROBE_TIMEOUT_MS", probe_timeout_ms.as_str()),
                ("APIKEYD_REDIS_FAILURE_POLICY", "closed"),
            ],
        );
        let channel = connect(server.addr).await;
        let mut limits = RateLimitServiceClient::new(channel.clone());
        assert!(
            limits
                .check_rate_limit(limited(&unique("id")))
                .await
                .unwrap()
                .into_inner()
                .allowed
        );

        redis.pause();
        let paused_at = SystemTime::now();
        // Fail-closed refuses a fresh identifier (the store would admit it)
        // and suggests one second.
        let by_policy = |answer: &pb::CheckRateLimitResponse| {
            !answer.allowed && answer.remaining == 0 && millis(&answer.retry_after) == 1_000
        };
        let mut late = 0;
        let switched = loop {
            assert!(
                paused_at.elapsed().unwrap() < Duration::from_secs(10),
                "no switch-over within 10 s"
            );
            let answer = limits
                .check_rate_limit(with_deadline(
                    limited(&unique("id")),
                    Duration::from_millis(200),
                ))
                .await;
            match answer {
                Ok(answer) if by_policy(answer.get_ref()) => break Instant::now(),
                Ok(answer) => panic!("a store answer from a frozen Redis: {answer:?}"),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    late += 1;
                }
            }
        };
        let mut afterwards = Vec::new();
        for _ in 0..5 {
            let answer = limits.check_rate_limit(limited(&unique("id"))).await;
            afterwards.push(by_policy(answer.unwrap().get_ref()));
        }
        let answered_in = switched.elapsed();
        let health_during = redis_health(&channel).await;
        redis.resume();

        assert_eq!(afterwards, [true; 5], "the policy answers every call");
        assert!(
            answered_in < Duration::from_secs(1),
            "policy answers take no waiting: {answered_in:?} for five"
        );
        assert_eq!(health_during, ServingStatus::NotServing);
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_health(&channel).await != ServingStatus::Serving {
            assert!(Instant::now() < deadline, "Redis never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let resumed = limits.check_rate_limit(limited(&unique("id"))).await;
        assert_eq!(
            resumed.unwrap().into_inner().remaining,
            9,
            "counting resumes"
        );
        let (_, log) = server.terminate();
        let began = logged(&log, "rate-limit store unreachable");
        assert_eq!(began.len(), 1, "one line when the outage starts");
        let switch_over = logged_at(&began[0]).duration_since(paused_at).unwrap();
        let bound = 2 * PROBE_INTERVAL + probe_timeout;
        println!(
            "hung Redis: outage declared {switch_over:?} after SIGSTOP (bound {bound:?}); {late} calls UNAVAILABLE meanwhile"
        );
        assert!(switch_over <= bound, "switch-over took {switch_over:?}");
        assert_eq!(logged(&log, "reachable again").len(), 1);
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test finished within 2 minutes");
}
