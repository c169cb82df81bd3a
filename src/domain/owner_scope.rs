//! Which owners' keys a root key may see and change.
//!
//! A scope is a list of patterns: `tenant-42` is that owner exactly, and
//! `tenant-*` (a trailing `*`) every owner id that starts with `tenant-`.
//! A root key without a scope reaches every owner. A `*` anywhere but at the
//! end is refused, so an owner id ending in `*` can only be reached through a
//! prefix (or by an unscoped root key).

use std::fmt;

/// The longest owner id, in characters: an owner scope's patterns share it.
pub const MAX_OWNER_ID_LEN: usize = 128;

/// The most patterns one root key may hold.
pub const MAX_OWNER_PATTERNS: usize = 50;

/// One entry of an owner scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerPattern {
    /// This owner id.
    Exact(String),
    /// Every owner id starting with this (non-empty) text.
    Prefix(String),
}

impl OwnerPattern {
    fn matches(&self, owner_id: &str) -> bool {
        match self {
            OwnerPattern::Exact(id) => id == owner_id,
            OwnerPattern::Prefix(prefix) => owner_id.starts_with(prefix.as_str()),
        }
    }

    /// Whether every owner `other` matches, this one matches too.
    fn covers(&self, other: &OwnerPattern) -> bool {
        match (self, other) {
            (OwnerPattern::Exact(mine), OwnerPattern::Exact(theirs)) => mine == theirs,
            (OwnerPattern::Exact(_), OwnerPattern::Prefix(_)) => false,
            (
                OwnerPattern::Prefix(mine),
                OwnerPattern::Exact(theirs) | OwnerPattern::Prefix(theirs),
            ) => theirs.starts_with(mine.as_str()),
        }
    }
}

impl fmt::Display for OwnerPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OwnerPattern::Exact(id) => f.write_str(id),
            OwnerPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// The owners a root key reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerScope {
    /// Every owner: a root key with no scope.
    All,
    /// Owners matching at least one pattern (never an empty list).
    Only(Vec<OwnerPattern>),
}

/// Why a requested owner scope is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOwnerScope {
    #[error("at most {MAX_OWNER_PATTERNS} entries (got {0})")]
    TooMany(usize),
    #[error(
        "entry {0} must be an owner id (1 to {MAX_OWNER_ID_LEN} characters) or a prefix ending in a single `*`, such as tenant-*"
    )]
    BadPattern(String),
}

impl OwnerScope {
    /// An empty list is no scope at all (every owner). `quote` renders a
    /// rejected entry for the error message.
    pub fn parse(
        raw: &[String],
        quote: impl Fn(&str) -> String,
    ) -> Result<OwnerScope, InvalidOwnerScope> {
        if raw.is_empty() {
            return Ok(OwnerScope::All);
        }
        if raw.len() > MAX_OWNER_PATTERNS {
            return Err(InvalidOwnerScope::TooMany(raw.len()));
        }
        let mut patterns: Vec<OwnerPattern> = Vec::with_capacity(raw.len());
        for entry in raw {
            let bad = || InvalidOwnerScope::BadPattern(quote(entry));
            let len = entry.chars().count();
            // No NUL: PostgreSQL's text cannot store one (see key_settings).
            if len == 0 || len > MAX_OWNER_ID_LEN || entry.contains('\0') {
                return Err(bad());
            }
            let pattern = match entry.strip_suffix('*') {
                Some(prefix) if !prefix.is_empty() && !prefix.contains('*') => {
                    OwnerPattern::Prefix(prefix.to_owned())
                }
                Some(_) => return Err(bad()),
                None if entry.contains('*') => return Err(bad()),
                None => OwnerPattern::Exact(entry.clone()),
            };
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        }
        Ok(OwnerScope::Only(patterns))
    }

    /// A scope as stored: `None` (SQL NULL) is every owner.
    pub fn from_stored(raw: Option<&[String]>) -> Option<OwnerScope> {
        match raw {
            None => Some(OwnerScope::All),
            Some(list) => match OwnerScope::parse(list, str::to_owned) {
                Ok(OwnerScope::All) => None,
                Ok(scope) => Some(scope),
                Err(_) => None,
            },
        }
    }

