//! The throughput benchmark of issue 4: `cargo bench --bench throughput`.
//!
//! One real `apikeyd serve` (release build) over a fresh PostgreSQL
//! database, driven by the load generator in [`load`] at a fixed number of
//! requests in flight; then the seed's design ([`seed`]) at the same
//! concurrency; then the ratios. `--scale` (or `APIKEYD_BENCH_SCALE=1`) adds
//! the scale figures ([`scale`]). It prints figures and asserts nothing.
//!
//! - [`load`]: the load generator (tonic clients, one task per in-flight slot).
//! - [`server`]: the apikeyd process, fresh databases, key setup.
//! - [`seed`]: the seed design served over the same gRPC contract.
//! - [`scale`]: memory with 100,000 warm keys; cold Validate and ListKeys
//!   over 1,000,000 keys.

mod load;
mod scale;
mod seed;
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use apikeyd::grpc::pb;
use apikeyd::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use apikeyd::secrets::Argon2Cost;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Version};
use rand_core::OsRng;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use load::{Attempt, Load, Outcome};
use server::{ApikeydProcess, FreshDatabase, KeyLimits};

const USAGE: &str = "\
cargo bench --bench throughput [-- OPTIONS]

Options (each also an environment variable):
  --concurrency N      requests in flight          APIKEYD_BENCH_CONCURRENCY  (64)
  --connections N      HTTP/2 connections          APIKEYD_BENCH_CONNECTIONS  (4)
  --warmup-secs S      uncounted warm-up           APIKEYD_BENCH_WARMUP_SECS  (1)
  --secs S             measured window             APIKEYD_BENCH_SECS         (5)
  --warm-keys N        keys the warm scenarios use APIKEYD_BENCH_WARM_KEYS    (100)
  --cold-keys N        keys per cold scenario      APIKEYD_BENCH_COLD_KEYS    (enough for the window at the fastest argon2 rate measured)
  --cold-burst N       cold Validates in flight    APIKEYD_BENCH_COLD_BURST   (100)
                       beside warm traffic
  --scale              add the scale figures       APIKEYD_BENCH_SCALE=1
  --scale-only         only the scale figures      APIKEYD_BENCH_SCALE=only
