//! The test harness: a real apikeyd server on a loopback port, over a real
//! database (a fresh SQLite file, or a fresh PostgreSQL database), driven by
//! typed gRPC clients.

use std::net::SocketAddr;

use apikeyd::config::{
    Argon2Settings, DatabaseSettings, DatabaseUrl, HotPathSettings, ServerSettings, Settings,
};
use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use apikeyd::grpc::pb::{self, ValidationCode};
use apikeyd::startup::Application;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Which relational store a test server uses; every behaviour test runs on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on. `scripts/test`
/// sets it (starting a server if none is running); the default is the one
/// this machine kind runs.
pub fn postgres_admin_url() -> String {
    std::env::var("APIKEYD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Creates an empty database with a unique name and returns its URL.
pub async fn fresh_postgres_database() -> String {
    let admin_url = postgres_admin_url();
    let admin = Database::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {admin_url} is needed for this test (run scripts/test): {e}")
    });
    let name = format!("apikeyd_test_{}", random_suffix());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    admin.close().await.ok();
    let mut url = url::Url::parse(&admin_url).expect("valid PostgreSQL URL");
    url.set_path(&name);
    url.to_string()
}

fn random_suffix() -> String {
    use rand_core::{OsRng, RngCore};
    format!("{:016x}", OsRng.next_u64())
}

/// Settings for a test server: port 0, a temporary data directory, and a
/// cheap argon2 cost so that tests creating many keys stay fast.
pub fn test_settings(data_dir: &std::path::Path, database_url: Option<String>) -> Settings {
    Settings {
        server: ServerSettings {
            grpc_addr: ([127, 0, 0, 1], 0).into(),
            http_addr: ([127, 0, 0, 1], 0).into(),
            shutdown_grace_secs: 5,
            ..ServerSettings::default()
        },
        database: DatabaseSettings {
            data_dir: data_dir.to_owned(),
            url: database_url.as_deref().map(DatabaseUrl::from),
        },
        argon2: Argon2Settings {
            api_key_memory_kib: 1024,
            api_key_iterations: 1,
            root_key_memory_kib: 1024,
            root_key_iterations: 1,
            ..Argon2Settings::default()
        },
        hot_path: HotPathSettings {
            last_used_flush_secs: 1,
            ..HotPathSettings::default()
        },
        ..Settings::default()
    }
}

pub struct TestApp {
    pub backend: Backend,
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The root key the server bootstrapped into `<data dir>/bootstrap-root-key`.
    pub root_key: String,
    pub keys: KeyServiceClient<Channel>,
    pub validation: ValidationServiceClient<Channel>,
    pub database_url: Option<String>,
    pub data_dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres_database().await),
    };
    let mut settings = test_settings(data_dir.path(), database_url.clone());
    adjust(&mut settings);
    let app = Application::build(settings).await.expect("server builds");
    let (addr, http_addr) = (app.grpc_addr(), app.http_addr());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stop_rx.await;
    }));
    let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key"))
        .expect("the first start writes a bootstrap root key")
        .trim()
        .to_owned();
    let channel = connect(addr).await;
    TestApp {
        backend,
        addr,
        http_addr,
        root_key,
        keys: KeyServiceClient::new(channel.clone()),
        validation: ValidationServiceClient::new(channel),
        database_url,
        data_dir,
        stop: Some(stop_tx),
        server: Some(server),
    }
}

pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid URI")
        .connect()
        .await
        .expect("connect to the test server")
}

impl TestApp {
    /// Wraps a message in a request carrying the bootstrap root key.
    pub fn authed<T>(&self, message: T) -> Request<T> {
        with_bearer(message, &self.root_key)
    }

    /// Creates a key for `owner_id` with `scopes`; returns (full key, record).
    pub async fn create_key(&self, owner_id: &str, scopes: &[&str]) -> (String, pb::ApiKey) {
        let response = self
            .keys
            .clone()
            .create_key(self.authed(create_request(owner_id, scopes)))
            .await
            .expect("CreateKey succeeds")
            .into_inner();
        (
            response.key,
            response.api_key.expect("CreateKey returns the record"),
        )
    }

    pub async fn validate(&self, key: &str, required_scopes: &[&str]) -> pb::ValidateResponse {
        self.validation
            .clone()
            .validate(pb::ValidateRequest {
                key: key.to_owned(),
                required_scopes: required_scopes.iter().map(|s| s.to_string()).collect(),
                context: None,
                cost: 0,
            })
            .await
            .expect("Validate answers OK even for bad keys")
            .into_inner()
    }

    pub async fn revoke(&self, id: &str) -> pb::ApiKey {
        self.keys
            .clone()
            .revoke_key(self.authed(pb::RevokeKeyRequest {
                id: id.to_owned(),
                owner_id: String::new(),
            }))
            .await
            .expect("RevokeKey succeeds")
            .into_inner()
            .api_key
            .expect("RevokeKey returns the record")
    }

    /// A direct connection to the test's database, for checks behind the API.
    pub async fn database(&self) -> DatabaseConnection {
        match &self.database_url {
            Some(url) => Database::connect(url)
                .await
                .expect("connect to test database"),
            None => {
                let path = self.data_dir.path().join("apikeyd.db");
                Database::connect(format!("sqlite://{}", path.display()))
                    .await
                    .expect("open test database")
            }
        }
    }

    /// Stops the server the way SIGTERM would and waits for it to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server
            .take()
            .expect("server task")
            .await
            .expect("server task joins")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn with_bearer<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ASCII metadata"),
    );
    request
}

