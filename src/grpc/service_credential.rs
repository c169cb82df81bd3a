//! Caller authentication for the data plane, by configuration: Validate
//! needs a root key with `validate`, CheckRateLimit one with `ratelimit`, in
//! `authorization: Bearer` metadata; or the call must come on a connection
//! whose client certificate the client CA signed (mutual TLS). It wraps the
//! generated service, so the services stay unaware of it and a refused call
//! never reaches them. The root-key check costs no database read and no
//! argon2 run once the credential is warm (see [`crate::access`]); the
//! certificate was verified once, at the handshake.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::access::RootKeyGate;
use crate::domain::Permission;
use crate::tls::ClientCertificate;

/// What a data-plane call must show.
#[derive(Clone)]
pub enum DataPlaneGuard {
    /// Nothing: anyone who reaches the port.
    Open,
    /// A root key holding the service's permission.
    RootKey(RootKeyGate),
    /// A verified client certificate on its connection.
    ClientCertificate,
}

const NO_CLIENT_CERTIFICATE: &str = "this call needs a client certificate signed by the server's client CA (mutual TLS); connect with one (grpcurl: -cert client.crt -key client.key)";

/// `inner`, answering only calls that show what `guard` asks for
/// (`permission`, for a root key).
#[derive(Clone)]
pub struct ServiceCredential<S> {
    inner: S,
    guard: DataPlaneGuard,
    permission: Permission,
}

impl<S> ServiceCredential<S> {
    pub fn new(inner: S, guard: DataPlaneGuard, permission: Permission) -> Self {
        ServiceCredential {
            inner,
            guard,
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
        // Open (the default): the inner service's own future, with no state
        // of ours around it on every data-plane call.
        if matches!(self.guard, DataPlaneGuard::Open) {
            return Box::pin(self.inner.call(request));
        }
        // The service polled ready is the one that must take the call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let (guard, permission) = (self.guard.clone(), self.permission);
        Box::pin(async move {
            match guard {
                DataPlaneGuard::Open => {}
                DataPlaneGuard::RootKey(gate) => {
                    // Boxed: its state (a root key's lookup and verification)
                    // is large, and inline it would be copied on every call,
                    // with a credential or without.
                    let authorized =
                        Box::pin(gate.authorize_service(request.headers(), permission));
                    if let Err(refused) = authorized.await {
                        return Ok(Status::from(refused).into_http());
                    }
                }
                DataPlaneGuard::ClientCertificate => {
                    if ClientCertificate::of(request.extensions()).is_none() {
                        return Ok(Status::unauthenticated(NO_CLIENT_CERTIFICATE).into_http());
                    }
                }
            }
            inner.call(request).await
        })
    }
}
