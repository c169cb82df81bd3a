//! The invalidation stream in Redis: one stream key, `<prefix>:invalidations`.
//!
//! - Publishing is `XADD <key> MAXLEN ~ 10000 * <field> <value> ...`, one
//!   entry per batch of changes, on a connection of its own (in a Cluster,
//!   a cluster connection, which follows the key's slot wherever it moves).
//! - Each follower reads on a connection of its own with one pipelined
//!   round trip, `XREAD COUNT 256 BLOCK <ms> STREAMS <key> <last id>` then
//!   `XINFO STREAM <key>`: the entries after its last one, then the
//!   stream's newest id and count of entries ever added (Redis 7.0 or
//!   later), from which it tells a caught-up reader from one that missed
//!   entries.

use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};

use super::Invalidation;
use super::stream::{
    Batch, Entry, EntryId, StreamAppender, StreamReader, StreamSource, StreamState,
};
use crate::config::redis_target::RedisTarget;

/// Entries kept in the stream (at least; `~` lets Redis trim lazily): a
/// follower disconnected for fewer changes than this replays instead of
/// flushing.
const KEPT_ENTRIES: u64 = 10_000;
/// Entries one read returns at most.
const PAGE: usize = 256;
/// The longest a connection attempt waits.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct RedisStream {
    key: String,
    target: Target,
    /// The longest an append waits for Redis before it is tried again.
    append_timeout: Duration,
    /// How long a read may take (its block and grace) before the follower
    /// gives up on it; the Redis-level timeout sits a second past it.
    read_timeout: Duration,
    /// The appending connection: made on first use, and again after a failure.
    appender: tokio::sync::Mutex<Option<Connection>>,
}

enum Target {
    /// Boxed: with TLS a client holds its certificates.
    Single(Box<redis::Client>),
    /// Separate clients, since their response timeouts differ.
    Cluster {
        appender: Box<ClusterClient>,
        reader: Box<ClusterClient>,
    },
}

/// What a connection is for: their response timeouts differ.
#[derive(Clone, Copy)]
enum Role {
    Append,
    Read,
}

/// Either kind of connection, so that commands run the same on both.
enum Connection {
    Single(MultiplexedConnection),
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

impl RedisStream {
    /// No I/O: connections are made when first needed.
    pub fn new(
        redis_target: &RedisTarget,
        key_prefix: &str,
        append_timeout: Duration,
        read_timeout: Duration,
    ) -> anyhow::Result<RedisStream> {
        let target = if redis_target.is_cluster() {
            let client = |timeout| {
                redis_target
                    .cluster_builder()
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()
                    .map(Box::new)
            };
            Target::Cluster {
                appender: client(append_timeout)?,
                reader: client(read_timeout + Duration::from_secs(1))?,
            }
        } else {
            Target::Single(Box::new(redis_target.client()?))
        };
        Ok(RedisStream {
            key: format!("{key_prefix}:invalidations"),
            target,
            append_timeout,
            read_timeout,
            appender: tokio::sync::Mutex::new(None),
        })
    }

