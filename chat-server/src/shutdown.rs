//! The process's shutdown trigger: the first SIGTERM or SIGINT.
//!
//! chat-server and chat-operator both stop on it, so both take it from here.

/// Resolves on SIGTERM or SIGINT (Ctrl-C). A signal that cannot be listened for never fires,
/// so the other one still stops the process.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
