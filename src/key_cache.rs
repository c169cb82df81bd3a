//! The hot path's memory: key records by id, so that a warm `Validate`
//! touches neither the database nor argon2.
//!
//! Staleness is bounded two ways. Every change to a key (revoke, disable,
//! update, rotate) evicts it here and, through [`crate::invalidation`], on
//! every other replica within milliseconds. While invalidations may not be
//! arriving (no channel configured, or the channel is down), an entry is
//! trusted for at most `degraded_ttl` (10 s by default) and the cache is
//! flushed when the channel comes back. A TTL backstop bounds everything else.
//!
//! Unknown ids are remembered as absent, so a flood of well-formed made-up
//! keys costs one database read per id, not one per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::domain::{ApiKey, KeyId};
use crate::error::{Error, Result};
use crate::invalidation::{Invalidation, InvalidationBus};
use crate::ratelimit::LimitSource;
use crate::secrets::VerifiedDigest;

/// What the store said about an id, and when.
pub struct CachedLookup {
    /// The record and its secret hash, or `None` for "no such key".
    pub found: Option<(ApiKey, Arc<str>)>,
    /// The keyed digest of the secret that matched the hash, once argon2 has
    /// said so: a warm key is checked against it instead of argon2 (see
    /// [`crate::secrets`]). It lives and dies with the record, so a rotated or
    /// changed key starts cold again.
    pub verified: Arc<VerifiedDigest>,
    loaded_at: Instant,
}

/// An owner's shared limits, and when they were read.
pub struct CachedOwnerLimits {
    pub limits: Option<LimitSource>,
    loaded_at: Instant,
}

pub struct KeyCache {
    entries: moka::future::Cache<KeyId, Arc<CachedLookup>>,
    /// Owners' shared limits, read on every Validate that reaches the limiter.
    owners: moka::future::Cache<String, Arc<CachedOwnerLimits>>,
    /// True while invalidations are known to reach this replica.
    invalidations_flowing: AtomicBool,
    /// How long an entry is trusted while invalidations may be missed.
    degraded_ttl: Duration,
    /// Where this replica's invalidations go, when replicas share Redis.
    bus: std::sync::OnceLock<Arc<InvalidationBus>>,
}

/// Owners whose shared limits are cached; each entry is small.
const OWNER_ENTRIES: u64 = 100_000;

/// A loader's error, as each caller that waited on it receives it.
fn unshare(shared: Arc<Error>) -> Error {
    Arc::try_unwrap(shared)
        .unwrap_or_else(|shared| Error::Internal(format!("lookup failed: {shared}")))
}

/// Rough heap size of an entry, for the memory bound.
fn weight(id: &KeyId, lookup: &Arc<CachedLookup>) -> u32 {
    let record = lookup.found.as_ref().map_or(0, |(key, hash)| {
        key.owner_id.len()
            + key.name.len()
            + key.prefix.len()
            + key
                .scopes
                .iter()
                .map(|s| s.to_string().len() + 48)
                .sum::<usize>()
            + key
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.len() + 64)
                .sum::<usize>()
            + hash.len()
            + std::mem::size_of::<ApiKey>()
    });
    u32::try_from(id.as_str().len() + record + 128).unwrap_or(u32::MAX)
}

impl KeyCache {
    pub fn new(max_bytes: u64, ttl: Duration, degraded_ttl: Duration) -> Self {
        KeyCache {
            entries: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(weight)
                .time_to_live(ttl)
                .build(),
            owners: moka::future::Cache::builder()
                .max_capacity(OWNER_ENTRIES)
                .time_to_live(ttl)
                .build(),
            invalidations_flowing: AtomicBool::new(false),
            degraded_ttl,
            bus: std::sync::OnceLock::new(),
        }
    }

    /// The cached lookup of `id`, or the result of `load` (run once for any
    /// number of concurrent callers asking for the same id).
    pub async fn get_or_load<F>(&self, id: &KeyId, load: F) -> Result<Arc<CachedLookup>>
    where
        F: Future<Output = Result<Option<(ApiKey, String)>>>,
    {
        let mut stale = None;
        if let Some(cached) = self.entries.get(id).await {
            if self.trusted(cached.loaded_at) {
                ::metrics::counter!("apikeyd_key_cache_total", "result" => "hit").increment(1);
                return Ok(cached);
            }
            self.entries.invalidate(id).await;
            stale = Some(cached);
        }
        ::metrics::counter!("apikeyd_key_cache_total", "result" => "miss").increment(1);
        self.entries
            .try_get_with_by_ref(id, async {
                let found = load.await?;
                let fresh = CachedLookup {
                    found: found.map(|(key, hash)| (key, Arc::from(hash))),
                    verified: Arc::default(),
                    loaded_at: Instant::now(),
                };
                // A record refreshed only because it was old keeps its
                // verified digest while its hash is the same, so a degraded
                // cache re-reads the database but does not re-run argon2.
                if let Some(stale) = stale {
                    let same_hash = match (&stale.found, &fresh.found) {
                        (Some((_, old)), Some((_, new))) => old == new,
                        _ => false,
                    };
                    if let (true, Some(digest)) = (same_hash, stale.verified.get()) {
                        let _ = fresh.verified.set(*digest);
                    }
                }
                Ok::<_, Error>(Arc::new(fresh))
            })
            .await
            .map_err(unshare)
    }

