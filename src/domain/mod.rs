//! The rules of the product, in plain Rust with no I/O: the key format, keys
//! of other stores and their import, scopes, key settings, limits and
//! quotas, and the validation verdict. Everything here is unit-tested beside
//! its type, and nothing here imports a module above it.

pub mod api_key;
pub mod import;
pub mod key_format;
pub mod key_settings;
pub mod legacy_key;
pub mod limit;
pub mod quota;
pub mod scope;

pub use api_key::{ApiKey, Environment, ValidationCode};
pub use key_format::{GeneratedKey, KeyId, KeyKind, MalformedKey, PresentedKey, Secret};
pub use legacy_key::LegacyDigest;
pub use limit::{Algorithm, Limit, LimitSource, Tiers};
pub use quota::{Quota, RefillInterval};
pub use scope::{Scope, ScopeSet};

use chrono::{DateTime, SubsecRound, Utc};

/// The current time at microsecond precision, the precision PostgreSQL keeps,
/// so that a timestamp read back equals the one written (page tokens rely on it).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
