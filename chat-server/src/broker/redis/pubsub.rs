//! Receiving through Redis Pub/Sub: the reader that hands room and direct messages to the hub,
//! subscribing on `listen` and unsubscribing once a channel's last local listener left,
//! catching up from the Streams after the link reconnects, and the probe that proves the link.
//!
//! What it keeps true: (un)subscribing is serialized, so an unsubscribe never races a new
//! listener; every room event handed to the hub is remembered as the room's newest seen, so a
//! catch-up reads from there and sessions see no gap; a direct message resent by fred is
//! delivered once (`RecentIds`), since direct messages are not stored.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tracing::{debug, info, warn};

use super::{RedisBackend, unavailable};
use crate::broker::{BackendError, History, Slice};
use crate::config::RESEND_WINDOW;
use crate::hub::Topic;
use crate::model::{DirectEvent, DirectRecord, RoomEvent};

/// Records read per catch-up step.
const CATCH_UP_BATCH: usize = 1000;

/// How long the heartbeat loop waits for the probe channel's SUBSCRIBE.
const PROBE_SUBSCRIBE_WAIT: Duration = Duration::from_secs(1);

/// PINGs after a SUBSCRIBE before giving up (see `RedisBackend::subscribe`).
const PING_TRIES: usize = 3;

/// The subscriber connection and what receiving keeps.
pub(super) struct PubSubState {
    pub(super) sub: SubscriberClient,
    /// Serializes (un)subscribing so an unsubscribe never races a new listener.
    lock: tokio::sync::Mutex<()>,
    /// Per local room, the newest (epoch, offset) this instance handed to the hub.
    last_seen: Mutex<HashMap<String, (String, u64)>>,
    /// When the probe last arrived (ms since start).
    last_probe_ms: AtomicU64,
}

impl PubSubState {
    pub(super) fn new(sub: SubscriberClient) -> Self {
        PubSubState {
            sub,
            lock: tokio::sync::Mutex::new(()),
            last_seen: Mutex::default(),
            last_probe_ms: AtomicU64::new(0),
        }
    }

