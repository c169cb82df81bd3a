//! Redis stopped mid-test and started again, under each failure policy:
//! Validate of good keys keeps answering, the policy holds, health shows the
//! degraded dependency, counting resumes, one log line marks each end of the
//! outage, and nothing panics. Each test owns its redis-server.

use std::time::{Duration, Instant};

use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use apikeyd::grpc::pb::{self, RateLimitAlgorithm, ValidationCode};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::fault_harness::{ServerOnOwnRedis, health, server_on_own_redis, wait_for_health};
use crate::helpers::{create_request, with_bearer};
use crate::limiter_harness::{check_request, rate_limit};

/// The longest window (30 days, epoch-aligned): a test never straddles its boundary.
const LONG_WINDOW_MS: u64 = 30 * 86_400_000;

async fn survives_a_redis_outage(policy: &str) {
    let ServerOnOwnRedis {
        mut redis,
        server,
        root_key,
        channel,
        data_dir: _data_dir,
    } = server_on_own_redis(policy, "50").await;
    let mut keys = KeyServiceClient::new(channel.clone());
    let mut validation = ValidationServiceClient::new(channel.clone());
    let mut limits = RateLimitServiceClient::new(channel.clone());
    let mut request = create_request("owner", &["*"]);
    request.rate_limits = vec![rate_limit(
        1_000,
        LONG_WINDOW_MS,
        RateLimitAlgorithm::FixedWindow,
    )];
    let key = keys
        .create_key(with_bearer(request, &root_key))
        .await
        .unwrap()
        .into_inner()
        .key;
    let validate = |mut client: ValidationServiceClient<Channel>, key: String| async move {
        client
            .validate(pb::ValidateRequest {
                key,
                ..Default::default()
            })
            .await
            .expect("Validate answers")
            .into_inner()
    };
    let check = check_request(
        "outage",
        "client",
        10,
        LONG_WINDOW_MS,
        RateLimitAlgorithm::FixedWindow,
        1,
    );

    assert_eq!(
        validate(validation.clone(), key.clone())
            .await
            .rate_limit
            .unwrap()
            .remaining,
        999
    );
    assert_eq!(
        limits
            .check_rate_limit(check.clone())
            .await
            .unwrap()
            .into_inner()
            .remaining,
        9
    );
    assert_eq!(health(&channel, "redis").await, ServingStatus::Serving);

    redis.stop();

    for _ in 0..20 {
        let started = Instant::now();
        let verdict = validate(validation.clone(), key.clone()).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "Validate stalled for {:?}",
            started.elapsed()
        );
        let expected = if policy == "open" {
            ValidationCode::Valid
        } else {
            ValidationCode::RateLimited
        };
        assert_eq!(ValidationCode::try_from(verdict.code).unwrap(), expected);
    }
    let during = limits
        .check_rate_limit(check.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(during.allowed, policy == "open");
    wait_for_health(&channel, "redis", ServingStatus::NotServing).await;
    assert_eq!(
        health(&channel, "apikeyd.v1.ValidationService").await,
        ServingStatus::Serving
    );
    assert_eq!(health(&channel, "").await, ServingStatus::Serving);

    redis.restart();
    wait_for_health(&channel, "redis", ServingStatus::Serving).await;

    // The new Redis is empty (no persistence): counting starts over, and goes on.
    assert_eq!(
        limits
            .check_rate_limit(check.clone())
            .await
            .unwrap()
            .into_inner()
            .remaining,
        9
    );
    assert_eq!(
        limits
            .check_rate_limit(check)
            .await
            .unwrap()
            .into_inner()
            .remaining,
        8
    );
    let after = validate(validation.clone(), key.clone()).await;
    assert!(after.valid);
    assert_eq!(after.rate_limit.unwrap().remaining, 999);
    validation
        .validate(pb::ValidateRequest {
            key,
            ..Default::default()
        })
        .await
        .unwrap();

    let (status, log) = server.terminate();
    assert!(status.success());
    let events: Vec<serde_json::Value> = log
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let with = |needle: &str| {
        events
            .iter()
            .filter(|e| e["message"].as_str().is_some_and(|m| m.contains(needle)))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        with("rate-limit store unreachable").len(),
        1,
        "one line when the outage starts"
    );
    let ended = with("rate-limit store reachable again");
    assert_eq!(ended.len(), 1, "one line when it ends");
    assert!(
        ended[0]["decisions_by_policy"].as_u64().unwrap() >= 21,
        "{}",
        ended[0]
    );
    assert!(
        !log.iter().any(|l| l.contains("panicked")),
        "nothing panics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_open_by_default_and_counting_resumes() {
    tokio::time::timeout(Duration::from_secs(120), survives_a_redis_outage("open"))
        .await
        .expect("the test finished within 2 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_closed_when_configured_and_counting_resumes() {
    tokio::time::timeout(Duration::from_secs(120), survives_a_redis_outage("closed"))
        .await
        .expect("the test finished within 2 minutes");
}
