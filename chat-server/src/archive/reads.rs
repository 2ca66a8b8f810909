//! Reading the archive: a room's events of one epoch by offset range, the newest before an
//! offset, the offsets an epoch spans, and which epochs a room had.
//!
//! Keeps true: every query is bounded twice, by a row limit its caller gives (at most
//! `MAX_ARCHIVE_READ` rows) and by `READ_TIMEOUT` (a PostgreSQL that is down or slow costs a
//! reader at most that long, never a hang); after PostgreSQL could not be reached, reads fail
//! at once for `DOWN_FOR` (so an outage costs one reader the timeout, not every one), and
//! each failure counts in `chat_archive_errors_total{reason="read"}`; reads use their own small pool, so a history
//! request never waits behind the archiver's inserts; a row comes back through
//! `RoomEvent::from_json`, the conversion Redis reads use, so a record reads the same from
//! either store. Every query uses the primary key `(room, epoch, offset)` or the index
//! `(room, sent_at DESC, offset DESC)`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::store::connect_options;
use super::{ArchiveConfig, ArchiveError};
use crate::metrics::Metrics;
use crate::model::RoomEvent;

/// The longest one archive read may take, waiting for a connection included.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The most rows one read returns (the longest replay, `x-history` or recovery, is 10,000).
pub const MAX_ARCHIVE_READ: u64 = 10_000;

/// Connections the readers of one instance share.
const READ_CONNECTIONS: u32 = 4;

/// How long reads fail fast after PostgreSQL could not be reached.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// Reads from the archive database.
#[derive(Debug, Clone)]
pub struct ArchiveReads {
    pool: PgPool,
    metrics: Arc<Metrics>,
    /// Until when reads fail without trying (PostgreSQL was unreachable).
    down_until: Arc<Mutex<Option<Instant>>>,
}

/// Whether `e` says PostgreSQL is unreachable (rather than one query failing).
fn unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

