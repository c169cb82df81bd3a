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

    /// UNAVAILABLE (connection trouble) or INTERNAL (anything else): logged, not shown.
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),

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
            Error::Database(db) if is_connection_error(db) => {
                tracing::warn!(error = %db, "database unreachable");
                Status::new(
                    Code::Unavailable,
                    "the key store is unreachable right now; retry with backoff",
                )
            }
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

/// Whether a database error means "cannot reach the database" (worth a retry)
/// rather than a bad statement.
pub fn is_connection_error(error: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => matches!(
            e,
            sea_orm::sqlx::Error::Io(_)
                | sea_orm::sqlx::Error::PoolTimedOut
                | sea_orm::sqlx::Error::PoolClosed
                | sea_orm::sqlx::Error::WorkerCrashed
        ),
        _ => false,
    }
}
