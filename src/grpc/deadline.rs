//! A call's deadline, from its `grpc-timeout` metadata. Calls that wait on
//! the limiter stop waiting a little before it (a tenth of the timeout, at
//! most 100 ms), so that the caller receives our UNAVAILABLE instead of
//! cutting the call off itself.

use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

/// The most a call keeps back from its deadline to send its answer.
const MAX_MARGIN: Duration = Duration::from_millis(100);

/// When to give up waiting, for a call received now; `None` without a
/// (well-formed) deadline.
pub fn answer_by(metadata: &MetadataMap) -> Option<Instant> {
    let timeout = parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)?;
    Some(Instant::now() + timeout - (timeout / 10).min(MAX_MARGIN))
}

/// `grpc-timeout`: at most 8 digits and a unit (gRPC over HTTP/2).
fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    let unit_at = raw.len().checked_sub(1)?;
    let (digits, unit) = raw.split_at(unit_at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3_600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_by_their_unit_and_malformed_ones_are_ignored() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3_600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_answer_is_due_a_tenth_before_the_deadline_and_at_most_100_ms_before() {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "200m".parse().unwrap());
        assert_eq!(
            answer_by(&metadata).unwrap() - Instant::now(),
            Duration::from_millis(180)
        );
        metadata.insert("grpc-timeout", "10S".parse().unwrap());
        assert_eq!(
            answer_by(&metadata).unwrap() - Instant::now(),
            Duration::from_millis(9_900)
        );
        assert_eq!(answer_by(&MetadataMap::new()), None);
    }
}
