//! What callers send the limiter stays within what it counts exactly:
//! a CheckRateLimit counter is named by its limit too (so a huge limit cannot
//! starve an identifier for smaller ones), names are bounded and errors quote
//! only their start, `add_to_quota` is bounded and balances saturate, a cost
//! no limit can admit is refused with a bounded wait, and decide.lua's
//! arithmetic is exact beyond 2^53. The limiter behaviours run on every store.

use apikeyd::grpc::pb::{self, RateLimitAlgorithm, ValidationCode};
use tonic::Code;

use crate::helpers::{assert_status, code_of};
use crate::limiter_harness::{
    Limiter, check_request, millis, rate_limit, redis_connection, shared_redis_url,
    spawn_limited_app, unique,
};
use crate::on_every_limiter;

/// The longest window (30 days, epoch-aligned): a test never straddles its boundary.
const LONG_WINDOW_MS: u64 = 30 * 86_400_000;
const MAX_QUOTA: i64 = 1_000_000_000_000;
const ALGORITHMS: [RateLimitAlgorithm; 3] = [
    RateLimitAlgorithm::FixedWindow,
    RateLimitAlgorithm::SlidingWindow,
    RateLimitAlgorithm::TokenBucket,
];

fn add_to_quota(id: &str, amount: i64) -> pb::UpdateKeyRequest {
    pb::UpdateKeyRequest {
        id: id.to_owned(),
        quota_change: Some(pb::update_key_request::QuotaChange::AddToQuota(amount)),
        ..Default::default()
    }
}

