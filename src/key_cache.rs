//! The hot path's memory: key records by id, so that a warm `Validate`
//! touches neither the database nor argon2.
//!
//! An entry is served only while all of these hold:
//! - nothing evicted its id since its load began (see [`generations`]): a
//!   change evicts here at once, and on other replicas when the
//!   invalidation bus delivers it, so a load that read the row before the
//!   change cannot cache it afterwards;
//! - it is younger than the TTL backstop (60 s in production);
//! - invalidations are known to reach this replica, or it is younger than
//!   `degraded_ttl` (10 s by default).
//!
//! A stale entry stays in memory until it is reloaded, so a reload whose
//! secret hash is unchanged keeps the verified digest: one database read,
//! no argon2. Ages are read from tokio's clock, so tests pause it.
//!
//! Unknown ids are remembered as absent, so a flood of well-formed made-up
//! keys costs one database read per id, not one per request.
//!
//! Imported keys (found by the SHA-256 of the whole key) are cached in two
//! steps: digest → id here, then the record by id as above, so a change to
//! the key evicts it by id like any other. A digest's id never changes; an
//! absent digest may appear when keys are imported, so an import forgets
//! every digest lookup ([`KeyCache::forget_imported_lookups`]).
//!
//! This module knows nothing of how invalidations travel: the wiring hands
//! it what the bus delivers ([`KeyCache::evict`], [`KeyCache::evict_all`],
//! [`KeyCache::set_invalidations_flowing`]).

mod generations;

use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::{ApiKey, KeyId, LegacyDigest, LimitSource, ScopeSet};
use crate::error::{Error, Result};
use crate::secrets::VerifiedDigest;
use crate::telemetry::hot_counter::HotCounter;
use generations::{Generations, Space, Stamp};

/// What the store said about an id, and when.
pub struct CachedLookup {
    /// The record and its secret hash, or `None` for "no such key".
    pub found: Option<(ApiKey, Arc<str>)>,
    /// The keyed digest of the secret that matched the hash, once argon2 has
    /// said so: a warm key is checked against it instead of argon2 (see
    /// [`crate::secrets`]). A reload keeps it only while the hash is the
    /// same, so a rotated or changed secret starts cold again.
    pub verified: Arc<VerifiedDigest>,
    freshness: Freshness,
}

/// A key found in the cache with its record: the shared lookup itself, so
/// that a Validate answering with the record copies none of it.
#[derive(Clone)]
pub struct FoundKey(Arc<CachedLookup>);

impl FoundKey {
    /// `None` when the lookup found no key.
    pub fn of(lookup: Arc<CachedLookup>) -> Option<FoundKey> {
        lookup.found.is_some().then_some(FoundKey(lookup))
    }
}

impl std::ops::Deref for FoundKey {
    type Target = ApiKey;

    fn deref(&self) -> &ApiKey {
        &self.0.found.as_ref().expect("a FoundKey holds a record").0
    }
}

/// An owner's shared limits, and when they were read.
pub struct CachedOwnerLimits {
    pub limits: Option<LimitSource>,
    freshness: Freshness,
}

/// Which key was imported with a digest (and the digest as stored), or
/// `None` for "no such key".
pub struct CachedImportedLookup {
    pub found: Option<(KeyId, LegacyDigest)>,
    freshness: Freshness,
}

/// A cached value that knows when its read began.
trait Stamped {
    fn freshness(&self) -> &Freshness;
}

impl Stamped for CachedOwnerLimits {
    fn freshness(&self) -> &Freshness {
        &self.freshness
    }
}

impl Stamped for CachedImportedLookup {
    fn freshness(&self) -> &Freshness {
        &self.freshness
    }
}

/// When an entry's read began, and what had been evicted by then. The time
/// is kept as nanoseconds since the cache began, not as an `Instant`: the
/// 8 bytes saved keep a cached key within mimalloc's 320-byte class, not
/// the 384-byte one (12 % of the memory of 100,000 warm keys).
#[derive(Clone, Copy)]
struct Freshness {
    loaded_at_ns: u64,
    stamp: Stamp,
}

