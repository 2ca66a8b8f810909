//! The operator's role probe and its verdict against real `redis-server` processes on loopback
//! ports (the chat-tests harness starts them): a master with a replica attached, the replica,
//! and a replica promoted by hand so that two nodes say master.

use std::time::{Duration, Instant};

use chat_operator::role::{
    FredRoleProbe, NodeRole, RoleCheck, RoleProbe, RoleQuery, check_roles, may_label_master,
};
use chat_tests::redis::{RedisOpts, RedisServer};

const PASSWORD: &str = "role-probe-pw";

async fn role_of(node: &RedisServer) -> NodeRole {
    let addr = format!("127.0.0.1:{}", node.port);
    let query = RoleQuery {
        addr: &addr,
        password: Some(PASSWORD),
    };
    FredRoleProbe::default()
        .role(query)
        .await
        .unwrap_or_else(|e| panic!("ROLE of {addr}: {e}"))
}

/// Ask `node` until its role is `want` (replication takes a moment to connect).
async fn wait_for_role(node: &RedisServer, want: &NodeRole) -> NodeRole {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let role = role_of(node).await;
        if role == *want || Instant::now() > deadline {
            return role;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_reads_real_roles_and_the_verdict_catches_two_masters_and_a_mislabel() {
    let master = RedisServer::start(RedisOpts {
        password: Some(PASSWORD.to_owned()),
        ..RedisOpts::default()
    });
    let replica = RedisServer::start(RedisOpts {
        password: Some(PASSWORD.to_owned()),
        replica_of: Some(master.port),
        ..RedisOpts::default()
    });

    let attached = NodeRole::Master { replicas: 1 };
    assert_eq!(wait_for_role(&master, &attached).await, attached);
    let following = NodeRole::Replica {
        master: format!("127.0.0.1:{}", master.port),
        linked: true,
    };
    assert_eq!(wait_for_role(&replica, &following).await, following);

    let roles = vec![
        ("redis-0".to_owned(), Some(role_of(&master).await)),
        ("redis-1".to_owned(), Some(role_of(&replica).await)),
    ];
    assert_eq!(check_roles(Some("redis-0"), &roles), RoleCheck::Consistent);
    // Sentinels naming the replica do not get the label moved to it.
    let mislabel = check_roles(Some("redis-1"), &roles);
    assert!(
        matches!(&mislabel, RoleCheck::MasterIsReplica { pod, .. } if pod == "redis-1"),
        "{mislabel:?}"
    );
    assert!(!may_label_master(&mislabel, "redis-1"));

    // Promote the replica by hand: two real masters.
    assert!(
        replica
            .command(&["REPLICAOF", "NO", "ONE"])
            .as_text()
            .is_some()
    );
    let alone = NodeRole::Master { replicas: 0 };
    assert_eq!(wait_for_role(&replica, &alone).await, alone);
    let roles = vec![
        ("redis-0".to_owned(), Some(role_of(&master).await)),
        ("redis-1".to_owned(), Some(role_of(&replica).await)),
    ];
    assert_eq!(
        check_roles(Some("redis-0"), &roles),
        RoleCheck::MultipleMasters(vec!["redis-0".to_owned(), "redis-1".to_owned()])
    );
}

#[tokio::test]
async fn a_wrong_password_or_a_closed_port_is_an_error_not_a_role() {
    let node = RedisServer::start(RedisOpts {
        password: Some(PASSWORD.to_owned()),
        ..RedisOpts::default()
    });
    let addr = format!("127.0.0.1:{}", node.port);
    let probe = FredRoleProbe {
        timeout: Duration::from_millis(500),
    };
    let wrong = RoleQuery {
        addr: &addr,
        password: Some("wrong"),
    };
    assert!(probe.role(wrong).await.is_err());
    let closed = RoleQuery {
        addr: "127.0.0.1:1",
        password: None,
    };
    assert!(probe.role(closed).await.is_err());
}
