//! The fault side of the harness: dependencies a test owns so that it can
//! break them (a PostgreSQL server it stops and starts, a tmpfs it fills or
//! makes read-only), three replicas on fixed ports that it kills and
//! restarts, and a client that fails over between replicas and keeps the
//! figures (calls, retries by code, wrong answers, latency per call kind).
//!
//! Every fault is undone on `Drop`, so a failing test leaves no server
//! running and nothing mounted.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{ServerProcess, fresh_postgres_database};
use crate::limiter_harness::{RedisServer, free_port, shared_redis_url, unique};

/// Where Debian puts PostgreSQL 15's server binaries (`APIKEYD_TEST_PG_BIN` overrides).
fn pg_bin(tool: &str) -> PathBuf {
    std::env::var_os("APIKEYD_TEST_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
        .join(tool)
}

/// Runs `command` as the `postgres` user (initdb and the server refuse root).
fn as_postgres(tool: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(pg_bin(tool));
    command
}

fn run(mut command: Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A PostgreSQL server this test owns (initdb into a temporary directory, a
/// free loopback port, trust authentication), so that it can be stopped
/// under a running apikeyd. Stopped immediately when dropped.
pub struct PostgresServer {
    pub port: u16,
    dir: TempDir,
    running: bool,
}

impl PostgresServer {
    pub fn start() -> PostgresServer {
        let dir = tempfile::tempdir().expect("a directory for PostgreSQL");
        run(
            {
                let mut c = Command::new("chown");
                c.args(["postgres:postgres"]).arg(dir.path());
                c
            },
            "chown the PostgreSQL directory to postgres",
        );
        let mut initdb = as_postgres("initdb");
        initdb.arg("-D").arg(dir.path().join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb (as the postgres user)");
        let mut server = PostgresServer {
            port: free_port(),
            dir,
            running: false,
        };
        server.start_again();
        server
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut command = as_postgres("pg_ctl");
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-t", "60"])
            .args(args);
        command
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn start_again(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        let mut command = self.pg_ctl(&["start", "-o", &options, "-l"]);
        command.arg(&log);
        run(command, "pg_ctl start");
        self.running = true;
    }

    /// `pg_ctl stop -m fast`: sessions are terminated, the server shuts down cleanly.
    pub fn stop_fast(&mut self) {
        run(self.pg_ctl(&["stop", "-m", "fast"]), "pg_ctl stop -m fast");
        self.running = false;
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .pg_ctl(&["stop", "-m", "immediate"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A tmpfs of a fixed size mounted on a temporary directory: the data
/// directory of an embedded (SQLite) server whose disk a test fills or makes
/// read-only. Unmounted when dropped. Mounting needs root (CAP_SYS_ADMIN);
/// without it the test fails and says so, it does not skip.
pub struct Tmpfs {
    mount_point: TempDir,
    /// The file that fills the disk while it exists.
    ballast: PathBuf,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let mount_point = tempfile::tempdir().expect("a mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(mount_point.path())
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "this test mounts a tmpfs as the data directory and needs root (CAP_SYS_ADMIN) for it; \
             mount said: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let ballast = mount_point.path().join("ballast");
        Tmpfs {
            mount_point,
            ballast,
        }
    }

    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }

    /// Writes a ballast file until the filesystem says ENOSPC; returns its size.
    pub fn fill(&self) -> u64 {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.ballast)
            .expect("create the ballast file");
        let chunk = vec![0xA5u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // The last partial page: one byte at a time until nothing fits.
        while file.write(&[0xA5]).is_ok_and(|n| n == 1) {
            written += 1;
        }
        written
    }

    /// Removes the ballast: the space is free again.
    pub fn free(&self) {
        std::fs::remove_file(&self.ballast).expect("remove the ballast file");
    }

    /// `mount -o remount,ro` (or `rw`); the kernel's answer.
    pub fn remount(&self, mode: &str) -> std::process::Output {
        Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path())
            .output()
            .expect("run mount -o remount")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server still holding a file open cannot keep it mounted.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.path())
            .stderr(Stdio::null())
            .status();
    }
}

/// Three (or n) `apikeyd serve` processes over one fresh PostgreSQL database
/// and the shared Redis (under a prefix of their own), each on ports fixed
/// for the test, so that a replica restarted in its place is found where
/// the clients expect it, as behind a Kubernetes Service.
pub struct ReplicaSet {
    servers: Vec<Option<ServerProcess>>,
    grpc: Vec<SocketAddr>,
    env: Vec<(String, String)>,
    dirs: Vec<TempDir>,
    pub root_key: String,
    /// The replicas' `--redis-key-prefix`.
    pub prefix: String,
    pub redis_url: String,
}

impl ReplicaSet {
    pub async fn start(count: usize, extra: &[(&str, &str)]) -> ReplicaSet {
        let database_url = fresh_postgres_database().await;
        let redis_url = shared_redis_url();
        let prefix = unique("apikeyd-faults");
        let mut env: Vec<(String, String)> = [
            ("APIKEYD_DATABASE_URL", database_url.as_str()),
            ("APIKEYD_REDIS_URL", redis_url.as_str()),
            ("APIKEYD_REDIS_KEY_PREFIX", prefix.as_str()),
            // Answers come late on a loaded two-core machine.
            ("APIKEYD_REDIS_TIMEOUT_MS", "2000"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.sort();
        let mut set = ReplicaSet {
            servers: Vec::new(),
            grpc: Vec::new(),
            env,
            dirs: Vec::new(),
            root_key: String::new(),
            prefix,
            redis_url,
        };
        for i in 0..count {
            set.grpc
                .push(SocketAddr::from(([127, 0, 0, 1], free_port())));
            set.dirs.push(tempfile::tempdir().unwrap());
            let server = set.spawn(i);
            set.servers.push(Some(server));
        }
        set.root_key = std::fs::read_to_string(set.dirs[0].path().join("bootstrap-root-key"))
            .expect("the first replica bootstraps a root key")
            .trim()
            .to_owned();
        set
    }

    fn spawn(&self, i: usize) -> ServerProcess {
        let grpc = self.grpc[i].to_string();
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.push(("APIKEYD_GRPC_ADDR", grpc.as_str()));
        ServerProcess::start(self.dirs[i].path(), &env)
    }

    pub fn len(&self) -> usize {
        self.grpc.len()
    }

    /// One lazily connecting channel per replica: it reconnects by itself
    /// once a restarted replica listens again.
    pub fn channels(&self) -> Vec<Channel> {
        self.grpc
            .iter()
            .map(|addr| {
                Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_timeout(Duration::from_secs(1))
                    .connect_lazy()
            })
            .collect()
    }

    /// SIGKILL: the replica dies with its calls in flight.
    pub fn kill(&mut self, i: usize) {
        drop(self.servers[i].take().expect("replica is running"));
    }

    /// SIGTERM, and waits for the drain and the exit; returns the exit status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let mut server = self.servers[i].take().expect("replica is running");
        server.signal_terminate();
        server.wait()
    }

    /// Starts replica `i` again on its port and waits for its "serving" line.
    pub fn restart(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "replica {i} is still running");
        let server = self.spawn(i);
        self.servers[i] = Some(server);
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &ServerProcess)> {
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }
}

/// How long one attempt of a call may take before the client gives up on
/// that replica and tries the next.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client that fails over does with an error: retry it on another
/// replica (the call never reached a replica that could answer it) or take
/// it as the answer.
pub fn is_transport_failure(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => true,
        // hyper and h2 report a connection torn down mid-call as INTERNAL;
        // apikeyd's own INTERNAL always says where the cause is.
        Code::Internal => !status.message().starts_with("internal error;"),
        _ => false,
    }
}

/// A call answered, and the failures it met on the way.
pub struct Answered<T> {
    pub value: T,
    /// The codes of the attempts that failed over (empty: the first replica answered).
    pub failed_over: Vec<String>,
    pub latency: Duration,
    /// The replica that answered.
    pub replica: usize,
}

/// Calls replica `first`, then the next ones in turn on a transport
/// failure, up to three rounds. A status that is an answer (anything but a
/// transport failure) is returned at once as the error.
pub async fn with_failover<T, F, Fut>(
    channels: &[Channel],
    first: usize,
    mut call: F,
) -> Result<Answered<T>, (Status, Vec<String>)>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    let mut failed_over = Vec::new();
    let mut last = Status::unavailable("no replica tried");
    for attempt in 0..3 * channels.len() {
        let replica = (first + attempt) % channels.len();
        let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, call(channels[replica].clone())).await;
        match outcome {
            Ok(Ok(value)) => {
                return Ok(Answered {
                    value,
                    failed_over,
                    latency: started.elapsed(),
                    replica,
                });
            }
            Ok(Err(status)) if is_transport_failure(&status) => {
                failed_over.push(format!("{:?}", status.code()));
                last = status;
            }
            Ok(Err(status)) => return Err((status, failed_over)),
            Err(_) => {
                failed_over.push("client timeout".to_owned());
                last = Status::deadline_exceeded("the attempt took too long");
            }
        }
        // A replica that refuses connections answers at once: back off a
        // little, as a real client would, before the next attempt.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err((last, failed_over))
}

/// The figures of a load run, shared by its workers.
#[derive(Default)]
pub struct Tally {
    inner: Mutex<TallyInner>,
}

#[derive(Default)]
struct TallyInner {
    calls: u64,
    /// Answers by call kind and outcome ("Validate VALID", "CreateKey OK", ...).
    answers: BTreeMap<String, u64>,
    /// Errors a caller finally received, by call kind and code.
    errors: BTreeMap<String, u64>,
    /// Attempts that failed over to another replica, by code.
    failed_over: BTreeMap<String, u64>,
    /// Answers that contradict what is true: the whole test fails on one.
    wrong: Vec<String>,
    latencies: BTreeMap<&'static str, Histogram<u64>>,
}

impl Tally {
    pub fn new() -> Arc<Tally> {
        Arc::new(Tally::default())
    }

    /// Records one finished call: its outcome (`Ok(label)`) or its final
    /// error, the failovers it took, and its latency.
    pub fn record(
        &self,
        kind: &'static str,
        outcome: Result<String, &Status>,
        failed_over: &[String],
        latency: Duration,
    ) {
        let mut inner = self.inner.lock().unwrap();
        inner.calls += 1;
        match outcome {
            Ok(label) => *inner.answers.entry(format!("{kind} {label}")).or_default() += 1,
            Err(status) => {
                *inner
                    .errors
                    .entry(format!("{kind} {:?}: {}", status.code(), status.message()))
                    .or_default() += 1
            }
        }
        for code in failed_over {
            *inner.failed_over.entry(code.clone()).or_default() += 1;
        }
        inner
            .latencies
            .entry(kind)
            .or_insert_with(|| Histogram::new(3).unwrap())
            .record(latency.as_micros().max(1) as u64)
            .unwrap();
    }

    pub fn wrong(&self, what: String) {
        self.inner.lock().unwrap().wrong.push(what);
    }

    pub fn calls(&self) -> u64 {
        self.inner.lock().unwrap().calls
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.inner.lock().unwrap().errors.clone()
    }

    /// Fails, quoting the first ten, when any answer was wrong.
    pub fn assert_no_wrong_answer(&self) {
        let wrong = &self.inner.lock().unwrap().wrong;
        assert!(
            wrong.is_empty(),
            "wrong answers: {:?}",
            &wrong[..wrong.len().min(10)]
        );
    }

    pub fn failed_over(&self) -> BTreeMap<String, u64> {
        self.inner.lock().unwrap().failed_over.clone()
    }

    /// (p50, p99) of one call kind, in milliseconds.
    pub fn percentiles_ms(&self, kind: &str) -> (f64, f64) {
        let inner = self.inner.lock().unwrap();
        let histogram = inner
            .latencies
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind} call was made"));
        (
            histogram.value_at_quantile(0.5) as f64 / 1000.0,
            histogram.value_at_quantile(0.99) as f64 / 1000.0,
        )
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.inner
            .lock()
            .unwrap()
            .latencies
            .keys()
            .copied()
            .collect()
    }

    /// The figures, one line each, for `--nocapture`.
    pub fn print(&self, title: &str) {
        let inner = self.inner.lock().unwrap();
        println!("{title}: {} calls", inner.calls);
        for (answer, n) in &inner.answers {
            println!("  answered {answer}: {n}");
        }
        for (error, n) in &inner.errors {
            println!("  error {error}: {n}");
        }
        for (code, n) in &inner.failed_over {
            println!("  attempts failed over to another replica after {code}: {n}");
        }
        for (kind, h) in &inner.latencies {
            println!(
                "  {kind}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            );
        }
        println!("  wrong answers: {}", inner.wrong.len());
        for wrong in inner.wrong.iter().take(10) {
            println!("    {wrong}");
        }
    }
}

/// Polls `condition` every 20 ms until it holds; panics with `what` past `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the server's health service says of `service` ("" for the whole server).
pub async fn health(channel: &Channel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health answers")
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

/// Waits (up to 10 s) until `service`'s health is `status`; returns how long it took.
pub async fn wait_for_health(channel: &Channel, service: &str, status: ServingStatus) -> Duration {
    wait_for_health_within(channel, service, status, Duration::from_secs(10)).await
}

pub async fn wait_for_health_within(
    channel: &Channel,
    service: &str,
    status: ServingStatus,
    limit: Duration,
) -> Duration {
    eventually(
        limit,
        &format!("{service:?} becomes {status:?}"),
        || async { health(channel, service).await == status },
    )
    .await
}

/// A server process on a Redis of the test's own (to stop and restart),
/// under a Redis failure policy and timeout, with its bootstrap root key.
pub struct ServerOnOwnRedis {
    pub redis: RedisServer,
    pub server: ServerProcess,
    pub root_key: String,
    pub channel: Channel,
    /// Holds the server's data directory for as long as the test runs.
    pub data_dir: TempDir,
}

pub async fn server_on_own_redis(policy: &str, timeout_ms: &str) -> ServerOnOwnRedis {
    let redis = RedisServer::start(false);
    let data_dir = tempfile::tempdir().unwrap();
    let redis_url = redis.url();
    let server = ServerProcess::start(
        data_dir.path(),
        &[
            ("APIKEYD_REDIS_URL", redis_url.as_str()),
            ("APIKEYD_REDIS_TIMEOUT_MS", timeout_ms),
            ("APIKEYD_REDIS_FAILURE_POLICY", policy),
        ],
    );
    let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key"))
        .unwrap()
        .trim()
        .to_owned();
    let channel = crate::helpers::connect(server.addr).await;
    ServerOnOwnRedis {
        redis,
        server,
        root_key,
        channel,
        data_dir,
    }
}
