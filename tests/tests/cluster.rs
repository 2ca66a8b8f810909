//! Cluster mode against real processes: redis-server and several chat-server binaries, each on
//! free loopback ports, all killed when the test ends (pass or fail).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chat_tests::process::ServerProcess;
use chat_tests::redis::{RedisOpts, RedisServer};
use chat_tests::{Client, body, send_run};

const ROOM: &str = "/topic/room/lobby";
const SEND: &str = "/app/room/lobby";
const QUIET: (&str, &str) = ("x-presence", "false");

/// Environment for an instance on `redis`, with a fast registry so tests don't wait long.
fn env(redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![
        ("CHAT_REDIS_URL", redis.url()),
        ("CHAT_HEARTBEAT_INTERVAL_MS", "200".into()),
        ("CHAT_SERVER_TTL_MS", "800".into()),
        ("CHAT_SEND_RATE", "0".into()),
    ]
}

async fn instance(id: &str, env: &[(&'static str, String)]) -> ServerProcess {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let p = ServerProcess::start(id, &pairs).await;
    p.wait_ready(Duration::from_secs(10)).await;
    p
}

async fn presence(p: &ServerProcess, room: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = reqwest::get(p.url(&format!("/api/rooms/{room}/presence")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["members"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_message_reaches_every_client_on_two_instances_once_and_in_order() {
    let redis = RedisServer::start(RedisOpts::default());
    let e = env(&redis);
    let (a, b) = (instance("a", &e).await, instance("b", &e).await);
    let mut subs = Vec::new();
    for (i, p) in [&a, &b, &a, &b].iter().enumerate() {
        let mut c = Client::login(&p.ws_url(), &format!("reader{i}")).await;
        c.subscribe("0", ROOM, &[QUIET]).await;
        subs.push(c);
    }
    let mut pa = Client::login(&a.ws_url(), "pa").await;
    let mut pb = Client::login(&b.ws_url(), "pb").await;
    for i in 0..50 {
        pa.send(SEND, &format!("a{i}")).await;
        pb.send(SEND, &format!("b{i}")).await;
    }
    for (n, c) in subs.iter_mut().enumerate() {
        let mut seen = Vec::new();
        for _ in 0..100 {
            let m = c.next_message().await;
            seen.push((
                m.header("x-offset").unwrap().parse::<u64>().unwrap(),
                body(&m)["content"].as_str().unwrap().to_owned(),
            ));
        }
        let offsets: Vec<u64> = seen.iter().map(|s| s.0).collect();
        assert_eq!(
            offsets,
            (1..=100).collect::<Vec<_>>(),
            "reader {n}: all, once, in order"
        );
        let contents: HashSet<&String> = seen.iter().map(|s| &s.1).collect();
        assert_eq!(contents.len(), 100);
        c.expect_quiet(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn direct_messages_and_presence_cross_instances() {
    let redis = RedisServer::start(RedisOpts::default());
    let e = env(&redis);
    let (a, b) = (instance("a", &e).await, instance("b", &e).await);
    let mut bob = Client::login(&b.ws_url(), "bob").await;
    bob.subscribe("dm", "/user/queue/messages", &[]).await;
    let mut ann = Client::login(&a.ws_url(), "ann").await;
    ann.send("/app/user/bob", "hi bob").await;
    let m = bob.next_event().await;
    assert_eq!(
        (m["content"].as_str(), m["sender"]["id"].as_str()),
        (Some("hi bob"), Some("ann"))
    );

    ann.subscribe("r", ROOM, &[]).await;
    bob.subscribe("r", ROOM, &[]).await;
    let mut ids: Vec<String> = presence(&a, "lobby")
        .await
        .iter()
        .map(|m| m["serverId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
    // ann sees her own JOIN and then bob's, made on the other instance.
    assert_eq!(ann.next_event().await["sender"]["id"], "ann");
    let j = ann.next_event().await;
    assert_eq!(
        (
            j["type"].as_str(),
            j["sender"]["id"].as_str(),
            j["serverId"].as_str()
        ),
        (Some("JOIN"), Some("bob"), Some("b"))
    );
}

#[tokio::test]
async fn a_direct_message_published_twice_reaches_its_user_once() {
    use chat_server::model::{DirectRecord, EventKind, Sender};
    let redis = RedisServer::start(RedisOpts::default());
    let e = env(&redis);
    let b = instance("b", &e).await;
    let mut bob = Client::login(&b.ws_url(), "bob").await;
    bob.subscribe("dm", "/user/queue/messages", &[]).await;
    // What Redis sees when fred resends a PUBLISH whose reply was lost: the same record again.
    // Direct messages are not stored, so the receiving instance is where the resend is caught.
    let record = |id: &str, content: &str| {
        serde_json::to_string(&DirectRecord {
            id: id.into(),
            kind: EventKind::Chat,
            sender: Sender {
                id: "ann".into(),
                name: "ann".into(),
            },
            to: "bob".into(),
            content: content.into(),
            sent_at: "2026-11-23T00:00:00.000Z".into(),
            server_id: "a".into(),
            extra: Default::default(),
            headers: Vec::new(),
        })
        .unwrap()
    };
    let once = record("dm-1", "once");
    for _ in 0..2 {
        assert_eq!(
            redis.cli(&["PUBLISH", "chat:ch:user:bob", &once]).trim(),
            "1"
        );
    }
    let next = record("dm-2", "next");
    redis.cli(&["PUBLISH", "chat:ch:user:bob", &next]);
    let m = bob.next_event().await;
    assert_eq!(
        (m["id"].as_str(), m["content"].as_str()),
        (Some("dm-1"), Some("once"))
    );
    let m = bob.next_event().await;
    assert_eq!(
        m["content"].as_str(),
        Some("next"),
        "the resend of dm-1 was dropped: {m}"
    );
}

#[tokio::test]
async fn the_sessions_of_a_killed_instance_get_exactly_one_leave_each_and_its_keys_go() {
    let redis = RedisServer::start(RedisOpts::default());
    let e = env(&redis);
    let (a, b, mut c) = (
        instance("a", &e).await,
        instance("b", &e).await,
        instance("c", &e).await,
    );
    let mut watcher = Client::login(&a.ws_url(), "watcher").await;
    watcher.subscribe("w", ROOM, &[QUIET]).await;
    let mut doomed = Vec::new();
    for name in ["c1", "c2"] {
        let mut x = Client::login(&c.ws_url(), name).await;
        x.subscribe("0", ROOM, &[]).await;
        doomed.push(x);
    }
    let mut survivor = Client::login(&b.ws_url(), "b1").await;
    survivor.subscribe("0", ROOM, &[]).await;
    for _ in 0..3 {
        assert_eq!(watcher.next_event().await["type"], "JOIN");
    }
    assert!(redis.cli(&["EXISTS", "chat:srv:c"]) == "1");

    c.signal("KILL");
    let killed = Instant::now();
    let mut leaves = Vec::new();
    while leaves.len() < 2 {
        let ev = watcher.next_event().await;
        assert_eq!(ev["type"], "LEAVE", "{ev}");
        leaves.push(ev["sender"]["id"].as_str().unwrap().to_owned());
    }
    let took = killed.elapsed();
    leaves.sort();
    assert_eq!(leaves, ["c1", "c2"]);
    // TTL (800 ms) + one heartbeat interval (200 ms), with slack for a loaded machine.
    assert!(took < Duration::from_millis(2500), "LEAVEs took {took:?}");
    watcher.expect_quiet(Duration::from_millis(1500)).await;
    let members: Vec<String> = presence(&b, "lobby")
        .await
        .iter()
        .map(|m| m["userId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(members, ["b1"]);
    assert_eq!(redis.cli(&["EXISTS", "chat:srv:c"]), "0");
    assert_eq!(redis.cli(&["ZSCORE", "chat:servers", "c"]), "");
    drop(doomed);
    let _ = c.wait_exit(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_instance_paused_past_its_ttl_comes_back_and_restores_its_presence_once() {
    let redis = RedisServer::start(RedisOpts::default());
    let e = env(&redis);
    let (a, b) = (instance("a", &e).await, instance("b", &e).await);
    let mut watcher = Client::login(&a.ws_url(), "watcher").await;
    watcher.subscribe("w", ROOM, &[QUIET]).await;
    let mut sleeper = Client::login(&b.ws_url(), "sleeper").await;
    sleeper.subscribe("0", ROOM, &[]).await;
    assert_eq!(watcher.next_event().await["type"], "JOIN");

    b.signal("STOP");
    let leave = watcher.next_event().await;
    assert_eq!(
        (leave["type"].as_str(), leave["sender"]["id"].as_str()),
        (Some("LEAVE"), Some("sleeper"))
    );
    assert!(presence(&a, "lobby").await.is_empty());
    b.signal("CONT");
    let join = watcher.next_event().await;
    assert_eq!(
        (join["type"].as_str(), join["sender"]["id"].as_str()),
        (Some("JOIN"), Some("sleeper"))
    );
    b.wait_ready(Duration::from_secs(5)).await;
    let members = presence(&a, "lobby").await;
    assert_eq!(members.len(), 1, "no duplicate presence: {members:?}");
    assert_eq!(members[0]["userId"], "sleeper");
    watcher.expect_quiet(Duration::from_millis(1000)).await;
}

#[tokio::test]
async fn a_redis_restart_without_persistence_changes_the_epoch_and_chat_goes_on() {
    let mut redis = RedisServer::start(RedisOpts::default());
    let e = env(&redis);
    let a = instance("a", &e).await;
    let mut c = Client::login(&a.ws_url(), "ann").await;
    c.send(SEND, "before").await;
    let room: serde_json::Value = reqwest::get(a.url("/api/rooms/lobby"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old_epoch = room["epoch"].as_str().unwrap().to_owned();
    drop(c);

    redis.restart();
    a.wait_ready(Duration::from_secs(10)).await;
    let mut c = Client::login(&a.ws_url(), "ann").await;
    c.send(SEND, "after").await;
    let mut back = Client::login(&a.ws_url(), "back").await;
    back.subscribe(
        "0",
        ROOM,
        &[("x-since-offset", "1"), ("x-epoch", &old_epoch), QUIET],
    )
    .await;
    let m = back.next_message().await;
    assert_eq!(m.header("x-recovered"), Some("false"));
    assert_ne!(m.header("x-epoch"), Some(old_epoch.as_str()));
    c.send(SEND, "still chatting").await;
    let live = back.next_event().await;
    assert_eq!(
        (live["content"].as_str(), live["offset"].as_u64()),
        (Some("still chatting"), Some(2))
    );
}

#[tokio::test]
async fn with_redis_down_sends_fail_clearly_readiness_drops_and_everything_recovers() {
    let mut redis = RedisServer::start(RedisOpts::default());
    let mut e = env(&redis);
    e.push(("CHAT_REDIS_WAIT_MS", "1000".into()));
    let a = instance("a", &e).await;
    let mut sub = Client::login(&a.ws_url(), "sub").await;
    sub.subscribe("0", ROOM, &[QUIET]).await;
    let port = redis.port;
    redis.kill9();
    let down = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.is_ready().await {
        assert!(
            Instant::now() < deadline,
            "readiness stayed green with Redis down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = Client::login(&a.ws_url(), "sender").await;
    c.send_frame(
        &chat_wire::stomp::Frame::new(chat_wire::stomp::Command::Send)
            .with_header("destination", SEND)
            .with_header("receipt", "r1")
            .with_body("lost?"),
    )
    .await;
    let err = c.expect_error().await;
    assert!(
        err.header("message")
            .unwrap()
            .contains("service unavailable"),
        "{err:?}"
    );
    // Stay down for 10 s in all, then come back on the same port.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    redis.restart();
    assert_eq!(redis.port, port);
    a.wait_ready(Duration::from_secs(15)).await;
    let mut c = Client::login(&a.ws_url(), "sender").await;
    c.send(SEND, "back").await;
    let ev = sub.next_event().await;
    assert_eq!(
        ev["content"], "back",
        "the subscriber stayed connected throughout"
    );
}

#[tokio::test]
async fn a_publish_is_one_redis_round_trip_whatever_the_fan_out() {
    let redis = RedisServer::start(RedisOpts::default());
    let mut e = env(&redis);
    // Quiet housekeeping so the statistics count only publishes.
    e.retain(|(k, _)| !k.starts_with("CHAT_HEARTBEAT") && !k.starts_with("CHAT_SERVER_TTL"));
    e.push(("CHAT_HEARTBEAT_INTERVAL_MS", "60000".into()));
    e.push(("CHAT_SERVER_TTL_MS", "120000".into()));
    let (a, b) = (instance("a", &e).await, instance("b", &e).await);
    let mut subs = Vec::new();
    for (i, p) in [&a, &b, &a, &b, &a, &b].iter().enumerate() {
        let mut c = Client::login(&p.ws_url(), &format!("r{i}")).await;
        c.subscribe("0", ROOM, &[QUIET]).await;
        subs.push(c);
    }
    let mut p = Client::login(&a.ws_url(), "p").await;
    // The first call loads the script (NOSCRIPT, SCRIPT LOAD, EVALSHA); count from the second on.
    p.send(SEND, "warm-up").await;
    for c in &mut subs {
        c.next_message().await;
    }
    redis.cli(&["CONFIG", "RESETSTAT"]);
    for i in 0..20 {
        p.send(SEND, &format!("m{i}")).await;
    }
    for c in &mut subs {
        for _ in 0..20 {
            c.next_message().await;
        }
    }
    let stats = redis.info("commandstats");
    let calls = |cmd: &str| -> u64 {
        stats
            .get(&format!("cmdstat_{cmd}"))
            .and_then(|v| v.split(',').next())
            .and_then(|c| c.strip_prefix("calls="))
            .map_or(0, |n| n.parse().unwrap())
    };
    let client_commands: u64 = stats
        .iter()
        .filter(|(k, _)| k.starts_with("cmdstat_"))
        .filter(|(k, _)| {
            ![
                "cmdstat_xadd",
                "cmdstat_hget",
                "cmdstat_hincrby",
                "cmdstat_expire",
                "cmdstat_zadd",
                "cmdstat_publish",
                "cmdstat_time",
                "cmdstat_hset",
            ]
            .contains(&k.as_str())
                && !k.starts_with("cmdstat_config")
                && !k.starts_with("cmdstat_info")
        })
        .map(|(k, _)| calls(k.trim_start_matches("cmdstat_")))
        .sum();
    println!("commandstats after 20 publishes to 6 subscribers on 2 instances: {stats:?}");
    assert_eq!(calls("evalsha"), 20, "one script call per publish");
    assert_eq!(client_commands, 20, "nothing else went to Redis: {stats:?}");
    assert_eq!(
        calls("publish"),
        20,
        "one PUBLISH per message, not per subscriber or instance"
    );
    assert_eq!(calls("xadd"), 20);
}

#[tokio::test]
async fn a_retried_publish_of_the_same_message_is_stored_and_delivered_once() {
    use chat_server::broker::redis::RedisBackend;
    use chat_server::broker::{Broker, History, Presence};
    use chat_server::model::Member;
    use chat_server::model::{Draft, EventKind, Sender};
    let redis = RedisServer::start(RedisOpts::default());
    let mut config = chat_server::Config::for_tests();
    config.backend = chat_server::config::Backend::Redis { url: redis.url() };
    let backend = RedisBackend::start(&config, chat_server::hub::Hub::new())
        .await
        .unwrap();
    let draft = Draft::new(
        EventKind::Chat,
        Sender {
            id: "u".into(),
            name: "U".into(),
        },
        "once".into(),
        "s",
    );
    let first = backend.publish("retry", draft.clone()).await.unwrap();
    let other = backend
        .publish(
            "retry",
            Draft {
                id: "another".into(),
                ..draft.clone()
            },
        )
        .await
        .unwrap();
    // A presence event in between: an append without a message id.
    let member = Member {
        user_id: "u".into(),
        name: "U".into(),
        session_id: "s1".into(),
        server_id: "s".into(),
    };
    assert!(backend.join("retry", &member).await.unwrap());
    // What a client library does when the reply to the first call was lost.
    let again = backend.publish("retry", draft.clone()).await.unwrap();
    assert_eq!((first.offset(), other.offset(), again.offset()), (1, 2, 1));
    assert_eq!(again.record, first.record, "the stored record comes back");
    let page = backend.read_after("retry", 0, 10).await.unwrap();
    assert_eq!(page.events.len(), 3);
    assert_eq!(page.info.last_offset, 3, "no offset was spent on the retry");
    // A resend comes when the connection is back, however many appends went in meanwhile
    // (an instance paused for 3 s met one 154 appends later): still the same message.
    for i in 0..200 {
        let d = Draft {
            id: format!("later-{i}"),
            ..draft.clone()
        };
        backend.publish("retry", d).await.unwrap();
    }
    let late = backend.publish("retry", draft.clone()).await.unwrap();
    assert_eq!(late.record, first.record, "caught 200 appends later");
    let page = backend.read_after("retry", 200, 10).await.unwrap();
    assert_eq!(
        page.info.last_offset, 203,
        "no offset was spent on the late retry"
    );
    // The check goes by time: the ids live in hashes per 30-second bucket of Redis time, the
    // current and the previous bucket are looked in, and each lives 60 s. With those gone
    // (as after a minute), the same id is a message of its own again.
    let keys = redis.cli(&["KEYS", "chat:ids:retry:*"]);
    let keys: Vec<&str> = keys.split_whitespace().collect();
    assert!((1..=2).contains(&keys.len()), "{keys:?}");
    let mut entries = 0;
    for k in &keys {
        let ttl: i64 = redis.cli(&["TTL", k]).trim().parse().unwrap();
        assert!((1..=60).contains(&ttl), "{k} ttl {ttl}");
        entries += redis.cli(&["HLEN", k]).trim().parse::<u64>().unwrap();
    }
    assert_eq!(
        entries, 202,
        "one entry per message, none for presence events"
    );
    let mut del = vec!["DEL"];
    del.extend(&keys);
    redis.cli(&del);
    let after = backend.publish("retry", draft).await.unwrap();
    assert_eq!(after.offset(), 204);
}

/// The publish script as the server sends it, run straight with EVAL: a message that reaches
/// Redis past its deadline (30 s after the instance took it: an instance paused longer than
/// the duplicate check's window) is refused, unless it is a resend already in, which gets its
/// record back as always.
#[test]
fn a_message_past_its_deadline_is_refused_unless_it_is_already_in() {
    use chat_tests::redis::Resp;
    let redis = RedisServer::start(RedisOpts::default());
    let script = chat_server::broker::redis::publish_script_source();
    let time = redis.cli(&["TIME"]);
    let mut t = time.split_whitespace().map(|v| v.parse::<i64>().unwrap());
    let now = t.next().unwrap() * 1000 + t.next().unwrap() / 1000;
    let publish = |id: &str, deadline: &str| {
        let body = format!(r#"{{"id":"{id}","roomId":"late","type":"CHAT","content":"x"}}"#);
        redis.command(&[
            "EVAL", &script, "0", "chat", "late", &body, "e1", "1000", "0", "1", id, deadline,
        ])
    };
    let (later, past) = ((now + 30_000).to_string(), (now - 1).to_string());
    let first = publish("m1", &later).as_text().unwrap();
    assert!(
        first.starts_with(r#"{"offset":1,"epoch":"e1","id":"m1""#),
        "{first}"
    );
    // fred's resend of m1 after a long pause: already in, so its record, not an error.
    assert_eq!(publish("m1", &past).as_text().unwrap(), first);
    // A message not in, past its deadline: refused, nothing stored, no offset spent.
    match publish("m2", &past) {
        Resp::Error(e) => assert!(e.starts_with("STALE "), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(redis.cli(&["XLEN", "chat:log:late"]).trim(), "1");
    assert_eq!(redis.cli(&["HGET", "chat:room:late", "last"]).trim(), "1");
    // Without a deadline (before the instance has read Redis's clock) nothing is refused.
    let second = publish("m3", "").as_text().unwrap();
    assert!(second.starts_with(r#"{"offset":2,"#), "{second}");
}

#[tokio::test]
async fn sends_that_arrive_together_are_one_pipeline_receipted_and_delivered_in_order() {
    let redis = RedisServer::start(RedisOpts::default());
    let e = env(&redis);
    let (a, b) = (instance("a", &e).await, instance("b", &e).await);
    let mut reader = Client::login(&b.ws_url(), "reader").await;
    reader.subscribe("0", ROOM, &[QUIET]).await;
    let mut p = Client::login(&a.ws_url(), "p").await;
    // Not warmed up: the first pipeline meets NOSCRIPT, loads the script and goes again.
    p.send_raw(&send_run(0..40, |_| SEND.to_owned())).await;
    p.expect_run_receipts(0..40).await;
    redis.cli(&["SCRIPT", "FLUSH"]);
    p.send_raw(&send_run(40..80, |_| SEND.to_owned())).await;
    p.expect_run_receipts(40..80).await;
    for i in 0..80 {
        let m = reader.next_message().await;
        assert_eq!(m.header("x-offset"), Some((i + 1).to_string().as_str()));
        assert_eq!(body(&m)["content"], format!("m{i}"));
    }
    reader.expect_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_bad_send_in_a_run_gets_the_error_after_the_receipts_of_those_before_it() {
    let redis = RedisServer::start(RedisOpts::default());
    let a = instance("a", &env(&redis)).await;
    let mut reader = Client::login(&a.ws_url(), "reader").await;
    reader.subscribe("0", ROOM, &[QUIET]).await;
    let mut p = Client::login(&a.ws_url(), "p").await;
    let dest = |i: usize| {
        if i == 5 {
            "/app/nowhere".to_owned()
        } else {
            SEND.to_owned()
        }
    };
    p.send_raw(&send_run(0..10, dest)).await;
    p.expect_run_receipts(0..5).await;
    let err = p.expect_error().await;
    assert_eq!(err.header("receipt-id"), Some("r5"), "{err:?}");
    for i in 0..5 {
        assert_eq!(
            body(&reader.next_message().await)["content"],
            format!("m{i}")
        );
    }
    reader.expect_quiet(Duration::from_millis(300)).await;
}

/// A Spring front-end's message DTO with a nested field and envelope names it may not set.
const SPRING_DTO: &str = r#"{"chatRoomId":"7","senderNickname":"ann","content":"hi","messageType":"TALK",
    "nested":{"n":[1,2.5,"é"]},"sender":{"id":"evil"},"offset":99,"id":"x"}"#;

/// The event carries the DTO's fields exactly, and the server's envelope.
fn assert_spring_event(e: &serde_json::Value) {
    assert_eq!(
        (
            e["content"].as_str(),
            e["chatRoomId"].as_str(),
            e["senderNickname"].as_str(),
            e["messageType"].as_str(),
            e["sender"]["id"].as_str(),
        ),
        (
            Some("hi"),
            Some("7"),
            Some("ann"),
            Some("TALK"),
            Some("ann")
        ),
        "{e}"
    );
    assert_eq!(e["nested"], serde_json::json!({"n": [1, 2.5, "é"]}), "{e}");
    assert_eq!(e["offset"], 1, "{e}");
    assert_ne!(e["id"], "x", "{e}");
}

#[tokio::test]
async fn a_spring_dto_crosses_instances_with_its_fields_live_recovered_and_in_history() {
    let redis = RedisServer::start(RedisOpts::default());
    let e = env(&redis);
    let (a, b) = (instance("a", &e).await, instance("b", &e).await);
    let mut live = Client::login(&b.ws_url(), "live").await;
    live.subscribe("0", "/topic/room/7", &[QUIET]).await;
    let mut ann = Client::login(&a.ws_url(), "ann").await;
    ann.send("/app/room/7", SPRING_DTO).await;
    let first = live.next_event().await;
    assert_spring_event(&first);
    let epoch = first["epoch"].as_str().unwrap();

    let mut back = Client::login(&b.ws_url(), "back").await;
    back.subscribe(
        "0",
        "/topic/room/7",
        &[("x-since-offset", "0"), ("x-epoch", epoch), QUIET],
    )
    .await;
    assert_spring_event(&back.next_event().await);
    let mut hist = Client::login(&a.ws_url(), "hist").await;
    hist.subscribe("0", "/topic/room/7", &[("x-history", "5"), QUIET])
        .await;
    assert_spring_event(&hist.next_event().await);
    let h: serde_json::Value = reqwest::get(b.url("/api/rooms/7/messages"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_spring_event(&h["messages"][0]);

    let mut bob = Client::login(&b.ws_url(), "bob").await;
    bob.subscribe("dm", "/user/queue/messages", &[]).await;
    ann.send("/app/user/bob", SPRING_DTO).await;
    let dm = bob.next_event().await;
    assert_eq!(
        (dm["to"].as_str(), dm["messageType"].as_str()),
        (Some("bob"), Some("TALK")),
        "{dm}"
    );
    assert_eq!(dm["nested"]["n"][2], "é");
}

#[tokio::test]
async fn a_receipted_user_queue_subscription_is_already_in_redis() {
    let redis = RedisServer::start(RedisOpts::default());
    let b = instance("b", &env(&redis)).await;
    // Room subscriptions coming and going meanwhile keep the subscriber connection busy with
    // SUBSCRIBE and UNSUBSCRIBE, as when the miss was seen in CI.
    let url = b.ws_url();
    let churn = tokio::spawn(async move {
        let mut c = Client::login(&url, "churn").await;
        for i in 0..200 {
            let id = format!("r{i}");
            c.subscribe(&id, &format!("/topic/room/churn{i}"), &[QUIET])
                .await;
            c.unsubscribe(&id).await;
        }
    });
    for i in 0..50 {
        let user = format!("user{i}");
        let mut c = Client::login(&b.ws_url(), &user).await;
        c.subscribe("dm", "/user/queue/messages", &[]).await;
        // The RECEIPT is back: a direct message published now must find a subscriber.
        let reply = redis.command(&["PUBSUB", "NUMSUB", &format!("chat:ch:user:{user}")]);
        let subscribers = reply.as_array().unwrap()[1].as_int().unwrap();
        assert_eq!(
            subscribers, 1,
            "{user}'s channel has no subscriber after the RECEIPT"
        );
    }
    churn.await.unwrap();
}
