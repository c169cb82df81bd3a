//! The audit trail: every change and every refused management call is
//! recorded with its root key, method, targets, fields and outcome; no API
//! alters it; a scoped root key reads only its owners' events; old events
//! go by retention; each event is also one `apikeyd::audit` log line.

use apikeyd::domain::audit::AuditEvent;
use apikeyd::grpc::pb;
use apikeyd::grpc::pb::audit_service_client::AuditServiceClient;
use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use sea_orm::{ConnectionTrait, Statement};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::helpers::{
    Backend, ServerProcess, TestApp, assert_status, connect, create_request,
    fresh_postgres_database, with_bearer,
};
use crate::on_every_backend;
use crate::root_keys::{create_root_key, root_key_client};

async fn audit_client(app: &TestApp) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(connect(app.addr).await)
}

/// Every event `by` may read matching `filter`, newest first, across pages.
async fn events(
    app: &TestApp,
    by: &str,
    filter: pb::ListAuditEventsRequest,
) -> Vec<pb::AuditEvent> {
    let mut client = audit_client(app).await;
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_audit_events(with_bearer(
                pb::ListAuditEventsRequest {
                    page_token: token,
                    page_size: 3,
                    ..filter.clone()
                },
                by,
            ))
            .await
            .expect("ListAuditEvents succeeds")
            .into_inner();
        all.extend(page.audit_events);
        token = page.next_page_token;
        if token.is_empty() {
            return all;
        }
    }
}

/// The newest event of `method` (short name, e.g. "RevokeKey").
fn newest<'a>(events: &'a [pb::AuditEvent], method: &str) -> &'a pb::AuditEvent {
    events
        .iter()
        .find(|e| e.method.ends_with(&format!("/{method}")))
        .unwrap_or_else(|| panic!("no {method} event in {events:#?}"))
}

