//! `last_used_at`, recorded in memory on the hot path and written to the
//! database in batches: at most one write per key per flush interval, never
//! one per Validate.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::domain::KeyId;
use crate::error::Result;
use crate::per_thread::PerThread;
use crate::store::KeyStore;
use crate::telemetry::metrics::observe_db;

/// The newest use of each key since the last flush.
/// foldhash: one lookup per valid Validate; ids are ours, not a caller's.
type Pending = HashMap<KeyId, DateTime<Utc>, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct LastUsedTracker {
    /// One map per thread, so that the cores validating one busy key do not
    /// contend for one lock; a flush merges them.
    pending: PerThread<Mutex<Pending>>,
}

impl LastUsedTracker {
    pub fn record(&self, id: &KeyId, at: DateTime<Utc>) {
        let mut pending = self.pending.mine().lock().expect("tracker lock poisoned");
        newest(&mut pending, id, at);
    }

    /// Writes what has been recorded since the last flush. On failure the
    /// batch is put back, so a database blip delays the write but loses nothing.
    pub async fn flush(&self, store: &KeyStore) -> Result<usize> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(0);
        }
        if let Err(e) = observe_db("record_last_used", store.record_last_used(&batch)).await {
            for (id, at) in &batch {
                self.record(id, *at);
            }
            return Err(e);
        }
        Ok(batch.len())
    }

    /// Every thread's uses since the last take, the newest of each key.
    fn take(&self) -> Vec<(KeyId, DateTime<Utc>)> {
        let mut merged = Pending::default();
        for pending in self.pending.all() {
            // Taken whole, not drained: a drained map keeps its capacity,
            // and after a burst of distinct keys every thread's would hold
            // megabytes until the process ends.
            let taken = std::mem::take(&mut *pending.lock().expect("tracker lock poisoned"));
            for (id, at) in taken {
                newest(&mut merged, &id, at);
            }
        }
        merged.into_iter().collect()
    }
}

/// Keeps `at` for `id` unless a newer use is there.
fn newest(pending: &mut Pending, id: &KeyId, at: DateTime<Utc>) {
    match pending.get_mut(id) {
        Some(newest) if *newest >= at => {}
        Some(newest) => *newest = at,
        None => {
            pending.insert(id.clone(), at);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn only_the_newest_use_of_a_key_is_kept_whichever_thread_saw_it() {
        let tracker = Arc::new(LastUsedTracker::default());
        let id = KeyId::parse("0123456789abcdef").unwrap();
        let other = KeyId::parse("fedcba9876543210").unwrap();
        let t0 = Utc::now();
        let at = move |secs| t0 + chrono::Duration::seconds(secs);
        tracker.record(&id, at(1));
        tracker.record(&id, at(0));
        let elsewhere = {
            let (tracker, id, other) = (tracker.clone(), id.clone(), other.clone());
            std::thread::spawn(move || {
                tracker.record(&id, at(2));
                tracker.record(&other, at(0));
            })
        };
        elsewhere.join().unwrap();

        let mut taken = tracker.take();
        taken.sort();
        let mut expected = vec![(id, at(2)), (other, at(0))];
        expected.sort();
        assert_eq!(taken, expected);
        assert!(
            tracker.take().is_empty(),
            "a take empties every thread's map"
        );
    }

    #[test]
    fn a_take_hands_back_the_memory_of_a_burst() {
        let tracker = LastUsedTracker::default();
        let ids: Vec<KeyId> = (0..10_000)
            .map(|n| KeyId::parse(&format!("{n:016}")).unwrap())
            .collect();
        ids.iter().for_each(|id| tracker.record(id, Utc::now()));
        assert_eq!(tracker.take().len(), ids.len());
        assert!(
            tracker
                .pending
                .all()
                .all(|pending| pending.lock().unwrap().capacity() == 0),
            "no map keeps room for the burst's keys"
        );
    }
}
