//! Get, update, revoke, rotate and expire keys.

use apikeyd::grpc::pb::{self, ValidationCode};
use sea_orm::ConnectionTrait;
use tonic::Code;

use crate::helpers::{assert_status, code_of};
use crate::on_every_backend;

on_every_backend! {
    async fn get_returns_the_record_without_any_secret(app) {
        let (key, created) = app.create_key("user_1", &["posts:read"]).await;

        let got = app.keys.clone()
            .get_key(app.authed(pb::GetKeyRequest { id: created.id.clone() }))
            .await.unwrap().into_inner().api_key.unwrap();

        assert_eq!(got, created);
        assert!(key.starts_with(&got.prefix));
        assert!(!format!("{got:?}").contains(&key[25..]));
    }

    async fn get_of_an_unknown_key_is_not_found(app) {
        let result = app.keys.clone()
            .get_key(app.authed(pb::GetKeyRequest { id: "0000000000000000".into() }))
            .await;

        assert_status(result, Code::NotFound, "0000000000000000");
    }

    async fn update_changes_only_the_fields_sent(app) {
        let (key, created) = app.create_key("user_1", &["posts:read"]).await;

        let updated = app.keys.clone()
            .update_key(app.authed(pb::UpdateKeyRequest {
                id: created.id.clone(),
                name: Some("Renamed".into()),
                scopes: Some(pb::ScopeList { scopes: vec!["posts:write".into()] }),
                ..Default::default()
            }))
            .await.unwrap().into_inner().api_key.unwrap();

        assert_eq!(updated.name, "Renamed");
        assert_eq!(updated.scopes, vec!["posts:write"]);
        assert_eq!(updated.owner_id, created.owner_id);
        assert_eq!(updated.enabled, created.enabled);
        assert_eq!(updated.metadata, created.metadata);
        assert_eq!(updated.expires_at, created.expires_at);
        let at = |t: Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
        assert!(at(updated.updated_at) > at(created.updated_at));
        assert_eq!(code_of(&app.validate(&key, &["posts:read"]).await), ValidationCode::InsufficientScope);
        assert!(app.validate(&key, &["posts:write"]).await.valid);
    }

    async fn update_can_set_and_clear_expiry_and_metadata(app) {
        let (_, created) = app.create_key("user_1", &["*"]).await;
        assert!(created.expires_at.is_none());
        let update = |expiry, metadata| pb::UpdateKeyRequest {
            id: created.id.clone(), expiry: Some(expiry), metadata, ..Default::default()
        };

        let with_expiry = app.keys.clone()
            .update_key(app.authed(update(
                pb::update_key_request::Expiry::ExpiresInDays(30),
                Some(pb::MetadataMap { entries: [("team".to_owned(), "billing".to_owned())].into() }),
            )))
            .await.unwrap().into_inner().api_key.unwrap();
        let expires = with_expiry.expires_at.unwrap().seconds - with_expiry.updated_at.unwrap().seconds;
        assert_eq!(expires, 30 * 86_400);
        assert_eq!(with_expiry.metadata.get("team").map(String::as_str), Some("billing"));

        let cleared = app.keys.clone()
            .update_key(app.authed(update(pb::update_key_request::Expiry::NeverExpires(true), None)))
            .await.unwrap().into_inner().api_key.unwrap();
        assert!(cleared.expires_at.is_none());
        assert_eq!(cleared.metadata, with_expiry.metadata);
    }

    async fn a_revoked_key_cannot_be_updated(app) {
        let (_, created) = app.create_key("user_1", &["*"]).await;
        app.revoke(&created.id).await;

        let result = app.keys.clone()
            .update_key(app.authed(pb::UpdateKeyRequest { id: created.id.clone(), enabled: Some(true), ..Default::default() }))
            .await;

        assert_status(result, Code::FailedPrecondition, "revoked");
    }

    async fn revoking_twice_is_harmless_and_keeps_the_first_time(app) {
        let (_, created) = app.create_key("user_1", &["*"]).await;

        let first = app.revoke(&created.id).await;
        let second = app.revoke(&created.id).await;

        assert!(first.revoked_at.is_some());
        assert_eq!(first.revoked_at, second.revoked_at);
    }

    async fn revoking_another_owners_key_is_not_found_and_changes_nothing(app) {
        let (key, created) = app.create_key("user_1", &["*"]).await;

        let result = app.keys.clone()
            .revoke_key(app.authed(pb::RevokeKeyRequest { id: created.id.clone(), owner_id: "user_2".into() }))
            .await;

        assert_status(result, Code::NotFound, &created.id);
        assert!(app.validate(&key, &[]).await.valid);
        app.keys.clone()
            .revoke_key(app.authed(pb::RevokeKeyRequest { id: created.id.clone(), owner_id: "user_1".into() }))
            .await.unwrap();
        assert_eq!(code_of(&app.validate(&key, &[]).await), ValidationCode::Revoked);
    }

    async fn rotation_keeps_the_old_key_working_for_the_grace_period(app) {
        let (old_key, created) = app.create_key("user_1", &["posts:read"]).await;

        let rotated = app.keys.clone()
            .rotate_key(app.authed(pb::RotateKeyRequest {
                id: created.id.clone(),
                grace_period: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
            }))
            .await.unwrap().into_inner();

        let new = rotated.api_key.unwrap();
        let previous = rotated.previous_api_key.unwrap();
        assert_ne!(new.id, created.id);
        assert_ne!(rotated.key, old_key);
        assert_eq!((new.name.as_str(), &new.scopes, &new.owner_id), (created.name.as_str(), &created.scopes, &created.owner_id));
        let grace = previous.revoked_at.unwrap().seconds - new.created_at.unwrap().seconds;
        assert_eq!(grace, 3600);
        assert!(app.validate(&rotated.key, &["posts:read"]).await.valid);
        assert!(app.validate(&old_key, &["posts:read"]).await.valid, "old key works during the grace period");
    }

    async fn rotation_without_grace_revokes_the_old_key_at_once(app) {
        let (old_key, created) = app.create_key("user_1", &["*"]).await;

        let rotated = app.keys.clone()
            .rotate_key(app.authed(pb::RotateKeyRequest { id: created.id.clone(), grace_period: None }))
            .await.unwrap().into_inner();

        assert_eq!(code_of(&app.validate(&old_key, &[]).await), ValidationCode::Revoked);
        assert!(app.validate(&rotated.key, &[]).await.valid);
    }

    async fn a_rotated_key_cannot_be_rotated_again(app) {
        let (_, created) = app.create_key("user_1", &["*"]).await;
        let rotate = || pb::RotateKeyRequest {
            id: created.id.clone(),
            grace_period: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        };
        app.keys.clone().rotate_key(app.authed(rotate())).await.unwrap();

        let again = app.keys.clone().rotate_key(app.authed(rotate())).await;

        assert_status(again, Code::FailedPrecondition, "rotat");
    }

    async fn a_key_past_its_expiry_is_expired(app) {
        let mut request = crate::helpers::create_request("user_1", &["*"]);
        request.expires_in_days = Some(1);
        let created = app.keys.clone().create_key(app.authed(request)).await.unwrap().into_inner();
        let id = created.api_key.unwrap().id;

        // Moving the clock a day on is not possible from outside; moving the
        // stored expiry into the past (before the key is first used, so no
        // replica has cached it) is the same thing for the server.
        let db = app.database().await;
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        let statement = sea_orm::Statement::from_sql_and_values(
            db.get_database_backend(),
            match app.backend {
                crate::helpers::Backend::Postgres => "UPDATE api_keys SET expires_at = $1 WHERE id = $2",
                crate::helpers::Backend::Sqlite => "UPDATE api_keys SET expires_at = ? WHERE id = ?",
            },
            [past.into(), id.clone().into()],
        );
        db.execute(statement).await.unwrap();

        let verdict = app.validate(&created.key, &[]).await;
        assert_eq!(code_of(&verdict), ValidationCode::Expired);
        assert_eq!(verdict.message, "API key has expired");
    }
}
