//! The seams between sessions and where messages live: `Broker` (publish and fan-out),
//! `History` (per-room offsets, epochs and stored events), `Presence` (who is in a room, on
//! which instance) and `Registry` (which instances are alive).
//!
//! Each is a trait with an in-memory implementation (`memory`) for a single process; the
//! clustered ones back the same traits with Redis. Sessions only ever see the traits.

mod archived;
pub(crate) mod memory;
pub mod page;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

pub use self::archived::ArchivedHistory;
use self::page::{Page, PageError, PageQuery};
use crate::hub::{Hub, Topic};
use crate::model::{DirectRecord, Draft, Member, RoomEvent};

/// A backend could not do what was asked.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// The store is unreachable (Redis down, failing over); worth retrying later.
    #[error("message store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this server cannot use.
    #[error("message store error: {0}")]
    Protocol(String),
}

/// A room's position: its epoch, the newest offset, and the oldest offset history still holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomInfo {
    pub id: String,
    pub epoch: String,
    /// Offset of the newest event; 0 when the room has none.
    pub last_offset: u64,
    /// Offset of the oldest event kept; `last_offset + 1` when history is empty.
    pub first_offset: u64,
}

/// A slice of a room's history, oldest first.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub info: RoomInfo,
    pub events: Vec<Arc<RoomEvent>>,
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Gives `draft` the room's next offset, stores it in history and delivers it to every
    /// instance with listeners; returns once the store has accepted it.
    async fn publish(&self, room: &str, draft: Draft) -> Result<Arc<RoomEvent>, BackendError>;

    /// Publishes `items` in their order, as `publish` would one by one; a clustered broker
    /// sends them together (one round trip for all). On failure returns how many of the leading
    /// items were accepted and the error of the next one; later items may or may not have been
    /// stored.
    async fn publish_batch(
        &self,
        items: Vec<(String, Draft)>,
    ) -> Result<(), (usize, BackendError)> {
        for (i, (room, draft)) in items.into_iter().enumerate() {
            self.publish(&room, draft).await.map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// Delivers a direct message to every session of `record.to`, on any instance.
    async fn publish_direct(&self, record: DirectRecord) -> Result<(), BackendError>;

    /// Makes sure this instance receives `topic` before returning (the hub already has a
    /// listener for it), so a SUBSCRIBE is receipted only once its messages can arrive.
    async fn listen(&self, topic: &Topic) -> Result<(), BackendError>;

    /// Whether the broker can publish and receive right now (readiness).
    fn is_ready(&self) -> bool;
}

/// Which events of a room a history read returns, besides the room's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    /// None: the position only.
    Info,
    /// Events with offsets above `after`, at most `limit`.
    After { after: u64, limit: usize },
    /// The newest `count` events.
    Last { count: usize },
}

#[async_trait]
pub trait History: Send + Sync + 'static {
    /// The room's position and its `slice` of events, oldest first, read together. A room that
    /// does not exist has an empty epoch, offset 0 and no events.
    async fn read(&self, room: &str, slice: Slice) -> Result<HistoryPage, BackendError>;

    /// The room's position, or `None` if it has never existed (or its history is gone).
    async fn info(&self, room: &str) -> Result<Option<RoomInfo>, BackendError> {
        let page = self.read(room, Slice::Info).await?;
        Ok((!page.info.epoch.is_empty()).then_some(page.info))
    }

    /// Events with offsets above `after`, at most `limit`, oldest first.
    async fn read_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, BackendError> {
        self.read(room, Slice::After { after, limit }).await
    }

    /// The newest `count` events, oldest first.
    async fn read_last(&self, room: &str, count: usize) -> Result<HistoryPage, BackendError> {
        self.read(room, Slice::Last { count }).await
    }

    /// Creates an empty room; `false` when it existed already.
    async fn create_room(&self, room: &str) -> Result<bool, BackendError>;

    /// Every room known, by id.
    async fn rooms(&self) -> Result<Vec<RoomInfo>, BackendError>;

    /// Whether a read may return offsets older than the room's `first_offset` (the archive
    /// holds them), so a recovery from there is worth trying.
    fn reaches_past_window(&self) -> bool {
        false
    }

    /// One REST page of `room`'s history (`page.rs`); here from this history alone.
    async fn page(&self, room: &str, q: &PageQuery) -> Result<Page, PageError> {
        page::read_page(self, None, room, q).await
    }
}

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records `member` in `room` and, if the session was not there yet, publishes its JOIN.
    async fn join(&self, room: &str, member: &Member) -> Result<bool, BackendError>;

    /// Removes a session from a room and, if it was there, publishes its LEAVE.
    async fn leave(&self, room: &str, member: &Member) -> Result<bool, BackendError>;

    /// Everyone in a room, across the cluster.
    async fn members(&self, room: &str) -> Result<Vec<Member>, BackendError>;
}

#[async_trait]
/// An instance's membership of the cluster; renewing it (heartbeats) and reaping dead instances
/// are the implementation's own background work.
pub trait Registry: Send + Sync + 'static {
    /// Removes this instance on a clean shutdown.
    async fn deregister(&self) -> Result<(), BackendError>;

    /// Whether this instance is registered and alive, as far as it knows (readiness).
    fn is_registered(&self) -> bool;
}

/// Everything a session and the HTTP API use, behind the traits.
#[derive(Clone)]
pub struct Services {
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub history: Arc<dyn History>,
    pub presence: Arc<dyn Presence>,
    pub registry: Arc<dyn Registry>,
}

/// A fresh random epoch: 16 hex digits.
pub(crate) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

impl Services {
    /// The single-process backend.
    pub fn memory(history_max_len: usize, server_id: &str) -> Services {
        let hub = Hub::new();
        let store = memory::MemoryStore::new(hub.clone(), history_max_len);
        Services {
            hub,
            broker: store.clone(),
            history: store.clone(),
            presence: Arc::new(memory::MemoryPresence::new(store, server_id)),
            registry: Arc::new(memory::MemoryRegistry),
        }
    }
}
