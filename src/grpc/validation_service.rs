//! `apikeyd.v1.ValidationService`: the hot path. A bad key is an answer
//! (OK, `valid = false`, a code); only a bad request is a gRPC error.
//!
//! Served by [`ValidationServer`], written here rather than generated: the
//! generated server answers with a `pb::ValidateResponse`, a copy of the
//! key's record per call, where this one answers with a [`ValidateReply`]
//! that writes the cached record itself onto the wire.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{Body, BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use super::deadline;
use super::pb::{self, validation_service_server::SERVICE_NAME};
use super::validate_reply::ValidateReply;
use crate::authority::{KeyAuthority, ValidationRequest};
use crate::domain::key_format::{MAX_PRESENTED_KEY_LEN, into_recordable};
use crate::domain::limit::MAX_LIMIT;
use crate::domain::{ValidationCode, key_settings};
use crate::error::Error;
use crate::ratelimit::usage::{
    MAX_ENDPOINT_CHARS, MAX_IP_CHARS, MAX_METHOD_CHARS, MAX_USER_AGENT_CHARS, RequestContext,
};
use crate::telemetry::metrics;

const VALIDATE_PATH: &str = "/apikeyd.v1.ValidationService/Validate";

pub struct ValidationApi {
    pub authority: Arc<KeyAuthority>,
}

impl ValidationApi {
    async fn validate(
        &self,
        request: Request<Box<pb::ValidateRequest>>,
    ) -> Result<Response<ValidateReply>, Status> {
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
            // `into_recordable` truncates to the same bounds.
            context: RequestContext {
                endpoint: into_recordable(context.endpoint, MAX_ENDPOINT_CHARS),
                method: into_recordable(context.method, MAX_METHOD_CHARS),
                ip: into_recordable(context.ip, MAX_IP_CHARS),
                user_agent: into_recordable(context.user_agent, MAX_USER_AGENT_CHARS),
            },
            answer_by,
        };
        let verdict = self.authority.validate(&req.key, request).await?;
        metrics::count_validation(verdict.code);
        let message = match verdict.code {
            ValidationCode::Malformed if req.key.is_empty() => "Missing API key",
            code => code.message(),
        };
        Ok(Response::new(ValidateReply::new(
            verdict.code,
            message,
            verdict.api_key,
            verdict.quota_balance,
            verdict.rate_limit.as_ref(),
        )))
    }
}

/// The service as tonic serves it: the generated server's routing and
/// limits, around [`ValidationApi::validate`].
#[derive(Clone)]
pub struct ValidationServer {
    api: Arc<ValidationApi>,
    max_decoding_message_size: usize,
}

impl ValidationServer {
    pub fn new(api: ValidationApi, max_decoding_message_size: usize) -> Self {
        ValidationServer {
            api: Arc::new(api),
            max_decoding_message_size,
        }
    }
}

impl NamedService for ValidationServer {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> tower::Service<http::Request<B>> for ValidationServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != VALIDATE_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = ValidateMethod(self.api.clone());
        let max_decoding_message_size = self.max_decoding_message_size;
        Box::pin(async move {
            // The request is decoded into a box: tonic moves it several
            // times on its way to the method, 8 bytes each rather than 150.
            let mut grpc =
                Grpc::new(ProstCodec::<ValidateReply, Box<pb::ValidateRequest>>::default())
                    .apply_max_message_size_config(Some(max_decoding_message_size), None);
            Ok(grpc.unary(method, request).await)
        })
    }
}

struct ValidateMethod(Arc<ValidationApi>);

impl UnaryService<Box<pb::ValidateRequest>> for ValidateMethod {
    type Response = ValidateReply;
    type Future = BoxFuture<Response<ValidateReply>, Status>;

    fn call(&mut self, request: Request<Box<pb::ValidateRequest>>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.validate(request).await })
    }
}
