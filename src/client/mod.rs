//! The operator's commands (`keys`, `ratelimit check`, `validate`): a gRPC
//! client of a running server's API, never of its database, so they obey the
//! same rules and permissions as any other client.
//!
//! Exit codes a script can test: 0 the call succeeded (and, for `validate`
//! and `ratelimit check`, the answer is yes); 1 the server refused it, said
//! no, or could not be reached; 2 the command line is unusable.

mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::cli::client_args::{
    Algorithm, CheckArgs, ClientArgs, CreateArgs, Environment, Granularity, KeysArgs, KeysCommand,
    Output, RatelimitArgs, RatelimitCommand, UpdateArgs, ValidateArgs,
};
use crate::config::Settings;
use crate::grpc::pb;
use crate::grpc::pb::key_service_client::KeyServiceClient;
use crate::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use crate::grpc::pb::validation_service_client::ValidationServiceClient;

/// `print!` and `println!` for answers, where a reader that stopped reading
/// (`| head`) is no reason to panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}
macro_rules! sayln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest page ListKeys serves; `keys list` follows every page.
const PAGE_SIZE: i32 = 100;

/// Why a command did not succeed, and so its exit code.
#[derive(Debug)]
enum Failure {
    /// 2: the command line, or where the root key should come from, is unusable.
    Usage(String),
    /// 1: the server refused the call.
    Refused(Status),
    /// 1: no server answered at the address.
    Unreachable { addr: String, cause: String },
    /// 1: the server answered no (invalid key, rate limited); the answer is printed.
    No,
}

impl Failure {
    fn exit(self) -> ExitCode {
        match self {
            Failure::Usage(message) => {
                eprintln!("apikeyd: {message}");
                ExitCode::from(2)
            }
            Failure::Refused(status) => {
                let (name, _, _) = crate::http::error::names(status.code());
                let message = status.message().replace(['\n', '\r'], " ");
                eprintln!("apikeyd: {name}: {message}");
                ExitCode::from(1)
            }
            Failure::Unreachable { addr, cause } => {
                eprintln!(
                    "apikeyd: UNAVAILABLE: no apikeyd answers at {addr} ({cause}); start `apikeyd serve` or set --addr / APIKEYD_ADDR"
                );
                ExitCode::from(1)
            }
            Failure::No => ExitCode::from(1),
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Refused(status)
    }
}

fn finish(outcome: Result<(), Failure>) -> ExitCode {
    outcome.map_or_else(Failure::exit, |()| ExitCode::SUCCESS)
}

/// A root key as read from its source. Never printed: Debug hides it.
struct RootKey(String);

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(***)")
    }
}

/// `--root-key-file`, else `APIKEYD_ROOT_KEY`, else the bootstrap file the
/// server wrote into the data directory (so a local walkthrough needs no
/// copying). Never a flag value: it would show in the process list.
fn root_key(args: &ClientArgs, data_dir: &Path) -> Result<RootKey, Failure> {
    let bootstrap = data_dir.join("bootstrap-root-key");
    let from_file = |path: &PathBuf| {
        std::fs::read_to_string(path)
            .map(|contents| RootKey(contents.trim().to_owned()))
            .map_err(|e| {
                Failure::Usage(format!(
                    "cannot read the root key from {}: {e}",
                    path.display()
                ))
            })
    };
    let key = if let Some(path) = &args.root_key_file {
        from_file(path)?
    } else if let Some(key) = std::env::var("APIKEYD_ROOT_KEY")
        .ok()
        .filter(|key| !key.trim().is_empty())
    {
        RootKey(key.trim().to_owned())
    } else if bootstrap.exists() {
        from_file(&bootstrap)?
    } else {
        return Err(Failure::Usage(format!(
            "this command needs a root key: set APIKEYD_ROOT_KEY or --root-key-file (there is no {})",
            bootstrap.display()
        )));
    };
    if key.0.is_empty() {
        return Err(Failure::Usage("the root key file is empty".to_owned()));
    }
    Ok(key)
}

/// Where the server is, and how to speak TLS to it.
struct Server {
    uri: String,
    tls: Option<ClientTlsConfig>,
}

