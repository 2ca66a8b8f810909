//! Publishing room and direct messages, by one of two paths:
//! - without `min_replicas`, the publish script stores and PUBLISHes in one step; a batch is one
//!   pipeline of those scripts on one connection, so Redis runs them in order;
//! - with `min_replicas`, a batcher task runs the scripts of concurrent messages without
//!   PUBLISH, one `WAIT` for all, and only then PUBLISHes them and answers their senders: a
//!   message reaches subscribers and its RECEIPT only once replicas hold it.
//!
//! Every message carries a deadline `RESEND_WINDOW` after this instance took it, in Redis's
//! clock; the script refuses it past that unless it is in already (see `lua/common.lua`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::{RedisBackend, protocol, unavailable};
use crate::broker::{BackendError, Broker};
use crate::config::RESEND_WINDOW;
use crate::hub::Topic;
use crate::model::{DirectRecord, Draft, RoomEvent};

/// A message's outcome on the replicated path: its stored event, or why it has no RECEIPT.
type Outcome = Result<Arc<RoomEvent>, BackendError>;

/// A pending publish for the replica-acknowledged path.
pub(super) struct Pending {
    room: String,
    body: String,
    id: String,
    reply: oneshot::Sender<Outcome>,
}

/// What the publish paths keep between messages.
pub(super) struct PublishState {
    min_replicas: u32,
    /// How long a command, and the replicas' acknowledgement, may take.
    wait: Duration,
    /// Counts reconnects of the command client: a WAIT speaks only for writes on its own
    /// connection, so writes made before a reconnect cannot be acknowledged after it.
    connection_gen: AtomicU64,
    /// Wakes the WAITs in flight when the connection is given up (`+switch-master`): their
    /// answer, if one ever comes, cannot speak for the new master.
    moved: tokio::sync::Notify,
    /// The batcher's queue, with `min_replicas > 0` only.
    replicated: Option<mpsc::Sender<Pending>>,
}

impl PublishState {
    pub(super) fn new(min_replicas: u32, wait: Duration, tx: mpsc::Sender<Pending>) -> Self {
        PublishState {
            min_replicas,
            wait,
            connection_gen: AtomicU64::new(0),
            moved: tokio::sync::Notify::new(),
            replicated: (min_replicas > 0).then_some(tx),
        }
    }
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

fn publisher_stopped() -> BackendError {
    BackendError::Unavailable("publisher stopped".into())
}

impl RedisBackend {
    /// The publish script's arguments for one message: `publish` is "1" when the script is to
    /// PUBLISH it too; `deadline` from [`Self::deadline`], once for all the messages taken
    /// together.
    fn publish_args(
        &self,
        room: &str,
        body: String,
        id: String,
        publish: &str,
        deadline: &str,
    ) -> Vec<String> {
        let mut args = self.append_args(room, body);
        args.extend([publish.to_owned(), id, deadline.to_owned()]);
        args
    }

