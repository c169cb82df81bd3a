//! Who may call: a root key in `authorization: Bearer …` metadata, holding
//! the permission the call needs, and reaching the owners it acts on.
//!
//! Management calls read the root key's record on every call, so a revoked
//! or expired root key is refused on the very next call on every replica.
//! Data-plane calls (Validate, CheckRateLimit, when the server requires a
//! service credential) are on the hot path: they use a record cached for at
//! most [`SERVICE_RECORD_TTL`] and the hasher's digest memo, so a warm
//! credential costs no database read and no argon2 run. A revocation makes
//! every replica distrust its cached records: at once on the replica that
//! made it, through the invalidation bus on the others, and by the TTL when
//! the bus is not there (no Redis) or missed it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tonic::metadata::MetadataMap;

use crate::domain::{self, KeyId, KeyKind, OwnerScope, Permission, PresentedKey, RootKey};
use crate::error::{Error, Result};
use crate::secrets::{SecretCheck, SecretHasher};
use crate::store;
use crate::telemetry::metrics::observe_db;

/// How long a data-plane replica trusts a root key's cached record: the
/// bound on how late it sees a revocation the invalidation bus did not
/// bring (no Redis, or the bus was down).
pub const SERVICE_RECORD_TTL: Duration = Duration::from_secs(5);
/// Root-key records cached for the data plane (known and unknown ids).
const SERVICE_RECORDS: u64 = 10_000;

/// A root key's record and hash as read, the revocation epoch the read
/// began in, and when; `found` is `None` for an unknown id.
struct CachedRootKey {
    found: Option<(RootKey, Arc<str>)>,
    epoch: u64,
    /// Read from tokio's clock, so the TTL is tested on paused time; moka's
    /// own TTL only bounds how long the entry stays in memory.
    loaded_at: tokio::time::Instant,
}

impl CachedRootKey {
    /// Whether the record may still admit calls: read after the latest
    /// revocation (`epoch`) and less than [`SERVICE_RECORD_TTL`] ago.
    fn trusted(&self, epoch: u64) -> bool {
        self.epoch >= epoch && self.loaded_at.elapsed() < SERVICE_RECORD_TTL
    }
}

/// Checks root keys presented to the API.
#[derive(Clone)]
pub struct RootKeyGate {
    db: DatabaseConnection,
    hasher: Arc<SecretHasher>,
    /// Records for data-plane calls, so a warm credential reads no database.
    service_records: moka::future::Cache<KeyId, Arc<CachedRootKey>>,
    /// Bumped by every root-key revocation: records read before it are read
    /// again (root keys are few and revocations rare, so one counter does).
    revocations: Arc<AtomicU64>,
}

