//! One STOMP connection: its state and the commands it handles.
//!
//! A session owns its socket and never waits on anything but it (see `connection`): broker calls
//! run as futures the loop polls, one at a time per connection, so effects and receipts keep the
//! client's order. Each client frame becomes a typed command (chat-wire's `ClientCommand`) and is
//! handled by its seam: `subscription` (SUBSCRIBE, UNSUBSCRIBE, per-room state and delivery),
//! `publish` (SEND, runs of SENDs, transactions) and `recovery` (replay, gap fill, the
//! not-recovered notice) beside the `sequencer` that keeps each room in order. A client's bad
//! frame gets an ERROR and closes that client only. Everything the session needs from the
//! instance comes in its `Context`; the transport is generic so tests drive a session with
//! channels.

mod connection;
mod context;
mod error;
mod publish;
mod recovery;
mod sequencer;
mod subscription;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, Stream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, info_span};

pub(crate) use context::Context;
use sequencer::{Sequencer, Verdict};

use self::connection::{Close, Outbox};
use self::error::SessionError;
use self::recovery::{Filled, Replay};
use self::subscription::{RoomState, RoomSub, Subscription};
use crate::auth::bearer_token;
use crate::broker::BackendError;
use crate::hub::{Delivery, Kill};
use crate::limit::TokenBucket;
use crate::model::{Identity, Member};
use crate::stomp::{ClientCommand, Command, Decoder, Frame, Limits, ProtocolError, command};

/// Frames read ahead while an earlier frame's broker call is still running.
const MAX_QUEUED_FRAMES: usize = 64;
/// Time to send CONNECT after the WebSocket opens.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages replayed at most on one recovery or `x-history`.
const MAX_REPLAY: usize = 10_000;

/// WebSocket close code that tells a client to come back (RFC 6455 registry: Service Restart).
const CLOSE_RESTART: u16 = 1012;

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What a finished broker call reports back to the loop.
enum Done {
    Published {
        receipts: Vec<Option<String>>,
    },
    Subscribed {
        room: String,
        sub: RoomSub,
        replay: Replay,
        receipt: Option<String>,
    },
    Plain {
        receipt: Option<String>,
    },
    Failed {
        error: BackendError,
        /// Owed for what the broker accepted before it failed; sent before the ERROR.
        accepted: Vec<Option<String>>,
        receipt: Option<String>,
    },
}

impl Done {
    /// A call that failed with nothing accepted before it.
    fn failed(error: BackendError, receipt: Option<String>) -> Done {
        Done::Failed {
            error,
            accepted: Vec::new(),
            receipt,
        }
    }
}

/// One connection's state; each seam of the session adds its own `impl Conn`.
struct Conn {
    cx: Arc<Context>,
    query_token: Option<String>,
    session_num: u64,
    session_id: String,
    identity: Option<Identity>,
    version: &'static str,
    decoder: Decoder,
    inbuf: BytesMut,
    queue: VecDeque<Frame>,
    op: Option<BoxFuture<Done>>,
    fills: FuturesUnordered<BoxFuture<Filled>>,
    subs: HashMap<String, Subscription>,
    rooms: HashMap<String, RoomState>,
    user_subs: Vec<Arc<str>>,
    transactions: HashMap<String, Vec<command::Send>>,
    tx: mpsc::Sender<Delivery>,
    kill: Arc<Kill>,
    out: Outbox,
    last_write: Instant,
    send_every: Option<Duration>,
    recv_timeout: Option<Duration>,
    last_recv: Instant,
    next_ping: Instant,
    bucket: TokenBucket,
    closing: Option<Close>,
}

/// Runs one client connection to its end, then cleans up its presence.
pub(crate) async fn run<S>(socket: S, cx: Arc<Context>, query_token: Option<String>)
where
    S: Sink<Message, Error = axum::Error>
        + Stream<Item = Result<Message, axum::Error>>
        + Unpin
        + Send,
{
    let (session_num, session_id) = cx.next_session();
    let span = info_span!("session", session = %session_id);
    let (tx, rx) = mpsc::channel(cx.limits.outbound_queue);
    let now = Instant::now();
    let limits = Limits {
        max_frame_bytes: cx.limits.max_frame_bytes,
        ..Limits::default()
    };
    let conn = Conn {
        query_token,
        session_num,
        session_id,
        identity: None,
        version: "1.2",
        decoder: Decoder::new(limits),
        inbuf: BytesMut::new(),
        queue: VecDeque::new(),
        op: None,
        fills: FuturesUnordered::new(),
        subs: HashMap::new(),
        rooms: HashMap::new(),
        user_subs: Vec::new(),
        transactions: HashMap::new(),
        tx,
        kill: Arc::new(Kill::default()),
        out: Outbox::new(cx.metrics.clone()),
        last_write: now,
        send_every: None,
        recv_timeout: Some(CONNECT_TIMEOUT),
        last_recv: now,
        next_ping: now + CONNECT_TIMEOUT,
        bucket: TokenBucket::full(cx.limits.send_rate, now),
        closing: None,
        cx,
    };
    connection::run_loop(socket, conn, rx)
        .instrument(span)
        .await;
}

