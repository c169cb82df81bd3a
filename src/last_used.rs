//! `last_used_at`, recorded in memory on the hot path and written to the
//! database in batches: at most one write per key per flush interval, never
//! one per Validate.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::domain::KeyId;
use crate::error::Result;
use crate::store::KeyStore;
use crate::telemetry::metrics::observe_db;

#[derive(Default)]
pub struct LastUsedTracker {
    /// The newest use of each key since the last flush.
    /// foldhash: one lookup per valid Validate; ids are ours, not a caller's.
    pending: Mutex<HashMap<KeyId, DateTime<Utc>, foldhash::fast::RandomState>>,
}

impl LastUsedTracker {
    pub fn record(&self, id: &KeyId, at: DateTime<Utc>) {
        let mut pending = self.pending.lock().expect("tracker lock poisoned");
        match pending.get_mut(id) {
            Some(newest) if *newest >= at => {}
            Some(newest) => *newest = at,
            None => {
                pending.insert(id.clone(), at);
            }
        }
    }

    /// Writes what has been recorded since the last flush. On failure the
    /// batch is put back, so a database blip delays the write but loses nothing.
    pub async fn flush(&self, store: &KeyStore) -> Result<usize> {
        let batch: Vec<(KeyId, DateTime<Utc>)> = {
            let mut pending = self.pending.lock().expect("tracker lock poisoned");
            pending.drain().collect()
        };
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_use_of_a_key_is_kept() {
        let tracker = LastUsedTracker::default();
        let id = KeyId::parse("0123456789abcdef").unwrap();
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(1);
        tracker.record(&id, t1);
        tracker.record(&id, t0);
        let pending = tracker.pending.lock().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[&id], t1);
    }
}
