//! `envoy.service.auth.v3.Authorization/Check` as Envoy's ext_authz filter
//! calls it: the codes, headers and bodies Envoy acts on.

use apikeyd::envoy::routes::RouteRule;
use apikeyd::grpc::pb;
use prost_types::value::Kind;
use tonic::Code;

use crate::envoy_harness::{
    check, check_request, denied_response, header_value, ok_response, status_code,
};
use crate::helpers::{Backend, TestApp, connect, create_request, spawn_app_with};
use crate::limiter_harness::{rate_limit, unique};
use crate::on_every_backend;

/// 30 days, epoch-aligned: a test never straddles its boundary.
const LONG_WINDOW_MS: u64 = 30 * 86_400_000;

async fn create(app: &TestApp, request: pb::CreateKeyRequest) -> (String, pb::ApiKey) {
    let created = app
        .keys
        .clone()
        .create_key(app.authed(request))
        .await
        .expect("CreateKey succeeds")
        .into_inner();
    (created.key, created.api_key.unwrap())
}

/// Asserts a refusal's gRPC code, HTTP status, JSON body and content type.
fn assert_denied(
    response: &apikeyd::envoy::pb::envoy::service::auth::v3::CheckResponse,
    grpc: Code,
    http: u16,
    error: &str,
) {
    assert_eq!(status_code(response), grpc, "{response:?}");
    let denied = denied_response(response);
    assert_eq!(denied.status.as_ref().unwrap().code, i32::from(http));
    let body: serde_json::Value = serde_json::from_str(&denied.body).expect("a JSON body");
    assert_eq!(body, serde_json::json!({ "error": error }));
    assert_eq!(
        header_value(&denied.headers, "content-type"),
        "application/json"
    );
}

