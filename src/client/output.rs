//! What the client commands print: aligned tables for people, the proto3
//! JSON of the response for scripts. Answers go to stdout, notes to stderr,
//! so `KEY=$(apikeyd keys create …)` captures the key alone.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::grpc::pb;

/// Columns aligned on the widest cell; the last column is not padded.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.len() == 1
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// `message` (of full protobuf name `full_name`) as pretty proto3 JSON.
pub fn json(full_name: &str, message: &impl prost::Message) -> String {
    serde_json::to_string_pretty(&crate::proto_json::to_json(full_name, message))
        .expect("JSON serialises")
}

/// The key list: one row per key, never a secret (listings have none).
pub fn key_table(keys: &[pb::ApiKey], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "OWNER",
        "PREFIX",
        "SCOPES",
        "ENV",
        "STATUS",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ]);
    for key in keys {
        table.row(vec![
            key.id.clone(),
            key.name.clone(),
            key.owner_id.clone(),
            key.prefix.clone(),
            key.scopes.join(","),
            environment(key.environment).to_owned(),
            status(key, now),
            time(key.created_at.as_ref(), "-"),
            time(key.expires_at.as_ref(), "never"),
            time(key.last_used_at.as_ref(), "never"),
        ]);
    }
    table
}

/// One key, field by field.
pub fn key_details(key: &pb::ApiKey, now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&["ID", &key.id]);
    let mut field = |name: &str, value: String| table.row(vec![name.to_owned(), value]);
    field("NAME", key.name.clone());
    field("OWNER", key.owner_id.clone());
    field("PREFIX", key.prefix.clone());
    field("STATUS", status(key, now));
    field("ENV", environment(key.environment).to_owned());
    field("SCOPES", key.scopes.join(" "));
    let mut metadata: Vec<String> = key
        .metadata
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    metadata.sort();
    field("METADATA", metadata.join(" "));
    field("LIMITS", limits(&key.tier, &key.rate_limits));
    field(
        "QUOTA",
        key.quota
            .as_ref()
            .map_or_else(|| "unlimited".to_owned(), quota),
    );
    field("CREATED", time(key.created_at.as_ref(), "-"));
    field("UPDATED", time(key.updated_at.as_ref(), "-"));
    field("EXPIRES", time(key.expires_at.as_ref(), "never"));
    field("LAST USED", time(key.last_used_at.as_ref(), "never"));
    field("REVOKED", time(key.revoked_at.as_ref(), "-"));
    table
}

/// A key's usage: one row per bucket with a column per outcome seen, then
/// its recent requests.
pub fn usage_tables(usage: &pb::GetKeyUsageResponse) -> (Table, Table) {
    let mut codes: Vec<i32> = usage
        .buckets
        .iter()
        .flat_map(|bucket| bucket.counts.iter().map(|count| count.code))
        .collect();
    codes.sort_unstable();
    codes.dedup();
    let code_names: Vec<String> = codes.iter().map(|&code| validation_code(code)).collect();
    let mut headers = vec!["START", "TOTAL"];
    headers.extend(code_names.iter().map(String::as_str));
    let mut buckets = Table::new(&headers);
    for bucket in &usage.buckets {
        let mut row = vec![
            time(bucket.start_time.as_ref(), "-"),
            bucket.total.to_string(),
        ];
        row.extend(codes.iter().map(|&code| {
            bucket
                .counts
                .iter()
                .find(|count| count.code == code)
                .map_or(0, |count| count.count)
                .to_string()
        }));
        buckets.row(row);
    }
    let mut recent = Table::new(&["TIME", "OUTCOME", "METHOD", "ENDPOINT", "IP", "USER AGENT"]);
    for request in &usage.recent_requests {
        recent.row(vec![
            time(request.time.as_ref(), "-"),
            validation_code(request.code),
            request.method.clone(),
            request.endpoint.clone(),
            request.ip.clone(),
            request.user_agent.clone(),
        ]);
    }
    (buckets, recent)
}

/// `VALIDATION_CODE_RATE_LIMITED` → `rate_limited`.
pub fn validation_code(code: i32) -> String {
    pb::ValidationCode::try_from(code).map_or_else(
        |_| format!("code {code}"),
        |code| {
            code.as_str_name()
                .trim_start_matches("VALIDATION_CODE_")
                .to_ascii_lowercase()
        },
    )
}

fn environment(raw: i32) -> &'static str {
    match pb::Environment::try_from(raw) {
        Ok(pb::Environment::Test) => "test",
        _ => "live",
    }
}

