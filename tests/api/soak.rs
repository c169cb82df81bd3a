//! The soak (issue 12): three replicas over one PostgreSQL and the shared
//! Redis, driven from this test process at a fixed rate with a mix of
//! Validate, CheckRateLimit and management calls. It asserts zero errors,
//! prints p50/p99 per call kind, samples each replica's resident memory
//! after the warm-up and asserts its slope is flat within a bound, and
//! counts the replicas' Redis keys against what retention allows.
//!
//! The CI variant runs 30 s inside the suite; a long run:
//! `APIKEYD_SOAK_SECONDS=600 cargo test --test api soak -- --nocapture`
//! (`APIKEYD_SOAK_RATE` sets the calls per second, 150 by default).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use apikeyd::grpc::pb::{self, RateLimitAlgorithm, ValidationCode};
use tonic::Status;
use tonic::transport::Channel;

use crate::fault_harness::{ReplicaSet, Tally};
use crate::helpers::{create_request, measuring_alone, with_bearer};
use crate::limiter_harness::{check_request, rate_limit, redis_connection};

/// Keys validated during the soak, each with one limit of its own.
const KEYS: usize = 20;
/// Identifiers CheckRateLimit counts, each under one limit.
const IDENTIFIERS: usize = 50;
/// 30 days: no window of the soak rolls over.
const WINDOW_MS: u64 = 30 * 86_400_000;
/// The resident memory slope allowed after the warm-up, per replica. A
/// replica that kept 1 KiB per call (its 50 calls/s) would grow 3 MB/min; the
/// long runs measured -0.3 to +0.1 MB/min, and are held to 1 MiB/min. A
/// 30-second sample window reads some of the allocator's settling as slope,
/// so the short run's bound is looser.
fn slope_bound_bytes_per_minute(sampled: Duration) -> f64 {
    if sampled >= Duration::from_secs(120) {
        1024.0 * 1024.0
    } else {
        4.0 * 1024.0 * 1024.0
    }
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// Least-squares slope of `samples` (seconds, bytes), in bytes per minute.
fn slope_per_minute(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    let (mean_t, mean_b) = samples
        .iter()
        .fold((0.0, 0.0), |(t, b), (st, sb)| (t + st / n, b + sb / n));
    let (mut num, mut den) = (0.0, 0.0);
    for (t, b) in samples {
        num += (t - mean_t) * (b - mean_b);
        den += (t - mean_t) * (t - mean_t);
    }
    num / den * 60.0
}

/// What one scheduled call does, by its sequence number: 14 in 20 are
/// Validate, 4 CheckRateLimit, 1 a read of the management API (GetKey or
/// ListKeys), 1 a CreateKey followed by its RevokeKey.
fn kind_of(i: u64) -> &'static str {
    match i % 20 {
        0..=13 => "Validate",
        14..=17 => "CheckRateLimit",
        18 if i % 40 == 18 => "GetKey",
        18 => "ListKeys",
        _ => "CreateKey+RevokeKey",
    }
}

struct Fleet {
    channels: Vec<Channel>,
    root_key: String,
    /// (key, id) of the keys validated.
    keys: Vec<(String, String)>,
}

