//! Cache invalidation between replicas, over Redis pub/sub.
//!
//! A change to a key (or to an owner's shared limits) on any replica is
//! published on one channel; every replica subscribes and evicts the entry
//! from its [`KeyCache`]. The message carries only the public key id or the
//! owner id. While the subscription is down (or Redis is unreachable) the
//! cache trusts entries for its degraded TTL only, and it is flushed when
//! the subscription comes back, so staleness stays bounded either way.
//!
//! In a Redis Cluster, PUBLISH reaches subscribers on every node, so the
//! subscription is made to the first node that answers.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_stream::StreamExt;

use crate::domain::KeyId;
use crate::key_cache::KeyCache;

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    Key(KeyId),
    Owner(String),
}

impl Invalidation {
    fn encode(&self) -> String {
        match self {
            Invalidation::Key(id) => format!("k:{id}"),
            Invalidation::Owner(owner) => format!("o:{owner}"),
        }
    }

    fn decode(message: &str) -> Option<Invalidation> {
        match message.split_once(':')? {
            ("k", id) => KeyId::parse(id).map(Invalidation::Key),
            ("o", owner) => Some(Invalidation::Owner(owner.to_owned())),
            _ => None,
        }
    }
}

/// How many times a failed publish is retried, and how far apart.
const PUBLISH_ATTEMPTS: u32 = 5;
const PUBLISH_RETRY: Duration = Duration::from_millis(200);

pub struct InvalidationBus {
    /// Every node URL given (one, or a cluster's seeds).
    nodes: Vec<String>,
    channel: String,
    publisher: ConnectionManager,
}

impl InvalidationBus {
    /// `urls` as in `--redis-url`: one URL, or comma-separated cluster seeds.
    pub async fn connect(
        urls: &str,
        key_prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<InvalidationBus> {
        let nodes: Vec<String> = urls.split(',').map(|u| u.trim().to_owned()).collect();
        let client = redis::Client::open(nodes[0].as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_connection_timeout(Some(Duration::from_secs(1)));
        let publisher = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(InvalidationBus {
            nodes,
            channel: format!("{key_prefix}:invalidations"),
            publisher,
        })
    }

    /// Publishes in the background, retrying a few times: the caller's
    /// change is already committed, and must not wait on Redis.
    pub fn publish(&self, invalidation: Invalidation) {
        let mut publisher = self.publisher.clone();
        let channel = self.channel.clone();
        tokio::spawn(async move {
            let message = invalidation.encode();
            for attempt in 1..=PUBLISH_ATTEMPTS {
                match publisher.publish::<_, _, i64>(&channel, &message).await {
                    Ok(_) => return,
                    Err(e) if attempt == PUBLISH_ATTEMPTS => {
                        ::metrics::counter!("apikeyd_invalidations_lost_total").increment(1);
                        tracing::warn!(error = %e, "could not publish a cache invalidation; other replicas fall back to their degraded TTL");
                    }
                    Err(_) => tokio::time::sleep(PUBLISH_RETRY).await,
                }
            }
        });
    }

    /// Keeps a subscription up for as long as the process runs, evicting
    /// what other replicas changed and telling the cache whether
    /// invalidations are flowing. `redis_reachable` (the limiter's probe)
    /// catches a Redis that hangs without closing the connection.
    pub async fn subscribe_forever(
        self: Arc<Self>,
        cache: Arc<KeyCache>,
        mut redis_reachable: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut node = 0;
        loop {
            let url = &self.nodes[node % self.nodes.len()];
            match self.subscription(url).await {
                Ok(mut pubsub) => {
                    backoff = Duration::from_millis(100);
                    cache.set_invalidations_flowing(true);
                    tracing::info!(
                        "cache invalidations are flowing; the key cache trusts its entries again"
                    );
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            message = messages.next() => {
                                let Some(message) = message else { break };
                                let Ok(payload) = message.get_payload::<String>() else { continue };
                                match Invalidation::decode(&payload) {
                                    Some(Invalidation::Key(id)) => cache.evict(&id).await,
                                    Some(Invalidation::Owner(owner)) => cache.evict_owner(&owner).await,
                                    None => {}
                                }
                            }
                            changed = redis_reachable.changed() => {
                                if changed.is_ok() && !*redis_reachable.borrow_and_update() {
                                    break;
                                }
                            }
                        }
                    }
                    cache.set_invalidations_flowing(false);
                    tracing::warn!(
                        "cache invalidation channel lost; cached keys are trusted for the degraded TTL until it is back"
                    );
                }
                Err(_) => {
                    cache.set_invalidations_flowing(false);
                    node += 1;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn subscription(&self, url: &str) -> anyhow::Result<redis::aio::PubSub> {
        let client = redis::Client::open(url)?;
        let mut pubsub =
            tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await??;
        pubsub.subscribe(&self.channel).await?;
        Ok(pubsub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_junk_is_ignored() {
        let key = Invalidation::Key(KeyId::parse("0123456789abcdef").unwrap());
        let owner = Invalidation::Owner("team:a".to_owned());
        assert_eq!(Invalidation::decode(&key.encode()), Some(key));
        assert_eq!(Invalidation::decode(&owner.encode()), Some(owner));
        assert_eq!(Invalidation::decode("k:not-an-id"), None);
        assert_eq!(Invalidation::decode("x"), None);
    }
}
