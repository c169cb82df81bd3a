//! Rate-limit denials of API keys, remembered until they could end: a key
//! hammered past its limit is refused again without asking the store (no
//! Redis round trip, no counter to evaluate), which makes a denial cheaper
//! than an admission, as an abuse guard's answer should be.
//!
//! Remembering is exact. The store said that until `until` the limit that
//! refused the key leaves no room for `cost`; counters only grow until their
//! window moves (other replicas can only add to them), so that limit keeps
//! refusing that cost, and any larger one, at least that long. A request is
//! charged only if every limit admits it, so while the refusing limit is
//! still one of the key's (or its owner's, if it was theirs), no change to
//! the others can lift the refusal; an `UpdateKey` or `SetOwnerLimits` that
//! changes or removes that limit ends it at once. Which is why a refusal by
//! the key's own limit is recalled before its owner's limits are looked up.
//! A denial is remembered only when the store decided it, for a key without
//! a quota (a quota can be topped up elsewhere). `until` is measured from
//! when the decision was sent, so it can only end early, never late.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;

use super::store::LimitStatus;
use crate::domain::{KeyId, Limit};

/// Whose limit refused a key: it is recalled only while that list still holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedBy {
    /// One of the key's own limits.
    Key,
    /// One of the limits its owner shares with its other keys.
    Owner,
}

/// Keys with a remembered denial at most, per shard; past it, the expired
/// ones are dropped, and if none was, nothing more is remembered in that
/// shard until some are.
const MAX_KEYS_PER_SHARD: usize = 4_096;
/// Shards, so that Validate calls of different keys rarely take one lock.
const SHARDS: usize = 16;

#[derive(Default)]
pub struct DenialMemo {
    shards: [Shard; SHARDS],
}

type Denials = HashMap<KeyId, Denial, foldhash::fast::RandomState>;

#[derive(Default)]
struct Shard {
    denials: Mutex<Denials>,
    /// How many are held, read without the lock: most keys are never
    /// denied, and a shard without denials costs a Validate one atomic load.
    held: AtomicUsize,
}

struct Denial {
    until: Instant,
    /// The least cost refused.
    cost: u32,
    /// The refusing limit that ends last, as the store reported it.
    status: LimitStatus,
    refused_by: RefusedBy,
}

impl DenialMemo {
    /// The denial remembered for `id` now for a request of `cost` under the
    /// key's `own` limits and its `owner`'s (`None`: not looked up yet, so
    /// only a refusal by the key's own limit is recalled): the refusing
    /// limit, its wait counted to now. The clock is read only when the key
    /// has a denial to recall.
    pub fn recall(
        &self,
        id: &KeyId,
        own: &[Limit],
        owner: Option<&[Limit]>,
        cost: u32,
    ) -> Option<LimitStatus> {
        let shard = self.shard(id);
        if shard.held.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut denials = shard.lock();
        let denial = denials.get(id)?;
        let now = Instant::now();
        if now >= denial.until {
            // Over: forgotten, so that the shard empties again.
            denials.remove(id);
            shard.held.store(denials.len(), Ordering::Relaxed);
            return None;
        }
        let refusing = &denial.status.limit;
        let in_force = match denial.refused_by {
            RefusedBy::Key => own.contains(refusing),
            RefusedBy::Owner => owner.is_some_and(|owner| owner.contains(refusing)),
        };
        if cost < denial.cost || !in_force {
            return None;
        }
        let left = denial.until - now;
        Some(LimitStatus {
            retry_after_us: i64::try_from(left.as_micros()).unwrap_or(i64::MAX),
            ..denial.status
        })
    }

