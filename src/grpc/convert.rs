//! Conversions between the protobuf messages and the domain types.

use chrono::{DateTime, TimeZone, Utc};

use super::pb;
use crate::domain::limit::parse_limit_list;
use crate::domain::{Algorithm, Limit, LimitSource, Quota, RefillInterval, Tiers};
use crate::domain::{ApiKey, Environment, KeyId, RootKey, ValidationCode};
use crate::error::{Error, Result};
use crate::ratelimit::LimitStatus;
use crate::store::ListCursor;

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

pub fn api_key(key: ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: key.id.to_string(),
        owner_id: key.owner_id,
        name: key.name,
        prefix: key.prefix,
        scopes: key.scopes.to_strings(),
        environment: environment(key.environment) as i32,
        metadata: key.metadata.into_iter().collect(),
        enabled: key.enabled,
        created_at: Some(timestamp(key.created_at)),
        updated_at: Some(timestamp(key.updated_at)),
        expires_at: key.expires_at.map(timestamp),
        last_used_at: key.last_used_at.map(timestamp),
        revoked_at: key.revoked_at.map(timestamp),
        tier: match &key.limits {
            LimitSource::Tier(name) => name.clone(),
            LimitSource::Own(_) => String::new(),
        },
        rate_limits: match &key.limits {
            LimitSource::Tier(_) => Vec::new(),
            LimitSource::Own(limits) => limits.iter().map(rate_limit).collect(),
        },
        quota: key.quota.as_ref().map(usage_quota),
    }
}

pub fn usage_quota(quota: &Quota) -> pb::UsageQuota {
    pb::UsageQuota {
        remaining: quota.remaining,
        refill_amount: quota.refill_amount,
        refill_interval: match quota.refill_interval {
            None => pb::RefillInterval::Unspecified,
            Some(RefillInterval::Daily) => pb::RefillInterval::Daily,
            Some(RefillInterval::Monthly) => pb::RefillInterval::Monthly,
        } as i32,
    }
}

pub fn owner_limits(owner_id: String, limits: Option<LimitSource>) -> pb::OwnerLimits {
    let (tier, rate_limits) = match limits {
        None => (String::new(), Vec::new()),
        Some(LimitSource::Tier(name)) => (name, Vec::new()),
        Some(LimitSource::Own(limits)) => (String::new(), limits.iter().map(rate_limit).collect()),
    };
    pb::OwnerLimits {
        owner_id,
        tier,
        rate_limits,
    }
}

pub fn parse_timestamp(field: &'static str, raw: &prost_types::Timestamp) -> Result<DateTime<Utc>> {
    let nanos = u32::try_from(raw.nanos).map_err(|_| Error::invalid(field, "negative nanos"))?;
    Utc.timestamp_opt(raw.seconds, nanos)
        .single()
        .ok_or_else(|| Error::invalid(field, "not a valid timestamp"))
}

/// A timestamp from seconds since the epoch (saturating far out of range).
pub fn timestamp_secs(secs: i64) -> prost_types::Timestamp {
    timestamp_us(secs.saturating_mul(1_000_000))
}

/// A timestamp from milliseconds since the epoch (saturating far out of range).
pub fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    timestamp_us(ms.saturating_mul(1_000))
}

