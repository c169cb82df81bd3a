//! The limiter's storage interface: one call decides one request (every
//! limit, the quota, the usage record) atomically. Two implementations:
//! [`super::redis::RedisStore`] (shared by replicas) and
//! [`super::memory::MemoryStore`] (one process, the embedded default).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::imported_usage::ImportedUsage;
use super::usage::{Granularity, KeyUsage, RequestContext, Retention};
use crate::domain::{Limit, Quota, ValidationCode};

/// Everything one request asks of the limiter, answered in one round trip.
/// Every storage key in it carries the same `{hash tag}` (see
/// [`super::Keyspace`]), so on a Redis Cluster they live in one slot.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Each limit with the storage key of its state and what it is charged.
    pub limits: Vec<LimitCharge>,
    /// What the quota is charged.
    pub cost: u32,
    /// False to evaluate without charging (the request was already refused).
    pub charge: bool,
    pub quota: Option<QuotaCheck>,
    pub usage: Option<UsageRecord>,
}

impl Decision {
    /// Whether the store has anything to decide (a limit or a quota), as
    /// opposed to usage to record.
    pub fn is_guarded(&self) -> bool {
        !self.limits.is_empty() || self.quota.is_some()
    }

    /// The storage key the decision's slot is named by.
    pub fn first_key(&self) -> Option<&str> {
        self.limits
            .first()
            .map(|l| l.key.as_str())
            .or(self.quota.as_ref().map(|q| q.key.as_str()))
    }
}

/// One limit of a decision: the storage key of its state, what this request
/// takes from it, and how it weighs on the decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitCharge {
    pub key: String,
    pub limit: Limit,
    /// Its own: a ShouldRateLimit descriptor has its own `hits_addend` (0
    /// looks without taking anything).
    pub cost: u32,
    pub enforcement: Enforcement,
}

impl LimitCharge {
    /// A limit that refuses the decision when over: every limit of a key,
    /// CheckRateLimit's.
    pub fn enforced(key: String, limit: Limit, cost: u32) -> LimitCharge {
        LimitCharge {
            key,
            limit,
            cost,
            enforcement: Enforcement::Enforced,
        }
    }
}

/// How a limit that is over weighs on its decision. Whatever refuses the
/// decision, nothing is charged; when it is admitted, a limit that is over
/// (only a `Shadow` or `Collective` one can be) is not charged either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Refuses the decision.
    Enforced,
    /// Never refuses (envoyproxy/ratelimit's `shadow_mode`).
    Shadow,
    /// Refuses only when every `Collective` limit of the decision is over
    /// (envoyproxy/ratelimit's `quota_mode`).
    Collective,
}

/// A quota to read, adjust or take from.
#[derive(Clone, Debug)]
pub struct QuotaCheck {
    pub key: String,
    pub quota: Quota,
    /// Added to the balance before anything is taken (may be negative; the
    /// balance stays within 0 and `MAX_QUOTA`).
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

impl Verdict {
    /// The validation code a request ends with: a denial's own, else the
    /// code it came with. The one place a verdict becomes a code.
    pub fn code(self, came_with: ValidationCode) -> ValidationCode {
        match self {
            Verdict::RateLimited => ValidationCode::RateLimited,
            Verdict::QuotaExceeded => ValidationCode::UsageExceeded,
            Verdict::Admitted | Verdict::NotCharged => came_with,
        }
    }
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

/// Why the store could not answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from the store: {0}")]
    BadReply(String),
}

impl StoreError {
    /// Whether the error means Redis is failing (it refused or dropped the
    /// connection, or said it cannot serve), which starts an outage. An
    /// answer that is merely late, or a reply this process cannot read, is
    /// no sign of that.
    pub fn means_unreachable(&self) -> bool {
        use redis::{ErrorKind, ServerErrorKind};
        let StoreError::Redis(error) = self else {
            return false;
        };
        if error.is_timeout() {
            return false;
        }
        error.is_io_error()
            || matches!(
                error.kind(),
                ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::AuthenticationFailed
                    | ErrorKind::Server(
                        ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::BusyLoading
                            | ServerErrorKind::ReadOnly
                    )
            )
    }
}

/// What one probe of the store found: `Err` says why it failed.
pub type ProbeResult = Result<(), String>;

#[tonic::async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Decides one request atomically on the store's clock. The decision is
    /// shared so that a store may finish it after the caller stopped waiting.
    async fn decide(&self, decision: Arc<Decision>) -> Result<Outcome, StoreError>;

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

    /// Whether the store answers, over the connection decisions use.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Writes usage gathered in the background, if the store gathers any.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Starts probing the store every `every` from outside this process's
    /// runtime, each probe failing after `timeout`; results arrive until the
    /// receiver is dropped. `None` for a store that cannot fail.
    fn start_probe(
        &self,
        _every: Duration,
        _timeout: Duration,
    ) -> Option<mpsc::Receiver<ProbeResult>> {
        None
    }

    /// Whether the store is remote and may fail (and so has a health entry).
    fn is_remote(&self) -> bool;

    /// Decides at once, for a store in this process that cannot fail: no
    /// future, no shared copy of the decision, no wait to bound; the store
    /// may take what it keeps (the usage record's context) out of the
    /// decision. `None` for a store that must be asked with
    /// [`RateLimitStore::decide`].
    fn decide_in_process(&self, _decision: &mut Decision) -> Option<Outcome> {
        None
    }
}

/// Turns a decision's per-limit results (one per `charges`, in order) into
/// an outcome's verdict, as `decide.lua` does: refused when an enforced
/// limit is over, or every collective one (if any) is.
pub fn verdict(charge: bool, charges: &[LimitCharge], limits: &[LimitStatus]) -> Verdict {
    let over = |kind: Enforcement| {
        charges
            .iter()
            .zip(limits)
            .filter(move |(c, _)| c.enforcement == kind)
            .map(|(_, l)| !l.allowed)
    };
    let mut collective = over(Enforcement::Collective).peekable();
    let all_collective_over = collective.peek().is_some() && collective.all(|over| over);
    if !charge {
        Verdict::NotCharged
    } else if over(Enforcement::Enforced).any(|over| over) || all_collective_over {
        Verdict::RateLimited
    } else {
        Verdict::Admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_ends_with_its_own_code_and_anything_else_with_the_code_it_came_with() {
        use ValidationCode::*;
        assert_eq!(Verdict::RateLimited.code(Valid), RateLimited);
        assert_eq!(Verdict::QuotaExceeded.code(Valid), UsageExceeded);
        assert_eq!(Verdict::Admitted.code(Valid), Valid);
        assert_eq!(Verdict::NotCharged.code(Revoked), Revoked);
    }

    #[test]
    fn only_failures_of_redis_itself_mean_it_is_unreachable() {
        use std::io;
        let io = |kind| StoreError::Redis(redis::RedisError::from(io::Error::from(kind)));
        assert!(io(io::ErrorKind::ConnectionRefused).means_unreachable());
        assert!(io(io::ErrorKind::ConnectionReset).means_unreachable());
        assert!(io(io::ErrorKind::BrokenPipe).means_unreachable());
        assert!(
            !io(io::ErrorKind::TimedOut).means_unreachable(),
            "late is not down"
        );
        assert!(!StoreError::BadReply("odd".into()).means_unreachable());
    }
}
