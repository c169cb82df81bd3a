//! The Redis store, on a single node or a Redis Cluster. Each decision is one
//! `EVALSHA` of `decide.lua` (redis-rs loads the script again on NOSCRIPT),
//! so a `Validate` with limits, quota and usage costs one round trip, and
//! every replica shares one count and one clock (the server's `TIME`).

use std::sync::RwLock;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use super::imported_usage::ImportedUsage;
use super::quota::RefillInterval;
use super::store::{Decision, LimitStatus, Outcome, RateLimitStore, StoreError, Verdict, verdict};
use super::usage::{Granularity, KeyUsage, RecentRequest, RequestContext, UsageBucket};
use super::usage_buffer::UsageBuffer;
use crate::domain::ValidationCode;

const DECIDE: &str = include_str!("decide.lua");
const USAGE: &str = include_str!("usage.lua");
const USAGE_BATCH: &str = include_str!("usage_batch.lua");
/// Keys written at once by a flush.
const FLUSH_CONCURRENCY: usize = 32;

pub struct RedisStore {
    target: Target,
    decide: Script,
    usage: Script,
    usage_batch: Script,
    /// Usage of decisions with nothing to decide, written in the background.
    buffer: UsageBuffer,
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

impl RedisStore {
    /// Connects lazily: a Redis that is down at start is an outage like any
    /// other, not a reason to refuse to start. `urls` holds one URL, or for
    /// a cluster one or more seed nodes separated by commas.
    pub fn new(urls: &str, cluster: bool, timeout: Duration) -> anyhow::Result<RedisStore> {
        let target = if cluster {
            let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
            let client = ClusterClient::builder(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()?;
            Target::Cluster {
                client: Box::new(client),
                connection: RwLock::new(None),
            }
        } else {
            let client = redis::Client::open(urls)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Target::Single(ConnectionManager::new_lazy_with_config(client, config)?)
        };
        Ok(RedisStore {
            target,
            decide: Script::new(DECIDE),
            usage: Script::new(USAGE),
            usage_batch: Script::new(USAGE_BATCH),
            buffer: UsageBuffer::default(),
        })
    }

    async fn connection(&self) -> Result<Connection, StoreError> {
        match &self.target {
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
}

#[tonic::async_trait]
impl RateLimitStore for RedisStore {
    async fn decide(&self, decision: &Decision) -> Result<Outcome, StoreError> {
        if decision.limits.is_empty() && decision.quota.is_none() {
            // Nothing to decide: the usage waits for the next flush, and the
            // caller no round trip.
            if let Some(usage) = &decision.usage {
                self.buffer.add(usage, usage.code);
            }
            return Ok(Outcome {
                verdict: verdict(decision.charge, &[]),
                now_us: chrono::Utc::now().timestamp_micros(),
                limits: Vec::new(),
                quota_balance: None,
            });
        }
        let mut invocation = self.decide.prepare_invoke();
        invocation
            .arg(decision.cost)
            .arg(u8::from(decision.charge))
            .arg(decision.limits.len());
        for (key, limit) in &decision.limits {
            invocation
                .key(key)
                .arg(limit.algorithm.code())
                .arg(limit.limit)
                .arg(limit.window_us());
        }
        match &decision.quota {
            Some(check) => {
                invocation
                    .key(&check.key)
                    .arg(1)
                    .arg(check.quota.version)
                    .arg(check.quota.remaining)
                    .arg(check.quota.refill_amount)
                    .arg(RefillInterval::code(check.quota.refill_interval))
                    .arg(check.add);
            }
            None => {
                invocation.arg(&[0, 0, 0, 0, 0, 0]);
            }
        }
        // Usage is gathered and flushed in the background (below), so the
        // script does only what the caller waits for: limits and quota.
        let mut connection = self.connection().await?;
        let reply: Vec<i64> = invocation.invoke_async(&mut connection).await?;
        let outcome = parse_outcome(decision, &reply)?;
        if let Some(usage) = &decision.usage {
            // A denial records its own code, as decide.lua would.
            let code = match outcome.verdict {
                Verdict::RateLimited => ValidationCode::RateLimited,
                Verdict::QuotaExceeded => ValidationCode::UsageExceeded,
                Verdict::Admitted | Verdict::NotCharged => usage.code,
            };
            self.buffer.add(usage, code);
        }
        Ok(outcome)
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
        let mut connection = self.connection().await?;
        let (buckets, log): (Vec<Vec<String>>, Vec<String>) = self
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
        let mut connection = self.connection().await?;
        tokio::time::timeout(IMPORT_TIMEOUT, pipe.query_async::<()>(&mut connection))
            .await
            .map_err(|_| StoreError::Timeout(IMPORT_TIMEOUT))??;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok(())
    }

    fn is_remote(&self) -> bool {
        true
    }

    /// One `usage_batch.lua` per key with gathered usage, several at once.
    /// A failed batch is dropped (and counted), as usage is during an outage.
    async fn flush(&self) -> Result<(), StoreError> {
        use futures_util::stream::{self, StreamExt};
        let pending = self.buffer.take();
        if pending.is_empty() {
            return Ok(());
        }
        let connection = self.connection().await?;
        let results: Vec<Result<i64, StoreError>> = stream::iter(pending)
            .map(|(base, usage)| {
                let mut connection = connection.clone();
                let mut invocation = self.usage_batch.prepare_invoke();
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

fn parse_outcome(decision: &Decision, reply: &[i64]) -> Result<Outcome, StoreError> {
    let n = decision.limits.len();
    if reply.len() != 3 + 4 * n {
        return Err(StoreError::BadReply(format!(
            "{} numbers for {n} limits",
            reply.len()
        )));
    }
    let verdict = match reply[0] {
        0 => Verdict::Admitted,
        1 => Verdict::RateLimited,
        2 => Verdict::QuotaExceeded,
        _ => Verdict::NotCharged,
    };
    let limits = decision
        .limits
        .iter()
        .zip(reply[3..].chunks(4))
        .map(|((_, limit), r)| LimitStatus {
            limit: *limit,
            allowed: r[0] == 1,
            remaining: r[1].clamp(0, i64::from(u32::MAX)) as u32,
            reset_at_us: r[2],
            retry_after_us: r[3],
        })
        .collect();
    Ok(Outcome {
        verdict,
        now_us: reply[1],
        limits,
        quota_balance: decision.quota.as_ref().map(|_| reply[2]),
    })
}

/// The longest an import waits for one key's usage to be written.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(10);

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
