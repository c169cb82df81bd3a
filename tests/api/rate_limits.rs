//! CheckRateLimit and the limits Validate applies, on every rate-limit store:
//! in-process, Redis, and a three-master Redis Cluster.

use apikeyd::grpc::pb::{self, RateLimitAlgorithm, ValidationCode};
use tonic::Code;

use crate::helpers::{assert_status, code_of};
use crate::limiter_harness::{check_request, concurrently, millis, rate_limit, unique};
use crate::on_every_limiter;

/// The longest window (30 days, epoch-aligned): a test never straddles its boundary.
const LONG_WINDOW_MS: u64 = 30 * 86_400_000;
const ALGORITHMS: [RateLimitAlgorithm; 3] = [
    RateLimitAlgorithm::FixedWindow,
    RateLimitAlgorithm::SlidingWindow,
    RateLimitAlgorithm::TokenBucket,
];

on_every_limiter! {
    async fn a_burst_of_300_admits_exactly_50_on_every_algorithm(app) {
        // A 30-day window: a burst never straddles a boundary, so every
        // algorithm's bound is exactly the limit.
        for algorithm in ALGORITHMS {
            let request = check_request("burst", &unique("id"), 50, LONG_WINDOW_MS, algorithm, 1);

            let answers = concurrently(std::slice::from_ref(&app.limits), 300, request).await;

            let admitted = answers.iter().filter(|a| a.allowed).count();
            assert_eq!(admitted, 50, "{algorithm:?}");
            assert!(answers.iter().filter(|a| !a.allowed).all(|a| a.remaining == 0 && millis(&a.retry_after) > 0));
        }
    }

    async fn a_denied_request_leaves_remaining_unchanged(app) {
        for algorithm in ALGORITHMS {
            let id = unique("id");
            let first = app.check(check_request("deny", &id, 5, LONG_WINDOW_MS, algorithm, 3)).await;
            assert!(first.allowed);
            assert_eq!(first.remaining, 2, "{algorithm:?}");

            for _ in 0..3 {
                let denied = app.check(check_request("deny", &id, 5, LONG_WINDOW_MS, algorithm, 3)).await;
                assert!(!denied.allowed, "{algorithm:?}");
                assert_eq!(denied.remaining, 2, "{algorithm:?}: a denial consumes nothing");
            }

            let last = app.check(check_request("deny", &id, 5, LONG_WINDOW_MS, algorithm, 2)).await;
            assert!(last.allowed, "{algorithm:?}: the 2 left are still there");
            assert_eq!(last.remaining, 0);
        }
    }

    async fn every_algorithm_admits_again_after_retry_after(app) {
        for algorithm in ALGORITHMS {
            let request = check_request("rollover", &unique("id"), 2, 1_000, algorithm, 1);
            assert!(app.check(request.clone()).await.allowed);
            assert!(app.check(request.clone()).await.allowed);
            let denied = app.check(request.clone()).await;
            assert!(!denied.allowed, "{algorithm:?}");
            // In microseconds: a denial in a window's last millisecond
            // waits less than one.
            let retry = denied.retry_after.expect("a denial says when to retry");
            let wait = std::time::Duration::new(retry.seconds as u64, retry.nanos as u32);
            assert!(
                wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(2),
                "{algorithm:?} waits {wait:?}"
            );

            tokio::time::sleep(wait + std::time::Duration::from_millis(20)).await;

            assert!(app.check(request).await.allowed, "{algorithm:?} admits after the wait");
        }
    }

    async fn a_fixed_window_resets_at_its_reset_time(app) {
        let request = check_request("reset", &unique("id"), 3, 1_000, RateLimitAlgorithm::FixedWindow, 3);
        let spent = app.check(request.clone()).await;
        assert!(spent.allowed);
        assert_eq!(spent.remaining, 0);
        let reset_at = spent.reset_at.unwrap();
        let reset_ms = reset_at.seconds * 1000 + i64::from(reset_at.nanos) / 1_000_000;
        let now_ms = chrono::Utc::now().timestamp_millis();
        assert!(reset_ms - now_ms <= 1_000, "a 1 s window resets within 1 s");

        tokio::time::sleep(std::time::Duration::from_millis((reset_ms - now_ms).max(0) as u64 + 30)).await;

        let fresh = app.check(request).await;
        assert!(fresh.allowed);
        assert_eq!(fresh.remaining, 0, "the whole limit was available again");
    }

    async fn cost_is_charged_in_full_and_may_not_exceed_the_limit(app) {
        let id = unique("id");
        let at = |cost| check_request("cost", &id, 10, LONG_WINDOW_MS, RateLimitAlgorithm::SlidingWindow, cost);
        assert_eq!(app.check(at(4)).await.remaining, 6);
        assert_eq!(app.check(at(4)).await.remaining, 2);
        let denied = app.check(at(4)).await;
        assert!(!denied.allowed);
        assert_eq!(denied.remaining, 2);

        let too_much = app.limits.clone().check_rate_limit(at(11)).await;

        assert_status(too_much, Code::InvalidArgument, "cost");
    }

    async fn bad_limits_are_invalid_arguments(app) {
        let mut no_window = check_request("bad", "x", 10, 1_000, RateLimitAlgorithm::FixedWindow, 1);
        no_window.window = None;
        assert_status(app.limits.clone().check_rate_limit(no_window).await, Code::InvalidArgument, "window");
        let short = check_request("bad", "x", 10, 500, RateLimitAlgorithm::FixedWindow, 1);
        assert_status(app.limits.clone().check_rate_limit(short).await, Code::InvalidArgument, "window");
        let zero = check_request("bad", "x", 0, 1_000, RateLimitAlgorithm::FixedWindow, 1);
        assert_status(app.limits.clone().check_rate_limit(zero).await, Code::InvalidArgument, "limit");
        let colon = check_request("a:b", "x", 1, 1_000, RateLimitAlgorithm::FixedWindow, 1);
        assert_status(app.limits.clone().check_rate_limit(colon).await, Code::InvalidArgument, "namespace");
    }

    async fn a_key_created_without_limits_gets_the_free_tier(app) {
        let (key, record) = app.app.create_key(&unique("owner"), &["*"]).await;
        assert_eq!(record.tier, "free");

        let verdict = app.validate_with(&key, 0, None).await;

        assert_eq!(code_of(&verdict), ValidationCode::Valid);
        let status = verdict.rate_limit.expect("the tier's limit is reported");
        assert_eq!((status.limit, status.remaining), (100, 99));
    }

    async fn validate_charges_all_limits_or_none(app) {
        let owner = unique("owner");
        app.app.keys.clone().set_owner_limits(app.app.authed(pb::SetOwnerLimitsRequest {
            owner_id: owner.clone(),
            tier: String::new(),
            rate_limits: vec![rate_limit(3, LONG_WINDOW_MS, RateLimitAlgorithm::FixedWindow)],
        })).await.unwrap();
        let (narrow, _) = app.create_limited_key(&owner, vec![
            rate_limit(2, LONG_WINDOW_MS, RateLimitAlgorithm::FixedWindow),
            rate_limit(50, 1_000, RateLimitAlgorithm::TokenBucket),
        ], None).await;
        let (wide, _) = app.create_limited_key(&owner, vec![rate_limit(100, LONG_WINDOW_MS, RateLimitAlgorithm::SlidingWindow)], None).await;

        assert!(app.validate_with(&narrow, 0, None).await.valid);
        let second = app.validate_with(&narrow, 0, None).await;
        assert!(second.valid);
        assert_eq!(second.rate_limit.unwrap().remaining, 0, "the key's own 2/day is the tightest");
        let third = app.validate_with(&narrow, 0, None).await;
        assert_eq!(code_of(&third), ValidationCode::RateLimited);
        assert!(millis(&third.rate_limit.unwrap().retry_after) > 0);

        // The denied call charged neither the owner's limit nor the token bucket:
        // the owner has exactly one use left, for another key.
        let other = app.validate_with(&wide, 0, None).await;
        assert!(other.valid);
        let shared = other.rate_limit.unwrap();
        assert_eq!((shared.limit, shared.remaining), (3, 0), "the owner's 3/day is now the tightest");
        assert_eq!(code_of(&app.validate_with(&wide, 0, None).await), ValidationCode::RateLimited);
    }

    async fn a_quota_is_used_up_then_topped_up(app) {
        let quota = pb::UsageQuota { remaining: 3, refill_amount: 0, refill_interval: 0 };
        let (key, record) = app.create_limited_key(&unique("owner"), vec![], Some(quota)).await;

        assert_eq!(app.validate_with(&key, 2, None).await.api_key.unwrap().quota.unwrap().remaining, 1);
        let exceeded = app.validate_with(&key, 2, None).await;
        assert_eq!(code_of(&exceeded), ValidationCode::UsageExceeded);
        assert_eq!(exceeded.api_key.unwrap().quota.unwrap().remaining, 1, "a refusal takes nothing");
        assert!(app.validate_with(&key, 1, None).await.valid);
        assert_eq!(code_of(&app.validate_with(&key, 1, None).await), ValidationCode::UsageExceeded);

        let topped = app.app.keys.clone().update_key(app.app.authed(pb::UpdateKeyRequest {
            id: record.id.clone(),
            quota_change: Some(pb::update_key_request::QuotaChange::AddToQuota(5)),
            ..Default::default()
        })).await.unwrap().into_inner().api_key.unwrap();
        assert_eq!(topped.quota.unwrap().remaining, 5);
        assert!(app.validate_with(&key, 0, None).await.valid);

        let set = app.app.keys.clone().update_key(app.app.authed(pb::UpdateKeyRequest {
            id: record.id.clone(),
            quota_change: Some(pb::update_key_request::QuotaChange::Quota(pb::UsageQuota { remaining: 1, refill_amount: 0, refill_interval: 0 })),
            ..Default::default()
        })).await.unwrap().into_inner().api_key.unwrap();
        assert_eq!(set.quota.unwrap().remaining, 1, "setting replaces the live balance");
        assert!(app.validate_with(&key, 0, None).await.valid);
        assert_eq!(code_of(&app.validate_with(&key, 0, None).await), ValidationCode::UsageExceeded);
        let fetched = app.app.keys.clone().get_key(app.app.authed(pb::GetKeyRequest { id: record.id })).await.unwrap().into_inner();
        assert_eq!(fetched.api_key.unwrap().quota.unwrap().remaining, 0, "GetKey shows the live balance");
    }

    async fn usage_is_counted_by_code_and_recent_requests_are_logged(app) {
        let (key, record) = app.create_limited_key(&unique("owner"), vec![rate_limit(2, LONG_WINDOW_MS, RateLimitAlgorithm::FixedWindow)], None).await;
        let context = |endpoint: String| Some(pb::RequestContext {
            endpoint,
            method: "GET".into(),
            ip: "192.0.2.7".into(),
            user_agent: "test-agent/1.0".into(),
        });
        for _ in 0..3 {
            app.validate_with(&key, 0, context("/v1/posts".into())).await;
        }
        let scoped = app.app.validation.clone().validate(pb::ValidateRequest {
            key: key.clone(),
            required_scopes: vec![],
            context: context("/x".repeat(600)),
            cost: 0,
        }).await.unwrap().into_inner();
        assert_eq!(code_of(&scoped), ValidationCode::RateLimited);

        for granularity in [pb::UsageGranularity::Hour, pb::UsageGranularity::Day] {
            let usage = app.app.keys.clone().get_key_usage(app.app.authed(pb::GetKeyUsageRequest {
                id: record.id.clone(),
                granularity: granularity as i32,
                ..Default::default()
            })).await.unwrap().into_inner();

            assert_eq!(usage.buckets.len(), 24, "24 buckets by default, oldest first");
            let current = usage.buckets.last().unwrap();
            assert_eq!(current.total, 4, "{granularity:?}");
            let count = |code: ValidationCode| current.counts.iter().find(|c| c.code == code as i32).map_or(0, |c| c.count);
            assert_eq!(count(ValidationCode::Valid), 2);
            assert_eq!(count(ValidationCode::RateLimited), 2);
            assert_eq!(usage.recent_requests.len(), 4);
            let newest = &usage.recent_requests[0];
            assert_eq!(newest.endpoint.chars().count(), 256, "an over-long endpoint is truncated");
            assert_eq!((newest.method.as_str(), newest.ip.as_str(), newest.user_agent.as_str()), ("GET", "192.0.2.7", "test-agent/1.0"));
            assert_eq!(newest.code, ValidationCode::RateLimited as i32);
            assert_eq!(usage.recent_requests[3].code, ValidationCode::Valid as i32);
        }
    }

    async fn owner_limits_read_back_as_set(app) {
        let owner = unique("owner");
        let set = |tier: &str| pb::SetOwnerLimitsRequest { owner_id: owner.clone(), tier: tier.into(), rate_limits: vec![] };
        app.app.keys.clone().set_owner_limits(app.app.authed(set("pro"))).await.unwrap();
        let read = app.app.keys.clone().get_owner_limits(app.app.authed(pb::GetOwnerLimitsRequest { owner_id: owner.clone() })).await.unwrap().into_inner();
        assert_eq!(read.owner_limits.unwrap().tier, "pro");

        assert_status(app.app.keys.clone().set_owner_limits(app.app.authed(set("gold"))).await, Code::InvalidArgument, "unknown tier");
        app.app.keys.clone().set_owner_limits(app.app.authed(set(""))).await.unwrap();
        let cleared = app.app.keys.clone().get_owner_limits(app.app.authed(pb::GetOwnerLimitsRequest { owner_id: owner })).await.unwrap().into_inner();
        assert_eq!(cleared.owner_limits.unwrap().tier, "");
    }
}

