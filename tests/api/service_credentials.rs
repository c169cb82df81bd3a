//! Data-plane caller authentication, by configuration: with
//! `data_plane_auth = root-key`, Validate needs a root key with `validate`
//! and CheckRateLimit one with `ratelimit`; a warm credential costs no
//! database read and no argon2 run; a revoked one is refused.

use apikeyd::config::DataPlaneAuth;
use apikeyd::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use apikeyd::grpc::pb::{self, RateLimitAlgorithm, ValidationCode};
use tonic::{Code, Request};

use crate::helpers::{
    Backend, ServerProcess, TestApp, assert_status, code_of, connect, create_request,
    fresh_postgres_database, sample, scrape, spawn_app_with, with_bearer,
};
use crate::limiter_harness::{check_request, shared_redis_url, unique};
use crate::root_keys::{create_root_key, root_key_client};

fn validate_request(key: &str) -> pb::ValidateRequest {
    pb::ValidateRequest {
        key: key.to_owned(),
        required_scopes: vec!["posts:read".into()],
        ..Default::default()
    }
}

fn limit_request() -> pb::CheckRateLimitRequest {
    check_request(
        "login",
        &unique("ip"),
        5,
        60_000,
        RateLimitAlgorithm::SlidingWindow,
        1,
    )
}

async fn spawn_guarded(backend: Backend) -> TestApp {
    spawn_app_with(backend, |settings| {
        settings.data_plane_auth = DataPlaneAuth::RootKey
    })
    .await
}

async fn the_data_plane_needs_a_service_credential_when_configured(backend: Backend) {
    let app = spawn_guarded(backend).await;
    let (key, _) = app.create_key("user_1", &["posts:read"]).await;
    let (validator, _) = create_root_key(&app, &app.root_key, &["validate"], &[]).await;
    let (limiter_only, _) = create_root_key(&app, &app.root_key, &["ratelimit"], &[]).await;
    let mut validation = app.validation.clone();
    let mut limits = RateLimitServiceClient::new(connect(app.addr).await);

    assert_status(
        validation
            .validate(Request::new(validate_request(&key)))
            .await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_status(
        validation
            .validate(with_bearer(validate_request(&key), &key))
            .await,
        Code::Unauthenticated,
        "API key",
    );
    assert_status(
        validation
            .validate(with_bearer(validate_request(&key), &limiter_only))
            .await,
        Code::PermissionDenied,
        "validate",
    );
    let answered = validation
        .validate(with_bearer(validate_request(&key), &validator))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code_of(&answered), ValidationCode::Valid);

    assert_status(
        limits.check_rate_limit(Request::new(limit_request())).await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_status(
        limits
            .check_rate_limit(with_bearer(limit_request(), &validator))
            .await,
        Code::PermissionDenied,
        "ratelimit",
    );
    let checked = limits
        .check_rate_limit(with_bearer(limit_request(), &limiter_only))
        .await
        .unwrap()
        .into_inner();
    assert!(checked.allowed && checked.remaining == 4, "{checked:?}");
}

async fn a_revoked_service_credential_is_refused(backend: Backend) {
    let app = spawn_guarded(backend).await;
    let (key, _) = app.create_key("user_1", &["posts:read"]).await;
    let (validator, record) = create_root_key(&app, &app.root_key, &["validate"], &[]).await;
    let mut validation = app.validation.clone();
    validation
        .validate(with_bearer(validate_request(&key), &validator))
        .await
        .expect("warm credential");

    root_key_client(&app)
        .await
        .revoke_root_key(app.authed(pb::RevokeRootKeyRequest { id: record.id }))
        .await
        .unwrap();

    assert_status(
        validation
            .validate(with_bearer(validate_request(&key), &validator))
            .await,
        Code::Unauthenticated,
        "revoked",
    );
}

async fn the_data_plane_answers_anyone_by_default(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let (key, _) = app.create_key("user_1", &["posts:read"]).await;

    let answered = app
        .validation
        .clone()
        .validate(Request::new(validate_request(&key)))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(code_of(&answered), ValidationCode::Valid);
}

macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::helpers::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both!(
    the_data_plane_needs_a_service_credential_when_configured,
    a_revoked_service_credential_is_refused,
    the_data_plane_answers_anyone_by_default,
    a_warm_service_credential_costs_no_database_read_and_no_argon2,
);

/// In a process of its own, so that its metrics are its own.
async fn a_warm_service_credential_costs_no_database_read_and_no_argon2(backend: Backend) {
    let data_dir = tempfile::tempdir().unwrap();
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres_database().await),
    };
    let mut env = vec![("APIKEYD_DATA_PLANE_AUTH", "root-key")];
    if let Some(url) = &database_url {
        env.push(("APIKEYD_DATABASE_URL", url));
    }
    let server = ServerProcess::start(data_dir.path(), &env);
    let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key")).unwrap();
    let root_key = root_key.trim();
    let channel = connect(server.addr).await;
    let created = pb::key_service_client::KeyServiceClient::new(channel.clone())
        .create_key(with_bearer(
            create_request("user_1", &["posts:read"]),
            root_key,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut validation = pb::validation_service_client::ValidationServiceClient::new(channel);
    validation
        .validate(with_bearer(validate_request(&created.key), root_key))
        .await
        .expect("warms the credential");
    let before = scrape(server.http_addr).await;

    for _ in 0..50 {
        let answered = validation
            .validate(with_bearer(validate_request(&created.key), root_key))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code_of(&answered), ValidationCode::Valid);
    }

    let after = scrape(server.http_addr).await;
    let reads = "apikeyd_db_duration_seconds_count{operation=\"find_root_key\"}";
    let verifies = "apikeyd_argon2_duration_seconds_count{operation=\"verify\"}";
    assert!(
        sample(&before, reads) >= 1.0,
        "the cold call read the root key: {before}"
    );
    assert_eq!(
        sample(&after, reads),
        sample(&before, reads),
        "a warm credential read the database"
    );
    assert!(
        sample(&before, verifies) >= 1.0,
        "the cold call ran argon2: {before}"
    );
    assert_eq!(
        sample(&after, verifies),
        sample(&before, verifies),
        "a warm credential ran argon2"
    );
}

