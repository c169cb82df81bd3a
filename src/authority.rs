//! The key authority: the product's use cases (issue, look up, change,
//! revoke, rotate and validate keys) over the store and the hasher. The gRPC
//! layer parses requests into the types here and converts the results back.
//! Keys imported from another store have their own module
//! ([`imported_keys`]): found by digest, then judged like any other.

mod imported_keys;

pub use imported_keys::{ImportActor, ImportRow, ImportRun, ImportSummary};

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use crate::access::{key_out_of_reach, require_owner};
use crate::domain::audit::AuditEvent;
use crate::domain::key_settings::ExpiryChange;
use crate::domain::{
    self, ApiKey, Environment, GeneratedKey, KeyId, KeyKind, LimitSource, PresentedKey, Quota,
    RootKey, Scope, ScopeSet, Tiers, ValidationCode,
};
use crate::error::{Error, Result};
use crate::invalidation::{Invalidation, InvalidationBus};
use crate::key_cache::{FoundKey, KeyCache};
use crate::last_used::LastUsedTracker;
use crate::ratelimit::usage::{Granularity, KeyUsage, MAX_BUCKETS, RequestContext};
use crate::ratelimit::{KeyCall, LimitStatus, RateLimiter};
use crate::secrets::{SecretCheck, SecretHasher};
use crate::store::{
    Expiry, IMPORTED_SECRET_HASH, KeyChanges, KeyStore, ListCursor, ListQuery, NewKeyRow,
};
use crate::telemetry::metrics::observe_db;

/// The longest grace period a rotation may give the old key.
pub const MAX_ROTATION_GRACE: Duration = Duration::days(7);

/// The authority's configurable rules.
#[derive(Clone, Copy, Debug)]
pub struct AuthorityPolicy {
    /// Unrevoked keys an owner may hold at once.
    pub max_active_keys_per_owner: u32,
}

/// A key to issue, with every field already within bounds.
pub struct NewKey {
    pub owner_id: String,
    pub name: String,
    pub scopes: ScopeSet,
    pub environment: Environment,
    pub metadata: BTreeMap<String, String>,
    pub expiry: ExpiryChange,
    /// `None` gives the key the default tier.
    pub limits: Option<LimitSource>,
    pub quota: Option<Quota>,
}

/// What an update does to a key's quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaChange {
    /// Sets the quota anew (its balance becomes the live one).
    Set(Quota),
    /// Adds to the live balance of the key's quota.
    Add(i64),
    /// Unlimited uses from now on.
    Remove,
}

/// A freshly issued key: the full key (shown once) and its record.
pub struct IssuedKey {
    pub full_key: String,
    pub api_key: ApiKey,
}

/// What Validate answers.
pub struct Verdict {
    pub code: ValidationCode,
    /// Present when the key was found and its secret matched: the cached
    /// record itself, shared, not a copy.
    pub api_key: Option<FoundKey>,
    /// The live balance of the key's quota when the limiter answered (the
    /// record holds the balance last set).
    pub quota_balance: Option<i64>,
    /// The tightest limit, when limits were checked and the limiter answered
    /// (or refused by its fail-closed policy).
    pub rate_limit: Option<LimitStatus>,
}

impl Verdict {
    /// A key refused before it was found (or before its secret matched):
    /// nothing about a key is revealed.
    fn refused(code: ValidationCode) -> Verdict {
        Verdict {
            code,
            api_key: None,
            quota_balance: None,
            rate_limit: None,
        }
    }
}

/// What Validate is asked besides the key.
pub struct ValidationRequest<'a> {
    pub required: &'a [Scope],
    /// Units taken from every limit and the quota (at least 1).
    pub cost: u32,
    pub context: RequestContext,
    /// When the caller stops waiting (shortly before its gRPC deadline);
    /// `None` for the limiter's default wait.
    pub answer_by: Option<tokio::time::Instant>,
}

pub struct KeyAuthority {
    store: KeyStore,
    /// Key records for Validate, evicted on every change.
    keys: Arc<KeyCache>,
    /// Where changes are published for the other replicas, when they share Redis.
    invalidations: Option<Arc<InvalidationBus>>,
    hasher: Arc<SecretHasher>,
    last_used: Arc<LastUsedTracker>,
    /// Counts limits, quotas and usage.
    limiter: Arc<RateLimiter>,
    /// Tiers from configuration, for keys and owners that name one.
    tiers: Arc<Tiers>,
    /// Unrevoked keys an owner may hold at once.
    max_active_keys_per_owner: u32,
}