/// The caches' hasher: foldhash, seeded per process, hashes an id in a
/// fraction of SipHash's time (each warm Validate hashes four times).
type Hasher = foldhash::fast::RandomState;

/// `apikeyd_key_cache_total{result}`, registered once: bumped on every
/// Validate ([`crate::telemetry::metrics::registered`]).
static LOOKUPS: LazyLock<[HotCounter; 2]> = LazyLock::new(|| {
    crate::telemetry::metrics::registered(|| {
        [
            HotCounter::new(::metrics::counter!("apikeyd_key_cache_total", "result" => "hit")),
            HotCounter::new(::metrics::counter!("apikeyd_key_cache_total", "result" => "miss")),
        ]
    })
});
const HIT: usize = 0;
const MISS: usize = 1;

pub struct KeyCache {
    entries: moka::future::Cache<KeyId, Arc<CachedLookup>, Hasher>,
    /// Owners' shared limits, read on every Validate that reaches the limiter.
    owners: moka::future::Cache<String, Arc<CachedOwnerLimits>, Hasher>,
    /// Imported keys' ids by digest, read on every Validate of a string that
    /// is not in our format but could be another store's key.
    imported: moka::future::Cache<LegacyDigest, Arc<CachedImportedLookup>, Hasher>,
    /// One copy of each distinct scope set among cached keys: most keys share
    /// a handful of sets, and 100,000 copies of one would be megabytes.
    scope_sets: moka::sync::Cache<ScopeSet, ScopeSet>,
    /// What has been evicted, so that loads and entries can tell they are stale.
    generations: Generations,
    /// True while invalidations are known to reach this replica.
    invalidations_flowing: AtomicBool,
    /// The backstop: no entry is served older than this.
    ttl: Duration,
    /// How long an entry is trusted while invalidations may be missed.
    degraded_ttl: Duration,
    /// What [`Freshness`] times count from (tokio's clock, so tests pause it).
    began: Instant,
}

/// Owners whose shared limits are cached; each entry is small.
const OWNER_ENTRIES: u64 = 100_000;
/// Digests of imported (or never-imported) keys cached; about 150 bytes each.
const IMPORTED_ENTRIES: u64 = 100_000;
/// Distinct scope sets shared between entries (a set evicted from here
/// stays shared by the entries that hold it).
const SCOPE_SETS: u64 = 10_000;
/// Every digest lookup is stamped with this one name: an import forgets
/// them all at once, since it cannot know which absences it ended.
const IMPORTED_LOOKUPS: &str = "imported keys";
/// How long an unused entry stays in memory (stale or not), so that the
/// next use of a quiet key reloads its row but keeps its verified digest.
const KEPT_WHILE_IDLE: Duration = Duration::from_secs(3600);
/// Loads of one id retried because a change landed during the read; past
/// this, the last read is answered without being cached.
const LOAD_ATTEMPTS: u32 = 3;

/// Why a load's result was not cached.
enum LoadError {
    /// The store failed; every caller waiting on this load gets the error.
    Store(Error),
    /// Its id was evicted while the row was being read.
    Superseded,
}

/// A store error, as each caller that waited on the load receives it.
fn store_error(shared: Arc<LoadError>) -> Error {
    match Arc::try_unwrap(shared) {
        Ok(LoadError::Store(error)) => error,
        Ok(LoadError::Superseded) => Error::Internal("a superseded load is retried".into()),
        Err(shared) => match shared.as_ref() {
            LoadError::Store(error) => error.for_another_caller("lookup"),
            LoadError::Superseded => Error::Internal("a superseded load is retried".into()),
        },
    }
}

