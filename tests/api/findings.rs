//! The smaller findings of issue 9, each pinned by the behaviour it broke:
//! wrapping windows, unbounded grace periods, a panic on a corrupt row, error
//! messages that grew with the input, raw keys stored from a request
//! context, and a test script that carried on past a failed step.

use apikeyd::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use apikeyd::grpc::pb::{self, RateLimitAlgorithm};
use sea_orm::{ConnectionTrait, Statement};
use tonic::Code;

use crate::helpers::{assert_status, connect, create_request};
use crate::on_every_backend;
use crate::root_keys::{root_key_client, root_key_request};

/// 2^61 + 60 seconds: 60,000 ms once multiplied by 1000 modulo 2^64.
const WRAPPING_SECONDS: i64 = (1 << 61) + 60;

/// The longest message a refusal of over-long input may carry.
const BOUNDED_MESSAGE: usize = 400;

on_every_backend! {
    async fn a_window_that_would_wrap_is_an_invalid_argument(app) {
        let window = prost_types::Duration { seconds: WRAPPING_SECONDS, nanos: 0 };
        let mut limits = RateLimitServiceClient::new(connect(app.addr).await);
        let check = pb::CheckRateLimitRequest {
            namespace: "login".into(),
            identifier: "203.0.113.7".into(),
            limit: 5,
            window: Some(window),
            cost: 1,
            algorithm: RateLimitAlgorithm::FixedWindow as i32,
        };

        assert_status(limits.check_rate_limit(check).await, Code::InvalidArgument, "window");
        let own_limits = pb::CreateKeyRequest {
            rate_limits: vec![pb::RateLimit { limit: 5, window: Some(window), algorithm: 0 }],
            ..create_request("user_1", &["*"])
        };
        assert_status(app.keys.clone().create_key(app.authed(own_limits)).await, Code::InvalidArgument, "rate_limits");
    }

    async fn an_unbounded_grace_period_is_an_invalid_argument(app) {
        let (_, key) = app.create_key("user_1", &["*"]).await;
        let grace = prost_types::Duration { seconds: i64::MAX, nanos: 999_999_999 };

        let rotated = app.keys.clone().rotate_key(app.authed(pb::RotateKeyRequest { id: key.id.clone(), grace_period: Some(grace) })).await;

        assert_status(rotated, Code::InvalidArgument, "grace_period");
        let unchanged = app.keys.clone().get_key(app.authed(pb::GetKeyRequest { id: key.id })).await.unwrap().into_inner().api_key.unwrap();
        assert!(unchanged.revoked_at.is_none());
    }

    async fn a_corrupt_stored_key_id_is_an_internal_error_not_a_panic(app) {
        app.create_key("user_1", &["*"]).await;
        let (_, newest) = app.create_key("user_1", &["*"]).await;
        let db = app.database().await;
        db.execute(Statement::from_string(
            db.get_database_backend(),
            format!("UPDATE api_keys SET id = 'not an id!' WHERE id = '{}'", newest.id),
        )).await.unwrap();

        // The corrupt row ends a page that has a next one.
        let listed = app.keys.clone().list_keys(app.authed(pb::ListKeysRequest { page_size: 1, ..Default::default() })).await;

        assert_status(listed, Code::Internal, "internal error");
        let healthy = app.keys.clone().list_keys(app.authed(pb::ListKeysRequest { page_size: 1, owner_id: "user_2".into(), ..Default::default() })).await;
        assert!(healthy.is_ok(), "the server still answers: {healthy:?}");
    }

    async fn refusals_quote_only_a_little_of_over_long_input(app) {
        let huge = "x".repeat(50_000); // long, yet within the 64 KiB request limit
        let mut keys = app.keys.clone();
        let refusals = [
            keys.create_key(app.authed(create_request("user_1", &[&huge]))).await.unwrap_err(),
            keys.create_key(app.authed(pb::CreateKeyRequest { tier: huge.clone(), ..create_request("user_1", &["*"]) })).await.unwrap_err(),
            root_key_client(&app).await.create_root_key(app.authed(root_key_request(&[&huge], &[]))).await.unwrap_err(),
            root_key_client(&app).await.create_root_key(app.authed(root_key_request(&["keys:read"], &[&format!("{huge}*x")]))).await.unwrap_err(),
        ];

        for refusal in refusals {
            assert_eq!(refusal.code(), Code::InvalidArgument, "{}", refusal.message());
            assert!(refusal.message().len() < BOUNDED_MESSAGE, "{} bytes: {}…", refusal.message().len(), &refusal.message()[..200]);
            assert!(refusal.message().contains("xxxxxxxxxx\"…"), "the quote is marked as cut: {}", refusal.message());
        }
    }

    async fn keys_in_a_request_context_are_redacted_before_they_are_stored(app) {
        let (key, record) = app.create_key("user_1", &["*"]).await;
        let context = pb::RequestContext {
            endpoint: format!("/v1/posts?api_key={key}&page=2"),
            method: "GET".into(),
            ip: "192.0.2.7".into(),
            user_agent: format!("curl/8 (token {})", app.root_key),
        };
        app.validation.clone().validate(pb::ValidateRequest { key: key.clone(), context: Some(context), ..Default::default() }).await.unwrap();

        let usage = app.keys.clone().get_key_usage(app.authed(pb::GetKeyUsageRequest { id: record.id.clone(), ..Default::default() })).await.unwrap().into_inner();

        let recorded = &usage.recent_requests[0];
        assert_eq!(recorded.endpoint, format!("/v1/posts?api_key=sk_live_{}_[REDACTED]&page=2", record.id));
        assert!(recorded.user_agent.starts_with("curl/8 (token rk_") && recorded.user_agent.ends_with("_[REDACTED])"), "{}", recorded.user_agent);
        let everything = format!("{usage:?}");
        for secret in [&key, &app.root_key] {
            assert!(!everything.contains(&secret[secret.len() - 49..]));
        }
    }
}

/// Under `set -e`, a failure on the left of `&&` does not stop a script:
/// `buf lint proto && echo clean` carried on past a failed lint. No step of
/// scripts/test may be written so.
#[test]
fn no_step_of_the_test_script_hides_its_failure_behind_and() {
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test")).unwrap();
    let hidden: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        // Conditions and traps decide on the status themselves.
        .filter(|line| {
            !["if ", "elif ", "while ", "until ", "trap "]
                .iter()
                .any(|k| line.starts_with(k))
        })
        .filter(|line| line.contains(" && "))
        .collect();
    assert!(
        hidden.is_empty(),
        "steps whose failure set -e ignores: {hidden:#?}"
    );
}
