//! "Is this the key's secret?", answered in one place for API keys and root
//! keys, and the argon2id hashing of new secrets.
//!
//! **Cost per kind.** An API key's secret is 256 random bits: no one guesses
//! it, hashed fast or slow, so stretching it buys nothing and would make every
//! cold key an amplifier; API keys get a light argon2id cost. Root keys keep
//! OWASP's. The parameters live in each PHC string, so a hash made under
//! another cost still verifies, and at its next successful verification it
//! is hashed again under the configured cost for the caller to store
//! (compare-and-set on the old hash, so replicas racing to do it are harmless).
//!
//! **A check, cheapest first:**
//! 1. the presented key's keyed digest (HMAC-SHA256 under a per-process random
//!    key; never the key) against the digest remembered beside the hash once a
//!    key matched it, in constant time: a warm key costs no argon2;
//! 2. a run already in flight for the same digest and hash: concurrent first
//!    calls of a cold key share one argon2 run (single flight), while a wrong
//!    secret, having another digest, has its own run and neither waits for
//!    nor spoils the right one;
//! 3. one argon2 run within the budget of [`crate::argon2_pool`], which
//!    refuses ([`Error::Overloaded`]) rather than queue without bound.
//!
//! A wrong secret is not remembered: a wrong guess costs one light run within
//! the budget, an attacker changes the secret on every guess anyway, and
//! nothing that fills up with guesses can ever turn a right secret away.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::argon2_pool::{Argon2Budget, Argon2Pool, Overloaded};
use crate::domain::{KeyId, KeyKind, PresentedKey, Secret};
use crate::error::{Error, Result};
use crate::telemetry::hot_counter::HotCounter;
use crate::telemetry::metrics;

/// argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Argon2Cost {
    /// Memory per hash, in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Argon2Cost {
    /// OWASP's minimum for argon2id (19 MiB, 2 passes, 1 lane): root keys.
    pub const OWASP: Argon2Cost = Argon2Cost {
        memory_kib: 19_456,
        iterations: 2,
        parallelism: 1,
    };

    /// API keys (256-bit random secrets): about 0.1 ms per verification on
    /// the 2-core development machine (`cargo bench --bench argon2_cost`).
    pub const API_KEYS: Argon2Cost = Argon2Cost {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    pub fn params(&self) -> Result<Params> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| Error::Internal(format!("argon2 parameters rejected: {e}")))
    }

    /// Whether `hash` was made with exactly this cost (argon2id, version 19).
    fn made(&self, hash: &PasswordHash<'_>) -> bool {
        Params::try_from(hash).is_ok_and(|params| {
            hash.algorithm == Algorithm::Argon2id.ident()
                && hash.version == Some(Version::V0x13.into())
                && params.m_cost() == self.memory_kib
                && params.t_cost() == self.iterations
                && params.p_cost() == self.parallelism
        })
    }
}

/// The cost of API keys, the hashes a server makes and checks most.
impl Default for Argon2Cost {
    fn default() -> Self {
        Argon2Cost::API_KEYS
    }
}

/// The cost each kind of key is hashed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Costs {
    pub api_keys: Argon2Cost,
    pub root_keys: Argon2Cost,
}

impl Default for Argon2Costs {
    fn default() -> Self {
        Argon2Costs {
            api_keys: Argon2Cost::API_KEYS,
            root_keys: Argon2Cost::OWASP,
        }
    }
}

impl Argon2Costs {
    fn of(&self, kind: KeyKind) -> Argon2Cost {
        match kind {
            KeyKind::Live | KeyKind::Test => self.api_keys,
            KeyKind::Root => self.root_keys,
        }
    }
}

/// HMAC-SHA256 of a presented key under the per-process key.
pub type SecretDigest = [u8; 32];

/// The digest of the key that matched a stored hash, once one has: kept
/// beside the hash (in its key-cache entry, or the root-key memo here) and
/// shared with the argon2 run that sets it.
#[derive(Debug, Default)]
pub struct VerifiedDigest(OnceLock<SecretDigest>);

impl VerifiedDigest {
    pub fn get(&self) -> Option<&SecretDigest> {
        self.0.get()
    }

    /// Remembers `digest`; a second one is refused (only one key matches a hash).
    pub fn set(&self, digest: SecretDigest) -> Result<(), SecretDigest> {
        self.0.set(digest)
    }