PostgreSQL: APIKEYD_TEST_POSTGRES_URL (postgres://postgres@127.0.0.1:5432/test);
a fresh database is created on it for each part and dropped at the end.
Scale sizes: APIKEYD_BENCH_SCALE_WARM_KEYS (100000), APIKEYD_BENCH_SCALE_TOTAL_KEYS (1000000).";

/// What a run does; flags win over environment variables.
struct Options {
    load: Load,
    warm_keys: usize,
    /// `None`: sized from the measured argon2 time.
    cold_keys: Option<usize>,
    cold_burst: usize,
    main_part: bool,
    scale_part: bool,
    postgres_url: String,
    /// The Redis the server counts limits in (and gathers usage into).
    redis_url: String,
}

impl Options {
    fn parse() -> anyhow::Result<Options> {
        let mut args = std::env::args().skip(1);
        let mut flags: Vec<(String, Option<String>)> = Vec::new();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                // cargo bench passes --bench to every bench target.
                "--bench" => {}
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                "--scale" | "--scale-only" => flags.push((arg, None)),
                _ => match arg.split_once('=') {
                    Some((name, value)) => flags.push((name.to_owned(), Some(value.to_owned()))),
                    None => flags.push((arg, args.next())),
                },
            }
        }
        let setting = |flag: &str, env: &str| -> anyhow::Result<Option<u64>> {
            let raw = flags
                .iter()
                .rev()
                .find(|(name, _)| name == flag)
                .map(|(_, value)| value.clone().unwrap_or_default())
                .or_else(|| std::env::var(env).ok());
            raw.map(|raw| {
                raw.parse::<u64>()
                    .with_context(|| format!("{flag} / {env}: {raw:?} is not a whole number"))
            })
            .transpose()
        };
        let known = [
            "--concurrency",
            "--connections",
            "--warmup-secs",
            "--secs",
            "--warm-keys",
            "--cold-keys",
            "--cold-burst",
            "--scale",
            "--scale-only",
        ];
        if let Some((unknown, _)) = flags
            .iter()
            .find(|(name, _)| !known.contains(&name.as_str()))
        {
            anyhow::bail!("unknown option {unknown}\n\n{USAGE}");
        }
        let has = |flag: &str| flags.iter().any(|(name, _)| name == flag);
        let scale_env = std::env::var("APIKEYD_BENCH_SCALE").unwrap_or_default();
        let scale_only = has("--scale-only") || scale_env == "only";
        let options = Options {
            load: Load {
                concurrency: setting("--concurrency", "APIKEYD_BENCH_CONCURRENCY")?.unwrap_or(64)
                    as usize,
                connections: setting("--connections", "APIKEYD_BENCH_CONNECTIONS")?.unwrap_or(4)
                    as usize,
                warmup: Duration::from_secs(
                    setting("--warmup-secs", "APIKEYD_BENCH_WARMUP_SECS")?.unwrap_or(1),
                ),
                measure: Duration::from_secs(setting("--secs", "APIKEYD_BENCH_SECS")?.unwrap_or(5)),
            },
            warm_keys: setting("--warm-keys", "APIKEYD_BENCH_WARM_KEYS")?.unwrap_or(100) as usize,
            cold_keys: setting("--cold-keys", "APIKEYD_BENCH_COLD_KEYS")?.map(|n| n as usize),
            cold_burst: setting("--cold-burst", "APIKEYD_BENCH_COLD_BURST")?.unwrap_or(100)
                as usize,
            main_part: !scale_only,
            scale_part: scale_only
                || has("--scale")
                || matches!(scale_env.as_str(), "1" | "true" | "yes"),
            postgres_url: std::env::var("APIKEYD_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
            redis_url: std::env::var("APIKEYD_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
        };
        anyhow::ensure!(
            options.load.concurrency >= 1
                && options.load.connections >= 1
                && options.load.measure >= Duration::from_secs(1)
                && options.warm_keys >= 1,
            "concurrency, connections, secs and warm keys must each be at least 1"
        );
        Ok(options)
    }
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(options))
}

async fn run(options: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    print_machine(&options).await;
    // Measured first, on a quiet machine: the figure the README states.
    let (argon2, fastest) = time_argon2_verification(Argon2Cost::default(), 20).await?;
    println!(
        "argon2id verification at the default cost ({}): {:.1} ms median, {:.1} ms fastest (20 runs, one thread)",
        describe_cost(Argon2Cost::default()),
        ms(argon2),
        ms(fastest)
    );
    if options.main_part {
        throughput(&options, fastest).await?;
    }
    if options.scale_part {
        scale::run(
            &options.postgres_url,
            &options.redis_url,
            &options.load,
            argon2,
        )
        .await?;
    }
    println!(
        "\ntotal time {:.0} s; load average {} at the end",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    Ok(())
}

async fn print_machine(options: &Options) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = read_proc("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".to_owned());
    let memory = read_proc("/proc/meminfo", "MemTotal")
        .and_then(|kb| kb.split_whitespace().next()?.parse::<u64>().ok())
        .map_or_else(
            || "?".to_owned(),
            |kb| format!("{:.1} GiB", kb as f64 / 1048576.0),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let postgres = postgres_version(&options.postgres_url).await;
    let load = &options.load;
    println!("apikeyd throughput benchmark (issue 4)");
    println!(
        "machine: {cores} cores ({cpu}), {memory} RAM, Linux {}, load average {} at start",
        kernel.trim(),
        load_average()
    );
    println!(
        "database: {postgres} at {} (a fresh database per part); Redis at {}",
        redact(&options.postgres_url),
        redact(&options.redis_url)
    );
    println!(
        "load: {} requests in flight over {} HTTP/2 connections; {} s warm-up + {} s measured per scenario; \
         tonic load generator in this process, on the same cores as the server",
        load.concurrency,
        load.connections,
        load.warmup.as_secs(),
        load.measure.as_secs()
    );
    println!(
        "server: {} (release build), default settings but a 1000 ms Redis timeout (argon2id {}; argon2 pool = {cores} permits)",
        env!("CARGO_BIN_EXE_apikeyd"),
        describe_cost(Argon2Cost::default())
    );
}

/// The 1-, 5- and 15-minute load averages: other work on a shared machine shows here.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn describe_cost(cost: Argon2Cost) -> String {
    format!(
        "{} KiB, t={}, p={}",
        cost.memory_kib, cost.iterations, cost.parallelism
    )
}