impl KeyAuthority {
    pub fn new(
        store: KeyStore,
        hasher: Arc<SecretHasher>,
        last_used: Arc<LastUsedTracker>,
        keys: Arc<KeyCache>,
        limiter: Arc<RateLimiter>,
        tiers: Arc<Tiers>,
        policy: AuthorityPolicy,
    ) -> Self {
        KeyAuthority {
            store,
            keys,
            invalidations: None,
            hasher,
            last_used,
            limiter,
            tiers,
            max_active_keys_per_owner: policy.max_active_keys_per_owner,
        }
    }

    /// Publishes every change on `bus` from now on, so that other replicas
    /// evict it too.
    pub fn publishing_to(mut self, bus: Option<Arc<InvalidationBus>>) -> Self {
        self.invalidations = bus;
        self
    }

    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// Issues a key for an owner `caller` reaches; the event records its id.
    pub async fn create_key(
        &self,
        caller: &RootKey,
        new: NewKey,
        audit: &mut AuditEvent,
    ) -> Result<IssuedKey> {
        require_owner(caller, &new.owner_id)?;
        let generated = GeneratedKey::generate(new.environment.key_kind());
        let row = NewKeyRow {
            id: generated.id.clone(),
            prefix: generated.display_prefix(),
            secret_hash: self.hasher.hash(generated.kind, &generated.secret).await?,
            owner_id: new.owner_id,
            name: new.name,
            scopes: new.scopes,
            environment: new.environment,
            metadata: new.metadata,
            enabled: true,
            expiry: Expiry::After(new.expiry),
            limits: new
                .limits
                .unwrap_or_else(|| LimitSource::Tier(self.tiers.default_tier().to_owned())),
            quota: new.quota.map(|q| Quota {
                version: quota_version(),
                ..q
            }),
        };
        audit.set_key(&generated.id);
        let api_key = observe_db(
            "create_key",
            self.store.create_within_owner_limit(
                row,
                self.max_active_keys_per_owner,
                domain::now(),
                audit,
            ),
        )
        .await?;
        Ok(IssuedKey {
            full_key: generated.into_full_key(),
            api_key,
        })
    }

    pub async fn get_key(&self, caller: &RootKey, id: &KeyId) -> Result<ApiKey> {
        let key = self.reachable_key(caller, id, None).await?;
        Ok(self.with_live_quota(key).await)
    }

    /// The key `id`, if `caller` reaches its owner (recording the owner in
    /// `audit`). A root key that reaches every owner learns that an id does
    /// not exist; a scoped one gets one answer for "not yours" and "no such
    /// key", so it cannot probe other owners' ids.
    async fn reachable_key(
        &self,
        caller: &RootKey,
        id: &KeyId,
        audit: Option<&mut AuditEvent>,
    ) -> Result<ApiKey> {
        match observe_db("get_key", self.store.get(id)).await {
            Ok(key) => {
                if let Some(audit) = audit {
                    audit.set_owner(&key.owner_id);
                }
                if caller.reaches_owner(&key.owner_id) {
                    Ok(key)
                } else {
                    Err(key_out_of_reach(caller, id, true))
                }
            }
            Err(Error::KeyNotFound { .. }) => Err(key_out_of_reach(caller, id, false)),
            Err(other) => Err(other),
        }
    }

    /// One page of the keys `caller` reaches.
    pub async fn list_keys(
        &self,
        caller: &RootKey,
        mut query: ListQuery,
    ) -> Result<(Vec<ApiKey>, Option<ListCursor>)> {
        if let Some(owner_id) = &query.owner_id {
            require_owner(caller, owner_id)?;
        }
        query.scope = caller.owner_scope.clone();
        let (keys, next) = observe_db("list_keys", self.store.list(query, domain::now())).await?;
        let mut live = Vec::with_capacity(keys.len());
        for key in keys {
            live.push(self.with_live_quota(key).await);
        }
        Ok((live, next))
    }

