//! Small runs of the load generator in CI: fan-out over two clustered instances (paced) and
//! one instance (closed-loop), idle connections from several source addresses, and a slow
//! consumer the server must drop while the others lose nothing. (Figures go to BENCHMARKS.md
//! from release runs; these only prove the tool and the paths work.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Output, Stdio};
use std::time::Duration;

use chat_tests::http::get_text;
use chat_tests::process::{ServerProcess, chat_load_bin};
use chat_tests::redis::{RedisOpts, RedisServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Every run ends well within this.
const RUN_LIMIT: Duration = Duration::from_secs(90);

fn chat_load(args: &[&str], json: &std::path::Path) -> Command {
    let mut cmd = Command::new(chat_load_bin());
    cmd.args(args)
        .arg("--json")
        .arg(json)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

fn json_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("chat-load-{name}-{}.json", std::process::id()))
}

/// Runs chat-load to its end; its output and JSON results. Panics (with the output) on failure.
async fn run_chat_load(name: &str, args: &[&str]) -> (Output, serde_json::Value) {
    let json = json_path(name);
    let out = tokio::time::timeout(RUN_LIMIT, chat_load(args, &json).output())
        .await
        .expect("chat-load ends in time")
        .expect("chat-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "chat-load failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out, read_json(&json))
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    let v = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    v
}

fn assert_nothing_lost(v: &serde_json::Value) {
    assert_eq!(v["expected"], v["received"], "{v}");
    assert_eq!(
        (
            v["lost"].as_u64(),
            v["duplicates"].as_u64(),
            v["order_violations"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{v}"
    );
}

async fn memory_server(id: &str, extra: &[(&str, &str)]) -> ServerProcess {
    let mut env = vec![("CHAT_SEND_RATE", "0"), ("CHAT_USER_SEND_RATE", "0")];
    env.extend_from_slice(extra);
    ServerProcess::start(id, &env).await
}

#[tokio::test]
async fn chat_load_across_two_instances_loses_nothing() {
    let redis = RedisServer::start(RedisOpts::default());
    let env = [
        ("CHAT_REDIS_URL", redis.url()),
        ("CHAT_SEND_RATE", "0".to_owned()),
    ];
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = ServerProcess::start("load-a", &pairs).await;
    let b = ServerProcess::start("load-b", &pairs).await;
    for p in [&a, &b] {
        p.wait_ready(Duration::from_secs(10)).await;
    }
    let (ua, ub) = (a.ws_url(), b.ws_url());
    let (_, v) = run_chat_load(
        "cluster",
        &[
            "--url",
            &ua,
            "--url",
            &ub,
            "--clients",
            "300",
            "--rooms",
            "3",
            "--publishers",
            "2",
            "--rate",
            "60",
            "--duration",
            "3",
            "--body",
            "100",
        ],
    )
    .await;
    assert!(v["published"].as_u64().unwrap() >= 150, "{v}");
    assert_nothing_lost(&v);
    assert_eq!(v["mode"], "fanout");
    assert_eq!(v["connections"], 302, "{v}");
}

#[tokio::test]
async fn closed_loop_publishing_on_receipts_or_echoes_loses_nothing() {
    let server = memory_server("load-closed", &[]).await;
    let url = server.ws_url();
    for ack in [None, Some("--echo")] {
        let mut args = vec![
            "--url",
            &url,
            "--clients",
            "40",
            "--rooms",
            "2",
            "--publishers",
            "2",
            "--rate",
            "0",
            "--window",
            "8",
            "--duration",
            "1",
        ];
        args.extend(ack);
        let (_, v) = run_chat_load("closed", &args).await;
        assert!(v["published"].as_u64().unwrap() > 16, "{v}");
        assert_nothing_lost(&v);
        assert!(v["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{v}");
    }
}

#[tokio::test]
async fn idle_mode_holds_its_connections_from_several_source_addresses() {
    let server = memory_server("load-idle", &[]).await;
    let url = server.ws_url();
    let json = json_path("idle");
    let mut child = chat_load(
        &[
            "--url",
            &url,
            "--mode",
            "idle",
            "--clients",
            "200",
            "--rooms",
            "7",
            "--source-ips",
            "3",
            "--hold",
            "2",
        ],
        &json,
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("chat-load starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(RUN_LIMIT, lines.next_line())
        .await
        .expect("READY in time")
        .unwrap();
    assert_eq!(ready.as_deref(), Some("READY connections=200"));

    // While held, the server really has them, from three source addresses.
    let metrics = get_text(server.url("/metrics")).await;
    assert!(
        metrics.lines().any(|l| l == "chat_connections 200"),
        "{metrics}"
    );

    let status = tokio::time::timeout(RUN_LIMIT, child.wait())
        .await
        .expect("chat-load ends in time")
        .unwrap();
    let mut rest = Vec::new();
    while let Ok(Some(l)) = lines.next_line().await {
        rest.push(l);
    }
    assert!(status.success(), "{}", rest.join("\n"));
    assert!(
        !rest.iter().any(|l| l.starts_with("READY")),
        "exactly one READY line: {rest:?}"
    );
    let v = read_json(&json);
    assert_eq!(v["mode"], "idle");
    assert_eq!(v["connections"], 200, "{v}");
    assert!(v["connects_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(
        (v["connect_errors"].as_u64(), v["dropped"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
}

#[tokio::test]
async fn a_slow_consumer_is_dropped_and_the_others_lose_nothing() {
    // A short outbound queue: the server gives up on the reader that never reads once the
    // socket buffers (MiBs on loopback) are full and 64 more frames wait. Readers that do read
    // keep up even on a busy machine with 64 frames of slack.
    let server = memory_server("load-slow", &[("CHAT_OUTBOUND_QUEUE", "64")]).await;
    let url = server.ws_url();
    let (_, v) = run_chat_load(
        "slow",
        &[
            "--url",
            &url,
            "--clients",
            "5",
            "--slow",
            "1",
            "--rate",
            "400",
            "--body",
            "8000",
            "--duration",
            "4",
        ],
    )
    .await;
    assert_eq!(
        v["slow"],
        serde_json::json!({"clients": 1, "disconnected": 1}),
        "{v}"
    );
    assert_nothing_lost(&v);
    assert!(v["received"].as_u64().unwrap() > 0, "{v}");
}