/// What a person needs first: can this key validate, and until when.
fn status(key: &pb::ApiKey, now: DateTime<Utc>) -> String {
    if let Some(revoked_at) = key.revoked_at.as_ref().and_then(to_time) {
        return if revoked_at > now {
            format!("rotating until {}", revoked_at.format("%Y-%m-%d %H:%M"))
        } else {
            "revoked".to_owned()
        };
    }
    if !key.enabled {
        return "disabled".to_owned();
    }
    if key
        .expires_at
        .as_ref()
        .and_then(to_time)
        .is_some_and(|at| at <= now)
    {
        return "expired".to_owned();
    }
    "active".to_owned()
}

fn limits(tier: &str, rate_limits: &[pb::RateLimit]) -> String {
    if rate_limits.is_empty() {
        return format!("tier {tier}");
    }
    rate_limits
        .iter()
        .map(|limit| {
            let window = limit.window.map_or(0, |w| w.seconds);
            let algorithm = pb::RateLimitAlgorithm::try_from(limit.algorithm)
                .map_or("", |a| a.as_str_name())
                .trim_start_matches("RATE_LIMIT_ALGORITHM_")
                .to_ascii_lowercase();
            format!("{}/{}s {algorithm}", limit.limit, window)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn quota(quota: &pb::UsageQuota) -> String {
    match pb::RefillInterval::try_from(quota.refill_interval) {
        Ok(pb::RefillInterval::Daily) => {
            format!(
                "{} left, refilled to {} daily",
                quota.remaining, quota.refill_amount
            )
        }
        Ok(pb::RefillInterval::Monthly) => format!(
            "{} left, refilled to {} monthly",
            quota.remaining, quota.refill_amount
        ),
        _ => format!("{} left", quota.remaining),
    }
}

fn to_time(at: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)
}

/// UTC to the minute, or `absent` when unset.
pub fn time(at: Option<&prost_types::Timestamp>, absent: &str) -> String {
    at.and_then(to_time).map_or_else(
        || absent.to_owned(),
        |at| at.format("%Y-%m-%d %H:%M").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timestamp(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: 0,
        })
    }

    #[test]
    fn tables_align_columns_on_the_widest_cell() {
        let mut table = Table::new(&["ID", "NAME"]);
        table.row(vec!["a".to_owned(), "first".to_owned()]);
        table.row(vec!["longer".to_owned(), "x".to_owned()]);

        assert_eq!(
            table.to_string(),
            "ID      NAME\na       first\nlonger  x\n"
        );
    }

    #[test]
    fn status_says_whether_the_key_can_validate() {
        let now = Utc::now();
        let active = pb::ApiKey {
            enabled: true,
            ..Default::default()
        };
        let rotating = pb::ApiKey {
            revoked_at: timestamp(now + chrono::Duration::hours(1)),
            ..active.clone()
        };
        let revoked = pb::ApiKey {
            revoked_at: timestamp(now - chrono::Duration::hours(1)),
            ..active.clone()
        };
        let expired = pb::ApiKey {
            expires_at: timestamp(now - chrono::Duration::hours(1)),
            ..active.clone()
        };
        let disabled = pb::ApiKey {
            enabled: false,
            ..Default::default()
        };

        assert_eq!(status(&active, now), "active");
        assert!(status(&rotating, now).starts_with("rotating until"));
        assert_eq!(status(&revoked, now), "revoked");
        assert_eq!(status(&expired, now), "expired");
        assert_eq!(status(&disabled, now), "disabled");
    }

    #[test]
    fn usage_has_a_column_per_outcome_seen() {
        let usage = pb::GetKeyUsageResponse {
            buckets: vec![pb::UsageBucket {
                start_time: timestamp(DateTime::from_timestamp(0, 0).unwrap()),
                total: 3,
                counts: vec![
                    pb::UsageCount {
                        code: pb::ValidationCode::RateLimited as i32,
                        count: 1,
                    },
                    pb::UsageCount {
                        code: pb::ValidationCode::Valid as i32,
                        count: 2,
                    },
                ],
            }],
            recent_requests: vec![],
        };

        let (buckets, recent) = usage_tables(&usage);

        assert_eq!(
            buckets.to_string(),
            "START             TOTAL  valid  rate_limited\n1970-01-01 00:00  3      2      1\n"
        );
        assert!(recent.is_empty());
    }
}
