//! The local fan-out: which sessions of this instance listen to which rooms and users.
//!
//! A broker hands every event for this instance to the hub once; the hub puts it on each local
//! listener's bounded queue without waiting. A full queue means a slow consumer: that session is
//! told to go, and nobody else waits for it. The hub also keeps the set of topics whose local
//! interest changed, so a clustered broker can (un)subscribe its channels in batches.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::{Notify, mpsc};

use crate::model::{DirectEvent, RoomEvent};

/// What a session receives from the hub.
#[derive(Debug, Clone)]
pub enum Delivery {
    Room(Arc<RoomEvent>),
    Direct(Arc<DirectEvent>),
}

/// A topic an instance can be interested in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Room(String),
    User(String),
}

/// Lets the hub stop a session (slow consumer) without owning it.
#[derive(Debug, Default)]
pub struct Kill {
    fired: AtomicBool,
    notify: Notify,
}

impl Kill {
    pub fn fire(&self) {
        if !self.fired.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    pub async fn wait(&self) {
        if !self.fired() {
            self.notify.notified().await;
        }
    }
}

/// One session's entry point, as the hub holds it.
#[derive(Debug, Clone)]
pub struct Listener {
    pub session: u64,
    pub tx: mpsc::Sender<Delivery>,
    pub kill: Arc<Kill>,
}

type Table = RwLock<HashMap<String, Vec<Listener>>>;

/// Counts what delivery did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub delivered: usize,
    pub dropped_slow: usize,
}

#[derive(Debug, Default)]
pub struct Hub {
    rooms: Table,
    users: Table,
    dirty: Mutex<HashSet<Topic>>,
    changed: Notify,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// Adds a listener to a room; a session listens to a room at most once.
    pub fn add_room(&self, room: &str, listener: Listener) {
        self.add(&self.rooms, Topic::Room(room.to_owned()), room, listener);
    }

    pub fn remove_room(&self, room: &str, session: u64) {
        self.remove(&self.rooms, Topic::Room(room.to_owned()), room, session);
    }

    pub fn add_user(&self, user: &str, listener: Listener) {
        self.add(&self.users, Topic::User(user.to_owned()), user, listener);
    }

    pub fn remove_user(&self, user: &str, session: u64) {
        self.remove(&self.users, Topic::User(user.to_owned()), user, session);
    }

    fn add(&self, table: &Table, topic: Topic, key: &str, listener: Listener) {
        let first = {
            let mut t = table.write().unwrap_or_else(PoisonError::into_inner);
            let list = t.entry(key.to_owned()).or_default();
            if list.iter().any(|l| l.session == listener.session) {
                return;
            }
            list.push(listener);
            list.len() == 1
        };
        if first {
            self.mark(topic);
        }
    }

    fn remove(&self, table: &Table, topic: Topic, key: &str, session: u64) {
        let last = {
            let mut t = table.write().unwrap_or_else(PoisonError::into_inner);
            let Some(list) = t.get_mut(key) else { return };
            list.retain(|l| l.session != session);
            let empty = list.is_empty();
            if empty {
                t.remove(key);
            }
            empty
        };
        if last {
            self.mark(topic);
        }
    }

