//! In-memory backend for a single process: offsets, bounded history and presence in maps.
//!
//! Each room's offset is assigned and its event delivered under that room's lock, so every
//! listener sees a room's events in offset order. Epochs are random per process start: after a
//! restart, clients that recover with an old epoch are told their history is gone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use async_trait::async_trait;

use super::{
    BackendError, Broker, History, HistoryPage, Presence, Registry, RoomInfo, Slice, new_epoch,
};
use crate::hub::{Hub, Topic};
use crate::model::Member;
use crate::model::{DirectEvent, DirectRecord, Draft, EventKind, EventRecord, RoomEvent};

#[derive(Debug)]
struct Room {
    epoch: String,
    last: u64,
    events: VecDeque<Arc<RoomEvent>>,
}

impl Room {
    fn info(&self, id: &str) -> RoomInfo {
        RoomInfo {
            id: id.to_owned(),
            epoch: self.epoch.clone(),
            last_offset: self.last,
            first_offset: self.events.front().map_or(self.last + 1, |e| e.offset()),
        }
    }
}

/// Broker and history in one, since both are the same maps here.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    hub: Arc<Hub>,
    max_len: usize,
    rooms: RwLock<HashMap<String, Arc<Mutex<Room>>>>,
}

impl MemoryStore {
    pub(crate) fn new(hub: Arc<Hub>, max_len: usize) -> Arc<MemoryStore> {
        Arc::new(MemoryStore {
            hub,
            max_len: max_len.max(1),
            rooms: RwLock::default(),
        })
    }

    fn room(&self, id: &str) -> Option<Arc<Mutex<Room>>> {
        self.rooms
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn room_or_create(&self, id: &str) -> (Arc<Mutex<Room>>, bool) {
        if let Some(r) = self.room(id) {
            return (r, false);
        }
        let mut rooms = self.rooms.write().unwrap_or_else(PoisonError::into_inner);
        let mut created = false;
        let room = rooms
            .entry(id.to_owned())
            .or_insert_with(|| {
                created = true;
                Arc::new(Mutex::new(Room {
                    epoch: new_epoch(),
                    last: 0,
                    events: VecDeque::new(),
                }))
            })
            .clone();
        (room, created)
    }
}

#[async_trait]
impl Broker for MemoryStore {
    async fn publish(&self, room: &str, draft: Draft) -> Result<Arc<RoomEvent>, BackendError> {
        let (handle, _) = self.room_or_create(room);
        let mut r = handle.lock().unwrap_or_else(PoisonError::into_inner);
        r.last += 1;
        let event = RoomEvent::new(EventRecord::from_draft(draft, room, r.last, &r.epoch));
        r.events.push_back(event.clone());
        while r.events.len() > self.max_len {
            r.events.pop_front();
        }
        // Still under the room's lock: listeners get this room's events in offset order.
        self.hub.deliver_room(&event);
        Ok(event)
    }

    async fn publish_direct(&self, record: DirectRecord) -> Result<(), BackendError> {
        self.hub.deliver_user(&DirectEvent::new(record));
        Ok(())
    }

    async fn listen(&self, _topic: &Topic) -> Result<(), BackendError> {
        Ok(())
    }

    fn is_ready(&self) -> bool {
        true
    }
}

#[async_trait]
impl History for MemoryStore {
    async fn read(&self, id: &str, slice: Slice) -> Result<HistoryPage, BackendError> {
        let Some(room) = self.room(id) else {
            return Ok(HistoryPage {
                info: RoomInfo {
                    id: id.to_owned(),
                    epoch: String::new(),
                    last_offset: 0,
                    first_offset: 1,
                },
                events: Vec::new(),
            });
        };
        let r = room.lock().unwrap_or_else(PoisonError::into_inner);
        let info = r.info(id);
        let events = match slice {
            Slice::Info => Vec::new(),
            Slice::After { after, limit } => {
                let skip =
                    usize::try_from(after.saturating_add(1).saturating_sub(info.first_offset))
                        .unwrap_or(usize::MAX);
                r.events.iter().skip(skip).take(limit).cloned().collect()
            }
            Slice::Last { count } => r
                .events
                .iter()
                .skip(r.events.len().saturating_sub(count))
                .cloned()
                .collect(),
        };
        Ok(HistoryPage { info, events })
    }

    async fn create_room(&self, room: &str) -> Result<bool, BackendError> {
        Ok(self.room_or_create(room).1)
    }

