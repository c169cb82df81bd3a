//! The Redis store, on a single node or a Redis Cluster. Decisions are
//! `EVALSHA`s of `decide.lua` (redis-rs loads the script again on NOSCRIPT),
//! each carrying every decision that queued for its slot while the previous
//! one was in flight (see [`super::batch`]): a lone `Validate` with limits,
//! quota and usage costs one round trip, a crowd of them far fewer than one
//! each, and every replica shares one count and one clock (the server's
//! `TIME`).

use std::sync::{Arc, LazyLock, RwLock};

use ::metrics::{Counter, Histogram};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, ScriptInvocation, Value};
use tokio::sync::{mpsc, oneshot};

use super::batch::{Lanes, slot_of_key};
use super::imported_usage::ImportedUsage;
use super::store::{
    Decision, Enforcement, LimitStatus, Outcome, ProbeResult, RateLimitStore, StoreError, Verdict,
    verdict,
};
use super::usage::{Granularity, KeyUsage, RecentRequest, RequestContext, UsageBucket};
use super::usage_buffer::UsageBuffer;
use crate::config::redis_target::RedisTarget;
use crate::domain::{Algorithm, RefillInterval, ValidationCode};

const DECIDE: &str = include_str!("decide.lua");
const USAGE: &str = include_str!("usage.lua");
const USAGE_BATCH: &str = include_str!("usage_batch.lua");
/// Keys written at once by a flush.
const FLUSH_CONCURRENCY: usize = 32;
/// The most decisions one `EVALSHA` carries.
const MAX_BATCH: usize = 64;

pub struct RedisStore {
    shared: Arc<Shared>,
    /// How to connect, for the probe's own connection.
    settings: ConnectionSettings,
}

/// What the store's sender tasks share with it.
struct Shared {
    target: Target,
    /// True for a Redis Cluster, where each slot is its own lane.
    cluster: bool,
    decide: Script,
    usage: Script,
    usage_batch: Script,
    /// Usage of decisions with nothing to decide, written in the background.
    buffer: UsageBuffer,
    /// Decisions waiting for their slot's next `EVALSHA`.
    lanes: Lanes<Waiting>,
}

/// The series every decision sent to Redis updates, registered once
/// ([`crate::telemetry::metrics::registered`]).
struct DecideMetrics {
    /// A decision's wait for its batch to leave.
    queue: Histogram,
    /// A decision's wait for its batch's answer.
    redis: Histogram,
    /// A batch's round trip.
    round_trip: Histogram,
    errors: Counter,
}

static DECIDE_METRICS: LazyLock<DecideMetrics> = LazyLock::new(|| {
    crate::telemetry::metrics::registered(|| DecideMetrics {
        queue: ::metrics::histogram!(
            "apikeyd_rate_limit_decision_duration_seconds", "stage" => "queue"),
        redis: ::metrics::histogram!(
            "apikeyd_rate_limit_decision_duration_seconds", "stage" => "redis"),
        round_trip: ::metrics::histogram!(
            "apikeyd_redis_duration_seconds", "operation" => "decide"),
        errors: ::metrics::counter!("apikeyd_redis_errors_total", "operation" => "decide"),
    })
});

/// A decision waiting in its lane, and where its answer goes.
struct Waiting {
    /// Shared with the caller, which needs it for the policy if it stops waiting.
    decision: Arc<Decision>,
    /// For the `queue` stage of the decision's time.
    queued_at: Instant,
    /// Dropped unheard when the caller stopped waiting.
    answer: oneshot::Sender<Result<Outcome, StoreError>>,
}

#[derive(Clone)]
struct ConnectionSettings {
    target: RedisTarget,
    /// The longest a connection attempt may take.
    connect_timeout: Duration,
}

enum Target {
    /// One node behind a manager that reconnects by itself.
    Single(ConnectionManager),
    /// A cluster; the connection is made on first use and then keeps itself
    /// up to date with the cluster's slots and nodes.
    Cluster {
        client: Box<ClusterClient>,
        connection: RwLock<Option<ClusterConnection>>,
    },
}