/// A timestamp from microseconds since the epoch.
pub fn timestamp_us(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// A duration from microseconds (negative ones read as zero).
pub fn duration_us(us: i64) -> prost_types::Duration {
    let us = us.max(0);
    prost_types::Duration {
        seconds: us / 1_000_000,
        nanos: ((us % 1_000_000) * 1000) as i32,
    }
}

pub fn rate_limit(limit: &Limit) -> pb::RateLimit {
    pb::RateLimit {
        limit: limit.limit,
        window: Some(duration_us(limit.window_us())),
        algorithm: match limit.algorithm {
            Algorithm::SlidingWindow => pb::RateLimitAlgorithm::SlidingWindow,
            Algorithm::FixedWindow => pb::RateLimitAlgorithm::FixedWindow,
            Algorithm::TokenBucket => pb::RateLimitAlgorithm::TokenBucket,
        } as i32,
    }
}

pub fn rate_limit_status(status: &LimitStatus) -> pb::RateLimitStatus {
    pb::RateLimitStatus {
        limit: status.limit.limit,
        remaining: status.remaining,
        reset_at: Some(timestamp_us(status.reset_at_us)),
        retry_after: Some(duration_us(status.retry_after_us)),
    }
}

/// UNSPECIFIED means sliding window, the seed's algorithm.
pub fn parse_algorithm(field: &'static str, raw: i32) -> Result<Algorithm> {
    match pb::RateLimitAlgorithm::try_from(raw) {
        Ok(pb::RateLimitAlgorithm::Unspecified | pb::RateLimitAlgorithm::SlidingWindow) => {
            Ok(Algorithm::SlidingWindow)
        }
        Ok(pb::RateLimitAlgorithm::FixedWindow) => Ok(Algorithm::FixedWindow),
        Ok(pb::RateLimitAlgorithm::TokenBucket) => Ok(Algorithm::TokenBucket),
        Err(_) => Err(Error::invalid(
            field,
            format!(
                "unknown algorithm {raw}; use RATE_LIMIT_ALGORITHM_SLIDING_WINDOW, _FIXED_WINDOW or _TOKEN_BUCKET"
            ),
        )),
    }
}

/// A window in whole milliseconds. Seconds beyond what milliseconds can
/// count are refused here (they would wrap), the rest by the limit's bounds.
pub fn parse_window(field: &'static str, window: Option<&prost_types::Duration>) -> Result<u64> {
    let Some(window) = window else {
        return Err(Error::invalid(field, "a window is required, e.g. \"60s\""));
    };
    if window.seconds < 0
        || !(0..1_000_000_000).contains(&window.nanos)
        || window.nanos % 1_000_000 != 0
    {
        return Err(Error::invalid(
            field,
            "window must be positive, in whole milliseconds",
        ));
    }
    u64::try_from(window.seconds)
        .ok()
        .and_then(|secs| secs.checked_mul(1000))
        .and_then(|ms| ms.checked_add(window.nanos as u64 / 1_000_000))
        .ok_or_else(|| Error::invalid(field, "window is far too long; at most 30 days"))
}

/// A duration from 0 to `max`, checked before any arithmetic on it.
pub fn parse_bounded_duration(
    field: &'static str,
    raw: &prost_types::Duration,
    max: chrono::Duration,
) -> Result<chrono::Duration> {
    if raw.seconds < 0 || raw.nanos < 0 {
        return Err(Error::invalid(field, "must not be negative"));
    }
    let too_long = || {
        Error::invalid(
            field,
            format!("must be at most {} seconds", max.num_seconds()),
        )
    };
    if raw.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "nanos must be below one second"));
    }
    let duration = chrono::Duration::try_seconds(raw.seconds)
        .and_then(|secs| secs.checked_add(&chrono::Duration::nanoseconds(i64::from(raw.nanos))))
        .ok_or_else(too_long)?;
    if duration > max {
        return Err(too_long());
    }
    Ok(duration)
}

pub fn parse_rate_limit(field: &'static str, raw: &pb::RateLimit) -> Result<Limit> {
    Limit::parse(
        field,
        raw.limit,
        parse_window(field, raw.window.as_ref())?,
        parse_algorithm(field, raw.algorithm)?,
    )
}

/// A tier or a list of limits (not both); `None` when neither is given.
pub fn parse_limit_source(
    tiers: &Tiers,
    tier: &str,
    rate_limits: &[pb::RateLimit],
) -> Result<Option<LimitSource>> {
    match (tier.is_empty(), rate_limits.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Err(Error::invalid(
            "rate_limits",
            "give a tier or rate_limits, not both",
        )),
        (false, true) => Ok(Some(LimitSource::Tier(tiers.parse_name("tier", tier)?))),
        (true, false) => Ok(Some(LimitSource::Own(parse_limits(rate_limits)?))),
    }
}

pub fn parse_limits(rate_limits: &[pb::RateLimit]) -> Result<Vec<Limit>> {
    let limits = rate_limits
        .iter()
        .map(|l| parse_rate_limit("rate_limits", l))
        .collect::<Result<Vec<_>>>()?;
    parse_limit_list("rate_limits", limits)
}

/// A quota as requested; its version is set when it is written.
pub fn parse_quota(raw: &pb::UsageQuota) -> Result<Quota> {
    let interval = match pb::RefillInterval::try_from(raw.refill_interval) {
        Ok(pb::RefillInterval::Unspecified) => None,
        Ok(pb::RefillInterval::Daily) => Some(RefillInterval::Daily),
        Ok(pb::RefillInterval::Monthly) => Some(RefillInterval::Monthly),
        Err(_) => {
            return Err(Error::invalid(
                "quota.refill_interval",
                format!("unknown value {}", raw.refill_interval),
            ));
        }
    };
    Quota::parse(raw.remaining, raw.refill_amount, interval, 0)
}

pub fn root_key(key: RootKey) -> pb::RootKey {
    pb::RootKey {
        id: key.id.to_string(),
        name: key.name,
        prefix: key.prefix,
        permissions: key.permissions.to_strings(),
        owner_scope: key.owner_scope.to_strings(),
        created_at: Some(timestamp(key.created_at)),
        expires_at: key.expires_at.map(timestamp),
        revoked_at: key.revoked_at.map(timestamp),
        created_by: key.created_by.map(|id| id.to_string()).unwrap_or_default(),
    }
}

pub fn environment(environment: Environment) -> pb::Environment {
    match environment {
        Environment::Live => pb::Environment::Live,
        Environment::Test => pb::Environment::Test,
    }
}