    /// Constant time, so the comparison reveals nothing of the digest.
    fn holds(&self, digest: &SecretDigest) -> bool {
        self.0
            .get()
            .is_some_and(|known| bool::from(known.ct_eq(digest)))
    }
}

/// Whether a presented key is the one a stored hash was made from.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretCheck {
    Wrong,
    Right {
        /// The secret hashed under the configured cost, when the stored hash
        /// was made under another: the caller stores it in place of the old
        /// one. Of the calls sharing one run, only one receives it.
        rehashed: Option<String>,
    },
}

/// What one argon2 run found, as every call sharing it receives it.
#[derive(Clone)]
enum RunOutcome {
    Wrong,
    /// Right; the new hash, if any, is taken by the first call to look.
    Right(Option<Arc<Mutex<Option<String>>>>),
    /// The run could not judge (a corrupt stored hash, a failed thread).
    Failed(Arc<str>),
}

/// A run in flight, for calls that want the same answer.
type Flight = Shared<BoxFuture<'static, RunOutcome>>;
/// Runs are shared by presented key (its digest) and stored hash.
type FlightKey = (SecretDigest, Arc<str>);

#[derive(Default)]
struct Flights(Mutex<HashMap<FlightKey, Flight>>);

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlightKey, Flight>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ends a flight when its run ends (or unwinds): after the run has
/// remembered a right key, so a later call finds either the flight or the
/// remembered digest, never neither.
struct FlightEnd {
    flights: Arc<Flights>,
    key: FlightKey,
}

impl Drop for FlightEnd {
    fn drop(&mut self) {
        self.flights.lock().remove(&self.key);
    }
}

/// A root key's stored hash and the digest that matched it; root keys have
/// no cache entry of their own to keep it in.
struct RootKeyMemo {
    hash: Arc<str>,
    verified: Arc<VerifiedDigest>,
}

/// Root keys whose verified digests are remembered; about 200 bytes each.
const ROOT_KEY_MEMO: u64 = 10_000;

pub struct SecretHasher {
    costs: Argon2Costs,
    /// Where every argon2 run happens, within the budget.
    pool: Argon2Pool,
    /// HMAC-SHA256 keyed with a per-process random key (digests mean nothing
    /// elsewhere), its key schedule done once: each digest clones it.
    digest_mac: Hmac<Sha256>,
    /// Runs in flight, so concurrent checks of one key share one.
    flights: Arc<Flights>,
    /// Root key id → its hash and verified digest.
    root_keys: moka::sync::Cache<KeyId, Arc<RootKeyMemo>>,
}

impl SecretHasher {
    pub fn new(costs: Argon2Costs, budget: Argon2Budget) -> Result<Self> {
        costs.api_keys.params()?;
        costs.root_keys.params()?;
        let pool = Argon2Pool::new(budget)
            .map_err(|e| Error::Internal(format!("cannot start the argon2 threads: {e}")))?;
        let mut digest_key = [0u8; 32];
        OsRng.fill_bytes(&mut digest_key);
        let digest_mac =
            Hmac::<Sha256>::new_from_slice(&digest_key).expect("HMAC takes any key length");
        Ok(SecretHasher {
            costs,
            pool,
            digest_mac,
            flights: Arc::default(),
            root_keys: moka::sync::Cache::builder()
                .max_capacity(ROOT_KEY_MEMO)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        })
    }

    /// An argon2id PHC string for a new secret of `kind`, with a fresh salt.
    pub async fn hash(&self, kind: KeyKind, secret: &Secret) -> Result<String> {
        let (secret, cost) = (secret.clone(), self.costs.of(kind));
        self.pool
            .submit("hash", move || hash_with(cost, &secret))
            .map_err(overloaded)?
            .await
            .map_err(|_| Error::Internal("the argon2 hashing run failed".to_owned()))?
    }

