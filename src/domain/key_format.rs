//! The wire format of a key, and the only code that makes or reads one.
//!
//! ```text
//! sk_live_0123456789abcdef_<43 base62 secret chars><6 base62 checksum chars>
//! └─kind─┘└──── key id ───┘ └──────────────── 256-bit secret ─┘└─ CRC32 ──┘
//! ```
//!
//! The key id is public: it is how Validate finds the row with one indexed
//! lookup. The secret carries 43 × log2(62) ≈ 256 bits from the operating
//! system's CSPRNG and is stored only as an argon2id hash. The checksum (CRC32
//! of everything before it, as GitHub's tokens carry) lets Validate reject a
//! mistyped or made-up key with no storage I/O, and lets a secret scanner
//! recognise our keys with [`KEY_PATTERN`].

use std::fmt;

use rand_core::{OsRng, RngCore};

/// Characters of the key id.
pub const KEY_ID_LEN: usize = 16;
/// Characters of the secret: 43 base62 characters hold 256.03 bits.
pub const SECRET_LEN: usize = 43;
/// Characters of the checksum: 62^6 > 2^32, so any CRC32 fits.
pub const CHECKSUM_LEN: usize = 6;
/// The longest key any caller may present (longer input is rejected unread).
pub const MAX_PRESENTED_KEY_LEN: usize = 512;

/// A regular expression that matches every key apikeyd issues and little else.
pub const KEY_PATTERN: &str = r"\b(?:sk_live|sk_test|rk)_[0-9A-Za-z]{16}_[0-9A-Za-z]{49}\b";
/// [`KEY_PATTERN`] without its word boundaries, for redaction: a key glued
/// to other characters (`?token=xsk_live_…`) is still a key.
const KEY_BODY_PATTERN: &str = r"(?:sk_live|sk_test|rk)_[0-9A-Za-z]{16}_[0-9A-Za-z]{49}";
/// The longest key: a root key's body after the longest prefix.
const MAX_KEY_CHARS: usize = 8 + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;
/// What replaces a key's secret and checksum in anything recorded.
pub const REDACTED: &str = "[REDACTED]";

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// What a key is for; it decides the key's leading characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// An API key for production traffic.
    Live,
    /// An API key for test traffic.
    Test,
    /// A root key: authorises calls to the management API.
    Root,
}

impl KeyKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            KeyKind::Live => "sk_live_",
            KeyKind::Test => "sk_test_",
            KeyKind::Root => "rk_",
        }
    }

    fn from_key(key: &str) -> Option<(KeyKind, &str)> {
        [KeyKind::Live, KeyKind::Test, KeyKind::Root]
            .into_iter()
            .find_map(|kind| key.strip_prefix(kind.prefix()).map(|rest| (kind, rest)))
    }
}

/// The public identifier of a key, embedded in the key and used as its row id.
/// Its base62 characters are held inline: an id is parsed on every Validate
/// and held by every cached key, and a heap copy of 16 bytes costs more than
/// the bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    pub fn generate() -> Self {
        KeyId(random_base62())
    }

    /// Accepts exactly what [`KeyId::generate`] makes, so that an id taken from
    /// a request can never smuggle anything else into a query or a log line.
    pub fn parse(raw: &str) -> Option<KeyId> {
        let bytes: [u8; KEY_ID_LEN] = raw.as_bytes().try_into().ok()?;
        bytes.iter().all(|&b| is_base62(b)).then_some(KeyId(bytes))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a key id is base62")
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The secret part of a key. It has no `Display`, and its `Debug` prints
/// nothing of it, so it cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a secret is base62")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A newly minted key. `full` is handed to the caller once and then dropped.
pub struct GeneratedKey {
    pub kind: KeyKind,
    pub id: KeyId,
    pub secret: Secret,
    full: String,
}

impl GeneratedKey {
    pub fn generate(kind: KeyKind) -> Self {
        let id = KeyId::generate();
        let secret = Secret(random_base62());
        let full = full_key(kind, &id, &secret);
        GeneratedKey {
            kind,
            id,
            secret,
            full,
        }
    }

    /// The whole key, for the one response that shows it.
    pub fn into_full_key(self) -> String {
        self.full
    }

    pub fn display_prefix(&self) -> String {
        display_prefix(self.kind, &self.id)
    }
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The printed key: kind, id, secret, and the checksum of all three.
fn full_key(kind: KeyKind, id: &KeyId, secret: &Secret) -> String {
    let mut full = format!("{}{}_{}", kind.prefix(), id.as_str(), secret.as_str());
    let checksum = checksum(&full);
    full.push_str(std::str::from_utf8(&checksum).expect("base62 digits are ASCII"));
    full
}

/// The non-secret start of a key, shown in listings.
pub fn display_prefix(kind: KeyKind, id: &KeyId) -> String {
    format!("{}{}", kind.prefix(), id.as_str())
}

/// Why a presented string is not a key apikeyd could have issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKey {
    #[error("the key is empty")]
    Empty,
    #[error("the key is longer than {MAX_PRESENTED_KEY_LEN} characters")]
    TooLong,
    #[error("the key does not start with sk_live_, sk_test_ or rk_")]
    UnknownPrefix,
    #[error("the key has the wrong length or characters")]
    BadShape,
    #[error("the key's checksum does not match: it was mistyped or made up")]
    BadChecksum,
}

/// A key as a client presented it, after its format and checksum were checked.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey {
    pub kind: KeyKind,
    pub id: KeyId,
    pub secret: Secret,
}