    /// The publish script's deadline for a message taken now: `RESEND_WINDOW` later, in ms of
    /// Redis's clock ('' before the first heartbeat has read that clock).
    fn deadline(&self) -> String {
        publish_deadline(self.millis(), self.clock.redis_offset(), RESEND_WINDOW)
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

    /// The pipeline path of `publish_batch`, for two or more messages.
    async fn publish_pipelined(
        &self,
        items: Vec<(String, Draft)>,
    ) -> Result<(), (usize, BackendError)> {
        let sha = Value::from(self.scripts.publish.sha1().clone());
        let mut args = Vec::with_capacity(items.len());
        let deadline = self.deadline();
        for (i, (room, draft)) in items.into_iter().enumerate() {
            let body = Self::body(&room, &draft).map_err(|e| (i, e))?;
            let script_args = self.publish_args(&room, body, draft.id, "1", &deadline);
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

    /// Hands a message to the replicated batcher; the receiver gets its outcome.
    async fn enqueue(
        tx: &mpsc::Sender<Pending>,
        room: &str,
        draft: &Draft,
    ) -> Result<oneshot::Receiver<Outcome>, BackendError> {
        let (reply, rx) = oneshot::channel();
        tx.send(Pending {
            room: room.to_owned(),
            body: Self::body(room, draft)?,
            id: draft.id.clone(),
            reply,
        })
        .await
        .map_err(|_| publisher_stopped())?;
        Ok(rx)
    }

    async fn replicated_reply(rx: oneshot::Receiver<Outcome>) -> Outcome {
        rx.await.map_err(|_| publisher_stopped())?
    }

    /// The replicated path of `publish_batch`: queued together, the batcher runs them with one
    /// WAIT. If one cannot be queued, the ones before it still get their outcome first.
    async fn publish_replicated_batch(
        tx: &mpsc::Sender<Pending>,
        items: &[(String, Draft)],
    ) -> Result<(), (usize, BackendError)> {
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
        stopped.map_or(Ok(()), Err)
    }

    /// The command connection is moving to a new master: what was written on the old one
    /// waits for no acknowledgement from it (a partitioned master never answers; fred may
    /// even replay the WAIT on the new connection, where it cannot succeed).
    pub(super) fn connection_moving(&self) {
        self.publish.connection_gen.fetch_add(1, Ordering::AcqRel);
        self.publish.moved.notify_waiters();
    }

    /// Counts the command client's reconnects (see `PublishState::connection_gen`).
    pub(super) async fn count_connections(self: Arc<Self>) {
        let mut rx = self.client.reconnect_rx();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                r = rx.recv() => match r {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        self.publish.connection_gen.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// The replica-acknowledged publish path: scripts for a batch, one WAIT, then PUBLISH.
    pub(super) async fn replicated_publisher(self: Arc<Self>, mut rx: mpsc::Receiver<Pending>) {
        let mut batch = Vec::new();
        loop {
            batch.clear();
            tokio::select! {
                () = self.stop.cancelled() => return,
                n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
            }
            let generation = self.publish.connection_gen.load(Ordering::Acquire);
            let mut written = Vec::with_capacity(batch.len());
            let deadline = self.deadline();
            for mut p in batch.drain(..) {
                let body = std::mem::take(&mut p.body);
                let id = std::mem::take(&mut p.id);
                let args = self.publish_args(&p.room, body, id, "0", &deadline);
                match self
                    .eval::<String>(&self.scripts.publish, args)
                    .await
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
            let ok = self.await_replicas(generation).await
                && self.publish.connection_gen.load(Ordering::Acquire) == generation;
            for (p, raw, ev) in written {
                if !ok {
                    // In the Stream but not provably on a replica: no RECEIPT. Subscribers get it
                    // through gap repair if it survives.
                    let _ = p.reply.send(Err(BackendError::Unavailable(format!(
                        "message not acknowledged by {} replica(s) in time",
                        self.publish.min_replicas
                    ))));
                    continue;
                }
                let published: Result<i64, _> = self
                    .client
                    .publish(self.keys.room_channel(&p.room), raw)
                    .await;
                let _ = p
                    .reply
                    .send(published.map(|_| ev).map_err(|e| unavailable(&e)));
            }
        }
    }

    /// Waits until the writes so far are on `min_replicas` replicas, at most the publish wait.
    /// Never fewer, even when the master has fewer replicas connected: a master without
    /// replicas may be an old one cut off from the rest (its writes are discarded when the
    /// sentinels make it a replica again), so a RECEIPT from it would be a promise broken
    /// (seen in the topology chaos test: a partitioned master back for a second before the
    /// sentinels demoted it). Right after a failover the new master has its replicas within
    /// about a second, and a WAIT returns as soon as they acknowledge, so no replica count is
    /// kept; a topology left with fewer replicas than `min_replicas` refuses messages (ERROR,
    /// the client may resend) until one is back.
    /// False at once when the command connection changed since `generation`: a WAIT then
    /// cannot speak for the writes made before.
    async fn await_replicas(&self, generation: u64) -> bool {
        let want = i64::from(self.publish.min_replicas);
        let deadline = Instant::now() + self.publish.wait;
        loop {
            let moved = self.publish.moved.notified();
            tokio::pin!(moved);
            // Registered before the check, so a move right after it still wakes us.
            moved.as_mut().enable();
            if self.publish.connection_gen.load(Ordering::Acquire) != generation {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // Bounded per round, so a connection change is seen between rounds too.
            let timeout = left.min(Duration::from_millis(500));
            let acked: Result<i64, _> = tokio::select! {
                acked = self.client.wait(want, timeout.as_millis().max(1) as i64) => acked,
                () = &mut moved => return false,
            };
            if matches!(acked, Ok(n) if n >= want) {
                return true;
            }
        }
    }
}

#[async_trait]
impl Broker for RedisBackend {
    async fn publish(&self, room: &str, draft: Draft) -> Result<Arc<RoomEvent>, BackendError> {
        if let Some(tx) = &self.publish.replicated {
            return Self::replicated_reply(Self::enqueue(tx, room, &draft).await?).await;
        }
        let body = Self::body(room, &draft)?;
        let args = self.publish_args(room, body, draft.id, "1", &self.deadline());
        let raw: String = self.eval(&self.scripts.publish, args).await?;
        Self::parse_record(&raw)
    }

    /// One pipeline of `EVALSHA`s on the one connection, so Redis runs them in this order; after
    /// a Redis restart (`NOSCRIPT`) the script is loaded and the pipeline sent again (a
    /// `NOSCRIPT` reply means that script did not run).
    async fn publish_batch(
        &self,
        mut items: Vec<(String, Draft)>,
    ) -> Result<(), (usize, BackendError)> {
        if let Some(tx) = &self.publish.replicated {
            return Self::publish_replicated_batch(tx, &items).await;
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
        self.publish_pipelined(items).await
    }

    async fn publish_direct(&self, record: DirectRecord) -> Result<(), BackendError> {
        let payload = serde_json::to_string(&record).map_err(|e| protocol(&e))?;
        let instances: i64 = self
            .client
            .publish(self.keys.user_channel(&record.to), payload)
            .await
            .map_err(|e| unavailable(&e))?;
        // No instance listening: the user has no /user/queue subscription anywhere, and a
        // direct message is not kept (docs/PROTOCOL.md); said here for whoever looks for it.
        debug!(
            to = record.to,
            id = record.id,
            instances,
            "direct message published"
        );
        Ok(())
    }

    async fn listen(&self, topic: &Topic) -> Result<(), BackendError> {
        self.subscribe(topic).await
    }

    fn is_ready(&self) -> bool {
        self.client.is_connected() && self.pubsub_ready()
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
}