impl RootKeyGate {
    pub fn new(db: DatabaseConnection, hasher: Arc<SecretHasher>) -> Self {
        RootKeyGate {
            db,
            hasher,
            service_records: moka::future::Cache::builder()
                .max_capacity(SERVICE_RECORDS)
                .time_to_live(SERVICE_RECORD_TTL)
                .build(),
            revocations: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The live root key the request carries, read fresh from the database
    /// (management calls). Its permissions are checked with [`require`].
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<RootKey> {
        let presented = bearer_root_key(metadata.as_ref())?;
        let found = observe_db(
            "find_root_key",
            store::find_root_key(&self.db, &presented.id),
        )
        .await?;
        self.admit(&presented, found.as_ref().map(|(key, hash)| (key, &**hash)))
            .await
    }

    /// The live root key the request carries, holding `permission`, from a
    /// record at most [`SERVICE_RECORD_TTL`] old (data-plane calls).
    pub async fn authorize_service(
        &self,
        headers: &http::HeaderMap,
        permission: Permission,
    ) -> Result<RootKey> {
        let presented = bearer_root_key(headers)?;
        let epoch = self.revocations.load(Ordering::Acquire);
        if let Some(stale) = self.service_records.get(&presented.id).await {
            if !stale.trusted(epoch) {
                self.service_records.invalidate(&presented.id).await;
            }
        }
        let db = self.db.clone();
        let id = presented.id.clone();
        let cached = self
            .service_records
            .try_get_with_by_ref(&presented.id, async move {
                let loaded_at = tokio::time::Instant::now();
                let found = observe_db("find_root_key", store::find_root_key(&db, &id)).await?;
                Ok::<_, Error>(Arc::new(CachedRootKey {
                    found: found.map(|(key, hash)| (key, Arc::<str>::from(hash))),
                    epoch,
                    loaded_at,
                }))
            })
            .await
            .map_err(|shared| {
                Arc::try_unwrap(shared)
                    .unwrap_or_else(|shared| shared.for_another_caller("root key lookup"))
            })?;
        let root_key = self
            .admit(
                &presented,
                cached.found.as_ref().map(|(key, hash)| (key, &**hash)),
            )
            .await?;
        require(&root_key, permission)?;
        Ok(root_key)
    }

    /// A root key was revoked (here, or on another replica): every cached
    /// record is read again before it admits another data-plane call.
    pub fn root_key_revoked(&self) {
        self.revocations.fetch_add(1, Ordering::AcqRel);
    }

    /// The record, when the presented secret is its and it is still live.
    async fn admit(
        &self,
        presented: &PresentedKey,
        found: Option<(&RootKey, &str)>,
    ) -> Result<RootKey> {
        let (record, hash) = found.ok_or(Error::Unauthenticated(UNKNOWN_ROOT_KEY))?;
        match self.hasher.check_root_key(presented, hash).await? {
            SecretCheck::Wrong => return Err(Error::Unauthenticated(UNKNOWN_ROOT_KEY)),
            SecretCheck::Right { rehashed: None } => {}
            SecretCheck::Right {
                rehashed: Some(new_hash),
            } => {
                let replaced = observe_db(
                    "rehash_root_key",
                    store::replace_root_key_hash(&self.db, &record.id, hash, &new_hash),
                )
                .await;
                if let Err(e) = replaced {
                    tracing::warn!(root_key_id = %record.id, error = %e, "could not store the root key's rehashed secret");
                }
            }
        }
        if let Some(refusal) = record.refusal(domain::now()) {
            return Err(Error::Unauthenticated(refusal));
        }
        Ok(record.clone())
    }
}

/// Succeeds when `caller` holds `permission`.
pub fn require(caller: &RootKey, permission: Permission) -> Result<()> {
    if caller.allows(permission) {
        Ok(())
    } else {
        Err(Error::PermissionDenied {
            root_key_id: caller.id.to_string(),
            permission: permission.as_str(),
        })
    }
}

/// Succeeds when `caller` reaches `owner_id`.
pub fn require_owner(caller: &RootKey, owner_id: &str) -> Result<()> {
    if caller.reaches_owner(owner_id) {
        Ok(())
    } else {
        Err(Error::OutsideOwnerScope {
            root_key_id: caller.id.to_string(),
            owner_id: domain::quote(owner_id),
        })
    }
}

/// What `caller` is told about an API key it cannot reach or that does not
/// exist: a root key that reaches every owner learns it does not exist; a
/// scoped one gets the same refusal for both, so ids leak nothing.
pub fn key_out_of_reach(caller: &RootKey, id: &KeyId, exists: bool) -> Error {
    if !exists && caller.owner_scope == OwnerScope::All {
        Error::KeyNotFound { id: id.to_string() }
    } else {
        Error::KeyOutOfReach {
            root_key_id: caller.id.to_string(),
            key_id: id.to_string(),
        }
    }
}

const UNKNOWN_ROOT_KEY: &str =
    "the root key in the authorization metadata is not known to this server";

fn bearer_root_key(headers: &http::HeaderMap) -> Result<PresentedKey> {
    let header = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(Error::Unauthenticated(
            "missing `authorization: Bearer <root key>` metadata (grpcurl: -H 'authorization: Bearer rk_…')",
        ))?
        .to_str()
        .map_err(|_| Error::Unauthenticated("the authorization metadata is not ASCII"))?;
    let token = header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or(Error::Unauthenticated(
            "the authorization metadata must be `Bearer <root key>`",
        ))?;
    match PresentedKey::parse(token) {
        Ok(key) if key.kind == KeyKind::Root => Ok(key),
        Ok(_) => Err(Error::Unauthenticated(
            "that is an API key; this call takes a root key (rk_…)",
        )),
        Err(_) => Err(Error::Unauthenticated(
            "the authorization metadata does not hold a well-formed root key (rk_…)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn absent(epoch: u64) -> CachedRootKey {
        CachedRootKey {
            found: None,
            epoch,
            loaded_at: tokio::time::Instant::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cached_root_key_record_is_trusted_for_the_ttl_only() {
        let record = absent(0);
        tokio::time::advance(SERVICE_RECORD_TTL - Duration::from_millis(1)).await;
        assert!(record.trusted(0), "within the TTL");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!record.trusted(0), "read again at the TTL");
    }

    #[tokio::test(start_paused = true)]
    async fn a_revocation_ends_the_trust_in_records_read_before_it() {
        let record = absent(3);
        assert!(record.trusted(3));
        assert!(!record.trusted(4), "a root key was revoked since the read");
    }
}
