//! The hot path's guards: junk costs no database read, a warm key no argon2
//! run, and the cache never serves a changed key.

use apikeyd::domain::{GeneratedKey, KeyKind};
use apikeyd::grpc::pb;
use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;

use crate::helpers::{
    ServerProcess, code_of, connect, create_request, sample, sample_or_zero, scrape, with_bearer,
};
use crate::limiter_harness::rate_limit;
use apikeyd::grpc::pb::RateLimitAlgorithm;

const ARGON2_VERIFICATIONS: &str = r#"apikeyd_argon2_duration_seconds_count{operation="verify"}"#;
const KEY_LOOKUPS: &str = r#"apikeyd_db_duration_seconds_count{operation="find_key"}"#;

struct Server {
    process: ServerProcess,
    keys: KeyServiceClient<tonic::transport::Channel>,
    validation: ValidationServiceClient<tonic::transport::Channel>,
    root_key: String,
    _data_dir: tempfile::TempDir,
}

async fn start(env: &[(&str, &str)]) -> Server {
    let data_dir = tempfile::tempdir().unwrap();
    let process = ServerProcess::start(data_dir.path(), env);
    let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key"))
        .unwrap()
        .trim()
        .to_owned();
    let channel = connect(process.addr).await;
    Server {
        keys: KeyServiceClient::new(channel.clone()),
        validation: ValidationServiceClient::new(channel),
        process,
        root_key,
        _data_dir: data_dir,
    }
}

impl Server {
    async fn validate(&self, key: &str) -> pb::ValidateResponse {
        self.validation
            .clone()
            .validate(pb::ValidateRequest {
                key: key.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn metric(&self, series: &str) -> f64 {
        sample(&scrape(self.process.http_addr).await, series)
    }

    /// A series that may not exist yet: a fresh server has read no key.
    async fn metric_or_zero(&self, series: &str) -> f64 {
        sample_or_zero(&scrape(self.process.http_addr).await, series)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_keys_cost_no_lookup_and_unknown_ids_one_lookup() {
    let server = start(&[]).await;
    let before = server.metric_or_zero(KEY_LOOKUPS).await;

    for _ in 0..20 {
        assert_eq!(
            code_of(&server.validate("sk_live_garbage").await),
            pb::ValidationCode::Malformed
        );
    }
    // Still absent, most likely; the strict reading below proves the name.
    assert_eq!(
        server.metric_or_zero(KEY_LOOKUPS).await,
        before,
        "malformed keys never reach the database"
    );

    let unknown = GeneratedKey::generate(KeyKind::Live).into_full_key();
    for _ in 0..20 {
        assert_eq!(
            code_of(&server.validate(&unknown).await),
            pb::ValidationCode::NotFound
        );
    }
    assert_eq!(
        server.metric(KEY_LOOKUPS).await,
        before + 1.0,
        "an unknown id is remembered as absent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_key_costs_neither_a_lookup_nor_argon2() {
    let server = start(&[]).await;
    let created = server
        .keys
        .clone()
        .create_key(with_bearer(
            create_request("busy", &["*"]),
            &server.root_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(server.validate(&created.key).await.valid);
    let (lookups, verifications) = (
        server.metric(KEY_LOOKUPS).await,
        server.metric(ARGON2_VERIFICATIONS).await,
    );

    for _ in 0..50 {
        assert!(server.validate(&created.key).await.valid);
    }

    assert_eq!(server.metric(KEY_LOOKUPS).await, lookups);
    assert_eq!(server.metric(ARGON2_VERIFICATIONS).await, verifications);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_key_is_rejected_as_soon_as_it_is_revoked_or_disabled() {
    let server = start(&[]).await;
    let mut keys = server.keys.clone();
    let create = |owner: &str| with_bearer(create_request(owner, &["*"]), &server.root_key);
    let revoked = keys.create_key(create("a")).await.unwrap().into_inner();
    let disabled = keys.create_key(create("b")).await.unwrap().into_inner();
    assert!(server.validate(&revoked.key).await.valid);
    assert!(server.validate(&disabled.key).await.valid);

    let revoked_id = revoked.api_key.unwrap().id;
    keys.revoke_key(with_bearer(
        pb::RevokeKeyRequest {
            id: revoked_id,
            owner_id: String::new(),
        },
        &server.root_key,
    ))
    .await
    .unwrap();
    let disabled_id = disabled.api_key.unwrap().id;
    keys.update_key(with_bearer(
        pb::UpdateKeyRequest {
            id: disabled_id,
            enabled: Some(false),
            ..Default::default()
        },
        &server.root_key,
    ))
    .await
    .unwrap();

    assert_eq!(
        code_of(&server.validate(&revoked.key).await),
        pb::ValidationCode::Revoked
    );
    assert_eq!(
        code_of(&server.validate(&disabled.key).await),
        pb::ValidationCode::Disabled
    );
}

/// A key its own limit refused a moment ago is refused again before its
/// owner's limits are read (no change to those could lift the refusal), so a
/// denial costs less than an admission; a refusal by the owner's limit ends
/// as soon as the owner's limits no longer hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_refusal_by_the_keys_own_limit_reads_no_owner_limits() {
    const OWNER_LOOKUPS: &str = r#"apikeyd_db_duration_seconds_count{operation="owner_limits"}"#;
    const REMEMBERED: &str = "apikeyd_rate_limit_denials_remembered_total";
    let server = start(&[]).await;
    let mut keys = server.keys.clone();
    let one_per_hour = || rate_limit(1, 3_600_000, RateLimitAlgorithm::SlidingWindow);
    let set_owner_limits = |owner: &str, rate_limits: Vec<pb::RateLimit>| {
        with_bearer(
            pb::SetOwnerLimitsRequest {
                owner_id: owner.to_owned(),
                tier: String::new(),
                rate_limits,
            },
            &server.root_key,
        )
    };

    let mut request = create_request("own-limit", &["*"]);
    request.rate_limits = vec![one_per_hour()];
    let by_own = keys
        .create_key(with_bearer(request, &server.root_key))
        .await
        .unwrap()
        .into_inner();
    assert!(server.validate(&by_own.key).await.valid);
    assert_eq!(
        code_of(&server.validate(&by_own.key).await),
        pb::ValidationCode::RateLimited
    );
    // Evicts the owner's cached limits: reading them now takes a query.
    keys.set_owner_limits(set_owner_limits("own-limit", vec![]))
        .await
        .unwrap();
    let (lookups, remembered) = (
        server.metric(OWNER_LOOKUPS).await,
        server.metric_or_zero(REMEMBERED).await,
    );
    for _ in 0..5 {
        assert_eq!(
            code_of(&server.validate(&by_own.key).await),
            pb::ValidationCode::RateLimited
        );
    }
    assert_eq!(
        server.metric(OWNER_LOOKUPS).await,
        lookups,
        "the owner's limits were not read"
    );
    assert_eq!(server.metric(REMEMBERED).await, remembered + 5.0);

    keys.set_owner_limits(set_owner_limits("shared-limit", vec![one_per_hour()]))
        .await
        .unwrap();
    let by_owner = keys
        .create_key(with_bearer(
            create_request("shared-limit", &["*"]),
            &server.root_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(server.validate(&by_owner.key).await.valid);
    for _ in 0..3 {
        assert_eq!(
            code_of(&server.validate(&by_owner.key).await),
            pb::ValidationCode::RateLimited
        );
    }
    keys.set_owner_limits(set_owner_limits("shared-limit", vec![]))
        .await
        .unwrap();
    assert!(
        server.validate(&by_owner.key).await.valid,
        "the owner's refusing limit is gone: the refusal ends"
    );
}