/// `--addr`, else the local server: this machine's `--grpc-addr`, over TLS
/// when this machine's settings give the server a certificate.
fn server(args: &ClientArgs, settings: &Settings) -> Result<Server, Failure> {
    let local_tls = settings.tls.cert.is_some();
    let uri = match &args.addr {
        Some(addr) if addr.contains("://") => addr.clone(),
        Some(addr) => format!("http://{addr}"),
        None => {
            let mut local = settings.server.grpc_addr;
            if local.ip().is_unspecified() {
                local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let scheme = if local_tls { "https" } else { "http" };
            format!("{scheme}://{local}")
        }
    };
    let tls = if uri.starts_with("https://") {
        let mut tls = match &args.ca_cert {
            Some(path) => ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read_pem("--ca-cert", path)?)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            tls = tls.identity(Identity::from_pem(
                read_pem("--client-cert", cert)?,
                read_pem("--client-key", key)?,
            ));
        }
        // The local server is reached by address; its certificate names localhost.
        if args.addr.is_none() {
            tls = tls.domain_name("localhost");
        }
        Some(tls)
    } else if uri.starts_with("http://") {
        None
    } else {
        return Err(Failure::Usage(format!(
            "--addr {uri}: give http://host:port, or https://host:port for a server with TLS"
        )));
    };
    Ok(Server { uri, tls })
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::Usage(format!("{flag}: cannot read {}: {e}", path.display())))
}

async fn connect(server: &Server) -> Result<Channel, Failure> {
    let uri = &server.uri;
    let mut endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|e| Failure::Usage(format!("--addr {uri} is not an address: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    if let Some(tls) = &server.tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| Failure::Usage(format!("TLS to {uri}: {}", error_chain(&e))))?;
    }
    endpoint.connect().await.map_err(|e| Failure::Unreachable {
        addr: uri.to_owned(),
        cause: error_chain(&e),
    })
}

/// An error and its causes on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        line.push_str(": ");
        line.push_str(&inner.to_string());
        cause = inner.source();
    }
    line
}

