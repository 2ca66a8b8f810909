//! Recovery: where a room subscription starts, replay from history, gap fills, and the notice
//! when history cannot give back what was missed.
//!
//! A subscription with `x-since-offset: n` (and `x-epoch`) gets everything after `n` or, if
//! history no longer has all of it, nothing and one not-recovered MESSAGE: never a part. A live
//! gap (an event that skips offsets) is filled from history the same way. The `sequencer` keeps
//! the order; this module decides what to fetch and what to tell the client.

use std::sync::Arc;

use tracing::warn;

use super::subscription::{RoomSub, Start};
use super::{BoxFuture, Conn, Done, MAX_REPLAY};
use crate::broker::{BackendError, HistoryPage, RoomInfo, Services};
use crate::hub::Topic;
use crate::model::{EventKind, EventRecord, Member, RoomEvent, Sender, now_rfc3339};
use crate::stomp::{Command, Frame};

/// What a subscription asked to see from history before going live.
pub(super) enum Replay {
    None,
    Events {
        baseline: (String, u64),
        events: Vec<Arc<RoomEvent>>,
    },
    NotRecovered(RoomInfo),
}

/// A gap fill's answer from history.
pub(super) struct Filled {
    room: String,
    after: u64,
    until: u64,
    result: Result<HistoryPage, BackendError>,
}

/// The broker call of a new room subscription: listen to the room, find where the subscription
/// starts, then join (when `member` is given).
pub(super) fn start_replay(
    services: Services,
    room: String,
    sub: RoomSub,
    start: Start,
    member: Option<Member>,
    receipt: Option<String>,
) -> BoxFuture<Done> {
    Box::pin(async move {
        if let Err(error) = services.broker.listen(&Topic::Room(room.clone())).await {
            return Done::failed(error, receipt);
        }
        let replay = match replay_for(&services, &room, start).await {
            Ok(r) => r,
            Err(error) => return Done::failed(error, receipt),
        };
        if let Some(member) = member
            && let Err(error) = services.presence.join(&room, &member).await
        {
            return Done::failed(error, receipt);
        }
        Done::Subscribed {
            room,
            sub,
            replay,
            receipt,
        }
    })
}

async fn replay_for(services: &Services, room: &str, start: Start) -> Result<Replay, BackendError> {
    match (start.since, start.history) {
        (Some(n), _) => recover(services, room, n, start.epoch.as_deref()).await,
        (None, Some(k)) => services.history.read_last(room, k).await.map(|page| {
            let baseline = page
                .events
                .first()
                .map_or(page.info.last_offset, |e| e.offset() - 1);
            Replay::Events {
                baseline: (page.info.epoch, baseline),
                events: page.events,
            }
        }),
        // Live from the room's current offset: whatever comes after it is delivered in offset
        // order, even when Pub/Sub hands two publishers' events over swapped. A room that does
        // not exist yet is created, so it has an epoch and offset 0.
        (None, None) => match services.history.info(room).await {
            Ok(None) => match services.history.create_room(room).await {
                Ok(_) => services.history.info(room).await,
                Err(e) => Err(e),
            },
            other => other,
        }
        .map(|info| match info {
            Some(i) => Replay::Events {
                baseline: (i.epoch, i.last_offset),
                events: Vec::new(),
            },
            None => Replay::None,
        }),
    }
}

/// Decides what a subscription with `x-since-offset: n` (and `x-epoch`) gets: all of what it
/// missed, or nothing and a notice. Never a part.
async fn recover(
    services: &Services,
    room: &str,
    n: u64,
    epoch: Option<&str>,
) -> Result<Replay, BackendError> {
    let Some(info) = services.history.info(room).await? else {
        let info = RoomInfo {
            id: room.to_owned(),
            epoch: String::new(),
            last_offset: 0,
            first_offset: 1,
        };
        return Ok(if n == 0 {
            Replay::None
        } else {
            Replay::NotRecovered(info)
        });
    };
    let epoch_ok = match epoch {
        Some(e) => e == info.epoch,
        None => n == 0,
    };
    // Below Redis's window only an archive can still hold the range: then the read decides.
    let before_window = n + 1 < info.first_offset && !services.history.reaches_past_window();
    if !epoch_ok || n > info.last_offset || before_window {
        return Ok(Replay::NotRecovered(info));
    }
    let wanted = usize::try_from(info.last_offset - n).unwrap_or(usize::MAX);
    if wanted > MAX_REPLAY {
        return Ok(Replay::NotRecovered(info));
    }
    let page = services.history.read_after(room, n, wanted).await?;
    // The history may have moved on between the two reads, or not reach back to n+1 (neither
    // Redis nor the archive holds it): what matters is that it runs on from n+1 without a gap.
    let unbroken = page
        .events
        .iter()
        .zip(n + 1..)
        .all(|(e, o)| e.offset() == o);
    let reaches_back = page
        .events
        .first()
        .map_or(wanted == 0, |e| e.offset() == n + 1);
    if page.info.epoch != info.epoch || !unbroken || !reaches_back {
        return Ok(Replay::NotRecovered(page.info));
    }
    Ok(Replay::Events {
        baseline: (info.epoch, n),
        events: page.events,
    })
}