on_every_limiter! {
    async fn a_huge_limit_cannot_starve_an_identifier_for_callers_with_a_smaller_one(app) {
        for algorithm in ALGORITHMS {
            let id = unique("ip");
            let huge = app.check(check_request("login", &id, 1_000_000_000, LONG_WINDOW_MS, algorithm, 1_000_000_000)).await;
            assert!(huge.allowed, "{algorithm:?}");

            let small = app.check(check_request("login", &id, 5, LONG_WINDOW_MS, algorithm, 1)).await;
            let again = app.check(check_request("login", &id, 5, LONG_WINDOW_MS, algorithm, 1)).await;

            assert!(small.allowed, "{algorithm:?}: a smaller limit counts apart");
            assert_eq!((small.remaining, again.remaining), (4, 3), "{algorithm:?}: one limit, one count");
        }
    }

    async fn add_to_quota_is_bounded_and_balances_saturate(app) {
        let quota = pb::UsageQuota { remaining: 10, refill_amount: 0, refill_interval: 0 };
        let (key, record) = app.create_limited_key(&unique("owner"), vec![], Some(quota)).await;
        let update = |amount| {
            let mut keys = app.app.keys.clone();
            let request = app.app.authed(add_to_quota(&record.id, amount));
            async move { keys.update_key(request).await }
        };

        for amount in [i64::MAX, i64::MIN, MAX_QUOTA + 1, -MAX_QUOTA - 1] {
            assert_status(update(amount).await, Code::InvalidArgument, "add_to_quota");
        }
        update(MAX_QUOTA).await.unwrap();
        let capped = update(MAX_QUOTA).await.unwrap().into_inner().api_key.unwrap();

        assert_eq!(capped.quota.unwrap().remaining, MAX_QUOTA, "capped, not wrapped");
        let verdict = app.validate_with(&key, 1, None).await;
        assert_eq!(code_of(&verdict), ValidationCode::Valid, "the limiter still answers");
        assert_eq!(verdict.api_key.unwrap().quota.unwrap().remaining, MAX_QUOTA - 1);
        update(-MAX_QUOTA).await.unwrap();
        let floored = update(-MAX_QUOTA).await.unwrap().into_inner().api_key.unwrap();
        assert_eq!(floored.quota.unwrap().remaining, 0);
        assert_eq!(code_of(&app.validate_with(&key, 1, None).await), ValidationCode::UsageExceeded);
    }

    async fn a_cost_no_limit_can_admit_is_refused_with_a_wait_within_two_windows(app) {
        for algorithm in ALGORITHMS {
            let (key, _) = app.create_limited_key(&unique("owner"), vec![rate_limit(10, LONG_WINDOW_MS, algorithm)], None).await;

            let refused = app.validate_with(&key, 1_000_000_000, None).await;

            assert_eq!(code_of(&refused), ValidationCode::RateLimited, "{algorithm:?}");
            let status = refused.rate_limit.unwrap();
            assert_eq!(status.remaining, 10, "{algorithm:?}: nothing was taken");
            let wait = millis(&status.retry_after);
            assert!((1..=2 * LONG_WINDOW_MS as i64).contains(&wait), "{algorithm:?}: retry after {wait} ms");
            assert!(app.validate_with(&key, 1, None).await.valid, "{algorithm:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_names_are_refused_naming_the_field_and_quoting_only_their_start() {
    let app = spawn_limited_app(Limiter::InProcess).await;
    // Far over every name bound, within the server's request size limit.
    let huge = "x".repeat(50_000);
    for (namespace, identifier, field) in [
        (huge.as_str(), "ip", "namespace"),
        ("login", huge.as_str(), "identifier"),
    ] {
        let request = check_request(
            namespace,
            identifier,
            5,
            LONG_WINDOW_MS,
            RateLimitAlgorithm::FixedWindow,
            1,
        );

        let refused = app.limits.clone().check_rate_limit(request).await;

        let status = refused.expect_err("an over-long name is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(status.message().starts_with(field), "{}", status.message());
        assert!(
            status.message().len() < 200,
            "{} bytes of message",
            status.message().len()
        );
    }
}

/// decide.lua's integer helpers, run by the shared Redis's Lua on triples
/// whose products exceed 2^53, against exact 128-bit arithmetic. Plain
/// double arithmetic gets some of these wrong (asserted too, so the test
/// shows what it guards against).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_lua_divides_products_beyond_two_to_the_53_exactly() {
    let script = include_str!("../../src/ratelimit/decide.lua");
    let helpers = &script[script.find("local floor = math.floor").unwrap()
        ..script.find("local function ceil_ms").unwrap()];
    let probe = format!(
        "{helpers}\nlocal out = {{}}\n\
         for i = 1, #ARGV, 3 do\n\
           local q, inexact = muldiv(tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]))\n\
           out[#out + 1] = q\n\
           out[#out + 1] = inexact and 1 or 0\n\
         end\n\
         return out"
    );
    let window: u64 = 30 * 86_400_000_000;
    let mut triples: Vec<(u64, u64, u64)> = (999_999_000..1_000_000_000)
        .map(|a| (a, window, window))
        .collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |bound: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 11) % bound
    };
    for _ in 0..1_000 {
        // Exact quotients q = a * b / d, where rounding bites hardest.
        let a = 1 + next((1 << 30) - 1);
        let q = next(a);
        let d = a * (1 + next(((1 << 42) / a).max(2) - 1));
        triples.push((a, (u128::from(q) * u128::from(d) / u128::from(a)) as u64, d));
        // And arbitrary ones (quotients below 2^42).
        let d = 1 + next((1 << 42) - 1);
        triples.push((next(1 << 30), next(d + 1), d));
        // Products below 2^53, which take the one-division path.
        let d = 1 + next((1 << 42) - 1);
        triples.push((next(1 << 20), next((1 << 32).min(d + 1)), d));
    }
    // Either side of 2^53, where the paths meet (quotients below 2^42).
    for b in [(1 << 30) - 1, 1 << 30, (1 << 30) + 1] {
        for d in [4_099, 1_000_003, (1 << 42) - 1] {
            triples.push((1 << 23, b, d));
        }
    }
    let mut connection = redis_connection(&shared_redis_url());
    let mut naive_errors = 0;
    for chunk in triples.chunks(300) {
        let mut eval = ::redis::cmd("EVAL");
        eval.arg(&probe).arg(0);
        for (a, b, d) in chunk {
            eval.arg(*a).arg(*b).arg(*d);
        }
        let answers: Vec<i64> = eval.query(&mut connection).expect("EVAL answers");
        for ((a, b, d), answer) in chunk.iter().zip(answers.chunks(2)) {
            let product = u128::from(*a) * u128::from(*b);
            let exact = product / u128::from(*d);
            let inexact = product % u128::from(*d) != 0;
            assert_eq!(
                (answer[0] as u128, answer[1] == 1),
                (exact, inexact),
                "muldiv({a}, {b}, {d})"
            );
            let naive = *a as f64 * *b as f64 / *d as f64;
            if naive.floor() as u128 != exact
                || naive.ceil() as u128 != product.div_ceil(u128::from(*d))
            {
                naive_errors += 1;
            }
        }
    }
    assert!(
        naive_errors > 0,
        "plain doubles were exact on every triple: the test guards nothing"
    );
}

/// decide.lua sets a counter's expiry once per window (the first write of a
/// window; later ones keep it): however many decisions a window holds, every
/// key the script wrote still expires, at the window's end or earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_expires_however_many_decisions_its_window_holds() {
    let app = spawn_limited_app(Limiter::Redis).await;
    let window_ms = 3_600_000;
    for algorithm in ALGORITHMS {
        let id = unique("ip");
        for _ in 0..5 {
            let answer = app
                .check(check_request("ttl", &id, 100, window_ms, algorithm, 1))
                .await;
            assert!(answer.allowed, "{algorithm:?}");
        }
    }
    let mut connection = redis_connection(app.redis_url.as_deref().unwrap());
    // The counters of namespace "ttl" (the server keeps other keys, such as
    // its invalidation stream, under the same prefix).
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{}:{{n:ttl:*", app.prefix))
        .query(&mut connection)
        .unwrap();
    assert_eq!(
        keys.len(),
        ALGORITHMS.len(),
        "one counter per algorithm: {keys:?}"
    );
    for key in keys {
        let ttl_ms: i64 = ::redis::cmd("PTTL")
            .arg(&key)
            .query(&mut connection)
            .unwrap();
        // A sliding window's state lives for two windows.
        assert!(
            ttl_ms > 0 && ttl_ms <= 2 * window_ms as i64,
            "{key} expires in {ttl_ms} ms"
        );
    }
}
