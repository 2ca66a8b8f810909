//! chat-postgres: the throwaway PostgreSQL of the tests (`chat_tests::postgres`), for scripts
//! (the archive benchmark in `scripts/bench`), so that they start it exactly as the tests do.
//!
//! Prints `URL postgres://...` on stdout once the server answers, then keeps it running until
//! SIGTERM or SIGINT, and stops it and removes its directory on the way out.

use std::io::Write;

use chat_tests::postgres::Postgres;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let pg = Postgres::start().await;
    let mut out = std::io::stdout();
    writeln!(out, "URL {}", pg.url())?;
    out.flush()?;
    tokio::select! {
        _ = terminate.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    // Dropping the handle stops the server (fast shutdown) and removes its directory.
    drop(pg);
    Ok(())
}