async fn one_call(fleet: Arc<Fleet>, i: u64, tally: Arc<Tally>) {
    let channel = fleet.channels[i as usize % fleet.channels.len()].clone();
    let kind = kind_of(i);
    let began = Instant::now();
    let result: Result<String, Status> = match kind {
        "Validate" => {
            // Every key in turn (14 Validate slots in each 20 calls).
            let (key, _) = &fleet.keys[(i / 20 * 14 + i % 20) as usize % fleet.keys.len()];
            ValidationServiceClient::new(channel)
                .validate(pb::ValidateRequest {
                    key: key.clone(),
                    ..Default::default()
                })
                .await
                .map(|a| {
                    let code = ValidationCode::try_from(a.get_ref().code).unwrap();
                    if code != ValidationCode::Valid {
                        tally.wrong(format!("a good key answered {code:?}"));
                    }
                    format!("{code:?}")
                })
        }
        "CheckRateLimit" => {
            let request = check_request(
                "soak",
                // Every identifier in turn (4 slots in each 20 calls).
                &format!(
                    "client-{}",
                    (i / 20 * 4 + i % 20 - 14) as usize % IDENTIFIERS
                ),
                1_000_000_000,
                WINDOW_MS,
                RateLimitAlgorithm::FixedWindow,
                1,
            );
            RateLimitServiceClient::new(channel)
                .check_rate_limit(request)
                .await
                .map(|a| {
                    if !a.get_ref().allowed {
                        tally.wrong("CheckRateLimit refused a call far below its limit".into());
                    }
                    format!("allowed={}", a.get_ref().allowed)
                })
        }
        "GetKey" => {
            let (_, id) = &fleet.keys[i as usize % fleet.keys.len()];
            KeyServiceClient::new(channel)
                .get_key(with_bearer(
                    pb::GetKeyRequest { id: id.clone() },
                    &fleet.root_key,
                ))
                .await
                .map(|_| "OK".to_owned())
        }
        "ListKeys" => KeyServiceClient::new(channel)
            .list_keys(with_bearer(
                pb::ListKeysRequest {
                    owner_id: "soak_owner_0".to_owned(),
                    ..Default::default()
                },
                &fleet.root_key,
            ))
            .await
            .map(|_| "OK".to_owned()),
        _ => {
            let mut keys = KeyServiceClient::new(channel);
            // Revoked at once: the owner never nears its active-key limit.
            let created = keys
                .create_key(with_bearer(
                    create_request(&format!("churn_{}", i % 7), &["posts:read"]),
                    &fleet.root_key,
                ))
                .await;
            match created {
                Ok(created) => keys
                    .revoke_key(with_bearer(
                        pb::RevokeKeyRequest {
                            id: created.into_inner().api_key.unwrap().id,
                            owner_id: String::new(),
                        },
                        &fleet.root_key,
                    ))
                    .await
                    .map(|_| "OK".to_owned()),
                Err(status) => Err(status),
            }
        }
    };
    tally.record(
        kind,
        result.as_deref().map(str::to_owned),
        &[],
        began.elapsed(),
    );
}

