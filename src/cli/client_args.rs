//! The client commands' arguments. A value clap cannot parse (an unknown
//! flag, `--expires-in soon`) is a usage error: exit 2 before any call.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

/// How to reach the server and how to print its answers.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server's gRPC address, e.g. http://10.0.0.5:50051 or https://keys.internal:50051 [default: the local server at --grpc-addr, over TLS when --tls-cert is set].
    #[arg(long, env = "APIKEYD_ADDR", global = true)]
    pub addr: Option<String>,

    /// PEM CA certificate(s) that sign the server's certificate, for https:// [default: the system's roots].
    #[arg(long, env = "APIKEYD_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,

    /// PEM client certificate, with --client-key, for a server with mutual TLS.
    #[arg(
        long,
        env = "APIKEYD_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "APIKEYD_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// A file holding the root key (wins over APIKEYD_ROOT_KEY) [default: <data dir>/bootstrap-root-key when it exists].
    #[arg(long, env = "APIKEYD_ROOT_KEY_FILE", global = true)]
    pub root_key_file: Option<PathBuf>,

    /// `table` for people, `json` (the response in the proto3 JSON mapping) for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key and print it, once: it is never shown again.
    Create(CreateArgs),
    /// List keys, newest first (every page).
    List {
        /// Only this owner's keys.
        #[arg(long)]
        owner: Option<String>,
        /// Also list revoked keys.
        #[arg(long)]
        include_revoked: bool,
    },
    /// Show one key.
    Get { id: String },
    /// Change what is given; the rest stays.
    Update(UpdateArgs),
    /// Revoke a key: it never validates again.
    Revoke { id: String },
    /// Issue a new secret with the same settings and print it, once.
    Rotate {
        id: String,
        /// How long the old key keeps validating, e.g. 24h (at most 7d).
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        grace: Duration,
    },
    /// A key's validations by outcome, per hour (last 24 h) or per day (last 24 days), and its recent requests.
    Usage {
        id: String,
        #[arg(long, value_enum, default_value_t = Granularity::Hour)]
        granularity: Granularity,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Who the key belongs to (a user, a tenant, a service).
    #[arg(long)]
    pub owner: String,
    /// A label for people, e.g. "Production integration".
    #[arg(long)]
    pub name: String,
    /// A granted scope, `resource:action` (repeatable).
    #[arg(long = "scope", required = true)]
    pub scopes: Vec<String>,
    /// Expiry in whole days, e.g. 30d [default: never].
    #[arg(long, value_parser = parse_days)]
    pub expires_in: Option<u32>,
    #[arg(long, value_enum, default_value_t = Environment::Live)]
    pub env: Environment,
    /// A configured tier, e.g. pro [default: the server's default tier].
    #[arg(long)]
    pub tier: Option<String>,
    /// A label returned by Validate, KEY=VALUE (repeatable).
    #[arg(long = "metadata", value_parser = parse_entry)]
    pub metadata: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: String,
    #[arg(long)]
    pub name: Option<String>,
    /// Let the key validate again.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Keep the key but fail its validations (DISABLED).
    #[arg(long)]
    pub disable: bool,
    /// Replaces every scope (repeatable).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Expire this many whole days from now, e.g. 30d.
    #[arg(long, value_parser = parse_days, conflicts_with = "never_expires")]
    pub expires_in: Option<u32>,
    #[arg(long)]
    pub never_expires: bool,
    /// Follow this configured tier.
    #[arg(long)]
    pub tier: Option<String>,
    /// Replaces every metadata entry, KEY=VALUE (repeatable).
    #[arg(long = "metadata", value_parser = parse_entry)]
    pub metadata: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Live,
    Test,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Granularity {
    Hour,
    Day,
}

#[derive(Debug, Args)]
pub struct RatelimitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: RatelimitCommand,
}

#[derive(Debug, Subcommand)]
pub enum RatelimitCommand {
    /// Count one request against a limit; exit 0 when admitted, 1 when denied.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// What is limited, e.g. login.
    #[arg(long)]
    pub namespace: String,
    /// Who is limited within it, e.g. an IP address.
    #[arg(long)]
    pub identifier: String,
    #[arg(long)]
    pub limit: u32,
    /// e.g. 60s, 15m, 1h, 1d.
    #[arg(long, value_parser = parse_duration)]
    pub window: Duration,
    /// What this request takes from the limit [default: 1].
    #[arg(long)]
    pub cost: Option<u32>,
    #[arg(long, value_enum, default_value_t = Algorithm::SlidingWindow)]
    pub algorithm: Algorithm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Algorithm {
    SlidingWindow,
    FixedWindow,
    TokenBucket,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The API key, or - to read it from stdin (keeps it out of the process list).
    pub key: String,
    /// A scope the key must grant (repeatable).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// What this request costs against the key's limits and quota [default: 1].
    #[arg(long)]
    pub cost: Option<u32>,
}

/// `90s`, `15m`, `24h`, `7d`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let unit_at = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{raw:?} needs a unit: s, m, h or d (e.g. 24h)"))?;
    let (number, unit) = raw.split_at(unit_at);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a number followed by s, m, h or d"))?;
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{raw:?}: the unit is s, m, h or d")),
    };
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{raw:?} is too long"))
}

/// A duration of whole days, e.g. `30d`, as a number of days.
pub fn parse_days(raw: &str) -> Result<u32, String> {
    let duration = parse_duration(raw)?;
    let seconds = duration.as_secs();
    if seconds == 0 || seconds % 86_400 != 0 {
        return Err(format!(
            "{raw:?}: expiry is a whole number of days, e.g. 30d"
        ));
    }
    u32::try_from(seconds / 86_400).map_err(|_| format!("{raw:?} is too long"))
}

/// `KEY=VALUE`.
fn parse_entry(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_one_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("24").unwrap_err().contains("unit"));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn expiry_is_in_whole_days() {
        assert_eq!(parse_days("30d"), Ok(30));
        assert_eq!(parse_days("48h"), Ok(2));
        assert!(parse_days("36h").unwrap_err().contains("whole"));
        assert!(parse_days("0d").is_err());
    }

    #[test]
    fn metadata_entries_are_key_equals_value() {
        assert_eq!(
            parse_entry("team=edge=1"),
            Ok(("team".to_owned(), "edge=1".to_owned()))
        );
        assert!(parse_entry("team").is_err());
    }
}
