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
use crate::archive::ArchiveSource;

/// The Redis history with the archive behind it.
pub struct ArchivedHistory {
    inner: Arc<dyn History>,
    archive: Arc<dyn ArchiveSource>,
}

impl ArchivedHistory {
    pub fn new(inner: Arc<dyn History>, archive: Arc<dyn ArchiveSource>) -> ArchivedHistory {
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
        page::read_page(&*self.inner, Some(&*self.archive), room, q).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::archive::{ArchiveError, Events, Read};
    use crate::broker::Broker;
    use crate::broker::memory::MemoryStore;
    use crate::broker::page::event_at;
    use crate::hub::Hub;
    use crate::model::{Draft, EventKind, RoomEvent, Sender};

    /// The archive as a map, which can be made unreachable.
    #[derive(Default)]
    struct FakeArchive {
        rows: Mutex<BTreeMap<(String, String, u64), Arc<RoomEvent>>>,
        down: AtomicBool,
    }

    impl FakeArchive {
        fn store(&self, e: &Arc<RoomEvent>) {
            let key = (e.room().to_owned(), e.epoch().to_owned(), e.offset());
            self.rows.lock().unwrap().insert(key, e.clone());
        }

        fn forget(&self, room: &str, epoch: &str, offset: u64) {
            let key = (room.to_owned(), epoch.to_owned(), offset);
            self.rows.lock().unwrap().remove(&key);
        }

        /// The rows of (room, epoch) whose offsets `keep` accepts, oldest first.
        fn select(&self, room: &str, epoch: &str, keep: impl Fn(u64) -> bool) -> Read<Events> {
            if self.down.load(Ordering::Relaxed) {
                return Err(ArchiveError::Postgres("down".into()));
            }
            Ok(self
                .rows
                .lock()
                .unwrap()
                .iter()
                .filter(|((r, e, o), _)| r == room && e == epoch && keep(*o))
                .map(|(_, ev)| ev.clone())
                .collect())
        }
    }

    #[async_trait]
    impl ArchiveSource for FakeArchive {
        async fn range(&self, room: &str, epoch: &str, from: u64, to: u64) -> Read<Events> {
            self.select(room, epoch, |o| (from..=to).contains(&o))
        }

        async fn newest_before(
            &self,
            room: &str,
            epoch: &str,
            before: u64,
            n: u64,
        ) -> Read<Events> {
            let mut rows = self.select(room, epoch, |o| o < before)?;
            let skip = rows.len().saturating_sub(n as usize);
            Ok(rows.split_off(skip))
        }

        async fn bounds(&self, room: &str, epoch: &str) -> Read<Option<(u64, u64)>> {
            let rows = self.select(room, epoch, |_| true)?;
            Ok(rows
                .first()
                .zip(rows.last())
                .map(|(a, b)| (a.offset(), b.offset())))
        }

        async fn latest_epoch(&self, room: &str) -> Read<Option<String>> {
            let rows = self.rows.lock().unwrap();
            Ok(rows
                .keys()
                .rev()
                .find(|(r, _, _)| r == room)
                .map(|(_, e, _)| e.clone()))
        }

        async fn previous_epoch(&self, room: &str, epoch: &str) -> Read<Option<String>> {
            let rows = self.rows.lock().unwrap();
            Ok(rows
                .keys()
                .find(|(r, e, _)| r == room && e != epoch)
                .map(|(_, e, _)| e.clone()))
        }
    }

    /// A memory history keeping `window` events of room "r", `n` events published to it and
    /// every one archived; the history with the archive behind it, the archive, the epoch.
    async fn archived_room(window: usize, n: usize) -> (ArchivedHistory, Arc<FakeArchive>, String) {
        let store = MemoryStore::new(Hub::new(), window);
        let archive = Arc::new(FakeArchive::default());
        let mut epoch = String::new();
        for i in 0..n {
            let sender = Sender {
                id: "u".into(),
                name: "U".into(),
            };
            let draft = Draft::new(EventKind::Chat, sender, format!("m{i}"), "s");
            let event = store.publish("r", draft).await.unwrap();
            archive.store(&event);
            epoch = event.epoch().to_owned();
        }
        let history = ArchivedHistory::new(store, archive.clone());
        (history, archive, epoch)
    }

    fn offsets(events: &[Arc<RoomEvent>]) -> Vec<u64> {
        events.iter().map(|e| e.offset()).collect()
    }

    fn query(before: Option<u64>, limit: usize) -> PageQuery {
        PageQuery {
            epoch: None,
            since: None,
            before,
            limit,
        }
    }

    #[tokio::test]
    async fn a_read_below_the_window_gets_the_archived_offsets_in_front_without_a_gap() {
        let (history, _, _) = archived_room(5, 20).await;
        let page = history.read_after("r", 3, 100).await.unwrap();
        assert_eq!(page.info.first_offset, 16);
        assert_eq!(offsets(&page.events), (4..=20).collect::<Vec<_>>());
        let page = history.read_after("r", 3, 5).await.unwrap();
        assert_eq!(offsets(&page.events), [4, 5, 6, 7, 8]);
    }

    #[tokio::test]
    async fn a_hole_in_the_archive_or_an_unreadable_archive_leaves_redis_alone() {
        let (history, archive, epoch) = archived_room(5, 20).await;
        archive.forget("r", &epoch, 7);
        let page = history.read_after("r", 3, 100).await.unwrap();
        assert_eq!(offsets(&page.events), [16, 17, 18, 19, 20]);
        // After the hole the archive joins Redis again.
        let page = history.read_after("r", 7, 100).await.unwrap();
        assert_eq!(offsets(&page.events), (8..=20).collect::<Vec<_>>());
        archive.down.store(true, Ordering::Relaxed);
        let page = history.read_after("r", 7, 100).await.unwrap();
        assert_eq!(offsets(&page.events), [16, 17, 18, 19, 20]);
    }

    #[tokio::test]
    async fn the_last_k_reach_into_the_archive_back_to_the_newest_hole() {
        let (history, archive, epoch) = archived_room(5, 20).await;
        let page = history.read_last("r", 12).await.unwrap();
        assert_eq!(offsets(&page.events), (9..=20).collect::<Vec<_>>());
        archive.forget("r", &epoch, 12);
        let page = history.read_last("r", 12).await.unwrap();
        assert_eq!(offsets(&page.events), (13..=20).collect::<Vec<_>>());
        archive.down.store(true, Ordering::Relaxed);
        let page = history.read_last("r", 12).await.unwrap();
        assert_eq!(offsets(&page.events), (16..=20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn pages_across_the_window_come_from_both_stores_each_offset_once() {
        let (history, _, _) = archived_room(5, 20).await;
        let page = history.page("r", &query(None, 8)).await.unwrap();
        assert_eq!((page.from, page.to, page.has_more), (13, 20, true));
        assert_eq!(offsets(&page.events), (13..=20).collect::<Vec<_>>());
        assert_eq!(page.info.first_offset, 1);
        let page = history.page("r", &query(Some(13), 8)).await.unwrap();
        assert_eq!(offsets(&page.events), (5..=12).collect::<Vec<_>>());
        let page = history.page("r", &query(Some(5), 8)).await.unwrap();
        assert_eq!(offsets(&page.events), [1, 2, 3, 4]);
        assert!(!page.has_more && page.missing.is_empty());
    }

    #[tokio::test]
    async fn a_page_names_what_neither_store_holds() {
        let (history, archive, epoch) = archived_room(5, 20).await;
        for offset in [3, 4, 9] {
            archive.forget("r", &epoch, offset);
        }
        let page = history.page("r", &query(Some(11), 10)).await.unwrap();
        assert_eq!(offsets(&page.events), [1, 2, 5, 6, 7, 8, 10]);
        assert_eq!(page.missing, [(3, 4), (9, 9)]);
    }

    #[tokio::test]
    async fn without_the_archive_only_pages_of_the_window_are_served() {
        let (history, archive, _) = archived_room(5, 20).await;
        archive.down.store(true, Ordering::Relaxed);
        let page = history.page("r", &query(None, 5)).await.unwrap();
        assert_eq!(offsets(&page.events), (16..=20).collect::<Vec<_>>());
        let err = history.page("r", &query(Some(16), 5)).await.unwrap_err();
        assert!(matches!(err, PageError::ArchiveUnavailable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn an_old_epoch_is_read_from_the_archive_and_named_as_the_previous_one() {
        let (history, archive, _) = archived_room(5, 3).await;
        for offset in 1..=4 {
            archive.store(&event_at("old", offset));
        }
        let page = history.page("r", &query(None, 10)).await.unwrap();
        assert_eq!(offsets(&page.events), [1, 2, 3]);
        assert_eq!(page.previous_epoch.as_deref(), Some("old"));
        let old = PageQuery {
            epoch: Some("old".into()),
            ..query(None, 10)
        };
        let page = history.page("r", &old).await.unwrap();
        assert_eq!(page.info.epoch, "old");
        assert_eq!(offsets(&page.events), [1, 2, 3, 4]);
        let none = PageQuery {
            epoch: Some("never".into()),
            ..query(None, 10)
        };
        let err = history.page("r", &none).await.unwrap_err();
        assert!(matches!(err, PageError::NotFound(_)), "{err:?}");
    }
}
