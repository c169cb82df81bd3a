//! The `apikeyd` command: parse, load settings, dispatch.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use crate::authority::mint_root_key;
use crate::config::{Cli, Command, ConfigCommand, RootKeyCommand, Settings};
use crate::domain::{ScopeSet, key_settings};
use crate::secrets::SecretHasher;
use crate::startup::Application;
use crate::{client, import, shutdown, store, telemetry};

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
        Command::RootKey(RootKeyCommand::Create { name, permissions }) => {
            let name = key_settings::parse_name(&name)?;
            let permissions = ScopeSet::new(key_settings::parse_scopes(
                "--permission",
                &permissions,
                true,
            )?);
            let db = connect(&settings).await?;
            store::prepare(&db, None)
                .await
                .context("migration failed")?;
            let hasher = Arc::new(SecretHasher::new(settings.argon2_cost(), 1)?);
            let (key, row) = mint_root_key(&hasher, name, permissions).await?;
            let id = row.id.clone();
            store::insert_root_key(&db, row).await?;
            eprintln!("created root key {id}; it is shown once, below:");
            println!("{key}");
            Ok(())
        }
    }
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
    store::connect(
        settings.database_url.as_ref().map(|u| u.expose()),
        &settings.data_dir,
    )
    .await
    .context("cannot connect to the database")
}