pub fn create_request(owner_id: &str, scopes: &[&str]) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        owner_id: owner_id.to_owned(),
        name: "Production integration".to_owned(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn code_of(response: &pb::ValidateResponse) -> ValidationCode {
    ValidationCode::try_from(response.code).expect("a known validation code")
}

/// Asserts a gRPC error's code and that its message mentions `needle`.
pub fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, needle: &str) {
    match result {
        Ok(value) => panic!("expected {code:?} mentioning {needle:?}, got OK: {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "message: {}", status.message());
            assert!(
                status.message().contains(needle),
                "expected {needle:?} in {:?}",
                status.message()
            );
        }
    }
}

/// Runs each behaviour test once per relational backend, as
/// `<module>::sqlite::<name>` and `<module>::postgres::<name>`.
#[macro_export]
macro_rules! on_every_backend {
    ($(async fn $name:ident($app:ident) $body:block)*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $app = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await;
                    $body
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $app = $crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await;
                    $body
                }
            )*
        }
    };
}

/// The real `apikeyd serve` binary as a child process, for tests that need
/// its stderr or several replicas.
pub struct ServerProcess {
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    child: std::process::Child,
    /// Every log line so far (JSON), collected by a reader thread.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The reader thread: it ends at the end of stderr, so joining it after
    /// the process exits means every line the process wrote is in `log`.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts `apikeyd serve` with `env` on top of a port-0, JSON-logging base,
    /// and waits for its "serving" line.
    pub fn start(data_dir: &std::path::Path, env: &[(&str, &str)]) -> ServerProcess {
        use std::io::BufRead;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_apikeyd"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("APIKEYD_GRPC_ADDR", "127.0.0.1:0")
            .env("APIKEYD_HTTP_ADDR", "127.0.0.1:0")
            .env("APIKEYD_DATA_DIR", data_dir)
            .env("APIKEYD_LOG_FORMAT", "json")
            .env("APIKEYD_API_KEY_ARGON2_MEMORY_KIB", "1024")
            .env("APIKEYD_API_KEY_ARGON2_ITERATIONS", "1")
            .env("APIKEYD_ROOT_KEY_ARGON2_MEMORY_KIB", "1024")
            .env("APIKEYD_ROOT_KEY_ARGON2_ITERATIONS", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start apikeyd serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    if event["message"] == "apikeyd is serving" {
                        let _ = addr_tx.send((
                            event["grpc"].as_str().unwrap_or_default().to_owned(),
                            event["http"].as_str().unwrap_or_default().to_owned(),
                        ));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (addr, http_addr) = addr_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("apikeyd did not start; log: {:?}", log.lock().unwrap()));
        ServerProcess {
            addr: addr.parse().expect("a socket address in the serving line"),
            http_addr: http_addr
                .parse()
                .expect("a socket address in the serving line"),
            child,
            log,
            reader: Some(reader),
        }
    }

    /// The server's resident memory (VmRSS), in bytes.
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server process is running");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/<pid>/status: {status}"));
        kib * 1024
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_terminate(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit and for its log to be read to the end,
    /// so that [`ServerProcess::log`] then holds every line it wrote.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().expect("wait for apikeyd");
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the log reader thread");
        }
        status
    }

    /// The lines read so far; every line once [`ServerProcess::wait`] returned.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM, waits for the exit, and returns the status and every log line.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        self.signal_terminate();
        let status = self.wait();
        (status, self.log())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET /metrics with a bare HTTP/1.1 request.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: apikeyd\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of `series` (a metric name with its labels, exactly as
/// exported) in a Prometheus scrape. Panics when the scrape has no such
/// series, naming it and the series of the same metric it does have, so a
/// renamed metric or label fails the test instead of reading as 0.
pub fn sample(text: &str, series: &str) -> f64 {
    find_sample(text, series).unwrap_or_else(|| {
        let metric = series.split('{').next().unwrap_or(series);
        let similar: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#') && line.contains(metric))
            .collect();
        panic!("no series {series} in the metrics; series of {metric}: {similar:#?}")
    })
}

/// [`sample`] for a series that may not exist yet: counters and histograms
/// appear on their first use, so a reading taken before anything counted
/// (a fresh server, a code path not yet taken) is legitimately absent, and
/// 0. Use it only for such "before" readings; what a test expects to have
/// moved is read with [`sample`].
pub fn sample_or_zero(text: &str, series: &str) -> f64 {
    find_sample(text, series).unwrap_or(0.0)
}

/// The value on the line that is exactly `series`, a space, and a number.
fn find_sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// `key`'s public part (prefix and id) with another secret and a correct
/// checksum: well formed, so it reaches the lookup, but wrong.
pub fn wrong_secret_for(key: &str) -> String {
    use apikeyd::domain::{GeneratedKey, KeyKind};
    let public_part = &key[..key.rfind('_').expect("a key has a separator") + 1];
    let other = GeneratedKey::generate(KeyKind::Live).into_full_key();
    let other_secret = &other[other.rfind('_').unwrap() + 1..other.len() - 6];
    let signed = format!("{public_part}{other_secret}");
    let mut value = u64::from(crc32fast::hash(signed.as_bytes()));
    let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut digits = [b'0'; 6];
    for digit in digits.iter_mut().rev() {
        *digit = alphabet[(value % 62) as usize];
        value /= 62;
    }
    format!("{signed}{}", String::from_utf8(digits.to_vec()).unwrap())
}

/// Held by every test that asserts a real-time bound (a p99, a switch-over
/// time, a memory peak): two of them never share the two cores, so a bound
/// is judged against the server, not against the other measuring test.
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until no other measuring test runs; hold the guard to the end.
pub async fn measuring_alone() -> tokio::sync::MutexGuard<'static, ()> {
    MEASURING.lock().await
}
