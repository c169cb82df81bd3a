//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, the
//! envoyproxy/ratelimit drop-in, on every rate-limit store, against their
//! example configuration (`tests/fixtures/envoyproxy-ratelimit-example.yaml`)
//! with every unit made 30 days long (epoch-aligned, so no test straddles a
//! window; the matching is theirs unchanged).

use std::path::{Path, PathBuf};

use apikeyd::envoy::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use apikeyd::envoy::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use apikeyd::envoy::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use apikeyd::envoy::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::envoy_harness::unary;
use crate::helpers::connect;
use crate::limiter_harness::{LimitedApp, Limiter, spawn_limited_app_with};

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

/// Their example configuration, every unit a month long, in a directory of its own.
fn example_config() -> TempDir {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/envoyproxy-ratelimit-example.yaml");
    let text = std::fs::read_to_string(fixture).unwrap();
    let monthly = text
        .replace("unit: minute", "unit: month")
        .replace("unit: second", "unit: month");
    assert_ne!(
        text, monthly,
        "the fixture has minute and second units to lengthen"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("example.yaml"), monthly).unwrap();
    dir
}

pub struct EnvoyLimitedApp {
    pub limited: LimitedApp,
    pub channel: Channel,
    /// The configuration directory the server reads (and reloads), removed on drop.
    _config_dir: TempDir,
}

pub async fn spawn(limiter: Limiter, config_dir: TempDir) -> EnvoyLimitedApp {
    let path: PathBuf = config_dir.path().to_owned();
    let limited = spawn_limited_app_with(limiter, move |settings| {
        settings.envoy.ratelimit_config = Some(path);
    })
    .await;
    let channel = connect(limited.app.addr).await;
    EnvoyLimitedApp {
        limited,
        channel,
        _config_dir: config_dir,
    }
}

pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
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

pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: 0,
    }
}

impl EnvoyLimitedApp {
    pub async fn should_rate_limit(&self, request: RateLimitRequest) -> RateLimitResponse {
        self.try_should_rate_limit(request)
            .await
            .expect("ShouldRateLimit answers")
    }

    pub async fn try_should_rate_limit(
        &self,
        request: RateLimitRequest,
    ) -> Result<RateLimitResponse, tonic::Status> {
        unary(
            self.channel.clone(),
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            request,
        )
        .await
    }
}

/// The overall code and each descriptor's.
fn codes(response: &RateLimitResponse) -> (i32, Vec<i32>) {
    (
        response.overall_code,
        response.statuses.iter().map(|s| s.code).collect(),
    )
}

fn remaining(response: &RateLimitResponse) -> Vec<u32> {
    response
        .statuses
        .iter()
        .map(|s| s.limit_remaining)
        .collect()
}

/// A value no other test (or run) uses, so counters start at zero.
fn fresh(prefix: &str) -> String {
    crate::limiter_harness::unique(prefix)
}

macro_rules! on_every_limiter_with_the_example {
    ($(async fn $name:ident($app:ident) $body:block)*) => {
        on_every_limiter_with_the_example!(@backend in_process, InProcess, $(async fn $name($app) $body)*);
        on_every_limiter_with_the_example!(@backend redis, Redis, $(async fn $name($app) $body)*);
        on_every_limiter_with_the_example!(@backend cluster, Cluster, $(async fn $name($app) $body)*);
    };
    (@backend $module:ident, $limiter:ident, $(async fn $name:ident($app:ident) $body:block)*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let test = async {
                        let $app = spawn(Limiter::$limiter, example_config()).await;
                        $body
                    };
                    tokio::time::timeout(std::time::Duration::from_secs(120), test)
                        .await
                        .expect("the test finished within 2 minutes");
                }
            )*
        }
    };
}

