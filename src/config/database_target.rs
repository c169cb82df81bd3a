//! Which relational store the settings name, interpreted once: the embedded
//! SQLite file in the data directory, an SQLite file by URL, or PostgreSQL.
//! The server, the command line and the import connect through it and ask
//! it whether one process owns the data; nothing else reads the URL.

use std::fmt;
use std::path::{Path, PathBuf};

use sea_orm::{DatabaseConnection, DbErr};

use super::secret_url::DatabaseUrl;
use crate::store;

#[derive(Clone, Debug)]
pub enum DatabaseTarget {
    /// `apikeyd.db` in the data directory: no `database_url`.
    Embedded { data_dir: PathBuf },
    /// An SQLite file named by a `sqlite:` URL.
    SqliteUrl(DatabaseUrl),
    /// PostgreSQL (`postgres://…`, `postgresql://…`), over TLS as its
    /// `sslmode` says.
    Postgres(DatabaseUrl),
}

impl DatabaseTarget {
    /// What `database_url` (or its absence) names; a sentence saying what
    /// to do when it names nothing usable.
    pub fn parse(url: Option<&DatabaseUrl>, data_dir: &Path) -> Result<DatabaseTarget, String> {
        let Some(url) = url else {
            return Ok(DatabaseTarget::Embedded {
                data_dir: data_dir.to_owned(),
            });
        };
        let raw = url.expose();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            if url::Url::parse(raw).is_err() {
                return Err("database_url: not a valid URL (percent-encode special characters in the password)".to_owned());
            }
            Ok(DatabaseTarget::Postgres(url.clone()))
        } else if raw.starts_with("sqlite:") {
            Ok(DatabaseTarget::SqliteUrl(url.clone()))
        } else {
            Err(format!(
                "database_url: {url} is neither postgres://… nor sqlite://…; unset it for the embedded SQLite"
            ))
        }
    }

    pub async fn connect(&self) -> Result<DatabaseConnection, DbErr> {
        match self {
            DatabaseTarget::Embedded { data_dir } => store::connect_embedded(data_dir).await,
            DatabaseTarget::SqliteUrl(url) => store::connect_sqlite_url(url.expose()).await,
            DatabaseTarget::Postgres(url) => store::connect_postgres(url.expose()).await,
        }
    }

    /// Whether one process owns the data, and so sees every change itself:
    /// an SQLite file is opened by one server; replicas share PostgreSQL.
    pub fn single_process(&self) -> bool {
        !matches!(self, DatabaseTarget::Postgres(_))
    }
}

/// For the log: the embedded file's directory, or the URL with its
/// password redacted.
impl fmt::Display for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseTarget::Embedded { data_dir } => {
                write!(f, "sqlite (embedded) in {}", data_dir.display())
            }
            DatabaseTarget::SqliteUrl(url) | DatabaseTarget::Postgres(url) => url.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_url_names_its_target_and_only_postgres_is_shared() {
        let dir = Path::new("/var/lib/apikeyd");
        let target =
            |url: Option<&str>| DatabaseTarget::parse(url.map(DatabaseUrl::from).as_ref(), dir);

        let embedded = target(None).unwrap();
        assert!(matches!(embedded, DatabaseTarget::Embedded { .. }));
        assert!(embedded.single_process());
        assert_eq!(
            embedded.to_string(),
            "sqlite (embedded) in /var/lib/apikeyd"
        );

        let file = target(Some("sqlite:///tmp/keys.db")).unwrap();
        assert!(matches!(file, DatabaseTarget::SqliteUrl(_)));
        assert!(file.single_process());

        let postgres =
            target(Some("postgresql://app:hunter2@db/keys?sslmode=verify-full")).unwrap();
        assert!(!postgres.single_process());
        assert!(!postgres.to_string().contains("hunter2"), "{postgres}");

        let mysql = target(Some("mysql://root:hunter2@db/keys")).unwrap_err();
        assert!(mysql.contains("neither postgres"), "{mysql}");
        assert!(!mysql.contains("hunter2"), "{mysql}");
    }
}
