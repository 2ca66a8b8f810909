//! SockJS sessions: each one's bounded outbound queue, its inbound channel to the STOMP session,
//! its one receiving connection at a time, and the table that finds sessions by id and reaps
//! the abandoned ones.
//!
//! What stays true: the outbound queue never holds more than its capacity (a push past it is
//! refused, and the STOMP session closes as a slow consumer); at most one receiving connection
//! is attached to a session; a session with no receiving connection for the disconnect delay is
//! removed from the table and its inbound channel closed, which ends its STOMP session; a
//! closed session is removed within the delay however often it is polled.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use axum::extract::ws::Message;
use thiserror::Error;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::debug;

use super::frame::{Frame, GO_AWAY};

/// Client messages waiting for the STOMP session to read them (an `xhr_send` waits for room).
const INBOUND_CAPACITY: usize = 64;

/// The outbound queue is full: the client does not receive fast enough.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("SockJS outbound queue full")]
pub(crate) struct Overflow;

/// One SockJS session.
#[derive(Debug)]
pub(crate) struct Session {
    /// `None` once reaped or ended: the STOMP session's input is over.
    inbound: Mutex<Option<mpsc::Sender<Message>>>,
    state: Mutex<State>,
    /// Wakes the receiving connection when there is something to take.
    wake: Notify,
    capacity: usize,
}

#[derive(Debug)]
struct State {
    opened: bool,
    outbound: VecDeque<String>,
    close: Option<Frame>,
    receiving: bool,
    idle_since: Instant,
}

