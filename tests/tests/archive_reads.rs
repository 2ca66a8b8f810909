//! History reads past the Redis window, against real processes: redis-server, PostgreSQL
//! (Debian's, from `chat_tests::postgres`) and chat-server binaries with a small
//! `CHAT_HISTORY_MAX_LEN`, so most of a room's history is in the archive only. REST paging,
//! `x-history` and recovery must give back exactly what was receipted (no gap, no duplicate),
//! and say so plainly when they cannot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_tests::postgres::Postgres;
use chat_tests::process::ServerProcess;
use chat_tests::redis::{RedisOpts, RedisServer};
use chat_tests::{Client, TestServer};
use serde_json::Value;

const QUIET: (&str, &str) = ("x-presence", "false");
/// What Redis keeps per room in these tests.
const WINDOW: usize = 20;

/// One chat-server on `redis` archiving to `pg`, keeping `WINDOW` messages per room in Redis.
async fn archiving_server(redis: &RedisServer, pg: &Postgres) -> ServerProcess {
    let (redis_url, pg_url, window) = (redis.url(), pg.url(), WINDOW.to_string());
    let server = ServerProcess::start(
        "reads",
        &[
            ("CHAT_REDIS_URL", redis_url.as_str()),
            ("CHAT_ARCHIVE_URL", pg_url.as_str()),
            ("CHAT_HISTORY_MAX_LEN", window.as_str()),
            ("CHAT_SEND_RATE", "0"),
            ("CHAT_USER_SEND_RATE", "0"),
        ],
    )
    .await;
    server.wait_ready(Duration::from_secs(10)).await;
    server
}

/// Sends `n` messages to `room` (each receipted) and returns what a subscriber received:
/// offset -> event, and the room's epoch.
async fn publish(server: &ServerProcess, room: &str, n: usize) -> (BTreeMap<u64, Value>, String) {
    let mut reader = Client::login(&server.ws_url(), "reader").await;
    reader
        .subscribe("r", &format!("/topic/room/{room}"), &[QUIET])
        .await;
    let mut sender = Client::login(&server.ws_url(), "ann").await;
    for i in 0..n {
        let body = format!(r#"{{"content":"m{i}","n":{i},"tag":{{"k":"v{i}"}}}}"#);
        sender
            .send_with(&format!("/app/room/{room}"), &body, &[("x-trace", "t")])
            .await;
    }
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let ev = reader.next_event().await;
        seen.insert(ev["offset"].as_u64().unwrap(), ev);
    }
    let epoch = seen.values().next().unwrap()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    (seen, epoch)
}

