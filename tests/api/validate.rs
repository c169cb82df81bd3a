//! Validate: the verdicts, in the documented order of checks.

use apikeyd::grpc::pb::{self, ValidationCode};

use crate::helpers::{code_of, wrong_secret_for};
use crate::on_every_backend;

on_every_backend! {
    async fn a_fresh_key_is_valid_for_a_granted_scope(app) {
        let (key, record) = app.create_key("user_1", &["posts:read"]).await;

        let verdict = app.validate(&key, &["posts:read"]).await;

        assert!(verdict.valid);
        assert_eq!(code_of(&verdict), ValidationCode::Valid);
        assert_eq!(verdict.api_key.unwrap().id, record.id);
    }

    async fn a_scope_the_key_lacks_is_insufficient(app) {
        let (key, _) = app.create_key("user_1", &["posts:read"]).await;

        let verdict = app.validate(&key, &["posts:write"]).await;

        assert!(!verdict.valid);
        assert_eq!(code_of(&verdict), ValidationCode::InsufficientScope);
        assert_eq!(verdict.message, "Insufficient permissions");
    }

    async fn wildcard_grants_cover_matching_scopes(app) {
        let (key, _) = app.create_key("user_1", &["posts:*", "*:read"]).await;

        assert!(app.validate(&key, &["posts:delete", "users:read"]).await.valid);
        assert!(!app.validate(&key, &["users:write"]).await.valid);
    }

    async fn a_made_up_key_is_malformed(app) {
        let verdict = app.validate("sk_live_not-a-real-key", &[]).await;

        assert_eq!(code_of(&verdict), ValidationCode::Malformed);
        assert!(verdict.api_key.is_none());
    }

    async fn a_mistyped_key_fails_its_checksum(app) {
        let (key, _) = app.create_key("user_1", &["*"]).await;
        let mut typo = key.clone().into_bytes();
        let i = typo.len() - 10;
        typo[i] = if typo[i] == b'x' { b'y' } else { b'x' };

        let verdict = app.validate(&String::from_utf8(typo).unwrap(), &[]).await;

        assert_eq!(code_of(&verdict), ValidationCode::Malformed);
    }

    async fn an_empty_key_is_reported_missing(app) {
        let verdict = app.validate("", &[]).await;

        assert_eq!(code_of(&verdict), ValidationCode::Malformed);
        assert_eq!(verdict.message, "Missing API key");
    }

    async fn a_well_formed_key_with_the_wrong_secret_is_not_found(app) {
        let (key, _) = app.create_key("user_1", &["*"]).await;
        // The key's id with another secret, re-checksummed, is well formed
        // but wrong: it must reveal nothing about the key.
        let forged = wrong_secret_for(&key);

        let verdict = app.validate(&forged, &[]).await;

        assert_eq!(code_of(&verdict), ValidationCode::NotFound);
        assert!(verdict.api_key.is_none());
    }

    async fn a_revoked_key_is_rejected(app) {
        let (key, record) = app.create_key("user_1", &["*"]).await;
        app.revoke(&record.id).await;

        let verdict = app.validate(&key, &[]).await;

        assert_eq!(code_of(&verdict), ValidationCode::Revoked);
        assert_eq!(verdict.message, "API key has been revoked");
    }

    async fn a_disabled_key_is_rejected_until_enabled_again(app) {
        let (key, record) = app.create_key("user_1", &["*"]).await;
        let disable = |enabled| pb::UpdateKeyRequest { id: record.id.clone(), enabled: Some(enabled), ..Default::default() };
        app.keys.clone().update_key(app.authed(disable(false))).await.unwrap();

        assert_eq!(code_of(&app.validate(&key, &[]).await), ValidationCode::Disabled);

        app.keys.clone().update_key(app.authed(disable(true))).await.unwrap();
        assert_eq!(code_of(&app.validate(&key, &[]).await), ValidationCode::Valid);
    }

    async fn revocation_is_checked_before_scopes(app) {
        let (key, record) = app.create_key("user_1", &["posts:read"]).await;
        app.revoke(&record.id).await;

        let verdict = app.validate(&key, &["admin:everything"]).await;

        assert_eq!(code_of(&verdict), ValidationCode::Revoked);
    }

    async fn a_test_key_validates_like_a_live_one(app) {
        let mut request = crate::helpers::create_request("user_1", &["*"]);
        request.environment = pb::Environment::Test as i32;
        let created = app.keys.clone().create_key(app.authed(request)).await.unwrap().into_inner();
        assert!(created.key.starts_with("sk_test_"));

        let verdict = app.validate(&created.key, &[]).await;

        assert!(verdict.valid);
        assert_eq!(verdict.api_key.unwrap().environment, pb::Environment::Test as i32);
    }

    async fn root_keys_do_not_validate_as_api_keys(app) {
        let verdict = app.validate(&app.root_key, &[]).await;

        assert_eq!(code_of(&verdict), ValidationCode::NotFound);
    }

    async fn validation_records_last_used_of_every_key_in_the_background(app) {
        let mut keys = Vec::new();
        for owner in ["a", "b", "c"] {
            let (key, record) = app.create_key(owner, &["*"]).await;
            assert!(record.last_used_at.is_none());
            keys.push((key, record.id));
        }

        for (key, _) in &keys {
            assert!(app.validate(key, &[]).await.valid);
        }

        let mut written = 0;
        for _ in 0..50 {
            let listed = app.keys.clone()
                .list_keys(app.authed(pb::ListKeysRequest { page_size: 10, ..Default::default() }))
                .await.unwrap().into_inner().api_keys;
            written = listed.iter().filter(|k| k.last_used_at.is_some()).count();
            if written == keys.len() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(written, keys.len(), "every key's last_used_at is written within 5 s, in one batch");
    }
}