    async fn connect(&self, role: Role) -> redis::RedisResult<Connection> {
        let response_timeout = match role {
            Role::Append => self.append_timeout,
            Role::Read => self.read_timeout + Duration::from_secs(1),
        };
        match &self.target {
            Target::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(response_timeout));
                Ok(Connection::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Target::Cluster { appender, reader } => {
                let client = match role {
                    Role::Append => appender,
                    Role::Read => reader,
                };
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

#[tonic::async_trait]
impl StreamAppender for RedisStream {
    async fn append(&self, changes: &[Invalidation]) -> anyhow::Result<()> {
        let mut appender = self.appender.lock().await;
        let connection = match appender.as_mut() {
            Some(connection) => connection,
            None => appender.insert(self.connect(Role::Append).await?),
        };
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(KEPT_ENTRIES)
            .arg("*");
        for change in changes {
            let (field, value) = change.field();
            xadd.arg(field).arg(value);
        }
        let appended =
            tokio::time::timeout(self.append_timeout, xadd.query_async::<Value>(connection)).await;
        match appended {
            Ok(Ok(_)) => Ok(()),
            failed => {
                // A fresh connection for the next try; this one may be dead.
                *appender = None;
                match failed {
                    Ok(Err(error)) => Err(error.into()),
                    _ => anyhow::bail!("XADD timed out after {:?}", self.append_timeout),
                }
            }
        }
    }
}

#[tonic::async_trait]
impl StreamSource for RedisStream {
    async fn open(&self) -> anyhow::Result<Box<dyn StreamReader>> {
        Ok(Box::new(RedisReader {
            key: self.key.clone(),
            connection: self.connect(Role::Read).await?,
        }))
    }
}

struct RedisReader {
    key: String,
    connection: Connection,
}

#[tonic::async_trait]
impl StreamReader for RedisReader {
    async fn state(&mut self) -> anyhow::Result<StreamState> {
        let info = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&self.key)
            .query_async::<Value>(&mut self.connection)
            .await;
        match info {
            Ok(info) => parse_state(info),
            Err(error) if is_missing_stream(&error.to_string()) => Ok(StreamState::default()),
            Err(error) => Err(error.into()),
        }
    }

    async fn read_after(&mut self, last: EntryId, block: Duration) -> anyhow::Result<Batch> {
        let (read, info): (Value, Value) = redis::pipe()
            .ignore_errors()
            .cmd("XREAD")
            .arg("COUNT")
            .arg(PAGE)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(last.to_string())
            .cmd("XINFO")
            .arg("STREAM")
            .arg(&self.key)
            .query_async(&mut self.connection)
            .await?;
        let state = match info {
            Value::ServerError(error) if is_missing_stream(&error.to_string()) => {
                StreamState::default()
            }
            info => parse_state(info)?,
        };
        Ok(Batch {
            entries: parse_entries(read)?,
            state,
        })
    }
}

fn is_missing_stream(error: &str) -> bool {
    error.contains("no such key")
}

/// `XINFO STREAM`'s reply (a flat list of names and values, or a map).
fn parse_state(info: Value) -> anyhow::Result<StreamState> {
    let mut last_generated = None;
    let mut entries_added = None;
    for (name, value) in pairs(info)? {
        match text(&name).as_deref() {
            Some("last-generated-id") => {
                last_generated = text(&value).and_then(|t| EntryId::parse(&t))
            }
            Some("entries-added") => {
                if let Value::Int(n) = value {
                    entries_added = u64::try_from(n).ok();
                }
            }
            _ => {}
        }
    }
    Ok(StreamState {
        last_generated: last_generated.context("XINFO STREAM without last-generated-id")?,
        entries_added: entries_added
            .context("XINFO STREAM without entries-added: Redis 7.0 or later is needed")?,
    })
}

/// `XREAD`'s reply for one stream: nil when nothing came, else
/// `[[key, [[id, [field, value, ...]], ...]]]` (or a map of key to entries).
fn parse_entries(read: Value) -> anyhow::Result<Vec<Entry>> {
    let streams: Vec<Value> = match read {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut parts) if parts.len() == 2 => parts.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        Value::ServerError(error) => anyhow::bail!("XREAD failed: {error}"),
        other => anyhow::bail!("unexpected XREAD reply: {other:?}"),
    };
    let mut entries = Vec::new();
    for stream in streams {
        let Value::Array(raw) = stream else {
            anyhow::bail!("unexpected XREAD entries: {stream:?}");
        };
        for entry in raw {
            let Value::Array(mut parts) = entry else {
                anyhow::bail!("unexpected XREAD entry: {entry:?}");
            };
            anyhow::ensure!(parts.len() == 2, "unexpected XREAD entry: {parts:?}");
            let fields = parts.pop().expect("two parts");
            let id = text(&parts[0])
                .and_then(|t| EntryId::parse(&t))
                .context("an XREAD entry without an id")?;
            let changes = pairs(fields)?
                .into_iter()
                .filter_map(|(field, value)| {
                    Invalidation::from_field(&text(&field)?, &text(&value)?)
                })
                .collect();
            entries.push(Entry { id, changes });
        }
    }
    Ok(entries)
}

/// A flat list of alternating names and values, or a map, as pairs.
fn pairs(value: Value) -> anyhow::Result<Vec<(Value, Value)>> {
    match value {
        Value::Map(pairs) => Ok(pairs),
        Value::Array(items) => {
            let mut items = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(name), Some(value)) = (items.next(), items.next()) {
                pairs.push((name, value));
            }
            Ok(pairs)
        }
        Value::ServerError(error) => anyhow::bail!("{error}"),
        other => anyhow::bail!("expected a list of pairs, got {other:?}"),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyId;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn an_xread_reply_becomes_entries_and_unknown_fields_are_skipped() {
        let id = KeyId::parse("0123456789abcdef").unwrap();
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("apikeyd:invalidations"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1700000000000-0"),
                    Value::Array(vec![bulk("k"), bulk(id.as_str()), bulk("o"), bulk("team")]),
                ]),
                Value::Array(vec![
                    bulk("1700000000000-1"),
                    Value::Array(vec![bulk("*"), bulk(""), bulk("x"), bulk("junk")]),
                ]),
            ]),
        ])]);
        assert_eq!(
            parse_entries(reply).unwrap(),
            vec![
                Entry {
                    id: EntryId::new(1_700_000_000_000, 0),
                    changes: vec![Invalidation::Key(id), Invalidation::Owner("team".into())],
                },
                Entry {
                    id: EntryId::new(1_700_000_000_000, 1),
                    changes: vec![Invalidation::All],
                },
            ]
        );
        assert_eq!(parse_entries(Value::Nil).unwrap(), Vec::new());
    }

    #[test]
    fn an_xinfo_reply_gives_the_newest_id_and_the_count_ever_added() {
        let reply = Value::Array(vec![
            bulk("length"),
            Value::Int(1),
            bulk("last-generated-id"),
            bulk("1700000000000-4"),
            bulk("entries-added"),
            Value::Int(5),
        ]);
        assert_eq!(
            parse_state(reply).unwrap(),
            StreamState {
                last_generated: EntryId::new(1_700_000_000_000, 4),
                entries_added: 5,
            }
        );
        let before_redis_7 = Value::Array(vec![bulk("last-generated-id"), bulk("1-0")]);
        assert!(parse_state(before_redis_7).is_err());
    }
}
