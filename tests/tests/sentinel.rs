//! Sentinel failover with real processes: a master, one replica and three sentinels; two
//! chat-server instances; the master is killed with `kill -9` while publishers on both
//! instances send numbered messages with receipts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_tests::process::ServerProcess;
use chat_tests::redis::SentinelCluster;
use chat_tests::{Client, body, send_run};

const ROOM: &str = "/topic/room/lobby";
const SEND: &str = "/app/room/lobby";
const PASSWORD: &str = "sentinel-test-password";

/// A delivered message: its offset, content, and when it arrived.
type Seen = (u64, String, Instant);

/// Sends `prefix-0..n` one after another with receipts, reconnecting after an ERROR; returns
/// the receipted ones with the time each receipt came.
async fn publisher(
    url: String,
    prefix: &'static str,
    n: usize,
    gap: Duration,
) -> Vec<(String, Instant)> {
    let mut receipted = Vec::new();
    let mut c = Client::login(&url, prefix).await;
    for i in 0..n {
        let text = format!("{prefix}-{i}");
        match c.try_send(SEND, &text, Duration::from_secs(15)).await {
            Ok(()) => receipted.push((text, Instant::now())),
            Err(e) => {
                println!(
                    "{text}: not receipted ({:?})",
                    e.as_ref()
                        .and_then(|f| f.header("message").map(str::to_owned))
                );
                c = Client::login(&url, prefix).await;
            }
        }
        tokio::time::sleep(gap).await;
    }
    receipted
}

#[tokio::test]
async fn a_master_killed_mid_stream_loses_no_receipted_message_and_delivery_resumes_quickly() {
    let mut cluster = SentinelCluster::start(2, 3, Some(PASSWORD));
    let env = [
        ("CHAT_REDIS_SENTINELS", cluster.sentinel_addrs()),
        ("CHAT_REDIS_PASSWORD", PASSWORD.to_owned()),
        ("CHAT_REDIS_WAIT_MS", "10000".to_owned()),
        ("CHAT_SEND_RATE", "0".to_owned()),
    ];
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = ServerProcess::start("a", &pairs).await;
    let b = ServerProcess::start("b", &pairs).await;
    a.wait_ready(Duration::from_secs(15)).await;
    b.wait_ready(Duration::from_secs(15)).await;

    // Subscribers on both instances record every message with its arrival time.
    let seen: Arc<Mutex<Vec<Vec<Seen>>>> = Arc::default();
    let mut readers = Vec::new();
    for (i, url) in [a.ws_url(), b.ws_url(), a.ws_url(), b.ws_url()]
        .into_iter()
        .enumerate()
    {
        let mut c = Client::login(&url, &format!("reader{i}")).await;
        c.subscribe("0", ROOM, &[("x-presence", "false")]).await;
        seen.lock().unwrap().push(Vec::new());
        let seen = seen.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(Some(f)) = c.next_frame_within(Duration::from_secs(30)).await {
                if f.command == chat_wire::stomp::Command::Message {
                    let offset = f.header("x-offset").unwrap().parse().unwrap();
                    let text = body(&f)["content"].as_str().unwrap().to_owned();
                    seen.lock().unwrap()[i].push((offset, text, Instant::now()));
                }
            }
        }));
    }

    let gap = Duration::from_millis(40);
    let pa = tokio::spawn(publisher(a.ws_url(), "A", 150, gap));
    let pb = tokio::spawn(publisher(b.ws_url(), "B", 150, gap));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let old = cluster.current_master_port();
    cluster.data_node_mut(old).kill9();
    let killed = Instant::now();
    let new = cluster.wait_for_new_master(old, Duration::from_secs(20));
    let elected = Instant::now();
    println!(
        "failover: master {old} killed, {new} elected after {:?}",
        elected - killed
    );

    let mut receipted: Vec<(String, Instant)> = pa.await.unwrap();
    receipted.extend(pb.await.unwrap());
    // Let the last deliveries arrive, then stop the readers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for r in &readers {
        r.abort();
    }
    let seen = seen.lock().unwrap().clone();

    let sent = 300;
    println!(
        "receipted {} of {sent}; delivered per subscriber: {:?}",
        receipted.len(),
        seen.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(
        receipted.len() >= sent * 8 / 10,
        "most sends were receipted: {}",
        receipted.len()
    );
    let mut offset_of: HashMap<String, u64> = HashMap::new();
    let mut by_offset: BTreeMap<u64, String> = BTreeMap::new();
    for (i, s) in seen.iter().enumerate() {
        let offsets: Vec<u64> = s.iter().map(|x| x.0).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "subscriber {i}: in order, no duplicate"
        );
        for (offset, text, _) in s {
            if let Some(prev) = by_offset.insert(*offset, text.clone()) {
                assert_eq!(&prev, text, "offset {offset} was used for two messages");
            }
            if let Some(prev) = offset_of.insert(text.clone(), *offset) {
                assert_eq!(prev, *offset, "{text} arrived with two offsets");
            }
        }
        let missing: Vec<&String> = receipted
            .iter()
            .map(|r| &r.0)
            .filter(|t| !s.iter().any(|x| &x.1 == *t))
            .collect();
        assert!(missing.is_empty(), "subscriber {i} never got {missing:?}");
        for (text, _) in &receipted {
            assert_eq!(
                s.iter().filter(|x| &x.1 == text).count(),
                1,
                "subscriber {i} got {text} exactly once"
            );
        }
    }
    // Delivery resumed: the first message delivered after the election, measured from it.
    let first_after = seen
        .iter()
        .flat_map(|s| s.iter().map(|x| x.2))
        .filter(|t| *t > elected)
        .min()
        .expect("deliveries after the failover");
    let resumed = first_after - elected;
    let lost = receipted
        .iter()
        .filter(|(t, _)| !offset_of.contains_key(t))
        .count();
    println!(
        "lost receipted: {lost}; duplicates: 0; delivery resumed {resumed:?} after the new master was elected"
    );
    assert!(
        resumed < Duration::from_secs(3),
        "delivery resumed after {resumed:?}"
    );
}

#[tokio::test]
async fn a_run_of_sends_with_min_replicas_is_receipted_in_order_and_on_the_replica() {
    let cluster = SentinelCluster::start(1, 1, Some(PASSWORD));
    let env = [
        ("CHAT_REDIS_SENTINELS", cluster.sentinel_addrs()),
        ("CHAT_REDIS_PASSWORD", PASSWORD.to_owned()),
        ("CHAT_SEND_RATE", "0".to_owned()),
    ];
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = ServerProcess::start("a", &pairs).await;
    a.wait_ready(Duration::from_secs(15)).await;
    let mut reader = Client::login(&a.ws_url(), "reader").await;
    reader
        .subscribe("0", ROOM, &[("x-presence", "false")])
        .await;
    let mut p = Client::login(&a.ws_url(), "p").await;
    p.send_raw(&send_run(0..30, |_| SEND.to_owned())).await;
    p.expect_run_receipts(0..30).await;
    for i in 0..30 {
        let m = reader.next_message().await;
        assert_eq!(m.header("x-offset"), Some((i + 1).to_string().as_str()));
        assert_eq!(body(&m)["content"], format!("m{i}"));
    }
    // Receipted means on the replica too.
    let replica = cluster.data_nodes().nth(1).expect("a replica");
    let key = replica.cli(&["KEYS", "*:log:lobby"]);
    assert_eq!(
        replica.cli(&["XLEN", key.trim()]).trim(),
        "30",
        "the replica holds the run"
    );
}