fn read_proc(path: &str, field: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|line| line.starts_with(field))?
        .split_once(':')
        .map(|(_, value)| value.trim().to_owned())
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

async fn postgres_version(url: &str) -> String {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let Ok(db) = Database::connect(url).await else {
        return "PostgreSQL (unreachable)".to_owned();
    };
    let version = db
        .query_one(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SHOW server_version",
        ))
        .await
        .ok()
        .flatten()
        .and_then(|row| row.try_get::<String>("", "server_version").ok())
        .unwrap_or_default();
    db.close().await.ok();
    format!(
        "PostgreSQL {}",
        version.split_whitespace().next().unwrap_or("?")
    )
}

/// The median and fastest time of one argon2id verification at `cost`, on
/// one thread: what a cold `Validate` pays on top of its lookup. On a shared
/// machine the fastest run is the closest to the uncontended cost.
async fn time_argon2_verification(
    cost: Argon2Cost,
    runs: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let params = cost.params()?;
    tokio::task::spawn_blocking(move || {
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let secret = server::random_hex(32);
        let hash = argon2
            .hash_password(secret.as_bytes(), &SaltString::generate(&mut OsRng))
            .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))?
            .to_string();
        let parsed = PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            argon2
                .verify_password(secret.as_bytes(), &parsed)
                .map_err(|e| anyhow::anyhow!("argon2 verification failed: {e}"))?;
            times.push(started.elapsed());
        }
        times.sort();
        Ok((times[times.len() / 2], times[0]))
    })
    .await?
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

// Scenario names, as printed and as the ratios refer to them.
const EMPTY_RPC: &str = "empty RPC (grpc.health.v1.Health/Check)";
const WARM: &str = "Validate warm, no limits";
const WARM_WITH_LIMIT: &str = "Validate warm, Redis rate limit";
const COLD: &str = "Validate cold (argon2)";
const WARM_BESIDE_COLD: &str = "Validate warm, cold burst in flight";
const COLD_BURST: &str = "  the cold burst itself";
const CHECK_RATE_LIMIT: &str = "CheckRateLimit";
const SEED: &str = "seed design (SELECT+UPDATE+INSERT)";

/// The scenarios of issue 4, in the order they run and print.
enum Scenario {
    /// `grpc.health.v1.Health/Check`: the floor any RPC pays.
    EmptyRpc,
    /// `Validate` of keys already verified in this server process.
    ValidateWarm,
    /// `Validate` of keys never verified in this process: one argon2 run each.
    ValidateCold,
    /// Warm `Validate` while `cold_burst` cold ones are in flight beside it.
    ValidateWarmBesideColdBurst,
    /// Warm `Validate` of keys with one limit no run can reach, counted in
    /// Redis on every call (one round trip).
    ValidateWarmLimited,
    /// `RateLimitService.CheckRateLimit` of one identifier per warm key,
    /// under a limit no run can reach.
    CheckRateLimit,
    /// The seed design on the same database, at the same concurrency.
    SeedBaseline,
}

/// The scenarios of issue 4 with their printed names.
fn scenarios() -> Vec<(&'static str, Scenario)> {
    vec![
        (EMPTY_RPC, Scenario::EmptyRpc),
        (WARM, Scenario::ValidateWarm),
        (WARM_WITH_LIMIT, Scenario::ValidateWarmLimited),
        (COLD, Scenario::ValidateCold),
        (WARM_BESIDE_COLD, Scenario::ValidateWarmBesideColdBurst),
        (CHECK_RATE_LIMIT, Scenario::CheckRateLimit),
        (SEED, Scenario::SeedBaseline),
    ]
}

