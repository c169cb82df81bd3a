//! Bad input is INVALID_ARGUMENT naming the field, and nothing is written.

use apikeyd::grpc::pb;
use tonic::Code;

use crate::helpers::{TestApp, assert_status, create_request};
use crate::on_every_backend;

async fn assert_rejected_without_a_write(
    app: &TestApp,
    request: pb::CreateKeyRequest,
    field: &str,
) {
    let owner = request.owner_id.clone();
    let result = app.keys.clone().create_key(app.authed(request)).await;
    assert_status(result, Code::InvalidArgument, field);
    if !owner.is_empty() && owner.chars().count() <= 128 {
        let listed = app
            .keys
            .clone()
            .list_keys(app.authed(pb::ListKeysRequest {
                owner_id: owner,
                include_revoked: true,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(listed.api_keys.is_empty(), "a rejected create wrote a key");
    }
}

on_every_backend! {
    async fn create_rejects_out_of_bounds_fields_and_writes_nothing(app) {
        let base = || create_request("user_1", &["posts:read"]);

        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { name: String::new(), ..base() }, "name").await;
        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { name: "n".repeat(101), ..base() }, "name").await;
        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { owner_id: String::new(), ..base() }, "owner_id").await;
        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { owner_id: "o".repeat(129), ..base() }, "owner_id").await;
        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { scopes: vec![], ..base() }, "scopes").await;
        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { scopes: vec!["posts".into()], ..base() }, "scopes").await;
        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { scopes: vec![format!("posts:{}", "r".repeat(64))], ..base() }, "scopes").await;
        let many_scopes = (0..51).map(|i| format!("r{i}:read")).collect();
        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { scopes: many_scopes, ..base() }, "scopes").await;
        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { expires_in_days: Some(0), ..base() }, "expires_in_days").await;
        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { expires_in_days: Some(366), ..base() }, "expires_in_days").await;
        let many_entries = (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { metadata: many_entries, ..base() }, "metadata").await;
        let big_values = (0..2).map(|i| (format!("k{i}"), "v".repeat(3000))).collect();
        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { metadata: big_values, ..base() }, "metadata").await;
        assert_rejected_without_a_write(&app, pb::CreateKeyRequest { environment: 9, ..base() }, "environment").await;
    }

    async fn validate_rejects_an_oversized_key_and_bad_required_scopes(app) {
        let oversized = app.validation.clone()
            .validate(pb::ValidateRequest { key: "k".repeat(513), ..Default::default() })
            .await;
        assert_status(oversized, Code::InvalidArgument, "key");

        let bad_scope = app.validation.clone()
            .validate(pb::ValidateRequest { key: "sk_live_x".into(), required_scopes: vec!["bad scope".into()], context: None, cost: 0 })
            .await;
        assert_status(bad_scope, Code::InvalidArgument, "required_scopes");
    }

    async fn list_rejects_bad_page_sizes_and_tokens(app) {
        for page_size in [-1, 101] {
            let result = app.keys.clone()
                .list_keys(app.authed(pb::ListKeysRequest { page_size, ..Default::default() }))
                .await;
            assert_status(result, Code::InvalidArgument, "page_size");
        }
        let result = app.keys.clone()
            .list_keys(app.authed(pb::ListKeysRequest { page_token: "forged".into(), ..Default::default() }))
            .await;
        assert_status(result, Code::InvalidArgument, "page_token");
    }

    async fn update_rejects_bad_fields_and_changes_nothing(app) {
        let (_, created) = app.create_key("user_1", &["posts:read"]).await;
        let update = |request: pb::UpdateKeyRequest| pb::UpdateKeyRequest { id: created.id.clone(), ..request };

        let result = app.keys.clone()
            .update_key(app.authed(update(pb::UpdateKeyRequest {
                name: Some("fine".into()),
                scopes: Some(pb::ScopeList { scopes: vec!["not a scope".into()] }),
                ..Default::default()
            })))
            .await;
        assert_status(result, Code::InvalidArgument, "scopes");
        let result = app.keys.clone()
            .update_key(app.authed(update(pb::UpdateKeyRequest {
                expiry: Some(pb::update_key_request::Expiry::ExpiresInDays(400)),
                ..Default::default()
            })))
            .await;
        assert_status(result, Code::InvalidArgument, "expires_in_days");

        let unchanged = app.keys.clone()
            .get_key(app.authed(pb::GetKeyRequest { id: created.id.clone() }))
            .await.unwrap().into_inner().api_key.unwrap();
        assert_eq!(unchanged, created);
    }

    async fn ids_that_cannot_exist_are_invalid_arguments(app) {
        let result = app.keys.clone().get_key(app.authed(pb::GetKeyRequest { id: "../etc".into() })).await;
        assert_status(result, Code::InvalidArgument, "id");
        let result = app.keys.clone().get_key(app.authed(pb::GetKeyRequest { id: String::new() })).await;
        assert_status(result, Code::InvalidArgument, "id");
    }

    async fn rotation_grace_is_at_most_seven_days(app) {
        let (_, created) = app.create_key("user_1", &["*"]).await;

        let result = app.keys.clone()
            .rotate_key(app.authed(pb::RotateKeyRequest {
                id: created.id.clone(),
                grace_period: Some(prost_types::Duration { seconds: 7 * 86_400 + 1, nanos: 0 }),
            }))
            .await;

        assert_status(result, Code::InvalidArgument, "grace_period");
        let listed = app.keys.clone()
            .list_keys(app.authed(pb::ListKeysRequest { owner_id: "user_1".into(), include_revoked: true, ..Default::default() }))
            .await.unwrap().into_inner();
        assert_eq!(listed.api_keys.len(), 1, "a rejected rotation wrote nothing");
        assert!(listed.api_keys[0].revoked_at.is_none());
    }
}