/// `message` with the root key in its `authorization` metadata.
fn authed<T>(message: T, root_key: &RootKey) -> Result<Request<T>, Failure> {
    let mut request = Request::new(message);
    let value = format!("Bearer {}", root_key.0).parse().map_err(|_| {
        Failure::Usage("the root key holds characters a root key cannot have".to_owned())
    })?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// A data-plane call, carrying the root key when one is configured: the
/// server asks for it under `--data-plane-auth root-key` (a root key with
/// `validate` or `ratelimit`), and ignores it otherwise.
fn data_plane<T>(message: T, args: &ClientArgs, data_dir: &Path) -> Result<Request<T>, Failure> {
    match root_key(args, data_dir) {
        Ok(key) => authed(message, &key),
        Err(_) => Ok(Request::new(message)),
    }
}

pub async fn keys(args: KeysArgs, settings: &Settings) -> ExitCode {
    finish(run_keys(args, settings).await)
}

async fn run_keys(args: KeysArgs, settings: &Settings) -> Result<(), Failure> {
    let server = server(&args.client, settings)?;
    let root_key = root_key(&args.client, &settings.database.data_dir)?;
    let mut keys = KeyServiceClient::new(connect(&server).await?);
    let output = args.client.output;
    match args.command {
        KeysCommand::Create(create) => {
            let response = keys
                .create_key(authed(create_request(create), &root_key)?)
                .await?
                .into_inner();
            let key = response.api_key.clone().unwrap_or_default();
            match output {
                Output::Json => sayln!(
                    "{}",
                    output::json("apikeyd.v1.CreateKeyResponse", &response)
                ),
                Output::Table => {
                    eprintln!(
                        "Created API key {} ({:?}) for owner {}.",
                        key.id, key.name, key.owner_id
                    );
                    sayln!("{}", response.key);
                }
            }
            eprintln!("This key will not be shown again: store it now.");
        }
        KeysCommand::List {
            owner,
            include_revoked,
        } => {
            let mut listed = pb::ListKeysResponse::default();
            loop {
                let page = keys
                    .list_keys(authed(
                        pb::ListKeysRequest {
                            owner_id: owner.clone().unwrap_or_default(),
                            page_size: PAGE_SIZE,
                            page_token: listed.next_page_token.clone(),
                            include_revoked,
                        },
                        &root_key,
                    )?)
                    .await?
                    .into_inner();
                listed.api_keys.extend(page.api_keys);
                listed.next_page_token = page.next_page_token;
                if listed.next_page_token.is_empty() {
                    break;
                }
            }
            match output {
                Output::Json => {
                    sayln!("{}", output::json("apikeyd.v1.ListKeysResponse", &listed))
                }
                Output::Table if listed.api_keys.is_empty() => eprintln!("No keys."),
                Output::Table => say!("{}", output::key_table(&listed.api_keys, Utc::now())),
            }
        }
        KeysCommand::Get { id } => {
            let response = keys
                .get_key(authed(pb::GetKeyRequest { id }, &root_key)?)
                .await?
                .into_inner();
            print_key(
                output,
                "apikeyd.v1.GetKeyResponse",
                &response,
                response.api_key.as_ref(),
            );
        }
        KeysCommand::Update(update) => {
            let request = update_request(update)?;
            let response = keys
                .update_key(authed(request, &root_key)?)
                .await?
                .into_inner();
            print_key(
                output,
                "apikeyd.v1.UpdateKeyResponse",
                &response,
                response.api_key.as_ref(),
            );
        }
        KeysCommand::Revoke { id } => {
            let response = keys
                .revoke_key(authed(
                    pb::RevokeKeyRequest {
                        id,
                        owner_id: String::new(),
                    },
                    &root_key,
                )?)
                .await?
                .into_inner();
            print_key(
                output,
                "apikeyd.v1.RevokeKeyResponse",
                &response,
                response.api_key.as_ref(),
            );
        }
        KeysCommand::Rotate { id, grace } => {
            let grace_period = prost_types::Duration::try_from(grace)
                .map_err(|_| Failure::Usage("--grace is too long".to_owned()))?;
            let response = keys
                .rotate_key(authed(
                    pb::RotateKeyRequest {
                        id,
                        grace_period: Some(grace_period),
                    },
                    &root_key,
                )?)
                .await?
                .into_inner();
            match output {
                Output::Json => sayln!(
                    "{}",
                    output::json("apikeyd.v1.RotateKeyResponse", &response)
                ),
                Output::Table => {
                    let new = response.api_key.clone().unwrap_or_default();
                    let old = response.previous_api_key.clone().unwrap_or_default();
                    eprintln!(
                        "Rotated API key {} into {}; the old key validates until {}.",
                        old.id,
                        new.id,
                        output::time(old.revoked_at.as_ref(), "now")
                    );
                    sayln!("{}", response.key);
                }
            }
            eprintln!("This key will not be shown again: store it now.");
        }
        KeysCommand::Usage { id, granularity } => {
            let granularity = match granularity {
                Granularity::Hour => pb::UsageGranularity::Hour,
                Granularity::Day => pb::UsageGranularity::Day,
            };
            let response = keys
                .get_key_usage(authed(
                    pb::GetKeyUsageRequest {
                        id,
                        granularity: granularity as i32,
                        ..Default::default()
                    },
                    &root_key,
                )?)
                .await?
                .into_inner();
            match output {
                Output::Json => sayln!(
                    "{}",
                    output::json("apikeyd.v1.GetKeyUsageResponse", &response)
                ),
                Output::Table => {
                    let (buckets, recent) = output::usage_tables(&response);
                    say!("{buckets}");
                    if recent.is_empty() {
                        sayln!("\nNo recent requests.");
                    } else {
                        say!("\n{recent}");
                    }
                }
            }
        }
    }
    Ok(())
}

fn print_key(
    output: Output,
    full_name: &str,
    response: &impl prost::Message,
    key: Option<&pb::ApiKey>,
) {
    match output {
        Output::Json => sayln!("{}", output::json(full_name, response)),
        Output::Table => say!(
            "{}",
            output::key_details(key.unwrap_or(&pb::ApiKey::default()), Utc::now())
        ),
    }
}

fn create_request(create: CreateArgs) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        owner_id: create.owner,
        name: create.name,
        scopes: create.scopes,
        expires_in_days: create.expires_in,
        environment: match create.env {
            Environment::Live => pb::Environment::Live,
            Environment::Test => pb::Environment::Test,
        } as i32,
        metadata: create.metadata.into_iter().collect(),
        tier: create.tier.unwrap_or_default(),
        rate_limits: Vec::new(),
        quota: None,
    }
}

