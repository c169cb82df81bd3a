//! GitHub's secret-scanning partner programme, its side of the wire
//! (<https://docs.github.com/en/code-security/secret-scanning/secret-scanning-partnership-program/secret-scanning-partner-program>):
//! the signing keys in the format GitHub publishes them
//! (`https://api.github.com/meta/public_keys/secret_scanning`), the check of
//! a report's signature, and the report and answer bodies.
//!
//! A report is signed with ECDSA over NIST P-256 and SHA-256 of the raw body
//! (never a re-serialised one), the signature in base64 (ASN.1 DER) in
//! `Github-Public-Key-Signature` and the signing key's `key_identifier` in
//! `Github-Public-Key-Identifier`. Every key the file lists is accepted, not
//! only the one marked `is_current`: during a rotation GitHub signs with
//! either.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::{Deserialize, Serialize};

use super::{LeakVerdict, ReportedToken};

/// The header naming the key a report is signed with.
pub const KEY_IDENTIFIER_HEADER: &str = "github-public-key-identifier";
/// The header holding a report's signature.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// GitHub's signing keys, by identifier.
#[derive(Debug)]
pub struct SigningKeys {
    by_identifier: HashMap<String, VerifyingKey>,
}

/// The file as GitHub publishes it; other fields (`is_current`) are read
/// past.
#[derive(Deserialize)]
struct PublishedKeys {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    /// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    key: String,
}

/// Why a signing-keys file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not GitHub's signing-keys JSON ({{\"public_keys\": [{{\"key_identifier\", \"key\", \"is_current\"}}]}}): {source}"
    )]
    NotKeysJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} lists no keys, so no report could ever be accepted")]
    NoKeys { path: PathBuf },
    #[error("{path}: key {identifier:?} is not a PEM P-256 public key: {reason}")]
    NotP256 {
        path: PathBuf,
        identifier: String,
        reason: String,
    },
    #[error("{path}: key identifier {identifier:?} is listed twice")]
    DuplicateIdentifier { path: PathBuf, identifier: String },
}

/// Why a report's signature is refused (401, and nothing changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureRefusal {
    #[error(
        "the report is not signed: Github-Public-Key-Identifier and Github-Public-Key-Signature are required"
    )]
    Unsigned,
    #[error(
        "Github-Public-Key-Identifier names no key in the configured signing keys (refresh the --leak-report-keys file from GitHub if it rotated its keys)"
    )]
    UnknownKey,
    #[error("Github-Public-Key-Signature is not a base64 ASN.1 DER ECDSA signature")]
    MalformedSignature,
    #[error("the signature does not match the body and the named key")]
    Mismatch,
}

impl SignatureRefusal {
    /// The metric label of the refusal.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureRefusal::Unsigned => "unsigned",
            SignatureRefusal::UnknownKey => "unknown_key",
            SignatureRefusal::MalformedSignature => "malformed_signature",
            SignatureRefusal::Mismatch => "bad_signature",
        }
    }
}

impl SigningKeys {
    /// Reads GitHub's keys file: every key must be a P-256 public key in PEM.
    pub fn parse(path: &Path, text: &str) -> Result<SigningKeys, KeysFileError> {
        let published: PublishedKeys =
            serde_json::from_str(text).map_err(|source| KeysFileError::NotKeysJson {
                path: path.to_owned(),
                source,
            })?;
        if published.public_keys.is_empty() {
            return Err(KeysFileError::NoKeys {
                path: path.to_owned(),
            });
        }
        let mut by_identifier = HashMap::with_capacity(published.public_keys.len());
        for PublishedKey {
            key_identifier,
            key,
        } in published.public_keys
        {
            let verifying =
                VerifyingKey::from_public_key_pem(&key).map_err(|e| KeysFileError::NotP256 {
                    path: path.to_owned(),
                    identifier: key_identifier.clone(),
                    reason: e.to_string(),
                })?;
            if by_identifier
                .insert(key_identifier.clone(), verifying)
                .is_some()
            {
                return Err(KeysFileError::DuplicateIdentifier {
                    path: path.to_owned(),
                    identifier: key_identifier,
                });
            }
        }
        Ok(SigningKeys { by_identifier })
    }

