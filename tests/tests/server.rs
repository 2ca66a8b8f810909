//! Black-box tests of one instance: real WebSocket, real STOMP frames, server on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chat_server::Config;
use chat_server::config::JwtKey;
use chat_tests::http::{get, get_json, get_text, post_json};
use chat_tests::{Client, TestServer, body, hs256_token, now_secs};
use chat_wire::stomp::{Command, Frame};
use serde_json::json;

const ROOM: &str = "/topic/room/lobby";
const SEND_ROOM: &str = "/app/room/lobby";

#[tokio::test]
async fn the_handshake_names_the_chosen_subprotocol_and_connected_has_every_header() {
    let s = TestServer::memory().await;
    let mut c = Client::open(&s.ws_url()).await;
    assert_eq!(c.protocol.as_deref(), Some("v12.stomp"));
    let f = c
        .stomp_connect(&[("login", "ann"), ("heart-beat", "0,0")])
        .await;
    assert_eq!(f.command, Command::Connected);
    assert_eq!(f.header("version"), Some("1.2"));
    assert_eq!(f.header("user-name"), Some("ann"));
    assert_eq!(f.header("x-server-id"), Some("test-server"));
    assert!(
        f.header("session")
            .is_some_and(|s| s.starts_with("test-server."))
    );
    assert!(
        f.header("server")
            .is_some_and(|s| s.starts_with("chatcluster/"))
    );
    assert_eq!(f.header("heart-beat"), Some("10000,10000"));

    let mut bare = Client::open_with(&s.ws_url(), &[], None).await.unwrap();
    assert_eq!(bare.protocol, None);
    assert_eq!(
        bare.stomp_connect(&[("login", "bob")]).await.command,
        Command::Connected
    );
    let v11 = Client::open_with(&s.ws_url(), &["v11.stomp"], None)
        .await
        .unwrap();
    assert_eq!(v11.protocol.as_deref(), Some("v11.stomp"));
}

#[tokio::test]
async fn a_message_reaches_every_subscriber_with_the_contract_headers_and_body() {
    let s = TestServer::memory().await;
    let mut ann = Client::login(&s.ws_url(), "ann").await;
    let mut bob = Client::login(&s.ws_url(), "bob").await;
    ann.subscribe("a0", ROOM, &[("x-presence", "false")]).await;
    bob.subscribe("b0", ROOM, &[("x-presence", "false")]).await;
    ann.send_with(
        SEND_ROOM,
        r#"{"content":"hello","type":"CHAT"}"#,
        &[("x-sent-at", "123")],
    )
    .await;
    for (c, sub) in [(&mut ann, "a0"), (&mut bob, "b0")] {
        let m = c.next_message().await;
        assert_eq!(m.header("destination"), Some(ROOM));
        assert_eq!(m.header("subscription"), Some(sub));
        assert_eq!(m.header("content-type"), Some("application/json"));
        assert_eq!(m.header("x-offset"), Some("1"));
        assert_eq!(
            m.header("x-sent-at"),
            Some("123"),
            "user headers are carried"
        );
        let b = body(&m);
        assert_eq!(m.header("message-id"), b["id"].as_str());
        assert_eq!(m.header("x-epoch"), b["epoch"].as_str());
        assert_eq!(b["roomId"], "lobby");
        assert_eq!(b["offset"], 1);
        assert_eq!(b["type"], "CHAT");
        assert_eq!(b["content"], "hello");
        assert_eq!(b["sender"], json!({"id": "ann", "name": "ann"}));
        assert_eq!(b["serverId"], "test-server");
        assert!(b["sentAt"].as_str().unwrap().ends_with('Z'));
    }
    bob.send(SEND_ROOM, "plain text").await;
    assert_eq!(ann.next_event().await["content"], "plain text");
    assert_eq!(bob.next_event().await["offset"], 2);
}

#[tokio::test]
async fn the_sender_comes_from_the_identity_never_the_body() {
    let s = TestServer::memory().await;
    let mut ann = Client::login(&s.ws_url(), "ann").await;
    ann.subscribe("a", ROOM, &[("x-presence", "false")]).await;
    let mut mallory = Client::login(&s.ws_url(), "mallory").await;
    mallory
        .send(
            SEND_ROOM,
            r#"{"content":"hi","sender":{"id":"ann","name":"ann"},"offset":99,"id":"x"}"#,
        )
        .await;
    let e = ann.next_event().await;
    assert_eq!(e["sender"], json!({"id": "mallory", "name": "mallory"}));
    assert_eq!(e["offset"], 1);
    assert_ne!(e["id"], "x");
    assert_eq!(e["content"], "hi");
}

