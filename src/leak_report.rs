//! Leaked-key reports: strings someone found where they should not be (a
//! public repository, through GitHub's secret scanning; a log or a paste,
//! through an internal scanner). Each one that is a key of ours, with its
//! own secret, is revoked at once and labelled a true positive; anything
//! else is a false positive. Answers come in the order reported.
//!
//! An API key is recognised the way Validate recognises it (format and
//! checksum, then the id's record and the secret against its hash, through
//! the same cache, memo and argon2 path; a key imported from another store
//! by its digest), a root key the way the management API does; so a
//! made-up token with a real key id revokes nothing. What a
//! reporter may revoke: GitHub, any key of ours (it is public now); a caller
//! of `ReportLeakedKeys`, the API keys of the owners its root key reaches
//! and the root keys it could revoke with RevokeRootKey. A key already
//! revoked is still a true positive: it is ours and it leaked, and the
//! report is recorded against it. Each true
//! positive leaves an audit event written in its revocation's transaction
//! (the report's URL, source and type; never the token), a log line and a
//! count in `apikeyd_leaked_keys_total`; the revocation reaches the other
//! replicas through the invalidation stream like any other.
//!
//! A report stops at the first storage error, which the caller receives
//! (the revocations made before it stand: a retried report revokes nothing
//! twice).

pub mod github;

use std::sync::Arc;

use crate::authority::KeyAuthority;
use crate::domain::audit::AuditEvent;
use crate::domain::{self, KeyId, KeyKind, Permission, PresentedKey, RootKey};
use crate::error::Result;
use crate::root_keys::RootKeys;

/// One reported string and what the reporter says about where it was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportedToken {
    /// The string found: possibly one of our keys, possibly anything.
    pub token: String,
    /// The reporter's name for the pattern that matched (GitHub's `type`).
    pub token_type: String,
    /// Where it was found (may be empty).
    pub url: String,
    /// What kind of place that is (GitHub's `source`: `content`, `commit`, …).
    pub source: String,
}

/// What a reported token turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeakVerdict {
    /// One of our keys (an API key or a root key, `key_id` its id), within
    /// the reporter's reach, with its own secret: revoked now, or already.
    TruePositive {
        key_id: KeyId,
        already_revoked: bool,
    },
    /// Not a key of ours, not with that secret, or not the reporter's to act on.
    FalsePositive,
}

impl LeakVerdict {
    /// The label GitHub's protocol uses.
    pub fn label(&self) -> &'static str {
        match self {
            LeakVerdict::TruePositive { .. } => "true_positive",
            LeakVerdict::FalsePositive => "false_positive",
        }
    }

    /// The `outcome` label of `apikeyd_leaked_keys_total`.
    fn outcome(&self) -> &'static str {
        match self {
            LeakVerdict::TruePositive {
                already_revoked: false,
                ..
            } => "revoked",
            LeakVerdict::TruePositive {
                already_revoked: true,
                ..
            } => "already_revoked",
            LeakVerdict::FalsePositive => "false_positive",
        }
    }
}

/// Who reports, which decides what the report may revoke and how its audit
/// events name the actor.
pub enum Reporter<'a> {
    /// GitHub's secret scanning, its report verified with the named signing
    /// key: every key of ours.
    GitHub { key_identifier: &'a str },
    /// A caller of `ReportLeakedKeys` with this root key (holding
    /// `keys:write`): the API keys of the owners it reaches, and the root
    /// keys it could revoke with RevokeRootKey.
    RootKey(&'a RootKey),
}

impl Reporter<'_> {
    fn reaches_owner(&self, owner_id: &str) -> bool {
        match self {
            Reporter::GitHub { .. } => true,
            Reporter::RootKey(caller) => caller.reaches_owner(owner_id),
        }
    }

    fn may_revoke_root_key(&self, root_key: &RootKey) -> bool {
        match self {
            Reporter::GitHub { .. } => true,
            Reporter::RootKey(caller) => {
                caller.allows(Permission::RootKeysWrite) && caller.oversees(root_key)
            }
        }
    }

    /// The `reporter` label of `apikeyd_leaked_keys_total`.
    fn as_str(&self) -> &'static str {
        match self {
            Reporter::GitHub { .. } => "github",
            Reporter::RootKey(_) => "api",
        }
    }

    fn describe(&self, event: &mut AuditEvent) {
        match self {
            Reporter::GitHub { key_identifier } => {
                event.set_field("reporter", "github secret scanning");
                event.set_field("github_key_identifier", key_identifier);
            }
            Reporter::RootKey(caller) => event.set_actor(caller),
        }
    }
}

/// Where a report came from, for its audit events.
pub struct ReportOrigin<'a> {
    pub reporter: Reporter<'a>,
    /// The audit events' method: the RPC, or `POST /v1/leaked-keys`.
    pub method: &'a str,
    /// The caller's socket address.
    pub peer_address: &'a str,
}

