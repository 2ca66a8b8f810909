//! chat-load: a STOMP load generator for chatcluster.
//!
//! Modes:
//! - `fanout` (default): `--clients` subscribers spread round-robin over the `--url`s and over
//!   `--rooms` rooms, and `--publishers` connections (on the `--publish-url`s if given) that
//!   publish `--rate` messages per second in total (0: as fast as receipts allow, at most
//!   `--window` outstanding per publisher; `--echo` waits for delivery instead of receipts)
//!   with `--body` bytes of content. Every SEND carries
//!   its publish time (`x-t`, microseconds since this process started) and a per-publisher
//!   sequence number (`x-seq: p.n`), so subscribers measure latency, losses, duplicates and
//!   order violations. `--slow N` adds subscribers in room 0 that never read.
//! - `idle`: opens `--clients` subscribed connections, prints `READY connections=N` on stdout,
//!   holds them `--hold` seconds (for an outside script to read the servers' memory).
//! - `connect`: `idle` without the hold; the figure is connections per second.
//!
//! Prints a progress line every second (stderr), a results table at the end (stdout) and with
//! `--json FILE` the same as JSON. Exits 1 when anything was lost, duplicated or reordered, or
//! a connection failed; 2 when the run could not be done at all.

mod fanout;
mod idle;
mod net;
mod report;
mod stats;
mod wire;
mod ws;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use net::{Dialer, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Fanout,
    Idle,
    Connect,
}

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "STOMP load generator for chatcluster")]
pub struct Args {
    /// WebSocket URLs of the instances (repeat the flag).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Where publishers connect (repeatable); default: the `--url`s.
    #[arg(long = "publish-url")]
    publish_urls: Vec<String>,
    #[arg(long, value_enum, default_value_t = Mode::Fanout)]
    mode: Mode,
    /// Subscribed connections (not counting `--slow` ones and publishers).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Messages per second in total (0: as fast as possible, closed-loop).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// With `--rate 0`: SENDs each publisher keeps outstanding at most (until their RECEIPT).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// With `--rate 0`: a SEND is outstanding until it comes back on the publisher's own
    /// subscription to its rooms (closes the loop on delivery, not on the broker's receipt).
    #[arg(long)]
    echo: bool,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Bytes of content per message.
    #[arg(long, default_value_t = 100)]
    body: usize,
    /// Seconds to wait after publishing for the last deliveries.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Subscribers in room 0 that never read (not counted in deliveries or latency).
    #[arg(long, default_value_t = 0)]
    slow: usize,
    /// Loopback source addresses: connection i comes from 127.0.0.(1 + i % K).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    source_ips: u8,
    /// Connection handshakes in flight at most.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Subscribe with presence (default: `x-presence: false`).
    #[arg(long)]
    presence: bool,
    /// Idle mode: seconds to hold the connections open.
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// Runtime worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    #[serde(skip)]
    json: Option<String>,
}

impl Args {
    fn check(&self) -> Result<(), String> {
        let positive = [
            ("--rooms", self.rooms),
            ("--publishers", self.publishers),
            ("--window", self.window),
            ("--connect-concurrency", self.connect_concurrency),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        let seconds = [
            ("--rate", self.rate),
            ("--duration", self.duration),
            ("--drain", self.drain),
            ("--hold", self.hold),
        ];
        if let Some((name, _)) = seconds.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Err(format!("{name} must be a number >= 0"));
        }
        if self.echo && self.rate > 0.0 {
            return Err("--echo applies to --rate 0 only".into());
        }
        if self.mode != Mode::Fanout && self.slow > 0 {
            return Err("--slow applies to --mode fanout only".into());
        }
        Ok(())
    }

    /// Connections this run opens.
    fn connections(&self) -> u64 {
        let extra = if self.mode == Mode::Fanout {
            self.publishers + self.slow
        } else {
            0
        };
        (self.clients + extra) as u64
    }
}

/// What every mode shares.
pub struct Ctx {
    pub urls: Vec<Target>,
    pub publish_urls: Vec<Target>,
    pub dialer: Dialer,
    /// `x-t` counts from here.
    pub start: Instant,
}

impl Ctx {
    /// Room names are unique to this process, so runs never see each other's messages.
    pub fn room_name(&self, r: usize) -> String {
        format!("load-{}-{r}", std::process::id())
    }
}

/// Microseconds since `start`.
pub fn micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A line on stderr every second, with whatever `line` says then.
pub struct ProgressLine {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ProgressLine {
    pub fn spawn(start: Instant, mut line: impl FnMut() -> String + Send + 'static) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                every.tick().await;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = every.tick() => {
                            eprintln!("t={:>6.1}s {}", start.elapsed().as_secs_f64(), line());
                        }
                    }
                }
            }
        });
        ProgressLine { stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("chat-load: {e}");
        return ExitCode::from(2);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        runtime.worker_threads(args.threads);
    }
    let result = runtime
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(&args, start)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chat-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args, start: Instant) -> anyhow::Result<ExitCode> {
    let limit = net::raise_nofile(args.connections())?;
    net::check_ports(args.connections(), args.source_ips)?;
    let mut urls = Vec::new();
    for u in &args.urls {
        urls.push(Target::resolve(u).await?);
    }
    let mut publish_urls = Vec::new();
    for u in &args.publish_urls {
        publish_urls.push(Target::resolve(u).await?);
    }
    if publish_urls.is_empty() {
        publish_urls.clone_from(&urls);
    }
    if args.source_ips > 1 && urls.iter().chain(&publish_urls).any(|t| !t.addr.is_ipv4()) {
        anyhow::bail!("--source-ips needs IPv4 (loopback) URLs");
    }
    eprintln!(
        "mode {:?}: {} connection(s), open-files limit {limit}",
        args.mode,
        args.connections()
    );
    let ctx = Ctx {
        urls,
        publish_urls,
        dialer: Dialer {
            source_ips: args.source_ips,
        },
        start,
    };
    let outcome = match args.mode {
        Mode::Fanout => fanout::run(args, &ctx).await?,
        Mode::Idle => idle::run(args, &ctx, Duration::from_secs_f64(args.hold)).await?,
        Mode::Connect => idle::run(args, &ctx, Duration::ZERO).await?,
    };
    print!("{}", outcome.table(args.mode));
    if let Some(path) = &args.json {
        std::fs::write(path, outcome.json(args.mode, args)?)?;
    }
    Ok(if outcome.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
