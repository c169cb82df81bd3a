//! PostgreSQL and Redis over TLS, against servers these tests start with
//! certificates they make: apikeyd works over each when it trusts the
//! server's CA, and a plaintext or untrusted connection is refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apikeyd::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use apikeyd::grpc::pb::{RateLimitAlgorithm, ValidationCode};
use apikeyd::ratelimit::FailurePolicy;
use apikeyd::startup::Application;
use tempfile::TempDir;

use crate::helpers::{Backend, code_of, connect, spawn_app_with, test_settings};
use crate::limiter_harness::{check_request, free_port};
use crate::tls_harness::{Authority, write_file};

/// A PostgreSQL server of this test's own, answering only over TLS on
/// 127.0.0.1 (pg_hba refuses plaintext), stopped when dropped.
struct TlsPostgres {
    dir: TempDir,
    port: u16,
}

/// `program` of Debian's newest PostgreSQL (not on PATH there), run as the
/// postgres user; else the one on PATH.
fn as_postgres(program: &str) -> Command {
    let installed = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin").join(program))
        .filter(|path| path.exists())
        .max_by_key(|path| {
            let version = path.components().nth(4).map(|c| c.as_os_str().to_owned());
            version
                .and_then(|v| v.to_str().and_then(|v| v.parse::<u32>().ok()))
                .unwrap_or(0)
        });
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]);
    match installed {
        Some(path) => command.arg(path),
        None => command.arg(program),
    };
    command
}

fn succeeds(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TlsPostgres {
    fn start(ca: &Authority) -> TlsPostgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        succeeds(
            Command::new("chown").arg("postgres:").arg(dir.path()),
            "chown the PostgreSQL directory",
        );
        succeeds(
            as_postgres("initdb")
                .args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"])
                .arg(&data),
            "initdb",
        );
        let (cert, key) = ca.server().write(&data, "server");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostnossl all all 127.0.0.1/32 reject\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        succeeds(
            Command::new("chown").arg("postgres:").arg(&cert).arg(&key),
            "chown the certificate",
        );
        succeeds(Command::new("chmod").arg("600").arg(&key), "chmod the key");
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c fsync=off",
            dir.path().display()
        );
        succeeds(
            as_postgres("pg_ctl")
                .args(["-w", "-t", "60", "-o", &options, "-l"])
                .arg(dir.path().join("log"))
                .arg("-D")
                .arg(&data)
                .arg("start"),
            "pg_ctl start",
        );
        TlsPostgres { dir, port }
    }

    fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_with_verify_full_works_and_plaintext_or_another_ca_is_refused() {
    let (ca, other) = (Authority::new("postgres CA"), Authority::new("other CA"));
    let postgres = TlsPostgres::start(&ca);
    let pki = tempfile::tempdir().unwrap();
    let ca_file = write_file(pki.path(), "ca.crt", &ca.pem());
    let other_file = write_file(pki.path(), "other.crt", &other.pem());
    let verified = |root: &Path| {
        postgres.url(&format!(
            "sslmode=verify-full&sslrootcert={}",
            root.display()
        ))
    };

    let app = spawn_app_with(Backend::Sqlite, |settings| {
        settings.database.url = Some(verified(&ca_file).as_str().into());
    })
    .await;
    let (key, _) = app.create_key("acme", &["posts:read"]).await;
    assert_eq!(
        code_of(&app.validate(&key, &["posts:read"]).await),
        ValidationCode::Valid
    );
    drop(app);

    for (url, why) in [
        (postgres.url("sslmode=disable"), "plaintext"),
        (
            verified(&other_file),
            "a server certificate another CA signed",
        ),
    ] {
        let data_dir = tempfile::tempdir().unwrap();
        let settings = test_settings(data_dir.path(), Some(url));
        let refused = Application::build(settings).await.err();
        let refused = refused.unwrap_or_else(|| panic!("{why} is refused"));
        assert!(
            format!("{refused:#}").contains("cannot connect to the database"),
            "{why}: {refused:#}"
        );
    }
}

/// A redis-server of this test's own that speaks only TLS.
struct TlsRedis {
    port: u16,
    child: Child,
    _dir: TempDir,
}

impl TlsRedis {
    fn start(ca: &Authority) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.server().write(dir.path(), "redis");
        let ca_file = write_file(dir.path(), "ca.crt", &ca.pem());
        let port = free_port();
        let bin = std::env::var_os("REDIS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("redis-server"));
        let child = Command::new(bin)
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca_file)
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (REDIS_SERVER_BIN) with TLS");
        let redis = TlsRedis {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if redis.keys(&ca.pem()).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server with TLS on {port} did not answer within 10 s");
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The keys apikeyd wrote, read over TLS.
    fn keys(&self, ca: &str) -> redis::RedisResult<Vec<String>> {
        let client = redis::Client::build_with_tls(
            self.url("rediss"),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.as_bytes().to_vec()),
            },
        )?;
        let mut connection = client.get_connection_with_timeout(Duration::from_millis(500))?;
        redis::cmd("KEYS").arg("apikeyd*").query(&mut connection)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_the_ca_decides_limits_and_plaintext_or_another_ca_gets_nothing() {
    let (ca, other) = (Authority::new("redis CA"), Authority::new("other CA"));
    let redis = TlsRedis::start(&ca);
    let pki = tempfile::tempdir().unwrap();
    let ca_file = write_file(pki.path(), "ca.crt", &ca.pem());
    let other_file = write_file(pki.path(), "other.crt", &other.pem());
    let check = || {
        check_request(
            "login",
            "203.0.113.9",
            1,
            60_000,
            RateLimitAlgorithm::FixedWindow,
            1,
        )
    };

    let app = spawn_app_with(Backend::Sqlite, |settings| {
        settings.redis.url = Some(redis.url("rediss").as_str().into());
        settings.redis.ca_cert = Some(ca_file.clone());
        settings.redis.failure_policy = FailurePolicy::Closed;
    })
    .await;
    let mut limits = RateLimitServiceClient::new(connect(app.addr).await);
    let first = limits.check_rate_limit(check()).await.unwrap().into_inner();
    let second = limits.check_rate_limit(check()).await.unwrap().into_inner();
    assert!(first.allowed && !second.allowed, "{first:?} {second:?}");
    let written = redis.keys(&ca.pem()).unwrap();
    assert!(!written.is_empty(), "the counters live in this Redis");
    drop(app);

    // Fail-closed, so a limiter that cannot reach Redis refuses.
    for (url, root, why) in [
        (redis.url("redis"), None, "plaintext"),
        (redis.url("rediss"), Some(other_file), "another CA"),
    ] {
        let app = spawn_app_with(Backend::Sqlite, |settings| {
            settings.redis.url = Some(url.as_str().into());
            settings.redis.ca_cert = root;
            settings.redis.failure_policy = FailurePolicy::Closed;
        })
        .await;
        let mut limits = RateLimitServiceClient::new(connect(app.addr).await);
        let answer = limits.check_rate_limit(check()).await.unwrap().into_inner();
        assert!(!answer.allowed, "{why}: no decision reaches Redis");
    }
}
