//! The command tree of `apikeyd`: every subcommand and its arguments as
//! clap reads them. Only the shape of the command line lives here (no
//! behaviour), so the modules that act on a command import its arguments
//! without importing each other; [`crate::commands`] dispatches.

pub mod client_args;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::SettingsArgs;

#[derive(Debug, Parser)]
#[command(
    name = "apikeyd",
    version,
    about = "A key authority: issues API keys, keeps them hashed, and validates them over gRPC."
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: SettingsArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (migrating the database first).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage root keys, the credentials of the management API.
    #[command(subcommand)]
    RootKey(RootKeyCommand),
    /// Import the keys of another store (found by the SHA-256 of the whole
    /// key) into the database; running it again imports nothing twice.
    Import(ImportArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage API keys on a running server, as a client of its gRPC API.
    Keys(client_args::KeysArgs),
    /// Ask a running server's general-purpose rate limiter.
    Ratelimit(client_args::RatelimitArgs),
    /// Ask a running server whether an API key is good (exit 0 when valid, 1 when not).
    Validate(client_args::ValidateArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load the configuration (defaults, file, environment, flags), explain
    /// what is wrong with it, or print the effective settings with secrets
    /// redacted. Exits 0 when it is usable, 2 when not.
    Check,
}

/// Root keys, directly in the database (for bootstrap and recovery): these
/// commands need no root key, only the settings `serve` uses.
#[derive(Debug, Subcommand)]
pub enum RootKeyCommand {
    /// Create a root key and print it, alone, on the last line of stdout.
    Create {
        /// A label for the key, e.g. "billing-service".
        #[arg(long)]
        name: String,
        /// Permissions to grant (repeatable): keys:read, keys:write, root_keys:read,
        /// root_keys:write, audit:read, validate, ratelimit, or wildcards such as keys:* and *.
        #[arg(long = "permission", default_value = "*")]
        permissions: Vec<String>,
        /// Owners whose keys it reaches (repeatable): an owner id (tenant-42) or a
        /// prefix ending in * (tenant-*); none for every owner.
        #[arg(long = "owner-scope")]
        owner_scope: Vec<String>,
        /// Days until it expires (1 to 365); unset for a key that never expires.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List root keys (never their secrets), newest first.
    List {
        /// Also list revoked root keys.
        #[arg(long)]
        include_revoked: bool,
    },
    /// Revoke a root key now: it is refused from its next call on.
    Revoke {
        /// The root key's id (the 16 characters after rk_).
        id: String,
    },
}

/// Keys written per transaction: large enough to be fast, small enough
/// that an interrupted import loses little work.
const DEFAULT_BATCH: u16 = 500;
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from_seed", "from_jsonl"])))]
pub struct ImportArgs {
    /// PostgreSQL URL of a store made by the seed design (its `ApiKey`
    /// table), read in one read-only transaction. From the environment, a
    /// password in it stays out of the process list.
    #[arg(
        long,
        value_name = "URL",
        env = "APIKEYD_IMPORT_SEED_URL",
        hide_env_values = true
    )]
    pub from_seed: Option<String>,
    /// A file of one JSON object per line: sha256, owner_id, name, scopes,
    /// and optionally prefix, environment, enabled, metadata, tier,
    /// created_at, expires_at, last_used_at, revoked_at.
    #[arg(long, value_name = "FILE")]
    pub from_jsonl: Option<PathBuf>,
    /// Also import the seed's `ApiKeyUsage` rows into each imported key's
    /// usage counters and recent requests (needs --redis-url, where usage lives).
    #[arg(long, requires = "from_seed")]
    pub usage: bool,
    /// Check and count every row, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keys written per transaction.
    #[arg(long, default_value_t = DEFAULT_BATCH, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
