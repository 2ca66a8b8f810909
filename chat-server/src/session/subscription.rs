//! Subscriptions: SUBSCRIBE and UNSUBSCRIBE, the rooms a session listens to, and live delivery.
//!
//! A session listens to a room (in the hub, and with presence) once however many of its
//! subscriptions point there; it joins with its first subscription and leaves with its last.
//! A room's first subscription holds live events in the room's sequencer until the subscription
//! knows where it starts (see `recovery`), so nothing is delivered twice or out of order.

use std::sync::Arc;

use tracing::warn;

use super::error::SessionError;
use super::recovery::start_replay;
use super::{Conn, Done, MAX_REPLAY, Sequencer, Verdict};
use crate::destination::Dest;
use crate::hub::{Delivery, Listener, Topic};
use crate::model::RoomEvent;
use crate::stomp::command::Subscribe;
use axum::extract::ws::Utf8Bytes;

#[derive(Debug)]
pub(super) struct Subscription {
    dest: Dest,
}

/// One subscription to a room: its id and the destination it subscribed with, which its
/// MESSAGE frames carry (a room may be reached through several configured destinations).
#[derive(Debug, Clone)]
pub(super) struct RoomSub {
    pub(super) id: Arc<str>,
    pub(super) dest: Arc<str>,
}

impl RoomSub {
    /// `ev`'s MESSAGE frame for this subscription.
    pub(super) fn frame(&self, ev: &RoomEvent) -> Utf8Bytes {
        ev.frame_for(&self.id, &self.dest)
    }
}

/// A room this session listens to.
#[derive(Debug, Default)]
pub(super) struct RoomState {
    pub(super) subs: Vec<RoomSub>,
    pub(super) seq: Sequencer,
    presence: bool,
}

/// Where a room subscription starts, from its `x-since-offset` and `x-history` headers.
pub(super) struct Start {
    pub(super) since: Option<u64>,
    pub(super) history: Option<usize>,
    pub(super) epoch: Option<String>,
}

impl Start {
    fn from_headers(sub: &Subscribe) -> Result<Start, SessionError> {
        let since = sub
            .header("x-since-offset")
            .map(str::parse::<u64>)
            .transpose()
            .map_err(|_| SessionError::NotANumber("x-since-offset"))?;
        let history = sub
            .header("x-history")
            .map(str::parse::<usize>)
            .transpose()
            .map_err(|_| SessionError::NotANumber("x-history"))?
            .map(|k| k.min(MAX_REPLAY));
        Ok(Start {
            since,
            history,
            epoch: sub.header("x-epoch").map(str::to_owned),
        })
    }
}

