//! The bodies of the fuzz targets in `fuzz/` (`cargo +nightly fuzz run
//! <target>`), here so that a stable test replays each target's committed
//! corpus (`fuzz/corpus/<target>/*`) through the very same code: CI runs the
//! replay, not the fuzzer. Each takes arbitrary bytes, runs the code that
//! meets hostile input first, and panics only on a bug: a panic, or a broken
//! law (a parsed key that prints differently, a scope that stops covering
//! itself, a settings file that makes `describe` print a password).

use std::path::PathBuf;

use prost::Message;

use crate::config::Settings;
use crate::domain::key_format::{self, MAX_PRESENTED_KEY_LEN};
use crate::domain::{LegacyDigest, PresentedKey, Scope, ScopeSet, Tiers, key_settings};
use crate::envoy::ratelimit_config::RateLimitConfig;
use crate::grpc::pb;

/// A target's body: arbitrary bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// The targets, by the names `fuzz/fuzz_targets/*.rs` and the corpus
/// directories use.
pub const TARGETS: [(&str, Target); 4] = [
    ("key_parser", key_parser),
    ("scopes", scopes),
    ("config", config),
    ("requests", requests),
];

/// `PresentedKey::parse` (what Validate and the root-key gate run on every
/// presented string), the legacy-key guard and digest, and the redaction of
/// recorded strings.
pub fn key_parser(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    match PresentedKey::parse(raw) {
        Ok(key) => {
            assert!(raw.len() <= MAX_PRESENTED_KEY_LEN);
            assert!(raw.starts_with(key.kind.prefix()), "{raw:?}");
            assert!(raw.contains(key.id.as_str()));
            let recorded = key_format::recordable(raw, 1_000);
            let secret = std::str::from_utf8(key.secret.expose()).expect("base62");
            assert!(!recorded.contains(secret), "a secret survived: {recorded}");
        }
        Err(why) => {
            if let Some(digest) = LegacyDigest::of_presented(raw, why) {
                assert!(digest == LegacyDigest::of(raw));
            }
        }
    }
    let quoted = crate::domain::quote(raw);
    assert!(quoted.chars().count() <= 3 * 1_000);
    if let Some(digest) = LegacyDigest::parse_hex(raw) {
        assert_eq!(
            digest.to_hex(),
            raw.to_ascii_lowercase(),
            "a digest is 64 hexadecimal digits and nothing else"
        );
    }
}

/// The scope grammar (each line of the input is one scope) and the matching
/// laws between every two that parse.
pub fn scopes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let _ = key_settings::parse_granted_scopes(&lines);
    let parsed: Vec<Scope> = lines
        .iter()
        .filter_map(|line| Scope::parse(line).ok())
        .take(16)
        .collect();
    for scope in &parsed {
        assert_eq!(
            Scope::parse(&scope.to_string()).as_ref(),
            Ok(scope),
            "prints as it parses"
        );
        assert!(scope.covers(scope), "{scope} covers itself");
        assert!(Scope::everything().covers(scope));
        let (resource, action) = scope.parts();
        for wider in [format!("*:{action}"), format!("{resource}:*")] {
            let wider = Scope::parse(&wider).expect("a wildcard of a scope parses");
            for other in &parsed {
                if scope.covers(other) {
                    assert!(wider.covers(other), "{wider} covers what {scope} covers");
                }
            }
        }
    }
    let set = ScopeSet::new(parsed.clone());
    for scope in &parsed {
        assert!(set.grants(scope));
    }
    assert_eq!(set.first_missing(&parsed), None);
}

/// The configuration loaders: the input as the TOML settings file (then the
/// checks `apikeyd config check` runs, and `describe`, which must never
/// print a database or Redis password), and as an envoyproxy/ratelimit YAML
/// file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mut settings) = Settings::from_toml(text) {
        // Files named in the input are not read: a fuzzer must not open
        // /dev/zero. Their loaders are fuzzed below, from the input itself.
        settings.envoy.ratelimit_config = None;
        settings.leak_report_keys = None;
        let _ = settings.problems();
        let _ = settings.limits.tiers();
        let _ = settings.argon2.budget();
        let _ = settings.limits.usage_retention();
        let _ = settings.describe();
        // `describe` prints each URL of a list through `redact_url`: what it
        // prints must parse to a URL whose password and secret query
        // parameters are `***` (or be the placeholder for a URL that does
        // not parse).
        for url in [&settings.database.url, &settings.redis.url]
            .into_iter()
            .flatten()
        {
            for part in url.expose().split(',').map(str::trim) {
                let redacted = crate::config::redact_url(part);
                let Ok(shown) = url::Url::parse(&redacted) else {
                    assert_eq!(redacted, "<unparseable URL>", "{part:?}");
                    continue;
                };
                assert!(
                    matches!(shown.password(), None | Some("***")),
                    "a password shown: {redacted}"
                );
                for (name, value) in shown.query_pairs() {
                    if name.eq_ignore_ascii_case("password")
                        || name.eq_ignore_ascii_case("sslpassword")
                    {
                        assert_eq!(value, "***", "a password shown: {redacted}");
                    }
                }
            }
        }
    }
    let _ = RateLimitConfig::parse(&[(PathBuf::from("fuzz.yaml"), text.to_owned())]);
}

/// Request validation: the first byte picks the message (CreateKey,
/// UpdateKey, CheckRateLimit), the rest is decoded with prost as the gRPC
/// layer decodes it, then checked by the functions the services call.
pub fn requests(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let tiers = Tiers::new(crate::domain::limit::seed_tiers(), "free".to_owned())
        .expect("the seed tiers are valid");
    match which % 3 {
        0 => {
            if let Ok(request) = pb::CreateKeyRequest::decode(body) {
                if let Ok(new) = crate::grpc::parse_create(request, &tiers) {
                    assert!(!new.owner_id.is_empty());
                }
            }
        }
        1 => {
            if let Ok(request) = pb::UpdateKeyRequest::decode(body) {
                let _ = crate::grpc::parse_update(request, &tiers);
            }
        }
        _ => {
            if let Ok(request) = pb::CheckRateLimitRequest::decode(body) {
                if let Ok((_, limit, cost)) = crate::grpc::parse_check(&request) {
                    assert!((1..=limit.limit).contains(&cost));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What CI runs: every committed corpus input through its target.
    #[test]
    fn the_committed_corpus_replays_without_a_failure() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let mut inputs = 0;
            for entry in std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("the corpus {} reads: {e}", dir.display()))
            {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name} fails on {}", path.display());
                inputs += 1;
            }
            println!("{name}: {inputs} corpus inputs replayed");
            assert!(inputs > 0, "the corpus of {name} is empty");
        }
    }
}
