//! Cluster backend on Redis (one node, or behind Sentinel), with `fred`.
//!
//! Keys (prefix `P`): `P:room:{id}` hash {epoch, last}; `P:log:{id}` Stream of records with IDs
//! `{offset}-0`; `P:ids:{id}:{bucket}` hash message id -> offset of the room's messages stored
//! in one 30-second bucket of Redis time (the retry check; see `lua/common.lua`); `P:rooms` zset
//! of room ids; `P:presence:{id}` hash session -> member;
//! `P:srv:{server}` set of `room|session` (what to reap when that server dies); `P:servers`
//! zset server -> heartbeat expiry (ms, Redis clock). Channels: `P:ch:room:{id}`,
//! `P:ch:user:{id}`, `P:ch:probe:{server}`.
//!
//! What it keeps true:
//! - A publish is one script (offset, Stream, PUBLISH) — one round trip. With
//!   `min_replicas > 0` the script does not PUBLISH; a batcher runs the scripts of concurrent
//!   messages, one `WAIT` for all, then PUBLISHes them: a message reaches subscribers and its
//!   sender's RECEIPT only once replicas hold it.
//! - Presence changes and their JOIN/LEAVE are one script, so they cannot part; the reaper is
//!   one script per round, so racing reapers LEAVE each session once.
//! - The instance subscribes to a room's channel only while it has local listeners. After the
//!   Pub/Sub link reconnects (or its broadcast buffer overflowed) it reads each local room's
//!   Stream after the last offset it delivered, so sessions see no gap; their sequencers drop
//!   what arrives twice.
//! - A probe published to itself every heartbeat proves the Pub/Sub link; when it stops
//!   arriving the instance is unready and forces the subscriber to reconnect.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::{
    Config as FredConfig, ReconnectPolicy, Server as FredServer, ServerConfig,
};
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::memory::new_epoch;
use super::{
    BackendError, Broker, History, HistoryPage, Member, Presence, Registry, RoomInfo, Services,
};
use crate::config::{Backend, Config, RESEND_WINDOW};
use crate::hub::{Hub, Topic};
use crate::model::{
    DirectEvent, DirectRecord, Draft, EventKind, EventRecord, RoomEvent, now_rfc3339,
};

const COMMON: &str = include_str!("lua/common.lua");
const PUBLISH: &str = include_str!("lua/publish.lua");

/// A script's text as sent to Redis: `WINDOW`, the shared functions, then `body`.
fn script_source(body: &str) -> String {
    format!(
        "local WINDOW = {}\n{COMMON}\n{body}",
        RESEND_WINDOW.as_secs()
    )
}

fn script(body: &str) -> Script {
    Script::from_lua(script_source(body))
}

/// The publish script's text exactly as this server sends it (for tests that run it by EVAL).
pub fn publish_script_source() -> String {
    script_source(PUBLISH)
}

struct Scripts {
    publish: Script,
    join: Script,
    leave: Script,
    heartbeat: Script,
    reap: Script,
    read: Script,
    create: Script,
    rooms: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            publish: script(PUBLISH),
            join: script(include_str!("lua/join.lua")),
            leave: script(include_str!("lua/leave.lua")),
            heartbeat: script(include_str!("lua/heartbeat.lua")),
            reap: script(include_str!("lua/reap.lua")),
            read: Script::from_lua(include_str!("lua/read.lua")),
            create: script(include_str!("lua/create.lua")),
            rooms: script(include_str!("lua/rooms.lua")),
        }
    }
}

/// Sessions reaped per dead server per round (bounds how long one script runs).
const REAP_BATCH: usize = 1000;
/// Rooms the REST listing shows at most.
const MAX_ROOMS: usize = 1000;
/// Records read per catch-up step.
const CATCH_UP_BATCH: usize = 1000;

/// After a heartbeat that succeeded at `after` (ms) following one at `before` with more than
/// two intervals between them, the time until which this instance must not reap: one server
/// TTL, so every live instance has heartbeated again first. `None` when nothing was missed.
fn reap_grace(before: u64, after: u64, every: Duration, ttl: Duration) -> Option<u64> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    (before > 0 && after > before && after - before > 2 * ms(every))
        .then(|| after.saturating_add(ms(ttl)))
}

/// `window` after `now` (ms since start) in Redis's clock, given `offset` (Redis's clock minus
/// ms since start; `i64::MIN` when not known yet, and then no deadline).
fn publish_deadline(now: u64, offset: i64, window: Duration) -> Option<i64> {
    if offset == i64::MIN {
        return None;
    }
    let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    Some(
        i64::try_from(now)
            .unwrap_or(i64::MAX)
            .saturating_add(offset)
            .saturating_add(window),
    )
}

