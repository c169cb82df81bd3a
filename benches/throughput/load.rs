//! The load generator: a fixed number of in-flight requests spread over a
//! few HTTP/2 connections, one tokio task per in-flight slot, each request's
//! latency recorded in an HDR histogram.
//!
//! A request counts when it completes inside the measured window (after the
//! warm-up, before the end), as wrk and h2load count; slots stop issuing at
//! the end of the window, or earlier when the workload runs out (cold keys).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::transport::Channel;

/// How hard and how long to push.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// HTTP/2 connections the in-flight requests are spread over.
    pub connections: usize,
    /// Requests in flight at every moment: one task per slot.
    pub concurrency: usize,
    /// Run, but do not count, for this long first (connections, caches, pools).
    pub warmup: Duration,
    /// The counted window.
    pub measure: Duration,
}

/// What became of one request.
pub enum Attempt {
    /// The answer the scenario expects.
    Ok,
    /// A gRPC error, a timeout, or an answer the scenario did not expect.
    Failed,
    /// The workload has nothing left to send (every cold key was used once).
    Exhausted,
}

/// The counted part of a run.
pub struct Outcome {
    /// Requests completed in the window, failed ones included.
    pub requests: u64,
    pub errors: u64,
    /// The window's length: shorter than asked when the workload ran out.
    pub elapsed: Duration,
    /// Latency in microseconds of every counted request.
    pub latency_us: Histogram<u64>,
    /// Whether the workload ran out before the window ended.
    pub ran_out: bool,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.requests as f64 / self.elapsed.as_secs_f64()
        }
    }

    /// The latency at `quantile` (0.5, 0.99), in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Opens `count` separate connections (a tonic `Channel` is one HTTP/2
/// connection, multiplexing the requests of every clone).
pub async fn connect(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .timeout(REQUEST_TIMEOUT)
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    Ok(channels)
}

/// A request slower than this counts as failed instead of stalling the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Drives `call` at `load.concurrency` in flight over `channels`. `call`
/// gets a connection and a ticket, a number unique to the request across
/// all slots (0, 1, 2, ...), so that a workload can give every request its
/// own key.
pub async fn run<F, Fut>(channels: &[Channel], load: &Load, call: F) -> Outcome
where
    F: Fn(Channel, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Attempt> + Send,
{
    let call = Arc::new(call);
    let tickets = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let window_start = start + load.warmup;
    let window_end = window_start + load.measure;
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..load.concurrency {
        let channel = channels[slot % channels.len()].clone();
        let (call, tickets) = (call.clone(), tickets.clone());
        slots.spawn(async move {
            let mut tally = Tally::new();
            loop {
                let sent = Instant::now();
                if sent >= window_end {
                    break;
                }
                let ticket = tickets.fetch_add(1, Ordering::Relaxed);
                let attempt = call(channel.clone(), ticket).await;
                let done = Instant::now();
                if matches!(attempt, Attempt::Exhausted) {
                    tally.ran_out = true;
                    break;
                }
                if (window_start..=window_end).contains(&done) {
                    tally.requests += 1;
                    tally.last_done = Some(done);
                    if matches!(attempt, Attempt::Failed) {
                        tally.errors += 1;
                    }
                    let micros = (done - sent).as_micros().max(1) as u64;
                    tally.latency_us.saturating_record(micros);
                }
            }
            tally
        });
    }
    let mut total = Tally::new();
    while let Some(joined) = slots.join_next().await {
        total.merge(joined.expect("a load slot panicked"));
    }
    let window_closed = if total.ran_out {
        total.last_done.unwrap_or(window_start).min(window_end)
    } else {
        window_end
    };
    Outcome {
        requests: total.requests,
        errors: total.errors,
        elapsed: window_closed.saturating_duration_since(window_start),
        latency_us: total.latency_us,
        ran_out: total.ran_out,
    }
}

/// One slot's counts, merged into the run's at the end.
struct Tally {
    requests: u64,
    errors: u64,
    latency_us: Histogram<u64>,
    last_done: Option<Instant>,
    ran_out: bool,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            requests: 0,
            errors: 0,
            // 1 µs to 100 s at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 100_000_000, 3)
                .expect("valid histogram bounds"),
            last_done: None,
            ran_out: false,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share their bounds");
        self.last_done = self.last_done.max(other.last_done);
        self.ran_out |= other.ran_out;
    }
}