on_every_backend! {
    async fn a_good_key_in_x_api_key_passes_with_its_identity_and_without_the_key(app) {
        let (key, record) = create(&app, create_request("user_1", &["posts:read", "users:read"])).await;

        let response = check(
            connect(app.addr).await,
            check_request("GET", "/v1/posts?page=2", &[("x-api-key", &key), ("user-agent", "curl/8")], &[("scopes", "posts:read")]),
        )
        .await
        .expect("Check answers");

        assert_eq!(status_code(&response), Code::Ok);
        let ok = ok_response(&response);
        assert_eq!(header_value(&ok.headers, "x-apikeyd-key-id"), record.id);
        assert_eq!(header_value(&ok.headers, "x-apikeyd-owner-id"), "user_1");
        assert_eq!(header_value(&ok.headers, "x-apikeyd-scopes"), "posts:read users:read");
        assert!(ok.headers.iter().all(|h| h.append_action == 2), "OVERWRITE_IF_EXISTS_OR_ADD, never append");
        assert_eq!(ok.headers_to_remove, ["x-api-key"], "the upstream never sees the raw key");
        // The default tier (100 per hour) was checked and charged once.
        assert_eq!(header_value(&ok.response_headers_to_add, "x-ratelimit-limit"), "100");
        assert_eq!(header_value(&ok.response_headers_to_add, "x-ratelimit-remaining"), "99");
        assert!(header_value(&ok.response_headers_to_add, "ratelimit").starts_with("\"apikeyd\";r=99;t="));
        assert_eq!(header_value(&ok.response_headers_to_add, "ratelimit-policy"), "\"apikeyd\";q=100;w=3600");
        let metadata = response.dynamic_metadata.as_ref().expect("dynamic metadata for Envoy's other filters");
        assert_eq!(metadata.fields["key_id"].kind, Some(Kind::StringValue(record.id.clone())));
        assert_eq!(metadata.fields["owner_id"].kind, Some(Kind::StringValue("user_1".into())));
        let Some(Kind::ListValue(scopes)) = &metadata.fields["scopes"].kind else { panic!("scopes as a list") };
        assert_eq!(scopes.values.len(), 2);
        assert!(!format!("{ok:?}{metadata:?}").contains(&key), "the key is nowhere in the answer");
    }

    async fn a_good_key_as_a_bearer_token_passes_and_authorization_is_removed(app) {
        let (key, record) = create(&app, create_request("user_1", &["*"])).await;

        let response = check(
            connect(app.addr).await,
            check_request("POST", "/v1/posts", &[("authorization", &format!("Bearer {key}"))], &[]),
        )
        .await
        .unwrap();

        assert_eq!(status_code(&response), Code::Ok);
        let ok = ok_response(&response);
        assert_eq!(header_value(&ok.headers, "x-apikeyd-key-id"), record.id);
        assert_eq!(ok.headers_to_remove, ["authorization"]);
    }

    async fn a_missing_or_malformed_key_is_a_401_with_www_authenticate(app) {
        let channel = connect(app.addr).await;
        for (headers, error) in [
            (vec![], "Missing API key"),
            (vec![("authorization", "Basic dXNlcjpwYXNz")], "Missing API key"),
            (vec![("x-api-key", "sk_live_not-a-key")], "Invalid key format"),
            // Short of any key shape (a longer token could be an imported legacy key).
            (vec![("authorization", "Bearer sk_live_0123")], "Invalid key format"),
        ] {
            let response = check(channel.clone(), check_request("GET", "/v1/posts", &headers, &[])).await.unwrap();

            assert_denied(&response, Code::Unauthenticated, 401, error);
            assert_eq!(header_value(&denied_response(&response).headers, "www-authenticate"), "Bearer");
        }
    }

    async fn an_unknown_or_revoked_key_is_a_401(app) {
        let (key, record) = create(&app, create_request("user_1", &["*"])).await;
        let channel = connect(app.addr).await;
        let wrong = crate::helpers::wrong_secret_for(&key);
        let response = check(channel.clone(), check_request("GET", "/", &[("x-api-key", &wrong)], &[])).await.unwrap();
        assert_denied(&response, Code::Unauthenticated, 401, "Invalid API key");

        app.revoke(&record.id).await;

        let response = check(channel, check_request("GET", "/", &[("x-api-key", &key)], &[])).await.unwrap();
        assert_denied(&response, Code::Unauthenticated, 401, "API key has been revoked");
    }

    async fn a_key_without_the_routes_scope_is_a_403(app) {
        let (key, _) = create(&app, create_request("user_1", &["posts:read"])).await;

        let response = check(
            connect(app.addr).await,
            check_request("DELETE", "/v1/posts/7", &[("x-api-key", &key)], &[("scopes", "posts:read,posts:delete")]),
        )
        .await
        .unwrap();

        assert_denied(&response, Code::PermissionDenied, 403, "Insufficient permissions");
        assert!(denied_response(&response).headers.iter().all(|h| h.header.as_ref().unwrap().key != "www-authenticate"));
    }

    async fn a_key_over_its_limit_is_a_429_with_retry_after_and_counts_the_routes_cost(app) {
        let mut request = create_request("user_1", &["*"]);
        request.rate_limits = vec![rate_limit(5, LONG_WINDOW_MS, pb::RateLimitAlgorithm::FixedWindow)];
        let (key, _) = create(&app, request).await;
        let channel = connect(app.addr).await;
        let costly = check_request("POST", "/v1/reports", &[("x-api-key", &key)], &[("cost", "2")]);

        let first = check(channel.clone(), costly.clone()).await.unwrap();
        let second = check(channel.clone(), costly.clone()).await.unwrap();
        let third = check(channel.clone(), costly).await.unwrap();

        assert_eq!(header_value(&ok_response(&first).response_headers_to_add, "x-ratelimit-remaining"), "3");
        assert_eq!(header_value(&ok_response(&second).response_headers_to_add, "x-ratelimit-remaining"), "1");
        assert_denied(&third, Code::ResourceExhausted, 429, "Rate limit exceeded");
        let headers = &denied_response(&third).headers;
        let retry_after: i64 = header_value(headers, "retry-after").parse().unwrap();
        assert!(retry_after >= 1, "{retry_after}");
        assert_eq!(header_value(headers, "x-ratelimit-remaining"), "1", "a denial takes nothing");
        assert_eq!(header_value(headers, "x-ratelimit-limit"), "5");
        let cheap = check(channel, check_request("GET", "/v1/reports", &[("x-api-key", &key)], &[])).await.unwrap();
        assert_eq!(status_code(&cheap), Code::Ok, "the 1 left still admits a request of cost 1");
    }

    async fn a_key_out_of_quota_is_a_429(app) {
        let mut request = create_request("user_1", &["*"]);
        request.quota = Some(pb::UsageQuota { remaining: 1, refill_amount: 0, refill_interval: 0 });
        let (key, _) = create(&app, request).await;
        let channel = connect(app.addr).await;

        let first = check(channel.clone(), check_request("GET", "/", &[("x-api-key", &key)], &[])).await.unwrap();
        let second = check(channel, check_request("GET", "/", &[("x-api-key", &key)], &[])).await.unwrap();

        assert_eq!(status_code(&first), Code::Ok);
        assert_denied(&second, Code::ResourceExhausted, 429, "Usage quota exceeded");
    }

    async fn x_apikeyd_headers_a_client_sends_never_reach_the_upstream(app) {
        let (key, record) = create(&app, create_request("user_1", &["posts:read"])).await;

        let response = check(
            connect(app.addr).await,
            check_request("GET", "/v1/posts", &[
                ("x-api-key", &key),
                ("x-apikeyd-owner-id", "admin"),
                ("x-apikeyd-scopes", "*"),
                ("x-apikeyd-impersonate", "root"),
            ], &[]),
        )
        .await
        .unwrap();

        let ok = ok_response(&response);
        assert_eq!(header_value(&ok.headers, "x-apikeyd-owner-id"), "user_1", "overwritten, not appended");
        assert_eq!(header_value(&ok.headers, "x-apikeyd-scopes"), "posts:read");
        assert_eq!(header_value(&ok.headers, "x-apikeyd-key-id"), record.id);
        let mut removed = ok.headers_to_remove.clone();
        removed.sort();
        assert_eq!(removed, ["x-api-key", "x-apikeyd-impersonate"]);
    }

    async fn usage_is_recorded_with_the_requests_path_method_address_and_agent(app) {
        let (key, record) = create(&app, create_request("user_1", &["*"])).await;

        check(
            connect(app.addr).await,
            check_request("PATCH", "/v1/posts/7?draft=1", &[("x-api-key", &key), ("user-agent", "envoy-test/1.0")], &[]),
        )
        .await
        .unwrap();

        let usage = app.keys.clone().get_key_usage(app.authed(pb::GetKeyUsageRequest {
            id: record.id,
            ..Default::default()
        })).await.unwrap().into_inner();
        let logged = usage.recent_requests.first().expect("the request is in the log");
        assert_eq!(
            (logged.endpoint.as_str(), logged.method.as_str(), logged.ip.as_str(), logged.user_agent.as_str()),
            ("/v1/posts/7", "PATCH", "203.0.113.7", "envoy-test/1.0")
        );
        assert_eq!(logged.code, pb::ValidationCode::Valid as i32);
    }

    async fn a_malformed_route_extension_or_a_non_http_check_is_invalid_argument(app) {
        let channel = connect(app.addr).await;
        let bad_cost = check(channel.clone(), check_request("GET", "/", &[], &[("cost", "lots")])).await;
        crate::helpers::assert_status(bad_cost, Code::InvalidArgument, "context_extensions.cost");
        let bad_scope = check(channel.clone(), check_request("GET", "/", &[], &[("scopes", "posts read!")])).await;
        crate::helpers::assert_status(bad_scope, Code::InvalidArgument, "context_extensions.scopes");
        let network = check(channel, apikeyd::envoy::pb::envoy::service::auth::v3::CheckRequest::default()).await;
        crate::helpers::assert_status(network, Code::InvalidArgument, "attributes.request.http");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_table_applies_where_the_route_sets_no_extensions() {
    let app = spawn_app_with(Backend::Sqlite, |settings| {
        settings.envoy.routes = vec![RouteRule {
            path_prefix: "/v1/admin".into(),
            methods: vec![],
            scopes: vec!["admin:write".into()],
            cost: Some(3),
        }];
    })
    .await;
    let (key, _) = create(&app, create_request(&unique("owner"), &["posts:read"])).await;
    let channel = connect(app.addr).await;

    let from_table = check(
        channel.clone(),
        check_request("POST", "/v1/admin/users", &[("x-api-key", &key)], &[]),
    )
    .await
    .unwrap();
    let route_wins = check(
        channel.clone(),
        check_request(
            "POST",
            "/v1/admin/users",
            &[("x-api-key", &key)],
            &[("scopes", "posts:read")],
        ),
    )
    .await
    .unwrap();

    assert_denied(
        &from_table,
        Code::PermissionDenied,
        403,
        "Insufficient permissions",
    );
    assert_eq!(
        status_code(&route_wins),
        Code::Ok,
        "the route's own scopes win over the table"
    );
    // Cost 3 from the table (the route named only scopes): 100 - 3 left.
    assert_eq!(
        header_value(
            &ok_response(&route_wins).response_headers_to_add,
            "x-ratelimit-remaining"
        ),
        "97"
    );
}
