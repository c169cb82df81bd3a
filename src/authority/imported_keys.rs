//! Keys imported from another store, so that switching to apikeyd breaks no
//! client: Validate finds one by the SHA-256 of the whole key with one
//! indexed lookup (cached, absences too), then judges it like every other
//! key; an import (the CLI's or the `ImportKeys` RPC's: the rules are here
//! once) writes rows in batches, idempotently by digest.

use std::collections::HashSet;

use subtle::ConstantTimeEq;

use super::{KeyAuthority, ValidationRequest, Verdict};
use crate::access::require_owner;
use crate::domain::LimitSource;
use crate::domain::audit::AuditEvent;
use crate::domain::import::{
    ImportRecord, ImportTally, ImportedKey, OwnerOverLimit, RowOutcome, RowResult, UsageHistory,
};
use crate::domain::{KeyId, LegacyDigest, MalformedKey, RootKey, ValidationCode};
use crate::error::Result;
use crate::invalidation::Invalidation;
use crate::key_cache::FoundKey;
use crate::store::{IMPORTED_SECRET_HASH, ImportedKeyRow};
use crate::telemetry::metrics::observe_db;

/// One row of an import: how its source names it (a line number, the old
/// store's id), what the source says about the key (or why the source could
/// not read the row at all), and the requests the source recorded against
/// the key, for its usage counters.
pub struct ImportRow {
    pub source_ref: String,
    pub record: std::result::Result<ImportRecord, String>,
    pub usage: UsageHistory,
}

/// Who runs an import, as each batch's audit event records it.
pub struct ImportActor {
    /// `apikeyd.v1.ImportService/ImportKeys`, or `cli import`.
    pub method: &'static str,
    pub peer: String,
    /// The caller's client certificate identity (mutual TLS); empty without.
    pub tls_identity: String,
    /// The root key of an RPC; its owner scope bounds what it may import.
    /// `None` for the command line, which reaches the database directly.
    pub root_key: Option<RootKey>,
}

impl ImportActor {
    /// The command line: every owner, recorded as peer `cli`.
    pub fn command_line() -> ImportActor {
        ImportActor {
            method: "cli import",
            peer: "cli".to_owned(),
            tls_identity: String::new(),
            root_key: None,
        }
    }
}

/// An import under way: who runs it, its totals, and the digests it has
/// seen (so that a dry run, which writes nothing, still reports a repeated
/// key once).
pub struct ImportRun {
    dry_run: bool,
    actor: ImportActor,
    tally: ImportTally,
    seen: HashSet<LegacyDigest>,
}

impl ImportRun {
    /// `dry_run` checks and counts every row but writes nothing.
    pub fn new(dry_run: bool, actor: ImportActor) -> ImportRun {
        ImportRun {
            dry_run,
            actor,
            tally: ImportTally::default(),
            seen: HashSet::new(),
        }
    }

    pub fn tally(&self) -> &ImportTally {
        &self.tally
    }

    pub fn is_dry(&self) -> bool {
        self.dry_run
    }
}

/// What an import did, once every row is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportSummary {
    pub tally: ImportTally,
    /// Owners holding more active keys than the limit now (or, in a dry
    /// run, once the import is in): the keys were imported all the same.
    pub owners_over_limit: Vec<OwnerOverLimit>,
    pub dry_run: bool,
}

impl KeyAuthority {
    /// Validate's lookup of a string that is not in our format: by its
    /// digest when it could be another store's key, else malformed with no
    /// I/O. A digest found is compared in constant time, then the record is
    /// read by id (cached and evicted like any key's) and judged by
    /// [`KeyAuthority::admit`], as a key in our format is.
    pub(super) async fn validate_imported(
        &self,
        raw_key: &str,
        not_ours: MalformedKey,
        request: ValidationRequest<'_>,
    ) -> Result<Verdict> {
        let Some(digest) = LegacyDigest::of_presented(raw_key, not_ours) else {
            return Ok(Verdict::refused(ValidationCode::Malformed));
        };
        match self.imported_key(&digest).await? {
            Some(api_key) => self.admit(api_key, request).await,
            None => Ok(Verdict::refused(ValidationCode::NotFound)),
        }
    }

    /// The record of the imported key `raw_key` (a string not in our
    /// format, which `not_ours` says why), whatever the key's state: the
    /// lookup Validate makes. `None` for a string that could not be another
    /// store's key (no I/O) or that is none imported here.
    pub async fn verified_imported_key(
        &self,
        raw_key: &str,
        not_ours: MalformedKey,
    ) -> Result<Option<FoundKey>> {
        match LegacyDigest::of_presented(raw_key, not_ours) {
            Some(digest) => self.imported_key(&digest).await,
            None => Ok(None),
        }
    }

    /// The imported key whose digest is `digest`: the digest's id (cached,
    /// absences too), compared in constant time, then the record by id.
    async fn imported_key(&self, digest: &LegacyDigest) -> Result<Option<FoundKey>> {
        let lookup = self
            .keys
            .imported_or_load(digest, || {
                observe_db("find_imported_key", self.store.find_imported(digest))
            })
            .await?;
        let Some((id, stored)) = &lookup.found else {
            return Ok(None);
        };
        if !bool::from(stored.as_bytes().ct_eq(digest.as_bytes())) {
            return Ok(None);
        }
        let record = self
            .keys
            .get_or_load(id, || observe_db("find_key", self.store.find(id)))
            .await?;
        match &record.found {
            Some((_, hash)) if hash.as_ref() == IMPORTED_SECRET_HASH => Ok(FoundKey::of(record)),
            _ => Ok(None),
        }
    }

