//! The connection loop: socket I/O, heart-beats, the outbound batch, slow consumers and close.
//!
//! One `select!` loop per connection owns the socket. Frames for the client are collected in the
//! `Outbox` and written together, then flushed once. The loop waits on the socket, the hub's
//! bounded delivery queue, the running broker call, gap fills, the heart-beat timer, the drain
//! and the slow-consumer kill; nothing else. An ERROR is the last frame a session writes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use super::error::SessionError;
use super::{BoxFuture, CLOSE_RESTART, Conn, Done, MAX_QUEUED_FRAMES};
use crate::hub::Delivery;
use crate::metrics::Metrics;
use crate::stomp::{Command, Decoded, Frame, encode};

/// Deliveries handled per wake-up before writing; bounds the latency of a busy loop.
const DELIVERY_BATCH: usize = 256;
/// Time to write to a client before it counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the loop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    /// After an ERROR, a DISCONNECT, or the client's own close.
    Normal,
    /// Server shutting down: the client should reconnect elsewhere.
    Restart,
    /// Nothing more can be written.
    Abort,
}

/// Frames gathered for the client until the loop writes them; counts what it sends.
pub(super) struct Outbox {
    pub(super) frames: Vec<Message>,
    metrics: Arc<Metrics>,
}

impl Outbox {
    pub(super) fn new(metrics: Arc<Metrics>) -> Outbox {
        Outbox {
            frames: Vec::new(),
            metrics,
        }
    }

    /// Queues one encoded frame (text: every frame this server makes is UTF-8).
    pub(super) fn push_bytes(&mut self, bytes: Bytes) {
        self.metrics.frames_sent.inc();
        match Utf8Bytes::try_from(bytes) {
            Ok(text) => self.frames.push(Message::Text(text)),
            Err(e) => warn!(error = %e, "dropped a frame that is not UTF-8"),
        }
    }

    pub(super) fn send(&mut self, frame: &Frame) {
        let mut buf = BytesMut::with_capacity(128 + frame.body.len());
        encode(frame, &mut buf);
        self.push_bytes(buf.freeze());
    }

    /// Queues one event's MESSAGE frame for each subscription in `subs`.
    pub(super) fn deliver<S>(&mut self, subs: &[S], frame_for: impl Fn(&S) -> Utf8Bytes) {
        for sub in subs {
            self.frames.push(Message::Text(frame_for(sub)));
        }
        self.metrics.frames_sent.inc_by(subs.len() as u64);
        self.metrics.deliveries.inc_by(subs.len() as u64);
    }
}

/// Runs the loop until the session closes, then cleans up.
pub(super) async fn run_loop<S>(mut socket: S, mut c: Conn, mut rx: mpsc::Receiver<Delivery>)
where
    S: Sink<Message, Error = axum::Error>
        + Stream<Item = Result<Message, axum::Error>>
        + Unpin
        + Send,
{
    let tick: Sleep = tokio::time::sleep_until(c.next_deadline());
    tokio::pin!(tick);
    let drain = c.cx.drain.clone();

    loop {
        c.pump();
        if !c.out.frames.is_empty() {
            let kill = c.kill.clone();
            tokio::select! {
                biased;
                ok = write_all(&mut socket, &mut c.out.frames) => if ok {
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
                    c.fail(&SessionError::Transport(e), None);
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
            self.cx.metrics.slow_consumers.inc();
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
                self.fail(&SessionError::ConnectTimeout, None);
            } else {
                self.cx.metrics.heartbeat_timeouts.inc();
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
                self.out
                    .frames
                    .push(Message::Text(Utf8Bytes::from_static("\n")));
                self.next_ping = now + every;
            } else {
                self.next_ping = self.last_write + every;
            }
        }
    }

    // ----- output -----

    pub(super) fn send(&mut self, frame: &Frame) {
        self.out.send(frame);
    }

    pub(super) fn receipt(&mut self, receipt: Option<String>) {
        if let Some(id) = receipt {
            self.send(&Frame::new(Command::Receipt).with_header("receipt-id", id));
        }
    }

    /// Sends ERROR and closes this connection after it.
    pub(super) fn fail(&mut self, error: &SessionError, receipt: Option<&str>) {
        if self.closing.is_some() {
            return;
        }
        let message = error.label();
        let detail = error.to_string();
        // The header alone should tell what was wrong (many clients show only it).
        let header = if detail.is_empty() {
            message.to_owned()
        } else {
            format!("{message}: {detail}")
        };
        let mut f = Frame::error(&header, &detail);
        if let Some(r) = receipt {
            f = f.with_header("receipt-id", r);
        }
        self.cx.metrics.error(message);
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
                    self.cx.metrics.frames_received.inc();
                    self.queue.push_back(frame);
                }
                Err(e) => {
                    self.fail(&e.into(), None);
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
                self.fail(&error.into(), receipt.as_deref());
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
}
