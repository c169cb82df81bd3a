//! The API over HTTP/JSON (Connect unary calls) on the HTTP listener: every
//! public RPC over real HTTP, and the Connect error mapping of each status the
//! API produces.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::helpers::{TestApp, postgres_admin_url, spawn_app};
use crate::on_every_backend;

/// A plain HTTP/1.1 client of the Connect API, as curl or a browser would be.
pub struct ConnectClient {
    client: Client<HttpConnector, Full<Bytes>>,
    http_addr: SocketAddr,
    /// Every procedure called so far, to check that none was left out.
    called: std::sync::Mutex<BTreeSet<String>>,
}

/// An answer: its HTTP status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

impl ConnectClient {
    pub fn new(http_addr: SocketAddr) -> Self {
        ConnectClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            http_addr,
            called: Default::default(),
        }
    }

    /// `POST /<procedure>` with a JSON body and, when given, a root key.
    pub async fn call(&self, procedure: &str, body: Value, root_key: Option<&str>) -> Answer {
        self.send(
            procedure,
            "application/json",
            body.to_string().into_bytes(),
            root_key,
        )
        .await
    }

    pub async fn send(
        &self,
        procedure: &str,
        content_type: &str,
        body: Vec<u8>,
        root_key: Option<&str>,
    ) -> Answer {
        self.called.lock().unwrap().insert(procedure.to_owned());
        let mut request = http::Request::post(format!("http://{}/{procedure}", self.http_addr))
            .header("content-type", content_type)
            .header("connect-protocol-version", "1");
        if let Some(key) = root_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = self
            .client
            .request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .expect("the HTTP listener answers");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{procedure}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        Answer {
            status,
            content_type,
            body,
        }
    }

    pub fn called(&self) -> BTreeSet<String> {
        self.called.lock().unwrap().clone()
    }
}

impl Answer {
    /// The body of a 200 answer.
    #[track_caller]
    fn ok(self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        assert_eq!(self.content_type, "application/json");
        self.body
    }

    /// Asserts a Connect error: status, code, and a message mentioning `needle`.
    #[track_caller]
    fn assert_error(&self, status: u16, code: &str, needle: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.content_type, "application/json");
        assert_eq!(self.body["code"], code, "{}", self.body);
        let message = self.body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "expected {needle:?} in {message:?}"
        );
    }
}

