//! Keys imported from another store: found by the SHA-256 of the whole key
//! (`api_keys.legacy_sha256`, unique), written in batches, idempotently.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QuerySelect, TransactionTrait, TryInsertResult,
};

use super::KeyStore;
use super::audit_events;
use super::entities::api_key;
use super::keys::{metadata_json, scopes_json};
use super::owner_limits::limit_columns;
use crate::domain::LimitSource;
use crate::domain::audit::AuditEvent;
use crate::domain::import::ImportedKey;
use crate::domain::{KeyId, LegacyDigest};
use crate::error::{Error, Result};

/// What an imported key holds instead of an argon2 hash: it has no secret
/// apikeyd ever saw, and a key in our format never matches it.
pub const IMPORTED_SECRET_HASH: &str = "imported:sha256";

/// An imported key, with the id it gets here and its resolved limits.
pub struct ImportedKeyRow {
    pub id: KeyId,
    pub key: ImportedKey,
    pub limits: LimitSource,
}

impl KeyStore {
    /// The id of the key imported with `digest`, and the digest as stored:
    /// one lookup on the unique index.
    pub async fn find_imported(
        &self,
        digest: &LegacyDigest,
    ) -> Result<Option<(KeyId, LegacyDigest)>> {
        let row: Option<(String, Option<String>)> = api_key::Entity::find()
            .select_only()
            .column(api_key::Column::Id)
            .column(api_key::Column::LegacySha256)
            .filter(api_key::Column::LegacySha256.eq(digest.to_hex()))
            .into_tuple()
            .one(self.connection())
            .await?;
        let Some((id, stored)) = row else {
            return Ok(None);
        };
        let corrupt = || Error::Internal(format!("stored key {id} has a corrupt legacy digest"));
        let stored = stored
            .as_deref()
            .and_then(LegacyDigest::parse_hex)
            .ok_or_else(corrupt)?;
        let id = KeyId::parse(&id).ok_or_else(corrupt)?;
        Ok(Some((id, stored)))
    }

    /// Which of `digests` some key already has.
    pub async fn imported_digests(
        &self,
        digests: &[LegacyDigest],
    ) -> Result<HashSet<LegacyDigest>> {
        if digests.is_empty() {
            return Ok(HashSet::new());
        }
        let query = api_key::Entity::find()
            .select_only()
            .column(api_key::Column::LegacySha256)
            .filter(api_key::Column::LegacySha256.is_in(digests.iter().map(|d| d.to_hex())))
            .into_tuple();
        // An import grows `api_keys` from a few rows to many while it runs, and
        // PostgreSQL's cached generic plan for this statement, made while the
        // table was small, stays a sequential scan: 100,000 rows imported in
        // 155 s instead of 16. A plan made for each batch sees the table as it
        // is now and takes the digest index.
        let present: Vec<Option<String>> =
            if self.connection().get_database_backend() == DbBackend::Postgres {
                let txn = self.connection().begin().await?;
                txn.execute_unprepared("SET LOCAL plan_cache_mode = force_custom_plan")
                    .await?;
                let present = query.all(&txn).await?;
                txn.commit().await?;
                present
            } else {
                query.all(self.connection()).await?
            };
        Ok(present
            .iter()
            .filter_map(|hex| hex.as_deref().and_then(LegacyDigest::parse_hex))
            .collect())
    }

    /// Writes `rows` in one transaction, skipping any whose digest a key
    /// already has (another import may be running), with `audit` (told how
    /// many were written) when any was; returns the ids written.
    pub async fn insert_imported(
        &self,
        rows: Vec<ImportedKeyRow>,
        now: DateTime<Utc>,
        audit: &mut AuditEvent,
    ) -> Result<HashSet<KeyId>> {
        if rows.is_empty() {
            return Ok(HashSet::new());
        }
        let ids: Vec<KeyId> = rows.iter().map(|row| row.id.clone()).collect();
        let models: Vec<api_key::ActiveModel> = rows
            .into_iter()
            .map(|row| imported_model(row, now))
            .collect();
        let txn = self.connection().begin().await?;
        let inserted = api_key::Entity::insert_many(models)
            .on_conflict(
                OnConflict::column(api_key::Column::LegacySha256)
                    .do_nothing()
                    .to_owned(),
            )
            .do_nothing()
            .exec_without_returning(&txn)
            .await?;
        let written = match inserted {
            TryInsertResult::Inserted(n) if n == ids.len() as u64 => ids.into_iter().collect(),
            TryInsertResult::Empty | TryInsertResult::Conflicted => HashSet::new(),
            TryInsertResult::Inserted(_) => {
                let found: Vec<String> = api_key::Entity::find()
                    .select_only()
                    .column(api_key::Column::Id)
                    .filter(api_key::Column::Id.is_in(ids.iter().map(KeyId::as_str)))
                    .into_tuple()
                    .all(&txn)
                    .await?;
                found.iter().filter_map(|id| KeyId::parse(id)).collect()
            }
        };
        if !written.is_empty() {
            audit.set_field("imported", &written.len().to_string());
            audit_events::insert(&txn, audit).await?;
        }
        txn.commit().await?;
        Ok(written)
    }

    /// Unrevoked keys of each of `owners`, counted as CreateKey counts them.
    pub async fn active_keys_of(&self, owners: &[String]) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        // Bounded IN lists: well under either database's parameter limit.
        for chunk in owners.chunks(1000) {
            let rows: Vec<(String, i64)> = api_key::Entity::find()
                .select_only()
                .column(api_key::Column::OwnerId)
                .column_as(Expr::col(api_key::Column::Id).count(), "active")
                .filter(api_key::Column::OwnerId.is_in(chunk.iter().cloned()))
                .filter(api_key::Column::RevokedAt.is_null())
                .group_by(api_key::Column::OwnerId)
                .into_tuple()
                .all(self.connection())
                .await?;
            counts.extend(rows.into_iter().map(|(owner, n)| (owner, n.max(0) as u64)));
        }
        Ok(counts)
    }
}

fn imported_model(row: ImportedKeyRow, now: DateTime<Utc>) -> api_key::ActiveModel {
    let key = row.key;
    let (tier, rate_limits) = limit_columns(&row.limits);
    api_key::ActiveModel {
        id: Set(row.id.as_str().to_owned()),
        owner_id: Set(key.owner_id),
        name: Set(key.name),
        prefix: Set(key.prefix),
        secret_hash: Set(IMPORTED_SECRET_HASH.to_owned()),
        scopes: Set(scopes_json(&key.scopes)),
        environment: Set(key.environment.as_str().to_owned()),
        metadata: Set(metadata_json(&key.metadata)),
        enabled: Set(key.enabled),
        created_at: Set(key.created_at.unwrap_or(now)),
        updated_at: Set(now),
        expires_at: Set(key.expires_at),
        last_used_at: Set(key.last_used_at),
        revoked_at: Set(key.revoked_at),
        tier: Set(tier),
        rate_limits: Set(rate_limits),
        quota: Set(None),
        legacy_sha256: Set(Some(key.digest.to_hex())),
    }
}
