//! Publishing: SEND, runs of SENDs batched into one broker call, and transactions.
//!
//! A SEND is checked completely before anything is published (destination, body, room access,
//! rate), so the broker only sees what it will accept. Plain SENDs queued right behind one go to
//! the broker together; their RECEIPTs still come one per SEND and in order. A transaction holds
//! checked SENDs until COMMIT publishes them as one run with one RECEIPT, or ABORT drops them.

use std::sync::Arc;

use tokio::time::Instant;

use super::error::SessionError;
use super::{BoxFuture, Conn, Context, Done, MAX_QUEUED_FRAMES};
use crate::broker::BackendError;
use crate::destination::{SendTo, room_in_field};
use crate::model::{DirectRecord, Draft, EventKind};
use crate::stomp::ClientCommand;
use crate::stomp::command::Send;
use chat_wire::body::{BodyError, parse_message_body_with};

/// Open transactions per connection, and frames per transaction.
pub(super) const MAX_TRANSACTIONS: usize = 16;
pub(super) const MAX_TRANSACTION_FRAMES: usize = 1000;

/// Headers of a SEND that are STOMP's own, not carried to MESSAGE frames.
const RESERVED_HEADERS: &[&str] = &[
    "destination",
    "receipt",
    "transaction",
    "content-type",
    "content-length",
    "subscription",
    "message-id",
    "ack",
    "id",
    "x-offset",
    "x-epoch",
    "x-recovered",
];

/// The RECEIPTs a publish owes: one per SEND of a run of SENDs, or one for a whole COMMIT.
enum Owed {
    Each(Vec<Option<String>>),
    Whole(Option<String>),
}

impl Owed {
    fn all(self) -> Vec<Option<String>> {
        match self {
            Owed::Each(v) => v,
            Owed::Whole(r) => vec![r],
        }
    }

    /// What is owed when the first `accepted` items went through and the next one failed: the
    /// receipts of those, and the receipt the ERROR carries.
    fn split(self, accepted: usize) -> (Vec<Option<String>>, Option<String>) {
        match self {
            Owed::Each(mut v) => {
                let rest = v.split_off(accepted.min(v.len()));
                (v, rest.into_iter().next().flatten())
            }
            Owed::Whole(r) => (Vec::new(), r),
        }
    }
}

/// A checked SEND, as the broker takes it.
pub(super) enum Prepared {
    Room(String, Draft),
    Direct(DirectRecord),
}

impl Conn {
    pub(super) fn on_send(
        &mut self,
        send: Send,
        receipt: Option<String>,
    ) -> Result<(), SessionError> {
        if let Some(tx) = send.transaction.clone() {
            let held = self
                .transactions
                .get(&tx)
                .map(Vec::len)
                .ok_or_else(|| SessionError::UnknownTransaction(tx.clone()))?;
            if held >= MAX_TRANSACTION_FRAMES {
                return Err(SessionError::TransactionTooLarge);
            }
            // Check it now so COMMIT cannot fail half-way on a bad frame.
            if self.prepare_or_announce(&send)?.is_some()
                && let Some(held) = self.transactions.get_mut(&tx)
            {
                held.push(send);
            }
            self.receipt(receipt);
            return Ok(());
        }
        self.take_token()?;
        let Some(first) = self.prepare_or_announce(&send)? else {
            self.receipt(receipt);
            return Ok(());
        };
        let (items, receipts) = self.take_send_run(first, receipt);
        self.op = Some(publish_op(self.cx.clone(), items, Owed::Each(receipts)));
        Ok(())
    }

    /// The connection's and the user's send budgets both allow one more message.
    fn take_token(&mut self) -> Result<(), SessionError> {
        let rate = self.cx.limits.send_rate;
        if !self.bucket.take(rate, Instant::now()) {
            return Err(SessionError::ConnectionRate(rate));
        }
        if let Some(id) = &self.identity
            && !self.cx.user_limiter.take(&id.user_id)
        {
            return Err(SessionError::UserRate(self.cx.limits.user_send_rate));
        }
        Ok(())
    }

    /// Takes the plain SENDs queued right behind one, so they go to the broker together (one
    /// round trip). Stops at the first frame that is anything else or that would fail (rate
    /// limit, bad destination): that one is handled on its own, after this run's receipts.
    fn take_send_run(
        &mut self,
        first: Prepared,
        receipt: Option<String>,
    ) -> (Vec<Prepared>, Vec<Option<String>>) {
        let mut items = vec![first];
        let mut receipts = vec![receipt];
        while items.len() < MAX_QUEUED_FRAMES {
            let Some(next) = self.queue.front() else {
                break;
            };
            let Ok(ClientCommand::Send(send)) = ClientCommand::parse(next) else {
                break;
            };
            if send.transaction.is_some() {
                break;
            }
            let Ok(p) = self.prepare_send(&send) else {
                break;
            };
            if self.take_token().is_err() {
                break;
            }
            let receipt = self
                .queue
                .pop_front()
                .and_then(|f| f.header("receipt").map(str::to_owned));
            items.push(p);
            receipts.push(receipt);
        }
        (items, receipts)
    }

