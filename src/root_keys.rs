//! Root keys' lifecycle: minted (by the bootstrap, the command line or
//! CreateRootKey), read, listed and revoked, always within the caller's own
//! reach: a root key never creates, sees or revokes one wider than itself.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

use crate::access::RootKeyGate;
use crate::domain::audit::AuditEvent;
use crate::domain::key_settings::ExpiryChange;
use crate::domain::{
    self, GeneratedKey, KeyId, KeyKind, OwnerScope, PermissionSet, PresentedKey, RootKey,
};
use crate::error::{Error, Result};
use crate::invalidation::{Invalidation, InvalidationBus};
use crate::secrets::{SecretCheck, SecretHasher};
use crate::store::{self, ListCursor, NewRootKeyRow, RootKeyPageQuery};
use crate::telemetry::metrics::observe_db;

/// A root key to issue, with every field already within bounds.
pub struct NewRootKey {
    pub name: String,
    pub permissions: PermissionSet,
    pub owner_scope: OwnerScope,
    pub expiry: ExpiryChange,
}

/// Mints a root key: the full key (shown once) and the row to store.
pub async fn mint(
    hasher: &SecretHasher,
    new: NewRootKey,
    created_by: Option<KeyId>,
    now: DateTime<Utc>,
) -> Result<(String, NewRootKeyRow)> {
    let generated = GeneratedKey::generate(KeyKind::Root);
    let row = NewRootKeyRow {
        id: generated.id.clone(),
        prefix: generated.display_prefix(),
        secret_hash: hasher.hash(generated.kind, &generated.secret).await?,
        name: new.name,
        permissions: new.permissions,
        owner_scope: new.owner_scope,
        created_at: now,
        expires_at: new.expiry.expires_at(now),
        created_by,
    };
    Ok((generated.into_full_key(), row))
}

/// Records a new root key's settings in its audit event.
pub fn describe_new(event: &mut AuditEvent, row: &NewRootKeyRow) {
    event.set_target_root_key(&row.id);
    event.set_field("name", &row.name);
    event.set_list_field("permissions", &row.permissions.to_strings());
    event.set_list_field("owner_scope", &row.owner_scope.to_strings());
    if let Some(at) = row.expires_at {
        event.set_field("expires_at", &at.to_rfc3339());
    }
}

/// The root-key use cases behind RootKeyService.
pub struct RootKeys {
    db: DatabaseConnection,
    hasher: Arc<SecretHasher>,
    /// Told of revocations, so this replica's data plane refuses at once.
    gate: RootKeyGate,
    /// Tells the other replicas' data planes, when replicas share Redis.
    invalidations: Option<Arc<InvalidationBus>>,
}

impl RootKeys {
    pub fn new(db: DatabaseConnection, hasher: Arc<SecretHasher>, gate: RootKeyGate) -> Self {
        RootKeys {
            db,
            hasher,
            gate,
            invalidations: None,
        }
    }

    /// Publishes every revocation on `bus` from now on.
    pub fn publishing_to(mut self, bus: Option<Arc<InvalidationBus>>) -> Self {
        self.invalidations = bus;
        self
    }

    /// Issues a root key no wider than `caller`. (Callers hold the permission
    /// each use case needs: the gRPC layer checks it before parsing.)
    pub async fn create(
        &self,
        caller: &RootKey,
        new: NewRootKey,
        audit: &mut AuditEvent,
    ) -> Result<(String, RootKey)> {
        let now = domain::now();
        caller
            .may_mint(
                &new.permissions,
                &new.owner_scope,
                new.expiry.expires_at(now),
            )
            .map_err(|escalation| Error::Escalation {
                root_key_id: caller.id.to_string(),
                reason: escalation.to_string(),
            })?;
        let (key, row) = mint(&self.hasher, new, Some(caller.id.clone()), now).await?;
        describe_new(audit, &row);
        let created = observe_db(
            "insert_root_key",
            store::insert_root_key_audited(&self.db, row, audit),
        )
        .await?;
        Ok((key, created))
    }

