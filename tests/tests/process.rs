//! Tests of the real chat-server binary as a process: start-up, configuration, SIGTERM drain,
//! and public-key JWT.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command as Proc;
use std::time::Duration;

use chat_server::Config;
use chat_server::config::JwtKey;
use chat_tests::process::{ServerProcess, chat_server_bin};
use chat_tests::{Client, TestServer, now_secs};
use chat_wire::stomp::Command;
use serde_json::json;

#[tokio::test]
async fn a_bad_value_stops_start_up_with_a_message_naming_the_variable() {
    let out = Proc::new(chat_server_bin())
        .env_clear()
        .env("CHAT_LISTEN_ADDR", "127.0.0.1:0")
        .env("CHAT_HISTORY_MAX_LEN", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CHAT_HISTORY_MAX_LEN"), "{err}");
    let out = Proc::new(chat_server_bin())
        .args(["--CHAT_LOG_FORMAT", "xml"])
        .env_clear()
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("CHAT_LOG_FORMAT"));
}

#[tokio::test]
async fn sigterm_closes_clients_with_a_reconnect_code_and_exits_within_the_grace_period() {
    let mut p = ServerProcess::start("drain-me", &[("CHAT_SHUTDOWN_GRACE_SECS", "5")]).await;
    let mut c = Client::login(&p.ws_url(), "ann").await;
    c.subscribe("0", "/topic/room/lobby", &[]).await;
    assert_eq!(c.next_event().await["type"], "JOIN");
    let started = std::time::Instant::now();
    p.signal("TERM");
    let close = c.expect_closed().await.expect("a close frame");
    assert_eq!(
        u16::from(close.code),
        1012,
        "close code tells the client to reconnect"
    );
    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "drained in {:?}",
        started.elapsed()
    );
}

fn openssl(args: &[&str]) {
    let ok = Proc::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        ok.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// Makes a key pair with openssl: (private PKCS#8 PEM, public PEM).
fn key_pair(dir: &std::path::Path, kind: &str) -> (Vec<u8>, Vec<u8>) {
    let key = dir.join(format!("{kind}.key"));
    let public = dir.join(format!("{kind}.pub"));
    let (k, p) = (key.to_str().unwrap(), public.to_str().unwrap());
    match kind {
        "rsa" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            k,
        ]),
        _ => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            k,
        ]),
    }
    openssl(&["pkey", "-in", k, "-pubout", "-out", p]);
    (std::fs::read(key).unwrap(), std::fs::read(public).unwrap())
}

async fn connect_result(s: &TestServer, token: &str) -> chat_wire::stomp::Frame {
    let mut c = Client::open(&s.ws_url()).await;
    c.stomp_connect(&[("passcode", token)]).await
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_a_public_key_file_and_hs_confusion_fails() {
    let dir = std::env::temp_dir().join(format!("chat-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let claims = json!({"sub": "u1", "name": "Key User", "exp": now_secs() + 60});
    for (kind, alg) in [
        ("rsa", jsonwebtoken::Algorithm::RS256),
        ("ec", jsonwebtoken::Algorithm::ES256),
    ] {
        let (private, public) = key_pair(&dir, kind);
        let mut config = Config::for_tests();
        config.jwt_key = Some(JwtKey::PublicKeyPem(public.clone()));
        config.allow_anonymous = false;
        let s = TestServer::start(config).await;
        let key = match kind {
            "rsa" => jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap(),
            _ => jsonwebtoken::EncodingKey::from_ec_pem(&private).unwrap(),
        };
        let good = jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).unwrap();
        let f = connect_result(&s, &good).await;
        assert_eq!(f.command, Command::Connected, "{kind}: {f:?}");
        assert_eq!(f.header("user-name"), Some("Key User"));
        // The classic confusion: an HS256 token whose "secret" is the server's public key.
        let confused = chat_tests::hs256_token(std::str::from_utf8(&public).unwrap(), &claims);
        let f = connect_result(&s, &confused).await;
        assert_eq!(
            f.command,
            Command::Error,
            "{kind}: HS256 signed with the public key must fail"
        );
        assert!(
            std::str::from_utf8(&f.body).unwrap().contains("algorithm"),
            "{f:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sigterm_still_stops_the_server_when_its_log_pipes_are_closed() {
    let port = chat_tests::free_port();
    let mut child = Proc::new(chat_server_bin())
        .env_clear()
        .env("CHAT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("CHAT_SHUTDOWN_GRACE_SECS", "2")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The reader of both pipes goes away: every later log line fails to write.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let _ = Client::login(&format!("ws://127.0.0.1:{port}/ws"), "x").await;
    assert!(
        Proc::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server ignored SIGTERM with its log pipes closed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
