//! Caller authentication for the data plane, by configuration: Validate
//! needs a root key with `validate`, CheckRateLimit one with `ratelimit`, in
//! `authorization: Bearer` metadata. It wraps the generated service, so the
//! services stay unaware of it and a refused call never reaches them. The
//! check costs no database read and no argon2 run once the credential is
//! warm (see [`crate::access`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::access::RootKeyGate;
use crate::domain::Permission;

/// `inner`, answering only calls that carry a root key holding `permission`
/// (every call, when no gate is given: the credential is off).
#[derive(Clone)]
pub struct ServiceCredential<S> {
    inner: S,
    gate: Option<RootKeyGate>,
    permission: Permission,
}

impl<S> ServiceCredential<S> {
    pub fn new(inner: S, gate: Option<RootKeyGate>, permission: Permission) -> Self {
        ServiceCredential {
            inner,
            gate,
            permission,
        }
    }
}

impl<S: NamedService> NamedService for ServiceCredential<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for ServiceCredential<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The service polled ready is the one that must take the call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let (gate, permission) = (self.gate.clone(), self.permission);
        Box::pin(async move {
            if let Some(gate) = gate {
                // Boxed: its state (a root key's lookup and verification) is
                // large, and inline it would be copied on every call, with a
                // credential or without.
                let authorized = Box::pin(gate.authorize_service(request.headers(), permission));
                if let Err(refused) = authorized.await {
                    return Ok(Status::from(refused).into_http());
                }
            }
            inner.call(request).await
        })
    }
}
