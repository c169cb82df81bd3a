//! "Is this the key's secret", under attack and under load, against the real
//! `apikeyd serve` binary (its own metrics and resident memory): no lockout,
//! a budget that cancelled calls cannot escape, one argon2 run per cold key,
//! a full queue answered RESOURCE_EXHAUSTED, and hashes moved to a new cost.

use std::time::{Duration, Instant};

use apikeyd::grpc::pb;
use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use apikeyd::secrets::Argon2Cost;
use apikeyd::store::entities::{api_key, root_key};
use futures_util::{FutureExt, StreamExt};
use sea_orm::{Database, EntityTrait};
use tonic::Code;

use crate::helpers::{
    Backend, ServerProcess, code_of, connect, create_request, fresh_postgres_database, scrape,
    with_bearer, wrong_secret_for,
};

const VERIFY_RUNS: &str = r#"apikeyd_argon2_duration_seconds_count{operation="verify"}"#;
const IN_FLIGHT: &str = "apikeyd_argon2_in_flight";
const QUEUE_DEPTH: &str = "apikeyd_argon2_queue_depth";
/// Longest a test waits for the argon2 queue to empty.
const DRAIN_PATIENCE: Duration = Duration::from_secs(120);
/// How often a waiting test looks at the server's metrics again.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
const MIB: u64 = 1024 * 1024;

struct Server {
    process: ServerProcess,
    keys: KeyServiceClient<tonic::transport::Channel>,
    validation: ValidationServiceClient<tonic::transport::Channel>,
    root_key: String,
    data_dir: tempfile::TempDir,
}

async fn start(env: &[(&str, &str)]) -> Server {
    start_in(tempfile::tempdir().unwrap(), env).await
}

async fn start_in(data_dir: tempfile::TempDir, env: &[(&str, &str)]) -> Server {
    let process = ServerProcess::start(data_dir.path(), env);
    let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key"))
        .unwrap()
        .trim()
        .to_owned();
    let channel = connect(process.addr).await;
    Server {
        keys: KeyServiceClient::new(channel.clone()),
        validation: ValidationServiceClient::new(channel),
        process,
        root_key,
        data_dir,
    }
}