impl PresentedKey {
    /// Checks shape and checksum only: no I/O, so junk costs next to nothing.
    pub fn parse(raw: &str) -> Result<PresentedKey, MalformedKey> {
        if raw.is_empty() {
            return Err(MalformedKey::Empty);
        }
        if raw.len() > MAX_PRESENTED_KEY_LEN {
            return Err(MalformedKey::TooLong);
        }
        let (kind, rest) = KeyKind::from_key(raw).ok_or(MalformedKey::UnknownPrefix)?;
        let body_len = KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;
        if rest.len() != body_len
            || rest.as_bytes()[KEY_ID_LEN] != b'_'
            || !rest
                .bytes()
                .enumerate()
                .all(|(i, b)| i == KEY_ID_LEN || is_base62(b))
        {
            return Err(MalformedKey::BadShape);
        }
        let (signed, presented_checksum) = raw.split_at(raw.len() - CHECKSUM_LEN);
        if checksum(signed) != presented_checksum.as_bytes() {
            return Err(MalformedKey::BadChecksum);
        }
        let body = rest.as_bytes();
        let id = KeyId(
            body[..KEY_ID_LEN]
                .try_into()
                .expect("the shape was checked"),
        );
        let secret = Secret(
            body[KEY_ID_LEN + 1..KEY_ID_LEN + 1 + SECRET_LEN]
                .try_into()
                .expect("the shape was checked"),
        );
        Ok(PresentedKey { kind, id, secret })
    }
}

impl fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What may be stored of a string a caller sent (a request's endpoint or user
/// agent, a field in the audit trail): at most `max_chars` characters, with
/// the secret of every apikeyd key in it replaced by [`REDACTED`] (its kind
/// and id, which are public, stay), and every NUL character replaced by
/// U+FFFD (PostgreSQL's text cannot hold one, and a refused call's audit
/// event must still be written). Only the first `max_chars` characters,
/// plus room for one key across the cut, are ever scanned.
pub fn recordable(raw: &str, max_chars: usize) -> String {
    static KEYS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::RegexBuilder::new(KEY_BODY_PATTERN)
            .unicode(false)
            .build()
            .expect("the key pattern compiles")
    });
    let scanned = truncate(raw, max_chars.saturating_add(MAX_KEY_CHARS));
    // Every key holds `_` (after its prefix): most strings hold none, and
    // are spared the scan.
    let redacted = if scanned.as_bytes().contains(&b'_') {
        KEYS.replace_all(scanned, |found: &regex::Captures<'_>| {
            let key = &found[0];
            let public = key.len() - SECRET_LEN - CHECKSUM_LEN;
            format!("{}{REDACTED}", &key[..public])
        })
    } else {
        std::borrow::Cow::Borrowed(scanned)
    };
    let kept = truncate(&redacted, max_chars);
    if kept.as_bytes().contains(&0) {
        kept.replace('\0', "\u{fffd}")
    } else {
        kept.to_owned()
    }
}

