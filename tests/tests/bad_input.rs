//! The bad-input battery: each case is a named test. A misbehaving client gets an ERROR that
//! names the problem and is closed; afterwards the server is healthy and a bystander in the
//! same room still gets every message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chat_server::Config;
use chat_tests::{Client, TestServer};
use chat_wire::stomp::Command;
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "/topic/room/lobby";
const SEND: &str = "/app/room/lobby";

/// What the offender does after (or instead of) a good CONNECT.
enum Act {
    /// Raw bytes on a fresh connection, without CONNECT first.
    Raw(Vec<u8>),
    /// Raw bytes after a good CONNECT.
    AfterConnect(Vec<u8>),
    /// A WebSocket message after a good CONNECT.
    Ws(Message),
}

fn config() -> Config {
    let mut c = Config::for_tests();
    c.max_frame_bytes = 8192;
    c.max_subscriptions = 4;
    c
}

/// Runs one case: the offender gets an ERROR whose `message` contains `expect`, then the close;
/// the bystander keeps receiving and the server stays healthy.
async fn case(act: Act, expect: &str) {
    let s = TestServer::start(config()).await;
    let mut watcher = Client::login(&s.ws_url(), "watcher").await;
    watcher
        .subscribe("w", ROOM, &[("x-presence", "false")])
        .await;
    let mut poster = Client::login(&s.ws_url(), "poster").await;
    poster.send(SEND, "before").await;
    assert_eq!(watcher.next_event().await["content"], "before");

    let mut bad = match &act {
        Act::Raw(_) => Client::open(&s.ws_url()).await,
        Act::AfterConnect(_) | Act::Ws(_) => Client::login(&s.ws_url(), "offender").await,
    };
    match act {
        Act::Raw(b) | Act::AfterConnect(b) => bad.send_raw(&b).await,
        Act::Ws(m) => bad.send_message(m).await,
    }
    let err = bad.expect_error().await;
    let message = err.header("message").unwrap_or_default().to_owned();
    assert!(
        message.contains(expect),
        "expected an ERROR about {expect:?}, got {message:?}: {err:?}"
    );

    poster.send(SEND, "after").await;
    assert_eq!(
        next_chat(&mut watcher).await["content"],
        "after",
        "the bystander is unaffected"
    );
    let health = reqwest::get(s.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

/// The next CHAT event (the offender's own JOIN and LEAVE are fine for a bystander to see).
async fn next_chat(c: &mut Client) -> serde_json::Value {
    loop {
        let e = c.next_event().await;
        if e["type"] == "CHAT" {
            return e;
        }
    }
}

fn frame(cmd: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{cmd}\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}:{v}\n").as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out.push(0);
    out
}

fn send(body: &[u8]) -> Vec<u8> {
    frame("SEND", &[("destination", SEND)], body)
}

macro_rules! battery {
    ($($name:ident: $act:expr => $expect:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                case($act, $expect).await;
            }
        )*
    };
}

