//! `apikeyd.v1.KeyService`: authorise, parse, delegate to the authority, convert.

use std::sync::Arc;

use chrono::Duration;
use tonic::{Request, Response, Status};

use super::convert;
use super::pb::{self, key_service_server::KeyService};
use crate::access::{Permission, RootKeyGate};
use crate::authority::{KeyAuthority, NewKey, QuotaChange};
use crate::domain::LimitSource;
use crate::domain::key_settings::{self, ExpiryChange};
use crate::error::Error;
use crate::ratelimit::usage::Granularity;
use crate::store::{KeyChanges, ListQuery};

const DEFAULT_PAGE_SIZE: i32 = 50;
const MAX_PAGE_SIZE: i32 = 100;

pub struct KeyApi {
    pub authority: Arc<KeyAuthority>,
    pub gate: RootKeyGate,
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        self.gate
            .authorize(request.metadata(), Permission::KeysWrite)
            .await?;
        let req = request.into_inner();
        let new = NewKey {
            owner_id: key_settings::parse_owner_id(&req.owner_id)?,
            name: key_settings::parse_name(&req.name)?,
            scopes: key_settings::parse_granted_scopes(&req.scopes)?,
            environment: convert::parse_environment(req.environment)?,
            metadata: key_settings::parse_metadata("metadata", req.metadata)?,
            expiry: match req.expires_in_days {
                Some(days) => {
                    ExpiryChange::InDays(key_settings::parse_expiry_days("expires_in_days", days)?)
                }
                None => ExpiryChange::Never,
            },
            limits: convert::parse_limit_source(
                self.authority.tiers(),
                &req.tier,
                &req.rate_limits,
            )?,
            quota: req.quota.as_ref().map(convert::parse_quota).transpose()?,
        };
        let issued = self.authority.create_key(new).await?;
        Ok(Response::new(pb::CreateKeyResponse {
            key: issued.full_key,
            api_key: Some(convert::api_key(issued.api_key)),
        }))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::GetKeyResponse>, Status> {
        self.gate
            .authorize(request.metadata(), Permission::KeysRead)
            .await?;
        let id = convert::parse_key_id("id", &request.get_ref().id)?;
        let key = self.authority.get_key(&id).await?;
        Ok(Response::new(pb::GetKeyResponse {
            api_key: Some(convert::api_key(key)),
        }))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.gate
            .authorize(request.metadata(), Permission::KeysRead)
            .await?;
        let req = request.into_inner();
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            n => {
                return Err(Error::invalid(
                    "page_size",
                    format!("must be 1 to {MAX_PAGE_SIZE}, or 0 for {DEFAULT_PAGE_SIZE} (got {n})"),
                )
                .into());
            }
        };
        let owner_id = match req.owner_id.as_str() {
            "" => None,
            raw => Some(key_settings::parse_owner_id(raw)?),
        };
        let query = ListQuery {
            owner_id,
            include_revoked: req.include_revoked,
            after: convert::parse_page_token(&req.page_token)?,
            page_size: page_size as u64,
        };
        let (keys, next) = self.authority.list_keys(query).await?;
        Ok(Response::new(pb::ListKeysResponse {
            api_keys: keys.into_iter().map(convert::api_key).collect(),
            next_page_token: next.as_ref().map(convert::page_token).unwrap_or_default(),
        }))
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::UpdateKeyResponse>, Status> {
        self.gate
            .authorize(request.metadata(), Permission::KeysWrite)
            .await?;
        let req = request.into_inner();
        let id = convert::parse_key_id("id", &req.id)?;
        let changes = KeyChanges {
            name: req
                .name
                .as_deref()
                .map(key_settings::parse_name)
                .transpose()?,
            enabled: req.enabled,
            scopes: req
                .scopes
                .map(|list| key_settings::parse_granted_scopes(&list.scopes))
                .transpose()?,
            metadata: req
                .metadata
                .map(|map| key_settings::parse_metadata("metadata.entries", map.entries))
                .transpose()?,
            expiry: match req.expiry {
                None => None,
                Some(pb::update_key_request::Expiry::ExpiresInDays(days)) => Some(
                    ExpiryChange::InDays(key_settings::parse_expiry_days("expires_in_days", days)?),
                ),
                Some(pb::update_key_request::Expiry::NeverExpires(true)) => {
                    Some(ExpiryChange::Never)
                }
                Some(pb::update_key_request::Expiry::NeverExpires(false)) => {
                    return Err(Error::invalid(
                        "never_expires",
                        "only true is meaningful; to set an expiry use expires_in_days",
                    )
                    .into());
                }
            },
            limits: match req.limits {
                None => None,
                Some(pb::update_key_request::Limits::Tier(tier)) => Some(LimitSource::Tier(
                    self.authority.tiers().parse_name("tier", &tier)?,
                )),
                Some(pb::update_key_request::Limits::RateLimits(list)) => {
                    Some(LimitSource::Own(convert::parse_limits(&list.rate_limits)?))
                }
            },
            quota: None,
        };
        let quota = match req.quota_change {
            None => None,
            Some(pb::update_key_request::QuotaChange::Quota(quota)) => {
                Some(QuotaChange::Set(convert::parse_quota(&quota)?))
            }
            Some(pb::update_key_request::QuotaChange::AddToQuota(amount)) => {
                Some(QuotaChange::Add(amount))
            }
            Some(pb::update_key_request::QuotaChange::RemoveQuota(true)) => {
                Some(QuotaChange::Remove)
            }
            Some(pb::update_key_request::QuotaChange::RemoveQuota(false)) => {
                return Err(Error::invalid(
                    "remove_quota",
                    "only true is meaningful; to change the quota use quota or add_to_quota",
                )
                .into());
            }
        };
        let key = self.authority.update_key(&id, changes, quota).await?;
        Ok(Response::new(pb::UpdateKeyResponse {
            api_key: Some(convert::api_key(key)),
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        self.gate
            .authorize(request.metadata(), Permission::KeysWrite)
            .await?;
        let req = request.into_inner();
        let id = convert::parse_key_id("id", &req.id)?;
        let owner_id = (!req.owner_id.is_empty()).then_some(req.owner_id.as_str());
        let key = self.authority.revoke_key(&id, owner_id).await?;
        Ok(Response::new(pb::RevokeKeyResponse {
            api_key: Some(convert::api_key(key)),
        }))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        self.gate
            .authorize(request.metadata(), Permission::KeysWrite)
            .await?;
        let req = request.into_inner();
        let id = convert::parse_key_id("id", &req.id)?;
        let grace = match req.grace_period {
            None => Duration::zero(),
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(Error::invalid("grace_period", "must not be negative").into());
            }
            Some(d) => Duration::seconds(d.seconds) + Duration::nanoseconds(i64::from(d.nanos)),
        };
        let (issued, previous) = self.authority.rotate_key(&id, grace).await?;
        Ok(Response::new(pb::RotateKeyResponse {
            key: issued.full_key,
            api_key: Some(convert::api_key(issued.api_key)),
            previous_api_key: Some(convert::api_key(previous)),
        }))
    }

    async fn get_key_usage(
        &self,
        request: Request<pb::GetKeyUsageRequest>,
    ) -> Result<Response<pb::GetKeyUsageResponse>, Status> {
        self.gate
            .authorize(request.metadata(), Permission::KeysRead)
            .await?;
        let req = request.into_inner();
        let id = convert::parse_key_id("id", &req.id)?;
        let granularity = match pb::UsageGranularity::try_from(req.granularity) {
            Ok(pb::UsageGranularity::Unspecified | pb::UsageGranularity::Hour) => Granularity::Hour,
            Ok(pb::UsageGranularity::Day) => Granularity::Day,
            Err(_) => {
                return Err(Error::invalid(
                    "granularity",
                    "use USAGE_GRANULARITY_HOUR or USAGE_GRANULARITY_DAY",
                )
                .into());
            }
        };
        let start = req
            .start_time
            .as_ref()
            .map(|t| convert::parse_timestamp("start_time", t))
            .transpose()?;
        let end = req
            .end_time
            .as_ref()
            .map(|t| convert::parse_timestamp("end_time", t))
            .transpose()?;
        let usage = self
            .authority
            .key_usage(&id, granularity, start, end)
            .await?;
        Ok(Response::new(pb::GetKeyUsageResponse {
            buckets: usage
                .buckets
                .into_iter()
                .map(|bucket| pb::UsageBucket {
                    start_time: Some(convert::timestamp_us(bucket.start_secs * 1_000_000)),
                    total: bucket.counts.iter().map(|(_, n)| n).sum(),
                    counts: bucket
                        .counts
                        .into_iter()
                        .map(|(code, count)| pb::UsageCount {
                            code: convert::validation_code(code) as i32,
                            count,
                        })
                        .collect(),
                })
                .collect(),
            recent_requests: usage
                .recent
                .into_iter()
                .map(|r| pb::RecentRequest {
                    endpoint: r.context.endpoint,
                    method: r.context.method,
                    ip: r.context.ip,
                    user_agent: r.context.user_agent,
                    code: convert::validation_code(r.code) as i32,
                    time: Some(convert::timestamp_us(r.at_ms * 1000)),
                })
                .collect(),
        }))
    }

    async fn set_owner_limits(
        &self,
        request: Request<pb::SetOwnerLimitsRequest>,
    ) -> Result<Response<pb::SetOwnerLimitsResponse>, Status> {
        self.gate
            .authorize(request.metadata(), Permission::KeysWrite)
            .await?;
        let req = request.into_inner();
        let owner_id = key_settings::parse_owner_id(&req.owner_id)?;
        let limits =
            convert::parse_limit_source(self.authority.tiers(), &req.tier, &req.rate_limits)?;
        self.authority
            .set_owner_limits(&owner_id, limits.clone())
            .await?;
        Ok(Response::new(pb::SetOwnerLimitsResponse {
            owner_limits: Some(convert::owner_limits(owner_id, limits)),
        }))
    }

    async fn get_owner_limits(
        &self,
        request: Request<pb::GetOwnerLimitsRequest>,
    ) -> Result<Response<pb::GetOwnerLimitsResponse>, Status> {
        self.gate
            .authorize(request.metadata(), Permission::KeysRead)
            .await?;
        let owner_id = key_settings::parse_owner_id(&request.get_ref().owner_id)?;
        let limits = self.authority.owner_limits(&owner_id).await?;
        Ok(Response::new(pb::GetOwnerLimitsResponse {
            owner_limits: Some(convert::owner_limits(owner_id, limits)),
        }))
    }
}