    fn last_seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, u64)>> {
        self.last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl RedisBackend {
    /// Subscribes to `topic`'s channel unless subscribed already (see `Broker::listen`).
    pub(super) async fn subscribe(&self, topic: &Topic) -> Result<(), BackendError> {
        let channel = match topic {
            Topic::Room(r) => self.keys.room_channel(r),
            Topic::User(u) => self.keys.user_channel(u),
        };
        let _guard = self.pubsub.lock.lock().await;
        if self
            .pubsub
            .sub
            .tracked_channels()
            .iter()
            .any(|c| **c == *channel)
        {
            debug!(channel, "already subscribed");
            return Ok(());
        }
        self.pubsub
            .sub
            .subscribe(channel.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        // fred resolves SUBSCRIBE once it is written, not once Redis has run it (the reply
        // comes out of band and is dropped). A PING on the same connection is answered only
        // after Redis ran the SUBSCRIBE, so the subscription is in place before the caller
        // acknowledges it: a RECEIPT used to reach a client, and a direct message sent on
        // another instance right after it reach Redis, before the SUBSCRIBE did (seen in CI:
        // the PUBLISH reached 0 instances).
        //
        // The out-of-band replies also mean a stray error (fred's re-subscribe after a reconnect
        // sends PSUBSCRIBE with no pattern) is handed to the next command awaiting a reply: to
        // this PING. Its own PONG then answers the next PING, and any PONG comes after the
        // SUBSCRIBE, so a few tries tell a stray error from a connection that fails.
        let mut last = None;
        for _ in 0..PING_TRIES {
            match self.pubsub.sub.ping::<Value>(None).await {
                Ok(_) => {
                    debug!(channel, "subscribed");
                    return Ok(());
                }
                Err(e) => {
                    debug!(channel, error = %e, "PING after SUBSCRIBE failed");
                    last = Some(e);
                }
            }
        }
        Err(last.map_or_else(
            || BackendError::Unavailable("no PING tried".into()),
            |e| unavailable(&e),
        ))
    }

    /// How long the probe may stay away before the link counts as broken (ms).
    fn probe_limit_ms(&self) -> u64 {
        u64::try_from((self.registry.heartbeat_every * 3).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the subscriber is connected and the probe arrived lately (readiness).
    pub(super) fn pubsub_ready(&self) -> bool {
        let probe_fresh = self
            .millis()
            .saturating_sub(self.pubsub.last_probe_ms.load(Ordering::Acquire))
            <= self.probe_limit_ms();
        self.pubsub.sub.is_connected() && probe_fresh
    }

    /// Hands an event to the hub and remembers it as the newest seen for its room.
    fn deliver(&self, event: &Arc<RoomEvent>) {
        {
            let mut seen = self.pubsub.last_seen();
            let entry = seen
                .entry(event.room().to_owned())
                .or_insert_with(|| (event.epoch().to_owned(), 0));
            if entry.0 != event.epoch() || event.offset() > entry.1 {
                *entry = (event.epoch().to_owned(), event.offset());
            }
        }
        self.hub.deliver_room(event);
    }

    /// Reads Pub/Sub messages and hands them to the hub.
    pub(super) async fn messages(self: Arc<Self>) {
        let mut rx = self.pubsub.sub.message_rx();
        let room_prefix = self.keys.room_channel("");
        let user_prefix = self.keys.user_channel("");
        let probe = self.keys.probe_channel();
        // Ids of the direct messages delivered lately: a resent PUBLISH is dropped.
        let mut recent_direct = RecentIds::new(RESEND_WINDOW);
        loop {
            let msg = tokio::select! {
                () = self.stop.cancelled() => return,
                msg = rx.recv() => msg,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(
                        missed = n,
                        "pub/sub buffer overflowed: catching up from the streams"
                    );
                    tokio::spawn(self.clone().catch_up_all());
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let channel: &str = &msg.channel;
            let Some(payload) = msg.value.as_str() else {
                continue;
            };
            if channel.starts_with(&room_prefix) {
                match Self::parse_record(&payload) {
                    Ok(event) => self.deliver(&event),
                    Err(e) => warn!(error = %e, channel, "dropped a bad room message"),
                }
            } else if channel.starts_with(&user_prefix) {
                match serde_json::from_str::<DirectRecord>(&payload) {
                    Ok(r) => {
                        if recent_direct.first_time(&r.id, Instant::now()) {
                            self.hub.deliver_user(&DirectEvent::new(r));
                        } else {
                            debug!(id = r.id, "dropped a resent direct message");
                        }
                    }
                    Err(e) => warn!(error = %e, channel, "dropped a bad direct message"),
                }
            } else if channel == probe {
                self.pubsub
                    .last_probe_ms
                    .store(self.millis(), Ordering::Release);
            }
        }
    }

    /// Unsubscribes channels whose last local listener left (and forgets those rooms' newest
    /// seen events), whenever the hub's topics change.
    pub(super) async fn unsubscribe_unheard(self: Arc<Self>) {
        loop {
            let topics = tokio::select! {
                () = self.stop.cancelled() => return,
                t = self.hub.changed_topics() => t,
            };
            let _guard = self.pubsub.lock.lock().await;
            let mut gone = Vec::new();
            for topic in topics {
                if self.hub.has_listeners(&topic) {
                    continue;
                }
                match &topic {
                    Topic::Room(r) => {
                        self.pubsub.last_seen().remove(r);
                        gone.push(self.keys.room_channel(r));
                    }
                    Topic::User(u) => gone.push(self.keys.user_channel(u)),
                }
            }
            if !gone.is_empty() {
                debug!(channels = ?gone, "unsubscribing channels no local session listens to");
                if let Err(e) = self.pubsub.sub.unsubscribe(gone).await {
                    debug!(error = %e, "unsubscribe failed; the channels stay until the next change");
                }
            }
        }
    }

    /// After the Pub/Sub link comes back, reads what was published meanwhile.
    pub(super) async fn reconnects(self: Arc<Self>) {
        let mut rx = self.pubsub.sub.reconnect_rx();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                r = rx.recv() => if r.is_err() && matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) { return },
            }
            info!("pub/sub link reconnected: catching up from the streams");
            // Not awaited here: a SUBSCRIBE sent while the link drops again would hold up the
            // next reconnect's catch-up.
            let me = self.clone();
            tokio::spawn(async move { me.ensure_probe_subscribed().await });
            // fred re-subscribes in the background: catch up now and once more when it surely has.
            let me = self.clone();
            tokio::spawn(async move {
                me.clone().catch_up_all().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                me.catch_up_all().await;
            });
        }
    }

    /// Reads every local room's Stream after the newest event seen and delivers what it finds.
    async fn catch_up_all(self: Arc<Self>) {
        let rooms: Vec<(String, (String, u64))> = self
            .pubsub
            .last_seen()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (room, (mut epoch, mut after)) in rooms {
            let mut restarted = false;
            loop {
                let slice = Slice::After {
                    after,
                    limit: CATCH_UP_BATCH,
                };
                let page = match self.read(&room, slice).await {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(error = %e, room, "catch-up read failed");
                        break;
                    }
                };
                if page.info.epoch != epoch {
                    // The room's history was lost (Redis restarted empty, or the room expired)
                    // and a new epoch began: what was published in it so far is all missed.
                    if restarted || page.info.epoch.is_empty() {
                        break;
                    }
                    info!(room, "new epoch: catching up from its start");
                    (epoch, after, restarted) = (page.info.epoch, 0, true);
                    continue;
                }
                let n = page.events.len();
                for ev in &page.events {
                    after = ev.offset();
                    self.deliver(ev);
                }
                if n < CATCH_UP_BATCH {
                    break;
                }
            }
        }
    }

    /// Publishes the probe to this instance's own channel.
    pub(super) async fn send_probe(&self) {
        let _: Result<(), _> = self
            .client
            .publish(self.keys.probe_channel(), "probe")
            .await;
    }

    /// Subscribes to the probe channel unless fred tracks it. fred tracks a channel only once
    /// its SUBSCRIBE succeeded and re-subscribes only tracked channels after a reconnect, so
    /// a SUBSCRIBE that failed while there was no master (the sentinels naming a replica, say)
    /// would leave the probe silent, and the instance unready, for good.
    pub(super) async fn ensure_probe_subscribed(&self) {
        let probe = self.keys.probe_channel();
        if self
            .pubsub
            .sub
            .tracked_channels()
            .iter()
            .any(|c| **c == *probe)
        {
            return;
        }
        match self.pubsub.sub.subscribe(probe).await {
            Ok(()) => info!("subscribed to the probe channel"),
            Err(e) => warn!(error = %e, "could not subscribe to the probe channel yet"),
        }
    }

    /// Forces the subscriber to reconnect when the probe stopped arriving.
    pub(super) async fn check_probe(&self) {
        // Bounded: this runs in the heartbeat loop, which must not wait out a command timeout.
        if self.pubsub.sub.is_connected() {
            let _ =
                tokio::time::timeout(PROBE_SUBSCRIBE_WAIT, self.ensure_probe_subscribed()).await;
        }
        let limit = self.probe_limit_ms();
        let now = self.millis();
        let last = self.pubsub.last_probe_ms.load(Ordering::Acquire);
        if now > limit && now.saturating_sub(last) > limit && self.client.is_connected() {
            warn!(
                silent_ms = now - last,
                "pub/sub probe stopped arriving: reconnecting the subscriber"
            );
            let _ = self.pubsub.sub.force_reconnection().await;
        }
    }
}

/// Ids seen in the last `window` (at least; at most twice that): two generations of a set,
/// the older dropped as a whole when the newer is `window` old. Direct messages are not
/// stored, so a PUBLISH that fred resent after a lost reply can only be caught on arrival.
/// The sets hold 64-bit hashes of the ids (8 bytes each instead of a string; a false match
/// among a million ids in a window has odds of about 1 in 10^7).
#[derive(Debug)]
struct RecentIds {
    window: Duration,
    /// When `current` began.
    since: Instant,
    hasher: RandomState,
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl RecentIds {
    fn new(window: Duration) -> RecentIds {
        RecentIds {
            window,
            since: Instant::now(),
            hasher: RandomState::new(),
            current: HashSet::new(),
            previous: HashSet::new(),
        }
    }

    /// Records `id`; false if it was seen within the window.
    fn first_time(&mut self, id: &str, now: Instant) -> bool {
        let age = now.duration_since(self.since);
        if age >= self.window {
            self.previous = std::mem::take(&mut self.current);
            if age >= 2 * self.window {
                self.previous.clear();
            }
            self.since = now;
        }
        let h = self.hasher.hash_one(id);
        !self.previous.contains(&h) && self.current.insert(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resent_id_is_caught_within_the_window_and_old_ids_are_forgotten() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = RecentIds::new(Duration::from_secs(30));
        assert!(r.first_time("a", at(0)));
        assert!(!r.first_time("a", at(1)), "a resend a second later");
        assert!(r.first_time("b", at(29)));
        // A generation later both are still known (a is 31 s old, b 2 s).
        assert!(!r.first_time("a", at(31)));
        assert!(!r.first_time("b", at(31)));
        // b, seen at 29, is known until its generation (begun at 0) is dropped at 61: at
        // least the window after each sighting. Then a is forgotten too.
        assert!(!r.first_time("b", at(60)));
        assert!(r.first_time("a", at(61)));
        // Idle past two windows: everything before is gone at once.
        assert!(r.first_time("b", at(200)));
        assert_eq!(r.current.len() + r.previous.len(), 1);
    }
}