impl Conn {
    /// Handles one client frame; what it refuses closes the session with an ERROR.
    fn handle(&mut self, frame: Frame) {
        let receipt = frame.header("receipt").map(str::to_owned);
        if let Err(e) = self.dispatch(&frame, receipt) {
            self.fail(&e, frame.header("receipt"));
        }
    }

    fn dispatch(&mut self, frame: &Frame, receipt: Option<String>) -> Result<(), SessionError> {
        let connecting = matches!(frame.command, Command::Connect | Command::Stomp);
        // The connection state decides before any header is read.
        match (&self.identity, connecting) {
            (None, true) => return self.on_connect(frame, receipt),
            (None, false) => return Err(SessionError::NotConnected(frame.command)),
            (Some(_), true) => return Err(SessionError::AlreadyConnected),
            (Some(_), false) => {}
        }
        match ClientCommand::parse(frame)? {
            ClientCommand::Connect(_) => Err(SessionError::AlreadyConnected),
            ClientCommand::Send(send) => self.on_send(send, receipt),
            ClientCommand::Subscribe(sub) => self.on_subscribe(sub, receipt),
            ClientCommand::Unsubscribe { id } => self.on_unsubscribe(&id, receipt),
            ClientCommand::Ack(ack) | ClientCommand::Nack(ack) => {
                if let Some(tx) = ack.transaction {
                    self.open_transaction(&tx)?;
                }
                // Every delivery is final once written, so an ACK or NACK only needs its receipt.
                self.receipt(receipt);
                Ok(())
            }
            ClientCommand::Begin { transaction } => self.on_begin(transaction, receipt),
            ClientCommand::Commit { transaction } => self.on_commit(&transaction, receipt),
            ClientCommand::Abort { transaction } => self.on_abort(&transaction, receipt),
            ClientCommand::Disconnect => {
                self.receipt(receipt);
                self.closing = Some(Close::Normal);
                Ok(())
            }
        }
    }

    fn on_connect(&mut self, frame: &Frame, receipt: Option<String>) -> Result<(), SessionError> {
        let connect = match ClientCommand::parse(frame) {
            Ok(ClientCommand::Connect(c)) => c,
            Err(ProtocolError::UnsupportedVersion) => {
                // Not a plain ERROR: it names the versions on offer and carries no receipt-id.
                let e = ProtocolError::UnsupportedVersion;
                let f =
                    Frame::error(e.label(), &e.to_string()).with_header("version", "1.0,1.1,1.2");
                self.send(&f);
                self.cx.metrics.error(e.label());
                self.closing = Some(Close::Normal);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
            Ok(_) => return Err(SessionError::NotConnected(frame.command)),
        };
        let (cx, cy) = connect.heart_beat;
        // A Bearer value gives its token; any other value is taken as the token itself.
        let token = connect
            .authorization
            .map(|v| bearer_token(&v).unwrap_or(&v).to_owned())
            .or(connect.passcode)
            .or_else(|| self.query_token.clone());
        let identity = self
            .cx
            .auth
            .authenticate(token.as_deref(), connect.login.as_deref())?;
        let (sx, sy) = self.cx.limits.stomp_heartbeat;
        let now = Instant::now();
        self.send_every = (sx > 0 && cy > 0).then(|| Duration::from_millis(sx.max(cy)));
        self.recv_timeout = (cx > 0 && sy > 0).then(|| Duration::from_millis(cx.max(sy) * 3 / 2));
        self.next_ping = now + self.send_every.unwrap_or_default();
        self.version = connect.version;
        let reply = Frame::new(Command::Connected)
            .with_header("version", connect.version)
            .with_header("heart-beat", format!("{sx},{sy}"))
            .with_header("server", concat!("chatcluster/", env!("CARGO_PKG_VERSION")))
            .with_header("session", self.session_id.clone())
            .with_header("user-name", identity.name.clone())
            .with_header("x-server-id", self.cx.server_id.clone())
            .with_header("x-user-id", identity.user_id.clone());
        self.send(&reply);
        self.receipt(receipt);
        tracing::debug!(user = %identity.user_id, version = connect.version, "connected");
        self.identity = Some(identity);
        Ok(())
    }

    fn member(&self, identity: &Identity) -> Member {
        Member {
            user_id: identity.user_id.clone(),
            name: identity.name.clone(),
            session_id: self.session_id.clone(),
            server_id: self.cx.server_id.clone(),
        }
    }
}