/// The refill runs on the store's clock, so the test moves the stored
/// period back a day instead of waiting for midnight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_quota_is_refilled_when_a_new_day_begins() {
    let app =
        crate::limiter_harness::spawn_limited_app(crate::limiter_harness::Limiter::Redis).await;
    let owner = unique("owner");
    let quota = pb::UsageQuota {
        remaining: 1,
        refill_amount: 3,
        refill_interval: pb::RefillInterval::Daily as i32,
    };
    let (key, record) = app.create_limited_key(&owner, vec![], Some(quota)).await;
    assert!(app.validate_with(&key, 0, None).await.valid);
    assert_eq!(
        code_of(&app.validate_with(&key, 0, None).await),
        ValidationCode::UsageExceeded
    );

    let quota_key = format!("{}:{{o:{owner}}}:k:{}:quota", app.prefix, record.id);
    let mut conn = app.redis();
    let period: i64 = ::redis::cmd("HGET")
        .arg(&quota_key)
        .arg("p")
        .query(&mut conn)
        .unwrap();
    ::redis::cmd("HSET")
        .arg(&quota_key)
        .arg("p")
        .arg(period - 1)
        .query::<()>(&mut conn)
        .unwrap();

    let refilled = app.validate_with(&key, 0, None).await;
    assert!(refilled.valid);
    assert_eq!(
        refilled.api_key.unwrap().quota.unwrap().remaining,
        2,
        "refilled to 3, then one taken"
    );
}
