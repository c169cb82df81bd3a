//! The limiter as the rest of the service sees it. It speaks in API keys and
//! CheckRateLimit subjects (it names their storage itself), and it tells an
//! overloaded replica from a Redis outage:
//!
//! - **An outage is Redis failing**: a decision's connection refused or
//!   dropped, or the probe (a thread and a connection of its own, so that
//!   this process's backlog cannot delay it) getting no answer within the
//!   probe timeout. Decisions then follow the failure policy (fail-open
//!   admits, fail-closed refuses) without waiting, and so does any decision
//!   still waiting when the outage begins, until the probe and the decision
//!   connection answer again. The outage is logged once when it starts and
//!   once when it ends (with how many decisions the policy made meanwhile),
//!   and reported to health.
//! - **A late answer is not an outage.** It is waited for until the caller's
//!   deadline (or, without one, the default wait); past that the call fails
//!   UNAVAILABLE (retryable) and nothing is decided by the policy: the
//!   replica, not Redis, may be what is slow, and the decision may still be
//!   counted when its answer comes.

use std::fmt::Display;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::Keyspace;
use super::denials::{DenialMemo, RefusedBy};
use super::imported_usage::ImportedUsage;
use super::store::{
    Decision, Enforcement, LimitCharge, LimitStatus, Outcome, QuotaCheck, RateLimitStore,
    UsageRecord, Verdict,
};
use super::usage::{Granularity, KeyUsage, RequestContext, Retention};
use crate::domain::import::UsageHistory;
use crate::domain::limit::Subject;
use crate::domain::{ApiKey, KeyId, Limit, Quota, ValidationCode};
use crate::error::{Error, Result};
use crate::telemetry::hot_counter::HotCounter;
use crate::telemetry::metrics;

/// How often usage gathered in the background is written.
const USAGE_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// The longest one flush may take.
const USAGE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an import waits for one key's past usage to be written.
const IMPORT_USAGE_WAIT: Duration = Duration::from_secs(10);
/// How often the store is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// The wait a fail-closed refusal suggests.
const CLOSED_RETRY_AFTER_US: i64 = 1_000_000;

/// What decisions do while the store is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Admit (limits and quotas unenforced, usage unrecorded): availability first.
    Open,
    /// Refuse anything that has a limit or a quota.
    Closed,
}

/// How the limiter waits and what it does when the store cannot answer.
#[derive(Clone, Copy, Debug)]
pub struct LimiterSettings {
    pub policy: FailurePolicy,
    /// The longest a call without a deadline waits for the store.
    pub default_wait: Duration,
    /// The longest the probe waits for PING before it declares an outage.
    pub probe_timeout: Duration,
    pub retention: Retention,
}

pub struct RateLimiter {
    store: Arc<dyn RateLimitStore>,
    /// Names every storage key.
    keyspace: Keyspace,
    settings: LimiterSettings,
    /// `Some` while the store is unreachable.
    outage: Mutex<Option<Outage>>,
    /// True while the store answers; health, and decisions waiting for an
    /// answer, follow it.
    reachable: watch::Sender<bool>,
    /// Keys the store refused, until their wait is over.
    denials: DenialMemo,
}

struct Outage {
    since: Instant,
    /// Decisions the policy made because the store could not.
    decisions: u64,
}

/// Who decided a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecidedBy {
    Store,
    Policy,
}

/// What Validate asks of the limiter for a key it found.
pub struct KeyCall<'a> {
    pub key: &'a ApiKey,
    /// The key's own limits, resolved from its tier if it names one.
    pub own_limits: &'a [Limit],
    /// The limits its owner shares with its other keys.
    pub owner_limits: &'a [Limit],
    /// What the checks before the limiter found: anything but `Valid` is
    /// only recorded.
    pub judged: ValidationCode,
    /// Taken from every limit and the quota.
    pub cost: u32,
    pub context: RequestContext,
    /// When the caller stops waiting; `None` for the default wait.
    pub answer_by: Option<Instant>,
}

/// One counted limit of a ShouldRateLimit request.
pub struct DescriptorLimit<'a> {
    /// The descriptor's identity within its domain (its counter's name).
    pub counter: &'a str,
    pub limit: Limit,
    /// What this request takes from it (0 looks only).
    pub hits: u32,
    pub enforcement: Enforcement,
}