impl Session {
    /// A new session whose outbound queue holds `capacity` messages, and the receiving end of
    /// its inbound channel (for the STOMP session).
    pub(crate) fn new(capacity: usize) -> (Arc<Session>, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
        let session = Session {
            inbound: Mutex::new(Some(tx)),
            state: Mutex::new(State {
                opened: false,
                outbound: VecDeque::new(),
                close: None,
                receiving: false,
                idle_since: Instant::now(),
            }),
            wake: Notify::new(),
            capacity,
        };
        (Arc::new(session), rx)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one message for the client.
    pub(crate) fn push(&self, message: String) -> Result<(), Overflow> {
        {
            let mut st = self.state();
            if st.outbound.len() >= self.capacity {
                return Err(Overflow);
            }
            st.outbound.push_back(message);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Ends the session with `frame` (the first close wins): receivers get it after whatever
    /// is still queued, and the client's input is closed.
    pub(crate) fn end(&self, frame: Frame) {
        {
            let mut st = self.state();
            if st.close.is_none() {
                st.close = Some(frame);
            }
        }
        self.close_inbound();
        self.wake.notify_one();
    }

    fn close_inbound(&self) {
        self.inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Where the client's messages go; `None` once the session is over.
    pub(crate) fn sender(&self) -> Option<mpsc::Sender<Message>> {
        self.inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Attaches a receiving connection; `None` while another one is attached.
    pub(crate) fn attach(self: &Arc<Self>) -> Option<Receiving> {
        let mut st = self.state();
        if st.receiving {
            return None;
        }
        st.receiving = true;
        Some(Receiving {
            session: self.clone(),
        })
    }

    /// The next frame owed to the client, if any: the open frame first, then queued messages,
    /// then the close frame (again and again: a closed session answers every receiver with it).
    fn take(&self) -> Option<Frame> {
        let mut st = self.state();
        if !st.opened {
            st.opened = true;
            return Some(Frame::Open);
        }
        if !st.outbound.is_empty() {
            return Some(Frame::Messages(st.outbound.drain(..).collect()));
        }
        st.close.clone()
    }

    fn abandoned(&self, now: Instant, after: Duration) -> bool {
        let st = self.state();
        !st.receiving && now.duration_since(st.idle_since) >= after
    }
}

/// The one receiving connection of a session; detaching (drop) starts the disconnect delay.
#[derive(Debug)]
pub(crate) struct Receiving {
    session: Arc<Session>,
}

impl Receiving {
    /// The next frame for the client, or a heartbeat frame when nothing came for `heartbeat`.
    pub(crate) async fn next(&self, heartbeat: Duration) -> Frame {
        let deadline = Instant::now() + heartbeat;
        loop {
            let woken = self.session.wake.notified();
            tokio::pin!(woken);
            // Registered before looking, so a push between the look and the wait still wakes us.
            woken.as_mut().enable();
            if let Some(frame) = self.session.take() {
                return frame;
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep_until(deadline) => return Frame::Heartbeat,
            }
        }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        let mut st = self.session.state();
        st.receiving = false;
        // A closed session's delay runs from before its close: a client polling it again and
        // again (it only ever gets the close frame) cannot keep it in the table.
        if st.close.is_none() {
            st.idle_since = Instant::now();
        }
    }
}

/// The sessions of this instance by id, reaped when abandoned.
#[derive(Debug, Default)]
pub(crate) struct Table {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    reaper: AtomicBool,
}

impl Table {
    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions().get(id).cloned()
    }

    /// Adds a session; `false` (and nothing changes) if the id is taken.
    pub(crate) fn insert(&self, id: &str, session: Arc<Session>) -> bool {
        let mut sessions = self.sessions();
        if sessions.contains_key(id) {
            return false;
        }
        sessions.insert(id.to_owned(), session);
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions().len()
    }

    /// Removes and ends every session without a receiving connection for `after`; returns how
    /// many went.
    pub(crate) fn reap(&self, now: Instant, after: Duration) -> usize {
        let gone: Vec<Arc<Session>> = {
            let mut sessions = self.sessions();
            let ids: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| s.abandoned(now, after))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        for s in &gone {
            s.end(Frame::close(GO_AWAY.0, GO_AWAY.1));
        }
        gone.len()
    }

    /// Starts the reaper once (from a request, so inside the runtime); it stops when the table
    /// is dropped.
    pub(crate) fn start_reaper(self: &Arc<Self>, after: Duration) {
        if self.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let table = Arc::downgrade(self);
        // Checks a few times per delay, so a session goes at most a quarter late.
        let every = (after / 4).max(Duration::from_millis(25));
        tokio::spawn(reap_every(table, every, after));
    }
}

async fn reap_every(table: Weak<Table>, every: Duration, after: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(table) = table.upgrade() else {
            return;
        };
        let reaped = table.reap(Instant::now(), after);
        if reaped > 0 {
            debug!(
                reaped,
                open = table.len(),
                "reaped abandoned SockJS sessions"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_secs(25);

    #[tokio::test(start_paused = true)]
    async fn a_receiver_gets_open_then_messages_then_heartbeats() {
        let (s, _rx) = Session::new(8);
        let r = s.attach().unwrap();
        assert_eq!(r.next(BEAT).await, Frame::Open);
        s.push("a".into()).unwrap();
        s.push("b".into()).unwrap();
        assert_eq!(
            r.next(BEAT).await,
            Frame::Messages(vec!["a".into(), "b".into()])
        );
        let before = Instant::now();
        assert_eq!(r.next(BEAT).await, Frame::Heartbeat);
        assert_eq!(Instant::now() - before, BEAT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_receiver_wakes_for_a_push() {
        let (s, _rx) = Session::new(8);
        let r = s.attach().unwrap();
        assert_eq!(r.next(BEAT).await, Frame::Open);
        let pusher = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            pusher.push("late".into()).unwrap();
        });
        assert_eq!(r.next(BEAT).await, Frame::Messages(vec!["late".into()]));
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_receiver_is_attached_at_a_time() {
        let (s, _rx) = Session::new(8);
        let first = s.attach().unwrap();
        assert!(s.attach().is_none());
        drop(first);
        assert!(s.attach().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_outbound_queue_refuses_a_push_past_its_capacity() {
        let (s, _rx) = Session::new(2);
        s.push("1".into()).unwrap();
        s.push("2".into()).unwrap();
        assert_eq!(s.push("3".into()), Err(Overflow));
        let r = s.attach().unwrap();
        assert_eq!(r.next(BEAT).await, Frame::Open);
        assert_eq!(
            r.next(BEAT).await,
            Frame::Messages(vec!["1".into(), "2".into()])
        );
        assert_eq!(s.push("3".into()), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_session_delivers_what_is_queued_then_its_close_to_every_receiver() {
        let (s, mut rx) = Session::new(8);
        let r = s.attach().unwrap();
        assert_eq!(r.next(BEAT).await, Frame::Open);
        s.push("last".into()).unwrap();
        s.end(Frame::close(1012, "restart"));
        s.end(Frame::close(3000, "Go away!"));
        assert_eq!(r.next(BEAT).await, Frame::Messages(vec!["last".into()]));
        assert_eq!(r.next(BEAT).await, Frame::close(1012, "restart"));
        drop(r);
        let again = s.attach().unwrap();
        assert_eq!(again.next(BEAT).await, Frame::close(1012, "restart"));
        assert!(s.sender().is_none());
        assert!(rx.recv().await.is_none(), "the STOMP side's input ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_without_a_receiver_is_reaped_after_the_delay() {
        let table = Arc::new(Table::default());
        let (idle, mut idle_rx) = Session::new(8);
        let (busy, _busy_rx) = Session::new(8);
        assert!(table.insert("idle", idle.clone()));
        assert!(table.insert("busy", busy.clone()));
        assert!(!table.insert("idle", busy.clone()), "ids are unique");
        let _receiving = busy.attach().unwrap();
        let after = Duration::from_secs(5);
        table.start_reaper(after);

        tokio::time::sleep(Duration::from_millis(4900)).await;
        assert!(table.get("idle").is_some(), "not before the delay");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(table.get("idle").is_none(), "reaped");
        assert!(table.get("busy").is_some(), "a receiving session stays");
        assert_eq!(table.len(), 1);
        assert!(
            idle_rx.recv().await.is_none(),
            "its STOMP session's input ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn polling_a_closed_session_does_not_keep_it() {
        let table = Table::default();
        let (s, _rx) = Session::new(8);
        table.insert("s", s.clone());
        s.end(Frame::close(3000, "Go away!"));
        for _ in 0..5 {
            let r = s.attach().unwrap();
            let _ = r.next(BEAT).await;
            drop(r);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(table.reap(Instant::now(), Duration::from_secs(5)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn detaching_restarts_the_delay() {
        let table = Table::default();
        let (s, _rx) = Session::new(8);
        table.insert("s", s.clone());
        let r = s.attach().unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(table.reap(Instant::now(), Duration::from_secs(5)), 0);
        drop(r);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(table.reap(Instant::now(), Duration::from_secs(5)), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(table.reap(Instant::now(), Duration::from_secs(5)), 1);
    }
}