/// A Spring front-end's message DTO, as such apps send it.
const SPRING_DTO: &str =
    r#"{"chatRoomId":"7","senderNickname":"ann","content":"hi","messageType":"TALK"}"#;

/// The event carries the DTO's own fields beside the envelope's, and none of the body's
/// envelope names.
fn assert_spring_fields(e: &serde_json::Value) {
    assert_eq!(
        (
            e["content"].as_str(),
            e["chatRoomId"].as_str(),
            e["senderNickname"].as_str(),
            e["messageType"].as_str(),
            e["nested"]["list"][1]["ü"].as_str(),
            e["type"].as_str(),
        ),
        (
            Some("hi"),
            Some("7"),
            Some("ann"),
            Some("TALK"),
            Some("😀"),
            Some("CHAT")
        ),
        "{e}"
    );
    assert_eq!(e["sender"]["id"], "ann", "{e}");
    assert_ne!(e["id"], "x", "{e}");
}

#[tokio::test]
async fn a_spring_dto_body_keeps_its_fields_live_in_recovery_history_and_rest() {
    let s = TestServer::memory().await;
    let mut live = Client::login(&s.ws_url(), "live").await;
    live.subscribe("0", "/topic/room/7", &[("x-presence", "false")])
        .await;
    let mut ann = Client::login(&s.ws_url(), "ann").await;
    ann.send("/app/room/7", SPRING_DTO).await;
    let with_extras = r#"{"chatRoomId":"7","senderNickname":"ann","content":"hi","messageType":"TALK",
        "nested":{"list":[1,{"ü":"😀"}]},"sender":{"id":"evil"},"offset":99,"id":"x"}"#;
    ann.send("/topic/room/7", with_extras).await;
    let first = live.next_event().await;
    assert_eq!(first["chatRoomId"], "7");
    assert_eq!(first["messageType"], "TALK");
    let second = live.next_event().await;
    assert_spring_fields(&second);
    assert_eq!(second["offset"], 2);

    let mut back = Client::login(&s.ws_url(), "back").await;
    let epoch = first["epoch"].as_str().unwrap();
    back.subscribe(
        "0",
        "/topic/room/7",
        &[
            ("x-since-offset", "1"),
            ("x-epoch", epoch),
            ("x-presence", "false"),
        ],
    )
    .await;
    assert_spring_fields(&back.next_event().await);
    let mut hist = Client::login(&s.ws_url(), "hist").await;
    hist.subscribe(
        "0",
        "/topic/room/7",
        &[("x-history", "1"), ("x-presence", "false")],
    )
    .await;
    assert_spring_fields(&hist.next_event().await);

    let h = get_json(s.url("/api/rooms/7/messages?since=1")).await;
    assert_spring_fields(&h["messages"][0]);
    let r = post_json(
        s.url("/api/rooms/7/messages"),
        None,
        &json!({"content": "rest", "messageType": "TALK", "roomId": "other"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let stored: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (&stored["messageType"], &stored["roomId"]),
        (&json!("TALK"), &json!("7"))
    );
    assert_eq!(live.next_event().await["messageType"], "TALK");
}

#[tokio::test]
async fn several_frames_in_one_websocket_message_and_one_frame_split_over_three() {
    let s = TestServer::memory().await;
    let mut c = Client::open(&s.ws_url()).await;
    c.send_raw(b"CONNECT\naccept-version:1.2\nlogin:ann\n\n\0\nSUBSCRIBE\nid:0\ndestination:/topic/room/lobby\nx-presence:false\n\n\0SEND\ndestination:/app/room/lobby\n\nfirst\0")
        .await;
    assert_eq!(c.next_frame().await.unwrap().command, Command::Connected);
    assert_eq!(c.next_event().await["content"], "first");
    c.send_raw(b"SEND\ndestin").await;
    c.send_raw(b"ation:/app/room/lobby\nreceipt:r9\n\nsec")
        .await;
    c.send_raw(b"ond\0").await;
    assert_eq!(
        c.next_frame().await.unwrap().header("receipt-id"),
        Some("r9")
    );
    assert_eq!(c.next_event().await["content"], "second");
}

#[tokio::test]
async fn every_frame_with_a_receipt_header_gets_its_receipt() {
    let s = TestServer::memory().await;
    let mut c = Client::login(&s.ws_url(), "ann").await;
    c.subscribe("0", ROOM, &[]).await;
    c.send(SEND_ROOM, "x").await;
    c.send_frame(
        &Frame::new(Command::Ack)
            .with_header("id", "m1")
            .with_header("receipt", "ack"),
    )
    .await;
    c.wait_receipt("ack").await;
    c.send_frame(
        &Frame::new(Command::Nack)
            .with_header("id", "m1")
            .with_header("receipt", "nack"),
    )
    .await;
    c.wait_receipt("nack").await;
    c.unsubscribe("0").await;
    c.disconnect().await;
}

#[tokio::test]
async fn a_transaction_publishes_at_commit_and_nothing_at_abort() {
    let s = TestServer::memory().await;
    let mut c = Client::login(&s.ws_url(), "ann").await;
    c.subscribe("0", ROOM, &[("x-presence", "false")]).await;
    let send = |tx: &str, text: &str| {
        Frame::new(Command::Send)
            .with_header("destination", SEND_ROOM)
            .with_header("transaction", tx)
            .with_body(text.to_owned())
    };
    c.send_frame(&Frame::new(Command::Begin).with_header("transaction", "t1"))
        .await;
    c.send_frame(&send("t1", "one")).await;
    c.send_frame(&send("t1", "two")).await;
    c.expect_quiet(Duration::from_millis(200)).await;
    c.send_frame(
        &Frame::new(Command::Commit)
            .with_header("transaction", "t1")
            .with_header("receipt", "c"),
    )
    .await;
    c.wait_receipt("c").await;
    assert_eq!(c.next_event().await["content"], "one");
    assert_eq!(c.next_event().await["content"], "two");
    c.send_frame(&Frame::new(Command::Begin).with_header("transaction", "t2"))
        .await;
    c.send_frame(&send("t2", "never")).await;
    c.send_frame(
        &Frame::new(Command::Abort)
            .with_header("transaction", "t2")
            .with_header("receipt", "a"),
    )
    .await;
    c.wait_receipt("a").await;
    c.expect_quiet(Duration::from_millis(200)).await;
    c.send_frame(&Frame::new(Command::Commit).with_header("transaction", "t2"))
        .await;
    assert!(error_message(&mut c).await.contains("unknown transaction"));
}

#[tokio::test]
async fn join_and_leave_are_room_events_and_presence_follows_them() {
    let s = TestServer::memory().await;
    let mut ann = Client::login(&s.ws_url(), "ann").await;
    ann.subscribe("0", ROOM, &[]).await;
    let own = ann.next_event().await;
    assert_eq!(
        (own["type"].as_str(), own["sender"]["id"].as_str()),
        (Some("JOIN"), Some("ann"))
    );
    let bob = {
        let mut bob = Client::login(&s.ws_url(), "bob").await;
        bob.subscribe("0", ROOM, &[]).await;
        let j = ann.next_event().await;
        assert_eq!(
            (j["type"].as_str(), j["sender"]["id"].as_str()),
            (Some("JOIN"), Some("bob"))
        );
        let p = get_json(s.url("/api/rooms/lobby/presence")).await;
        let mut ids: Vec<_> = p["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["userId"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        assert_eq!(ids, ["ann", "bob"]);
        assert_eq!(p["members"][0]["serverId"], "test-server");
        bob
    };
    drop(bob);
    let l = ann.next_event().await;
    assert_eq!(
        (l["type"].as_str(), l["sender"]["id"].as_str()),
        (Some("LEAVE"), Some("bob"))
    );
    let p = get_json(s.url("/api/rooms/lobby/presence")).await;
    assert_eq!(p["members"].as_array().unwrap().len(), 1);
    ann.unsubscribe("0").await;
    let p = get_json(s.url("/api/rooms/lobby/presence")).await;
    assert!(p["members"].as_array().unwrap().is_empty());
}

/// Subscribes without presence, reads the room's epoch and last offset from the REST API.
async fn room_position(s: &TestServer, room: &str) -> (String, u64) {
    let v = get_json(s.url(&format!("/api/rooms/{room}"))).await;
    (
        v["epoch"].as_str().unwrap().to_owned(),
        v["lastOffset"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn recovery_replays_exactly_the_gap_then_goes_live() {
    let s = TestServer::memory().await;
    let mut pub_ = Client::login(&s.ws_url(), "pub").await;
    for i in 1..=3 {
        pub_.send(SEND_ROOM, &format!("m{i}")).await;
    }
    let (epoch, last) = room_position(&s, "lobby").await;
    assert_eq!(last, 3);
    for i in 4..=6 {
        pub_.send(SEND_ROOM, &format!("m{i}")).await;
    }
    let mut back = Client::login(&s.ws_url(), "back").await;
    back.subscribe(
        "0",
        ROOM,
        &[
            ("x-since-offset", "3"),
            ("x-epoch", &epoch),
            ("x-presence", "false"),
        ],
    )
    .await;
    pub_.send(SEND_ROOM, "m7").await;
    let got: Vec<(u64, String)> = futures_collect(&mut back, 4).await;
    assert_eq!(
        got,
        (4..=7).map(|i| (i, format!("m{i}"))).collect::<Vec<_>>()
    );
    back.expect_quiet(Duration::from_millis(200)).await;
}

async fn futures_collect(c: &mut Client, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let e = c.next_event().await;
        out.push((
            e["offset"].as_u64().unwrap(),
            e["content"].as_str().unwrap().to_owned(),
        ));
    }
    out
}

#[tokio::test]
async fn recovery_with_an_old_epoch_replays_nothing_and_says_so() {
    let s = TestServer::memory().await;
    let mut pub_ = Client::login(&s.ws_url(), "pub").await;
    pub_.send(SEND_ROOM, "m1").await;
    pub_.send(SEND_ROOM, "m2").await;
    let mut back = Client::login(&s.ws_url(), "back").await;
    back.subscribe(
        "0",
        ROOM,
        &[
            ("x-since-offset", "1"),
            ("x-epoch", "not-the-epoch"),
            ("x-presence", "false"),
        ],
    )
    .await;
    let m = back.next_message().await;
    assert_eq!(m.header("x-recovered"), Some("false"));
    assert_eq!(m.header("x-offset"), Some("2"));
    let (epoch, _) = room_position(&s, "lobby").await;
    assert_eq!(m.header("x-epoch"), Some(epoch.as_str()));
    assert_eq!(body(&m)["type"], "SYSTEM");
    pub_.send(SEND_ROOM, "m3").await;
    let live = back.next_event().await;
    assert_eq!(
        (live["offset"].as_u64(), live["content"].as_str()),
        (Some(3), Some("m3"))
    );
}

#[tokio::test]
async fn recovery_past_the_reach_of_history_replays_nothing_and_says_so() {
    let mut config = Config::for_tests();
    config.history_max_len = 5;
    let s = TestServer::start(config).await;
    let mut pub_ = Client::login(&s.ws_url(), "pub").await;
    pub_.send(SEND_ROOM, "m1").await;
    let (epoch, _) = room_position(&s, "lobby").await;
    for i in 2..=10 {
        pub_.send(SEND_ROOM, &format!("m{i}")).await;
    }
    let mut back = Client::login(&s.ws_url(), "back").await;
    back.subscribe(
        "0",
        ROOM,
        &[
            ("x-since-offset", "1"),
            ("x-epoch", &epoch),
            ("x-presence", "false"),
        ],
    )
    .await;
    let m = back.next_message().await;
    assert_eq!(
        m.header("x-recovered"),
        Some("false"),
        "offsets 2..5 are gone: nothing partial"
    );
    back.expect_quiet(Duration::from_millis(200)).await;
    // From 5 on the history still reaches: recovery works.
    let mut ok = Client::login(&s.ws_url(), "ok").await;
    ok.subscribe(
        "0",
        ROOM,
        &[
            ("x-since-offset", "5"),
            ("x-epoch", &epoch),
            ("x-presence", "false"),
        ],
    )
    .await;
    assert_eq!(
        futures_collect(&mut ok, 5).await.first().map(|x| x.0),
        Some(6)
    );
}

#[tokio::test]
async fn x_history_gives_the_last_k_messages_then_live() {
    let s = TestServer::memory().await;
    let mut pub_ = Client::login(&s.ws_url(), "pub").await;
    for i in 1..=5 {
        pub_.send(SEND_ROOM, &format!("m{i}")).await;
    }
    let mut c = Client::login(&s.ws_url(), "c").await;
    c.subscribe("0", ROOM, &[("x-history", "2"), ("x-presence", "false")])
        .await;
    pub_.send(SEND_ROOM, "m6").await;
    assert_eq!(
        futures_collect(&mut c, 3).await,
        vec![(4, "m4".into()), (5, "m5".into()), (6, "m6".into())]
    );
}

#[tokio::test]
async fn direct_messages_reach_every_session_of_the_user_only() {
    let s = TestServer::memory().await;
    let mut bob1 = Client::login(&s.ws_url(), "bob").await;
    let mut bob2 = Client::login(&s.ws_url(), "bob").await;
    let mut eve = Client::login(&s.ws_url(), "eve").await;
    for c in [&mut bob1, &mut bob2, &mut eve] {
        c.subscribe("dm", "/user/queue/messages", &[]).await;
    }
    let mut ann = Client::login(&s.ws_url(), "ann").await;
    ann.send_with(
        "/app/user/bob",
        r#"{"content":"psst","senderNickname":"ann","to":"eve"}"#,
        &[("x-trace", "t1")],
    )
    .await;
    for c in [&mut bob1, &mut bob2] {
        let m = c.next_message().await;
        assert_eq!(m.header("destination"), Some("/user/queue/messages"));
        assert_eq!(m.header("subscription"), Some("dm"));
        assert_eq!(m.header("x-trace"), Some("t1"));
        let b = body(&m);
        assert_eq!(
            (
                b["content"].as_str(),
                b["sender"]["id"].as_str(),
                b["to"].as_str()
            ),
            (Some("psst"), Some("ann"), Some("bob"))
        );
        assert_eq!(b["senderNickname"], "ann");
    }
    eve.expect_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn heart_beats_are_sent_as_negotiated_and_a_silent_client_is_dropped() {
    let mut config = Config::for_tests();
    config.stomp_heartbeat = (100, 100);
    let s = TestServer::start(config).await;
    // The client wants a beat every 100 ms and promises nothing.
    let (mut listener, f) =
        Client::connect(&s.ws_url(), &[("login", "l"), ("heart-beat", "0,100")]).await;
    assert_eq!(f.header("heart-beat"), Some("100,100"));
    listener.expect_quiet(Duration::from_millis(650)).await;
    assert!(
        listener.heartbeats >= 4,
        "got {} heart-beats in 650 ms",
        listener.heartbeats
    );
    // This one promises a beat every 100 ms, then stays silent.
    let (mut silent, _) =
        Client::connect(&s.ws_url(), &[("login", "s"), ("heart-beat", "100,0")]).await;
    let started = std::time::Instant::now();
    silent.expect_closed().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "dropped after {:?}",
        started.elapsed()
    );
    // And one that keeps beating stays.
    let (mut alive, _) =
        Client::connect(&s.ws_url(), &[("login", "a"), ("heart-beat", "100,0")]).await;
    for _ in 0..8 {
        alive.send_raw(b"\n").await;
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    alive.subscribe("0", ROOM, &[]).await;
}

const SECRET: &str = "test-secret-with-enough-bytes";

async fn jwt_server() -> TestServer {
    let mut config = Config::for_tests();
    config.jwt_key = Some(JwtKey::Hs256Secret(SECRET.into()));
    config.allow_anonymous = false;
    TestServer::start(config).await
}

async fn connect_error(s: &TestServer, headers: &[(&str, &str)]) -> String {
    let mut c = Client::open(&s.ws_url()).await;
    let f = c.stomp_connect(headers).await;
    assert_eq!(f.command, Command::Error, "{f:?}");
    f.header("message").unwrap().to_owned() + ": " + std::str::from_utf8(&f.body).unwrap()
}

#[tokio::test]
async fn a_valid_jwt_is_accepted_from_header_passcode_or_query() {
    let s = jwt_server().await;
    let t = hs256_token(
        SECRET,
        &json!({"sub": "u1", "name": "Ann", "exp": now_secs() + 60}),
    );
    let (_, f) = Client::connect(&s.ws_url(), &[("Authorization", &format!("Bearer {t}"))]).await;
    assert_eq!(f.header("user-name"), Some("Ann"));
    let (_, f) = Client::connect(&s.ws_url(), &[("login", "x"), ("passcode", &t)]).await;
    assert_eq!(f.header("x-user-id"), Some("u1"));
    let (_, f) = Client::connect(&format!("{}?access_token={t}", s.ws_url()), &[]).await;
    assert_eq!(f.header("x-user-id"), Some("u1"));
}

#[tokio::test]
async fn expired_forged_alg_none_and_mismatched_tokens_are_rejected() {
    let s = jwt_server().await;
    let expired = hs256_token(SECRET, &json!({"sub": "u1", "exp": now_secs() - 300}));
    assert!(
        connect_error(&s, &[("passcode", &expired)])
            .await
            .contains("expired")
    );
    let forged = hs256_token(
        "some-other-secret-value",
        &json!({"sub": "u1", "exp": now_secs() + 60}),
    );
    assert!(
        connect_error(&s, &[("passcode", &forged)])
            .await
            .contains("signature")
    );
    let b64 = |v: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    };
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"u1","exp":{}}}"#, now_secs() + 60))
    );
    assert!(
        connect_error(&s, &[("passcode", &none)])
            .await
            .contains("invalid token")
    );
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &json!({"sub": "u1", "exp": now_secs() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert!(
        connect_error(&s, &[("passcode", &hs384)])
            .await
            .contains("algorithm")
    );
    assert!(
        connect_error(&s, &[("login", "anon")])
            .await
            .contains("authentication required")
    );
}

#[tokio::test]
async fn a_rooms_claim_keeps_a_user_out_of_other_rooms() {
    let s = jwt_server().await;
    let t = hs256_token(
        SECRET,
        &json!({"sub": "u1", "rooms": ["lobby"], "exp": now_secs() + 60}),
    );
    let (mut c, _) = Client::connect(&s.ws_url(), &[("passcode", &t)]).await;
    c.subscribe("0", ROOM, &[]).await;
    c.send_frame(
        &Frame::new(Command::Subscribe)
            .with_header("id", "1")
            .with_header("destination", "/topic/room/secret"),
    )
    .await;
    assert!(error_message(&mut c).await.contains("forbidden"));
    let (mut c, _) = Client::connect(&s.ws_url(), &[("passcode", &t)]).await;
    c.send_frame(
        &Frame::new(Command::Send)
            .with_header("destination", "/app/room/secret")
            .with_body("x"),
    )
    .await;
    assert!(error_message(&mut c).await.contains("forbidden"));
}

/// The `message` header of the ERROR that `c` gets next.
async fn error_message(c: &mut Client) -> String {
    c.expect_error().await.header("message").unwrap().to_owned()
}

/// A bystander in the room, to show a misbehaving client affects only itself.
async fn bystander(s: &TestServer) -> (Client, Client) {
    let mut watcher = Client::login(&s.ws_url(), "watcher").await;
    watcher
        .subscribe("w", ROOM, &[("x-presence", "false")])
        .await;
    let poster = Client::login(&s.ws_url(), "poster").await;
    (watcher, poster)
}

async fn bystander_still_served(watcher: &mut Client, poster: &mut Client, text: &str) {
    poster.send(SEND_ROOM, text).await;
    assert_eq!(watcher.next_event().await["content"], text);
}

#[tokio::test]
async fn an_oversized_frame_gets_an_error_and_a_close_and_nobody_else_notices() {
    let mut config = Config::for_tests();
    config.max_frame_bytes = 4096;
    let s = TestServer::start(config).await;
    let (mut w, mut p) = bystander(&s).await;
    let mut big = Client::login(&s.ws_url(), "big").await;
    big.send_frame(
        &Frame::new(Command::Send)
            .with_header("destination", SEND_ROOM)
            .with_body(vec![b'x'; 5000]),
    )
    .await;
    assert!(error_message(&mut big).await.contains("malformed"));
    bystander_still_served(&mut w, &mut p, "after big").await;
}

#[tokio::test]
async fn too_many_subscriptions_get_an_error_and_a_close() {
    let mut config = Config::for_tests();
    config.max_subscriptions = 3;
    let s = TestServer::start(config).await;
    let (mut w, mut p) = bystander(&s).await;
    let mut c = Client::login(&s.ws_url(), "greedy").await;
    for i in 0..3 {
        c.subscribe(&i.to_string(), &format!("/topic/room/r{i}"), &[])
            .await;
    }
    c.send_frame(
        &Frame::new(Command::Subscribe)
            .with_header("id", "3")
            .with_header("destination", ROOM),
    )
    .await;
    assert!(
        error_message(&mut c)
            .await
            .contains("too many subscriptions")
    );
    bystander_still_served(&mut w, &mut p, "after greedy").await;
}

#[tokio::test]
async fn sending_faster_than_the_rate_limit_gets_an_error_and_a_close() {
    let mut config = Config::for_tests();
    config.send_rate = 5;
    let s = TestServer::start(config).await;
    let (mut w, _) = bystander(&s).await;
    let mut c = Client::login(&s.ws_url(), "spammer").await;
    for i in 0..20 {
        c.send_frame(
            &Frame::new(Command::Send)
                .with_header("destination", SEND_ROOM)
                .with_body(format!("spam{i}")),
        )
        .await;
    }
    assert!(error_message(&mut c).await.contains("rate limit"));
    // The bystander got the burst the limiter allowed (2 x rate), in order, and nothing more.
    for i in 0..10 {
        assert_eq!(w.next_event().await["content"], format!("spam{i}"));
    }
    let mut p = Client::login(&s.ws_url(), "poster").await;
    bystander_still_served(&mut w, &mut p, "after spam").await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_the_others_keep_up() {
    let mut config = Config::for_tests();
    config.outbound_queue = 16;
    config.send_rate = 0;
    let s = TestServer::start(config).await;
    let (mut w, mut p) = bystander(&s).await;
    // A raw socket that subscribes and then never reads.
    let mut slow = Client::login(&s.ws_url(), "slow").await;
    slow.subscribe("s", ROOM, &[("x-presence", "false")]).await;
    // Loopback sockets buffer megabytes: keep posting until the slow client's queue is full.
    let body = "y".repeat(32_000);
    let mut sent = 0;
    while !s
        .state
        .metrics
        .encode()
        .contains("chat_slow_consumers_total 1")
    {
        assert!(sent < 5000, "the slow consumer was never disconnected");
        p.send(SEND_ROOM, &body).await;
        let m = w.next_message().await;
        sent += 1;
        assert_eq!(
            m.header("x-offset"),
            Some(sent.to_string().as_str()),
            "the watcher misses nothing"
        );
    }
    assert!(
        slow.expect_closed_or_error().await,
        "the slow client is closed"
    );
    bystander_still_served(&mut w, &mut p, "after slow").await;
}

#[tokio::test]
async fn more_connections_than_the_limit_are_refused_with_503() {
    let mut config = Config::for_tests();
    config.max_connections = 2;
    let s = TestServer::start(config).await;
    let _a = Client::login(&s.ws_url(), "a").await;
    let _b = Client::login(&s.ws_url(), "b").await;
    let third = Client::open_with(&s.ws_url(), &["v12.stomp"], None).await;
    match third {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("third connection accepted"),
    }
}

#[tokio::test]
async fn bad_frames_get_an_error_naming_the_problem() {
    let s = TestServer::memory().await;
    let cases: &[(&[u8], &str)] = &[
        (b"SEND\ndestination:/app/room/lobby\n\nx\0", "not connected"),
        (b"FLY\n\n\0", "malformed"),
    ];
    for (raw, expect) in cases {
        let mut c = Client::open(&s.ws_url()).await;
        c.send_raw(raw).await;
        let e = c.expect_error().await;
        assert!(
            e.header("message").unwrap().contains(expect),
            "{raw:?}: {e:?}"
        );
    }
    let after_connect: &[(&[u8], &str)] = &[
        (b"CONNECT\naccept-version:1.2\n\n\0", "already connected"),
        (b"SEND\ndestination:/queue/x\n\nx\0", "bad destination"),
        (
            b"SEND\ndestination:/app/room/bad!room\n\nx\0",
            "bad destination",
        ),
        (b"SEND\n\nx\0", "missing header"),
        (
            b"SEND\ndestination:/app/room/a\n\n{\"content\":\0",
            "bad message",
        ),
        (
            b"SUBSCRIBE\nid:1\ndestination:/topic/room/a\nack:sometimes\n\n\0",
            "bad ack mode",
        ),
        (
            b"SUBSCRIBE\ndestination:/topic/room/a\n\n\0",
            "missing header",
        ),
        (
            b"SUBSCRIBE\nid:1\ndestination:/topic/room/a\nx-since-offset:abc\n\n\0",
            "bad header",
        ),
        (b"UNSUBSCRIBE\nid:nope\n\n\0", "unknown subscription"),
        (b"ACK\n\n\0", "missing header"),
        (b"MESSAGE\n\n\0", "unexpected frame"),
    ];
    for (raw, expect) in after_connect {
        let mut c = Client::login(&s.ws_url(), "x").await;
        c.send_raw(raw).await;
        let e = c.expect_error().await;
        assert!(
            e.header("message").unwrap().contains(expect),
            "{}: {e:?}",
            String::from_utf8_lossy(raw)
        );
    }
    let mut c = Client::login(&s.ws_url(), "dup").await;
    c.subscribe("1", ROOM, &[]).await;
    c.send_raw(b"SUBSCRIBE\nid:1\ndestination:/topic/room/b\n\n\0")
        .await;
    assert!(
        error_message(&mut c)
            .await
            .contains("duplicate subscription")
    );
}

#[tokio::test]
async fn the_rest_api_lists_creates_and_reads_rooms_with_json_errors() {
    let s = TestServer::memory().await;
    let http = reqwest::Client::new();
    let r = post_json(s.url("/api/rooms"), None, &json!({"id": "general"})).await;
    assert_eq!(r.status(), 201);
    let r = post_json(s.url("/api/rooms"), None, &json!({"id": "general"})).await;
    assert_eq!(r.status(), 409);
    let r = post_json(s.url("/api/rooms"), None, &json!({"id": "bad id"})).await;
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("room id")
    );
    let r = http
        .post(s.url("/api/rooms"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let rooms = get_json(s.url("/api/rooms")).await;
    assert_eq!(rooms["rooms"][0]["id"], "general");

    for i in 1..=3 {
        let r = post_json(
            s.url("/api/rooms/general/messages"),
            None,
            &json!({"content": format!("m{i}")}),
        )
        .await;
        assert_eq!(r.status(), 201);
    }
    let h = get_json(s.url("/api/rooms/general/messages?since=1&limit=1")).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    assert_eq!(h["messages"][0]["offset"], 2);
    assert_eq!(h["lastOffset"], 3);
    let h = get_json(s.url("/api/rooms/general/messages?limit=2")).await;
    assert_eq!(
        h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    for bad in ["since=x", "limit=0", "limit=100000", "since=-1", "what=1"] {
        let r = get(s.url(&format!("/api/rooms/general/messages?{bad}"))).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    }
    assert_eq!(get(s.url("/api/rooms/nope")).await.status(), 404);
    assert_eq!(get(s.url("/api/rooms/nope/messages")).await.status(), 404);
    let r = get(s.url("/no/such/thing")).await;
    assert_eq!(r.status(), 404);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    assert_eq!(
        http.delete(s.url("/api/rooms"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
}

#[tokio::test]
async fn rest_publish_needs_a_token_when_anonymous_is_off() {
    let s = jwt_server().await;
    let url = s.url("/api/rooms/lobby/messages");
    let body = json!({"content": "x"});
    let r = post_json(&url, None, &body).await;
    assert_eq!(r.status(), 401);
    let r = post_json(&url, Some("garbage"), &body).await;
    assert_eq!(r.status(), 401);
    let t = hs256_token(SECRET, &json!({"sub": "backend", "exp": now_secs() + 60}));
    let r = post_json(&url, Some(&t), &body).await;
    assert_eq!(r.status(), 201);
    let m: serde_json::Value = r.json().await.unwrap();
    assert_eq!(m["sender"]["id"], "backend");
}

#[tokio::test]
async fn health_readiness_metrics_and_the_chat_page_are_served() {
    let s = TestServer::memory().await;
    assert_eq!(get(s.url("/healthz")).await.status(), 200);
    assert_eq!(get(s.url("/readyz")).await.status(), 200);
    let m = get(s.url("/metrics")).await;
    assert!(
        m.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(m.text().await.unwrap().contains("chat_connections"));
    let page = get_text(s.url("/")).await;
    assert!(
        page.contains("<html") || page.contains("<!doctype html"),
        "{page}"
    );
    assert!(!page.contains("://cdn"), "the page needs no CDN");
}

#[tokio::test]
async fn draining_closes_clients_with_a_reconnect_code_and_refuses_new_ones() {
    let s = TestServer::memory().await;
    let mut c = Client::login(&s.ws_url(), "ann").await;
    c.subscribe("0", ROOM, &[]).await;
    let state = s.state.clone();
    let url = s.ws_url();
    let stop = tokio::spawn(s.stop());
    let close = c.expect_closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1012);
    assert!(!state.is_ready());
    assert!(Client::open_with(&url, &["v12.stomp"], None).await.is_err());
    stop.await.unwrap();
    assert!(
        state
            .services
            .presence
            .members("lobby")
            .await
            .unwrap()
            .is_empty(),
        "left presence on the way out"
    );
}

#[tokio::test]
async fn a_heart_beat_follows_the_last_write_so_the_client_never_waits_past_the_interval() {
    let mut config = Config::for_tests();
    config.stomp_heartbeat = (200, 0);
    let s = TestServer::start(config).await;
    let (mut c, _) = Client::connect(&s.ws_url(), &[("login", "l"), ("heart-beat", "0,200")]).await;
    c.subscribe("0", ROOM, &[("x-presence", "false")]).await;
    // Messages at odd moments, so writes fall just after the beat timer's ticks.
    let url = s.ws_url();
    let poster = tokio::spawn(async move {
        let mut p = Client::login(&url, "p").await;
        for i in 0..6 {
            tokio::time::sleep(Duration::from_millis(130)).await;
            p.send(SEND_ROOM, &format!("m{i}")).await;
        }
    });
    let longest = c.longest_silence(Duration::from_millis(1500)).await;
    poster.await.unwrap();
    assert!(
        longest <= Duration::from_millis(280),
        "silent for {longest:?} with a 200 ms promise"
    );
}
