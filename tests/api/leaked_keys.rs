//! Leaked-key reports: GitHub's secret scanning on `POST /v1/leaked-keys`
//! (signed reports with P-256 key pairs the tests generate, never a real
//! GitHub key), and `KeyService.ReportLeakedKeys` for internal scanners.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use apikeyd::grpc::pb::{self, ValidationCode};
use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use rand_core::OsRng;
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{
    Backend, ServerProcess, TestApp, assert_status, code_of, connect, create_request,
    fresh_postgres_database, scrape, spawn_app, spawn_app_with, with_bearer, wrong_secret_for,
};
use crate::root_keys::create_root_key;

const REPORT_METHOD: &str = "POST /v1/leaked-keys";
const RPC_METHOD: &str = "apikeyd.v1.KeyService/ReportLeakedKeys";

/// GitHub as the tests play it: a signing key pair of its own making, listed
/// (beside a retired one) in a keys file in GitHub's published format.
struct GitHub {
    identifier: String,
    key: SigningKey,
    _dir: tempfile::TempDir,
    keys_file: PathBuf,
}

impl GitHub {
    fn new() -> GitHub {
        let key = SigningKey::random(&mut OsRng);
        let retired = SigningKey::random(&mut OsRng);
        let identifier = format!("{:064x}", rand_core::RngCore::next_u64(&mut OsRng));
        let dir = tempfile::tempdir().unwrap();
        let keys_file = dir.path().join("github-secret-scanning-keys.json");
        let published = |identifier: &str, key: &SigningKey, is_current: bool| {
            json!({
                "key_identifier": identifier,
                "key": key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                "is_current": is_current,
            })
        };
        let file = json!({ "public_keys": [
            published("retired", &retired, false),
            published(&identifier, &key, true),
        ]});
        std::fs::write(&keys_file, file.to_string()).unwrap();
        GitHub {
            identifier,
            key,
            _dir: dir,
            keys_file,
        }
    }

    fn keys_file(&self) -> &Path {
        &self.keys_file
    }

    /// The signature header's value for `body`: base64 of ASN.1 DER.
    fn sign(&self, body: &[u8]) -> String {
        let signature: Signature = self.key.sign(body);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }

    /// The two headers of a report signed by this key.
    fn headers(&self, body: &[u8]) -> Headers {
        vec![
            ("Github-Public-Key-Identifier", self.identifier.clone()),
            ("Github-Public-Key-Signature", self.sign(body)),
        ]
    }
}

