//! The relational store, over SeaORM: SQLite (the embedded default, a file in
//! the data directory) or PostgreSQL. Plain async functions over a
//! connection, tested through the service against both backends.

mod audit_events;
pub mod entities;
mod imported_keys;
mod keys;
mod owner_limits;
mod root_keys;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use apikeyd_migrations::{Migrator, MigratorTrait};
use sea_orm::sea_query::{Alias, Expr, Func, SimpleExpr};
use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sea_orm::{
    ColumnTrait, Condition, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbBackend, DbErr, SqlxSqliteConnector, TransactionTrait,
};

use crate::domain::OwnerScope;
use crate::domain::audit::AuditEvent;
use crate::domain::owner_scope::OwnerPattern;

pub use audit_events::{AuditQuery, StoredAuditEvent};

pub use imported_keys::{IMPORTED_SECRET_HASH, ImportedKeyRow};
pub use keys::{Expiry, KeyChanges, KeyStore, ListCursor, ListQuery, NewKeyRow};
pub use root_keys::{NewRootKeyRow, RootKeyPageQuery};

/// Connects to PostgreSQL; TLS as the URL's `sslmode` / `sslrootcert` say.
pub async fn connect_postgres(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(16)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    Database::connect(options).await
}

/// Opens (creating it if missing) the SQLite file of a `sqlite:` URL.
pub async fn connect_sqlite_url(url: &str) -> Result<DatabaseConnection, DbErr> {
    let options = SqliteConnectOptions::from_str(url).map_err(|e| DbErr::Custom(e.to_string()))?;
    connect_sqlite(options.create_if_missing(true)).await
}

/// Opens (creating both if missing) `apikeyd.db` in the data directory.
pub async fn connect_embedded(data_dir: &Path) -> Result<DatabaseConnection, DbErr> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        DbErr::Custom(format!(
            "cannot create data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let options = SqliteConnectOptions::new()
        .filename(data_dir.join("apikeyd.db"))
        .create_if_missing(true);
    connect_sqlite(options)
        .await
        .map_err(|error| explain_unwritable(data_dir, error))
}

/// SQLite says only "unable to open database file" when the data directory
/// refuses writes (a read-only mount, a full disk): name the directory and
/// the cause, so the operator knows what to fix.
fn explain_unwritable(data_dir: &Path, error: DbErr) -> DbErr {
    let probe = data_dir.join(".apikeyd-write-check");
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            error
        }
        Err(cause) => DbErr::Custom(format!(
            "the data directory {} is not writable ({cause}): apikeyd keeps its SQLite database \
             there and must write to it; mount it read-write (or free space), or set --data-dir",
            data_dir.display()
        )),
    }
}

/// WAL lets readers run beside the one writer; the busy timeout makes
/// concurrent writers wait for each other instead of failing.
async fn connect_sqlite(options: SqliteConnectOptions) -> Result<DatabaseConnection, DbErr> {
    let options = options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .map_err(|e| DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e)))?;
    Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
}

/// Brings the schema up to date and, if no root key exists yet, inserts
/// `bootstrap` with its audit event (returning whether it did). On
/// PostgreSQL both happen under one advisory lock, so replicas that start
/// together migrate once and bootstrap at most one root key.
pub async fn prepare(
    db: &DatabaseConnection,
    bootstrap: Option<(NewRootKeyRow, &AuditEvent)>,
) -> Result<bool, DbErr> {
    let txn = db.begin().await?;
    if db.get_database_backend() == DbBackend::Postgres {
        // Any fixed number works; this one spells "apikeyd" in ASCII.
        txn.execute_unprepared("SELECT pg_advisory_xact_lock(27418365216244836)")
            .await?;
    }
    Migrator::up(&txn, None).await?;
    let bootstrapped = match bootstrap {
        Some((row, event)) if root_keys::count(&txn).await? == 0 => {
            root_keys::insert(&txn, row).await?;
            audit_events::insert(&txn, event).await?;
            true
        }
        _ => false,
    };
    txn.commit().await?;
    Ok(bootstrapped)
}

/// Rows whose owner `column` is within `scope`; `None` when every owner is.
/// A prefix compares the leading characters exactly (`substr`), not with
/// `LIKE`, which SQLite matches without regard to case.
fn within_owner_scope(column: impl ColumnTrait, scope: &OwnerScope) -> Option<Condition> {
    let patterns = scope.patterns();
    if patterns.is_empty() {
        return None;
    }
    let mut any = Condition::any();
    for pattern in patterns {
        any = any.add(match pattern {
            OwnerPattern::Exact(owner_id) => column.eq(owner_id.as_str()),
            OwnerPattern::Prefix(prefix) => {
                let chars = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
                let leading: SimpleExpr = Func::cust(Alias::new("substr"))
                    .arg(Expr::col(column.as_column_ref()))
                    .arg(1)
                    .arg(chars)
                    .into();
                leading.eq(prefix.as_str())
            }
        });
    }
    Some(any)
}

pub use audit_events::{
    delete_before as delete_audit_events_before, insert as insert_audit_event,
    list as list_audit_events,
};
pub use root_keys::{
    count as count_root_keys, find as find_root_key, insert as insert_root_key,
    insert_audited as insert_root_key_audited, replace_hash as replace_root_key_hash,
    revoke_audited as revoke_root_key_audited, scan as scan_root_keys,
};