    fn mark(&self, topic: Topic) {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic);
        self.changed.notify_one();
    }

    /// Waits until some topic's local interest changed, and returns those topics.
    pub async fn changed_topics(&self) -> Vec<Topic> {
        loop {
            let taken: Vec<Topic> = self
                .dirty
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain()
                .collect();
            if !taken.is_empty() {
                return taken;
            }
            self.changed.notified().await;
        }
    }

    pub fn has_listeners(&self, topic: &Topic) -> bool {
        match topic {
            Topic::Room(r) => self
                .rooms
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(r),
            Topic::User(u) => self
                .users
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(u),
        }
    }

    /// Rooms with at least one local listener.
    pub fn local_rooms(&self) -> Vec<String> {
        self.rooms
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    pub fn local_users(&self) -> Vec<String> {
        self.users
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    pub fn deliver_room(&self, event: &Arc<RoomEvent>) -> Fanout {
        let t = self.rooms.read().unwrap_or_else(PoisonError::into_inner);
        match t.get(event.room()) {
            Some(list) => fan_out(list, || Delivery::Room(event.clone())),
            None => Fanout::default(),
        }
    }

    pub fn deliver_user(&self, event: &Arc<DirectEvent>) -> Fanout {
        let t = self.users.read().unwrap_or_else(PoisonError::into_inner);
        match t.get(&event.record.to) {
            Some(list) => fan_out(list, || Delivery::Direct(event.clone())),
            None => Fanout::default(),
        }
    }
}

fn fan_out(list: &[Listener], make: impl Fn() -> Delivery) -> Fanout {
    let mut out = Fanout::default();
    for l in list {
        match l.tx.try_send(make()) {
            Ok(()) => out.delivered += 1,
            Err(mpsc::error::TrySendError::Full(_)) => {
                out.dropped_slow += 1;
                l.kill.fire();
            }
            // The session is on its way out and removes itself.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    out
}

/// A chat event of `room` at (`epoch`, `offset`), for the tests of this crate.
#[cfg(test)]
pub(crate) fn room_event(room: &str, epoch: &str, offset: u64) -> Arc<RoomEvent> {
    use crate::model::{EventKind, EventRecord, Sender};
    RoomEvent::new(EventRecord {
        id: format!("{epoch}-{offset}"),
        room_id: room.into(),
        offset,
        epoch: epoch.into(),
        kind: EventKind::Chat,
        sender: Sender {
            id: "u".into(),
            name: "u".into(),
        },
        content: "x".into(),
        sent_at: "t".into(),
        server_id: "s".into(),
        extra: Default::default(),
        headers: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(room: &str, offset: u64) -> Arc<RoomEvent> {
        room_event(room, "e", offset)
    }

    fn listener(session: u64, cap: usize) -> (Listener, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            Listener {
                session,
                tx,
                kill: Arc::new(Kill::default()),
            },
            rx,
        )
    }

    #[tokio::test]
    async fn an_event_reaches_every_listener_of_its_room_only() {
        let hub = Hub::new();
        let (a, mut ra) = listener(1, 8);
        let (b, mut rb) = listener(2, 8);
        let (c, mut rc) = listener(3, 8);
        hub.add_room("r", a);
        hub.add_room("r", b);
        hub.add_room("other", c);
        assert_eq!(
            hub.deliver_room(&event("r", 1)),
            Fanout {
                delivered: 2,
                dropped_slow: 0
            }
        );
        assert!(matches!(ra.try_recv(), Ok(Delivery::Room(e)) if e.offset() == 1));
        assert!(matches!(rb.try_recv(), Ok(Delivery::Room(_))));
        assert!(rc.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_kills_only_that_listener() {
        let hub = Hub::new();
        let (slow, _keep) = listener(1, 1);
        let (fast, rf) = listener(2, 8);
        let slow_kill = slow.kill.clone();
        let fast_kill = fast.kill.clone();
        hub.add_room("r", slow);
        hub.add_room("r", fast);
        hub.deliver_room(&event("r", 1));
        let f = hub.deliver_room(&event("r", 2));
        assert_eq!(
            f,
            Fanout {
                delivered: 1,
                dropped_slow: 1
            }
        );
        assert!(slow_kill.fired());
        assert!(!fast_kill.fired());
        assert_eq!(rf.len(), 2);
    }

    #[tokio::test]
    async fn interest_changes_are_reported_on_first_join_and_last_leave_only() {
        let hub = Hub::new();
        let (a, _ra) = listener(1, 1);
        let (b, _rb) = listener(2, 1);
        hub.add_room("r", a);
        assert_eq!(hub.changed_topics().await, vec![Topic::Room("r".into())]);
        hub.add_room("r", b);
        hub.remove_room("r", 1);
        assert!(hub.dirty.lock().unwrap().is_empty());
        hub.remove_room("r", 2);
        assert_eq!(hub.changed_topics().await, vec![Topic::Room("r".into())]);
        assert!(!hub.has_listeners(&Topic::Room("r".into())));
    }
}
