//! Usage records: what a `Validate` leaves behind (a count per hour and per
//! day by validation code, and an entry in the key's bounded log of recent
//! requests), and what `GetKeyUsage` reads back.

use crate::domain::ValidationCode;

/// Longest recorded endpoint and user agent, in characters.
pub const MAX_ENDPOINT_CHARS: usize = 256;
pub const MAX_USER_AGENT_CHARS: usize = 256;
pub const MAX_METHOD_CHARS: usize = 16;
pub const MAX_IP_CHARS: usize = 64;
/// The most buckets one `GetKeyUsage` returns.
pub const MAX_BUCKETS: i64 = 1_000;

/// The request a caller authenticated, as recorded: over-long strings are
/// truncated rather than refused, because usage is a record, not a gate.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    pub endpoint: String,
    pub method: String,
    pub ip: String,
    pub user_agent: String,
}

/// `clone_from` reuses the strings' buffers: a recent-requests log that is
/// full overwrites its oldest entry on every call, with no allocation.
impl Clone for RequestContext {
    fn clone(&self) -> Self {
        RequestContext {
            endpoint: self.endpoint.clone(),
            method: self.method.clone(),
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.endpoint.clone_from(&source.endpoint);
        self.method.clone_from(&source.method);
        self.ip.clone_from(&source.ip);
        self.user_agent.clone_from(&source.user_agent);
    }
}

impl RequestContext {
    pub fn truncated(endpoint: &str, method: &str, ip: &str, user_agent: &str) -> RequestContext {
        RequestContext {
            endpoint: truncate(endpoint, MAX_ENDPOINT_CHARS),
            method: truncate(method, MAX_METHOD_CHARS),
            ip: truncate(ip, MAX_IP_CHARS),
            user_agent: truncate(user_agent, MAX_USER_AGENT_CHARS),
        }
    }
}

fn truncate(raw: &str, max_chars: usize) -> String {
    match raw.char_indices().nth(max_chars) {
        Some((end, _)) => raw[..end].to_owned(),
        None => raw.to_owned(),
    }
}

/// Bucket size of a usage query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    Hour,
    Day,
}

impl Granularity {
    pub fn seconds(self) -> i64 {
        match self {
            Granularity::Hour => 3_600,
            Granularity::Day => 86_400,
        }
    }

    /// The letter of the bucket keys in storage.
    pub fn code(self) -> &'static str {
        match self {
            Granularity::Hour => "h",
            Granularity::Day => "d",
        }
    }
}

/// Validations in one bucket, by code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageBucket {
    /// Seconds since the epoch at the bucket's start.
    pub start_secs: i64,
    pub counts: Vec<(ValidationCode, u64)>,
}

/// One entry of a key's recent-requests log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentRequest {
    pub context: RequestContext,
    pub code: ValidationCode,
    /// Milliseconds since the epoch, by the limiter's clock.
    pub at_ms: i64,
}

/// What `GetKeyUsage` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyUsage {
    pub buckets: Vec<UsageBucket>,
    pub recent: Vec<RecentRequest>,
}

/// How long usage is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub hourly_secs: i64,
    pub daily_secs: i64,
    /// Entries kept in each key's recent-requests log.
    pub recent_requests: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_context_strings_are_cut_at_a_character_boundary() {
        let context = RequestContext::truncated(&"é".repeat(300), "GET", "::1", "curl");
        assert_eq!(context.endpoint.chars().count(), MAX_ENDPOINT_CHARS);
        assert_eq!(context.method, "GET");
    }
}