    /// As [`Self::prepare_send`], but a presence announcement (a `JOIN`/`LEAVE` body, as the
    /// classic Spring demo's `chat.addUser` sends) is `None`: acknowledged, nothing published,
    /// since presence comes from SUBSCRIBE here.
    fn prepare_or_announce(&self, send: &Send) -> Result<Option<Prepared>, SessionError> {
        match self.prepare_send(send) {
            Ok(prepared) => Ok(Some(prepared)),
            Err(SessionError::BadMessage(BodyError::Announcement(kind))) => {
                tracing::debug!(
                    kind,
                    destination = %send.destination,
                    "presence announcement acknowledged; nothing published"
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Checks a SEND and turns it into what the broker takes.
    fn prepare_send(&self, send: &Send) -> Result<Prepared, SessionError> {
        let Some(identity) = &self.identity else {
            return Err(SessionError::NotConnected(crate::stomp::Command::Send));
        };
        let dest = self.cx.destinations.send(&send.destination)?;
        let field = match &dest {
            SendTo::RoomInField(field) => Some(*field),
            _ => None,
        };
        let (message, picked) = parse_message_body_with(&send.body, field)?;
        let headers: Vec<(String, String)> = send
            .headers
            .iter()
            .filter(|(k, _)| !RESERVED_HEADERS.contains(&k.as_str()))
            .cloned()
            .collect();
        let server_id = &self.cx.server_id;
        let draft = Draft::new(
            EventKind::Chat,
            identity.sender(),
            message.content,
            server_id,
        );
        let room = match dest {
            SendTo::Room(room) => room,
            SendTo::RoomInField(field) => room_in_field(field, picked.as_ref())?,
            SendTo::User(to) => {
                return Ok(Prepared::Direct(DirectRecord {
                    id: draft.id,
                    kind: EventKind::Chat,
                    sender: draft.sender,
                    to,
                    content: draft.content,
                    sent_at: draft.sent_at,
                    server_id: draft.server_id,
                    extra: message.extra,
                    headers,
                }));
            }
        };
        if !identity.may_use_room(&room) {
            return Err(SessionError::Forbidden(room));
        }
        Ok(Prepared::Room(
            room,
            Draft {
                extra: message.extra,
                headers,
                ..draft
            },
        ))
    }

    /// An open transaction's name, or the error for an unknown one.
    pub(super) fn open_transaction(&self, tx: &str) -> Result<(), SessionError> {
        if self.transactions.contains_key(tx) {
            Ok(())
        } else {
            Err(SessionError::UnknownTransaction(tx.to_owned()))
        }
    }

    pub(super) fn on_begin(
        &mut self,
        tx: String,
        receipt: Option<String>,
    ) -> Result<(), SessionError> {
        if self.transactions.contains_key(&tx) {
            return Err(SessionError::TransactionExists(tx));
        }
        if self.transactions.len() >= MAX_TRANSACTIONS {
            return Err(SessionError::TooManyTransactions);
        }
        self.transactions.insert(tx, Vec::new());
        self.receipt(receipt);
        Ok(())
    }

    pub(super) fn on_commit(
        &mut self,
        tx: &str,
        receipt: Option<String>,
    ) -> Result<(), SessionError> {
        let Some(sends) = self.transactions.remove(tx) else {
            return Err(SessionError::UnknownTransaction(tx.to_owned()));
        };
        let prepared = sends
            .iter()
            .map(|s| self.prepare_send(s))
            .collect::<Result<Vec<_>, _>>()?;
        if prepared.is_empty() {
            self.receipt(receipt);
        } else {
            self.op = Some(publish_op(self.cx.clone(), prepared, Owed::Whole(receipt)));
        }
        Ok(())
    }

    pub(super) fn on_abort(
        &mut self,
        tx: &str,
        receipt: Option<String>,
    ) -> Result<(), SessionError> {
        if self.transactions.remove(tx).is_none() {
            return Err(SessionError::UnknownTransaction(tx.to_owned()));
        }
        self.receipt(receipt);
        Ok(())
    }
}

fn publish_op(cx: Arc<Context>, items: Vec<Prepared>, owed: Owed) -> BoxFuture<Done> {
    Box::pin(async move {
        let started = Instant::now();
        let n = items.len();
        let result = publish_items(&cx, items).await;
        let seconds = started.elapsed().as_secs_f64();
        let accepted = result.as_ref().err().map_or(n, |(k, _)| *k);
        for _ in 0..accepted {
            cx.metrics.publish_seconds.observe(seconds);
        }
        match result {
            Ok(()) => Done::Published {
                receipts: owed.all(),
            },
            Err((k, error)) => {
                let (accepted, receipt) = owed.split(k);
                Done::Failed {
                    error,
                    accepted,
                    receipt,
                }
            }
        }
    })
}

/// Publishes in order: each run of room messages as one batch, direct messages one by one. On
/// failure, how many went through before it.
async fn publish_items(cx: &Context, items: Vec<Prepared>) -> Result<(), (usize, BackendError)> {
    let mut done = 0;
    let mut run = Vec::new();
    for item in items {
        match item {
            Prepared::Room(room, draft) => run.push((room, draft)),
            Prepared::Direct(record) => {
                done += publish_run(cx, std::mem::take(&mut run))
                    .await
                    .map_err(|(k, e)| (done + k, e))?;
                cx.services
                    .broker
                    .publish_direct(record)
                    .await
                    .map_err(|e| (done, e))?;
                cx.metrics.direct_messages.inc();
                done += 1;
            }
        }
    }
    publish_run(cx, run).await.map_err(|(k, e)| (done + k, e))?;
    Ok(())
}

/// One run of room messages as one batch; how many went, or how many before the failure.
async fn publish_run(
    cx: &Context,
    run: Vec<(String, Draft)>,
) -> Result<usize, (usize, BackendError)> {
    let n = run.len();
    if n == 0 {
        return Ok(0);
    }
    match cx.services.broker.publish_batch(run).await {
        Ok(()) => {
            cx.metrics.messages_published.inc_by(n as u64);
            Ok(n)
        }
        Err((k, e)) => {
            cx.metrics.messages_published.inc_by(k as u64);
            Err((k, e))
        }
    }
}