fn unavailable(e: &Error) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

/// A pending publish for the replica-acknowledged path.
struct Pending {
    room: String,
    body: String,
    id: String,
    reply: oneshot::Sender<Result<Arc<RoomEvent>, BackendError>>,
}

pub struct RedisBackend {
    prefix: String,
    server_id: String,
    client: Client,
    sub: SubscriberClient,
    hub: Arc<Hub>,
    scripts: Scripts,
    maxlen: String,
    ttl: String,
    min_replicas: u32,
    wait: Duration,
    heartbeat_every: Duration,
    server_ttl: Duration,
    /// Per local room, the newest (epoch, offset) this instance handed to the hub.
    last_seen: Mutex<HashMap<String, (String, u64)>>,
    /// Redis's clock minus `millis()` as of the last heartbeat (ms; `i64::MIN` until the first):
    /// how a publish's deadline is put in Redis time.
    redis_clock: AtomicI64,
    /// Presence of this instance's sessions, to restore after being reaped while alive.
    local_presence: Mutex<HashMap<(String, String), Member>>,
    /// Serializes (un)subscribing so an unsubscribe never races a new listener.
    sub_lock: tokio::sync::Mutex<()>,
    started: Instant,
    last_probe_ms: AtomicU64,
    last_heartbeat_ms: AtomicU64,
    /// No reaping before this time (ms since start): set after this instance itself could not
    /// heartbeat for a while, since the others most likely could not either (a failover, Redis
    /// paused or unreachable) and their registry entries look expired for no fault of theirs.
    reap_not_before_ms: AtomicU64,
    /// Counts reconnects of the command client: a WAIT speaks only for writes on its own
    /// connection, so writes made before a reconnect cannot be acknowledged after it.
    connection_gen: AtomicU64,
    /// Replicas connected to the master, as last seen (refreshed every heartbeat).
    replicas: AtomicI64,
    registered: AtomicBool,
    ever_registered: AtomicBool,
    replicated: Option<mpsc::Sender<Pending>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("server_id", &self.server_id)
            .finish()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    room_id: &'a str,
    #[serde(flatten)]
    draft: &'a Draft,
}

