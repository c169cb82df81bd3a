//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: the
//! envoyproxy/ratelimit drop-in. The configuration in force
//! ([`super::ratelimit_source`]) says what each descriptor is held to
//! ([`super::rls_plan`]); the limiter decides every counted descriptor of the
//! request at once, in the domain's slot.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use super::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use super::ratelimit_source::RateLimitConfigSource;
use super::rls_plan::Plan;
use crate::grpc::deadline;
use crate::ratelimit::{DescriptorLimit, RateLimiter};

pub struct EnvoyRateLimitApi {
    pub limiter: Arc<RateLimiter>,
    /// `None` without `--envoy-ratelimit-config`: every call is refused.
    pub config: Option<Arc<RateLimitConfigSource>>,
}

#[tonic::async_trait]
impl RateLimitService for EnvoyRateLimitApi {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let Some(source) = &self.config else {
            return Err(Status::failed_precondition(
                "apikeyd has no envoyproxy/ratelimit configuration; start it with --envoy-ratelimit-config",
            ));
        };
        let answer_by = deadline::answer_by(request.metadata());
        let request = request.into_inner();
        let plan = Plan::new(&source.current(), &request)?;
        if plan.limits.is_empty() {
            let now_us = chrono::Utc::now().timestamp_micros();
            return Ok(Response::new(plan.respond(&[], now_us)));
        }
        let limits: Vec<DescriptorLimit<'_>> = plan
            .limits
            .iter()
            .map(|l| DescriptorLimit {
                counter: &l.counter,
                limit: l.limit,
                hits: l.hits,
                enforcement: l.mode,
            })
            .collect();
        let charge = !plan.refused_before_counting();
        let (statuses, now_us) = self
            .limiter
            .descriptors(&request.domain, &limits, charge, answer_by)
            .await?;
        Ok(Response::new(plan.respond(&statuses, now_us)))
    }
}
