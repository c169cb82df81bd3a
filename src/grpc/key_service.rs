//! `apikeyd.v1.KeyService`: authenticate, authorise, parse, delegate to the
//! authority, convert; every call leaves its audit event (a change's inside
//! its transaction, a refusal's when it is answered).

use std::sync::Arc;

use chrono::Duration;
use tonic::{Request, Response, Status};

use super::convert;
use super::pb::{self, key_service_server::KeyService};
use crate::access::{RootKeyGate, require};
use crate::audit::{AuditTrail, AuditedCall, CallKind};
use crate::authority::{KeyAuthority, MAX_ROTATION_GRACE, NewKey, QuotaChange};
use crate::domain::audit::AuditEvent;
use crate::domain::key_settings::{self, ExpiryChange};
use crate::domain::{KeyId, LimitSource, OwnerScope, Permission, RootKey, Tiers};
use crate::error::{Error, Result};
use crate::leak_report::{LeakReports, LeakVerdict, ReportOrigin, ReportedToken, Reporter};
use crate::ratelimit::usage::Granularity;
use crate::store::{KeyChanges, ListQuery};

const DEFAULT_PAGE_SIZE: i32 = 50;
const MAX_PAGE_SIZE: i32 = 100;

pub struct KeyApi {
    pub authority: Arc<KeyAuthority>,
    pub gate: RootKeyGate,
    pub audit: AuditTrail,
    pub leaks: Arc<LeakReports>,
}

/// The most tokens one ReportLeakedKeys call may carry.
const MAX_REPORTED_TOKENS: usize = 1000;

/// The page size a request asks for: 1 to 100, 0 for 50.
pub fn parse_page_size(raw: i32) -> Result<usize> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        n if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n as usize),
        n => Err(Error::invalid(
            "page_size",
            format!("must be 1 to {MAX_PAGE_SIZE}, or 0 for {DEFAULT_PAGE_SIZE} (got {n})"),
        )),
    }
}

/// The root key a call carries, recorded as the call's actor, holding `permission`.
pub async fn caller<T>(
    gate: &RootKeyGate,
    request: &Request<T>,
    call: &mut AuditedCall,
    permission: Permission,
) -> Result<RootKey> {
    let caller = gate.authenticate(request.metadata()).await?;
    call.actor(&caller);
    require(&caller, permission)?;
    Ok(caller)
}

/// A CreateKeyRequest's fields, each checked by its domain rule: everything
/// CreateKey checks before it needs the caller or the store (the fuzz target
/// `requests` runs it on arbitrary messages).
pub fn parse_create(req: pb::CreateKeyRequest, tiers: &Tiers) -> Result<NewKey> {
    Ok(NewKey {
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
        limits: convert::parse_limit_source(tiers, &req.tier, &req.rate_limits)?,
        quota: req.quota.as_ref().map(convert::parse_quota).transpose()?,
    })
}

/// An UpdateKeyRequest's id, changes and quota change, checked like
/// [`parse_create`]'s fields.
pub fn parse_update(
    req: pb::UpdateKeyRequest,
    tiers: &Tiers,
) -> Result<(KeyId, KeyChanges, Option<QuotaChange>)> {
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
            Some(pb::update_key_request::Expiry::NeverExpires(true)) => Some(ExpiryChange::Never),
            Some(pb::update_key_request::Expiry::NeverExpires(false)) => {
                return Err(Error::invalid(
                    "never_expires",
                    "only true is meaningful; to set an expiry use expires_in_days",
                ));
            }
        },
        limits: match req.limits {
            None => None,
            Some(pb::update_key_request::Limits::Tier(tier)) => {
                Some(LimitSource::Tier(tiers.parse_name("tier", &tier)?))
            }
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
        Some(pb::update_key_request::QuotaChange::RemoveQuota(true)) => Some(QuotaChange::Remove),
        Some(pb::update_key_request::QuotaChange::RemoveQuota(false)) => {
            return Err(Error::invalid(
                "remove_quota",
                "only true is meaningful; to change the quota use quota or add_to_quota",
            ));
        }
    };
    Ok((id, changes, quota))
}

