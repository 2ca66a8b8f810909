//! Sentinel topology events with real processes: how fast receipts resume after the sentinels
//! announce a new master (`+switch-master`), and an instance started while the sentinels named
//! a replica as master becoming ready once they are healed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chat_tests::Client;
use chat_tests::process::ServerProcess;
use chat_tests::redis::{SentinelCluster, SwitchWatch};

const SEND: &str = "/app/room/lobby";
const PASSWORD: &str = "failover-test-password";

fn server_env(cluster: &SentinelCluster, wait_ms: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CHAT_REDIS_SENTINELS", cluster.sentinel_addrs()),
        ("CHAT_REDIS_PASSWORD", PASSWORD.to_owned()),
        ("CHAT_REDIS_WAIT_MS", wait_ms.to_owned()),
        ("CHAT_SEND_RATE", "0".to_owned()),
    ]
}

async fn start_server(id: &str, env: &[(&'static str, String)]) -> ServerProcess {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServerProcess::start(id, &pairs).await
}

/// Polls every sentinel until all name 127.0.0.1:`port` as master.
fn wait_all_sentinels_name(cluster: &SentinelCluster, port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let answers: Vec<Result<u16, String>> = cluster
            .sentinels
            .iter()
            .map(|s| s.try_master_port(Duration::from_secs(1)))
            .collect();
        if answers.iter().all(|a| a.as_ref().ok() == Some(&port)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sentinels do not all name {port}: {answers:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What happens to the master.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `kill -9`: its connections close at once.
    Kill,
    /// SIGSTOP: its connections stay open and silent, as with a partition.
    Freeze,
}

/// Runs a receipted publisher on one instance, applies `fault` to the master, and returns how
/// long after the first `+switch-master` (seen by the test's own sentinel subscriber) the
/// first receipt came. Three data nodes, as the operator deploys them: a receipt needs one
/// replica's ack, so the new master must keep a replica.
async fn resume_after_switch(fault: Fault) -> Duration {
    let mut cluster = SentinelCluster::start(2, 3, Some(PASSWORD));
    let watch = SwitchWatch::start(cluster.sentinels[0].port);
    let a = start_server("a", &server_env(&cluster, "10000")).await;
    a.wait_ready(Duration::from_secs(15)).await;

    // A publisher sending continuously with receipts, recording when each receipt came.
    let url = a.ws_url();
    let publisher = tokio::spawn(async move {
        let mut receipts = Vec::new();
        let mut c = Client::login(&url, "pub").await;
        let until = Instant::now() + Duration::from_secs(12);
        let mut i = 0;
        while Instant::now() < until {
            i += 1;
            match c
                .try_send(SEND, &format!("m{i}"), Duration::from_secs(15))
                .await
            {
                Ok(()) => receipts.push(Instant::now()),
                Err(_) => c = Client::login(&url, "pub").await,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        receipts
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let old = cluster.current_master_port();
    match fault {
        Fault::Kill => cluster.data_node_mut(old).kill9(),
        Fault::Freeze => cluster.data_node_mut(old).stop_signal(),
    }
    let faulted = Instant::now();
    let (switched, what) = tokio::task::spawn_blocking(move || {
        let first = watch.first(Duration::from_secs(20));
        drop(watch);
        first
    })
    .await
    .unwrap()
    .expect("+switch-master within 20 s");
    let receipts = publisher.await.unwrap();
    let first_after = receipts
        .iter()
        .find(|t| **t > switched)
        .expect("receipts after +switch-master");
    let resumed = *first_after - switched;
    println!(
        "{fault:?}: +switch-master ({what}) {:?} after the fault; first receipt {resumed:?} \
         after it ({:?} after the fault)",
        switched - faulted,
        *first_after - faulted
    );
    resumed
}

#[tokio::test]
async fn receipts_resume_within_two_seconds_of_the_sentinels_switching_from_a_killed_master() {
    let resumed = resume_after_switch(Fault::Kill).await;
    assert!(
        resumed < Duration::from_secs(2),
        "receipts resumed {resumed:?} after +switch-master"
    );
}

#[tokio::test]
async fn receipts_resume_within_two_seconds_of_the_sentinels_switching_from_a_frozen_master() {
    let resumed = resume_after_switch(Fault::Freeze).await;
    assert!(
        resumed < Duration::from_secs(2),
        "receipts resumed {resumed:?} after +switch-master"
    );
}

#[tokio::test]
async fn an_instance_started_while_the_sentinels_named_a_replica_is_ready_soon_after_they_are_healed()
 {
    let cluster = SentinelCluster::start(1, 3, Some(PASSWORD));
    let master = cluster.master.port;
    let replica = cluster.replicas[0].port;
    // All sentinels restarted with the wrong idea: they monitor the replica as master.
    for s in &cluster.sentinels {
        s.remonitor(replica, 2, Some(PASSWORD));
    }
    wait_all_sentinels_name(&cluster, replica, Duration::from_secs(10));

    let a = start_server("a", &server_env(&cluster, "2000")).await;
    // Long enough for its first SUBSCRIBEs and commands to time out against no master.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !a.is_ready().await,
        "not ready while no master is reachable"
    );

    for s in &cluster.sentinels {
        s.remonitor(master, 2, Some(PASSWORD));
    }
    wait_all_sentinels_name(&cluster, master, Duration::from_secs(10));
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(10);
    while !a.is_ready().await {
        assert!(
            Instant::now() < deadline,
            "still unready 10 s after the sentinels were healed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "ready {:?} after the sentinels were healed",
        healed.elapsed()
    );
    // And it works: a receipted SEND.
    let mut c = Client::login(&a.ws_url(), "p").await;
    c.try_send(SEND, "hello", Duration::from_secs(5))
        .await
        .expect("a receipt once ready");
}
