//! The audit trail's rows: appended (inside the transaction of the change
//! they record, when there is one), read newest first by id, and deleted
//! only by retention. Nothing here updates a row, and the schema refuses it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::entities::audit_event;
use super::within_owner_scope;
use crate::domain::OwnerScope;
use crate::domain::audit::{Actor, AuditEvent};
use crate::error::{Error, Result};

/// A recorded event and its position in the trail (ids grow with time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAuditEvent {
    pub id: i64,
    pub event: AuditEvent,
}

/// Which events to read: every filter given must hold.
pub struct AuditQuery {
    pub key_id: Option<String>,
    pub owner_id: Option<String>,
    /// Events made with this root key, or about it.
    pub root_key_id: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    /// Only events about these owners' keys (a scoped root key's view).
    pub scope: OwnerScope,
    /// The id the previous page ended at.
    pub before_id: Option<i64>,
    pub page_size: u64,
}

pub async fn insert(db: &impl ConnectionTrait, event: &AuditEvent) -> Result<(), sea_orm::DbErr> {
    let (root_key_id, root_key_name) = match &event.actor {
        Some(actor) => (
            Some(actor.root_key_id.clone()),
            Some(actor.root_key_name.clone()),
        ),
        None => (None, None),
    };
    audit_event::Entity::insert(audit_event::ActiveModel {
        id: NotSet,
        occurred_at: Set(event.occurred_at),
        root_key_id: Set(root_key_id),
        root_key_name: Set(root_key_name),
        peer_address: Set(event.peer_address.clone()),
        tls_identity: Set(event.tls_identity.clone()),
        method: Set(event.method.clone()),
        key_id: Set(event.key_id.clone()),
        owner_id: Set(event.owner_id.clone()),
        target_root_key_id: Set(event.target_root_key_id.clone()),
        changed_fields: Set(serde_json::Value::Object(
            event
                .fields
                .iter()
                .map(|(name, value)| (name.clone(), serde_json::Value::from(value.as_str())))
                .collect(),
        )),
        outcome_code: Set(event.outcome_code.clone()),
        outcome_message: Set(event.outcome_message.clone()),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// One page, newest first, and the id to continue before, if there is more.
pub async fn list(
    db: &impl ConnectionTrait,
    query: AuditQuery,
) -> Result<(Vec<StoredAuditEvent>, Option<i64>)> {
    let mut select = audit_event::Entity::find();
    if let Some(key_id) = &query.key_id {
        select = select.filter(audit_event::Column::KeyId.eq(key_id));
    }
    if let Some(owner_id) = &query.owner_id {
        select = select.filter(audit_event::Column::OwnerId.eq(owner_id));
    }
    if let Some(root_key_id) = &query.root_key_id {
        select = select.filter(
            Condition::any()
                .add(audit_event::Column::RootKeyId.eq(root_key_id))
                .add(audit_event::Column::TargetRootKeyId.eq(root_key_id)),
        );
    }
    if let Some(start) = query.start {
        select = select.filter(audit_event::Column::OccurredAt.gte(start));
    }
    if let Some(end) = query.end {
        select = select.filter(audit_event::Column::OccurredAt.lte(end));
    }
    if let Some(condition) = within_owner_scope(audit_event::Column::OwnerId, &query.scope) {
        select = select.filter(condition);
    }
    if let Some(before) = query.before_id {
        select = select.filter(audit_event::Column::Id.lt(before));
    }
    let mut models = select
        .order_by_desc(audit_event::Column::Id)
        .limit(query.page_size + 1)
        .all(db)
        .await?;
    let next = if models.len() as u64 > query.page_size {
        models.truncate(query.page_size as usize);
        models.last().map(|last| last.id)
    } else {
        None
    };
    let events = models.into_iter().map(to_domain).collect::<Result<_>>()?;
    Ok((events, next))
}

/// Deletes the events that occurred before `cutoff` (retention); returns how many.
pub async fn delete_before(
    db: &impl ConnectionTrait,
    cutoff: DateTime<Utc>,
) -> Result<u64, sea_orm::DbErr> {
    let deleted = audit_event::Entity::delete_many()
        .filter(audit_event::Column::OccurredAt.lt(cutoff))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected)
}

fn to_domain(model: audit_event::Model) -> Result<StoredAuditEvent> {
    let fields: BTreeMap<String, String> =
        serde_json::from_value(model.changed_fields).map_err(|_| {
            Error::Internal(format!(
                "audit event {} has corrupt changed fields",
                model.id
            ))
        })?;
    let actor = match (model.root_key_id, model.root_key_name) {
        (Some(root_key_id), name) => Some(Actor {
            root_key_id,
            root_key_name: name.unwrap_or_default(),
        }),
        (None, _) => None,
    };
    Ok(StoredAuditEvent {
        id: model.id,
        event: AuditEvent {
            occurred_at: model.occurred_at,
            actor,
            peer_address: model.peer_address,
            tls_identity: model.tls_identity,
            method: model.method,
            key_id: model.key_id,
            owner_id: model.owner_id,
            target_root_key_id: model.target_root_key_id,
            fields,
            outcome_code: model.outcome_code,
            outcome_message: model.outcome_message,
        },
    })
}
