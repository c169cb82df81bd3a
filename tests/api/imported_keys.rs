//! Keys imported from another store (by the SHA-256 of the whole key, over
//! `ImportService.ImportKeys`) validate through every check a key of ours
//! does, are listed, changed, revoked and rotated like one, and are imported
//! once however often the import runs.

use std::net::SocketAddr;
use std::time::Instant;

use apikeyd::grpc::pb::import_service_client::ImportServiceClient;
use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use apikeyd::grpc::pb::{self, ImportOutcome, ValidationCode};
use chrono::{Duration, Utc};
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{
    ServerProcess, TestApp, assert_status, code_of, connect, fresh_postgres_database, sample,
    sample_or_zero, scrape, with_bearer,
};
use crate::limiter_harness::{shared_redis_url, unique};
use crate::on_every_backend;

/// A key made the seed's way: `sk_live_` and 32 random bytes in hex.
pub fn seed_key() -> String {
    use rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("sk_live_{}", hex(&bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the seed stores for a key: the hex SHA-256 of the whole key.
pub fn sha256_hex(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

pub fn timestamp(at: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// `key` as an import row of `owner` with `scopes`, named by its source as `source_ref`.
pub fn imported(key: &str, owner: &str, scopes: &[&str], source_ref: &str) -> pb::ImportedKey {
    pb::ImportedKey {
        sha256: sha256_hex(key),
        owner_id: owner.to_owned(),
        name: "Production integration".to_owned(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        prefix: key[..12].to_owned(),
        source_ref: source_ref.to_owned(),
        ..Default::default()
    }
}

/// Sends `batches` in one ImportKeys call; returns every result and the summary.
pub async fn import(
    app: &TestApp,
    batches: Vec<Vec<pb::ImportedKey>>,
    dry_run: bool,
) -> Result<(Vec<pb::ImportKeyResult>, pb::ImportSummary), tonic::Status> {
    import_at(app.addr, &app.root_key, batches, dry_run).await
}

/// [`import`] into the server at `addr`, authorised by `root_key`.
pub async fn import_at(
    addr: SocketAddr,
    root_key: &str,
    batches: Vec<Vec<pb::ImportedKey>>,
    dry_run: bool,
) -> Result<(Vec<pb::ImportKeyResult>, pb::ImportSummary), tonic::Status> {
    let mut client = ImportServiceClient::new(connect(addr).await);
    let requests: Vec<_> = batches
        .into_iter()
        .map(|keys| pb::ImportKeysRequest { keys, dry_run })
        .collect();
    let mut answers = client
        .import_keys(with_bearer(tokio_stream::iter(requests), root_key))
        .await?
        .into_inner();
    let (mut results, mut summary) = (Vec::new(), None);
    while let Some(answer) = answers.message().await? {
        assert!(summary.is_none(), "the summary comes last");
        results.extend(answer.results);
        summary = answer.summary;
    }
    Ok((
        results,
        summary.expect("the last answer carries the summary"),
    ))
}

fn outcome(result: &pb::ImportKeyResult) -> ImportOutcome {
    ImportOutcome::try_from(result.outcome).unwrap()
}

on_every_backend! {
    async fn imported_keys_validate_with_the_answers_their_old_store_gave(app) {
        let now = Utc::now();
        let (good, revoked, expired) = (seed_key(), seed_key(), seed_key());
        let mut revoked_row = imported(&revoked, "user_1", &["read:posts"], "revoked");
        revoked_row.revoked_at = Some(timestamp(now - Duration::days(1)));
        let mut expired_row = imported(&expired, "user_1", &["read:posts"], "expired");
        expired_row.expires_at = Some(timestamp(now - Duration::hours(1)));
        let rows = vec![
            imported(&good, "user_1", &["read:posts", "read:users"], "good"),
            revoked_row,
            expired_row,
        ];

        let (results, summary) = import(&app, vec![rows], false).await.unwrap();

        assert_eq!(summary.imported, 3, "{results:?}");
        let verdict = app.validate(&good, &["read:posts"]).await;
        assert_eq!(code_of(&verdict), ValidationCode::Valid);
        let record = verdict.api_key.unwrap();
        assert_eq!(record.prefix, &good[..12], "the prefix it came with");
        assert_eq!(record.owner_id, "user_1");
        assert_eq!(
            code_of(&app.validate(&good, &["write:posts"]).await),
            ValidationCode::InsufficientScope
        );
        assert_eq!(code_of(&app.validate(&revoked, &[]).await), ValidationCode::Revoked);
        assert_eq!(code_of(&app.validate(&expired, &[]).await), ValidationCode::Expired);
        assert_eq!(
            code_of(&app.validate(&seed_key(), &[]).await),
            ValidationCode::NotFound,
            "a key of the old store's shape that was never imported"
        );
    }

    async fn importing_twice_writes_each_key_once(app) {
        let keys: Vec<String> = (0..5).map(|_| seed_key()).collect();
        let rows = |keys: &[String]| -> Vec<pb::ImportedKey> {
            keys.iter().enumerate().map(|(i, k)| imported(k, "team", &["*"], &i.to_string())).collect()
        };

        let (_, first) = import(&app, vec![rows(&keys[..3]), rows(&keys[3..])], false).await.unwrap();
        let (results, second) = import(&app, vec![rows(&keys)], false).await.unwrap();

        assert_eq!((first.imported, first.already_present), (5, 0));
        assert_eq!((second.imported, second.already_present), (0, 5));
        assert!(results.iter().all(|r| outcome(r) == ImportOutcome::AlreadyPresent));
        let listed = app.keys.clone()
            .list_keys(app.authed(pb::ListKeysRequest { owner_id: "team".into(), ..Default::default() }))
            .await.unwrap().into_inner().api_keys;
        assert_eq!(listed.len(), 5);
    }

    async fn a_repeated_key_within_one_import_is_written_once(app) {
        let key = seed_key();
        let rows = vec![imported(&key, "team", &["*"], "1"), imported(&key, "team", &["*"], "2")];

        let (results, summary) = import(&app, vec![rows], false).await.unwrap();

        assert_eq!((summary.imported, summary.already_present), (1, 1));
        assert_eq!(outcome(&results[1]), ImportOutcome::AlreadyPresent);
    }

    async fn a_dry_run_reports_and_writes_nothing(app) {
        let key = seed_key();
        let bad = imported(&seed_key(), "team", &["read"], "bad scope");

        let (results, summary) = import(&app, vec![vec![imported(&key, "team", &["*"], "good"), bad]], true)
            .await.unwrap();

        assert!(summary.dry_run);
        assert_eq!((summary.imported, summary.refused), (1, 1));
        assert!(results[1].reason.starts_with("scopes:"), "{:?}", results[1]);
        assert_eq!(code_of(&app.validate(&key, &[]).await), ValidationCode::NotFound);
    }

    async fn a_row_our_rules_refuse_is_reported_with_its_reason_and_the_rest_imported(app) {
        let good = seed_key();
        let rows = vec![
            imported(&seed_key(), "team", &["read"], "no action"),
            pb::ImportedKey { sha256: "abc".into(), ..imported(&seed_key(), "team", &["*"], "short digest") },
            pb::ImportedKey { tier: "gold".into(), ..imported(&seed_key(), "team", &["*"], "unknown tier") },
            imported(&good, "team", &["*"], "good"),
        ];

        let (results, summary) = import(&app, vec![rows], false).await.unwrap();

        assert_eq!((summary.imported, summary.refused), (1, 3));
        let reasons: Vec<(&str, &str)> = results.iter()
            .filter(|r| outcome(r) == ImportOutcome::Refused)
            .map(|r| (r.source_ref.as_str(), r.reason.as_str()))
            .collect();
        assert!(reasons[0].1.starts_with("scopes:"), "{reasons:?}");
        assert!(reasons[1].1.starts_with("sha256:"), "{reasons:?}");
        assert!(reasons[2].1.contains("unknown tier \"gold\""), "{reasons:?}");
        assert_eq!(reasons.iter().map(|r| r.0).collect::<Vec<_>>(), ["no action", "short digest", "unknown tier"]);
        assert!(app.validate(&good, &[]).await.valid);
    }

    async fn an_import_past_the_owners_limit_imports_everything_and_names_the_owner(app) {
        let rows: Vec<_> = (0..12).map(|i| imported(&seed_key(), "busy", &["*"], &i.to_string())).collect();
        let mut revoked = imported(&seed_key(), "calm", &["*"], "revoked");
        revoked.revoked_at = Some(timestamp(Utc::now()));

        let (_, summary) = import(&app, vec![rows, vec![revoked]], false).await.unwrap();

        assert_eq!(summary.imported, 13);
        assert_eq!(summary.owners_over_limit.len(), 1, "{summary:?}");
        let over = &summary.owners_over_limit[0];
        assert_eq!((over.owner_id.as_str(), over.active_keys, over.limit), ("busy", 12, 10));
        let create = app.keys.clone().create_key(app.authed(crate::helpers::create_request("busy", &["*"]))).await;
        assert_status(create, Code::ResourceExhausted, "active keys");
    }

    async fn an_imported_key_is_updated_revoked_and_rotated_like_ours(app) {
        let key = seed_key();
        let (results, _) = import(&app, vec![vec![imported(&key, "team", &["*"], "k")]], false).await.unwrap();
        let id = results[0].key_id.clone();
        assert!(app.validate(&key, &[]).await.valid, "warms the cache");

        app.keys.clone()
            .update_key(app.authed(pb::UpdateKeyRequest { id: id.clone(), enabled: Some(false), ..Default::default() }))
            .await.unwrap();
        assert_eq!(code_of(&app.validate(&key, &[]).await), ValidationCode::Disabled);
        app.keys.clone()
            .update_key(app.authed(pb::UpdateKeyRequest { id: id.clone(), enabled: Some(true), ..Default::default() }))
            .await.unwrap();

        let rotated = app.keys.clone()
            .rotate_key(app.authed(pb::RotateKeyRequest {
                id: id.clone(),
                grace_period: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
            }))
            .await.unwrap().into_inner();
        assert!(rotated.key.starts_with("sk_live_"));
        assert!(app.validate(&rotated.key, &[]).await.valid, "rotation issues a key of ours");
        assert!(app.validate(&key, &[]).await.valid, "the old key works through the grace period");

        app.revoke(&id).await;
        assert_eq!(code_of(&app.validate(&key, &[]).await), ValidationCode::Revoked);
    }

    async fn a_key_of_our_format_carrying_an_imported_keys_id_is_not_found(app) {
        let key = seed_key();
        let (results, _) = import(&app, vec![vec![imported(&key, "team", &["*"], "k")]], false).await.unwrap();
        // Our key's shape around the imported key's public id, checksum and all.
        let forged = crate::helpers::wrong_secret_for(&format!("sk_live_{}_", results[0].key_id));

        let verdict = app.validate(&forged, &[]).await;

        assert_eq!(code_of(&verdict), ValidationCode::NotFound);
        assert!(verdict.api_key.is_none());
    }

    async fn a_scoped_root_key_imports_only_its_owners_and_each_batch_is_audited(app) {
        let (scoped, record) = crate::root_keys::create_root_key(&app, &app.root_key, &["keys:write", "audit:read"], &["tenant-7"]).await;
        let (ours, theirs) = (seed_key(), seed_key());

        let (results, summary) = import_at(app.addr, &scoped, vec![
            vec![imported(&ours, "tenant-7", &["*"], "ours")],
            vec![imported(&theirs, "tenant-8", &["*"], "theirs")],
        ], false).await.unwrap();

        assert_eq!((summary.imported, summary.refused), (1, 1));
        assert!(results[1].reason.contains("outside the root key's owner scope"), "{:?}", results[1]);
        assert!(app.validate(&ours, &[]).await.valid);
        assert_eq!(code_of(&app.validate(&theirs, &[]).await), ValidationCode::NotFound);
        let events = apikeyd::grpc::pb::audit_service_client::AuditServiceClient::new(connect(app.addr).await)
            .list_audit_events(with_bearer(pb::ListAuditEventsRequest { page_size: 100, ..Default::default() }, &app.root_key))
            .await.unwrap().into_inner().audit_events;
        let imports: Vec<_> = events.iter().filter(|e| e.method == "apikeyd.v1.ImportService/ImportKeys").collect();
        assert_eq!(imports.len(), 1, "one batch wrote a key: {events:#?}");
        assert_eq!(imports[0].root_key_id, record.id);
        assert_eq!(imports[0].changed_fields.get("imported").map(String::as_str), Some("1"));
    }

    async fn import_keys_needs_a_root_key_with_keys_write(app) {
        let mut client = ImportServiceClient::new(connect(app.addr).await);
        let request = tonic::Request::new(tokio_stream::iter(vec![pb::ImportKeysRequest::default()]));

        assert_status(client.import_keys(request).await.map(|_| ()), Code::Unauthenticated, "authorization");
    }

    async fn an_oversized_batch_or_a_change_of_dry_run_is_invalid(app) {
        let limit = apikeyd::grpc::MAX_KEYS_PER_MESSAGE;
        let many: Vec<_> = (0..=limit).map(|i| imported(&seed_key(), "team", &["*"], &i.to_string())).collect();
        assert_status(import(&app, vec![many], false).await, Code::InvalidArgument, &format!("at most {limit} keys"));

        let mut client = ImportServiceClient::new(connect(app.addr).await);
        let requests = vec![
            pb::ImportKeysRequest { keys: vec![imported(&seed_key(), "team", &["*"], "1")], dry_run: true },
            pb::ImportKeysRequest { keys: vec![imported(&seed_key(), "team", &["*"], "2")], dry_run: false },
        ];
        let mut answers = client
            .import_keys(with_bearer(tokio_stream::iter(requests), &app.root_key))
            .await.unwrap().into_inner();
        assert!(answers.message().await.unwrap().is_some());
        assert_status(answers.message().await, Code::InvalidArgument, "dry_run");
    }
}

/// A real `apikeyd serve` process, for tests of metrics and of replicas.
struct Replica {
    process: ServerProcess,
    root_key: String,
    keys: KeyServiceClient<Channel>,
    validation: ValidationServiceClient<Channel>,
    _data_dir: tempfile::TempDir,
}

impl Replica {
    async fn start(env: &[(&str, &str)], root_key: Option<&str>) -> Replica {
        let data_dir = tempfile::tempdir().unwrap();
        let process = ServerProcess::start(data_dir.path(), env);
        let root_key = match root_key {
            Some(key) => key.to_owned(),
            None => std::fs::read_to_string(data_dir.path().join("bootstrap-root-key"))
                .unwrap()
                .trim()
                .to_owned(),
        };
        let channel = connect(process.addr).await;
        Replica {
            process,
            root_key,
            keys: KeyServiceClient::new(channel.clone()),
            validation: ValidationServiceClient::new(channel),
            _data_dir: data_dir,
        }
    }

    async fn code(&self, key: &str) -> ValidationCode {
        let answer = self
            .validation
            .clone()
            .validate(pb::ValidateRequest {
                key: key.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        code_of(&answer)
    }

    async fn metric(&self, series: &str) -> f64 {
        sample(&scrape(self.process.http_addr).await, series)
    }

    /// A series that may not exist yet: a fresh server has read no key.
    async fn metric_or_zero(&self, series: &str) -> f64 {
        sample_or_zero(&scrape(self.process.http_addr).await, series)
    }
}

/// Polls `replica` until `key` answers `expected`, for at most `within`;
/// returns how long it took.
async fn answered_within(
    replica: &Replica,
    key: &str,
    expected: ValidationCode,
    within: std::time::Duration,
) -> std::time::Duration {
    let started = Instant::now();
    loop {
        let code = replica.code(key).await;
        if code == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "still {code:?} after {within:?}, expected {expected:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

const IMPORTED_LOOKUPS: &str =
    r#"apikeyd_db_duration_seconds_count{operation="find_imported_key"}"#;
const KEY_LOOKUPS: &str = r#"apikeyd_db_duration_seconds_count{operation="find_key"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_imported_key_costs_one_lookup_and_junk_none() {
    let server = Replica::start(&[], None).await;
    let before = (
        server.metric_or_zero(IMPORTED_LOOKUPS).await,
        server.metric_or_zero(KEY_LOOKUPS).await,
    );

    for _ in 0..20 {
        assert_eq!(
            server.code("sk_live_garbage").await,
            ValidationCode::Malformed
        );
        assert_eq!(
            server.code("has spaces, so no key of any store").await,
            ValidationCode::Malformed
        );
    }
    assert_eq!(
        server.metric_or_zero(IMPORTED_LOOKUPS).await,
        before.0,
        "junk is never looked up"
    );

    let stranger = seed_key();
    for _ in 0..20 {
        assert_eq!(server.code(&stranger).await, ValidationCode::NotFound);
    }

    assert_eq!(
        server.metric(IMPORTED_LOOKUPS).await,
        before.0 + 1.0,
        "the absent digest is remembered"
    );
    // Absent when nothing was read; the family's name is proven just above.
    assert_eq!(
        server.metric_or_zero(KEY_LOOKUPS).await,
        before.1,
        "and no id was read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_and_a_revocation_reach_every_replica_at_once() {
    let database_url = fresh_postgres_database().await;
    let (redis_url, prefix) = (shared_redis_url(), unique("apikeyd-import"));
    let env = [
        ("APIKEYD_DATABASE_URL", database_url.as_str()),
        ("APIKEYD_REDIS_URL", redis_url.as_str()),
        ("APIKEYD_REDIS_KEY_PREFIX", prefix.as_str()),
        ("APIKEYD_REDIS_TIMEOUT_MS", "2000"),
    ];
    let a = Replica::start(&env, None).await;
    let b = Replica::start(&env, Some(&a.root_key)).await;
    let key = seed_key();
    // B remembers the digest as absent; its cache would keep that for 60 s.
    assert_eq!(b.code(&key).await, ValidationCode::NotFound);
    let bound = std::time::Duration::from_secs(5);

    let (results, _) = import_at(
        a.process.addr,
        &a.root_key,
        vec![vec![imported(&key, "team", &["*"], "k")]],
        false,
    )
    .await
    .unwrap();
    let imported_after = answered_within(&b, &key, ValidationCode::Valid, bound).await;

    a.keys
        .clone()
        .revoke_key(with_bearer(
            pb::RevokeKeyRequest {
                id: results[0].key_id.clone(),
                owner_id: String::new(),
            },
            &a.root_key,
        ))
        .await
        .unwrap();
    let revoked_after = answered_within(&b, &key, ValidationCode::Revoked, bound).await;

    eprintln!(
        "replica B saw the import after {imported_after:?}, the revocation after {revoked_after:?}"
    );
    assert_eq!(
        b.keys
            .clone()
            .get_key(with_bearer(
                pb::GetKeyRequest {
                    id: results[0].key_id.clone()
                },
                &b.root_key
            ))
            .await
            .unwrap()
            .into_inner()
            .api_key
            .unwrap()
            .prefix,
        &key[..12]
    );
}
