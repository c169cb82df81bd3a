//! Root keys as first-class objects: created, listed, read and revoked over
//! RootKeyService and the CLI; owner scopes that reach only their owners
//! without telling a foreign key from a missing one; expiry and revocation
//! refused on the next call on every replica; no escalation.

use apikeyd::grpc::pb;
use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::root_key_service_client::RootKeyServiceClient;
use apikeyd::startup::Application;
use sea_orm::{ConnectionTrait, Statement};
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{TestApp, assert_status, connect, create_request, test_settings, with_bearer};
use crate::on_every_backend;

pub async fn root_key_client(app: &TestApp) -> RootKeyServiceClient<Channel> {
    RootKeyServiceClient::new(connect(app.addr).await)
}

/// Creates a root key over the API with the credential `by`; returns (key, record).
pub async fn create_root_key(
    app: &TestApp,
    by: &str,
    permissions: &[&str],
    owner_scope: &[&str],
) -> (String, pb::RootKey) {
    let created = root_key_client(app)
        .await
        .create_root_key(with_bearer(root_key_request(permissions, owner_scope), by))
        .await
        .expect("CreateRootKey succeeds")
        .into_inner();
    (created.key, created.root_key.expect("the record"))
}

pub fn root_key_request(permissions: &[&str], owner_scope: &[&str]) -> pb::CreateRootKeyRequest {
    pb::CreateRootKeyRequest {
        name: "billing-service".to_owned(),
        permissions: permissions.iter().map(|s| s.to_string()).collect(),
        owner_scope: owner_scope.iter().map(|s| s.to_string()).collect(),
        expires_in_days: None,
    }
}

