//! An API key's record and the rules that decide whether it validates.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::key_format::{KeyId, KeyKind};
use super::limit::LimitSource;
use super::quota::Quota;
use super::scope::{Scope, ScopeSet};

/// Which traffic a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Live,
    Test,
}

impl Environment {
    pub fn key_kind(self) -> KeyKind {
        match self {
            Environment::Live => KeyKind::Live,
            Environment::Test => KeyKind::Test,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    pub fn parse(stored: &str) -> Option<Environment> {
        match stored {
            "live" => Some(Environment::Live),
            "test" => Some(Environment::Test),
            _ => None,
        }
    }
}

/// Everything the authority knows about a key, but its secret (which it never has).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    pub id: KeyId,
    pub owner_id: String,
    pub name: String,
    pub prefix: String,
    pub scopes: ScopeSet,
    pub environment: Environment,
    pub metadata: BTreeMap<String, String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// A tier or the key's own limits.
    pub limits: LimitSource,
    /// `None` for unlimited uses. Its `remaining` is the live balance when
    /// the limiter could be asked, else the balance last set.
    pub quota: Option<Quota>,
}

/// The answer to "is this key good for this request?".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValidationCode {
    Valid,
    Malformed,
    NotFound,
    Revoked,
    Disabled,
    Expired,
    InsufficientScope,
    RateLimited,
    UsageExceeded,
}

impl ValidationCode {
    /// Every code, in declaration order: `code as usize` is its index.
    pub const ALL: [ValidationCode; 9] = [
        ValidationCode::Valid,
        ValidationCode::Malformed,
        ValidationCode::NotFound,
        ValidationCode::Revoked,
        ValidationCode::Disabled,
        ValidationCode::Expired,
        ValidationCode::InsufficientScope,
        ValidationCode::RateLimited,
        ValidationCode::UsageExceeded,
    ];
}

impl ValidationCode {
    /// The sentence a caller may pass on to its own client.
    pub fn message(self) -> &'static str {
        match self {
            ValidationCode::Valid => "API key is valid",
            ValidationCode::Malformed => "Invalid key format",
            ValidationCode::NotFound => "Invalid API key",
            ValidationCode::Revoked => "API key has been revoked",
            ValidationCode::Disabled => "API key is disabled",
            ValidationCode::Expired => "API key has expired",
            ValidationCode::InsufficientScope => "Insufficient permissions",
            ValidationCode::RateLimited => "Rate limit exceeded",
            ValidationCode::UsageExceeded => "Usage quota exhausted",
        }
    }

    /// The stable name usage counters are stored under.
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationCode::Valid => "valid",
            ValidationCode::Malformed => "malformed",
            ValidationCode::NotFound => "not_found",
            ValidationCode::Revoked => "revoked",
            ValidationCode::Disabled => "disabled",
            ValidationCode::Expired => "expired",
            ValidationCode::InsufficientScope => "insufficient_scope",
            ValidationCode::RateLimited => "rate_limited",
            ValidationCode::UsageExceeded => "usage_exceeded",
        }
    }

    pub fn from_name(name: &str) -> Option<ValidationCode> {
        Self::ALL.into_iter().find(|code| code.as_str() == name)
    }
}

impl ApiKey {
    /// Whether the key is revoked at `now`. A revocation time in the future is
    /// the end of a rotation's grace period: until then the key still works.
    pub fn is_revoked_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_some_and(|at| at <= now)
    }

    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The checks that follow a successful lookup, in the documented order:
    /// revoked, disabled, expired, scopes.
    pub fn judge(&self, now: DateTime<Utc>, required: &[Scope]) -> ValidationCode {
        if self.is_revoked_at(now) {
            ValidationCode::Revoked
        } else if !self.enabled {
            ValidationCode::Disabled
        } else if self.is_expired_at(now) {
            ValidationCode::Expired
        } else if self.scopes.first_missing(required).is_some() {
            ValidationCode::InsufficientScope
        } else {
            ValidationCode::Valid
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn key(scopes: &[&str]) -> ApiKey {
        let now = Utc::now();
        ApiKey {
            id: KeyId::parse("0123456789abcdef").unwrap(),
            owner_id: "user_1".into(),
            name: "test".into(),
            prefix: "sk_live_0123456789abcdef".into(),
            scopes: ScopeSet::new(scopes.iter().map(|s| Scope::parse(s).unwrap()).collect()),
            environment: Environment::Live,
            metadata: BTreeMap::new(),
            enabled: true,
            created_at: now,
            updated_at: now,
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
            limits: LimitSource::Tier("free".into()),
            quota: None,
        }
    }

    fn need(raw: &str) -> Vec<Scope> {
        vec![Scope::parse(raw).unwrap()]
    }

    #[test]
    fn a_good_key_with_the_scope_is_valid() {
        assert_eq!(
            key(&["posts:read"]).judge(Utc::now(), &need("posts:read")),
            ValidationCode::Valid
        );
    }

    #[test]
    fn revocation_wins_over_every_later_check() {
        let now = Utc::now();
        let mut k = key(&[]);
        k.revoked_at = Some(now - Duration::seconds(1));
        k.enabled = false;
        k.expires_at = Some(now - Duration::days(1));
        assert_eq!(k.judge(now, &need("posts:read")), ValidationCode::Revoked);
    }

    #[test]
    fn a_key_in_its_rotation_grace_period_still_validates() {
        let now = Utc::now();
        let mut k = key(&["*"]);
        k.revoked_at = Some(now + Duration::hours(1));
        assert_eq!(k.judge(now, &[]), ValidationCode::Valid);
        assert_eq!(
            k.judge(now + Duration::hours(2), &[]),
            ValidationCode::Revoked
        );
    }

    #[test]
    fn disabled_comes_before_expired() {
        let now = Utc::now();
        let mut k = key(&["*"]);
        k.enabled = false;
        k.expires_at = Some(now - Duration::days(1));
        assert_eq!(k.judge(now, &[]), ValidationCode::Disabled);
        k.enabled = true;
        assert_eq!(k.judge(now, &[]), ValidationCode::Expired);
    }

    #[test]
    fn expiry_is_exclusive_of_the_expiry_instant() {
        let now = Utc::now();
        let mut k = key(&["*"]);
        k.expires_at = Some(now);
        assert_eq!(
            k.judge(now - Duration::milliseconds(1), &[]),
            ValidationCode::Valid
        );
        assert_eq!(k.judge(now, &[]), ValidationCode::Expired);
    }

    #[test]
    fn every_code_sits_at_its_own_index() {
        for (index, code) in ValidationCode::ALL.into_iter().enumerate() {
            assert_eq!(code as usize, index, "{code:?}");
        }
    }

    #[test]
    fn stored_code_names_round_trip() {
        for code in ValidationCode::ALL {
            assert_eq!(ValidationCode::from_name(code.as_str()), Some(code));
        }
    }

    #[test]
    fn a_missing_scope_is_the_last_check() {
        assert_eq!(
            key(&["posts:read"]).judge(Utc::now(), &need("posts:write")),
            ValidationCode::InsufficientScope
        );
    }
}
