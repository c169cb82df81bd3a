//! The invalidation stream as the bus sees it, whatever holds it: entries
//! with increasing ids, appended by publishers and read in order by each
//! replica's follower. [`super::redis_stream`] is the Redis implementation;
//! unit tests use fakes.

use std::fmt;
use std::time::Duration;

use super::Invalidation;

/// A stream entry's id, `<ms>-<seq>`: each appended entry gets a larger one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    ms: u64,
    seq: u64,
}

impl EntryId {
    #[cfg(test)]
    pub fn new(ms: u64, seq: u64) -> EntryId {
        EntryId { ms, seq }
    }

    pub fn parse(text: &str) -> Option<EntryId> {
        let (ms, seq) = text.split_once('-')?;
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// What the stream says about itself, read right after the entries it
/// returned: enough to tell whether a reader has seen every entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamState {
    /// The id of the newest entry ever appended (trimmed or not).
    pub last_generated: EntryId,
    /// How many entries were ever appended; trimming does not lower it, a
    /// stream lost with its server starts again from zero.
    pub entries_added: u64,
}

/// One appended entry: the changes of one publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub changes: Vec<Invalidation>,
}

/// What one read returns: the entries after the id asked for (oldest
/// first, at most a page), then the stream's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub entries: Vec<Entry>,
    pub state: StreamState,
}

/// Opens readers on the stream (one per connection).
#[tonic::async_trait]
pub trait StreamSource: Send + Sync {
    async fn open(&self) -> anyhow::Result<Box<dyn StreamReader>>;
}

/// One connection's reads.
#[tonic::async_trait]
pub trait StreamReader: Send {
    /// The stream's state, without entries.
    async fn state(&mut self) -> anyhow::Result<StreamState>;

    /// Entries after `last`, waiting up to `block` for the first one.
    async fn read_after(&mut self, last: EntryId, block: Duration) -> anyhow::Result<Batch>;
}

/// Appends changes to the stream; a failed append may be tried again.
#[tonic::async_trait]
pub trait StreamAppender: Send + Sync {
    async fn append(&self, changes: &[Invalidation]) -> anyhow::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_parse_print_and_order_like_redis() {
        let id = EntryId::parse("1700000000000-3").unwrap();
        assert_eq!(id.to_string(), "1700000000000-3");
        assert!(
            EntryId::parse("1700000000000-3").unwrap()
                < EntryId::parse("1700000000000-10").unwrap()
        );
        assert!(EntryId::parse("9-99").unwrap() < EntryId::parse("10-0").unwrap());
        assert_eq!(EntryId::parse("0-0"), Some(EntryId::default()));
        assert_eq!(EntryId::parse("12"), None);
        assert_eq!(EntryId::parse("a-1"), None);
    }
}
