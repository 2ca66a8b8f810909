//! Cluster backend on Redis (one node, or behind Sentinel), with `fred`: the backend's state,
//! its start, its connections, its key names and its scripts. Each concept has its own file:
//! `publish` (both publish paths), `history` (reads), `presence` (join/leave), `registry`
//! (heartbeat, reaper, deregister), `pubsub` (receiving: the reader, subscriptions, catch-up,
//! the probe) and `switch` (the sentinels' `+switch-master`, moving both connections at once).
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

mod archive;
mod history;
mod presence;
mod publish;
mod pubsub;
mod registry;
mod switch;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::config::{
    Config as FredConfig, ReconnectPolicy, Server as FredServer, ServerConfig,
};
use fred::types::scripts::Script;
use fred::types::{FromValue, MultipleKeys};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::presence::LocalPresence;
use self::publish::PublishState;
use self::pubsub::PubSubState;
use self::registry::RegistryState;
use super::{BackendError, Services, new_epoch};
use crate::config::{Backend, Config, RESEND_WINDOW};
use crate::hub::Hub;
use crate::model::{Draft, RoomEvent};

const COMMON: &str = include_str!("lua/common.lua");
const PUBLISH: &str = include_str!("lua/publish.lua");

/// A script's text as sent to Redis: `WINDOW`, `ARCHIVE` (the archive Stream's bound, 0 when
/// archiving is off), the shared functions, then `body`.
fn script_source(body: &str, archive: u64) -> String {
    format!(
        "local WINDOW = {}\nlocal ARCHIVE = {archive}\n{COMMON}\n{body}",
        RESEND_WINDOW.as_secs()
    )
}

/// The publish script's text exactly as this server sends it without archiving (for tests
/// that run it by EVAL).
pub fn publish_script_source() -> String {
    script_source(PUBLISH, 0)
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
    /// `archive`: the archive Stream's bound, 0 for no archive (see `lua/common.lua`).
    fn new(archive: u64) -> Scripts {
        let script = |body: &str| Script::from_lua(script_source(body, archive));
        Scripts {
            publish: script(PUBLISH),
            join: script(include_str!("lua/join.lua")),
            leave: script(include_str!("lua/leave.lua")),
            heartbeat: script(include_str!("lua/heartbeat.lua")),
            reap: script(include_str!("lua/reap.lua")),
            read: script(include_str!("lua/read.lua")),
            create: script(include_str!("lua/create.lua")),
            rooms: script(include_str!("lua/rooms.lua")),
        }
    }
}

fn unavailable(e: &Error) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

fn protocol(e: &serde_json::Error) -> BackendError {
    BackendError::Protocol(e.to_string())
}

/// The names of this instance's keys and channels, all under one prefix.
#[derive(Debug)]
struct Keys {
    prefix: String,
    server_id: String,
}

impl Keys {
    fn room_channel(&self, room: &str) -> String {
        format!("{}:ch:room:{room}", self.prefix)
    }

    fn user_channel(&self, user: &str) -> String {
        format!("{}:ch:user:{user}", self.prefix)
    }

    fn probe_channel(&self) -> String {
        format!("{}:ch:probe:{}", self.prefix, self.server_id)
    }

    fn room_meta(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    fn room_log(&self, room: &str) -> String {
        format!("{}:log:{room}", self.prefix)
    }

    fn presence(&self, room: &str) -> String {
        format!("{}:presence:{room}", self.prefix)
    }

    fn servers(&self) -> String {
        format!("{}:servers", self.prefix)
    }

    /// This server's set of `room|session`.
    fn own_sessions(&self) -> String {
        format!("{}:srv:{}", self.prefix, self.server_id)
    }
}

/// This instance's clock (ms since start) and how Redis's clock stands against it.
#[derive(Debug)]
struct Clock {
    started: Instant,
    /// Redis's clock minus `millis()` as of the last heartbeat (ms; `i64::MIN` until the first):
    /// how a publish's deadline is put in Redis time.
    redis_offset: AtomicI64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            started: Instant::now(),
            redis_offset: AtomicI64::new(i64::MIN),
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records Redis's clock `redis_now`, read by a command sent at `sent` and answered at `got`.
    fn set_redis_now(&self, redis_now: i64, sent: u64, got: u64) {
        // Redis read its clock about halfway through the round trip.
        let mid = (sent + got) / 2;
        let offset = redis_now.saturating_sub(i64::try_from(mid).unwrap_or(i64::MAX));
        self.redis_offset.store(offset, Ordering::Release);
    }

    fn redis_offset(&self) -> i64 {
        self.redis_offset.load(Ordering::Acquire)
    }
}

pub struct RedisBackend {
    keys: Keys,
    client: Client,
    hub: Arc<Hub>,
    scripts: Scripts,
    /// The Streams' MAXLEN and the rooms' TTL in seconds (0: none), as script arguments.
    maxlen: String,
    ttl: String,
    clock: Clock,
    publish: PublishState,
    pubsub: PubSubState,
    registry: RegistryState,
    presence: LocalPresence,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.keys.prefix)
            .field("server_id", &self.keys.server_id)
            .finish()
    }
}

/// An event's JSON as the scripts take it: the draft and its room, without offset and epoch.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    room_id: &'a str,
    #[serde(flatten)]
    draft: &'a Draft,
}

/// The fred client configuration for `config`'s Redis or Sentinel.
fn fred_config(config: &Config) -> Result<FredConfig, BackendError> {
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
    Ok(fc)
}

