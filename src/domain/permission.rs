//! What a root key may do: permissions in the scope grammar.
//!
//! A root key holds grants such as `keys:read`, `keys:*`, `*:read` or `*`
//! (wildcards as in API key scopes), plus two bare names for the data plane:
//! `validate` and `ratelimit`, which only themselves or `*` cover.

use std::fmt;

use super::scope::Scope;

/// What one call needs from the root key that authorises it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// GetKey, ListKeys, GetKeyUsage, GetOwnerLimits.
    KeysRead,
    /// CreateKey, UpdateKey, RevokeKey, RotateKey, SetOwnerLimits, ReportLeakedKeys,
    /// ImportKeys.
    KeysWrite,
    /// GetRootKey, ListRootKeys.
    RootKeysRead,
    /// CreateRootKey, RevokeRootKey.
    RootKeysWrite,
    /// ListAuditEvents.
    AuditRead,
    /// Validate, when the server requires a service credential for it.
    Validate,
    /// CheckRateLimit, when the server requires a service credential for it.
    RateLimit,
}

impl Permission {
    pub const ALL: [Permission; 7] = [
        Permission::KeysRead,
        Permission::KeysWrite,
        Permission::RootKeysRead,
        Permission::RootKeysWrite,
        Permission::AuditRead,
        Permission::Validate,
        Permission::RateLimit,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::KeysRead => "keys:read",
            Permission::KeysWrite => "keys:write",
            Permission::RootKeysRead => "root_keys:read",
            Permission::RootKeysWrite => "root_keys:write",
            Permission::AuditRead => "audit:read",
            Permission::Validate => "validate",
            Permission::RateLimit => "ratelimit",
        }
    }

    fn as_grant(self) -> Grant {
        Grant::parse(self.as_str()).unwrap_or(Grant::Bare(self.as_str()))
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bare permission names (no `resource:action`): the data-plane ones.
const BARE: [&str; 2] = ["validate", "ratelimit"];
/// Resources a `resource:action` grant may name when a root key is created.
const RESOURCES: [&str; 4] = ["*", "keys", "root_keys", "audit"];
/// Actions a `resource:action` grant may name when a root key is created.
const ACTIONS: [&str; 3] = ["*", "read", "write"];

/// One granted permission.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Grant {
    Scope(Scope),
    Bare(&'static str),
}

impl Grant {
    /// Any grant apikeyd could have stored (older root keys may hold scopes
    /// that mean nothing today; they simply grant nothing).
    fn parse(raw: &str) -> Option<Grant> {
        if let Some(bare) = BARE.iter().find(|b| **b == raw) {
            return Some(Grant::Bare(bare));
        }
        Scope::parse(raw).ok().map(Grant::Scope)
    }

    /// Whether a root key may be created with this grant: only names that
    /// mean something today, and their wildcards.
    fn is_creatable(&self) -> bool {
        match self {
            Grant::Scope(scope) => {
                let (resource, action) = scope.parts();
                RESOURCES.contains(&resource) && ACTIONS.contains(&action)
            }
            Grant::Bare(_) => true,
        }
    }

    /// Whether a holder of `self` holds `other` too. A wildcard in `other`
    /// is taken literally: only a grant at least as wide covers it.
    fn covers(&self, other: &Grant) -> bool {
        match (self, other) {
            (Grant::Scope(mine), Grant::Scope(theirs)) => mine.covers(theirs),
            (Grant::Scope(mine), Grant::Bare(_)) => mine.is_everything(),
            (Grant::Bare(mine), Grant::Bare(theirs)) => mine == theirs,
            (Grant::Bare(_), Grant::Scope(_)) => false,
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Scope(scope) => scope.fmt(f),
            Grant::Bare(name) => f.write_str(name),
        }
    }
}

/// Why a requested permission cannot be granted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0} is not a permission: use keys:read, keys:write, root_keys:read, root_keys:write, audit:read, validate, ratelimit, or a wildcard such as keys:* or *"
)]
pub struct UnknownPermission(pub String);

/// The permissions of a root key, in the order they were given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PermissionSet(Vec<Grant>);

impl PermissionSet {
    /// Every permission there is: `*`.
    pub fn everything() -> PermissionSet {
        PermissionSet(vec![Grant::Scope(Scope::everything())])
    }

