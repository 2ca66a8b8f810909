//! History that reaches past the Redis window: the Redis history, with the archive in
//! PostgreSQL for the older offsets of the room's current epoch that Redis no longer holds
//! (trimmed by `CHAT_HISTORY_MAX_LEN`). Sessions use it through the `History` trait, so
//! `x-history`, recovery and gap fills reach the archive without knowing of it; REST pages go
//! through `page::read_page` with the archive.
//!
//! Keeps true: what a slice returns is still one contiguous run of offsets. An archive part is
//! added in front of Redis's only when it joins it without a gap (`After`: every offset from the
//! one asked for up to Redis's oldest; `Last`: the run that ends at Redis's oldest); otherwise,
//! and when PostgreSQL cannot be read within `READ_TIMEOUT`, the slice is Redis's alone, so
//! recovery sees that history does not reach back and answers `x-recovered: false`, never a
//! part.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::{debug, warn};

use super::page::{self, Page, PageError, PageQuery, contiguous_from, contiguous_tail};
use super::{BackendError, History, HistoryPage, RoomInfo, Slice};
use crate::archive::ArchiveReads;

/// The Redis history with the archive behind it.
pub struct ArchivedHistory {
    inner: Arc<dyn History>,
    archive: ArchiveReads,
}

impl ArchivedHistory {
    pub fn new(inner: Arc<dyn History>, archive: ArchiveReads) -> ArchivedHistory {
        ArchivedHistory { inner, archive }
    }

    /// `page` (offsets above `after`, from Redis) with the archived offsets in front of it.
    async fn after(&self, room: &str, after: u64, limit: usize, page: HistoryPage) -> HistoryPage {
        let from = after.saturating_add(1);
        let redis_first = page.info.first_offset;
        if from >= redis_first || limit == 0 {
            return page;
        }
        let to = (redis_first - 1).min(after.saturating_add(limit as u64));
        match self.archive.range(room, &page.info.epoch, from, to).await {
            Ok(older) if contiguous_from(&older, from, to) => {
                let mut events = older;
                events.extend(page.events);
                events.truncate(limit);
                HistoryPage {
                    info: page.info,
                    events,
                }
            }
            Ok(older) => {
                debug!(room, from, to, archived = older.len(), "archive has a gap");
                page
            }
            Err(e) => {
                warn!(room, error = %e, "archive read failed; history from Redis only");
                page
            }
        }
    }

    /// `page` (Redis's newest events) with the newest archived ones before it, up to `count`.
    async fn last(&self, room: &str, count: usize, mut page: HistoryPage) -> HistoryPage {
        let need = count.saturating_sub(page.events.len());
        let redis_first = page.info.first_offset;
        if need == 0 || redis_first <= 1 {
            return page;
        }
        let epoch = page.info.epoch.clone();
        match self
            .archive
            .newest_before(room, &epoch, redis_first, need as u64)
            .await
        {
            Ok(older) => {
                let mut events = contiguous_tail(older, redis_first - 1);
                events.append(&mut page.events);
                page.events = events;
                page
            }
            Err(e) => {
                warn!(room, error = %e, "archive read failed; history from Redis only");
                page
            }
        }
    }
}

#[async_trait]
impl History for ArchivedHistory {
    async fn read(&self, room: &str, slice: Slice) -> Result<HistoryPage, BackendError> {
        let page = self.inner.read(room, slice).await?;
        if page.info.epoch.is_empty() {
            return Ok(page);
        }
        Ok(match slice {
            Slice::Info => page,
            Slice::After { after, limit } => self.after(room, after, limit, page).await,
            Slice::Last { count } => self.last(room, count, page).await,
        })
    }

    async fn create_room(&self, room: &str) -> Result<bool, BackendError> {
        self.inner.create_room(room).await
    }

    async fn rooms(&self) -> Result<Vec<RoomInfo>, BackendError> {
        self.inner.rooms().await
    }

    fn reaches_past_window(&self) -> bool {
        true
    }

    async fn page(&self, room: &str, q: &PageQuery) -> Result<Page, PageError> {
        page::read_page(&*self.inner, Some(&self.archive), room, q).await
    }
}