    /// A root key `caller` oversees.
    pub async fn get(&self, caller: &RootKey, id: &KeyId) -> Result<RootKey> {
        self.reachable(caller, id).await
    }

    /// One page of the root keys `caller` oversees, newest first.
    pub async fn list(
        &self,
        caller: &RootKey,
        include_revoked: bool,
        after: Option<ListCursor>,
        page_size: usize,
    ) -> Result<(Vec<RootKey>, Option<ListCursor>)> {
        let mut page = Vec::with_capacity(page_size);
        let mut more = false;
        let query = RootKeyPageQuery {
            include_revoked,
            after,
            batch: page_size as u64 + 1,
        };
        observe_db(
            "list_root_keys",
            store::scan_root_keys(&self.db, query, domain::now(), |key| {
                if !caller.oversees(&key) {
                    return true;
                }
                if page.len() == page_size {
                    more = true;
                    return false;
                }
                page.push(key);
                true
            }),
        )
        .await?;
        let next = page.last().filter(|_| more).map(|last| ListCursor {
            created_at: last.created_at,
            id: last.id.clone(),
        });
        Ok((page, next))
    }

    /// Revokes a root key `caller` oversees (itself included).
    pub async fn revoke(
        &self,
        caller: &RootKey,
        id: &KeyId,
        audit: &mut AuditEvent,
    ) -> Result<RootKey> {
        self.reachable(caller, id).await?;
        let revoked = observe_db(
            "revoke_root_key",
            store::revoke_root_key_audited(&self.db, id, domain::now(), audit),
        )
        .await?;
        self.root_key_revoked(id);
        Ok(revoked)
    }

    /// The root key `presented` names, when the presented secret is its own
    /// (whatever its state: revoked, expired, …).
    pub async fn verified(&self, presented: &PresentedKey) -> Result<Option<RootKey>> {
        let found = observe_db(
            "find_root_key",
            store::find_root_key(&self.db, &presented.id),
        )
        .await?;
        let Some((key, hash)) = found else {
            return Ok(None);
        };
        // A rehash under a new argon2 cost is not stored here: the key is
        // about to be revoked, and any other use of it stores its own.
        let check = self.hasher.check_root_key(presented, &hash).await?;
        Ok(matches!(check, SecretCheck::Right { .. }).then_some(key))
    }

    /// Revokes a root key reported leaked, whose secret the reporter
    /// presented ([`Self::verified`]), with the event that records it;
    /// answers whether it was live until now.
    pub async fn revoke_leaked(&self, id: &KeyId, audit: &AuditEvent) -> Result<bool> {
        let now = domain::now();
        let revoked = observe_db(
            "revoke_root_key",
            store::revoke_root_key_audited(&self.db, id, now, audit),
        )
        .await?;
        self.root_key_revoked(id);
        Ok(revoked.revoked_at == Some(now))
    }

    /// Every replica's data plane distrusts its cached root-key records:
    /// this one at once, the others when the bus delivers it.
    fn root_key_revoked(&self, id: &KeyId) {
        self.gate.root_key_revoked();
        if let Some(bus) = &self.invalidations {
            bus.publish(Invalidation::RootKey(id.clone()));
        }
    }

    /// The root key `id`, if `caller` oversees it. Only a caller that
    /// oversees everything learns that an id does not exist; any other gets
    /// the same refusal for a wider root key and a missing one.
    async fn reachable(&self, caller: &RootKey, id: &KeyId) -> Result<RootKey> {
        let found = observe_db("find_root_key", store::find_root_key(&self.db, id)).await?;
        match found {
            Some((key, _)) if caller.oversees(&key) => Ok(key),
            None if caller.oversees_everything() => {
                Err(Error::RootKeyNotFound { id: id.to_string() })
            }
            _ => Err(Error::RootKeyOutOfReach {
                root_key_id: caller.id.to_string(),
                target: id.to_string(),
            }),
        }
    }
}
