//! A replica's follower: reads the stream in order from where it left off,
//! hands every change to the cache, and tells the cache whether it may
//! trust its entries.
//!
//! It trusts them only once it has read up to the stream's newest entry
//! and proved that none was lost on the way: the stream counts every entry
//! ever appended, so after reading up to the newest one the follower's
//! count must match. A reconnect replays what was missed; a real gap (the
//! stream trimmed past the follower, or lost with its server) flushes the
//! cache. Trust ends when a read does not answer within the heartbeat's
//! deadline (an idle stream still answers every `block`), when a read
//! fails, or when the rate limiter finds Redis unreachable.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::stream::{Batch, EntryId, StreamReader, StreamSource, StreamState};
use super::{Invalidation, InvalidationSink};

/// The first wait before reconnecting; it doubles up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// How often an idle stream answers, and how long past that silence means
/// the link is dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The longest a read waits for a new entry before answering empty.
    pub block: Duration,
    /// How long past `block` a read may take before the link counts as dead.
    pub grace: Duration,
}

impl Heartbeat {
    /// The longest a read may take: past it, the follower distrusts the
    /// cache and reconnects. This bounds how long a dead link goes unseen.
    pub fn deadline(&self) -> Duration {
        self.block + self.grace
    }
}

/// Where the follower is in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    /// The newest entry applied.
    last: EntryId,
    /// The stream's `entries_added` once it is at `last`, if nothing was lost.
    expected_added: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Continuity {
    /// Every entry up to the stream's newest has been applied.
    CaughtUp,
    /// More entries wait to be read.
    Behind,
    /// Entries were lost before they were read.
    Gap,
}

impl Position {
    fn at(state: StreamState) -> Position {
        Position {
            last: state.last_generated,
            expected_added: state.entries_added,
        }
    }

    /// Moves past a batch's entries and says whether the stream is whole.
    fn advance(&mut self, batch: &Batch) -> Continuity {
        for entry in &batch.entries {
            self.last = entry.id;
            self.expected_added += 1;
        }
        let state = batch.state;
        match state.last_generated.cmp(&self.last) {
            // The stream is older than what was read from it: a new stream.
            Ordering::Less => Continuity::Gap,
            Ordering::Equal if state.entries_added == self.expected_added => Continuity::CaughtUp,
            Ordering::Equal => Continuity::Gap,
            // A read that found nothing cannot be behind newer entries
            // unless they are gone (trimmed before it read them).
            Ordering::Greater if batch.entries.is_empty() => Continuity::Gap,
            Ordering::Greater => Continuity::Behind,
        }
    }
}

pub struct Follower {
    sink: Arc<dyn InvalidationSink>,
    heartbeat: Heartbeat,
    /// The rate limiter's view of Redis: when it finds Redis unreachable,
    /// the cache stops trusting before a read has to time out.
    reachable: watch::Receiver<bool>,
    /// Whether `reachable` can still change (its sender may be gone).
    reachable_open: bool,
    /// `None` until the first connection: nothing has been read yet.
    position: Option<Position>,
    /// True from a reconnect until the follower has caught up again.
    catching_up: bool,
    /// What the cache was last told.
    trusted: bool,
}

impl Follower {
    pub fn new(
        sink: Arc<dyn InvalidationSink>,
        heartbeat: Heartbeat,
        reachable: watch::Receiver<bool>,
    ) -> Follower {
        sink.set_trusted(false);
        ::metrics::gauge!("apikeyd_invalidations_flowing").set(0.0);
        Follower {
            sink,
            heartbeat,
            reachable,
            reachable_open: true,
            position: None,
            catching_up: false,
            trusted: false,
        }
    }

