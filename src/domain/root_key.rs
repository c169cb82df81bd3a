//! A root key's record and the rules of who may do what with it: which
//! permissions and owners it reaches, whether it is still live, and what it
//! may hand out or revoke (never more than it holds).

use chrono::{DateTime, Utc};

use super::key_format::KeyId;
use super::owner_scope::OwnerScope;
use super::permission::{Permission, PermissionSet};

/// Everything the authority knows about a root key, but its secret.
#[derive(Clone, Debug, PartialEq)]
pub struct RootKey {
    pub id: KeyId,
    pub name: String,
    pub prefix: String,
    pub permissions: PermissionSet,
    pub owner_scope: OwnerScope,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The root key that created this one; `None` for the bootstrap key and
    /// keys made with the command line.
    pub created_by: Option<KeyId>,
}

/// Why a root key's grant to a new root key would widen what it holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Escalation {
    #[error("it does not hold the permission {0}")]
    Permission(String),
    #[error("the owner scope asked for is not within its own")]
    OwnerScope,
    #[error("the new root key would outlive it (it expires at {0}); set an earlier expiry")]
    Outlives(DateTime<Utc>),
}

impl RootKey {
    /// Why this key can no longer authenticate at `now`, if it cannot.
    pub fn refusal(&self, now: DateTime<Utc>) -> Option<&'static str> {
        if self.revoked_at.is_some_and(|at| at <= now) {
            Some("this root key has been revoked")
        } else if self.expires_at.is_some_and(|at| at <= now) {
            Some("this root key has expired; ask for a new one")
        } else {
            None
        }
    }

    pub fn allows(&self, permission: Permission) -> bool {
        self.permissions.allows(permission)
    }

    pub fn reaches_owner(&self, owner_id: &str) -> bool {
        self.owner_scope.covers(owner_id)
    }

    /// Whether this key reaches every owner and holds every permission: only
    /// such a key may learn that an id it cannot act on does not exist.
    pub fn oversees_everything(&self) -> bool {
        self.owner_scope == OwnerScope::All
            && self.permissions.includes(&PermissionSet::everything())
    }

    /// Checks that a root key with these settings would hold nothing this
    /// key does not (permissions, owners, lifetime).
    pub fn may_mint(
        &self,
        permissions: &PermissionSet,
        owner_scope: &OwnerScope,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), Escalation> {
        if let Some(beyond) = self.permissions.first_beyond(permissions) {
            return Err(Escalation::Permission(beyond));
        }
        if !self.owner_scope.includes(owner_scope) {
            return Err(Escalation::OwnerScope);
        }
        if let Some(mine) = self.expires_at {
            if expires_at.is_none_or(|theirs| theirs > mine) {
                return Err(Escalation::Outlives(mine));
            }
        }
        Ok(())
    }

    /// Whether `other` holds nothing this key does not: such a root key is
    /// one this key may see and revoke.
    pub fn oversees(&self, other: &RootKey) -> bool {
        self.permissions.includes(&other.permissions)
            && self.owner_scope.includes(&other.owner_scope)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn root_key(permissions: &[&str], scope: &[&str]) -> RootKey {
        let strings = |raw: &[&str]| raw.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        RootKey {
            id: KeyId::parse("0123456789abcdef").unwrap(),
            name: "ops".to_owned(),
            prefix: "rk_0123456789abcdef".to_owned(),
            permissions: PermissionSet::parse_requested(&strings(permissions), str::to_owned)
                .unwrap(),
            owner_scope: OwnerScope::parse(&strings(scope), str::to_owned).unwrap(),
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
            created_by: None,
        }
    }

    #[test]
    fn revoked_and_expired_keys_are_refused_from_that_instant() {
        let now = Utc::now();
        let mut key = root_key(&["*"], &[]);
        assert_eq!(key.refusal(now), None);
        key.expires_at = Some(now + Duration::seconds(1));
        assert_eq!(key.refusal(now), None);
        key.expires_at = Some(now);
        assert!(key.refusal(now).unwrap().contains("expired"));
        key.revoked_at = Some(now);
        assert!(key.refusal(now).unwrap().contains("revoked"));
    }

    #[test]
    fn a_key_mints_only_within_its_permissions_owners_and_lifetime() {
        let billing = root_key(&["keys:*", "root_keys:write"], &["tenant-*"]);
        let scoped = |s: &[&str]| root_key(&["keys:read"], s).owner_scope;
        let perms = |p: &[&str]| root_key(p, &[]).permissions;

        assert_eq!(
            billing.may_mint(&perms(&["keys:read"]), &scoped(&["tenant-7"]), None),
            Ok(())
        );
        assert_eq!(
            billing.may_mint(&perms(&["*"]), &scoped(&["tenant-7"]), None),
            Err(Escalation::Permission("*".to_owned()))
        );
        assert_eq!(
            billing.may_mint(&perms(&["keys:read"]), &OwnerScope::All, None),
            Err(Escalation::OwnerScope)
        );
        assert_eq!(
            billing.may_mint(&perms(&["keys:read"]), &scoped(&["other"]), None),
            Err(Escalation::OwnerScope)
        );

        let mut expiring = billing.clone();
        let end = Utc::now() + Duration::days(1);
        expiring.expires_at = Some(end);
        let scope = scoped(&["tenant-7"]);
        assert_eq!(
            expiring.may_mint(&perms(&["keys:read"]), &scope, None),
            Err(Escalation::Outlives(end))
        );
        assert!(
            expiring
                .may_mint(
                    &perms(&["keys:read"]),
                    &scope,
                    Some(end + Duration::seconds(1))
                )
                .is_err()
        );
        assert_eq!(
            expiring.may_mint(&perms(&["keys:read"]), &scope, Some(end)),
            Ok(())
        );
    }

    #[test]
    fn a_key_oversees_only_keys_no_wider_than_itself() {
        let admin = root_key(&["*"], &[]);
        let billing = root_key(&["keys:*"], &["tenant-*"]);
        let reader = root_key(&["keys:read"], &["tenant-7"]);
        assert!(admin.oversees(&billing) && billing.oversees(&reader));
        assert!(!reader.oversees(&billing) && !billing.oversees(&admin));
        assert!(admin.oversees_everything());
        assert!(!billing.oversees_everything());
        assert!(!root_key(&["keys:*", "root_keys:*", "audit:*"], &[]).oversees_everything());
    }
}