/// Either kind of connection, so that scripts run the same on both.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl Target {
    /// Connects lazily. No response timeout: how long an answer may take is
    /// the caller's to bound (see the limiter), and a late answer is no
    /// reason to drop a connection.
    fn new(settings: &ConnectionSettings) -> anyhow::Result<Target> {
        Ok(if settings.target.is_cluster() {
            // One quick retry (a redirect, a reconnect), so that a failing
            // cluster is reported in milliseconds, not after a backoff.
            let client = settings
                .target
                .cluster_builder()
                .connection_timeout(settings.connect_timeout)
                .retries(1)
                .min_retry_wait(10)
                .max_retry_wait(100)
                .build()?;
            Target::Cluster {
                client: Box::new(client),
                connection: RwLock::new(None),
            }
        } else {
            let client = settings.target.client()?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(None)
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Target::Single(ConnectionManager::new_lazy_with_config(client, config)?)
        })
    }

    async fn connection(&self) -> Result<Connection, StoreError> {
        match self {
            Target::Single(manager) => Ok(Connection::Single(manager.clone())),
            Target::Cluster { client, connection } => {
                if let Some(c) = connection.read().expect("lock poisoned").clone() {
                    return Ok(Connection::Cluster(c));
                }
                let c = client.get_async_connection().await?;
                *connection.write().expect("lock poisoned") = Some(c.clone());
                Ok(Connection::Cluster(c))
            }
        }
    }

    /// PING: on a cluster, every node answers.
    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok(())
    }
}

impl RedisStore {
    /// Connects lazily: a Redis that is down at start is an outage like any
    /// other, not a reason to refuse to start. `urls` holds one URL, or for
    /// a cluster one or more seed nodes separated by commas.
    pub fn new(target: &RedisTarget, connect_timeout: Duration) -> anyhow::Result<RedisStore> {
        let cluster = target.is_cluster();
        let settings = ConnectionSettings {
            target: target.clone(),
            connect_timeout,
        };
        Ok(RedisStore {
            shared: Arc::new(Shared {
                target: Target::new(&settings)?,
                cluster,
                decide: Script::new(DECIDE),
                usage: Script::new(USAGE),
                usage_batch: Script::new(USAGE_BATCH),
                buffer: UsageBuffer::default(),
                lanes: Lanes::default(),
            }),
            settings,
        })
    }
}

impl Shared {
    /// Sends `lane`'s queued decisions, a batch at a time, until none is left.
    async fn send_lane(self: Arc<Self>, lane: u16) {
        while let Some(batch) = self.lanes.next_batch(lane, MAX_BATCH) {
            self.send_batch(batch).await;
        }
    }

    /// One `EVALSHA` for the batch, each answer to its waiter. Runs in its
    /// own task, so a waiter that stopped waiting still gets its decision
    /// (and usage) recorded.
    async fn send_batch(&self, batch: Vec<Waiting>) {
        let metrics = &*DECIDE_METRICS;
        let sent_at = Instant::now();
        for waiting in &batch {
            metrics.queue.record(sent_at - waiting.queued_at);
        }
        let mut invocation = self.decide.prepare_invoke();
        let mut numbers = Vec::with_capacity(8 * (1 + 16 * batch.len()));
        numbers.extend_from_slice(&(batch.len() as i64).to_le_bytes());
        for waiting in &batch {
            encode(&mut invocation, &mut numbers, &waiting.decision);
        }
        invocation.arg(numbers);
        let reply: Result<Vec<u8>, StoreError> = async {
            let mut connection = self.target.connection().await?;
            Ok(invocation.invoke_async(&mut connection).await?)
        }
        .await;
        let redis_time = sent_at.elapsed();
        metrics.round_trip.record(redis_time);
        let decisions: Vec<&Decision> = batch.iter().map(|w| &*w.decision).collect();
        let outcomes = reply.and_then(|reply| parse_outcomes(&decisions, &reply));
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(error) => {
                metrics.errors.increment(1);
                vec![Err(error); batch.len()]
            }
        };
        for (waiting, outcome) in batch.into_iter().zip(outcomes) {
            metrics.redis.record(redis_time);
            if let (Ok(outcome), Some(usage)) = (&outcome, &waiting.decision.usage) {
                // A denial records its own code, as decide.lua would.
                self.buffer.add(usage, outcome.verdict.code(usage.code));
            }
            let _ = waiting.answer.send(outcome);
        }
    }
}

