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
//! - [`denials`]: a key's rate-limit denial, remembered until it could end.
//!
//! Storage keys are named by [`Keyspace`]: `<prefix>:{<tag>}:<rest>`, where
//! the tag is what one decision shares (a key's owner, a CheckRateLimit
//! namespace and identifier, or a ShouldRateLimit domain), so on a Redis
//! Cluster all keys of one decision hash to one slot.

pub mod algorithms;
pub mod batch;
pub mod denials;
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

    /// `<prefix>:{<tag>}:<rest>`, in one allocation of the exact size,
    /// written piece by piece: a Validate names two on every call, and
    /// `format!` costs more than the bytes.
    fn key(&self, tag: &[&str], rest: &[&str]) -> String {
        let len = |pieces: &[&str]| pieces.iter().map(|p| p.len()).sum::<usize>();
        let mut name = String::with_capacity(self.prefix.len() + 4 + len(tag) + len(rest));
        name.push_str(&self.prefix);
        name.push_str(":{");
        tag.iter().for_each(|p| name.push_str(p));
        name.push_str("}:");
        rest.iter().for_each(|p| name.push_str(p));
        name
    }

    /// A CheckRateLimit counter. The limit is part of its name: callers
    /// naming another limit count apart, so one call with a huge limit and
    /// cost cannot spend an identifier's count for callers with a small one.
    fn subject_limit(&self, subject: &Subject, limit: &Limit) -> String {
        let mut window = itoa::Buffer::new();
        let mut count = itoa::Buffer::new();
        self.key(
            &["n:", &subject.namespace, ":", &subject.identifier],
            &[
                "rl:",
                limit.algorithm.code(),
                ":",
                window.format(limit.window_ms),
                ":",
                count.format(limit.limit),
            ],
        )
    }

    /// A key's own limit. Its value is not part of the name, so an UpdateKey
    /// that changes it keeps the count.
    fn key_limit(&self, owner_id: &str, key: &KeyId, limit: &Limit) -> String {
        let mut window = itoa::Buffer::new();
        self.key(
            &["o:", owner_id],
            &[
                "k:",
                key.as_str(),
                ":rl:",
                limit.algorithm.code(),
                ":",
                window.format(limit.window_ms),
            ],
        )
    }

    /// A ShouldRateLimit counter, tagged by its domain so that every
    /// descriptor of one request is in one slot (a busy domain is one
    /// shard's load). Like a key's, its value is not part of the name.
    fn descriptor_limit(&self, domain: &str, counter: &str, limit: &Limit) -> String {
        let mut window = itoa::Buffer::new();
        self.key(
            &["e:", domain],
            &[
                "rl:",
                limit.algorithm.code(),
                ":",
                window.format(limit.window_ms),
                ":",
                counter,
            ],
        )
    }

    fn owner_limit(&self, owner_id: &str, limit: &Limit) -> String {
        let mut window = itoa::Buffer::new();
        self.key(
            &["o:", owner_id],
            &[
                "o:rl:",
                limit.algorithm.code(),
                ":",
                window.format(limit.window_ms),
            ],
        )
    }

    fn quota(&self, owner_id: &str, key: &KeyId) -> String {
        self.key(&["o:", owner_id], &["k:", key.as_str(), ":quota"])
    }

    fn usage_base(&self, owner_id: &str, key: &KeyId) -> String {
        self.key(&["o:", owner_id], &["k:", key.as_str(), ":usage"])
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

    /// Names are what Redis holds: a release that spelled them otherwise
    /// would start every count and quota afresh.
    #[test]
    fn names_are_spelled_as_stored() {
        let keyspace = Keyspace::new("apikeyd").unwrap();
        let id = KeyId::parse("0123456789abcdef").unwrap();
        let limit = Limit {
            limit: 5,
            window_ms: 60_000,
            algorithm: Algorithm::FixedWindow,
        };
        let subject = Subject::parse("login", "203.0.113.7").unwrap();
        assert_eq!(
            [
                keyspace.key_limit("user_1", &id, &limit),
                keyspace.owner_limit("user_1", &limit),
                keyspace.quota("user_1", &id),
                keyspace.usage_base("user_1", &id),
                keyspace.subject_limit(&subject, &limit),
                keyspace.descriptor_limit("edge", "remote_address_10.0.0.1", &limit),
            ],
            [
                "apikeyd:{o:user_1}:k:0123456789abcdef:rl:f:60000",
                "apikeyd:{o:user_1}:o:rl:f:60000",
                "apikeyd:{o:user_1}:k:0123456789abcdef:quota",
                "apikeyd:{o:user_1}:k:0123456789abcdef:usage",
                "apikeyd:{n:login:203.0.113.7}:rl:f:60000:5",
                "apikeyd:{e:edge}:rl:f:60000:remote_address_10.0.0.1",
            ]
        );
    }

    #[test]
    fn prefixes_with_braces_are_refused() {
        assert!(Keyspace::new("a{b").is_err());
        assert!(Keyspace::new("").is_err());
    }
}