/// UNSPECIFIED means live, the common case.
pub fn parse_environment(raw: i32) -> Result<Environment> {
    match pb::Environment::try_from(raw) {
        Ok(pb::Environment::Unspecified | pb::Environment::Live) => Ok(Environment::Live),
        Ok(pb::Environment::Test) => Ok(Environment::Test),
        Err(_) => Err(Error::invalid(
            "environment",
            format!("unknown value {raw}; use ENVIRONMENT_LIVE or ENVIRONMENT_TEST"),
        )),
    }
}

pub fn validation_code(code: ValidationCode) -> pb::ValidationCode {
    match code {
        ValidationCode::Valid => pb::ValidationCode::Valid,
        ValidationCode::Malformed => pb::ValidationCode::Malformed,
        ValidationCode::NotFound => pb::ValidationCode::NotFound,
        ValidationCode::Revoked => pb::ValidationCode::Revoked,
        ValidationCode::Disabled => pb::ValidationCode::Disabled,
        ValidationCode::Expired => pb::ValidationCode::Expired,
        ValidationCode::InsufficientScope => pb::ValidationCode::InsufficientScope,
        ValidationCode::RateLimited => pb::ValidationCode::RateLimited,
        ValidationCode::UsageExceeded => pb::ValidationCode::UsageExceeded,
    }
}

/// Parses a key id from a request, naming the field in the error.
pub fn parse_key_id(field: &'static str, raw: &str) -> Result<KeyId> {
    if raw.is_empty() {
        return Err(Error::invalid(field, "required: the id of an API key"));
    }
    KeyId::parse(raw).ok_or_else(|| {
        Error::invalid(
            field,
            "not an API key id: ids are 16 letters and digits, as in ApiKey.id",
        )
    })
}

const PAGE_TOKEN_VERSION: &str = "v1";

/// Page tokens are opaque to callers: `v1.<created_at micros>.<id>`.
pub fn page_token(cursor: &ListCursor) -> String {
    format!(
        "{PAGE_TOKEN_VERSION}.{}.{}",
        cursor.created_at.timestamp_micros(),
        cursor.id
    )
}

pub fn parse_page_token(raw: &str) -> Result<Option<ListCursor>> {
    if raw.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        Error::invalid(
            "page_token",
            "not a token this server issued; pass next_page_token unchanged",
        )
    };
    let mut parts = raw.splitn(3, '.');
    let (Some(PAGE_TOKEN_VERSION), Some(micros), Some(id)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let created_at = Utc.timestamp_micros(micros).single().ok_or_else(invalid)?;
    let id = KeyId::parse(id).ok_or_else(invalid)?;
    Ok(Some(ListCursor { created_at, id }))
}

const AUDIT_PAGE_TOKEN_VERSION: &str = "a1";

/// Audit pages continue before an event id: `a1.<id>`.
pub fn audit_page_token(before_id: i64) -> String {
    format!("{AUDIT_PAGE_TOKEN_VERSION}.{before_id}")
}

pub fn parse_audit_page_token(raw: &str) -> Result<Option<i64>> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.strip_prefix(AUDIT_PAGE_TOKEN_VERSION)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|id| id.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| {
            Error::invalid(
                "page_token",
                "not a token this server issued; pass next_page_token unchanged",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_that_would_wrap_are_refused() {
        // 2^61 + 60 seconds is 60,000 ms modulo 2^64: a wrapping multiply
        // would have read it as one minute.
        let wrapping = prost_types::Duration {
            seconds: (1_i64 << 61) + 60,
            nanos: 0,
        };
        assert!(parse_window("window", Some(&wrapping)).is_err());
        let minute = prost_types::Duration {
            seconds: 60,
            nanos: 0,
        };
        assert_eq!(parse_window("window", Some(&minute)).unwrap(), 60_000);
    }

    #[test]
    fn bounded_durations_never_overflow() {
        let week = chrono::Duration::days(7);
        let huge = prost_types::Duration {
            seconds: i64::MAX,
            nanos: 999_999_999,
        };
        assert!(parse_bounded_duration("grace_period", &huge, week).is_err());
        let hour = prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        };
        assert_eq!(
            parse_bounded_duration("grace_period", &hour, week).unwrap(),
            chrono::Duration::hours(1)
        );
    }

    #[test]
    fn page_tokens_round_trip() {
        let cursor = ListCursor {
            created_at: crate::domain::now(),
            id: KeyId::parse("0123456789abcdef").unwrap(),
        };
        assert_eq!(
            parse_page_token(&page_token(&cursor)).unwrap(),
            Some(cursor)
        );
        assert_eq!(parse_page_token("").unwrap(), None);
    }

    #[test]
    fn forged_page_tokens_are_invalid_arguments() {
        for bad in [
            "x",
            "v1.abc.0123456789abcdef",
            "v1.1.short",
            "v2.1.0123456789abcdef",
        ] {
            assert!(
                matches!(
                    parse_page_token(bad),
                    Err(Error::InvalidArgument {
                        field: "page_token",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