    /// What to store: `None` for every owner.
    pub fn to_stored(&self) -> Option<Vec<String>> {
        match self {
            OwnerScope::All => None,
            OwnerScope::Only(_) => Some(self.to_strings()),
        }
    }

    pub fn covers(&self, owner_id: &str) -> bool {
        match self {
            OwnerScope::All => true,
            OwnerScope::Only(patterns) => patterns.iter().any(|p| p.matches(owner_id)),
        }
    }

    /// Whether every owner `other` reaches, this scope reaches too: a root
    /// key may only hand out (or revoke) a scope within its own.
    pub fn includes(&self, other: &OwnerScope) -> bool {
        match (self, other) {
            (OwnerScope::All, _) => true,
            (OwnerScope::Only(_), OwnerScope::All) => false,
            (OwnerScope::Only(mine), OwnerScope::Only(theirs)) => {
                theirs.iter().all(|t| mine.iter().any(|m| m.covers(t)))
            }
        }
    }

    pub fn patterns(&self) -> &[OwnerPattern] {
        match self {
            OwnerScope::All => &[],
            OwnerScope::Only(patterns) => patterns,
        }
    }

    /// The patterns as written; empty for every owner.
    pub fn to_strings(&self) -> Vec<String> {
        self.patterns()
            .iter()
            .map(OwnerPattern::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(raw: &[&str]) -> OwnerScope {
        OwnerScope::parse(
            &raw.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            str::to_owned,
        )
        .unwrap()
    }

    #[test]
    fn exact_entries_match_one_owner_and_prefixes_their_owners() {
        let s = scope(&["tenant-42", "acme-*"]);
        assert!(s.covers("tenant-42"));
        assert!(!s.covers("tenant-420"));
        assert!(!s.covers("TENANT-42"));
        assert!(s.covers("acme-"));
        assert!(s.covers("acme-billing"));
        assert!(!s.covers("acm"));
        assert!(!s.covers("xacme-1"));
        assert!(scope(&[]).covers("anyone"));
    }

    #[test]
    fn a_scope_includes_only_narrower_scopes() {
        let tenants = scope(&["tenant-*"]);
        assert!(tenants.includes(&scope(&["tenant-4*", "tenant-7"])));
        assert!(!tenants.includes(&scope(&["tenant*"])));
        assert!(!tenants.includes(&scope(&["other"])));
        assert!(!tenants.includes(&OwnerScope::All));
        assert!(!scope(&["tenant-7"]).includes(&scope(&["tenant-7*"])));
        assert!(scope(&["tenant-7"]).includes(&scope(&["tenant-7"])));
        assert!(OwnerScope::All.includes(&tenants));
    }

    #[test]
    fn stars_are_only_a_trailing_prefix_mark() {
        for bad in ["*", "a*b", "a**", "*a", ""] {
            assert!(
                OwnerScope::parse(&[bad.to_owned()], str::to_owned).is_err(),
                "{bad}"
            );
        }
        let long = "o".repeat(MAX_OWNER_ID_LEN + 1);
        assert!(OwnerScope::parse(&[long], str::to_owned).is_err());
        let many: Vec<String> = (0..=MAX_OWNER_PATTERNS).map(|i| format!("t{i}")).collect();
        assert_eq!(
            OwnerScope::parse(&many, str::to_owned),
            Err(InvalidOwnerScope::TooMany(MAX_OWNER_PATTERNS + 1))
        );
    }

    #[test]
    fn scopes_round_trip_through_storage() {
        let s = scope(&["tenant-42", "acme-*", "tenant-42"]);
        assert_eq!(s.to_strings(), ["tenant-42", "acme-*"]);
        assert_eq!(OwnerScope::from_stored(s.to_stored().as_deref()), Some(s));
        assert_eq!(OwnerScope::from_stored(None), Some(OwnerScope::All));
        assert_eq!(OwnerScope::from_stored(Some(&[])), None);
    }
}