/// Request headers: names and values.
type Headers = Vec<(&'static str, String)>;

/// A report body as GitHub sends it: compact JSON, one match per token.
fn report_body(tokens: &[&str]) -> Vec<u8> {
    let matches: Vec<Value> = tokens
        .iter()
        .map(|token| {
            json!({
                "token": token,
                "type": "apikeyd_api_key",
                "url": "https://github.com/octo-org/octo-repo/blob/0123abc/config/settings.env",
                "source": "content",
            })
        })
        .collect();
    serde_json::to_vec(&matches).unwrap()
}

/// `POST /v1/leaked-keys` over plain HTTP/1.1; the status and the JSON body.
async fn post_report(
    http_addr: SocketAddr,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
) -> (StatusCode, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::post(format!("http://{http_addr}/v1/leaked-keys"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("the HTTP listener answers");
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}) with status {status}: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

async fn spawn_with_github(backend: Backend, github: &GitHub) -> TestApp {
    let keys_file = github.keys_file().to_owned();
    spawn_app_with(backend, move |settings| {
        settings.leak_report_keys = Some(keys_file);
    })
    .await
}

/// Runs `$name(backend)` on SQLite and on PostgreSQL.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

on_both_backends!(
    a_good_report_revokes_only_our_live_keys_whose_secret_it_holds,
    an_imported_key_reported_by_a_scanner_is_found_by_its_digest_and_revoked,
    unsigned_or_badly_signed_reports_are_401_and_change_nothing,
    report_leaked_keys_revokes_only_what_the_caller_could_revoke_itself,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_signing_keys_the_endpoint_is_off() {
    let app = spawn_app(Backend::Sqlite).await;
    let github = GitHub::new();
    let (live, record) = app.create_key("user_1", &["posts:read"]).await;
    let body = report_body(&[&live]);

    let (status, answer) = post_report(app.http_addr, body.clone(), &github.headers(&body)).await;

    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("--leak-report-keys"),
        "{answer}"
    );
    assert_eq!(
        code_of(&app.validate(&live, &[]).await),
        ValidationCode::Valid
    );
    let trail = trail(&app, key_filter(&record.id)).await;
    assert!(
        trail.iter().all(|e| e.method != REPORT_METHOD),
        "{trail:#?}"
    );
}

async fn a_good_report_revokes_only_our_live_keys_whose_secret_it_holds(backend: Backend) {
    let github = GitHub::new();
    let app = spawn_with_github(backend, &github).await;
    let (live, live_record) = app.create_key("user_1", &["posts:read"]).await;
    let (revoked, revoked_record) = app.create_key("user_1", &["posts:read"]).await;
    app.revoke(&revoked_record.id).await;
    let (real, real_record) = app.create_key("user_2", &["posts:read"]).await;
    let made_up = wrong_secret_for(&real);
    let other_format = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
    let (leaked_root, leaked_root_record) =
        create_root_key(&app, &app.root_key, &["keys:read"], &[]).await;
    let made_up_root = wrong_secret_for(&app.root_key);
    let tokens = [
        live.as_str(),
        &revoked,
        &made_up,
        other_format,
        &leaked_root,
        &made_up_root,
    ];
    let body = report_body(&tokens);

    let (status, answer) = post_report(app.http_addr, body.clone(), &github.headers(&body)).await;

    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer,
        json!([
            {"token_raw": live, "token_type": "apikeyd_api_key", "label": "true_positive"},
            {"token_raw": revoked, "token_type": "apikeyd_api_key", "label": "true_positive"},
            {"token_raw": made_up, "token_type": "apikeyd_api_key", "label": "false_positive"},
            {"token_raw": other_format, "token_type": "apikeyd_api_key", "label": "false_positive"},
            {"token_raw": leaked_root, "token_type": "apikeyd_api_key", "label": "true_positive"},
            {"token_raw": made_up_root, "token_type": "apikeyd_api_key", "label": "false_positive"},
        ])
    );
    assert_status(
        app.keys
            .clone()
            .list_keys(with_bearer(pb::ListKeysRequest::default(), &leaked_root))
            .await,
        Code::Unauthenticated,
        "revoked",
    );
    let root_trail = trail(
        &app,
        pb::ListAuditEventsRequest {
            root_key_id: leaked_root_record.id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        root_trail
            .iter()
            .filter(|e| e.method == REPORT_METHOD)
            .map(|e| e.target_root_key_id.as_str())
            .collect::<Vec<_>>(),
        [leaked_root_record.id.as_str()],
        "{root_trail:#?}"
    );
    assert_eq!(
        code_of(&app.validate(&live, &[]).await),
        ValidationCode::Revoked
    );
    assert_eq!(
        code_of(&app.validate(&real, &[]).await),
        ValidationCode::Valid,
        "a made-up secret with a real key id revokes nothing"
    );

    let live_trail = trail(&app, key_filter(&live_record.id)).await;
    let reported = live_trail
        .iter()
        .find(|e| e.method == REPORT_METHOD)
        .unwrap_or_else(|| panic!("no leak report event in {live_trail:#?}"));
    assert_eq!(reported.owner_id, "user_1");
    assert_eq!(reported.outcome_code, "OK");
    assert!(
        reported.root_key_id.is_empty(),
        "GitHub is no root key: {reported:#?}"
    );
    assert!(
        reported.peer_address.starts_with("127.0.0.1:"),
        "{reported:#?}"
    );
    assert_eq!(
        reported.changed_fields.get("leak_url").map(String::as_str),
        Some("https://github.com/octo-org/octo-repo/blob/0123abc/config/settings.env")
    );
    assert_eq!(
        reported
            .changed_fields
            .get("leak_source")
            .map(String::as_str),
        Some("content")
    );
    assert_eq!(
        reported
            .changed_fields
            .get("github_key_identifier")
            .map(String::as_str),
        Some(github.identifier.as_str())
    );
    let revoked_trail = trail(&app, key_filter(&revoked_record.id)).await;
    assert_eq!(
        revoked_trail
            .iter()
            .filter(|e| e.method == REPORT_METHOD)
            .count(),
        1,
        "a report of a revoked key is recorded against it: {revoked_trail:#?}"
    );
    let real_trail = trail(&app, key_filter(&real_record.id)).await;
    assert!(
        real_trail.iter().all(|e| e.method != REPORT_METHOD),
        "{real_trail:#?}"
    );
    let everything = format!(
        "{:?}",
        trail(&app, pb::ListAuditEventsRequest::default()).await
    );
    for token in [&live, &revoked, &made_up, &leaked_root] {
        let secret = &token[token.len() - 49..];
        assert!(
            !everything.contains(secret),
            "a reported secret reached the audit trail"
        );
    }
}

async fn unsigned_or_badly_signed_reports_are_401_and_change_nothing(backend: Backend) {
    let github = GitHub::new();
    let impostor = GitHub::new();
    let app = spawn_with_github(backend, &github).await;
    let (live, record) = app.create_key("user_1", &["posts:read"]).await;
    let body = report_body(&[&live]);
    let good = github.headers(&body);
    let altered = report_body(&[&live, "sk_live_extra"]);
    let header = |name: &'static str, value: &str| (name, value.to_owned());

    let attempts: [(&str, Vec<u8>, Headers); 6] = [
        ("unsigned", body.clone(), Vec::new()),
        (
            "no identifier",
            body.clone(),
            vec![header("Github-Public-Key-Signature", &github.sign(&body))],
        ),
        (
            "unknown identifier",
            body.clone(),
            vec![
                header("Github-Public-Key-Identifier", "not-a-listed-key"),
                header("Github-Public-Key-Signature", &github.sign(&body)),
            ],
        ),
        (
            "signed by another key",
            body.clone(),
            vec![
                header("Github-Public-Key-Identifier", &github.identifier),
                header("Github-Public-Key-Signature", &impostor.sign(&body)),
            ],
        ),
        ("altered body", altered, good.clone()),
        (
            "malformed base64",
            body.clone(),
            vec![
                header("Github-Public-Key-Identifier", &github.identifier),
                header("Github-Public-Key-Signature", "%%% not base64 %%%"),
            ],
        ),
    ];
    for (what, body, headers) in attempts {
        let (status, answer) = post_report(app.http_addr, body, &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {answer}");
        assert_eq!(answer["code"], "unauthenticated", "{what}: {answer}");
    }

    assert_eq!(
        code_of(&app.validate(&live, &[]).await),
        ValidationCode::Valid
    );
    let trail = trail(&app, key_filter(&record.id)).await;
    assert!(
        trail.iter().all(|e| e.method != REPORT_METHOD),
        "{trail:#?}"
    );
    let (status, answer) = post_report(app.http_addr, body.clone(), &good).await;
    assert_eq!(
        (status, &answer[0]["label"]),
        (StatusCode::OK, &json!("true_positive")),
        "the same report, signed, is taken: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_over_the_size_limit_is_413_and_a_signed_non_list_is_400() {
    let github = GitHub::new();
    let app = spawn_with_github(Backend::Sqlite, &github).await;
    let huge = vec![b' '; apikeyd::http::leaked_keys::MAX_REPORT_BYTES + 1];
    let not_a_list = br#"{"token": "sk_live_x"}"#.to_vec();

    let (too_large, answer) =
        post_report(app.http_addr, huge.clone(), &github.headers(&huge)).await;
    let (malformed, malformed_answer) = post_report(
        app.http_addr,
        not_a_list.clone(),
        &github.headers(&not_a_list),
    )
    .await;

    assert_eq!(too_large, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(malformed, StatusCode::BAD_REQUEST, "{malformed_answer}");
}

async fn report_leaked_keys_revokes_only_what_the_caller_could_revoke_itself(backend: Backend) {
    let app = spawn_app(backend).await;
    let (ours, ours_record) = app.create_key("tenant-1", &["posts:read"]).await;
    let (theirs, _) = app.create_key("other-9", &["posts:read"]).await;
    let (scanner, scanner_record) =
        create_root_key(&app, &app.root_key, &["keys:write"], &["tenant-*"]).await;
    let (reader, reader_record) = create_root_key(&app, &app.root_key, &["keys:read"], &[]).await;
    let report = |tokens: &[&str]| pb::ReportLeakedKeysRequest {
        tokens: tokens
            .iter()
            .map(|token| pb::LeakedToken {
                token: token.to_string(),
                token_type: "internal_log_scanner".to_owned(),
                url: "https://logs.example.com/run/42".to_owned(),
                source: "log".to_owned(),
            })
            .collect(),
    };
    let mut keys = app.keys.clone();

    let findings = keys
        .report_leaked_keys(with_bearer(report(&[&ours, &theirs, "junk"]), &scanner))
        .await
        .expect("ReportLeakedKeys succeeds")
        .into_inner()
        .findings;
    let again = keys
        .report_leaked_keys(with_bearer(report(&[&ours]), &scanner))
        .await
        .expect("ReportLeakedKeys succeeds")
        .into_inner()
        .findings;

    let labels: Vec<(pb::LeakLabel, &str)> = findings
        .iter()
        .map(|f| (f.label(), f.key_id.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            (pb::LeakLabel::TruePositive, ours_record.id.as_str()),
            (pb::LeakLabel::FalsePositive, ""),
            (pb::LeakLabel::FalsePositive, ""),
        ],
        "another owner's key is a false positive, like junk"
    );
    assert!(!findings[0].already_revoked);
    assert!(again[0].already_revoked, "{again:?}");
    assert_eq!(again[0].label(), pb::LeakLabel::TruePositive);
    assert_eq!(
        code_of(&app.validate(&ours, &[]).await),
        ValidationCode::Revoked
    );
    assert_eq!(
        code_of(&app.validate(&theirs, &[]).await),
        ValidationCode::Valid
    );
    let trail = trail(&app, key_filter(&ours_record.id)).await;
    let reported: Vec<&pb::AuditEvent> = trail.iter().filter(|e| e.method == RPC_METHOD).collect();
    assert_eq!(reported.len(), 2, "one event per report: {trail:#?}");
    assert_eq!(reported[0].root_key_id, scanner_record.id);
    assert_eq!(
        reported[0]
            .changed_fields
            .get("leak_url")
            .map(String::as_str),
        Some("https://logs.example.com/run/42")
    );

    assert_status(
        keys.report_leaked_keys(with_bearer(report(&[&theirs]), &reader))
            .await,
        Code::PermissionDenied,
        "keys:write",
    );
    let root_key_by_scanner = keys
        .report_leaked_keys(with_bearer(report(&[&reader]), &scanner))
        .await
        .expect("ReportLeakedKeys succeeds")
        .into_inner()
        .findings;
    let root_key_by_bootstrap = keys
        .report_leaked_keys(app.authed(report(&[&reader])))
        .await
        .expect("ReportLeakedKeys succeeds")
        .into_inner()
        .findings;
    assert_eq!(
        root_key_by_scanner[0].label(),
        pb::LeakLabel::FalsePositive,
        "a root key the caller could not revoke with RevokeRootKey"
    );
    assert_eq!(
        (
            root_key_by_bootstrap[0].label(),
            &root_key_by_bootstrap[0].key_id
        ),
        (pb::LeakLabel::TruePositive, &reader_record.id)
    );
    assert_status(
        keys.report_leaked_keys(with_bearer(report(&[&theirs]), &reader))
            .await,
        Code::Unauthenticated,
        "revoked",
    );
    assert_status(
        keys.report_leaked_keys(with_bearer(report(&[]), &scanner))
            .await,
        Code::InvalidArgument,
        "tokens",
    );
    assert_status(
        keys.report_leaked_keys(tonic::Request::new(report(&[&theirs])))
            .await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_eq!(
        code_of(&app.validate(&theirs, &[]).await),
        ValidationCode::Valid
    );
}

async fn an_imported_key_reported_by_a_scanner_is_found_by_its_digest_and_revoked(
    backend: Backend,
) {
    use crate::imported_keys::{import, imported, seed_key};

    let app = spawn_app(backend).await;
    let (legacy, never_imported) = (seed_key(), seed_key());
    let (results, _) = import(
        &app,
        vec![vec![imported(
            &legacy,
            "legacy-1",
            &["posts:read"],
            "row-1",
        )]],
        false,
    )
    .await
    .expect("ImportKeys succeeds");
    let imported_id = results[0].key_id.clone();
    let report = pb::ReportLeakedKeysRequest {
        tokens: [&legacy, &never_imported]
            .map(|token| pb::LeakedToken {
                token: token.clone(),
                ..Default::default()
            })
            .to_vec(),
    };

    let findings = app
        .keys
        .clone()
        .report_leaked_keys(app.authed(report))
        .await
        .expect("ReportLeakedKeys succeeds")
        .into_inner()
        .findings;

    let labels: Vec<(pb::LeakLabel, &str)> = findings
        .iter()
        .map(|f| (f.label(), f.key_id.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            (pb::LeakLabel::TruePositive, imported_id.as_str()),
            (pb::LeakLabel::FalsePositive, ""),
        ]
    );
    assert_eq!(
        code_of(&app.validate(&legacy, &[]).await),
        ValidationCode::Revoked
    );
}

/// In a process of its own, so that its metrics and log are its alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_is_logged_and_counted_and_neither_holds_the_token() {
    let github = GitHub::new();
    let data_dir = tempfile::tempdir().unwrap();
    let database_url = fresh_postgres_database().await;
    let keys_file = github.keys_file().to_str().unwrap().to_owned();
    let server = ServerProcess::start(
        data_dir.path(),
        &[
            ("APIKEYD_DATABASE_URL", &database_url),
            ("APIKEYD_LEAK_REPORT_KEYS", &keys_file),
        ],
    );
    let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key")).unwrap();
    let mut keys = pb::key_service_client::KeyServiceClient::new(connect(server.addr).await);
    let created = keys
        .create_key(with_bearer(
            create_request("logged", &["*"]),
            root_key.trim(),
        ))
        .await
        .unwrap()
        .into_inner();
    let (live, id) = (created.key, created.api_key.unwrap().id);
    let body = report_body(&[&live, "not-a-key"]);
    let forged = github.headers(b"something else");

    let (refused, _) = post_report(server.http_addr, body.clone(), &forged).await;
    let (taken, _) = post_report(server.http_addr, body.clone(), &github.headers(&body)).await;
    let metrics = scrape(server.http_addr).await;
    let (_, log) = server.terminate();

    assert_eq!((refused, taken), (StatusCode::UNAUTHORIZED, StatusCode::OK));
    assert_eq!(
        counter(
            &metrics,
            r#"apikeyd_leaked_keys_total{reporter="github",outcome="revoked"}"#
        ),
        1.0
    );
    assert_eq!(
        counter(
            &metrics,
            r#"apikeyd_leaked_keys_total{reporter="github",outcome="false_positive"}"#
        ),
        1.0
    );
    assert_eq!(
        counter(
            &metrics,
            r#"apikeyd_leak_reports_refused_total{reason="bad_signature"}"#
        ),
        1.0
    );
    let lines: Vec<Value> = log
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "stopped"),
        "the log is complete up to the last line"
    );
    let revoked_line = lines
        .iter()
        .find(|l| l["message"] == "an API key was reported leaked and is revoked")
        .unwrap_or_else(|| panic!("no revocation line in {lines:#?}"));
    assert_eq!(revoked_line["key_id"], id.as_str());
    assert_eq!(revoked_line["already_revoked"], false);
    assert!(
        lines
            .iter()
            .any(|l| l["target"] == "apikeyd::audit" && l["method"] == REPORT_METHOD),
        "the audit line of the revocation"
    );
    let secret = &live[live.len() - 49..];
    assert!(
        log.iter().all(|line| !line.contains(secret)),
        "a reported secret reached the log"
    );
}

/// The value of the counter `series` (name and labels, as rendered); fails
/// when the series is absent.
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the metrics:\n{metrics}"))
}

/// The audit events matching `filter` (all of them: the tests make few),
/// newest first.
async fn trail(app: &TestApp, filter: pb::ListAuditEventsRequest) -> Vec<pb::AuditEvent> {
    let page = pb::audit_service_client::AuditServiceClient::new(connect(app.addr).await)
        .list_audit_events(app.authed(pb::ListAuditEventsRequest {
            page_size: 100,
            ..filter
        }))
        .await
        .expect("ListAuditEvents succeeds")
        .into_inner();
    assert!(page.next_page_token.is_empty(), "more than one page");
    page.audit_events
}

fn key_filter(id: &str) -> pb::ListAuditEventsRequest {
    pb::ListAuditEventsRequest {
        key_id: id.to_owned(),
        ..Default::default()
    }
}

/// Two replicas sharing PostgreSQL and Redis: GitHub's report reaches one,
/// and the other, which had the key warm in its cache, refuses it as soon
/// as the invalidation stream brings the revocation (well before its 60 s
/// backstop, since it waits until the replica trusts the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reported_to_one_replica_is_refused_by_the_other() {
    use std::time::{Duration, Instant};

    use crate::helpers::measuring_alone;
    use crate::limiter_harness::{shared_redis_url, unique};

    let _alone = measuring_alone().await;
    let github = GitHub::new();
    let database_url = fresh_postgres_database().await;
    let redis_url = shared_redis_url();
    let prefix = unique("apikeyd-leak");
    let keys_file = github.keys_file().to_str().unwrap().to_owned();
    let env = [
        ("APIKEYD_DATABASE_URL", database_url.as_str()),
        ("APIKEYD_REDIS_URL", redis_url.as_str()),
        ("APIKEYD_REDIS_KEY_PREFIX", prefix.as_str()),
        ("APIKEYD_REDIS_TIMEOUT_MS", "2000"),
        ("APIKEYD_LEAK_REPORT_KEYS", keys_file.as_str()),
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let reported_to = ServerProcess::start(dirs[0].path(), &env);
    let other = ServerProcess::start(dirs[1].path(), &env);
    let root_key = std::fs::read_to_string(dirs[0].path().join("bootstrap-root-key")).unwrap();
    let created = pb::key_service_client::KeyServiceClient::new(connect(reported_to.addr).await)
        .create_key(with_bearer(
            create_request("leaky", &["*"]),
            root_key.trim(),
        ))
        .await
        .unwrap()
        .into_inner();
    let key = created.key;
    let mut validation =
        pb::validation_service_client::ValidationServiceClient::new(connect(other.addr).await);
    let mut code_on_other = async || {
        let answer = validation
            .validate(pb::ValidateRequest {
                key: key.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        code_of(&answer)
    };
    let flowing_by = Instant::now() + Duration::from_secs(30);
    while counter(
        &scrape(other.http_addr).await,
        "apikeyd_invalidations_flowing",
    ) != 1.0
    {
        assert!(
            Instant::now() < flowing_by,
            "the other replica never trusted the stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        code_on_other().await,
        ValidationCode::Valid,
        "warm on the other replica"
    );
    let body = report_body(&[&key]);

    let reported_at = Instant::now();
    let (status, answer) =
        post_report(reported_to.http_addr, body.clone(), &github.headers(&body)).await;
    let mut refused_after = None;
    while reported_at.elapsed() < Duration::from_secs(5) {
        if code_on_other().await == ValidationCode::Revoked {
            refused_after = Some(reported_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    assert_eq!(
        (status, &answer[0]["label"]),
        (StatusCode::OK, &json!("true_positive"))
    );
    let refused_after = refused_after.expect("the other replica refuses the key within 5 s");
    println!(
        "the other replica refused the reported key {refused_after:?} after the report was sent"
    );
}
