//! A small run of the load generator in CI: a few hundred clients for a few seconds over two
//! clustered instances; it must lose, duplicate and reorder nothing. (Figures go to
//! BENCHMARKS.md from release runs; this only proves the tool and the path work.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use chat_tests::process::{ServerProcess, chat_server_bin};
use chat_tests::redis::{RedisOpts, RedisServer};

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
    let bin = chat_server_bin().with_file_name("chat-load");
    let json = std::env::temp_dir().join(format!("chat-load-smoke-{}.json", std::process::id()));
    let out = tokio::task::spawn_blocking({
        let (ua, ub, json) = (a.ws_url(), b.ws_url(), json.clone());
        move || {
            Command::new(bin)
                .args([
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
                ])
                .args(["--rate", "60", "--duration", "3", "--body", "100", "--json"])
                .arg(&json)
                .output()
                .expect("chat-load runs")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "chat-load failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert!(v["published"].as_u64().unwrap() >= 150, "{v}");
    assert_eq!(v["expected"], v["received"], "{v}");
    assert_eq!(
        (
            v["lost"].as_u64(),
            v["duplicates"].as_u64(),
            v["order_violations"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
}
