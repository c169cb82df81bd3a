//! URLs that carry passwords: kept whole for connecting, redacted whenever
//! printed, so a password never reaches a log line, an error or `config check`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A URL (or comma-separated URLs) whose passwords never reach a log line:
/// `Display` and `Debug` print `postgres://user:***@host/db`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

pub type DatabaseUrl = SecretUrl;
pub type RedisUrl = SecretUrl;

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        SecretUrl(url.to_owned())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted: Vec<String> = self.0.split(',').map(|u| redact_url(u.trim())).collect();
        f.write_str(&redacted.join(","))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

/// Query parameters that carry a secret (libpq's `password` and `sslpassword`).
const SECRET_QUERY_PARAMETERS: [&str; 2] = ["password", "sslpassword"];

/// `scheme://user:password@host/…?sslpassword=…` →
/// `scheme://user:***@host/…?sslpassword=***`.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "<unparseable URL>".to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let is_secret = |name: &str| {
        SECRET_QUERY_PARAMETERS
            .iter()
            .any(|s| s.eq_ignore_ascii_case(name))
    };
    if url.query_pairs().any(|(name, _)| is_secret(&name)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_secret(&name) {
                    "***".into()
                } else {
                    value
                };
                (name.into_owned(), value.into_owned())
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}