    /// Applies `changes`, then `quota` (adding to a live balance needs the
    /// limiter, and a key that has a quota).
    pub async fn update_key(
        &self,
        caller: &RootKey,
        id: &KeyId,
        mut changes: KeyChanges,
        quota: Option<QuotaChange>,
        audit: &mut AuditEvent,
    ) -> Result<ApiKey> {
        let current = self.reachable_key(caller, id, Some(audit)).await?;
        let mut add = None;
        match quota {
            None => {}
            Some(QuotaChange::Set(quota)) => {
                changes.quota = Some(Some(Quota {
                    version: quota_version(),
                    ..quota
                }));
            }
            Some(QuotaChange::Remove) => changes.quota = Some(None),
            Some(QuotaChange::Add(amount)) => {
                let amount = domain::quota::parse_addition(amount)?;
                if current.quota.is_none() {
                    return Err(Error::invalid(
                        "add_to_quota",
                        "the key has no quota to add to; set one with `quota`",
                    ));
                }
                add = Some(amount);
            }
        }
        let mut key = observe_db(
            "update_key",
            self.store.update(id, changes, domain::now(), audit),
        )
        .await?;
        self.key_changed(id);
        if let Some(amount) = add {
            let balance = self.limiter.add_to_quota(&key, amount).await?;
            if let Some(quota) = key.quota.as_mut() {
                quota.remaining = balance;
            }
            return Ok(key);
        }
        Ok(self.with_live_quota(key).await)
    }

    pub async fn revoke_key(
        &self,
        caller: &RootKey,
        id: &KeyId,
        owner_id: Option<&str>,
        audit: &mut AuditEvent,
    ) -> Result<ApiKey> {
        let reach = |key: &ApiKey| {
            if caller.reaches_owner(&key.owner_id) {
                Ok(())
            } else {
                Err(key_out_of_reach(caller, id, true))
            }
        };
        let revoked = observe_db(
            "revoke_key",
            self.store.revoke(id, owner_id, domain::now(), audit, reach),
        )
        .await;
        let key = match revoked {
            Err(Error::KeyNotFound { .. }) => return Err(key_out_of_reach(caller, id, false)),
            other => other?,
        };
        self.key_changed(id);
        Ok(self.with_live_quota(key).await)
    }

    /// Evicts a changed key from every replica's cache: here at once, on
    /// the others when the bus delivers it.
    fn key_changed(&self, id: &KeyId) {
        self.keys.evict(id);
        self.publish(Invalidation::Key(id.clone()));
    }

    fn publish(&self, change: Invalidation) {
        if let Some(bus) = &self.invalidations {
            bus.publish(change);
        }
    }

    /// The limits all of `owner_id`'s keys share.
    pub async fn owner_limits(
        &self,
        caller: &RootKey,
        owner_id: &str,
    ) -> Result<Option<LimitSource>> {
        require_owner(caller, owner_id)?;
        observe_db("owner_limits", self.store.owner_limits(owner_id)).await
    }

    /// Sets (or with `None`, removes) the limits all of `owner_id`'s keys share.
    pub async fn set_owner_limits(
        &self,
        caller: &RootKey,
        owner_id: &str,
        limits: Option<LimitSource>,
        audit: &AuditEvent,
    ) -> Result<()> {
        require_owner(caller, owner_id)?;
        observe_db(
            "set_owner_limits",
            self.store
                .set_owner_limits(owner_id, limits.as_ref(), domain::now(), audit),
        )
        .await?;
        self.keys.evict_owner(owner_id);
        self.publish(Invalidation::Owner(owner_id.to_owned()));
        Ok(())
    }

    /// A key's validations by code per bucket from `start` to `end` (default:
    /// the 24 buckets up to now), and its recent requests.
    pub async fn key_usage(
        &self,
        caller: &RootKey,
        id: &KeyId,
        granularity: Granularity,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
    ) -> Result<KeyUsage> {
        let key = self.reachable_key(caller, id, None).await?;
        let size = granularity.seconds();
        let last = end.unwrap_or_else(Utc::now).timestamp().div_euclid(size);
        let first = start.map_or(last - 23, |s| s.timestamp().div_euclid(size));
        if first > last {
            return Err(Error::invalid("start_time", "must not be after end_time"));
        }
        if last - first >= MAX_BUCKETS {
            return Err(Error::invalid(
                "start_time",
                format!("at most {MAX_BUCKETS} buckets per call; narrow the range or use days"),
            ));
        }
        self.limiter.key_usage(&key, granularity, first, last).await
    }