impl RedisBackend {
    /// Connects (in the background: an unreachable Redis makes the instance unready, not dead)
    /// and starts the subscriber, reconciler, catch-up, heartbeat, reaper and probe tasks.
    pub async fn start(config: &Config, hub: Arc<Hub>) -> Result<Arc<RedisBackend>, BackendError> {
        let mut fc = match &config.backend {
            Backend::Redis { url } => {
                FredConfig::from_url(url).map_err(|e| BackendError::Protocol(e.to_string()))?
            }
            Backend::Sentinel { sentinels, master } => FredConfig {
                server: ServerConfig::Sentinel {
                    hosts: sentinels
                        .iter()
                        .map(|(h, p)| FredServer::new(h.as_str(), *p))
                        .collect(),
                    service_name: master.clone(),
                    username: None,
                    password: config.redis_sentinel_password.clone(),
                },
                ..FredConfig::default()
            },
            Backend::Memory => {
                return Err(BackendError::Protocol("not a Redis configuration".into()));
            }
        };
        if let Some(pw) = &config.redis_password {
            fc.password = Some(pw.clone());
        }
        fc.fail_fast = false;
        let wait = config.redis_wait.max(Duration::from_millis(100));
        let mut builder = Builder::from_config(fc);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 20;
                c.unresponsive.max_timeout = Some(Duration::from_secs(3));
                c.unresponsive.interval = Duration::from_millis(500);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = wait;
                p.broadcast_channel_capacity = 16_384;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2));
        let client = builder.build().map_err(|e| unavailable(&e))?;
        let sub = builder
            .build_subscriber_client()
            .map_err(|e| unavailable(&e))?;
        // These return the handles of fred's connection tasks; they run detached for our lifetime.
        drop(client.connect());
        drop(sub.connect());
        drop(sub.manage_subscriptions());

        let (tx, rx) = mpsc::channel(4096);
        let backend = Arc::new(RedisBackend {
            prefix: config.key_prefix.clone(),
            server_id: config.server_id.clone(),
            client,
            sub,
            hub,
            scripts: Scripts::new(),
            maxlen: config.history_max_len.to_string(),
            ttl: config.history_ttl.map_or(0, |t| t.as_secs()).to_string(),
            min_replicas: config.redis_min_replicas,
            wait,
            heartbeat_every: config.heartbeat_interval,
            server_ttl: config.server_ttl,
            last_seen: Mutex::default(),
            redis_clock: AtomicI64::new(i64::MIN),
            local_presence: Mutex::default(),
            sub_lock: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            last_probe_ms: AtomicU64::new(0),
            last_heartbeat_ms: AtomicU64::new(0),
            reap_not_before_ms: AtomicU64::new(0),
            connection_gen: AtomicU64::new(0),
            replicas: AtomicI64::new(i64::from(config.redis_min_replicas)),
            registered: AtomicBool::new(false),
            ever_registered: AtomicBool::new(false),
            replicated: (config.redis_min_replicas > 0).then_some(tx),
            stop: CancellationToken::new(),
        });
        // Connect, but do not hold start-up hostage: readiness says when Redis is there.
        let _ =
            tokio::time::timeout(Duration::from_secs(3), backend.client.wait_for_connect()).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), backend.sub.wait_for_connect()).await;
        if let Err(e) = backend.sub.subscribe(backend.probe_channel()).await {
            warn!(error = %e, "could not subscribe to the probe channel yet");
        }
        tokio::spawn(backend.clone().messages());
        tokio::spawn(backend.clone().reconcile());
        tokio::spawn(backend.clone().reconnects());
        tokio::spawn(backend.clone().count_connections());
        tokio::spawn(backend.clone().housekeeping());
        if config.redis_min_replicas > 0 {
            tokio::spawn(backend.clone().replicated_publisher(rx));
        }
        Ok(backend)
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn room_channel(&self, room: &str) -> String {
        format!("{}:ch:room:{room}", self.prefix)
    }

    fn user_channel(&self, user: &str) -> String {
        format!("{}:ch:user:{user}", self.prefix)
    }

    fn probe_channel(&self) -> String {
        format!("{}:ch:probe:{}", self.prefix, self.server_id)
    }

    fn body(room: &str, draft: &Draft) -> Result<String, BackendError> {
        serde_json::to_string(&Body {
            room_id: room,
            draft,
        })
        .map_err(|e| BackendError::Protocol(e.to_string()))
    }

    /// The arguments every appending script starts with.
    fn append_args(&self, room: &str, body: String) -> Vec<String> {
        vec![
            self.prefix.clone(),
            room.to_owned(),
            body,
            new_epoch(),
            self.maxlen.clone(),
            self.ttl.clone(),
        ]
    }

    fn parse_record(raw: &str) -> Result<Arc<RoomEvent>, BackendError> {
        serde_json::from_str::<EventRecord>(raw)
            .map(RoomEvent::new)
            .map_err(|e| BackendError::Protocol(format!("bad record in Redis: {e}")))
    }

    /// The publish script's arguments for one message (the script PUBLISHes it too);
    /// `deadline` from [`Self::deadline`], once for all the messages taken together.
    fn publish_args(
        &self,
        room: &str,
        draft: Draft,
        deadline: &str,
    ) -> Result<Vec<String>, BackendError> {
        let mut args = self.append_args(room, Self::body(room, &draft)?);
        args.extend(["1".into(), draft.id, deadline.to_owned()]);
        Ok(args)
    }

    /// The publish script's deadline for a message taken now: `RESEND_WINDOW` later, in ms of
    /// Redis's clock ('' before the first heartbeat has read that clock).
    fn deadline(&self) -> String {
        publish_deadline(
            self.millis(),
            self.redis_clock.load(Ordering::Acquire),
            RESEND_WINDOW,
        )
        .map_or_else(String::new, |d| d.to_string())
    }

    /// `commands`: each message's whole EVALSHA argument list (see `publish_batch`); they are
    /// `Value`s so that queuing, and queuing again after NOSCRIPT, copies no message body.
    async fn publish_pipeline(&self, commands: &[Vec<Value>]) -> Vec<Result<String, Error>> {
        // fred's pipelines have no Lua interface: EVALSHA as a plain command.
        let evalsha = CustomCommand::new_static("EVALSHA", ClusterHash::Random, false);
        let pipeline = self.client.pipeline();
        for cmd in commands {
            // Queuing in a pipeline only buffers the command; its reply comes from `try_all`.
            let queued: Result<(), _> = pipeline.custom(evalsha.clone(), cmd.clone()).await;
            if let Err(e) = queued {
                return vec![Err(e)];
            }
        }
        pipeline.try_all().await
    }

    /// Hands a message to the replicated batcher; the receiver gets its outcome.
    async fn enqueue(
        tx: &mpsc::Sender<Pending>,
        room: &str,
        draft: &Draft,
    ) -> Result<oneshot::Receiver<Result<Arc<RoomEvent>, BackendError>>, BackendError> {
        let (reply, rx) = oneshot::channel();
        tx.send(Pending {
            room: room.to_owned(),
            body: Self::body(room, draft)?,
            id: draft.id.clone(),
            reply,
        })
        .await
        .map_err(|_| BackendError::Unavailable("publisher stopped".into()))?;
        Ok(rx)
    }

    async fn replicated_reply(
        rx: oneshot::Receiver<Result<Arc<RoomEvent>, BackendError>>,
    ) -> Result<Arc<RoomEvent>, BackendError> {
        rx.await
            .map_err(|_| BackendError::Unavailable("publisher stopped".into()))?
    }

    /// Hands an event to the hub and remembers it as the newest seen for its room.
    fn deliver(&self, event: &Arc<RoomEvent>) {
        {
            let mut seen = self
                .last_seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = seen
                .entry(event.room().to_owned())
                .or_insert_with(|| (event.epoch().to_owned(), 0));
            if entry.0 != event.epoch() || event.offset() > entry.1 {
                *entry = (event.epoch().to_owned(), event.offset());
            }
        }
        self.hub.deliver_room(event);
    }

    // ----- background tasks -----

    /// Reads Pub/Sub messages and hands them to the hub.
    async fn messages(self: Arc<Self>) {
        let mut rx = self.sub.message_rx();
        let room_prefix = format!("{}:ch:room:", self.prefix);
        let user_prefix = format!("{}:ch:user:", self.prefix);
        let probe = self.probe_channel();
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
                self.last_probe_ms.store(self.millis(), Ordering::Release);
            }
        }
    }

    /// Unsubscribes channels whose last local listener left.
    async fn reconcile(self: Arc<Self>) {
        loop {
            let topics = tokio::select! {
                () = self.stop.cancelled() => return,
                t = self.hub.changed_topics() => t,
            };
            let _guard = self.sub_lock.lock().await;
            let mut gone = Vec::new();
            for topic in topics {
                if self.hub.has_listeners(&topic) {
                    continue;
                }
                match &topic {
                    Topic::Room(r) => {
                        self.last_seen
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(r);
                        gone.push(self.room_channel(r));
                    }
                    Topic::User(u) => gone.push(self.user_channel(u)),
                }
            }
            if !gone.is_empty()
                && let Err(e) = self.sub.unsubscribe(gone).await
            {
                debug!(error = %e, "unsubscribe failed; the channels stay until the next change");
            }
        }
    }

    /// After the Pub/Sub link comes back, reads what was published meanwhile.
    async fn reconnects(self: Arc<Self>) {
        let mut rx = self.sub.reconnect_rx();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                r = rx.recv() => if r.is_err() && matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) { return },
            }
            info!("pub/sub link reconnected: catching up from the streams");
            // fred re-subscribes in the background: catch up now and once more when it surely has.
            let me = self.clone();
            tokio::spawn(async move {
                me.clone().catch_up_all().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                me.catch_up_all().await;
            });
        }
    }

    async fn count_connections(self: Arc<Self>) {
        let mut rx = self.client.reconnect_rx();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                r = rx.recv() => match r {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        self.connection_gen.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    async fn catch_up_all(self: Arc<Self>) {
        let rooms: Vec<(String, (String, u64))> = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (room, (mut epoch, mut after)) in rooms {
            let mut restarted = false;
            loop {
                let page = match self
                    .read(&room, "after", &format!("{}-0", after + 1), CATCH_UP_BATCH)
                    .await
                {
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

    /// Heartbeat, reaper and probe, every heartbeat interval.
    async fn housekeeping(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.heartbeat_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let before = self.last_heartbeat_ms.load(Ordering::Acquire);
            self.heartbeat_once().await;
            let after = self.last_heartbeat_ms.load(Ordering::Acquire);
            if let Some(until) = reap_grace(before, after, self.heartbeat_every, self.server_ttl) {
                warn!(
                    silent_ms = after - before,
                    "could not heartbeat for a while: no reaping for one server TTL"
                );
                self.reap_not_before_ms.store(until, Ordering::Release);
            }
            if self.millis() >= self.reap_not_before_ms.load(Ordering::Acquire)
                && let Err(e) = self.reap_once().await
            {
                debug!(error = %e, "reaper round failed");
            }
            let _: Result<(), _> = self.client.publish(self.probe_channel(), "probe").await;
            self.check_probe().await;
            if self.min_replicas > 0
                && let Some(c) = self.connected_replicas().await
            {
                self.replicas.store(c, Ordering::Release);
            }
        }
    }

    async fn heartbeat_once(&self) {
        let ttl = u64::try_from(self.server_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .to_string();
        let args = vec![self.prefix.clone(), self.server_id.clone(), ttl];
        let sent = self.millis();
        match self
            .scripts
            .heartbeat
            .evalsha_with_reload::<(i64, i64), _, _>(&self.client, Vec::<String>::new(), args)
            .await
        {
            Ok((existed, redis_now)) => {
                let got = self.millis();
                // Redis read its clock about halfway through the round trip.
                let mid = (sent + got) / 2;
                let offset = redis_now.saturating_sub(i64::try_from(mid).unwrap_or(i64::MAX));
                self.redis_clock.store(offset, Ordering::Release);
                self.last_heartbeat_ms.store(got, Ordering::Release);
                self.registered.store(true, Ordering::Release);
                let was = self.ever_registered.swap(true, Ordering::AcqRel);
                if existed == 0 && was {
                    warn!("this instance was reaped while alive: restoring its sessions' presence");
                    self.restore_presence().await;
                } else if !was {
                    info!(server_id = %self.server_id, "registered");
                }
            }
            Err(e) => debug!(error = %e, "heartbeat failed"),
        }
    }

    async fn restore_presence(&self) {
        let entries: Vec<((String, String), Member)> = self
            .local_presence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((room, _), member) in entries {
            if let Err(e) = self.join_script(&room, &member).await {
                warn!(error = %e, room, "could not restore presence");
            }
        }
    }

    /// One reaper round; returns how many sessions it reaped.
    pub async fn reap_once(&self) -> Result<usize, BackendError> {
        let args = vec![
            self.prefix.clone(),
            self.server_id.clone(),
            self.maxlen.clone(),
            self.ttl.clone(),
            now_rfc3339(),
            new_epoch(),
            REAP_BATCH.to_string(),
        ];
        let out: Vec<Value> = self
            .scripts
            .reap
            .evalsha_with_reload(&self.client, Vec::<String>::new(), args)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut total = 0;
        for pair in out.chunks(2) {
            if let [server, n] = pair {
                let n = n.as_usize().unwrap_or(0);
                total += n;
                info!(dead = %server.as_str().unwrap_or_default(), sessions = n, "reaped a dead server");
            }
        }
        Ok(total)
    }

    async fn check_probe(&self) {
        let limit = u64::try_from((self.heartbeat_every * 3).as_millis()).unwrap_or(u64::MAX);
        let now = self.millis();
        let last = self.last_probe_ms.load(Ordering::Acquire);
        if now > limit && now.saturating_sub(last) > limit && self.client.is_connected() {
            warn!(
                silent_ms = now - last,
                "pub/sub probe stopped arriving: reconnecting the subscriber"
            );
            let _ = self.sub.force_reconnection().await;
        }
    }

    /// The replica-acknowledged publish path: scripts for a batch, one WAIT, then PUBLISH.
    async fn replicated_publisher(self: Arc<Self>, mut rx: mpsc::Receiver<Pending>) {
        let mut batch = Vec::new();
        loop {
            batch.clear();
            tokio::select! {
                () = self.stop.cancelled() => return,
                n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
            }
            let generation = self.connection_gen.load(Ordering::Acquire);
            let mut written = Vec::with_capacity(batch.len());
            let deadline = self.deadline();
            for mut p in batch.drain(..) {
                let mut args = self.append_args(&p.room, std::mem::take(&mut p.body));
                args.extend(["0".into(), std::mem::take(&mut p.id), deadline.clone()]);
                let r: Result<String, _> = self
                    .scripts
                    .publish
                    .evalsha_with_reload(&self.client, Vec::<String>::new(), args)
                    .await;
                match r
                    .map_err(|e| unavailable(&e))
                    .and_then(|raw| Self::parse_record(&raw).map(|ev| (raw, ev)))
                {
                    Ok((raw, ev)) => written.push((p, raw, ev)),
                    Err(e) => {
                        let _ = p.reply.send(Err(e));
                    }
                }
            }
            if written.is_empty() {
                continue;
            }
            let ok = self.await_replicas().await
                && self.connection_gen.load(Ordering::Acquire) == generation;
            for (p, raw, ev) in written {
                if !ok {
                    // In the Stream but not provably on a replica: no RECEIPT. Subscribers get it
                    // through gap repair if it survives.
                    let _ = p.reply.send(Err(BackendError::Unavailable(format!(
                        "message not acknowledged by {} replica(s) in time",
                        self.min_replicas
                    ))));
                    continue;
                }
                let published: Result<i64, _> =
                    self.client.publish(self.room_channel(&p.room), raw).await;
                let _ = p
                    .reply
                    .send(published.map(|_| ev).map_err(|e| unavailable(&e)));
            }
        }
    }

    /// Waits until the writes so far are on `min_replicas` replicas — or on every replica the
    /// master has, when it has fewer (right after a failover the new master may have none:
    /// then there is nothing to wait for, as with Redis's own `min-replicas-to-write`).
    async fn await_replicas(&self) -> bool {
        let need = i64::from(self.min_replicas);
        let deadline = Instant::now() + self.wait;
        loop {
            let known = self.replicas.load(Ordering::Acquire);
            let want = need.min(known);
            if want == 0 {
                return true;
            }
            let acked: Result<i64, _> = self.client.wait(want, 500).await;
            if matches!(acked, Ok(n) if n >= want) {
                return true;
            }
            // Short: perhaps the master changed or lost replicas. Look again, then retry.
            if let Some(c) = self.connected_replicas().await {
                self.replicas.store(c, Ordering::Release);
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    async fn connected_replicas(&self) -> Option<i64> {
        let info: String = self
            .client
            .info(Some(fred::types::InfoKind::Replication))
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse().ok())
    }

    async fn join_script(&self, room: &str, member: &Member) -> Result<bool, BackendError> {
        let draft = member.event(EventKind::Join, &self.server_id);
        let member_json =
            serde_json::to_string(member).map_err(|e| BackendError::Protocol(e.to_string()))?;
        let mut args = self.append_args(room, Self::body(room, &draft)?);
        args.extend([
            self.server_id.clone(),
            member.session_id.clone(),
            member_json,
        ]);
        let r: Option<String> = self
            .scripts
            .join
            .evalsha_with_reload(&self.client, Vec::<String>::new(), args)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(r.is_some())
    }

    /// `{epoch, last, first, records...}` for one room.
    async fn read(
        &self,
        room: &str,
        mode: &str,
        start: &str,
        count: usize,
    ) -> Result<HistoryPage, BackendError> {
        let keys = vec![
            format!("{}:room:{room}", self.prefix),
            format!("{}:log:{room}", self.prefix),
        ];
        let args = vec![mode.to_owned(), start.to_owned(), count.to_string()];
        let out: Vec<Value> = self
            .scripts
            .read
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut it = out.into_iter();
        let epoch = it.next().and_then(|v| v.as_string()).unwrap_or_default();
        let last = it.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let first = it.next().and_then(|v| v.as_u64()).unwrap_or(last + 1);
        let mut events = Vec::new();
        for v in it {
            if let Some(raw) = v.as_str() {
                events.push(Self::parse_record(&raw)?);
            }
        }
        if mode == "last" {
            events.reverse();
        }
        Ok(HistoryPage {
            info: RoomInfo {
                id: room.to_owned(),
                epoch,
                last_offset: last,
                first_offset: first,
            },
            events,
        })
    }
}

#[async_trait]
impl Broker for RedisBackend {
    async fn publish(&self, room: &str, draft: Draft) -> Result<Arc<RoomEvent>, BackendError> {
        if let Some(tx) = &self.replicated {
            return Self::replicated_reply(Self::enqueue(tx, room, &draft).await?).await;
        }
        let raw: String = self
            .scripts
            .publish
            .evalsha_with_reload(
                &self.client,
                Vec::<String>::new(),
                self.publish_args(room, draft, &self.deadline())?,
            )
            .await
            .map_err(|e| unavailable(&e))?;
        Self::parse_record(&raw)
    }

    /// One pipeline of `EVALSHA`s on the one connection, so Redis runs them in this order; after
    /// a Redis restart (`NOSCRIPT`) the script is loaded and the pipeline sent again (a
    /// `NOSCRIPT` reply means that script did not run).
    async fn publish_batch(
        &self,
        mut items: Vec<(String, Draft)>,
    ) -> Result<(), (usize, BackendError)> {
        if let Some(tx) = &self.replicated {
            // Queued together, the batcher runs them with one WAIT. If one cannot be queued, the
            // ones before it still get their outcome first.
            let mut replies = Vec::with_capacity(items.len());
            let mut stopped = None;
            for (i, (room, draft)) in items.iter().enumerate() {
                match Self::enqueue(tx, room, draft).await {
                    Ok(reply) => replies.push(reply),
                    Err(e) => {
                        stopped = Some((i, e));
                        break;
                    }
                }
            }
            for (i, reply) in replies.into_iter().enumerate() {
                Self::replicated_reply(reply).await.map_err(|e| (i, e))?;
            }
            return stopped.map_or(Ok(()), Err);
        }
        if items.len() == 1
            && let Some((room, draft)) = items.pop()
        {
            return self
                .publish(&room, draft)
                .await
                .map(|_| ())
                .map_err(|e| (0, e));
        }
        let sha = Value::from(self.scripts.publish.sha1().clone());
        let mut args = Vec::with_capacity(items.len());
        let deadline = self.deadline();
        for (i, (room, draft)) in items.into_iter().enumerate() {
            let script_args = self
                .publish_args(&room, draft, &deadline)
                .map_err(|e| (i, e))?;
            // SHA, no keys, then the script's arguments.
            let cmd = [sha.clone(), Value::from(0)]
                .into_iter()
                .chain(script_args.into_iter().map(Value::from))
                .collect::<Vec<_>>();
            args.push(cmd);
        }
        let mut results = self.publish_pipeline(&args).await;
        if matches!(results.first(), Some(Err(e)) if e.details().starts_with("NOSCRIPT")) {
            self.scripts
                .publish
                .load(&self.client)
                .await
                .map_err(|e| (0, unavailable(&e)))?;
            results = self.publish_pipeline(&args).await;
        }
        let answered = results.len();
        for (i, r) in results.into_iter().enumerate() {
            let raw = r.map_err(|e| (i, unavailable(&e)))?;
            Self::parse_record(&raw).map_err(|e| (i, e))?;
        }
        if answered < args.len() {
            let error = BackendError::Protocol(format!(
                "{answered} replies to a pipeline of {}",
                args.len()
            ));
            return Err((answered, error));
        }
        Ok(())
    }

    async fn publish_direct(&self, record: DirectRecord) -> Result<(), BackendError> {
        let payload =
            serde_json::to_string(&record).map_err(|e| BackendError::Protocol(e.to_string()))?;
        let _: i64 = self
            .client
            .publish(self.user_channel(&record.to), payload)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }

    async fn listen(&self, topic: &Topic) -> Result<(), BackendError> {
        let channel = match topic {
            Topic::Room(r) => self.room_channel(r),
            Topic::User(u) => self.user_channel(u),
        };
        let _guard = self.sub_lock.lock().await;
        if self.sub.tracked_channels().iter().any(|c| **c == *channel) {
            return Ok(());
        }
        self.sub
            .subscribe(channel)
            .await
            .map_err(|e| unavailable(&e))
    }

    fn is_ready(&self) -> bool {
        let limit = u64::try_from((self.heartbeat_every * 3).as_millis()).unwrap_or(u64::MAX);
        let probe_fresh = self
            .millis()
            .saturating_sub(self.last_probe_ms.load(Ordering::Acquire))
            <= limit;
        self.client.is_connected() && self.sub.is_connected() && probe_fresh
    }
}

#[async_trait]
impl History for RedisBackend {
    async fn info(&self, room: &str) -> Result<Option<RoomInfo>, BackendError> {
        let page = self.read(room, "info", "-", 0).await?;
        Ok((!page.info.epoch.is_empty()).then_some(page.info))
    }

    async fn read_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, BackendError> {
        self.read(
            room,
            "after",
            &format!("{}-0", after.saturating_add(1)),
            limit,
        )
        .await
    }

    async fn read_last(&self, room: &str, count: usize) -> Result<HistoryPage, BackendError> {
        self.read(room, "last", "+", count).await
    }

    async fn create_room(&self, room: &str) -> Result<bool, BackendError> {
        let args = vec![
            self.prefix.clone(),
            room.to_owned(),
            new_epoch(),
            self.ttl.clone(),
        ];
        let n: i64 = self
            .scripts
            .create
            .evalsha_with_reload(&self.client, Vec::<String>::new(), args)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(n == 1)
    }

    async fn rooms(&self) -> Result<Vec<RoomInfo>, BackendError> {
        let args = vec![self.prefix.clone(), MAX_ROOMS.to_string()];
        let out: Vec<Value> = self
            .scripts
            .rooms
            .evalsha_with_reload(&self.client, Vec::<String>::new(), args)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut rooms: Vec<RoomInfo> = out
            .chunks(4)
            .filter_map(|c| match c {
                [id, epoch, last, first] => Some(RoomInfo {
                    id: id.as_string()?,
                    epoch: epoch.as_string()?,
                    last_offset: last.as_u64()?,
                    first_offset: first.as_u64()?,
                }),
                _ => None,
            })
            .collect();
        rooms.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(rooms)
    }
}

#[async_trait]
impl Presence for RedisBackend {
    async fn join(&self, room: &str, member: &Member) -> Result<bool, BackendError> {
        self.local_presence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((room.to_owned(), member.session_id.clone()), member.clone());
        self.join_script(room, member).await
    }

    async fn leave(&self, room: &str, member: &Member) -> Result<bool, BackendError> {
        self.local_presence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(room.to_owned(), member.session_id.clone()));
        let draft = member.event(EventKind::Leave, &self.server_id);
        let mut args = self.append_args(room, Self::body(room, &draft)?);
        args.extend([self.server_id.clone(), member.session_id.clone()]);
        let r: Option<String> = self
            .scripts
            .leave
            .evalsha_with_reload(&self.client, Vec::<String>::new(), args)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(r.is_some())
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>, BackendError> {
        let raw: Vec<String> = self
            .client
            .hvals(format!("{}:presence:{room}", self.prefix))
            .await
            .map_err(|e| unavailable(&e))?;
        let mut members: Vec<Member> = raw
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect();
        members.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Ok(members)
    }
}

#[async_trait]
impl Registry for RedisBackend {
    async fn deregister(&self) -> Result<(), BackendError> {
        self.registered.store(false, Ordering::Release);
        let result: Result<(), Error> = async {
            let _: i64 = self
                .client
                .zrem(format!("{}:servers", self.prefix), self.server_id.clone())
                .await?;
            let _: i64 = self
                .client
                .del(format!("{}:srv:{}", self.prefix, self.server_id))
                .await?;
            Ok(())
        }
        .await;
        self.stop.cancel();
        let _ = self.sub.quit().await;
        let _ = self.client.quit().await;
        result.map_err(|e| unavailable(&e))
    }

    fn is_registered(&self) -> bool {
        let limit = u64::try_from(self.server_ttl.as_millis()).unwrap_or(u64::MAX);
        self.registered.load(Ordering::Acquire)
            && self
                .millis()
                .saturating_sub(self.last_heartbeat_ms.load(Ordering::Acquire))
                < limit
    }
}

impl Services {
    /// The clustered backend on Redis.
    pub async fn redis(config: &Config) -> Result<Services, BackendError> {
        let hub = Hub::new();
        // The first heartbeat runs at once in the background; readiness waits for it.
        let backend = RedisBackend::start(config, hub.clone()).await?;
        Ok(Services {
            hub,
            broker: backend.clone(),
            history: backend.clone(),
            presence: backend.clone(),
            registry: backend,
        })
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
    fn a_publish_deadline_is_the_window_after_now_in_redis_time() {
        let w = Duration::from_secs(30);
        assert_eq!(
            publish_deadline(5_000, i64::MIN, w),
            None,
            "clock not read yet"
        );
        // Redis's clock at 1_700_000_000_000 when this instance was 2_000 ms old.
        let offset = 1_700_000_000_000 - 2_000;
        assert_eq!(
            publish_deadline(5_000, offset, w),
            Some(1_700_000_000_000 + 3_000 + 30_000)
        );
    }

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

    #[test]
    fn reaping_pauses_for_one_ttl_after_this_instance_missed_heartbeats() {
        let (every, ttl) = (Duration::from_millis(300), Duration::from_millis(1500));
        // On time (or one late tick): no grace.
        assert_eq!(reap_grace(1000, 1300, every, ttl), None);
        assert_eq!(reap_grace(1000, 1600, every, ttl), None);
        // A failed heartbeat round (after == before) decides nothing yet.
        assert_eq!(reap_grace(1000, 1000, every, ttl), None);
        // The first heartbeat: nothing to compare with.
        assert_eq!(reap_grace(0, 500, every, ttl), None);
        // 2.3 s without a heartbeat (a Sentinel failover): no reaping until 1.5 s after it.
        assert_eq!(reap_grace(1000, 3300, every, ttl), Some(4800));
    }
}
