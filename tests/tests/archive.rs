//! The PostgreSQL archive's write path against real processes: redis-server, PostgreSQL
//! (Debian's, started by `chat_tests::postgres`) and chat-server binaries on free loopback
//! ports, all stopped when a test ends, pass or fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chat_tests::Client;
use chat_tests::postgres::Postgres;
use chat_tests::process::ServerProcess;
use chat_tests::redis::{RedisOpts, RedisServer};
use sqlx::Row;

const QUIET: (&str, &str) = ("x-presence", "false");

fn env(redis: &RedisServer, pg: &Postgres, claim_idle_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("CHAT_REDIS_URL", redis.url()),
        ("CHAT_HEARTBEAT_INTERVAL_MS", "200".into()),
        ("CHAT_SERVER_TTL_MS", "800".into()),
        ("CHAT_SEND_RATE", "0".into()),
        ("CHAT_USER_SEND_RATE", "0".into()),
        ("CHAT_ARCHIVE_URL", pg.url()),
        ("CHAT_ARCHIVE_CLAIM_IDLE_MS", claim_idle_ms.to_string()),
    ]
}

async fn instance(id: &str, env: &[(&'static str, String)]) -> ServerProcess {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let p = ServerProcess::start(id, &pairs).await;
    p.wait_ready(Duration::from_secs(10)).await;
    p
}

/// The archived chat messages: (room, epoch, offset) -> record.
async fn archived(pg: &Postgres) -> BTreeMap<(String, String, i64), serde_json::Value> {
    let mut c = pg.connect().await;
    let rows = sqlx::query(
        r#"SELECT room, epoch, "offset", record::text AS record FROM chat_messages
           WHERE record->>'type' = 'CHAT'"#,
    )
    .fetch_all(&mut c)
    .await
    .unwrap_or_default();
    rows.iter()
        .map(|r| {
            let record: String = r.get("record");
            (
                (r.get("room"), r.get("epoch"), r.get("offset")),
                serde_json::from_str(&record).unwrap(),
            )
        })
        .collect()
}

/// Waits until `n` chat messages are archived (more fails at once).
async fn wait_archived(
    pg: &Postgres,
    n: usize,
    within: Duration,
) -> BTreeMap<(String, String, i64), serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let rows = archived(pg).await;
        assert!(rows.len() <= n, "{} archived, only {n} sent", rows.len());
        if rows.len() == n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} archived after {within:?}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A metric's value on `/metrics` (0 when absent).
async fn metric(p: &ServerProcess, name: &str) -> f64 {
    let text = reqwest::get(p.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Sends messages `n` in `range` to `dest` (`{"content":"m<n>","n":<n>}`), each receipted.
async fn send_numbered(c: &mut Client, dest: &str, range: std::ops::Range<u64>) {
    for n in range {
        c.send(dest, &format!(r#"{{"content":"m{n}","n":{n}}}"#))
            .await;
    }
}

fn xlen(redis: &RedisServer, key: &str) -> i64 {
    redis.command(&["XLEN", key]).as_int().unwrap()
}

/// Entries of the archive Stream that `consumer` holds unacknowledged.
fn pending_of(redis: &RedisServer, consumer: &str) -> usize {
    let reply = redis.command(&[
        "XPENDING",
        "chat:archive",
        "archivers",
        "-",
        "+",
        "10000",
        consumer,
    ]);
    reply.as_array().map_or(0, <[_]>::len)
}

#[tokio::test]
async fn messages_sent_over_two_instances_are_archived_exactly_once_with_sender_and_fields() {
    let redis = RedisServer::start(RedisOpts::default());
    let pg = Postgres::start().await;
    let e = env(&redis, &pg, 30_000);
    let (a, b) = (instance("a", &e).await, instance("b", &e).await);
    const ROOMS: usize = 5;
    const PER_SENDER: usize = 250;
    let mut reader = Client::login(&a.ws_url(), "reader").await;
    for r in 0..ROOMS {
        reader
            .subscribe(&r.to_string(), &format!("/topic/room/arch{r}"), &[QUIET])
            .await;
    }
    let send = |url: String, login: &'static str, base: usize| async move {
        let mut c = Client::login(&url, login).await;
        for i in 0..PER_SENDER {
            let n = base + i;
            let body = format!(r#"{{"content":"m{n}","n":{n},"tag":{{"k":"{login}"}}}}"#);
            c.send(&format!("/app/room/arch{}", n % ROOMS), &body).await;
        }
    };
    tokio::join!(
        send(a.ws_url(), "ann", 0),
        send(b.ws_url(), "bob", PER_SENDER)
    );
    // What the cluster delivered: every receipted message with its room, epoch and offset.
    let mut delivered = BTreeMap::new();
    for _ in 0..2 * PER_SENDER {
        let ev = reader.next_event().await;
        let key = (
            ev["roomId"].as_str().unwrap().to_owned(),
            ev["epoch"].as_str().unwrap().to_owned(),
            ev["offset"].as_i64().unwrap(),
        );
        delivered.insert(key, ev["n"].as_u64().unwrap());
    }
    assert_eq!(delivered.len(), 2 * PER_SENDER);

    let rows = wait_archived(&pg, 2 * PER_SENDER, Duration::from_secs(30)).await;
    let keys: BTreeSet<_> = rows.keys().cloned().collect();
    assert_eq!(keys, delivered.keys().cloned().collect::<BTreeSet<_>>());
    for (key, record) in &rows {
        let n = record["n"].as_u64().unwrap();
        assert_eq!(delivered[key], n, "{key:?}");
        let login = if (n as usize) < PER_SENDER {
            "ann"
        } else {
            "bob"
        };
        assert_eq!(record["sender"]["id"], login, "{record}");
        assert_eq!(record["tag"]["k"], login, "{record}");
        assert_eq!(record["content"], format!("m{n}"));
        assert!(record["sentAt"].is_string() && record["serverId"].is_string());
    }
    // Every record left the archive Stream, and each was stored by one instance only.
    let deadline = Instant::now() + Duration::from_secs(10);
    while xlen(&redis, "chat:archive") > 0 {
        assert!(Instant::now() < deadline, "archive Stream not emptied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = pg.connect().await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_messages")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let stored = metric(&a, "chat_archived_total").await + metric(&b, "chat_archived_total").await;
    assert_eq!(stored as i64, total);
    assert!(
        metric(&a, "chat_archived_total").await > 0.0
            || metric(&b, "chat_archived_total").await > 0.0
    );
    assert_eq!(metric(&a, "chat_archive_lost_entries").await, 0.0);
}

#[tokio::test]
async fn an_instance_killed_with_unarchived_entries_has_them_archived_by_another() {
    let redis = RedisServer::start(RedisOpts::default());
    let mut pg = Postgres::start().await;
    let e = env(&redis, &pg, 1_000);
    let mut a = instance("a", &e).await;
    // a has made the schema once this works.
    let deadline = Instant::now() + Duration::from_secs(15);
    while archived_table_missing(&pg).await {
        assert!(Instant::now() < deadline, "schema not created");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // PostgreSQL away: a reads a batch and holds it, unable to store it.
    pg.stop();
    let mut c = Client::login(&a.ws_url(), "ann").await;
    send_numbered(&mut c, "/app/room/kill", 0..100).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending_of(&redis, "a") == 0 {
        assert!(Instant::now() < deadline, "a never read the archive Stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = pending_of(&redis, "a");
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5)).await;
    pg.restart().await;
    // b was not there when a read them: it can have them only by taking them over.
    let b = instance("b", &e).await;
    let rows = wait_archived(&pg, 100, Duration::from_secs(30)).await;
    let ns: BTreeSet<u64> = rows.values().map(|r| r["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..100).collect());
    assert_eq!(
        pending_of(&redis, "a"),
        0,
        "a's {held} entries still pending"
    );
    assert!(metric(&b, "chat_archived_total").await >= 100.0);
}

async fn archived_table_missing(pg: &Postgres) -> bool {
    let mut c = pg.connect().await;
    sqlx::query("SELECT 1 FROM chat_messages LIMIT 1")
        .execute(&mut c)
        .await
        .is_err()
}

#[tokio::test]
async fn postgres_stopped_for_ten_seconds_under_load_loses_nothing_and_readiness_holds() {
    let redis = RedisServer::start(RedisOpts::default());
    let mut pg = Postgres::start().await;
    let e = env(&redis, &pg, 30_000);
    let a = Arc::new(instance("a", &e).await);
    let b = Arc::new(instance("b", &e).await);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for (i, p) in [a.clone(), b.clone()].into_iter().enumerate() {
        let (stop, sent) = (stop.clone(), sent.clone());
        senders.push(tokio::spawn(async move {
            let mut c = Client::login(&p.ws_url(), &format!("load{i}")).await;
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                let n = i * 1_000_000 + k;
                c.send(
                    &format!("/app/room/load{}", k % 3),
                    &format!(r#"{{"content":"m{n}","n":{n}}}"#),
                )
                .await;
                sent.fetch_add(1, Ordering::Relaxed);
                k += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Readiness, watched the whole time.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (a, b, watching) = (a.clone(), b.clone(), watching.clone());
        tokio::spawn(async move {
            let mut not_ready = 0;
            while watching.load(Ordering::Relaxed) {
                for p in [&a, &b] {
                    if !p.is_ready().await {
                        not_ready += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            not_ready
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.stop();
    let outage = Instant::now();
    let mut peak_lag = 0.0_f64;
    while outage.elapsed() < Duration::from_secs(10) {
        peak_lag = peak_lag.max(metric(&a, "chat_archive_lag_entries").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let sent_in_outage = sent.load(Ordering::Relaxed);
    pg.restart().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let total = sent.load(Ordering::Relaxed);
    assert!(
        total > sent_in_outage,
        "the load went on after PostgreSQL returned"
    );
    let rows = wait_archived(&pg, total, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), total, "0 lost");
    watching.store(false, Ordering::Relaxed);
    assert_eq!(watcher.await.unwrap(), 0, "an instance was unready");
    assert!(peak_lag >= 100.0, "lag rose to {peak_lag} only");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&a, "chat_archive_lag_entries").await > 0.0 {
        assert!(Instant::now() < deadline, "the lag did not fall back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(&a, "chat_archive_errors_total{reason=\"postgres\"}").await > 0.0);
}

#[tokio::test]
async fn past_the_backlog_bound_the_oldest_records_are_dropped_counted_and_the_rest_archived() {
    let redis = RedisServer::start(RedisOpts::default());
    let mut pg = Postgres::start().await;
    let mut e = env(&redis, &pg, 30_000);
    e.push(("CHAT_ARCHIVE_BACKLOG", "1000".into()));
    e.push(("CHAT_ARCHIVE_BATCH", "100".into()));
    let a = instance("a", &e).await;
    while archived_table_missing(&pg).await {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg.stop();
    let mut c = Client::login(&a.ws_url(), "ann").await;
    const SENT: usize = 1200;
    for start in (0..SENT).step_by(100) {
        c.send_raw(&chat_tests::send_run(start..start + 100, |_| {
            "/app/room/bound".into()
        }))
        .await;
        c.expect_run_receipts(start..start + 100).await;
    }
    assert_eq!(
        xlen(&redis, "chat:archive"),
        1000,
        "the Stream stays at its bound"
    );
    let lost = redis.command(&["GET", "chat:archive:lost"]).as_text();
    assert_eq!(lost.as_deref(), Some("200"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&a, "chat_archive_lost_entries").await != 200.0 {
        assert!(Instant::now() < deadline, "lost entries not on /metrics");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg.restart().await;
    // The newest 1000 are all archived; of the 200 dropped, only what the archiver had read
    // before the trim (at most one batch) can be there too.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ns: BTreeSet<usize> = archived(&pg)
            .await
            .values()
            .map(|r| r["content"].as_str().unwrap()[1..].parse().unwrap())
            .collect();
        if (200..SENT).all(|n| ns.contains(&n)) {
            assert!(ns.len() <= 1000 + 100, "{} archived", ns.len());
            break;
        }
        assert!(Instant::now() < deadline, "{} archived", ns.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a load sender saw: the messages it has a RECEIPT for, and those whose SEND got an
/// ERROR or a cut connection instead (each stored or not: the outcome is unknown).
#[derive(Default)]
struct Outcomes {
    receipted: BTreeSet<u64>,
    uncertain: BTreeSet<u64>,
}

/// Sends to three rooms through `p` every 20 ms until `stop`, reconnecting after an ERROR or a
/// cut connection, as a client would through a Redis outage.
async fn send_through_outages(
    p: Arc<ServerProcess>,
    i: u64,
    stop: Arc<AtomicBool>,
    out: Arc<std::sync::Mutex<Outcomes>>,
) {
    let login = format!("load{i}");
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut c) = Client::try_login(&p.ws_url(), &login, Duration::from_secs(2)).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            let n = i * 1_000_000 + k;
            k += 1;
            let sent = c
                .try_send(
                    &format!("/app/room/rdown{}", n % 3),
                    &format!(r#"{{"content":"m{n}","n":{n}}}"#),
                    Duration::from_secs(15),
                )
                .await;
            let ok = sent.is_ok();
            {
                let mut o = out.lock().unwrap();
                if ok {
                    o.receipted.insert(n)
                } else {
                    o.uncertain.insert(n)
                };
            }
            if !ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_seconds_under_load_has_every_receipted_message_archived_exactly_once() {
    // Persistence on (AOF, fsync always), as a Redis without Sentinel runs in production: the
    // archive Stream and its consumer group survive the outage.
    let mut redis = RedisServer::start(RedisOpts {
        persist: true,
        ..RedisOpts::default()
    });
    let pg = Postgres::start().await;
    let mut e = env(&redis, &pg, 30_000);
    // SENDs during the outage fail after 1 s instead of 10.
    e.push(("CHAT_REDIS_WAIT_MS", "1000".into()));
    let a = Arc::new(instance("a", &e).await);
    let b = Arc::new(instance("b", &e).await);
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(std::sync::Mutex::new(Outcomes::default()));
    let senders: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .zip(0..)
        .map(|(p, i)| tokio::spawn(send_through_outages(p, i, stop.clone(), out.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = out.lock().unwrap().receipted.len();
    assert!(before > 20, "only {before} receipted before the outage");

    tokio::task::block_in_place(|| redis.kill9());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut unready_seen = false;
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(5) {
        unready_seen |= !a.is_ready().await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(unready_seen, "readiness never showed Redis gone");
    let in_outage = out.lock().unwrap().receipted.len();
    tokio::task::block_in_place(|| redis.relaunch());

    // Readiness returns, and the load goes on through the restarted Redis.
    a.wait_ready(Duration::from_secs(15)).await;
    b.wait_ready(Duration::from_secs(15)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.lock().unwrap().receipted.len() < in_outage + 50 {
        assert!(Instant::now() < deadline, "the load did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }

    // Drained: the archive Stream empty, then every receipted message is in PostgreSQL once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while xlen(&redis, "chat:archive") > 0 {
        assert!(Instant::now() < deadline, "archive Stream not drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (receipted, uncertain) = {
        let o = out.lock().unwrap();
        (o.receipted.clone(), o.uncertain.clone())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = archived(&pg).await;
        let ns: BTreeSet<u64> = rows.values().map(|r| r["n"].as_u64().unwrap()).collect();
        if receipted.is_subset(&ns) {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} receipted messages missing from the archive",
            receipted.difference(&ns).count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut ns: Vec<u64> = rows.values().map(|r| r["n"].as_u64().unwrap()).collect();
    ns.sort_unstable();
    let distinct: BTreeSet<u64> = ns.iter().copied().collect();
    assert_eq!(ns.len(), distinct.len(), "a message archived twice");
    let unknown: Vec<_> = distinct
        .difference(&receipted)
        .filter(|n| !uncertain.contains(n))
        .collect();
    assert!(unknown.is_empty(), "archived but never sent: {unknown:?}");

    // No error storm: failed steps back off (to 5 s), so a 6-second outage costs each
    // instance a handful of counted errors, whatever the load; nothing was dropped.
    for p in [&a, &b] {
        let errors = metric(p, "chat_archive_errors_total{reason=\"redis\"}").await;
        assert!(errors <= 20.0, "{}: {errors} Redis errors", p.id);
        assert_eq!(
            metric(p, "chat_archive_errors_total{reason=\"postgres\"}").await,
            0.0
        );
        assert_eq!(metric(p, "chat_archive_lost_entries").await, 0.0);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&a, "chat_archive_lag_entries").await > 0.0 {
        assert!(Instant::now() < deadline, "the lag did not fall back to 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `env` for an archive at `url` (the PostgreSQL of `pg`, by another URL), plus `extra`.
fn tls_env(
    redis: &RedisServer,
    pg: &Postgres,
    url: String,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut e: Vec<_> = env(redis, pg, 30_000)
        .into_iter()
        .filter(|(k, _)| *k != "CHAT_ARCHIVE_URL")
        .collect();
    e.push(("CHAT_ARCHIVE_URL", url));
    e.extend(extra.iter().cloned());
    e
}

/// Whether every connection named `chat-server` in PostgreSQL is over TLS, and how many there are.
async fn chat_server_connections_over_tls(pg: &Postgres) -> (bool, i64) {
    let mut c = pg.connect().await;
    let row = sqlx::query(
        "SELECT coalesce(bool_and(s.ssl), false) AS all_tls, count(*) AS n
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.application_name = 'chat-server'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    (row.get("all_tls"), row.get("n"))
}

#[tokio::test]
async fn the_archive_over_tls_checks_the_servers_certificate_and_stores_every_message() {
    let ca = chat_tests::certs::TestCa::new("archive CA");
    let pg = Postgres::start_tls(&ca.server_cert(&["127.0.0.1", "localhost"])).await;
    let redis = RedisServer::start(RedisOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    // The URL names the address the certificate names: verify-full checks both.
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let e = tls_env(
        &redis,
        &pg,
        url,
        &[
            ("CHAT_ARCHIVE_SSL_MODE", "verify-full".into()),
            (
                "CHAT_ARCHIVE_SSL_ROOT_CERT_FILE",
                ca_file.display().to_string(),
            ),
        ],
    );
    let a = instance("a", &e).await;
    let mut c = Client::login(&a.ws_url(), "ann").await;
    send_numbered(&mut c, "/app/room/tls", 0..20).await;
    let rows = wait_archived(&pg, 20, Duration::from_secs(20)).await;
    let ns: BTreeSet<u64> = rows.values().map(|r| r["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..20).collect());
    // pg_hba.conf rejects plain TCP, and the server's own connections say TLS.
    let (all_tls, n) = chat_server_connections_over_tls(&pg).await;
    assert!(
        n >= 1 && all_tls,
        "{n} chat-server connections, all TLS: {all_tls}"
    );
    assert_eq!(
        metric(&a, r#"chat_archive_errors_total{reason="postgres"}"#).await,
        0.0
    );
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_stops_archiving_not_chat_and_loses_nothing() {
    let ca = chat_tests::certs::TestCa::new("archive CA");
    let other = chat_tests::certs::TestCa::new("some other CA");
    let pg = Postgres::start_tls(&ca.server_cert(&["127.0.0.1"])).await;
    let redis = RedisServer::start(RedisOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let (right, wrong) = (dir.path().join("ca.crt"), dir.path().join("other.crt"));
    std::fs::write(&right, &ca.cert_pem).unwrap();
    std::fs::write(&wrong, &other.cert_pem).unwrap();
    let base = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let e = tls_env(
        &redis,
        &pg,
        base.clone(),
        &[
            ("CHAT_ARCHIVE_SSL_MODE", "verify-ca".into()),
            (
                "CHAT_ARCHIVE_SSL_ROOT_CERT_FILE",
                wrong.display().to_string(),
            ),
        ],
    );
    let mut a = instance("a", &e).await;
    let mut c = Client::login(&a.ws_url(), "ann").await;
    send_numbered(&mut c, "/app/room/badca", 0..10).await;
    // Every attempt fails the handshake: counted, retried, chat and readiness unaffected.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&a, r#"chat_archive_errors_total{reason="postgres"}"#).await < 2.0 {
        assert!(Instant::now() < deadline, "no archive error counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.wait_ready(Duration::from_secs(1)).await;
    c.send("/app/room/badca", r#"{"content":"still chatting","n":10}"#)
        .await;
    assert!(
        archived_table_missing(&pg).await,
        "nothing may have reached PostgreSQL"
    );
    assert_eq!(
        xlen(&redis, "chat:archive"),
        11,
        "the Stream keeps them all"
    );
    drop(c);
    a.signal("TERM");
    a.wait_exit(Duration::from_secs(10)).await;
    // The right CA, given in the URL as libpq takes it: all of them are stored.
    let url = format!("{base}?sslmode=verify-full&sslrootcert={}", right.display());
    let b = instance("b", &tls_env(&redis, &pg, url, &[])).await;
    let rows = wait_archived(&pg, 11, Duration::from_secs(45)).await;
    let ns: BTreeSet<u64> = rows.values().map(|r| r["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..11).collect());
    assert!(chat_server_connections_over_tls(&pg).await.0);
    drop(b);
}

#[tokio::test]
async fn a_client_certificate_logs_the_archive_in_where_postgresql_demands_one() {
    let ca = chat_tests::certs::TestCa::new("archive CA");
    let pg = Postgres::start_tls_with(&ca.server_cert(&["127.0.0.1"]), Some(&ca.cert_pem)).await;
    let redis = RedisServer::start(RedisOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let client = ca.client_cert("chat");
    let file = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let (ca_file, cert_file, key_file) = (
        file("ca.crt", &ca.cert_pem),
        file("tls.crt", &client.cert_pem),
        file("tls.key", &client.key_pem),
    );
    // User chat, no password: pg_hba.conf lets it in by certificate only.
    let url = format!("postgres://chat@127.0.0.1:{}/postgres", pg.port);
    let verify = [
        ("CHAT_ARCHIVE_SSL_MODE", "verify-full".to_owned()),
        ("CHAT_ARCHIVE_SSL_ROOT_CERT_FILE", ca_file),
    ];
    // Without the certificate PostgreSQL refuses the login: nothing is archived.
    let mut a = instance("a", &tls_env(&redis, &pg, url.clone(), &verify)).await;
    let mut c = Client::login(&a.ws_url(), "ann").await;
    send_numbered(&mut c, "/app/room/cert", 0..5).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&a, r#"chat_archive_errors_total{reason="postgres"}"#).await < 1.0 {
        assert!(Instant::now() < deadline, "no archive error counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(archived_table_missing(&pg).await);
    drop(c);
    a.signal("TERM");
    a.wait_exit(Duration::from_secs(10)).await;
    // With it, every message is stored, those that waited included.
    let mut with_cert = verify.to_vec();
    with_cert.extend([
        ("CHAT_ARCHIVE_SSL_CERT_FILE", cert_file),
        ("CHAT_ARCHIVE_SSL_KEY_FILE", key_file),
    ]);
    let b = instance("b", &tls_env(&redis, &pg, url, &with_cert)).await;
    let mut c = Client::login(&b.ws_url(), "ann").await;
    send_numbered(&mut c, "/app/room/cert", 5..10).await;
    let rows = wait_archived(&pg, 10, Duration::from_secs(30)).await;
    let ns: BTreeSet<u64> = rows.values().map(|r| r["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..10).collect());
    assert!(chat_server_connections_over_tls(&pg).await.0);
}
