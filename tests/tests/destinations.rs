//! Configured destinations (`CHAT_ROOM_DESTINATIONS`, `CHAT_SEND_DESTINATIONS`) on two
//! instances clustered through a real redis-server: the layouts of Spring chat apps, aliases
//! of one room, and recovery and presence through an alias.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chat_tests::http::get_json;
use chat_tests::process::ServerProcess;
use chat_tests::redis::{RedisOpts, RedisServer};
use chat_tests::{Client, body, hs256_token, now_secs};
use chat_wire::stomp::Frame;

const QUIET: (&str, &str) = ("x-presence", "false");
/// How long a refused SEND may take to get its ERROR.
const WAIT: Duration = Duration::from_secs(5);

/// Redis and two instances on it, with these destination patterns.
struct Pair {
    a: ServerProcess,
    b: ServerProcess,
    _redis: RedisServer,
}

async fn pair(rooms: &str, sends: &str) -> Pair {
    pair_with(rooms, sends, &[]).await
}

/// As `pair`, with `more` environment.
async fn pair_with(rooms: &str, sends: &str, more: &[(&str, &str)]) -> Pair {
    let redis = RedisServer::start(RedisOpts::default());
    let url = redis.url();
    let mut env = vec![
        ("CHAT_REDIS_URL", url.as_str()),
        ("CHAT_HEARTBEAT_INTERVAL_MS", "200"),
        ("CHAT_SERVER_TTL_MS", "800"),
        ("CHAT_SEND_RATE", "0"),
        ("CHAT_ROOM_DESTINATIONS", rooms),
        ("CHAT_SEND_DESTINATIONS", sends),
    ];
    env.extend_from_slice(more);
    let a = ServerProcess::start("a", &env).await;
    let b = ServerProcess::start("b", &env).await;
    for p in [&a, &b] {
        p.wait_ready(Duration::from_secs(10)).await;
    }
    Pair {
        a,
        b,
        _redis: redis,
    }
}

/// The next `n` MESSAGEs of `c`: (subscription, destination) of each, sorted, and each body
/// checked by `check`.
async fn next_by_subscription(
    c: &mut Client,
    n: usize,
    check: impl Fn(&serde_json::Value),
) -> Vec<(String, String)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let m = c.next_message().await;
        let (d, e) = dest_and_body(&m);
        check(&e);
        got.push((m.header("subscription").unwrap_or_default().to_owned(), d));
    }
    got.sort();
    got
}

/// What a connection subscribed through both aliases of room x gets per event.
fn both_aliases() -> [(String, String); 2] {
    [
        ("s-0".to_owned(), "/topic/room/x".to_owned()),
        ("s-1".to_owned(), "/topic/chatroom/x".to_owned()),
    ]
}

/// A fresh connection to `p`'s instance a SENDs `body` to `dest` and gets an ERROR whose
/// message contains `reason`.
async fn refused(p: &Pair, dest: &str, body: &str, reason: &str) {
    let c = Client::login(&p.a.ws_url(), "refused").await;
    refused_to(c, dest, body, reason).await;
}

/// `c` SENDs `body` to `dest` and gets an ERROR whose message contains `reason`.
async fn refused_to(mut c: Client, dest: &str, body: &str, reason: &str) {
    let err = c
        .try_send(dest, body, WAIT)
        .await
        .unwrap_err()
        .expect("an ERROR");
    let message = err.header("message").unwrap_or_default();
    assert!(message.contains(reason), "{dest} {body}: {err:?}");
}

/// A MESSAGE's destination header and its JSON body.
fn dest_and_body(f: &Frame) -> (String, serde_json::Value) {
    (
        f.header("destination").unwrap_or_default().to_owned(),
        body(f),
    )
}

/// Sends `body` to `send` from instance a; a subscriber of `sub` on instance b gets it, with
/// its own destination, in room `room`.
async fn crosses(p: &Pair, sub: &str, send: &str, msg: &str, room: &str) -> serde_json::Value {
    let mut reader = Client::login(&p.b.ws_url(), "reader").await;
    reader.subscribe("s", sub, &[QUIET]).await;
    let mut ann = Client::login(&p.a.ws_url(), "ann").await;
    ann.send(send, msg).await;
    let (dest, event) = dest_and_body(&reader.next_message().await);
    assert_eq!(dest, sub);
    assert_eq!(
        (event["roomId"].as_str(), event["sender"]["id"].as_str()),
        (Some(room), Some("ann")),
        "{event}"
    );
    event
}

