//! Importing keys from another store: what a source says about each key,
//! the checks it must pass (the same bounds a created key has, but for the
//! instants it already has), and what an import reports.
//!
//! Every source (the seed's tables, a JSON Lines file, the `ImportKeys`
//! RPC) turns its rows into [`ImportRecord`]s; [`ImportedKey::parse`]
//! refuses a row with the reason a person can act on, never the batch.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;

use super::api_key::{Environment, ValidationCode};
use super::key_settings;
use super::legacy_key::LegacyDigest;
use super::scope::ScopeSet;
use crate::error::{Error, Result};

/// The longest display prefix an imported key may bring (the seed's is 12).
pub const MAX_IMPORTED_PREFIX_LEN: usize = 32;

/// A key as its source describes it, before any check. Also the schema of
/// one line of `apikeyd import --from-jsonl` (unknown fields are refused, so
/// that a misspelt `expires_at` cannot make a key live forever).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    /// Hex SHA-256 of the whole key.
    pub sha256: String,
    pub owner_id: String,
    pub name: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Shown in listings; the key's first characters, as the source showed them.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `live` or `test`; by default `test` for a prefix starting `sk_test_`.
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// A configured tier; checked by the authority, which knows the tiers.
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key that passed every check, ready to be written.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedKey {
    pub digest: LegacyDigest,
    pub owner_id: String,
    pub name: String,
    pub scopes: ScopeSet,
    pub prefix: String,
    pub environment: Environment,
    pub enabled: bool,
    pub metadata: BTreeMap<String, String>,
    pub tier: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ImportedKey {
    /// The bounds of CreateKey (owner, name, scopes, metadata), except that
    /// a key may come with no scope and with any expiry it already had.
    pub fn parse(record: ImportRecord) -> Result<ImportedKey> {
        let digest = LegacyDigest::parse_hex(record.sha256.trim()).ok_or_else(|| {
            Error::invalid(
                "sha256",
                "must be the 64 hex digits of the SHA-256 of the whole key",
            )
        })?;
        let prefix = record.prefix.unwrap_or_default();
        if prefix.chars().count() > MAX_IMPORTED_PREFIX_LEN
            || prefix.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Error::invalid(
                "prefix",
                format!(
                    "at most {MAX_IMPORTED_PREFIX_LEN} characters without spaces: it is shown in listings, so never the whole key"
                ),
            ));
        }
        let environment = match record.environment.as_deref() {
            None | Some("") if prefix.starts_with("sk_test_") => Environment::Test,
            None | Some("") => Environment::Live,
            Some(raw) => Environment::parse(raw)
                .ok_or_else(|| Error::invalid("environment", "must be \"live\" or \"test\""))?,
        };
        let scopes = key_settings::parse_scopes("scopes", &record.scopes, false)?;
        Ok(ImportedKey {
            digest,
            owner_id: key_settings::parse_owner_id(&record.owner_id)?,
            name: key_settings::parse_name(&record.name)?,
            scopes: ScopeSet::new(scopes),
            prefix,
            environment,
            enabled: record.enabled.unwrap_or(true),
            metadata: key_settings::parse_metadata("metadata", record.metadata)?,
            tier: record.tier.filter(|t| !t.is_empty()),
            created_at: record.created_at.map(stored_precision),
            expires_at: record.expires_at.map(stored_precision),
            last_used_at: record.last_used_at.map(stored_precision),
            revoked_at: record.revoked_at.map(stored_precision),
        })
    }

    /// Whether the key counts against its owner's active-key limit once
    /// imported (as CreateKey counts: not revoked).
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// Microseconds, as PostgreSQL keeps them, so an instant reads back equal
/// (page tokens rely on it).
fn stored_precision(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// What the source recorded against a key, for its usage counters: counts
/// per hour by code, and its most recent requests (newest first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageHistory {
    /// (hours since the epoch, code, requests)
    pub hourly: Vec<(i64, ValidationCode, u64)>,
    pub recent: Vec<UsageEvent>,
}

impl UsageHistory {
    pub fn is_empty(&self) -> bool {
        self.hourly.is_empty() && self.recent.is_empty()
    }

