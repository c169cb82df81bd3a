//! The in-process store: the embedded default when no Redis is configured.
//! Same algorithms and semantics as Redis (one lock makes each decision
//! atomic), on this process's clock; it counts for this process only, so it
//! suits a single replica.

use std::collections::{HashMap, VecDeque};

/// The maps of a Validate's decision (several lookups per call): foldhash,
/// seeded per process, hashes a short key in a fraction of SipHash's time.
/// Their keys are storage names the limiter builds, not a caller's choice.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::algorithms::{LimitState, evaluate};
use super::imported_usage::ImportedUsage;
use super::store::{Decision, LimitStatus, Outcome, RateLimitStore, StoreError, Verdict, verdict};
use super::usage::{Granularity, KeyUsage, RecentRequest, RequestContext, UsageBucket};
use crate::domain::ValidationCode;
use crate::domain::quota::{QuotaState, add_to_balance};

/// How often expired entries are swept out.
const SWEEP_EVERY_US: i64 = 10_000_000;

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Limit state by storage key, with when it may be forgotten.
    limits: FastMap<String, (LimitState, i64)>,
    /// Quota balances; they never expire.
    quotas: FastMap<String, QuotaState>,
    /// Usage by key (its usage base): found with one lookup of a name the
    /// decision already holds, so counting a validation allocates nothing.
    usage: FastMap<String, KeyUsageState>,
    last_sweep_us: i64,
}

/// One key's usage counters and recent-requests log.
#[derive(Default)]
struct KeyUsageState {
    /// Validations by code per bucket, with the bucket's expiry.
    buckets: FastMap<(Granularity, i64), (FastMap<ValidationCode, u64>, i64)>,
    /// Newest first.
    log: VecDeque<RecentRequest>,
    log_expires: i64,
}

impl KeyUsageState {
    fn count(&mut self, granularity: Granularity, index: i64, code: ValidationCode, expires: i64) {
        let (counts, at) = self.buckets.entry((granularity, index)).or_default();
        *counts.entry(code).or_default() += 1;
        *at = expires;
    }

