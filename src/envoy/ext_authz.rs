//! `envoy.service.auth.v3.Authorization/Check`: Envoy's ext_authz filter
//! asks whether an HTTP request may pass. The key comes from `x-api-key` or
//! `authorization: Bearer`, the scopes and cost from the route
//! ([`super::routes`]); the answer is [`KeyAuthority::validate`]'s, turned
//! into what Envoy acts on: headers for the upstream (never the raw key, never
//! a client's own `x-apikeyd-*`), rate-limit headers for the client, and on a
//! refusal the HTTP status and JSON body to send back. An internal failure is
//! a gRPC error, so Envoy's `failure_mode_allow` / `status_on_error` decide.

use std::borrow::Cow;
use std::sync::Arc;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use tonic::{Code, Request, Response, Status};

use super::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use super::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, address};
use super::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use super::pb::envoy::service::auth::v3::authorization_server::Authorization;
use super::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    check_response::HttpResponse,
};
use super::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use super::pb::google::rpc;
use super::routes::RouteTable;
use crate::authority::{KeyAuthority, ValidationRequest};
use crate::domain::{ApiKey, ValidationCode};
use crate::error::Error;
use crate::grpc::deadline;
use crate::ratelimit::LimitStatus;
use crate::ratelimit::usage::RequestContext;
use crate::telemetry::metrics;

/// The headers a key may come in, in the order they are read.
const API_KEY_HEADER: &str = "x-api-key";
const AUTHORIZATION_HEADER: &str = "authorization";
/// Headers apikeyd sets for the upstream; a client's own are never passed on.
const OWN_HEADER_PREFIX: &str = "x-apikeyd-";
const KEY_ID_HEADER: &str = "x-apikeyd-key-id";
const OWNER_ID_HEADER: &str = "x-apikeyd-owner-id";
const SCOPES_HEADER: &str = "x-apikeyd-scopes";
/// The policy name in the IETF `RateLimit` and `RateLimit-Policy` fields.
const RATE_LIMIT_POLICY: &str = "apikeyd";

pub struct ExtAuthzApi {
    pub authority: Arc<KeyAuthority>,
    /// Scopes and cost for routes that set no `context_extensions`.
    pub routes: Arc<RouteTable>,
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let answer_by = deadline::answer_by(request.metadata());
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let http = attributes
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .ok_or_else(|| {
                Error::invalid(
                    "attributes.request.http",
                    "missing; apikeyd authorizes HTTP requests (use Envoy's HTTP ext_authz filter)",
                )
            })?;
        let path = http.path.split('?').next().unwrap_or_default();
        let requirements =
            self.routes
                .requirements(&attributes.context_extensions, path, &http.method)?;
        let presented = PresentedCredential::find(http);
        let context = RequestContext::truncated(
            path,
            &http.method,
            &source_ip(&attributes),
            header(http, "user-agent").as_deref().unwrap_or_default(),
        );
        let raw_key = presented.as_ref().map_or("", |p| p.key.as_ref());
        let verdict = self
            .authority
            .validate(
                raw_key,
                ValidationRequest {
                    required: &requirements.scopes,
                    cost: requirements.cost,
                    context,
                    answer_by,
                },
            )
            .await?;
        metrics::count_validation(verdict.code);
        let now_us = chrono::Utc::now().timestamp_micros();
        let limit = verdict.rate_limit.as_ref();
        let response = match (verdict.code, &verdict.api_key, &presented) {
            (ValidationCode::Valid, Some(key), Some(presented)) => {
                allowed(key, presented.header, http, limit, now_us)
            }
            (code, _, presented) => denied(code, presented.is_none(), limit, now_us),
        };
        Ok(Response::new(response))
    }
}

/// A key found in the request, and the header it came in.
struct PresentedCredential<'a> {
    key: Cow<'a, str>,
    header: &'static str,
}

impl<'a> PresentedCredential<'a> {
    /// `x-api-key`, else `authorization: Bearer <key>` (the scheme in any case).
    fn find(http: &'a HttpRequest) -> Option<PresentedCredential<'a>> {
        if let Some(key) = header(http, API_KEY_HEADER).filter(|k| !k.trim().is_empty()) {
            return Some(PresentedCredential {
                key: trimmed(key),
                header: API_KEY_HEADER,
            });
        }
        let authorization = header(http, AUTHORIZATION_HEADER)?;
        let (scheme, key) = authorization.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") || key.trim().is_empty() {
            return None;
        }
        Some(PresentedCredential {
            key: Cow::Owned(key.trim().to_owned()),
            header: AUTHORIZATION_HEADER,
        })
    }
}

