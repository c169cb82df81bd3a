//! The key authority: the product's use cases (issue, look up, change,
//! revoke, rotate and validate keys) over the store and the hasher. The gRPC
//! layer parses requests into the types here and converts the results back.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Duration;

use crate::domain::key_settings::ExpiryChange;
use crate::domain::{
    self, ApiKey, Environment, GeneratedKey, KeyId, KeyKind, PresentedKey, Scope, ScopeSet,
    ValidationCode,
};
use crate::error::{Error, Result};
use crate::key_cache::{KeyCache, WrongSecretGuard};
use crate::last_used::LastUsedTracker;
use crate::secrets::SecretHasher;
use crate::store::{Expiry, KeyChanges, KeyStore, ListCursor, ListQuery, NewKeyRow, NewRootKeyRow};
use crate::telemetry::metrics::observe_db;

/// The longest grace period a rotation may give the old key.
pub const MAX_ROTATION_GRACE: Duration = Duration::days(7);

/// A key to issue, with every field already within bounds.
pub struct NewKey {
    pub owner_id: String,
    pub name: String,
    pub scopes: ScopeSet,
    pub environment: Environment,
    pub metadata: BTreeMap<String, String>,
    pub expiry: ExpiryChange,
}

/// A freshly issued key: the full key (shown once) and its record.
pub struct IssuedKey {
    pub full_key: String,
    pub api_key: ApiKey,
}

/// What Validate answers.
pub struct Verdict {
    pub code: ValidationCode,
    /// Present when the key was found and its secret matched.
    pub api_key: Option<ApiKey>,
}

pub struct KeyAuthority {
    store: KeyStore,
    /// Key records for Validate, evicted on every change.
    keys: Arc<KeyCache>,
    /// Caps argon2 runs spent on wrong secrets for one key id.
    wrong_secrets: WrongSecretGuard,
    hasher: Arc<SecretHasher>,
    last_used: Arc<LastUsedTracker>,
    /// Unrevoked keys an owner may hold at once.
    max_active_keys_per_owner: u32,
}

impl KeyAuthority {
    pub fn new(
        store: KeyStore,
        hasher: Arc<SecretHasher>,
        last_used: Arc<LastUsedTracker>,
        keys: Arc<KeyCache>,
        wrong_secrets: WrongSecretGuard,
        max_active_keys_per_owner: u32,
    ) -> Self {
        KeyAuthority {
            store,
            keys,
            wrong_secrets,
            hasher,
            last_used,
            max_active_keys_per_owner,
        }
    }

    pub async fn create_key(&self, new: NewKey) -> Result<IssuedKey> {
        let generated = GeneratedKey::generate(new.environment.key_kind());
        let row = NewKeyRow {
            id: generated.id.clone(),
            prefix: generated.display_prefix(),
            secret_hash: self.hasher.hash(&generated.secret).await?,
            owner_id: new.owner_id,
            name: new.name,
            scopes: new.scopes,
            environment: new.environment,
            metadata: new.metadata,
            enabled: true,
            expiry: Expiry::After(new.expiry),
        };
        let api_key = observe_db(
            "create_key",
            self.store.create_within_owner_limit(
                row,
                self.max_active_keys_per_owner,
                domain::now(),
            ),
        )
        .await?;
        Ok(IssuedKey {
            full_key: generated.into_full_key(),
            api_key,
        })
    }

    pub async fn get_key(&self, id: &KeyId) -> Result<ApiKey> {
        observe_db("get_key", self.store.get(id)).await
    }

    pub async fn list_keys(&self, query: ListQuery) -> Result<(Vec<ApiKey>, Option<ListCursor>)> {
        observe_db("list_keys", self.store.list(query, domain::now())).await
    }

    pub async fn update_key(&self, id: &KeyId, changes: KeyChanges) -> Result<ApiKey> {
        let updated =
            observe_db("update_key", self.store.update(id, changes, domain::now())).await?;
        self.key_changed(id).await;
        Ok(updated)
    }

    pub async fn revoke_key(&self, id: &KeyId, owner_id: Option<&str>) -> Result<ApiKey> {
        let revoked =
            observe_db("revoke_key", self.store.revoke(id, owner_id, domain::now())).await?;
        self.key_changed(id).await;
        Ok(revoked)
    }

    /// Evicts a changed key from every replica's cache.
    async fn key_changed(&self, id: &KeyId) {
        self.keys.invalidate(id).await;
    }

    /// A new key with the old one's settings; the old key keeps validating
    /// for `grace` (zero revokes it at once).
    pub async fn rotate_key(&self, id: &KeyId, grace: Duration) -> Result<(IssuedKey, ApiKey)> {
        if grace < Duration::zero() || grace > MAX_ROTATION_GRACE {
            return Err(Error::invalid(
                "grace_period",
                "must be between 0 and 7 days",
            ));
        }
        let current = observe_db("get_key", self.store.get(id)).await?;
        let generated = GeneratedKey::generate(current.environment.key_kind());
        let secret_hash = self.hasher.hash(&generated.secret).await?;
        let (new_id, prefix) = (generated.id.clone(), generated.display_prefix());
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
            },
            now + grace,
            now,
        );
        let (api_key, previous) = observe_db("rotate_key", rotation).await?;
        self.key_changed(id).await;
        Ok((
            IssuedKey {
                full_key: generated.into_full_key(),
                api_key,
            },
            previous,
        ))
    }

    /// Checks, in order: format, lookup (id and secret), revoked, disabled,
    /// expired, scopes. A malformed key costs no I/O; a warm key no argon2.
    pub async fn validate(&self, raw_key: &str, required: &[Scope]) -> Result<Verdict> {
        let not_found = Verdict {
            code: ValidationCode::NotFound,
            api_key: None,
        };
        let presented = match PresentedKey::parse(raw_key) {
            Ok(key) => key,
            Err(_) => {
                return Ok(Verdict {
                    code: ValidationCode::Malformed,
                    api_key: None,
                });
            }
        };
        if presented.kind == KeyKind::Root {
            return Ok(not_found);
        }
        let lookup = self
            .keys
            .get_or_load(
                &presented.id,
                observe_db("find_key", self.store.find(&presented.id)),
            )
            .await?;
        let Some((api_key, secret_hash)) = &lookup.found else {
            return Ok(not_found);
        };
        if presented.kind != api_key.environment.key_kind() {
            return Ok(not_found);
        }
        let (kind, id, secret) = (presented.kind, &presented.id, &presented.secret);
        let matches = if self.wrong_secrets.exhausted(id) {
            self.hasher.remembers(kind, id, secret, secret_hash).await
        } else {
            self.hasher.verify(kind, id, secret, secret_hash).await?
        };
        if !matches {
            self.wrong_secrets.record_failure(id);
            return Ok(not_found);
        }
        let now = domain::now();
        let code = api_key.judge(now, required);
        if code == ValidationCode::Valid {
            self.last_used.record(&api_key.id, now);
        }
        Ok(Verdict {
            code,
            api_key: Some(api_key.clone()),
        })
    }
}

/// Mints a root key: used by the bootstrap at first start and by the CLI.
pub async fn mint_root_key(
    hasher: &SecretHasher,
    name: String,
    permissions: ScopeSet,
) -> Result<(String, NewRootKeyRow)> {
    let generated = GeneratedKey::generate(KeyKind::Root);
    let row = NewRootKeyRow {
        id: generated.id.clone(),
        prefix: generated.display_prefix(),
        secret_hash: hasher.hash(&generated.secret).await?,
        name,
        permissions,
        created_at: domain::now(),
    };
    Ok((generated.into_full_key(), row))
}
