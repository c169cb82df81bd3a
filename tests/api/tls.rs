//! TLS on the listeners, as grpcurl and TLS clients see it: the server's
//! certificate trusted through its CA, mutual TLS refusing a client without
//! a certificate the client CA signed, the client's identity in the audit
//! trail, the data plane by client certificate, and a rotated certificate
//! reaching new connections without a restart.

use std::time::Duration;

use apikeyd::config::DataPlaneAuth;
use apikeyd::grpc::pb;
use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;

use crate::helpers::{create_request, with_bearer};
use crate::tls_harness::{
    Authority, TlsApp, eventually, grpcurl, https_request, run, spawn_tls_app, tls_channel,
    write_file,
};

/// A server with TLS (and, with `client_ca`, mutual TLS) from `ca`'s
/// server certificate, and the directory of its files.
async fn tls_app(
    ca: &Authority,
    client_ca: Option<&Authority>,
    auth: DataPlaneAuth,
) -> (TlsApp, tempfile::TempDir) {
    let pki = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server().write(pki.path(), "server");
    let client_ca = client_ca.map(|ca| write_file(pki.path(), "client-ca.crt", &ca.pem()));
    let app = spawn_tls_app(|settings| {
        settings.tls.cert = Some(cert);
        settings.tls.key = Some(key);
        settings.tls.client_ca = client_ca;
        settings.data_plane_auth = auth;
    })
    .await;
    (app, pki)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_with_the_ca_is_answered_and_plaintext_or_another_ca_is_refused() {
    let (ca, other) = (
        Authority::new("apikeyd test CA"),
        Authority::new("other CA"),
    );
    let (app, _pki) = tls_app(&ca, None, DataPlaneAuth::None).await;
    let dir = app.data_dir.path();
    let ca_file = write_file(dir, "ca.crt", &ca.pem());
    let other_file = write_file(dir, "other.crt", &other.pem());
    let target = format!("127.0.0.1:{}", app.addr.port());

    let (ok, out, err) = run(grpcurl()
        .arg("-cacert")
        .arg(&ca_file)
        .args(["-H", &format!("authorization: Bearer {}", app.root_key)])
        .args([
            "-d",
            r#"{"owner_id": "acme", "name": "ci", "scopes": ["posts:read"]}"#,
        ])
        .args([&target, "apikeyd.v1.KeyService/CreateKey"]));
    assert!(ok, "CreateKey over TLS: {err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key = created["key"].as_str().expect("the new key").to_owned();

    let (ok, out, err) = run(grpcurl()
        .arg("-cacert")
        .arg(&ca_file)
        .args(["-d", &format!(r#"{{"key": "{key}"}}"#)])
        .args([&target, "apikeyd.v1.ValidationService/Validate"]));
    assert!(ok, "Validate over TLS: {err}");
    assert!(out.contains(r#""valid": true"#), "{out}");

    let (ok, _, err) = run(grpcurl().args(["-plaintext", &target, "list"]));
    assert!(!ok, "plaintext is refused by a TLS listener");
    assert!(!err.is_empty());

    let (ok, _, err) = run(grpcurl()
        .arg("-cacert")
        .arg(&other_file)
        .args([&target, "list"]));
    assert!(!ok, "a server certificate another CA signed is not trusted");
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_over_mtls_is_answered_and_recorded_and_refused_without_a_client_certificate() {
    let (ca, clients, rogue) = (
        Authority::new("apikeyd test CA"),
        Authority::new("client CA"),
        Authority::new("rogue CA"),
    );
    let (app, _pki) = tls_app(&ca, Some(&clients), DataPlaneAuth::Mtls).await;
    let dir = app.data_dir.path();
    let ca_file = write_file(dir, "ca.crt", &ca.pem());
    let (cert, key) = clients
        .client("billing-service", "billing.internal")
        .write(dir, "client");
    let (rogue_cert, rogue_key) = rogue
        .client("billing-service", "billing.internal")
        .write(dir, "rogue");
    let target = format!("127.0.0.1:{}", app.addr.port());
    let mtls = |cert: &std::path::Path, key: &std::path::Path| {
        let mut command = grpcurl();
        command
            .arg("-cacert")
            .arg(&ca_file)
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key);
        command
    };

    let (ok, out, err) = run(mtls(&cert, &key)
        .args(["-H", &format!("authorization: Bearer {}", app.root_key)])
        .args([
            "-d",
            r#"{"owner_id": "acme", "name": "ci", "scopes": ["posts:read"]}"#,
        ])
        .args([&target, "apikeyd.v1.KeyService/CreateKey"]));
    assert!(ok, "CreateKey over mTLS: {err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key_id = created["apiKey"]["id"].as_str().unwrap().to_owned();
    let api_key = created["key"].as_str().unwrap().to_owned();

    // The data plane by client certificate: no root key needed.
    let (ok, out, err) = run(mtls(&cert, &key)
        .args(["-d", &format!(r#"{{"key": "{api_key}"}}"#)])
        .args([&target, "apikeyd.v1.ValidationService/Validate"]));
    assert!(ok, "Validate over mTLS: {err}");
    assert!(out.contains(r#""valid": true"#), "{out}");

    // The audit trail names the caller's certificate.
    let (ok, out, err) = run(mtls(&cert, &key)
        .args(["-H", &format!("authorization: Bearer {}", app.root_key)])
        .args(["-d", &format!(r#"{{"key_id": "{key_id}"}}"#)])
        .args([&target, "apikeyd.v1.AuditService/ListAuditEvents"]));
    assert!(ok, "ListAuditEvents: {err}");
    let events: serde_json::Value = serde_json::from_str(&out).unwrap();
    let created_event = events["auditEvents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["method"] == "apikeyd.v1.KeyService/CreateKey")
        .unwrap_or_else(|| panic!("CreateKey is audited: {out}"));
    assert_eq!(
        created_event["tlsIdentity"],
        "CN=billing-service; DNS:billing.internal"
    );

    // Refused at the handshake: no certificate, or one another CA signed.
    let (ok, _, err) = run(grpcurl()
        .arg("-cacert")
        .arg(&ca_file)
        .args([&target, "list"]));
    assert!(!ok, "a client without a certificate is refused");
    assert!(err.contains("Failed to dial"), "{err}");
    let (ok, _, err) = run(mtls(&rogue_cert, &rogue_key).args([&target, "list"]));
    assert!(!ok, "a client certificate another CA signed is refused");
    assert!(err.contains("Failed to dial"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_asks_for_a_certificate_per_call_only_where_the_data_plane_needs_one() {
    let (ca, clients) = (
        Authority::new("apikeyd test CA"),
        Authority::new("client CA"),
    );
    let (app, _pki) = tls_app(&ca, Some(&clients), DataPlaneAuth::Mtls).await;
    let client = clients.client("gateway", "gateway.internal");
    let validate =
        "POST /apikeyd.v1.ValidationService/Validate HTTP/1.1\r\nContent-Type: application/json";
    let body = r#"{"key": "sk_live_nothing"}"#;

    // Metrics (and the console, and GitHub's reports) need no certificate.
    let (status, metrics) =
        https_request(app.http_addr, &ca.pem(), None, "GET /metrics HTTP/1.1", "")
            .await
            .expect("HTTPS without a client certificate");
    assert_eq!(status, 200, "{metrics}");
    // Nor do HTTP probes (Kubernetes' gRPC probes cannot speak TLS).
    for (path, expected) in [
        ("/healthz", 200),
        ("/healthz/liveness", 200),
        ("/healthz/apikeyd.v1.ValidationService", 200),
        ("/healthz/no.such.Service", 404),
    ] {
        let (status, body) = https_request(
            app.http_addr,
            &ca.pem(),
            None,
            &format!("GET {path} HTTP/1.1"),
            "",
        )
        .await
        .unwrap();
        assert_eq!(status, expected, "{path}: {body}");
    }

    let (status, refused) = https_request(app.http_addr, &ca.pem(), None, validate, body)
        .await
        .unwrap();
    assert_eq!(status, 401, "{refused}");
    assert!(refused.contains("client certificate"), "{refused}");

    let (status, answered) = https_request(app.http_addr, &ca.pem(), Some(&client), validate, body)
        .await
        .unwrap();
    assert_eq!(status, 200, "{answered}");
    assert!(answered.contains("VALIDATION_CODE_"), "{answered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_connections_and_a_bad_pair_keeps_the_old_one() {
    let (first_ca, second_ca) = (Authority::new("first CA"), Authority::new("second CA"));
    let pki = tempfile::tempdir().unwrap();
    let (cert, key) = first_ca.server().write(pki.path(), "server");
    let app = spawn_tls_app(|settings| {
        settings.tls.cert = Some(cert.clone());
        settings.tls.key = Some(key.clone());
    })
    .await;
    let answers = |ca: String| {
        let (addr, root_key) = (app.addr, app.root_key.clone());
        async move {
            let Ok(channel) = tls_channel(addr, &ca, None).await else {
                return false;
            };
            KeyServiceClient::new(channel)
                .create_key(with_bearer(create_request("acme", &["a:b"]), &root_key))
                .await
                .is_ok()
        }
    };
    assert!(
        answers(first_ca.pem()).await,
        "the first certificate is served"
    );
    let rejected = || async {
        let (_, metrics) = https_request(
            app.http_addr,
            &first_ca.pem(),
            None,
            "GET /metrics HTTP/1.1",
            "",
        )
        .await
        .unwrap();
        // Absent until the first rejection: before it, and while polling for it.
        crate::helpers::sample_or_zero(&metrics, "apikeyd_tls_reloads_total{result=\"rejected\"}")
    };
    let rejected_before = rejected().await;

    // Half a rotation: the new certificate with the old key. It is refused
    // (counted, logged) and the first certificate stays in force.
    let second = second_ca.server();
    std::fs::write(&cert, &second.cert).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            rejected().await > rejected_before
        })
        .await,
        "the mismatched pair is noticed and refused"
    );
    assert!(
        answers(first_ca.pem()).await,
        "the first certificate is still served"
    );
    assert!(!answers(second_ca.pem()).await);

    // The key arrives: new connections get the second certificate.
    std::fs::write(&key, &second.key).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || answers(second_ca.pem())).await,
        "the rotated certificate reaches a new connection"
    );
    assert!(
        !answers(first_ca.pem()).await,
        "the first certificate is retired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_without_a_certificate_gets_nothing_from_an_mtls_server() {
    let (ca, clients) = (
        Authority::new("apikeyd test CA"),
        Authority::new("client CA"),
    );
    let (app, _pki) = tls_app(&ca, Some(&clients), DataPlaneAuth::Mtls).await;
    let request = || pb::ValidateRequest {
        key: "sk_live_nothing".to_owned(),
        ..Default::default()
    };

    // TLS 1.3 lets the client finish its handshake before the server has
    // refused it, so the refusal may come on the connection or on the call.
    let refused = match tls_channel(app.addr, &ca.pem(), None).await {
        Err(_) => true,
        Ok(channel) => ValidationServiceClient::new(channel)
            .validate(request())
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate is refused");

    let client = clients.client("gateway", "gateway.internal");
    let channel = tls_channel(app.addr, &ca.pem(), Some(&client))
        .await
        .expect("a client with a certificate connects");
    let answer = ValidationServiceClient::new(channel)
        .validate(request())
        .await
        .expect("Validate answers a client with a certificate");
    assert!(!answer.into_inner().valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_reaches_a_server_with_mutual_tls() {
    let (ca, clients) = (
        Authority::new("apikeyd test CA"),
        Authority::new("client CA"),
    );
    let (app, pki) = tls_app(&ca, Some(&clients), DataPlaneAuth::Mtls).await;
    let ca_file = write_file(pki.path(), "ca.crt", &ca.pem());
    let (cert, key) = clients
        .client("operator", "ops.internal")
        .write(pki.path(), "operator");
    let apikeyd = |args: &[&str], with_certificate: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_apikeyd"));
        command
            .args(args)
            .env_clear()
            .env(
                "APIKEYD_ADDR",
                format!("https://127.0.0.1:{}", app.addr.port()),
            )
            .env("APIKEYD_DATA_DIR", app.data_dir.path())
            .env("APIKEYD_CA_CERT", &ca_file);
        if with_certificate {
            command
                .env("APIKEYD_CLIENT_CERT", &cert)
                .env("APIKEYD_CLIENT_KEY", &key);
        }
        command.output().expect("run apikeyd")
    };

    let created = apikeyd(
        &[
            "keys", "create", "--owner", "acme", "--name", "n", "--scope", "a:b", "--output",
            "json",
        ],
        true,
    );
    assert!(created.status.success(), "{created:?}");
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let api_key = created["key"].as_str().unwrap();

    let valid = apikeyd(&["validate", api_key, "--scope", "a:b"], true);
    assert!(valid.status.success(), "{valid:?}");

    let refused = apikeyd(&["validate", api_key], false);
    assert!(
        !refused.status.success(),
        "no client certificate, no answer"
    );
}