/// Two replicas sharing PostgreSQL and Redis: a credential revoked on one is
/// refused by the other through the invalidation stream, well within the
/// 5 s its cached record would otherwise be trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_service_credential_is_refused_on_every_replica_within_the_stream_delay() {
    let database_url = fresh_postgres_database().await;
    let prefix = unique("apikeyd-creds");
    let redis_url = shared_redis_url();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let replicas: Vec<ServerProcess> = dirs
        .iter()
        .map(|dir| {
            ServerProcess::start(
                dir.path(),
                &[
                    ("APIKEYD_DATABASE_URL", database_url.as_str()),
                    ("APIKEYD_REDIS_URL", redis_url.as_str()),
                    ("APIKEYD_REDIS_KEY_PREFIX", prefix.as_str()),
                    ("APIKEYD_DATA_PLANE_AUTH", "root-key"),
                ],
            )
        })
        .collect();
    let root_key = std::fs::read_to_string(dirs[0].path().join("bootstrap-root-key")).unwrap();
    let root_key = root_key.trim();
    let first = connect(replicas[0].addr).await;
    let created = pb::key_service_client::KeyServiceClient::new(first.clone())
        .create_key(with_bearer(
            create_request("user_1", &["posts:read"]),
            root_key,
        ))
        .await
        .unwrap()
        .into_inner();
    let credential = pb::root_key_service_client::RootKeyServiceClient::new(first.clone())
        .create_root_key(with_bearer(
            crate::root_keys::root_key_request(&["validate"], &[]),
            root_key,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut validations = Vec::new();
    for replica in &replicas {
        let mut validation = pb::validation_service_client::ValidationServiceClient::new(
            connect(replica.addr).await,
        );
        validation
            .validate(with_bearer(validate_request(&created.key), &credential.key))
            .await
            .expect("a warm credential on every replica");
        validations.push(validation);
    }

    let started = std::time::Instant::now();
    pb::root_key_service_client::RootKeyServiceClient::new(first)
        .revoke_root_key(with_bearer(
            pb::RevokeRootKeyRequest {
                id: credential.root_key.unwrap().id,
            },
            root_key,
        ))
        .await
        .unwrap();

    let mut other = validations.pop().unwrap();
    let refused_after = loop {
        match other
            .validate(with_bearer(validate_request(&created.key), &credential.key))
            .await
        {
            Err(status) if status.code() == Code::Unauthenticated => break started.elapsed(),
            answer => {
                assert!(answer.is_ok(), "{answer:?}");
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(2),
                    "still admitted after 2 s: the stream did not carry the revocation"
                );
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    };
    println!("revoked service credential refused by the other replica after {refused_after:?}");
    assert_status(
        validations[0]
            .validate(with_bearer(validate_request(&created.key), &credential.key))
            .await,
        Code::Unauthenticated,
        "revoked",
    );
}
