//! `apikeyd.v1.RootKeyService`: authenticate, authorise, parse, delegate to
//! the root-key use cases, convert; audited like KeyService.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::key_service::{caller, parse_page_size};
use super::pb::{self, root_key_service_server::RootKeyService};
use crate::access::RootKeyGate;
use crate::audit::{AuditTrail, AuditedCall, CallKind};
use crate::domain::key_settings::{self, ExpiryChange};
use crate::domain::{KeyId, Permission};
use crate::error::{Error, Result};
use crate::root_keys::{NewRootKey, RootKeys};

pub struct RootKeyApi {
    pub root_keys: Arc<RootKeys>,
    pub gate: RootKeyGate,
    pub audit: AuditTrail,
}

#[tonic::async_trait]
impl RootKeyService for RootKeyApi {
    async fn create_root_key(
        &self,
        request: Request<pb::CreateRootKeyRequest>,
    ) -> Result<Response<pb::CreateRootKeyResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.RootKeyService/CreateRootKey",
            CallKind::Change,
            create
        )
    }

    async fn get_root_key(
        &self,
        request: Request<pb::GetRootKeyRequest>,
    ) -> Result<Response<pb::GetRootKeyResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.RootKeyService/GetRootKey",
            CallKind::Read,
            get
        )
    }

    async fn list_root_keys(
        &self,
        request: Request<pb::ListRootKeysRequest>,
    ) -> Result<Response<pb::ListRootKeysResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.RootKeyService/ListRootKeys",
            CallKind::Read,
            list
        )
    }

    async fn revoke_root_key(
        &self,
        request: Request<pb::RevokeRootKeyRequest>,
    ) -> Result<Response<pb::RevokeRootKeyResponse>, Status> {
        audited!(
            self,
            request,
            "apikeyd.v1.RootKeyService/RevokeRootKey",
            CallKind::Change,
            revoke
        )
    }
}

impl RootKeyApi {
    async fn create(
        &self,
        request: Request<pb::CreateRootKeyRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::CreateRootKeyResponse> {
        let caller = caller(&self.gate, &request, call, Permission::RootKeysWrite).await?;
        let req = request.into_inner();
        let new = NewRootKey {
            name: key_settings::parse_name(&req.name)?,
            permissions: key_settings::parse_permissions("permissions", &req.permissions)?,
            owner_scope: key_settings::parse_owner_scope("owner_scope", &req.owner_scope)?,
            expiry: match req.expires_in_days {
                Some(days) => {
                    ExpiryChange::InDays(key_settings::parse_expiry_days("expires_in_days", days)?)
                }
                None => ExpiryChange::Never,
            },
        };
        let (key, created) = self.root_keys.create(&caller, new, &mut call.event).await?;
        Ok(pb::CreateRootKeyResponse {
            key,
            root_key: Some(convert::root_key(created)),
        })
    }

    async fn get(
        &self,
        request: Request<pb::GetRootKeyRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::GetRootKeyResponse> {
        call.target_root_key(&request.get_ref().id);
        let caller = caller(&self.gate, &request, call, Permission::RootKeysRead).await?;
        let id = parse_root_key_id(&request.get_ref().id)?;
        let found = self.root_keys.get(&caller, &id).await?;
        Ok(pb::GetRootKeyResponse {
            root_key: Some(convert::root_key(found)),
        })
    }

    async fn list(
        &self,
        request: Request<pb::ListRootKeysRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::ListRootKeysResponse> {
        let caller = caller(&self.gate, &request, call, Permission::RootKeysRead).await?;
        let req = request.into_inner();
        let page_size = parse_page_size(req.page_size)?;
        let after = convert::parse_page_token(&req.page_token)?;
        let (keys, next) = self
            .root_keys
            .list(&caller, req.include_revoked, after, page_size)
            .await?;
        Ok(pb::ListRootKeysResponse {
            root_keys: keys.into_iter().map(convert::root_key).collect(),
            next_page_token: next.as_ref().map(convert::page_token).unwrap_or_default(),
        })
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRootKeyRequest>,
        call: &mut AuditedCall,
    ) -> Result<pb::RevokeRootKeyResponse> {
        call.target_root_key(&request.get_ref().id);
        let caller = caller(&self.gate, &request, call, Permission::RootKeysWrite).await?;
        let id = parse_root_key_id(&request.get_ref().id)?;
        call.event.set_field("revoked", "true");
        let revoked = self.root_keys.revoke(&caller, &id, &mut call.event).await?;
        Ok(pb::RevokeRootKeyResponse {
            root_key: Some(convert::root_key(revoked)),
        })
    }
}

fn parse_root_key_id(raw: &str) -> Result<KeyId> {
    if raw.is_empty() {
        return Err(Error::invalid("id", "required: the id of a root key"));
    }
    KeyId::parse(raw).ok_or_else(|| {
        Error::invalid(
            "id",
            "not a root key id: ids are 16 letters and digits, as in RootKey.id",
        )
    })
}
