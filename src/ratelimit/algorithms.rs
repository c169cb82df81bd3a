//! The three counting algorithms as pure functions of (limit, stored state,
//! clock, cost). The in-process store runs them directly; `decide.lua` is the
//! same arithmetic for Redis (IEEE doubles in both, operation for operation),
//! so both backends give the same answers. Times are microseconds since the
//! Unix epoch. The guarantees are on [`Algorithm`]'s variants.

use super::limit::{Algorithm, Limit};

/// A limit's stored state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LimitState {
    /// Nothing stored (never used, or expired).
    #[default]
    Empty,
    /// Fixed and sliding windows: the window index and its count, and (sliding
    /// only) the previous window's count.
    Window {
        index: i64,
        count: i64,
        previous: i64,
    },
    /// GCRA's theoretical arrival time: when the bucket will be full again.
    Bucket { tat_us: i64 },
}

/// One limit's answer to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitEvaluation {
    pub allowed: bool,
    /// Left after this request (unchanged by a denied one).
    pub remaining: u32,
    /// When `remaining` is back to the limit if nothing more is admitted.
    pub reset_at_us: i64,
    /// Zero when allowed; else when this cost would be admitted, if nothing else is.
    pub retry_after_us: i64,
    /// The state to store if the decision is committed.
    pub next: LimitState,
    /// When the stored state may be forgotten (it then reads as `Empty`).
    pub expires_at_us: i64,
}

pub fn evaluate(limit: &Limit, state: LimitState, now: i64, cost: u32) -> LimitEvaluation {
    let (l, w, c) = (
        f64::from(limit.limit),
        limit.window_us() as f64,
        f64::from(cost),
    );
    match limit.algorithm {
        Algorithm::FixedWindow => fixed_window(l, w, c, state, now as f64),
        Algorithm::SlidingWindow => sliding_window(l, w, c, state, now as f64),
        Algorithm::TokenBucket => token_bucket(l, w, c, state, now as f64),
    }
}

fn fixed_window(limit: f64, w: f64, cost: f64, state: LimitState, now: f64) -> LimitEvaluation {
    let idx = (now / w).floor();
    let count = match state {
        LimitState::Window { index, count, .. } if index as f64 == idx => count as f64,
        _ => 0.0,
    };
    let allowed = count + cost <= limit;
    let after = if allowed { count + cost } else { count };
    let reset = (idx + 1.0) * w;
    LimitEvaluation {
        allowed,
        remaining: (limit - after).max(0.0) as u32,
        reset_at_us: reset as i64,
        retry_after_us: if allowed { 0 } else { (reset - now) as i64 },
        next: LimitState::Window {
            index: idx as i64,
            count: after as i64,
            previous: 0,
        },
        expires_at_us: reset as i64,
    }
}

fn sliding_window(limit: f64, w: f64, cost: f64, state: LimitState, now: f64) -> LimitEvaluation {
    let idx = (now / w).floor();
    let start = idx * w;
    let elapsed = now - start;
    let (cur, prev) = match state {
        LimitState::Window {
            index,
            count,
            previous,
        } if index as f64 == idx => (count as f64, previous as f64),
        LimitState::Window { index, count, .. } if index as f64 == idx - 1.0 => (0.0, count as f64),
        _ => (0.0, 0.0),
    };
    let weighted = (prev * (w - elapsed) / w).ceil();
    let allowed = weighted + cur + cost <= limit;
    let after = if allowed { cur + cost } else { cur };
    let reset = if after > 0.0 {
        start + 2.0 * w
    } else if prev > 0.0 {
        start + w
    } else {
        now
    };
    let retry = if allowed {
        0.0
    } else {
        let room = limit - cur - cost;
        if room >= 0.0 && prev > 0.0 && (w - room * w / prev).ceil() < w {
            start + (w - room * w / prev).ceil() - now
        } else if limit - cost >= 0.0 {
            let e = if cur > 0.0 {
                (w - (limit - cost) * w / cur).ceil().max(0.0)
            } else {
                0.0
            };
            start + w + e - now
        } else {
            start + 2.0 * w - now
        }
    };
    LimitEvaluation {
        allowed,
        remaining: (limit - weighted - after).max(0.0) as u32,
        reset_at_us: reset as i64,
        retry_after_us: retry as i64,
        next: LimitState::Window {
            index: idx as i64,
            count: after as i64,
            previous: prev as i64,
        },
        expires_at_us: (start + 2.0 * w) as i64,
    }
}

