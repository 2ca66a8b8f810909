//! The operator's sentinel probe against real `redis-server` and `redis-sentinel` processes on
//! loopback ports (the chat-tests harness starts and kills them): it names the master the
//! sentinels monitor, follows a failover and authenticates to a sentinel with a password.

use std::time::Duration;

use chat_operator::sentinel::{FredSentinelProbe, MasterAddr, MasterQuery, SentinelProbe};
use chat_tests::redis::{MASTER_NAME, Resp, SentinelCluster};

/// Ask the sentinel on 127.0.0.1:`port` about `master_name`.
async fn ask(
    port: u16,
    password: Option<&str>,
    master_name: &str,
) -> chat_operator::Result<Option<MasterAddr>> {
    let addr = format!("127.0.0.1:{port}");
    let query = MasterQuery {
        addr: &addr,
        password,
        master_name,
    };
    FredSentinelProbe::default().master_addr(query).await
}

/// The harness announces every node as 127.0.0.1, so the port tells the nodes apart.
fn local(port: u16) -> Option<MasterAddr> {
    Some(MasterAddr {
        host: "127.0.0.1".to_owned(),
        port,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_names_the_master_and_after_a_failover_the_new_one() {
    let mut cluster = SentinelCluster::start(1, 3, Some("probe-data-pw"));
    let old = cluster.current_master_port();
    assert_eq!(old, cluster.master.port);
    for s in &cluster.sentinels {
        assert_eq!(ask(s.port, None, MASTER_NAME).await.unwrap(), local(old));
        assert_eq!(ask(s.port, None, "no-such-master").await.unwrap(), None);
    }

    cluster.data_node_mut(old).kill9();
    let new = cluster.wait_for_new_master(old, Duration::from_secs(20));
    assert_ne!(new, old);
    assert_eq!(new, cluster.replicas[0].port);
    for s in &cluster.sentinels {
        assert_eq!(ask(s.port, None, MASTER_NAME).await.unwrap(), local(new));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_authenticates_to_a_sentinel_with_a_password() {
    let cluster = SentinelCluster::start(0, 1, None);
    let sentinel = &cluster.sentinels[0];
    // Sentinels take ACL commands: from now on only an authenticated client gets answers.
    assert_eq!(
        sentinel.command(&["ACL", "SETUSER", "default", "on", ">probe-sentinel-pw"]),
        Resp::Simple("OK".to_owned())
    );
    assert!(ask(sentinel.port, None, MASTER_NAME).await.is_err());
    assert!(
        ask(sentinel.port, Some("wrong"), MASTER_NAME)
            .await
            .is_err()
    );
    assert_eq!(
        ask(sentinel.port, Some("probe-sentinel-pw"), MASTER_NAME)
            .await
            .unwrap(),
        local(cluster.master.port)
    );
}