/// Waits until `room` has `n` rows in the archive.
async fn until_archived(pg: &Postgres, room: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = pg.connect().await;
    loop {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_messages WHERE room = $1")
            .bind(room)
            .fetch_one(&mut c)
            .await
            .unwrap_or(0);
        if stored >= n {
            assert_eq!(stored, n, "more rows archived than sent");
            return;
        }
        assert!(Instant::now() < deadline, "{stored} of {n} archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET `path`: status and JSON body.
async fn get(server: &ServerProcess, path: &str) -> (u16, Value) {
    let resp = reqwest::get(server.url(path)).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Pages `room` back from the newest message with `before`, `limit` at a time: every message
/// of the epoch the first page names (`query` adds e.g. `&epoch=`), oldest first.
async fn page_back(server: &ServerProcess, room: &str, limit: usize, query: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = get(
            server,
            &format!("/api/rooms/{room}/messages?limit={limit}{query}{cursor}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["missing"], serde_json::json!([]), "{page}");
        let messages = page["messages"].as_array().unwrap().clone();
        assert!(messages.len() <= limit);
        pages.push(messages);
        if page["hasMore"] != true {
            break;
        }
        cursor = format!("&before={}", page["from"]);
    }
    pages.into_iter().rev().flatten().collect()
}

/// What history gave back equals what was delivered live, offset for offset.
fn assert_same(got: &[Value], seen: &BTreeMap<u64, Value>) {
    let offsets: Vec<u64> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, seen.keys().copied().collect::<Vec<_>>());
    for m in got {
        let live = &seen[&m["offset"].as_u64().unwrap()];
        for field in [
            "id", "epoch", "content", "sender", "sentAt", "serverId", "n", "tag",
        ] {
            assert_eq!(m[field], live[field], "{field} of {m}");
        }
        // REST shows the sender's headers in the record; a MESSAGE carries them as headers.
        if let Some(headers) = m.get("headers") {
            assert_eq!(headers, &serde_json::json!([["x-trace", "t"]]), "{m}");
        }
    }
}

/// A new client that subscribes to `room` recovering from offset `since` of `epoch`.
async fn recovering(
    server: &ServerProcess,
    login: &str,
    room: &str,
    since: u64,
    epoch: &str,
) -> Client {
    let mut c = Client::login(&server.ws_url(), login).await;
    let since = since.to_string();
    c.subscribe(
        "s",
        &format!("/topic/room/{room}"),
        &[QUIET, ("x-since-offset", &since), ("x-epoch", epoch)],
    )
    .await;
    c
}

/// `c` gets the not-recovered notice, naming the newest offset `newest`, and nothing after it.
async fn expect_not_recovered(c: &mut Client, newest: u64) {
    let notice = c.next_message().await;
    assert_eq!(notice.header("x-recovered"), Some("false"), "{notice:?}");
    assert_eq!(notice.header("x-offset"), Some(newest.to_string().as_str()));
    c.expect_quiet(Duration::from_millis(300)).await;
}

/// Redis, PostgreSQL and an archiving chat-server, with `n` messages sent to `room` and all
/// archived.
struct Archived {
    redis: RedisServer,
    pg: Postgres,
    server: ServerProcess,
    /// What a subscriber received: offset -> event.
    seen: BTreeMap<u64, Value>,
    epoch: String,
}

async fn archived_room(room: &str, n: usize) -> Archived {
    let redis = RedisServer::start(RedisOpts::default());
    let pg = Postgres::start().await;
    let server = archiving_server(&redis, &pg).await;
    let (seen, epoch) = publish(&server, room, n).await;
    until_archived(&pg, room, n as i64).await;
    Archived {
        redis,
        pg,
        server,
        seen,
        epoch,
    }
}

#[tokio::test]
async fn rest_pages_a_room_back_past_the_redis_bound_with_no_gap_and_no_duplicate() {
    let Archived {
        redis,
        pg: _pg,
        server,
        seen,
        epoch,
    } = archived_room("deep", 150).await;
    // Redis holds the newest WINDOW only.
    let log_len = redis.command(&["XLEN", "chat:log:deep"]).as_int().unwrap();
    assert_eq!(log_len, WINDOW as i64);

    // Backwards, with pages that straddle the window's edge.
    let back = page_back(&server, "deep", 33, "").await;
    assert_same(&back, &seen);

    // Forwards with `since`, from the start.
    let mut forward = Vec::new();
    let mut since = 0;
    loop {
        let (status, page) = get(
            &server,
            &format!("/api/rooms/deep/messages?since={since}&limit=40"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["epoch"], epoch.as_str());
        assert_eq!(page["firstOffset"], 1);
        assert_eq!(page["lastOffset"], 150);
        forward.extend(page["messages"].as_array().unwrap().iter().cloned());
        if page["hasMore"] != true {
            break;
        }
        since = page["to"].as_u64().unwrap();
    }
    assert_same(&forward, &seen);

    // A range across the edge: both cursors.
    let (_, page) = get(&server, "/api/rooms/deep/messages?since=120&before=136").await;
    let offsets: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (121..=135).collect::<Vec<_>>());
}

#[tokio::test]
async fn x_history_and_recovery_reach_past_the_redis_bound_and_a_hole_is_not_recovered() {
    let Archived {
        redis: _redis,
        pg,
        server,
        seen,
        epoch,
    } = archived_room("hist", 120).await;

    // x-history: the newest 100, though Redis keeps 20.
    let mut c = Client::login(&server.ws_url(), "carol").await;
    c.subscribe("h", "/topic/room/hist", &[QUIET, ("x-history", "100")])
        .await;
    let mut replayed = Vec::new();
    for _ in 0..100 {
        let m = c.next_message().await;
        assert_eq!(m.header("x-trace"), Some("t"), "{m:?}");
        replayed.push(chat_tests::body(&m));
    }
    let want: BTreeMap<u64, Value> = seen.range(21..).map(|(k, v)| (*k, v.clone())).collect();
    assert_same(&replayed, &want);
    c.expect_quiet(Duration::from_millis(300)).await;

    // Recovery from offset 10 of the epoch: 11..=120, from the archive and then Redis.
    let mut d = recovering(&server, "dave", "hist", 10, &epoch).await;
    let mut recovered = Vec::new();
    for _ in 0..110 {
        let m = d.next_message().await;
        assert_eq!(m.header("x-recovered"), None, "{m:?}");
        assert_eq!(m.header("x-trace"), Some("t"), "{m:?}");
        recovered.push(chat_tests::body(&m));
    }
    let want: BTreeMap<u64, Value> = seen.range(11..).map(|(k, v)| (*k, v.clone())).collect();
    assert_same(&recovered, &want);
    // Live after the replay, with no gap.
    let mut sender = Client::login(&server.ws_url(), "ann").await;
    sender.send("/app/room/hist", "after").await;
    assert_eq!(d.next_event().await["offset"], 121);

    // Offsets neither store holds: nothing partial, one not-recovered notice.
    let mut db = pg.connect().await;
    sqlx::query(r#"DELETE FROM chat_messages WHERE room = 'hist' AND "offset" BETWEEN 30 AND 35"#)
        .execute(&mut db)
        .await
        .unwrap();
    let mut e = recovering(&server, "erin", "hist", 10, &epoch).await;
    expect_not_recovered(&mut e, 121).await;
    // REST names the hole instead of skipping it.
    let (status, page) = get(&server, "/api/rooms/hist/messages?since=25&limit=20").await;
    assert_eq!(status, 200);
    assert_eq!(page["missing"], serde_json::json!([[30, 35]]), "{page}");
    assert_eq!(page["messages"].as_array().unwrap().len(), 14);
}

#[tokio::test]
async fn after_redis_loses_its_data_the_old_epoch_is_served_from_the_archive() {
    let Archived {
        redis,
        pg,
        server,
        seen,
        epoch: old_epoch,
    } = archived_room("lost", 60).await;
    redis.command(&["FLUSHALL"]);

    // No room in Redis: its newest archived epoch is the history.
    let (status, page) = get(&server, "/api/rooms/lost/messages?limit=5").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["epoch"], old_epoch.as_str());
    assert_eq!(page["lastOffset"], 60);
    assert_same(&page_back(&server, "lost", 25, "").await, &seen);

    // The room lives on in a new epoch; the old one is one `previousEpoch` away.
    let mut sender = Client::login(&server.ws_url(), "ann").await;
    sender.send("/app/room/lost", "new era").await;
    until_archived(&pg, "lost", 61).await;
    let (status, page) = get(&server, "/api/rooms/lost/messages").await;
    assert_eq!(status, 200, "{page}");
    assert_ne!(page["epoch"], old_epoch.as_str());
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_eq!(page["hasMore"], false);
    assert_eq!(page["previousEpoch"], old_epoch.as_str(), "{page}");
    let old = page_back(&server, "lost", 25, &format!("&epoch={old_epoch}")).await;
    assert_same(&old, &seen);
    // An epoch the room never had.
    let (status, page) = get(&server, "/api/rooms/lost/messages?epoch=00000000deadbeef").await;
    assert_eq!(status, 404, "{page}");
    assert!(page["error"].as_str().unwrap().contains("epoch"));
}

#[tokio::test]
async fn with_postgresql_stopped_archive_only_offsets_are_a_clear_503_and_not_a_gap() {
    let Archived {
        redis: _redis,
        mut pg,
        server,
        seen,
        epoch,
    } = archived_room("down", 60).await;
    pg.stop();

    // What Redis holds is still served.
    let started = Instant::now();
    let (status, page) = get(&server, "/api/rooms/down/messages?limit=10").await;
    assert_eq!(status, 200, "{page}");
    let newest: BTreeMap<u64, Value> = seen.range(51..).map(|(k, v)| (*k, v.clone())).collect();
    assert_same(page["messages"].as_array().unwrap(), &newest);
    // Older offsets only the archive holds: 503 with a JSON error, within the read timeout.
    let (status, page) = get(&server, "/api/rooms/down/messages?before=30&limit=10").await;
    assert_eq!(status, 503, "{page}");
    assert!(
        page["error"].as_str().unwrap().contains("archive"),
        "{page}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    // Known down: the next read fails at once instead of waiting for PostgreSQL again.
    let again = Instant::now();
    let (status, _) = get(&server, "/api/rooms/down/messages?since=0&limit=30").await;
    assert_eq!(status, 503);
    assert!(
        again.elapsed() < Duration::from_secs(1),
        "{:?}",
        again.elapsed()
    );
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let read_errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"chat_archive_errors_total{reason="read"} "#))
        .map_or(0.0, |v| v.parse().unwrap());
    assert!(read_errors >= 2.0, "{metrics}");

    // Recovery that needs the archive: not recovered, nothing partial.
    let mut c = recovering(&server, "carol", "down", 5, &epoch).await;
    expect_not_recovered(&mut c, 60).await;

    // x-history: what Redis holds, the newest run without a gap.
    let mut h = Client::login(&server.ws_url(), "henry").await;
    h.subscribe("h", "/topic/room/down", &[QUIET, ("x-history", "50")])
        .await;
    let mut replayed = Vec::new();
    for _ in 0..WINDOW {
        replayed.push(h.next_event().await);
    }
    let window: BTreeMap<u64, Value> = seen.range(41..).map(|(k, v)| (*k, v.clone())).collect();
    assert_same(&replayed, &window);
    h.expect_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn bad_history_parameters_get_a_400_with_a_json_error() {
    let server = TestServer::memory().await;
    let mut sender = Client::login(&server.ws_url(), "ann").await;
    sender.send("/app/room/q", "hi").await;
    for query in [
        "limit=0",
        "limit=1001",
        "before=0",
        "since=-1",
        "since=abc",
        "epoch=no%20such",
        "page=2",
    ] {
        let resp = reqwest::get(server.url(&format!("/api/rooms/q/messages?{query}")))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{query}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].is_string(), "{query}: {body}");
    }
    // Without an archive an old epoch does not exist.
    let resp = reqwest::get(server.url("/api/rooms/q/messages?epoch=0123456789abcdef"))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn without_an_archive_pages_end_at_the_oldest_message_history_holds() {
    let mut config = chat_server::config::Config::for_tests();
    config.history_max_len = 10;
    let server = TestServer::start(config).await;
    let mut sender = Client::login(&server.ws_url(), "ann").await;
    for i in 0..25 {
        sender.send("/app/room/w", &format!("m{i}")).await;
    }
    let (mut offsets, mut before) = (Vec::new(), String::new());
    loop {
        let resp = reqwest::get(server.url(&format!("/api/rooms/w/messages?limit=4{before}")))
            .await
            .unwrap();
        let page: Value = resp.json().await.unwrap();
        assert_eq!(page["firstOffset"], 16, "{page}");
        assert_eq!(page["missing"], serde_json::json!([]), "{page}");
        let mut got: Vec<u64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        got.extend(offsets);
        offsets = got;
        if page["hasMore"] != true {
            break;
        }
        before = format!("&before={}", page["from"]);
    }
    assert_eq!(offsets, (16..=25).collect::<Vec<_>>());
}
