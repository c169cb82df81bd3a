//! What one `ShouldRateLimit` request asks, worked out against the
//! configuration before anything is counted, and how the counted answers
//! become envoyproxy/ratelimit's response.
//!
//! Per descriptor, as theirs: the matched rule (or the descriptor's own
//! `limit` override), `hits_addend` (the descriptor's own, which may be 0 to
//! look without counting, else the request's, at least 1), `unlimited`
//! answered without the store, `replaces` dropping the named rules,
//! `requests_per_unit: 0` refusing every hit, `shadow_mode` never refusing,
//! `quota_mode` refusing the request only when every quota-mode descriptor is
//! over. Unlike theirs, the counted descriptors are decided all at once and a
//! refused request counts nothing.

use std::collections::HashSet;

use prost_types::Duration as ProtoDuration;

use super::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit as ProtoLimit, rate_limit::Unit as ProtoUnit,
};
use super::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use super::ratelimit_config::{RateLimitConfig, Rule, RuleLimit, Unit, counter_name};
use crate::domain::limit::MAX_LIMIT;
use crate::domain::{Algorithm, Limit};
use crate::error::{Error, Result};
use crate::ratelimit::{Enforcement, LimitStatus};

/// One limit the store counts for the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedLimit {
    /// The domain and the descriptor's entries: the counter's identity.
    pub counter: String,
    pub limit: Limit,
    /// What this request takes from it (0: look without counting).
    pub hits: u32,
    /// How it weighs on the store's decision: `shadow_mode` is
    /// [`Enforcement::Shadow`], `quota_mode` [`Enforcement::Collective`], or
    /// `Shadow` when a quota-mode descriptor the store does not see
    /// (`requests_per_unit: 0` without hits) is not over, since the quota
    /// descriptors can then never be all over.
    pub mode: Enforcement,
}

/// What one request descriptor comes to.
#[derive(Clone, Debug, PartialEq)]
enum Planned {
    /// No rule applies (or it was replaced): OK, no current limit.
    NoLimit,
    /// `unlimited`: OK, `limit_remaining` u32::MAX.
    Unlimited,
    /// `requests_per_unit: 0`: every hit is over, without asking the store.
    Zero {
        reported: ProtoLimit,
        unit: Unit,
        hits: u32,
        mode: Enforcement,
    },
    /// Counted by the store: `index` into [`Plan::limits`].
    Counted {
        index: usize,
        reported: ProtoLimit,
        mode: Enforcement,
    },
}

/// A request, worked out.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    descriptors: Vec<Planned>,
    /// What the store decides, all at once.
    pub limits: Vec<PlannedLimit>,
}

impl Plan {
    /// Matches every descriptor of `request` against `config`.
    pub fn new(config: &RateLimitConfig, request: &RateLimitRequest) -> Result<Plan> {
        if request.domain.is_empty() {
            return Err(Error::invalid(
                "domain",
                "rate limit domain must not be empty",
            ));
        }
        if request.descriptors.is_empty() {
            return Err(Error::invalid(
                "descriptors",
                "rate limit descriptor list must not be empty",
            ));
        }
        let mut matched: Vec<Option<(Rule, String)>> = Vec::new();
        let mut hits = Vec::new();
        for descriptor in &request.descriptors {
            let entries: Vec<(&str, &str)> = descriptor
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            let counter = counter_name(&request.domain, entries.iter().copied());
            let rule = match &descriptor.limit {
                Some(over) => Some((override_rule(over.requests_per_unit, over.unit)?, counter)),
                None => config
                    .find(&request.domain, &entries)
                    .map(|m| (m.rule.clone(), m.counter)),
            };
            matched.push(rule);
            hits.push(hits_of(descriptor.hits_addend, request.hits_addend)?);
        }
        let replaced: HashSet<&str> = matched
            .iter()
            .flatten()
            .flat_map(|(rule, _)| rule.replaces.iter().map(String::as_str))
            .collect();
        let mut plan = Plan {
            descriptors: Vec::with_capacity(matched.len()),
            limits: Vec::new(),
        };
        for (found, hits) in matched.iter().zip(hits) {
            let planned = match found {
                None => Planned::NoLimit,
                Some((rule, _)) if rule.name.as_deref().is_some_and(|n| replaced.contains(n)) => {
                    Planned::NoLimit
                }
                Some((rule, counter)) => plan.add(rule, counter, hits),
            };
            plan.descriptors.push(planned);
        }
        let idle_quota_zero = plan.descriptors.iter().any(|d| {
            matches!(
                d,
                Planned::Zero {
                    hits: 0,
                    mode: Enforcement::Collective,
                    ..
                }
            )
        });
        if idle_quota_zero {
            for limit in plan
                .limits
                .iter_mut()
                .filter(|l| l.mode == Enforcement::Collective)
            {
                limit.mode = Enforcement::Shadow;
            }
        }
        Ok(plan)
    }