on_every_limiter_with_the_example! {
    async fn a_nested_descriptor_is_limited_and_reports_its_limit(app) {
        // ("source_cluster", "proxy"), ("destination_cluster", "mock"): 1 per unit.
        let mock = || request("rl", vec![descriptor(&[("source_cluster", "proxy"), ("destination_cluster", "mock")])]);

        let first = app.should_rate_limit(mock()).await;
        let second = app.should_rate_limit(mock()).await;

        assert_eq!(codes(&first), (OK, vec![OK]));
        let status = &first.statuses[0];
        let limit = status.current_limit.as_ref().expect("the limit that applied");
        assert_eq!((limit.requests_per_unit, status.limit_remaining), (1, 0));
        assert!(status.duration_until_reset.unwrap().seconds > 0);
        assert_eq!(codes(&second), (OVER, vec![OVER]));
        assert_eq!(second.statuses[0].limit_remaining, 0);
    }

    async fn a_key_only_match_counts_each_value_apart(app) {
        // ("foo", <any>): 2 per unit, for each value.
        let (a, b) = (fresh("a"), fresh("b"));
        let foo = |value: &str| request("rl", vec![descriptor(&[("foo", value)])]);

        let answers = [
            app.should_rate_limit(foo(&a)).await,
            app.should_rate_limit(foo(&a)).await,
            app.should_rate_limit(foo(&a)).await,
        ];
        let other = app.should_rate_limit(foo(&b)).await;

        let overall: Vec<i32> = answers.iter().map(|r| r.overall_code).collect();
        assert_eq!(overall, [OK, OK, OVER]);
        assert_eq!(remaining(&answers[0]), [1]);
        assert_eq!(codes(&other), (OK, vec![OK]), "another value has its own counter");
        assert_eq!(remaining(&other), [1]);
    }

    async fn zero_requests_per_unit_refuses_and_the_refused_request_counts_nothing(app) {
        let value = fresh("x");
        let banned = request("rl", vec![
            descriptor(&[("foo", &value), ("bar", "banned")]),
            descriptor(&[("foo", &value)]),
        ]);

        let refused = app.should_rate_limit(banned).await;
        let alone = app.should_rate_limit(request("rl", vec![descriptor(&[("foo", &value)])])).await;

        assert_eq!(codes(&refused), (OVER, vec![OVER, OK]));
        assert_eq!(refused.statuses[0].current_limit.as_ref().unwrap().requests_per_unit, 0);
        assert_eq!(remaining(&refused), [0, 2], "foo was looked at, not counted");
        assert_eq!(remaining(&alone), [1], "the refused request took nothing from foo");
    }

    async fn all_descriptors_are_decided_at_once_and_a_refusal_counts_none(app) {
        let value = fresh("y");
        let full = request("rl", vec![descriptor(&[("source_cluster", "proxy"), ("destination_cluster", "mock")])]);
        app.should_rate_limit(full.clone()).await;
        let mut both = full;
        both.descriptors.push(descriptor(&[("foo", &value)]));

        let refused = app.should_rate_limit(both).await;
        let foo = app.should_rate_limit(request("rl", vec![descriptor(&[("foo", &value)])])).await;

        assert_eq!(codes(&refused), (OVER, vec![OVER, OK]));
        assert_eq!(remaining(&foo), [1], "foo had room but was not charged");
    }

    async fn unlimited_descriptors_are_never_limited(app) {
        for _ in 0..5 {
            let answer = app.should_rate_limit(request("rl", vec![
                descriptor(&[("qux", "anything")]),
                descriptor(&[("foo", "z"), ("bay", "b")]),
            ])).await;
            assert_eq!(codes(&answer), (OK, vec![OK, OK]));
            assert_eq!(remaining(&answer), [u32::MAX, u32::MAX]);
            assert!(answer.statuses.iter().all(|s| s.current_limit.is_none()));
        }
    }

    async fn shadow_mode_counts_but_never_refuses(app) {
        // ("foo", <any>), ("baz", "shady"): 3 per unit in shadow mode.
        let shady = request("rl", vec![descriptor(&[("foo", &fresh("s")), ("baz", "shady")])]);
        let mut left = Vec::new();
        for _ in 0..5 {
            let answer = app.should_rate_limit(shady.clone()).await;
            assert_eq!(codes(&answer), (OK, vec![OK]));
            left.push(answer.statuses[0].limit_remaining);
        }
        assert_eq!(left, [2, 1, 0, 0, 0], "the breach shows in limit_remaining only");
    }

    async fn hits_addend_per_request_and_per_descriptor(app) {
        let (a, b) = (fresh("a"), fresh("b"));
        let mut heavy = request("rl", vec![descriptor(&[("foo", &a)])]);
        heavy.hits_addend = 2;
        let mut look = request("rl", vec![descriptor(&[("foo", &b)])]);
        look.hits_addend = 2;
        look.descriptors[0].hits_addend = Some(0);

        let first = app.should_rate_limit(heavy.clone()).await;
        let second = app.should_rate_limit(heavy).await;
        let looked = app.should_rate_limit(look.clone()).await;
        let looked_again = app.should_rate_limit(look).await;

        assert_eq!((codes(&first), remaining(&first)), ((OK, vec![OK]), vec![0]));
        assert_eq!(codes(&second).0, OVER);
        assert_eq!(remaining(&looked), [2], "hits_addend 0 looks without counting");
        assert_eq!(remaining(&looked_again), [2]);
    }

    async fn replaces_drops_the_replaced_limit(app) {
        // ("foo", v), ("bar", "bkthomps") is 1 per unit, named bkthomps; ("category", "account") replaces it.
        let value = fresh("r");
        let bkthomps = descriptor(&[("foo", &value), ("bar", "bkthomps")]);
        let both = request("rl", vec![descriptor(&[("category", "account")]), bkthomps.clone()]);

        for _ in 0..2 {
            let answer = app.should_rate_limit(both.clone()).await;
            assert_eq!(codes(&answer), (OK, vec![OK, OK]));
            assert!(answer.statuses[1].current_limit.is_none(), "replaced");
        }
        let alone = app.should_rate_limit(request("rl", vec![bkthomps])).await;
        assert_eq!((codes(&alone), remaining(&alone)), ((OK, vec![OK]), vec![0]), "the replaced counter was left alone");
    }

    async fn quota_mode_refuses_only_when_every_quota_descriptor_is_over(app) {
        // service_1: 1 per unit, service_2: 2 per unit, both in quota mode (counters shared by the test run's prefix).
        let both = request("rl", vec![descriptor(&[("service", "service_1")]), descriptor(&[("service", "service_2")])]);

        let first = app.should_rate_limit(both.clone()).await;
        let second = app.should_rate_limit(both.clone()).await;
        let third = app.should_rate_limit(both).await;

        assert_eq!(codes(&first), (OK, vec![OK, OK]));
        assert_eq!(codes(&second), (OK, vec![OVER, OK]), "one quota still has room");
        assert_eq!(codes(&third), (OVER, vec![OVER, OVER]));
    }

    async fn an_unknown_domain_limits_nothing_and_bad_requests_are_invalid_argument(app) {
        let elsewhere = app.should_rate_limit(request("elsewhere", vec![descriptor(&[("foo", "a")])])).await;
        assert_eq!(codes(&elsewhere), (OK, vec![OK]));
        let no_domain = app.try_should_rate_limit(request("", vec![descriptor(&[("foo", "a")])])).await;
        crate::helpers::assert_status(no_domain, tonic::Code::InvalidArgument, "domain");
        let no_descriptors = app.try_should_rate_limit(request("rl", vec![])).await;
        crate::helpers::assert_status(no_descriptors, tonic::Code::InvalidArgument, "descriptor");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_configuration_applies_without_a_restart_and_a_bad_one_keeps_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.yaml");
    let limit = |n: u32| {
        format!(
            "domain: edge\ndescriptors:\n  - key: tenant\n    rate_limit: {{unit: month, requests_per_unit: {n}}}\n"
        )
    };
    std::fs::write(&file, limit(5)).unwrap();
    let app = spawn(Limiter::InProcess, dir).await;
    let ask = |tenant: String| request("edge", vec![descriptor(&[("tenant", &tenant)])]);
    let limit_now = |response: RateLimitResponse| {
        response.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit
    };
    assert_eq!(limit_now(app.should_rate_limit(ask(fresh("t"))).await), 5);

    std::fs::write(&file, limit(9)).unwrap();
    let reloaded = wait_for_limit(&app, 9).await;
    std::fs::write(
        &file,
        "domain: edge\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: fortnight}\n",
    )
    .unwrap();
    let rejected = wait_for_rejected_reload(&app).await;

    assert!(reloaded, "the new limit applied within the deadline");
    assert!(
        rejected,
        "the bad file was read and refused within the deadline"
    );
    assert_eq!(
        limit_now(app.should_rate_limit(ask(fresh("t"))).await),
        9,
        "the last good configuration stays"
    );
}

/// Asks until the limit in force is `expected`, for at most 10 seconds.
async fn wait_for_limit(app: &EnvoyLimitedApp, expected: u32) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let answer = app
            .should_rate_limit(request(
                "edge",
                vec![descriptor(&[("tenant", &fresh("t"))])],
            ))
            .await;
        if answer.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit)
            == Some(expected)
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Waits (at most 10 seconds) until the server counted a refused reload.
async fn wait_for_rejected_reload(app: &EnvoyLimitedApp) -> bool {
    let series = "apikeyd_envoy_ratelimit_config_reloads_total{result=\"rejected\"}";
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let metrics = crate::helpers::scrape(app.limited.app.http_addr).await;
        // The counter appears with the first refused reload.
        if crate::helpers::sample_or_zero(&metrics, series) >= 1.0 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// `apikeyd config check` and `apikeyd serve` with a file envoyproxy/ratelimit would refuse.
#[test]
fn a_file_their_loader_refuses_stops_config_check_and_serve_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rl.yaml");
    std::fs::write(
        &file,
        "domain: edge\ndescriptors:\n  - key: tenant\n    rate_limit:\n      unit: fortnight\n",
    )
    .unwrap();
    for command in [&["config", "check"][..], &["serve"][..]] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_apikeyd"))
            .args(command)
            .env_clear()
            .env("APIKEYD_DATA_DIR", dir.path())
            .env("APIKEYD_GRPC_ADDR", "127.0.0.1:0")
            .env("APIKEYD_HTTP_ADDR", "127.0.0.1:0")
            .env("APIKEYD_ENVOY_RATELIMIT_CONFIG", &file)
            .output()
            .expect("run apikeyd");

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {stderr}");
        let expected = format!(
            "envoy_ratelimit_config: {}:5: invalid rate limit unit 'fortnight'",
            file.display()
        );
        assert!(stderr.contains(&expected), "{command:?}: {stderr}");
    }
}
