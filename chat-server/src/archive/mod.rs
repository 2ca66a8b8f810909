//! The durable message archive in PostgreSQL: the write path here, the reads in `reads.rs`.
//!
//! Every room event the Redis backend appends also goes to one archive Stream with a consumer
//! group that every instance reads (`broker/redis/archive.rs`, `lua/common.lua`). Each
//! instance's archiver takes a bounded batch (new entries, or entries another instance has held
//! unarchived past `CHAT_ARCHIVE_CLAIM_IDLE_MS`), stores it in one INSERT keyed by (room, epoch,
//! offset) with `ON CONFLICT DO NOTHING`, and only then acknowledges and deletes it from the
//! Stream.
//!
//! What it keeps true:
//! - A record is stored at most once (the key), and at least once unless the Stream's bound
//!   `CHAT_ARCHIVE_BACKLOG` dropped it first (counted in `chat_archive_lost_entries`).
//! - PostgreSQL or Redis down only delays archiving: the batch is held and retried with
//!   backoff, chat and readiness are untouched, and lag and errors show on `/metrics`.
//! - Memory is bounded: one batch of at most `CHAT_ARCHIVE_BATCH` records per instance.

mod batch;
mod reads;
mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use self::batch::{Batch, Entry, Row, build};
pub use self::reads::{ArchiveReads, ArchiveSource, Events, MAX_ARCHIVE_READ, READ_TIMEOUT, Read};
pub use self::store::{
    SslMode, Store, check_private_key, check_private_key_pem, check_root_cert, check_root_cert_pem,
    check_url,
};
use crate::metrics::Metrics;

/// The PostgreSQL message archive (`CHAT_ARCHIVE_*`).
#[derive(Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// The URL as configured (checked to parse as a PostgreSQL URL).
    pub url: String,
    /// From `CHAT_ARCHIVE_PASSWORD_FILE`; replaces any password in the URL.
    pub password: Option<String>,
    /// `CHAT_ARCHIVE_SSL_MODE`; replaces the URL's `sslmode`.
    pub ssl_mode: Option<SslMode>,
    /// `CHAT_ARCHIVE_SSL_ROOT_CERT_FILE` (checked to hold PEM certificates); replaces the URL's
    /// `sslrootcert`.
    pub ssl_root_cert: Option<std::path::PathBuf>,
    /// `CHAT_ARCHIVE_SSL_CERT_FILE` and `CHAT_ARCHIVE_SSL_KEY_FILE` (both checked to hold
    /// PEM): the client certificate and its key; replace the URL's `sslcert`/`sslkey`.
    pub ssl_client: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub backlog: u64,
    pub batch: usize,
    pub claim_idle: Duration,
}

impl std::fmt::Debug for ArchiveConfig {
    // The URL may carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveConfig")
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("ssl_client", &self.ssl_client)
            .field("backlog", &self.backlog)
            .field("batch", &self.batch)
            .field("claim_idle", &self.claim_idle)
            .finish_non_exhaustive()
    }
}

/// The largest `CHAT_ARCHIVE_BATCH`: one INSERT's arrays stay well under PostgreSQL's limits.
pub const MAX_ARCHIVE_BATCH: usize = 10_000;

/// Why an archive step failed; every one is retried.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("bad archive configuration: {0}")]
    Config(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("Redis: {0}")]
    Redis(String),
}

impl ArchiveError {
    /// The `reason` label of `chat_archive_errors_total`.
    fn reason(&self) -> &'static str {
        match self {
            ArchiveError::Config(_) => "config",
            ArchiveError::Postgres(_) => "postgres",
            ArchiveError::Redis(_) => "redis",
        }
    }
}

/// How the archive Stream stands, across all instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Records not yet archived.
    pub waiting: u64,
    /// How long the oldest of them has waited.
    pub oldest_age: Duration,
    /// Records ever dropped unarchived at the bound.
    pub lost: u64,
}