/// `APIKEYD_API_KEY_ARGON2_*` for `cost`, as owned strings.
fn api_key_cost(cost: Argon2Cost) -> [(&'static str, String); 2] {
    [
        (
            "APIKEYD_API_KEY_ARGON2_MEMORY_KIB",
            cost.memory_kib.to_string(),
        ),
        (
            "APIKEYD_API_KEY_ARGON2_ITERATIONS",
            cost.iterations.to_string(),
        ),
    ]
}

fn env_refs<'a>(owned: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    owned.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

impl Server {
    /// A key whose limits (10,000 an hour) no test here reaches.
    async fn create_key(&self, owner: &str) -> (String, String) {
        let request = pb::CreateKeyRequest {
            tier: "enterprise".to_owned(),
            ..create_request(owner, &["*"])
        };
        let created = self
            .keys
            .clone()
            .create_key(with_bearer(request, &self.root_key))
            .await
            .expect("CreateKey succeeds")
            .into_inner();
        (created.key, created.api_key.unwrap().id)
    }

    /// `count` keys of distinct owners, created a few at a time.
    async fn create_keys(&self, count: usize) -> Vec<String> {
        futures_util::stream::iter(0..count)
            .map(|i| async move { self.create_key(&format!("owner_{i}")).await.0 })
            .buffer_unordered(8)
            .collect()
            .await
    }

    async fn validate(
        &self,
        key: &str,
        timeout: Option<Duration>,
    ) -> Result<pb::ValidateResponse, tonic::Status> {
        let mut request = tonic::Request::new(pb::ValidateRequest {
            key: key.to_owned(),
            ..Default::default()
        });
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        self.validation
            .clone()
            .validate(request)
            .await
            .map(|r| r.into_inner())
    }

    /// The value of `series` in the server's metrics; fails when it is absent.
    async fn metric(&self, series: &str) -> f64 {
        crate::helpers::sample(&scrape(self.process.http_addr).await, series)
    }

    /// Waits until no argon2 run is queued or running.
    async fn drained(&self) {
        let deadline = Instant::now() + DRAIN_PATIENCE;
        while self.metric(QUEUE_DEPTH).await > 0.0 {
            assert!(Instant::now() < deadline, "the argon2 queue never emptied");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// A call the server gave up on: its `grpc-timeout` ran out.
fn cancelled(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded)
}

/// Validates every key at once with `timeout` as each call's deadline, and
/// returns the outcomes. Each 16 calls get a connection of their own: h2's
/// rapid-reset guard closes a connection on which more than 20 streams were
/// abandoned before the server took them up, as a loaded server may not have.
fn abandon(
    server: &Server,
    keys: Vec<String>,
    timeout: Duration,
) -> impl Future<Output = Vec<Result<pb::ValidateResponse, tonic::Status>>> + Send + 'static {
    let addr = server.process.addr;
    let chunks: Vec<Vec<String>> = keys.chunks(16).map(<[String]>::to_vec).collect();
    async move {
        let calls = chunks.into_iter().map(|chunk| async move {
            let client = ValidationServiceClient::new(connect(addr).await);
            futures_util::future::join_all(chunk.into_iter().map(|key| {
                let mut client = client.clone();
                async move {
                    let mut request = tonic::Request::new(pb::ValidateRequest {
                        key,
                        ..Default::default()
                    });
                    request.set_timeout(timeout);
                    client.validate(request).await.map(|r| r.into_inner())
                }
            }))
            .await
        });
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Largest values seen while sampling the server's metrics and memory.
#[derive(Debug)]
struct Peaks {
    in_flight: f64,
    resident_bytes: u64,
    samples: u32,
    /// The last sample that saw an argon2 run in flight.
    last_seen_running: Instant,
}

/// Samples in-flight argon2 runs and resident memory until `work` has
/// finished and the argon2 queue is empty.
async fn sample_until<T>(server: &Server, work: tokio::task::JoinHandle<T>) -> (T, Peaks) {
    let mut peaks = Peaks {
        in_flight: 0.0,
        resident_bytes: 0,
        samples: 0,
        last_seen_running: Instant::now(),
    };
    let deadline = Instant::now() + DRAIN_PATIENCE;
    loop {
        let metrics = scrape(server.process.http_addr).await;
        let in_flight = crate::helpers::sample(&metrics, IN_FLIGHT);
        if in_flight > 0.0 {
            peaks.last_seen_running = Instant::now();
        }
        peaks.in_flight = peaks.in_flight.max(in_flight);
        peaks.resident_bytes = peaks.resident_bytes.max(server.process.resident_bytes());
        peaks.samples += 1;
        if work.is_finished() && crate::helpers::sample(&metrics, QUEUE_DEPTH) == 0.0 {
            return (work.await.unwrap(), peaks);
        }
        assert!(Instant::now() < deadline, "the argon2 queue never emptied");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_wrong_secrets_never_lock_out_the_right_one() {
    let server = &start(&[]).await;
    let (key, _) = server.create_key("victim").await;
    let runs_before = server.metric(VERIFY_RUNS).await;

    // 500 wrong secrets, 64 at a time, each answered.
    let answered: Vec<_> = futures_util::stream::iter(0..500)
        .map(|_| {
            let wrong = wrong_secret_for(&key);
            async move { server.validate(&wrong, None).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    // 500 more at once, each given up on after a millisecond.
    let wrong: Vec<_> = (0..500).map(|_| wrong_secret_for(&key)).collect();
    let abandoned = abandon(server, wrong, Duration::from_millis(1)).await;
    server.drained().await;
    let right = server.validate(&key, None).await.unwrap();

    for answer in &answered {
        let verdict = answer.as_ref().expect("a wrong secret gets a verdict");
        assert_eq!(code_of(verdict), pb::ValidationCode::NotFound);
    }
    for outcome in &abandoned {
        match outcome {
            Ok(verdict) => assert_eq!(code_of(verdict), pb::ValidationCode::NotFound),
            Err(status) => assert!(
                cancelled(status)
                    || (status.code() == Code::ResourceExhausted
                        && status.message().contains("retry")),
                "{status:?}"
            ),
        }
    }
    assert!(
        server.metric(VERIFY_RUNS).await >= runs_before + 500.0,
        "every answered wrong secret ran argon2"
    );
    assert_eq!(
        code_of(&right),
        pb::ValidationCode::Valid,
        "the right secret is never locked out"
    );
    assert!(right.api_key.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_cold_verifications_stay_within_the_budget_and_its_memory() {
    let _alone = crate::helpers::measuring_alone().await;
    const MAX_IN_FLIGHT: f64 = 2.0;
    let cost = api_key_cost(Argon2Cost::OWASP);
    let mut env = env_refs(&cost);
    env.push(("APIKEYD_ARGON2_MAX_IN_FLIGHT", "2"));
    let server = start(&env).await;
    let resident_at_start = server.process.resident_bytes();
    let keys = server.create_keys(200).await;
    // A wrong secret per key caches its record (not verified), so that the
    // flood's calls reach the argon2 queue before they are cancelled.
    for key in &keys {
        let verdict = server.validate(&wrong_secret_for(key), None).await.unwrap();
        assert_eq!(code_of(&verdict), pb::ValidationCode::NotFound);
    }
    server.drained().await;

    // Every call gives up long before one hash at this cost is done.
    let flood = tokio::spawn(
        abandon(&server, keys, Duration::from_millis(5))
            .then(|outcomes| async move { (outcomes, Instant::now()) }),
    );
    let ((outcomes, all_left), peaks) = sample_until(&server, flood).await;

    for outcome in &outcomes {
        let status = outcome.as_ref().expect_err("no call waits for its hash");
        assert!(cancelled(status), "{status:?}");
    }
    assert_eq!(
        peaks.in_flight, MAX_IN_FLIGHT,
        "runs in flight reached the budget and never passed it ({} samples)",
        peaks.samples
    );
    assert!(
        peaks.last_seen_running > all_left,
        "the cancelled calls' runs went on after every caller had left"
    );
    // Each argon2 thread keeps one working memory of the cost; the rest is
    // the server's own.
    let grown = peaks.resident_bytes.saturating_sub(resident_at_start);
    let bound = 2 * u64::from(Argon2Cost::OWASP.memory_kib) * 1024 + 32 * MIB;
    println!(
        "200 cancelled cold verifications (19 MiB each, 2 in flight): peak resident memory {:.1} MB, {:.1} MB over the {:.1} MB at start (bound {:.1} MB), {} samples",
        peaks.resident_bytes as f64 / 1e6,
        grown as f64 / 1e6,
        resident_at_start as f64 / 1e6,
        bound as f64 / 1e6,
        peaks.samples
    );
    assert!(
        grown <= bound,
        "resident memory grew by {grown} bytes (bound {bound})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_calls_of_a_cold_key_run_argon2_once_and_memory_comes_back() {
    let _alone = crate::helpers::measuring_alone().await;
    // One run (8 MiB, 6 passes: tens of milliseconds) outlasts the whole
    // burst's arrival, so without single flight each call would run its own.
    let cost = api_key_cost(Argon2Cost {
        memory_kib: 8192,
        iterations: 6,
        parallelism: 1,
    });
    let server = start(&env_refs(&cost)).await;
    let resident_at_start = server.process.resident_bytes();
    let (key, _) = server.create_key("busy").await;
    let others = server.create_keys(200).await;
    server.drained().await;
    let runs_before = server.metric(VERIFY_RUNS).await;

    let burst = futures_util::future::join_all((0..128).map(|_| server.validate(&key, None))).await;
    let runs_after_burst = server.metric(VERIFY_RUNS).await;
    let cold =
        futures_util::future::join_all(others.iter().map(|k| server.validate(k, None))).await;
    server.drained().await;
    // The allocator hands freed pages back on its own schedule (mimalloc
    // purges after a delay): memory must come back, so wait for that with a
    // deadline rather than read it the instant the burst ends.
    let bound = resident_at_start + 50 * 1_000_000;
    let returned_by = Instant::now() + Duration::from_secs(10);
    let mut resident_after = server.process.resident_bytes();
    while resident_after > bound && Instant::now() < returned_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
        resident_after = server.process.resident_bytes();
    }

    for verdict in burst.iter().chain(&cold) {
        assert_eq!(
            code_of(verdict.as_ref().expect("a verdict")),
            pb::ValidationCode::Valid
        );
    }
    assert_eq!(
        runs_after_burst,
        runs_before + 1.0,
        "128 concurrent first calls shared one argon2 run"
    );
    let grown = resident_after.saturating_sub(resident_at_start);
    println!(
        "after 201 keys hashed and 201 cold verifications (8 MiB): resident memory {:.1} MB, {:.1} MB over the {:.1} MB at start",
        resident_after as f64 / 1e6,
        grown as f64 / 1e6,
        resident_at_start as f64 / 1e6
    );
    assert!(
        grown <= 50 * 1_000_000,
        "resident memory stayed {grown} bytes above where it started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_resource_exhausted_never_a_verdict() {
    // One thread, no queue, and a run long enough to be caught running.
    let cost = api_key_cost(Argon2Cost {
        memory_kib: 65_536,
        iterations: 16,
        parallelism: 1,
    });
    let mut env = env_refs(&cost);
    env.extend([
        ("APIKEYD_ARGON2_MAX_IN_FLIGHT", "1"),
        ("APIKEYD_ARGON2_MAX_QUEUED", "0"),
    ]);
    let server = start(&env).await;
    let (running_key, _) = server.create_key("a").await;
    let (refused_key, _) = server.create_key("b").await;

    let running = server.validate(&running_key, None);
    let mut running = std::pin::pin!(running);
    let deadline = Instant::now() + DRAIN_PATIENCE;
    loop {
        tokio::select! {
            biased;
            _ = &mut running => panic!("the run ended before the pool was seen busy"),
            in_flight = server.metric(IN_FLIGHT) => if in_flight == 1.0 { break },
        }
        assert!(Instant::now() < deadline, "the run never started");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let refused = server.validate(&refused_key, None).await;
    let management = server
        .keys
        .clone()
        .create_key(with_bearer(create_request("c", &["*"]), &server.root_key))
        .await;
    let admitted = running.await;
    let retried = server.validate(&refused_key, None).await;

    let status = refused.expect_err("a full queue gives no verdict");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("retry"), "{status:?}");
    let status = management.expect_err("management calls are refused alike");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(code_of(&admitted.unwrap()), pb::ValidationCode::Valid);
    assert_eq!(
        code_of(&retried.unwrap()),
        pb::ValidationCode::Valid,
        "a retry once the pool is free gets the verdict"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_deadline_gets_the_default_one() {
    // One hash takes seconds at this cost; the deadline is a fraction of it.
    let cost = api_key_cost(Argon2Cost {
        memory_kib: 65_536,
        iterations: 48,
        parallelism: 1,
    });
    let mut env = env_refs(&cost);
    env.push(("APIKEYD_GRPC_DEFAULT_DEADLINE_MS", "300"));
    let server = start(&env).await;

    let cut = server
        .keys
        .clone()
        .create_key(with_bearer(
            create_request("slow", &["*"]),
            &server.root_key,
        ))
        .await;
    server.drained().await;
    let listed = server
        .keys
        .clone()
        .list_keys(with_bearer(
            pb::ListKeysRequest {
                owner_id: "slow".to_owned(),
                ..Default::default()
            },
            &server.root_key,
        ))
        .await
        .unwrap()
        .into_inner();

    let status = cut.expect_err("a call longer than the default deadline is cut");
    assert!(cancelled(&status), "{status:?}");
    assert!(listed.api_keys.is_empty(), "a cut call writes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_unread() {
    let server = start(&[("APIKEYD_GRPC_MAX_REQUEST_BYTES", "4096")]).await;
    let huge = pb::ValidateRequest {
        key: "sk_live_x".to_owned(),
        required_scopes: vec!["posts:read".to_owned(); 1_000],
        ..Default::default()
    };

    let refused = server.validation.clone().validate(huge).await;

    let status = refused.expect_err("a request over the limit is not decoded");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

/// A key and the root key created under one cost verify under another, and
/// their stored PHC strings then carry the new parameters, once.
async fn hashes_move_to_the_configured_cost(backend: Backend) {
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres_database().await),
    };
    let mut env = vec![];
    if let Some(url) = &database_url {
        env.push(("APIKEYD_DATABASE_URL", url.as_str()));
    }
    let old = start(&env).await;
    let (key, id) = old.create_key("mover").await;
    let (root_id, data_dir) = (
        old.root_key.split('_').nth(1).unwrap().to_owned(),
        old.data_dir,
    );
    old.process.terminate();
    let sqlite_url = format!("sqlite://{}", data_dir.path().join("apikeyd.db").display());
    let stored = || async {
        let db = Database::connect(database_url.as_ref().unwrap_or(&sqlite_url))
            .await
            .unwrap();
        let key = api_key::Entity::find_by_id(id.as_str())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        let root = root_key::Entity::find_by_id(root_id.as_str())
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        (key.secret_hash, root.secret_hash)
    };
    let (key_hash_before, root_hash_before) = stored().await;

    let new_cost = [
        ("APIKEYD_API_KEY_ARGON2_MEMORY_KIB", "2048"),
        ("APIKEYD_API_KEY_ARGON2_ITERATIONS", "2"),
        ("APIKEYD_ROOT_KEY_ARGON2_MEMORY_KIB", "3072"),
        ("APIKEYD_ROOT_KEY_ARGON2_ITERATIONS", "2"),
    ];
    let mut new_env = env.clone();
    new_env.extend(new_cost);
    let new = start_in(data_dir, &new_env).await;
    let verdict = new.validate(&key, None).await.unwrap();
    let read = new
        .keys
        .clone()
        .get_key(with_bearer(
            pb::GetKeyRequest { id: id.clone() },
            &new.root_key,
        ))
        .await;
    let (key_hash_after, root_hash_after) = stored().await;
    let Server {
        process, data_dir, ..
    } = new;
    process.terminate();
    let again = start_in(data_dir, &new_env).await;
    let verdict_again = again.validate(&key, None).await.unwrap();
    let (key_hash_last, _) = stored().await;

    assert!(
        key_hash_before.contains("$m=1024,t=1,p=1$"),
        "{key_hash_before}"
    );
    assert!(
        root_hash_before.contains("$m=1024,t=1,p=1$"),
        "{root_hash_before}"
    );
    assert_eq!(code_of(&verdict), pb::ValidationCode::Valid);
    assert!(read.is_ok(), "{read:?}");
    assert!(
        key_hash_after.contains("$m=2048,t=2,p=1$"),
        "{key_hash_after}"
    );
    assert!(
        root_hash_after.contains("$m=3072,t=2,p=1$"),
        "{root_hash_after}"
    );
    assert_eq!(
        code_of(&verdict_again),
        pb::ValidationCode::Valid,
        "the new hash verifies"
    );
    assert_eq!(
        key_hash_last, key_hash_after,
        "rehashed once, not on every start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_hashes_move_to_the_configured_cost_at_their_next_verification() {
    hashes_move_to_the_configured_cost(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hashes_move_to_the_configured_cost_at_their_next_verification() {
    hashes_move_to_the_configured_cost(Backend::Postgres).await;
}
