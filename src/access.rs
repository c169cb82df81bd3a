//! Who may call the management API: a root key in `authorization: Bearer …`
//! metadata, with the permission each call needs.

use std::fmt;
use std::sync::Arc;

use chrono::Utc;
use sea_orm::DatabaseConnection;
use tonic::metadata::MetadataMap;

use crate::domain::{KeyKind, PresentedKey, Scope};
use crate::error::{Error, Result};
use crate::secrets::SecretHasher;
use crate::store;
use crate::telemetry::metrics::observe_db;

/// What a management call needs from the root key that authorises it.
/// Permissions use the scope grammar, so a root key may hold `keys:*` or `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// GetKey, ListKeys, GetKeyUsage, GetOwnerLimits.
    KeysRead,
    /// CreateKey, UpdateKey, RevokeKey, RotateKey, SetOwnerLimits, ImportKeys.
    KeysWrite,
}

impl Permission {
    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::KeysRead => "keys:read",
            Permission::KeysWrite => "keys:write",
        }
    }

    fn as_scope(self) -> Scope {
        Scope::parse(self.as_str()).expect("permission names are valid scopes")
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks root keys presented to the management API.
#[derive(Clone)]
pub struct RootKeyGate {
    db: DatabaseConnection,
    hasher: Arc<SecretHasher>,
}

impl RootKeyGate {
    pub fn new(db: DatabaseConnection, hasher: Arc<SecretHasher>) -> Self {
        RootKeyGate { db, hasher }
    }

    /// Succeeds when the request carries a live root key holding `permission`.
    pub async fn authorize(&self, metadata: &MetadataMap, permission: Permission) -> Result<()> {
        let presented = bearer_root_key(metadata)?;
        let record = observe_db(
            "find_root_key",
            store::find_root_key(&self.db, &presented.id),
        )
        .await?
        .ok_or(Error::Unauthenticated(UNKNOWN_ROOT_KEY))?;
        if !self
            .hasher
            .verify(
                presented.kind,
                &presented.id,
                &presented.secret,
                &record.secret_hash,
            )
            .await?
        {
            return Err(Error::Unauthenticated(UNKNOWN_ROOT_KEY));
        }
        if record.revoked_at.is_some_and(|at| at <= Utc::now()) {
            return Err(Error::Unauthenticated("this root key has been revoked"));
        }
        if !record.permissions.grants(&permission.as_scope()) {
            return Err(Error::PermissionDenied {
                root_key_id: record.id.to_string(),
                permission,
            });
        }
        Ok(())
    }
}

const UNKNOWN_ROOT_KEY: &str =
    "the root key in the authorization metadata is not known to this server";

fn bearer_root_key(metadata: &MetadataMap) -> Result<PresentedKey> {
    let header = metadata
        .get("authorization")
        .ok_or(Error::Unauthenticated(
            "missing `authorization: Bearer <root key>` metadata (grpcurl: -H 'authorization: Bearer rk_…')",
        ))?
        .to_str()
        .map_err(|_| Error::Unauthenticated("the authorization metadata is not ASCII"))?;
    let token = header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or(Error::Unauthenticated(
            "the authorization metadata must be `Bearer <root key>`",
        ))?;
    match PresentedKey::parse(token) {
        Ok(key) if key.kind == KeyKind::Root => Ok(key),
        Ok(_) => Err(Error::Unauthenticated(
            "that is an API key; the management API takes a root key (rk_…)",
        )),
        Err(_) => Err(Error::Unauthenticated(
            "the authorization metadata does not hold a well-formed root key (rk_…)",
        )),
    }
}
