//! `apikeyd.v1.AuditService`: reads the audit trail. Reading is not itself
//! recorded, but a refused read is, like any refused management call.

use tonic::{Request, Response, Status};

use super::convert;
use super::key_service::{caller, parse_page_size};
use super::pb::{self, audit_service_server::AuditService};
use crate::access::RootKeyGate;
use crate::audit::{AuditTrail, AuditedCall, CallKind};
use crate::domain::{KeyId, OwnerScope, Permission, key_settings};
use crate::error::{Error, Result};
use crate::store::{AuditQuery, StoredAuditEvent};

pub struct AuditApi {
    pub gate: RootKeyGate,
    pub audit: AuditTrail,
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.AuditService/ListAuditEvents",
            CallKind::Read,
            list
        )
    }
}

impl AuditApi {
    async fn list(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::ListAuditEventsResponse> {
        call.target_owner(&request.get_ref().owner_id);
        let caller = caller(&self.gate, &request, call, Permission::AuditRead).await?;
        let req = request.into_inner();
        let id_filter = |field: &'static str, raw: &str| -> Result<Option<String>> {
            match raw {
                "" => Ok(None),
                raw => KeyId::parse(raw)
                    .map(|id| Some(id.to_string()))
                    .ok_or_else(|| {
                        Error::invalid(field, "not an id: ids are 16 letters and digits")
                    }),
            }
        };
        let query = AuditQuery {
            key_id: id_filter("key_id", &req.key_id)?,
            owner_id: match req.owner_id.as_str() {
                "" => None,
                raw => Some(key_settings::parse_owner_id(raw)?),
            },
            root_key_id: id_filter("root_key_id", &req.root_key_id)?,
            start: req
                .start_time
                .as_ref()
                .map(|t| convert::parse_timestamp("start_time", t))
                .transpose()?,
            end: req
                .end_time
                .as_ref()
                .map(|t| convert::parse_timestamp("end_time", t))
                .transpose()?,
            scope: OwnerScope::All,
            before_id: convert::parse_audit_page_token(&req.page_token)?,
            page_size: parse_page_size(req.page_size)? as u64,
        };
        let (events, next) = self.audit.list(&caller, query).await?;
        Ok(pb::ListAuditEventsResponse {
            audit_events: events.into_iter().map(audit_event).collect(),
            next_page_token: next.map(convert::audit_page_token).unwrap_or_default(),
        })
    }
}

fn audit_event(stored: StoredAuditEvent) -> pb::AuditEvent {
    let event = stored.event;
    let (root_key_id, root_key_name) = event
        .actor
        .map(|actor| (actor.root_key_id, actor.root_key_name))
        .unwrap_or_default();
    pb::AuditEvent {
        id: stored.id.to_string(),
        time: Some(convert::timestamp(event.occurred_at)),
        root_key_id,
        root_key_name,
        peer_address: event.peer_address,
        tls_identity: event.tls_identity,
        method: event.method,
        key_id: event.key_id.unwrap_or_default(),
        owner_id: event.owner_id.unwrap_or_default(),
        target_root_key_id: event.target_root_key_id.unwrap_or_default(),
        changed_fields: event.fields.into_iter().collect(),
        outcome_code: event.outcome_code,
        outcome_message: event.outcome_message,
    }
}
