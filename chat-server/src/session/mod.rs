//! One STOMP connection: its state machine and its single `select!` loop.
//!
//! The loop owns the socket and never waits on anything but it: broker calls run as futures the
//! loop polls, one at a time per connection so effects and receipts keep the client's order.
//! Deliveries arrive on a bounded queue from the hub; frames for the client are collected and
//! written together, then flushed once. A client's bad frame gets an ERROR and closes that
//! client only. The transport is generic so tests can drive a session with channels.

mod sequencer;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tracing::{Instrument, debug, info_span, warn};

pub use sequencer::{Sequencer, Verdict};

use crate::broker::{BackendError, HistoryPage, RoomInfo, Services};
use crate::hub::{Delivery, Kill, Listener, Topic};
use crate::metrics::Metrics;
use crate::model::{
    DirectRecord, Draft, EventKind, EventRecord, Identity, Member, RoomEvent, Sender, is_valid_id,
    now_rfc3339,
};
use crate::server::AppState;
use chat_wire::body::parse_message_body;

use crate::stomp::{Command, Decoded, Decoder, Frame, Limits, encode, parse_heart_beat};

/// Frames read ahead while an earlier frame's broker call is still running.
const MAX_QUEUED_FRAMES: usize = 64;
/// Deliveries handled per wake-up before writing; bounds the latency of a busy loop.
const DELIVERY_BATCH: usize = 256;
/// Time to write to a client before it counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send CONNECT after the WebSocket opens.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Open transactions per connection, and frames per transaction.
const MAX_TRANSACTIONS: usize = 16;
const MAX_TRANSACTION_FRAMES: usize = 1000;
/// Messages replayed at most on one recovery or `x-history`.
const MAX_REPLAY: usize = 10_000;

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

/// WebSocket close code that tells a client to come back (RFC 6455 registry: Service Restart).
pub const CLOSE_RESTART: u16 = 1012;

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Dest {
    Room(String),
    User(String),
    UserQueue,
}