/// A decision's part of `decide.lua`'s keys, and its numbers appended to
/// the batch's one argument (see the script's header).
fn encode(invocation: &mut ScriptInvocation<'_>, numbers: &mut Vec<u8>, decision: &Decision) {
    let mut put = |n: i64| numbers.extend_from_slice(&n.to_le_bytes());
    put(i64::from(decision.cost));
    put(i64::from(decision.charge));
    put(decision.limits.len() as i64);
    for charge in &decision.limits {
        invocation.key(&charge.key);
        put(algorithm_number(charge.limit.algorithm));
        put(i64::from(charge.limit.limit));
        put(charge.limit.window_us());
        put(i64::from(charge.cost));
        put(enforcement_number(charge.enforcement));
    }
    match &decision.quota {
        Some(check) => {
            invocation.key(&check.key);
            put(1);
            put(check.quota.version);
            put(check.quota.remaining);
            put(check.quota.refill_amount);
            put(i64::from(RefillInterval::code(check.quota.refill_interval)));
            put(check.add);
        }
        None => (0..6).for_each(|_| put(0)),
    }
}

/// An algorithm's number in `decide.lua`'s arguments.
fn algorithm_number(algorithm: Algorithm) -> i64 {
    match algorithm {
        Algorithm::SlidingWindow => 0,
        Algorithm::FixedWindow => 1,
        Algorithm::TokenBucket => 2,
    }
}

/// An enforcement's number in `decide.lua`'s arguments.
fn enforcement_number(enforcement: Enforcement) -> i64 {
    match enforcement {
        Enforcement::Enforced => 0,
        Enforcement::Shadow => 1,
        Enforcement::Collective => 2,
    }
}

