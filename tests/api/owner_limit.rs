//! The per-owner limit on active keys holds under concurrent CreateKey calls.

use apikeyd::grpc::pb;
use tonic::Code;

use crate::helpers::{Backend, TestApp, assert_status, create_request, spawn_app_with};

async fn concurrent_creates_never_exceed_the_limit(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.limits.max_active_keys_per_owner = 10
    })
    .await;

    let attempts = (0..25).map(|_| {
        let (mut client, request) = (
            app.keys.clone(),
            app.authed(create_request("crowded", &["*"])),
        );
        tokio::spawn(async move { client.create_key(request).await })
    });
    let results = futures_join(attempts).await;

    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 10, "exactly the limit is created");
    for failure in results.into_iter().filter(|r| r.is_err()) {
        assert_status(
            failure,
            Code::ResourceExhausted,
            "already has 10 active keys",
        );
    }
    assert_eq!(active_keys(&app, "crowded").await, 10);
}

async fn revoking_a_key_frees_a_slot(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.limits.max_active_keys_per_owner = 2
    })
    .await;
    let (_, first) = app.create_key("owner", &["*"]).await;
    app.create_key("owner", &["*"]).await;
    let third = app
        .keys
        .clone()
        .create_key(app.authed(create_request("owner", &["*"])))
        .await;
    assert_status(third, Code::ResourceExhausted, "revoke one");

    app.revoke(&first.id).await;

    let again = app
        .keys
        .clone()
        .create_key(app.authed(create_request("owner", &["*"])))
        .await;
    assert!(again.is_ok(), "{again:?}");
    let other_owner = app
        .keys
        .clone()
        .create_key(app.authed(create_request("someone_else", &["*"])))
        .await;
    assert!(other_owner.is_ok(), "the limit is per owner");
}

async fn active_keys(app: &TestApp, owner: &str) -> usize {
    app.keys
        .clone()
        .list_keys(app.authed(pb::ListKeysRequest {
            owner_id: owner.into(),
            page_size: 100,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .api_keys
        .len()
}

async fn futures_join<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        results.push(task.await.expect("task joins"));
    }
    results
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_never_exceed_the_limit() {
        super::concurrent_creates_never_exceed_the_limit(super::Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revoking_a_key_frees_a_slot() {
        super::revoking_a_key_frees_a_slot(super::Backend::Sqlite).await;
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_never_exceed_the_limit() {
        super::concurrent_creates_never_exceed_the_limit(super::Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revoking_a_key_frees_a_slot() {
        super::revoking_a_key_frees_a_slot(super::Backend::Postgres).await;
    }
}