/// The archive Stream, as the archiver uses it (Redis in production).
#[async_trait]
pub trait ArchiveQueue: Send + Sync {
    /// Creates the consumer group if it is missing (at start, and after Redis lost it).
    async fn prepare(&self) -> Result<(), ArchiveError>;
    /// Up to `count` entries no instance has read yet, now theirs to archive (no waiting).
    async fn read_new(&self, count: usize) -> Result<Vec<Entry>, ArchiveError>;
    /// Takes over up to `count` entries held unarchived for `min_idle`, scanning from `cursor`;
    /// the cursor to go on from ("0-0": the scan is through) and the entries.
    async fn claim(
        &self,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<(String, Vec<Entry>), ArchiveError>;
    /// Acknowledges and deletes stored entries.
    async fn ack(&self, ids: &[String]) -> Result<(), ArchiveError>;
    async fn stats(&self) -> Result<QueueStats, ArchiveError>;
}

/// When to look for entries a dead instance left: a whole scan of the pending list every half
/// idle time, and a scan that stopped at its COUNT goes on at once.
#[derive(Debug)]
struct ClaimClock {
    every: Duration,
    last_scan: Option<Instant>,
    cursor: String,
}

impl ClaimClock {
    fn new(idle: Duration) -> ClaimClock {
        ClaimClock {
            every: idle / 2,
            last_scan: None,
            cursor: "0-0".into(),
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.cursor != "0-0"
            || self
                .last_scan
                .is_none_or(|last| now.saturating_duration_since(last) >= self.every)
    }

    /// Records a claim that returned `next` as its cursor.
    fn claimed(&mut self, next: String, now: Instant) {
        if next == "0-0" {
            self.last_scan = Some(now);
        }
        self.cursor = next;
    }
}

/// Retry delays: 100 ms doubling to 5 s, back to the start after a success.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = Duration::from_millis(100).saturating_mul(1 << self.failures.min(6));
        self.failures = self.failures.saturating_add(1);
        d.min(Duration::from_secs(5))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// How long to wait for new entries when the Stream had none.
const POLL: Duration = Duration::from_millis(200);
/// How often the lag gauges are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// One instance's archiver.
pub struct Archiver {
    store: Store,
    queue: Arc<dyn ArchiveQueue>,
    metrics: Arc<Metrics>,
    batch: usize,
    claim_idle: Duration,
    stop: CancellationToken,
}

impl Archiver {
    /// Starts the archiver and its lag reporter in the background; they end with `stop`.
    pub fn spawn(
        config: &ArchiveConfig,
        queue: Arc<dyn ArchiveQueue>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Result<(), ArchiveError> {
        let archiver = Archiver {
            store: Store::new(config)?,
            queue,
            metrics,
            batch: config.batch,
            claim_idle: config.claim_idle,
            stop,
        };
        let archiver = Arc::new(archiver);
        tokio::spawn(archiver.clone().report_lag());
        tokio::spawn(archiver.run());
        Ok(())
    }

    /// Sleeps `d` unless stopped first; whether to go on.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }

    fn failed(&self, step: &'static str, e: &ArchiveError, retry_in: Duration) {
        self.metrics.archive_error(e.reason());
        warn!(step, error = %e, retry_in_ms = retry_in.as_millis() as u64, "archive step failed");
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        loop {
            match self.store.migrate().await {
                Ok(()) => break,
                Err(e) => {
                    let d = backoff.next();
                    self.failed("migrate", &e, d);
                    if !self.pause(d).await {
                        return;
                    }
                }
            }
        }
        info!("archive schema ready");
        backoff.reset();
        let mut claims = ClaimClock::new(self.claim_idle);
        let mut prepared = false;
        // The batch being stored: kept across failures, so nothing read is dropped.
        let mut held: Option<Batch> = None;
        while !self.stop.is_cancelled() {
            let batch = match held.take() {
                Some(b) => b,
                None => {
                    if !prepared {
                        if let Err(e) = self.queue.prepare().await {
                            let d = backoff.next();
                            self.failed("prepare", &e, d);
                            self.pause(d).await;
                            continue;
                        }
                        prepared = true;
                    }
                    match self.next_entries(&mut claims).await {
                        Ok(entries) if entries.is_empty() => {
                            self.pause(POLL).await;
                            continue;
                        }
                        Ok(entries) => build(entries),
                        Err(e) => {
                            // NOGROUP after Redis lost its data, or Redis away: make sure of
                            // the group again before the next read.
                            prepared = false;
                            let d = backoff.next();
                            self.failed("read", &e, d);
                            self.pause(d).await;
                            continue;
                        }
                    }
                }
            };
            match self.store_batch(&batch).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    let d = backoff.next();
                    self.failed("store", &e, d);
                    held = Some(batch);
                    self.pause(d).await;
                }
            }
        }
    }

