//! The settings a caller gives a key, parsed once at the edge so that the
//! rest of the code only ever sees values that are within bounds.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use super::owner_scope::MAX_OWNER_ID_LEN;
use super::owner_scope::OwnerScope;
use super::permission::PermissionSet;
use super::scope::{Scope, ScopeSet};
use crate::error::{Error, Result};

pub const MAX_NAME_LEN: usize = 100;
pub const MAX_SCOPES: usize = 50;
pub const MAX_METADATA_ENTRIES: usize = 50;
pub const MAX_METADATA_BYTES: usize = 4096;
pub const MAX_EXPIRY_DAYS: u32 = 365;
/// The most permissions one root key may be given.
pub const MAX_PERMISSIONS: usize = 50;

/// Length in characters, not bytes: limits are stated to people.
fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Refuses a NUL character in a string that is stored: PostgreSQL's text
/// cannot hold one (the write would fail as an internal error) while SQLite
/// would keep it, and no owner, name or metadata means one.
fn refuse_nul(field: &'static str, raw: &str) -> Result<()> {
    if raw.contains('\0') {
        return Err(Error::invalid(
            field,
            "must not contain a NUL character (\\0)",
        ));
    }
    Ok(())
}

pub fn parse_owner_id(raw: &str) -> Result<String> {
    refuse_nul("owner_id", raw)?;
    let len = chars(raw);
    if len == 0 || len > MAX_OWNER_ID_LEN {
        return Err(Error::invalid(
            "owner_id",
            format!("must be 1 to {MAX_OWNER_ID_LEN} characters (got {len})"),
        ));
    }
    Ok(raw.to_owned())
}

pub fn parse_name(raw: &str) -> Result<String> {
    refuse_nul("name", raw)?;
    let len = chars(raw.trim());
    if len == 0 || chars(raw) > MAX_NAME_LEN {
        return Err(Error::invalid(
            "name",
            format!("must be 1 to {MAX_NAME_LEN} characters and not blank (got {len})"),
        ));
    }
    Ok(raw.to_owned())
}

/// Parses a list of scopes, naming the field (`scopes`, `required_scopes`) in
/// the error. `at_least_one` is false where an empty list means "nothing".
pub fn parse_scopes(field: &'static str, raw: &[String], at_least_one: bool) -> Result<Vec<Scope>> {
    if raw.len() > MAX_SCOPES {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_SCOPES} scopes (got {})", raw.len()),
        ));
    }
    if at_least_one && raw.is_empty() {
        return Err(Error::invalid(
            field,
            "at least one scope is needed, e.g. \"posts:read\" (or \"*\" for everything)",
        ));
    }
    let mut parsed: Vec<Scope> = Vec::with_capacity(raw.len());
    for s in raw {
        let scope = Scope::parse(s).map_err(|e| Error::invalid(field, e.to_string()))?;
        if !parsed.contains(&scope) {
            parsed.push(scope);
        }
    }
    Ok(parsed)
}

pub fn parse_granted_scopes(raw: &[String]) -> Result<ScopeSet> {
    parse_scopes("scopes", raw, true).map(ScopeSet::new)
}

/// A root key's permissions: 1 to 50 that mean something (see
/// [`super::permission`]), naming `field` in the error.
pub fn parse_permissions(field: &'static str, raw: &[String]) -> Result<PermissionSet> {
    if raw.is_empty() || raw.len() > MAX_PERMISSIONS {
        return Err(Error::invalid(
            field,
            format!(
                "1 to {MAX_PERMISSIONS} permissions, e.g. \"keys:read\" (got {})",
                raw.len()
            ),
        ));
    }
    PermissionSet::parse_requested(raw, super::quote)
        .map_err(|e| Error::invalid(field, e.to_string()))
}

/// A root key's owner scope (see [`super::owner_scope`]); empty for every owner.
pub fn parse_owner_scope(field: &'static str, raw: &[String]) -> Result<OwnerScope> {
    OwnerScope::parse(raw, super::quote).map_err(|e| Error::invalid(field, e.to_string()))
}

