//! The load generator for every fixed-request scenario: h2load (Debian's
//! `nghttp2-client`), a separate process, sending gRPC frames.
//!
//! gRPC over HTTP/2 is a POST whose body is the protobuf message behind a
//! 5-byte prefix (a compression flag, then the length, big-endian), with
//! `content-type: application/grpc` and `te: trailers`. h2load sends one such
//! body from a file (`-d`) on every request. It judges a request by its HTTP
//! status alone, and a gRPC error is HTTP 200 with `grpc-status` in the
//! trailers: the caller checks what the server answered ([`crate::answers`]).
//!
//! Every run reports h2load's own summary: requests, req/s, and the mean
//! and longest time for a request. A median latency needs h2load's
//! `--log-file` (one line per request: start time, HTTP status, microseconds
//! to the end of the response), asked for by [`Shape::per_request_log`]:
//! throughput runs go without it, as writing it is work the load generator
//! does on the server's two cores per request (with it, one server's
//! admitted/empty read 0.70, 0.78 and 0.95 in three runs a minute apart;
//! the runs beside them without it, 0.81-0.85).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// The h2load this benchmark drives; installed with apt-get when missing.
pub struct H2load {
    /// Its `--version` line, printed with the results.
    pub version: String,
    /// Where bodies and request logs are written.
    scratch: tempfile::TempDir,
}

/// One gRPC call as h2load sends it: the method's path and its framed body.
pub struct GrpcCall {
    /// `/package.Service/Method`.
    pub path: String,
    body: Vec<u8>,
    /// Extra request headers (`authorization` for management calls).
    headers: Vec<(String, String)>,
}

impl GrpcCall {
    pub fn new(path: &str, message: &impl prost::Message) -> GrpcCall {
        GrpcCall {
            path: path.to_owned(),
            body: grpc_frame(message),
            headers: Vec::new(),
        }
    }

    /// The same call carrying `Authorization: Bearer <root_key>`.
    pub fn with_bearer(mut self, root_key: &str) -> GrpcCall {
        self.headers
            .push(("authorization".to_owned(), format!("Bearer {root_key}")));
        self
    }
}

/// A gRPC length-prefixed message: flag 0 (not compressed), the length as
/// a big-endian u32, then the protobuf bytes.
pub fn grpc_frame(message: &impl prost::Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let length = u32::try_from(encoded.len()).expect("benchmark messages are small");
    let mut frame = Vec::with_capacity(5 + encoded.len());
    frame.push(0);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&encoded);
    frame
}

/// How h2load pushes: `-c` connections with up to `-m` streams each in
/// flight, for a time or for a number of requests.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub connections: usize,
    pub streams_per_connection: usize,
    pub length: Length,
    /// h2load writes a line per request (`--log-file`), for a median;
    /// for latency runs, not throughput runs (see the module's doc).
    pub per_request_log: bool,
}

#[derive(Clone, Copy, Debug)]
pub enum Length {
    /// `-D`: for this long. At the end h2load resets the streams still in
    /// flight, which the server answers with an error (its request body
    /// never came): for warming up, not for measuring.
    Duration(Duration),
    /// `-n`: exactly this many requests, each one awaited.
    Requests(u64),
}

impl Shape {
    pub fn in_flight(&self) -> usize {
        self.connections * self.streams_per_connection
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "-c".to_owned(),
            self.connections.to_string(),
            "-m".to_owned(),
            self.streams_per_connection.to_string(),
        ];
        match self.length {
            Length::Duration(length) => {
                args.extend(["-D".to_owned(), length.as_secs().max(1).to_string()])
            }
            Length::Requests(count) => args.extend(["-n".to_owned(), count.to_string()]),
        }
        args
    }
}

/// What h2load measured in one run.
#[derive(Clone, Debug)]
pub struct Measured {
    /// Responses received (any status).
    pub done: u64,
    /// Requests h2load counts as failed, errored or timed out, plus
    /// responses with an HTTP status other than 200.
    pub failed: u64,
    /// `done` per second, as h2load reports it (from its start to its last
    /// response).
    pub per_second: f64,
    /// h2load's mean and longest time for a request.
    pub mean: Duration,
    pub max: Duration,
    /// The median time for a request, from the per-request log when the
    /// shape asked for one.
    pub p50: Option<Duration>,
}

