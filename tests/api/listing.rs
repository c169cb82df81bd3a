//! ListKeys: newest first, keyset pagination, revoked hidden by default.

use std::collections::HashSet;

use apikeyd::grpc::pb;

use crate::helpers::TestApp;
use crate::on_every_backend;

async fn list(
    app: &TestApp,
    owner_id: &str,
    page_size: i32,
    page_token: String,
    include_revoked: bool,
) -> pb::ListKeysResponse {
    app.keys
        .clone()
        .list_keys(app.authed(pb::ListKeysRequest {
            owner_id: owner_id.into(),
            page_size,
            page_token,
            include_revoked,
        }))
        .await
        .expect("ListKeys succeeds")
        .into_inner()
}

on_every_backend! {
    async fn pages_cover_every_key_once_newest_first(app) {
        let mut created = Vec::new();
        for owner in ["a", "b", "c"] {
            for _ in 0..3 {
                created.push(app.create_key(owner, &["*"]).await.1.id);
            }
        }

        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = list(&app, "", 4, token, false).await;
            assert!(page.api_keys.len() <= 4);
            seen.extend(page.api_keys.into_iter().map(|k| k.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }

        created.reverse();
        assert_eq!(seen, created, "every key once, newest first");
    }

    async fn an_owner_sees_only_its_own_keys(app) {
        let (_, mine) = app.create_key("alice", &["*"]).await;
        app.create_key("bob", &["*"]).await;

        let page = list(&app, "alice", 0, String::new(), false).await;

        assert_eq!(page.api_keys.iter().map(|k| &k.id).collect::<Vec<_>>(), vec![&mine.id]);
        assert!(page.next_page_token.is_empty());
    }

    async fn revoked_keys_are_hidden_unless_asked_for(app) {
        let (_, kept) = app.create_key("alice", &["*"]).await;
        let (_, revoked) = app.create_key("alice", &["*"]).await;
        app.revoke(&revoked.id).await;

        let default = list(&app, "alice", 10, String::new(), false).await;
        let everything = list(&app, "alice", 10, String::new(), true).await;

        assert_eq!(default.api_keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>(), vec![kept.id.clone()]);
        let all: HashSet<_> = everything.api_keys.iter().map(|k| k.id.clone()).collect();
        assert_eq!(all, HashSet::from([kept.id, revoked.id]));
    }

    async fn a_key_in_its_rotation_grace_period_is_still_listed(app) {
        let (_, created) = app.create_key("alice", &["*"]).await;
        app.keys.clone()
            .rotate_key(app.authed(pb::RotateKeyRequest {
                id: created.id.clone(),
                grace_period: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
            }))
            .await.unwrap();

        let page = list(&app, "alice", 10, String::new(), false).await;

        assert_eq!(page.api_keys.len(), 2);
    }
}
