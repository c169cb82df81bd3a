//! Keys from another store: no embedded id, no checksum, known to us only by
//! the SHA-256 of the whole key (what that store kept, as the seed design
//! does for its `sk_live_` + 64 hex keys).
//!
//! A presented string that is not one of our keys is looked up by its
//! digest only when it could be a key of another store: 24 to 256
//! characters of a bearer token (RFC 6750's `b64token`: letters, digits and
//! `-._~+/=`), and not one of our own keys with a wrong checksum (that is a
//! typo, not a stranger). Anything else stays malformed with no lookup.

use std::fmt;

use sha2::{Digest, Sha256};

use super::key_format::MalformedKey;

/// The shortest string looked up as a key of another store.
pub const MIN_LEGACY_KEY_LEN: usize = 24;
/// The longest string looked up as a key of another store.
pub const MAX_LEGACY_KEY_LEN: usize = 256;

/// SHA-256 of a whole key from another store: how an imported key is found.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LegacyDigest([u8; 32]);

impl LegacyDigest {
    /// The digest to look up for a presented string that is not one of our
    /// keys (`why_not_ours`), or `None` when it could not be another store's
    /// key either.
    pub fn of_presented(raw: &str, why_not_ours: MalformedKey) -> Option<LegacyDigest> {
        let might_be_foreign = matches!(
            why_not_ours,
            MalformedKey::UnknownPrefix | MalformedKey::BadShape
        );
        (might_be_foreign && could_be_legacy_key(raw)).then(|| LegacyDigest::of(raw))
    }

    /// The digest of a key, as its store computed it.
    pub fn of(key: &str) -> LegacyDigest {
        LegacyDigest(Sha256::digest(key.as_bytes()).into())
    }

    /// Accepts 64 hexadecimal digits, in either case.
    pub fn parse_hex(raw: &str) -> Option<LegacyDigest> {
        // Checked first: `from_str_radix` alone would take "+f" for 0x0f.
        if raw.len() != 64 || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(raw.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(LegacyDigest(bytes))
    }

    /// Lowercase hex, as stored.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for LegacyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LegacyDigest({}…)", &self.to_hex()[..8])
    }
}

fn could_be_legacy_key(raw: &str) -> bool {
    (MIN_LEGACY_KEY_LEN..=MAX_LEGACY_KEY_LEN).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{GeneratedKey, KeyKind, PresentedKey};

    fn seed_key() -> String {
        format!("sk_live_{}", "0123456789abcdef".repeat(4))
    }

    fn presented(raw: &str) -> Option<LegacyDigest> {
        let why = PresentedKey::parse(raw).expect_err("not one of our keys");
        LegacyDigest::of_presented(raw, why)
    }

    #[test]
    fn a_seed_key_is_looked_up_by_the_digest_the_seed_stored() {
        // The seed stores `createHash('sha256').update(fullKey).digest('hex')`
        // (here from `printf %s <key> | sha256sum`).
        let digest = presented(&seed_key()).expect("a seed key could be imported");
        assert_eq!(
            digest.to_hex(),
            "7fb84b7a58fab81ffd496823edf26bb2a3d04279a94ed567ec798b2bc03c6038"
        );
    }

    #[test]
    fn the_digest_matches_a_known_sha256() {
        // printf 'abc' | sha256sum
        assert_eq!(
            LegacyDigest::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trips_in_either_case() {
        let digest = LegacyDigest::of(&seed_key());
        assert_eq!(LegacyDigest::parse_hex(&digest.to_hex()), Some(digest));
        assert_eq!(
            LegacyDigest::parse_hex(&digest.to_hex().to_uppercase()),
            Some(digest)
        );
        assert_eq!(LegacyDigest::parse_hex("abc"), None);
        assert_eq!(LegacyDigest::parse_hex(&"g".repeat(64)), None);
        assert_eq!(LegacyDigest::parse_hex(&"é".repeat(32)), None);
        // Found by the key_parser fuzz target: a sign is not a digit.
        assert_eq!(LegacyDigest::parse_hex(&"+f".repeat(32)), None);
        let signed = format!("{}+9{}", "0".repeat(24), "0".repeat(38));
        assert_eq!(LegacyDigest::parse_hex(&signed), None);
    }

    #[test]
    fn short_long_or_oddly_spelled_strings_are_not_looked_up() {
        assert_eq!(presented("sk_live_garbage"), None);
        assert_eq!(presented("sk_live_not-a-real-key"), None, "22 characters");
        assert_eq!(presented(&"a".repeat(MAX_LEGACY_KEY_LEN + 1)), None);
        assert_eq!(presented(&format!("{} with spaces", seed_key())), None);
        assert_eq!(presented(&format!("{}\"", seed_key())), None);
        assert!(presented(&"a".repeat(MIN_LEGACY_KEY_LEN)).is_some());
        assert!(presented("sk-proj-abc_DEF.ghi~jkl+mno/pqr==").is_some());
    }

    #[test]
    fn one_of_our_keys_with_a_typo_is_not_looked_up() {
        let key = GeneratedKey::generate(KeyKind::Live).into_full_key();
        let mut typo = key.into_bytes();
        let i = typo.len() - 10;
        typo[i] = if typo[i] == b'x' { b'y' } else { b'x' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(
            PresentedKey::parse(&typo).unwrap_err(),
            MalformedKey::BadChecksum
        );
        assert_eq!(presented(&typo), None);
    }

    #[test]
    fn debug_shows_only_the_start_of_the_digest() {
        let digest = LegacyDigest::of(&seed_key());
        let printed = format!("{digest:?}");
        assert!(printed.len() < 30, "{printed}");
        assert!(!printed.contains(&digest.to_hex()));
    }
}