impl RedisBackend {
    /// Connects (in the background: an unreachable Redis makes the instance unready, not dead)
    /// and starts the Pub/Sub reader, the subscription, catch-up, heartbeat (with reaper and
    /// probe) tasks, and with `min_replicas` the replicated publisher.
    pub async fn start(config: &Config, hub: Arc<Hub>) -> Result<Arc<RedisBackend>, BackendError> {
        let wait = config.redis_wait.max(Duration::from_millis(100));
        let mut builder = Builder::from_config(fred_config(config)?);
        builder
            .with_connection_config(|c| {
                // A connect within a cluster takes milliseconds; one that hangs is to a master
                // cut off (partitioned), and every moment spent on it delays the move to the
                // new master after `+switch-master` (the topology chaos test's partition: with
                // 2 s, receipts resumed 0.7-1.2 s after the switch).
                c.connection_timeout = Duration::from_millis(250);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 20;
                c.unresponsive.max_timeout = Some(Duration::from_secs(3));
                c.unresponsive.interval = Duration::from_millis(500);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = wait;
                p.broadcast_channel_capacity = 16_384;
            })
            // At most 100 ms between attempts: after a master dies or is cut off, fred retries
            // through the sentinels until they elect a new one, and a longer backoff (or a
            // longer connect timeout, above) is time lost after the election; a `+switch-master`
            // cannot interrupt an attempt under way (a failed attempt is one sentinel question
            // and a refused or timed-out connect).
            .set_policy(ReconnectPolicy::new_exponential(0, 25, 100, 2));
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
            keys: Keys {
                prefix: config.key_prefix.clone(),
                server_id: config.server_id.clone(),
            },
            client,
            hub,
            scripts: Scripts::new(config.archive.as_ref().map_or(0, |a| a.backlog)),
            maxlen: config.history_max_len.to_string(),
            ttl: config.history_ttl.map_or(0, |t| t.as_secs()).to_string(),
            clock: Clock::new(),
            publish: PublishState::new(config.redis_min_replicas, wait, tx),
            pubsub: PubSubState::new(sub),
            registry: RegistryState::new(config.heartbeat_interval, config.server_ttl),
            presence: LocalPresence::default(),
            stop: CancellationToken::new(),
        });
        // Connect, but do not hold start-up hostage: readiness says when Redis is there.
        let _ =
            tokio::time::timeout(Duration::from_secs(3), backend.client.wait_for_connect()).await;
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            backend.pubsub.sub.wait_for_connect(),
        )
        .await;
        // Retried every heartbeat and after every reconnect if it fails now.
        let _ =
            tokio::time::timeout(Duration::from_secs(3), backend.ensure_probe_subscribed()).await;
        if let Backend::Sentinel { sentinels, master } = &config.backend {
            for (host, port) in sentinels {
                let watcher =
                    switch::sentinel_watcher(host, *port, config.redis_sentinel_password.clone())?;
                tokio::spawn(backend.clone().watch_switches(watcher, master.clone()));
            }
        }
        tokio::spawn(backend.clone().messages());
        tokio::spawn(backend.clone().unsubscribe_unheard());
        tokio::spawn(backend.clone().reconnects());
        tokio::spawn(backend.clone().count_connections());
        tokio::spawn(backend.clone().housekeeping());
        if config.redis_min_replicas > 0 {
            tokio::spawn(backend.clone().replicated_publisher(rx));
        }
        Ok(backend)
    }

    fn millis(&self) -> u64 {
        self.clock.millis()
    }

    fn body(room: &str, draft: &Draft) -> Result<String, BackendError> {
        serde_json::to_string(&Body {
            room_id: room,
            draft,
        })
        .map_err(|e| protocol(&e))
    }

    /// The arguments every appending script starts with.
    fn append_args(&self, room: &str, body: String) -> Vec<String> {
        vec![
            self.keys.prefix.clone(),
            room.to_owned(),
            body,
            new_epoch(),
            self.maxlen.clone(),
            self.ttl.clone(),
        ]
    }

    fn parse_record(raw: &str) -> Result<Arc<RoomEvent>, BackendError> {
        RoomEvent::from_json(raw)
            .map_err(|e| BackendError::Protocol(format!("bad record in Redis: {e}")))
    }

    /// Runs `script` with `keys` and `args`, loading it first if Redis does not have it.
    async fn eval_raw<R, K>(&self, script: &Script, keys: K, args: Vec<String>) -> Result<R, Error>
    where
        R: FromValue,
        K: Into<MultipleKeys> + Send,
    {
        script.evalsha_with_reload(&self.client, keys, args).await
    }

    /// Runs a script that takes no keys; a failure means Redis is unavailable.
    async fn eval<R: FromValue>(
        &self,
        script: &Script,
        args: Vec<String>,
    ) -> Result<R, BackendError> {
        self.eval_raw(script, Vec::<String>::new(), args)
            .await
            .map_err(|e| unavailable(&e))
    }
}

impl Services {
    /// The clustered backend on Redis.
    pub async fn redis(config: &Config) -> Result<Services, BackendError> {
        Ok(Self::redis_with_queue(config).await?.0)
    }

    /// The clustered backend on Redis, and its archive Stream for the archiver.
    pub async fn redis_with_queue(
        config: &Config,
    ) -> Result<(Services, Arc<dyn crate::archive::ArchiveQueue>), BackendError> {
        let hub = Hub::new();
        // The first heartbeat runs at once in the background; readiness waits for it.
        let backend = RedisBackend::start(config, hub.clone()).await?;
        let services = Services {
            hub,
            broker: backend.clone(),
            history: backend.clone(),
            presence: backend.clone(),
            registry: backend.clone(),
        };
        Ok((services, backend))
    }
}
