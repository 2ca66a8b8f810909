//! The SockJS endpoint over plain HTTP: the info answer, xhr polling and xhr_send carrying STOMP
//! to the server's sessions, xhr streaming, bad bodies, limits, a second receiver, reaping and
//! the drain. (sockjs-client itself is tested in `tests/js/sockjs.test.mjs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_server::Config;
use chat_server::config::JwtKey;
use chat_tests::{TestServer, hs256_token, now_secs};
use reqwest::StatusCode;
use serde_json::json;

const CONNECT: &str = "CONNECT\naccept-version:1.2\nlogin:ann\nheart-beat:0,0\n\n\0";

/// One SockJS session's URLs on a test server.
struct Sockjs {
    http: reqwest::Client,
    base: String,
}

impl Sockjs {
    fn new(s: &TestServer, session: &str) -> Sockjs {
        Sockjs {
            http: reqwest::Client::new(),
            base: s.url(&format!("/ws/000/{session}")),
        }
    }

    /// One xhr poll: its status and body.
    async fn poll(&self) -> (StatusCode, String) {
        let r = self
            .http
            .post(format!("{}/xhr", self.base))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn send(&self, body: impl Into<reqwest::Body>) -> (StatusCode, String) {
        let r = self
            .http
            .post(format!("{}/xhr_send", self.base))
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    /// Sends STOMP frames, each one SockJS message.
    async fn send_frames(&self, frames: &[&str]) {
        let (status, body) = self.send(serde_json::to_string(frames).unwrap()).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }

    /// Polls until a message frame holds `needle`; returns the decoded messages seen.
    async fn poll_until(&self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..20 {
            let (status, body) = self.poll().await;
            assert_eq!(status, StatusCode::OK);
            if let Some(array) = body.trim_end().strip_prefix('a') {
                let messages: Vec<String> = serde_json::from_str(array).unwrap();
                seen.extend(messages);
                if seen.iter().any(|m| m.contains(needle)) {
                    return seen;
                }
            }
        }
        panic!("no message with {needle:?} in {seen:?}");
    }
}

fn config() -> Config {
    let mut c = Config::for_tests();
    c.sockjs_heartbeat = Duration::from_millis(500);
    c
}

#[tokio::test]
async fn info_tells_the_client_websocket_is_there_and_no_cookie_is_needed() {
    let s = TestServer::start(config()).await;
    let r = reqwest::Client::new()
        .get(s.url("/ws/info"))
        .header("origin", "http://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["access-control-allow-origin"], "http://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h["cache-control"].to_str().unwrap().contains("no-store"));
    let info: serde_json::Value = r.json().await.unwrap();
    assert_eq!(info["websocket"], true);
    assert_eq!(info["cookie_needed"], false);
    assert_eq!(info["origins"], serde_json::json!(["*:*"]));
    assert!(info["entropy"].is_u64());
}

#[tokio::test]
async fn xhr_polling_opens_and_carries_stomp_both_ways_to_a_room_message() {
    let s = TestServer::start(config()).await;
    let c = Sockjs::new(&s, "polling1");
    assert_eq!(c.poll().await, (StatusCode::OK, "o\n".to_owned()));
    c.send_frames(&[CONNECT]).await;
    let seen = c.poll_until("CONNECTED").await;
    assert!(seen[0].starts_with("CONNECTED\n"), "{seen:?}");
    assert!(seen[0].contains("version:1.2"), "{seen:?}");

    // Two frames in one send, the second split over two messages: the STOMP stream is whole.
    c.send_frames(&[
        "SUBSCRIBE\nid:s0\ndestination:/topic/room/sockjs\nreceipt:r1\n\n\0SEND\ndestination:/app/room/sockjs\n",
        "content-type:application/json\n\n{\"content\":\"over http\"}\0",
    ])
    .await;
    let seen = c.poll_until("over http").await;
    assert!(seen.iter().any(|m| m.contains("receipt-id:r1")), "{seen:?}");
    let message = seen.iter().find(|m| m.contains("over http")).unwrap();
    assert!(message.starts_with("MESSAGE\n"), "{message}");
    assert!(message.contains("subscription:s0"), "{message}");
}

#[tokio::test]
async fn bad_bodies_get_the_protocols_errors_and_leave_the_session_working() {
    let s = TestServer::start(config()).await;
    let c = Sockjs::new(&s, "bad1");
    assert_eq!(c.poll().await.1, "o\n");
    assert_eq!(
        c.send("").await,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Payload expected.".to_owned()
        )
    );
    assert_eq!(
        c.send("[\"x").await,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Broken JSON encoding.".to_owned()
        )
    );
    assert_eq!(c.send("[1]").await.0, StatusCode::INTERNAL_SERVER_ERROR);
    c.send_frames(&[CONNECT]).await;
    c.poll_until("CONNECTED").await;
}

#[tokio::test]
async fn a_post_over_the_frame_limit_is_refused_and_an_unknown_session_is_404() {
    let s = TestServer::start(config()).await;
    let c = Sockjs::new(&s, "big1");
    assert_eq!(c.poll().await.1, "o\n");
    let huge = serde_json::to_string(&["x".repeat(s.state.config.max_frame_bytes + 1)]).unwrap();
    assert_eq!(c.send(huge).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    c.send_frames(&[CONNECT]).await;
    c.poll_until("CONNECTED").await;

    let nobody = Sockjs::new(&s, "nobody");
    assert_eq!(nobody.send("[\"x\"]").await.0, StatusCode::NOT_FOUND);
    let dotted = reqwest::Client::new()
        .post(s.url("/ws/000/a.b/xhr"))
        .send()
        .await
        .unwrap();
    assert_eq!(dotted.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_second_receiver_gets_2010_while_the_first_keeps_the_session() {
    let s = TestServer::start(config()).await;
    let c = Sockjs::new(&s, "two1");
    assert_eq!(c.poll().await.1, "o\n");
    let first = {
        let c = Sockjs::new(&s, "two1");
        tokio::spawn(async move { c.poll().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        c.poll().await,
        (
            StatusCode::OK,
            "c[2010,\"Another connection still open\"]\n".to_owned()
        )
    );
    // The first poll is still the receiver: it ends with a heartbeat (500 ms here).
    assert_eq!(first.await.unwrap(), (StatusCode::OK, "h\n".to_owned()));
}

#[tokio::test]
async fn xhr_streaming_sends_the_prelude_then_frames_on_one_response() {
    let s = TestServer::start(config()).await;
    let http = reqwest::Client::new();
    let mut r = http
        .post(s.url("/ws/000/stream1/xhr_streaming"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/javascript")
    );
    let mut text = String::new();
    while !text.contains("o\n") {
        text.push_str(std::str::from_utf8(&r.chunk().await.unwrap().unwrap()).unwrap());
    }
    assert!(
        text.starts_with(&format!("{}\n", "h".repeat(2048))),
        "{text}"
    );
    Sockjs::new(&s, "stream1").send_frames(&[CONNECT]).await;
    while !text.contains("CONNECTED") {
        text.push_str(std::str::from_utf8(&r.chunk().await.unwrap().unwrap()).unwrap());
    }
    assert!(text.contains("\na[\"CONNECTED\\n"), "{text}");
}

#[tokio::test]
async fn a_session_without_a_receiver_is_reaped_and_gives_its_connection_back() {
    let mut config = config();
    config.sockjs_disconnect = Duration::from_millis(300);
    let s = TestServer::start(config).await;
    let c = Sockjs::new(&s, "reap1");
    assert_eq!(c.poll().await.1, "o\n");
    c.send_frames(&[CONNECT]).await;
    assert_eq!(s.state.connections.load(Ordering::Acquire), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(c.send("[\"x\"]").await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.state.connections.load(Ordering::Acquire), 0);
    let metrics = chat_tests::http::get_text(s.url("/metrics")).await;
    assert!(
        metrics.contains("chat_sockjs_sessions_total{transport=\"xhr-polling\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_draining_server_closes_a_waiting_poll_with_1012() {
    let mut config = config();
    config.sockjs_heartbeat = Duration::from_secs(20);
    let s = TestServer::start(config).await;
    let c = Sockjs::new(&s, "drain1");
    assert_eq!(c.poll().await.1, "o\n");
    c.send_frames(&[CONNECT]).await;
    c.poll_until("CONNECTED").await;
    let waiting = tokio::spawn(async move { c.poll().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop().await;
    assert_eq!(
        waiting.await.unwrap(),
        (
            StatusCode::OK,
            "c[1012,\"server restarting: reconnect\"]\n".to_owned()
        )
    );
}

#[tokio::test]
async fn the_access_token_of_the_opening_request_authenticates_the_session() {
    const SECRET: &str = "test-secret-with-enough-bytes";
    let mut config = config();
    config.jwt_key = Some(JwtKey::Hs256Secret(SECRET.into()));
    config.allow_anonymous = false;
    let s = TestServer::start(config).await;
    let token = hs256_token(SECRET, &json!({"sub": "u1", "exp": now_secs() + 60}));
    let http = reqwest::Client::new();
    let opened = http
        .post(s.url(&format!("/ws/000/auth1/xhr?access_token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.text().await.unwrap(), "o\n");
    let c = Sockjs::new(&s, "auth1");
    c.send_frames(&["CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0"])
        .await;
    let seen = c.poll_until("CONNECTED").await;
    assert!(seen[0].contains("x-user-id:u1"), "{seen:?}");

    // Without a token the same server answers ERROR and closes.
    let anon = Sockjs::new(&s, "auth2");
    assert_eq!(anon.poll().await.1, "o\n");
    anon.send_frames(&["CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0"])
        .await;
    let seen = anon.poll_until("ERROR").await;
    assert!(seen[0].starts_with("ERROR\n"), "{seen:?}");
    assert_eq!(anon.poll().await.1, "c[3000,\"Go away!\"]\n");
}

#[tokio::test]
async fn sessions_count_against_the_connection_limit() {
    let mut config = config();
    config.max_connections = 1;
    let s = TestServer::start(config).await;
    let first = Sockjs::new(&s, "limit1");
    assert_eq!(first.poll().await, (StatusCode::OK, "o\n".to_owned()));
    let second = Sockjs::new(&s, "limit2");
    assert_eq!(second.poll().await.0, StatusCode::SERVICE_UNAVAILABLE);
    // The first session still works.
    first.send_frames(&[CONNECT]).await;
    first.poll_until("CONNECTED").await;
}

#[tokio::test]
async fn the_websocket_transport_frames_stomp_and_a_broken_message_closes_only_that_socket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let s = TestServer::start(config()).await;
    let url = format!("ws://{}/ws/000/wsone/websocket", s.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let next_text = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    };
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("o"));
    ws.send(Message::text(serde_json::to_string(&[CONNECT]).unwrap()))
        .await
        .unwrap();
    let connected = next_text(&mut ws).await.unwrap();
    assert!(connected.starts_with("a[\"CONNECTED\\n"), "{connected}");
    // Heartbeat frames while nothing else is said (500 ms here).
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("h"));

    let (mut other, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws/000/wstwo/websocket", s.addr))
            .await
            .unwrap();
    assert_eq!(next_text(&mut other).await.as_deref(), Some("o"));
    ws.send(Message::text("[\"broken")).await.unwrap();
    assert_eq!(
        next_text(&mut ws).await,
        None,
        "the broken socket is closed"
    );
    other
        .send(Message::text(serde_json::to_string(&[CONNECT]).unwrap()))
        .await
        .unwrap();
    let connected = next_text(&mut other).await.unwrap();
    assert!(connected.starts_with("a[\"CONNECTED\\n"), "{connected}");
}

#[tokio::test]
async fn a_streaming_response_ends_after_128_kib_and_the_next_one_carries_on() {
    let s = TestServer::start(config()).await;
    let http = reqwest::Client::new();
    let stream_url = s.url("/ws/000/big2/xhr_streaming");
    let mut r = http.post(&stream_url).send().await.unwrap();
    let c = Sockjs::new(&s, "big2");
    let mut got = 0usize;
    let mut text = String::new();
    while !text.contains("o\n") {
        let chunk = r.chunk().await.unwrap().unwrap();
        got += chunk.len();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    c.send_frames(&[
        CONNECT,
        "SUBSCRIBE\nid:s0\ndestination:/topic/room/big\n\n\0",
    ])
    .await;
    let content = "x".repeat(40_000);
    for i in 0..4 {
        let send = format!(
            "SEND\ndestination:/app/room/big\ncontent-type:application/json\n\n{{\"content\":\"{i}{content}\"}}\0"
        );
        c.send_frames(&[&send]).await;
    }
    // The first response ends by itself (no close frame) once it carried 128 KiB.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = r.chunk().await.unwrap() {
            got += chunk.len();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await;
    assert!(ended.is_ok(), "the first response ended");
    assert!(got >= 128 * 1024, "{got} bytes");
    assert!(!text.contains("\nc["), "no close frame");
    // The next response on the same session goes on with the rest.
    let mut next = http.post(&stream_url).send().await.unwrap();
    let mut more = String::new();
    while !(text.contains("\"3x") || more.contains("\"3x")) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), next.chunk())
            .await
            .expect("more frames")
            .unwrap()
            .unwrap();
        more.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(!more.contains("\no\n"), "no second open frame");
}
