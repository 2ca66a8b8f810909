#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Tests of the Redis / Sentinel test harness itself.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use chat_tests::redis::{RedisOpts, RedisServer, Resp, SentinelCluster, resp_command};

fn pong() -> Resp {
    Resp::Simple("PONG".to_owned())
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
}

#[test]
fn a_redis_server_starts_answers_and_is_gone_after_drop() {
    let server = RedisServer::start(RedisOpts::default());
    let port = server.port;
    let pid = server.pid();
    let dir = server.dir.path().to_owned();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert!(server.is_alive());
    assert_eq!(server.cli(&["PING"]), "PONG");
    assert_eq!(server.cli(&["SET", "greeting", "hello world"]), "OK");
    assert_eq!(server.cli(&["GET", "greeting"]), "hello world");
    assert_eq!(
        server.command(&["GET", "greeting"]).as_text().as_deref(),
        Some("hello world")
    );
    assert_eq!(
        server.info("replication").get("role").map(String::as_str),
        Some("master")
    );
    assert!(connect(port).is_ok());

    drop(server);

    assert!(
        connect(port).is_err(),
        "port {port} still accepts connections after drop"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists after drop"
    );
    assert!(
        !dir.exists(),
        "temp dir {} still exists after drop",
        dir.display()
    );
}

#[test]
fn a_password_protected_server_refuses_commands_without_auth() {
    let server = RedisServer::start(RedisOpts {
        password: Some("top secret".to_owned()),
        ..RedisOpts::default()
    });
    let timeout = Duration::from_secs(5);

    let unauthenticated = resp_command(server.port, None, &["SET", "k", "v"], timeout).unwrap();
    assert!(
        matches!(&unauthenticated, Resp::Error(e) if e.starts_with("NOAUTH")),
        "{unauthenticated:?}"
    );
    let wrong = resp_command(server.port, Some("wrong"), &["GET", "k"], timeout).unwrap();
    assert!(
        matches!(&wrong, Resp::Error(e) if e.starts_with("WRONGPASS")),
        "{wrong:?}"
    );

    assert_eq!(server.password(), Some("top secret"));
    assert_eq!(server.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(
        server.command(&["GET", "k"]),
        Resp::Bulk(Some(b"v".to_vec()))
    );
}

#[test]
fn restart_keeps_the_port_and_loses_the_data() {
    let mut server = RedisServer::start(RedisOpts::default());
    let port = server.port;
    let old_pid = server.pid();
    assert_eq!(server.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(server.command(&["DBSIZE"]).as_int(), Some(1));

    server.restart();

    assert_eq!(server.port, port);
    assert_ne!(server.pid(), old_pid);
    assert!(server.is_alive());
    assert!(
        !Path::new(&format!("/proc/{old_pid}")).exists(),
        "old pid {old_pid} still exists"
    );
    assert!(server.command(&["GET", "k"]).is_nil());
    assert_eq!(server.command(&["DBSIZE"]).as_int(), Some(0));
    assert_eq!(server.cli(&["PING"]), "PONG");
}

#[test]
fn sigstop_makes_the_server_unresponsive_until_sigcont() {
    let server = RedisServer::start(RedisOpts::default());
    assert_eq!(server.command(&["PING"]), pong());

    server.stop_signal();
    let stopped = server.try_command(&["PING"], Duration::from_millis(500));
    assert!(stopped.is_err(), "a stopped server answered: {stopped:?}");
    assert!(server.is_alive(), "a stopped server is still alive");

    server.cont_signal();
    assert_eq!(server.command(&["PING"]), pong());
}

#[test]
fn sentinel_fails_over_to_the_replica_after_kill9_of_the_master() {
    let started = Instant::now();
    let mut cluster = SentinelCluster::start(1, 3, Some("failover-pw"));
    println!("Sentinel setup ready after {:?}", started.elapsed());
    let old = cluster.current_master_port();
    assert_eq!(old, cluster.master.port);
    let replica_port = cluster.replicas[0].port;
    assert_eq!(cluster.sentinel_addrs().split(',').count(), 3);

    assert_eq!(
        cluster
            .master
            .cli(&["SET", "failover:key", "written before"]),
        "OK"
    );
    let acked = (0..10)
        .map(|_| cluster.master.command(&["WAIT", "1", "1000"]).as_int())
        .find(|n| *n == Some(1));
    assert_eq!(
        acked,
        Some(Some(1)),
        "the replica never acknowledged the write"
    );

    let killed = Instant::now();
    cluster.master.kill9();
    let new = cluster.wait_for_new_master(old, Duration::from_secs(15));
    let took = killed.elapsed();
    println!("failover: sentinels agree on {new} {took:?} after kill -9 of {old}");

    assert_eq!(new, replica_port);
    assert_eq!(cluster.current_master_port(), new);
    let node = cluster.data_node_mut(new);
    assert_eq!(node.cli(&["GET", "failover:key"]), "written before");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let role = node.command(&["ROLE"]);
        let first = role
            .as_array()
            .and_then(|a| a.first())
            .and_then(Resp::as_text);
        if first.as_deref() == Some("master") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new master answers ROLE with {role:?}"
        );
        sleep(Duration::from_millis(50));
    }
    assert_eq!(node.cli(&["SET", "failover:key", "written after"]), "OK");
}