    fn add(&mut self, rule: &Rule, counter: &str, hits: u32) -> Planned {
        let RuleLimit::PerUnit {
            requests_per_unit,
            unit,
            algorithm,
        } = rule.limit
        else {
            return Planned::Unlimited;
        };
        let mode = if rule.shadow_mode {
            Enforcement::Shadow
        } else if rule.quota_mode {
            Enforcement::Collective
        } else {
            Enforcement::Enforced
        };
        let reported = ProtoLimit {
            name: rule.name.clone().unwrap_or_default(),
            requests_per_unit,
            unit: proto_unit(unit) as i32,
        };
        if requests_per_unit == 0 {
            return Planned::Zero {
                reported,
                unit,
                hits,
                mode,
            };
        }
        self.limits.push(PlannedLimit {
            counter: counter.to_owned(),
            limit: Limit {
                limit: requests_per_unit,
                window_ms: unit.seconds() * 1000,
                algorithm,
            },
            hits,
            mode,
        });
        Planned::Counted {
            index: self.limits.len() - 1,
            reported,
            mode,
        }
    }

    /// Whether a `requests_per_unit: 0` rule refuses the request before the
    /// store is asked (an enforced one with hits, or every quota-mode
    /// descriptor being one with hits): then the store only looks.
    pub fn refused_before_counting(&self) -> bool {
        let mut quota = self.descriptors.iter().filter_map(|d| match d {
            Planned::Zero { hits, mode, .. } if *mode == Enforcement::Collective => Some(*hits > 0),
            Planned::Counted { mode, .. } if *mode == Enforcement::Collective => Some(false),
            _ => None,
        });
        let enforced_zero = self.descriptors.iter().any(
            |d| matches!(d, Planned::Zero { hits, mode: Enforcement::Enforced, .. } if *hits > 0),
        );
        let first = quota.next();
        enforced_zero || (first == Some(true) && quota.all(|over| over))
    }

    /// The response, from the store's answer for each of [`Plan::limits`]
    /// (in order) and its clock.
    pub fn respond(&self, statuses: &[LimitStatus], now_us: i64) -> RateLimitResponse {
        let mut refused = false;
        let (mut quota_total, mut quota_over) = (0, 0);
        let mut out = Vec::with_capacity(self.descriptors.len());
        for planned in &self.descriptors {
            let (status, over, mode) = match planned {
                Planned::NoLimit => (status(Code::Ok, None, 0, None), false, None),
                Planned::Unlimited => (status(Code::Ok, None, u32::MAX, None), false, None),
                Planned::Zero {
                    reported,
                    unit,
                    hits,
                    mode,
                } => {
                    let window_us = unit.seconds() as i64 * 1_000_000;
                    let reset = window_us - now_us.rem_euclid(window_us);
                    let over = *hits > 0;
                    let code = if over { Code::OverLimit } else { Code::Ok };
                    let status = status(code, Some(reported.clone()), 0, Some(reset));
                    (status, over, Some(*mode))
                }
                Planned::Counted {
                    index,
                    reported,
                    mode,
                } => {
                    let answer = &statuses[*index];
                    let over = !answer.allowed;
                    let code = if over { Code::OverLimit } else { Code::Ok };
                    let reset = (answer.reset_at_us - now_us).max(0);
                    let status =
                        status(code, Some(reported.clone()), answer.remaining, Some(reset));
                    (status, over, Some(*mode))
                }
            };
            let mut status = status;
            match mode {
                Some(Enforcement::Enforced) => refused |= over,
                Some(Enforcement::Shadow) => status.code = Code::Ok as i32,
                Some(Enforcement::Collective) => {
                    quota_total += 1;
                    quota_over += usize::from(over);
                }
                None => {}
            }
            out.push(status);
        }
        refused |= quota_total > 0 && quota_over == quota_total;
        RateLimitResponse {
            overall_code: if refused { Code::OverLimit } else { Code::Ok } as i32,
            statuses: out,
            ..Default::default()
        }
    }
}