    /// Remembers that the store refused `id` a request of `cost`, `status`
    /// being the refusing limit that ends last, `refused_by` whose it is,
    /// for a decision sent at `sent`.
    pub fn remember(
        &self,
        id: &KeyId,
        cost: u32,
        status: LimitStatus,
        refused_by: RefusedBy,
        sent: Instant,
    ) {
        let Ok(wait) = u64::try_from(status.retry_after_us) else {
            return;
        };
        let until = sent + std::time::Duration::from_micros(wait);
        let shard = self.shard(id);
        let mut denials = shard.lock();
        if denials.len() >= MAX_KEYS_PER_SHARD && !denials.contains_key(id) {
            let now = Instant::now();
            denials.retain(|_, denial| denial.until > now);
            if denials.len() >= MAX_KEYS_PER_SHARD {
                return;
            }
        }
        denials.insert(
            id.clone(),
            Denial {
                until,
                cost,
                status,
                refused_by,
            },
        );
        shard.held.store(denials.len(), Ordering::Relaxed);
    }

    /// Key ids are random base62: their first character spreads them.
    fn shard(&self, id: &KeyId) -> &Shard {
        &self.shards[usize::from(id.as_str().as_bytes()[0]) % SHARDS]
    }
}

impl Shard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Denials> {
        self.denials.lock().expect("denial memo lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::Algorithm;

    fn limit(per: u32) -> Limit {
        Limit {
            limit: per,
            window_ms: 60_000,
            algorithm: Algorithm::SlidingWindow,
        }
    }

    fn refused(retry_after_us: i64) -> LimitStatus {
        LimitStatus {
            limit: limit(10),
            allowed: false,
            remaining: 0,
            reset_at_us: 1_000_000,
            retry_after_us,
        }
    }

    fn id() -> KeyId {
        KeyId::parse("0123456789abcdef").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_denial_is_recalled_until_its_wait_is_over_and_counts_down() {
        let memo = DenialMemo::default();
        let sent = Instant::now();
        memo.remember(&id(), 1, refused(2_000_000), RefusedBy::Key, sent);

        tokio::time::advance(Duration::from_millis(500)).await;
        let recalled = memo
            .recall(&id(), &[limit(10)], None, 1)
            .expect("still refused");
        assert_eq!(recalled.retry_after_us, 1_500_000);
        assert!(!recalled.allowed);

        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert!(
            memo.recall(&id(), &[limit(10)], None, 1).is_none(),
            "the wait is over: the store decides again"
        );
        assert_eq!(
            memo.shard(&id()).held.load(Ordering::Relaxed),
            0,
            "and the denial is forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_smaller_cost_or_a_changed_refusing_limit_is_decided_anew() {
        let memo = DenialMemo::default();
        let now = Instant::now();
        memo.remember(&id(), 3, refused(9_000_000), RefusedBy::Key, now);

        assert!(
            memo.recall(&id(), &[limit(10)], None, 5).is_some(),
            "a larger cost is refused as long"
        );
        assert!(memo.recall(&id(), &[limit(10)], None, 2).is_none());
        assert!(
            memo.recall(&id(), &[limit(20)], None, 3).is_none(),
            "the key's refusing limit changed"
        );
        assert!(
            memo.recall(&id(), &[limit(5), limit(10)], Some(&[limit(1)]), 3)
                .is_some(),
            "other limits, the key's or its owner's, cannot lift the refusal"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_by_the_owners_limit_needs_the_owners_limits() {
        let memo = DenialMemo::default();
        let now = Instant::now();
        memo.remember(&id(), 1, refused(9_000_000), RefusedBy::Owner, now);

        assert!(
            memo.recall(&id(), &[], None, 1).is_none(),
            "not known before the owner's limits are looked up"
        );
        assert!(memo.recall(&id(), &[], Some(&[limit(10)]), 1).is_some());
        assert!(
            memo.recall(&id(), &[limit(10)], Some(&[limit(30)]), 1)
                .is_none(),
            "the owner's refusing limit changed; the key's own equal one never refused"
        );
        assert!(
            memo.recall(&id(), &[], Some(&[limit(10)]), 1).is_some(),
            "a recall that does not hold forgets nothing"
        );
    }
}
