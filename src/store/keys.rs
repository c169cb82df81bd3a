//! API key rows: create within the owner's limit, find, list, change.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
    TryIntoModel,
};

use super::audit_events;
use super::entities::{api_key, key_owner};
use super::owner_limits::{limit_columns, limit_source};
use super::within_owner_scope;
use crate::domain::audit::AuditEvent;
use crate::domain::key_settings::ExpiryChange;
use crate::domain::{ApiKey, Environment, KeyId, LimitSource, OwnerScope, Quota, Scope, ScopeSet};
use crate::error::{Error, Result};

/// A key about to be inserted: its settings plus the hash of its secret.
pub struct NewKeyRow {
    pub id: KeyId,
    pub owner_id: String,
    pub name: String,
    pub prefix: String,
    pub secret_hash: String,
    pub scopes: ScopeSet,
    pub environment: Environment,
    pub metadata: BTreeMap<String, String>,
    pub enabled: bool,
    pub expiry: Expiry,
    pub limits: LimitSource,
    pub quota: Option<Quota>,
}

/// When a new row expires: fixed from the same clock reading as `created_at`.
pub enum Expiry {
    After(ExpiryChange),
    /// A rotation keeps the old key's expiry instant.
    At(Option<DateTime<Utc>>),
}

/// What an update changes; `None` leaves a field as it is.
#[derive(Default)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub scopes: Option<ScopeSet>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub expiry: Option<ExpiryChange>,
    pub limits: Option<LimitSource>,
    /// `Some(None)` removes the quota.
    pub quota: Option<Option<Quota>>,
}

/// Where the previous page ended: keys sort newest first by (created_at, id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: DateTime<Utc>,
    pub id: KeyId,
}

pub struct ListQuery {
    pub owner_id: Option<String>,
    /// Only keys of owners within this scope (a scoped root key's view).
    pub scope: OwnerScope,
    pub include_revoked: bool,
    pub after: Option<ListCursor>,
    pub page_size: u64,
}

/// Keys per `last_used_at` statement (two parameters each, well under
/// either database's limit).
const LAST_USED_CHUNK: usize = 500;

#[derive(Clone)]
pub struct KeyStore {
    db: DatabaseConnection,
}