fn status(
    code: Code,
    limit: Option<ProtoLimit>,
    remaining: u32,
    reset_us: Option<i64>,
) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: limit,
        limit_remaining: remaining,
        duration_until_reset: reset_us.map(|us| ProtoDuration {
            seconds: us.div_euclid(1_000_000),
            nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
        }),
        ..Default::default()
    }
}

/// A descriptor's own `limit`: a fixed window, never shadowed (as theirs).
fn override_rule(requests_per_unit: u32, unit: i32) -> Result<Rule> {
    let unit = match ProtoUnit::try_from(unit) {
        Ok(ProtoUnit::Second) => Unit::Second,
        Ok(ProtoUnit::Minute) => Unit::Minute,
        Ok(ProtoUnit::Hour) => Unit::Hour,
        Ok(ProtoUnit::Day) => Unit::Day,
        Ok(ProtoUnit::Week) => Unit::Week,
        Ok(ProtoUnit::Month) => Unit::Month,
        Ok(ProtoUnit::Year) => Unit::Year,
        Ok(ProtoUnit::Unknown) | Err(_) => {
            return Err(Error::invalid(
                "descriptors.limit.unit",
                format!("{unit} is not a unit; use SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR"),
            ));
        }
    };
    if requests_per_unit > MAX_LIMIT {
        return Err(Error::invalid(
            "descriptors.limit.requests_per_unit",
            format!("at most {MAX_LIMIT}"),
        ));
    }
    Ok(Rule {
        limit: RuleLimit::PerUnit {
            requests_per_unit,
            unit,
            algorithm: Algorithm::FixedWindow,
        },
        name: None,
        replaces: Vec::new(),
        shadow_mode: false,
        quota_mode: false,
    })
}

/// The descriptor's own `hits_addend` (0 allowed), else the request's, at least 1.
fn hits_of(descriptor: Option<u64>, request: u32) -> Result<u32> {
    let hits = descriptor.unwrap_or(u64::from(request.max(1)));
    if hits > u64::from(MAX_LIMIT) {
        return Err(Error::invalid(
            "hits_addend",
            format!("at most {MAX_LIMIT} (got {hits})"),
        ));
    }
    Ok(hits as u32)
}