#[tokio::test]
async fn a_room_named_in_the_body_field_reaches_its_chatroom_subscribers() {
    let p = pair("/topic/chatroom/{room}", "/app/chat.sendMessage?chatRoomId").await;
    let dto = r#"{"chatRoomId":"7","senderNickname":"ann","content":"hi","messageType":"TALK"}"#;
    let e = crosses(&p, "/topic/chatroom/7", "/app/chat.sendMessage", dto, "7").await;
    assert_eq!(
        (e["chatRoomId"].as_str(), e["messageType"].as_str()),
        (Some("7"), Some("TALK"))
    );
    // A numeric room id names the same room.
    let e = crosses(
        &p,
        "/topic/chatroom/8",
        "/app/chat.sendMessage",
        r#"{"chatRoomId":8,"content":"n"}"#,
        "8",
    )
    .await;
    assert_eq!(e["chatRoomId"], 8);
    refused(
        &p,
        "/app/chat.sendMessage",
        r#"{"content":"where?"}"#,
        "bad destination",
    )
    .await;
    refused(
        &p,
        "/app/chat.sendMessage",
        r#"{"chatRoomId":"a/b","content":"x"}"#,
        "invalid room id",
    )
    .await;
}

#[tokio::test]
async fn a_pub_path_reaches_the_sub_path_subscribers_of_its_room() {
    let p = pair("/sub/chat/{room}", "/pub/chat/message/{room}").await;
    let e = crosses(
        &p,
        "/sub/chat/r1",
        "/pub/chat/message/r1",
        r#"{"roomId":"ignored","sender":"ann","message":"hello","content":"hello"}"#,
        "r1",
    )
    .await;
    assert_eq!(
        (e["message"].as_str(), e["content"].as_str()),
        (Some("hello"), Some("hello"))
    );
    // The defaults are gone: this instance knows only its configured layout.
    refused(&p, "/app/room/r1", "x", "unknown destination").await;
}

#[tokio::test]
async fn one_fixed_public_room_takes_the_send_mapping_of_its_app() {
    let p = pair("/topic/public", "/app/chat.sendMessage=public").await;
    crosses(
        &p,
        "/topic/public",
        "/app/chat.sendMessage",
        r#"{"type":"CHAT","content":"hi all","sender":"ann"}"#,
        "public",
    )
    .await;
    // Sending to the topic itself works too, and the REST API knows the room by its id.
    let mut c = Client::login(&p.b.ws_url(), "c").await;
    c.send("/topic/public", "direct to the topic").await;
    let h = get_json(p.a.url("/api/rooms/public/messages")).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 2, "{h}");
}

#[tokio::test]
async fn a_send_path_with_a_suffix_reaches_the_topic_room_subscribers() {
    let p = pair("/topic/room/{room}", "/app/room/{room}/message").await;
    crosses(&p, "/topic/room/r2", "/app/room/r2/message", "plain", "r2").await;
    refused(&p, "/app/room/r2/other", "x", "bad destination").await;
}

