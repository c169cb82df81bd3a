//! Usage quotas: a balance of uses a key may make, optionally set back to a
//! fixed amount at the start of every day or month (UTC, on the limiter's
//! clock). The configuration lives in the database; the balance lives in the
//! limiter store, where `Validate` takes from it atomically with the limits.

use chrono::{Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest balance or refill a quota may name.
pub const MAX_QUOTA: i64 = 1_000_000_000_000;

/// Adds `amount` (may be negative) to a balance: floored at 0 and capped at
/// [`MAX_QUOTA`], so no sequence of additions leaves the range where every
/// store (and decide.lua's doubles) counts exactly.
pub fn add_to_balance(balance: i64, amount: i64) -> i64 {
    balance.saturating_add(amount).clamp(0, MAX_QUOTA)
}

/// An `add_to_quota` from a request: at most [`MAX_QUOTA`] either way.
pub fn parse_addition(amount: i64) -> Result<i64> {
    if amount.checked_abs().is_none_or(|size| size > MAX_QUOTA) {
        return Err(Error::invalid(
            "add_to_quota",
            format!("must be -{MAX_QUOTA} to {MAX_QUOTA} (got {amount})"),
        ));
    }
    Ok(amount)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefillInterval {
    Daily,
    Monthly,
}

impl RefillInterval {
    /// The number the script uses (0 is "never").
    pub fn code(interval: Option<RefillInterval>) -> u8 {
        match interval {
            None => 0,
            Some(RefillInterval::Daily) => 1,
            Some(RefillInterval::Monthly) => 2,
        }
    }
}

/// A key's quota as configured. `remaining` is the balance it was last set to;
/// the live balance is in the limiter store, tagged with `version` so that
/// setting the quota anew replaces whatever balance the store holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub remaining: i64,
    pub refill_amount: i64,
    pub refill_interval: Option<RefillInterval>,
    pub version: i64,
}

impl Quota {
    pub fn parse(
        remaining: i64,
        refill_amount: i64,
        refill_interval: Option<RefillInterval>,
        version: i64,
    ) -> Result<Quota> {
        if !(0..=MAX_QUOTA).contains(&remaining) {
            return Err(Error::invalid(
                "quota.remaining",
                format!("must be 0 to {MAX_QUOTA} (got {remaining})"),
            ));
        }
        if !(0..=MAX_QUOTA).contains(&refill_amount) {
            return Err(Error::invalid(
                "quota.refill_amount",
                format!("must be 0 to {MAX_QUOTA} (got {refill_amount})"),
            ));
        }
        if refill_interval.is_some() && refill_amount == 0 {
            return Err(Error::invalid(
                "quota.refill_amount",
                "a refill interval needs a refill amount above 0",
            ));
        }
        if refill_interval.is_none() && refill_amount != 0 {
            return Err(Error::invalid(
                "quota.refill_interval",
                "a refill amount needs an interval (REFILL_INTERVAL_DAILY or _MONTHLY)",
            ));
        }
        Ok(Quota {
            remaining,
            refill_amount,
            refill_interval,
            version,
        })
    }

    /// The balance at `now_us`, from what the store holds: the configured
    /// balance if the store holds another version (or nothing), the refill
    /// amount if a refill period has begun since, else the stored balance.
    /// Returns the balance and the period it belongs to.
    pub fn balance(&self, stored: Option<QuotaState>, now_us: i64) -> QuotaState {
        let period = period_index(self.refill_interval, now_us);
        match stored {
            Some(s) if s.version == self.version => {
                if self.refill_interval.is_some() && s.period != period {
                    QuotaState {
                        version: self.version,
                        balance: self.refill_amount,
                        period,
                    }
                } else {
                    s
                }
            }
            _ => QuotaState {
                version: self.version,
                balance: self.remaining,
                period,
            },
        }
    }
}

/// What the limiter store holds for a quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaState {
    pub version: i64,
    pub balance: i64,
    /// Days or months since the epoch at the last refill (0 without refills).
    pub period: i64,
}

/// Days (daily) or months (monthly) since 1970-01, UTC; 0 when never refilled.
pub fn period_index(interval: Option<RefillInterval>, now_us: i64) -> i64 {
    let days = now_us.div_euclid(86_400_000_000);
    match interval {
        None => 0,
        Some(RefillInterval::Daily) => days,
        Some(RefillInterval::Monthly) => {
            let at = Utc
                .timestamp_opt(days * 86_400, 0)
                .single()
                .expect("a day within chrono's range");
            i64::from(at.year()) * 12 + i64::from(at.month0())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn months_turn_at_midnight_utc_on_the_first() {
        let monthly = Some(RefillInterval::Monthly);
        let jan = period_index(monthly, micros("2024-01-31T23:59:59Z"));
        let feb = period_index(monthly, micros("2024-02-01T00:00:00Z"));
        assert_eq!(jan, 2024 * 12);
        assert_eq!(feb, jan + 1);
        assert_eq!(period_index(monthly, micros("2024-02-29T12:00:00Z")), feb);
        assert_eq!(
            period_index(monthly, micros("1970-01-01T00:00:00Z")),
            1970 * 12
        );
    }

    #[test]
    fn days_turn_at_midnight_utc() {
        let daily = Some(RefillInterval::Daily);
        assert_eq!(
            period_index(daily, micros("2024-03-01T00:00:00Z"))
                - period_index(daily, micros("2024-02-29T23:59:59Z")),
            1
        );
    }

    #[test]
    fn a_new_period_refills_to_the_refill_amount() {
        let quota = Quota::parse(5, 100, Some(RefillInterval::Daily), 7).unwrap();
        let day1 = micros("2024-03-01T10:00:00Z");
        let first = quota.balance(None, day1);
        assert_eq!(first.balance, 5);
        let spent = QuotaState {
            balance: 0,
            ..first
        };
        assert_eq!(quota.balance(Some(spent), day1 + 3_600_000_000).balance, 0);
        let day2 = micros("2024-03-02T00:00:01Z");
        assert_eq!(quota.balance(Some(spent), day2).balance, 100);
    }

    #[test]
    fn setting_a_quota_anew_replaces_the_stored_balance() {
        let old = Quota::parse(5, 0, None, 1).unwrap();
        let stored = old.balance(None, 0);
        let new = Quota::parse(50, 0, None, 2).unwrap();
        assert_eq!(new.balance(Some(stored), 0).balance, 50);
    }

    #[test]
    fn additions_are_bounded_and_balances_stay_in_range() {
        assert_eq!(parse_addition(-MAX_QUOTA).unwrap(), -MAX_QUOTA);
        assert!(parse_addition(MAX_QUOTA + 1).is_err());
        assert!(parse_addition(i64::MIN).is_err());
        assert!(parse_addition(i64::MAX).is_err());
        assert_eq!(add_to_balance(5, -10), 0);
        assert_eq!(add_to_balance(MAX_QUOTA, MAX_QUOTA), MAX_QUOTA);
        assert_eq!(add_to_balance(i64::MAX, i64::MAX), MAX_QUOTA);
        assert_eq!(add_to_balance(3, 4), 7);
    }

    #[test]
    fn refills_need_both_an_amount_and_an_interval() {
        assert!(Quota::parse(1, 0, Some(RefillInterval::Daily), 0).is_err());
        assert!(Quota::parse(1, 10, None, 0).is_err());
        assert!(Quota::parse(-1, 0, None, 0).is_err());
    }
}
