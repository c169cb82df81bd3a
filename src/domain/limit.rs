//! What a limit is (so many units of cost per window, counted by one of three
//! algorithms), its bounds, and where a key's limits come from: its own list,
//! or a tier defined in configuration.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest `limit` (and `cost`) a request may name.
pub const MAX_LIMIT: u32 = 1_000_000_000;
/// The shortest window: finer limits belong in the caller's process.
pub const MIN_WINDOW_MS: u64 = 1_000;
/// The longest window: 30 days.
pub const MAX_WINDOW_MS: u64 = 30 * 24 * 3_600_000;
/// The most limits one key (or owner) may carry.
pub const MAX_LIMITS: usize = 10;
/// The longest CheckRateLimit namespace and identifier, in characters.
pub const MAX_NAMESPACE_CHARS: usize = 64;
pub const MAX_IDENTIFIER_CHARS: usize = 256;
/// How much of a refused input an error message quotes, in characters.
const QUOTED_CHARS: usize = 40;

// The counting algorithms stay exact in IEEE doubles (decide.lua's numbers)
// because every product they form is below 2^53: limits and costs are below
// 2^30, windows below 2^42 microseconds (see `ratelimit::algorithms`).
const _: () = assert!(MAX_LIMIT < 1 << 30 && MAX_WINDOW_MS * 1000 < 1 << 42);

/// How admitted cost is counted; each variant's guarantee is written on it
/// and in the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Two fixed windows, the previous one weighted by how much of it the
    /// sliding window still covers (rounded up), plus the current one.
    /// Guarantee: at most `limit` in every epoch-aligned window, and at most
    /// `2 x limit - 1` in any window-long interval; exact when the previous
    /// window's traffic was spread evenly. Two counters per identifier.
    SlidingWindow,
    /// One counter per epoch-aligned window. Guarantee: exactly at most
    /// `limit` in each aligned window (so up to `2 x limit` across a boundary).
    FixedWindow,
    /// GCRA, the token bucket as one timestamp: `limit` tokens, one more every
    /// `T = ceil(window / limit)` microseconds. Guarantee: at most `limit` at
    /// once, and at most `limit + floor(d / T)` in any interval of length `d`.
    TokenBucket,
}

impl Algorithm {
    /// The letter naming the algorithm in storage keys and in the script.
    pub fn code(self) -> &'static str {
        match self {
            Algorithm::SlidingWindow => "s",
            Algorithm::FixedWindow => "f",
            Algorithm::TokenBucket => "t",
        }
    }
}

/// At most `limit` units of cost per `window_ms`, counted by `algorithm`.
/// A limit read back from the database or configuration is checked like one
/// from a request, so the algorithms never see one out of bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "UncheckedLimit")]
pub struct Limit {
    pub limit: u32,
    pub window_ms: u64,
    pub algorithm: Algorithm,
}

/// A limit as stored, before its bounds are checked.
#[derive(Deserialize)]
struct UncheckedLimit {
    limit: u32,
    window_ms: u64,
    algorithm: Algorithm,
}

impl TryFrom<UncheckedLimit> for Limit {
    type Error = Error;

    fn try_from(raw: UncheckedLimit) -> Result<Limit> {
        Limit::parse("limit", raw.limit, raw.window_ms, raw.algorithm)
    }
}

impl Limit {
    /// Checks the bounds, naming `field` in the error.
    pub fn parse(
        field: &'static str,
        limit: u32,
        window_ms: u64,
        algorithm: Algorithm,
    ) -> Result<Limit> {
        if limit == 0 || limit > MAX_LIMIT {
            return Err(Error::invalid(
                field,
                format!("limit must be 1 to {MAX_LIMIT} (got {limit})"),
            ));
        }
        if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms) {
            return Err(Error::invalid(
                field,
                format!(
                    "window must be 1 second to 30 days, in whole milliseconds (got {window_ms} ms)"
                ),
            ));
        }
        Ok(Limit {
            limit,
            window_ms,
            algorithm,
        })
    }

    /// The window in the script's unit.
    pub fn window_us(&self) -> i64 {
        self.window_ms as i64 * 1000
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}ms ({:?})",
            self.limit, self.window_ms, self.algorithm
        )
    }
}