fn update_request(update: UpdateArgs) -> Result<pb::UpdateKeyRequest, Failure> {
    use pb::update_key_request::{Expiry, Limits};
    let request = pb::UpdateKeyRequest {
        id: update.id,
        name: update.name,
        enabled: match (update.enable, update.disable) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        scopes: (!update.scopes.is_empty()).then_some(pb::ScopeList {
            scopes: update.scopes,
        }),
        metadata: (!update.metadata.is_empty()).then_some(pb::MetadataMap {
            entries: update.metadata.into_iter().collect(),
        }),
        expiry: match (update.expires_in, update.never_expires) {
            (Some(days), _) => Some(Expiry::ExpiresInDays(days)),
            (None, true) => Some(Expiry::NeverExpires(true)),
            (None, false) => None,
        },
        limits: update.tier.map(Limits::Tier),
        quota_change: None,
    };
    let unchanged = pb::UpdateKeyRequest {
        id: request.id.clone(),
        ..Default::default()
    };
    if request == unchanged {
        return Err(Failure::Usage(
            "keys update: nothing to change; give --name, --enable, --disable, --scope, --metadata, --expires-in, --never-expires or --tier".to_owned(),
        ));
    }
    Ok(request)
}

pub async fn ratelimit(args: RatelimitArgs, settings: &Settings) -> ExitCode {
    finish(run_ratelimit(args, settings).await)
}

async fn run_ratelimit(args: RatelimitArgs, settings: &Settings) -> Result<(), Failure> {
    let RatelimitCommand::Check(check) = args.command;
    let request = check_request(check)?;
    let server = server(&args.client, settings)?;
    let mut limiter = RateLimitServiceClient::new(connect(&server).await?);
    let response = limiter
        .check_rate_limit(data_plane(
            request,
            &args.client,
            &settings.database.data_dir,
        )?)
        .await?
        .into_inner();
    match args.client.output {
        Output::Json => sayln!(
            "{}",
            output::json("apikeyd.v1.CheckRateLimitResponse", &response)
        ),
        Output::Table => {
            let reset = output::time(response.reset_at.as_ref(), "-");
            if response.allowed {
                sayln!(
                    "allowed: {} of {} left, all back at {reset}",
                    response.remaining,
                    response.limit
                );
            } else {
                let retry_after = response.retry_after.map_or(0, |d| d.seconds);
                sayln!(
                    "denied: {} of {} left; retry after {retry_after}s",
                    response.remaining,
                    response.limit
                );
            }
        }
    }
    if response.allowed {
        Ok(())
    } else {
        Err(Failure::No)
    }
}

fn check_request(check: CheckArgs) -> Result<pb::CheckRateLimitRequest, Failure> {
    Ok(pb::CheckRateLimitRequest {
        namespace: check.namespace,
        identifier: check.identifier,
        limit: check.limit,
        window: Some(
            prost_types::Duration::try_from(check.window)
                .map_err(|_| Failure::Usage("--window is too long".to_owned()))?,
        ),
        cost: check.cost.unwrap_or(0),
        algorithm: match check.algorithm {
            Algorithm::SlidingWindow => pb::RateLimitAlgorithm::SlidingWindow,
            Algorithm::FixedWindow => pb::RateLimitAlgorithm::FixedWindow,
            Algorithm::TokenBucket => pb::RateLimitAlgorithm::TokenBucket,
        } as i32,
    })
}

pub async fn validate(args: ValidateArgs, settings: &Settings) -> ExitCode {
    finish(run_validate(args, settings).await)
}