    /// The hourly counts summed per day: (days since the epoch, code, requests).
    pub fn daily(&self) -> Vec<(i64, ValidationCode, u64)> {
        let mut days: BTreeMap<(i64, &'static str), (ValidationCode, u64)> = BTreeMap::new();
        for (hour, code, count) in &self.hourly {
            let day = (hour * 3_600).div_euclid(86_400);
            days.entry((day, code.as_str())).or_insert((*code, 0)).1 += count;
        }
        days.into_iter()
            .map(|((day, _), (code, count))| (day, code, count))
            .collect()
    }
}

/// One request the source recorded against a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageEvent {
    pub at: DateTime<Utc>,
    pub code: ValidationCode,
    pub endpoint: String,
    pub method: String,
    pub ip: String,
    pub user_agent: String,
}

/// The validation code a request logged with an HTTP status stands for: the
/// seed logs a request once its key validated, so anything but its own
/// refusals (403 for a scope, 429 for a limit) was a valid use.
pub fn code_of_http_status(status: i32) -> ValidationCode {
    match status {
        403 => ValidationCode::InsufficientScope,
        429 => ValidationCode::RateLimited,
        _ => ValidationCode::Valid,
    }
}

/// What became of one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowOutcome {
    /// Written now (or, in a dry run, would be) under this id.
    Imported(super::KeyId),
    /// A key with this digest is already here: an earlier run, or an
    /// earlier row of this one.
    AlreadyPresent,
    /// Not written, for this reason.
    Refused(String),
}

/// A row of an import and what became of it; `source_ref` is how the source
/// names the row (a line number, the old store's id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowResult {
    pub source_ref: String,
    pub outcome: RowOutcome,
}

/// An owner holding more active keys than the limit once the import is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerOverLimit {
    pub owner_id: String,
    pub active_keys: u64,
    pub limit: u32,
}

/// The running totals of an import, and the owners it gave keys to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportTally {
    pub imported: u64,
    pub already_present: u64,
    pub refused: u64,
    /// Owners that received active keys, with how many.
    pub active_keys_added: BTreeMap<String, u64>,
}

impl ImportTally {
    pub fn add(&mut self, result: &RowResult, owner_if_active: Option<&str>) {
        match &result.outcome {
            RowOutcome::Imported(_) => {
                self.imported += 1;
                if let Some(owner) = owner_if_active {
                    *self.active_keys_added.entry(owner.to_owned()).or_default() += 1;
                }
            }
            RowOutcome::AlreadyPresent => self.already_present += 1,
            RowOutcome::Refused(_) => self.refused += 1,
        }
    }