/// Everything the scenarios drive, set up once.
struct Bench {
    load: Load,
    /// Connections to apikeyd.
    channels: Vec<Channel>,
    /// Separate connections for the cold burst, as from other clients.
    burst_channels: Vec<Channel>,
    /// Connections to the seed-design server.
    seed_channels: Vec<Channel>,
    warm_keys: Arc<Vec<String>>,
    /// Warm keys with a limit counted in Redis.
    limited_keys: Arc<Vec<String>>,
    cold_keys: Arc<Vec<String>>,
    burst_keys: Arc<Vec<String>>,
    burst_load: Load,
    seed_keys: Arc<Vec<String>>,
}

/// A printed row: a scenario's figures, or why there are none.
struct Row {
    name: &'static str,
    result: Result<Outcome, &'static str>,
}

/// `argon2` is the fastest verification measured: the pool's best rate.
async fn throughput(options: &Options, argon2: Duration) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let window = options.load.warmup + options.load.measure;
    // Enough keys to keep the argon2 pool busy through the window, with room.
    let cold_keys = options.cold_keys.unwrap_or_else(|| {
        let rate = cores as f64 / argon2.as_secs_f64().max(1e-4);
        ((rate * window.as_secs_f64() * 1.25).ceil() as usize).clamp(50, 5000)
    });
    let setup_started = Instant::now();
    let database = FreshDatabase::create(&options.postgres_url, "main").await?;
    let key_prefix = format!("apikeyd-bench-{}", std::process::id());
    let apikeyd = ApikeydProcess::start(
        &database.url,
        &[
            ("APIKEYD_REDIS_URL", options.redis_url.as_str()),
            ("APIKEYD_REDIS_KEY_PREFIX", key_prefix.as_str()),
            // The load generator shares the two cores: a 50 ms stall must not
            // pass for a Redis outage (the policy would then answer instead).
            ("APIKEYD_REDIS_TIMEOUT_MS", "1000"),
        ],
    )?;
    let channels = load::connect(apikeyd.addr, options.load.connections).await?;
    let burst_channels = load::connect(apikeyd.addr, options.load.connections).await?;
    let setup = &channels[0];
    let root = &apikeyd.root_key;
    let warm_keys = server::create_keys(
        setup,
        root,
        "bench-warm",
        options.warm_keys,
        KeyLimits::None,
    )
    .await?;
    let limited_keys = server::create_keys(
        setup,
        root,
        "bench-limited",
        options.warm_keys,
        KeyLimits::Unreachable,
    )
    .await?;
    let cold = server::create_keys(setup, root, "bench-cold", cold_keys, KeyLimits::None).await?;
    let burst = server::create_keys(setup, root, "bench-burst", cold_keys, KeyLimits::None).await?;
    for key in warm_keys.iter().chain(&limited_keys) {
        anyhow::ensure!(
            server::validate_once(setup, key).await?,
            "a freshly created key did not validate"
        );
    }
    let seed_keys = seed::prepare(&database.url, options.warm_keys).await?;
    let (seed_addr, seed_server) = seed::serve(&database.url).await?;
    let seed_channels = load::connect(seed_addr, options.load.connections).await?;
    println!(
        "setup: {} warm keys (validated once), {cold_keys} cold keys per cold scenario, {} seed-design keys, in {:.1} s",
        warm_keys.len(),
        seed_keys.len(),
        setup_started.elapsed().as_secs_f64()
    );
    let bench = Bench {
        load: options.load,
        channels,
        burst_channels,
        seed_channels,
        warm_keys: Arc::new(warm_keys),
        limited_keys: Arc::new(limited_keys),
        cold_keys: Arc::new(cold),
        burst_keys: Arc::new(burst),
        burst_load: Load {
            concurrency: options.cold_burst,
            ..options.load
        },
        seed_keys: Arc::new(seed_keys),
    };

    println!();
    print_header();
    let mut rows = Vec::new();
    for (name, scenario) in scenarios() {
        let produced = bench.run(name, &scenario).await;
        for row in produced {
            print_row(&row);
            rows.push(row);
        }
    }
    print_notes(&rows, &bench, cores, argon2);
    print_ratios(&rows);

    seed_server.abort();
    apikeyd.stop();
    database.drop_now().await?;
    Ok(())
}