/// The limiter's answer to a [`KeyCall`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVerdict {
    pub code: ValidationCode,
    /// The tightest limit, when the store decided (or the policy refused).
    pub rate_limit: Option<LimitStatus>,
    /// The quota's balance after the call, when the store answered.
    pub quota_balance: Option<i64>,
}

impl RateLimiter {
    pub fn new(
        store: Arc<dyn RateLimitStore>,
        keyspace: Keyspace,
        settings: LimiterSettings,
    ) -> RateLimiter {
        RateLimiter {
            store,
            keyspace,
            settings,
            outage: Mutex::new(None),
            reachable: watch::Sender::new(true),
            denials: DenialMemo::default(),
        }
    }

    /// Whether the store is remote (Redis) and so has a health entry.
    pub fn is_remote(&self) -> bool {
        self.store.is_remote()
    }

    /// True while the store answers.
    pub fn watch_reachable(&self) -> watch::Receiver<bool> {
        self.reachable.subscribe()
    }

    /// Records a validation that charges nothing, under its usage code. No
    /// store waits on it, and it is dropped in an outage.
    async fn record_usage_only(
        &self,
        usage: Option<UsageRecord>,
        cost: u32,
        answer_by: Option<Instant>,
    ) {
        let record = Decision {
            limits: Vec::new(),
            cost,
            charge: false,
            quota: None,
            usage,
        };
        let _ = self.decide(record, answer_by).await;
    }

    /// A refusal of a good key by one of its own limits that the store made
    /// a moment ago and that still holds for this call. Validate asks before
    /// it looks up the owner's limits, since no change to those can lift it
    /// (see `denials`); answer it with [`Self::refuse_again`].
    pub fn remembered_refusal(&self, call: &KeyCall<'_>) -> Option<LimitStatus> {
        if call.judged != ValidationCode::Valid || call.key.quota.is_some() {
            return None;
        }
        self.denials
            .recall(&call.key.id, call.own_limits, None, call.cost)
    }

    /// Validate's answer for a key whose refusal is remembered: refused
    /// without asking the store, and its usage recorded as refused.
    pub async fn refuse_again(&self, call: KeyCall<'_>, status: LimitStatus) -> KeyVerdict {
        let usage = self.usage_of(call.key, ValidationCode::RateLimited, call.context);
        self.record_usage_only(Some(usage), call.cost, call.answer_by)
            .await;
        REMEMBERED.increment(1);
        KeyVerdict {
            code: ValidationCode::RateLimited,
            rate_limit: Some(status),
            quota_balance: None,
        }
    }

    /// What Validate records of a call of `key`, under `code`.
    fn usage_of(&self, key: &ApiKey, code: ValidationCode, context: RequestContext) -> UsageRecord {
        UsageRecord {
            base: self.keyspace.usage_base(&key.owner_id, &key.id),
            code,
            context,
            retention: self.settings.retention,
        }
    }

    /// Validate's part: a key refused by an earlier check only has its usage
    /// recorded; a good one is charged against every limit and its quota,
    /// all or nothing, in one decision that also records its usage.
    pub async fn validate(&self, call: KeyCall<'_>) -> Result<KeyVerdict> {
        let key = call.key;
        let owner = key.owner_id.as_str();
        if call.judged != ValidationCode::Valid {
            let usage = self.usage_of(key, call.judged, call.context);
            self.record_usage_only(Some(usage), call.cost, call.answer_by)
                .await;
            return Ok(KeyVerdict {
                code: call.judged,
                rate_limit: None,
                quota_balance: None,
            });
        }
        // A key without a quota that the store refused a moment ago is
        // refused again without asking it (see `denials`).
        let rememberable = key.quota.is_none();
        if rememberable {
            let recalled =
                self.denials
                    .recall(&key.id, call.own_limits, Some(call.owner_limits), call.cost);
            if let Some(status) = recalled {
                return Ok(self.refuse_again(call, status).await);
            }
        }
        let usage = Some(self.usage_of(key, ValidationCode::Valid, call.context));
        let own = call.own_limits.iter().map(|l| {
            LimitCharge::enforced(self.keyspace.key_limit(owner, &key.id, l), *l, call.cost)
        });
        let shared = call
            .owner_limits
            .iter()
            .map(|l| LimitCharge::enforced(self.keyspace.owner_limit(owner, l), *l, call.cost));
        let decision = Decision {
            limits: own.chain(shared).collect(),
            cost: call.cost,
            charge: true,
            quota: key.quota.map(|quota| QuotaCheck {
                key: self.keyspace.quota(owner, &key.id),
                quota,
                add: 0,
            }),
            usage,
        };
        let sent = Instant::now();
        let (outcome, decided_by) = self.decide(decision, call.answer_by).await?;
        let code = outcome.verdict.code(ValidationCode::Valid);
        if rememberable && decided_by == DecidedBy::Store && code == ValidationCode::RateLimited {
            if let Some(at) = tightest_at(&outcome.limits) {
                let refused_by = if at < call.own_limits.len() {
                    RefusedBy::Key
                } else {
                    RefusedBy::Owner
                };
                self.denials
                    .remember(&key.id, call.cost, outcome.limits[at], refused_by, sent);
            }
        }
        let known = decided_by == DecidedBy::Store || code != ValidationCode::Valid;
        Ok(KeyVerdict {
            code,
            rate_limit: known.then(|| tightest(&outcome.limits)).flatten(),
            quota_balance: outcome.quota_balance,
        })
    }

