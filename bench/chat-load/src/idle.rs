//! The idle and connect scenarios: open many subscribed connections as fast as the server
//! takes them, say `READY connections=N` on stdout, hold them (idle) or close them at once
//! (connect).
//!
//! The connect time runs from the first TCP connect to the last SUBSCRIBE receipt. While the
//! connections are held an outside script can read the servers' memory; each connection keeps
//! reading (and dropping) whatever arrives, so none turns into a slow consumer, and a
//! connection the server closes meanwhile is counted.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::net::{self, Spec};
use crate::report::Outcome;
use crate::ws::{Incoming, Ws};
use crate::{Args, Ctx, ProgressLine};

/// How long a connection's close may take at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub async fn run(args: &Args, ctx: &Ctx, hold: Duration) -> anyhow::Result<Outcome> {
    let specs: Vec<Spec> = (0..args.clients)
        .map(|i| Spec {
            index: i,
            target: ctx.urls[i % ctx.urls.len()].clone(),
            login: format!("load-idle-{i}"),
            room: Some(ctx.room_name(i % args.rooms)),
            presence: args.presence,
            recv_buffer: None,
        })
        .collect();
    let opened = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let progress = ProgressLine::spawn(ctx.start, {
        let (opened, closed) = (opened.clone(), closed.clone());
        move || {
            format!(
                "connections={:>7} closed by the server={}",
                opened.load(Ordering::Relaxed),
                closed.load(Ordering::Relaxed)
            )
        }
    });

    let connect_start = Instant::now();
    let results = net::open_all(ctx.dialer, specs, args.connect_concurrency, opened.clone()).await;
    let connect_seconds = connect_start.elapsed().as_secs_f64();
    let (conns, failed) = net::successes(results);
    if failed.count > 0 {
        eprintln!("chat-load: {failed}");
    }
    let connections = conns.len() as u64;
    ready(connections)?;

    let stop = CancellationToken::new();
    let mut held = JoinSet::new();
    for ws in conns {
        held.spawn(hold_open(ws, stop.clone(), closed.clone()));
    }
    tokio::time::sleep(hold).await;
    stop.cancel();
    while held.join_next().await.is_some() {}
    progress.stop().await;

    Ok(Outcome {
        connections,
        connect_seconds,
        connect_errors: failed.count,
        dropped: closed.load(Ordering::Relaxed),
        ..Outcome::default()
    })
}

/// The one line an outside script waits for.
fn ready(connections: u64) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY connections={connections}")?;
    out.flush()
}

/// Keeps one connection open until `stop`, then closes it.
async fn hold_open(mut ws: Ws, stop: CancellationToken, closed: Arc<AtomicU64>) {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => break,
            msg = ws.next() => match msg {
                Ok(Incoming::Closed) | Err(_) => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(Incoming::Data(_)) => {}
            },
        }
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, ws.close()).await;
}