fn proto_unit(unit: Unit) -> ProtoUnit {
    match unit {
        Unit::Second => ProtoUnit::Second,
        Unit::Minute => ProtoUnit::Minute,
        Unit::Hour => ProtoUnit::Hour,
        Unit::Day => ProtoUnit::Day,
        Unit::Week => ProtoUnit::Week,
        Unit::Month => ProtoUnit::Month,
        Unit::Year => ProtoUnit::Year,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::envoy::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use crate::envoy::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };

    fn example() -> RateLimitConfig {
        let text = include_str!("../../tests/fixtures/envoyproxy-ratelimit-example.yaml");
        RateLimitConfig::parse(&[(PathBuf::from("example.yaml"), text.to_owned())]).unwrap()
    }

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "rl".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    /// What the store would answer: `allowed` per limit, `remaining` a tenth of it.
    fn answers(plan: &Plan, allowed: &[bool]) -> Vec<LimitStatus> {
        plan.limits
            .iter()
            .zip(allowed)
            .map(|(l, allowed)| LimitStatus {
                limit: l.limit,
                allowed: *allowed,
                remaining: if *allowed { l.limit.limit / 10 } else { 0 },
                reset_at_us: 60_000_000,
                retry_after_us: if *allowed { 0 } else { 1_000_000 },
            })
            .collect()
    }

    fn codes(response: &RateLimitResponse) -> (i32, Vec<i32>) {
        (
            response.overall_code,
            response.statuses.iter().map(|s| s.code).collect(),
        )
    }

    const OK: i32 = Code::Ok as i32;
    const OVER: i32 = Code::OverLimit as i32;

    #[test]
    fn nested_and_key_only_descriptors_are_counted_per_value() {
        let plan = Plan::new(
            &example(),
            &request(vec![
                descriptor(&[("source_cluster", "proxy"), ("destination_cluster", "mock")]),
                descriptor(&[("foo", "pelican")]),
                descriptor(&[("foo", "pelican"), ("bar", "anything")]),
                descriptor(&[("nothing", "matches")]),
            ]),
        )
        .unwrap();

        let limits: Vec<(u32, u64)> = plan
            .limits
            .iter()
            .map(|l| (l.limit.limit, l.limit.window_ms))
            .collect();
        assert_eq!(limits, [(1, 60_000), (2, 60_000), (3, 60_000)]);
        assert!(
            plan.limits
                .iter()
                .all(|l| l.hits == 1 && l.limit.algorithm == Algorithm::FixedWindow)
        );
        assert_eq!(plan.limits[1].counter, "rl|foo=pelican");
        let response = plan.respond(&answers(&plan, &[true, true, true]), 0);
        assert_eq!(codes(&response), (OK, vec![OK, OK, OK, OK]));
        let none = &response.statuses[3];
        assert_eq!(
            (none.current_limit.as_ref(), none.limit_remaining),
            (None, 0)
        );
        let first = &response.statuses[0];
        assert_eq!(first.current_limit.as_ref().unwrap().requests_per_unit, 1);
        assert_eq!(
            first.current_limit.as_ref().unwrap().unit,
            ProtoUnit::Minute as i32
        );
        assert_eq!(first.duration_until_reset.unwrap().seconds, 60);
        let over = plan.respond(&answers(&plan, &[true, false, true]), 0);
        assert_eq!(codes(&over), (OVER, vec![OK, OVER, OK, OK]));
    }

    #[test]
    fn zero_requests_per_unit_refuses_before_counting_and_unlimited_skips_the_store() {
        let plan = Plan::new(
            &example(),
            &request(vec![
                descriptor(&[("foo", "x"), ("bar", "banned")]),
                descriptor(&[("foo", "x"), ("bay", "y")]),
                descriptor(&[("qux", "z")]),
                descriptor(&[("foo", "x")]),
            ]),
        )
        .unwrap();

        assert!(plan.refused_before_counting());
        assert_eq!(plan.limits.len(), 1, "only foo=x reaches the store");
        let response = plan.respond(&answers(&plan, &[true]), 0);
        assert_eq!(codes(&response), (OVER, vec![OVER, OK, OK, OK]));
        let banned = &response.statuses[0];
        assert_eq!(
            (
                banned.limit_remaining,
                banned.current_limit.as_ref().unwrap().name.as_str()
            ),
            (0, "banned_limit")
        );
        for unlimited in &response.statuses[1..3] {
            assert_eq!(
                (unlimited.limit_remaining, unlimited.current_limit.as_ref()),
                (u32::MAX, None)
            );
        }
    }

    #[test]
    fn shadow_mode_never_refuses() {
        let plan = Plan::new(
            &example(),
            &request(vec![descriptor(&[("foo", "x"), ("baz", "shady")])]),
        )
        .unwrap();
        assert_eq!(plan.limits[0].mode, Enforcement::Shadow);
        let response = plan.respond(&answers(&plan, &[false]), 0);
        assert_eq!(codes(&response), (OK, vec![OK]));
        assert_eq!(
            response.statuses[0].limit_remaining, 0,
            "the breach still shows"
        );
    }

    #[test]
    fn replaces_drops_the_named_rules_of_the_same_request() {
        // category=account replaces `bkthomps` and `fake_name`; override replaces `banned_limit`.
        let plan = Plan::new(
            &example(),
            &request(vec![
                descriptor(&[("category", "account")]),
                descriptor(&[("foo", "x"), ("bar", "bkthomps")]),
                descriptor(&[("source_cluster", "proxy"), ("destination_cluster", "fake")]),
                descriptor(&[
                    ("source_cluster", "proxy"),
                    ("destination_cluster", "override"),
                ]),
                descriptor(&[("foo", "x"), ("bar", "banned")]),
            ]),
        )
        .unwrap();

        assert!(!plan.refused_before_counting(), "banned_limit was replaced");
        let kept: Vec<u32> = plan.limits.iter().map(|l| l.limit.limit).collect();
        assert_eq!(kept, [4, 2], "category (4/min) and override (2/min) only");
        let response = plan.respond(&answers(&plan, &[true, true]), 0);
        assert_eq!(codes(&response), (OK, vec![OK; 5]));
        assert!(response.statuses[1].current_limit.is_none());
    }

    #[test]
    fn hits_addend_comes_from_the_descriptor_then_the_request() {
        let mut req = request(vec![
            descriptor(&[("foo", "a")]),
            descriptor(&[("foo", "b")]),
        ]);
        req.hits_addend = 3;
        req.descriptors[1].hits_addend = Some(0);
        let plan = Plan::new(&example(), &req).unwrap();
        let hits: Vec<u32> = plan.limits.iter().map(|l| l.hits).collect();
        assert_eq!(hits, [3, 0]);
        req.descriptors[0].hits_addend = Some(u64::from(MAX_LIMIT) + 1);
        assert!(Plan::new(&example(), &req).is_err());
    }

    #[test]
    fn a_descriptors_own_limit_overrides_the_configuration() {
        let mut req = request(vec![descriptor(&[("foo", "a")])]);
        req.descriptors[0].limit = Some(RateLimitOverride {
            requests_per_unit: 42,
            unit: ProtoUnit::Hour as i32,
        });
        let plan = Plan::new(&example(), &req).unwrap();
        assert_eq!(
            (plan.limits[0].limit.limit, plan.limits[0].limit.window_ms),
            (42, 3_600_000)
        );
        req.descriptors[0].limit.as_mut().unwrap().unit = ProtoUnit::Unknown as i32;
        assert!(
            Plan::new(&example(), &req)
                .unwrap_err()
                .to_string()
                .contains("descriptors.limit.unit")
        );
    }

    #[test]
    fn quota_mode_refuses_only_when_every_quota_descriptor_is_over() {
        let plan = Plan::new(
            &example(),
            &request(vec![
                descriptor(&[("service", "service_1")]),
                descriptor(&[("service", "service_2")]),
            ]),
        )
        .unwrap();
        assert!(
            plan.limits
                .iter()
                .all(|l| l.mode == Enforcement::Collective)
        );
        let one_over = plan.respond(&answers(&plan, &[false, true]), 0);
        assert_eq!(codes(&one_over), (OK, vec![OVER, OK]));
        let both_over = plan.respond(&answers(&plan, &[false, false]), 0);
        assert_eq!(codes(&both_over), (OVER, vec![OVER, OVER]));
    }

    #[test]
    fn an_empty_domain_or_descriptor_list_is_invalid_argument() {
        let mut empty = request(vec![]);
        assert!(
            Plan::new(&example(), &empty)
                .unwrap_err()
                .to_string()
                .contains("descriptor list")
        );
        empty.descriptors.push(descriptor(&[("foo", "a")]));
        empty.domain.clear();
        assert!(
            Plan::new(&example(), &empty)
                .unwrap_err()
                .to_string()
                .contains("domain")
        );
        let unknown = RateLimitRequest {
            domain: "elsewhere".into(),
            ..request(vec![descriptor(&[("foo", "a")])])
        };
        let plan = Plan::new(&example(), &unknown).unwrap();
        assert!(plan.limits.is_empty(), "an unknown domain limits nothing");
    }
}