    /// The live balance of `key`'s quota, when the store answers in time.
    pub async fn live_quota(&self, key: &ApiKey) -> Option<i64> {
        let quota = key.quota?;
        match self.decide(self.quota_decision(key, quota, 0), None).await {
            Ok((outcome, DecidedBy::Store)) => outcome.quota_balance,
            _ => None,
        }
    }

    /// Adds `amount` (within the domain's bounds) to `key`'s live balance and
    /// returns the new one; UNAVAILABLE when the store cannot answer.
    pub async fn add_to_quota(&self, key: &ApiKey, amount: i64) -> Result<i64> {
        let Some(quota) = key.quota else {
            return Err(Error::invalid(
                "add_to_quota",
                "the key has no quota to add to; set one with `quota`",
            ));
        };
        let (outcome, decided_by) = self
            .decide(self.quota_decision(key, quota, amount), None)
            .await?;
        match (decided_by, outcome.quota_balance) {
            (DecidedBy::Store, Some(balance)) => Ok(balance),
            _ => Err(Error::LimiterUnavailable),
        }
    }

    /// `key`'s usage in buckets `first..=last`, and its recent requests.
    pub async fn key_usage(
        &self,
        key: &ApiKey,
        granularity: Granularity,
        first: i64,
        last: i64,
    ) -> Result<KeyUsage> {
        let base = self.keyspace.usage_base(&key.owner_id, &key.id);
        let recent = self.settings.retention.recent_requests;
        let started = Instant::now();
        let read = self
            .store
            .usage(&base, granularity, first, last, recent)
            .instrument(self.store_span("usage"));
        let result = tokio::time::timeout(self.settings.default_wait, read).await;
        if self.store.is_remote() {
            ::metrics::histogram!("apikeyd_redis_duration_seconds", "operation" => "usage")
                .record(started.elapsed());
        }
        match result {
            Ok(Ok(usage)) => Ok(usage),
            Ok(Err(error)) => {
                ::metrics::counter!("apikeyd_redis_errors_total", "operation" => "usage")
                    .increment(1);
                if error.means_unreachable() {
                    self.outage_began(&error);
                } else {
                    tracing::warn!(%error, "the rate-limit store could not read usage");
                }
                Err(Error::LimiterUnavailable)
            }
            Err(_) => Err(Error::LimiterLate {
                waited_ms: millis(started.elapsed()),
            }),
        }
    }

    /// CheckRateLimit: `cost` against one limit of one subject.
    pub async fn check(
        &self,
        subject: &Subject,
        limit: Limit,
        cost: u32,
        answer_by: Option<Instant>,
    ) -> Result<LimitStatus> {
        let decision = Decision {
            limits: vec![LimitCharge::enforced(
                self.keyspace.subject_limit(subject, &limit),
                limit,
                cost,
            )],
            cost,
            charge: true,
            quota: None,
            usage: None,
        };
        let (outcome, _) = self.decide(decision, answer_by).await?;
        outcome
            .limits
            .first()
            .copied()
            .ok_or_else(|| Error::Internal("a decision of one limit answered none".into()))
    }

