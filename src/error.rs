//! The one error type of the service, and how each case reaches a gRPC caller.
//!
//! Messages are written for the person reading them in grpcurl: they say what
//! was wrong and what to do. Internal causes (database errors) are logged
//! here and never sent to the client.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// INVALID_ARGUMENT: a request field is out of bounds or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// NOT_FOUND: no key with this id (or not this owner's; the two are not told apart).
    #[error("no API key with id {id:?}")]
    KeyNotFound { id: String },

    /// FAILED_PRECONDITION: the key is revoked (or being rotated) and cannot change.
    #[error(
        "API key {id} is revoked (or scheduled for revocation by a rotation) and cannot be {action}"
    )]
    KeyRevoked { id: String, action: &'static str },

    /// RESOURCE_EXHAUSTED: the owner already has as many active keys as allowed.
    #[error(
        "owner {owner_id:?} already has {limit} active keys, the most allowed; revoke one before creating another"
    )]
    KeyLimitReached { owner_id: String, limit: u32 },

    /// UNAUTHENTICATED: no usable root key in the `authorization` metadata.
    #[error("{0}")]
    Unauthenticated(&'static str),

    /// PERMISSION_DENIED: the root key is good but lacks the permission.
    #[error("root key {root_key_id} lacks the {permission} permission needed for this call")]
    PermissionDenied {
        root_key_id: String,
        permission: &'static str,
    },

    /// PERMISSION_DENIED: the owner is outside the root key's owner scope.
    #[error(
        "root key {root_key_id} may not act on owner {owner_id}: it is outside the root key's owner scope"
    )]
    OutsideOwnerScope {
        root_key_id: String,
        /// Quoted and truncated.
        owner_id: String,
    },

    /// PERMISSION_DENIED: a scoped root key named a key it cannot reach. A key
    /// of another owner and a key that does not exist get this same answer.
    #[error(
        "root key {root_key_id} may not act on API key {key_id}: there is no such key within its owner scope"
    )]
    KeyOutOfReach { root_key_id: String, key_id: String },

    /// PERMISSION_DENIED: a root key named a root key wider than itself. A
    /// wider one and one that does not exist get this same answer.
    #[error(
        "root key {root_key_id} may not see or change root key {target}: there is no such root key within its own permissions and owner scope"
    )]
    RootKeyOutOfReach { root_key_id: String, target: String },

    /// PERMISSION_DENIED: a root key asked for a root key wider than itself.
    #[error("root key {root_key_id} cannot create this root key: {reason}")]
    Escalation { root_key_id: String, reason: String },

    /// NOT_FOUND: no root key with this id (told only to a root key that oversees every one).
    #[error("no root key with id {id:?}")]
    RootKeyNotFound { id: String },

    /// UNAVAILABLE: the rate-limit store cannot answer a call that needs it
    /// (GetKeyUsage, add_to_quota; during an outage Validate and
    /// CheckRateLimit follow the failure policy instead).
    #[error("the rate-limit store is unreachable right now; retry with backoff")]
    LimiterUnavailable,

    /// RESOURCE_EXHAUSTED: the server's argon2 budget is full (its queue of
    /// key verifications and hashes); nothing was judged, so retry.
    #[error(
        "this server is verifying as many keys as it can right now; retry with backoff (nothing was judged)"
    )]
    Overloaded,

    /// UNAVAILABLE: the rate-limit store's answer did not come within the
    /// call's deadline (or the default wait); nothing was decided for it.
    #[error(
        "the rate-limit store did not answer within {waited_ms} ms; nothing was decided, retry with backoff"
    )]
    LimiterLate { waited_ms: u64 },

    /// The status of its [`StoreFault`] (connection trouble, a full disk, a
    /// read-only store) or INTERNAL (anything else): logged, not shown.
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),

    /// A database failure already classified, for callers that shared one
    /// lookup (the cause itself is logged once, by the caller that owned it).
    #[error("{0}")]
    Store(StoreFault),

    /// INTERNAL: a bug or an environment failure; logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        match &error {
            Error::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            Error::KeyNotFound { .. } => Status::not_found(error.to_string()),
            Error::KeyRevoked { .. } => Status::failed_precondition(error.to_string()),
            Error::KeyLimitReached { .. } => Status::resource_exhausted(error.to_string()),
            Error::Unauthenticated(_) => Status::unauthenticated(error.to_string()),
            Error::PermissionDenied { .. }
            | Error::OutsideOwnerScope { .. }
            | Error::KeyOutOfReach { .. }
            | Error::RootKeyOutOfReach { .. }
            | Error::Escalation { .. } => Status::permission_denied(error.to_string()),
            Error::RootKeyNotFound { .. } => Status::not_found(error.to_string()),
            Error::LimiterUnavailable | Error::LimiterLate { .. } => {
                Status::unavailable(error.to_string())
            }
            Error::Overloaded => Status::resource_exhausted(error.to_string()),
            Error::Database(db) if StoreFault::of(db).is_some() => {
                let fault = StoreFault::of(db).expect("classified above");
                tracing::warn!(error = %db, ?fault, "database cannot serve the call");
                fault.status()
            }
            Error::Store(fault) => fault.status(),
            Error::Database(db) => {
                tracing::error!(error = %db, "database error");
                Status::internal("internal error; the server log has the cause")
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                Status::internal("internal error; the server log has the cause")
            }
        }
    }
}