/// What a CheckRateLimit call counts against: a namespace (what kind of
/// thing, e.g. `login`) and an identifier in it (e.g. an IP address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub namespace: String,
    pub identifier: String,
}

impl Subject {
    /// A namespace of 1 to 64 characters without `:` (it separates the
    /// namespace from the identifier), and an identifier of 1 to 256.
    pub fn parse(namespace: &str, identifier: &str) -> Result<Subject> {
        let namespace_chars = namespace.chars().count();
        if namespace_chars == 0 || namespace_chars > MAX_NAMESPACE_CHARS || namespace.contains(':')
        {
            return Err(Error::invalid(
                "namespace",
                format!(
                    "must be 1 to {MAX_NAMESPACE_CHARS} characters without ':' (got {namespace_chars}: {})",
                    quoted(namespace)
                ),
            ));
        }
        let identifier_chars = identifier.chars().count();
        if identifier_chars == 0 || identifier_chars > MAX_IDENTIFIER_CHARS {
            return Err(Error::invalid(
                "identifier",
                format!(
                    "must be 1 to {MAX_IDENTIFIER_CHARS} characters (got {identifier_chars}: {})",
                    quoted(identifier)
                ),
            ));
        }
        Ok(Subject {
            namespace: namespace.to_owned(),
            identifier: identifier.to_owned(),
        })
    }
}

/// A refused input as an error message quotes it: its first characters only,
/// so that a megabyte of input does not come back in a header.
fn quoted(raw: &str) -> String {
    match raw.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{:?}…", &raw[..end]),
        None => format!("{raw:?}"),
    }
}

/// Checks a list of limits: at most [`MAX_LIMITS`], and no two sharing an
/// algorithm and window (they would share one counter).
pub fn parse_limit_list(field: &'static str, limits: Vec<Limit>) -> Result<Vec<Limit>> {
    if limits.len() > MAX_LIMITS {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_LIMITS} limits (got {})", limits.len()),
        ));
    }
    for (i, a) in limits.iter().enumerate() {
        if limits[..i]
            .iter()
            .any(|b| b.algorithm == a.algorithm && b.window_ms == a.window_ms)
        {
            return Err(Error::invalid(
                field,
                format!(
                    "two limits with the same algorithm and window ({a}); keep the tighter one"
                ),
            ));
        }
    }
    Ok(limits)
}

/// Where a key's (or an owner's) limits come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitSource {
    /// The limits of a tier named in configuration.
    Tier(String),
    /// Its own limits (possibly none).
    Own(Vec<Limit>),
}

/// The tiers defined in configuration, and the one keys get by default.
#[derive(Clone, Debug)]
pub struct Tiers {
    tiers: BTreeMap<String, Vec<Limit>>,
    default_tier: String,
}

impl Tiers {
    pub fn new(tiers: BTreeMap<String, Vec<Limit>>, default_tier: String) -> anyhow::Result<Tiers> {
        anyhow::ensure!(
            tiers.contains_key(&default_tier),
            "the default tier {default_tier:?} is not among the configured tiers {:?}",
            tiers.keys().collect::<Vec<_>>()
        );
        for (name, limits) in &tiers {
            parse_limit_list("tiers", limits.clone())
                .map_err(|e| anyhow::anyhow!("tier {name:?}: {e}"))?;
        }
        Ok(Tiers {
            tiers,
            default_tier,
        })
    }

    pub fn default_tier(&self) -> &str {
        &self.default_tier
    }