fn trimmed(value: Cow<'_, str>) -> Cow<'_, str> {
    match value {
        Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
        Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
    }
}

/// A request header by its lower-case name, from `headers` or, when Envoy
/// sends raw headers (`encode_raw_headers`), from `header_map`.
fn header<'a>(http: &'a HttpRequest, name: &str) -> Option<Cow<'a, str>> {
    if let Some(value) = http.headers.get(name) {
        return Some(Cow::Borrowed(value));
    }
    http.header_map
        .as_ref()?
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| {
            if h.raw_value.is_empty() {
                Cow::Borrowed(h.value.as_str())
            } else {
                String::from_utf8_lossy(&h.raw_value)
            }
        })
}

/// Names of every request header, lower-case.
fn header_names(http: &HttpRequest) -> impl Iterator<Item = String> + '_ {
    let raw = http.header_map.iter().flat_map(|m| m.headers.iter());
    http.headers
        .keys()
        .cloned()
        .chain(raw.map(|h| h.key.to_ascii_lowercase()))
}

/// The downstream peer's address as Envoy saw it.
fn source_ip(attributes: &AttributeContext) -> String {
    let address = attributes
        .source
        .as_ref()
        .and_then(|peer| peer.address.as_ref())
        .and_then(|a| a.address.as_ref());
    match address {
        Some(address::Address::SocketAddress(socket)) => socket.address.clone(),
        _ => String::new(),
    }
}

/// OK, with the key's identity for the upstream in place of the key itself.
fn allowed(
    key: &ApiKey,
    key_header: &'static str,
    http: &HttpRequest,
    limit: Option<&LimitStatus>,
    now_us: i64,
) -> CheckResponse {
    let scopes = key.scopes.to_strings();
    let ours = [KEY_ID_HEADER, OWNER_ID_HEADER, SCOPES_HEADER];
    // Ours are overwritten; any other `x-apikeyd-*` a client sent is removed.
    let mut headers_to_remove = vec![key_header.to_owned()];
    for name in header_names(http) {
        if name.starts_with(OWN_HEADER_PREFIX)
            && !ours.contains(&name.as_str())
            && !headers_to_remove.contains(&name)
        {
            headers_to_remove.push(name);
        }
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: Code::Ok as i32,
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                set_header(KEY_ID_HEADER, key.id.as_str()),
                set_header(OWNER_ID_HEADER, &key.owner_id),
                set_header(SCOPES_HEADER, &scopes.join(" ")),
            ],
            headers_to_remove,
            response_headers_to_add: limit
                .map(|l| rate_limit_headers(l, now_us))
                .unwrap_or_default(),
            ..Default::default()
        })),
        dynamic_metadata: Some(key_metadata(key, scopes)),
    }
}

/// What Envoy's other filters (RBAC, access logs) see under
/// `envoy.filters.http.ext_authz`.
fn key_metadata(key: &ApiKey, scopes: Vec<String>) -> Struct {
    let metadata = key
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), string_value(v)))
        .collect();
    let fields = [
        ("key_id".to_owned(), string_value(key.id.as_str())),
        ("owner_id".to_owned(), string_value(&key.owner_id)),
        (
            "scopes".to_owned(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: scopes.iter().map(|s| string_value(s)).collect(),
                })),
            },
        ),
        (
            "metadata".to_owned(),
            Value {
                kind: Some(Kind::StructValue(Struct { fields: metadata })),
            },
        ),
    ];
    Struct {
        fields: fields.into_iter().collect(),
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// A refusal: the gRPC status Envoy counts, and the HTTP answer the client gets.
fn denied(
    code: ValidationCode,
    key_missing: bool,
    limit: Option<&LimitStatus>,
    now_us: i64,
) -> CheckResponse {
    let (grpc, http) = match code {
        ValidationCode::InsufficientScope => (Code::PermissionDenied, StatusCode::Forbidden),
        ValidationCode::RateLimited | ValidationCode::UsageExceeded => {
            (Code::ResourceExhausted, StatusCode::TooManyRequests)
        }
        _ => (Code::Unauthenticated, StatusCode::Unauthorized),
    };
    let message = match code {
        _ if key_missing => "Missing API key",
        // The seed's HTTP answer words it so.
        ValidationCode::UsageExceeded => "Usage quota exceeded",
        code => code.message(),
    };
    let mut headers = vec![set_header("content-type", "application/json")];
    if http == StatusCode::Unauthorized {
        headers.push(set_header("www-authenticate", "Bearer"));
    }
    if let Some(limit) = limit {
        if code == ValidationCode::RateLimited {
            let seconds = ceil_seconds(limit.retry_after_us).max(1);
            headers.push(set_header("retry-after", &seconds.to_string()));
        }
        headers.extend(rate_limit_headers(limit, now_us));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc as i32,
            message: message.to_owned(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body: serde_json::json!({ "error": message }).to_string(),
        })),
        dynamic_metadata: None,
    }
}

