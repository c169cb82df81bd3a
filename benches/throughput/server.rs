//! The system under test: a real `apikeyd serve` process (the release
//! build cargo made for this benchmark) on loopback port 0, over embedded
//! SQLite or a fresh PostgreSQL database; its counters and memory; and the
//! calls that set up and check its keys.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::{self, validation_service_client::ValidationServiceClient};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use tempfile::TempDir;
use tonic::Request;
use tonic::transport::Channel;

use crate::answers::MetricsPage;

/// A fresh database on the benchmark's PostgreSQL server, dropped on `drop_all`.
pub struct FreshDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

impl FreshDatabase {
    pub async fn create(admin_url: &str, purpose: &str) -> anyhow::Result<FreshDatabase> {
        let admin = Database::connect(admin_url).await.with_context(|| {
            format!("PostgreSQL at {admin_url} is needed (set APIKEYD_TEST_POSTGRES_URL)")
        })?;
        let name = format!("apikeyd_bench_{purpose}_{}", random_hex(6));
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        admin.close().await.ok();
        let mut url =
            url::Url::parse(admin_url).context("APIKEYD_TEST_POSTGRES_URL is not a URL")?;
        url.set_path(&name);
        Ok(FreshDatabase {
            url: url.to_string(),
            name,
            admin_url: admin_url.to_owned(),
        })
    }

    pub async fn connect(&self) -> anyhow::Result<DatabaseConnection> {
        Ok(Database::connect(&self.url).await?)
    }

    /// Drops the database, so that runs (a million rows each at scale) do
    /// not pile up. A failure (PostgreSQL refusing the checkpoint a drop
    /// takes, on a full disk) is said, with the name to drop by hand, and
    /// costs the run none of its figures.
    pub async fn drop_now(self) {
        let dropped = async {
            let admin = Database::connect(&self.admin_url).await?;
            admin
                .execute_unprepared(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await?;
            admin.close().await.ok();
            Ok::<_, sea_orm::DbErr>(())
        }
        .await;
        if let Err(e) = dropped {
            eprintln!(
                "could not drop the benchmark's database {} ({e}): drop it by hand",
                self.name
            );
        }
    }
}

pub fn random_hex(bytes: usize) -> String {
    use rand_core::{OsRng, RngCore};
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    hex(&buf)
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// `apikeyd serve` as a child process; killed on drop.
pub struct ApikeydProcess {
    pub addr: SocketAddr,
    /// The HTTP listener: Prometheus metrics at `/metrics`.
    pub http_addr: SocketAddr,
    /// The bootstrap root key the first start on a database wrote into the
    /// data directory; `None` for a replica started on a database in use.
    root_key: Option<String>,
    child: Child,
    /// Holds the data directory (and the root key file) for the process's life.
    _data_dir: TempDir,
}

impl ApikeydProcess {
    /// Starts the server on `database_url` (embedded SQLite in its data
    /// directory when `None`) with `env` on top of a port-0, JSON-logging
    /// base, and waits for its "apikeyd is serving" line.
    pub fn start(
        database_url: Option<&str>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ApikeydProcess> {
        let data_dir = tempfile::tempdir()?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_apikeyd"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("APIKEYD_GRPC_ADDR", "127.0.0.1:0")
            .env("APIKEYD_HTTP_ADDR", "127.0.0.1:0")
            .env("APIKEYD_DATA_DIR", data_dir.path())
            .env("APIKEYD_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(url) = database_url {
            command.env("APIKEYD_DATABASE_URL", url);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().context("cannot start apikeyd serve")?;
        let stderr = child.stderr.take().expect("piped stderr");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        // Reads the log to its end: the serving line carries the address, and
        // an unread pipe would block the server once it filled up.
        std::thread::spawn(move || {
            let mut tail = Vec::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    if event["message"] == "apikeyd is serving" {
                        let field =
                            |name: &str| event[name].as_str().unwrap_or_default().to_owned();
                        let _ = addr_tx.send(Ok((field("grpc"), field("http"))));
                        continue;
                    }
                    if event["level"] == "WARN" || event["level"] == "ERROR" {
                        // The bootstrap notice is expected; anything else is news.
                        if !line.contains("bootstrap-root-key") {
                            eprintln!("apikeyd: {line}");
                        }
                    }
                }
                tail.push(line);
                if tail.len() > 50 {
                    tail.remove(0);
                }
            }
            let _ = addr_tx.send(Err(tail));
        });
        let (addr, http_addr) = match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(log)) => bail!(
                "apikeyd exited before serving; its log:\n{}",
                log.join("\n")
            ),
            Err(_) => bail!("apikeyd did not report serving within 60 s"),
        };
        let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key"))
            .ok()
            .map(|key| key.trim().to_owned());
        Ok(ApikeydProcess {
            addr: addr
                .parse()
                .context("a socket address in the serving line")?,
            http_addr: http_addr
                .parse()
                .context("an HTTP address in the serving line")?,
            root_key,
            child,
            _data_dir: data_dir,
        })
    }

