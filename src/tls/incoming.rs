//! Connections of a TLS listener, handshakes done: for tonic (a `Stream`)
//! and for axum (a `Listener`).
//!
//! Handshakes run in their own tasks with a deadline, so a client that
//! connects and says nothing holds up no one else's connection.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{Listener, ServerTls};

/// The longest a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; beyond it the accept loop waits, so a
/// flood of silent connections costs bounded memory.
const MAX_HANDSHAKES: usize = 1024;
/// Connections handshaken but not yet taken by the server.
const READY_CONNECTIONS: usize = 64;
/// The pause after a failed accept (out of file descriptors, say), so the
/// loop does not spin while the cause lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A listener's connections, each through its TLS handshake.
pub struct TlsIncoming {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    /// The accept loop; it ends when this is dropped (the server stopped).
    accepting: JoinHandle<()>,
}

impl TlsIncoming {
    /// Accepts on `listener`, handshaking with the configuration in force
    /// for `side` when each connection arrives.
    pub fn new(listener: TcpListener, tls: Arc<ServerTls>, side: Listener) -> TlsIncoming {
        let local_addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (ready_tx, ready) = mpsc::channel(READY_CONNECTIONS);
        let accepting = tokio::spawn(accept_forever(listener, tls, side, ready_tx));
        TlsIncoming {
            ready,
            local_addr,
            accepting,
        }
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_forever(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    side: Listener,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Without TCP_NODELAY a response written in pieces waits out
        // Nagle's delay on the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.config(side));
        let ready = ready.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(slot);
            match handshake {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, remote)).await;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%remote, %error, "TLS handshake failed");
                    ::metrics::counter!("apikeyd_tls_handshake_failures_total").increment(1);
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    ::metrics::counter!("apikeyd_tls_handshake_failures_total").increment(1);
                }
            }
        });
    }
}

/// For tonic's `serve_with_incoming_shutdown`.
impl futures_util::Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready
            .poll_recv(cx)
            .map(|next| next.map(|(stream, _)| Ok(stream)))
    }
}

/// For `axum::serve`.
impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
