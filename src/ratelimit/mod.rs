//! Rate limits, usage quotas and usage counters.
//!
//! - [`limiter`]: the limiter as the rest of the service sees it, speaking in
//!   API keys and CheckRateLimit subjects: waits bounded by the caller's
//!   deadline, the failure policy, outage logs and health.
//! - [`algorithms`]: sliding window, fixed window and GCRA as pure
//!   functions, each with its exact guarantee. (What a limit and a quota
//!   are lives in [`crate::domain`].)
//! - [`usage`]: what a validation records and `GetKeyUsage` reads;
//!   [`imported_usage`]: the history an imported key brings.
//! - [`store`]: the one-round-trip storage interface, implemented by
//!   [`redis`] (`decide.lua`, single node or cluster) and [`memory`].
//! - [`batch`]: decisions that arrive together share one `EVALSHA`.
//!
//! Storage keys are named by [`Keyspace`]: `<prefix>:{<tag>}:<rest>`, where
//! the tag is what one decision shares (a key's owner, a CheckRateLimit
//! namespace and identifier, or a ShouldRateLimit domain), so on a Redis
//! Cluster all keys of one decision hash to one slot.

pub mod algorithms;
pub mod batch;
pub mod imported_usage;
pub mod limiter;
pub mod memory;
pub mod redis;
pub mod store;
pub mod usage;
pub mod usage_buffer;

pub use limiter::{
    DescriptorLimit, FailurePolicy, KeyCall, KeyVerdict, LimiterSettings, RateLimiter, tightest,
};
pub use store::{Enforcement, LimitStatus, Verdict};

use std::fmt;

use crate::domain::limit::Subject;
use crate::domain::{KeyId, Limit};

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

    /// One allocation per name: a Validate names several on every call.
    fn key(&self, tag: fmt::Arguments<'_>, rest: fmt::Arguments<'_>) -> String {
        format!("{}:{{{tag}}}:{rest}", self.prefix)
    }

    /// A CheckRateLimit counter. The limit is part of its name: callers
    /// naming another limit count apart, so one call with a huge limit and
    /// cost cannot spend an identifier's count for callers with a small one.
    fn subject_limit(&self, subject: &Subject, limit: &Limit) -> String {
        self.key(
            format_args!("n:{}:{}", subject.namespace, subject.identifier),
            format_args!("{}:{}", LimitName(limit), limit.limit),
        )
    }

    /// A key's own limit. Its value is not part of the name, so an UpdateKey
    /// that changes it keeps the count.
    fn key_limit(&self, owner_id: &str, key: &KeyId, limit: &Limit) -> String {
        self.key(
            format_args!("o:{owner_id}"),
            format_args!("k:{key}:{}", LimitName(limit)),
        )
    }

    /// A ShouldRateLimit counter, tagged by its domain so that every
    /// descriptor of one request is in one slot (a busy domain is one
    /// shard's load). Like a key's, its value is not part of the name.
    fn descriptor_limit(&self, domain: &str, counter: &str, limit: &Limit) -> String {
        self.key(
            format_args!("e:{domain}"),
            format_args!("{}:{counter}", LimitName(limit)),
        )
    }

    fn owner_limit(&self, owner_id: &str, limit: &Limit) -> String {
        self.key(
            format_args!("o:{owner_id}"),
            format_args!("o:{}", LimitName(limit)),
        )
    }

    fn quota(&self, owner_id: &str, key: &KeyId) -> String {
        self.key(format_args!("o:{owner_id}"), format_args!("k:{key}:quota"))
    }

    fn usage_base(&self, owner_id: &str, key: &KeyId) -> String {
        self.key(format_args!("o:{owner_id}"), format_args!("k:{key}:usage"))
    }
}

/// A limit's part of its counter's name: `rl:<algorithm>:<window ms>`.
struct LimitName<'a>(&'a Limit);

impl fmt::Display for LimitName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rl:{}:{}", self.0.algorithm.code(), self.0.window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Algorithm;

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
    fn a_subject_counts_apart_per_limit_but_not_per_cost() {
        let keyspace = Keyspace::new("apikeyd").unwrap();
        let subject = Subject::parse("login", "203.0.113.7").unwrap();
        let small = Limit {
            limit: 5,
            window_ms: 60_000,
            algorithm: Algorithm::FixedWindow,
        };
        let huge = Limit {
            limit: 1_000_000_000,
            ..small
        };
        assert_ne!(
            keyspace.subject_limit(&subject, &small),
            keyspace.subject_limit(&subject, &huge)
        );
    }

    #[test]
    fn prefixes_with_braces_are_refused() {
        assert!(Keyspace::new("a{b").is_err());
        assert!(Keyspace::new("").is_err());
    }
}
