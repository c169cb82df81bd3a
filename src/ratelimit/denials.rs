//! Rate-limit denials of API keys, remembered until they could end: a key
//! hammered past its limit is refused again without asking the store (no
//! Redis round trip, no counter to evaluate), which makes a denial cheaper
//! than an admission, as an abuse guard's answer should be.
//!
//! Remembering is exact. The store said that until `until` every limit that
//! refused the key leaves no room for `cost`; counters only grow until their
//! window moves (other replicas can only add to them), so each such limit
//! keeps refusing that cost, and any larger one, at least that long. A
//! denial is remembered only when the store decided it, for a key without a
//! quota (a quota can be topped up elsewhere), and is used only while the
//! key's and its owner's limits are the ones it was decided under (an
//! `UpdateKey` or `SetOwnerLimits` ends it at once). `until` is measured
//! from when the decision was sent, so it can only end early, never late.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;

use super::store::LimitStatus;
use crate::domain::{KeyId, Limit};

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

#[derive(Default)]
struct Shard {
    denials: Mutex<HashMap<KeyId, Denial, foldhash::fast::RandomState>>,
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
    /// The key's own limits, then its owner's, it was decided under.
    limits: Box<[Limit]>,
}

impl DenialMemo {
    /// The denial remembered for `id` at `now` for a request of `cost`
    /// under these limits: the refusing limit, its wait counted to now.
    pub fn recall(
        &self,
        id: &KeyId,
        own: &[Limit],
        owner: &[Limit],
        cost: u32,
        now: Instant,
    ) -> Option<LimitStatus> {
        let shard = self.shard(id);
        if shard.held.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut denials = shard.lock();
        let denial = denials.get(id)?;
        if now >= denial.until {
            // Over: forgotten, so that the shard empties again.
            denials.remove(id);
            shard.held.store(denials.len(), Ordering::Relaxed);
            return None;
        }
        let same_limits = denial.limits.len() == own.len() + owner.len()
            && own.iter().chain(owner).eq(denial.limits.iter());
        if cost < denial.cost || !same_limits {
            return None;
        }
        let left = denial.until - now;
        Some(LimitStatus {
            retry_after_us: i64::try_from(left.as_micros()).unwrap_or(i64::MAX),
            ..denial.status
        })
    }

    /// Remembers that the store refused `id` a request of `cost` under
    /// these limits, `status` being the refusing limit that ends last, for
    /// a decision sent at `sent`.
    pub fn remember(
        &self,
        id: &KeyId,
        own: &[Limit],
        owner: &[Limit],
        cost: u32,
        status: LimitStatus,
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
                limits: own.iter().chain(owner).copied().collect(),
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
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<KeyId, Denial, foldhash::fast::RandomState>> {
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
        memo.remember(&id(), &[limit(10)], &[], 1, refused(2_000_000), sent);

        tokio::time::advance(Duration::from_millis(500)).await;
        let recalled = memo
            .recall(&id(), &[limit(10)], &[], 1, Instant::now())
            .expect("still refused");
        assert_eq!(recalled.retry_after_us, 1_500_000);
        assert!(!recalled.allowed);

        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert!(
            memo.recall(&id(), &[limit(10)], &[], 1, Instant::now())
                .is_none(),
            "the wait is over: the store decides again"
        );
        assert_eq!(
            memo.shard(&id()).held.load(Ordering::Relaxed),
            0,
            "and the denial is forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn other_limits_or_a_smaller_cost_are_decided_anew() {
        let memo = DenialMemo::default();
        let now = Instant::now();
        memo.remember(
            &id(),
            &[limit(10)],
            &[limit(50)],
            3,
            refused(9_000_000),
            now,
        );

        assert!(
            memo.recall(&id(), &[limit(10)], &[limit(50)], 5, now)
                .is_some(),
            "a larger cost is refused as long"
        );
        assert!(
            memo.recall(&id(), &[limit(10)], &[limit(50)], 2, now)
                .is_none()
        );
        assert!(
            memo.recall(&id(), &[limit(20)], &[limit(50)], 3, now)
                .is_none(),
            "the key's limit changed"
        );
        assert!(
            memo.recall(&id(), &[limit(10)], &[], 3, now).is_none(),
            "its owner's limits changed"
        );
    }
}
