//! The limiter as the rest of the service sees it: a store behind a short
//! timeout and a failure policy. When the store cannot answer, decisions
//! follow the policy (fail-open admits, fail-closed refuses) without waiting
//! on it again until a background probe finds it back; the outage is logged
//! once when it starts and once when it ends (with how many decisions the
//! policy made meanwhile), and reported to health.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Keyspace;
use super::imported_usage::ImportedUsage;
use super::limit::Limit;
use super::store::{Decision, LimitStatus, Outcome, RateLimitStore, StoreError, Verdict};
use super::usage::{Granularity, KeyUsage, Retention};

/// How often usage gathered in the background is written.
const USAGE_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// The longest one flush may take.
const USAGE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an unreachable store is probed (and a reachable one checked).
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
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

pub struct RateLimiter {
    store: Arc<dyn RateLimitStore>,
    /// Names every storage key.
    pub keyspace: Keyspace,
    policy: FailurePolicy,
    /// The longest a decision waits for the store.
    timeout: Duration,
    pub retention: Retention,
    /// `Some` while the store is unreachable.
    outage: Mutex<Option<Outage>>,
    /// True while the store answers; health follows it.
    reachable: watch::Sender<bool>,
}

struct Outage {
    since: Instant,
    /// Decisions the policy made because the store could not.
    decisions: u64,
}

impl RateLimiter {
    pub fn new(
        store: Arc<dyn RateLimitStore>,
        keyspace: Keyspace,
        policy: FailurePolicy,
        timeout: Duration,
        retention: Retention,
    ) -> RateLimiter {
        RateLimiter {
            store,
            keyspace,
            policy,
            timeout,
            retention,
            outage: Mutex::new(None),
            reachable: watch::Sender::new(true),
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

    /// Decides one request: by the store, or by the policy when it cannot.
    /// The second value is false when the policy decided.
    pub async fn decide(&self, decision: &Decision) -> (Outcome, bool) {
        if !self.in_outage() {
            match self.bounded("decide", self.store.decide(decision)).await {
                Ok(outcome) => {
                    count_decision(&outcome, "store");
                    return (outcome, true);
                }
                Err(error) => self.outage_began(&error),
            }
        }
        self.count_policy_decision();
        let outcome = self.by_policy(decision);
        count_decision(&outcome, "policy");
        (outcome, false)
    }

    /// CheckRateLimit: `cost` against one limit of one identifier.
    pub async fn check(
        &self,
        namespace: &str,
        identifier: &str,
        limit: Limit,
        cost: u32,
    ) -> LimitStatus {
        let key = self
            .keyspace
            .identifier_limit(namespace, identifier, &limit);
        let decision = Decision {
            limits: vec![(key, limit)],
            cost,
            charge: true,
            quota: None,
            usage: None,
        };
        self.decide(&decision).await.0.limits[0]
    }

    /// Usage of a key, or an error when the store is unreachable.
    pub async fn usage(
        &self,
        base: &str,
        granularity: Granularity,
        first: i64,
        last: i64,
    ) -> Result<KeyUsage, StoreError> {
        let recent = self.retention.recent_requests;
        let result = self
            .bounded(
                "usage",
                self.store.usage(base, granularity, first, last, recent),
            )
            .await;
        if let Err(error) = &result {
            self.outage_began(error);
        }
        result
    }

    /// Writes the usage an imported key gathered in another store, under the
    /// key's usage base, as far as the retention still covers it.
    pub async fn import_usage(
        &self,
        base: &str,
        history: &crate::domain::import::UsageHistory,
    ) -> Result<(), StoreError> {
        let now_secs = chrono::Utc::now().timestamp();
        let usage = ImportedUsage::of(history, self.retention, now_secs);
        if usage.is_empty() {
            return Ok(());
        }
        self.store.import_usage(base, &usage).await
    }

    /// Writes usage the store gathered in the background (validations with
    /// no limit or quota). A failure starts an outage like any other.
    pub async fn flush_usage(&self) {
        let flushed = tokio::time::timeout(USAGE_FLUSH_TIMEOUT, self.store.flush())
            .await
            .unwrap_or(Err(StoreError::Timeout(USAGE_FLUSH_TIMEOUT)));
        if let Err(error) = flushed {
            self.outage_began(&error);
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

    /// Probes the store forever: ends an outage when it answers again, and
    /// starts one when it stops answering while no traffic noticed.
    pub async fn probe_periodically(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(PROBE_INTERVAL);
        loop {
            ticks.tick().await;
            match self.bounded("ping", self.store.ping()).await {
                Ok(()) => self.outage_ended(),
                Err(error) => self.outage_began(&error),
            }
        }
    }

    /// One store call: bounded by the timeout, in its own span (a child of
    /// the RPC's), and for Redis timed and counted in the metrics.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        use tracing::Instrument;
        let remote = self.store.is_remote();
        // A child span inside a traced call; the background probe, which
        // runs outside any call, makes none.
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "rate_limit_store",
                otel.name = operation,
                otel.kind = "client",
                db.system = if remote { "redis" } else { "memory" },
            )
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, call.instrument(span))
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)));
        if remote {
            ::metrics::histogram!("apikeyd_redis_duration_seconds", "operation" => operation)
                .record(started.elapsed());
            if result.is_err() {
                ::metrics::counter!("apikeyd_redis_errors_total", "operation" => operation)
                    .increment(1);
            }
        }
        result
    }

    fn in_outage(&self) -> bool {
        self.outage.lock().expect("outage lock poisoned").is_some()
    }

    fn count_policy_decision(&self) {
        if let Some(outage) = self.outage.lock().expect("outage lock poisoned").as_mut() {
            outage.decisions += 1;
        }
    }

    fn outage_began(&self, error: &StoreError) {
        let mut outage = self.outage.lock().expect("outage lock poisoned");
        if outage.is_none() {
            tracing::warn!(
                %error,
                policy = ?self.policy,
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
                outage_ms = ended.since.elapsed().as_millis() as u64,
                decisions_by_policy = ended.decisions,
                policy = ?self.policy,
                "rate-limit store reachable again: counting resumes"
            );
            self.reachable.send_replace(true);
        }
    }

    /// What the policy answers for a decision the store could not make.
    fn by_policy(&self, decision: &Decision) -> Outcome {
        let now_us = chrono::Utc::now().timestamp_micros();
        let guarded = !decision.limits.is_empty() || decision.quota.is_some();
        let refuse = self.policy == FailurePolicy::Closed && guarded && decision.charge;
        let limits = decision
            .limits
            .iter()
            .map(|(_, limit)| LimitStatus {
                limit: *limit,
                allowed: !refuse,
                remaining: if refuse { 0 } else { limit.limit },
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

/// `apikeyd_rate_limit_decisions_total`, by verdict and by who decided.
fn count_decision(outcome: &Outcome, decided_by: &'static str) {
    let verdict = match outcome.verdict {
        Verdict::Admitted => "admitted",
        Verdict::RateLimited => "rate_limited",
        Verdict::QuotaExceeded => "quota_exceeded",
        Verdict::NotCharged => "not_charged",
    };
    ::metrics::counter!("apikeyd_rate_limit_decisions_total", "verdict" => verdict, "decided_by" => decided_by)
        .increment(1);
}