pub fn parse_metadata(
    field: &'static str,
    raw: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>> {
    let metadata: BTreeMap<String, String> = raw.into_iter().collect();
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid(
            field,
            format!(
                "at most {MAX_METADATA_ENTRIES} entries (got {})",
                metadata.len()
            ),
        ));
    }
    if metadata.keys().any(|k| k.is_empty()) {
        return Err(Error::invalid(field, "keys must not be empty"));
    }
    for (key, value) in &metadata {
        refuse_nul(field, key)?;
        refuse_nul(field, value)?;
    }
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(Error::invalid(
            field,
            format!(
                "keys and values may hold at most {MAX_METADATA_BYTES} bytes in all (got {bytes})"
            ),
        ));
    }
    Ok(metadata)
}

/// Checks a key lifetime in days; the expiry instant is fixed when the key
/// is written, from the same clock reading as its `created_at`.
pub fn parse_expiry_days(field: &'static str, days: u32) -> Result<u32> {
    if days == 0 || days > MAX_EXPIRY_DAYS {
        return Err(Error::invalid(
            field,
            format!(
                "must be 1 to {MAX_EXPIRY_DAYS} days (got {days}); leave it unset for a key that never expires"
            ),
        ));
    }
    Ok(days)
}

/// A change to a key's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryChange {
    /// Expires this many days (already checked) after the change is written.
    InDays(u32),
    Never,
}

impl ExpiryChange {
    pub fn expires_at(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            ExpiryChange::InDays(days) => Some(now + Duration::days(i64::from(days))),
            ExpiryChange::Never => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_present_and_short() {
        assert!(parse_name("Production").is_ok());
        assert!(parse_name("").is_err());
        assert!(parse_name("   ").is_err());
        assert!(parse_name(&"é".repeat(100)).is_ok());
        assert!(parse_name(&"n".repeat(101)).is_err());
    }

    #[test]
    fn a_nul_character_is_refused_in_every_stored_string() {
        assert!(parse_owner_id("user\0").is_err());
        assert!(parse_name("Prod\0uction").is_err());
        let entry = |k: &str, v: &str| [(k.to_owned(), v.to_owned())];
        assert!(parse_metadata("metadata", entry("k\0", "v")).is_err());
        assert!(parse_metadata("metadata", entry("k", "\0")).is_err());
        assert!(parse_owner_scope("owner_scope", &["team\0*".to_owned()]).is_err());
        assert!(parse_metadata("metadata", entry("k", "\\0 is fine")).is_ok());
    }

    #[test]
    fn owner_ids_are_bounded() {
        assert!(parse_owner_id("user_1").is_ok());
        assert!(parse_owner_id("").is_err());
        assert!(parse_owner_id(&"o".repeat(129)).is_err());
    }

    #[test]
    fn scopes_are_required_bounded_and_deduplicated() {
        let raw = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parse_granted_scopes(&raw(&[])).is_err());
        assert_eq!(
            parse_granted_scopes(&raw(&["a:b", "a:b"]))
                .unwrap()
                .iter()
                .count(),
            1
        );
        let many: Vec<String> = (0..51).map(|i| format!("r{i}:read")).collect();
        let err = parse_granted_scopes(&many).unwrap_err().to_string();
        assert!(err.starts_with("scopes:"), "{err}");
        let err = parse_granted_scopes(&raw(&["read"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"read\""), "{err}");
    }

    #[test]
    fn metadata_is_bounded_in_entries_and_bytes() {
        let entries =
            |n: usize, size: usize| (0..n).map(move |i| (format!("k{i}"), "v".repeat(size)));
        assert!(parse_metadata("metadata", entries(50, 10)).is_ok());
        assert!(parse_metadata("metadata", entries(51, 1)).is_err());
        assert!(parse_metadata("metadata", entries(2, 3000)).is_err());
        assert!(parse_metadata("metadata", [(String::new(), "v".to_owned())]).is_err());
    }

    #[test]
    fn expiry_is_one_to_365_days() {
        assert_eq!(parse_expiry_days("expires_in_days", 30).unwrap(), 30);
        assert_eq!(parse_expiry_days("expires_in_days", 365).unwrap(), 365);
        assert!(parse_expiry_days("expires_in_days", 0).is_err());
        assert!(parse_expiry_days("expires_in_days", 366).is_err());
    }

    #[test]
    fn an_expiry_change_counts_days_from_the_write() {
        let now = Utc::now();
        assert_eq!(
            ExpiryChange::InDays(30).expires_at(now),
            Some(now + Duration::days(30))
        );
        assert_eq!(ExpiryChange::Never.expires_at(now), None);
    }
}