    /// The root key to manage keys with.
    pub fn root_key(&self) -> anyhow::Result<&str> {
        self.root_key
            .as_deref()
            .context("only the first start on a database writes a bootstrap root key")
    }

    /// The server's `/metrics` page.
    pub fn metrics(&self) -> anyhow::Result<MetricsPage> {
        use std::io::{Read, Write};
        let mut connection = std::net::TcpStream::connect(self.http_addr)?;
        write!(
            connection,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.http_addr
        )?;
        let mut page = String::new();
        connection.read_to_string(&mut page)?;
        anyhow::ensure!(
            page.starts_with("HTTP/1.1 200"),
            "GET /metrics did not answer 200: {}",
            page.lines().next().unwrap_or_default()
        );
        Ok(MetricsPage(page))
    }

    /// The server's resident memory (VmRSS) in MB.
    pub fn resident_mb(&self) -> Option<f64> {
        proc_status_kb(self.pid(), "VmRSS").map(|kb| kb as f64 / 1024.0)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the drain, as an orchestrator would.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ApikeydProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Wraps a message in a request carrying `root_key`.
pub fn authed<T>(message: T, root_key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {root_key}")
            .parse()
            .expect("root keys are ASCII"),
    );
    request
}

/// The limits benchmark keys carry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KeyLimits {
    /// One limit no run can reach (1,000,000,000 per hour, sliding
    /// window), counted on every Validate: the admitted path.
    Unreachable,
    /// One request per hour: after its first Validate, every other is
    /// denied (the over-limit path).
    OnePerHour,
}

impl KeyLimits {
    fn rate_limit(self) -> pb::RateLimit {
        pb::RateLimit {
            limit: match self {
                KeyLimits::Unreachable => 1_000_000_000,
                KeyLimits::OnePerHour => 1,
            },
            window: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            algorithm: pb::RateLimitAlgorithm::SlidingWindow as i32,
        }
    }
}

/// Creates `count` keys through `KeyService.CreateKey` (a few at a time: each
/// one hashes a secret with argon2) and returns the full keys. Each key gets
/// its own owner, so that the per-owner key limit never interferes.
pub async fn create_keys(
    channel: &Channel,
    root_key: &str,
    owner_prefix: &str,
    count: usize,
    limits: KeyLimits,
) -> anyhow::Result<Vec<String>> {
    const AT_ONCE: usize = 8;
    let root_key: Arc<str> = Arc::from(root_key);
    let mut keys = Vec::with_capacity(count);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..count {
        if pending.len() == AT_ONCE {
            keys.push(pending.join_next().await.expect("a pending create")??);
        }
        let mut client = KeyServiceClient::new(channel.clone());
        let request = authed(
            pb::CreateKeyRequest {
                owner_id: format!("{owner_prefix}-{i}"),
                name: "benchmark".to_owned(),
                scopes: vec!["posts:read".to_owned(), "posts:write".to_owned()],
                rate_limits: vec![limits.rate_limit()],
                ..Default::default()
            },
            &root_key,
        );
        pending.spawn(async move {
            let created = client.create_key(request).await?.into_inner();
            Ok::<_, anyhow::Error>(created.key)
        });
    }
    while let Some(created) = pending.join_next().await {
        keys.push(created??);
    }
    Ok(keys)
}

/// Creates one key with `limits`.
pub async fn create_key(
    channel: &Channel,
    root_key: &str,
    owner: &str,
    limits: KeyLimits,
) -> anyhow::Result<String> {
    Ok(create_keys(channel, root_key, owner, 1, limits)
        .await?
        .pop()
        .expect("one key was created"))
}

/// What every benchmark `Validate` asks: a scope the keys hold, and the
/// request context a gateway would send (the seed design records it).
pub fn validate_request(key: String) -> pb::ValidateRequest {
    pb::ValidateRequest {
        key,
        required_scopes: vec!["posts:read".to_owned()],
        context: Some(pb::RequestContext {
            endpoint: "/v1/posts".to_owned(),
            method: "GET".to_owned(),
            ip: "203.0.113.7".to_owned(),
            user_agent: "apikeyd-bench/1".to_owned(),
        }),
        cost: 0,
    }
}

/// Validates `key` once and returns the answer's code.
pub async fn validate_once(channel: &Channel, key: &str) -> anyhow::Result<pb::ValidationCode> {
    let mut client = ValidationServiceClient::new(channel.clone());
    let answer = client
        .validate(validate_request(key.to_owned()))
        .await?
        .into_inner();
    Ok(answer.code())
}

/// Fails unless `key`'s Validate answers `expected`: a scenario is checked
/// once with a real client before h2load repeats it.
pub async fn expect_code(
    channel: &Channel,
    key: &str,
    expected: pb::ValidationCode,
) -> anyhow::Result<()> {
    let got = validate_once(channel, key).await?;
    anyhow::ensure!(
        got == expected,
        "Validate answered {got:?} where the scenario expects {expected:?}"
    );
    Ok(())
}

/// One HTTP/2 connection to `addr`.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .connect()
        .await?)
}
