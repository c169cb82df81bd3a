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

impl Scope {
    /// The scope's text (`*` or `resource:action`) in pieces, so that it can
    /// be written out without building a string (Validate answers with the
    /// key's scopes on every call).
    pub fn text_pieces(&self) -> [&str; 3] {
        if self.resource == "*" && self.action == "*" {
            ["*", "", ""]
        } else {
            [&self.resource, ":", &self.action]
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.text_pieces()
            .into_iter()
            .try_for_each(|piece| f.write_str(piece))
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

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// A literal part (no wildcard), short enough that two fit a scope.
        fn literal() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_.-]{1,20}"
        }

        fn part() -> impl Strategy<Value = String> {
            prop_oneof![1 => Just("*".to_owned()), 3 => literal()]
        }

        fn scope() -> impl Strategy<Value = Scope> {
            (part(), part()).prop_map(|(r, a)| Scope::parse(&format!("{r}:{a}")).unwrap())
        }

        fn literal_scope() -> impl Strategy<Value = Scope> {
            (literal(), literal()).prop_map(|(r, a)| Scope::parse(&format!("{r}:{a}")).unwrap())
        }

        proptest! {
            #[test]
            fn every_scope_prints_as_written_and_parses_back(r in part(), a in part()) {
                let raw = format!("{r}:{a}");
                let parsed = Scope::parse(&raw).unwrap();
                let printed = parsed.to_string();
                if raw != "*:*" {
                    prop_assert_eq!(&printed, &raw);
                }
                prop_assert_eq!(Scope::parse(&printed), Ok(parsed));
            }

            #[test]
            fn whatever_parses_round_trips(raw in "[a-z*:._-]{0,12}|\\PC{0,70}") {
                if let Ok(parsed) = Scope::parse(&raw) {
                    prop_assert_eq!(Scope::parse(&parsed.to_string()), Ok(parsed));
                }
            }

            #[test]
            fn star_covers_every_scope(required in scope()) {
                prop_assert!(Scope::everything().covers(&required));
                prop_assert!(Scope::parse("*:*").unwrap().covers(&required));
            }

            #[test]
            fn every_scope_covers_itself(s in scope()) {
                prop_assert!(s.covers(&s));
            }

            #[test]
            fn a_wildcard_covers_whatever_its_literal_instances_cover(
                grant in literal_scope(),
                required in scope(),
                widen_resource in any::<bool>(),
                widen_action in any::<bool>(),
            ) {
                let (r, a) = grant.parts();
                let wide = Scope::parse(&format!(
                    "{}:{}",
                    if widen_resource { "*" } else { r },
                    if widen_action { "*" } else { a },
                )).unwrap();
                prop_assert!(wide.covers(&grant), "{} covers its instance {}", wide, grant);
                if grant.covers(&required) {
                    prop_assert!(wide.covers(&required), "{} covers {} as {} does", wide, required, grant);
                }
            }

            #[test]
            fn covering_is_transitive(a in scope(), b in scope(), c in scope()) {
                if a.covers(&b) && b.covers(&c) {
                    prop_assert!(a.covers(&c));
                }
            }

            #[test]
            fn a_literal_grant_is_not_fooled_by_prefixes_or_extensions(
                grant in literal_scope(),
                extra in "[A-Za-z0-9_.-]{1,10}",
            ) {
                let (r, a) = grant.parts();
                for near in [
                    format!("{r}:{a}{extra}"),
                    format!("{r}{extra}:{a}"),
                    format!("{extra}{r}:{a}"),
                    format!("{r}:{extra}{a}"),
                ] {
                    if let Ok(near) = Scope::parse(&near) {
                        prop_assert!(!grant.covers(&near), "{} covers {}", grant, near);
                        prop_assert!(!ScopeSet::new(vec![grant.clone()]).grants(&near));
                    }
                }
                if a.len() > 1 {
                    let shorter = Scope::parse(&format!("{r}:{}", &a[..a.len() - 1])).unwrap();
                    prop_assert!(!grant.covers(&shorter), "{} covers {}", grant, shorter);
                }
            }

            #[test]
            fn first_missing_is_the_first_required_scope_no_grant_covers(
                granted in prop::collection::vec(scope(), 0..4),
                required in prop::collection::vec(scope(), 0..4),
            ) {
                let set = ScopeSet::new(granted);
                let expected = required.iter().find(|s| !set.grants(s));
                prop_assert_eq!(set.first_missing(&required), expected);
            }
        }
    }
}
