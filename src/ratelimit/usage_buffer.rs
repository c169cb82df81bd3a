//! Usage of validations that need no answer from Redis: no limit to check,
//! no quota to take (a key without limits, or a key refused before the
//! limits, such as a revoked one). Such a validation only adds to counters,
//! so it is gathered here and written in the background, one script per key
//! per flush: the caller pays no round trip, and Redis does one increment
//! per key and code instead of one per validation.
//!
//! What is gathered reaches Redis within the flush interval (and at
//! shutdown); a replica reading a key's usage flushes first, so it always
//! sees its own validations. During a Redis outage the batch is dropped, as
//! the fail-open policy drops usage that cannot be recorded.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use super::store::UsageRecord;
use super::usage::{RequestContext, Retention};
use crate::domain::ValidationCode;

/// Keys with usage waiting; past this, new usage is dropped (and counted)
/// until the next flush, so memory stays bounded whatever the traffic.
const MAX_PENDING_KEYS: usize = 100_000;

/// One key's validations since the last flush.
pub struct PendingUsage {
    pub retention: Retention,
    /// Validations by code.
    pub counts: BTreeMap<&'static str, u64>,
    /// The newest requests, oldest first, at most `retention.recent_requests`.
    pub recent: VecDeque<(RequestContext, &'static str, Instant)>,
}

#[derive(Default)]
pub struct UsageBuffer {
    /// foldhash: one lookup per decision sent to Redis (SipHash of a usage
    /// base cost some 800 instructions of a Validate's).
    pending: Mutex<HashMap<String, PendingUsage, foldhash::fast::RandomState>>,
}

impl UsageBuffer {
    /// Adds one validation of `record`'s key, under `code` (the record's own
    /// code, or the denial a decision turned it into).
    pub fn add(&self, record: &UsageRecord, code: ValidationCode) {
        let mut pending = self.pending.lock().expect("usage buffer lock poisoned");
        if !pending.contains_key(&record.base) {
            if pending.len() >= MAX_PENDING_KEYS {
                ::metrics::counter!("apikeyd_usage_dropped_total").increment(1);
                return;
            }
            pending.insert(
                record.base.clone(),
                PendingUsage {
                    retention: record.retention,
                    counts: BTreeMap::new(),
                    recent: VecDeque::new(),
                },
            );
        }
        let key = pending.get_mut(&record.base).expect("inserted above");
        let code = code.as_str();
        *key.counts.entry(code).or_default() += 1;
        if key.retention.recent_requests > 0 {
            let entry = if key.recent.len() == key.retention.recent_requests as usize {
                // The oldest entry's strings take the newest's text.
                let (mut context, _, _) = key.recent.pop_front().expect("the log is full");
                context.clone_from(&record.context);
                (context, code, Instant::now())
            } else {
                (record.context.clone(), code, Instant::now())
            };
            key.recent.push_back(entry);
        }
    }

    /// Everything gathered since the last call.
    pub fn take(&self) -> HashMap<String, PendingUsage, foldhash::fast::RandomState> {
        std::mem::take(&mut *self.pending.lock().expect("usage buffer lock poisoned"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(base: &str, code: ValidationCode, endpoint: &str) -> UsageRecord {
        UsageRecord {
            base: base.to_owned(),
            code,
            context: RequestContext::truncated(endpoint, "GET", "", ""),
            retention: Retention {
                hourly_secs: 3600,
                daily_secs: 86_400,
                recent_requests: 2,
            },
        }
    }

    #[test]
    fn counts_add_up_per_code_and_the_log_keeps_the_newest() {
        let buffer = UsageBuffer::default();
        for endpoint in ["/a", "/b", "/c"] {
            buffer.add(
                &record("k1", ValidationCode::Valid, endpoint),
                ValidationCode::Valid,
            );
        }
        buffer.add(
            &record("k1", ValidationCode::Revoked, "/d"),
            ValidationCode::Revoked,
        );

        let taken = buffer.take();
        let k1 = &taken["k1"];
        assert_eq!(k1.counts["valid"], 3);
        assert_eq!(k1.counts["revoked"], 1);
        let endpoints: Vec<_> = k1
            .recent
            .iter()
            .map(|(c, _, _)| c.endpoint.as_str())
            .collect();
        assert_eq!(endpoints, ["/c", "/d"]);
        assert!(buffer.take().is_empty(), "taking empties the buffer");
    }
}
