//! Root keys: credentials for the management API, stored like API keys
//! (argon2id hash, display prefix) with a list of permissions.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
};

use super::entities::root_key;
use crate::domain::{KeyId, Scope, ScopeSet};
use crate::error::{Error, Result};

pub struct NewRootKeyRow {
    pub id: KeyId,
    pub name: String,
    pub prefix: String,
    pub secret_hash: String,
    pub permissions: ScopeSet,
    pub created_at: DateTime<Utc>,
}

/// A stored root key, as authentication needs it.
pub struct RootKeyRecord {
    pub id: KeyId,
    pub name: String,
    pub secret_hash: String,
    pub permissions: ScopeSet,
    pub revoked_at: Option<DateTime<Utc>>,
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
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

pub async fn find(db: &impl ConnectionTrait, id: &KeyId) -> Result<Option<RootKeyRecord>> {
    let Some(model) = root_key::Entity::find_by_id(id.as_str()).one(db).await? else {
        return Ok(None);
    };
    let corrupt = || {
        Error::Internal(format!(
            "stored root key {} has corrupt permissions",
            model.id
        ))
    };
    let permissions: Vec<String> =
        serde_json::from_value(model.permissions.clone()).map_err(|_| corrupt())?;
    let permissions = permissions
        .iter()
        .map(|p| Scope::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| corrupt())?;
    Ok(Some(RootKeyRecord {
        id: id.clone(),
        name: model.name,
        secret_hash: model.secret_hash,
        permissions: ScopeSet::new(permissions),
        revoked_at: model.revoked_at,
    }))
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
