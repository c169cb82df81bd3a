//! The limiter's storage interface: one call decides one request (every
//! limit, the quota, the usage record) atomically. Two implementations:
//! [`super::redis::RedisStore`] (shared by replicas) and
//! [`super::memory::MemoryStore`] (one process, the embedded default).

use super::imported_usage::ImportedUsage;
use super::limit::Limit;
use super::quota::Quota;
use super::usage::{Granularity, KeyUsage, RequestContext, Retention};
use crate::domain::ValidationCode;

/// Everything one request asks of the limiter, answered in one round trip.
/// Every storage key in it carries the same `{hash tag}` (see
/// [`super::Keyspace`]), so on a Redis Cluster they live in one slot.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Each limit with the storage key of its state.
    pub limits: Vec<(String, Limit)>,
    pub cost: u32,
    /// False to evaluate without charging (the request was already refused).
    pub charge: bool,
    pub quota: Option<QuotaCheck>,
    pub usage: Option<UsageRecord>,
}

/// A quota to read, adjust or take from.
#[derive(Clone, Debug)]
pub struct QuotaCheck {
    pub key: String,
    pub quota: Quota,
    /// Added to the balance before anything is taken (may be negative).
    pub add: i64,
}

/// A validation to record in a key's usage counters and recent-requests log.
#[derive(Clone, Debug)]
pub struct UsageRecord {
    /// Counters are `<base>:h:<hour>` and `<base>:d:<day>`, the log `<base>:log`.
    pub base: String,
    /// The code if the decision admits the request; a denial records its own.
    pub code: ValidationCode,
    pub context: RequestContext,
    pub retention: Retention,
}

/// How a decision ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every limit and the quota admitted it, and all were charged.
    Admitted,
    /// At least one limit denied it; nothing was charged.
    RateLimited,
    /// The quota's balance was below the cost; nothing was charged.
    QuotaExceeded,
    /// Evaluated only (`charge` was false).
    NotCharged,
}

/// One limit's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    pub limit: Limit,
    pub allowed: bool,
    pub remaining: u32,
    pub reset_at_us: i64,
    pub retry_after_us: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The store's clock when it decided, in microseconds since the epoch.
    pub now_us: i64,
    /// One per limit of the decision, in order.
    pub limits: Vec<LimitStatus>,
    /// The quota's balance after the decision.
    pub quota_balance: Option<i64>,
}

/// Why the store could not answer; the limiter's failure policy takes over.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("unexpected reply from the store: {0}")]
    BadReply(String),
}

#[tonic::async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Decides one request atomically on the store's clock.
    async fn decide(&self, decision: &Decision) -> Result<Outcome, StoreError>;

    /// Usage counters of buckets `first..=last` (indices since the epoch)
    /// and the newest `recent` log entries.
    async fn usage(
        &self,
        base: &str,
        granularity: Granularity,
        first: i64,
        last: i64,
        recent: u32,
    ) -> Result<KeyUsage, StoreError>;

    /// Adds an imported key's past usage to the counters and the log under
    /// `base` (a key that is new here, so its log holds nothing older).
    async fn import_usage(&self, base: &str, usage: &ImportedUsage) -> Result<(), StoreError>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Writes usage gathered in the background, if the store gathers any.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the store is remote and may fail (and so has a health entry).
    fn is_remote(&self) -> bool;
}

/// Turns a decision's per-limit results into an outcome's verdict.
pub fn verdict(charge: bool, limits: &[LimitStatus]) -> Verdict {
    if !charge {
        Verdict::NotCharged
    } else if limits.iter().all(|l| l.allowed) {
        Verdict::Admitted
    } else {
        Verdict::RateLimited
    }
}