impl KeyStore {
    pub fn new(db: DatabaseConnection) -> Self {
        KeyStore { db }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Inserts a key unless its owner already has `limit` unrevoked keys,
    /// with the event that records it.
    ///
    /// The transaction's first statement upserts the owner's row, which takes
    /// a row lock on PostgreSQL and the write lock on SQLite; concurrent
    /// creates for one owner therefore count and insert one at a time.
    pub async fn create_within_owner_limit(
        &self,
        row: NewKeyRow,
        limit: u32,
        now: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> Result<ApiKey> {
        let txn = self.db.begin().await?;
        key_owner::Entity::insert(key_owner::ActiveModel {
            owner_id: Set(row.owner_id.clone()),
            last_key_created_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(key_owner::Column::OwnerId)
                .update_column(key_owner::Column::LastKeyCreatedAt)
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        let active = api_key::Entity::find()
            .filter(api_key::Column::OwnerId.eq(&row.owner_id))
            .filter(api_key::Column::RevokedAt.is_null())
            .count(&txn)
            .await?;
        if active >= u64::from(limit) {
            return Err(Error::KeyLimitReached {
                owner_id: row.owner_id,
                limit,
            });
        }
        let model = insert_key(&txn, row, now).await?;
        audit_events::insert(&txn, audit).await?;
        txn.commit().await?;
        to_domain(model)
    }

    pub async fn find(&self, id: &KeyId) -> Result<Option<(ApiKey, String)>> {
        let Some(model) = api_key::Entity::find_by_id(id.as_str())
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let hash = model.secret_hash.clone();
        Ok(Some((to_domain(model)?, hash)))
    }

    pub async fn get(&self, id: &KeyId) -> Result<ApiKey> {
        get(&self.db, id).await
    }

    /// One page, newest first, and the cursor of the next page if there is one.
    pub async fn list(
        &self,
        query: ListQuery,
        now: DateTime<Utc>,
    ) -> Result<(Vec<ApiKey>, Option<ListCursor>)> {
        let mut select = api_key::Entity::find();
        if let Some(owner_id) = &query.owner_id {
            select = select.filter(api_key::Column::OwnerId.eq(owner_id));
        }
        if let Some(condition) = within_owner_scope(api_key::Column::OwnerId, &query.scope) {
            select = select.filter(condition);
        }
        if !query.include_revoked {
            select = select.filter(not_revoked_at(now));
        }
        if let Some(after) = &query.after {
            // A row-value comparison, so both databases seek the index to the
            // cursor instead of scanning the pages before it.
            select = select.filter(
                Expr::tuple([
                    Expr::col(api_key::Column::CreatedAt).into(),
                    Expr::col(api_key::Column::Id).into(),
                ])
                .lt(Expr::tuple([
                    Expr::value(after.created_at),
                    Expr::value(after.id.as_str()),
                ])),
            );
        }
        let mut models = select
            .order_by_desc(api_key::Column::CreatedAt)
            .order_by_desc(api_key::Column::Id)
            .limit(query.page_size + 1)
            .all(&self.db)
            .await?;
        let more = models.len() as u64 > query.page_size;
        models.truncate(query.page_size as usize);
        let keys: Vec<ApiKey> = models.into_iter().map(to_domain).collect::<Result<_>>()?;
        let next = keys.last().filter(|_| more).map(|last| ListCursor {
            created_at: last.created_at,
            id: last.id.clone(),
        });
        Ok((keys, next))
    }

    /// Applies `changes` to a key that is not revoked (nor being rotated
    /// out), with the event that records it.
    pub async fn update(
        &self,
        id: &KeyId,
        changes: KeyChanges,
        now: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> Result<ApiKey> {
        let mut model = api_key::ActiveModel {
            updated_at: Set(now),
            ..Default::default()
        };
        if let Some(name) = changes.name {
            model.name = Set(name);
        }
        if let Some(enabled) = changes.enabled {
            model.enabled = Set(enabled);
        }
        if let Some(scopes) = changes.scopes {
            model.scopes = Set(scopes_json(&scopes));
        }
        if let Some(metadata) = changes.metadata {
            model.metadata = Set(metadata_json(&metadata));
        }
        if let Some(expiry) = changes.expiry {
            model.expires_at = Set(expiry.expires_at(now));
        }
        if let Some(limits) = changes.limits {
            let (tier, rate_limits) = limit_columns(&limits);
            model.tier = Set(tier);
            model.rate_limits = Set(rate_limits);
        }
        if let Some(quota) = changes.quota {
            model.quota = Set(quota.as_ref().map(quota_json));
        }
        let txn = self.db.begin().await?;
        let updated = api_key::Entity::update_many()
            .set(model)
            .filter(api_key::Column::Id.eq(id.as_str()))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            drop(txn);
            return Err(self.explain_unchanged(id, "updated").await);
        }
        let key = get(&txn, id).await?;
        audit_events::insert(&txn, audit).await?;
        txn.commit().await?;
        Ok(key)
    }

    /// Revokes a key now, with the event that records it (and the key's
    /// owner in it). Revoking a revoked key changes nothing and is not an
    /// error, so a retried revoke is safe. With `owner_id`, a key of another
    /// owner is reported as not found. `reach` vets the key before anything
    /// commits: the caller's scope is checked in the same few round trips
    /// as the change (this is the revocation path replicas wait on).
    pub async fn revoke(
        &self,
        id: &KeyId,
        owner_id: Option<&str>,
        now: DateTime<Utc>,
        audit: &mut AuditEvent,
        reach: impl FnOnce(&ApiKey) -> Result<()>,
    ) -> Result<ApiKey> {
        // Writing first takes the row's lock (and SQLite's write lock);
        // a refusal below rolls it back.
        let txn = self.db.begin().await?;
        let mut update = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(now))
            .col_expr(api_key::Column::UpdatedAt, Expr::value(now))
            .filter(api_key::Column::Id.eq(id.as_str()))
            .filter(not_revoked_at(now));
        if let Some(owner_id) = owner_id {
            update = update.filter(api_key::Column::OwnerId.eq(owner_id));
        }
        update.exec(&txn).await?;
        let key = get(&txn, id).await?;
        audit.set_owner(&key.owner_id);
        reach(&key)?;
        if owner_id.is_some_and(|owner| owner != key.owner_id) {
            return Err(not_found(id));
        }
        audit_events::insert(&txn, audit).await?;
        txn.commit().await?;
        Ok(key)
    }

    /// Stores `new_hash` (the same secret under the configured argon2 cost)
    /// if the key's hash is still `old_hash`: a compare-and-set, so replicas
    /// rehashing at once write once. `updated_at` stays: nothing a caller
    /// sees has changed. Returns whether it wrote.
    pub async fn replace_secret_hash(
        &self,
        id: &KeyId,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<bool> {
        let replaced = api_key::Entity::update_many()
            .col_expr(api_key::Column::SecretHash, Expr::value(new_hash))
            .filter(api_key::Column::Id.eq(id.as_str()))
            .filter(api_key::Column::SecretHash.eq(old_hash))
            .exec(&self.db)
            .await?;
        Ok(replaced.rows_affected == 1)
    }

    /// Inserts `replacement` with the settings of key `id` and schedules the
    /// old key's revocation at `old_revoked_at`, in one transaction. The old
    /// key leaves the owner's count as the new one enters it, so a rotation
    /// never trips the per-owner limit. The event that records it is written
    /// in the same transaction.
    pub async fn rotate(
        &self,
        id: &KeyId,
        replacement: impl FnOnce(&ApiKey) -> NewKeyRow,
        old_revoked_at: DateTime<Utc>,
        now: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> Result<(ApiKey, ApiKey)> {
        let txn = self.db.begin().await?;
        // Writing first takes the row's lock (and SQLite's write lock).
        let scheduled = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(old_revoked_at))
            .col_expr(api_key::Column::UpdatedAt, Expr::value(now))
            .filter(api_key::Column::Id.eq(id.as_str()))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&txn)
            .await?;
        if scheduled.rows_affected == 0 {
            drop(txn);
            return Err(self.explain_unchanged(id, "rotated").await);
        }
        let old = api_key::Entity::find_by_id(id.as_str())
            .one(&txn)
            .await?
            .ok_or_else(|| not_found(id))?;
        let old = to_domain(old)?;
        let new = insert_key(&txn, replacement(&old), now).await?;
        audit_events::insert(&txn, audit).await?;
        txn.commit().await?;
        Ok((to_domain(new)?, old))
    }

    /// Writes a batch of last-use times, never moving one backwards: one
    /// UPDATE per [`LAST_USED_CHUNK`] keys, joined to the new times.
    pub async fn record_last_used(&self, uses: &[(KeyId, DateTime<Utc>)]) -> Result<()> {
        let backend = self.db.get_database_backend();
        for chunk in uses.chunks(LAST_USED_CHUNK) {
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 2);
            let mut rows = Vec::with_capacity(chunk.len());
            for (i, (id, used_at)) in chunk.iter().enumerate() {
                let (a, b) = match backend {
                    DbBackend::Postgres => (format!("${}", 2 * i + 1), format!("${}", 2 * i + 2)),
                    _ => ("?".to_owned(), "?".to_owned()),
                };
                rows.push(if i == 0 {
                    format!("SELECT {a} AS id, {b} AS used_at")
                } else {
                    format!("SELECT {a}, {b}")
                });
                values.push(id.as_str().into());
                values.push((*used_at).into());
            }
            let sql = format!(
                "UPDATE api_keys SET last_used_at = batch.used_at \
                 FROM ({}) AS batch \
                 WHERE api_keys.id = batch.id \
                 AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < batch.used_at)",
                rows.join(" UNION ALL ")
            );
            self.db
                .execute(Statement::from_sql_and_values(backend, sql, values))
                .await?;
        }
        Ok(())
    }

    /// Why a conditional write touched no row: no such key, or it is revoked.
    async fn explain_unchanged(&self, id: &KeyId, action: &'static str) -> Error {
        match api_key::Entity::find_by_id(id.as_str()).one(&self.db).await {
            Ok(Some(_)) => Error::KeyRevoked {
                id: id.to_string(),
                action,
            },
            Ok(None) => not_found(id),
            Err(e) => e.into(),
        }
    }
}

async fn get(db: &impl ConnectionTrait, id: &KeyId) -> Result<ApiKey> {
    let model = api_key::Entity::find_by_id(id.as_str())
        .one(db)
        .await?
        .ok_or_else(|| not_found(id))?;
    to_domain(model)
}

fn not_found(id: &KeyId) -> Error {
    Error::KeyNotFound { id: id.to_string() }
}

/// Keys with no revocation, or one scheduled after `now` by a rotation.
fn not_revoked_at(now: DateTime<Utc>) -> Condition {
    Condition::any()
        .add(api_key::Column::RevokedAt.is_null())
        .add(api_key::Column::RevokedAt.gt(now))
}

async fn insert_key(
    db: &impl ConnectionTrait,
    row: NewKeyRow,
    now: DateTime<Utc>,
) -> Result<api_key::Model> {
    let (tier, rate_limits) = limit_columns(&row.limits);
    let model = api_key::ActiveModel {
        id: Set(row.id.as_str().to_owned()),
        owner_id: Set(row.owner_id),
        name: Set(row.name),
        prefix: Set(row.prefix),
        secret_hash: Set(row.secret_hash),
        scopes: Set(scopes_json(&row.scopes)),
        environment: Set(row.environment.as_str().to_owned()),
        metadata: Set(metadata_json(&row.metadata)),
        enabled: Set(row.enabled),
        created_at: Set(now),
        updated_at: Set(now),
        expires_at: Set(match row.expiry {
            Expiry::After(change) => change.expires_at(now),
            Expiry::At(at) => at,
        }),
        last_used_at: Set(None),
        revoked_at: Set(None),
        tier: Set(tier),
        rate_limits: Set(rate_limits),
        quota: Set(row.quota.as_ref().map(quota_json)),
        legacy_sha256: Set(None),
    };
    api_key::Entity::insert(model.clone())
        .exec_without_returning(db)
        .await?;
    Ok(model.try_into_model()?)
}

pub(super) fn scopes_json(scopes: &ScopeSet) -> serde_json::Value {
    serde_json::Value::from(scopes.to_strings())
}

fn quota_json(quota: &Quota) -> serde_json::Value {
    serde_json::to_value(quota).expect("a quota always serialises")
}

pub(super) fn metadata_json(metadata: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::to_value(metadata).expect("a string map always serialises")
}

pub(super) fn to_domain(model: api_key::Model) -> Result<ApiKey> {
    let corrupt =
        |what: &str| Error::Internal(format!("stored key {} has a corrupt {what}", model.id));
    let scopes: Vec<String> =
        serde_json::from_value(model.scopes.clone()).map_err(|_| corrupt("scope list"))?;
    let scopes = scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| corrupt("scope"))?;
    let metadata =
        serde_json::from_value(model.metadata.clone()).map_err(|_| corrupt("metadata"))?;
    let environment =
        Environment::parse(&model.environment).ok_or_else(|| corrupt("environment"))?;
    let id = KeyId::parse(&model.id).ok_or_else(|| corrupt("id"))?;
    let limits = limit_source(model.tier.clone(), model.rate_limits.clone())
        .ok_or_else(|| corrupt("limit list"))?
        .unwrap_or_else(|| LimitSource::Own(Vec::new()));
    let quota = model
        .quota
        .clone()
        .map(serde_json::from_value::<Quota>)
        .transpose()
        .map_err(|_| corrupt("quota"))?;
    Ok(ApiKey {
        id,
        owner_id: model.owner_id,
        name: model.name,
        prefix: model.prefix,
        scopes: ScopeSet::new(scopes),
        environment,
        metadata,
        enabled: model.enabled,
        created_at: model.created_at,
        updated_at: model.updated_at,
        expires_at: model.expires_at,
        last_used_at: model.last_used_at,
        revoked_at: model.revoked_at,
        limits,
        quota,
    })
}