battery! {
    send_before_connect: Act::Raw(send(b"hi")) => "not connected";
    subscribe_before_connect: Act::Raw(frame("SUBSCRIBE", &[("id", "0"), ("destination", ROOM)], b"")) => "not connected";
    a_second_connect: Act::AfterConnect(frame("CONNECT", &[("accept-version", "1.2")], b"")) => "already connected";
    an_unknown_command: Act::AfterConnect(b"LAUNCH\n\n\0".to_vec()) => "unknown command";
    a_lowercase_command: Act::AfterConnect(b"send\ndestination:/app/room/lobby\n\nx\0".to_vec()) => "unknown command";
    a_body_without_its_nul: Act::AfterConnect(b"SEND\ndestination:/app/room/lobby\ncontent-length:2\n\nabc\0".to_vec()) => "malformed";
    a_content_length_that_is_not_a_number: Act::AfterConnect(b"SEND\ndestination:/app/room/lobby\ncontent-length:ten\n\nx\0".to_vec()) => "malformed";
    a_negative_content_length: Act::AfterConnect(b"SEND\ndestination:/app/room/lobby\ncontent-length:-1\n\nx\0".to_vec()) => "malformed";
    a_content_length_beyond_the_frame_limit: Act::AfterConnect(b"SEND\ndestination:/app/room/lobby\ncontent-length:999999\n\n".to_vec()) => "malformed";
    invalid_utf8_in_a_header: Act::AfterConnect(b"SEND\ndestination:/app/room/\xff\xfe\n\nx\0".to_vec()) => "malformed";
    a_carriage_return_inside_a_header: Act::AfterConnect(b"SEND\ndesti\rnation:/app/room/lobby\n\nx\0".to_vec()) => "malformed";
    a_header_without_a_colon: Act::AfterConnect(b"SEND\ndestination\n\nx\0".to_vec()) => "malformed";
    an_unknown_escape_in_a_header: Act::AfterConnect(b"SEND\ndestination:/app/room/lob\\tby\n\nx\0".to_vec()) => "malformed";
    an_oversized_header_line: Act::AfterConnect(frame("SEND", &[("destination", SEND), ("x-big", &"h".repeat(9000))], b"x")) => "malformed";
    thousands_of_headers: Act::AfterConnect({
        let names: Vec<String> = (0..2000).map(|i| format!("h{i}")).collect();
        let mut hs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        hs.insert(0, ("destination", SEND));
        frame("SEND", &hs, b"x")
    }) => "malformed";
    an_oversized_body: Act::AfterConnect(send(&vec![b'x'; 9000])) => "malformed";
    a_frame_that_never_ends: Act::AfterConnect(vec![b'S'; 20_000]) => "malformed";
    a_subscription_id_used_twice: Act::AfterConnect([
        frame("SUBSCRIBE", &[("id", "1"), ("destination", ROOM)], b""),
        frame("SUBSCRIBE", &[("id", "1"), ("destination", "/topic/room/other")], b""),
    ].concat()) => "duplicate subscription";
    too_many_subscriptions: Act::AfterConnect((0..5).flat_map(|i| {
        frame("SUBSCRIBE", &[("id", &i.to_string()), ("destination", &format!("/topic/room/r{i}"))], b"")
    }).collect()) => "too many subscriptions";
    sending_to_an_unknown_destination: Act::AfterConnect(frame("SEND", &[("destination", "/queue/jobs")], b"x")) => "bad destination";
    subscribing_to_an_unknown_destination: Act::AfterConnect(frame("SUBSCRIBE", &[("id", "0"), ("destination", "/topic/everything")], b"")) => "bad destination";
    an_invalid_room_id: Act::AfterConnect(frame("SEND", &[("destination", "/app/room/no spaces")], b"x")) => "bad destination";
    a_room_id_too_long: Act::AfterConnect(frame("SUBSCRIBE", &[("id", "0"), ("destination", &format!("/topic/room/{}", "r".repeat(129)))], b"")) => "bad destination";
    json_nested_too_deep: Act::AfterConnect(send(format!("{{\"content\":{}1{}}}", "[".repeat(200), "]".repeat(200)).as_bytes())) => "bad message";
    a_brace_that_is_not_json: Act::AfterConnect(send(b"{not json at all")) => "bad message";
    json_claiming_a_server_event_type: Act::AfterConnect(send(br#"{"content":"x","type":"SYSTEM"}"#)) => "bad message";
    json_content_that_is_not_a_string: Act::AfterConnect(send(br#"{"content":{"a":1}}"#)) => "bad message";
    an_empty_message: Act::AfterConnect(send(b"")) => "bad message";
    a_binary_message_that_is_not_utf8: Act::Ws(Message::binary(send(&[0xc3, 0x28, 0xff]))) => "bad message";
    an_ack_without_an_id: Act::AfterConnect(frame("ACK", &[], b"")) => "missing header";
    begin_without_a_transaction_header: Act::AfterConnect(frame("BEGIN", &[], b"")) => "missing header";
    commit_of_an_unknown_transaction: Act::AfterConnect(frame("COMMIT", &[("transaction", "t9")], b"")) => "unknown transaction";
    the_same_transaction_begun_twice: Act::AfterConnect([
        frame("BEGIN", &[("transaction", "t1")], b""),
        frame("BEGIN", &[("transaction", "t1")], b""),
    ].concat()) => "transaction exists";
    unsubscribing_an_unknown_id: Act::AfterConnect(frame("UNSUBSCRIBE", &[("id", "nope")], b"")) => "unknown subscription";
    a_server_frame_from_a_client: Act::AfterConnect(frame("MESSAGE", &[("destination", ROOM)], b"x")) => "unexpected frame";
    a_bad_since_offset: Act::AfterConnect(frame("SUBSCRIBE", &[("id", "0"), ("destination", ROOM), ("x-since-offset", "-5")], b"")) => "bad header";
    an_unknown_ack_mode: Act::AfterConnect(frame("SUBSCRIBE", &[("id", "0"), ("destination", ROOM), ("ack", "never")], b"")) => "bad ack mode";
    a_malformed_heart_beat: Act::Raw(frame("CONNECT", &[("accept-version", "1.2"), ("heart-beat", "soon")], b"")) => "bad heart-beat";
    an_unsupported_version: Act::Raw(frame("CONNECT", &[("accept-version", "2.0")], b"")) => "unsupported version";
    a_login_that_is_not_a_valid_id: Act::Raw(frame("CONNECT", &[("accept-version", "1.2"), ("login", "bad login!")], b"")) => "authentication failed";
}

#[tokio::test]
async fn a_connection_that_never_sends_connect_is_dropped_and_others_carry_on() {
    // Half-open at the STOMP level: the WebSocket is open, nothing follows.
    let s = TestServer::start(config()).await;
    let mut idle = Client::open(&s.ws_url()).await;
    let started = std::time::Instant::now();
    let mut watcher = Client::login(&s.ws_url(), "watcher").await;
    watcher
        .subscribe("w", ROOM, &[("x-presence", "false")])
        .await;
    let e = idle
        .next_frame_within(Duration::from_secs(15))
        .await
        .unwrap()
        .expect("an ERROR frame");
    assert_eq!(e.command, Command::Error);
    assert!(
        e.header("message").unwrap().contains("connect timeout"),
        "{e:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "dropped after {:?}",
        started.elapsed()
    );
    let mut poster = Client::login(&s.ws_url(), "poster").await;
    poster.send(SEND, "after").await;
    assert_eq!(watcher.next_event().await["content"], "after");
}

#[tokio::test]
async fn a_ping_flood_is_answered_without_disturbing_the_room() {
    let s = TestServer::start(config()).await;
    let mut watcher = Client::login(&s.ws_url(), "watcher").await;
    watcher
        .subscribe("w", ROOM, &[("x-presence", "false")])
        .await;
    let mut flooder = Client::login(&s.ws_url(), "flooder").await;
    for _ in 0..5000 {
        flooder
            .send_message(Message::Ping(vec![1u8; 64].into()))
            .await;
    }
    let mut poster = Client::login(&s.ws_url(), "poster").await;
    poster.send(SEND, "through the flood").await;
    assert_eq!(watcher.next_event().await["content"], "through the flood");
    // The flooder itself is still a working client.
    flooder
        .subscribe("f", ROOM, &[("x-presence", "false")])
        .await;
    assert_eq!(reqwest::get(s.url("/healthz")).await.unwrap().status(), 200);
}

/// A REST request of a bad kind gets a 4xx with a JSON `{"error"}`, and chat goes on.
async fn rest_case(
    method: reqwest::Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    status: u16,
) {
    let s = TestServer::start(config()).await;
    let mut watcher = Client::login(&s.ws_url(), "watcher").await;
    watcher
        .subscribe("w", ROOM, &[("x-presence", "false")])
        .await;
    let mut req = reqwest::Client::new()
        .request(method, s.url(path))
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), status, "{path}");
    let v: serde_json::Value = r.json().await.expect("a JSON error body");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    let mut poster = Client::login(&s.ws_url(), "poster").await;
    poster.send(SEND, "after").await;
    assert_eq!(next_chat(&mut watcher).await["content"], "after");
}

macro_rules! rest_battery {
    ($($name:ident: $method:ident $path:expr, $ct:expr, $body:expr => $status:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                rest_case(reqwest::Method::$method, $path, $ct, $body, $status).await;
            }
        )*
    };
}

const JSON: Option<&str> = Some("application/json");

rest_battery! {
    rest_a_body_that_is_not_json: POST "/api/rooms", JSON, b"{oops".to_vec() => 400;
    rest_json_with_unknown_fields: POST "/api/rooms", JSON, br#"{"id":"a","admin":true}"#.to_vec() => 400;
    rest_a_body_without_a_content_type: POST "/api/rooms", None, br#"{"id":"a"}"#.to_vec() => 400;
    rest_a_body_over_the_limit: POST "/api/rooms/lobby/messages", JSON, vec![b' '; 20_000] => 413;
    rest_a_message_with_empty_content: POST "/api/rooms/lobby/messages", JSON, br#"{"content":"  "}"#.to_vec() => 400;
    rest_a_message_that_is_not_utf8: POST "/api/rooms/lobby/messages", Some("text/plain"), vec![0xff, 0xfe, 0x41] => 400;
    rest_an_invalid_room_id: GET "/api/rooms/no%20spaces/messages", None, Vec::new() => 400;
    rest_a_room_id_with_broken_percent_encoding: GET "/api/rooms/%ff%fe", None, Vec::new() => 400;
    rest_a_since_that_is_not_a_number: GET "/api/rooms/lobby/messages?since=soon", None, Vec::new() => 400;
    rest_a_limit_far_too_large: GET "/api/rooms/lobby/messages?limit=99999999999999999999", None, Vec::new() => 400;
    rest_an_unknown_query_parameter: GET "/api/rooms/lobby/messages?drop=table", None, Vec::new() => 400;
    rest_an_unknown_path: GET "/api/nothing/here", None, Vec::new() => 404;
    rest_a_wrong_method: DELETE "/api/rooms/lobby", None, Vec::new() => 405;
}
