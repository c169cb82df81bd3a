//! `apikeyd.v1.RateLimitService`: parse, delegate to the limiter, convert.
//! Like Validate it needs no credential: it sits behind the same network
//! boundary, and its counters live in their own namespace, apart from keys'.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb::{self, rate_limit_service_server::RateLimitService};
use crate::error::{Error, Result};
use crate::ratelimit::{Limit, RateLimiter};

const MAX_NAMESPACE_CHARS: usize = 64;
const MAX_IDENTIFIER_CHARS: usize = 256;

pub struct RateLimitApi {
    pub limiter: Arc<RateLimiter>,
}

#[tonic::async_trait]
impl RateLimitService for RateLimitApi {
    async fn check_rate_limit(
        &self,
        request: Request<pb::CheckRateLimitRequest>,
    ) -> Result<Response<pb::CheckRateLimitResponse>, Status> {
        let req = request.into_inner();
        let namespace = parse_namespace(&req.namespace)?;
        let identifier = parse_identifier(&req.identifier)?;
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
            )
            .into());
        }
        let status = self.limiter.check(namespace, identifier, limit, cost).await;
        Ok(Response::new(pb::CheckRateLimitResponse {
            allowed: status.allowed,
            limit: limit.limit,
            remaining: status.remaining,
            reset_at: Some(convert::timestamp_us(status.reset_at_us)),
            retry_after: Some(convert::duration_us(status.retry_after_us)),
        }))
    }
}

/// 1 to 64 characters, no `:` (it separates the namespace from the identifier).
fn parse_namespace(raw: &str) -> Result<&str> {
    let len = raw.chars().count();
    if len == 0 || len > MAX_NAMESPACE_CHARS || raw.contains(':') {
        return Err(Error::invalid(
            "namespace",
            format!("must be 1 to {MAX_NAMESPACE_CHARS} characters without ':' (got {raw:?})"),
        ));
    }
    Ok(raw)
}

fn parse_identifier(raw: &str) -> Result<&str> {
    let len = raw.chars().count();
    if len == 0 || len > MAX_IDENTIFIER_CHARS {
        return Err(Error::invalid(
            "identifier",
            format!("must be 1 to {MAX_IDENTIFIER_CHARS} characters (got {len})"),
        ));
    }
    Ok(raw)
}