    /// Whether `body` was signed by the key named `identifier`, the
    /// signature being `signature` (base64 of ASN.1 DER).
    pub fn verify(
        &self,
        identifier: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<(), SignatureRefusal> {
        let key = self
            .by_identifier
            .get(identifier)
            .ok_or(SignatureRefusal::UnknownKey)?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| SignatureRefusal::MalformedSignature)?;
        let signature =
            DerSignature::from_bytes(&der).map_err(|_| SignatureRefusal::MalformedSignature)?;
        key.verify(body, &signature)
            .map_err(|_| SignatureRefusal::Mismatch)
    }

    pub fn len(&self) -> usize {
        self.by_identifier.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_identifier.is_empty()
    }
}

/// The signing keys from a file, read again when the file changes, so that
/// an operator refreshing it from GitHub (a rotation, a withdrawn key) needs
/// no restart. A changed file that does not read is logged and the keys
/// read last stay in force.
pub struct SigningKeySource {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

struct Loaded {
    /// The file's modification time and length when `keys` were read.
    stamp: Option<(SystemTime, u64)>,
    keys: Arc<SigningKeys>,
}

impl SigningKeySource {
    /// Reads the file once; a file that does not read is an error (the
    /// server refuses to start rather than serve an endpoint that refuses
    /// every report).
    pub fn load(path: &Path) -> Result<SigningKeySource, KeysFileError> {
        let stamp = std::fs::metadata(path).ok().and_then(|m| stamp_of(&m));
        let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        let keys = SigningKeys::parse(path, &text)?;
        Ok(SigningKeySource {
            path: path.to_owned(),
            loaded: RwLock::new(Loaded {
                stamp,
                keys: Arc::new(keys),
            }),
        })
    }

    /// The keys in force: the file's, read again if it changed since.
    pub async fn current(&self) -> Arc<SigningKeys> {
        let stamp = tokio::fs::metadata(&self.path)
            .await
            .ok()
            .and_then(|m| stamp_of(&m));
        {
            let loaded = self.loaded.read().expect("the keys lock is never poisoned");
            if stamp.is_none() || loaded.stamp == stamp {
                return loaded.keys.clone();
            }
        }
        let reread = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => SigningKeys::parse(&self.path, &text),
            Err(source) => Err(KeysFileError::Unreadable {
                path: self.path.clone(),
                source,
            }),
        };
        let mut loaded = self
            .loaded
            .write()
            .expect("the keys lock is never poisoned");
        loaded.stamp = stamp;
        match reread {
            Ok(keys) => {
                tracing::info!(path = %self.path.display(), keys = keys.len(), "read GitHub's signing keys again: the file changed");
                loaded.keys = Arc::new(keys);
            }
            Err(e) => {
                tracing::error!(error = %e, "the changed leak-report keys file does not read; the keys read before stay in force");
            }
        }
        loaded.keys.clone()
    }
}

fn stamp_of(metadata: &std::fs::Metadata) -> Option<(SystemTime, u64)> {
    Some((metadata.modified().ok()?, metadata.len()))
}

/// One match in a report body: `[{"token", "type", "url", "source"}]`.
/// `url` may be empty; fields GitHub adds later are read past.
#[derive(Deserialize)]
struct ReportedMatch {
    token: String,
    #[serde(rename = "type")]
    token_type: Option<String>,
    url: Option<String>,
    source: Option<String>,
}

/// The tokens of a report body (already verified: its signature covers it).
pub fn parse_report(body: &[u8]) -> Result<Vec<ReportedToken>, serde_json::Error> {
    let matches: Vec<ReportedMatch> = serde_json::from_slice(body)?;
    Ok(matches
        .into_iter()
        .map(|m| ReportedToken {
            token: m.token,
            token_type: m.token_type.unwrap_or_default(),
            url: m.url.unwrap_or_default(),
            source: m.source.unwrap_or_default(),
        })
        .collect())
}

