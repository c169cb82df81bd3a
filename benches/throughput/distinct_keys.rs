//! The load generator for distinct keys. h2load sends the same body on
//! every request, so a scenario that presents each of many keys once (a
//! fresh replica's first Validate of 10,000 keys; warming 100,000 keys)
//! runs this benchmark's own binary again, as a separate process, with
//! [`WORKER_FLAG`]: tonic clients over a few HTTP/2 connections, a fixed
//! number of requests in flight, every latency in an HDR histogram, every
//! answer tallied by its code. It prints one JSON report on stdout.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::answers::Answers;
use crate::server;

/// The first argument that makes the benchmark binary this load generator.
pub const WORKER_FLAG: &str = "--validate-each-key-once";

/// How the keys are presented.
#[derive(Clone, Copy, Debug)]
pub struct Presenting {
    pub in_flight: usize,
    pub connections: usize,
}

/// What the load generator measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct EachKeyOnce {
    pub requests: u64,
    /// From the first request sent to the last answer received.
    pub elapsed_secs: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Answers by validation code (`valid`, ...) or `gRPC <code>`.
    pub answers: BTreeMap<String, u64>,
}

impl EachKeyOnce {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed_secs.max(1e-9)
    }

    pub fn answers(&self) -> Answers {
        let mut answers = Answers::default();
        for (answer, count) in &self.answers {
            answers.add(answer.clone(), *count as f64);
        }
        answers
    }
}

/// Validates each of `keys` once against `addr` from a separate process.
pub fn validate_each_key_once(
    addr: SocketAddr,
    keys: &[String],
    presenting: Presenting,
) -> anyhow::Result<EachKeyOnce> {
    let mut list = tempfile::NamedTempFile::new()?;
    for key in keys {
        writeln!(list, "{key}")?;
    }
    list.flush()?;
    let output = Command::new(std::env::current_exe()?)
        .arg(WORKER_FLAG)
        .arg(addr.to_string())
        .arg(list.path())
        .arg(presenting.in_flight.to_string())
        .arg(presenting.connections.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start the distinct-key load generator")?;
    anyhow::ensure!(
        output.status.success(),
        "the distinct-key load generator failed ({})",
        output.status
    );
    serde_json::from_slice(&output.stdout).context("the load generator's report")
}

/// The load generator's `main`: `<addr> <file of keys> <in flight> <connections>`.
pub fn worker_main(args: &[String]) -> anyhow::Result<()> {
    let [addr, keys, in_flight, connections] = args else {
        anyhow::bail!("usage: {WORKER_FLAG} <addr> <file of keys> <in flight> <connections>");
    };
    let addr: SocketAddr = addr.parse()?;
    let keys: Vec<String> = std::fs::read_to_string(keys)?
        .lines()
        .map(str::to_owned)
        .collect();
    let presenting = Presenting {
        in_flight: in_flight.parse()?,
        connections: connections.parse()?,
    };
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(present_each_once(addr, Arc::new(keys), presenting))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn present_each_once(
    addr: SocketAddr,
    keys: Arc<Vec<String>>,
    presenting: Presenting,
) -> anyhow::Result<EachKeyOnce> {
    let mut channels = Vec::new();
    for _ in 0..presenting.connections.max(1) {
        channels.push(server::connect(addr).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..presenting.in_flight.max(1) {
        let mut client = ValidationServiceClient::new(channels[slot % channels.len()].clone());
        let (keys, next) = (keys.clone(), next.clone());
        slots.spawn(async move {
            // 1 µs to 100 s at 3 significant digits.
            let mut latency_us =
                Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).expect("valid bounds");
            let mut answers = BTreeMap::<String, u64>::new();
            let mut last = started;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(index) else { break };
                let sent = Instant::now();
                let answer = match client.validate(server::validate_request(key.clone())).await {
                    Ok(response) => validation_label(response.get_ref().code()),
                    Err(status) => format!("gRPC {:?}", status.code()),
                };
                last = Instant::now();
                latency_us.saturating_record((last - sent).as_micros().max(1) as u64);
                *answers.entry(answer).or_default() += 1;
            }
            (latency_us, answers, last)
        });
    }
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3)?;
    let mut answers = BTreeMap::<String, u64>::new();
    let mut finished = started;
    while let Some(joined) = slots.join_next().await {
        let (slot_latency, slot_answers, last) = joined?;
        latency_us.add(&slot_latency)?;
        for (answer, count) in slot_answers {
            *answers.entry(answer).or_default() += count;
        }
        finished = finished.max(last);
    }
    let ms = |quantile: f64| latency_us.value_at_quantile(quantile) as f64 / 1000.0;
    Ok(EachKeyOnce {
        requests: latency_us.len(),
        elapsed_secs: finished.duration_since(started).as_secs_f64(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: latency_us.max() as f64 / 1000.0,
        answers,
    })
}

/// `VALIDATION_CODE_RATE_LIMITED` as the server's metrics label it: `rate_limited`.
fn validation_label(code: apikeyd::grpc::pb::ValidationCode) -> String {
    code.as_str_name()
        .trim_start_matches("VALIDATION_CODE_")
        .to_ascii_lowercase()
}
