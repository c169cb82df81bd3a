//! The publishing side: changes wait in a bounded queue and are appended to
//! the stream in order, each batch retried until the stream takes it, so a
//! change committed while Redis is away is late, not lost. The caller never
//! waits: its change is already committed.
//!
//! When the queue is full, the change that does not fit is dropped, and
//! the next append carries [`Invalidation::All`] instead: every replica
//! flushes, which covers whatever was dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, watch};

use super::Invalidation;
use super::stream::StreamAppender;

/// Changes appended together, in one stream entry.
const BATCH: usize = 64;
/// The first wait after a failed append; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

pub struct Publisher {
    queue: mpsc::Sender<Invalidation>,
    /// The queue's other end, held by the one task that appends.
    waiting: Mutex<mpsc::Receiver<Invalidation>>,
    /// Set when a change was dropped because the queue was full.
    overflowed: AtomicBool,
    /// Set at shutdown: append what is queued, then stop.
    closing: watch::Sender<bool>,
}

impl Publisher {
    pub fn new(capacity: usize) -> Publisher {
        let (queue, waiting) = mpsc::channel(capacity);
        // Exported from the start, so that "none lost" reads as 0.
        ::metrics::counter!("apikeyd_invalidations_lost_total").increment(0);
        Publisher {
            queue,
            waiting: Mutex::new(waiting),
            overflowed: AtomicBool::new(false),
            closing: watch::Sender::new(false),
        }
    }

    /// Queues a change without waiting.
    pub fn publish(&self, change: Invalidation) {
        if self.queue.try_send(change).is_err() {
            ::metrics::counter!("apikeyd_invalidations_lost_total").increment(1);
            if !self.overflowed.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    "the invalidation queue is full (Redis has not taken appends for a while); every replica will flush its key cache once it does"
                );
            }
        }
    }

    /// Changes queued and not yet appended.
    pub fn unpublished(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Appends queued changes until [`Publisher::close`] and an empty queue.
    pub async fn run(&self, stream: &dyn StreamAppender) {
        let mut waiting = self.waiting.lock().await;
        let mut closing = self.closing.subscribe();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if *closing.borrow_and_update() && waiting.is_empty() {
                return;
            }
            tokio::select! {
                received = waiting.recv_many(&mut batch, BATCH) => if received == 0 { return },
                _ = closing.changed() => continue,
            }
            if self.overflowed.swap(false, Ordering::AcqRel) {
                // Everything is evicted everywhere, which covers this batch.
                batch.clear();
                batch.push(Invalidation::All);
            }
            append_until_taken(stream, &batch).await;
            batch.clear();
        }
    }

    /// Asks [`Publisher::run`] to stop once the queue is empty.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }
}

async fn append_until_taken(stream: &dyn StreamAppender, batch: &[Invalidation]) {
    let mut backoff = RETRY_MIN;
    let mut failures = 0u32;
    loop {
        match stream.append(batch).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(failures, "cache invalidations appended after retries");
                }
                return;
            }
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        %error,
                        "cannot append cache invalidations; retrying until Redis takes them"
                    );
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::domain::KeyId;

    /// Fails its first `failures` appends, then records what it is given.
    struct FlakyStream {
        failures: AtomicU32,
        appended: std::sync::Mutex<Vec<Vec<Invalidation>>>,
    }

    impl FlakyStream {
        fn failing(failures: u32) -> Arc<FlakyStream> {
            Arc::new(FlakyStream {
                failures: AtomicU32::new(failures),
                appended: std::sync::Mutex::new(Vec::new()),
            })
        }

        fn appended(&self) -> Vec<Vec<Invalidation>> {
            self.appended.lock().unwrap().clone()
        }
    }

    #[tonic::async_trait]
    impl StreamAppender for FlakyStream {
        async fn append(&self, changes: &[Invalidation]) -> anyhow::Result<()> {
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                anyhow::bail!("Redis is away");
            }
            self.appended.lock().unwrap().push(changes.to_vec());
            Ok(())
        }
    }

    fn key(n: u8) -> Invalidation {
        Invalidation::Key(KeyId::parse(&format!("{n:016}")).unwrap())
    }

    fn run(publisher: &Arc<Publisher>, stream: &Arc<FlakyStream>) -> tokio::task::JoinHandle<()> {
        let (publisher, stream) = (publisher.clone(), stream.clone());
        tokio::spawn(async move { publisher.run(stream.as_ref()).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_append_is_retried_until_the_stream_takes_it() {
        let publisher = Arc::new(Publisher::new(16));
        let stream = FlakyStream::failing(20);
        publisher.publish(key(1));
        publisher.close();
        run(&publisher, &stream).await.unwrap();
        assert_eq!(stream.appended(), vec![vec![key(1)]]);
        assert_eq!(publisher.unpublished(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_turns_into_one_flush_for_every_replica() {
        let publisher = Arc::new(Publisher::new(2));
        let stream = FlakyStream::failing(0);
        for n in 1..=5 {
            publisher.publish(key(n));
        }
        publisher.publish(key(6));
        publisher.close();
        run(&publisher, &stream).await.unwrap();
        assert_eq!(
            stream.appended(),
            vec![vec![Invalidation::All]],
            "the dropped changes are covered by a flush"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_appended_in_order_in_batches() {
        let publisher = Arc::new(Publisher::new(256));
        let stream = FlakyStream::failing(0);
        let changes: Vec<_> = (0..100).map(key).collect();
        for change in &changes {
            publisher.publish(change.clone());
        }
        publisher.close();
        run(&publisher, &stream).await.unwrap();
        let appended = stream.appended();
        assert_eq!(appended.len(), 2, "{BATCH} to a batch");
        assert_eq!(appended.concat(), changes);
    }
}
