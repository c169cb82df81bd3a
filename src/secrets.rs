//! Hashing and verifying key secrets with argon2id.
//!
//! argon2id is deliberately slow (tens of milliseconds), so it runs on the
//! blocking pool behind a semaphore sized to the cores: a burst of cold keys
//! queues here instead of starving the async runtime. A verified secret is
//! remembered by a keyed digest (HMAC-SHA256 under a per-process random key,
//! never the secret itself), so a warm key costs one HMAC instead of one
//! argon2 run: API keys keep the digest in their key-cache entry
//! ([`crate::key_cache`]); root keys in the small memo here, next to the hash
//! it matched. The memo is safe without invalidation: a secret that matched
//! a hash once always matches it, and revocation is judged on the record.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::domain::{KeyId, KeyKind, Secret};
use crate::error::{Error, Result};

/// argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Argon2Cost {
    /// Memory per hash, in KiB (OWASP's minimum for argon2id: 19 MiB).
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Cost {
    fn default() -> Self {
        Argon2Cost {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl Argon2Cost {
    pub fn params(&self) -> Result<Params> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| Error::Internal(format!("argon2 parameters rejected: {e}")))
    }
}

/// HMAC-SHA256 of a presented key under the per-process key.
pub type SecretDigest = [u8; 32];

/// Counts an argon2 run in the queue-depth gauge and times it, queueing
/// included, from creation until drop.
struct ArgonSlot {
    operation: &'static str,
    entered: std::time::Instant,
}

impl ArgonSlot {
    fn enter(operation: &'static str) -> ArgonSlot {
        ::metrics::gauge!("apikeyd_argon2_queue_depth").increment(1.0);
        ArgonSlot {
            operation,
            entered: std::time::Instant::now(),
        }
    }
}

impl Drop for ArgonSlot {
    fn drop(&mut self) {
        ::metrics::gauge!("apikeyd_argon2_queue_depth").decrement(1.0);
        ::metrics::histogram!("apikeyd_argon2_duration_seconds", "operation" => self.operation)
            .record(self.entered.elapsed());
    }
}

pub struct SecretHasher {
    argon2: Argon2<'static>,
    /// Bounds concurrent argon2 runs to the number of cores.
    permits: Arc<Semaphore>,
    /// Per-process HMAC key for the memo: digests mean nothing elsewhere.
    digest_key: [u8; 32],
    /// digest of (kind, id, secret) → the PHC hash it was verified against.
    verified: moka::future::Cache<SecretDigest, Arc<str>>,
}

impl SecretHasher {
    pub fn new(cost: Argon2Cost, memo_capacity: u64) -> Result<Self> {
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, cost.params()?);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut digest_key = [0u8; 32];
        OsRng.fill_bytes(&mut digest_key);
        Ok(SecretHasher {
            argon2,
            permits: Arc::new(Semaphore::new(cores)),
            digest_key,
            verified: moka::future::Cache::builder()
                .max_capacity(memo_capacity)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        })
    }

    /// An argon2id PHC string for `secret`, with a fresh random salt.
    pub async fn hash(&self, secret: &Secret) -> Result<String> {
        let secret = secret.clone();
        self.on_pool("hash", move |argon2| {
            let salt = SaltString::generate(&mut OsRng);
            argon2
                .hash_password(secret.expose(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| Error::Internal(format!("argon2 hashing failed: {e}")))
        })
        .await
    }

    /// Whether `secret` (of key `id`) matches `stored_hash`. The comparison
    /// inside argon2 is constant time; the memo lookup compares digests that an
    /// attacker cannot compute without the per-process key.
    pub async fn verify(
        &self,
        kind: KeyKind,
        id: &KeyId,
        secret: &Secret,
        stored_hash: &str,
    ) -> Result<bool> {
        let digest = self.digest(kind, id, secret);
        if self.memo_holds(&digest, stored_hash).await {
            return Ok(true);
        }
        let matched = self.verify_with_argon2(secret, stored_hash).await?;
        if matched {
            self.verified.insert(digest, Arc::from(stored_hash)).await;
        }
        Ok(matched)
    }

    async fn memo_holds(&self, digest: &SecretDigest, stored_hash: &str) -> bool {
        let hit = self
            .verified
            .get(digest)
            .await
            .is_some_and(|hash| *hash == *stored_hash);
        let result = if hit { "hit" } else { "miss" };
        ::metrics::counter!("apikeyd_secret_memo_total", "result" => result).increment(1);
        hit
    }

    /// Runs argon2 work on the blocking pool, at most one run per core at a
    /// time, counted in the queue-depth gauge and timed.
    async fn on_pool<T: Send + 'static>(
        &self,
        operation: &'static str,
        work: impl FnOnce(&Argon2<'static>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _slot = ArgonSlot::enter(operation);
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore is never closed");
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || work(&argon2))
            .await
            .map_err(|e| Error::Internal(format!("argon2 {operation} task failed: {e}")))?
    }

    /// Checks `secret` against `stored_hash` with argon2 alone, on the pool
    /// (the caller keeps its own record of what verified).
    pub async fn verify_with_argon2(&self, secret: &Secret, stored_hash: &str) -> Result<bool> {
        let (secret, stored) = (secret.clone(), stored_hash.to_owned());
        self.on_pool("verify", move |argon2| {
            let parsed = PasswordHash::new(&stored)
                .map_err(|e| Error::Internal(format!("stored hash is not a PHC string: {e}")))?;
            Ok(argon2.verify_password(secret.expose(), &parsed).is_ok())
        })
        .await
    }

    /// The keyed digest of a presented key: what caches may hold instead of it.
    pub fn digest(&self, kind: KeyKind, id: &KeyId, secret: &Secret) -> SecretDigest {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.digest_key).expect("HMAC takes any key length");
        mac.update(kind.prefix().as_bytes());
        mac.update(id.as_str().as_bytes());
        mac.update(b"_");
        mac.update(secret.expose());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{GeneratedKey, PresentedKey};

    fn cheap() -> SecretHasher {
        let cost = Argon2Cost {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        SecretHasher::new(cost, 100).unwrap()
    }

    #[tokio::test]
    async fn hashes_are_argon2id_phc_strings_that_verify() {
        let hasher = cheap();
        let key = GeneratedKey::generate(KeyKind::Live);
        let hash = hasher.hash(&key.secret).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        let presented = PresentedKey::parse(&key.into_full_key()).unwrap();
        assert!(
            hasher
                .verify(presented.kind, &presented.id, &presented.secret, &hash)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_wrong_secret_does_not_verify_even_after_the_right_one_did() {
        let hasher = cheap();
        let right = GeneratedKey::generate(KeyKind::Live);
        let wrong = GeneratedKey::generate(KeyKind::Live);
        let hash = hasher.hash(&right.secret).await.unwrap();
        assert!(
            hasher
                .verify(right.kind, &right.id, &right.secret, &hash)
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify(right.kind, &right.id, &wrong.secret, &hash)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn the_memo_only_vouches_for_the_hash_it_verified() {
        let hasher = cheap();
        let key = GeneratedKey::generate(KeyKind::Live);
        let hash = hasher.hash(&key.secret).await.unwrap();
        let other_hash = hasher
            .hash(&GeneratedKey::generate(KeyKind::Live).secret)
            .await
            .unwrap();
        assert!(
            hasher
                .verify(key.kind, &key.id, &key.secret, &hash)
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify(key.kind, &key.id, &key.secret, &other_hash)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn the_memo_never_holds_a_raw_key() {
        let hasher = cheap();
        let key = GeneratedKey::generate(KeyKind::Live);
        let hash = hasher.hash(&key.secret).await.unwrap();
        let full = key.into_full_key();
        let presented = PresentedKey::parse(&full).unwrap();
        assert!(
            hasher
                .verify(presented.kind, &presented.id, &presented.secret, &hash)
                .await
                .unwrap()
        );
        hasher.verified.run_pending_tasks().await;
        assert_eq!(hasher.verified.entry_count(), 1);
        let secret = presented.secret.expose();
        for (digest, remembered) in hasher.verified.iter() {
            assert!(!digest.windows(secret.len()).any(|w| w == secret));
            assert!(!remembered.contains(std::str::from_utf8(secret).unwrap()));
            assert!(!remembered.contains(&full));
        }
    }

    #[test]
    fn hashes_never_contain_the_secret() {
        let hasher = cheap();
        let key = GeneratedKey::generate(KeyKind::Live);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let hash = rt.block_on(hasher.hash(&key.secret)).unwrap();
        let secret = std::str::from_utf8(key.secret.expose()).unwrap().to_owned();
        assert!(!hash.contains(&secret));
    }
}