fn token_bucket(limit: f64, w: f64, cost: f64, state: LimitState, now: f64) -> LimitEvaluation {
    let period = (w / limit).ceil();
    let capacity = period * limit;
    let tat = match state {
        LimitState::Bucket { tat_us } => (tat_us as f64).max(now),
        _ => now,
    };
    let new_tat = tat + cost * period;
    let allowed = new_tat - now <= capacity;
    let level = if allowed { new_tat } else { tat };
    LimitEvaluation {
        allowed,
        remaining: ((capacity - (level - now)) / period).floor().max(0.0) as u32,
        reset_at_us: level as i64,
        retry_after_us: if allowed {
            0
        } else {
            (new_tat - capacity - now) as i64
        },
        next: LimitState::Bucket {
            tat_us: new_tat as i64,
        },
        expires_at_us: new_tat as i64 + 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;
    /// A window boundary for every window that divides a day.
    const T0: i64 = 1_800_000_000 / 86_400 * 86_400 * SECOND;

    fn limit(limit: u32, window_ms: u64, algorithm: Algorithm) -> Limit {
        Limit {
            limit,
            window_ms,
            algorithm,
        }
    }

    /// Sends `n` requests of `cost` at `now`, committing the admitted ones;
    /// returns how many were admitted.
    fn burst(l: &Limit, state: &mut LimitState, now: i64, n: usize, cost: u32) -> usize {
        let mut admitted = 0;
        for _ in 0..n {
            let e = evaluate(l, *state, now, cost);
            if e.allowed {
                *state = e.next;
                admitted += 1;
            }
        }
        admitted
    }

    #[test]
    fn every_algorithm_admits_exactly_the_limit_at_once() {
        for algorithm in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket,
        ] {
            let l = limit(50, 60_000, algorithm);
            let mut state = LimitState::Empty;
            assert_eq!(
                burst(&l, &mut state, T0 + 5 * SECOND, 300, 1),
                50,
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn a_denied_request_reports_remaining_unchanged_and_a_wait() {
        for algorithm in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket,
        ] {
            let l = limit(3, 10_000, algorithm);
            let mut state = LimitState::Empty;
            let now = T0 + SECOND;
            burst(&l, &mut state, now, 2, 1);
            let denied = evaluate(&l, state, now, 2);
            assert!(!denied.allowed, "{algorithm:?}");
            assert_eq!(denied.remaining, 1, "{algorithm:?}");
            assert!(denied.retry_after_us > 0, "{algorithm:?}");
            let later = evaluate(&l, state, now + denied.retry_after_us, 2);
            assert!(later.allowed, "{algorithm:?} admits after retry_after");
        }
    }

    #[test]
    fn a_fixed_window_starts_afresh_at_its_boundary() {
        let l = limit(2, 1_000, Algorithm::FixedWindow);
        let mut state = LimitState::Empty;
        assert_eq!(burst(&l, &mut state, T0 + SECOND - 1, 5, 1), 2);
        assert_eq!(
            burst(&l, &mut state, T0 + SECOND, 5, 1),
            2,
            "up to 2 x limit across a boundary"
        );
    }

    #[test]
    fn a_sliding_window_weighs_the_previous_window() {
        let l = limit(10, 1_000, Algorithm::SlidingWindow);
        let mut state = LimitState::Empty;
        assert_eq!(burst(&l, &mut state, T0 + SECOND - 1, 10, 1), 10);
        // A quarter into the next window, three quarters of the previous 10 still count.
        assert_eq!(burst(&l, &mut state, T0 + SECOND + SECOND / 4, 10, 1), 2);
        // Half way: 5 weigh, 2 were admitted, so 3 more.
        assert_eq!(burst(&l, &mut state, T0 + SECOND + SECOND / 2, 10, 1), 3);
    }

    #[test]
    fn a_sliding_window_never_admits_twice_the_limit_in_any_window_long_interval() {
        let l = limit(20, 1_000, Algorithm::SlidingWindow);
        let mut state = LimitState::Empty;
        let mut admitted_at = Vec::new();
        // One attempt every 7 ms for 5 seconds.
        for step in 0..700 {
            let now = T0 + step * 7_000;
            let e = evaluate(&l, state, now, 1);
            if e.allowed {
                state = e.next;
                admitted_at.push(now);
            }
        }
        for &from in &admitted_at {
            let in_window = admitted_at
                .iter()
                .filter(|&&t| t >= from && t < from + SECOND)
                .count();
            assert!(
                in_window < 40,
                "{in_window} admitted in one second from {from}"
            );
        }
    }

    #[test]
    fn a_token_bucket_refills_one_token_per_period() {
        let l = limit(4, 1_000, Algorithm::TokenBucket);
        let mut state = LimitState::Empty;
        assert_eq!(burst(&l, &mut state, T0, 10, 1), 4);
        assert_eq!(burst(&l, &mut state, T0 + 250_000 - 1, 10, 1), 0);
        assert_eq!(burst(&l, &mut state, T0 + 250_000, 10, 1), 1);
        assert_eq!(
            burst(&l, &mut state, T0 + 10 * SECOND, 10, 1),
            4,
            "never more than full"
        );
    }

    #[test]
    fn cost_is_charged_in_full_or_not_at_all() {
        for algorithm in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket,
        ] {
            let l = limit(10, 60_000, algorithm);
            let mut state = LimitState::Empty;
            assert_eq!(
                burst(&l, &mut state, T0, 3, 4),
                2,
                "{algorithm:?}: 4 + 4, then 4 > 2"
            );
            assert_eq!(evaluate(&l, state, T0, 2).remaining, 0, "{algorithm:?}");
        }
    }
}