impl Conn {
    pub(super) fn on_subscribe(
        &mut self,
        sub: Subscribe,
        receipt: Option<String>,
    ) -> Result<(), SessionError> {
        let id = sub.id.as_str();
        if self.subs.contains_key(id) {
            return Err(SessionError::DuplicateSubscription(id.to_owned()));
        }
        if self.subs.len() >= self.cx.limits.max_subscriptions {
            return Err(SessionError::TooManySubscriptions(
                self.cx.limits.max_subscriptions,
            ));
        }
        let dest = self.cx.destinations.subscribe(&sub.destination)?;
        let handle: Arc<str> = Arc::from(id);
        let Some(identity) = self.identity.clone() else {
            return Ok(());
        };
        let listener = Listener {
            session: self.session_num,
            tx: self.tx.clone(),
            kill: self.kill.clone(),
        };
        let room = match &dest {
            Dest::UserQueue => {
                if self.user_subs.is_empty() {
                    self.cx.services.hub.add_user(&identity.user_id, listener);
                }
                self.user_subs.push(handle);
                self.subs.insert(sub.id, Subscription { dest });
                let services = self.cx.services.clone();
                let topic = Topic::User(identity.user_id.clone());
                self.op = Some(Box::pin(async move {
                    match services.broker.listen(&topic).await {
                        Ok(()) => Done::Plain { receipt },
                        Err(error) => Done::failed(error, receipt),
                    }
                }));
                return Ok(());
            }
            Dest::Room(room) => room.clone(),
        };
        if !identity.may_use_room(&room) {
            return Err(SessionError::Forbidden(room));
        }
        let start = Start::from_headers(&sub)?;
        let presence = sub.header("x-presence") != Some("false");

        let first_here = !self.rooms.contains_key(&room);
        let state = self.rooms.entry(room.clone()).or_default();
        let handle = RoomSub {
            id: handle,
            dest: Arc::from(sub.destination.as_str()),
        };
        state.subs.push(handle.clone());
        let join = presence && !state.presence;
        state.presence |= presence;
        if first_here {
            // Held until the subscription knows where it starts (see the op below).
            state.seq.hold();
            self.cx.services.hub.add_room(&room, listener);
        }
        self.subs.insert(sub.id, Subscription { dest });

        let member = join.then(|| self.member(&identity));
        self.op = Some(start_replay(
            self.cx.services.clone(),
            room,
            handle,
            start,
            member,
            receipt,
        ));
        Ok(())
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        id: &str,
        receipt: Option<String>,
    ) -> Result<(), SessionError> {
        let Some(sub) = self.subs.remove(id) else {
            return Err(SessionError::UnknownSubscription(id.to_owned()));
        };
        let Some(identity) = &self.identity else {
            return Ok(());
        };
        match sub.dest {
            Dest::UserQueue => {
                self.user_subs.retain(|s| &**s != id);
                if self.user_subs.is_empty() {
                    self.cx
                        .services
                        .hub
                        .remove_user(&identity.user_id, self.session_num);
                }
                self.receipt(receipt);
            }
            Dest::Room(room) => {
                let Some(state) = self.rooms.get_mut(&room) else {
                    self.receipt(receipt);
                    return Ok(());
                };
                state.subs.retain(|s| &*s.id != id);
                if !state.subs.is_empty() {
                    self.receipt(receipt);
                    return Ok(());
                }
                let had_presence = state.presence;
                self.rooms.remove(&room);
                self.cx.services.hub.remove_room(&room, self.session_num);
                if !had_presence {
                    self.receipt(receipt);
                    return Ok(());
                }
                let services = self.cx.services.clone();
                let member = self.member(identity);
                self.op = Some(Box::pin(async move {
                    match services.presence.leave(&room, &member).await {
                        Ok(_) => Done::Plain { receipt },
                        Err(error) => Done::failed(error, receipt),
                    }
                }));
            }
        }
        Ok(())
    }

    /// Delivers events the sequencer released to every subscription of `room`, then asks
    /// history for what is still missing.
    pub(super) fn deliver_released(
        &mut self,
        room: &str,
        events: Vec<Arc<RoomEvent>>,
        gap: Option<(u64, u64)>,
    ) {
        let Some(state) = self.rooms.get(room) else {
            return;
        };
        for ev in &events {
            self.out.deliver(&state.subs, |s| s.frame(ev));
        }
        if let Some((after, until)) = gap {
            self.start_fill(room, after, until);
        }
    }

    pub(super) fn on_delivery(&mut self, d: Delivery) {
        match d {
            Delivery::Room(ev) => {
                let Some(state) = self.rooms.get_mut(ev.room()) else {
                    return;
                };
                match state.seq.offer(&ev) {
                    Verdict::Deliver => self.out.deliver(&state.subs, |s| s.frame(&ev)),
                    Verdict::Duplicate => {}
                    Verdict::Held => {
                        if state.seq.held_len() > self.cx.limits.outbound_queue {
                            self.kill.fire();
                        }
                    }
                    Verdict::Gap { after, until } => {
                        let room = ev.room().to_owned();
                        self.start_fill(&room, after, until);
                    }
                }
            }
            Delivery::Direct(ev) => self.out.deliver(&self.user_subs, |s| ev.frame_for(s)),
        }
    }

    /// Leaves every room and drops every listener; presence and LEAVE run in a tracked task.
    pub(super) fn cleanup(&mut self) {
        let Some(identity) = self.identity.take() else {
            return;
        };
        if !self.user_subs.is_empty() {
            self.cx
                .services
                .hub
                .remove_user(&identity.user_id, self.session_num);
        }
        let mut leave = Vec::new();
        for (room, state) in self.rooms.drain() {
            self.cx.services.hub.remove_room(&room, self.session_num);
            if state.presence {
                leave.push(room);
            }
        }
        if leave.is_empty() {
            return;
        }
        let services = self.cx.services.clone();
        let member = self.member(&identity);
        self.cx.tracker.spawn(async move {
            for room in leave {
                if let Err(e) = services.presence.leave(&room, &member).await {
                    warn!(error = %e, room, "could not leave room on disconnect");
                }
            }
        });
    }
}
