//! The signals the long-running commands stop on, in one place so they all stop alike.
//! Ctrl-C or SIGTERM: a server shuts down gracefully, a deploy rolls back what it did.

/// Resolves at Ctrl-C or SIGTERM.
pub async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
