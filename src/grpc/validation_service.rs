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
        Ok(Response::new(pb::ValidateResponse {
            valid: verdict.code == ValidationCode::Valid,
            code: convert::validation_code(verdict.code) as i32,
            message: message.to_owned(),
            api_key: verdict.api_key.map(convert::api_key),
            rate_limit: verdict.rate_limit.as_ref().map(convert::rate_limit_status),
        }))
    }
}

/// `apikeyd_validations_total{code}`, with the label a literal: the
/// registry is then asked with a key built at compile time, not one
/// allocated on every call.
fn count_validation(code: ValidationCode) {
    use ValidationCode::*;
    let counter = match code {
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
    };
    counter.increment(1);
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
        let codes = [
            ValidationCode::Valid,
            ValidationCode::Malformed,
            ValidationCode::NotFound,
            ValidationCode::Revoked,
            ValidationCode::Disabled,
            ValidationCode::Expired,
            ValidationCode::InsufficientScope,
            ValidationCode::RateLimited,
            ValidationCode::UsageExceeded,
        ];
        let recorder = Labels::default();
        ::metrics::with_local_recorder(&recorder, || codes.into_iter().for_each(count_validation));
        let expected: Vec<String> = codes
            .iter()
            .map(|c| format!("code={}", c.as_str()))
            .collect();
        assert_eq!(*recorder.0.lock().unwrap(), expected);
    }
}