on_every_backend! {
    async fn each_change_is_audited_with_its_root_key_method_target_and_fields(app) {
        let (ops, ops_record) = create_root_key(&app, &app.root_key, &["keys:*", "root_keys:*", "audit:read"], &[]).await;
        let mut keys = app.keys.clone();
        let created = keys.create_key(with_bearer(pb::CreateKeyRequest {
            metadata: [("team".to_owned(), "billing".to_owned())].into(),
            expires_in_days: Some(30),
            tier: "pro".into(),
            ..create_request("user_1", &["posts:read"])
        }, &ops)).await.unwrap().into_inner();
        let id = created.api_key.unwrap().id;
        keys.update_key(with_bearer(pb::UpdateKeyRequest { id: id.clone(), name: Some("Renamed".into()), enabled: Some(false), ..Default::default() }, &ops)).await.unwrap();
        let rotated = keys.rotate_key(with_bearer(pb::RotateKeyRequest { id: id.clone(), grace_period: Some(prost_types::Duration { seconds: 60, nanos: 0 }) }, &ops)).await.unwrap().into_inner();
        let new_id = rotated.api_key.unwrap().id;
        keys.revoke_key(with_bearer(pb::RevokeKeyRequest { id: new_id.clone(), owner_id: String::new() }, &ops)).await.unwrap();
        keys.set_owner_limits(with_bearer(pb::SetOwnerLimitsRequest { owner_id: "user_1".into(), tier: "enterprise".into(), ..Default::default() }, &ops)).await.unwrap();
        let (_, child) = create_root_key(&app, &ops, &["keys:read"], &["user_*"]).await;
        root_key_client(&app).await.revoke_root_key(with_bearer(pb::RevokeRootKeyRequest { id: child.id.clone() }, &ops)).await.unwrap();

        let trail = events(&app, &ops, pb::ListAuditEventsRequest { root_key_id: ops_record.id.clone(), ..Default::default() }).await;

        let methods: Vec<&str> = trail.iter().map(|e| e.method.rsplit('/').next().unwrap()).collect();
        assert_eq!(methods, ["RevokeRootKey", "CreateRootKey", "SetOwnerLimits", "RevokeKey", "RotateKey", "UpdateKey", "CreateKey", "CreateRootKey"]);
        for event in &trail[..7] {
            assert_eq!((event.root_key_id.as_str(), event.root_key_name.as_str()), (ops_record.id.as_str(), "billing-service"));
            assert_eq!(event.outcome_code, "OK", "{event:?}");
            assert!(event.peer_address.starts_with("127.0.0.1:"), "{event:?}");
            assert!(event.tls_identity.is_empty());
            assert!(event.time.is_some());
        }
        let create = newest(&trail, "CreateKey");
        assert_eq!((create.key_id.as_str(), create.owner_id.as_str()), (id.as_str(), "user_1"));
        assert_eq!(create.changed_fields["name"], "Production integration");
        assert_eq!(create.changed_fields["scopes"], "[\"posts:read\"]");
        assert_eq!(create.changed_fields["metadata"], "{\"team\":\"billing\"}");
        assert_eq!(create.changed_fields["expires_in_days"], "30");
        assert_eq!(create.changed_fields["limits"], "tier pro");
        let update = newest(&trail, "UpdateKey");
        assert_eq!((update.key_id.as_str(), update.owner_id.as_str()), (id.as_str(), "user_1"));
        assert_eq!(update.changed_fields.len(), 2, "only what changed: {update:?}");
        assert_eq!((update.changed_fields["name"].as_str(), update.changed_fields["enabled"].as_str()), ("Renamed", "false"));
        let rotate = newest(&trail, "RotateKey");
        assert_eq!(rotate.key_id, id);
        assert_eq!((rotate.changed_fields["new_key_id"].as_str(), rotate.changed_fields["grace_period_secs"].as_str()), (new_id.as_str(), "60"));
        let revoke = newest(&trail, "RevokeKey");
        assert_eq!((revoke.key_id.as_str(), revoke.owner_id.as_str()), (new_id.as_str(), "user_1"));
        let limits = newest(&trail, "SetOwnerLimits");
        assert_eq!((limits.owner_id.as_str(), limits.changed_fields["owner_limits"].as_str()), ("user_1", "tier enterprise"));
        let root_created = &trail[1];
        assert_eq!(root_created.target_root_key_id, child.id);
        assert_eq!(root_created.changed_fields["permissions"], "[\"keys:read\"]");
        assert_eq!(root_created.changed_fields["owner_scope"], "[\"user_*\"]");
        assert_eq!(trail[0].target_root_key_id, child.id);
        // Created by the bootstrap key, it is about ops: found by its id too.
        assert_eq!(trail[7].target_root_key_id, ops_record.id);
        assert_ne!(trail[7].root_key_id, ops_record.id);

        let everything = format!("{trail:?}");
        for secret in [&created.key, &rotated.key, &ops, &app.root_key] {
            assert!(!everything.contains(&secret[secret.len() - 49..]), "a secret reached the trail");
        }
        let by_key = events(&app, &ops, pb::ListAuditEventsRequest { key_id: id.clone(), ..Default::default() }).await;
        assert_eq!(by_key.len(), 3, "create, update, rotate: {by_key:#?}");
    }

    async fn refused_management_calls_are_audited(app) {
        let (reader, reader_record) = create_root_key(&app, &app.root_key, &["keys:read"], &[]).await;
        let (_, existing) = app.create_key("user_1", &["*"]).await;
        let mut keys = app.keys.clone();

        let _ = keys.create_key(Request::new(create_request("user_1", &["*"]))).await;
        let _ = keys.revoke_key(with_bearer(pb::RevokeKeyRequest { id: existing.id.clone(), owner_id: String::new() }, &reader)).await;
        let _ = keys.create_key(app.authed(create_request("", &["*"]))).await;
        let _ = keys.get_key(with_bearer(pb::GetKeyRequest { id: "0123456789abcdef".into() }, &reader)).await;
        keys.revoke_key(app.authed(pb::RevokeKeyRequest { id: existing.id.clone(), owner_id: String::new() })).await.unwrap();
        let _ = keys.update_key(app.authed(pb::UpdateKeyRequest { id: existing.id.clone(), enabled: Some(false), ..Default::default() })).await;

        let trail = events(&app, &app.root_key, pb::ListAuditEventsRequest::default()).await;

        let outcomes: Vec<(&str, &str)> = trail.iter().take(6)
            .map(|e| (e.method.rsplit('/').next().unwrap(), e.outcome_code.as_str())).collect();
        assert_eq!(outcomes, [
            ("UpdateKey", "FAILED_PRECONDITION"),
            ("RevokeKey", "OK"),
            ("GetKey", "NOT_FOUND"),
            ("CreateKey", "INVALID_ARGUMENT"),
            ("RevokeKey", "PERMISSION_DENIED"),
            ("CreateKey", "UNAUTHENTICATED"),
        ]);
        let unauthenticated = &trail[5];
        assert!(unauthenticated.root_key_id.is_empty() && unauthenticated.root_key_name.is_empty());
        assert!(unauthenticated.outcome_message.contains("authorization"), "{unauthenticated:?}");
        assert!(unauthenticated.peer_address.starts_with("127.0.0.1:"));
        let denied = &trail[4];
        assert_eq!((denied.root_key_id.as_str(), denied.key_id.as_str()), (reader_record.id.as_str(), existing.id.as_str()));
        assert!(denied.outcome_message.contains("keys:write"), "{denied:?}");
        assert!(trail[3].outcome_message.contains("owner_id"));
        assert_eq!(trail[2].key_id, "0123456789abcdef");
        assert_eq!((trail[0].key_id.as_str(), trail[0].owner_id.as_str()), (existing.id.as_str(), "user_1"));
        assert_eq!(trail.iter().filter(|e| e.method.ends_with("/UpdateKey")).count(), 1, "a refused change is recorded once");
    }

    async fn no_api_alters_the_trail_and_the_database_refuses_updates(app) {
        let (_, key) = app.create_key("user_1", &["*"]).await;
        app.revoke(&key.id).await;
        let before = events(&app, &app.root_key, pb::ListAuditEventsRequest::default()).await;

        // Every other call there is, including refused ones.
        let mut keys = app.keys.clone();
        let (_, other) = app.create_key("user_2", &["*"]).await;
        let _ = keys.update_key(app.authed(pb::UpdateKeyRequest { id: other.id.clone(), name: Some("x".into()), ..Default::default() })).await;
        let _ = keys.revoke_key(Request::new(pb::RevokeKeyRequest { id: key.id.clone(), owner_id: String::new() })).await;
        let (_, root) = create_root_key(&app, &app.root_key, &["keys:read"], &[]).await;
        let _ = root_key_client(&app).await.revoke_root_key(app.authed(pb::RevokeRootKeyRequest { id: root.id })).await;
        let after = events(&app, &app.root_key, pb::ListAuditEventsRequest::default()).await;

        assert_eq!(&after[after.len() - before.len()..], &before[..], "earlier events are unchanged");
        assert!(after.len() >= before.len() + 5);
        let db = app.database().await;
        let tampered = db.execute(Statement::from_string(db.get_database_backend(), "UPDATE audit_events SET outcome_code = 'OK'")).await;
        assert!(tampered.unwrap_err().to_string().contains("append-only"));
        // The trail's only call reads it.
        use prost::Message;
        let descriptors = prost_types::FileDescriptorSet::decode(apikeyd::grpc::pb::FILE_DESCRIPTOR_SET).unwrap();
        let audit_calls: Vec<String> = descriptors.file.iter().flat_map(|f| &f.service)
            .filter(|s| s.name() == "AuditService")
            .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
            .collect();
        assert_eq!(audit_calls, ["ListAuditEvents"]);
    }

    async fn a_scoped_root_key_reads_only_its_owners_events_and_needs_audit_read(app) {
        let (auditor, _) = create_root_key(&app, &app.root_key, &["audit:read", "keys:*"], &["tenant-*"]).await;
        app.create_key("tenant-1", &["*"]).await;
        app.create_key("other", &["*"]).await;
        let (no_audit, _) = create_root_key(&app, &app.root_key, &["keys:*"], &[]).await;

        let seen = events(&app, &auditor, pb::ListAuditEventsRequest::default()).await;

        assert!(!seen.is_empty());
        assert!(seen.iter().all(|e| e.owner_id == "tenant-1"), "{seen:#?}");
        assert_status(audit_client(&app).await.list_audit_events(with_bearer(pb::ListAuditEventsRequest { owner_id: "other".into(), ..Default::default() }, &auditor)).await, Code::PermissionDenied, "owner scope");
        assert_status(audit_client(&app).await.list_audit_events(with_bearer(pb::ListAuditEventsRequest::default(), &no_audit)).await, Code::PermissionDenied, "audit:read");
        let about_other = events(&app, &app.root_key, pb::ListAuditEventsRequest { owner_id: "other".into(), ..Default::default() }).await;
        let seen_by_admin: Vec<(&str, &str)> = about_other.iter().map(|e| (e.method.rsplit('/').next().unwrap(), e.outcome_code.as_str())).collect();
        assert_eq!(seen_by_admin, [("ListAuditEvents", "PERMISSION_DENIED"), ("CreateKey", "OK")], "the refused read is on record too");
    }

    async fn events_are_filtered_by_time_and_old_ones_go_by_retention(app) {
        let db = app.database().await;
        let mut old = AuditEvent::new("apikeyd.v1.KeyService/RevokeKey", "10.0.0.1:1", chrono::Utc::now() - chrono::Duration::days(40));
        old.set_owner("user_1");
        apikeyd::store::insert_audit_event(&db, &old).await.unwrap();
        app.create_key("user_1", &["*"]).await;
        let all = events(&app, &app.root_key, pb::ListAuditEventsRequest { owner_id: "user_1".into(), ..Default::default() }).await;
        assert_eq!(all.len(), 2);
        let since = apikeyd::grpc::convert::timestamp(chrono::Utc::now() - chrono::Duration::days(1));
        let recent = events(&app, &app.root_key, pb::ListAuditEventsRequest { owner_id: "user_1".into(), start_time: Some(since), ..Default::default() }).await;
        assert_eq!(recent.len(), 1);

        let deleted = apikeyd::audit::prune(&db, 30, chrono::Utc::now()).await.unwrap();

        assert_eq!(deleted, 1);
        let kept = events(&app, &app.root_key, pb::ListAuditEventsRequest { owner_id: "user_1".into(), ..Default::default() }).await;
        assert_eq!(kept, recent);
    }
}

