//! The throughput benchmark of issue 8: `cargo bench --bench throughput`.
//!
//! Every figure comes from a load generator in a separate process: h2load
//! ([`h2load`]) for the scenarios that repeat one request, this binary
//! re-executed as [`distinct_keys`] for those that present many keys once.
//! Each deployment is one real `apikeyd serve` (release build), measured in
//! one run, and each throughput is printed as a ratio against the empty RPC
//! (`grpc.health.v1.Health/Check`) measured on that same server in that
//! same run, beside the target issue 8 sets. Every run's answers are checked
//! against the server's own counters ([`answers`]). It asserts nothing.
//!
//! - [`h2load`]: finding (or installing) h2load, gRPC frames, one run.
//! - [`distinct_keys`]: the separate-process load generator for many keys.
//! - [`answers`]: what the server answered, from its counters.
//! - [`server`]: the apikeyd process, fresh databases, key setup.
//! - [`seed`]: the seed design served over the same gRPC contract.
//! - [`scale`]: memory with 100,000 warm keys; cold Validate and ListKeys
//!   over 1,000,000 keys.

mod answers;
mod distinct_keys;
mod h2load;
mod scale;
mod seed;
mod server;

use std::time::{Duration, Instant};

use anyhow::Context;
use apikeyd::grpc::pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use answers::{Answers, Checked, GRPC_OK};
use distinct_keys::{EachKeyOnce, Presenting};
use h2load::{GrpcCall, H2load, Length, Measured, Shape};
use server::{ApikeydProcess, FreshDatabase, KeyLimits};

const USAGE: &str = "\
cargo bench --bench throughput [-- OPTIONS]

Options (each also an environment variable):
  --connections N      h2load -c: HTTP/2 connections          APIKEYD_BENCH_CONNECTIONS   (8)
  --streams N          h2load -m: streams in flight each      APIKEYD_BENCH_STREAMS       (16)
  --warmup-secs S      h2load --warm-up-time                  APIKEYD_BENCH_WARMUP_SECS   (1)
  --secs S             h2load -D: measured window             APIKEYD_BENCH_SECS          (5)
  --cold-calls N       calls of one cold key, from the first  APIKEYD_BENCH_COLD_CALLS    (20000)
  --replica-keys N     keys a fresh replica validates once    APIKEYD_BENCH_REPLICA_KEYS  (1000; 10000 with --scale)
  --replica-in-flight N  their Validates in flight            APIKEYD_BENCH_REPLICA_IN_FLIGHT (64)
  --rounds N           interleaved empty/admitted/over-limit  APIKEYD_BENCH_ROUNDS        (5)
  --scale              add the scale figures                  APIKEYD_BENCH_SCALE=1
  --scale-only         only the scale figures                 APIKEYD_BENCH_SCALE=only