    /// Writes the usage an imported key (`owner_id`'s key `id`) gathered in
    /// another store, as far as the retention still covers it. An import
    /// is no hot path: it waits longer than a decision does.
    pub async fn import_usage(
        &self,
        owner_id: &str,
        id: &KeyId,
        history: &UsageHistory,
    ) -> Result<()> {
        let usage = ImportedUsage::of(history, self.settings.retention, Utc::now().timestamp());
        if usage.is_empty() {
            return Ok(());
        }
        let base = self.keyspace.usage_base(owner_id, id);
        let started = Instant::now();
        match tokio::time::timeout(IMPORT_USAGE_WAIT, self.store.import_usage(&base, &usage)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                tracing::warn!(%error, "the rate-limit store could not take imported usage");
                Err(Error::LimiterUnavailable)
            }
            Err(_) => Err(Error::LimiterLate {
                waited_ms: millis(started.elapsed()),
            }),
        }
    }

    /// ShouldRateLimit's part: the counted limits of one request's
    /// descriptors in `domain` (all in the domain's slot), each charged its
    /// own hits, decided at once; `charge` false only looks (the request was
    /// refused before counting). Returns one status per limit and the store's
    /// clock. A limit left uncharged reports what it has left without this
    /// request's hits.
    pub async fn descriptors(
        &self,
        domain: &str,
        limits: &[DescriptorLimit<'_>],
        charge: bool,
        answer_by: Option<Instant>,
    ) -> Result<(Vec<LimitStatus>, i64)> {
        let charges = limits
            .iter()
            .map(|l| LimitCharge {
                key: self.keyspace.descriptor_limit(domain, l.counter, &l.limit),
                limit: l.limit,
                cost: l.hits,
                enforcement: l.enforcement,
            })
            .collect();
        let decision = Decision {
            limits: charges,
            cost: 0,
            charge,
            quota: None,
            usage: None,
        };
        let (outcome, _) = self.decide(decision, answer_by).await?;
        let charged = outcome.verdict == Verdict::Admitted;
        let statuses = limits
            .iter()
            .zip(outcome.limits)
            .map(|(l, mut status)| {
                // The stores report an admitting limit's remaining as if it
                // were charged; exact to add back for all three algorithms.
                if status.allowed && !charged {
                    status.remaining = status.remaining.saturating_add(l.hits).min(l.limit.limit);
                }
                status
            })
            .collect();
        Ok((statuses, outcome.now_us))
    }

    /// Writes usage the store gathered in the background (validations with
    /// no limit or quota). A failure of Redis starts an outage like any other.
    pub async fn flush_usage(&self) {
        match tokio::time::timeout(USAGE_FLUSH_TIMEOUT, self.store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) if error.means_unreachable() => self.outage_began(&error),
            Ok(Err(error)) => tracing::warn!(%error, "a usage flush failed; its batch is dropped"),
            Err(_) => tracing::warn!(
                timeout_ms = millis(USAGE_FLUSH_TIMEOUT),
                "a usage flush did not finish in time; what it had not written is dropped"
            ),
        }
    }

    /// Flushes gathered usage every [`USAGE_FLUSH_INTERVAL`], forever.
    pub async fn flush_usage_periodically(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(USAGE_FLUSH_INTERVAL);
        loop {
            ticks.tick().await;
            self.flush_usage().await;
        }
    }

    /// Follows the store's probe forever: a failed probe starts an outage;
    /// during one, a good probe ends it once the decision connection answers
    /// too (decisions go through it).
    pub async fn probe_periodically(self: Arc<Self>) {
        let timeout = self.settings.probe_timeout;
        let Some(mut probes) = self.store.start_probe(PROBE_INTERVAL, timeout) else {
            return self.probe_from_here().await;
        };
        while let Some(probe) = probes.recv().await {
            match probe {
                Err(cause) => self.outage_began(&cause),
                Ok(()) if self.in_outage() => {
                    if let Ok(Ok(())) = tokio::time::timeout(timeout, self.store.ping()).await {
                        self.outage_ended();
                    }
                }
                Ok(()) => {}
            }
        }
    }

    /// Without a probe of its own (its thread could not start), the store
    /// is pinged from this runtime, where only a failure of Redis, never a
    /// late answer, counts.
    async fn probe_from_here(&self) {
        let mut ticks = tokio::time::interval(PROBE_INTERVAL);
        loop {
            ticks.tick().await;
            match tokio::time::timeout(self.settings.probe_timeout, self.store.ping()).await {
                Ok(Ok(())) => self.outage_ended(),
                Ok(Err(error)) if error.means_unreachable() => self.outage_began(&error),
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }

    fn quota_decision(&self, key: &ApiKey, quota: Quota, add: i64) -> Decision {
        Decision {
            limits: Vec::new(),
            cost: 0,
            charge: false,
            quota: Some(QuotaCheck {
                key: self.keyspace.quota(&key.owner_id, &key.id),
                quota,
                add,
            }),
            usage: None,
        }
    }

    /// Decides one request: by the store, waiting for its answer until
    /// `answer_by`; by the policy during an outage (including one that
    /// begins while this decision waits). A late answer is an error.
    async fn decide(
        &self,
        mut decision: Decision,
        answer_by: Option<Instant>,
    ) -> Result<(Outcome, DecidedBy)> {
        let in_process = self
            .store_span("decide")
            .in_scope(|| self.store.decide_in_process(&mut decision));
        if let Some(outcome) = in_process {
            count_decision(&outcome, DecidedBy::Store);
            return Ok((outcome, DecidedBy::Store));
        }
        let decision = Arc::new(decision);
        if !self.in_outage() {
            let started = Instant::now();
            let answer_by = answer_by.unwrap_or(started + self.settings.default_wait);
            let mut reachable = self.reachable.subscribe();
            let asked = self
                .store
                .decide(decision.clone())
                .instrument(self.store_span("decide"));
            tokio::select! {
                biased;
                answer = asked => match answer {
                    Ok(outcome) => {
                        count_decision(&outcome, DecidedBy::Store);
                        return Ok((outcome, DecidedBy::Store));
                    }
                    Err(error) if error.means_unreachable() => self.outage_began(&error),
                    Err(error) => {
                        tracing::warn!(%error, "the rate-limit store could not decide a request");
                        return Err(Error::LimiterUnavailable);
                    }
                },
                () = tokio::time::sleep_until(answer_by) => {
                    ::metrics::counter!("apikeyd_rate_limit_unanswered_total").increment(1);
                    return Err(Error::LimiterLate {
                        waited_ms: millis(started.elapsed()),
                    });
                }
                _ = reachable.wait_for(|up| !*up) => {}
            }
        }
        self.count_policy_decision();
        let outcome = self.by_policy(&decision);
        count_decision(&outcome, DecidedBy::Policy);
        Ok((outcome, DecidedBy::Policy))
    }

    /// A child span of the RPC's for one store call; none outside a call.
    fn store_span(&self, operation: &'static str) -> tracing::Span {
        if tracing::Span::current().is_none() {
            return tracing::Span::none();
        }
        tracing::info_span!(
            "rate_limit_store",
            otel.name = operation,
            otel.kind = "client",
            db.system = if self.store.is_remote() {
                "redis"
            } else {
                "memory"
            },
        )
    }

    fn in_outage(&self) -> bool {
        self.outage.lock().expect("outage lock poisoned").is_some()
    }

    fn count_policy_decision(&self) {
        if let Some(outage) = self.outage.lock().expect("outage lock poisoned").as_mut() {
            outage.decisions += 1;
        }
    }

    fn outage_began(&self, cause: &dyn Display) {
        let mut outage = self.outage.lock().expect("outage lock poisoned");
        if outage.is_none() {
            tracing::warn!(
                error = %cause,
                policy = ?self.settings.policy,
                "rate-limit store unreachable: decisions follow the failure policy until it answers again"
            );
            *outage = Some(Outage {
                since: Instant::now(),
                decisions: 0,
            });
            self.reachable.send_replace(false);
        }
    }

    fn outage_ended(&self) {
        let mut outage = self.outage.lock().expect("outage lock poisoned");
        if let Some(ended) = outage.take() {
            tracing::info!(
                outage_ms = millis(ended.since.elapsed()),
                decisions_by_policy = ended.decisions,
                policy = ?self.settings.policy,
                "rate-limit store reachable again: counting resumes"
            );
            self.reachable.send_replace(true);
        }
    }

    /// What the policy answers for a decision the store could not make.
    fn by_policy(&self, decision: &Decision) -> Outcome {
        let now_us = chrono::Utc::now().timestamp_micros();
        let refuse = self.settings.policy == FailurePolicy::Closed
            && decision.is_guarded()
            && decision.charge;
        let limits = decision
            .limits
            .iter()
            .map(|charge| LimitStatus {
                limit: charge.limit,
                allowed: !refuse,
                remaining: if refuse { 0 } else { charge.limit.limit },
                reset_at_us: now_us + if refuse { CLOSED_RETRY_AFTER_US } else { 0 },
                retry_after_us: if refuse { CLOSED_RETRY_AFTER_US } else { 0 },
            })
            .collect();
        let verdict = if !decision.charge {
            Verdict::NotCharged
        } else if refuse {
            Verdict::RateLimited
        } else {
            Verdict::Admitted
        };
        Outcome {
            verdict,
            now_us,
            limits,
            quota_balance: None,
        }
    }
}

/// The limit a caller must heed: of the denying ones the one that frees up
/// last; otherwise the one with the least left (then the latest reset).
pub fn tightest(limits: &[LimitStatus]) -> Option<LimitStatus> {
    tightest_at(limits).map(|at| limits[at])
}

/// Where in `limits` the [`tightest`] one is.
fn tightest_at(limits: &[LimitStatus]) -> Option<usize> {
    let denied = limits.iter().enumerate().filter(|(_, l)| !l.allowed);
    if let Some((at, _)) = denied.max_by_key(|(_, l)| l.retry_after_us) {
        return Some(at);
    }
    limits
        .iter()
        .enumerate()
        .min_by_key(|(_, l)| (l.remaining, std::cmp::Reverse(l.reset_at_us)))
        .map(|(at, _)| at)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `apikeyd_rate_limit_denials_remembered_total`, registered once.
static REMEMBERED: LazyLock<HotCounter> = LazyLock::new(|| {
    metrics::registered(|| {
        HotCounter::new(::metrics::counter!(
            "apikeyd_rate_limit_denials_remembered_total"
        ))
    })
});

/// `apikeyd_rate_limit_decisions_total{verdict, decided_by}`, from hot
/// counters registered once.
fn count_decision(outcome: &Outcome, decided_by: DecidedBy) {
    static COUNTERS: LazyLock<[[HotCounter; 2]; 4]> = LazyLock::new(|| {
        let by = |verdict: &'static str| {
            [
                HotCounter::new(::metrics::counter!("apikeyd_rate_limit_decisions_total",
                    "verdict" => verdict, "decided_by" => "store")),
                HotCounter::new(::metrics::counter!("apikeyd_rate_limit_decisions_total",
                    "verdict" => verdict, "decided_by" => "policy")),
            ]
        };
        metrics::registered(|| {
            [
                by("admitted"),
                by("rate_limited"),
                by("quota_exceeded"),
                by("not_charged"),
            ]
        })
    });
    let verdict = match outcome.verdict {
        Verdict::Admitted => 0,
        Verdict::RateLimited => 1,
        Verdict::QuotaExceeded => 2,
        Verdict::NotCharged => 3,
    };
    COUNTERS[verdict][decided_by as usize].increment(1);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::mpsc;

    use super::*;
    use crate::domain::Algorithm;
    use crate::ratelimit::store::{ProbeResult, StoreError};
    use crate::ratelimit::usage::KeyUsage;

    /// A store whose decisions answer as the test says: never (`None`), or
    /// with a connection error.
    struct FakeStore {
        answer: Option<StoreError>,
        probes: Mutex<Option<mpsc::Receiver<ProbeResult>>>,
        pings_answer: AtomicBool,
    }

    #[tonic::async_trait]
    impl RateLimitStore for FakeStore {
        async fn decide(&self, _: Arc<Decision>) -> Result<Outcome, StoreError> {
            match &self.answer {
                Some(error) => Err(error.clone()),
                None => std::future::pending().await,
            }
        }

        async fn usage(
            &self,
            _: &str,
            _: Granularity,
            _: i64,
            _: i64,
            _: u32,
        ) -> Result<KeyUsage, StoreError> {
            std::future::pending().await
        }

        async fn import_usage(&self, _: &str, _: &ImportedUsage) -> Result<(), StoreError> {
            std::future::pending().await
        }

        async fn ping(&self) -> Result<(), StoreError> {
            if self.pings_answer.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(refused())
            }
        }

        fn start_probe(&self, _: Duration, _: Duration) -> Option<mpsc::Receiver<ProbeResult>> {
            self.probes.lock().unwrap().take()
        }

        fn is_remote(&self) -> bool {
            true
        }
    }

    fn refused() -> StoreError {
        StoreError::Redis(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    }

    fn limiter(
        answer: Option<StoreError>,
        policy: FailurePolicy,
    ) -> (Arc<RateLimiter>, mpsc::Sender<ProbeResult>, Arc<FakeStore>) {
        let (probe, probes) = mpsc::channel(1);
        let store = Arc::new(FakeStore {
            answer,
            probes: Mutex::new(Some(probes)),
            pings_answer: AtomicBool::new(false),
        });
        let limiter = RateLimiter::new(
            store.clone(),
            Keyspace::new("test").unwrap(),
            LimiterSettings {
                policy,
                default_wait: Duration::from_millis(500),
                probe_timeout: Duration::from_secs(1),
                retention: Retention {
                    hourly_secs: 3_600,
                    daily_secs: 86_400,
                    recent_requests: 10,
                },
            },
        );
        (Arc::new(limiter), probe, store)
    }

    fn subject() -> Subject {
        Subject::parse("login", "203.0.113.7").unwrap()
    }

    const LIMIT: Limit = Limit {
        limit: 5,
        window_ms: 60_000,
        algorithm: Algorithm::FixedWindow,
    };

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_fails_the_call_at_its_deadline_and_is_no_outage() {
        let (limiter, _probe, _) = limiter(None, FailurePolicy::Open);
        let started = Instant::now();

        let answer = limiter
            .check(
                &subject(),
                LIMIT,
                1,
                Some(started + Duration::from_millis(80)),
            )
            .await;

        assert!(
            matches!(answer, Err(Error::LimiterLate { waited_ms: 80 })),
            "{answer:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(80));
        let without_deadline = limiter.check(&subject(), LIMIT, 1, None).await;
        assert!(matches!(
            without_deadline,
            Err(Error::LimiterLate { waited_ms: 500 })
        ));
        assert!(!limiter.in_outage(), "lateness is not an outage");
        assert!(*limiter.watch_reachable().borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_connection_starts_an_outage_and_the_policy_answers() {
        let (limiter, _probe, _) = limiter(Some(refused()), FailurePolicy::Closed);

        let status = limiter.check(&subject(), LIMIT, 1, None).await.unwrap();

        assert!(!status.allowed, "fail-closed refuses");
        assert!(limiter.in_outage());
        assert!(!*limiter.watch_reachable().borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_decision_waiting_when_an_outage_begins_gets_the_policy_at_once() {
        let (limiter, probe, _) = limiter(None, FailurePolicy::Open);
        tokio::spawn(limiter.clone().probe_periodically());
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move {
                let started = Instant::now();
                let answer = limiter.check(&subject(), LIMIT, 1, None).await;
                (answer, started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;

        probe.send(Err("no answer to PING".into())).await.unwrap();
        let (answer, waited) = waiting.await.unwrap();

        assert!(answer.unwrap().allowed, "fail-open admits");
        assert!(waited < Duration::from_millis(500), "waited {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_ends_when_the_probe_and_the_decision_connection_both_answer() {
        let (limiter, probe, store) = limiter(None, FailurePolicy::Open);
        tokio::spawn(limiter.clone().probe_periodically());
        probe.send(Err("refused".into())).await.unwrap();
        probe.send(Ok(())).await.unwrap();
        probe.send(Ok(())).await.unwrap();
        assert!(
            limiter.in_outage(),
            "the decision connection does not answer yet"
        );

        store.pings_answer.store(true, Ordering::SeqCst);
        probe.send(Ok(())).await.unwrap();
        probe.send(Ok(())).await.unwrap();

        assert!(!limiter.in_outage());
        assert!(*limiter.watch_reachable().borrow());
    }
}