/// The replicas' Redis keys by kind (the part after the hash tag, with ids
/// and numbers folded), from SCAN over their prefix.
fn redis_keys(redis_url: &str, prefix: &str) -> BTreeMap<String, usize> {
    let mut connection = redis_connection(redis_url);
    let keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(format!("{prefix}:*"))
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(&mut connection)
        .expect("SCAN")
        .collect::<Result<_, _>>()
        .expect("SCAN");
    let mut kinds = BTreeMap::new();
    for key in keys {
        let rest = key[prefix.len() + 1..].to_owned();
        let kind = if rest == "invalidations" {
            "invalidations stream".to_owned()
        } else if rest.contains(":usage:h:") {
            "usage, hourly".to_owned()
        } else if rest.contains(":usage:d:") {
            "usage, daily".to_owned()
        } else if rest.ends_with(":usage:log") {
            "recent requests".to_owned()
        } else if rest.contains("}:k:") && rest.contains(":rl:") {
            "key limit".to_owned()
        } else if rest.contains("}:n:") || rest.starts_with("{n:") {
            "CheckRateLimit counter".to_owned()
        } else {
            format!("other ({rest})")
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_soak_across_three_replicas_has_no_error_flat_memory_and_bounded_redis_keys() {
    let _alone = measuring_alone().await;
    // By default (CI) 30 s measured after a 20 s warm-up: the replica that
    // creates keys settles its allocator's per-thread memory for about that
    // long (with 10 s it read as +3 MB over the next 20 s; over 2 minutes
    // after a 60 s warm-up every replica's slope was below zero).
    let seconds = setting("APIKEYD_SOAK_SECONDS", 50);
    let rate = setting("APIKEYD_SOAK_RATE", 150);
    let duration = Duration::from_secs(seconds);
    let warm_up = Duration::from_secs((seconds / 3).max(20));
    assert!(
        warm_up < duration,
        "APIKEYD_SOAK_SECONDS must exceed the warm-up"
    );
    let test = async {
        let replicas = ReplicaSet::start(3, &[]).await;
        let channels = replicas.channels();
        let mut keys = Vec::new();
        let mut creator = KeyServiceClient::new(channels[0].clone());
        for i in 0..KEYS {
            let mut request = create_request(&format!("soak_owner_{}", i % 5), &["*"]);
            request.rate_limits = vec![rate_limit(
                1_000_000_000,
                WINDOW_MS,
                RateLimitAlgorithm::SlidingWindow,
            )];
            let created = creator
                .create_key(with_bearer(request, &replicas.root_key))
                .await
                .expect("CreateKey")
                .into_inner();
            keys.push((created.key, created.api_key.unwrap().id));
        }
        let fleet = Arc::new(Fleet {
            channels,
            root_key: replicas.root_key.clone(),
            keys,
        });
        let tally = Tally::new();

        let started = Instant::now();
        let (hour_at_start, day_at_start) = (
            chrono::Utc::now().timestamp() / 3600,
            chrono::Utc::now().timestamp() / 86400,
        );
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        let mut calls = Vec::new();
        let mut memory: Vec<Vec<(f64, f64)>> = vec![Vec::new(); replicas.len()];
        let mut next_sample = warm_up;
        let mut i = 0u64;
        while started.elapsed() < duration {
            ticks.tick().await;
            calls.push(tokio::spawn(one_call(fleet.clone(), i, tally.clone())));
            i += 1;
            if started.elapsed() >= next_sample {
                let at = started.elapsed().as_secs_f64();
                for (r, server) in replicas.running() {
                    memory[r].push((at, server.resident_bytes() as f64));
                }
                next_sample += Duration::from_secs(1);
            }
        }
        let scheduled = i;
        for call in calls {
            call.await.expect("a soak call panicked");
        }
        let elapsed = started.elapsed();
        let hours_spanned = (chrono::Utc::now().timestamp() / 3600 - hour_at_start + 1) as usize;
        let days_spanned = (chrono::Utc::now().timestamp() / 86400 - day_at_start + 1) as usize;

        tally.print(&format!(
            "Soak: {scheduled} calls scheduled at {rate}/s over {elapsed:.1?} across 3 replicas"
        ));
        let achieved = scheduled as f64 / elapsed.as_secs_f64();
        println!("  achieved rate {achieved:.1} calls/s");
        let sampled = duration - warm_up;
        let bound = slope_bound_bytes_per_minute(sampled);
        let mut slopes = Vec::new();
        for (r, samples) in memory.iter().enumerate() {
            let slope = slope_per_minute(samples);
            println!(
                "  replica {r}: resident {:.1} MB after the warm-up, {:.1} MB at the end, slope {:+.2} MB/min over {} samples (bound {:.1} MB/min)",
                samples.first().unwrap().1 / 1e6,
                samples.last().unwrap().1 / 1e6,
                slope / 1e6,
                samples.len(),
                bound / 1e6
            );
            slopes.push(slope);
        }
        let kinds = redis_keys(&replicas.redis_url, &replicas.prefix);
        // Retention: per key one limit counter, one recent-requests list, and
        // one usage hash per hour and per day the run touched; one counter
        // per CheckRateLimit identifier; the invalidation stream.
        let allowed: BTreeMap<&str, usize> = BTreeMap::from([
            ("key limit", KEYS),
            ("recent requests", KEYS),
            ("usage, hourly", KEYS * hours_spanned),
            ("usage, daily", KEYS * days_spanned),
            ("CheckRateLimit counter", IDENTIFIERS),
            ("invalidations stream", 1),
        ]);
        println!("  Redis keys under the replicas' prefix: {kinds:?} (allowed {allowed:?})");

        tally.assert_no_wrong_answer();
        assert_eq!(tally.errors(), BTreeMap::new(), "zero errors");
        assert!(
            achieved >= rate as f64 * 0.9,
            "the load generator kept up: {achieved:.1} of {rate} calls/s"
        );
        for kind in tally.kinds() {
            let (_, p99) = tally.percentiles_ms(kind);
            assert!(p99 < 1_000.0, "{kind} p99 {p99:.1} ms");
        }
        for (r, slope) in slopes.iter().enumerate() {
            assert!(
                *slope <= bound,
                "replica {r}: resident memory grows {:.2} MB/min (bound {:.1})",
                slope / 1e6,
                bound / 1e6
            );
        }
        for (kind, count) in &kinds {
            let limit = allowed.get(kind.as_str()).copied().unwrap_or(0);
            assert!(
                *count <= limit,
                "{count} Redis keys of kind {kind}, retention allows {limit}"
            );
        }
    };
    tokio::time::timeout(duration + Duration::from_secs(180), test)
        .await
        .expect("the soak finished within its duration and 3 minutes");
}