PostgreSQL: APIKEYD_TEST_POSTGRES_URL (postgres://postgres@127.0.0.1:5432/test);
a fresh database is created on it for each part and dropped at the end.
Redis: APIKEYD_TEST_REDIS_URL (redis://127.0.0.1:6379), under a key prefix of this run's own.
Scale sizes: APIKEYD_BENCH_SCALE_WARM_KEYS (100000), APIKEYD_BENCH_SCALE_TOTAL_KEYS (1000000).";

/// How the timed scenarios push: h2load's connections and streams, for
/// an uncounted warm-up, then a counted run of about `measure`.
#[derive(Clone, Copy)]
struct Pace {
    connections: usize,
    streams_per_connection: usize,
    warmup: Duration,
    measure: Duration,
}

impl Pace {
    fn shape(&self, length: Length) -> Shape {
        Shape {
            connections: self.connections,
            streams_per_connection: self.streams_per_connection,
            length,
            per_request_log: false,
        }
    }

    fn in_flight(&self) -> usize {
        self.connections * self.streams_per_connection
    }
}

/// What a run does; flags win over environment variables.
struct Options {
    pace: Pace,
    cold_calls: u64,
    replica_keys: usize,
    replica_in_flight: usize,
    /// Pairs of (empty RPC, warm admitted Validate) run back to back after
    /// the single pass: the judged ratio is their median, which drift on a
    /// shared machine moves far less than one pass's ratio.
    rounds: usize,
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
            "--connections",
            "--streams",
            "--warmup-secs",
            "--secs",
            "--cold-calls",
            "--replica-keys",
            "--replica-in-flight",
            "--rounds",
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
        let scale_part =
            scale_only || has("--scale") || matches!(scale_env.as_str(), "1" | "true" | "yes");
        let options = Options {
            pace: Pace {
                connections: setting("--connections", "APIKEYD_BENCH_CONNECTIONS")?.unwrap_or(8)
                    as usize,
                streams_per_connection: setting("--streams", "APIKEYD_BENCH_STREAMS")?.unwrap_or(16)
                    as usize,
                warmup: Duration::from_secs(
                    setting("--warmup-secs", "APIKEYD_BENCH_WARMUP_SECS")?.unwrap_or(1),
                ),
                measure: Duration::from_secs(setting("--secs", "APIKEYD_BENCH_SECS")?.unwrap_or(5)),
            },
            cold_calls: setting("--cold-calls", "APIKEYD_BENCH_COLD_CALLS")?.unwrap_or(20_000),
            replica_keys: setting("--replica-keys", "APIKEYD_BENCH_REPLICA_KEYS")?
                .unwrap_or(if scale_part { 10_000 } else { 1_000 })
                as usize,
            replica_in_flight: setting("--replica-in-flight", "APIKEYD_BENCH_REPLICA_IN_FLIGHT")?
                .unwrap_or(64) as usize,
            rounds: setting("--rounds", "APIKEYD_BENCH_ROUNDS")?.unwrap_or(5) as usize,
            main_part: !scale_only,
            scale_part,
            postgres_url: std::env::var("APIKEYD_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
            redis_url: std::env::var("APIKEYD_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
        };
        let pace = options.pace;
        anyhow::ensure!(
            pace.connections >= 1
                && pace.streams_per_connection >= 1
                && pace.warmup >= Duration::from_secs(1)
                && pace.measure >= Duration::from_secs(1)
                && options.cold_calls >= 1
                && options.replica_keys >= 1
                && options.replica_in_flight >= 1,
            "connections, streams, warm-up, secs, cold calls, replica keys and in-flight must each be at least 1"
        );
        Ok(options)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(distinct_keys::WORKER_FLAG) {
        return distinct_keys::worker_main(&args[2..]);
    }
    let options = Options::parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(options))
}

/// The figures the targets are judged on, gathered over the run.
#[derive(Default)]
struct Figures {
    embedded: Option<DeploymentFigures>,
    redis: Option<DeploymentFigures>,
    replica: Option<ReplicaFigure>,
    /// Resident memory with the scale part's warm keys: (keys, MB).
    memory: Option<(usize, f64)>,
}

async fn run(options: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let h2load = H2load::find_or_install()?;
    print_machine(&options, &h2load).await;
    let mut figures = Figures::default();
    if options.main_part {
        figures.embedded = Some(embedded_deployment(&options, &h2load).await?);
        let (redis, replica) = redis_deployment(&options, &h2load).await?;
        figures.redis = Some(redis);
        figures.replica = Some(replica);
    }
    if options.scale_part {
        figures.memory = Some(
            scale::run(
                &options.postgres_url,
                &options.redis_url,
                Presenting {
                    in_flight: options.pace.in_flight(),
                    connections: options.pace.connections,
                },
                &h2load,
            )
            .await?,
        );
    }
    print_targets(&figures);
    println!(
        "\ntotal time {:.0} s; load average {} at the end",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    Ok(())
}

async fn print_machine(options: &Options, h2load: &H2load) {
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
    println!(
        "apikeyd throughput benchmark (issue 8): every figure from a load generator in another process"
    );
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
    let server = env!("CARGO_BIN_EXE_apikeyd");
    println!(
        "server: {server} serve ({} build), default settings but a 1000 ms Redis timeout",
        if server.contains("/release/") {
            "release"
        } else {
            "debug"
        }
    );
    let example = GrpcCall::new(&format!("/{HEALTH_CHECK}"), &health_request());
    let pace = &options.pace;
    println!(
        "load: {}; each timed scenario is a warm-up, uncounted (h2load ends it by resetting the streams in flight)\n  {}\n\
         then, once the server's counters are still, a counted run of N = (the warm-up's req/s × {} s) requests, each awaited\n  {}",
        h2load.version,
        h2load.command_line(
            "127.0.0.1:PORT",
            &example,
            &pace.shape(Length::Duration(pace.warmup))
        ),
        pace.measure.as_secs(),
        h2load
            .command_line("127.0.0.1:PORT", &example, &pace.shape(Length::Requests(0)))
            .replace("-n 0", "-n N"),
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

// The gRPC paths the scenarios call.
const HEALTH_CHECK: &str = "grpc.health.v1.Health/Check";
const VALIDATE: &str = "apikeyd.v1.ValidationService/Validate";

fn health_request() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

fn validate_call(key: &str) -> GrpcCall {
    GrpcCall::new(
        &format!("/{VALIDATE}"),
        &server::validate_request(key.to_owned()),
    )
}

/// Which apikeyd a part runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deployment {
    /// SQLite in the data directory, limits counted in the process.
    Embedded,
    /// PostgreSQL and Redis.
    RedisPostgres,
}

impl Deployment {
    fn title(self) -> &'static str {
        match self {
            Deployment::Embedded => "embedded: SQLite, in-process limiter",
            Deployment::RedisPostgres => "Redis + PostgreSQL",
        }
    }
}

/// One scenario's result: what h2load measured and what the server answered.
struct Row {
    name: String,
    measured: Measured,
    checked: Checked,
    expected: &'static str,
}

impl Row {
    /// Requests per second, if every answer was the expected one.
    fn verified_rate(&self) -> Result<f64, String> {
        if self.checked.wrong == 0 && self.measured.done > 0 {
            Ok(self.measured.per_second)
        } else {
            Err(format!(
                "{} of {} answers were not {}",
                self.checked.wrong, self.measured.done, self.expected
            ))
        }
    }
}

/// The figures of one deployment's server.
struct DeploymentFigures {
    empty: Row,
    admitted: Row,
    over_limit: Row,
    seed: Option<Row>,
    /// The interleaved rounds: empty, admitted and over-limit runs seconds
    /// apart, so that each ratio compares runs under the same weather.
    rounds: Vec<RoundFigures>,
}

/// One interleaved round's ratios.
struct RoundFigures {
    admitted_per_empty: Result<f64, String>,
    over_limit_per_admitted: Result<f64, String>,
    /// The admitted run's req/s.
    admitted: Result<f64, String>,
}

/// Where a scenario's answers are counted.
enum Counter<'a> {
    Apikeyd(&'a ApikeydProcess),
    Seed(&'a seed::SeedAnswers),
}

impl Counter<'_> {
    fn answers(&self, method: &str) -> anyhow::Result<Answers> {
        Ok(match self {
            Counter::Apikeyd(apikeyd) => Answers::of_apikeyd(&apikeyd.metrics()?, method),
            Counter::Seed(seed) => seed.snapshot(),
        })
    }
}

/// Where and how a scenario's load goes.
struct Target<'a> {
    h2load: &'a H2load,
    addr: std::net::SocketAddr,
    counter: Counter<'a>,
}

impl Target<'_> {
    /// A timed scenario: an uncounted warm-up for `pace.warmup`; then, once
    /// the server's counters are still (the warm-up's reset streams
    /// answered), a counted run sized from the warm-up's rate. `calls` go
    /// side by side, one h2load each (several keys under one load).
    fn timed(
        &self,
        name: &str,
        calls: &[GrpcCall],
        pace: &Pace,
        expected: &'static str,
    ) -> anyhow::Result<Row> {
        let warmup = self.run(calls, &pace.shape(Length::Duration(pace.warmup)))?;
        tokio::task::block_in_place(|| self.wait_until_still(&calls[0]))?;
        let mut rate = warmup.per_second;
        // A warm-up on a busy machine can be much slower than what follows:
        // a counted run far shorter than asked runs again at its own rate.
        let mut attempts = 2;
        loop {
            let requests =
                ((rate * pace.measure.as_secs_f64()) as u64).max(4 * pace.in_flight() as u64);
            let row = self.counted(
                name,
                calls,
                &pace.shape(Length::Requests(requests)),
                expected,
            )?;
            attempts -= 1;
            let lasted = row.measured.done as f64 / row.measured.per_second.max(1e-9);
            if attempts == 0 || lasted >= 0.6 * pace.measure.as_secs_f64() {
                return Ok(row);
            }
            rate = row.measured.per_second;
        }
    }

    /// Runs h2load once per call with `shape`, side by side, counting the
    /// server's answers around them.
    fn counted(
        &self,
        name: &str,
        calls: &[GrpcCall],
        shape: &Shape,
        expected: &'static str,
    ) -> anyhow::Result<Row> {
        let method = calls[0].path.trim_start_matches('/');
        let before = self.counter.answers(method)?;
        let measured = self.run(calls, shape)?;
        let answers = self.counter.answers(method)?.since(&before);
        let checked = answers::check(answers, expected, measured.done, measured.failed);
        Ok(Row {
            name: name.to_owned(),
            measured,
            checked,
            expected,
        })
    }

    fn run(&self, calls: &[GrpcCall], shape: &Shape) -> anyhow::Result<Measured> {
        // h2load blocks this thread; the seed server, in this process, keeps
        // the runtime's other threads.
        tokio::task::block_in_place(|| self.h2load.run_side_by_side(self.addr, calls, shape))
    }

    /// Waits (2 s at most) until two reads of the server's answer counters
    /// 50 ms apart agree.
    fn wait_until_still(&self, call: &GrpcCall) -> anyhow::Result<()> {
        let method = call.path.trim_start_matches('/');
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = self.counter.answers(method)?;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.counter.answers(method)?;
            if now == last {
                return Ok(());
            }
            last = now;
        }
        Ok(())
    }
}

const NAME_WIDTH: usize = 44;

fn print_header(title: &str) {
    println!("\n{title}");
    println!(
        "{:<NAME_WIDTH$} {:>9} {:>9} {:>8} {:>8} {:>6} {:>7}  answers (server's counters)",
        "scenario", "requests", "req/s", "mean ms", "max ms", "wrong", "/ empty"
    );
    println!("{}", "-".repeat(NAME_WIDTH + 62));
}

fn print_row(row: &Row, empty: Option<&Row>) {
    let ratio = match (row.verified_rate(), empty.map(Row::verified_rate)) {
        (Ok(rate), Some(Ok(empty))) => format!("{:.2}", rate / empty),
        (Ok(_), None) => "1.00".to_owned(),
        _ => "n/a".to_owned(),
    };
    println!(
        "{:<NAME_WIDTH$} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>6} {:>7}  {}",
        row.name,
        row.measured.done,
        row.measured.per_second,
        ms(row.measured.mean),
        ms(row.measured.max),
        row.checked.wrong,
        ratio,
        row.checked.answers
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The server's argon2 verifications so far: (count, seconds in all).
fn argon2_verifications(apikeyd: &ApikeydProcess) -> anyhow::Result<(f64, f64)> {
    let page = apikeyd.metrics()?;
    let verify = [("operation", "verify")];
    Ok((
        page.total("apikeyd_argon2_duration_seconds_count", &verify),
        page.total("apikeyd_argon2_duration_seconds_sum", &verify),
    ))
}

/// The embedded deployment: one server over SQLite in its data directory.
async fn embedded_deployment(
    options: &Options,
    h2load: &H2load,
) -> anyhow::Result<DeploymentFigures> {
    let (figures, apikeyd) = on_server(options, h2load, Deployment::Embedded, None).await?;
    apikeyd.stop();
    Ok(figures)
}

/// The Redis + PostgreSQL deployment, then a fresh replica beside it.
async fn redis_deployment(
    options: &Options,
    h2load: &H2load,
) -> anyhow::Result<(DeploymentFigures, ReplicaFigure)> {
    let database = FreshDatabase::create(&options.postgres_url, "main").await?;
    let outcome = async {
        let (figures, apikeyd) =
            on_server(options, h2load, Deployment::RedisPostgres, Some(&database)).await?;
        let replica = fresh_replica(options, &apikeyd, &database).await?;
        apikeyd.stop();
        Ok((figures, replica))
    }
    .await;
    database.drop_now().await;
    outcome
}

/// The environment of a server on the shared Redis, under this run's prefix.
fn redis_env(options: &Options) -> Vec<(&'static str, String)> {
    vec![
        ("APIKEYD_REDIS_URL", options.redis_url.clone()),
        (
            "APIKEYD_REDIS_KEY_PREFIX",
            format!("apikeyd-bench-{}", std::process::id()),
        ),
        // Load generators share the two cores: a 50 ms stall must not fail
        // calls as late (the answers' check would count them as wrong, and
        // the figure would be lost).
        ("APIKEYD_REDIS_TIMEOUT_MS", "1000".to_owned()),
    ]
}

fn start_apikeyd(
    options: &Options,
    deployment: Deployment,
    database: Option<&FreshDatabase>,
) -> anyhow::Result<ApikeydProcess> {
    let env = match deployment {
        Deployment::Embedded => vec![],
        Deployment::RedisPostgres => redis_env(options),
    };
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ApikeydProcess::start(database.map(|db| db.url.as_str()), &env)
}

/// One server, every scenario, in this order: a cold key's first calls
/// (nothing warm yet), the empty RPC and the malformed key (references),
/// an admitted warm key, a denied one, and on PostgreSQL the seed design.
async fn on_server(
    options: &Options,
    h2load: &H2load,
    deployment: Deployment,
    database: Option<&FreshDatabase>,
) -> anyhow::Result<(DeploymentFigures, ApikeydProcess)> {
    let apikeyd = start_apikeyd(options, deployment, database)?;
    let channel = server::connect(apikeyd.addr).await?;
    let root = apikeyd.root_key()?;
    let admitted =
        server::create_key(&channel, root, "bench-admitted", KeyLimits::Unreachable).await?;
    let over_limit =
        server::create_key(&channel, root, "bench-over-limit", KeyLimits::OnePerHour).await?;
    let cold = server::create_key(&channel, root, "bench-cold", KeyLimits::Unreachable).await?;
    let pace = &options.pace;
    print_header(&format!(
        "{}: one apikeyd serve (pid {}), h2load -c {} -m {}",
        deployment.title(),
        apikeyd.pid(),
        pace.connections,
        pace.streams_per_connection
    ));
    let target = Target {
        h2load,
        addr: apikeyd.addr,
        counter: Counter::Apikeyd(&apikeyd),
    };

    // The first calls this server sees for a key: one cold key, all at once.
    let cold_shape = pace.shape(Length::Requests(options.cold_calls));
    let resident_before = apikeyd.resident_mb().unwrap_or(0.0);
    let (argon2_before, _) = argon2_verifications(&apikeyd)?;
    let cold_row = target.counted(
        &format!(
            "one cold key: first {} calls, {} in flight",
            options.cold_calls,
            cold_shape.in_flight()
        ),
        &[validate_call(&cold)],
        &cold_shape,
        "valid",
    )?;
    let (argon2_after, _) = argon2_verifications(&apikeyd)?;
    let resident_after = apikeyd.resident_mb().unwrap_or(0.0);

    // The references.
    let health = HealthClient::new(channel.clone())
        .check(health_request())
        .await?
        .into_inner();
    anyhow::ensure!(
        health.status == ServingStatus::Serving as i32,
        "the health check answered {health:?}"
    );
    let health_call = GrpcCall::new(&format!("/{HEALTH_CHECK}"), &health_request());
    let empty = target.timed(
        "empty RPC (grpc.health.v1.Health/Check)",
        &[health_call],
        pace,
        GRPC_OK,
    )?;
    print_row(&empty, None);
    print_row(&cold_row, Some(&empty));
    println!(
        "{:<NAME_WIDTH$} argon2 runs: {} (apikeyd_argon2_duration_seconds_count); resident memory {resident_before:.1} MB before, {resident_after:.1} MB after",
        "",
        argon2_after - argon2_before
    );
    // Too short to be another store's key too (those are looked up by
    // digest): refused by its format alone, with no I/O.
    let malformed_key = "sk_live_not-a-key";
    server::expect_code(&channel, malformed_key, pb::ValidationCode::Malformed).await?;
    let malformed = target.timed(
        "Validate, malformed key",
        &[validate_call(malformed_key)],
        pace,
        "malformed",
    )?;
    print_row(&malformed, Some(&empty));

    // A warm key under one limit it never reaches, then one over its limit.
    let admitted_key = admitted;
    server::expect_code(&channel, &admitted_key, pb::ValidationCode::Valid).await?;
    let admitted = target.timed(
        "Validate, warm key, admitted (one limit)",
        &[validate_call(&admitted_key)],
        pace,
        "valid",
    )?;
    print_row(&admitted, Some(&empty));
    let over_limit_key = over_limit;
    server::expect_code(&channel, &over_limit_key, pb::ValidationCode::Valid).await?;
    server::expect_code(&channel, &over_limit_key, pb::ValidationCode::RateLimited).await?;
    let over_limit = target.timed(
        "Validate, warm key, over its limit (denied)",
        &[validate_call(&over_limit_key)],
        pace,
        "rate_limited",
    )?;
    print_row(&over_limit, Some(&empty));

    // Interleaved rounds: each ratio from runs seconds apart.
    let health_calls = [GrpcCall::new(
        &format!("/{HEALTH_CHECK}"),
        &health_request(),
    )];
    let admitted_calls = [validate_call(&admitted_key)];
    let over_limit_calls = [validate_call(&over_limit_key)];
    let mut rounds = Vec::new();
    for round in 1..=options.rounds {
        let round_empty = target.timed(
            &format!("round {round}: empty RPC"),
            &health_calls,
            pace,
            GRPC_OK,
        )?;
        print_row(&round_empty, None);
        let round_admitted = target.timed(
            &format!("round {round}: Validate, warm admitted"),
            &admitted_calls,
            pace,
            "valid",
        )?;
        print_row(&round_admitted, Some(&round_empty));
        let round_over_limit = target.timed(
            &format!("round {round}: Validate, over its limit"),
            &over_limit_calls,
            pace,
            "rate_limited",
        )?;
        print_row(&round_over_limit, Some(&round_empty));
        rounds.push(RoundFigures {
            admitted_per_empty: ratio(&round_admitted, &round_empty),
            over_limit_per_admitted: ratio(&round_over_limit, &round_admitted),
            admitted: round_admitted.verified_rate(),
        });
    }

    let seed = match database {
        Some(database) => Some(seed_design(h2load, database, pace, &empty).await?),
        None => None,
    };
    Ok((
        DeploymentFigures {
            empty,
            admitted,
            over_limit,
            seed,
            rounds,
        },
        apikeyd,
    ))
}

/// The seed design on the same PostgreSQL, under the same load, but with
/// one key per connection (one h2load each): with a single key its
/// `UPDATE` of `last_used_at` would queue on one row lock, and the baseline
/// would be slower than the design is.
async fn seed_design(
    h2load: &H2load,
    database: &FreshDatabase,
    pace: &Pace,
    empty: &Row,
) -> anyhow::Result<Row> {
    let keys = seed::prepare(&database.url, pace.connections).await?;
    let seed_server = seed::serve(&database.url).await?;
    let channel = server::connect(seed_server.addr).await?;
    for key in &keys {
        server::expect_code(&channel, key, pb::ValidationCode::Valid).await?;
    }
    let target = Target {
        h2load,
        addr: seed_server.addr,
        counter: Counter::Seed(&seed_server.answers),
    };
    let calls: Vec<GrpcCall> = keys.iter().map(|key| validate_call(key)).collect();
    let row = target.timed(
        &format!("seed design (SELECT+UPDATE+INSERT), {} keys", keys.len()),
        &calls,
        pace,
        "valid",
    )?;
    print_row(&row, Some(empty));
    Ok(row)
}

/// A fresh replica's first Validate of many keys.
struct ReplicaFigure {
    keys: usize,
    outcome: EachKeyOnce,
    /// The replica's argon2 verifications: (count, mean).
    argon2: (f64, Duration),
}

/// Creates `options.replica_keys` keys through `apikeyd`, then starts a
/// second server on the same database and Redis and validates each key
/// once on it, from the distinct-key load generator.
async fn fresh_replica(
    options: &Options,
    apikeyd: &ApikeydProcess,
    database: &FreshDatabase,
) -> anyhow::Result<ReplicaFigure> {
    let started = Instant::now();
    let channel = server::connect(apikeyd.addr).await?;
    let keys = server::create_keys(
        &channel,
        apikeyd.root_key()?,
        "bench-replica",
        options.replica_keys,
        KeyLimits::Unreachable,
    )
    .await?;
    let creation = started.elapsed();
    let replica = start_apikeyd(options, Deployment::RedisPostgres, Some(database))?;
    let presenting = Presenting {
        in_flight: options.replica_in_flight,
        connections: options.pace.connections,
    };
    let resident_before = replica.resident_mb().unwrap_or(0.0);
    let outcome = tokio::task::block_in_place(|| {
        distinct_keys::validate_each_key_once(replica.addr, &keys, presenting)
    })?;
    let (count, seconds) = argon2_verifications(&replica)?;
    let resident_after = replica.resident_mb().unwrap_or(0.0);
    println!(
        "\na replica started after {} keys were created (through the first server, in {:.0} s): \
         each key's first Validate, {} in flight over {} connections, from `{}` (this binary again, another process)",
        keys.len(),
        creation.as_secs_f64(),
        presenting.in_flight,
        presenting.connections,
        distinct_keys::WORKER_FLAG,
    );
    println!(
        "  {} calls in {:.2} s ({:.0}/s), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; answers: {}",
        outcome.requests,
        outcome.elapsed_secs,
        outcome.per_second(),
        outcome.p50_ms,
        outcome.p99_ms,
        outcome.max_ms,
        outcome.answers()
    );
    let mean = Duration::from_secs_f64(seconds / count.max(1.0));
    println!(
        "  the replica ran argon2 {count} times, {:.1} ms each on average (queueing included); \
         resident memory {resident_before:.1} MB before, {resident_after:.1} MB after",
        ms(mean)
    );
    replica.stop();
    Ok(ReplicaFigure {
        keys: keys.len(),
        outcome,
        argon2: (count, mean),
    })
}

/// One line of the targets table.
struct Judged {
    name: String,
    value: Result<f64, String>,
    unit: &'static str,
    target: &'static str,
    /// `None` for a figure the issue asks to report, with no bound.
    met: Option<fn(f64) -> bool>,
}

fn ratio(numerator: &Row, denominator: &Row) -> Result<f64, String> {
    Ok(numerator.verified_rate()? / denominator.verified_rate()?)
}

/// The median over the interleaved rounds of `of` (the single pass's,
/// `single`, when there were none), with the rounds' spread in its name.
fn median_of_rounds(
    figures: &DeploymentFigures,
    what: &str,
    of: fn(&RoundFigures) -> Result<f64, String>,
    single: Result<f64, String>,
) -> (String, Result<f64, String>) {
    let values: Vec<Result<f64, String>> = figures.rounds.iter().map(of).collect();
    match sorted(&values) {
        Ok(values) if !values.is_empty() => {
            let spread = format!("{:.2}-{:.2}", values[0], values[values.len() - 1]);
            (
                format!("{what}, median of {} rounds ({spread})", values.len()),
                Ok(values[values.len() / 2]),
            )
        }
        Ok(_) => (what.to_owned(), single),
        Err(e) => (what.to_owned(), Err(e)),
    }
}

/// A deployment's ratios as judged: admitted / empty against
/// `admitted_target` (with the single pass's beside it), and over-limit /
/// admitted against 1, each the median of the rounds.
fn ratio_lines(
    figures: &DeploymentFigures,
    deployment: &str,
    admitted_target: &'static str,
    admitted_met: fn(f64) -> bool,
) -> [Judged; 3] {
    let single = ratio(&figures.admitted, &figures.empty);
    let (name, value) = median_of_rounds(
        figures,
        &format!("admitted / empty, {deployment}"),
        |r| r.admitted_per_empty.clone(),
        single.clone(),
    );
    let admitted = Judged {
        name,
        value,
        unit: "",
        target: admitted_target,
        met: Some(admitted_met),
    };
    let single_pass = Judged {
        name: "  the single pass's".to_owned(),
        value: single,
        unit: "",
        target: "reported",
        met: None,
    };
    let (name, value) = median_of_rounds(
        figures,
        &format!("over-limit / admitted, {deployment}"),
        |r| r.over_limit_per_admitted.clone(),
        ratio(&figures.over_limit, &figures.admitted),
    );
    let over_limit = Judged {
        name,
        value,
        unit: "",
        target: "≥ 1",
        met: Some(|v| v >= 1.0),
    };
    [admitted, single_pass, over_limit]
}

/// The admitted rate against the seed design's: the median of the rounds'
/// admitted runs (the single pass's when there were none).
fn seed_ratio(figures: &DeploymentFigures, seed: &Row) -> Result<f64, String> {
    let rates: Vec<Result<f64, String>> =
        figures.rounds.iter().map(|r| r.admitted.clone()).collect();
    let admitted = match sorted(&rates)? {
        rates if rates.is_empty() => figures.admitted.verified_rate()?,
        rates => rates[rates.len() / 2],
    };
    Ok(admitted / seed.verified_rate()?)
}

fn sorted(values: &[Result<f64, String>]) -> Result<Vec<f64>, String> {
    let mut values = values
        .iter()
        .cloned()
        .collect::<Result<Vec<f64>, String>>()?;
    values.sort_by(f64::total_cmp);
    Ok(values)
}

fn print_targets(figures: &Figures) {
    let mut lines = Vec::new();
    if let Some(embedded) = &figures.embedded {
        lines.extend(ratio_lines(embedded, "embedded", "≥ 0.8", |v| v >= 0.8));
    }
    if let Some(redis) = &figures.redis {
        lines.extend(ratio_lines(redis, "Redis limit", "≥ 0.5", |v| v >= 0.5));
        if let Some(seed) = &redis.seed {
            lines.push(Judged {
                name: "warm admitted Validate, Redis limit / seed design (median of rounds)"
                    .to_owned(),
                value: seed_ratio(redis, seed),
                unit: "",
                target: "≥ 10",
                met: Some(|v| v >= 10.0),
            });
        }
    }
    if let Some(replica) = &figures.replica {
        let wrong = replica.outcome.answers().unexpected("valid");
        let value = if wrong == 0 {
            Ok(replica.outcome.elapsed_secs)
        } else {
            Err(format!("{wrong} answers were not valid"))
        };
        if replica.keys == 10_000 {
            lines.push(Judged {
                name: "fresh replica, first Validate of 10,000 keys".to_owned(),
                value,
                unit: " s",
                target: "≤ 10 s",
                met: Some(|v| v <= 10.0),
            });
        } else {
            // The same target as a rate, at the size this run used.
            lines.push(Judged {
                name: format!(
                    "fresh replica, first Validate of {} keys (10,000 with --scale)",
                    replica.keys
                ),
                value: value.map(|secs| replica.keys as f64 / secs),
                unit: "/s",
                target: "≥ 1000/s",
                met: Some(|v| v >= 1000.0),
            });
        }
        lines.push(Judged {
            name: format!("  its p99 (argon2 runs: {:.0})", replica.argon2.0),
            value: Ok(replica.outcome.p99_ms),
            unit: " ms",
            target: "reported",
            met: None,
        });
    }
    if let Some((keys, mb)) = figures.memory {
        lines.push(Judged {
            name: format!("resident memory with {keys} warm keys"),
            value: Ok(mb),
            unit: " MB",
            target: "≤ 150 MB",
            met: Some(|v| v <= 150.0),
        });
    }
    println!(
        "\n{:<62} {:>12}   {:<10} met",
        "issue 8 target (ratios of req/s, same server, same run)", "value", "target"
    );
    println!("{}", "-".repeat(92));
    for line in lines {
        match line.value {
            Ok(value) => println!(
                "{:<62} {:>12}   {:<10} {}",
                line.name,
                // Ratios to three places: 0.997 against "≥ 1" must not read 1.00.
                if line.unit.is_empty() {
                    format!("{value:.3}")
                } else {
                    format!("{value:.2}{}", line.unit)
                },
                line.target,
                match line.met {
                    None => "",
                    Some(met) if met(value) => "yes",
                    Some(_) => "no",
                }
            ),
            Err(why) => println!(
                "{:<62} {:>12}   {:<10} n/a: {why}",
                line.name, "-", line.target
            ),
        }
    }
}
