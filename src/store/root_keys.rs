//! Root keys: credentials for the management API (and, when required, the
//! data plane), stored like API keys (argon2id hash, display prefix) with
//! permissions, an optional owner scope and an optional expiry. Each change
//! is written with its audit event in one transaction.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use super::audit_events;
use super::entities::root_key;
use super::keys::ListCursor;
use crate::domain::audit::AuditEvent;
use crate::domain::{KeyId, OwnerScope, PermissionSet, RootKey};
use crate::error::{Error, Result};

/// A root key about to be inserted: its settings and the hash of its secret.
pub struct NewRootKeyRow {
    pub id: KeyId,
    pub name: String,
    pub prefix: String,
    pub secret_hash: String,
    pub permissions: PermissionSet,
    pub owner_scope: OwnerScope,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: Option<KeyId>,
}

impl NewRootKeyRow {
    /// The record this row becomes once inserted.
    pub fn record(&self) -> RootKey {
        RootKey {
            id: self.id.clone(),
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            permissions: self.permissions.clone(),
            owner_scope: self.owner_scope.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: None,
            created_by: self.created_by.clone(),
        }
    }
}

/// A page of root keys: newest first, keyset-paginated like API keys.
pub struct RootKeyPageQuery {
    pub include_revoked: bool,
    pub after: Option<ListCursor>,
    /// Rows read per round trip; a page is filled from as many as it takes.
    pub batch: u64,
}

pub async fn count(db: &impl ConnectionTrait) -> Result<u64, sea_orm::DbErr> {
    root_key::Entity::find().count(db).await
}

pub async fn insert(db: &impl ConnectionTrait, row: NewRootKeyRow) -> Result<(), sea_orm::DbErr> {
    root_key::Entity::insert(root_key::ActiveModel {
        id: Set(row.id.as_str().to_owned()),
        name: Set(row.name),
        prefix: Set(row.prefix),
        secret_hash: Set(row.secret_hash),
        permissions: Set(serde_json::Value::from(row.permissions.to_strings())),
        created_at: Set(row.created_at),
        revoked_at: Set(None),
        expires_at: Set(row.expires_at),
        owner_scope: Set(row.owner_scope.to_stored().map(serde_json::Value::from)),
        created_by: Set(row.created_by.map(|id| id.as_str().to_owned())),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Inserts a root key and the event that records its creation, together.
pub async fn insert_audited(
    db: &(impl ConnectionTrait + TransactionTrait),
    row: NewRootKeyRow,
    audit: &AuditEvent,
) -> Result<RootKey> {
    let record = row.record();
    let txn = db.begin().await?;
    insert(&txn, row).await?;
    audit_events::insert(&txn, audit).await?;
    txn.commit().await?;
    Ok(record)
}

/// The root key with this id and the hash of its secret.
pub async fn find(db: &impl ConnectionTrait, id: &KeyId) -> Result<Option<(RootKey, String)>> {
    let Some(model) = root_key::Entity::find_by_id(id.as_str()).one(db).await? else {
        return Ok(None);
    };
    let hash = model.secret_hash.clone();
    Ok(Some((to_domain(model)?, hash)))
}

/// Reads root keys newest first after `query.after`, handing each to
/// `keep` until it returns false or the rows run out; returns the cursor
/// of the last row read when more may follow.
pub async fn scan(
    db: &impl ConnectionTrait,
    query: RootKeyPageQuery,
    now: DateTime<Utc>,
    mut keep: impl FnMut(RootKey) -> bool,
) -> Result<Option<ListCursor>> {
    let mut after = query.after;
    loop {
        let mut select = root_key::Entity::find();
        if !query.include_revoked {
            select = select.filter(
                Condition::any()
                    .add(root_key::Column::RevokedAt.is_null())
                    .add(root_key::Column::RevokedAt.gt(now)),
            );
        }
        if let Some(cursor) = &after {
            select = select.filter(
                Expr::tuple([
                    Expr::col(root_key::Column::CreatedAt).into(),
                    Expr::col(root_key::Column::Id).into(),
                ])
                .lt(Expr::tuple([
                    Expr::value(cursor.created_at),
                    Expr::value(cursor.id.as_str()),
                ])),
            );
        }
        let models = select
            .order_by_desc(root_key::Column::CreatedAt)
            .order_by_desc(root_key::Column::Id)
            .limit(query.batch)
            .all(db)
            .await?;
        let exhausted = (models.len() as u64) < query.batch;
        for model in models {
            let key = to_domain(model)?;
            let cursor = ListCursor {
                created_at: key.created_at,
                id: key.id.clone(),
            };
            if !keep(key) {
                return Ok(Some(cursor));
            }
            after = Some(cursor);
        }
        if exhausted {
            return Ok(None);
        }
    }
}

/// Revokes a root key now, with the event that records it. Revoking a
/// revoked key changes nothing and is not an error.
pub async fn revoke_audited(
    db: &(impl ConnectionTrait + TransactionTrait),
    id: &KeyId,
    now: DateTime<Utc>,
    audit: &AuditEvent,
) -> Result<RootKey> {
    let txn = db.begin().await?;
    root_key::Entity::update_many()
        .col_expr(root_key::Column::RevokedAt, Expr::value(now))
        .filter(root_key::Column::Id.eq(id.as_str()))
        .filter(
            Condition::any()
                .add(root_key::Column::RevokedAt.is_null())
                .add(root_key::Column::RevokedAt.gt(now)),
        )
        .exec(&txn)
        .await?;
    let (revoked, _) = find(&txn, id)
        .await?
        .ok_or_else(|| Error::RootKeyNotFound { id: id.to_string() })?;
    audit_events::insert(&txn, audit).await?;
    txn.commit().await?;
    Ok(revoked)
}

fn to_domain(model: root_key::Model) -> Result<RootKey> {
    let corrupt =
        |what: &str| Error::Internal(format!("stored root key {} has a corrupt {what}", model.id));
    let permissions: Vec<String> = serde_json::from_value(model.permissions.clone())
        .map_err(|_| corrupt("permission list"))?;
    let permissions =
        PermissionSet::from_stored(&permissions).ok_or_else(|| corrupt("permission"))?;
    let owner_scope: Option<Vec<String>> = model
        .owner_scope
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|_| corrupt("owner scope"))?;
    let owner_scope =
        OwnerScope::from_stored(owner_scope.as_deref()).ok_or_else(|| corrupt("owner scope"))?;
    let id = KeyId::parse(&model.id).ok_or_else(|| corrupt("id"))?;
    let created_by = model
        .created_by
        .as_deref()
        .map(|raw| KeyId::parse(raw).ok_or_else(|| corrupt("creator id")))
        .transpose()?;
    Ok(RootKey {
        id,
        name: model.name,
        prefix: model.prefix,
        permissions,
        owner_scope,
        created_at: model.created_at,
        expires_at: model.expires_at,
        revoked_at: model.revoked_at,
        created_by,
    })
}

/// Stores `new_hash` (the same secret under the configured argon2 cost) if
/// the root key's hash is still `old_hash`: a compare-and-set, so replicas
/// rehashing at once write once. Returns whether it wrote.
pub async fn replace_hash(
    db: &impl ConnectionTrait,
    id: &KeyId,
    old_hash: &str,
    new_hash: &str,
) -> Result<bool> {
    let replaced = root_key::Entity::update_many()
        .col_expr(root_key::Column::SecretHash, Expr::value(new_hash))
        .filter(root_key::Column::Id.eq(id.as_str()))
        .filter(root_key::Column::SecretHash.eq(old_hash))
        .exec(db)
        .await?;
    Ok(replaced.rows_affected == 1)
}