    /// Parses permissions asked for a new root key: only names that mean
    /// something (and their wildcards), duplicates dropped. `quote` renders
    /// a rejected name for the error message (truncated by the caller).
    pub fn parse_requested(
        raw: &[String],
        quote: impl Fn(&str) -> String,
    ) -> Result<PermissionSet, UnknownPermission> {
        let mut grants = Vec::with_capacity(raw.len());
        for name in raw {
            let grant = Grant::parse(name)
                .filter(Grant::is_creatable)
                .ok_or_else(|| UnknownPermission(quote(name)))?;
            if !grants.contains(&grant) {
                grants.push(grant);
            }
        }
        Ok(PermissionSet(grants))
    }

    /// Permissions as stored; `None` when one is not even in the grammar.
    pub fn from_stored(raw: &[String]) -> Option<PermissionSet> {
        raw.iter()
            .map(|name| Grant::parse(name))
            .collect::<Option<Vec<_>>>()
            .map(PermissionSet)
    }

    pub fn allows(&self, permission: Permission) -> bool {
        let needed = permission.as_grant();
        self.0.iter().any(|grant| grant.covers(&needed))
    }

    /// Whether every grant of `other` is covered by one of these: a root key
    /// may only hand out (or revoke) what it holds itself.
    pub fn includes(&self, other: &PermissionSet) -> bool {
        other
            .0
            .iter()
            .all(|theirs| self.0.iter().any(|mine| mine.covers(theirs)))
    }

    /// The first of `other`'s grants these do not cover, for error messages.
    pub fn first_beyond(&self, other: &PermissionSet) -> Option<String> {
        other
            .0
            .iter()
            .find(|theirs| !self.0.iter().any(|mine| mine.covers(theirs)))
            .map(Grant::to_string)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(Grant::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(raw: &[&str]) -> PermissionSet {
        PermissionSet::parse_requested(
            &raw.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            str::to_owned,
        )
        .unwrap()
    }

    #[test]
    fn every_permission_name_is_a_grant_that_allows_itself() {
        for permission in Permission::ALL {
            assert!(
                set(&[permission.as_str()]).allows(permission),
                "{permission}"
            );
            assert!(set(&["*"]).allows(permission), "{permission}");
        }
    }

    #[test]
    fn wildcards_cover_their_resource_or_action_but_not_bare_names() {
        let keys = set(&["keys:*"]);
        assert!(keys.allows(Permission::KeysRead) && keys.allows(Permission::KeysWrite));
        assert!(!keys.allows(Permission::RootKeysRead));
        let readers = set(&["*:read"]);
        assert!(readers.allows(Permission::AuditRead) && readers.allows(Permission::RootKeysRead));
        assert!(!readers.allows(Permission::KeysWrite));
        assert!(!readers.allows(Permission::Validate));
        assert!(!set(&["validate"]).allows(Permission::RateLimit));
    }

    #[test]
    fn a_set_includes_only_what_it_could_grant() {
        assert!(set(&["*"]).includes(&set(&["keys:*", "validate"])));
        assert!(set(&["keys:*"]).includes(&set(&["keys:read", "keys:write"])));
        assert!(!set(&["keys:read"]).includes(&set(&["keys:*"])));
        assert!(!set(&["keys:*"]).includes(&set(&["root_keys:read"])));
        assert!(!set(&["*:read"]).includes(&set(&["*"])));
        assert!(!set(&["keys:*"]).includes(&set(&["ratelimit"])));
        assert_eq!(
            set(&["keys:read"]).first_beyond(&set(&["keys:read", "audit:read"])),
            Some("audit:read".to_owned())
        );
    }

    #[test]
    fn requested_permissions_must_mean_something() {
        for bad in ["posts:read", "keys:delete", "validate:x", "read", ""] {
            assert!(
                PermissionSet::parse_requested(&[bad.to_owned()], str::to_owned).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            set(&["keys:read", "keys:read", "*:*"]).to_strings(),
            ["keys:read", "*"]
        );
    }

    #[test]
    fn stored_permissions_outside_todays_names_still_load_and_grant_nothing() {
        let stored = PermissionSet::from_stored(&["posts:read".to_owned()]).unwrap();
        assert!(Permission::ALL.iter().all(|p| !stored.allows(*p)));
        assert!(PermissionSet::from_stored(&["not a scope".to_owned()]).is_none());
    }
}