    async fn rooms(&self) -> Result<Vec<RoomInfo>, BackendError> {
        let rooms: Vec<_> = self
            .rooms
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        let mut out: Vec<RoomInfo> = rooms
            .iter()
            .map(|(id, r)| r.lock().unwrap_or_else(PoisonError::into_inner).info(id))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// Presence in one process: room -> sessions in join order; JOIN and LEAVE go through the store.
#[derive(Debug)]
pub(crate) struct MemoryPresence {
    store: Arc<MemoryStore>,
    server_id: String,
    rooms: Mutex<HashMap<String, Vec<Member>>>,
}

impl MemoryPresence {
    pub(crate) fn new(store: Arc<MemoryStore>, server_id: &str) -> MemoryPresence {
        MemoryPresence {
            store,
            server_id: server_id.to_owned(),
            rooms: Mutex::default(),
        }
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn join(&self, room: &str, member: &Member) -> Result<bool, BackendError> {
        {
            let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
            let list = rooms.entry(room.to_owned()).or_default();
            if list.iter().any(|m| m.session_id == member.session_id) {
                return Ok(false);
            }
            list.push(member.clone());
        }
        self.store
            .publish(room, member.event(EventKind::Join, &self.server_id))
            .await?;
        Ok(true)
    }

    async fn leave(&self, room: &str, member: &Member) -> Result<bool, BackendError> {
        {
            let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(list) = rooms.get_mut(room) else {
                return Ok(false);
            };
            let before = list.len();
            list.retain(|m| m.session_id != member.session_id);
            let left = list.len() != before;
            if list.is_empty() {
                rooms.remove(room);
            }
            if !left {
                return Ok(false);
            }
        }
        self.store
            .publish(room, member.event(EventKind::Leave, &self.server_id))
            .await?;
        Ok(true)
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, BackendError> {
        Ok(self
            .rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(room)
            .cloned()
            .unwrap_or_default())
    }
}

/// A lone instance is always registered with itself.
#[derive(Debug)]
pub(crate) struct MemoryRegistry;

#[async_trait]
impl Registry for MemoryRegistry {
    async fn deregister(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn is_registered(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, Sender};

    fn draft(text: &str) -> Draft {
        Draft::new(
            EventKind::Chat,
            Sender {
                id: "u".into(),
                name: "U".into(),
            },
            text.into(),
            "s",
        )
    }

    #[tokio::test]
    async fn offsets_are_contiguous_per_room_and_history_is_bounded() {
        let store = MemoryStore::new(Hub::new(), 3);
        for i in 1..=5 {
            assert_eq!(
                store
                    .publish("a", draft(&i.to_string()))
                    .await
                    .unwrap()
                    .offset(),
                i
            );
        }
        assert_eq!(store.publish("b", draft("x")).await.unwrap().offset(), 1);
        let info = store.info("a").await.unwrap().unwrap();
        assert_eq!((info.first_offset, info.last_offset), (3, 5));
        let page = store.read_after("a", 3, 10).await.unwrap();
        assert_eq!(
            page.events.iter().map(|e| e.offset()).collect::<Vec<_>>(),
            vec![4, 5]
        );
        let page = store.read_after("a", 0, 2).await.unwrap();
        assert_eq!(
            page.events.iter().map(|e| e.offset()).collect::<Vec<_>>(),
            vec![3, 4]
        );
        let page = store.read_last("a", 2).await.unwrap();
        assert_eq!(
            page.events.iter().map(|e| e.offset()).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_ne!(info.epoch, store.info("b").await.unwrap().unwrap().epoch);
    }

    #[tokio::test]
    async fn an_unknown_room_has_no_info_and_can_be_created_once() {
        let store = MemoryStore::new(Hub::new(), 10);
        assert_eq!(store.info("x").await.unwrap(), None);
        assert!(store.create_room("x").await.unwrap());
        assert!(!store.create_room("x").await.unwrap());
        let info = store.info("x").await.unwrap().unwrap();
        assert_eq!((info.first_offset, info.last_offset), (1, 0));
        assert_eq!(store.rooms().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn presence_counts_each_session_once_and_publishes_join_and_leave() {
        let store = MemoryStore::new(Hub::new(), 10);
        let p = MemoryPresence::new(store.clone(), "x");
        let m = Member {
            user_id: "u".into(),
            name: "U".into(),
            session_id: "s1".into(),
            server_id: "x".into(),
        };
        assert!(p.join("r", &m).await.unwrap());
        assert!(!p.join("r", &m).await.unwrap());
        assert_eq!(p.members("r").await.unwrap().len(), 1);
        assert!(p.leave("r", &m).await.unwrap());
        assert!(!p.leave("r", &m).await.unwrap());
        assert!(p.members("r").await.unwrap().is_empty());
        let kinds: Vec<EventKind> = store
            .read_after("r", 0, 10)
            .await
            .unwrap()
            .events
            .iter()
            .map(|e| e.record.kind)
            .collect();
        assert_eq!(kinds, vec![EventKind::Join, EventKind::Leave]);
    }
}