impl Conn {
    pub(super) fn on_replay(&mut self, room: &str, sub: &RoomSub, replay: Replay) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        let only_sub = state.subs.len() == 1;
        match replay {
            Replay::None => {
                if only_sub {
                    let (events, gap) = state.seq.release(None, Vec::new());
                    self.deliver_released(room, events, gap);
                }
            }
            Replay::NotRecovered(info) => {
                self.cx.metrics.not_recovered.inc();
                let frame = not_recovered_frame(&info, sub, &self.cx.server_id);
                if only_sub {
                    let (events, gap) = state
                        .seq
                        .release(Some((info.epoch.clone(), info.last_offset)), Vec::new());
                    self.send(&frame);
                    self.deliver_released(room, events, gap);
                } else {
                    self.send(&frame);
                }
            }
            Replay::Events { baseline, events } => {
                self.cx.metrics.replayed.inc_by(events.len() as u64);
                if only_sub {
                    let (events, gap) = state.seq.release(Some(baseline), events);
                    self.deliver_released(room, events, gap);
                } else {
                    // The room was live already: this subscription alone gets what it missed.
                    let upto = state.seq.last().map_or(0, |(_, o)| o);
                    for ev in events.iter().filter(|e| e.offset() <= upto) {
                        self.out.deliver(std::slice::from_ref(sub), |s| s.frame(ev));
                    }
                }
            }
        }
    }

    pub(super) fn start_fill(&mut self, room: &str, after: u64, until: u64) {
        let services = self.cx.services.clone();
        let room = room.to_owned();
        let limit = usize::try_from(until - after - 1)
            .unwrap_or(MAX_REPLAY)
            .min(MAX_REPLAY);
        self.fills.push(Box::pin(async move {
            let result = services.history.read_after(&room, after, limit).await;
            Filled {
                room,
                after,
                until,
                result,
            }
        }));
    }

    pub(super) fn on_filled(&mut self, f: Filled) {
        let Some(state) = self.rooms.get_mut(&f.room) else {
            return;
        };
        let complete = match &f.result {
            Ok(page) => {
                page.events.first().map(|e| e.offset()) == Some(f.after + 1)
                    && page.events.iter().any(|e| e.offset() + 1 >= f.until)
            }
            Err(_) => false,
        };
        let (events, gap) = match f.result {
            Ok(page) if complete => {
                self.cx.metrics.gaps_filled.inc();
                state.seq.release(None, page.events)
            }
            other => {
                // History no longer has the gap: say so once, then carry on from the live stream.
                if let Err(e) = &other {
                    warn!(error = %e, room = %f.room, "could not fill a gap from history");
                }
                let epoch = state
                    .seq
                    .last()
                    .map(|(e, _)| e.to_owned())
                    .unwrap_or_default();
                let info = RoomInfo {
                    id: f.room.clone(),
                    epoch: epoch.clone(),
                    last_offset: f.until - 1,
                    first_offset: 0,
                };
                let frames: Vec<Frame> = state
                    .subs
                    .iter()
                    .map(|s| not_recovered_frame(&info, s, &self.cx.server_id))
                    .collect();
                let released = state.seq.release(Some((epoch, f.until - 1)), Vec::new());
                self.cx.metrics.not_recovered.inc();
                for frame in &frames {
                    self.send(frame);
                }
                released
            }
        };
        self.deliver_released(&f.room, events, gap);
    }
}

/// The system MESSAGE telling subscription `sub` that history could not give back what it
/// missed of `info`'s room, up to `info.last_offset`.
fn not_recovered_frame(info: &RoomInfo, sub: &RoomSub, server_id: &str) -> Frame {
    let record = EventRecord {
        id: uuid::Uuid::new_v4().to_string(),
        room_id: info.id.clone(),
        offset: info.last_offset,
        epoch: info.epoch.clone(),
        kind: EventKind::System,
        sender: Sender {
            id: "system".into(),
            name: "system".into(),
        },
        content: "history is not recoverable from that position; reload the room".into(),
        sent_at: now_rfc3339(),
        server_id: server_id.to_owned(),
        extra: Default::default(),
        headers: Vec::new(),
    };
    let body = serde_json::to_vec(&record).unwrap_or_default();
    Frame::new(Command::Message)
        .with_header("destination", &*sub.dest)
        .with_header("subscription", &*sub.id)
        .with_header("message-id", record.id)
        .with_header("content-type", "application/json")
        .with_header("x-offset", info.last_offset.to_string())
        .with_header("x-epoch", info.epoch.clone())
        .with_header("x-recovered", "false")
        .with_body(body)
}