impl Bench {
    async fn run(&self, name: &'static str, scenario: &Scenario) -> Vec<Row> {
        let ran = |outcome| Row {
            name,
            result: Ok(outcome),
        };
        match scenario {
            Scenario::EmptyRpc => vec![ran(
                load::run(&self.channels, &self.load, health_check).await
            )],
            Scenario::ValidateWarm => {
                vec![ran(load::run(
                    &self.channels,
                    &self.load,
                    validate_reusing(&self.warm_keys),
                )
                .await)]
            }
            Scenario::ValidateCold => {
                vec![ran(load::run(
                    &self.channels,
                    &self.load,
                    validate_each_once(&self.cold_keys),
                )
                .await)]
            }
            Scenario::ValidateWarmBesideColdBurst => {
                let (warm, burst) = tokio::join!(
                    load::run(
                        &self.channels,
                        &self.load,
                        validate_reusing(&self.warm_keys)
                    ),
                    load::run(
                        &self.burst_channels,
                        &self.burst_load,
                        validate_each_once(&self.burst_keys)
                    ),
                );
                vec![
                    ran(warm),
                    Row {
                        name: COLD_BURST,
                        result: Ok(burst),
                    },
                ]
            }
            Scenario::ValidateWarmLimited => {
                vec![ran(load::run(
                    &self.channels,
                    &self.load,
                    validate_reusing(&self.limited_keys),
                )
                .await)]
            }
            Scenario::CheckRateLimit => {
                vec![ran(
                    load::run(&self.channels, &self.load, check_rate_limit).await
                )]
            }
            Scenario::SeedBaseline => {
                vec![ran(load::run(
                    &self.seed_channels,
                    &self.load,
                    validate_reusing(&self.seed_keys),
                )
                .await)]
            }
        }
    }
}

async fn health_check(channel: Channel, _ticket: u64) -> Attempt {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    match answer {
        Ok(response) if response.get_ref().status == ServingStatus::Serving as i32 => Attempt::Ok,
        _ => Attempt::Failed,
    }
}

/// One identifier per ticket modulo 100, under a limit no run can reach.
async fn check_rate_limit(channel: Channel, ticket: u64) -> Attempt {
    let answer = RateLimitServiceClient::new(channel)
        .check_rate_limit(pb::CheckRateLimitRequest {
            namespace: "bench".to_owned(),
            identifier: format!("client-{}", ticket % 100),
            limit: 1_000_000_000,
            window: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            cost: 0,
            algorithm: pb::RateLimitAlgorithm::SlidingWindow as i32,
        })
        .await;
    match answer {
        Ok(response) if response.get_ref().allowed => Attempt::Ok,
        _ => Attempt::Failed,
    }
}

async fn validate(channel: Channel, key: String) -> Attempt {
    match ValidationServiceClient::new(channel)
        .validate(server::validate_request(key))
        .await
    {
        Ok(response) if response.get_ref().valid => Attempt::Ok,
        _ => Attempt::Failed,
    }
}

/// Cycles through `keys`: after the first pass every key is warm.
fn validate_reusing(
    keys: &Arc<Vec<String>>,
) -> impl Fn(Channel, u64) -> std::pin::Pin<Box<dyn Future<Output = Attempt> + Send>>
+ Send
+ Sync
+ 'static {
    let keys = keys.clone();
    move |channel, ticket| {
        let key = keys[ticket as usize % keys.len()].clone();
        Box::pin(validate(channel, key))
    }
}