    /// An owner's shared limits, cached like key records.
    pub async fn owner_limits_or_load<F>(
        &self,
        owner_id: &str,
        load: F,
    ) -> Result<Arc<CachedOwnerLimits>>
    where
        F: Future<Output = Result<Option<LimitSource>>>,
    {
        if let Some(cached) = self.owners.get(owner_id).await {
            if self.trusted(cached.loaded_at) {
                return Ok(cached);
            }
            self.owners.invalidate(owner_id).await;
        }
        self.owners
            .try_get_with_by_ref(owner_id, async {
                Ok::<_, Error>(Arc::new(CachedOwnerLimits {
                    limits: load.await?,
                    loaded_at: Instant::now(),
                }))
            })
            .await
            .map_err(unshare)
    }

    fn trusted(&self, loaded_at: Instant) -> bool {
        self.invalidations_flowing.load(Ordering::Acquire)
            || loaded_at.elapsed() < self.degraded_ttl
    }

    /// Evicts a changed key here and, when a bus is attached, on every replica.
    pub async fn invalidate(&self, id: &KeyId) {
        self.evict(id).await;
        if let Some(bus) = self.bus.get() {
            bus.publish(Invalidation::Key(id.clone()));
        }
    }

    /// Evicts an owner's changed limits here and on every replica.
    pub async fn invalidate_owner(&self, owner_id: &str) {
        self.evict_owner(owner_id).await;
        if let Some(bus) = self.bus.get() {
            bus.publish(Invalidation::Owner(owner_id.to_owned()));
        }
    }

    /// Evicts a key on this replica only (what a received invalidation does).
    pub async fn evict(&self, id: &KeyId) {
        self.entries.invalidate(id).await;
    }

    pub async fn evict_owner(&self, owner_id: &str) {
        self.owners.invalidate(owner_id).await;
    }

    /// Sends this replica's invalidations to the others from now on.
    pub fn attach_bus(&self, bus: Arc<InvalidationBus>) {
        let _ = self.bus.set(bus);
    }

    pub fn invalidate_all(&self) {
        self.entries.invalidate_all();
        self.owners.invalidate_all();
    }

    /// Records whether invalidations reach this replica. Coming back flushes
    /// everything, since any change made meanwhile may have been missed.
    pub fn set_invalidations_flowing(&self, flowing: bool) {
        let was = self.invalidations_flowing.swap(flowing, Ordering::AcqRel);
        if flowing && !was {
            self.invalidate_all();
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> KeyId {
        KeyId::parse("0123456789abcdef").unwrap()
    }

    #[tokio::test]
    async fn a_cached_absence_is_not_loaded_again() {
        let cache = KeyCache::new(1 << 20, Duration::from_secs(60), Duration::from_secs(10));
        cache.set_invalidations_flowing(true);
        let loads = std::sync::atomic::AtomicU32::new(0);
        for _ in 0..3 {
            let lookup = cache
                .get_or_load(&id(), async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok(None)
                })
                .await
                .unwrap();
            assert!(lookup.found.is_none());
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn without_invalidations_entries_expire_after_the_degraded_ttl() {
        let cache = KeyCache::new(1 << 20, Duration::from_secs(60), Duration::from_millis(50));
        let loads = std::sync::atomic::AtomicU32::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        };
        cache.get_or_load(&id(), load()).await.unwrap();
        cache.get_or_load(&id(), load()).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1, "fresh entries are served");
        tokio::time::sleep(Duration::from_millis(60)).await;
        cache.get_or_load(&id(), load()).await.unwrap();
        assert_eq!(
            loads.load(Ordering::SeqCst),
            2,
            "stale entries are reloaded"
        );
    }

    #[tokio::test]
    async fn invalidations_coming_back_flush_the_cache() {
        let cache = KeyCache::new(1 << 20, Duration::from_secs(60), Duration::from_secs(10));
        cache.get_or_load(&id(), async { Ok(None) }).await.unwrap();
        cache.entries.run_pending_tasks().await;
        assert_eq!(cache.entry_count(), 1);
        cache.set_invalidations_flowing(true);
        cache.entries.run_pending_tasks().await;
        assert_eq!(cache.entry_count(), 0);
    }

    fn record(hash: &str) -> Option<(ApiKey, String)> {
        use crate::domain::{Environment, ScopeSet};
        let now = chrono::Utc::now();
        let key = ApiKey {
            id: id(),
            owner_id: "owner".into(),
            name: "test".into(),
            prefix: "sk_live_0123456789abcdef".into(),
            scopes: ScopeSet::default(),
            environment: Environment::Live,
            metadata: Default::default(),
            enabled: true,
            created_at: now,
            updated_at: now,
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
            limits: LimitSource::Own(Vec::new()),
            quota: None,
        };
        Some((key, hash.to_owned()))
    }

    #[tokio::test]
    async fn a_degraded_refresh_keeps_the_verified_digest_only_for_the_same_hash() {
        let cache = KeyCache::new(1 << 20, Duration::from_secs(60), Duration::from_millis(20));
        let first = cache
            .get_or_load(&id(), async { Ok(record("hash-a")) })
            .await
            .unwrap();
        first.verified.set([7; 32]).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;

        let same = cache
            .get_or_load(&id(), async { Ok(record("hash-a")) })
            .await
            .unwrap();
        assert_eq!(
            same.verified.get(),
            Some(&[7; 32]),
            "same hash: no argon2 again"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;

        let changed = cache
            .get_or_load(&id(), async { Ok(record("hash-b")) })
            .await
            .unwrap();
        assert_eq!(
            changed.verified.get(),
            None,
            "a new hash must be verified anew"
        );
    }
}
