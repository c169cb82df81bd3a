//! The three counting algorithms as pure functions of (limit, stored state,
//! clock, cost). The in-process store runs them directly; `decide.lua` is the
//! same integer arithmetic for Redis, so both backends give the same answers.
//! Both are exact: Rust computes in integers (128 bits where a product needs
//! them), and the script keeps every intermediate below 2^53, where Lua's
//! doubles are exact, by long division ([`mul_div`] here, `muldiv` there).
//! That holds because limits and costs stay below 2^30 and windows below 2^42
//! microseconds (`domain::limit` asserts it). Times are microseconds since
//! the Unix epoch. The guarantees are on [`Algorithm`]'s variants.

use crate::domain::{Algorithm, Limit};

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
    /// Zero when allowed; else when this cost would be admitted, if nothing
    /// else is (for a cost above the limit, which never is: when the limit
    /// is wholly free again).
    pub retry_after_us: i64,
    /// The state to store if the decision is committed.
    pub next: LimitState,
    /// When the stored state may be forgotten (it then reads as `Empty`).
    pub expires_at_us: i64,
}

pub fn evaluate(limit: &Limit, state: LimitState, now: i64, cost: u32) -> LimitEvaluation {
    let (l, w, c) = (i64::from(limit.limit), limit.window_us(), i64::from(cost));
    match limit.algorithm {
        Algorithm::FixedWindow => fixed_window(l, w, c, state, now),
        Algorithm::SlidingWindow => sliding_window(l, w, c, state, now),
        Algorithm::TokenBucket => token_bucket(l, w, c, state, now),
    }
}

/// `floor(a * b / d)` for non-negative `a`, `b` and positive `d`, exactly.
pub fn mul_div(a: i64, b: i64, d: i64) -> i64 {
    (i128::from(a) * i128::from(b) / i128::from(d)) as i64
}

/// `ceil(a * b / d)` for non-negative `a`, `b` and positive `d`, exactly.
fn mul_div_ceil(a: i64, b: i64, d: i64) -> i64 {
    let product = i128::from(a) * i128::from(b);
    let d = i128::from(d);
    ((product + d - 1) / d) as i64
}

fn remaining(left: i64) -> u32 {
    left.clamp(0, i64::from(u32::MAX)) as u32
}

fn fixed_window(limit: i64, w: i64, cost: i64, state: LimitState, now: i64) -> LimitEvaluation {
    let idx = now.div_euclid(w);
    let count = match state {
        LimitState::Window { index, count, .. } if index == idx => count,
        _ => 0,
    };
    let allowed = count + cost <= limit;
    let after = if allowed { count + cost } else { count };
    let reset = (idx + 1) * w;
    LimitEvaluation {
        allowed,
        remaining: remaining(limit - after),
        reset_at_us: reset,
        retry_after_us: if allowed { 0 } else { reset - now },
        next: LimitState::Window {
            index: idx,
            count: after,
            previous: 0,
        },
        expires_at_us: reset,
    }
}

fn sliding_window(limit: i64, w: i64, cost: i64, state: LimitState, now: i64) -> LimitEvaluation {
    let idx = now.div_euclid(w);
    let start = idx * w;
    let elapsed = now - start;
    let (cur, prev) = match state {
        LimitState::Window {
            index,
            count,
            previous,
        } if index == idx => (count, previous),
        LimitState::Window { index, count, .. } if index == idx - 1 => (0, count),
        _ => (0, 0),
    };
    let weighted = mul_div_ceil(prev, w - elapsed, w);
    let allowed = weighted + cur + cost <= limit;
    let after = if allowed { cur + cost } else { cur };
    let reset = if after > 0 {
        start + 2 * w
    } else if prev > 0 {
        start + w
    } else {
        now
    };
    let retry = if allowed {
        0
    } else {
        // Within this window, admitted once the previous window's weight
        // has fallen to `room`: at elapsed w - floor(room * w / prev), which
        // is inside the window when that floor is positive (a denial means
        // room < prev, so it stays below w).
        let room = limit - cur - cost;
        let within = if room >= 0 && prev > 0 {
            mul_div(room, w, prev)
        } else {
            0
        };
        if within > 0 {
            start + w - within - now
        } else if limit - cost >= 0 {
            // Next window, where this one's count is the weighted one.
            let wait = if limit - cost < cur {
                w - mul_div(limit - cost, w, cur)
            } else {
                0
            };
            start + w + wait - now
        } else {
            start + 2 * w - now
        }
    };
    LimitEvaluation {
        allowed,
        remaining: remaining(limit - weighted - after),
        reset_at_us: reset,
        retry_after_us: retry,
        next: LimitState::Window {
            index: idx,
            count: after,
            previous: prev,
        },
        expires_at_us: start + 2 * w,
    }
}