/// A second server on the same database: another replica.
async fn second_replica(
    app: &TestApp,
) -> (KeyServiceClient<Channel>, tokio::sync::oneshot::Sender<()>) {
    let settings = test_settings(app.data_dir.path(), app.database_url.clone());
    let replica = Application::build(settings)
        .await
        .expect("second replica builds");
    let addr = replica.grpc_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(replica.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (KeyServiceClient::new(connect(addr).await), stop)
}

/// The message with `id` replaced, to compare refusals about different ids.
fn without(message: &str, id: &str) -> String {
    message.replace(id, "<id>")
}

on_every_backend! {
    async fn a_scoped_root_key_acts_only_on_its_owners(app) {
        let (_, theirs) = app.create_key("other", &["*"]).await;
        let (scoped, _) = create_root_key(&app, &app.root_key, &["keys:*"], &["tenant-*"]).await;
        let mut keys = app.keys.clone();

        let mine = keys.create_key(with_bearer(create_request("tenant-1", &["*"]), &scoped)).await
            .expect("a scoped root key creates keys for its owners").into_inner().api_key.unwrap();
        assert_status(keys.create_key(with_bearer(create_request("other", &["*"]), &scoped)).await, Code::PermissionDenied, "owner scope");
        assert_status(keys.create_key(with_bearer(create_request("TENANT-1", &["*"]), &scoped)).await, Code::PermissionDenied, "owner scope");

        let listed = keys.list_keys(with_bearer(pb::ListKeysRequest::default(), &scoped)).await.unwrap().into_inner();
        assert_eq!(listed.api_keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), [mine.id.as_str()]);
        assert_status(keys.list_keys(with_bearer(pb::ListKeysRequest { owner_id: "other".into(), ..Default::default() }, &scoped)).await, Code::PermissionDenied, "owner scope");

        let other_id = theirs.id.clone();
        assert_status(keys.get_key(with_bearer(pb::GetKeyRequest { id: other_id.clone() }, &scoped)).await, Code::PermissionDenied, &other_id);
        assert_status(keys.revoke_key(with_bearer(pb::RevokeKeyRequest { id: other_id.clone(), owner_id: String::new() }, &scoped)).await, Code::PermissionDenied, &other_id);
        assert_status(keys.update_key(with_bearer(pb::UpdateKeyRequest { id: other_id.clone(), enabled: Some(false), ..Default::default() }, &scoped)).await, Code::PermissionDenied, &other_id);
        assert_status(keys.rotate_key(with_bearer(pb::RotateKeyRequest { id: other_id.clone(), grace_period: None }, &scoped)).await, Code::PermissionDenied, &other_id);
        assert_status(keys.get_key_usage(with_bearer(pb::GetKeyUsageRequest { id: other_id.clone(), ..Default::default() }, &scoped)).await, Code::PermissionDenied, &other_id);
        assert_status(keys.set_owner_limits(with_bearer(pb::SetOwnerLimitsRequest { owner_id: "other".into(), tier: "pro".into(), ..Default::default() }, &scoped)).await, Code::PermissionDenied, "owner scope");
        assert_status(keys.get_owner_limits(with_bearer(pb::GetOwnerLimitsRequest { owner_id: "other".into() }, &scoped)).await, Code::PermissionDenied, "owner scope");

        let untouched = keys.get_key(app.authed(pb::GetKeyRequest { id: other_id })).await.unwrap().into_inner().api_key.unwrap();
        assert!(untouched.enabled && untouched.revoked_at.is_none(), "{untouched:?}");
        assert!(keys.get_owner_limits(app.authed(pb::GetOwnerLimitsRequest { owner_id: "other".into() })).await.unwrap().into_inner().owner_limits.unwrap().tier.is_empty());
        keys.set_owner_limits(with_bearer(pb::SetOwnerLimitsRequest { owner_id: "tenant-1".into(), tier: "pro".into(), ..Default::default() }, &scoped)).await.expect("its own owner's limits");
        keys.revoke_key(with_bearer(pb::RevokeKeyRequest { id: mine.id.clone(), owner_id: String::new() }, &scoped)).await.expect("its own owner's key");
    }

    async fn a_foreign_key_and_a_missing_key_look_the_same_to_a_scoped_root_key(app) {
        let (_, foreign) = app.create_key("other", &["*"]).await;
        let (_, doomed) = app.create_key("other", &["*"]).await;
        let (scoped, _) = create_root_key(&app, &app.root_key, &["keys:*"], &["tenant-*"]).await;
        // A made-up id never issued, and a key deleted behind the API.
        let missing = "0123456789abcdef";
        app.database().await.execute(Statement::from_string(
            app.database().await.get_database_backend(),
            format!("DELETE FROM api_keys WHERE id = '{}'", doomed.id),
        )).await.unwrap();
        let keys = app.keys.clone();

        for id in [foreign.id.as_str(), doomed.id.as_str(), missing] {
            let got = keys.clone().get_key(with_bearer(pb::GetKeyRequest { id: id.to_owned() }, &scoped)).await.unwrap_err();
            let revoked = keys.clone().revoke_key(with_bearer(pb::RevokeKeyRequest { id: id.to_owned(), owner_id: String::new() }, &scoped)).await.unwrap_err();
            let usage = keys.clone().get_key_usage(with_bearer(pb::GetKeyUsageRequest { id: id.to_owned(), ..Default::default() }, &scoped)).await.unwrap_err();
            for refusal in [&got, &revoked, &usage] {
                assert_eq!(refusal.code(), Code::PermissionDenied, "{id}: {}", refusal.message());
                assert_eq!(
                    without(refusal.message(), id),
                    without(got.message(), id),
                    "one answer for every call"
                );
            }
            assert_eq!(
                without(got.message(), id),
                without(
                    keys.clone().get_key(with_bearer(pb::GetKeyRequest { id: foreign.id.clone() }, &scoped)).await.unwrap_err().message(),
                    &foreign.id
                ),
                "a missing key reads like a foreign one"
            );
        }

        // A root key that reaches every owner is told the truth.
        assert_status(keys.clone().get_key(app.authed(pb::GetKeyRequest { id: missing.to_owned() })).await, Code::NotFound, missing);
    }

    async fn a_revoked_root_key_is_refused_on_its_next_call_on_every_replica(app) {
        let (ops, record) = create_root_key(&app, &app.root_key, &["keys:*", "root_keys:*"], &[]).await;
        let (mut replica, _stop) = second_replica(&app).await;
        replica.list_keys(with_bearer(pb::ListKeysRequest::default(), &ops)).await.expect("live on the replica");
        app.keys.clone().list_keys(with_bearer(pb::ListKeysRequest::default(), &ops)).await.expect("live here");

        let revoked = root_key_client(&app).await
            .revoke_root_key(app.authed(pb::RevokeRootKeyRequest { id: record.id.clone() }))
            .await.unwrap().into_inner().root_key.unwrap();

        assert!(revoked.revoked_at.is_some());
        assert_status(app.keys.clone().list_keys(with_bearer(pb::ListKeysRequest::default(), &ops)).await, Code::Unauthenticated, "revoked");
        assert_status(replica.list_keys(with_bearer(pb::ListKeysRequest::default(), &ops)).await, Code::Unauthenticated, "revoked");
        assert_status(root_key_client(&app).await.list_root_keys(with_bearer(pb::ListRootKeysRequest::default(), &ops)).await, Code::Unauthenticated, "revoked");
    }

    async fn an_expired_root_key_is_refused_on_its_next_call(app) {
        let mut request = root_key_request(&["keys:read"], &[]);
        request.expires_in_days = Some(1);
        let created = root_key_client(&app).await.create_root_key(app.authed(request)).await.unwrap().into_inner();
        let record = created.root_key.unwrap();
        let expiry = record.expires_at.expect("an expiry");
        let in_a_day = expiry.seconds - record.created_at.unwrap().seconds;
        assert!((86_399..=86_401).contains(&in_a_day), "{in_a_day}");
        app.keys.clone().list_keys(with_bearer(pb::ListKeysRequest::default(), &created.key)).await.expect("live before its expiry");

        // A day passes for this key: its expiry moves into the past.
        let db = app.database().await;
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        db.execute(Statement::from_sql_and_values(
            db.get_database_backend(),
            match db.get_database_backend() {
                sea_orm::DbBackend::Postgres => "UPDATE root_keys SET expires_at = $1 WHERE id = $2",
                _ => "UPDATE root_keys SET expires_at = ? WHERE id = ?",
            },
            [past.into(), record.id.clone().into()],
        )).await.unwrap();

        assert_status(app.keys.clone().list_keys(with_bearer(pb::ListKeysRequest::default(), &created.key)).await, Code::Unauthenticated, "expired");
    }

    async fn a_root_key_cannot_create_or_revoke_one_wider_than_itself(app) {
        let (billing, billing_record) = create_root_key(&app, &app.root_key, &["keys:*", "root_keys:*"], &["tenant-*"]).await;
        let mut root_keys = root_key_client(&app).await;
        let create = |permissions: &'static [&'static str], scope: &'static [&'static str]| {
            let mut root_keys = root_keys.clone();
            let billing = billing.clone();
            async move { root_keys.create_root_key(with_bearer(root_key_request(permissions, scope), &billing)).await }
        };

        assert_status(create(&["*"], &["tenant-7"]).await, Code::PermissionDenied, "permission *");
        assert_status(create(&["audit:read"], &["tenant-7"]).await, Code::PermissionDenied, "audit:read");
        assert_status(create(&["validate"], &["tenant-7"]).await, Code::PermissionDenied, "validate");
        assert_status(create(&["keys:read"], &[]).await, Code::PermissionDenied, "owner scope");
        assert_status(create(&["keys:read"], &["tenant*"]).await, Code::PermissionDenied, "owner scope");
        assert_status(create(&["keys:read"], &["other"]).await, Code::PermissionDenied, "owner scope");
        let child = create(&["keys:read", "root_keys:read"], &["tenant-7", "tenant-8*"]).await.expect("a narrower key").into_inner();
        let child_record = child.root_key.unwrap();
        assert_eq!(child_record.created_by, billing_record.id);
        assert_eq!(child_record.owner_scope, ["tenant-7", "tenant-8*"]);

        // Wider root keys are out of reach, like missing ones.
        let bootstrap_id = root_keys.list_root_keys(app.authed(pb::ListRootKeysRequest::default())).await.unwrap().into_inner()
            .root_keys.into_iter().find(|k| k.name == "bootstrap").unwrap().id;
        let refused = root_keys.revoke_root_key(with_bearer(pb::RevokeRootKeyRequest { id: bootstrap_id.clone() }, &billing)).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        let missing = root_keys.revoke_root_key(with_bearer(pb::RevokeRootKeyRequest { id: "0123456789abcdef".into() }, &billing)).await.unwrap_err();
        assert_eq!(without(refused.message(), &bootstrap_id), without(missing.message(), "0123456789abcdef"));
        assert_status(root_keys.get_root_key(with_bearer(pb::GetRootKeyRequest { id: billing_record.id.clone() }, &child.key)).await, Code::PermissionDenied, &billing_record.id);

        let seen_by_billing: Vec<String> = root_keys.list_root_keys(with_bearer(pb::ListRootKeysRequest::default(), &billing)).await.unwrap().into_inner()
            .root_keys.into_iter().map(|k| k.id).collect();
        assert_eq!(seen_by_billing, [child_record.id.clone(), billing_record.id.clone()]);
        let seen_by_child: Vec<String> = root_keys.list_root_keys(with_bearer(pb::ListRootKeysRequest::default(), &child.key)).await.unwrap().into_inner()
            .root_keys.into_iter().map(|k| k.id).collect();
        assert_eq!(seen_by_child, std::slice::from_ref(&child_record.id));
        let bootstrap = root_keys.get_root_key(app.authed(pb::GetRootKeyRequest { id: bootstrap_id })).await.unwrap().into_inner().root_key.unwrap();
        assert!(bootstrap.revoked_at.is_none());

        root_keys.revoke_root_key(with_bearer(pb::RevokeRootKeyRequest { id: child_record.id.clone() }, &billing)).await.expect("a narrower key can be revoked");
    }

    async fn root_key_settings_are_checked_and_a_rejected_create_writes_nothing(app) {
        let mut root_keys = root_key_client(&app).await;
        let cases: [(pb::CreateRootKeyRequest, &str); 6] = [
            (root_key_request(&[], &[]), "permissions"),
            (root_key_request(&["posts:read"], &[]), "permissions"),
            (root_key_request(&["keys:read"], &["*"]), "owner_scope"),
            (root_key_request(&["keys:read"], &["a*b"]), "owner_scope"),
            (pb::CreateRootKeyRequest { name: String::new(), ..root_key_request(&["keys:read"], &[]) }, "name"),
            (pb::CreateRootKeyRequest { expires_in_days: Some(0), ..root_key_request(&["keys:read"], &[]) }, "expires_in_days"),
        ];
        for (request, field) in cases {
            assert_status(root_keys.create_root_key(app.authed(request)).await, Code::InvalidArgument, field);
        }
        let listed = root_keys.list_root_keys(app.authed(pb::ListRootKeysRequest { include_revoked: true, ..Default::default() })).await.unwrap().into_inner();
        assert_eq!(listed.root_keys.len(), 1, "only the bootstrap key: {:?}", listed.root_keys);
    }

    async fn root_keys_are_listed_in_pages_newest_first_without_secrets(app) {
        let mut created = Vec::new();
        for _ in 0..3 {
            created.push(create_root_key(&app, &app.root_key, &["keys:read"], &["t-*"]).await);
        }
        let mut root_keys = root_key_client(&app).await;
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = root_keys.list_root_keys(app.authed(pb::ListRootKeysRequest { page_size: 2, page_token: token, ..Default::default() })).await.unwrap().into_inner();
            seen.extend(page.root_keys);
            token = page.next_page_token;
            if token.is_empty() { break; }
        }
        let ids: Vec<&str> = seen.iter().map(|k| k.id.as_str()).collect();
        let mut expected: Vec<&str> = created.iter().rev().map(|(_, k)| k.id.as_str()).collect();
        expected.push(seen.last().unwrap().id.as_str());
        assert_eq!(ids, expected);
        let printed = format!("{seen:?}");
        for (key, _) in &created {
            assert!(!printed.contains(&key[key.len() - 49..]));
        }
    }

    async fn the_cli_creates_lists_and_revokes_root_keys(app) {
        let scoped = cli(&app, &["root-key", "create", "--name", "tenants", "--permission", "keys:read", "--owner-scope", "tenant-*", "--expires-in-days", "30"]);
        let key = scoped.lines().last().unwrap().to_owned();
        assert!(key.starts_with("rk_"), "{scoped}");
        let id = &key[3..19];

        let listed = cli(&app, &["root-key", "list"]);
        let line = listed.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{listed}"));
        assert!(line.contains("\ttenants\tkeys:read\ttenant-*\t"), "{line}");
        assert!(!listed.contains(&key[20..]), "a listing shows no secret");
        assert_status(app.keys.clone().create_key(with_bearer(create_request("tenant-1", &["*"]), &key)).await, Code::PermissionDenied, "keys:write");

        cli(&app, &["root-key", "revoke", id]);

        assert_status(app.keys.clone().list_keys(with_bearer(pb::ListKeysRequest::default(), &key)).await, Code::Unauthenticated, "revoked");
        assert!(!cli(&app, &["root-key", "list"]).contains(id));
        assert!(cli(&app, &["root-key", "list", "--include-revoked"]).contains(id));
    }
}

/// Runs `apikeyd` against the test's database; returns stdout.
fn cli(app: &TestApp, args: &[&str]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_apikeyd"));
    command
        .args(args)
        .env("APIKEYD_DATA_DIR", app.data_dir.path())
        .env("APIKEYD_ARGON2_MEMORY_KIB", "1024")
        .env("APIKEYD_ARGON2_ITERATIONS", "1")
        .env_remove("APIKEYD_DATABASE_URL");
    if let Some(url) = &app.database_url {
        command.env("APIKEYD_DATABASE_URL", url);
    }
    let output = command.output().expect("run apikeyd");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
