//! Sessions driven over channels: a client writes frames into a tokio mpsc channel and reads
//! what the session writes from another, with the in-memory services behind it (no sockets).
//!
//! Each test runs the real `run` loop and asserts what a client sees: frames, their headers and
//! bodies, the close, and the counters a session moves.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use bytes::BytesMut;
use futures_util::{Sink, Stream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Context, run};
use crate::auth::Authenticator;
use crate::broker::Services;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{Draft, EventKind, Sender};
use crate::stomp::{Command, Decoded, Decoder, Frame, Limits, encode};

const ROOM: &str = "/topic/room/lobby";

/// The session's side of the channels: what the client sent comes in, what it writes goes out.
struct Transport {
    incoming: mpsc::UnboundedReceiver<Message>,
    outgoing: mpsc::UnboundedSender<Message>,
    /// While set, the client reads nothing: every write waits.
    stalled: Arc<AtomicBool>,
}

impl Stream for Transport {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for Transport {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        // A stalled reader never wakes the writer: only the slow-consumer kill ends the wait.
        if self.stalled.load(Ordering::Acquire) {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.outgoing.send(item).map_err(axum::Error::new)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.poll_ready(cx)
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// The instance side: one session context over in-memory services.
fn context(config: &Config) -> Arc<Context> {
    let services = Services::memory(config.history_max_len, &config.server_id);
    let auth = Arc::new(Authenticator::new(config).unwrap());
    Arc::new(Context::new(
        config,
        services,
        auth,
        Arc::new(Metrics::new()),
        CancellationToken::new(),
        TaskTracker::new(),
    ))
}

/// The client side of one session.
struct Client {
    to_server: mpsc::UnboundedSender<Message>,
    from_server: mpsc::UnboundedReceiver<Message>,
    stalled: Arc<AtomicBool>,
    session: JoinHandle<()>,
    decoder: Decoder,
    inbuf: BytesMut,
}

impl Client {
    fn open(cx: &Arc<Context>) -> Client {
        let (to_server, incoming) = mpsc::unbounded_channel();
        let (outgoing, from_server) = mpsc::unbounded_channel();
        let stalled = Arc::new(AtomicBool::new(false));
        let transport = Transport {
            incoming,
            outgoing,
            stalled: stalled.clone(),
        };
        Client {
            to_server,
            from_server,
            stalled,
            session: tokio::spawn(run(transport, cx.clone(), None)),
            decoder: Decoder::new(Limits::default()),
            inbuf: BytesMut::new(),
        }
    }

    /// Opens a session and logs in as `login`, reading the CONNECTED.
    async fn login(cx: &Arc<Context>, login: &str) -> Client {
        let mut c = Client::open(cx);
        c.send(frame(
            Command::Connect,
            &[("accept-version", "1.2"), ("login", login)],
        ));
        assert_eq!(c.next_frame().await.command, Command::Connected);
        c
    }

    fn send(&self, frame: Frame) {
        let mut buf = BytesMut::new();
        encode(&frame, &mut buf);
        let text = String::from_utf8(buf.to_vec()).unwrap();
        self.to_server.send(Message::Text(text.into())).unwrap();
    }

    async fn next_message(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(30), self.from_server.recv())
            .await
            .expect("the session wrote nothing in time")
            .expect("the session ended")
    }

    /// The next STOMP frame the session wrote (heart-beats skipped).
    async fn next_frame(&mut self) -> Frame {
        loop {
            if let Some(Decoded::Frame(f)) = self.decoder.decode(&mut self.inbuf).unwrap() {
                return f;
            }
            match self.next_message().await {
                Message::Text(t) => self.inbuf.extend_from_slice(t.as_bytes()),
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// The next `n` frames, in the order written.
    async fn frames(&mut self, n: usize) -> Vec<Frame> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_frame().await);
        }
        out
    }

    /// Subscribes `id` to `dest` with `extra` headers and waits for the RECEIPT.
    async fn subscribe(&mut self, id: &str, dest: &str, extra: &[(&str, &str)]) {
        let receipt = format!("sub-{id}");
        let mut headers = vec![("id", id), ("destination", dest), ("receipt", &receipt)];
        headers.extend_from_slice(extra);
        self.send(frame(Command::Subscribe, &headers));
        let r = self.next_frame().await;
        assert_eq!(r.command, Command::Receipt, "{r:?}");
        assert_eq!(r.header("receipt-id"), Some(receipt.as_str()));
    }

    /// Expects the session's close frame next, answers it, and waits for the session to end.
    async fn expect_close(mut self) -> Option<CloseFrame> {
        let close = match self.next_message().await {
            Message::Close(c) => c,
            other => panic!("expected the close, got {other:?}"),
        };
        let _ = self.to_server.send(Message::Close(None));
        self.ended().await;
        close
    }

    /// Waits for the session task to finish.
    async fn ended(self) {
        tokio::time::timeout(Duration::from_secs(30), self.session)
            .await
            .expect("the session did not end")
            .unwrap();
    }
}

fn frame(command: Command, headers: &[(&str, &str)]) -> Frame {
    headers
        .iter()
        .fold(Frame::new(command), |f, (k, v)| f.with_header(*k, *v))
}

fn send_frame(dest: &str, body: &str, extra: &[(&str, &str)]) -> Frame {
    let mut headers = vec![("destination", dest)];
    headers.extend_from_slice(extra);
    frame(Command::Send, &headers).with_body(body.to_owned())
}

/// The `content` of a MESSAGE frame's JSON body.
fn content(f: &Frame) -> String {
    let v: serde_json::Value = serde_json::from_slice(&f.body).unwrap();
    v["content"].as_str().unwrap_or_default().to_owned()
}

/// Splits frames into MESSAGE contents and RECEIPT ids (their order relative to each other is
/// the broker's business; within each kind it is the client's).
fn split(frames: &[Frame]) -> (Vec<String>, Vec<String>) {
    let mut messages = Vec::new();
    let mut receipts = Vec::new();
    for f in frames {
        match f.command {
            Command::Message => messages.push(content(f)),
            Command::Receipt => receipts.push(f.header("receipt-id").unwrap().to_owned()),
            _ => panic!("unexpected frame {f:?}"),
        }
    }
    (messages, receipts)
}

/// The current epoch of `room`.
async fn epoch(cx: &Context, room: &str) -> String {
    let info = cx.services.history.info(room).await.unwrap();
    info.expect("the room exists").epoch
}

/// A SUBSCRIBE to the lobby (no presence, RECEIPT `r`) that recovers from `since` in `epoch`.
fn recover_from(since: &str, epoch: &str) -> Frame {
    frame(
        Command::Subscribe,
        &[
            ("id", "s"),
            ("destination", ROOM),
            ("x-since-offset", since),
            ("x-epoch", epoch),
            ("x-presence", "false"),
            ("receipt", "r"),
        ],
    )
}

async fn publish(cx: &Context, room: &str, text: &str) -> u64 {
    let sender = Sender {
        id: "bot".into(),
        name: "bot".into(),
    };
    let draft = Draft::new(EventKind::Chat, sender, text.into(), "test-server");
    cx.services
        .broker
        .publish(room, draft)
        .await
        .unwrap()
        .offset()
}

#[tokio::test]
async fn connect_is_answered_with_connected_and_its_receipt() {
    let cx = context(&Config::for_tests());
    let mut c = Client::open(&cx);
    c.send(frame(
        Command::Connect,
        &[
            ("accept-version", "1.1,1.2"),
            ("login", "ann"),
            ("heart-beat", "0,0"),
            ("receipt", "r0"),
        ],
    ));
    let [connected, receipt] = <[Frame; 2]>::try_from(c.frames(2).await).unwrap();
    assert_eq!(connected.command, Command::Connected);
    assert_eq!(connected.header("version"), Some("1.2"));
    assert_eq!(connected.header("user-name"), Some("ann"));
    assert_eq!(connected.header("x-user-id"), Some("ann"));
    assert_eq!(connected.header("x-server-id"), Some("test-server"));
    assert_eq!(connected.header("heart-beat"), Some("10000,10000"));
    assert!(
        connected
            .header("session")
            .is_some_and(|s| s.starts_with("test-server."))
    );
    assert_eq!(receipt.command, Command::Receipt);
    assert_eq!(receipt.header("receipt-id"), Some("r0"));
}

#[tokio::test]
async fn a_send_reaches_every_subscriber_of_the_room_with_its_subscription() {
    let cx = context(&Config::for_tests());
    let mut ann = Client::login(&cx, "ann").await;
    let mut bob = Client::login(&cx, "bob").await;
    ann.subscribe("a1", ROOM, &[("x-presence", "false")]).await;
    bob.subscribe("b1", ROOM, &[("x-presence", "false")]).await;
    ann.send(send_frame(ROOM, "hello", &[("receipt", "s1")]));
    let (messages, receipts) = split(&ann.frames(2).await);
    assert_eq!(
        (messages, receipts),
        (vec!["hello".into()], vec!["s1".into()])
    );
    let m = bob.next_frame().await;
    assert_eq!(m.command, Command::Message);
    assert_eq!(m.header("subscription"), Some("b1"));
    assert_eq!(m.header("destination"), Some(ROOM));
    assert_eq!(content(&m), "hello");
    assert_eq!(cx.metrics.messages_published.get(), 1);
}

#[tokio::test]
async fn a_join_announcement_like_springs_add_user_is_receipted_and_publishes_nothing() {
    let cx = context(&Config::for_tests());
    let mut ann = Client::login(&cx, "ann").await;
    ann.subscribe("a1", ROOM, &[("x-presence", "false")]).await;
    // The classic Spring demo's `chat.addUser`: no content, `type: JOIN`, alone and inside a
    // transaction; then a chat message shows the connection is still open.
    ann.send(send_frame(
        ROOM,
        r#"{"sender":"ann","type":"JOIN"}"#,
        &[("receipt", "j1")],
    ));
    ann.send(frame(Command::Begin, &[("transaction", "t")]));
    ann.send(send_frame(
        ROOM,
        r#"{"sender":"ann","type":"LEAVE"}"#,
        &[("transaction", "t"), ("receipt", "j2")],
    ));
    ann.send(frame(
        Command::Commit,
        &[("transaction", "t"), ("receipt", "c")],
    ));
    ann.send(send_frame(ROOM, "hello", &[("receipt", "s1")]));
    let (messages, receipts) = split(&ann.frames(5).await);
    assert_eq!(messages, ["hello"]);
    assert_eq!(receipts, ["j1", "j2", "c", "s1"]);
    assert_eq!(cx.metrics.messages_published.get(), 1);
    let page = cx.services.history.read_last("lobby", 10).await.unwrap();
    assert_eq!(page.events.len(), 1, "only the chat message is in the room");
}

#[tokio::test]
async fn a_direct_message_reaches_the_users_queue() {
    let cx = context(&Config::for_tests());
    let mut ann = Client::login(&cx, "ann").await;
    let mut bob = Client::login(&cx, "bob").await;
    bob.subscribe("q", "/user/queue/messages", &[]).await;
    ann.send(send_frame("/app/user/bob", "psst", &[("receipt", "d1")]));
    let r = ann.next_frame().await;
    assert_eq!(r.header("receipt-id"), Some("d1"));
    let m = bob.next_frame().await;
    assert_eq!(m.header("subscription"), Some("q"));
    assert_eq!(content(&m), "psst");
    assert_eq!(cx.metrics.direct_messages.get(), 1);
}

#[tokio::test]
async fn a_frame_before_connect_gets_an_error_and_the_session_ends() {
    let cx = context(&Config::for_tests());
    let mut c = Client::open(&cx);
    c.send(send_frame(ROOM, "too early", &[("receipt", "r1")]));
    let e = c.next_frame().await;
    assert_eq!(e.command, Command::Error);
    assert_eq!(
        e.header("message"),
        Some("not connected: expected CONNECT, got SEND")
    );
    assert_eq!(e.header("receipt-id"), Some("r1"));
    assert_eq!(&e.body[..], b"expected CONNECT, got SEND");
    let close = c.expect_close().await.expect("a close frame");
    assert_eq!(close.code, 1000);
    assert!(cx.metrics.encode().contains("reason=\"not connected\"} 1"));
}

#[tokio::test]
async fn a_bad_frame_after_connect_gets_an_error_and_nothing_after_it_runs() {
    let cx = context(&Config::for_tests());
    let mut c = Client::login(&cx, "ann").await;
    c.send(frame(
        Command::Subscribe,
        &[("destination", ROOM), ("receipt", "r9")],
    ));
    // Queued behind the bad frame: never handled.
    c.send(send_frame(ROOM, "after", &[]));
    let e = c.next_frame().await;
    assert_eq!(e.command, Command::Error);
    assert_eq!(
        e.header("message"),
        Some("missing header: SUBSCRIBE needs an id header")
    );
    assert_eq!(e.header("receipt-id"), Some("r9"));
    c.expect_close().await;
    assert_eq!(cx.metrics.messages_published.get(), 0);
    assert!(cx.metrics.encode().contains("reason=\"missing header\"} 1"));
}

#[tokio::test]
async fn a_bad_destination_and_a_bad_body_name_their_reason() {
    let cx = context(&Config::for_tests());
    let mut c = Client::login(&cx, "ann").await;
    c.send(send_frame("/queue/x", "hi", &[]));
    let e = c.next_frame().await;
    assert_eq!(
        e.header("message"),
        Some("bad destination: unknown destination \"/queue/x\"")
    );
    c.expect_close().await;

    let mut c = Client::login(&cx, "bob").await;
    c.send(send_frame(ROOM, "", &[]));
    let e = c.next_frame().await;
    assert_eq!(
        e.header("message"),
        Some("bad message: message content is empty")
    );
    c.expect_close().await;
}

#[tokio::test]
async fn a_commit_publishes_what_the_transaction_held_with_one_receipt() {
    let cx = context(&Config::for_tests());
    let mut c = Client::login(&cx, "ann").await;
    c.subscribe("s", ROOM, &[("x-presence", "false")]).await;
    c.send(frame(
        Command::Begin,
        &[("transaction", "t1"), ("receipt", "b")],
    ));
    c.send(send_frame(
        ROOM,
        "one",
        &[("transaction", "t1"), ("receipt", "1")],
    ));
    c.send(send_frame(
        ROOM,
        "two",
        &[("transaction", "t1"), ("receipt", "2")],
    ));
    // Held, not published: only the receipts come back.
    let (messages, receipts) = split(&c.frames(3).await);
    assert!(messages.is_empty());
    assert_eq!(receipts, ["b", "1", "2"]);
    assert_eq!(cx.metrics.messages_published.get(), 0);
    c.send(frame(
        Command::Commit,
        &[("transaction", "t1"), ("receipt", "c")],
    ));
    let (messages, receipts) = split(&c.frames(3).await);
    assert_eq!(messages, ["one", "two"]);
    assert_eq!(receipts, ["c"]);
    assert_eq!(cx.metrics.messages_published.get(), 2);
}

#[tokio::test]
async fn an_abort_drops_what_the_transaction_held() {
    let cx = context(&Config::for_tests());
    let mut c = Client::login(&cx, "ann").await;
    c.subscribe("s", ROOM, &[("x-presence", "false")]).await;
    c.send(frame(Command::Begin, &[("transaction", "t1")]));
    c.send(send_frame(ROOM, "dropped", &[("transaction", "t1")]));
    c.send(frame(
        Command::Abort,
        &[("transaction", "t1"), ("receipt", "a")],
    ));
    c.send(send_frame(ROOM, "kept", &[("receipt", "k")]));
    let (messages, receipts) = split(&c.frames(3).await);
    assert_eq!(messages, ["kept"]);
    assert_eq!(receipts, ["a", "k"]);
    let page = cx.services.history.read_last("lobby", 10).await.unwrap();
    assert_eq!(page.events.len(), 1);
    // The transaction is gone: committing it now is an error.
    c.send(frame(Command::Commit, &[("transaction", "t1")]));
    let e = c.next_frame().await;
    assert_eq!(
        e.header("message"),
        Some("unknown transaction: no transaction \"t1\"")
    );
    c.expect_close().await;
}

#[tokio::test]
async fn subscribing_with_x_since_offset_replays_what_was_missed_then_goes_live() {
    let cx = context(&Config::for_tests());
    for text in ["m1", "m2", "m3"] {
        publish(&cx, "lobby", text).await;
    }
    let epoch = epoch(&cx, "lobby").await;
    let mut c = Client::login(&cx, "ann").await;
    c.send(recover_from("1", &epoch));
    let frames = c.frames(3).await;
    let offsets: Vec<_> = frames.iter().filter_map(|f| f.header("x-offset")).collect();
    assert_eq!(offsets, ["2", "3"]);
    assert_eq!(
        split(&frames),
        (vec!["m2".into(), "m3".into()], vec!["r".into()])
    );
    assert_eq!(cx.metrics.replayed.get(), 2);
    publish(&cx, "lobby", "m4").await;
    let live = c.next_frame().await;
    assert_eq!(live.header("x-offset"), Some("4"));
    assert_eq!(content(&live), "m4");
}

#[tokio::test]
async fn recovery_from_another_epoch_gets_one_not_recovered_notice() {
    let cx = context(&Config::for_tests());
    publish(&cx, "lobby", "m1").await;
    let epoch = epoch(&cx, "lobby").await;
    let mut c = Client::login(&cx, "ann").await;
    c.send(recover_from("5", "not-this-one"));
    // Nothing of the old epoch is replayed: one notice, written before the RECEIPT.
    let [notice, receipt] = <[Frame; 2]>::try_from(c.frames(2).await).unwrap();
    assert_eq!(notice.command, Command::Message);
    assert_eq!(notice.header("subscription"), Some("s"));
    assert_eq!(notice.header("x-recovered"), Some("false"));
    assert_eq!(notice.header("x-offset"), Some("1"));
    assert_eq!(notice.header("x-epoch"), Some(epoch.as_str()));
    let body: serde_json::Value = serde_json::from_slice(&notice.body).unwrap();
    assert_eq!(body["type"], "SYSTEM");
    assert_eq!(receipt.header("receipt-id"), Some("r"));
    assert_eq!(cx.metrics.not_recovered.get(), 1);
    assert_eq!(cx.metrics.replayed.get(), 0);
    // Live from the room's current offset on.
    publish(&cx, "lobby", "m2").await;
    let live = c.next_frame().await;
    assert_eq!(live.header("x-offset"), Some("2"));
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_dropped_after_its_heart_beat_timeout() {
    let mut config = Config::for_tests();
    config.stomp_heartbeat = (0, 10_000);
    let cx = context(&config);
    let mut c = Client::open(&cx);
    // The client promises a beat every 4 s; the server allows 1.5 times the larger interval.
    c.send(frame(
        Command::Connect,
        &[("accept-version", "1.2"), ("heart-beat", "4000,0")],
    ));
    assert_eq!(c.next_frame().await.command, Command::Connected);
    let started = tokio::time::Instant::now();
    let mut session = c.session;
    assert!(
        tokio::time::timeout(Duration::from_secs(14), &mut session)
            .await
            .is_err(),
        "dropped before the timeout"
    );
    tokio::time::timeout(Duration::from_secs(2), session)
        .await
        .expect("still open after the timeout")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(15));
    assert_eq!(cx.metrics.heartbeat_timeouts.get(), 1);
    // Dropped without an ERROR or a close: the client is gone.
    assert!(c.from_server.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn no_connect_in_time_gets_a_connect_timeout_error() {
    let cx = context(&Config::for_tests());
    let mut c = Client::open(&cx);
    let e = c.next_frame().await;
    assert_eq!(
        e.header("message"),
        Some("connect timeout: no CONNECT frame in time")
    );
    c.expect_close().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_as_a_slow_consumer() {
    let mut config = Config::for_tests();
    config.outbound_queue = 4;
    let cx = context(&config);
    let mut slow = Client::login(&cx, "slow").await;
    slow.subscribe("s", ROOM, &[("x-presence", "false")]).await;
    let mut fast = Client::login(&cx, "fast").await;
    fast.subscribe("f", ROOM, &[("x-presence", "false")]).await;
    slow.stalled.store(true, Ordering::Release);
    // The fast reader keeps up with every message; the slow one's queue overflows.
    let mut got = Vec::new();
    for i in 0..20 {
        publish(&cx, "lobby", &format!("m{i}")).await;
        got.push(content(&fast.next_frame().await));
    }
    tokio::time::timeout(Duration::from_secs(5), slow.session)
        .await
        .expect("the slow consumer was not dropped")
        .unwrap();
    assert_eq!(cx.metrics.slow_consumers.get(), 1);
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn disconnect_is_receipted_then_the_session_closes_and_leaves() {
    let cx = context(&Config::for_tests());
    let mut c = Client::login(&cx, "ann").await;
    c.subscribe("s", ROOM, &[]).await;
    assert_eq!(
        cx.services.presence.members("lobby").await.unwrap().len(),
        1
    );
    let join = c.next_frame().await;
    let body: serde_json::Value = serde_json::from_slice(&join.body).unwrap();
    assert_eq!(body["type"], "JOIN");
    c.send(frame(Command::Disconnect, &[("receipt", "bye")]));
    let r = c.next_frame().await;
    assert_eq!(r.command, Command::Receipt);
    assert_eq!(r.header("receipt-id"), Some("bye"));
    let close = c.expect_close().await.expect("a close frame");
    assert_eq!(close.code, 1000);
    cx.tracker.close();
    cx.tracker.wait().await;
    assert!(
        cx.services
            .presence
            .members("lobby")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn draining_closes_a_session_with_the_restart_code() {
    let cx = context(&Config::for_tests());
    let c = Client::login(&cx, "ann").await;
    cx.drain.cancel();
    let close = c.expect_close().await.expect("a close frame");
    assert_eq!(close.code, super::CLOSE_RESTART);
}
