//! Limits shared by all of an owner's keys, and how a limit source (a tier
//! or a list) is kept in two nullable columns.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, EntityTrait, TransactionTrait};

use super::entities::owner_limit;
use super::{KeyStore, audit_events};
use crate::domain::audit::AuditEvent;
use crate::domain::{Limit, LimitSource};
use crate::error::{Error, Result};

/// `(tier, rate_limits)` columns of a limit source.
pub(super) fn limit_columns(source: &LimitSource) -> (Option<String>, Option<serde_json::Value>) {
    match source {
        LimitSource::Tier(name) => (Some(name.clone()), None),
        LimitSource::Own(limits) => (
            None,
            Some(serde_json::to_value(limits).expect("limits always serialise")),
        ),
    }
}

/// The limit source two columns hold: `Some(None)` when both are null,
/// `None` when the list is corrupt.
pub(super) fn limit_source(
    tier: Option<String>,
    rate_limits: Option<serde_json::Value>,
) -> Option<Option<LimitSource>> {
    match (tier, rate_limits) {
        (Some(tier), _) => Some(Some(LimitSource::Tier(tier))),
        (None, Some(json)) => serde_json::from_value::<Vec<Limit>>(json)
            .ok()
            .map(|limits| Some(LimitSource::Own(limits))),
        (None, None) => Some(None),
    }
}

impl KeyStore {
    /// The limits `owner_id`'s keys share, if any.
    pub async fn owner_limits(&self, owner_id: &str) -> Result<Option<LimitSource>> {
        let Some(model) = owner_limit::Entity::find_by_id(owner_id)
            .one(self.connection())
            .await?
        else {
            return Ok(None);
        };
        limit_source(model.tier, model.rate_limits)
            .ok_or_else(|| Error::Internal(format!("owner {owner_id:?} has a corrupt limit list")))
    }

    /// Sets (or with `None`, removes) the limits `owner_id`'s keys share,
    /// with the event that records it.
    pub async fn set_owner_limits(
        &self,
        owner_id: &str,
        limits: Option<&LimitSource>,
        now: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> Result<()> {
        let txn = self.connection().begin().await?;
        let Some(limits) = limits else {
            owner_limit::Entity::delete_by_id(owner_id)
                .exec(&txn)
                .await?;
            audit_events::insert(&txn, audit).await?;
            txn.commit().await?;
            return Ok(());
        };
        let (tier, rate_limits) = limit_columns(limits);
        owner_limit::Entity::insert(owner_limit::ActiveModel {
            owner_id: Set(owner_id.to_owned()),
            tier: Set(tier),
            rate_limits: Set(rate_limits),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(owner_limit::Column::OwnerId)
                .update_columns([
                    owner_limit::Column::Tier,
                    owner_limit::Column::RateLimits,
                    owner_limit::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        audit_events::insert(&txn, audit).await?;
        txn.commit().await?;
        Ok(())
    }
}