/// Records a limit source (or its removal) in an audit event.
fn record_limits(event: &mut AuditEvent, field: &str, limits: Option<&LimitSource>) {
    let value = match limits {
        None => "none".to_owned(),
        Some(LimitSource::Tier(tier)) => format!("tier {tier}"),
        Some(LimitSource::Own(limits)) => {
            let listed: Vec<String> = limits.iter().map(ToString::to_string).collect();
            listed.join(", ")
        }
    };
    event.set_field(field, &value);
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.KeyService/CreateKey",
            CallKind::Change,
            create
        )
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::GetKeyResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.KeyService/GetKey",
            CallKind::Read,
            get
        )
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.KeyService/ListKeys",
            CallKind::Read,
            list
        )
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::UpdateKeyResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.KeyService/UpdateKey",
            CallKind::Change,
            update
        )
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.KeyService/RevokeKey",
            CallKind::Change,
            revoke
        )
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.KeyService/RotateKey",
            CallKind::Change,
            rotate
        )
    }

    async fn get_key_usage(
        &self,
        request: Request<pb::GetKeyUsageRequest>,
    ) -> Result<Response<pb::GetKeyUsageResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.KeyService/GetKeyUsage",
            CallKind::Read,
            usage
        )
    }

    async fn set_owner_limits(
        &self,
        request: Request<pb::SetOwnerLimitsRequest>,
    ) -> Result<Response<pb::SetOwnerLimitsResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.KeyService/SetOwnerLimits",
            CallKind::Change,
            set_limits
        )
    }

    async fn get_owner_limits(
        &self,
        request: Request<pb::GetOwnerLimitsRequest>,
    ) -> Result<Response<pb::GetOwnerLimitsResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.KeyService/GetOwnerLimits",
            CallKind::Read,
            get_limits
        )
    }

    // Each true positive's event is written in its revocation's
    // transaction; only a refused call leaves an event of its own.
    async fn report_leaked_keys(
        &self,
        request: Request<pb::ReportLeakedKeysRequest>,
    ) -> Result<Response<pb::ReportLeakedKeysResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.KeyService/ReportLeakedKeys",
            CallKind::Read,
            report_leaks
        )
    }
}

