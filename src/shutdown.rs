//! What stops the server: SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).

use tokio::signal::unix::{SignalKind, signal};

pub async fn terminate_or_interrupt() {
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
}