/// Offsets travel as `bigint`; one past `i64::MAX` is no offset any room reaches.
fn db_offset(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

fn events(rows: Vec<String>) -> Read<Events> {
    rows.iter()
        .map(|raw| {
            RoomEvent::from_json(raw)
                .map_err(|e| ArchiveError::Postgres(format!("unreadable archived record: {e}")))
        })
        .collect()
}

/// What history reads ask of the archive (PostgreSQL in production; a map in unit tests).
/// Events come back oldest first; offsets the archive lacks are simply absent.
/// What a read returns: events oldest first.
pub type Events = Vec<Arc<RoomEvent>>;
/// A read's result.
pub type Read<T> = Result<T, ArchiveError>;

#[async_trait]
pub trait ArchiveSource: Send + Sync {
    /// The events of `room` in `epoch` with offsets `from..=to`, at most `MAX_ARCHIVE_READ`.
    async fn range(&self, room: &str, epoch: &str, from: u64, to: u64) -> Read<Events>;
    /// The newest `n` (at most `MAX_ARCHIVE_READ`) events of `room` in `epoch` with
    /// offsets below `before`.
    async fn newest_before(&self, room: &str, epoch: &str, before: u64, n: u64) -> Read<Events>;
    /// The lowest and highest offsets of `room` in `epoch`; `None` if it has none.
    async fn bounds(&self, room: &str, epoch: &str) -> Read<Option<(u64, u64)>>;
    /// The epoch of `room`'s newest event; `None` if the archive has none.
    async fn latest_epoch(&self, room: &str) -> Read<Option<String>>;
    /// The epoch `room` had before `epoch`, if the archive holds any of it.
    async fn previous_epoch(&self, room: &str, epoch: &str) -> Read<Option<String>>;
}

impl ArchiveReads {
    /// A lazily connecting pool for `config` (PostgreSQL down never stops start-up).
    pub fn new(
        config: &ArchiveConfig,
        metrics: Arc<Metrics>,
    ) -> Result<ArchiveReads, ArchiveError> {
        let options = connect_options(config, "chat-server-reads")?;
        let pool = PgPoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .acquire_timeout(READ_TIMEOUT)
            .connect_lazy_with(options);
        Ok(ArchiveReads {
            pool,
            metrics,
            down_until: Arc::default(),
        })
    }

    fn down_until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs one query within `READ_TIMEOUT`, or fails at once while PostgreSQL is known down.
    async fn bounded<T>(
        &self,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, ArchiveError> {
        if self.down_until().is_some_and(|t| Instant::now() < t) {
            self.metrics.archive_error("read");
            return Err(ArchiveError::Postgres(format!(
                "unreachable (a read failed less than {} s ago)",
                DOWN_FOR.as_secs()
            )));
        }
        let (error, down) = match tokio::time::timeout(READ_TIMEOUT, query).await {
            Ok(Ok(value)) => {
                *self.down_until() = None;
                return Ok(value);
            }
            Ok(Err(e)) => (e.to_string(), unreachable(&e)),
            Err(_) => (
                format!("read timed out after {} ms", READ_TIMEOUT.as_millis()),
                true,
            ),
        };
        self.metrics.archive_error("read");
        if down {
            *self.down_until() = Some(Instant::now() + DOWN_FOR);
        }
        Err(ArchiveError::Postgres(error))
    }
}

#[async_trait]
impl ArchiveSource for ArchiveReads {
    /// The archived events of `room` in `epoch` with offsets `from..=to`, oldest first, at most
    /// `MAX_ARCHIVE_READ` of them (offsets the archive lacks are simply absent).
    async fn range(&self, room: &str, epoch: &str, from: u64, to: u64) -> Read<Events> {
        if to < from {
            return Ok(Vec::new());
        }
        let limit = (to - from + 1).min(MAX_ARCHIVE_READ);
        let rows: Vec<String> = self
            .bounded(
                sqlx::query_scalar(
                    r#"SELECT record::text FROM chat_messages
                       WHERE room = $1 AND epoch = $2 AND "offset" BETWEEN $3 AND $4
                       ORDER BY "offset" LIMIT $5"#,
                )
                .bind(room)
                .bind(epoch)
                .bind(db_offset(from))
                .bind(db_offset(to))
                .bind(db_offset(limit))
                .fetch_all(&self.pool),
            )
            .await?;
        events(rows)
    }

    /// The newest `n` (at most `MAX_ARCHIVE_READ`) archived events of `room` in `epoch`
    /// with offsets below `before`, oldest first.
    async fn newest_before(&self, room: &str, epoch: &str, before: u64, n: u64) -> Read<Events> {
        let rows: Vec<String> = self
            .bounded(
                sqlx::query_scalar(
                    r#"SELECT record::text FROM chat_messages
                       WHERE room = $1 AND epoch = $2 AND "offset" < $3
                       ORDER BY "offset" DESC LIMIT $4"#,
                )
                .bind(room)
                .bind(epoch)
                .bind(db_offset(before))
                .bind(db_offset(n.min(MAX_ARCHIVE_READ)))
                .fetch_all(&self.pool),
            )
            .await?;
        let mut out = events(rows)?;
        out.reverse();
        Ok(out)
    }

    /// The lowest and highest archived offsets of `room` in `epoch`; `None` if it has none.
    async fn bounds(&self, room: &str, epoch: &str) -> Read<Option<(u64, u64)>> {
        let (lo, hi): (Option<i64>, Option<i64>) = self
            .bounded(
                sqlx::query_as(
                    r#"SELECT min("offset"), max("offset") FROM chat_messages
                       WHERE room = $1 AND epoch = $2"#,
                )
                .bind(room)
                .bind(epoch)
                .fetch_one(&self.pool),
            )
            .await?;
        Ok(match (lo, hi) {
            (Some(lo), Some(hi)) => Some((
                u64::try_from(lo).unwrap_or(0),
                u64::try_from(hi).unwrap_or(0),
            )),
            _ => None,
        })
    }

    /// The epoch of `room`'s newest archived event; `None` if the archive has none.
    async fn latest_epoch(&self, room: &str) -> Read<Option<String>> {
        self.bounded(
            sqlx::query_scalar(
                r#"SELECT epoch FROM chat_messages WHERE room = $1 AND sent_at IS NOT NULL
                   ORDER BY sent_at DESC, "offset" DESC LIMIT 1"#,
            )
            .bind(room)
            .fetch_optional(&self.pool),
        )
        .await
    }

    /// The epoch `room` had before `epoch`: the newest archived event of another epoch sent no
    /// later than `epoch`'s oldest archived one (or any time, if `epoch` has none archived).
    async fn previous_epoch(&self, room: &str, epoch: &str) -> Read<Option<String>> {
        self.bounded(
            sqlx::query_scalar(
                r#"SELECT epoch FROM chat_messages
                   WHERE room = $1 AND epoch <> $2
                     AND sent_at <= COALESCE(
                         (SELECT sent_at FROM chat_messages
                          WHERE room = $1 AND epoch = $2 ORDER BY "offset" LIMIT 1),
                         'infinity'::timestamptz)
                   ORDER BY sent_at DESC, "offset" DESC LIMIT 1"#,
            )
            .bind(room)
            .bind(epoch)
            .fetch_optional(&self.pool),
        )
        .await
    }
}
