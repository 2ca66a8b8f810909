//! Attacks on authentication and limits, against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chat_server::Config;
use chat_server::config::JwtKey;
use chat_tests::{Client, TestServer, hs256_token, now_secs};
use chat_wire::stomp::{Command, Frame};
use serde_json::json;

const SECRET: &str = "attack-test-secret-of-length";

async fn jwt_server(edit: impl FnOnce(&mut Config)) -> TestServer {
    let mut c = Config::for_tests();
    c.jwt_key = Some(JwtKey::Hs256Secret(SECRET.into()));
    c.allow_anonymous = false;
    edit(&mut c);
    TestServer::start(c).await
}

async fn refused(s: &TestServer, token: &str) -> String {
    let mut c = Client::open(&s.ws_url()).await;
    let f = c.stomp_connect(&[("passcode", token)]).await;
    assert_eq!(f.command, Command::Error, "{f:?}");
    f.header("message").unwrap().to_owned()
}

#[tokio::test]
async fn a_tampered_payload_fails_the_signature() {
    use base64::Engine;
    let s = jwt_server(|_| {}).await;
    let good = hs256_token(SECRET, &json!({"sub": "alice", "exp": now_secs() + 60}));
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged_payload = b64.encode(format!(r#"{{"sub":"admin","exp":{}}}"#, now_secs() + 60));
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert!(refused(&s, &tampered).await.contains("signature"));
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let s = jwt_server(|_| {}).await;
    let t = hs256_token(
        SECRET,
        &json!({"sub": "u", "nbf": now_secs() + 600, "exp": now_secs() + 900}),
    );
    assert!(refused(&s, &t).await.contains("not valid yet"));
}

#[tokio::test]
async fn a_wrong_audience_or_issuer_is_refused() {
    let s = jwt_server(|c| {
        c.jwt_audience = Some("chat".into());
        c.jwt_issuer = Some("https://id.example".into());
    })
    .await;
    let ok = hs256_token(
        SECRET,
        &json!({"sub": "u", "aud": "chat", "iss": "https://id.example", "exp": now_secs() + 60}),
    );
    assert_eq!(
        Client::connect(&s.ws_url(), &[("passcode", &ok)])
            .await
            .1
            .command,
        Command::Connected
    );
    let aud = hs256_token(
        SECRET,
        &json!({"sub": "u", "aud": "billing", "iss": "https://id.example", "exp": now_secs() + 60}),
    );
    assert!(refused(&s, &aud).await.contains("audience"));
    let iss = hs256_token(
        SECRET,
        &json!({"sub": "u", "aud": "chat", "iss": "https://evil.example", "exp": now_secs() + 60}),
    );
    assert!(refused(&s, &iss).await.contains("issuer"));
}

#[tokio::test]
async fn a_page_from_a_disallowed_origin_cannot_open_the_websocket() {
    let mut c = Config::for_tests();
    c.allowed_origins = vec!["https://chat.example".into()];
    let s = TestServer::start(c).await;
    match Client::open_with(&s.ws_url(), &["v12.stomp"], Some("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a disallowed origin was let in"),
    }
    let mut ok = Client::open_with(&s.ws_url(), &["v12.stomp"], Some("https://chat.example"))
        .await
        .unwrap();
    assert_eq!(
        ok.stomp_connect(&[("login", "a")]).await.command,
        Command::Connected
    );
    // Not a browser: no Origin at all is a backend client, and it is let in.
    let mut backend = Client::open_with(&s.ws_url(), &["v12.stomp"], None)
        .await
        .unwrap();
    assert_eq!(
        backend.stomp_connect(&[("login", "b")]).await.command,
        Command::Connected
    );
}

#[tokio::test]
async fn one_user_over_many_connections_hits_the_per_user_rate_limit_and_others_do_not() {
    let mut c = Config::for_tests();
    c.send_rate = 100;
    c.user_send_rate = 5;
    let s = TestServer::start(c).await;
    // Three connections of the same user, each well under its own limit; together over the
    // user's (a burst of 10).
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(Client::login(&s.ws_url(), "greedy").await);
    }
    for round in 0..5 {
        for c in &mut conns {
            let f = Frame::new(Command::Send)
                .with_header("destination", "/app/room/r")
                .with_body(format!("m{round}"));
            c.send_frame(&f).await;
        }
    }
    let mut errors = 0;
    for c in &mut conns {
        while let Ok(Some(f)) = c
            .next_frame_within(std::time::Duration::from_millis(500))
            .await
        {
            if f.command == Command::Error {
                assert!(f.header("message").unwrap().contains("per user"), "{f:?}");
                errors += 1;
                break;
            }
        }
    }
    assert!(
        errors >= 1,
        "15 messages in a burst from one user went through a limit of 5/s"
    );
    let mut other = Client::login(&s.ws_url(), "someone-else").await;
    other.send("/app/room/r", "fine").await;
}
