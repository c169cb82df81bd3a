//! Rate limits, usage quotas and usage counters.
//!
//! - [`limit`]: what a limit is, its bounds, tiers from configuration.
//! - [`algorithms`]: sliding window, fixed window and GCRA as pure
//!   functions, each with its exact guarantee.
//! - [`quota`]: usage quotas and their daily or monthly refills.
//! - [`usage`]: what a validation records and `GetKeyUsage` reads;
//!   [`imported_usage`]: the history an imported key brings.
//! - [`store`]: the one-round-trip storage interface, implemented by
//!   [`redis`] (`decide.lua`, single node or cluster) and [`memory`].
//! - [`limiter`]: timeouts, the failure policy, outage logs and health.
//!
//! Storage keys are named by [`Keyspace`]: `<prefix>:{<tag>}:<rest>`, where
//! the tag is what one decision shares (a key's owner, or a
//! CheckRateLimit namespace and identifier), so on a Redis Cluster all keys
//! of one decision hash to one slot.

pub mod algorithms;
pub mod imported_usage;
pub mod limit;
pub mod limiter;
pub mod memory;
pub mod quota;
pub mod redis;
pub mod store;
pub mod usage;
pub mod usage_buffer;

pub use limit::{Algorithm, Limit, LimitSource, Tiers};
pub use limiter::{FailurePolicy, RateLimiter};
pub use quota::{Quota, RefillInterval};
pub use store::{Decision, LimitStatus, Outcome, QuotaCheck, UsageRecord, Verdict};

use crate::domain::KeyId;

/// Names storage keys. Keys of one API key's decision carry its owner's tag,
/// so the key's limits, its owner's shared limits, its quota and its usage
/// are always in one slot.
#[derive(Clone, Debug)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    /// `prefix` must hold no `{` or `}` (it would move the hash tag).
    pub fn new(prefix: &str) -> anyhow::Result<Keyspace> {
        anyhow::ensure!(
            !prefix.is_empty() && !prefix.contains(['{', '}']),
            "the Redis key prefix {prefix:?} must be non-empty and hold no braces"
        );
        Ok(Keyspace {
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, tag: &str, rest: &str) -> String {
        format!("{}:{{{tag}}}:{rest}", self.prefix)
    }

    fn limit_rest(scope: &str, limit: &Limit) -> String {
        format!("{scope}rl:{}:{}", limit.algorithm.code(), limit.window_ms)
    }

    /// A CheckRateLimit counter. The limit value is not part of the name, so
    /// a caller may raise or lower it and keep counting.
    pub fn identifier_limit(&self, namespace: &str, identifier: &str, limit: &Limit) -> String {
        self.key(
            &format!("n:{namespace}:{identifier}"),
            &Self::limit_rest("", limit),
        )
    }

    pub fn key_limit(&self, owner_id: &str, key: &KeyId, limit: &Limit) -> String {
        self.key(
            &owner_tag(owner_id),
            &Self::limit_rest(&format!("k:{key}:"), limit),
        )
    }

    pub fn owner_limit(&self, owner_id: &str, limit: &Limit) -> String {
        self.key(&owner_tag(owner_id), &Self::limit_rest("o:", limit))
    }

    pub fn quota(&self, owner_id: &str, key: &KeyId) -> String {
        self.key(&owner_tag(owner_id), &format!("k:{key}:quota"))
    }

    pub fn usage_base(&self, owner_id: &str, key: &KeyId) -> String {
        self.key(&owner_tag(owner_id), &format!("k:{key}:usage"))
    }
}

fn owner_tag(owner_id: &str) -> String {
    format!("o:{owner_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of a key Redis Cluster hashes: from the first `{` to the next `}`.
    fn hashed(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + 1 + key[open + 1..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn every_key_of_one_validate_shares_its_owners_hash_tag() {
        let keyspace = Keyspace::new("apikeyd").unwrap();
        let id = KeyId::parse("0123456789abcdef").unwrap();
        let limit = Limit {
            limit: 10,
            window_ms: 1_000,
            algorithm: Algorithm::SlidingWindow,
        };
        for owner in ["user_1", "we}ird{owner", "}"] {
            let keys = [
                keyspace.key_limit(owner, &id, &limit),
                keyspace.owner_limit(owner, &limit),
                keyspace.quota(owner, &id),
                keyspace.usage_base(owner, &id),
            ];
            assert!(
                keys.iter().all(|k| hashed(k) == hashed(&keys[0])),
                "{keys:?}"
            );
        }
    }

    #[test]
    fn prefixes_with_braces_are_refused() {
        assert!(Keyspace::new("a{b").is_err());
        assert!(Keyspace::new("").is_err());
    }
}
