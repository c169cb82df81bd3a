//! Usage a key gathered in another store before it was imported: written
//! into the same counters and log a `Validate` leaves, at the hours and days
//! the requests happened, keeping only what the retention still covers.

use super::usage::{Granularity, RecentRequest, RequestContext, Retention};
use crate::domain::ValidationCode;
use crate::domain::import::UsageHistory;

/// One counter to add to: bucket `index` of `granularity`, expiring (as an
/// epoch second) when the retention would have dropped it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PastCount {
    pub granularity: Granularity,
    pub index: i64,
    pub code: ValidationCode,
    pub count: u64,
    pub expires_at_secs: i64,
}

/// What an imported key's history adds to the usage store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedUsage {
    pub counts: Vec<PastCount>,
    /// Newest first, at most the log's length.
    pub recent: Vec<RecentRequest>,
    /// The log's length, and when the log expires (as an epoch second):
    /// the daily retention after its newest entry.
    pub log_length: u32,
    pub log_expires_at_secs: i64,
}

impl ImportedUsage {
    /// The counters and log entries of `history` that are still within
    /// `retention` at `now_secs`.
    pub fn of(history: &UsageHistory, retention: Retention, now_secs: i64) -> ImportedUsage {
        let hourly = history.hourly.iter().map(|(hour, code, count)| {
            (
                Granularity::Hour,
                *hour,
                *code,
                *count,
                retention.hourly_secs,
            )
        });
        let daily = history
            .daily()
            .into_iter()
            .map(|(day, code, count)| (Granularity::Day, day, code, count, retention.daily_secs));
        let counts = hourly
            .chain(daily)
            .filter_map(|(granularity, index, code, count, kept)| {
                let expires_at_secs = (index + 1) * granularity.seconds() + kept;
                (expires_at_secs > now_secs).then_some(PastCount {
                    granularity,
                    index,
                    code,
                    count,
                    expires_at_secs,
                })
            })
            .collect();
        let oldest_kept_ms = (now_secs - retention.daily_secs) * 1000;
        let recent = history
            .recent
            .iter()
            .map(|event| RecentRequest {
                context: RequestContext::truncated(
                    &event.endpoint,
                    &event.method,
                    &event.ip,
                    &event.user_agent,
                ),
                code: event.code,
                at_ms: event.at.timestamp_millis(),
            })
            .filter(|request| request.at_ms > oldest_kept_ms)
            .take(retention.recent_requests as usize)
            .collect::<Vec<_>>();
        let log_expires_at_secs = recent.first().map_or(0, |newest| {
            newest.at_ms.div_euclid(1000) + retention.daily_secs
        });
        ImportedUsage {
            counts,
            recent,
            log_length: retention.recent_requests,
            log_expires_at_secs,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.recent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::domain::import::UsageEvent;

    const RETENTION: Retention = Retention {
        hourly_secs: 48 * 3600,
        daily_secs: 90 * 86_400,
        recent_requests: 2,
    };

    fn event(at_secs: i64) -> UsageEvent {
        UsageEvent {
            at: DateTime::from_timestamp(at_secs, 0).unwrap(),
            code: ValidationCode::Valid,
            endpoint: "/api/v1/posts".into(),
            method: "GET".into(),
            ip: String::new(),
            user_agent: String::new(),
        }
    }

    #[test]
    fn only_what_the_retention_still_covers_is_written() {
        let now = 1_000 * 86_400;
        let this_hour = now / 3600;
        let history = UsageHistory {
            hourly: vec![
                (this_hour, ValidationCode::Valid, 3),
                (this_hour - 72, ValidationCode::Valid, 2),
                (this_hour - 24 * 100, ValidationCode::Valid, 9),
            ],
            recent: vec![event(now - 10), event(now - 20), event(now - 30)],
        };

        let usage = ImportedUsage::of(&history, RETENTION, now);

        let kept: Vec<_> = usage
            .counts
            .iter()
            .map(|c| (c.granularity, c.index, c.count))
            .collect();
        assert_eq!(
            kept,
            vec![
                (Granularity::Hour, this_hour, 3),
                (Granularity::Day, now / 86_400 - 3, 2),
                (Granularity::Day, now / 86_400, 3),
            ],
            "an hour 72 h old is past the hourly retention, a day 100 days old past the daily"
        );
        assert_eq!(
            usage.counts[0].expires_at_secs,
            (this_hour + 1) * 3600 + 48 * 3600
        );
        assert_eq!(usage.recent.len(), 2, "the log keeps its length");
        assert_eq!(usage.recent[0].at_ms, (now - 10) * 1000, "newest first");
        assert_eq!(usage.log_expires_at_secs, now - 10 + 90 * 86_400);
    }
}