/// [`recordable`] of a string the caller owns: kept as it is, without a
/// copy, when it is short enough and holds neither a key nor a NUL (Validate
/// records four such strings on every call).
pub fn into_recordable(raw: String, max_chars: usize) -> String {
    let bytes = raw.as_bytes();
    if bytes.len() <= max_chars && !bytes.contains(&b'_') && !bytes.contains(&0) {
        raw
    } else {
        recordable(&raw, max_chars)
    }
}

/// The first `max_chars` characters of `raw`.
fn truncate(raw: &str, max_chars: usize) -> &str {
    // No longer in bytes than the bound means within it in characters: the
    // common case (this runs eight times per Validate) skips the count.
    if raw.len() <= max_chars {
        return raw;
    }
    match raw.char_indices().nth(max_chars) {
        Some((end, _)) => &raw[..end],
        None => raw,
    }
}

fn is_base62(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// CRC32 of `signed`, as six base62 digits, most significant first.
fn checksum(signed: &str) -> [u8; CHECKSUM_LEN] {
    let mut value = u64::from(crc32fast::hash(signed.as_bytes()));
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits
}

/// Uniform base62 characters from the OS CSPRNG. Bytes of 248 and above are
/// rejected (248 = 4 × 62), so that every character is equally likely.
fn random_base62<const LEN: usize>() -> [u8; LEN] {
    let mut out = [0u8; LEN];
    let mut filled = 0;
    let mut buf = [0u8; 64];
    while filled < LEN {
        OsRng.fill_bytes(&mut buf);
        for &b in buf.iter().filter(|&&b| b < 248) {
            if filled == LEN {
                break;
            }
            out[filled] = BASE62[usize::from(b % 62)];
            filled += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_to_their_parts() {
        for kind in [KeyKind::Live, KeyKind::Test, KeyKind::Root] {
            let generated = GeneratedKey::generate(kind);
            let (id, secret) = (generated.id.clone(), generated.secret.clone());
            let parsed = PresentedKey::parse(&generated.into_full_key()).unwrap();
            assert_eq!(parsed.kind, kind);
            assert_eq!(parsed.id, id);
            assert_eq!(parsed.secret, secret);
        }
    }

    #[test]
    fn live_and_test_keys_carry_their_environment_prefix() {
        assert!(
            GeneratedKey::generate(KeyKind::Live)
                .into_full_key()
                .starts_with("sk_live_")
        );
        assert!(
            GeneratedKey::generate(KeyKind::Test)
                .into_full_key()
                .starts_with("sk_test_")
        );
        assert!(
            GeneratedKey::generate(KeyKind::Root)
                .into_full_key()
                .starts_with("rk_")
        );
    }

    #[test]
    fn a_single_mistyped_character_fails_the_checksum() {
        let key = GeneratedKey::generate(KeyKind::Live).into_full_key();
        let position = "sk_live_".len() + KEY_ID_LEN + 5;
        let mut typo = key.clone().into_bytes();
        typo[position] = if typo[position] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(PresentedKey::parse(&typo), Err(MalformedKey::BadChecksum));
    }

    #[test]
    fn junk_is_rejected_by_shape_before_any_lookup() {
        assert_eq!(PresentedKey::parse(""), Err(MalformedKey::Empty));
        assert_eq!(
            PresentedKey::parse("hello"),
            Err(MalformedKey::UnknownPrefix)
        );
        assert_eq!(
            PresentedKey::parse("sk_live_short"),
            Err(MalformedKey::BadShape)
        );
        let long = "x".repeat(MAX_PRESENTED_KEY_LEN + 1);
        assert_eq!(PresentedKey::parse(&long), Err(MalformedKey::TooLong));
        let key = GeneratedKey::generate(KeyKind::Live).into_full_key();
        let no_separator = format!("{}x{}", &key[..24], &key[25..]);
        assert_eq!(
            PresentedKey::parse(&no_separator),
            Err(MalformedKey::BadShape)
        );
    }

    #[test]
    fn the_documented_pattern_describes_the_format() {
        let key = GeneratedKey::generate(KeyKind::Test).into_full_key();
        let body = key.strip_prefix("sk_test_").unwrap();
        assert_eq!(body.len(), 16 + 1 + 49);
        assert!(KEY_PATTERN.contains("{16}_[0-9A-Za-z]{49}"));
        assert_eq!(SECRET_LEN + CHECKSUM_LEN, 49);
    }

    #[test]
    fn the_scanner_pattern_finds_every_issued_key_whole_and_nothing_else_obvious() {
        let pattern = regex::RegexBuilder::new(KEY_PATTERN)
            .unicode(false)
            .build()
            .unwrap();
        for kind in [KeyKind::Live, KeyKind::Test, KeyKind::Root] {
            for _ in 0..200 {
                let key = GeneratedKey::generate(kind).into_full_key();
                for text in [
                    key.clone(),
                    format!("API_KEY={key}\n"),
                    format!("\"{key}\","),
                    format!("?token={key}&x=1"),
                ] {
                    let found = pattern.find(&text).map(|m| m.as_str());
                    assert_eq!(found, Some(key.as_str()), "{text}");
                }
            }
        }
        let key = GeneratedKey::generate(KeyKind::Live).into_full_key();
        let near_misses = [
            key[..key.len() - 1].to_owned(),
            format!("{key}0"),
            format!("x{key}"),
            key.replacen("sk_live_", "sk_prod_", 1),
            key.replacen("sk_live_", "SK_LIVE_", 1),
            format!("{}-{}", &key[..24], &key[25..]),
            format!("sk_live_{}", "a".repeat(66)),
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a".to_owned(),
            "AKIAIOSFODNN7EXAMPLE".to_owned(),
            "sk_live_0123456789abcdef".to_owned(),
        ];
        for text in near_misses {
            assert!(!pattern.is_match(&text), "{text}");
        }
    }

    #[test]
    fn the_readme_shows_the_scanner_pattern_as_the_code_has_it() {
        let shown: Vec<&str> = include_str!("../../README.md")
            .lines()
            .filter(|line| line.contains("(?:sk_live|"))
            .map(str::trim)
            .collect();

        assert!(!shown.is_empty(), "the README shows no regex for scanners");
        assert!(shown.iter().all(|line| *line == KEY_PATTERN), "{shown:?}");
    }

    #[test]
    fn secrets_carry_at_least_256_bits() {
        assert!(SECRET_LEN as f64 * 62f64.log2() >= 256.0);
    }

    #[test]
    fn checksum_is_fixed_width() {
        assert_eq!(&checksum(""), b"000000");
        assert_eq!(checksum("sk_live_x").len(), CHECKSUM_LEN);
        // u32::MAX needs all six digits.
        let mut value = u64::from(u32::MAX);
        let mut digits = 0;
        while value > 0 {
            value /= 62;
            digits += 1;
        }
        assert_eq!(digits, CHECKSUM_LEN);
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let generated = GeneratedKey::generate(KeyKind::Live);
        let secret = String::from_utf8(generated.secret.expose().to_vec()).unwrap();
        let full = generated.full.clone();
        let parsed = PresentedKey::parse(&full).unwrap();
        for printed in [format!("{generated:?}"), format!("{parsed:?}")] {
            assert!(!printed.contains(&secret), "{printed}");
        }
    }

    #[test]
    fn recorded_strings_lose_every_secret_but_keep_the_key_id() {
        let live = GeneratedKey::generate(KeyKind::Live);
        let id = live.id.clone();
        let live = live.into_full_key();
        let root = GeneratedKey::generate(KeyKind::Root).into_full_key();
        let raw = format!("/v1/things?api_key={live}&x=1 Bearer {root}, glued:x{live}");

        let recorded = recordable(&raw, 1000);

        assert!(!recorded.contains(&live[live.len() - 49..]), "{recorded}");
        assert!(!recorded.contains(&root[root.len() - 49..]), "{recorded}");
        assert!(
            recorded.contains(&format!("sk_live_{id}_{REDACTED}&x=1")),
            "{recorded}"
        );
        assert_eq!(recorded.matches(REDACTED).count(), 3, "{recorded}");
    }

    #[test]
    fn recorded_strings_hold_no_nul_character() {
        assert_eq!(recordable("nul\0owner", 100), "nul\u{fffd}owner");
    }

    #[test]
    fn a_key_across_the_cut_is_redacted_before_the_cut() {
        let key = GeneratedKey::generate(KeyKind::Test).into_full_key();
        let raw = format!("{}{key}", "é".repeat(20));

        let recorded = recordable(&raw, 60);

        assert!(recorded.chars().count() <= 60, "{recorded}");
        assert!(recorded.ends_with(REDACTED), "{recorded}");
        assert!(!recorded.contains(&key[30..50]), "{recorded}");
        assert!(recordable("short", 60) == "short");
    }

    #[test]
    fn an_owned_string_is_recorded_as_a_borrowed_one_is() {
        let key = GeneratedKey::generate(KeyKind::Live).into_full_key();
        let cases = [
            "/v1/posts".to_owned(),
            String::new(),
            "nul\0owner".to_owned(),
            format!("/v1/posts?api_key={key}"),
            "é".repeat(40),
            "x".repeat(300),
            "snake_case_but_no_key".to_owned(),
        ];
        for raw in cases {
            for max_chars in [0, 16, 30, 64, 256] {
                assert_eq!(
                    into_recordable(raw.clone(), max_chars),
                    recordable(&raw, max_chars),
                    "{raw:?} at {max_chars}"
                );
            }
        }
    }

    #[test]
    fn key_ids_accept_only_base62_of_the_right_length() {
        assert!(KeyId::parse("0123456789abcdef").is_some());
        assert!(KeyId::parse("0123456789abcde").is_none());
        assert!(KeyId::parse("0123456789abcde'").is_none());
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn kind() -> impl Strategy<Value = KeyKind> {
            prop_oneof![
                Just(KeyKind::Live),
                Just(KeyKind::Test),
                Just(KeyKind::Root)
            ]
        }

        /// A key as `GeneratedKey` prints one, from any id and secret.
        fn key() -> impl Strategy<Value = (KeyKind, KeyId, Secret, String)> {
            (kind(), "[0-9A-Za-z]{16}", "[0-9A-Za-z]{43}").prop_map(|(kind, id, secret)| {
                let id = KeyId(id.as_bytes().try_into().unwrap());
                let secret = Secret(secret.as_bytes().try_into().unwrap());
                let full = full_key(kind, &id, &secret);
                (kind, id, secret, full)
            })
        }

        proptest! {
            #[test]
            fn every_printed_key_parses_back_to_its_parts((kind, id, secret, full) in key()) {
                let parsed = PresentedKey::parse(&full).unwrap();
                prop_assert_eq!(parsed.kind, kind);
                prop_assert_eq!(&parsed.id, &id);
                prop_assert!(parsed.secret == secret);
                let pattern = regex::RegexBuilder::new(KEY_PATTERN).unicode(false).build().unwrap();
                prop_assert_eq!(pattern.find(&full).map(|m| m.as_str()), Some(full.as_str()));
            }

            #[test]
            fn any_single_character_change_is_refused(
                (_, _, _, full) in key(),
                at in any::<prop::sample::Index>(),
                replacement in any::<char>(),
            ) {
                let mut chars: Vec<char> = full.chars().collect();
                let at = at.index(chars.len());
                prop_assume!(chars[at] != replacement);
                chars[at] = replacement;
                let changed: String = chars.into_iter().collect();
                prop_assert!(PresentedKey::parse(&changed).is_err(), "{} was accepted", changed);
            }

            #[test]
            fn whatever_parses_prints_back_as_it_came(raw in "(sk_live_|sk_test_|rk_)?[0-9A-Za-z_]{0,80}|\\PC{0,100}") {
                if let Ok(parsed) = PresentedKey::parse(&raw) {
                    prop_assert_eq!(full_key(parsed.kind, &parsed.id, &parsed.secret), raw);
                }
            }

            #[test]
            fn recorded_text_never_holds_a_keys_secret(
                (_, _, secret, full) in key(),
                before in "\\PC{0,40}",
                after in "\\PC{0,40}",
                max_chars in 0usize..200,
            ) {
                let text = format!("{before}{full}{after}");
                let recorded = recordable(&text, max_chars);
                prop_assert!(recorded.chars().count() <= max_chars);
                prop_assert!(!recorded.contains(secret.as_str()), "{}", recorded);
            }
        }
    }
}