    /// The key with its quota's live balance, when the limiter answers.
    async fn with_live_quota(&self, mut key: ApiKey) -> ApiKey {
        if let Some(balance) = self.limiter.live_quota(&key).await {
            if let Some(quota) = key.quota.as_mut() {
                quota.remaining = balance;
            }
        }
        key
    }

    /// A new key with the old one's settings; the old key keeps validating
    /// for `grace` (zero revokes it at once).
    pub async fn rotate_key(
        &self,
        caller: &RootKey,
        id: &KeyId,
        grace: Duration,
        audit: &mut AuditEvent,
    ) -> Result<(IssuedKey, ApiKey)> {
        if grace < Duration::zero() || grace > MAX_ROTATION_GRACE {
            return Err(Error::invalid(
                "grace_period",
                "must be between 0 and 7 days",
            ));
        }
        let current = self.reachable_key(caller, id, Some(audit)).await?;
        let current = self.with_live_quota(current).await;
        let generated = GeneratedKey::generate(current.environment.key_kind());
        let secret_hash = self.hasher.hash(generated.kind, &generated.secret).await?;
        let (new_id, prefix) = (generated.id.clone(), generated.display_prefix());
        audit.set_field("new_key_id", new_id.as_str());
        let now = domain::now();
        let rotation = self.store.rotate(
            id,
            |old| NewKeyRow {
                id: new_id,
                prefix,
                secret_hash,
                owner_id: old.owner_id.clone(),
                name: old.name.clone(),
                scopes: old.scopes.clone(),
                environment: old.environment,
                metadata: old.metadata.clone(),
                enabled: old.enabled,
                expiry: Expiry::At(old.expires_at),
                limits: old.limits.clone(),
                // The balance moves to the new key (as read just now), so
                // a rotation is no way to refill a quota.
                quota: current.quota.map(|q| Quota {
                    version: quota_version(),
                    ..q
                }),
            },
            now + grace,
            now,
            audit,
        );
        let (api_key, previous) = observe_db("rotate_key", rotation).await?;
        self.key_changed(id);
        Ok((
            IssuedKey {
                full_key: generated.into_full_key(),
                api_key,
            },
            previous,
        ))
    }

    /// Checks, in order: format, lookup (id and secret), revoked, disabled,
    /// expired, scopes, then the key's and its owner's limits and the key's
    /// quota, all-or-nothing in one limiter decision that also records usage.
    /// A malformed key costs no I/O; a warm key no argon2; a found key one
    /// limiter round trip. A string not in our format that could be another
    /// store's key is looked up by its digest instead ([`imported_keys`]).
    pub async fn validate(&self, raw_key: &str, request: ValidationRequest<'_>) -> Result<Verdict> {
        let presented = match PresentedKey::parse(raw_key) {
            Ok(key) => key,
            // Boxed: a rare path whose state would otherwise be copied on every call.
            Err(not_ours) => {
                return Box::pin(self.validate_imported(raw_key, not_ours, request)).await;
            }
        };
        match self.verified_key(&presented).await? {
            Some(api_key) => self.admit(api_key, request).await,
            None => Ok(Verdict::refused(ValidationCode::NotFound)),
        }
    }

    /// The checks after a key was found and its secret matched, the same for
    /// every key however it was found: revoked, disabled, expired, scopes,
    /// then limits, quota and usage; a valid use is recorded as the last.
    async fn admit(&self, api_key: FoundKey, request: ValidationRequest<'_>) -> Result<Verdict> {
        let now = domain::now();
        let judged = api_key.judge(now, request.required);
        let (code, rate_limit, quota_balance) = self.count(&api_key, judged, request).await?;
        if code == ValidationCode::Valid {
            self.last_used.record(&api_key.id, now);
        }
        Ok(Verdict {
            code,
            api_key: Some(api_key),
            quota_balance,
            rate_limit,
        })
    }