/// A database failure that says nothing about the request: the store cannot
/// serve it right now. Each is retryable once an operator (or the database's
/// restart) removes the cause, and the message says which cause it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreFault {
    /// UNAVAILABLE: the database cannot be reached, or is shutting down or
    /// starting (PostgreSQL's class 08 and 57P01–57P03).
    #[error("the key store is unreachable right now; retry with backoff")]
    Unreachable,
    /// RESOURCE_EXHAUSTED: no space left for the write (SQLite's
    /// SQLITE_FULL, PostgreSQL's 53100).
    #[error(
        "the key store's disk is full, so nothing was written; free space on the data directory's (or the database's) volume, then retry"
    )]
    DiskFull,
    /// UNAVAILABLE: the store refuses writes (a read-only data directory or
    /// file: SQLite's SQLITE_READONLY and the I/O errors of writing to it;
    /// PostgreSQL's 25006).
    #[error(
        "the key store cannot write right now (its data directory or database is read-only, or refused the write), so nothing was written; retry once it is writable"
    )]
    NotWritable,
}

/// SQLite's primary result codes (the low byte of an extended one).
const SQLITE_READONLY: i64 = 8;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;
const SQLITE_CANTOPEN: i64 = 14;

impl StoreFault {
    /// What `error` means for the caller, or `None` for a failure of the
    /// statement itself (a bug: INTERNAL).
    pub fn of(error: &sea_orm::DbErr) -> Option<StoreFault> {
        use sea_orm::{DbErr, RuntimeErr};
        match error {
            DbErr::ConnectionAcquire(_) => Some(StoreFault::Unreachable),
            // Failing to connect is the store being unreachable whatever the
            // server says why (it refuses connections to this database, say:
            // 55000), unless its code names a fault of its own.
            DbErr::Conn(RuntimeErr::SqlxError(e)) => {
                Self::of_sqlx(e).or(Some(StoreFault::Unreachable))
            }
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
                Self::of_sqlx(e)
            }
            DbErr::Conn(_) => Some(StoreFault::Unreachable),
            _ => None,
        }
    }

    fn of_sqlx(error: &sea_orm::sqlx::Error) -> Option<StoreFault> {
        use sea_orm::sqlx::Error;
        match error {
            Error::Io(_)
            | Error::PoolTimedOut
            | Error::PoolClosed
            | Error::WorkerCrashed
            | Error::Tls(_) => Some(StoreFault::Unreachable),
            Error::Database(db) => {
                let sqlite = db
                    .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
                    .is_some();
                Self::of_code(db.code()?.as_ref(), sqlite)
            }
            _ => None,
        }
    }

    /// SQLite's extended result code (a number), or PostgreSQL's SQLSTATE
    /// (five characters, often digits too).
    fn of_code(code: &str, sqlite: bool) -> Option<StoreFault> {
        if sqlite {
            return match code.parse::<i64>().ok()? & 0xff {
                SQLITE_FULL => Some(StoreFault::DiskFull),
                SQLITE_READONLY | SQLITE_IOERR | SQLITE_CANTOPEN => Some(StoreFault::NotWritable),
                _ => None,
            };
        }
        match code {
            "53100" => Some(StoreFault::DiskFull),
            "25006" => Some(StoreFault::NotWritable),
            "57P01" | "57P02" | "57P03" | "53300" => Some(StoreFault::Unreachable),
            _ if code.starts_with("08") => Some(StoreFault::Unreachable),
            _ => None,
        }
    }

    pub fn status(self) -> Status {
        let code = match self {
            StoreFault::Unreachable | StoreFault::NotWritable => Code::Unavailable,
            StoreFault::DiskFull => Code::ResourceExhausted,
        };
        Status::new(code, self.to_string())
    }
}

impl Error {
    /// The store fault this error is, if it is one.
    pub fn store_fault(&self) -> Option<StoreFault> {
        match self {
            Error::Database(db) => StoreFault::of(db),
            Error::Store(fault) => Some(*fault),
            _ => None,
        }
    }

    /// The same failure for one more caller of a shared lookup: a store fault
    /// keeps its status (a shared `DbErr` cannot be cloned), anything else
    /// is INTERNAL with its description.
    pub fn for_another_caller(&self, what: &str) -> Error {
        if let Some(fault) = self.store_fault() {
            return Error::Store(fault);
        }
        match self {
            Error::Overloaded => Error::Overloaded,
            other => Error::Internal(format!("{what} failed: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_and_postgres_codes_name_their_fault() {
        // SQLITE_FULL, SQLITE_READONLY_DBMOVED (extended), SQLITE_IOERR_WRITE.
        assert_eq!(StoreFault::of_code("13", true), Some(StoreFault::DiskFull));
        assert_eq!(
            StoreFault::of_code("1032", true),
            Some(StoreFault::NotWritable)
        );
        assert_eq!(
            StoreFault::of_code("778", true),
            Some(StoreFault::NotWritable)
        );
        // SQLITE_CONSTRAINT_UNIQUE is the statement's business.
        assert_eq!(StoreFault::of_code("2067", true), None);
        // PostgreSQL's codes are digits too, and mean something else.
        assert_eq!(StoreFault::of_code("13", false), None);
        assert_eq!(
            StoreFault::of_code("57P01", false),
            Some(StoreFault::Unreachable)
        );
        assert_eq!(
            StoreFault::of_code("08006", false),
            Some(StoreFault::Unreachable)
        );
        assert_eq!(
            StoreFault::of_code("53100", false),
            Some(StoreFault::DiskFull)
        );
        assert_eq!(StoreFault::of_code("23505", false), None);
    }

    #[test]
    fn a_shared_store_fault_keeps_its_status_for_every_caller() {
        let refused = Error::Database(sea_orm::DbErr::ConnectionAcquire(
            sea_orm::ConnAcquireErr::Timeout,
        ));
        let copy = refused.for_another_caller("key lookup");
        assert_eq!(Status::from(copy).code(), Code::Unavailable);
        let full = Status::from(Error::Store(StoreFault::DiskFull));
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(
            full.message().contains("disk is full"),
            "{}",
            full.message()
        );
    }
}