/// `X-RateLimit-Limit`, `-Remaining`, `-Reset` (Unix seconds), and the IETF
/// draft's structured `RateLimit-Policy` (quota, window) and `RateLimit`
/// (remaining, seconds until reset).
fn rate_limit_headers(limit: &LimitStatus, now_us: i64) -> Vec<HeaderValueOption> {
    let quota = limit.limit.limit;
    let window_secs = limit.limit.window_ms.div_ceil(1000);
    let reset_in = ceil_seconds(limit.reset_at_us - now_us).max(0);
    vec![
        set_header("x-ratelimit-limit", &quota.to_string()),
        set_header("x-ratelimit-remaining", &limit.remaining.to_string()),
        set_header(
            "x-ratelimit-reset",
            &ceil_seconds(limit.reset_at_us).to_string(),
        ),
        set_header(
            "ratelimit-policy",
            &format!("\"{RATE_LIMIT_POLICY}\";q={quota};w={window_secs}"),
        ),
        set_header(
            "ratelimit",
            &format!("\"{RATE_LIMIT_POLICY}\";r={};t={reset_in}", limit.remaining),
        ),
    ]
}

fn ceil_seconds(us: i64) -> i64 {
    us.div_euclid(1_000_000) + i64::from(us.rem_euclid(1_000_000) > 0)
}

/// A header that replaces any of the same name (never appends to it).
fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Algorithm, Limit};

    fn http(headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_key_comes_from_x_api_key_then_a_bearer_authorization() {
        let both = http(&[("x-api-key", " sk_a "), ("authorization", "Bearer sk_b")]);
        let found = PresentedCredential::find(&both).unwrap();
        assert_eq!((found.key.as_ref(), found.header), ("sk_a", "x-api-key"));
        let bearer = http(&[("authorization", "bearer  sk_b")]);
        let found = PresentedCredential::find(&bearer).unwrap();
        assert_eq!(
            (found.key.as_ref(), found.header),
            ("sk_b", "authorization")
        );
        assert!(PresentedCredential::find(&http(&[("authorization", "Basic dTpw")])).is_none());
        assert!(PresentedCredential::find(&http(&[("x-api-key", "")])).is_none());
        assert!(PresentedCredential::find(&http(&[])).is_none());
    }

    #[test]
    fn raw_headers_are_read_when_envoy_sends_them() {
        use crate::envoy::pb::envoy::config::core::v3::HeaderMap;
        let request = HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![HeaderValue {
                    key: "X-Api-Key".into(),
                    value: String::new(),
                    raw_value: b"sk_raw".to_vec(),
                }],
            }),
            ..Default::default()
        };
        assert_eq!(PresentedCredential::find(&request).unwrap().key, "sk_raw");
    }

    #[test]
    fn rate_limit_headers_state_reset_in_unix_and_relative_seconds() {
        let status = LimitStatus {
            limit: Limit {
                limit: 100,
                window_ms: 60_000,
                algorithm: Algorithm::FixedWindow,
            },
            allowed: true,
            remaining: 42,
            reset_at_us: 1_700_000_030_500_000,
            retry_after_us: 0,
        };
        let headers: Vec<(String, String)> = rate_limit_headers(&status, 1_700_000_000_000_000)
            .into_iter()
            .map(|h| {
                let h = h.header.unwrap();
                (h.key, h.value)
            })
            .collect();
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).unwrap().1.clone();
        assert_eq!(get("x-ratelimit-limit"), "100");
        assert_eq!(get("x-ratelimit-remaining"), "42");
        assert_eq!(get("x-ratelimit-reset"), "1700000031");
        assert_eq!(get("ratelimit-policy"), "\"apikeyd\";q=100;w=60");
        assert_eq!(get("ratelimit"), "\"apikeyd\";r=42;t=31");
    }
}