fn token_bucket(limit: i64, w: i64, cost: i64, state: LimitState, now: i64) -> LimitEvaluation {
    let period = (w + limit - 1) / limit;
    let capacity = period * limit;
    let tat = match state {
        LimitState::Bucket { tat_us } => tat_us.max(now),
        _ => now,
    };
    let left = |level: i64| remaining((capacity - (level - now)).max(0) / period);
    if cost > limit {
        // Never admitted; `cost * period` could leave the exact range.
        return LimitEvaluation {
            allowed: false,
            remaining: left(tat),
            reset_at_us: tat,
            retry_after_us: (tat - now).max(period),
            next: LimitState::Bucket { tat_us: tat },
            expires_at_us: tat + 1000,
        };
    }
    let new_tat = tat + cost * period;
    let allowed = new_tat - now <= capacity;
    let level = if allowed { new_tat } else { tat };
    LimitEvaluation {
        allowed,
        remaining: left(level),
        reset_at_us: level,
        retry_after_us: if allowed { 0 } else { new_tat - capacity - now },
        next: LimitState::Bucket { tat_us: new_tat },
        expires_at_us: new_tat + 1000,
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
    fn the_largest_limits_and_windows_count_exactly() {
        // 10^9 per 30 days: the weighted previous window is the exact
        // ceiling, where a double product (2.6e21) would round.
        let l = limit(1_000_000_000, 30 * 86_400_000, Algorithm::SlidingWindow);
        let w = l.window_us();
        let state = LimitState::Window {
            index: T0 / w,
            count: 999_999_999,
            previous: 0,
        };
        let next_window = (T0 / w + 1) * w;
        for elapsed in [0, 1, 7, w / 3, w - 1] {
            let e = evaluate(&l, state, next_window + elapsed, 1);
            let exact = (999_999_999_u128 * (w - elapsed) as u128).div_ceil(w as u128);
            assert_eq!(
                u128::from(e.remaining),
                1_000_000_000 - exact - 1,
                "elapsed {elapsed}"
            );
        }
    }

    #[test]
    fn a_cost_above_the_limit_is_refused_with_a_bounded_wait() {
        for algorithm in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket,
        ] {
            let l = limit(10, 30 * 86_400_000, algorithm);
            let e = evaluate(&l, LimitState::Empty, T0, 1_000_000_000);
            assert!(!e.allowed, "{algorithm:?}");
            assert_eq!(e.remaining, 10, "{algorithm:?}");
            assert!(
                (1..=2 * l.window_us()).contains(&e.retry_after_us),
                "{algorithm:?}: {}",
                e.retry_after_us
            );
        }
    }

    #[test]
    fn mul_div_is_exact_beyond_two_to_the_53() {
        let w = 2_592_000_000_000;
        assert_eq!(mul_div(999_999_999, w, w), 999_999_999);
        assert_eq!(mul_div(1_000_000_000, w - 1, w), 999_999_999);
        assert_eq!(mul_div_ceil(1_000_000_000, w - 1, w), 1_000_000_000);
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

    /// Each algorithm's guarantee (on [`Algorithm`]'s variants) over any
    /// arrival sequence: decisions committed as the in-process store
    /// commits them (admitted ones only; state forgotten at its expiry).
    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// A limit, and arrivals as (gap before it in µs, cost): bursts
        /// (gap 0), gaps around the window, and costs up to past the limit.
        fn scenario(algorithm: Algorithm) -> impl Strategy<Value = (Limit, i64, Vec<(i64, u32)>)> {
            (1u32..=12, 1u64..=5, 0i64..5 * SECOND).prop_flat_map(move |(l, secs, offset)| {
                let w = secs as i64 * SECOND;
                let gap = prop_oneof![
                    3 => Just(0i64),
                    4 => 0..w / i64::from(l),
                    2 => 0..2 * w,
                ];
                let arrivals = prop::collection::vec((gap, 1..=l + 1), 1..120);
                (
                    Just(limit(l, secs * 1000, algorithm)),
                    Just(T0 + offset),
                    arrivals,
                )
            })
        }

        /// The admitted (time, cost) pairs of `arrivals` from `start`.
        fn admitted(l: &Limit, start: i64, arrivals: &[(i64, u32)]) -> Vec<(i64, i64)> {
            let (mut now, mut stored, mut expires) = (start, LimitState::Empty, i64::MIN);
            let mut out = Vec::new();
            for &(gap, cost) in arrivals {
                now += gap;
                let state = if expires > now {
                    stored
                } else {
                    LimitState::Empty
                };
                let e = evaluate(l, state, now, cost);
                assert!(e.remaining <= l.limit, "remaining {} > limit", e.remaining);
                if e.allowed {
                    assert_eq!(e.retry_after_us, 0);
                    (stored, expires) = (e.next, e.expires_at_us);
                    out.push((now, i64::from(cost)));
                } else {
                    assert!(e.retry_after_us > 0, "a denial with no wait");
                }
            }
            out
        }

        /// The most cost admitted in any span of times `[t, t + d]` with
        /// `d < within` (closed: `within` is exclusive), each span starting
        /// at an admission.
        fn busiest(admitted: &[(i64, i64)], within: i64) -> (i64, i64, i64) {
            let mut best = (0, 0, 0);
            for (i, &(from, _)) in admitted.iter().enumerate() {
                let mut sum = 0;
                for &(at, cost) in &admitted[i..] {
                    if at - from >= within {
                        break;
                    }
                    sum += cost;
                    if sum > best.0 {
                        best = (sum, from, at - from);
                    }
                }
            }
            best
        }

        proptest! {
            #[test]
            fn a_fixed_window_admits_at_most_the_limit_per_aligned_window(
                (l, start, arrivals) in scenario(Algorithm::FixedWindow)
            ) {
                let w = l.window_us();
                let mut per_window = std::collections::BTreeMap::<i64, i64>::new();
                for (at, cost) in admitted(&l, start, &arrivals) {
                    *per_window.entry(at.div_euclid(w)).or_default() += cost;
                }
                for (index, sum) in per_window {
                    prop_assert!(sum <= i64::from(l.limit), "{sum} in window {index} of {l}");
                }
            }

            #[test]
            fn a_sliding_window_admits_at_most_the_limit_per_aligned_window_and_twice_less_one_per_window_long_span(
                (l, start, arrivals) in scenario(Algorithm::SlidingWindow)
            ) {
                let w = l.window_us();
                let admitted = admitted(&l, start, &arrivals);
                let mut per_window = std::collections::BTreeMap::<i64, i64>::new();
                for &(at, cost) in &admitted {
                    *per_window.entry(at.div_euclid(w)).or_default() += cost;
                }
                for (index, sum) in per_window {
                    prop_assert!(sum <= i64::from(l.limit), "{sum} in window {index} of {l}");
                }
                let (most, from, span) = busiest(&admitted, w);
                prop_assert!(
                    most < 2 * i64::from(l.limit),
                    "{most} admitted in {span} µs from {from} under {l}"
                );
            }

            #[test]
            fn a_token_bucket_admits_at_most_the_limit_plus_one_per_period_in_any_span(
                (l, start, arrivals) in scenario(Algorithm::TokenBucket)
            ) {
                let (limit, w) = (i64::from(l.limit), l.window_us());
                let period = (w + limit - 1) / limit;
                let admitted = admitted(&l, start, &arrivals);
                for (i, &(from, _)) in admitted.iter().enumerate() {
                    let mut sum = 0;
                    for &(at, cost) in &admitted[i..] {
                        sum += cost;
                        let d = at - from;
                        prop_assert!(
                            sum <= limit + d / period,
                            "{sum} admitted in {d} µs from {from} under {l} (T = {period} µs)"
                        );
                    }
                }
            }

            #[test]
            fn a_denied_cost_within_the_limit_is_admitted_after_its_retry_after(
                (l, start, arrivals) in prop_oneof![
                    Just(Algorithm::FixedWindow),
                    Just(Algorithm::SlidingWindow),
                    Just(Algorithm::TokenBucket),
                ].prop_flat_map(scenario),
            ) {
                let (mut now, mut stored, mut expires) = (start, LimitState::Empty, i64::MIN);
                for (gap, cost) in arrivals {
                    now += gap;
                    let state = if expires > now { stored } else { LimitState::Empty };
                    let e = evaluate(&l, state, now, cost);
                    if e.allowed {
                        (stored, expires) = (e.next, e.expires_at_us);
                    } else if cost <= l.limit {
                        let later = now + e.retry_after_us;
                        let state = if expires > later { stored } else { LimitState::Empty };
                        prop_assert!(
                            evaluate(&l, state, later, cost).allowed,
                            "{l}: cost {cost} denied at {now}, still denied {} µs later",
                            e.retry_after_us
                        );
                    }
                }
            }
        }
    }
}
