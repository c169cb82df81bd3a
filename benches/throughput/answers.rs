//! What a server answered during a scenario, from its own counters.
//!
//! h2load sees HTTP statuses only, and every gRPC answer, error or not, is
//! HTTP 200. So around each run the benchmark reads the server's counters
//! (apikeyd's `/metrics`, or the seed server's tallies) and a scenario's
//! figures stand only when every answer of the run was the one it expects:
//! an error is never counted as throughput.

use std::collections::BTreeMap;
use std::fmt;

/// A Prometheus text page, as `GET /metrics` returns it.
pub struct MetricsPage(pub String);

/// One sample: its labels and its value.
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl MetricsPage {
    /// Every sample of the series `name` (a histogram's `name_count` is a
    /// series of its own).
    pub fn samples(&self, name: &str) -> Vec<Sample> {
        self.0
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?;
                let (labels, value) = match rest.strip_prefix('{') {
                    Some(rest) => {
                        let (labels, value) = rest.split_once("} ")?;
                        (parse_labels(labels), value)
                    }
                    None => (BTreeMap::new(), rest.strip_prefix(' ')?),
                };
                Some(Sample {
                    labels,
                    value: value.trim().parse().ok()?,
                })
            })
            .collect()
    }

    /// The sum of the samples of `name` whose labels include every pair of `with`.
    pub fn total(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .iter()
            .filter(|sample| {
                with.iter()
                    .all(|(k, v)| sample.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|sample| sample.value)
            .sum()
    }
}

/// `a="1",b="x"` (label values in these pages hold no quotes or commas).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter_map(|pair| {
            let (name, value) = pair.split_once("=\"")?;
            Some((name.to_owned(), value.trim_end_matches('"').to_owned()))
        })
        .collect()
}

/// Answers by kind: a validation code (`valid`, `rate_limited`, ...), or
/// `gRPC <status>` for calls that are not `Validate` and for errors.
#[derive(Clone, Default, PartialEq)]
pub struct Answers(BTreeMap<String, u64>);

/// The answer of a call that ends in gRPC status OK (and is not `Validate`).
pub const GRPC_OK: &str = "gRPC OK";
/// A limit decided by the failure policy because Redis did not answer in
/// time: not a measurement of the limiter.
const DECIDED_BY_POLICY: &str = "decided by the Redis failure policy";

impl Answers {
    /// apikeyd's answers to `method` (`package.Service/Method`) so far.
    pub fn of_apikeyd(page: &MetricsPage, method: &str) -> Answers {
        const VALIDATE: &str = "apikeyd.v1.ValidationService/Validate";
        let mut answers = Answers::default();
        for sample in page.samples("apikeyd_grpc_requests_total") {
            let code = sample.labels.get("code").map_or("?", String::as_str);
            let counted = sample.labels.get("method").map(String::as_str) == Some(method)
                // A Validate that ends OK is counted by its validation code.
                && !(method == VALIDATE && code == "OK");
            if counted {
                answers.add(format!("gRPC {code}"), sample.value);
            }
        }
        if method == VALIDATE {
            for sample in page.samples("apikeyd_validations_total") {
                let code = sample.labels.get("code").map_or("?", String::as_str);
                answers.add(code.to_owned(), sample.value);
            }
            let by_policy = page.total(
                "apikeyd_rate_limit_decisions_total",
                &[("decided_by", "policy")],
            );
            answers.add(DECIDED_BY_POLICY.to_owned(), by_policy);
        }
        answers
    }

    pub fn add(&mut self, answer: String, count: f64) {
        *self.0.entry(answer).or_default() += count as u64;
    }

    /// The answers given since `earlier`.
    pub fn since(&self, earlier: &Answers) -> Answers {
        Answers(
            self.0
                .iter()
                .map(|(answer, count)| {
                    let before = earlier.0.get(answer).copied().unwrap_or(0);
                    (answer.clone(), count.saturating_sub(before))
                })
                .filter(|(_, count)| *count > 0)
                .collect(),
        )
    }

    pub fn count(&self, answer: &str) -> u64 {
        self.0.get(answer).copied().unwrap_or(0)
    }

    /// Answers other than `expected`.
    pub fn unexpected(&self, expected: &str) -> u64 {
        self.0
            .iter()
            .filter(|(answer, _)| answer.as_str() != expected)
            .map(|(_, count)| count)
            .sum()
    }
}

impl fmt::Display for Answers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "none");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(answer, count)| format!("{count} {answer}"))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// How a run's answers compare with what its scenario expects.
pub struct Checked {
    /// Responses h2load received that were not the expected answer: the
    /// server's unexpected answers, h2load's failures, and responses h2load
    /// counted that the server did not count as expected.
    pub wrong: u64,
    /// The server's answers during the run (warm-up included).
    pub answers: Answers,
}

/// Checks `done` responses (h2load's count, `failed` of them failed at the
/// HTTP level) against the server's `answers` during the run.
pub fn check(answers: Answers, expected: &str, done: u64, failed: u64) -> Checked {
    let missing = done.saturating_sub(answers.count(expected));
    Checked {
        wrong: answers.unexpected(expected) + failed + missing,
        answers,
    }
}