    /// The record of the API key `presented` names, when the presented
    /// secret is that key's own (whatever the key's state: revoked, expired,
    /// …); `None` for a root key, an unknown id, another environment's
    /// prefix or a wrong secret. Validate's lookup: the key cache, then the
    /// hasher's check of the secret (memo, argon2, rehash).
    pub async fn verified_key(&self, presented: &PresentedKey) -> Result<Option<FoundKey>> {
        if presented.kind == KeyKind::Root {
            return Ok(None);
        }
        let lookup = self
            .keys
            .get_or_load(&presented.id, || {
                observe_db("find_key", self.store.find(&presented.id))
            })
            .await?;
        let Some((api_key, secret_hash)) = &lookup.found else {
            return Ok(None);
        };
        // An imported key has no secret of ours: only its digest finds it.
        if presented.kind != api_key.environment.key_kind()
            || secret_hash.as_ref() == IMPORTED_SECRET_HASH
        {
            return Ok(None);
        }
        match self
            .hasher
            .check(presented, secret_hash, &lookup.verified)
            .await?
        {
            SecretCheck::Wrong => return Ok(None),
            SecretCheck::Right { rehashed: None } => {}
            SecretCheck::Right {
                rehashed: Some(new_hash),
            } => {
                Box::pin(self.store_rehash(&api_key.id, secret_hash, new_hash)).await;
            }
        }
        Ok(FoundKey::of(lookup))
    }

    /// Revokes a key reported leaked, whose secret the reporter presented
    /// ([`Self::verified_key`]), with the event that records it; answers
    /// whether it was live until now (false: revoked already, and left so).
    pub async fn revoke_leaked_key(&self, id: &KeyId, audit: &mut AuditEvent) -> Result<bool> {
        let now = domain::now();
        let key = observe_db(
            "revoke_key",
            self.store.revoke(id, None, now, audit, |_| Ok(())),
        )
        .await?;
        self.key_changed(id);
        Ok(key.revoked_at == Some(now))
    }

    /// Replaces a key's hash made under an old argon2 cost with one made
    /// under the configured cost, unless it has changed meanwhile (another
    /// replica did the same, or the key was rotated). The cached record keeps
    /// the old hash, which the same secret still matches. A failure is only
    /// logged: the next process to verify the key tries again.
    async fn store_rehash(&self, id: &KeyId, old_hash: &str, new_hash: String) {
        let replaced = observe_db(
            "rehash_key",
            self.store.replace_secret_hash(id, old_hash, &new_hash),
        )
        .await;
        if let Err(e) = replaced {
            tracing::warn!(key_id = %id, error = %e, "could not store the key's rehashed secret");
        }
    }

    /// The limiter's part of Validate, for a key found with the right
    /// secret: its own limits and its owner's shared ones, resolved from
    /// tiers, its quota and the request go to the limiter in one call; a key
    /// its own limit refused a moment ago is refused again before its
    /// owner's limits are looked up. Answers the code, the tightest limit
    /// and the quota's live balance.
    async fn count(
        &self,
        key: &ApiKey,
        judged: ValidationCode,
        request: ValidationRequest<'_>,
    ) -> Result<(ValidationCode, Option<LimitStatus>, Option<i64>)> {
        let mut call = KeyCall {
            key,
            own_limits: self.tiers.resolve(&key.limits),
            owner_limits: &[],
            judged,
            cost: request.cost,
            context: request.context,
            answer_by: request.answer_by,
        };
        if let Some(refusal) = self.limiter.remembered_refusal(&call) {
            let verdict = self.limiter.refuse_again(call, refusal).await;
            return Ok((verdict.code, verdict.rate_limit, None));
        }
        let owner_limits = if judged == ValidationCode::Valid {
            let owner = key.owner_id.as_str();
            Some(
                self.keys
                    .owner_limits_or_load(owner, || {
                        observe_db("owner_limits", self.store.owner_limits(owner))
                    })
                    .await?,
            )
        } else {
            None
        };
        if let Some(shared) = owner_limits
            .as_ref()
            .and_then(|cached| cached.limits.as_ref())
        {
            call.owner_limits = self.tiers.resolve(shared);
        }
        let verdict = self.limiter.validate(call).await?;
        let quota_balance = verdict.quota_balance.filter(|_| key.quota.is_some());
        Ok((verdict.code, verdict.rate_limit, quota_balance))
    }
}

/// A fresh quota version: setting a quota replaces whatever balance the
/// limiter holds for an older one.
fn quota_version() -> i64 {
    Utc::now().timestamp_micros()
}
