//! `apikeyd.v1.ValidationService`: the hot path. A bad key is an answer
//! (OK, `valid = false`, a code); only a bad request is a gRPC error.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::{self, validation_service_server::ValidationService};
use super::{convert, deadline};
use crate::authority::{KeyAuthority, ValidationRequest};
use crate::domain::key_format::{MAX_PRESENTED_KEY_LEN, recordable};
use crate::domain::limit::MAX_LIMIT;
use crate::domain::{ValidationCode, key_settings};
use crate::error::Error;
use crate::ratelimit::usage::{
    MAX_ENDPOINT_CHARS, MAX_IP_CHARS, MAX_METHOD_CHARS, MAX_USER_AGENT_CHARS, RequestContext,
};

pub struct ValidationApi {
    pub authority: Arc<KeyAuthority>,
}

#[tonic::async_trait]
impl ValidationService for ValidationApi {
    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let answer_by = deadline::answer_by(request.metadata());
        let req = request.into_inner();
        if req.key.len() > MAX_PRESENTED_KEY_LEN {
            return Err(Error::invalid(
                "key",
                format!("at most {MAX_PRESENTED_KEY_LEN} characters; no apikeyd key is that long"),
            )
            .into());
        }
        let required = key_settings::parse_scopes("required_scopes", &req.required_scopes, false)?;
        if req.cost > MAX_LIMIT {
            return Err(Error::invalid("cost", format!("at most {MAX_LIMIT}")).into());
        }
        let context = req.context.unwrap_or_default();
        // A gateway may put a key in a URL (`?api_key=…`): keys are redacted
        // before the context is stored anywhere.
        let request = ValidationRequest {
            required: &required,
            cost: req.cost.max(1),
            context: RequestContext::truncated(
                &recordable(&context.endpoint, MAX_ENDPOINT_CHARS),
                &recordable(&context.method, MAX_METHOD_CHARS),
                &recordable(&context.ip, MAX_IP_CHARS),
                &recordable(&context.user_agent, MAX_USER_AGENT_CHARS),
            ),
            answer_by,
        };
        let verdict = self.authority.validate(&req.key, request).await?;
        ::metrics::counter!("apikeyd_validations_total", "code" => verdict.code.as_str())
            .increment(1);
        let message = match verdict.code {
            ValidationCode::Malformed if req.key.is_empty() => "Missing API key",
            code => code.message(),
        };
        Ok(Response::new(pb::ValidateResponse {
            valid: verdict.code == ValidationCode::Valid,
            code: convert::validation_code(verdict.code) as i32,
            message: message.to_owned(),
            api_key: verdict.api_key.map(convert::api_key),
            rate_limit: verdict.rate_limit.as_ref().map(convert::rate_limit_status),
        }))
    }
}