    /// Whether `presented` is the key `stored_hash` was made from. `verified`
    /// is where the digest of the right key is remembered beside that hash.
    pub async fn check(
        &self,
        presented: &PresentedKey,
        stored_hash: &Arc<str>,
        verified: &Arc<VerifiedDigest>,
    ) -> Result<SecretCheck> {
        let digest = self.digest(presented.kind, &presented.id, &presented.secret);
        let remembered = verified.holds(&digest);
        static MEMO: LazyLock<[HotCounter; 2]> = LazyLock::new(|| {
            metrics::registered(|| {
                [
                    HotCounter::new(
                        ::metrics::counter!("apikeyd_secret_memo_total", "result" => "miss"),
                    ),
                    HotCounter::new(
                        ::metrics::counter!("apikeyd_secret_memo_total", "result" => "hit"),
                    ),
                ]
            })
        });
        MEMO[usize::from(remembered)].increment(1);
        if remembered {
            return Ok(SecretCheck::Right { rehashed: None });
        }
        let Some(flight) = self.join_or_start(presented, digest, stored_hash, verified)? else {
            return Ok(SecretCheck::Right { rehashed: None });
        };
        match flight.await {
            RunOutcome::Wrong => Ok(SecretCheck::Wrong),
            RunOutcome::Right(rehashed) => {
                // A call that joined a run started for another cache entry
                // of the same hash remembers the digest in its own too.
                let _ = verified.set(digest);
                let rehashed =
                    rehashed.and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take());
                Ok(SecretCheck::Right { rehashed })
            }
            RunOutcome::Failed(cause) => Err(Error::Internal(cause.to_string())),
        }
    }

    /// [`SecretHasher::check`] for a root key, remembering its verified
    /// digest here by key id (for as long as its stored hash is unchanged).
    pub async fn check_root_key(
        &self,
        presented: &PresentedKey,
        stored_hash: &str,
    ) -> Result<SecretCheck> {
        let fresh = || {
            Arc::new(RootKeyMemo {
                hash: Arc::from(stored_hash),
                verified: Arc::default(),
            })
        };
        let mut memo = self.root_keys.get_with_by_ref(&presented.id, fresh);
        if *memo.hash != *stored_hash {
            memo = fresh();
            self.root_keys.insert(presented.id.clone(), memo.clone());
        }
        self.check(presented, &memo.hash, &memo.verified).await
    }

    /// The run in flight for this key and hash, or a new one; `None` when a
    /// run ended meanwhile having remembered this very key.
    fn join_or_start(
        &self,
        presented: &PresentedKey,
        digest: SecretDigest,
        stored_hash: &Arc<str>,
        verified: &Arc<VerifiedDigest>,
    ) -> Result<Option<Flight>> {
        let key = (digest, stored_hash.clone());
        let mut running = self.flights.lock();
        if let Some(flight) = running.get(&key) {
            return Ok(Some(flight.clone()));
        }
        // A run ends by remembering, then leaving this map under its lock:
        // checked again under the lock, a run just ended is never missed.
        if verified.holds(&digest) {
            return Ok(None);
        }
        let (flights, flight_key) = (self.flights.clone(), key.clone());
        let (secret, stored, verified) = (
            presented.secret.clone(),
            stored_hash.clone(),
            verified.clone(),
        );
        let target = self.costs.of(presented.kind);
        // The guard is made inside the run: a run refused (and dropped) here,
        // under the lock, has no flight to end.
        let run = self
            .pool
            .submit("verify", move || {
                let _end = FlightEnd {
                    flights,
                    key: flight_key,
                };
                let outcome = verify_with(&secret, &stored, target);
                if let RunOutcome::Right(_) = outcome {
                    let _ = verified.set(digest);
                }
                outcome
            })
            .map_err(overloaded)?;
        let flight = async move {
            run.await.unwrap_or_else(|_| {
                RunOutcome::Failed(Arc::from("the argon2 verification run failed"))
            })
        }
        .boxed()
        .shared();
        running.insert(key, flight.clone());
        Ok(Some(flight))
    }

    /// The keyed digest of a presented key: what caches may hold instead of it.
    fn digest(&self, kind: KeyKind, id: &KeyId, secret: &Secret) -> SecretDigest {
        let mut mac = self.digest_mac.clone();
        mac.update(kind.prefix().as_bytes());
        mac.update(id.as_str().as_bytes());
        mac.update(b"_");
        mac.update(secret.expose());
        mac.finalize().into_bytes().into()
    }
}

fn overloaded(_: Overloaded) -> Error {
    Error::Overloaded
}

/// Working memory an argon2 thread keeps from run to run: enough for the
/// API-key cost (256 KiB), the runs a server makes most.
const KEPT_WORKING_MEMORY_BLOCKS: usize = 1024;