#[tonic::async_trait]
impl RateLimitStore for RedisStore {
    async fn decide(&self, decision: Arc<Decision>) -> Result<Outcome, StoreError> {
        if !decision.is_guarded() {
            // Nothing to decide: the usage waits for the next flush, and the
            // caller no round trip.
            if let Some(usage) = &decision.usage {
                self.shared.buffer.add(usage, usage.code);
            }
            return Ok(Outcome {
                verdict: verdict(decision.charge, &[], &[]),
                now_us: chrono::Utc::now().timestamp_micros(),
                limits: Vec::new(),
                quota_balance: None,
            });
        }
        // On a cluster a script's keys must share a slot: one lane per slot.
        let lane = match decision.first_key() {
            Some(key) if self.shared.cluster => slot_of_key(key),
            _ => 0,
        };
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            decision,
            queued_at: Instant::now(),
            answer,
        };
        if self.shared.lanes.push(lane, waiting) {
            tokio::spawn(self.shared.clone().send_lane(lane));
        }
        answered
            .await
            .unwrap_or_else(|_| Err(StoreError::BadReply("the batch was dropped".to_owned())))
    }

    async fn usage(
        &self,
        base: &str,
        granularity: Granularity,
        first: i64,
        last: i64,
        recent: u32,
    ) -> Result<KeyUsage, StoreError> {
        // A replica always sees its own validations.
        self.flush().await?;
        let mut connection = self.shared.target.connection().await?;
        let (buckets, log): (Vec<Vec<String>>, Vec<String>) = self
            .shared
            .usage
            .key(base)
            .arg(granularity.code())
            .arg(first)
            .arg(last)
            .arg(recent)
            .invoke_async(&mut connection)
            .await?;
        let bad = |what: &str| StoreError::BadReply(what.to_owned());
        let mut usage = KeyUsage::default();
        for (offset, fields) in buckets.iter().enumerate() {
            let mut counts = Vec::new();
            for pair in fields.chunks(2) {
                let [code, count] = pair else {
                    return Err(bad("odd usage hash"));
                };
                let code = ValidationCode::from_name(code).ok_or_else(|| bad("unknown code"))?;
                counts.push((code, count.parse().map_err(|_| bad("usage count"))?));
            }
            counts.sort_by_key(|(code, _)| code.as_str());
            usage.buckets.push(UsageBucket {
                start_secs: (first + offset as i64) * granularity.seconds(),
                counts,
            });
        }
        for entry in log {
            usage
                .recent
                .push(parse_log_entry(&entry).ok_or_else(|| bad("log entry"))?);
        }
        Ok(usage)
    }

    /// One pipeline (every key shares the owner's hash tag, so one slot):
    /// `HINCRBY` and `EXPIREAT` per counter, the log appended oldest last.
    async fn import_usage(&self, base: &str, usage: &ImportedUsage) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for count in &usage.counts {
            let key = format!("{base}:{}:{}", count.granularity.code(), count.index);
            pipe.hincr(&key, count.code.as_str(), count.count)
                .ignore()
                .expire_at(&key, count.expires_at_secs)
                .ignore();
        }
        if !usage.recent.is_empty() {
            let log = format!("{base}:log");
            let entries: Vec<String> = usage.recent.iter().map(log_entry).collect();
            pipe.rpush(&log, entries)
                .ignore()
                .ltrim(&log, 0, usage.log_length as isize - 1)
                .ignore()
                .expire_at(&log, usage.log_expires_at_secs)
                .ignore();
        }
        let mut connection = self.shared.target.connection().await?;
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.shared.target.ping().await
    }

    /// A thread of its own, with a runtime and a connection of its own, so
    /// that neither a saturated runtime nor a busy decision connection can
    /// make a PING late: a probe that fails is Redis (or the way to it)
    /// failing, not this process.
    fn start_probe(
        &self,
        every: Duration,
        timeout: Duration,
    ) -> Option<mpsc::Receiver<ProbeResult>> {
        let (results, received) = mpsc::channel(1);
        let settings = self.settings.clone();
        let spawned = std::thread::Builder::new()
            .name("apikeyd-redis-probe".to_owned())
            .spawn(move || probe(settings, every, timeout, results));
        match spawned {
            Ok(_) => Some(received),
            Err(error) => {
                tracing::error!(%error, "cannot start the Redis probe thread; outages are detected by decisions only");
                None
            }
        }
    }

    fn is_remote(&self) -> bool {
        true
    }

    /// One `usage_batch.lua` per key with gathered usage, several at once.
    /// A failed batch is dropped (and counted), as usage is during an outage.
    async fn flush(&self) -> Result<(), StoreError> {
        use futures_util::stream::{self, StreamExt};
        let pending = self.shared.buffer.take();
        if pending.is_empty() {
            return Ok(());
        }
        let connection = self.shared.target.connection().await?;
        let results: Vec<Result<i64, StoreError>> = stream::iter(pending)
            .map(|(base, usage)| {
                let mut connection = connection.clone();
                let mut invocation = self.shared.usage_batch.prepare_invoke();
                invocation
                    .key(&base)
                    .arg(usage.retention.hourly_secs)
                    .arg(usage.retention.daily_secs)
                    .arg(usage.retention.recent_requests)
                    .arg(usage.retention.daily_secs)
                    .arg(usage.counts.len());
                for (code, count) in &usage.counts {
                    invocation.arg(*code).arg(*count);
                }
                invocation.arg(usage.recent.len());
                for (context, code, at) in &usage.recent {
                    invocation
                        .arg(&context.endpoint)
                        .arg(&context.method)
                        .arg(&context.ip)
                        .arg(&context.user_agent)
                        .arg(*code)
                        .arg(at.elapsed().as_millis() as u64);
                }
                async move { Ok(invocation.invoke_async::<i64>(&mut connection).await?) }
            })
            .buffer_unordered(FLUSH_CONCURRENCY)
            .collect()
            .await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            ::metrics::counter!("apikeyd_usage_dropped_total").increment(failed as u64);
        }
        results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }
}