#[tokio::test]
async fn aliases_of_one_room_each_get_their_own_destination_in_presence_and_recovery() {
    let p = pair(
        "/topic/room/{room},/topic/chatroom/{room}",
        "/app/room/{room},/app/chat.sendMessage?chatRoomId",
    )
    .await;
    // One connection on b subscribed through both aliases; another on a through one.
    let mut both = Client::login(&p.b.ws_url(), "both").await;
    both.subscribe("s-0", "/topic/room/x", &[QUIET]).await;
    both.subscribe("s-1", "/topic/chatroom/x", &[QUIET]).await;
    let mut one = Client::login(&p.a.ws_url(), "one").await;
    one.subscribe("s-0", "/topic/chatroom/x", &[QUIET]).await;
    // Presence through an alias: a JOIN to every subscription, each with its own destination.
    let mut joiner = Client::login(&p.a.ws_url(), "joiner").await;
    joiner.subscribe("j", "/topic/chatroom/x", &[]).await;
    let joins = next_by_subscription(&mut both, 2, |e| {
        assert_eq!(
            (e["type"].as_str(), e["sender"]["id"].as_str()),
            (Some("JOIN"), Some("joiner"))
        );
    })
    .await;
    assert_eq!(joins, both_aliases());
    let (d, e) = dest_and_body(&one.next_message().await);
    assert_eq!(
        (d.as_str(), e["type"].as_str()),
        ("/topic/chatroom/x", Some("JOIN"))
    );
    let members = get_json(p.b.url("/api/rooms/x/presence")).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
    assert_eq!(members["members"][0]["userId"], "joiner", "{members}");

    let mut ann = Client::login(&p.a.ws_url(), "ann").await;
    ann.send("/app/room/x", "via the path").await;
    ann.send(
        "/app/chat.sendMessage",
        r#"{"chatRoomId":"x","content":"via the body"}"#,
    )
    .await;
    for content in ["via the path", "via the body"] {
        let got = next_by_subscription(&mut both, 2, |e| assert_eq!(e["content"], content)).await;
        assert_eq!(got, both_aliases());
        let (d, e) = dest_and_body(&one.next_message().await);
        assert_eq!(
            (d.as_str(), e["content"].as_str()),
            ("/topic/chatroom/x", Some(content))
        );
    }

    // Recovery through an alias: what was missed, each with that alias.
    let h = get_json(p.b.url("/api/rooms/x/messages")).await;
    let epoch = h["messages"][0]["epoch"].as_str().unwrap().to_owned();
    let mut back = Client::login(&p.b.ws_url(), "back").await;
    back.subscribe(
        "r",
        "/topic/chatroom/x",
        &[("x-since-offset", "1"), ("x-epoch", &epoch), QUIET],
    )
    .await;
    for content in ["via the path", "via the body"] {
        let (d, e) = dest_and_body(&back.next_message().await);
        assert_eq!(
            (d.as_str(), e["content"].as_str()),
            ("/topic/chatroom/x", Some(content))
        );
    }
    // A position history cannot serve gets the notice, on that alias too.
    let mut lost = Client::login(&p.a.ws_url(), "lost").await;
    lost.subscribe(
        "r",
        "/topic/chatroom/x",
        &[("x-since-offset", "1"), ("x-epoch", "not-it"), QUIET],
    )
    .await;
    let m = lost.next_message().await;
    assert_eq!(
        (m.header("destination"), m.header("x-recovered")),
        (Some("/topic/chatroom/x"), Some("false"))
    );
}

#[tokio::test]
async fn a_tokens_rooms_claim_holds_through_every_alias_and_the_body_field() {
    const SECRET: &str = "a-secret-of-enough-length";
    let p = pair_with(
        "/topic/room/{room},/topic/chatroom/{room}",
        "/app/chat.sendMessage?chatRoomId",
        &[("CHAT_JWT_SECRET", SECRET)],
    )
    .await;
    let token = hs256_token(
        SECRET,
        &serde_json::json!({"sub": "t", "exp": now_secs() + 60, "rooms": ["team-*"]}),
    );
    let auth = format!("Bearer {token}");
    let login = || async {
        Client::connect(&p.b.ws_url(), &[("Authorization", auth.as_str())])
            .await
            .0
    };
    let mut c = login().await;
    c.subscribe("0", "/topic/chatroom/team-1", &[QUIET]).await;
    c.send(
        "/app/chat.sendMessage",
        r#"{"chatRoomId":"team-1","content":"ours"}"#,
    )
    .await;
    let (d, e) = dest_and_body(&c.next_message().await);
    assert_eq!(
        (d.as_str(), e["content"].as_str()),
        ("/topic/chatroom/team-1", Some("ours"))
    );
    refused_to(
        login().await,
        "/app/chat.sendMessage",
        r#"{"chatRoomId":"other","content":"theirs"}"#,
        "forbidden",
    )
    .await;
    refused_to(login().await, "/topic/chatroom/other", "x", "forbidden").await;
    let mut sub = login().await;
    sub.send_frame(
        &Frame::new(chat_wire::stomp::Command::Subscribe)
            .with_header("id", "0")
            .with_header("destination", "/topic/room/other"),
    )
    .await;
    let err = sub.expect_error().await;
    assert_eq!(
        err.header("message").map(|m| m.starts_with("forbidden")),
        Some(true),
        "{err:?}"
    );
}
