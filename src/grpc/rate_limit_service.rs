//! `apikeyd.v1.RateLimitService`: parse, delegate to the limiter, convert.
//! Like Validate it needs no credential: it sits behind the same network
//! boundary, and its counters live in their own namespace, apart from keys'.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::{self, rate_limit_service_server::RateLimitService};
use super::{convert, deadline};
use crate::domain::Limit;
use crate::domain::limit::Subject;
use crate::error::{Error, Result};
use crate::ratelimit::RateLimiter;

pub struct RateLimitApi {
    pub limiter: Arc<RateLimiter>,
}

#[tonic::async_trait]
impl RateLimitService for RateLimitApi {
    async fn check_rate_limit(
        &self,
        request: Request<pb::CheckRateLimitRequest>,
    ) -> Result<Response<pb::CheckRateLimitResponse>, Status> {
        let answer_by = deadline::answer_by(request.metadata());
        let (subject, limit, cost) = parse_check(&request.into_inner())?;
        let status = self.limiter.check(&subject, limit, cost, answer_by).await?;
        Ok(Response::new(pb::CheckRateLimitResponse {
            allowed: status.allowed,
            limit: limit.limit,
            remaining: status.remaining,
            reset_at: Some(convert::timestamp_us(status.reset_at_us)),
            retry_after: Some(convert::duration_us(status.retry_after_us)),
        }))
    }
}

/// A CheckRateLimitRequest's subject, limit and cost (0 counts as 1),
/// checked: everything CheckRateLimit checks before it asks the limiter.
pub fn parse_check(req: &pb::CheckRateLimitRequest) -> Result<(Subject, Limit, u32)> {
    let subject = Subject::parse(&req.namespace, &req.identifier)?;
    let limit = Limit::parse(
        "limit",
        req.limit,
        convert::parse_window("window", req.window.as_ref())?,
        convert::parse_algorithm("algorithm", req.algorithm)?,
    )?;
    let cost = req.cost.max(1);
    if cost > limit.limit {
        return Err(Error::invalid(
            "cost",
            format!(
                "{cost} is above the limit {} and could never be admitted",
                limit.limit
            ),
        ));
    }
    Ok((subject, limit, cost))
}