    /// Checks and (unless the run is dry) writes one batch of rows: a row is
    /// refused with its reason (also for an owner the run's root key does not
    /// reach), skipped when its digest is already here, or imported under a
    /// new id, with one audit event for the batch in its transaction. Rows
    /// never fail the batch; a store error does (nothing of the batch is
    /// written, and running the import again resumes it).
    pub async fn import_batch(
        &self,
        run: &mut ImportRun,
        rows: Vec<ImportRow>,
    ) -> Result<Vec<RowResult>> {
        let mut outcomes: Vec<Option<RowOutcome>> = Vec::with_capacity(rows.len());
        let mut candidates = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            let parsed = row.record.clone().and_then(|r| self.parse_import(r));
            let reached = parsed.and_then(|key| match &run.actor.root_key {
                Some(caller) => require_owner(caller, &key.owner_id)
                    .map(|()| key)
                    .map_err(|e| e.to_string()),
                None => Ok(key),
            });
            match reached {
                Ok(key) => {
                    candidates.push((index, key));
                    outcomes.push(None);
                }
                Err(reason) => outcomes.push(Some(RowOutcome::Refused(reason))),
            }
        }
        let digests: Vec<LegacyDigest> = candidates.iter().map(|(_, k)| k.digest).collect();
        let present = observe_db("imported_digests", self.store.imported_digests(&digests)).await?;
        let mut to_write = Vec::new();
        let mut owners = Vec::with_capacity(rows.len());
        owners.resize(rows.len(), None);
        for (index, key) in candidates {
            if present.contains(&key.digest) || !run.seen.insert(key.digest) {
                outcomes[index] = Some(RowOutcome::AlreadyPresent);
                continue;
            }
            let limits = match &key.tier {
                Some(tier) => LimitSource::Tier(tier.clone()),
                None => LimitSource::Tier(self.tiers.default_tier().to_owned()),
            };
            owners[index] = key.is_active().then(|| key.owner_id.clone());
            let id = KeyId::generate();
            outcomes[index] = Some(RowOutcome::Imported(id.clone()));
            if !run.dry_run && !rows[index].usage.is_empty() {
                // Usage first, under the new id: if the keys are then not
                // written, nothing ever reads it and it expires unseen; if
                // it fails, no key is written and the import can run again.
                self.limiter
                    .import_usage(&key.owner_id, &id, &rows[index].usage)
                    .await?;
            }
            to_write.push(ImportedKeyRow { id, key, limits });
        }
        if !run.dry_run && !to_write.is_empty() {
            let now = crate::domain::now();
            let mut event = AuditEvent::new(run.actor.method, &run.actor.peer, now);
            event.set_tls_identity(&run.actor.tls_identity);
            if let Some(caller) = &run.actor.root_key {
                event.set_actor(caller);
            }
            let written = observe_db(
                "import_keys",
                self.store.insert_imported(to_write, now, &mut event),
            )
            .await?;
            if !written.is_empty() {
                crate::audit::log(&event, true);
            }
            // A concurrent import took some digests first: those are present.
            for outcome in &mut outcomes {
                if let Some(RowOutcome::Imported(id)) = outcome {
                    if !written.contains(id) {
                        *outcome = Some(RowOutcome::AlreadyPresent);
                    }
                }
            }
            if !written.is_empty() {
                self.keys.forget_imported_lookups();
                self.publish(Invalidation::ImportedKeys);
            }
        }
        let results: Vec<RowResult> = rows
            .into_iter()
            .zip(outcomes)
            .map(|(row, outcome)| RowResult {
                source_ref: row.source_ref,
                outcome: outcome.expect("every row has an outcome"),
            })
            .collect();
        for (result, owner) in results.iter().zip(&owners) {
            run.tally.add(result, owner.as_deref());
        }
        Ok(results)
    }

    /// The row's key, or why it is refused: the domain's bounds, then the
    /// tier, which only the configuration knows.
    fn parse_import(&self, record: ImportRecord) -> std::result::Result<ImportedKey, String> {
        let key = ImportedKey::parse(record).map_err(|e| e.to_string())?;
        if let Some(tier) = &key.tier {
            self.tiers
                .parse_name("tier", tier)
                .map_err(|e| e.to_string())?;
        }
        Ok(key)
    }

    /// Ends an import: which owners it left over the active-key limit.
    pub async fn finish_import(&self, run: ImportRun) -> Result<ImportSummary> {
        let owners: Vec<String> = run.tally.owners().into_iter().collect();
        let active = observe_db("active_keys_of", self.store.active_keys_of(&owners)).await?;
        let limit = self.max_active_keys_per_owner;
        let owners_over_limit = owners
            .into_iter()
            .filter_map(|owner| {
                let stored = active.get(&owner).copied().unwrap_or(0);
                let pending = if run.dry_run {
                    run.tally
                        .active_keys_added
                        .get(&owner)
                        .copied()
                        .unwrap_or(0)
                } else {
                    0
                };
                let active_keys = stored + pending;
                (active_keys > u64::from(limit)).then_some(OwnerOverLimit {
                    owner_id: owner,
                    active_keys,
                    limit,
                })
            })
            .collect();
        Ok(ImportSummary {
            tally: run.tally,
            owners_over_limit,
            dry_run: run.dry_run,
        })
    }
}