    /// A tier name from a request: it must be configured.
    pub fn parse_name(&self, field: &'static str, raw: &str) -> Result<String> {
        if self.tiers.contains_key(raw) {
            Ok(raw.to_owned())
        } else {
            Err(Error::invalid(
                field,
                format!(
                    "unknown tier {}; configured tiers: {}",
                    super::quote(raw),
                    self.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    }

    /// The limits a source stands for. A tier that was removed from
    /// configuration after keys were given it falls back to the default tier.
    pub fn resolve<'a>(&'a self, source: &'a LimitSource) -> &'a [Limit] {
        match source {
            LimitSource::Own(limits) => limits,
            LimitSource::Tier(name) => match self.tiers.get(name) {
                Some(limits) => limits,
                None => {
                    tracing::warn!(tier = %name, default = %self.default_tier, "a key names a tier that is no longer configured; applying the default tier");
                    &self.tiers[&self.default_tier]
                }
            },
        }
    }
}

/// The seed's tiers: free 100/hour, pro 1,000/hour, enterprise 10,000/hour,
/// all sliding windows.
pub fn seed_tiers() -> BTreeMap<String, Vec<Limit>> {
    let hourly = |limit| {
        vec![Limit {
            limit,
            window_ms: 3_600_000,
            algorithm: Algorithm::SlidingWindow,
        }]
    };
    BTreeMap::from([
        ("free".to_owned(), hourly(100)),
        ("pro".to_owned(), hourly(1_000)),
        ("enterprise".to_owned(), hourly(10_000)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(limit: u32, window_ms: u64, algorithm: Algorithm) -> Limit {
        Limit {
            limit,
            window_ms,
            algorithm,
        }
    }

    #[test]
    fn limits_and_windows_are_bounded() {
        assert!(Limit::parse("l", 1, 1_000, Algorithm::FixedWindow).is_ok());
        assert!(Limit::parse("l", 0, 1_000, Algorithm::FixedWindow).is_err());
        assert!(Limit::parse("l", MAX_LIMIT + 1, 1_000, Algorithm::FixedWindow).is_err());
        assert!(Limit::parse("l", 5, 999, Algorithm::FixedWindow).is_err());
        assert!(Limit::parse("l", 5, MAX_WINDOW_MS, Algorithm::TokenBucket).is_ok());
        assert!(Limit::parse("l", 5, MAX_WINDOW_MS + 1, Algorithm::TokenBucket).is_err());
    }

    #[test]
    fn two_limits_may_not_share_a_counter() {
        let a = limit(10, 1_000, Algorithm::SlidingWindow);
        let b = limit(1_000, 3_600_000, Algorithm::SlidingWindow);
        assert!(parse_limit_list("rate_limits", vec![a, b]).is_ok());
        let same_window = limit(20, 1_000, Algorithm::SlidingWindow);
        assert!(parse_limit_list("rate_limits", vec![a, same_window]).is_err());
        assert!(parse_limit_list("rate_limits", vec![a; 11]).is_err());
    }

    #[test]
    fn stored_limits_out_of_bounds_do_not_deserialise() {
        let good: Limit =
            serde_json::from_str(r#"{"limit":5,"window_ms":1000,"algorithm":"fixed_window"}"#)
                .unwrap();
        assert_eq!(good, limit(5, 1_000, Algorithm::FixedWindow));
        for bad in [
            r#"{"limit":0,"window_ms":1000,"algorithm":"fixed_window"}"#,
            r#"{"limit":5,"window_ms":0,"algorithm":"token_bucket"}"#,
        ] {
            assert!(serde_json::from_str::<Limit>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subjects_are_bounded_and_errors_quote_only_the_start_of_the_input() {
        assert!(Subject::parse("login", "203.0.113.7").is_ok());
        assert!(Subject::parse("", "x").is_err());
        assert!(Subject::parse("a:b", "x").is_err());
        assert!(Subject::parse("x", "").is_err());
        assert!(Subject::parse(&"n".repeat(MAX_NAMESPACE_CHARS), &"i".repeat(256)).is_ok());

        let huge = "é".repeat(100_000);
        for error in [
            Subject::parse(&huge, "x").unwrap_err(),
            Subject::parse("x", &huge).unwrap_err(),
        ] {
            let message = error.to_string();
            assert!(message.len() < 200, "{} bytes: {message}", message.len());
            assert!(message.contains("100000"), "{message}");
        }
    }

    #[test]
    fn the_default_tier_must_exist_and_unknown_tiers_fall_back_to_it() {
        assert!(Tiers::new(seed_tiers(), "gold".into()).is_err());
        let tiers = Tiers::new(seed_tiers(), "free".into()).unwrap();
        assert_eq!(
            tiers.resolve(&LimitSource::Tier("pro".into()))[0].limit,
            1_000
        );
        assert_eq!(
            tiers.resolve(&LimitSource::Tier("gone".into()))[0].limit,
            100
        );
        assert!(tiers.parse_name("tier", "gone").is_err());
    }
}