impl H2load {
    /// Finds h2load on `PATH`, or installs Debian's `nghttp2-client` with
    /// apt-get (saying so) when it is missing.
    pub fn find_or_install() -> anyhow::Result<H2load> {
        let version = match version() {
            Some(version) => version,
            None => {
                println!(
                    "h2load is not installed: installing Debian's nghttp2-client with apt-get (once)"
                );
                apt_get(&["update", "-qq"])?;
                apt_get(&[
                    "install",
                    "-y",
                    "-qq",
                    "-o=Dpkg::Use-Pty=0",
                    "nghttp2-client",
                ])?;
                version().context("apt-get installed nghttp2-client, yet h2load does not run")?
            }
        };
        Ok(H2load {
            version,
            scratch: tempfile::tempdir()?,
        })
    }

    /// The command line [`H2load::run`] uses, for the report; the bearer
    /// token is shown as `<root key>`.
    pub fn command_line(&self, target: &str, call: &GrpcCall, shape: &Shape) -> String {
        let mut line = vec!["h2load".to_owned()];
        line.extend(shape.args());
        line.extend([
            "-d".to_owned(),
            "<body>".to_owned(),
            "-H".to_owned(),
            "'content-type: application/grpc'".to_owned(),
            "-H".to_owned(),
            "'te: trailers'".to_owned(),
        ]);
        for (name, _) in &call.headers {
            line.extend(["-H".to_owned(), format!("'{name}: <root key>'")]);
        }
        if shape.per_request_log {
            line.extend(["--log-file".to_owned(), "<log>".to_owned()]);
        }
        line.push(format!("http://{target}{}", call.path));
        line.join(" ")
    }

    /// Runs h2load once against `target` and reads its summary and request log.
    pub fn run(
        &self,
        target: SocketAddr,
        call: &GrpcCall,
        shape: &Shape,
    ) -> anyhow::Result<Measured> {
        self.run_side_by_side(target, std::slice::from_ref(call), shape)
    }