fn parse_destination(dest: &str) -> Result<Dest, String> {
    let room = dest
        .strip_prefix("/topic/room/")
        .or_else(|| dest.strip_prefix("/app/room/"));
    if let Some(room) = room {
        return if is_valid_id(room) {
            Ok(Dest::Room(room.to_owned()))
        } else {
            Err(format!(
                "invalid room id {:?}: 1-128 characters of [A-Za-z0-9_.-]",
                truncate(room)
            ))
        };
    }
    if let Some(user) = dest.strip_prefix("/app/user/") {
        return if is_valid_id(user) {
            Ok(Dest::User(user.to_owned()))
        } else {
            Err(format!("invalid user id {:?}", truncate(user)))
        };
    }
    if dest == "/user/queue/messages" {
        return Ok(Dest::UserQueue);
    }
    Err(format!("unknown destination {:?}", truncate(dest)))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[derive(Debug)]
struct Subscription {
    dest: Dest,
}

/// A room this session listens to.
#[derive(Debug, Default)]
struct RoomState {
    subs: Vec<Arc<str>>,
    seq: Sequencer,
    presence: bool,
}

/// What a finished broker call reports back to the loop.
enum Done {
    Published {
        receipts: Vec<Option<String>>,
    },
    Subscribed {
        room: String,
        sub: Arc<str>,
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

/// What a subscription asked to see from history before going live.
enum Replay {
    None,
    Events {
        baseline: (String, u64),
        events: Vec<Arc<RoomEvent>>,
    },
    NotRecovered(RoomInfo),
}

struct Filled {
    room: String,
    after: u64,
    until: u64,
    result: Result<HistoryPage, BackendError>,
}

/// Why the loop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// After an ERROR, a DISCONNECT, or the client's own close.
    Normal,
    /// Server shutting down: the client should reconnect elsewhere.
    Restart,
    /// Nothing more can be written.
    Abort,
}

struct Conn {
    app: Arc<AppState>,
    services: Services,
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
    transactions: HashMap<String, Vec<Frame>>,
    tx: mpsc::Sender<Delivery>,
    kill: Arc<Kill>,
    outgoing: Vec<Message>,
    last_write: Instant,
    send_every: Option<Duration>,
    recv_timeout: Option<Duration>,
    last_recv: Instant,
    next_ping: Instant,
    bucket: crate::limit::TokenBucket,
    closing: Option<Close>,
}

/// Runs one client connection to its end, then cleans up its presence.
pub async fn run<S>(socket: S, app: Arc<AppState>, query_token: Option<String>)
where
    S: Sink<Message, Error = axum::Error>
        + Stream<Item = Result<Message, axum::Error>>
        + Unpin
        + Send,
{
    let session_num = app.next_session();
    let session_id = format!("{}.{}.{session_num}", app.config.server_id, app.boot);
    let span = info_span!("session", session = %session_id);
    run_inner(socket, app, query_token, session_num, session_id)
        .instrument(span)
        .await;
}

async fn run_inner<S>(
    mut socket: S,
    app: Arc<AppState>,
    query_token: Option<String>,
    session_num: u64,
    session_id: String,
) where
    S: Sink<Message, Error = axum::Error>
        + Stream<Item = Result<Message, axum::Error>>
        + Unpin
        + Send,
{
    let (tx, mut rx) = mpsc::channel(app.config.outbound_queue);
    let now = Instant::now();
    let limits = Limits {
        max_frame_bytes: app.config.max_frame_bytes,
        ..Limits::default()
    };
    let mut c = Conn {
        services: app.services.clone(),
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
        outgoing: Vec::new(),
        last_write: now,
        send_every: None,
        recv_timeout: Some(CONNECT_TIMEOUT),
        last_recv: now,
        next_ping: now + CONNECT_TIMEOUT,
        bucket: crate::limit::TokenBucket::full(app.config.send_rate, now),
        closing: None,
        app,
    };
    let tick: Sleep = tokio::time::sleep_until(c.next_deadline());
    tokio::pin!(tick);
    let drain = c.app.drain.clone();

    loop {
        c.pump();
        if !c.outgoing.is_empty() {
            let kill = c.kill.clone();
            tokio::select! {
                biased;
                ok = write_all(&mut socket, &mut c.outgoing) => if ok {
                    c.last_write = Instant::now();
                } else {
                    c.closing = Some(Close::Abort);
                },
                // Blocked on a client that does not read while its queue overflowed.
                () = kill.wait() => c.slow_consumer(),
            }
        }
        if let Some(how) = c.closing {
            finish(&mut socket, how).await;
            break;
        }
        // CONNECT shortens the deadlines; later ones are caught when the timer fires.
        let deadline = c.next_deadline();
        if deadline < tick.deadline() {
            tick.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            () = c.kill.wait() => c.slow_consumer(),
            () = drain.cancelled() => {
                c.closing = Some(Close::Restart);
            }
            done = poll_op(&mut c.op), if c.op.is_some() => {
                c.op = None;
                c.on_done(done);
            }
            Some(filled) = c.fills.next(), if !c.fills.is_empty() => c.on_filled(filled),
            Some(d) = rx.recv() => {
                c.on_delivery(d);
                for _ in 1..DELIVERY_BATCH {
                    match rx.try_recv() {
                        Ok(d) => c.on_delivery(d),
                        Err(_) => break,
                    }
                }
            }
            msg = socket.next(), if c.queue.len() < MAX_QUEUED_FRAMES => match msg {
                Some(Ok(msg)) => c.on_message(msg),
                Some(Err(e)) => {
                    debug!(error = %e, "websocket read failed");
                    c.fail("websocket error", &format!("{e}"), None);
                }
                None => c.closing = Some(Close::Abort),
            },
            () = &mut tick => {
                c.on_tick();
                tick.as_mut().reset(c.next_deadline());
            }
        }
    }
    c.cleanup();
}

async fn poll_op(op: &mut Option<BoxFuture<Done>>) -> Done {
    match op {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn write_all<S>(socket: &mut S, outgoing: &mut Vec<Message>) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let write = async {
        for m in outgoing.drain(..) {
            socket.feed(m).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!(error = %e, "websocket write failed");
            false
        }
        Err(_) => {
            debug!("websocket write timed out");
            false
        }
    }
}

async fn finish<S>(socket: &mut S, how: Close)
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let frame = match how {
        Close::Abort => return,
        Close::Normal => CloseFrame {
            code: 1000,
            reason: Utf8Bytes::from_static(""),
        },
        Close::Restart => CloseFrame {
            code: CLOSE_RESTART,
            reason: Utf8Bytes::from_static("server restarting: reconnect"),
        },
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
    // Wait (briefly) for the client's close: dropping a socket with unread input makes the kernel
    // reset the connection, and a reset can destroy the ERROR frame the client has not read yet.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(msg)) = socket.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

impl Conn {
    fn next_deadline(&self) -> Instant {
        let recv = self.recv_timeout.map(|t| self.last_recv + t);
        let ping = self.send_every.map(|_| self.next_ping);
        match (recv, ping) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => Instant::now() + Duration::from_secs(3600),
        }
    }

    /// The client does not read fast enough: it goes, and nobody waits for it.
    fn slow_consumer(&mut self) {
        if self.closing.is_none() {
            self.app.metrics.slow_consumers.inc();
            debug!("slow consumer: outbound queue full");
            self.closing = Some(Close::Abort);
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if let Some(timeout) = self.recv_timeout
            && now >= self.last_recv + timeout
        {
            if self.identity.is_none() {
                self.fail("connect timeout", "no CONNECT frame in time", None);
            } else {
                self.app.metrics.heartbeat_timeouts.inc();
                debug!("heart-beat timeout");
                self.closing = Some(Close::Abort);
            }
            return;
        }
        if let Some(every) = self.send_every
            && now >= self.next_ping
        {
            // A beat only when nothing else went out for a whole interval, measured from the
            // last write, so the client never waits longer than it was promised.
            if now.duration_since(self.last_write) + Duration::from_millis(5) >= every {
                self.outgoing
                    .push(Message::Text(Utf8Bytes::from_static("\n")));
                self.next_ping = now + every;
            } else {
                self.next_ping = self.last_write + every;
            }
        }
    }

    // ----- output -----

    fn send(&mut self, frame: &Frame) {
        let mut buf = BytesMut::with_capacity(128 + frame.body.len());
        encode(frame, &mut buf);
        self.push_bytes(buf.freeze());
    }

    fn push_bytes(&mut self, bytes: Bytes) {
        push_frame(&mut self.outgoing, &self.app.metrics, bytes);
    }

    fn receipt(&mut self, receipt: Option<String>) {
        if let Some(id) = receipt {
            self.send(&Frame::new(Command::Receipt).with_header("receipt-id", id));
        }
    }

    /// Sends ERROR and closes this connection after it.
    fn fail(&mut self, message: &'static str, detail: &str, receipt: Option<&str>) {
        if self.closing.is_some() {
            return;
        }
        // The header alone should tell what was wrong (many clients show only it).
        let header = if detail.is_empty() {
            message.to_owned()
        } else {
            format!("{message}: {detail}")
        };
        let mut f = Frame::error(&header, detail);
        if let Some(r) = receipt {
            f = f.with_header("receipt-id", r);
        }
        self.app.metrics.error(message);
        debug!(message, detail, "closing with ERROR");
        self.send(&f);
        self.closing = Some(Close::Normal);
        self.queue.clear();
    }

    // ----- input -----

    fn on_message(&mut self, msg: Message) {
        self.last_recv = Instant::now();
        match msg {
            Message::Text(t) => self.inbuf.extend_from_slice(t.as_bytes()),
            Message::Binary(b) => self.inbuf.extend_from_slice(&b),
            Message::Ping(_) | Message::Pong(_) => return,
            Message::Close(_) => {
                self.closing = Some(Close::Abort);
                return;
            }
        }
        loop {
            match self.decoder.decode(&mut self.inbuf) {
                Ok(None) => break,
                Ok(Some(Decoded::Heartbeat)) => {}
                Ok(Some(Decoded::Frame(frame))) => {
                    self.app.metrics.frames_received.inc();
                    self.queue.push_back(frame);
                }
                Err(e) => {
                    self.fail("malformed frame", &e.to_string(), None);
                    return;
                }
            }
        }
        // Most connections are idle most of the time: hold no input buffer between frames.
        if self.inbuf.is_empty() {
            self.inbuf = BytesMut::new();
        }
    }

    /// Handles queued frames in order until one needs the broker.
    fn pump(&mut self) {
        while self.op.is_none() && self.closing.is_none() {
            let Some(frame) = self.queue.pop_front() else {
                break;
            };
            self.handle(frame);
        }
    }

    fn handle(&mut self, frame: Frame) {
        let receipt = frame.header("receipt").map(str::to_owned);
        if self.identity.is_none() {
            match frame.command {
                Command::Connect | Command::Stomp => self.on_connect(&frame),
                other => self.fail(
                    "not connected",
                    &format!("expected CONNECT, got {}", other.as_str()),
                    receipt.as_deref(),
                ),
            }
            return;
        }
        match frame.command {
            Command::Connect | Command::Stomp => self.fail(
                "already connected",
                "CONNECT was sent twice",
                receipt.as_deref(),
            ),
            Command::Send => self.on_send(frame, receipt),
            Command::Subscribe => self.on_subscribe(&frame, receipt),
            Command::Unsubscribe => self.on_unsubscribe(&frame, receipt),
            Command::Ack | Command::Nack => {
                if frame.header("id").is_none() {
                    return self.fail(
                        "missing header",
                        &format!("{} needs an id header", frame.command.as_str()),
                        receipt.as_deref(),
                    );
                }
                if let Some(tx) = frame.header("transaction")
                    && !self.transactions.contains_key(tx)
                {
                    return self.fail(
                        "unknown transaction",
                        &format!("no transaction {:?}", truncate(tx)),
                        receipt.as_deref(),
                    );
                }
                // Every delivery is final once written, so an ACK or NACK only needs its receipt.
                self.receipt(receipt);
            }
            Command::Begin => self.on_begin(&frame, receipt),
            Command::Commit => self.on_commit(&frame, receipt),
            Command::Abort => {
                let Some(tx) = frame.header("transaction") else {
                    return self.fail(
                        "missing header",
                        "ABORT needs a transaction header",
                        receipt.as_deref(),
                    );
                };
                if self.transactions.remove(tx).is_none() {
                    return self.fail(
                        "unknown transaction",
                        &format!("no transaction {:?}", truncate(tx)),
                        receipt.as_deref(),
                    );
                }
                self.receipt(receipt);
            }
            Command::Disconnect => {
                self.receipt(receipt);
                self.closing = Some(Close::Normal);
            }
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                self.fail(
                    "unexpected frame",
                    &format!("{} is a server frame", frame.command.as_str()),
                    receipt.as_deref(),
                );
            }
        }
    }

    fn on_connect(&mut self, frame: &Frame) {
        let receipt = frame.header("receipt");
        let accepted = frame.header("accept-version").unwrap_or("1.0");
        let version = ["1.2", "1.1", "1.0"]
            .into_iter()
            .find(|v| accepted.split(',').any(|a| a.trim() == *v));
        let Some(version) = version else {
            let f = Frame::error(
                "unsupported version",
                "this server speaks STOMP 1.0, 1.1 and 1.2",
            )
            .with_header("version", "1.0,1.1,1.2");
            self.send(&f);
            self.app.metrics.error("unsupported version");
            self.closing = Some(Close::Normal);
            return;
        };
        let (cx, cy) = match frame.header("heart-beat").map(parse_heart_beat) {
            None => (0, 0),
            Some(Some(hb)) => hb,
            Some(None) => {
                return self.fail(
                    "bad heart-beat",
                    "heart-beat must be two numbers: cx,cy",
                    receipt,
                );
            }
        };
        let token = frame
            .header("Authorization")
            .or_else(|| frame.header("authorization"))
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).to_owned())
            .or_else(|| frame.header("passcode").map(str::to_owned))
            .or_else(|| self.query_token.clone());
        let identity = match self
            .app
            .auth
            .authenticate(token.as_deref(), frame.header("login"))
        {
            Ok(id) => id,
            Err(e) => return self.fail("authentication failed", &e.to_string(), receipt),
        };
        let (sx, sy) = self.app.config.stomp_heartbeat;
        let now = Instant::now();
        self.send_every = (sx > 0 && cy > 0).then(|| Duration::from_millis(sx.max(cy)));
        self.recv_timeout = (cx > 0 && sy > 0).then(|| Duration::from_millis(cx.max(sy) * 3 / 2));
        self.next_ping = now + self.send_every.unwrap_or_default();
        self.version = version;
        let reply = Frame::new(Command::Connected)
            .with_header("version", version)
            .with_header("heart-beat", format!("{sx},{sy}"))
            .with_header("server", concat!("chatcluster/", env!("CARGO_PKG_VERSION")))
            .with_header("session", self.session_id.clone())
            .with_header("user-name", identity.name.clone())
            .with_header("x-server-id", self.app.config.server_id.clone())
            .with_header("x-user-id", identity.user_id.clone());
        self.send(&reply);
        self.receipt(receipt.map(str::to_owned));
        tracing::debug!(user = %identity.user_id, version, "connected");
        self.identity = Some(identity);
    }

    /// The connection's and the user's send budgets both allow one more message.
    fn take_token(&mut self) -> Result<(), String> {
        let rate = self.app.config.send_rate;
        if !self.bucket.take(rate, Instant::now()) {
            return Err(format!("at most {rate} messages per second per connection"));
        }
        if let Some(id) = &self.identity
            && !self.app.user_limiter.take(&id.user_id)
        {
            return Err(format!(
                "at most {} messages per second per user",
                self.app.config.user_send_rate
            ));
        }
        Ok(())
    }

    fn on_send(&mut self, frame: Frame, receipt: Option<String>) {
        if let Some(tx) = frame.header("transaction") {
            let tx = tx.to_owned();
            let Some(held) = self.transactions.get(&tx).map(Vec::len) else {
                return self.fail(
                    "unknown transaction",
                    &format!("no transaction {:?}", truncate(&tx)),
                    receipt.as_deref(),
                );
            };
            if held >= MAX_TRANSACTION_FRAMES {
                return self.fail(
                    "transaction too large",
                    &format!("at most {MAX_TRANSACTION_FRAMES} frames"),
                    receipt.as_deref(),
                );
            }
            // Check it now so COMMIT cannot fail half-way on a bad frame.
            if let Err(e) = self.prepare_send(&frame) {
                return self.fail(e.0, &e.1, receipt.as_deref());
            }
            if let Some(frames) = self.transactions.get_mut(&tx) {
                frames.push(frame);
            }
            return self.receipt(receipt);
        }
        if let Err(e) = self.take_token() {
            return self.fail("rate limit exceeded", &e, receipt.as_deref());
        }
        match self.prepare_send(&frame) {
            Ok(p) => {
                let (items, receipts) = self.take_send_run(p, receipt);
                self.op = Some(publish_op(
                    self.services.clone(),
                    self.app.clone(),
                    items,
                    Owed::Each(receipts),
                ))
            }
            Err(e) => self.fail(e.0, &e.1, receipt.as_deref()),
        }
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
            if next.command != Command::Send || next.header("transaction").is_some() {
                break;
            }
            let Ok(p) = self.prepare_send(next) else {
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

    /// Checks a SEND and turns it into what the broker takes.
    fn prepare_send(&self, frame: &Frame) -> Result<Prepared, (&'static str, String)> {
        let Some(identity) = &self.identity else {
            return Err(("not connected", String::new()));
        };
        let dest = frame.header("destination").ok_or((
            "missing header",
            "SEND needs a destination header".to_owned(),
        ))?;
        let dest = parse_destination(dest).map_err(|e| ("bad destination", e))?;
        let content =
            parse_message_body(&frame.body).map_err(|e| ("bad message", e.to_string()))?;
        let headers: Vec<(String, String)> = frame
            .headers
            .iter()
            .filter(|(k, _)| !RESERVED_HEADERS.contains(&k.as_str()))
            .cloned()
            .collect();
        let server_id = &self.app.config.server_id;
        match dest {
            Dest::Room(room) => {
                if !identity.may_use_room(&room) {
                    return Err(("forbidden", format!("not allowed in room {room:?}")));
                }
                let mut draft = Draft::new(EventKind::Chat, identity.sender(), content, server_id);
                draft.headers = headers;
                Ok(Prepared::Room(room, draft))
            }
            Dest::User(to) => {
                let d = Draft::new(EventKind::Chat, identity.sender(), content, server_id);
                Ok(Prepared::Direct(DirectRecord {
                    id: d.id,
                    kind: EventKind::Chat,
                    sender: d.sender,
                    to,
                    content: d.content,
                    sent_at: d.sent_at,
                    server_id: d.server_id,
                    headers,
                }))
            }
            Dest::UserQueue => Err((
                "bad destination",
                "cannot SEND to /user/queue/messages; use /app/user/{userId}".into(),
            )),
        }
    }

    fn on_begin(&mut self, frame: &Frame, receipt: Option<String>) {
        let Some(tx) = frame.header("transaction") else {
            return self.fail(
                "missing header",
                "BEGIN needs a transaction header",
                receipt.as_deref(),
            );
        };
        if self.transactions.contains_key(tx) {
            return self.fail(
                "transaction exists",
                &format!("transaction {:?} is already open", truncate(tx)),
                receipt.as_deref(),
            );
        }
        if self.transactions.len() >= MAX_TRANSACTIONS {
            return self.fail(
                "too many transactions",
                &format!("at most {MAX_TRANSACTIONS} open"),
                receipt.as_deref(),
            );
        }
        self.transactions.insert(tx.to_owned(), Vec::new());
        self.receipt(receipt);
    }

    fn on_commit(&mut self, frame: &Frame, receipt: Option<String>) {
        let Some(tx) = frame.header("transaction") else {
            return self.fail(
                "missing header",
                "COMMIT needs a transaction header",
                receipt.as_deref(),
            );
        };
        let Some(frames) = self.transactions.remove(tx) else {
            return self.fail(
                "unknown transaction",
                &format!("no transaction {:?}", truncate(tx)),
                receipt.as_deref(),
            );
        };
        let mut prepared = Vec::with_capacity(frames.len());
        for f in &frames {
            match self.prepare_send(f) {
                Ok(p) => prepared.push(p),
                Err(e) => return self.fail(e.0, &e.1, receipt.as_deref()),
            }
        }
        if prepared.is_empty() {
            return self.receipt(receipt);
        }
        self.op = Some(publish_op(
            self.services.clone(),
            self.app.clone(),
            prepared,
            Owed::Whole(receipt),
        ));
    }

    fn on_subscribe(&mut self, frame: &Frame, receipt: Option<String>) {
        let r = receipt.as_deref();
        let Some(id) = frame.header("id") else {
            return self.fail("missing header", "SUBSCRIBE needs an id header", r);
        };
        let Some(dest) = frame.header("destination") else {
            return self.fail("missing header", "SUBSCRIBE needs a destination header", r);
        };
        if self.subs.contains_key(id) {
            return self.fail(
                "duplicate subscription",
                &format!("subscription id {:?} is in use", truncate(id)),
                r,
            );
        }
        if self.subs.len() >= self.app.config.max_subscriptions {
            return self.fail(
                "too many subscriptions",
                &format!(
                    "at most {} per connection",
                    self.app.config.max_subscriptions
                ),
                r,
            );
        }
        match frame.header("ack").unwrap_or("auto") {
            "auto" | "client" | "client-individual" => {}
            other => {
                return self.fail(
                    "bad ack mode",
                    &format!("unknown ack mode {:?}", truncate(other)),
                    r,
                );
            }
        }
        let dest = match parse_destination(dest) {
            Ok(Dest::User(_)) => {
                return self.fail(
                    "bad destination",
                    "subscribe to /user/queue/messages for direct messages",
                    r,
                );
            }
            Ok(d) => d,
            Err(e) => return self.fail("bad destination", &e, r),
        };
        let sub: Arc<str> = Arc::from(id);
        let Some(identity) = self.identity.clone() else {
            return;
        };
        let listener = Listener {
            session: self.session_num,
            tx: self.tx.clone(),
            kill: self.kill.clone(),
        };
        let room = match &dest {
            Dest::UserQueue => {
                if self.user_subs.is_empty() {
                    self.services.hub.add_user(&identity.user_id, listener);
                }
                self.user_subs.push(sub.clone());
                self.subs.insert(id.to_owned(), Subscription { dest });
                let services = self.services.clone();
                let topic = Topic::User(identity.user_id.clone());
                self.op = Some(Box::pin(async move {
                    match services.broker.listen(&topic).await {
                        Ok(()) => Done::Plain { receipt },
                        Err(error) => Done::failed(error, receipt),
                    }
                }));
                return;
            }
            Dest::Room(room) => room.clone(),
            Dest::User(_) => return,
        };
        if !identity.may_use_room(&room) {
            return self.fail("forbidden", &format!("not allowed in room {room:?}"), r);
        }
        let since = match frame
            .header("x-since-offset")
            .map(str::parse::<u64>)
            .transpose()
        {
            Ok(v) => v,
            Err(_) => return self.fail("bad header", "x-since-offset must be a whole number", r),
        };
        let history = match frame
            .header("x-history")
            .map(str::parse::<usize>)
            .transpose()
        {
            Ok(v) => v.map(|k| k.min(MAX_REPLAY)),
            Err(_) => return self.fail("bad header", "x-history must be a whole number", r),
        };
        let epoch = frame.header("x-epoch").map(str::to_owned);
        let presence = frame.header("x-presence") != Some("false");

        let first_here = !self.rooms.contains_key(&room);
        let state = self.rooms.entry(room.clone()).or_default();
        state.subs.push(sub.clone());
        let join = presence && !state.presence;
        state.presence |= presence;
        if first_here {
            // Held until the subscription knows where it starts (see the op below).
            state.seq.hold();
            self.services.hub.add_room(&room, listener);
        }
        self.subs.insert(id.to_owned(), Subscription { dest });

        let member = self.member(&identity);
        let services = self.services.clone();
        self.op = Some(Box::pin(async move {
            if let Err(error) = services.broker.listen(&Topic::Room(room.clone())).await {
                return Done::failed(error, receipt);
            }
            let replay = match (since, history) {
                (Some(n), _) => recover(&services, &room, n, epoch.as_deref()).await,
                (None, Some(k)) => services.history.read_last(&room, k).await.map(|page| {
                    let baseline = page
                        .events
                        .first()
                        .map_or(page.info.last_offset, |e| e.offset() - 1);
                    Replay::Events {
                        baseline: (page.info.epoch, baseline),
                        events: page.events,
                    }
                }),
                // Live from the room's current offset: whatever comes after it is delivered
                // in offset order, even when Pub/Sub hands two publishers' events over swapped.
                // A room that does not exist yet is created, so it has an epoch and offset 0.
                (None, None) => match services.history.info(&room).await {
                    Ok(None) => match services.history.create_room(&room).await {
                        Ok(_) => services.history.info(&room).await,
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
            };
            let replay = match replay {
                Ok(r) => r,
                Err(error) => return Done::failed(error, receipt),
            };
            if join && let Err(error) = services.presence.join(&room, &member).await {
                return Done::failed(error, receipt);
            }
            Done::Subscribed {
                room,
                sub,
                replay,
                receipt,
            }
        }));
    }

    fn on_unsubscribe(&mut self, frame: &Frame, receipt: Option<String>) {
        let r = receipt.as_deref();
        let Some(id) = frame.header("id") else {
            return self.fail("missing header", "UNSUBSCRIBE needs an id header", r);
        };
        let Some(sub) = self.subs.remove(id) else {
            return self.fail(
                "unknown subscription",
                &format!("no subscription {:?}", truncate(id)),
                r,
            );
        };
        let Some(identity) = &self.identity else {
            return;
        };
        match sub.dest {
            Dest::UserQueue => {
                self.user_subs.retain(|s| &**s != id);
                if self.user_subs.is_empty() {
                    self.services
                        .hub
                        .remove_user(&identity.user_id, self.session_num);
                }
                self.receipt(receipt);
            }
            Dest::Room(room) => {
                let Some(state) = self.rooms.get_mut(&room) else {
                    return self.receipt(receipt);
                };
                state.subs.retain(|s| &**s != id);
                if !state.subs.is_empty() {
                    return self.receipt(receipt);
                }
                let had_presence = state.presence;
                self.rooms.remove(&room);
                self.services.hub.remove_room(&room, self.session_num);
                if !had_presence {
                    return self.receipt(receipt);
                }
                let services = self.services.clone();
                let member = self.member(identity);
                self.op = Some(Box::pin(async move {
                    match services.presence.leave(&room, &member).await {
                        Ok(_) => Done::Plain { receipt },
                        Err(error) => Done::failed(error, receipt),
                    }
                }));
            }
            Dest::User(_) => self.receipt(receipt),
        }
    }

    // ----- results of broker calls -----

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Published { receipts } => {
                for r in receipts {
                    self.receipt(r);
                }
            }
            Done::Plain { receipt } => self.receipt(receipt),
            Done::Failed {
                error,
                accepted,
                receipt,
            } => {
                for r in accepted {
                    self.receipt(r);
                }
                warn!(error = %error, "broker call failed");
                self.fail(
                    "service unavailable",
                    &error.to_string(),
                    receipt.as_deref(),
                );
            }
            Done::Subscribed {
                room,
                sub,
                replay,
                receipt,
            } => {
                self.on_replay(&room, &sub, replay);
                self.receipt(receipt);
            }
        }
    }

    fn on_replay(&mut self, room: &str, sub: &Arc<str>, replay: Replay) {
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
                self.app.metrics.not_recovered.inc();
                let frame = not_recovered_frame(&info, sub, &self.app.config.server_id);
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
                self.app.metrics.replayed.inc_by(events.len() as u64);
                if only_sub {
                    let (events, gap) = state.seq.release(Some(baseline), events);
                    self.deliver_released(room, events, gap);
                } else {
                    // The room was live already: this subscription alone gets what it missed.
                    let upto = state.seq.last().map_or(0, |(_, o)| o);
                    for ev in events.iter().filter(|e| e.offset() <= upto) {
                        deliver(
                            &mut self.outgoing,
                            &self.app.metrics,
                            std::slice::from_ref(sub),
                            |s| ev.frame_for(s),
                        );
                    }
                }
            }
        }
    }

    fn deliver_released(
        &mut self,
        room: &str,
        events: Vec<Arc<RoomEvent>>,
        gap: Option<(u64, u64)>,
    ) {
        let Some(state) = self.rooms.get(room) else {
            return;
        };
        for ev in &events {
            deliver(&mut self.outgoing, &self.app.metrics, &state.subs, |s| {
                ev.frame_for(s)
            });
        }
        if let Some((after, until)) = gap {
            self.start_fill(room, after, until);
        }
    }

    fn on_delivery(&mut self, d: Delivery) {
        match d {
            Delivery::Room(ev) => {
                let Some(state) = self.rooms.get_mut(ev.room()) else {
                    return;
                };
                match state.seq.offer(&ev) {
                    Verdict::Deliver => {
                        deliver(&mut self.outgoing, &self.app.metrics, &state.subs, |s| {
                            ev.frame_for(s)
                        });
                    }
                    Verdict::Duplicate => {}
                    Verdict::Held => {
                        if state.seq.held_len() > self.app.config.outbound_queue {
                            self.kill.fire();
                        }
                    }
                    Verdict::Gap { after, until } => {
                        let room = ev.room().to_owned();
                        self.start_fill(&room, after, until);
                    }
                }
            }
            Delivery::Direct(ev) => {
                deliver(
                    &mut self.outgoing,
                    &self.app.metrics,
                    &self.user_subs,
                    |s| ev.frame_for(s),
                );
            }
        }
    }

    fn start_fill(&mut self, room: &str, after: u64, until: u64) {
        let services = self.services.clone();
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

    fn on_filled(&mut self, f: Filled) {
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
                self.app.metrics.gaps_filled.inc();
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
                    .map(|s| not_recovered_frame(&info, s, &self.app.config.server_id))
                    .collect();
                let released = state.seq.release(Some((epoch, f.until - 1)), Vec::new());
                self.app.metrics.not_recovered.inc();
                for frame in &frames {
                    self.send(frame);
                }
                released
            }
        };
        self.deliver_released(&f.room, events, gap);
    }

    /// Leaves every room and drops every listener; presence and LEAVE run in a tracked task.
    fn cleanup(&mut self) {
        let Some(identity) = self.identity.take() else {
            return;
        };
        if !self.user_subs.is_empty() {
            self.services
                .hub
                .remove_user(&identity.user_id, self.session_num);
        }
        let mut leave = Vec::new();
        for (room, state) in self.rooms.drain() {
            self.services.hub.remove_room(&room, self.session_num);
            if state.presence {
                leave.push(room);
            }
        }
        if leave.is_empty() {
            return;
        }
        let services = self.services.clone();
        let member = self.member(&identity);
        self.app.tracker.spawn(async move {
            for room in leave {
                if let Err(e) = services.presence.leave(&room, &member).await {
                    warn!(error = %e, room, "could not leave room on disconnect");
                }
            }
        });
    }

    fn member(&self, identity: &Identity) -> Member {
        Member {
            user_id: identity.user_id.clone(),
            name: identity.name.clone(),
            session_id: self.session_id.clone(),
            server_id: self.app.config.server_id.clone(),
        }
    }
}