async fn run_validate(args: ValidateArgs, settings: &Settings) -> Result<(), Failure> {
    let key = if args.key == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Failure::Usage(format!("cannot read the key from stdin: {e}")))?;
        line.trim().to_owned()
    } else {
        args.key
    };
    let server = server(&args.client, settings)?;
    let mut validation = ValidationServiceClient::new(connect(&server).await?);
    let request = pb::ValidateRequest {
        key,
        required_scopes: args.scopes,
        context: None,
        cost: args.cost.unwrap_or(0),
    };
    let response = validation
        .validate(data_plane(
            request,
            &args.client,
            &settings.database.data_dir,
        )?)
        .await?
        .into_inner();
    match args.client.output {
        Output::Json => sayln!("{}", output::json("apikeyd.v1.ValidateResponse", &response)),
        Output::Table => match &response.api_key {
            Some(key) => sayln!(
                "{}: {} (key {} {:?} of owner {})",
                output::validation_code(response.code),
                response.message,
                key.id,
                key.name,
                key.owner_id
            ),
            None => sayln!(
                "{}: {}",
                output::validation_code(response.code),
                response.message
            ),
        },
    }
    if response.valid {
        Ok(())
    } else {
        Err(Failure::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_args(addr: Option<&str>, root_key_file: Option<PathBuf>) -> ClientArgs {
        ClientArgs {
            addr: addr.map(str::to_owned),
            root_key_file,
            output: Output::Table,
            ca_cert: None,
            client_cert: None,
            client_key: None,
        }
    }

    #[test]
    fn the_default_server_is_the_local_one() {
        let settings = Settings {
            server: crate::config::ServerSettings {
                grpc_addr: "0.0.0.0:6000".parse().unwrap(),
                ..Default::default()
            },
            ..Settings::default()
        };

        let local = server(&client_args(None, None), &settings).unwrap();
        let given = server(&client_args(Some("10.0.0.5:50051"), None), &settings).unwrap();
        let tls = server(&client_args(Some("https://keys.example"), None), &settings).unwrap();
        let local_tls = Settings {
            tls: crate::config::TlsSettings {
                cert: Some("tls.crt".into()),
                ..Default::default()
            },
            ..settings
        };
        let local_tls = server(&client_args(None, None), &local_tls).unwrap();
        let other = server(
            &client_args(Some("ftp://keys.example"), None),
            &Settings::default(),
        );

        assert_eq!(local.uri, "http://127.0.0.1:6000");
        assert!(local.tls.is_none());
        assert_eq!(given.uri, "http://10.0.0.5:50051");
        assert_eq!(tls.uri, "https://keys.example");
        assert!(tls.tls.is_some());
        assert_eq!(local_tls.uri, "https://127.0.0.1:6000");
        assert!(local_tls.tls.is_some());
        assert!(matches!(other, Err(Failure::Usage(_))));
    }

    #[test]
    fn the_root_key_comes_from_its_file_or_the_bootstrap_file_and_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bootstrap-root-key"), "rk_bootstrap\n").unwrap();
        let file = dir.path().join("ops-key");
        std::fs::write(&file, " rk_ops \n").unwrap();

        let from_file = root_key(&client_args(None, Some(file)), dir.path()).unwrap();
        let bootstrapped = root_key(&client_args(None, None), dir.path());
        let missing = root_key(
            &client_args(None, Some(dir.path().join("absent"))),
            dir.path(),
        );

        assert_eq!(from_file.0, "rk_ops");
        assert!(!format!("{from_file:?}").contains("rk_ops"));
        // APIKEYD_ROOT_KEY may be set around this test; either way a key is found.
        assert!(bootstrapped.is_ok());
        assert!(matches!(missing, Err(Failure::Usage(m)) if m.contains("absent")));
    }

    #[test]
    fn an_update_without_changes_is_a_usage_error() {
        let update = UpdateArgs {
            id: "0000000000000000".to_owned(),
            name: None,
            enable: false,
            disable: false,
            scopes: vec![],
            expires_in: None,
            never_expires: false,
            tier: None,
            metadata: vec![],
        };

        assert!(matches!(update_request(update), Err(Failure::Usage(_))));
    }
}