/// Presents every key once, so each request runs argon2; stops when none is left.
fn validate_each_once(
    keys: &Arc<Vec<String>>,
) -> impl Fn(Channel, u64) -> std::pin::Pin<Box<dyn Future<Output = Attempt> + Send>>
+ Send
+ Sync
+ 'static {
    let keys = keys.clone();
    move |channel, ticket| match keys.get(ticket as usize).cloned() {
        Some(key) => Box::pin(validate(channel, key)),
        None => Box::pin(std::future::ready(Attempt::Exhausted)),
    }
}

const NAME_WIDTH: usize = 42;

fn print_header() {
    println!(
        "{:<NAME_WIDTH$} {:>9} {:>10} {:>9} {:>9} {:>7}",
        "scenario", "requests", "req/s", "p50 ms", "p99 ms", "errors"
    );
    println!("{}", "-".repeat(NAME_WIDTH + 49));
}

fn print_row(row: &Row) {
    match &row.result {
        Ok(outcome) => println!(
            "{:<NAME_WIDTH$} {:>9} {:>10.0} {:>9.3} {:>9.3} {:>7}{}",
            row.name,
            outcome.requests,
            outcome.per_second(),
            outcome.latency_ms(0.5),
            outcome.latency_ms(0.99),
            outcome.errors,
            if outcome.ran_out {
                format!(
                    "  (keys ran out: {:.1} s measured)",
                    outcome.elapsed.as_secs_f64()
                )
            } else {
                String::new()
            }
        ),
        Err(why) => println!("{:<NAME_WIDTH$} {why}", row.name),
    }
}

fn find<'a>(rows: &'a [Row], name: &str) -> Option<&'a Outcome> {
    rows.iter()
        .find(|row| row.name == name)
        .and_then(|row| row.result.as_ref().ok())
}

fn print_notes(rows: &[Row], bench: &Bench, cores: usize, argon2: Duration) {
    println!();
    println!(
        "warm: {} keys, each validated before the run; cold: each request presents a key this server has never verified; \
         cold burst: {} cold Validates kept in flight on their own connections while the warm load runs",
        bench.warm_keys.len(),
        bench.burst_load.concurrency
    );
    if let Some(cold) = find(rows, COLD) {
        println!(
            "cold ceiling: {cores} argon2 permits / {:.1} ms per verification (the fastest) = {:.0} verifications/s; measured {:.0}/s",
            ms(argon2),
            cores as f64 / argon2.as_secs_f64(),
            cold.per_second()
        );
    }
}

fn print_ratios(rows: &[Row]) {
    let throughput = |name| find(rows, name).map(Outcome::per_second);
    let p99 = |name| find(rows, name).map(|outcome| outcome.latency_ms(0.99));
    let ratios = [
        (
            "Validate warm / empty RPC (req/s)",
            throughput(WARM),
            throughput(EMPTY_RPC),
            "≥ 0.8",
        ),
        (
            "Validate with Redis limit / empty RPC (req/s)",
            throughput(WARM_WITH_LIMIT),
            throughput(EMPTY_RPC),
            "≥ 0.5",
        ),
        (
            "Validate with Redis limit / seed design (req/s)",
            throughput(WARM_WITH_LIMIT),
            throughput(SEED),
            "≥ 10",
        ),
        (
            "Validate warm / seed design (req/s)",
            throughput(WARM),
            throughput(SEED),
            "",
        ),
        (
            "warm p99 beside cold burst / warm p99 alone",
            p99(WARM_BESIDE_COLD),
            p99(WARM),
            "≤ 2",
        ),
    ];
    println!();
    println!("{:<50} {:>8}   issue 4 target", "ratio", "value");
    println!("{}", "-".repeat(75));
    for (name, numerator, denominator, target) in ratios {
        match (numerator, denominator) {
            (Some(n), Some(d)) if d > 0.0 => println!("{name:<50} {:>8.2}   {target}", n / d),
            _ => println!("{name:<50} {:>8}   {target}", "n/a"),
        }
    }
}