/// The probe thread's loop: one PING every `every`, its result to the
/// limiter, until the limiter stops listening.
fn probe(
    settings: ConnectionSettings,
    every: Duration,
    timeout: Duration,
    results: mpsc::Sender<ProbeResult>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the Redis probe's runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let target = match Target::new(&settings) {
            Ok(target) => target,
            Err(error) => {
                tracing::error!(%error, "the Redis probe cannot connect");
                return;
            }
        };
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, target.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!(
                    "no answer to PING within {} ms",
                    timeout.as_millis()
                )),
            };
            ::metrics::histogram!("apikeyd_redis_duration_seconds", "operation" => "ping")
                .record(started.elapsed());
            if result.is_err() {
                ::metrics::counter!("apikeyd_redis_errors_total", "operation" => "ping")
                    .increment(1);
            }
            if results.send(result).await.is_err() {
                return;
            }
        }
    });
}

/// Splits a batch's reply (little-endian 64-bit integers) into one outcome
/// per decision, in order.
fn parse_outcomes(decisions: &[&Decision], reply: &[u8]) -> Result<Vec<Outcome>, StoreError> {
    let expected: usize = decisions.iter().map(|d| 3 + 4 * d.limits.len()).sum();
    if reply.len() != 8 * expected {
        return Err(StoreError::BadReply(format!(
            "{} bytes for {} decisions (expected {expected} numbers of 8 bytes)",
            reply.len(),
            decisions.len()
        )));
    }
    let reply: Vec<i64> = reply
        .chunks_exact(8)
        .map(|n| i64::from_le_bytes(n.try_into().expect("chunks of 8")))
        .collect();
    let mut rest = &reply[..];
    let mut outcomes = Vec::with_capacity(decisions.len());
    for decision in decisions {
        let (own, after) = rest.split_at(3 + 4 * decision.limits.len());
        rest = after;
        let verdict = match own[0] {
            0 => Verdict::Admitted,
            1 => Verdict::RateLimited,
            2 => Verdict::QuotaExceeded,
            _ => Verdict::NotCharged,
        };
        let limits = decision
            .limits
            .iter()
            .zip(own[3..].chunks(4))
            .map(|(charge, r)| LimitStatus {
                limit: charge.limit,
                allowed: r[0] == 1,
                remaining: r[1].clamp(0, i64::from(u32::MAX)) as u32,
                reset_at_us: r[2],
                retry_after_us: r[3],
            })
            .collect();
        outcomes.push(Outcome {
            verdict,
            now_us: own[1],
            limits,
            quota_balance: decision.quota.as_ref().map(|_| own[2]),
        });
    }
    Ok(outcomes)
}

/// A log entry as `decide.lua` and `usage_batch.lua` write it.
fn log_entry(request: &RecentRequest) -> String {
    serde_json::json!({
        "e": request.context.endpoint,
        "m": request.context.method,
        "i": request.context.ip,
        "u": request.context.user_agent,
        "c": request.code.as_str(),
        "t": request.at_ms,
    })
    .to_string()
}

#[derive(serde::Deserialize)]
struct LogEntry {
    e: String,
    m: String,
    i: String,
    u: String,
    c: String,
    t: i64,
}

fn parse_log_entry(raw: &str) -> Option<RecentRequest> {
    let entry: LogEntry = serde_json::from_str(raw).ok()?;
    Some(RecentRequest {
        context: RequestContext {
            endpoint: entry.e,
            method: entry.m,
            ip: entry.i,
            user_agent: entry.u,
        },
        code: ValidationCode::from_name(&entry.c)?,
        at_ms: entry.t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::quota::MAX_QUOTA;

    #[test]
    fn the_script_caps_balances_where_the_domain_does() {
        assert!(DECIDE.contains(&format!("local MAX_QUOTA = {MAX_QUOTA}\n")));
    }
}