    /// Whether anything is left once what expired by `now` is dropped.
    fn sweep(&mut self, now: i64) -> bool {
        self.buckets.retain(|_, (_, expires)| *expires > now);
        if self.log_expires <= now {
            self.log.clear();
        }
        !self.buckets.is_empty() || !self.log.is_empty()
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl State {
    fn sweep(&mut self, now: i64) {
        if now - self.last_sweep_us < SWEEP_EVERY_US {
            return;
        }
        self.last_sweep_us = now;
        self.limits.retain(|_, (_, expires)| *expires > now);
        self.usage.retain(|_, usage| usage.sweep(now));
    }

    /// `context` is the usage record's context when the caller gave it up
    /// (else it is copied from the decision into the recent-requests log).
    fn decide(
        &mut self,
        decision: &Decision,
        context: Option<RequestContext>,
        now: i64,
    ) -> Outcome {
        self.sweep(now);
        let evaluations: Vec<_> = decision
            .limits
            .iter()
            .map(|charge| {
                let state = match self.limits.get(&charge.key) {
                    Some((state, expires)) if *expires > now => *state,
                    _ => LimitState::Empty,
                };
                let evaluation = evaluate(&charge.limit, state, now, charge.cost);
                (&charge.key, &charge.limit, evaluation)
            })
            .collect();
        let limits: Vec<LimitStatus> = evaluations
            .iter()
            .map(|(_, limit, e)| LimitStatus {
                limit: **limit,
                allowed: e.allowed,
                remaining: e.remaining,
                reset_at_us: e.reset_at_us,
                retry_after_us: e.retry_after_us,
            })
            .collect();
        let mut verdict = verdict(decision.charge, &decision.limits, &limits);
        let mut quota_balance = None;
        if let Some(check) = &decision.quota {
            let mut state = check
                .quota
                .balance(self.quotas.get(&check.key).copied(), now);
            state.balance = add_to_balance(state.balance, check.add);
            if verdict == Verdict::Admitted {
                if state.balance < i64::from(decision.cost) {
                    verdict = Verdict::QuotaExceeded;
                } else {
                    state.balance -= i64::from(decision.cost);
                }
            }
            self.quotas.insert(check.key.clone(), state);
            quota_balance = Some(state.balance);
        }
        if verdict == Verdict::Admitted {
            // A shadow or collective limit that is over is not charged.
            for (key, _, e) in evaluations.iter().filter(|(_, _, e)| e.allowed) {
                let state = (e.next, e.expires_at_us);
                match self.limits.get_mut(key.as_str()) {
                    Some(stored) => *stored = state,
                    None => {
                        self.limits.insert((*key).clone(), state);
                    }
                }
            }
        }
        if let Some(usage) = &decision.usage {
            let code = verdict.code(usage.code);
            let secs = now.div_euclid(1_000_000);
            if !self.usage.contains_key(usage.base.as_str()) {
                self.usage
                    .insert(usage.base.clone(), KeyUsageState::default());
            }
            let state = self
                .usage
                .get_mut(usage.base.as_str())
                .expect("inserted above");
            for (granularity, ttl) in [
                (Granularity::Hour, usage.retention.hourly_secs),
                (Granularity::Day, usage.retention.daily_secs),
            ] {
                let expires = now.saturating_add(ttl.saturating_mul(1_000_000));
                state.count(granularity, secs / granularity.seconds(), code, expires);
            }
            state.log.push_front(RecentRequest {
                context: context.unwrap_or_else(|| usage.context.clone()),
                code,
                at_ms: now / 1000,
            });
            state.log.truncate(usage.retention.recent_requests as usize);
            state.log_expires =
                now.saturating_add(usage.retention.daily_secs.saturating_mul(1_000_000));
        }
        Outcome {
            verdict,
            now_us: now,
            limits,
            quota_balance,
        }
    }
}

#[tonic::async_trait]
impl RateLimitStore for MemoryStore {
    async fn decide(&self, decision: Arc<Decision>) -> Result<Outcome, StoreError> {
        let mut state = self.state.lock().expect("limiter lock poisoned");
        Ok(state.decide(&decision, None, now_us()))
    }

    fn decide_in_process(&self, decision: &mut Decision) -> Option<Outcome> {
        let context = decision
            .usage
            .as_mut()
            .map(|u| std::mem::take(&mut u.context));
        let mut state = self.state.lock().expect("limiter lock poisoned");
        Some(state.decide(decision, context, now_us()))
    }

    async fn usage(
        &self,
        base: &str,
        granularity: Granularity,
        first: i64,
        last: i64,
        recent: u32,
    ) -> Result<KeyUsage, StoreError> {
        let state = self.state.lock().expect("limiter lock poisoned");
        let now = now_us();
        let usage = state.usage.get(base);
        let buckets = (first..=last)
            .map(|index| {
                let mut counts: Vec<(ValidationCode, u64)> = usage
                    .and_then(|usage| usage.buckets.get(&(granularity, index)))
                    .filter(|(_, expires)| *expires > now)
                    .map(|(counts, _)| counts.iter().map(|(c, n)| (*c, *n)).collect())
                    .unwrap_or_default();
                counts.sort_by_key(|(code, _)| code.as_str());
                UsageBucket {
                    start_secs: index * granularity.seconds(),
                    counts,
                }
            })
            .collect();
        let recent = usage
            .filter(|usage| usage.log_expires > now)
            .map(|usage| usage.log.iter().take(recent as usize).cloned().collect())
            .unwrap_or_default();
        Ok(KeyUsage { buckets, recent })
    }

    async fn import_usage(&self, base: &str, usage: &ImportedUsage) -> Result<(), StoreError> {
        let mut state = self.state.lock().expect("lock poisoned");
        let key = state.usage.entry(base.to_owned()).or_default();
        for count in &usage.counts {
            let (counts, expires) = key
                .buckets
                .entry((count.granularity, count.index))
                .or_default();
            *counts.entry(count.code).or_default() += count.count;
            *expires = (*expires).max(count.expires_at_secs * 1_000_000);
        }
        if !usage.recent.is_empty() {
            key.log.extend(usage.recent.iter().cloned());
            key.log.truncate(usage.log_length as usize);
            key.log_expires = key.log_expires.max(usage.log_expires_at_secs * 1_000_000);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn is_remote(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Quota;
    use crate::ratelimit::store::{Enforcement, LimitCharge, QuotaCheck};

    fn add(amount: i64) -> Arc<Decision> {
        Arc::new(Decision {
            limits: Vec::new(),
            cost: 0,
            charge: false,
            quota: Some(QuotaCheck {
                key: "q".into(),
                quota: Quota::parse(5, 0, None, 1).unwrap(),
                add: amount,
            }),
            usage: None,
        })
    }

    #[tokio::test]
    async fn huge_additions_saturate_instead_of_poisoning_the_store() {
        let store = MemoryStore::default();
        for amount in [i64::MAX, i64::MAX, i64::MIN, i64::MAX] {
            store.decide(add(amount)).await.unwrap();
        }
        let balance = store.decide(add(0)).await.unwrap().quota_balance;
        assert_eq!(balance, Some(crate::domain::quota::MAX_QUOTA));
    }

    fn charge(key: &str, limit: u32, cost: u32, enforcement: Enforcement) -> LimitCharge {
        LimitCharge {
            key: key.into(),
            limit: crate::domain::Limit {
                limit,
                window_ms: 30 * 86_400_000,
                algorithm: crate::domain::Algorithm::FixedWindow,
            },
            cost,
            enforcement,
        }
    }

    fn limits(charges: Vec<LimitCharge>) -> Arc<Decision> {
        Arc::new(Decision {
            limits: charges,
            cost: 0,
            charge: true,
            quota: None,
            usage: None,
        })
    }

    fn remaining(outcome: &Outcome) -> Vec<u32> {
        outcome.limits.iter().map(|l| l.remaining).collect()
    }

    #[tokio::test]
    async fn each_limit_is_charged_its_own_cost() {
        let store = MemoryStore::default();
        let both = || {
            limits(vec![
                charge("a", 5, 3, Enforcement::Enforced),
                charge("b", 5, 0, Enforcement::Enforced),
            ])
        };
        let first = store.decide(both()).await.unwrap();
        let second = store.decide(both()).await.unwrap();
        assert_eq!(
            (first.verdict, remaining(&first)),
            (Verdict::Admitted, vec![2, 5])
        );
        assert_eq!(
            second.verdict,
            Verdict::RateLimited,
            "3 more do not fit in a"
        );
        let peek = store
            .decide(limits(vec![charge("a", 5, 0, Enforcement::Enforced)]))
            .await
            .unwrap();
        assert_eq!(remaining(&peek), [2], "the refusal charged nothing");
    }

    #[tokio::test]
    async fn a_shadow_limit_never_refuses_and_over_it_is_not_charged() {
        let store = MemoryStore::default();
        let request = || {
            limits(vec![
                charge("s", 1, 1, Enforcement::Shadow),
                charge("e", 9, 1, Enforcement::Enforced),
            ])
        };
        store.decide(request()).await.unwrap();
        let over = store.decide(request()).await.unwrap();
        assert_eq!(over.verdict, Verdict::Admitted);
        assert!(!over.limits[0].allowed);
        assert_eq!(
            remaining(&over),
            [0, 7],
            "the enforced limit was charged, the shadow one not"
        );
    }

    #[tokio::test]
    async fn collective_limits_refuse_only_when_all_are_over() {
        let store = MemoryStore::default();
        let request = || {
            limits(vec![
                charge("c1", 1, 1, Enforcement::Collective),
                charge("c2", 2, 1, Enforcement::Collective),
            ])
        };
        let verdicts: Vec<Verdict> = [
            store.decide(request()).await.unwrap(),
            store.decide(request()).await.unwrap(),
            store.decide(request()).await.unwrap(),
        ]
        .iter()
        .map(|o| o.verdict)
        .collect();
        assert_eq!(
            verdicts,
            [Verdict::Admitted, Verdict::Admitted, Verdict::RateLimited]
        );
    }
}
