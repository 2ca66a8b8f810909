//! This instance's membership of the cluster: the heartbeat that renews it (and reads Redis's
//! clock), the reaper that removes dead instances with their sessions' presence, the grace
//! after this instance itself missed heartbeats, deregistering on shutdown, and restoring
//! presence after being reaped while alive.
//!
//! What it keeps true: the reaper is one script per round, so racing reapers LEAVE each session
//! once; an instance that could not heartbeat for a while reaps nobody for one server TTL, so
//! every live instance has heartbeated again first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use tracing::{debug, info, warn};

use super::{RedisBackend, unavailable};
use crate::broker::{BackendError, Registry, new_epoch};
use crate::model::now_rfc3339;

/// Sessions reaped per dead server per round (bounds how long one script runs).
const REAP_BATCH: usize = 1000;

/// What the heartbeat and the reaper keep.
pub(super) struct RegistryState {
    pub(super) heartbeat_every: Duration,
    server_ttl: Duration,
    /// When the last heartbeat succeeded (ms since start).
    last_heartbeat_ms: AtomicU64,
    /// No reaping before this time (ms since start): set after this instance itself could not
    /// heartbeat for a while, since the others most likely could not either (a failover, Redis
    /// paused or unreachable) and their registry entries look expired for no fault of theirs.
    reap_not_before_ms: AtomicU64,
    registered: AtomicBool,
    ever_registered: AtomicBool,
}

impl RegistryState {
    pub(super) fn new(heartbeat_every: Duration, server_ttl: Duration) -> Self {
        RegistryState {
            heartbeat_every,
            server_ttl,
            last_heartbeat_ms: AtomicU64::new(0),
            reap_not_before_ms: AtomicU64::new(0),
            registered: AtomicBool::new(false),
            ever_registered: AtomicBool::new(false),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// After a heartbeat that succeeded at `after` (ms) following one at `before` with more than
/// two intervals between them, the time until which this instance must not reap: one server
/// TTL, so every live instance has heartbeated again first. `None` when nothing was missed.
fn reap_grace(before: u64, after: u64, every: Duration, ttl: Duration) -> Option<u64> {
    (before > 0 && after > before && after - before > 2 * ms(every))
        .then(|| after.saturating_add(ms(ttl)))
}

impl RedisBackend {
    /// Heartbeat, reaper and probe, every heartbeat interval.
    pub(super) async fn housekeeping(self: Arc<Self>) {
        let state = &self.registry;
        let mut tick = tokio::time::interval(state.heartbeat_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let before = state.last_heartbeat_ms.load(Ordering::Acquire);
            self.heartbeat_once().await;
            let after = state.last_heartbeat_ms.load(Ordering::Acquire);
            if let Some(until) = reap_grace(before, after, state.heartbeat_every, state.server_ttl)
            {
                warn!(
                    silent_ms = after - before,
                    "could not heartbeat for a while: no reaping for one server TTL"
                );
                state.reap_not_before_ms.store(until, Ordering::Release);
            }
            if self.millis() >= state.reap_not_before_ms.load(Ordering::Acquire)
                && let Err(e) = self.reap_once().await
            {
                debug!(error = %e, "reaper round failed");
            }
            self.send_probe().await;
            self.check_probe().await;
        }
    }

    async fn heartbeat_once(&self) {
        let args = vec![
            self.keys.prefix.clone(),
            self.keys.server_id.clone(),
            ms(self.registry.server_ttl).to_string(),
        ];
        let sent = self.millis();
        match self
            .eval_raw::<(i64, i64), _>(&self.scripts.heartbeat, Vec::<String>::new(), args)
            .await
        {
            Ok((existed, redis_now)) => {
                let got = self.millis();
                self.clock.set_redis_now(redis_now, sent, got);
                let state = &self.registry;
                state.last_heartbeat_ms.store(got, Ordering::Release);
                state.registered.store(true, Ordering::Release);
                let was = state.ever_registered.swap(true, Ordering::AcqRel);
                if existed == 0 && was {
                    warn!("this instance was reaped while alive: restoring its sessions' presence");
                    self.restore_presence().await;
                } else if !was {
                    info!(server_id = %self.keys.server_id, "registered");
                }
            }
            Err(e) => debug!(error = %e, "heartbeat failed"),
        }
    }

    async fn restore_presence(&self) {
        for (room, member) in self.presence.snapshot() {
            if let Err(e) = self.join_script(&room, &member).await {
                warn!(error = %e, room, "could not restore presence");
            }
        }
    }

    /// One reaper round; returns how many sessions it reaped.
    async fn reap_once(&self) -> Result<usize, BackendError> {
        let args = vec![
            self.keys.prefix.clone(),
            self.keys.server_id.clone(),
            self.maxlen.clone(),
            self.ttl.clone(),
            now_rfc3339(),
            new_epoch(),
            REAP_BATCH.to_string(),
        ];
        let out: Vec<Value> = self.eval(&self.scripts.reap, args).await?;
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
}

#[async_trait]
impl Registry for RedisBackend {
    async fn deregister(&self) -> Result<(), BackendError> {
        self.registry.registered.store(false, Ordering::Release);
        let result: Result<(), Error> = async {
            let _: i64 = self
                .client
                .zrem(self.keys.servers(), self.keys.server_id.clone())
                .await?;
            let _: i64 = self.client.del(self.keys.own_sessions()).await?;
            Ok(())
        }
        .await;
        self.stop.cancel();
        let _ = self.pubsub.sub.quit().await;
        let _ = self.client.quit().await;
        result.map_err(|e| unavailable(&e))
    }

    fn is_registered(&self) -> bool {
        let state = &self.registry;
        state.registered.load(Ordering::Acquire)
            && self
                .millis()
                .saturating_sub(state.last_heartbeat_ms.load(Ordering::Acquire))
                < ms(self.registry.server_ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