    pub fn owners(&self) -> BTreeSet<String> {
        self.active_keys_added.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ImportRecord {
        ImportRecord {
            sha256: LegacyDigest::of("sk_live_abc").to_hex(),
            owner_id: "user_1".into(),
            name: "Production".into(),
            scopes: vec!["read:posts".into()],
            prefix: Some("sk_live_a1b2".into()),
            ..Default::default()
        }
    }

    fn reason(record: ImportRecord) -> String {
        ImportedKey::parse(record).unwrap_err().to_string()
    }

    #[test]
    fn a_seed_row_becomes_a_live_key_with_its_prefix() {
        let key = ImportedKey::parse(record()).unwrap();
        assert_eq!(key.digest, LegacyDigest::of("sk_live_abc"));
        assert_eq!(key.prefix, "sk_live_a1b2");
        assert_eq!(key.environment, Environment::Live);
        assert!(key.enabled && key.is_active());
    }

    #[test]
    fn a_test_prefix_makes_a_test_key_unless_told_otherwise() {
        let mut test = record();
        test.prefix = Some("sk_test_a1b2".into());
        assert_eq!(
            ImportedKey::parse(test.clone()).unwrap().environment,
            Environment::Test
        );
        test.environment = Some("live".into());
        assert_eq!(
            ImportedKey::parse(test).unwrap().environment,
            Environment::Live
        );
    }

    #[test]
    fn a_scope_our_grammar_rejects_refuses_the_row_with_the_reason() {
        let mut bad = record();
        bad.scopes = vec!["read".into()];
        assert!(reason(bad).starts_with("scopes:"));
    }

    #[test]
    fn no_scope_at_all_is_kept_as_no_scope() {
        let mut none = record();
        none.scopes.clear();
        assert!(
            ImportedKey::parse(none)
                .unwrap()
                .scopes
                .iter()
                .next()
                .is_none()
        );
    }

    #[test]
    fn a_digest_that_is_not_64_hex_digits_is_refused() {
        let mut bad = record();
        bad.sha256 = "sk_live_abc".into();
        assert!(reason(bad).starts_with("sha256:"));
    }

    #[test]
    fn a_whole_key_given_as_prefix_is_refused() {
        let mut bad = record();
        bad.prefix = Some(format!("sk_live_{}", "a".repeat(64)));
        assert!(reason(bad).starts_with("prefix:"));
    }

    #[test]
    fn owner_and_name_keep_the_bounds_of_create_key() {
        let mut bad = record();
        bad.owner_id = String::new();
        assert!(reason(bad).starts_with("owner_id:"));
        let mut bad = record();
        bad.name = "x".repeat(101);
        assert!(reason(bad).starts_with("name:"));
    }

    #[test]
    fn a_jsonl_line_with_an_unknown_field_is_refused() {
        let line = r#"{"sha256": "00", "owner_id": "u", "name": "n", "expire_at": "2030-01-01T00:00:00Z"}"#;
        let error = serde_json::from_str::<ImportRecord>(line).unwrap_err();
        assert!(error.to_string().contains("expire_at"), "{error}");
    }

    #[test]
    fn a_jsonl_line_reads_every_field() {
        let line = r#"{"sha256": "ab", "owner_id": "u", "name": "n", "scopes": ["a:b"],
            "prefix": "p", "environment": "test", "enabled": false, "metadata": {"k": "v"},
            "tier": "pro", "created_at": "2025-01-01T00:00:00Z",
            "expires_at": "2030-01-01T00:00:00Z", "last_used_at": "2025-06-01T00:00:00Z",
            "revoked_at": "2026-01-01T00:00:00Z"}"#;
        let record: ImportRecord = serde_json::from_str(line).unwrap();
        assert_eq!(record.tier.as_deref(), Some("pro"));
        assert_eq!(record.enabled, Some(false));
        assert!(record.revoked_at.is_some() && record.last_used_at.is_some());
    }

    #[test]
    fn the_seeds_logged_statuses_map_to_codes() {
        assert_eq!(code_of_http_status(200), ValidationCode::Valid);
        assert_eq!(code_of_http_status(500), ValidationCode::Valid);
        assert_eq!(code_of_http_status(403), ValidationCode::InsufficientScope);
        assert_eq!(code_of_http_status(429), ValidationCode::RateLimited);
    }

    #[test]
    fn hourly_counts_add_up_per_day() {
        let history = UsageHistory {
            hourly: vec![
                (24, ValidationCode::Valid, 2),
                (47, ValidationCode::Valid, 3),
                (47, ValidationCode::RateLimited, 1),
                (48, ValidationCode::Valid, 5),
            ],
            recent: Vec::new(),
        };
        assert_eq!(
            history.daily(),
            vec![
                (1, ValidationCode::RateLimited, 1),
                (1, ValidationCode::Valid, 5),
                (2, ValidationCode::Valid, 5),
            ]
        );
    }

    #[test]
    fn the_tally_counts_active_keys_per_owner() {
        let mut tally = ImportTally::default();
        let id = crate::domain::KeyId::parse("0123456789abcdef").unwrap();
        let imported = RowResult {
            source_ref: "1".into(),
            outcome: RowOutcome::Imported(id),
        };
        tally.add(&imported, Some("a"));
        tally.add(&imported, None);
        tally.add(
            &RowResult {
                source_ref: "2".into(),
                outcome: RowOutcome::AlreadyPresent,
            },
            Some("a"),
        );
        assert_eq!(tally.imported, 2);
        assert_eq!(tally.already_present, 1);
        assert_eq!(tally.active_keys_added.get("a"), Some(&1));
    }
}
