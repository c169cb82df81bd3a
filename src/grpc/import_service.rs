//! `apikeyd.v1.ImportService`: authorise, convert each batch, delegate to
//! the authority's import (the rules `apikeyd import` follows too), answer
//! batch by batch, then the summary.
//!
//! The answer stream drives the import: a batch is read and written only
//! when the client is ready for its answer, so a slow or gone client holds
//! nothing up (a dropped call rolls back the batch it was writing).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::key_service::caller;
use super::pb::{self, import_service_server::ImportService};
use crate::access::RootKeyGate;
use crate::audit::{AuditTrail, AuditedCall, CallKind};
use crate::authority::{ImportActor, ImportRow, ImportRun, ImportSummary, KeyAuthority};
use crate::domain::Permission;
use crate::domain::import::{ImportRecord, RowOutcome, RowResult};
use crate::error::Error;

/// The most keys one message may carry.
pub const MAX_KEYS_PER_MESSAGE: usize = 1_000;

const METHOD: &str = "apikeyd.v1.ImportService/ImportKeys";

pub struct ImportApi {
    pub authority: Arc<KeyAuthority>,
    pub gate: RootKeyGate,
    /// Records a refused call; each batch written records itself.
    pub audit: AuditTrail,
}

type Answers = Pin<Box<dyn Stream<Item = Result<pb::ImportKeysResponse, Status>> + Send>>;

/// Where the answer stream is: importing batches, or done. The run starts
/// with the first message, which says whether it is dry.
enum Phase {
    Importing {
        inbound: Box<Streaming<pb::ImportKeysRequest>>,
        run: Box<Run>,
    },
    Done,
}

enum Run {
    NotStarted(ImportActor),
    Started(ImportRun),
}

impl Run {
    fn start(self, dry_run: bool) -> ImportRun {
        match self {
            Run::NotStarted(actor) => ImportRun::new(dry_run, actor),
            Run::Started(run) => run,
        }
    }
}

#[tonic::async_trait]
impl ImportService for ImportApi {
    type ImportKeysStream = Answers;

    async fn import_keys(
        &self,
        request: Request<Streaming<pb::ImportKeysRequest>>,
    ) -> Result<Response<Answers>, Status> {
        // Only a refusal is recorded here; each batch written records itself.
        let mut call = AuditedCall::start(METHOD, CallKind::Read, &request);
        let authorized = caller(&self.gate, &request, &mut call, Permission::KeysWrite).await;
        let (peer, tls_identity) = (
            call.event.peer_address.clone(),
            call.event.tls_identity.clone(),
        );
        let root_key = self.audit.finish(call, authorized).await?;
        let actor = ImportActor {
            method: METHOD,
            peer,
            tls_identity,
            root_key: Some(root_key),
        };
        let authority = self.authority.clone();
        let start = Phase::Importing {
            inbound: Box::new(request.into_inner()),
            run: Box::new(Run::NotStarted(actor)),
        };
        let answers = futures_util::stream::unfold(start, move |phase| {
            let authority = authority.clone();
            async move {
                let Phase::Importing { mut inbound, run } = phase else {
                    return None;
                };
                match inbound.next().await {
                    Some(Ok(message)) => {
                        let answer = answer_batch(&authority, *run, message).await;
                        Some(match answer {
                            Ok((response, run)) => (
                                Ok(response),
                                Phase::Importing {
                                    inbound,
                                    run: Box::new(Run::Started(run)),
                                },
                            ),
                            Err(status) => (Err(status), Phase::Done),
                        })
                    }
                    Some(Err(status)) => Some((Err(status), Phase::Done)),
                    None => {
                        let run = run.start(false);
                        let summary = authority.finish_import(run).await;
                        Some((
                            summary
                                .map(|summary| pb::ImportKeysResponse {
                                    results: Vec::new(),
                                    summary: Some(summary_message(summary)),
                                })
                                .map_err(Status::from),
                            Phase::Done,
                        ))
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

/// Imports one message's keys; the first message decides whether the run is dry.
async fn answer_batch(
    authority: &KeyAuthority,
    run: Run,
    message: pb::ImportKeysRequest,
) -> Result<(pb::ImportKeysResponse, ImportRun), Status> {
    if message.keys.len() > MAX_KEYS_PER_MESSAGE {
        return Err(Error::invalid(
            "keys",
            format!(
                "at most {MAX_KEYS_PER_MESSAGE} keys per message (got {}); send more messages",
                message.keys.len()
            ),
        )
        .into());
    }
    let mut run = run.start(message.dry_run);
    if run.is_dry() != message.dry_run {
        return Err(Error::invalid(
            "dry_run",
            "must be the same in every message of one ImportKeys call",
        )
        .into());
    }
    let rows = message.keys.into_iter().map(import_row).collect();
    let results = authority.import_batch(&mut run, rows).await?;
    Ok((
        pb::ImportKeysResponse {
            results: results.into_iter().map(result_message).collect(),
            summary: None,
        },
        run,
    ))
}

fn import_row(key: pb::ImportedKey) -> ImportRow {
    ImportRow {
        source_ref: key.source_ref.clone(),
        record: import_record(key).map_err(|e| e.to_string()),
        usage: Default::default(),
    }
}

fn import_record(key: pb::ImportedKey) -> Result<ImportRecord, Error> {
    let instant = |field, t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(|t| convert::parse_timestamp(field, t))
            .transpose()
    };
    let environment = match pb::Environment::try_from(key.environment) {
        Ok(pb::Environment::Unspecified) => None,
        _ => Some(
            convert::parse_environment(key.environment)?
                .as_str()
                .to_owned(),
        ),
    };
    Ok(ImportRecord {
        created_at: instant("created_at", &key.created_at)?,
        expires_at: instant("expires_at", &key.expires_at)?,
        last_used_at: instant("last_used_at", &key.last_used_at)?,
        revoked_at: instant("revoked_at", &key.revoked_at)?,
        sha256: key.sha256,
        owner_id: key.owner_id,
        name: key.name,
        scopes: key.scopes,
        prefix: (!key.prefix.is_empty()).then_some(key.prefix),
        environment,
        enabled: Some(!key.disabled),
        metadata: key.metadata.into_iter().collect(),
        tier: (!key.tier.is_empty()).then_some(key.tier),
    })
}

fn result_message(result: RowResult) -> pb::ImportKeyResult {
    let (outcome, key_id, reason) = match result.outcome {
        RowOutcome::Imported(id) => (pb::ImportOutcome::Imported, id.to_string(), String::new()),
        RowOutcome::AlreadyPresent => (
            pb::ImportOutcome::AlreadyPresent,
            String::new(),
            String::new(),
        ),
        RowOutcome::Refused(reason) => (pb::ImportOutcome::Refused, String::new(), reason),
    };
    pb::ImportKeyResult {
        source_ref: result.source_ref,
        outcome: outcome as i32,
        key_id,
        reason,
    }
}

fn summary_message(summary: ImportSummary) -> pb::ImportSummary {
    pb::ImportSummary {
        imported: summary.tally.imported,
        already_present: summary.tally.already_present,
        refused: summary.tally.refused,
        owners_over_limit: summary
            .owners_over_limit
            .into_iter()
            .map(|owner| pb::OwnerOverLimit {
                owner_id: owner.owner_id,
                active_keys: owner.active_keys,
                limit: owner.limit,
            })
            .collect(),
        dry_run: summary.dry_run,
    }
}