impl KeyApi {
    async fn create(
        &self,
        request: Request<pb::CreateKeyRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::CreateKeyResponse> {
        call.target_owner(&request.get_ref().owner_id);
        let caller = caller(&self.gate, &request, call, Permission::KeysWrite).await?;
        let new = parse_create(request.into_inner(), self.authority.tiers())?;
        let event = &mut call.event;
        event.set_field("name", &new.name);
        event.set_list_field("scopes", &new.scopes.to_strings());
        event.set_field("environment", new.environment.as_str());
        if !new.metadata.is_empty() {
            event.set_field(
                "metadata",
                &serde_json::to_string(&new.metadata).unwrap_or_default(),
            );
        }
        if let ExpiryChange::InDays(days) = new.expiry {
            event.set_field("expires_in_days", &days.to_string());
        }
        if let Some(limits) = &new.limits {
            record_limits(event, "limits", Some(limits));
        }
        if let Some(quota) = &new.quota {
            event.set_field("quota", &serde_json::to_string(quota).unwrap_or_default());
        }
        let issued = self.authority.create_key(&caller, new, event).await?;
        Ok(pb::CreateKeyResponse {
            key: issued.full_key,
            api_key: Some(convert::api_key(issued.api_key)),
        })
    }

    async fn get(
        &self,
        request: Request<pb::GetKeyRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::GetKeyResponse> {
        call.target_key(&request.get_ref().id);
        let caller = caller(&self.gate, &request, call, Permission::KeysRead).await?;
        let id = convert::parse_key_id("id", &request.get_ref().id)?;
        let key = self.authority.get_key(&caller, &id).await?;
        Ok(pb::GetKeyResponse {
            api_key: Some(convert::api_key(key)),
        })
    }

    async fn list(
        &self,
        request: Request<pb::ListKeysRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::ListKeysResponse> {
        call.target_owner(&request.get_ref().owner_id);
        let caller = caller(&self.gate, &request, call, Permission::KeysRead).await?;
        let req = request.into_inner();
        let page_size = parse_page_size(req.page_size)?;
        let owner_id = match req.owner_id.as_str() {
            "" => None,
            raw => Some(key_settings::parse_owner_id(raw)?),
        };
        let query = ListQuery {
            owner_id,
            scope: OwnerScope::All,
            include_revoked: req.include_revoked,
            after: convert::parse_page_token(&req.page_token)?,
            page_size: page_size as u64,
        };
        let (keys, next) = self.authority.list_keys(&caller, query).await?;
        Ok(pb::ListKeysResponse {
            api_keys: keys.into_iter().map(convert::api_key).collect(),
            next_page_token: next.as_ref().map(convert::page_token).unwrap_or_default(),
        })
    }

    async fn update(
        &self,
        request: Request<pb::UpdateKeyRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::UpdateKeyResponse> {
        call.target_key(&request.get_ref().id);
        let caller = caller(&self.gate, &request, call, Permission::KeysWrite).await?;
        let (id, changes, quota) = parse_update(request.into_inner(), self.authority.tiers())?;
        record_update(&mut call.event, &changes, quota.as_ref());
        let key = self
            .authority
            .update_key(&caller, &id, changes, quota, &mut call.event)
            .await?;
        Ok(pb::UpdateKeyResponse {
            api_key: Some(convert::api_key(key)),
        })
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeKeyRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::RevokeKeyResponse> {
        call.target_key(&request.get_ref().id);
        let caller = caller(&self.gate, &request, call, Permission::KeysWrite).await?;
        let req = request.into_inner();
        let id = convert::parse_key_id("id", &req.id)?;
        let owner_id = (!req.owner_id.is_empty()).then_some(req.owner_id.as_str());
        call.event.set_field("revoked", "true");
        let key = self
            .authority
            .revoke_key(&caller, &id, owner_id, &mut call.event)
            .await?;
        Ok(pb::RevokeKeyResponse {
            api_key: Some(convert::api_key(key)),
        })
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateKeyRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::RotateKeyResponse> {
        call.target_key(&request.get_ref().id);
        let caller = caller(&self.gate, &request, call, Permission::KeysWrite).await?;
        let req = request.into_inner();
        let id = convert::parse_key_id("id", &req.id)?;
        let grace = match req.grace_period {
            None => Duration::zero(),
            Some(raw) => convert::parse_bounded_duration("grace_period", &raw, MAX_ROTATION_GRACE)?,
        };
        call.event
            .set_field("grace_period_secs", &grace.num_seconds().to_string());
        let (issued, previous) = self
            .authority
            .rotate_key(&caller, &id, grace, &mut call.event)
            .await?;
        Ok(pb::RotateKeyResponse {
            key: issued.full_key,
            api_key: Some(convert::api_key(issued.api_key)),
            previous_api_key: Some(convert::api_key(previous)),
        })
    }

    async fn usage(
        &self,
        request: Request<pb::GetKeyUsageRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::GetKeyUsageResponse> {
        call.target_key(&request.get_ref().id);
        let caller = caller(&self.gate, &request, call, Permission::KeysRead).await?;
        let req = request.into_inner();
        let id = convert::parse_key_id("id", &req.id)?;
        let granularity = match pb::UsageGranularity::try_from(req.granularity) {
            Ok(pb::UsageGranularity::Unspecified | pb::UsageGranularity::Hour) => Granularity::Hour,
            Ok(pb::UsageGranularity::Day) => Granularity::Day,
            Err(_) => {
                return Err(Error::invalid(
                    "granularity",
                    "use USAGE_GRANULARITY_HOUR or USAGE_GRANULARITY_DAY",
                ));
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
            .key_usage(&caller, &id, granularity, start, end)
            .await?;
        Ok(pb::GetKeyUsageResponse {
            buckets: usage
                .buckets
                .into_iter()
                .map(|bucket| pb::UsageBucket {
                    start_time: Some(convert::timestamp_secs(bucket.start_secs)),
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
                    time: Some(convert::timestamp_ms(r.at_ms)),
                })
                .collect(),
        })
    }

    async fn set_limits(
        &self,
        request: Request<pb::SetOwnerLimitsRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::SetOwnerLimitsResponse> {
        call.target_owner(&request.get_ref().owner_id);
        let caller = caller(&self.gate, &request, call, Permission::KeysWrite).await?;
        let req = request.into_inner();
        let owner_id = key_settings::parse_owner_id(&req.owner_id)?;
        let limits =
            convert::parse_limit_source(self.authority.tiers(), &req.tier, &req.rate_limits)?;
        record_limits(&mut call.event, "owner_limits", limits.as_ref());
        self.authority
            .set_owner_limits(&caller, &owner_id, limits.clone(), &call.event)
            .await?;
        Ok(pb::SetOwnerLimitsResponse {
            owner_limits: Some(convert::owner_limits(owner_id, limits)),
        })
    }

    async fn get_limits(
        &self,
        request: Request<pb::GetOwnerLimitsRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::GetOwnerLimitsResponse> {
        call.target_owner(&request.get_ref().owner_id);
        let caller = caller(&self.gate, &request, call, Permission::KeysRead).await?;
        let owner_id = key_settings::parse_owner_id(&request.get_ref().owner_id)?;
        let limits = self.authority.owner_limits(&caller, &owner_id).await?;
        Ok(pb::GetOwnerLimitsResponse {
            owner_limits: Some(convert::owner_limits(owner_id, limits)),
        })
    }

    async fn report_leaks(
        &self,
        request: Request<pb::ReportLeakedKeysRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::ReportLeakedKeysResponse> {
        let caller = caller(&self.gate, &request, call, Permission::KeysWrite).await?;
        let peer_address = call.event.peer_address.clone();
        let tokens = request.into_inner().tokens;
        if tokens.is_empty() || tokens.len() > MAX_REPORTED_TOKENS {
            return Err(Error::invalid(
                "tokens",
                format!(
                    "send 1 to {MAX_REPORTED_TOKENS} tokens per call (got {}); split a longer list",
                    tokens.len()
                ),
            ));
        }
        let tokens: Vec<ReportedToken> = tokens
            .into_iter()
            .map(|t| ReportedToken {
                token: t.token,
                token_type: t.token_type,
                url: t.url,
                source: t.source,
            })
            .collect();
        let origin = ReportOrigin {
            reporter: Reporter::RootKey(&caller),
            method: "apikeyd.v1.KeyService/ReportLeakedKeys",
            peer_address: &peer_address,
        };
        let verdicts = self.leaks.report(&origin, &tokens).await?;
        Ok(pb::ReportLeakedKeysResponse {
            findings: verdicts.into_iter().map(leak_finding).collect(),
        })
    }
}

fn leak_finding(verdict: LeakVerdict) -> pb::LeakFinding {
    match verdict {
        LeakVerdict::TruePositive {
            key_id,
            already_revoked,
        } => pb::LeakFinding {
            label: pb::LeakLabel::TruePositive as i32,
            key_id: key_id.to_string(),
            already_revoked,
        },
        LeakVerdict::FalsePositive => pb::LeakFinding {
            label: pb::LeakLabel::FalsePositive as i32,
            key_id: String::new(),
            already_revoked: false,
        },
    }
}

/// Records what an UpdateKey changes in its audit event.
fn record_update(event: &mut AuditEvent, changes: &KeyChanges, quota: Option<&QuotaChange>) {
    if let Some(name) = &changes.name {
        event.set_field("name", name);
    }
    if let Some(enabled) = changes.enabled {
        event.set_field("enabled", &enabled.to_string());
    }
    if let Some(scopes) = &changes.scopes {
        event.set_list_field("scopes", &scopes.to_strings());
    }
    if let Some(metadata) = &changes.metadata {
        event.set_field(
            "metadata",
            &serde_json::to_string(metadata).unwrap_or_default(),
        );
    }
    match changes.expiry {
        Some(ExpiryChange::InDays(days)) => event.set_field("expires_in_days", &days.to_string()),
        Some(ExpiryChange::Never) => event.set_field("never_expires", "true"),
        None => {}
    }
    if let Some(limits) = &changes.limits {
        record_limits(event, "limits", Some(limits));
    }
    match quota {
        Some(QuotaChange::Set(quota)) => {
            event.set_field("quota", &serde_json::to_string(quota).unwrap_or_default());
        }
        Some(QuotaChange::Add(amount)) => event.set_field("add_to_quota", &amount.to_string()),
        Some(QuotaChange::Remove) => event.set_field("remove_quota", "true"),
        None => {}
    }
}