/// Every unary RPC of our services, as Connect procedure paths (streaming
/// ones, such as ImportKeys, are served over gRPC only).
fn every_public_procedure() -> BTreeSet<String> {
    apikeyd::proto_json::services()
        .flat_map(|service| {
            service
                .methods()
                .filter(|m| !m.is_client_streaming() && !m.is_server_streaming())
                .map(|m| format!("{}/{}", service.full_name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect()
}

on_every_backend! {
    async fn every_public_rpc_answers_over_http_json(app) {
        let http = ConnectClient::new(app.http_addr);
        let root = Some(app.root_key.as_str());

        let created = http.call("apikeyd.v1.KeyService/CreateKey", json!({
            "ownerId": "user_1", "name": "Edge function", "scopes": ["posts:read"],
            "expiresInDays": 30, "environment": "ENVIRONMENT_TEST", "metadata": {"team": "edge"},
        }), root).await.ok();
        let key = created["key"].as_str().unwrap().to_owned();
        let id = created["apiKey"]["id"].as_str().unwrap().to_owned();
        let got = http.call("apikeyd.v1.KeyService/GetKey", json!({"id": id}), root).await.ok();
        let over_grpc = app.keys.clone()
            .get_key(app.authed(apikeyd::grpc::pb::GetKeyRequest { id: id.clone() }))
            .await.unwrap().into_inner();
        let listed = http.call("apikeyd.v1.KeyService/ListKeys", json!({"owner_id": "user_1"}), root).await.ok();
        let updated = http.call("apikeyd.v1.KeyService/UpdateKey", json!({"id": id, "name": "Renamed"}), root).await.ok();
        let valid = http.call("apikeyd.v1.ValidationService/Validate", json!({"key": key, "requiredScopes": ["posts:read"]}), None).await.ok();
        let usage = http.call("apikeyd.v1.KeyService/GetKeyUsage", json!({"id": id}), root).await.ok();
        let owner_set = http.call("apikeyd.v1.KeyService/SetOwnerLimits", json!({"ownerId": "user_1", "tier": "pro"}), root).await.ok();
        let owner_got = http.call("apikeyd.v1.KeyService/GetOwnerLimits", json!({"ownerId": "user_1"}), root).await.ok();
        let checked = http.call("apikeyd.v1.RateLimitService/CheckRateLimit", json!({
            "namespace": "login", "identifier": "203.0.113.7", "limit": 5, "window": "60s",
        }), None).await.ok();
        let rotated = http.call("apikeyd.v1.KeyService/RotateKey", json!({"id": id, "gracePeriod": "3600s"}), root).await.ok();
        let new_id = rotated["apiKey"]["id"].as_str().unwrap().to_owned();
        let revoked = http.call("apikeyd.v1.KeyService/RevokeKey", json!({"id": new_id}), root).await.ok();
        let reported = http.call("apikeyd.v1.KeyService/ReportLeakedKeys", json!({"tokens": [
            {"token": rotated["key"], "tokenType": "log_scanner", "url": "https://logs.example.com/1", "source": "log"},
            {"token": "not a key"},
        ]}), root).await.ok();
        let root_created = http.call("apikeyd.v1.RootKeyService/CreateRootKey", json!({
            "name": "edge", "permissions": ["keys:read"], "ownerScope": ["user_*"],
        }), root).await.ok();
        let root_id = root_created["rootKey"]["id"].as_str().unwrap().to_owned();
        let root_got = http.call("apikeyd.v1.RootKeyService/GetRootKey", json!({"id": root_id}), root).await.ok();
        let root_listed = http.call("apikeyd.v1.RootKeyService/ListRootKeys", json!({}), root).await.ok();
        let root_revoked = http.call("apikeyd.v1.RootKeyService/RevokeRootKey", json!({"id": root_id}), root).await.ok();
        let audited = http.call("apikeyd.v1.AuditService/ListAuditEvents", json!({"keyId": id}), root).await.ok();

        assert!(key.starts_with("sk_test_"), "{created}");
        assert_eq!(created["apiKey"]["metadata"], json!({"team": "edge"}));
        // The same rules and conversions as gRPC: the record reads the same either way.
        assert_eq!(got, apikeyd::proto_json::to_json("apikeyd.v1.GetKeyResponse", &over_grpc));
        assert_eq!(listed["apiKeys"][0]["id"], id.as_str());
        assert_eq!(updated["apiKey"]["name"], "Renamed");
        assert_eq!(valid["valid"], true);
        assert_eq!(valid["code"], "VALIDATION_CODE_VALID");
        let counted: Vec<&Value> = usage["buckets"].as_array().unwrap().iter()
            .filter_map(|bucket| bucket["total"].as_str().map(|_| bucket))
            .collect();
        assert_eq!(counted.len(), 1, "one bucket holds the validation: {usage}");
        assert_eq!(counted[0]["total"], "1", "64-bit counts are JSON strings");
        assert_eq!(owner_set["ownerLimits"]["tier"], "pro");
        assert_eq!(owner_got["ownerLimits"]["tier"], "pro");
        assert_eq!(checked["allowed"], true);
        assert_eq!(checked["remaining"], 4);
        assert_ne!(rotated["key"], key.as_str());
        assert_eq!(rotated["previousApiKey"]["id"], id.as_str());
        assert!(rotated["previousApiKey"]["revokedAt"].is_string(), "{rotated}");
        assert!(revoked["apiKey"]["revokedAt"].is_string(), "{revoked}");
        assert_eq!(reported, json!({"findings": [
            {"label": "LEAK_LABEL_TRUE_POSITIVE", "keyId": new_id, "alreadyRevoked": true},
            {"label": "LEAK_LABEL_FALSE_POSITIVE"},
        ]}));
        assert!(root_created["key"].as_str().unwrap().starts_with("rk_"), "{root_created}");
        assert_eq!(root_got["rootKey"]["ownerScope"], json!(["user_*"]));
        assert_eq!(root_listed["rootKeys"].as_array().unwrap().len(), 2, "{root_listed}");
        assert!(root_revoked["rootKey"]["revokedAt"].is_string(), "{root_revoked}");
        let events = audited["auditEvents"].as_array().unwrap();
        let methods: Vec<&str> = events.iter().map(|e| e["method"].as_str().unwrap()).collect();
        assert_eq!(methods, ["apikeyd.v1.KeyService/RotateKey", "apikeyd.v1.KeyService/UpdateKey", "apikeyd.v1.KeyService/CreateKey"]);
        assert!(events[0]["peerAddress"].as_str().unwrap().starts_with("127.0.0.1:"), "the caller's address over HTTP too: {audited}");
        assert_eq!(
            http.called(),
            every_public_procedure(),
            "every public RPC is called once over HTTP/JSON; add a call for a new one"
        );
    }

    async fn errors_follow_the_connect_mapping(app) {
        let http = ConnectClient::new(app.http_addr);
        let root = Some(app.root_key.as_str());
        let reader = crate::access::cli_root_key(&app, &["keys:read"]);
        let (_, revoked) = app.create_key("user_1", &["posts:read"]).await;
        app.revoke(&revoked.id).await;

        let bad_field = http.call("apikeyd.v1.KeyService/CreateKey", json!({"ownerId": "user_1", "name": "", "scopes": ["a:b"]}), root).await;
        let bad_json = http.send("apikeyd.v1.KeyService/CreateKey", "application/json", br#"{"ownerId": "user_1", "name": 7}"#.to_vec(), root).await;
        let misspelt = http.call("apikeyd.v1.KeyService/ListKeys", json!({"owner": "user_1"}), root).await;
        let changing_revoked = http.call("apikeyd.v1.KeyService/UpdateKey", json!({"id": revoked.id, "name": "Again"}), root).await;
        let no_root_key = http.call("apikeyd.v1.KeyService/ListKeys", json!({}), None).await;
        let read_only = http.call("apikeyd.v1.KeyService/CreateKey", json!({"ownerId": "user_1", "name": "n", "scopes": ["a:b"]}), Some(&reader)).await;
        let unknown_key = http.call("apikeyd.v1.KeyService/GetKey", json!({"id": "0000000000000000"}), root).await;
        let unknown_method = http.call("apikeyd.v1.KeyService/DeleteEverything", json!({}), root).await;
        let wrong_type = http.send("apikeyd.v1.KeyService/ListKeys", "text/plain", b"{}".to_vec(), root).await;
        let too_big = http.send("apikeyd.v1.KeyService/ListKeys", "application/json", vec![b' '; apikeyd::http::MAX_REQUEST_BYTES + 1], root).await;
        let mut over_the_limit = None;
        for _ in 0..=10 {
            let answer = http.call("apikeyd.v1.KeyService/CreateKey", json!({"ownerId": "crowded", "name": "n", "scopes": ["a:b"]}), root).await;
            if answer.status != StatusCode::OK {
                over_the_limit = Some(answer);
                break;
            }
        }

        bad_field.assert_error(400, "invalid_argument", "name");
        bad_json.assert_error(400, "invalid_argument", "invalid type: integer `7`, expected a string");
        misspelt.assert_error(400, "invalid_argument", "unrecognized field name 'owner'");
        changing_revoked.assert_error(400, "failed_precondition", "revoked");
        no_root_key.assert_error(401, "unauthenticated", "authorization");
        read_only.assert_error(403, "permission_denied", "keys:write");
        unknown_key.assert_error(404, "not_found", "0000000000000000");
        unknown_method.assert_error(404, "unimplemented", "apikeyd.v1.KeyService");
        wrong_type.assert_error(415, "unimplemented", "application/json");
        too_big.assert_error(413, "resource_exhausted", "bytes");
        over_the_limit
            .expect("the eleventh key of one owner is refused")
            .assert_error(429, "resource_exhausted", "active keys");
    }
}

/// UNAVAILABLE for real: the server's PostgreSQL database refuses connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_503_unavailable() {
    use sea_orm::{ConnectionTrait, Database};
    let app: TestApp = spawn_app(crate::helpers::Backend::Postgres).await;
    let http = ConnectClient::new(app.http_addr);
    let database = url::Url::parse(app.database_url.as_ref().unwrap())
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned();
    let admin = Database::connect(postgres_admin_url()).await.unwrap();
    for statement in [
        format!("ALTER DATABASE {database} ALLOW_CONNECTIONS false"),
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        ),
    ] {
        admin.execute_unprepared(&statement).await.unwrap();
    }

    let answer = http
        .call(
            "apikeyd.v1.KeyService/GetKey",
            json!({"id": "0000000000000000"}),
            Some(&app.root_key),
        )
        .await;

    admin
        .execute_unprepared(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    answer.assert_error(503, "unavailable", "retry");
}

/// gRPC-Web (browser gRPC clients) on the same listener, to the same services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_calls_reach_the_same_services() {
    use prost::Message;
    let app = spawn_app(crate::helpers::Backend::Sqlite).await;
    let (key, _) = app.create_key("user_1", &["posts:read"]).await;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let grpc_web = |procedure: &str, message: Vec<u8>| {
        let mut framed = vec![0];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        http::Request::post(format!("http://{}/{procedure}", app.http_addr))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(Full::new(Bytes::from(framed)))
            .unwrap()
    };
    let request = apikeyd::grpc::pb::ValidateRequest {
        key: key.clone(),
        required_scopes: vec!["posts:read".to_owned()],
        ..Default::default()
    };

    let answered = client
        .request(grpc_web(
            "apikeyd.v1.ValidationService/Validate",
            request.encode_to_vec(),
        ))
        .await
        .unwrap();
    let refused = client
        .request(grpc_web(
            "apikeyd.v1.KeyService/ListKeys",
            apikeyd::grpc::pb::ListKeysRequest::default().encode_to_vec(),
        ))
        .await
        .unwrap();

    assert_eq!(answered.status(), StatusCode::OK);
    assert_eq!(
        answered.headers()["content-type"],
        "application/grpc-web+proto"
    );
    let body = answered.into_body().collect().await.unwrap().to_bytes();
    let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    assert_eq!(body[0], 0, "a message frame first");
    let response = apikeyd::grpc::pb::ValidateResponse::decode(&body[5..5 + length]).unwrap();
    assert!(response.valid, "{response:?}");
    let trailers = String::from_utf8_lossy(&body[5 + length + 5..]).to_lowercase();
    assert_eq!(body[5 + length], 0x80, "then the trailers frame");
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    assert_eq!(
        refused.headers()["grpc-status"],
        (tonic::Code::Unauthenticated as i32).to_string().as_str(),
        "no root key, as over gRPC"
    );
}