thread_local! {
    /// Each argon2 thread's working memory, up to [`KEPT_WORKING_MEMORY_BLOCKS`],
    /// kept from run to run so that verifying API keys allocates nothing. A
    /// run at a greater cost (a root key's 19 MiB) has memory of its own,
    /// returned when it ends: kept, it would stay resident for the life of
    /// the process after a single root-key check (the bootstrap key's hash
    /// at start does one), per thread of the pool.
    static WORKING_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// argon2 of `secret` and `salt` into `out`, in this thread's working memory.
fn argon2_into(
    argon2: &Argon2<'_>,
    secret: &Secret,
    salt: &[u8],
    out: &mut [u8],
) -> argon2::Result<()> {
    let blocks = argon2.params().block_count();
    if blocks > KEPT_WORKING_MEMORY_BLOCKS {
        let mut memory = vec![Block::default(); blocks];
        return argon2.hash_password_into_with_memory(secret.expose(), salt, out, &mut memory);
    }
    WORKING_MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        argon2.hash_password_into_with_memory(secret.expose(), salt, out, &mut memory[..blocks])
    })
}

/// Hashes `secret` under `cost` into a PHC string (on an argon2 thread).
fn hash_with(cost: Argon2Cost, secret: &Secret) -> Result<String> {
    let failed = |e: &dyn std::fmt::Display| Error::Internal(format!("argon2 hashing failed: {e}"));
    let params = cost.params()?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(|e| failed(&e))?;
    let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
        argon2_into(&argon2, secret, salt_bytes, out).map_err(Into::into)
    })
    .map_err(|e| failed(&e))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Verifies `secret` against `stored` (under the parameters `stored`
/// carries) and, when it matches a hash made under another cost than
/// `target`, hashes it anew (on an argon2 thread).
fn verify_with(secret: &Secret, stored: &str, target: Argon2Cost) -> RunOutcome {
    let matched = PasswordHash::new(stored)
        .map_err(|e| format!("stored hash is not a PHC string: {e}"))
        .and_then(|parsed| {
            matches(secret, &parsed)
                .map(|matched| (matched, target.made(&parsed)))
                .map_err(|e| format!("stored hash cannot be verified: {e}"))
        });
    match matched {
        Err(cause) => RunOutcome::Failed(Arc::from(cause)),
        Ok((false, _)) => RunOutcome::Wrong,
        Ok((true, true)) => RunOutcome::Right(None),
        Ok((true, false)) => match hash_with(target, secret) {
            Ok(rehashed) => RunOutcome::Right(Some(Arc::new(Mutex::new(Some(rehashed))))),
            Err(e) => {
                tracing::warn!(error = %e, "could not rehash a verified secret; it keeps its old hash");
                RunOutcome::Right(None)
            }
        },
    }
}

/// Whether `secret` hashes to `hash`'s output under `hash`'s own algorithm,
/// version, parameters and salt; the outputs are compared in constant time.
fn matches(secret: &Secret, hash: &PasswordHash<'_>) -> argon2::password_hash::Result<bool> {
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return Err(argon2::password_hash::Error::PhcStringField);
    };
    let argon2 = Argon2::new(
        Algorithm::try_from(hash.algorithm)?,
        hash.version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default(),
        Params::try_from(hash)?,
    );
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    let mut computed = vec![0u8; expected.len()];
    argon2_into(&argon2, secret, salt_bytes, &mut computed)?;
    Ok(bool::from(computed.ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::domain::GeneratedKey;

    const CHEAP: Argon2Cost = Argon2Cost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn hasher_with(costs: Argon2Costs, max_in_flight: usize, max_queued: usize) -> SecretHasher {
        let budget = Argon2Budget {
            max_in_flight: NonZeroUsize::new(max_in_flight).unwrap(),
            max_queued,
        };
        SecretHasher::new(costs, budget).unwrap()
    }

    fn cheap() -> SecretHasher {
        let costs = Argon2Costs {
            api_keys: CHEAP,
            root_keys: CHEAP,
        };
        hasher_with(costs, 2, 1_000)
    }

    /// A new key's presented form and its stored hash, as a cache entry holds it.
    async fn issued(hasher: &SecretHasher, kind: KeyKind) -> (PresentedKey, Arc<str>) {
        let key = GeneratedKey::generate(kind);
        let hash = hasher.hash(kind, &key.secret).await.unwrap();
        let presented = PresentedKey::parse(&key.into_full_key()).unwrap();
        (presented, Arc::from(hash))
    }

    /// The same key id with another secret.
    fn wrong_secret_for(right: &PresentedKey) -> PresentedKey {
        let other = GeneratedKey::generate(right.kind);
        PresentedKey {
            secret: other.secret,
            ..right.clone()
        }
    }

    #[tokio::test]
    async fn hashes_are_argon2id_phc_strings_that_verify() {
        let hasher = cheap();
        let (presented, hash) = issued(&hasher, KeyKind::Live).await;
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");

        let check = hasher.check(&presented, &hash, &Arc::default()).await;

        assert_eq!(check.unwrap(), SecretCheck::Right { rehashed: None });
    }

    #[tokio::test]
    async fn each_kind_is_hashed_at_its_own_cost() {
        let costs = Argon2Costs {
            api_keys: CHEAP,
            root_keys: Argon2Cost {
                memory_kib: 128,
                iterations: 2,
                parallelism: 1,
            },
        };
        let hasher = hasher_with(costs, 1, 10);
        let secret = GeneratedKey::generate(KeyKind::Live).secret;

        let api = hasher.hash(KeyKind::Test, &secret).await.unwrap();
        let root = hasher.hash(KeyKind::Root, &secret).await.unwrap();

        assert!(api.contains("$m=64,t=1,p=1$"), "{api}");
        assert!(root.contains("$m=128,t=2,p=1$"), "{root}");
    }

    #[tokio::test]
    async fn a_wrong_secret_does_not_verify_even_after_the_right_one_did() {
        let hasher = cheap();
        let (right, hash) = issued(&hasher, KeyKind::Live).await;
        let verified = Arc::default();
        let first = hasher.check(&right, &hash, &verified).await.unwrap();
        assert_eq!(first, SecretCheck::Right { rehashed: None });

        let wrong = hasher
            .check(&wrong_secret_for(&right), &hash, &verified)
            .await;

        assert_eq!(wrong.unwrap(), SecretCheck::Wrong);
    }

    #[tokio::test]
    async fn a_right_secret_is_remembered_by_digest_and_a_wrong_one_is_not() {
        let hasher = cheap();
        let (right, hash) = issued(&hasher, KeyKind::Live).await;
        let verified = Arc::<VerifiedDigest>::default();

        hasher
            .check(&wrong_secret_for(&right), &hash, &verified)
            .await
            .unwrap();
        assert_eq!(verified.get(), None, "a failure is not remembered");
        hasher.check(&right, &hash, &verified).await.unwrap();

        let remembered = *verified.get().expect("the right key is remembered");
        assert_eq!(
            remembered,
            hasher.digest(right.kind, &right.id, &right.secret)
        );
        let secret = right.secret.expose();
        assert!(!remembered.windows(secret.len()).any(|w| w == secret));
    }

    #[tokio::test]
    async fn a_remembered_digest_vouches_only_for_its_own_hash_entry() {
        let hasher = cheap();
        let (presented, hash) = issued(&hasher, KeyKind::Live).await;
        let (_, other_hash) = issued(&hasher, KeyKind::Live).await;
        let verified = Arc::default();
        hasher.check(&presented, &hash, &verified).await.unwrap();

        let elsewhere = hasher.check(&presented, &other_hash, &Arc::default()).await;

        assert_eq!(elsewhere.unwrap(), SecretCheck::Wrong);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_of_one_cold_key_share_one_run() {
        // One thread and no queue: a second run would be refused, so every
        // check succeeding proves they shared the first.
        let costs = Argon2Costs {
            api_keys: Argon2Cost {
                memory_kib: 4096,
                iterations: 4,
                parallelism: 1,
            },
            root_keys: CHEAP,
        };
        let hasher = Arc::new(hasher_with(costs, 1, 0));
        let (presented, hash) = issued(&hasher, KeyKind::Live).await;
        let verified = Arc::<VerifiedDigest>::default();

        let checks: Vec<_> = (0..32)
            .map(|_| {
                let (hasher, presented, hash, verified) = (
                    hasher.clone(),
                    presented.clone(),
                    hash.clone(),
                    verified.clone(),
                );
                tokio::spawn(async move { hasher.check(&presented, &hash, &verified).await })
            })
            .collect();

        for check in checks {
            assert_eq!(
                check.await.unwrap().unwrap(),
                SecretCheck::Right { rehashed: None }
            );
        }
    }

    #[tokio::test]
    async fn a_full_budget_is_overloaded_not_a_verdict() {
        let hasher = hasher_with(
            Argon2Costs {
                api_keys: CHEAP,
                root_keys: CHEAP,
            },
            1,
            0,
        );
        let (presented, hash) = issued(&hasher, KeyKind::Live).await;
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let busy = hasher
            .pool
            .submit("test", move || {
                started_tx.send(()).unwrap();
                released.recv().unwrap();
            })
            .unwrap();
        started.recv().unwrap();

        let refused = hasher.check(&presented, &hash, &Arc::default()).await;

        assert!(matches!(refused, Err(Error::Overloaded)), "{refused:?}");
        release.send(()).unwrap();
        busy.await.unwrap();
    }

    #[tokio::test]
    async fn a_hash_made_under_another_cost_is_rehashed_once_on_success() {
        let old = cheap();
        let (presented, old_hash) = issued(&old, KeyKind::Live).await;
        let target = Argon2Cost {
            memory_kib: 96,
            iterations: 2,
            parallelism: 1,
        };
        let hasher = hasher_with(
            Argon2Costs {
                api_keys: target,
                root_keys: CHEAP,
            },
            1,
            10,
        );

        let wrong = hasher
            .check(&wrong_secret_for(&presented), &old_hash, &Arc::default())
            .await
            .unwrap();
        let verified = Arc::default();
        let right = hasher
            .check(&presented, &old_hash, &verified)
            .await
            .unwrap();
        let again = hasher
            .check(&presented, &old_hash, &verified)
            .await
            .unwrap();

        assert_eq!(
            wrong,
            SecretCheck::Wrong,
            "a wrong secret is never rehashed"
        );
        let SecretCheck::Right {
            rehashed: Some(new_hash),
        } = right
        else {
            panic!("expected a rehash, got {right:?}");
        };
        assert!(new_hash.contains("$m=96,t=2,p=1$"), "{new_hash}");
        assert_eq!(again, SecretCheck::Right { rehashed: None });
        let new_hash = Arc::from(new_hash);
        assert_eq!(
            hasher
                .check(&presented, &new_hash, &Arc::default())
                .await
                .unwrap(),
            SecretCheck::Right { rehashed: None },
            "the new hash verifies and needs no further rehash"
        );
    }

    #[tokio::test]
    async fn root_keys_are_remembered_until_their_hash_changes() {
        let hasher = cheap();
        let (presented, hash) = issued(&hasher, KeyKind::Root).await;
        let (_, other_hash) = issued(&hasher, KeyKind::Root).await;

        let first = hasher.check_root_key(&presented, &hash).await.unwrap();
        let remembered = hasher
            .root_keys
            .get(&presented.id)
            .is_some_and(|memo| memo.verified.get().is_some());
        let changed = hasher
            .check_root_key(&presented, &other_hash)
            .await
            .unwrap();

        assert_eq!(first, SecretCheck::Right { rehashed: None });
        assert!(remembered);
        assert_eq!(changed, SecretCheck::Wrong);
    }

    #[tokio::test]
    async fn hashes_agree_with_the_reference_implementation_across_costs_on_one_thread() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let big = Argon2Cost {
            memory_kib: 2048,
            iterations: 3,
            parallelism: 2,
        };
        // One thread: its working memory serves the big cost, then the small.
        let hasher = hasher_with(
            Argon2Costs {
                api_keys: CHEAP,
                root_keys: big,
            },
            1,
            10,
        );
        let root = GeneratedKey::generate(KeyKind::Root);
        let api = GeneratedKey::generate(KeyKind::Live);
        let root_hash = hasher.hash(KeyKind::Root, &root.secret).await.unwrap();
        let api_hash = hasher.hash(KeyKind::Live, &api.secret).await.unwrap();
        let reference = Argon2::default();
        let old_hash = reference
            .hash_password(api.secret.expose(), &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();

        for (secret, hash) in [(&root.secret, &root_hash), (&api.secret, &api_hash)] {
            let parsed = PasswordHash::new(hash).unwrap();
            assert!(
                reference.verify_password(secret.expose(), &parsed).is_ok(),
                "{hash}"
            );
        }
        let presented = PresentedKey::parse(&api.into_full_key()).unwrap();
        let check = hasher
            .check(&presented, &Arc::from(old_hash), &Arc::default())
            .await
            .unwrap();
        assert!(
            matches!(check, SecretCheck::Right { rehashed: Some(_) }),
            "a reference hash at its default cost verifies (and moves to ours): {check:?}"
        );
    }

    #[tokio::test]
    async fn hashes_never_contain_the_secret() {
        let hasher = cheap();
        let key = GeneratedKey::generate(KeyKind::Live);
        let hash = hasher.hash(KeyKind::Live, &key.secret).await.unwrap();
        let secret = std::str::from_utf8(key.secret.expose()).unwrap().to_owned();
        assert!(!hash.contains(&secret));
    }
}