/// Drops a stale entry so that the next load replaces it, unless a
/// concurrent load has replaced it already.
async fn remove_if_still<K, Q, V>(
    cache: &moka::future::Cache<K, Arc<V>, Hasher>,
    name: &Q,
    stale: &Arc<V>,
) where
    K: Hash + Eq + Send + Sync + std::borrow::Borrow<Q> + 'static,
    Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    V: Send + Sync + 'static,
{
    cache
        .entry_by_ref(name)
        .and_compute_with(|entry| {
            let op = match entry {
                Some(entry) if Arc::ptr_eq(entry.value(), stale) => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            };
            std::future::ready(op)
        })
        .await;
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
        let kept = KEPT_WHILE_IDLE.max(ttl);
        KeyCache {
            entries: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(weight)
                .time_to_idle(kept)
                .build_with_hasher(Hasher::default()),
            owners: moka::future::Cache::builder()
                .max_capacity(OWNER_ENTRIES)
                .time_to_idle(kept)
                .build_with_hasher(Hasher::default()),
            imported: moka::future::Cache::builder()
                .max_capacity(IMPORTED_ENTRIES)
                .time_to_idle(kept)
                .build_with_hasher(Hasher::default()),
            scope_sets: moka::sync::Cache::new(SCOPE_SETS),
            generations: Generations::default(),
            invalidations_flowing: AtomicBool::new(false),
            ttl,
            degraded_ttl,
            began: Instant::now(),
        }
    }

    /// The cached lookup of `id`, or the result of `load` (run once for any
    /// number of concurrent callers asking for the same id, and again if
    /// the id is evicted while it reads).
    pub async fn get_or_load<L, F>(&self, id: &KeyId, load: L) -> Result<Arc<CachedLookup>>
    where
        L: Fn() -> F,
        F: Future<Output = Result<Option<(ApiKey, String)>>>,
    {
        let previous = self.entries.get(id).await;
        if let Some(cached) = &previous {
            if self.serves(&cached.freshness, Space::Key, id) {
                LOOKUPS[HIT].increment(1);
                return Ok(cached.clone());
            }
        }
        LOOKUPS[MISS].increment(1);
        // Boxed: a load's state is kilobytes, and inline it would be copied
        // on every call, hits included.
        Box::pin(self.load_key(id, load, previous)).await
    }

    /// [`Self::get_or_load`] once the cache did not serve `id`; `previous`
    /// is the stale entry, if any.
    async fn load_key<L, F>(
        &self,
        id: &KeyId,
        load: L,
        mut previous: Option<Arc<CachedLookup>>,
    ) -> Result<Arc<CachedLookup>>
    where
        L: Fn() -> F,
        F: Future<Output = Result<Option<(ApiKey, String)>>>,
    {
        for _ in 0..LOAD_ATTEMPTS {
            if let Some(stale) = &previous {
                remove_if_still(&self.entries, id, stale).await;
            }
            let loaded = self
                .entries
                .try_get_with_by_ref(id, async {
                    let (found, freshness) = self.read(Space::Key, id, &load).await?;
                    Ok::<_, LoadError>(Arc::new(lookup_keeping_digest(
                        found.map(|found| self.sharing_scopes(found)),
                        freshness,
                        previous.as_deref(),
                    )))
                })
                .await;
            match loaded {
                Ok(lookup) if self.serves(&lookup.freshness, Space::Key, id) => return Ok(lookup),
                // Installed by a load that an eviction overtook just after.
                Ok(lookup) => previous = Some(lookup),
                Err(error) => match error.as_ref() {
                    // `previous` is still the source of the digest a reload may keep.
                    LoadError::Superseded => {}
                    LoadError::Store(_) => return Err(store_error(error)),
                },
            }
        }
        let freshness = self.freshness(Space::Key, id);
        let found = load().await?;
        Ok(Arc::new(lookup_keeping_digest(
            found,
            freshness,
            previous.as_deref(),
        )))
    }

    /// The record with its scope set replaced by the shared copy.
    fn sharing_scopes(&self, (mut key, hash): (ApiKey, String)) -> (ApiKey, String) {
        let scopes = key.scopes.clone();
        key.scopes = self.scope_sets.get_with(scopes.clone(), || scopes);
        (key, hash)
    }

    /// An owner's shared limits, cached like key records.
    pub async fn owner_limits_or_load<L, F>(
        &self,
        owner_id: &str,
        load: L,
    ) -> Result<Arc<CachedOwnerLimits>>
    where
        L: Fn() -> F,
        F: Future<Output = Result<Option<LimitSource>>>,
    {
        self.stamped_or_load(
            &self.owners,
            Space::Owner,
            owner_id,
            owner_id,
            load,
            |limits, freshness| CachedOwnerLimits { limits, freshness },
        )
        .await
    }

    /// Which key was imported with `digest`, cached like key records
    /// (absences too), and forgotten when keys are imported.
    pub async fn imported_or_load<L, F>(
        &self,
        digest: &LegacyDigest,
        load: L,
    ) -> Result<Arc<CachedImportedLookup>>
    where
        L: Fn() -> F,
        F: Future<Output = Result<Option<(KeyId, LegacyDigest)>>>,
    {
        self.stamped_or_load(
            &self.imported,
            Space::Imported,
            digest,
            IMPORTED_LOOKUPS,
            load,
            |found, freshness| CachedImportedLookup { found, freshness },
        )
        .await
    }

    /// The cached value of `name`, or `load`'s (run once for concurrent
    /// callers, and again if `stamp_name` is evicted while it reads).
    async fn stamped_or_load<K, Q, V, T, L, F>(
        &self,
        cache: &moka::future::Cache<K, Arc<V>, Hasher>,
        space: Space,
        name: &Q,
        stamp_name: &(impl Hash + ?Sized),
        load: L,
        make: impl Fn(T, Freshness) -> V,
    ) -> Result<Arc<V>>
    where
        K: Hash + Eq + Send + Sync + std::borrow::Borrow<Q> + 'static,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        V: Stamped + Send + Sync + 'static,
        L: Fn() -> F,
        F: Future<Output = Result<T>>,
    {
        let previous = cache.get(name).await;
        if let Some(cached) = &previous {
            if self.serves(cached.freshness(), space, stamp_name) {
                return Ok(cached.clone());
            }
        }
        // Boxed, like a key's load.
        Box::pin(self.load_stamped(cache, space, name, stamp_name, load, make, previous)).await
    }

    /// [`Self::stamped_or_load`] once the cache did not serve `name`.
    #[allow(clippy::too_many_arguments)]
    async fn load_stamped<K, Q, V, T, L, F>(
        &self,
        cache: &moka::future::Cache<K, Arc<V>, Hasher>,
        space: Space,
        name: &Q,
        stamp_name: &(impl Hash + ?Sized),
        load: L,
        make: impl Fn(T, Freshness) -> V,
        mut previous: Option<Arc<V>>,
    ) -> Result<Arc<V>>
    where
        K: Hash + Eq + Send + Sync + std::borrow::Borrow<Q> + 'static,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        V: Stamped + Send + Sync + 'static,
        L: Fn() -> F,
        F: Future<Output = Result<T>>,
    {
        for _ in 0..LOAD_ATTEMPTS {
            if let Some(stale) = previous.take() {
                remove_if_still(cache, name, &stale).await;
            }
            let loaded = cache
                .try_get_with_by_ref(name, async {
                    let (value, freshness) = self.read(space, stamp_name, &load).await?;
                    Ok::<_, LoadError>(Arc::new(make(value, freshness)))
                })
                .await;
            match loaded {
                Ok(cached) if self.serves(cached.freshness(), space, stamp_name) => {
                    return Ok(cached);
                }
                Ok(cached) => previous = Some(cached),
                Err(error) => match error.as_ref() {
                    LoadError::Superseded => {}
                    LoadError::Store(_) => return Err(store_error(error)),
                },
            }
        }
        let freshness = self.freshness(space, stamp_name);
        Ok(Arc::new(make(load().await?, freshness)))
    }

    /// Runs one read, stamped before it starts; a read that an eviction
    /// overtook is not to be cached.
    async fn read<T, F>(
        &self,
        space: Space,
        name: &(impl Hash + ?Sized),
        read: impl FnOnce() -> F,
    ) -> std::result::Result<(T, Freshness), LoadError>
    where
        F: Future<Output = Result<T>>,
    {
        let freshness = self.freshness(space, name);
        let value = read().await.map_err(LoadError::Store)?;
        if self.generations.stamp(space, name) != freshness.stamp {
            ::metrics::counter!("apikeyd_key_cache_superseded_loads_total").increment(1);
            return Err(LoadError::Superseded);
        }
        Ok((value, freshness))
    }

    fn freshness(&self, space: Space, name: &(impl Hash + ?Sized)) -> Freshness {
        Freshness {
            loaded_at_ns: self.now_ns(),
            stamp: self.generations.stamp(space, name),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.began.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether an entry may answer: nothing evicted it since its read began,
    /// it is within the backstop, and it is trusted for its age.
    fn serves(&self, freshness: &Freshness, space: Space, name: &(impl Hash + ?Sized)) -> bool {
        let age = Duration::from_nanos(self.now_ns().saturating_sub(freshness.loaded_at_ns));
        freshness.stamp == self.generations.stamp(space, name)
            && age < self.ttl
            && (self.invalidations_flowing.load(Ordering::Acquire) || age < self.degraded_ttl)
    }

    /// Evicts a changed key on this replica: entries and loads in flight
    /// that began before now are never served.
    pub fn evict(&self, id: &KeyId) {
        self.generations.bump(Space::Key, id);
    }

    /// Evicts an owner's changed limits on this replica.
    pub fn evict_owner(&self, owner_id: &str) {
        self.generations.bump(Space::Owner, owner_id);
    }

    /// Forgets which digests were found or absent: keys were imported, so a
    /// digest remembered as absent may now be a key.
    pub fn forget_imported_lookups(&self) {
        self.generations.bump(Space::Imported, IMPORTED_LOOKUPS);
    }

    /// Evicts everything: what a replica does when it may have missed an
    /// invalidation. Entries stay in memory, so reloads keep their digests.
    pub fn evict_all(&self) {
        self.generations.bump_all();
    }

    /// Records whether invalidations are known to reach this replica; while
    /// they are not, entries are trusted for `degraded_ttl` only.
    pub fn set_invalidations_flowing(&self, flowing: bool) {
        self.invalidations_flowing.store(flowing, Ordering::Release);
    }
}

/// A fresh lookup, keeping the previous entry's verified digest when the
/// secret hash is unchanged: a reload costs a database read, not argon2. The
/// two entries share it, so a verification still running for the old entry
/// is remembered by the new one too.
fn lookup_keeping_digest(
    found: Option<(ApiKey, String)>,
    freshness: Freshness,
    previous: Option<&CachedLookup>,
) -> CachedLookup {
    let found: Option<(ApiKey, Arc<str>)> = found.map(|(key, hash)| (key, Arc::from(hash)));
    let verified = match (previous, &found) {
        (Some(previous), Some((_, new))) => match &previous.found {
            Some((_, old)) if old == new => previous.verified.clone(),
            _ => Arc::default(),
        },
        _ => Arc::default(),
    };
    CachedLookup {
        found,
        verified,
        freshness,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[test]
    fn a_cached_key_fits_in_mimallocs_320_byte_class() {
        // An `Arc` puts two counts (16 bytes) before the value.
        let size = std::mem::size_of::<CachedLookup>() + 16;
        assert!(size <= 320, "Arc<CachedLookup> is {size} bytes");
    }

    const TTL: Duration = Duration::from_secs(60);
    const DEGRADED_TTL: Duration = Duration::from_secs(10);

    fn id() -> KeyId {
        KeyId::parse("0123456789abcdef").unwrap()
    }

    fn cache(flowing: bool) -> KeyCache {
        let cache = KeyCache::new(1 << 20, TTL, DEGRADED_TTL);
        cache.set_invalidations_flowing(flowing);
        cache
    }

    fn record(hash: &str, revoked: bool) -> Option<(ApiKey, String)> {
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
            revoked_at: revoked.then_some(now),
            limits: LimitSource::Own(Vec::new()),
            quota: None,
        };
        Some((key, hash.to_owned()))
    }

    /// A loader that counts its runs and answers `record(hash, false)`.
    fn counting<'a>(
        loads: &'a AtomicU32,
        hash: &'a str,
    ) -> impl Fn() -> std::future::Ready<Result<Option<(ApiKey, String)>>> + 'a {
        move || {
            loads.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(record(hash, false)))
        }
    }

    #[tokio::test]
    async fn a_cached_absence_is_not_loaded_again() {
        let cache = cache(true);
        let loads = AtomicU32::new(0);
        for _ in 0..3 {
            let lookup = cache
                .get_or_load(&id(), || {
                    loads.fetch_add(1, Ordering::SeqCst);
                    async { Ok(None) }
                })
                .await
                .unwrap();
            assert!(lookup.found.is_none());
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn without_invalidations_entries_expire_after_the_degraded_ttl() {
        let cache = cache(false);
        let loads = AtomicU32::new(0);
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        tokio::time::advance(DEGRADED_TTL - Duration::from_millis(1)).await;
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1, "fresh entries are served");
        tokio::time::advance(Duration::from_millis(1)).await;
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        assert_eq!(
            loads.load(Ordering::SeqCst),
            2,
            "stale entries are reloaded"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_invalidations_flowing_entries_expire_after_the_ttl_backstop() {
        let cache = cache(true);
        let loads = AtomicU32::new(0);
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        tokio::time::advance(TTL - Duration::from_millis(1)).await;
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1, "trusted up to the TTL");
        tokio::time::advance(Duration::from_millis(1)).await;
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2, "reloaded at the TTL");
    }

    #[tokio::test(start_paused = true)]
    async fn losing_invalidations_distrusts_entries_older_than_the_degraded_ttl() {
        let cache = cache(true);
        let loads = AtomicU32::new(0);
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        tokio::time::advance(DEGRADED_TTL).await;
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        cache.set_invalidations_flowing(false);
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_eviction_or_a_flush_makes_the_next_call_reload() {
        let cache = cache(true);
        let loads = AtomicU32::new(0);
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        cache.evict(&id());
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2, "evicted");
        cache.evict_all();
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        cache
            .get_or_load(&id(), counting(&loads, "h"))
            .await
            .unwrap();
        assert_eq!(
            loads.load(Ordering::SeqCst),
            3,
            "flushed, then cached again"
        );
    }

    #[tokio::test]
    async fn an_owners_limits_are_reloaded_after_their_eviction_only() {
        let cache = cache(true);
        let loads = AtomicU32::new(0);
        let load = || {
            loads.fetch_add(1, Ordering::SeqCst);
            async { Ok(None) }
        };
        cache.owner_limits_or_load("team", load).await.unwrap();
        cache.evict(&id());
        cache.owner_limits_or_load("team", load).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        cache.evict_owner("team");
        cache.owner_limits_or_load("team", load).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_the_verified_digest_only_for_the_same_hash() {
        let cache = cache(false);
        let loads = AtomicU32::new(0);
        let first = cache
            .get_or_load(&id(), counting(&loads, "hash-a"))
            .await
            .unwrap();
        first.verified.set([7; 32]).unwrap();

        // Each way an entry goes stale: age, eviction, flush.
        for stale in ["degraded TTL", "eviction", "flush"] {
            match stale {
                "degraded TTL" => tokio::time::advance(DEGRADED_TTL).await,
                "eviction" => cache.evict(&id()),
                _ => cache.evict_all(),
            }
            let reloaded = cache
                .get_or_load(&id(), counting(&loads, "hash-a"))
                .await
                .unwrap();
            assert_eq!(
                reloaded.verified.get(),
                Some(&[7; 32]),
                "same hash after {stale}: no argon2 again"
            );
        }
        assert_eq!(loads.load(Ordering::SeqCst), 4, "each reload read the row");

        cache.evict(&id());
        let changed = cache
            .get_or_load(&id(), counting(&loads, "hash-b"))
            .await
            .unwrap();
        assert_eq!(
            changed.verified.get(),
            None,
            "a new hash must be verified anew"
        );
    }

    #[tokio::test]
    async fn keys_with_equal_scopes_share_one_copy_of_them() {
        use crate::domain::Scope;
        let cache = cache(true);
        let scopes = || ScopeSet::new(vec![Scope::parse("posts:read").unwrap()]);
        let mut cached = Vec::new();
        for raw_id in ["0123456789abcdef", "fedcba9876543210"] {
            let id = KeyId::parse(raw_id).unwrap();
            let lookup = cache
                .get_or_load(&id, || async {
                    let (mut key, hash) = record("h", false).unwrap();
                    key.id = id.clone();
                    key.scopes = scopes();
                    Ok(Some((key, hash)))
                })
                .await
                .unwrap();
            cached.push(lookup.found.as_ref().unwrap().0.scopes.clone());
        }
        assert_eq!(cached[0], scopes());
        assert!(cached[0].is_shared_with(&cached[1]));
    }

    #[tokio::test]
    async fn an_absent_digest_is_loaded_once_until_keys_are_imported() {
        let cache = cache(true);
        let digest = LegacyDigest::of("sk_live_never_imported_0123456789");
        let loads = AtomicU32::new(0);
        let load = || {
            loads.fetch_add(1, Ordering::SeqCst);
            async { Ok(None) }
        };
        for _ in 0..3 {
            let lookup = cache.imported_or_load(&digest, load).await.unwrap();
            assert!(lookup.found.is_none());
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1, "the absence is cached");
        cache.evict(&id());
        cache.imported_or_load(&digest, load).await.unwrap();
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "a key's eviction leaves digests alone"
        );

        cache.forget_imported_lookups();
        let imported = cache
            .imported_or_load(&digest, || async { Ok(Some((id(), digest))) })
            .await
            .unwrap();
        assert_eq!(
            imported.found,
            Some((id(), digest)),
            "an import ends the absence"
        );
    }

    #[tokio::test]
    async fn concurrent_first_calls_of_one_id_load_once() {
        let cache = Arc::new(cache(true));
        let loads = Arc::new(AtomicU32::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let (cache, loads, released) = (cache.clone(), loads.clone(), released.clone());
                tokio::spawn(async move {
                    let load = || {
                        loads.fetch_add(1, Ordering::SeqCst);
                        let mut released = released.clone();
                        async move {
                            released.wait_for(|go| *go).await.unwrap();
                            Ok(record("h", false))
                        }
                    };
                    cache.get_or_load(&id(), load).await.unwrap()
                })
            })
            .collect();
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        for call in calls {
            assert!(call.await.unwrap().found.is_some());
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    /// The race of issue 8: a load reads the row, the revoke commits and
    /// evicts, then the load finishes with the row it read before.
    #[tokio::test]
    async fn a_load_racing_a_revoke_never_leaves_the_revoked_record_cached() {
        let cache = Arc::new(cache(true));
        let revoked = Arc::new(AtomicBool::new(false));
        let loads = Arc::new(AtomicU32::new(0));
        let read_done = Arc::new(tokio::sync::Notify::new());
        let (release, released) = tokio::sync::watch::channel(false);
        let load = {
            let (revoked, loads, read_done) = (revoked.clone(), loads.clone(), read_done.clone());
            move || {
                let first = loads.fetch_add(1, Ordering::SeqCst) == 0;
                let row = record("h", revoked.load(Ordering::SeqCst));
                let (read_done, mut released) = (read_done.clone(), released.clone());
                async move {
                    if first {
                        // The read is done; hold the load open across the revoke.
                        read_done.notify_one();
                        released.wait_for(|go| *go).await.unwrap();
                    }
                    Ok(row)
                }
            }
        };
        let racing = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get_or_load(&id(), load).await.unwrap() }
        });
        read_done.notified().await;
        revoked.store(true, Ordering::SeqCst);
        cache.evict(&id());
        release.send_replace(true);

        let answered = racing.await.unwrap();
        let (key, _) = answered.found.as_ref().unwrap();
        assert!(key.revoked_at.is_some(), "the racing call read again");
        let cached = cache
            .get_or_load(&id(), || async { panic!("served from the cache") })
            .await
            .unwrap();
        let (key, _) = cached.found.as_ref().unwrap();
        assert!(
            key.revoked_at.is_some(),
            "the revoked record is what is cached"
        );
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }
}
