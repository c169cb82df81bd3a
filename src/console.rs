//! The web console: a page at `/` and its assets under `/console/`, built
//! into the binary (nothing is fetched at run time). The page talks to the
//! HTTP/JSON API on the same listener with a root key it keeps in memory.
//!
//! Every response carries a strict Content-Security-Policy: scripts and
//! styles only from these files (no inline code), no framing, no third
//! parties, so an injected string can neither run nor leak a key elsewhere.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::ConsoleSettings;

/// The policy of every console response. `require-trusted-types-for` makes
/// the browser refuse HTML strings as markup, so the page builds its DOM node
/// by node.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
     require-trusted-types-for 'script'";

/// A file of the console and the type it is served as.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../console/index.html"),
};

/// Everything under `/console/`, by file name.
const ASSETS: [Asset; 7] = [
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../console/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/api.js"),
    },
    Asset {
        name: "dialogs.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/dialogs.js"),
    },
    Asset {
        name: "usage_chart.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/usage_chart.js"),
    },
    Asset {
        name: "format.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/format.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../console/favicon.svg"),
    },
];

/// The console's routes: `/`, `/console/{file}` and `/console/config.json`
/// (what the page needs from the settings: the catalogue of scopes).
pub fn routes(settings: &ConsoleSettings) -> Router {
    let config = serde_json::json!({ "scopes": settings.scopes }).to_string();
    Router::new()
        .route("/", get(|| async { serve(&INDEX) }))
        .route(
            "/console/config.json",
            get(move || {
                let config = config.clone();
                async move { with_headers("application/json", config).into_response() }
            }),
        )
        .route("/console/{file}", get(asset))
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|asset| asset.name == file) {
        Some(asset) => serve(asset),
        None => {
            let (headers, body) = with_headers("text/plain; charset=utf-8", "not found");
            (StatusCode::NOT_FOUND, headers, body).into_response()
        }
    }
}

fn serve(asset: &'static Asset) -> Response {
    with_headers(asset.content_type, asset.body).into_response()
}

/// The body with its type and the security headers. `no-cache` makes the
/// browser revalidate, so a new binary's console is picked up at once.
fn with_headers<B>(content_type: &'static str, body: B) -> (HeaderMap, B) {
    let mut headers = HeaderMap::new();
    let mut set = |name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(header::CONTENT_TYPE, content_type);
    set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(header::REFERRER_POLICY, "no-referrer");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::CACHE_CONTROL, "no-cache");
    set(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        header::HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    );
    (headers, body)
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get_path(path: &str) -> Response {
        let settings = ConsoleSettings {
            scopes: vec!["posts:read".to_owned(), "users:write".to_owned()],
        };
        routes(&settings)
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header<'a>(response: &'a Response, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    async fn body_text(response: Response) -> String {
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn every_console_response_carries_the_security_headers() {
        let paths = ["/", "/console/config.json", "/console/no-such-file"]
            .into_iter()
            .map(str::to_owned)
            .chain(
                ASSETS
                    .iter()
                    .map(|asset| format!("/console/{}", asset.name)),
            );
        for path in paths {
            let response = get_path(&path).await;
            let csp = header(&response, "content-security-policy");
            for directive in [
                "default-src 'self'",
                "script-src 'self'",
                "style-src 'self'",
                "frame-ancestors 'none'",
                "object-src 'none'",
            ] {
                assert!(csp.contains(directive), "{path}: {csp}");
            }
            assert!(!csp.contains("unsafe"), "{path}: {csp}");
            assert_eq!(
                header(&response, "referrer-policy"),
                "no-referrer",
                "{path}"
            );
            assert_eq!(header(&response, "x-content-type-options"), "nosniff");
        }
    }

    #[tokio::test]
    async fn the_page_loads_its_code_from_files_and_never_inline() {
        let response = get_path("/").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(header(&response, "content-type").starts_with("text/html"));
        let html = body_text(response).await;
        assert!(html.contains(r#"<script type="module" src="/console/app.js">"#));
        assert_eq!(
            html.matches("<script").count(),
            1,
            "one script, and from a file"
        );
        assert!(!html.contains("<style"), "no inline style sheet");
        assert!(!html.contains(" style="), "no inline style attribute");
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[tokio::test]
    async fn scripts_are_served_as_javascript_and_unknown_files_are_not_found() {
        let script = get_path("/console/app.js").await;
        assert_eq!(script.status(), StatusCode::OK);
        assert!(header(&script, "content-type").starts_with("text/javascript"));
        assert_eq!(
            get_path("/console/../Cargo.toml").await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get_path("/console/secrets.js").await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn the_page_gets_the_configured_scope_catalogue() {
        let response = get_path("/console/config.json").await;
        assert_eq!(header(&response, "content-type"), "application/json");
        let config: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
        assert_eq!(
            config,
            serde_json::json!({ "scopes": ["posts:read", "users:write"] })
        );
    }

    #[test]
    fn every_module_the_scripts_import_is_served() {
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for line in asset.body.lines().filter(|l| l.starts_with("import ")) {
                let target = line
                    .split('\'')
                    .nth(1)
                    .unwrap_or_else(|| panic!("{}: {line}", asset.name));
                let file = target.trim_start_matches("./");
                assert!(
                    ASSETS.iter().any(|a| a.name == file),
                    "{} imports {target}, which is not served",
                    asset.name
                );
            }
        }
    }
}