/// Queues one frame for the client (text: every frame this server makes is UTF-8).
fn push_frame(outgoing: &mut Vec<Message>, metrics: &Metrics, bytes: Bytes) {
    metrics.frames_sent.inc();
    match Utf8Bytes::try_from(bytes) {
        Ok(text) => outgoing.push(Message::Text(text)),
        Err(e) => warn!(error = %e, "dropped a frame that is not UTF-8"),
    }
}

/// Queues one event's MESSAGE frame for each subscription in `subs`.
fn deliver(
    outgoing: &mut Vec<Message>,
    metrics: &Metrics,
    subs: &[Arc<str>],
    frame_for: impl Fn(&str) -> Utf8Bytes,
) {
    for sub in subs {
        outgoing.push(Message::Text(frame_for(sub)));
    }
    metrics.frames_sent.inc_by(subs.len() as u64);
    metrics.deliveries.inc_by(subs.len() as u64);
}

enum Prepared {
    Room(String, Draft),
    Direct(DirectRecord),
}

fn publish_op(
    services: Services,
    app: Arc<AppState>,
    items: Vec<Prepared>,
    owed: Owed,
) -> BoxFuture<Done> {
    Box::pin(async move {
        let started = Instant::now();
        let n = items.len();
        let result = publish_items(&services, &app, items).await;
        let seconds = started.elapsed().as_secs_f64();
        let accepted = result.as_ref().err().map_or(n, |(k, _)| *k);
        for _ in 0..accepted {
            app.metrics.publish_seconds.observe(seconds);
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
async fn publish_items(
    services: &Services,
    app: &AppState,
    items: Vec<Prepared>,
) -> Result<(), (usize, BackendError)> {
    let mut done = 0;
    let mut run = Vec::new();
    for item in items {
        match item {
            Prepared::Room(room, draft) => run.push((room, draft)),
            Prepared::Direct(record) => {
                done += publish_run(services, app, std::mem::take(&mut run))
                    .await
                    .map_err(|(k, e)| (done + k, e))?;
                services
                    .broker
                    .publish_direct(record)
                    .await
                    .map_err(|e| (done, e))?;
                app.metrics.direct_messages.inc();
                done += 1;
            }
        }
    }
    publish_run(services, app, run)
        .await
        .map_err(|(k, e)| (done + k, e))?;
    Ok(())
}

/// One run of room messages as one batch; how many went, or how many before the failure.
async fn publish_run(
    services: &Services,
    app: &AppState,
    run: Vec<(String, Draft)>,
) -> Result<usize, (usize, BackendError)> {
    let n = run.len();
    if n == 0 {
        return Ok(0);
    }
    match services.broker.publish_batch(run).await {
        Ok(()) => {
            app.metrics.messages_published.inc_by(n as u64);
            Ok(n)
        }
        Err((k, e)) => {
            app.metrics.messages_published.inc_by(k as u64);
            Err((k, e))
        }
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
    if !epoch_ok || n > info.last_offset || n + 1 < info.first_offset {
        return Ok(Replay::NotRecovered(info));
    }
    let wanted = usize::try_from(info.last_offset - n).unwrap_or(usize::MAX);
    if wanted > MAX_REPLAY {
        return Ok(Replay::NotRecovered(info));
    }
    let page = services.history.read_after(room, n, wanted).await?;
    // The history may have moved on between the two reads; what matters is that it starts at n+1.
    if page.info.epoch != info.epoch || page.events.first().is_some_and(|e| e.offset() != n + 1) {
        return Ok(Replay::NotRecovered(page.info));
    }
    Ok(Replay::Events {
        baseline: (info.epoch, n),
        events: page.events,
    })
}

fn not_recovered_frame(info: &RoomInfo, sub: &str, server_id: &str) -> Frame {
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
        headers: Vec::new(),
    };
    let body = serde_json::to_vec(&record).unwrap_or_default();
    Frame::new(Command::Message)
        .with_header("destination", format!("/topic/room/{}", info.id))
        .with_header("subscription", sub)
        .with_header("message-id", record.id)
        .with_header("content-type", "application/json")
        .with_header("x-offset", info.last_offset.to_string())
        .with_header("x-epoch", info.epoch.clone())
        .with_header("x-recovered", "false")
        .with_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_map_to_rooms_users_and_the_user_queue() {
        assert_eq!(
            parse_destination("/topic/room/lobby"),
            Ok(Dest::Room("lobby".into()))
        );
        assert_eq!(
            parse_destination("/app/room/a.b-c_1"),
            Ok(Dest::Room("a.b-c_1".into()))
        );
        assert_eq!(
            parse_destination("/app/user/bob"),
            Ok(Dest::User("bob".into()))
        );
        assert_eq!(
            parse_destination("/user/queue/messages"),
            Ok(Dest::UserQueue)
        );
        assert!(parse_destination("/topic/room/").is_err());
        assert!(parse_destination("/topic/room/a/b").is_err());
        assert!(parse_destination("/queue/x").is_err());
        assert!(parse_destination(&format!("/topic/room/{}", "x".repeat(129))).is_err());
    }
}