/// The leaked-key report use case.
pub struct LeakReports {
    authority: Arc<KeyAuthority>,
    root_keys: Arc<RootKeys>,
}

impl LeakReports {
    pub fn new(authority: Arc<KeyAuthority>, root_keys: Arc<RootKeys>) -> Self {
        LeakReports {
            authority,
            root_keys,
        }
    }

    /// Judges every token in order, revoking the true positives.
    pub async fn report(
        &self,
        origin: &ReportOrigin<'_>,
        tokens: &[ReportedToken],
    ) -> Result<Vec<LeakVerdict>> {
        let mut verdicts = Vec::with_capacity(tokens.len());
        for token in tokens {
            let verdict = self.judge(origin, token).await?;
            ::metrics::counter!(
                "apikeyd_leaked_keys_total",
                "reporter" => origin.reporter.as_str(),
                "outcome" => verdict.outcome(),
            )
            .increment(1);
            verdicts.push(verdict);
        }
        let true_positives = verdicts
            .iter()
            .filter(|v| matches!(v, LeakVerdict::TruePositive { .. }))
            .count();
        tracing::info!(
            reporter = origin.reporter.as_str(),
            peer_address = origin.peer_address,
            tokens = tokens.len(),
            true_positives,
            "leaked-key report handled"
        );
        Ok(verdicts)
    }

    async fn judge(&self, origin: &ReportOrigin<'_>, token: &ReportedToken) -> Result<LeakVerdict> {
        let found = match PresentedKey::parse(&token.token) {
            Ok(presented) if presented.kind == KeyKind::Root => {
                return self.judge_root_key(origin, token, &presented).await;
            }
            Ok(presented) => self.authority.verified_key(&presented).await?,
            Err(not_ours) => {
                self.authority
                    .verified_imported_key(&token.token, not_ours)
                    .await?
            }
        };
        let Some(key) = found else {
            return Ok(LeakVerdict::FalsePositive);
        };
        if !origin.reporter.reaches_owner(&key.owner_id) {
            return Ok(LeakVerdict::FalsePositive);
        }
        let mut event = leak_event(origin, token);
        event.set_key(&key.id);
        event.set_owner(&key.owner_id);
        let was_live = self
            .authority
            .revoke_leaked_key(&key.id, &mut event)
            .await?;
        crate::audit::log(&event, true);
        tracing::warn!(
            key_id = %key.id,
            owner_id = %key.owner_id,
            reporter = origin.reporter.as_str(),
            url = %event.fields.get("leak_url").map_or("", String::as_str),
            source = %event.fields.get("leak_source").map_or("", String::as_str),
            already_revoked = !was_live,
            "an API key was reported leaked and is revoked"
        );
        Ok(LeakVerdict::TruePositive {
            key_id: key.id.clone(),
            already_revoked: !was_live,
        })
    }

    /// A root key leaked is revoked like an API key, by a reporter that may
    /// revoke it: GitHub (it is public now), or a caller that could revoke it
    /// with RevokeRootKey.
    async fn judge_root_key(
        &self,
        origin: &ReportOrigin<'_>,
        token: &ReportedToken,
        presented: &PresentedKey,
    ) -> Result<LeakVerdict> {
        let Some(root_key) = self.root_keys.verified(presented).await? else {
            return Ok(LeakVerdict::FalsePositive);
        };
        if !origin.reporter.may_revoke_root_key(&root_key) {
            return Ok(LeakVerdict::FalsePositive);
        }
        let mut event = leak_event(origin, token);
        event.set_target_root_key(&root_key.id);
        let was_live = self.root_keys.revoke_leaked(&root_key.id, &event).await?;
        crate::audit::log(&event, true);
        tracing::warn!(
            root_key_id = %root_key.id,
            root_key_name = %root_key.name,
            reporter = origin.reporter.as_str(),
            url = %event.fields.get("leak_url").map_or("", String::as_str),
            source = %event.fields.get("leak_source").map_or("", String::as_str),
            already_revoked = !was_live,
            "a root key was reported leaked and is revoked"
        );
        Ok(LeakVerdict::TruePositive {
            key_id: root_key.id,
            already_revoked: !was_live,
        })
    }
}

/// The audit event of one leaked key: who reported it, from where, and
/// where it was found (bounded, any key in those strings redacted).
fn leak_event(origin: &ReportOrigin<'_>, token: &ReportedToken) -> AuditEvent {
    let mut event = AuditEvent::new(origin.method, origin.peer_address, domain::now());
    origin.reporter.describe(&mut event);
    event.set_field("revoked", "true");
    event.set_field("leak_url", &token.url);
    event.set_field("leak_source", &token.source);
    event.set_field("leak_token_type", &token.token_type);
    event
}
