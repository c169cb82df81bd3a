//! Scopes: what a key may do, as `resource:action` strings.
//!
//! A grant may be `*` (everything), `resource:*` (every action on one
//! resource) or `*:action` (one action on every resource). A request's
//! required scopes are all checked; each must be covered by some grant.

use std::fmt;
use std::sync::Arc;

/// The longest scope accepted.
pub const MAX_SCOPE_LEN: usize = 64;

/// One parsed scope: `*`, or a resource and an action, either of which may be `*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    resource: String,
    action: String,
}

/// Why a string is not a scope.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidScope {
    #[error("scope is empty")]
    Empty,
    /// The scope as quoted in the message (truncated).
    #[error("scope {0} is longer than {MAX_SCOPE_LEN} characters")]
    TooLong(String),
    #[error(
        "scope {0} is not `resource:action` (letters, digits, `_`, `-`, `.`, or `*` for either part)"
    )]
    BadGrammar(String),
}

impl Scope {
    pub fn parse(raw: &str) -> Result<Scope, InvalidScope> {
        if raw.is_empty() {
            return Err(InvalidScope::Empty);
        }
        if raw.len() > MAX_SCOPE_LEN {
            return Err(InvalidScope::TooLong(super::quote(raw)));
        }
        if raw == "*" {
            return Ok(Scope::everything());
        }
        let bad = || InvalidScope::BadGrammar(super::quote(raw));
        let (resource, action) = raw.split_once(':').ok_or_else(bad)?;
        if !is_part(resource) || !is_part(action) {
            return Err(bad());
        }
        Ok(Scope {
            resource: resource.to_owned(),
            action: action.to_owned(),
        })
    }

    /// `*`: every action on every resource.
    pub fn everything() -> Scope {
        Scope {
            resource: "*".to_owned(),
            action: "*".to_owned(),
        }
    }

    pub fn is_everything(&self) -> bool {
        self.resource == "*" && self.action == "*"
    }

    /// The resource and the action (`*` for every one).
    pub fn parts(&self) -> (&str, &str) {
        (&self.resource, &self.action)
    }

    /// Whether this grant covers `required`. A wildcard in `required` is taken
    /// literally: only a grant at least as wide covers it.
    pub fn covers(&self, required: &Scope) -> bool {
        (self.resource == "*" || self.resource == required.resource)
            && (self.action == "*" || self.action == required.action)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.resource == "*" && self.action == "*" {
            f.write_str("*")
        } else {
            write!(f, "{}:{}", self.resource, self.action)
        }
    }
}

fn is_part(part: &str) -> bool {
    part == "*"
        || (!part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
}

/// The scopes granted to a key, in the order they were given. Shared, not
/// copied: a clone is a reference count, and the key cache keeps one copy of
/// each distinct set however many keys hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(Arc<[Scope]>);

impl ScopeSet {
    pub fn new(scopes: Vec<Scope>) -> Self {
        ScopeSet(scopes.into())
    }

    /// The first required scope that no grant covers, if any.
    pub fn first_missing<'a>(&self, required: &'a [Scope]) -> Option<&'a Scope> {
        required
            .iter()
            .find(|needed| !self.0.iter().any(|grant| grant.covers(needed)))
    }

    pub fn grants(&self, required: &Scope) -> bool {
        self.0.iter().any(|grant| grant.covers(required))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(Scope::to_string).collect()
    }

    /// Whether both are the one shared copy (not merely equal).
    pub fn is_shared_with(&self, other: &ScopeSet) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(raw: &[&str]) -> ScopeSet {
        ScopeSet::new(raw.iter().map(|s| Scope::parse(s).unwrap()).collect())
    }

    fn required(raw: &[&str]) -> Vec<Scope> {
        raw.iter().map(|s| Scope::parse(s).unwrap()).collect()
    }

    #[test]
    fn exact_grant_covers_the_same_scope_only() {
        let granted = scopes(&["read:posts"]);
        assert!(granted.first_missing(&required(&["read:posts"])).is_none());
        assert!(granted.first_missing(&required(&["write:posts"])).is_some());
    }

    #[test]
    fn star_covers_everything() {
        let granted = scopes(&["*"]);
        assert!(
            granted
                .first_missing(&required(&["read:posts", "admin:delete", "x:*"]))
                .is_none()
        );
    }

    #[test]
    fn resource_wildcard_covers_every_action_on_that_resource() {
        let granted = scopes(&["posts:*"]);
        assert!(granted.grants(&Scope::parse("posts:read").unwrap()));
        assert!(granted.grants(&Scope::parse("posts:delete").unwrap()));
        assert!(!granted.grants(&Scope::parse("users:read").unwrap()));
    }

    #[test]
    fn action_wildcard_covers_that_action_on_every_resource() {
        let granted = scopes(&["*:read"]);
        assert!(granted.grants(&Scope::parse("posts:read").unwrap()));
        assert!(granted.grants(&Scope::parse("users:read").unwrap()));
        assert!(!granted.grants(&Scope::parse("posts:write").unwrap()));
    }

    #[test]
    fn every_required_scope_must_be_granted() {
        let granted = scopes(&["posts:read", "users:read"]);
        let needed = required(&["posts:read", "users:write"]);
        let missing = granted.first_missing(&needed);
        assert_eq!(
            missing.map(Scope::to_string),
            Some("users:write".to_owned())
        );
    }

    #[test]
    fn a_narrow_grant_does_not_cover_a_wildcard_requirement() {
        let granted = scopes(&["posts:read"]);
        assert!(!granted.grants(&Scope::parse("posts:*").unwrap()));
    }

    #[test]
    fn no_required_scopes_means_nothing_is_missing() {
        assert!(scopes(&[]).first_missing(&[]).is_none());
    }

    #[test]
    fn grammar_is_enforced() {
        assert_eq!(Scope::parse(""), Err(InvalidScope::Empty));
        for bad in [
            "read",
            "read:",
            ":posts",
            "a:b:c",
            "read posts",
            "read:po$ts",
        ] {
            assert!(
                matches!(Scope::parse(bad), Err(InvalidScope::BadGrammar(_))),
                "{bad}"
            );
        }
        let long = format!("posts:{}", "r".repeat(MAX_SCOPE_LEN));
        assert!(matches!(Scope::parse(&long), Err(InvalidScope::TooLong(_))));
        for good in ["*", "*:*", "posts:*", "*:read", "billing.v2:read-only"] {
            assert!(Scope::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn scopes_print_as_they_were_written() {
        assert_eq!(Scope::parse("*").unwrap().to_string(), "*");
        assert_eq!(Scope::parse("*:*").unwrap().to_string(), "*");
        assert_eq!(
            Scope::parse("posts:read").unwrap().to_string(),
            "posts:read"
        );
    }
}
