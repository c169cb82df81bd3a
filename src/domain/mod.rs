//! The rules of the product, in plain Rust with no I/O: the key format, keys
//! of other stores and their import, scopes, key settings, limits and
//! quotas, root keys (permissions and owner scopes), the audit record and
//! the validation verdict. Everything here is unit-tested beside its type,
//! and nothing here imports a module above it.

pub mod api_key;
pub mod audit;
pub mod import;
pub mod key_format;
pub mod key_settings;
pub mod legacy_key;
pub mod limit;
pub mod owner_scope;
pub mod permission;
pub mod quota;
pub mod root_key;
pub mod scope;

pub use api_key::{ApiKey, Environment, ValidationCode};
pub use key_format::{GeneratedKey, KeyId, KeyKind, MalformedKey, PresentedKey, Secret};
pub use legacy_key::LegacyDigest;
pub use limit::{Algorithm, Limit, LimitSource, Tiers};
pub use owner_scope::OwnerScope;
pub use permission::{Permission, PermissionSet};
pub use quota::{Quota, RefillInterval};
pub use root_key::RootKey;
pub use scope::{Scope, ScopeSet};

use chrono::{DateTime, SubsecRound, Utc};

/// The current time at microsecond precision, the precision PostgreSQL keeps,
/// so that a timestamp read back equals the one written (page tokens rely on it).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The most characters of a caller's input an error message quotes.
pub const MAX_QUOTED_CHARS: usize = 40;

/// A caller's input as an error message quotes it: at most
/// [`MAX_QUOTED_CHARS`] characters (then `…`), any key in it redacted, so
/// that a message never grows with the input nor repeats a secret.
pub fn quote(raw: &str) -> String {
    let shown = key_format::recordable(raw, MAX_QUOTED_CHARS);
    if raw.chars().nth(MAX_QUOTED_CHARS).is_some() {
        format!("{shown:?}…")
    } else {
        format!("{shown:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_input_is_bounded_and_marked_when_cut() {
        assert_eq!(quote("posts:read"), "\"posts:read\"");
        let long = "x".repeat(100_000);
        let quoted = quote(&long);
        assert_eq!(quoted, format!("{:?}…", "x".repeat(MAX_QUOTED_CHARS)));
        let key = GeneratedKey::generate(KeyKind::Live).into_full_key();
        assert!(!quote(&key).contains(&key[30..40]), "{}", quote(&key));
    }
}
