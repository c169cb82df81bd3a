//! The audit trail: every management call that changes something, and every
//! refused management call, becomes one event in the database and one log
//! line (target `apikeyd::audit`).
//!
//! A change writes its event inside its own transaction (the store's write
//! functions take the event), so a change is never without its record and
//! an event never claims a change that did not commit: if the event cannot
//! be written, the change is rolled back and the caller told so. A refused
//! call changed nothing; its event is written on its own, and if that write
//! fails the refusal still reaches the caller and the log line (at error
//! level) still carries the whole event.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use tonic::{Request, Status};

use crate::access::require_owner;
use crate::domain::audit::AuditEvent;
use crate::domain::{self, KeyId, RootKey};
use crate::error::Result;
use crate::store::{self, AuditQuery, StoredAuditEvent};
use crate::telemetry::metrics::{code_label, observe_db};
use crate::tls::ClientCertificate;

/// How often old events are deleted when a retention is set.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// Whether a call changes something (its success is recorded) or only
/// reads (only its refusal is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Change,
    Read,
}

/// One management call on its way through: the event it will leave.
pub struct AuditedCall {
    pub event: AuditEvent,
    kind: CallKind,
}

impl AuditedCall {
    /// Starts recording a call to `method` (`apikeyd.v1.KeyService/CreateKey`).
    pub fn start<T>(method: &str, kind: CallKind, request: &Request<T>) -> AuditedCall {
        let peer = request
            .remote_addr()
            .map(|addr| addr.to_string())
            .unwrap_or_default();
        let mut event = AuditEvent::new(method, &peer, domain::now());
        if let Some(certificate) = ClientCertificate::of(request.extensions()) {
            event.set_tls_identity(&certificate.identity());
        }
        AuditedCall { event, kind }
    }

    pub fn actor(&mut self, root_key: &RootKey) {
        self.event.set_actor(root_key);
    }

    /// Records the API key a request names, if it is an id at all, before
    /// anything is checked: a refused call still says what it was aimed at.
    pub fn target_key(&mut self, raw: &str) {
        if let Some(id) = KeyId::parse(raw) {
            self.event.set_key(&id);
        }
    }

    /// Records the owner a request names (bounded), if any.
    pub fn target_owner(&mut self, raw: &str) {
        if !raw.is_empty() {
            self.event.set_owner(raw);
        }
    }

    /// Records the root key a request names, if it is an id at all.
    pub fn target_root_key(&mut self, raw: &str) {
        if let Some(id) = KeyId::parse(raw) {
            self.event.set_target_root_key(&id);
        }
    }
}

/// Writes refused calls and lists events.
#[derive(Clone)]
pub struct AuditTrail {
    db: DatabaseConnection,
}

impl AuditTrail {
    pub fn new(db: DatabaseConnection) -> Self {
        AuditTrail { db }
    }

    /// Ends a call: a successful change was recorded in its transaction and
    /// is logged now; a refusal is recorded and logged now; a successful
    /// read leaves nothing.
    pub async fn finish<T>(&self, call: AuditedCall, outcome: Result<T>) -> Result<T, Status> {
        let AuditedCall { mut event, kind } = call;
        match outcome {
            Ok(value) => {
                if kind == CallKind::Change {
                    log(&event, true);
                }
                Ok(value)
            }
            Err(error) => {
                // A call refused because the database cannot serve it would
                // wait for that database again (the pool's acquire timeout,
                // a second time) to record it: the log line is its record.
                let store_fault = error.store_fault();
                let status = Status::from(error);
                event.set_outcome(code_label(status.code()), status.message());
                let written = match store_fault {
                    Some(_) => false,
                    None => {
                        let written = observe_db(
                            "insert_audit_event",
                            store::insert_audit_event(&self.db, &event),
                        )
                        .await;
                        if let Err(e) = &written {
                            tracing::error!(error = %e, "could not write a refused call to the audit trail; the next line is its only record");
                        }
                        written.is_ok()
                    }
                };
                log(&event, written);
                Err(status)
            }
        }
    }

    /// A page of events `caller` may see: a scoped root key sees only events
    /// about its owners.
    pub async fn list(
        &self,
        caller: &RootKey,
        mut query: AuditQuery,
    ) -> Result<(Vec<StoredAuditEvent>, Option<i64>)> {
        if let Some(owner_id) = &query.owner_id {
            require_owner(caller, owner_id)?;
        }
        query.scope = caller.owner_scope.clone();
        observe_db(
            "list_audit_events",
            store::list_audit_events(&self.db, query),
        )
        .await
    }
}

/// The one log line of an event. `recorded` is false when the database
/// write of a refused call failed, so the line is the only record.
pub fn log(event: &AuditEvent, recorded: bool) {
    let (root_key_id, root_key_name) = event.actor.as_ref().map_or(("", ""), |actor| {
        (actor.root_key_id.as_str(), actor.root_key_name.as_str())
    });
    let fields = serde_json::to_string(&event.fields).unwrap_or_default();
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: "apikeyd::audit",
                method = %event.method,
                root_key_id,
                root_key_name,
                peer_address = %event.peer_address,
                tls_identity = %event.tls_identity,
                key_id = event.key_id.as_deref().unwrap_or_default(),
                owner_id = event.owner_id.as_deref().unwrap_or_default(),
                target_root_key_id = event.target_root_key_id.as_deref().unwrap_or_default(),
                changed_fields = %fields,
                outcome_code = %event.outcome_code,
                outcome_message = %event.outcome_message,
                recorded,
                "audit event"
            )
        };
    }
    if recorded {
        line!(info);
    } else {
        line!(error);
    }
}

/// Deletes events older than `retention_days` every hour (never, for 0).
pub async fn prune_periodically(db: DatabaseConnection, retention_days: u32) {
    if retention_days == 0 {
        return;
    }
    let mut ticks = tokio::time::interval(RETENTION_INTERVAL);
    loop {
        ticks.tick().await;
        match prune(&db, retention_days, Utc::now()).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(
                deleted,
                retention_days,
                "deleted audit events past their retention"
            ),
            Err(e) => tracing::warn!(error = %e, "could not delete old audit events; will retry"),
        }
    }
}

/// Deletes the events that occurred more than `retention_days` before `now`.
pub async fn prune(
    db: &DatabaseConnection,
    retention_days: u32,
    now: DateTime<Utc>,
) -> Result<u64> {
    let cutoff = now - chrono::Duration::days(i64::from(retention_days));
    Ok(observe_db(
        "prune_audit_events",
        store::delete_audit_events_before(db, cutoff),
    )
    .await?)
}
