//! Cache invalidation between replicas: never lost, only late, and late is
//! bounded. Each replica either has applied every invalidation or knows it
//! may have missed one, and then trusts its cache for the degraded TTL only.
//!
//! - A change (to a key, to an owner's shared limits, or a root key's
//!   revocation) is appended to a
//!   Redis Stream, `<prefix>:invalidations` ([`redis_stream`]). The
//!   [`publisher`] queues it (bounded) and retries until Redis takes it;
//!   if the queue overflows, the next append tells every replica to flush.
//! - Each replica's [`follower`] reads the stream in order with
//!   `XREAD BLOCK` from the last entry it applied. After a reconnect it
//!   replays what it missed; if entries were lost before it read them
//!   (trimmed, or lost with the server) it flushes. A read answers at least
//!   every second, so a dead link is noticed when one does not.
//! - The bus delivers changes to an [`InvalidationSink`] (the key cache, as
//!   the wiring connects it); the authority publishes.
//!
//! How late (D = the heartbeat deadline, 1 s + max(`--redis-timeout-ms`, 1 s)):
//! - Redis reachable: one `XREAD` round trip after the change commits.
//! - A replica cannot read the stream (Redis down, paused or cut off): it
//!   distrusts its cache within D, then serves no entry older than the
//!   degraded TTL; a change is refused there within max(degraded TTL, D)
//!   plus about 1 s (the append's retry, if Redis comes back before that).
//! - Anything else (the changing replica alone cut off from Redis, or
//!   stopped before its append): the cache's TTL backstop, 60 s.

mod follower;
mod publisher;
mod redis_stream;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use anyhow::Context;

use crate::config::RedisSettings;
use crate::config::redis_target::RedisTarget;
use crate::domain::KeyId;
use follower::{Follower, Heartbeat};
use publisher::Publisher;
use redis_stream::RedisStream;

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    Key(KeyId),
    Owner(String),
    /// Keys were imported: a digest remembered as absent may now be a key.
    ImportedKeys,
    /// A root key was revoked: data-plane credentials are checked anew.
    RootKey(KeyId),
    /// Anything may have changed: some invalidations were dropped.
    All,
}

impl Invalidation {
    /// The field and value this change takes in a stream entry.
    fn field(&self) -> (&'static str, &str) {
        match self {
            Invalidation::Key(id) => ("k", id.as_str()),
            Invalidation::Owner(owner) => ("o", owner),
            Invalidation::ImportedKeys => ("i", ""),
            Invalidation::RootKey(id) => ("r", id.as_str()),
            Invalidation::All => ("*", ""),
        }
    }

    /// The change a stream entry's field names; `None` for a field this
    /// version does not know.
    fn from_field(field: &str, value: &str) -> Option<Invalidation> {
        match field {
            "k" => KeyId::parse(value).map(Invalidation::Key),
            "o" => Some(Invalidation::Owner(value.to_owned())),
            "i" => Some(Invalidation::ImportedKeys),
            "r" => KeyId::parse(value).map(Invalidation::RootKey),
            "*" => Some(Invalidation::All),
            _ => None,
        }
    }
}

/// What the bus delivers to: each change it reads, and whether every
/// change is known to arrive.
pub trait InvalidationSink: Send + Sync {
    fn apply(&self, change: &Invalidation);
    /// False while invalidations may be missed.
    fn set_trusted(&self, trusted: bool);
}

/// Changes waiting for Redis, at most: past this, a flush replaces them.
const PUBLISH_QUEUE: usize = 10_000;
/// The longest a read of an idle stream waits before answering empty.
const HEARTBEAT_BLOCK: Duration = Duration::from_secs(1);
/// The least grace a read gets past its block before the link counts as dead.
const MIN_HEARTBEAT_GRACE: Duration = Duration::from_secs(1);

pub struct InvalidationBus {
    stream: RedisStream,
    publisher: Publisher,
    heartbeat: Heartbeat,
}

impl InvalidationBus {
    /// The bus over `target`, with the key prefix and timeout of `settings`
    /// (the Redis settings that named `target`): what the server and the
    /// commands that change keys outside it (`root-key revoke`, `import`)
    /// connect to.
    pub fn over(target: &RedisTarget, settings: &RedisSettings) -> anyhow::Result<Arc<Self>> {
        let bus = Self::connect(target, &settings.key_prefix, settings.timeout())
            .with_context(|| format!("invalid Redis URL {target}"))?;
        Ok(Arc::new(bus))
    }

    /// `urls` and `cluster` as in `--redis-url` and `--redis-cluster`;
    /// `timeout` is `--redis-timeout-ms`. Connects when first needed.
    pub fn connect(
        redis_target: &RedisTarget,
        key_prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<InvalidationBus> {
        let heartbeat = Heartbeat {
            block: HEARTBEAT_BLOCK,
            grace: timeout.max(MIN_HEARTBEAT_GRACE),
        };
        Ok(InvalidationBus {
            stream: RedisStream::new(
                redis_target,
                key_prefix,
                heartbeat.grace,
                heartbeat.deadline(),
            )?,
            publisher: Publisher::new(PUBLISH_QUEUE),
            heartbeat,
        })
    }

    /// Tells every replica (this one included) about a committed change,
    /// without waiting.
    pub fn publish(&self, change: Invalidation) {
        self.publisher.publish(change);
    }

    /// Appends published changes in the background until [`Self::finish`].
    pub fn spawn_publisher(self: &Arc<Self>) -> JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move { bus.publisher.run(&bus.stream).await })
    }

    /// At shutdown: appends what is still queued, waiting at most `within`.
    pub async fn finish(&self, publisher: JoinHandle<()>, within: Duration) {
        self.publisher.close();
        let abort = publisher.abort_handle();
        if tokio::time::timeout(within, publisher).await.is_err() {
            abort.abort();
            let unpublished = self.publisher.unpublished();
            ::metrics::counter!("apikeyd_invalidations_lost_total").increment(unpublished as u64);
            tracing::warn!(
                unpublished,
                "stopping with cache invalidations Redis has not taken; other replicas drop those keys by the TTL backstop"
            );
        }
    }

    /// Follows the stream for as long as the process runs, delivering to
    /// `sink`. `redis_reachable` (the limiter's probe) distrusts the cache
    /// as soon as Redis stops answering it.
    pub async fn follow_forever(
        self: Arc<Self>,
        sink: Arc<dyn InvalidationSink>,
        redis_reachable: watch::Receiver<bool>,
    ) {
        Follower::new(sink, self.heartbeat, redis_reachable)
            .run(&self.stream)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_through_stream_fields_and_junk_is_ignored() {
        let key = Invalidation::Key(KeyId::parse("0123456789abcdef").unwrap());
        let owner = Invalidation::Owner("team:a".to_owned());
        let root_key = Invalidation::RootKey(KeyId::parse("fedcba9876543210").unwrap());
        for change in [
            key,
            owner,
            root_key,
            Invalidation::ImportedKeys,
            Invalidation::All,
        ] {
            let (field, value) = change.field();
            assert_eq!(Invalidation::from_field(field, value), Some(change));
        }
        assert_eq!(Invalidation::from_field("k", "not-an-id"), None);
        assert_eq!(Invalidation::from_field("x", "anything"), None);
    }
}