    /// Entries a dead instance left when a scan is due, else new ones.
    async fn next_entries(&self, claims: &mut ClaimClock) -> Result<Vec<Entry>, ArchiveError> {
        if claims.due(Instant::now()) {
            let (next, claimed) = self
                .queue
                .claim(self.claim_idle, &claims.cursor, self.batch)
                .await?;
            claims.claimed(next, Instant::now());
            if !claimed.is_empty() {
                info!(entries = claimed.len(), "took over unarchived entries");
                return Ok(claimed);
            }
        }
        self.queue.read_new(self.batch).await
    }

    /// Inserts, then acknowledges: a failure between the two stores the batch again on retry,
    /// which the key makes harmless.
    async fn store_batch(&self, batch: &Batch) -> Result<(), ArchiveError> {
        let stored = self.store.insert(&batch.rows).await?;
        self.queue.ack(&batch.ids).await?;
        self.metrics.archived.inc_by(stored);
        if batch.unreadable > 0 {
            warn!(
                entries = batch.unreadable,
                "archive entries without a readable record acknowledged"
            );
            self.metrics.archive_error("unreadable");
        }
        Ok(())
    }

    /// Keeps the lag gauges current, whatever the archiver is waiting for.
    /// While Redis is down only the first failure of a run is a warning (the rest are debug),
    /// so an outage gives one line per instance, not one a second.
    async fn report_lag(self: Arc<Self>) {
        let mut failing = 0u64;
        while self.pause(STATS_EVERY).await {
            match self.queue.stats().await {
                Ok(s) => {
                    if failing > 0 {
                        info!(failed_reads = failing, "archive lag readable again");
                        failing = 0;
                    }
                    self.metrics
                        .archive_lag_entries
                        .set(i64::try_from(s.waiting).unwrap_or(i64::MAX));
                    self.metrics
                        .archive_lag_seconds
                        .set(s.oldest_age.as_secs_f64());
                    self.metrics
                        .archive_lost_entries
                        .set(i64::try_from(s.lost).unwrap_or(i64::MAX));
                }
                Err(e) => {
                    failing += 1;
                    if failing == 1 {
                        warn!(error = %e, "could not read the archive lag; retrying quietly");
                    } else {
                        debug!(error = %e, failing, "archive lag still unreadable");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_scan_runs_at_start_then_every_half_idle_time() {
        let idle = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut c = ClaimClock::new(idle);
        assert!(c.due(t0), "at start");
        c.claimed("0-0".into(), t0);
        assert!(!c.due(t0 + Duration::from_secs(4)));
        assert!(c.due(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn a_claim_scan_cut_by_its_count_goes_on_at_once_from_its_cursor() {
        let t0 = Instant::now();
        let mut c = ClaimClock::new(Duration::from_secs(10));
        c.claimed("0-0".into(), t0);
        c.claimed("1700-3".into(), t0);
        assert!(c.due(t0), "more to scan");
        assert_eq!(c.cursor, "1700-3");
        c.claimed("0-0".into(), t0);
        assert!(!c.due(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn retries_back_off_to_five_seconds_and_start_over_after_a_success() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| b.next().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }
}