/// Each event is one JSON log line on target `apikeyd::audit`, refusals too.
async fn every_event_is_one_structured_log_line(backend: Backend) {
    let data_dir = tempfile::tempdir().unwrap();
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres_database().await),
    };
    let mut env = Vec::new();
    if let Some(url) = &database_url {
        env.push(("APIKEYD_DATABASE_URL", url.as_str()));
    }
    let server = ServerProcess::start(data_dir.path(), &env);
    let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key")).unwrap();
    let mut keys = KeyServiceClient::new(connect(server.addr).await);
    let created = keys
        .create_key(with_bearer(
            create_request("logged", &["*"]),
            root_key.trim(),
        ))
        .await
        .unwrap()
        .into_inner();
    let id = created.api_key.unwrap().id;
    let _ = keys
        .revoke_key(Request::new(pb::RevokeKeyRequest {
            id: id.clone(),
            owner_id: String::new(),
        }))
        .await;

    let (_, log) = server.terminate();

    let audit_lines: Vec<serde_json::Value> = log
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["target"] == "apikeyd::audit")
        .collect();
    let methods: Vec<&str> = audit_lines
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "bootstrap",
            "apikeyd.v1.KeyService/CreateKey",
            "apikeyd.v1.KeyService/RevokeKey"
        ],
        "{audit_lines:#?}"
    );
    let create = &audit_lines[1];
    assert_eq!(
        (
            create["key_id"].as_str(),
            create["owner_id"].as_str(),
            create["outcome_code"].as_str()
        ),
        (Some(id.as_str()), Some("logged"), Some("OK"))
    );
    assert!(
        create["root_key_id"]
            .as_str()
            .is_some_and(|id| id.len() == 16),
        "{create}"
    );
    let refused = &audit_lines[2];
    assert_eq!(
        (
            refused["outcome_code"].as_str(),
            refused["root_key_id"].as_str()
        ),
        (Some("UNAUTHENTICATED"), Some(""))
    );
    assert_eq!(refused["recorded"], true);
    let everything = log.join("\n");
    assert!(!everything.contains(&created.key[created.key.len() - 49..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_one_structured_log_line_on_sqlite() {
    every_event_is_one_structured_log_line(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_one_structured_log_line_on_postgres() {
    every_event_is_one_structured_log_line(Backend::Postgres).await;
}
