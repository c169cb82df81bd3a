//! `apikeyd.v1.ValidationService`: the hot path. A bad key is an answer
//! (OK, `valid = false`, a code); only a bad request is a gRPC error.
//!
//! Served by [`ValidationServer`], written here rather than generated: the
//! generated server answers with a `pb::ValidateResponse`, a copy of the
//! key's record per call, where this one answers with a [`ValidateReply`]
//! that writes the cached record itself onto the wire.

use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use ::metrics::Counter;

use tonic::codegen::{Body, BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use super::deadline;
use super::pb::{self, validation_service_server::SERVICE_NAME};
use super::validate_reply::ValidateReply;
use crate::authority::{KeyAuthority, ValidationRequest};
use crate::domain::key_format::{MAX_PRESENTED_KEY_LEN, recordable};
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
            // `recordable` truncates to the same bounds.
            context: RequestContext {
                endpoint: recordable(&context.endpoint, MAX_ENDPOINT_CHARS),
                method: recordable(&context.method, MAX_METHOD_CHARS),
                ip: recordable(&context.ip, MAX_IP_CHARS),
                user_agent: recordable(&context.user_agent, MAX_USER_AGENT_CHARS),
            },
            answer_by,
        };
        let verdict = self.authority.validate(&req.key, request).await?;
        count_validation(verdict.code);
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

/// `apikeyd_validations_total{code}`, from handles registered once.
fn count_validation(code: ValidationCode) {
    static COUNTERS: LazyLock<Vec<Counter>> = LazyLock::new(|| {
        metrics::registered(|| {
            ValidationCode::ALL
                .into_iter()
                .map(validation_counter)
                .collect()
        })
    });
    COUNTERS[code as usize].increment(1);
}

/// The counter of `code`, with the label a literal.
fn validation_counter(code: ValidationCode) -> Counter {
    use ValidationCode::*;
    match code {
        Valid => ::metrics::counter!("apikeyd_validations_total", "code" => "valid"),
        Malformed => ::metrics::counter!("apikeyd_validations_total", "code" => "malformed"),
        NotFound => ::metrics::counter!("apikeyd_validations_total", "code" => "not_found"),
        Revoked => ::metrics::counter!("apikeyd_validations_total", "code" => "revoked"),
        Disabled => ::metrics::counter!("apikeyd_validations_total", "code" => "disabled"),
        Expired => ::metrics::counter!("apikeyd_validations_total", "code" => "expired"),
        InsufficientScope => {
            ::metrics::counter!("apikeyd_validations_total", "code" => "insufficient_scope")
        }
        RateLimited => ::metrics::counter!("apikeyd_validations_total", "code" => "rate_limited"),
        UsageExceeded => {
            ::metrics::counter!("apikeyd_validations_total", "code" => "usage_exceeded")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ::metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString};

    use super::*;

    /// Remembers the labels of every counter asked for.
    #[derive(Default)]
    struct Labels(Mutex<Vec<String>>);

    impl Recorder for Labels {
        fn describe_counter(&self, _: KeyName, _: Option<::metrics::Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<::metrics::Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<::metrics::Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels = key.labels().map(|l| format!("{}={}", l.key(), l.value()));
            self.0.lock().unwrap().extend(labels);
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn each_code_is_counted_under_its_stored_name() {
        let codes = ValidationCode::ALL;
        let recorder = Labels::default();
        ::metrics::with_local_recorder(&recorder, || {
            codes.into_iter().map(validation_counter).for_each(drop)
        });
        let expected: Vec<String> = codes
            .iter()
            .map(|c| format!("code={}", c.as_str()))
            .collect();
        assert_eq!(*recorder.0.lock().unwrap(), expected);
    }
}