/// One element of the answer: the token as GitHub sent it (its protocol
/// identifies a match by it; our logs and audit trail never hold it), its
/// type, and the label.
#[derive(Serialize)]
struct MatchLabel<'a> {
    token_raw: &'a str,
    token_type: &'a str,
    label: &'static str,
}

/// The answer body: one label per reported token, in the order reported.
pub fn answer(tokens: &[ReportedToken], verdicts: &[LeakVerdict]) -> Vec<u8> {
    let labels: Vec<MatchLabel<'_>> = tokens
        .iter()
        .zip(verdicts)
        .map(|(token, verdict)| MatchLabel {
            token_raw: &token.token,
            token_type: &token.token_type,
            label: verdict.label(),
        })
        .collect();
    serde_json::to_vec(&labels).expect("labels serialise")
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{Signature, SigningKey};
    use p256::elliptic_curve::scalar::IsHigh;
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    use rand_core::OsRng;

    use super::*;

    fn keys_file(keys: &[(&str, &SigningKey)]) -> String {
        let listed: Vec<serde_json::Value> = keys
            .iter()
            .map(|(identifier, signing)| {
                serde_json::json!({
                    "key_identifier": identifier,
                    "key": signing.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                    "is_current": true,
                })
            })
            .collect();
        serde_json::json!({ "public_keys": listed }).to_string()
    }

    fn sign(key: &SigningKey, body: &[u8]) -> String {
        let signature: Signature = key.sign(body);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }

    fn parsed(keys: &[(&str, &SigningKey)]) -> SigningKeys {
        SigningKeys::parse(Path::new("keys.json"), &keys_file(keys)).unwrap()
    }

    #[test]
    fn a_body_signed_by_a_listed_key_verifies() {
        let (old, new) = (
            SigningKey::random(&mut OsRng),
            SigningKey::random(&mut OsRng),
        );
        let keys = parsed(&[("old", &old), ("new", &new)]);
        let body = br#"[{"token":"x","type":"apikeyd","url":"","source":"content"}]"#;

        assert_eq!(keys.verify("new", &sign(&new, body), body), Ok(()));
        assert_eq!(keys.verify("old", &sign(&old, body), body), Ok(()));
    }

    #[test]
    fn anything_but_the_named_keys_signature_over_the_same_bytes_is_refused() {
        let (ours, other) = (
            SigningKey::random(&mut OsRng),
            SigningKey::random(&mut OsRng),
        );
        let keys = parsed(&[("k1", &ours)]);
        let body = br#"[{"token":"x","type":"t"}]"#;
        let good = sign(&ours, body);

        assert_eq!(
            keys.verify("k2", &good, body),
            Err(SignatureRefusal::UnknownKey)
        );
        assert_eq!(
            keys.verify("k1", &sign(&other, body), body),
            Err(SignatureRefusal::Mismatch)
        );
        assert_eq!(
            keys.verify("k1", &good, br#"[{"token":"y","type":"t"}]"#),
            Err(SignatureRefusal::Mismatch)
        );
        assert_eq!(
            keys.verify("k1", &good, br#"[{"token": "x","type":"t"}]"#),
            Err(SignatureRefusal::Mismatch),
            "the raw bytes are signed, not the JSON they mean"
        );
        assert_eq!(
            keys.verify("k1", "not base64!", body),
            Err(SignatureRefusal::MalformedSignature)
        );
        assert_eq!(
            keys.verify("k1", "AAAA", body),
            Err(SignatureRefusal::MalformedSignature)
        );
    }

    #[test]
    fn a_high_s_signature_verifies_as_githubs_signers_may_produce_one() {
        let key = SigningKey::random(&mut OsRng);
        let keys = parsed(&[("k", &key)]);
        let body = b"[]";
        let signature: Signature = key.sign(body);
        let (r, s) = signature.split_scalars();
        let flipped = Signature::from_scalars(r, -*s).unwrap();
        let encode = |signature: &Signature| {
            base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
        };

        assert_ne!(
            bool::from(signature.s().is_high()),
            bool::from(flipped.s().is_high()),
            "one of the two is the high-S form"
        );
        assert_eq!(keys.verify("k", &encode(&signature), body), Ok(()));
        assert_eq!(keys.verify("k", &encode(&flipped), body), Ok(()));
    }

    #[test]
    fn a_keys_file_that_cannot_serve_is_refused_with_the_reason() {
        let path = Path::new("keys.json");
        let not_p256 = serde_json::json!({"public_keys": [{
            "key_identifier": "garbled",
            "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "is_current": true,
        }]});
        let key = SigningKey::random(&mut OsRng);
        let twice = keys_file(&[("k", &key), ("k", &key)]);

        let errors = [
            SigningKeys::parse(path, "[]").unwrap_err().to_string(),
            SigningKeys::parse(path, r#"{"public_keys": []}"#)
                .unwrap_err()
                .to_string(),
            SigningKeys::parse(path, &not_p256.to_string())
                .unwrap_err()
                .to_string(),
            SigningKeys::parse(path, &twice).unwrap_err().to_string(),
        ];

        assert!(
            errors[0].contains("is not GitHub's signing-keys JSON"),
            "{}",
            errors[0]
        );
        assert!(errors[1].contains("lists no keys"), "{}", errors[1]);
        assert!(
            errors[2].contains(r#"key "garbled" is not a PEM P-256 public key"#),
            "{}",
            errors[2]
        );
        assert!(errors[3].contains("listed twice"), "{}", errors[3]);
    }

    #[tokio::test]
    async fn a_rewritten_keys_file_is_read_again_and_a_broken_one_keeps_the_last_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let (first, second) = (
            SigningKey::random(&mut OsRng),
            SigningKey::random(&mut OsRng),
        );
        std::fs::write(&path, keys_file(&[("first", &first)])).unwrap();
        let source = SigningKeySource::load(&path).unwrap();
        let body = b"[]";

        std::fs::write(&path, keys_file(&[("second", &second), ("first2", &first)])).unwrap();
        let rotated = source.current().await;
        std::fs::write(&path, "{ not json").unwrap();
        let after_breakage = source.current().await;

        assert_eq!(rotated.verify("second", &sign(&second, body), body), Ok(()));
        assert_eq!(
            rotated.verify("first", &sign(&first, body), body),
            Err(SignatureRefusal::UnknownKey),
            "a key withdrawn from the file is no longer accepted"
        );
        assert_eq!(
            after_breakage.verify("second", &sign(&second, body), body),
            Ok(())
        );
    }

    #[test]
    fn a_report_reads_with_missing_or_null_fields_and_unknown_ones() {
        let body = br#"[
            {"token":"a","type":"apikeyd_api_key","url":"https://github.com/o/r/blob/x/f","source":"content"},
            {"token":"b","type":"apikeyd_api_key","url":null,"future_field":1},
            {"token":"c"}
        ]"#;

        let tokens = parse_report(body).unwrap();

        let fields: Vec<(&str, &str, &str, &str)> = tokens
            .iter()
            .map(|t| (&*t.token, &*t.token_type, &*t.url, &*t.source))
            .collect();
        assert_eq!(
            fields,
            [
                (
                    "a",
                    "apikeyd_api_key",
                    "https://github.com/o/r/blob/x/f",
                    "content"
                ),
                ("b", "apikeyd_api_key", "", ""),
                ("c", "", "", ""),
            ]
        );
        assert!(parse_report(br#"{"token":"a"}"#).is_err());
        assert!(parse_report(br#"[{"type":"no token"}]"#).is_err());
    }
}
