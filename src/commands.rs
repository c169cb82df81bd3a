//! What `apikeyd` does with its command line: parse it (the tree is in
//! [`crate::cli`]), load the settings, dispatch; `root-key` straight to the
//! database.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::cli::{Cli, Command, ConfigCommand, RootKeyCommand};
use crate::config::Settings;
use crate::domain::audit::AuditEvent;
use crate::domain::key_settings::{self, ExpiryChange};
use crate::domain::{self, KeyId, RootKey};
use crate::invalidation::{Invalidation, InvalidationBus};
use crate::root_keys::{self, NewRootKey};
use crate::secrets::SecretHasher;
use crate::startup::Application;
use crate::store::RootKeyPageQuery;
use crate::{audit, client, import, shutdown, store, telemetry};

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.settings) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("apikeyd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // Client commands call a running server; the server's settings give
    // them only its local address and data directory.
    let command = match cli.command {
        Command::Keys(args) => return client::keys(args, &settings).await,
        Command::Ratelimit(args) => return client::ratelimit(args, &settings).await,
        Command::Validate(args) => return client::validate(args, &settings).await,
        command => command,
    };
    if let Command::Config(ConfigCommand::Check) = command {
        return check_config(&settings);
    }
    let problems = settings.problems();
    if !problems.is_empty() {
        eprintln!(
            "apikeyd: invalid configuration:\n  {}",
            problems.join("\n  ")
        );
        return ExitCode::from(2);
    }
    let telemetry = telemetry::init(settings.log_format);
    let outcome = run(command, settings).await;
    // Flushing waits on the exporter task, so it must not hold a runtime worker.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("apikeyd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown::terminate_or_interrupt())
                .await
        }
        Command::Migrate => {
            let db = connect(&settings).await?;
            store::prepare(&db, None)
                .await
                .context("migration failed")?;
            tracing::info!("database schema is up to date");
            Ok(())
        }
        Command::Config(ConfigCommand::Check)
        | Command::Keys(_)
        | Command::Ratelimit(_)
        | Command::Validate(_) => unreachable!("handled before logging starts"),
        Command::Import(args) => import::run(args, settings).await,
        Command::RootKey(command) => root_key(command, &settings).await,
    }
}

/// `apikeyd root-key …`: straight to the database, each change audited
/// (peer `cli`, no root key).
async fn root_key(command: RootKeyCommand, settings: &Settings) -> anyhow::Result<()> {
    let db = connect(settings).await?;
    store::prepare(&db, None)
        .await
        .context("migration failed")?;
    let now = domain::now();
    match command {
        RootKeyCommand::Create {
            name,
            permissions,
            owner_scope,
            expires_in_days,
        } => {
            let new = NewRootKey {
                name: key_settings::parse_name(&name)?,
                permissions: key_settings::parse_permissions("--permission", &permissions)?,
                owner_scope: key_settings::parse_owner_scope("--owner-scope", &owner_scope)?,
                expiry: match expires_in_days {
                    Some(days) => ExpiryChange::InDays(key_settings::parse_expiry_days(
                        "--expires-in-days",
                        days,
                    )?),
                    None => ExpiryChange::Never,
                },
            };
            let hasher = Arc::new(SecretHasher::new(
                settings.argon2.costs(),
                settings.argon2.budget(),
            )?);
            let (key, row) = root_keys::mint(&hasher, new, None, now).await?;
            let mut event = AuditEvent::new("cli root-key create", "cli", now);
            root_keys::describe_new(&mut event, &row);
            let id = row.id.clone();
            store::insert_root_key_audited(&db, row, &event).await?;
            audit::log(&event, true);
            eprintln!("created root key {id}; it is shown once, below:");
            println!("{key}");
        }
        RootKeyCommand::List { include_revoked } => {
            let query = RootKeyPageQuery {
                include_revoked,
                after: None,
                batch: 500,
            };
            println!("id\tname\tpermissions\towner_scope\tcreated_at\texpires_at\trevoked_at");
            store::scan_root_keys(&db, query, now, |key| {
                println!("{}", listing_line(&key));
                true
            })
            .await?;
        }
        RootKeyCommand::Revoke { id } => {
            let id = KeyId::parse(&id).with_context(|| {
                format!(
                    "{} is not a root key id (16 letters and digits)",
                    domain::quote(&id)
                )
            })?;
            let mut event = AuditEvent::new("cli root-key revoke", "cli", now);
            event.set_target_root_key(&id);
            event.set_field("revoked", "true");
            let revoked = store::revoke_root_key_audited(&db, &id, now, &event).await?;
            audit::log(&event, true);
            tell_replicas(settings, Invalidation::RootKey(id)).await?;
            eprintln!(
                "revoked root key {} ({}); it is refused from its next call on",
                revoked.id, revoked.name
            );
        }
    }
    Ok(())
}

/// Publishes a change to the replicas' caches when they share Redis, waiting
/// until Redis has taken it (or a few seconds: then their TTL bounds it).
async fn tell_replicas(settings: &Settings, change: Invalidation) -> anyhow::Result<()> {
    let Some(target) = settings.redis.target()? else {
        return Ok(());
    };
    let bus = InvalidationBus::over(&target, &settings.redis)?;
    bus.publish(change);
    let publisher = bus.spawn_publisher();
    bus.finish(publisher, REPLICA_NOTICE_WAIT).await;
    Ok(())
}

/// The longest `root-key revoke` waits for Redis to take the invalidation.
const REPLICA_NOTICE_WAIT: Duration = Duration::from_secs(3);

/// One tab-separated line of `root-key list`; never a secret.
fn listing_line(key: &RootKey) -> String {
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or_else(|| "-".to_owned(), |at| at.to_rfc3339())
    };
    let scope = key.owner_scope.to_strings();
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        key.id,
        key.name.replace(['\t', '\n'], " "),
        key.permissions.to_strings().join(","),
        if scope.is_empty() {
            "*".to_owned()
        } else {
            scope.join(",")
        },
        key.created_at.to_rfc3339(),
        time(key.expires_at),
        time(key.revoked_at),
    )
}

fn check_config(settings: &Settings) -> ExitCode {
    let problems = settings.problems();
    if problems.is_empty() {
        println!("{}", settings.describe());
        eprintln!("configuration is valid");
        ExitCode::SUCCESS
    } else {
        eprintln!("configuration is not usable:\n  {}", problems.join("\n  "));
        ExitCode::from(2)
    }
}

async fn connect(settings: &Settings) -> anyhow::Result<sea_orm::DatabaseConnection> {
    settings
        .database
        .target()
        .map_err(anyhow::Error::msg)?
        .connect()
        .await
        .context("cannot connect to the database")
}