    /// Runs one h2load per call at the same time, the connections (and a
    /// counted run's requests) shared out among them, and adds their
    /// results up: several keys under one load, where h2load sends one body.
    pub fn run_side_by_side(
        &self,
        target: SocketAddr,
        calls: &[GrpcCall],
        shape: &Shape,
    ) -> anyhow::Result<Measured> {
        anyhow::ensure!(
            !calls.is_empty() && shape.connections % calls.len() == 0,
            "{} connections cannot be shared out among {} h2load processes",
            shape.connections,
            calls.len()
        );
        let share = Shape {
            connections: shape.connections / calls.len(),
            length: match shape.length {
                Length::Requests(count) => Length::Requests(count.div_ceil(calls.len() as u64)),
                length => length,
            },
            ..*shape
        };
        let mut running = Vec::with_capacity(calls.len());
        for (index, call) in calls.iter().enumerate() {
            running.push(self.spawn(target, call, &share, index)?);
        }
        let mut outcomes = Vec::with_capacity(running.len());
        for (child, log) in running {
            let log = shape.per_request_log.then_some(log);
            let output = child.wait_with_output().context("h2load")?;
            let summary = String::from_utf8_lossy(&output.stdout);
            if !output.status.success() {
                bail!(
                    "h2load exited with {}: {}{}",
                    output.status,
                    summary,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            outcomes.push(parse(&summary, log.as_deref())?);
        }
        Ok(add_up(outcomes))
    }

    fn spawn(
        &self,
        target: SocketAddr,
        call: &GrpcCall,
        shape: &Shape,
        index: usize,
    ) -> anyhow::Result<(std::process::Child, PathBuf)> {
        let body = self.scratch.path().join(format!("body-{index}.bin"));
        let log = self.scratch.path().join(format!("requests-{index}.tsv"));
        std::fs::write(&body, &call.body)?;
        let _ = std::fs::remove_file(&log);
        let mut command = Command::new("h2load");
        command.args(shape.args()).arg("-d").arg(&body).args([
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ]);
        for (name, value) in &call.headers {
            command.arg("-H").arg(format!("{name}: {value}"));
        }
        if shape.per_request_log {
            command.arg("--log-file").arg(&log);
        }
        let child = command
            .arg(format!("http://{target}{}", call.path))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run h2load")?;
        Ok((child, log))
    }
}

/// One h2load's summary and, with a log, its request latencies.
struct Outcome {
    done: u64,
    failed: u64,
    per_second: f64,
    mean: Duration,
    max: Duration,
    latencies: Option<Vec<Duration>>,
}

/// The runs of h2loads side by side as one: their responses over the
/// longest of their runs, their latencies together.
fn add_up(outcomes: Vec<Outcome>) -> Measured {
    let done: u64 = outcomes.iter().map(|o| o.done).sum();
    let failed = outcomes.iter().map(|o| o.failed).sum();
    let longest = outcomes
        .iter()
        .filter(|o| o.per_second > 0.0)
        .map(|o| o.done as f64 / o.per_second)
        .fold(0.0, f64::max);
    let mean = if done > 0 {
        let total: f64 = outcomes
            .iter()
            .map(|o| o.mean.as_secs_f64() * o.done as f64)
            .sum();
        Duration::from_secs_f64(total / done as f64)
    } else {
        Duration::ZERO
    };
    let max = outcomes.iter().map(|o| o.max).max().unwrap_or_default();
    let logged: Option<Vec<Vec<Duration>>> = outcomes.into_iter().map(|o| o.latencies).collect();
    let p50 = logged.map(|logs| {
        let mut latencies: Vec<Duration> = logs.into_iter().flatten().collect();
        latencies.sort_unstable();
        latencies
            .get(latencies.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or_default()
    });
    Measured {
        done,
        failed,
        per_second: if longest > 0.0 {
            done as f64 / longest
        } else {
            0.0
        },
        mean,
        max,
        p50,
    }
}

fn version() -> Option<String> {
    let output = Command::new("h2load").arg("--version").output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn apt_get(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("h2load is missing and apt-get cannot run: install nghttp2-client")?;
    anyhow::ensure!(
        status.success(),
        "apt-get {} failed ({status}): install nghttp2-client (it provides h2load) and run again",
        args.join(" ")
    );
    Ok(())
}

/// Reads h2load's summary lines and, when there is one, its request log.
fn parse(summary: &str, log: Option<&Path>) -> anyhow::Result<Outcome> {
    // finished in 4.02s, 2657.00 req/s, 98.69KB/s
    let finished = line_after(summary, "finished in ")?;
    let per_second: f64 = finished
        .split(", ")
        .find_map(|part| part.strip_suffix(" req/s"))
        .with_context(|| format!("a req/s figure in {finished:?}"))?
        .parse()?;
    // requests: 7971 total, 7971 started, 7971 done, 7971 succeeded, 0 failed, 0 errored, 0 timeout
    let requests = line_after(summary, "requests: ")?;
    let count = |line: &str, what: &str| -> anyhow::Result<u64> {
        line.split(", ")
            .find_map(|part| part.strip_suffix(what))
            .with_context(|| format!("a '{what}' count in {line:?}"))?
            .trim()
            .parse()
            .with_context(|| format!("a '{what}' count in {line:?}"))
    };
    let done = count(requests, " done")?;
    // status codes: 7971 2xx, 0 3xx, 0 4xx, 0 5xx
    let statuses = line_after(summary, "status codes: ")?;
    let failed = count(requests, " failed")?
        + count(requests, " errored")?
        + count(requests, " timeout")?
        + count(statuses, " 3xx")?
        + count(statuses, " 4xx")?
        + count(statuses, " 5xx")?;
    // time for request:   123us   4.56ms   789us   12us   90.00%  (min, max, mean, sd, +/- sd)
    let times = line_after(summary, "time for request:")?;
    let mut columns = times.split_whitespace().map(h2load_duration);
    let mut column = |what: &str| {
        columns
            .next()
            .with_context(|| format!("a {what} in {times:?}"))?
            .with_context(|| format!("a {what} in {times:?}"))
    };
    let _min = column("minimum")?;
    let max = column("maximum")?;
    let mean = column("mean")?;
    let latencies = match log {
        Some(log) => Some(read_log(log)?),
        None => None,
    };
    Ok(Outcome {
        done,
        failed,
        per_second,
        mean,
        max,
        latencies,
    })
}

/// The time each request took, from h2load's `--log-file`.
fn read_log(log: &Path) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    for line in std::fs::read_to_string(log)
        .with_context(|| format!("h2load's request log {}", log.display()))?
        .lines()
    {
        let micros: u64 = line
            .split('\t')
            .nth(2)
            .context("a duration column")?
            .trim()
            .parse()?;
        latencies.push(Duration::from_micros(micros));
    }
    Ok(latencies)
}

/// A duration as h2load prints one: `850us`, `1.25ms`, `2.00s`.
fn h2load_duration(text: &str) -> anyhow::Result<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        anyhow::bail!("{text:?} is not a duration");
    };
    let value: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration"))?;
    Ok(Duration::from_secs_f64(value * scale))
}

fn line_after<'a>(summary: &'a str, prefix: &str) -> anyhow::Result<&'a str> {
    summary
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .with_context(|| format!("no '{prefix}' line in h2load's output:\n{summary}"))
}