    /// Follows the stream for as long as the process runs, reconnecting
    /// after any failure.
    pub async fn run(mut self, source: &dyn StreamSource) {
        let mut backoff = RECONNECT_MIN;
        loop {
            match tokio::time::timeout(self.heartbeat.deadline(), source.open()).await {
                Ok(Ok(reader)) => {
                    if self.follow(reader).await {
                        backoff = RECONNECT_MIN;
                    }
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "cannot reach the invalidation stream");
                }
                Err(_) => tracing::debug!("connecting to the invalidation stream timed out"),
            }
            self.distrust("the invalidation stream is unreachable");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    /// Reads on one connection until it fails; true if it read anything.
    async fn follow(&mut self, mut reader: Box<dyn StreamReader>) -> bool {
        let deadline = self.heartbeat.deadline();
        let mut position = match self.position {
            Some(position) => {
                self.catching_up = true;
                position
            }
            None => match tokio::time::timeout(deadline, reader.state()).await {
                Ok(Ok(state)) => {
                    // What was cached before the follower knew where the
                    // stream stood may predate a change it will never read.
                    self.flush("start");
                    let position = Position::at(state);
                    self.position = Some(position);
                    self.caught_up();
                    position
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot read the invalidation stream");
                    return false;
                }
                Err(_) => return false,
            },
        };
        let mut progressed = false;
        loop {
            let read = tokio::time::timeout(
                deadline,
                reader.read_after(position.last, self.heartbeat.block),
            );
            tokio::pin!(read);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut read => break outcome,
                    changed = self.reachable.changed(), if self.reachable_open => match changed {
                        Ok(()) if !*self.reachable.borrow_and_update() => {
                            self.distrust("the rate limiter finds Redis unreachable");
                        }
                        Ok(()) => {}
                        Err(_) => self.reachable_open = false,
                    },
                }
            };
            let batch = match outcome {
                Ok(Ok(batch)) => batch,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "reading the invalidation stream failed; reconnecting");
                    return progressed;
                }
                Err(_) => {
                    tracing::warn!(
                        silent_ms = deadline.as_millis() as u64,
                        "the invalidation stream did not answer within its heartbeat; reconnecting"
                    );
                    return progressed;
                }
            };
            progressed = true;
            self.apply(&batch);
            match position.advance(&batch) {
                Continuity::CaughtUp => self.caught_up(),
                Continuity::Behind => {}
                Continuity::Gap => {
                    tracing::warn!(
                        "invalidations were lost before this replica read them (the stream was trimmed past it, or lost with its server); flushing the key cache"
                    );
                    self.flush("gap");
                    position = Position::at(batch.state);
                    self.caught_up();
                }
            }
            self.position = Some(position);
        }
    }

    fn apply(&mut self, batch: &Batch) {
        let mut changes = 0;
        for change in batch.entries.iter().flat_map(|entry| &entry.changes) {
            if *change == Invalidation::All {
                ::metrics::counter!("apikeyd_key_cache_flushes_total", "reason" => "overflow")
                    .increment(1);
            }
            self.sink.apply(change);
            changes += 1;
        }
        if self.catching_up {
            ::metrics::counter!("apikeyd_invalidations_replayed_total").increment(changes);
        }
    }

    fn flush(&self, reason: &'static str) {
        ::metrics::counter!("apikeyd_key_cache_flushes_total", "reason" => reason).increment(1);
        self.sink.apply(&Invalidation::All);
    }

    /// Every entry has been applied: the cache may trust its entries, unless
    /// the limiter says Redis is unreachable.
    fn caught_up(&mut self) {
        self.catching_up = false;
        if !self.trusted && *self.reachable.borrow() {
            self.trusted = true;
            self.sink.set_trusted(true);
            ::metrics::gauge!("apikeyd_invalidations_flowing").set(1.0);
            tracing::info!(
                "cache invalidations are flowing; cached keys are trusted up to the TTL backstop"
            );
        }
    }

    fn distrust(&mut self, reason: &'static str) {
        if self.trusted {
            self.trusted = false;
            self.sink.set_trusted(false);
            ::metrics::gauge!("apikeyd_invalidations_flowing").set(0.0);
            tracing::warn!(
                reason,
                "cache invalidations may be missed; cached keys are trusted for the degraded TTL only"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::super::stream::Entry;
    use super::*;
    use crate::domain::KeyId;

    const HEARTBEAT: Heartbeat = Heartbeat {
        block: Duration::from_secs(1),
        grace: Duration::from_secs(1),
    };

    /// How the fake stream's server behaves.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Link {
        Up,
        /// Connections are refused and reads fail.
        Down,
        /// Reads never answer (a paused server, a dead link).
        Silent,
    }

    struct FakeServer {
        entries: Vec<Entry>,
        state: StreamState,
        link: Link,
    }

    /// An in-memory stream with Redis's semantics for what the follower uses.
    #[derive(Clone)]
    struct FakeStream {
        server: Arc<Mutex<FakeServer>>,
        appended: Arc<tokio::sync::Notify>,
    }

    impl FakeStream {
        fn new() -> FakeStream {
            FakeStream {
                server: Arc::new(Mutex::new(FakeServer {
                    entries: Vec::new(),
                    state: StreamState::default(),
                    link: Link::Up,
                })),
                appended: Arc::new(tokio::sync::Notify::new()),
            }
        }

        fn append(&self, change: Invalidation) {
            let mut server = self.server.lock().unwrap();
            let id = EntryId::new(server.state.entries_added + 100, 0);
            server.entries.push(Entry {
                id,
                changes: vec![change],
            });
            server.state.last_generated = id;
            server.state.entries_added += 1;
            drop(server);
            self.appended.notify_waiters();
        }

        /// Drops the oldest entries, as `MAXLEN` does.
        fn trim_to(&self, kept: usize) {
            let mut server = self.server.lock().unwrap();
            let excess = server.entries.len().saturating_sub(kept);
            server.entries.drain(..excess);
        }

        /// The server restarts without its data.
        fn lose_everything(&self) {
            let mut server = self.server.lock().unwrap();
            server.entries.clear();
            server.state = StreamState::default();
        }

        fn set_link(&self, link: Link) {
            self.server.lock().unwrap().link = link;
            self.appended.notify_waiters();
        }

        fn link(&self) -> Link {
            self.server.lock().unwrap().link
        }
    }

    #[tonic::async_trait]
    impl StreamSource for FakeStream {
        async fn open(&self) -> anyhow::Result<Box<dyn StreamReader>> {
            match self.link() {
                Link::Down => anyhow::bail!("connection refused"),
                _ => Ok(Box::new(self.clone())),
            }
        }
    }

    #[tonic::async_trait]
    impl StreamReader for FakeStream {
        async fn state(&mut self) -> anyhow::Result<StreamState> {
            Ok(self
                .read_after(EntryId::new(u64::MAX, u64::MAX), Duration::ZERO)
                .await?
                .state)
        }

        async fn read_after(&mut self, last: EntryId, block: Duration) -> anyhow::Result<Batch> {
            let until = Instant::now() + block;
            loop {
                let appended = self.appended.notified();
                {
                    let server = self.server.lock().unwrap();
                    match server.link {
                        Link::Down => anyhow::bail!("connection reset"),
                        Link::Silent => {}
                        Link::Up => {
                            let entries: Vec<Entry> = server
                                .entries
                                .iter()
                                .filter(|e| e.id > last)
                                .cloned()
                                .collect();
                            if !entries.is_empty() || Instant::now() >= until {
                                return Ok(Batch {
                                    entries,
                                    state: server.state,
                                });
                            }
                        }
                    }
                }
                if self.link() == Link::Silent {
                    std::future::pending::<()>().await;
                }
                let _ = tokio::time::timeout_at(until, appended).await;
            }
        }
    }

    /// Records what the follower hands the cache.
    struct FakeCache {
        applied: Mutex<Vec<Invalidation>>,
        trusted: watch::Sender<bool>,
    }

    impl InvalidationSink for FakeCache {
        fn apply(&self, change: &Invalidation) {
            self.applied.lock().unwrap().push(change.clone());
        }

        fn set_trusted(&self, trusted: bool) {
            self.trusted.send_replace(trusted);
        }
    }

    impl FakeCache {
        fn applied(&self) -> Vec<Invalidation> {
            self.applied.lock().unwrap().clone()
        }

        async fn until_trusted(&self, trusted: bool) {
            self.trusted
                .subscribe()
                .wait_for(|t| *t == trusted)
                .await
                .unwrap();
        }
    }

    fn key(n: u8) -> Invalidation {
        Invalidation::Key(KeyId::parse(&format!("{n:016}")).unwrap())
    }

    /// A follower on `stream` in the background; also returns the limiter's signal.
    fn follow(stream: &FakeStream) -> (Arc<FakeCache>, watch::Sender<bool>) {
        let cache = Arc::new(FakeCache {
            applied: Mutex::new(Vec::new()),
            trusted: watch::Sender::new(false),
        });
        let reachable = watch::Sender::new(true);
        let follower = Follower::new(cache.clone(), HEARTBEAT, reachable.subscribe());
        let stream = stream.clone();
        tokio::spawn(async move { follower.run(&stream).await });
        (cache, reachable)
    }

    /// Lets the follower do everything it can without time passing.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_applied_in_order_and_the_start_flushes_once() {
        let stream = FakeStream::new();
        stream.append(key(1));
        let (cache, _) = follow(&stream);
        cache.until_trusted(true).await;
        stream.append(key(2));
        stream.append(key(3));
        settle().await;
        assert_eq!(
            cache.applied(),
            vec![Invalidation::All, key(2), key(3)],
            "what came before the start is covered by its flush"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_is_distrusted_within_the_heartbeat_deadline() {
        let stream = FakeStream::new();
        let (cache, _) = follow(&stream);
        cache.until_trusted(true).await;
        let silenced = Instant::now();
        stream.set_link(Link::Silent);
        cache.until_trusted(false).await;
        let noticed = silenced.elapsed();
        assert!(noticed <= HEARTBEAT.deadline(), "noticed after {noticed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_reconnect_missed_changes_are_replayed_without_a_flush() {
        let stream = FakeStream::new();
        let (cache, _) = follow(&stream);
        cache.until_trusted(true).await;
        stream.set_link(Link::Down);
        cache.until_trusted(false).await;
        stream.append(key(1));
        stream.append(key(2));
        stream.set_link(Link::Up);
        cache.until_trusted(true).await;
        assert_eq!(cache.applied(), vec![Invalidation::All, key(1), key(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_trimmed_before_they_were_read_flush_the_cache() {
        let stream = FakeStream::new();
        let (cache, _) = follow(&stream);
        cache.until_trusted(true).await;
        stream.set_link(Link::Down);
        cache.until_trusted(false).await;
        for n in 1..=3 {
            stream.append(key(n));
        }
        stream.trim_to(1);
        stream.set_link(Link::Up);
        cache.until_trusted(true).await;
        assert_eq!(
            cache.applied(),
            vec![Invalidation::All, key(3), Invalidation::All]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_lost_with_its_server_flushes_the_cache() {
        let stream = FakeStream::new();
        let (cache, _) = follow(&stream);
        cache.until_trusted(true).await;
        stream.append(key(1));
        settle().await;
        stream.set_link(Link::Down);
        cache.until_trusted(false).await;
        stream.lose_everything();
        stream.set_link(Link::Up);
        cache.until_trusted(true).await;
        assert_eq!(
            cache.applied(),
            vec![Invalidation::All, key(1), Invalidation::All]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_finding_redis_unreachable_distrusts_at_once() {
        let stream = FakeStream::new();
        let (cache, reachable) = follow(&stream);
        cache.until_trusted(true).await;
        let signalled = Instant::now();
        reachable.send_replace(false);
        cache.until_trusted(false).await;
        assert_eq!(signalled.elapsed(), Duration::ZERO);
        reachable.send_replace(true);
        cache.until_trusted(true).await;
        assert!(
            signalled.elapsed() <= HEARTBEAT.block,
            "trusted again at the next read"
        );
    }

    #[test]
    fn a_position_tells_caught_up_behind_and_gaps_apart() {
        let entry = |n| Entry {
            id: EntryId::new(n, 0),
            changes: Vec::new(),
        };
        let state = |n, added| StreamState {
            last_generated: EntryId::new(n, 0),
            entries_added: added,
        };
        let batch = |entries: Vec<Entry>, state| Batch { entries, state };
        let mut position = Position::at(state(5, 5));
        assert_eq!(
            position.advance(&batch(vec![entry(6), entry(7)], state(7, 7))),
            Continuity::CaughtUp
        );
        assert_eq!(
            position.advance(&batch(vec![entry(8)], state(9, 9))),
            Continuity::Behind
        );
        assert_eq!(
            position.advance(&batch(vec![entry(9)], state(9, 9))),
            Continuity::CaughtUp
        );
        assert_eq!(
            Position::at(state(9, 9)).advance(&batch(vec![entry(12)], state(12, 12))),
            Continuity::Gap,
            "10 and 11 were trimmed"
        );
        assert_eq!(
            Position::at(state(9, 9)).advance(&batch(vec![], state(12, 12))),
            Continuity::Gap,
            "everything after 9 was trimmed"
        );
        assert_eq!(
            Position::at(state(9, 9)).advance(&batch(vec![], state(0, 0))),
            Continuity::Gap,
            "the stream is gone"
        );
    }
}
