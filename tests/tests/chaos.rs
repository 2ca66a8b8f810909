//! Chaos under load with real processes: three chat-server instances on one Redis (or on a
//! Sentinel-managed master and replica), a steady load of receipted publishes from every
//! instance, readers with presence on every instance, and one fault in the middle:
//!
//! - `kill -9` of an instance,
//! - SIGSTOP of an instance for longer than its registry TTL, then SIGCONT,
//! - `kill -9` of the Redis master with Sentinel (failover to the replica),
//! - a Redis restart (no persistence: the data is gone, the epoch changes).
//!
//! For each: receipted messages lost (must be 0) at readers that stayed connected, duplicates
//! (0), receipted messages out of order (0), the longest gap in deliveries at those readers
//! (how long until delivery resumed), and the LEAVE events seen for the sessions of a dead
//! instance (exactly one each) and for live sessions (none). Each test prints a table row; the
//! README's reliability section holds the figures of one run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chat_tests::process::ServerProcess;
use chat_tests::redis::{RedisOpts, RedisServer, SentinelCluster};
use chat_tests::{Client, body};
use chat_wire::stomp::Command;

const ROOM: &str = "/topic/room/chaos";
const SEND: &str = "/app/room/chaos";
const PASSWORD: &str = "chaos-test-password";
/// Readers (with presence) per instance.
const READERS: usize = 2;
/// Instances, and publishers: one per instance, each with one receipted SEND in flight.
const INSTANCES: [&str; 3] = ["a", "b", "c"];
/// Pause between a publisher's receipted SENDs: ~50 msg/s per instance, 150 msg/s in all.
const GAP: Duration = Duration::from_millis(20);
/// How long a publisher waits for a RECEIPT before it gives the message up and reconnects.
const RECEIPT_WAIT: Duration = Duration::from_secs(3);

/// The faults run one at a time: each starts its own processes, and a loaded machine would
/// blur the timing figures (and could delay heart-beats past the registry TTL).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The registry settings of every instance: heart-beat every 300 ms, reaped after 1.5 s.
fn registry_env() -> Vec<(&'static str, String)> {
    vec![
        ("CHAT_HEARTBEAT_INTERVAL_MS", "300".into()),
        ("CHAT_SERVER_TTL_MS", "1500".into()),
        ("CHAT_SEND_RATE", "0".into()),
    ]
}

async fn instances(env: &[(&'static str, String)]) -> Vec<ServerProcess> {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut out = Vec::new();
    for id in INSTANCES {
        out.push(ServerProcess::start(id, &pairs).await);
    }
    for p in &out {
        p.wait_ready(Duration::from_secs(15)).await;
    }
    out
}

/// Three instances on `env` under a steady load for 2 s: ready for the fault.
async fn under_load(env: &[(&'static str, String)]) -> (Vec<ServerProcess>, Load) {
    let ps = instances(env).await;
    let load = Load::start(&urls(&ps)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    (ps, load)
}

/// A chat message as one reader got it.
struct Chat {
    text: String,
    at: Instant,
    offset: u64,
    epoch: String,
}

/// A JOIN or LEAVE as one reader got it.
struct PresenceEvent {
    kind: String,
    user: String,
    offset: u64,
    server: String,
}

/// What one reader saw: chat messages and presence events, each in arrival order.
#[derive(Default)]
struct ReaderLog {
    instance: usize,
    user: String,
    chats: Vec<Chat>,
    /// SYSTEM messages (history not recoverable from a position).
    system: Vec<String>,
    presence: Vec<PresenceEvent>,
    /// The connection ended before the run did.
    ended: bool,
}

impl std::fmt::Display for PresenceEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} @{} (server {})",
            self.kind, self.user, self.offset, self.server
        )
    }
}

impl ReaderLog {
    /// The JOINs and LEAVEs it saw, one per line, for failure messages.
    fn presence_lines(&self) -> String {
        self.presence.iter().map(|p| format!("\n  {p}")).collect()
    }

    /// LEAVE events for `user`.
    fn leaves_of(&self, user: &str) -> usize {
        self.presence
            .iter()
            .filter(|p| p.kind == "LEAVE" && p.user == user)
            .count()
    }
}

/// Reads until `stop`; returns what it saw and the still open connection (dropping it here would
/// make the other readers, still reading, see its LEAVE).
async fn reader(
    mut c: Client,
    instance: usize,
    user: String,
    stop: Arc<AtomicBool>,
) -> (ReaderLog, Client) {
    let mut log = ReaderLog {
        instance,
        user,
        ..ReaderLog::default()
    };
    while !stop.load(Ordering::Relaxed) {
        match c.next_frame_within(Duration::from_millis(100)).await {
            Err(_) => continue,
            Ok(None) => {
                log.ended = true;
                break;
            }
            Ok(Some(f)) if f.command == Command::Message => {
                let ev = body(&f);
                let offset = ev["offset"].as_u64().unwrap_or_default();
                match ev["type"].as_str() {
                    Some(kind @ ("LEAVE" | "JOIN")) => log.presence.push(PresenceEvent {
                        kind: kind.to_owned(),
                        user: ev["sender"]["id"].as_str().unwrap_or_default().to_owned(),
                        offset,
                        server: ev["serverId"].as_str().unwrap_or_default().to_owned(),
                    }),
                    Some("SYSTEM") => log
                        .system
                        .push(format!("{} at {offset}@{}", ev["content"], ev["epoch"])),
                    _ => log.chats.push(Chat {
                        text: ev["content"].as_str().unwrap().to_owned(),
                        at: Instant::now(),
                        offset,
                        epoch: ev["epoch"].as_str().unwrap_or_default().to_owned(),
                    }),
                }
            }
            Ok(Some(_)) => {}
        }
    }
    (log, c)
}

/// Sends `{prefix}-{n}` with a receipt every [`GAP`] until `stop`; after an ERROR, a lost
/// connection or a missing receipt it gives that message up and reconnects, to its own
/// instance first and then to the next ones (what a client behind a load balancer does).
/// Returns the receipted messages in order.
async fn publisher(urls: Vec<String>, first: usize, stop: Arc<AtomicBool>) -> Vec<String> {
    let prefix = ["A", "B", "C"][first];
    let mut receipted = Vec::new();
    let mut at = first;
    let mut c = Client::try_login(&urls[at], prefix, Duration::from_secs(2)).await;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(client) = c.as_mut() else {
            at = (at + 1) % urls.len();
            c = Client::try_login(&urls[at], prefix, Duration::from_secs(1)).await;
            continue;
        };
        let text = format!("{prefix}-{n}");
        n += 1;
        match client.try_send(SEND, &text, RECEIPT_WAIT).await {
            Ok(()) => receipted.push(text),
            Err(_) => {
                // Give this message up; try the same instance again first.
                c = Client::try_login(&urls[at], prefix, Duration::from_secs(1)).await;
            }
        }
        tokio::time::sleep(GAP).await;
    }
    receipted
}

/// The load: readers with presence on every instance, a publisher starting on each.
struct Load {
    stop_publishers: Arc<AtomicBool>,
    stop_readers: Arc<AtomicBool>,
    readers: Vec<tokio::task::JoinHandle<(ReaderLog, Client)>>,
    publishers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    async fn start(urls: &[String]) -> Load {
        let stop_readers = Arc::new(AtomicBool::new(false));
        let stop_publishers = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            for k in 0..READERS {
                let user = format!("r-{i}-{k}");
                let mut c = Client::login(url, &user).await;
                c.subscribe("0", ROOM, &[]).await;
                readers.push(tokio::spawn(reader(c, i, user, stop_readers.clone())));
            }
        }
        // Let every reader see every JOIN before the clock starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let publishers = (0..urls.len())
            .map(|i| tokio::spawn(publisher(urls.to_vec(), i, stop_publishers.clone())))
            .collect();
        Load {
            stop_publishers,
            stop_readers,
            readers,
            publishers,
        }
    }

    /// Stops the publishers, lets the last deliveries arrive, then stops the readers; the
    /// connections close only once every reader has stopped.
    async fn finish(self) -> (Vec<ReaderLog>, Vec<Vec<String>>) {
        self.stop_publishers.store(true, Ordering::Relaxed);
        let mut receipted = Vec::new();
        for p in self.publishers {
            receipted.push(p.await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.stop_readers.store(true, Ordering::Relaxed);
        let mut logs = Vec::new();
        let mut open = Vec::new();
        for r in self.readers {
            let (log, c) = r.await.unwrap();
            logs.push(log);
            open.push(c);
        }
        drop(open);
        println!(
            "| fault | receipted | lost | duplicates | out of order | longest delivery gap | LEAVEs of the dead instance's sessions | LEAVEs of live sessions |"
        );
        (logs, receipted)
    }
}

/// The figures of one fault.
struct Report {
    fault: &'static str,
    receipted: usize,
    lost: usize,
    /// Of `lost`: receipted messages that Redis took and some instances delivered in an epoch
    /// that then ended with the store, which went before the others got them (see
    /// [`cut_by_the_store`]); the texts, and the losses they account for.
    cut: BTreeSet<String>,
    cut_losses: usize,
    duplicates: usize,
    out_of_order: usize,
    longest_gap: Duration,
    leaves_of_dead: String,
    leaves_of_live: usize,
}

impl Report {
    fn print(&self) {
        println!(
            "| {} | {} | {} | {} | {} | {} ms | {} | {} |",
            self.fault,
            self.receipted,
            if self.cut.is_empty() {
                self.lost.to_string()
            } else {
                format!(
                    "{} ({} of them: {} message(s) cut off by the kill)",
                    self.lost,
                    self.cut_losses,
                    self.cut.len()
                )
            },
            self.duplicates,
            self.out_of_order,
            self.longest_gap.as_millis(),
            self.leaves_of_dead,
            self.leaves_of_live
        );
    }
}

/// Checks what the readers on `watched` instances saw against the receipted messages.
/// `dead`: the instance whose sessions should each get exactly one LEAVE (from every watched
/// reader); every other session must get none.
fn judge(
    fault: &'static str,
    logs: &[ReaderLog],
    receipted: &[Vec<String>],
    watched: &[usize],
    dead: Option<usize>,
    window: (Instant, Instant),
) -> Report {
    let all_receipted: Vec<&String> = receipted.iter().flatten().collect();
    let dead_users: HashSet<String> = dead
        .map(|d| {
            (0..READERS)
                .map(|k| format!("r-{d}-{k}"))
                .collect::<HashSet<_>>()
        })
        .unwrap_or_default();
    let mut report = Report {
        fault,
        receipted: all_receipted.len(),
        lost: 0,
        cut: BTreeSet::new(),
        cut_losses: 0,
        duplicates: 0,
        out_of_order: 0,
        longest_gap: Duration::ZERO,
        leaves_of_dead: "-".into(),
        leaves_of_live: 0,
    };
    let mut dead_leave_counts = Vec::new();
    for log in logs.iter().filter(|l| watched.contains(&l.instance)) {
        assert!(!log.ended, "reader {} was disconnected", log.user);
        let mut count: HashMap<&str, usize> = HashMap::new();
        for c in &log.chats {
            *count.entry(c.text.as_str()).or_default() += 1;
        }
        let dups: Vec<String> = log
            .chats
            .iter()
            .filter(|c| count[c.text.as_str()] > 1)
            .map(|c| format!("{} at {}@{}", c.text, c.offset, c.epoch))
            .collect();
        if !dups.is_empty() {
            println!("reader {} got duplicates: {dups:?}", log.user);
        }
        report.duplicates += count
            .values()
            .filter(|n| **n > 1)
            .map(|n| n - 1)
            .sum::<usize>();
        let lost: Vec<&&String> = all_receipted
            .iter()
            .filter(|t| !count.contains_key(t.as_str()))
            .collect();
        if let Some(first) = lost.first() {
            // Where the others got it, and what this reader got around that offset.
            let (offset, epoch) = logs
                .iter()
                .flat_map(|l| &l.chats)
                .find(|c| &c.text == **first)
                .map(|c| (c.offset, c.epoch.as_str()))
                .unwrap_or_default();
            let near: Vec<String> = log
                .chats
                .iter()
                .filter(|c| c.offset + 3 >= offset && c.offset <= offset + 3)
                .map(|c| format!("{}@{}", c.offset, c.epoch))
                .collect();
            println!(
                "reader {} (instance {}) lost {} receipted: {:?}; the first was {offset}@{epoch} elsewhere; this reader got {near:?} around it; SYSTEM messages: {:?}",
                log.user,
                log.instance,
                lost.len(),
                &lost[..lost.len().min(12)],
                log.system
            );
        }
        report.lost += lost.len();
        for t in lost {
            if cut_by_the_store(logs, log, t) {
                report.cut.insert((*t).clone());
                report.cut_losses += 1;
            }
        }
        // Receipted messages of one publisher arrive in the order they were sent.
        for sent in receipted {
            let wanted: HashSet<&String> = sent.iter().collect();
            let arrived: Vec<&String> = log
                .chats
                .iter()
                .map(|c| &c.text)
                .filter(|t| wanted.contains(t))
                .collect();
            let seq = |t: &str| -> u64 { t.rsplit('-').next().unwrap().parse().unwrap() };
            report.out_of_order += arrived
                .windows(2)
                .filter(|w| seq(w[0]) >= seq(w[1]))
                .count();
        }
        // From the fault on: the first gap is the time until delivery resumed.
        let times: Vec<Instant> = std::iter::once(window.0)
            .chain(
                log.chats
                    .iter()
                    .map(|c| c.at)
                    .filter(|t| *t >= window.0 && *t <= window.1),
            )
            .collect();
        let gap = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(window.1 - window.0);
        report.longest_gap = report.longest_gap.max(gap);
        for u in &dead_users {
            dead_leave_counts.push(log.leaves_of(u));
        }
        report.leaves_of_live += log
            .presence
            .iter()
            .filter(|p| p.kind == "LEAVE" && !dead_users.contains(&p.user))
            .count();
    }
    if dead.is_some() && (dead_leave_counts.iter().any(|n| *n != 1) || report.leaves_of_live > 0) {
        for log in logs.iter().filter(|l| watched.contains(&l.instance)) {
            println!("{} saw:{}", log.user, log.presence_lines());
        }
    }
    if dead.is_some() {
        let exactly_one = dead_leave_counts.iter().all(|n| *n == 1);
        report.leaves_of_dead = format!(
            "{} of {} ({})",
            dead_leave_counts.iter().sum::<usize>(),
            dead_leave_counts.len(),
            if exactly_one {
                "one each"
            } else {
                "NOT one each"
            }
        );
    }
    report.print();
    report
}

/// Whether `reader` missing `text` is the one loss a Redis without persistence cannot prevent:
/// killed after it wrote a script's reply (the RECEIPT) and some or none of the subscribers'
/// copies of its PUBLISH (Redis writes the replies queued last first, the subscribers' copies
/// after them). Then the message is in no store any more. If it reached some readers, it did
/// so in the old epoch, near that epoch's very end, and this reader's copy of that epoch stops
/// before it; if it reached none, see [`cut_before_any_reader`].
fn cut_by_the_store(logs: &[ReaderLog], reader: &ReaderLog, text: &str) -> bool {
    let Some(got) = logs.iter().flat_map(|l| &l.chats).find(|c| c.text == text) else {
        return cut_before_any_reader(logs, reader, text);
    };
    let epoch_end = epoch_end(logs, &got.epoch);
    let moved_on = reader.chats.last().is_some_and(|c| c.epoch != got.epoch);
    let stopped_before = !reader
        .chats
        .iter()
        .any(|c| c.epoch == got.epoch && c.offset >= got.offset);
    // Each publisher has one SEND in flight, so at most that many are cut.
    moved_on && stopped_before && got.offset + INSTANCES.len() as u64 > epoch_end
}

/// The highest offset of `epoch` that any reader got.
fn epoch_end(logs: &[ReaderLog], epoch: &str) -> u64 {
    logs.iter()
        .flat_map(|l| &l.chats)
        .filter(|c| c.epoch == epoch)
        .map(|c| c.offset)
        .max()
        .unwrap_or(0)
}

/// A message no reader got, cut by the store: its publisher's message before it is near the
/// very end of the old epoch, the one after it is in a new epoch, and this reader moved on to
/// that new epoch. (Publishers send one at a time, so the seam between the epochs falls right
/// after it for its publisher; the others may have put one or two more into the old epoch
/// while its receipt and its next SEND were on their way.)
fn cut_before_any_reader(logs: &[ReaderLog], reader: &ReaderLog, text: &str) -> bool {
    let Some((publisher, n)) = text.rsplit_once('-') else {
        return false;
    };
    let Some(n) = n.parse::<u64>().ok().filter(|n| *n > 0) else {
        return false;
    };
    let find = |n: u64| {
        let t = format!("{publisher}-{n}");
        logs.iter()
            .flat_map(|l| &l.chats)
            .find(move |c| c.text == t)
    };
    let (Some(before), Some(after)) = (find(n - 1), find(n + 1)) else {
        return false;
    };
    let epoch_end = epoch_end(logs, &before.epoch);
    let moved_on = reader.chats.last().is_some_and(|c| c.epoch == after.epoch);
    after.epoch != before.epoch
        && moved_on
        && before.offset + 2 * INSTANCES.len() as u64 > epoch_end
}

fn assert_clean(r: &Report, min_receipted: usize) {
    assert!(
        r.receipted >= min_receipted,
        "{}: only {} receipted",
        r.fault,
        r.receipted
    );
    assert_eq!(r.lost, 0, "{}: receipted messages lost", r.fault);
    assert_eq!(r.duplicates, 0, "{}: duplicates", r.fault);
    assert_eq!(
        r.out_of_order, 0,
        "{}: receipted messages out of order",
        r.fault
    );
    assert_eq!(r.leaves_of_live, 0, "{}: LEAVE for a live session", r.fault);
}

fn urls(ps: &[ServerProcess]) -> Vec<String> {
    ps.iter().map(ServerProcess::ws_url).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_instance_under_load() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start(RedisOpts::default());
    let mut env = registry_env();
    env.push(("CHAT_REDIS_URL", redis.url()));
    let (mut ps, load) = under_load(&env).await;
    let fault = Instant::now();
    ps[2].signal("KILL");
    let _ = ps[2].wait_exit(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let end = Instant::now();
    let (logs, receipted) = load.finish().await;
    let r = judge(
        "instance kill -9",
        &logs,
        &receipted,
        &[0, 1],
        Some(2),
        (fault, end),
    );
    assert_clean(&r, 200);
    assert_eq!(
        r.leaves_of_dead, "8 of 8 (one each)",
        "each of the 4 readers on the survivors saw one LEAVE per dead session (2)"
    );
    // Delivery from the other instances' publishers never stopped.
    assert!(
        r.longest_gap < Duration::from_secs(1),
        "{:?}",
        r.longest_gap
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_of_an_instance_past_its_ttl_then_sigcont() {
    let _one = SERIAL.lock().await;
    let redis = RedisServer::start(RedisOpts::default());
    let mut env = registry_env();
    env.push(("CHAT_REDIS_URL", redis.url()));
    let (ps, load) = under_load(&env).await;
    let fault = Instant::now();
    ps[1].signal("STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    ps[1].signal("CONT");
    ps[1].wait_ready(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = Instant::now();
    let (logs, receipted) = load.finish().await;
    // Readers on the paused instance stayed connected: they too must have everything.
    let all = judge(
        "instance SIGSTOP 3 s + SIGCONT (all readers)",
        &logs,
        &receipted,
        &[0, 1, 2],
        None,
        (fault, end),
    );
    assert_eq!((all.lost, all.duplicates, all.out_of_order), (0, 0, 0));
    let others = judge(
        "instance SIGSTOP 3 s + SIGCONT",
        &logs,
        &receipted,
        &[0, 2],
        Some(1),
        (fault, end),
    );
    assert_clean(&others, 200);
    assert_eq!(others.leaves_of_dead, "8 of 8 (one each)");
    // And each paused session came back with exactly one JOIN, seen by the others.
    for log in logs.iter().filter(|l| l.instance != 1) {
        for k in 0..READERS {
            let u = format!("r-1-{k}");
            let after_leave = log
                .presence
                .iter()
                .skip_while(|p| !(p.kind == "LEAVE" && p.user == u))
                .filter(|p| p.kind == "JOIN" && p.user == u)
                .count();
            assert_eq!(
                after_leave,
                1,
                "{} saw {u} come back after SIGCONT with one JOIN:{}",
                log.user,
                log.presence_lines()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_master_kill_9_with_sentinel_failover() {
    let _one = SERIAL.lock().await;
    let mut cluster = SentinelCluster::start(2, 3, Some(PASSWORD));
    let mut env = registry_env();
    env.extend([
        ("CHAT_REDIS_SENTINELS", cluster.sentinel_addrs()),
        ("CHAT_REDIS_PASSWORD", PASSWORD.to_owned()),
        ("CHAT_REDIS_WAIT_MS", "10000".to_owned()),
    ]);
    let (ps, load) = under_load(&env).await;
    let old = cluster.current_master_port();
    let fault = Instant::now();
    let new = tokio::task::block_in_place(|| {
        cluster.data_node_mut(old).kill9();
        cluster.wait_for_new_master(old, Duration::from_secs(20))
    });
    println!(
        "master {old} killed; {new} elected after {:?}",
        fault.elapsed()
    );
    let end = recovered(&ps, fault).await;
    let (logs, receipted) = load.finish().await;
    judge_redis_fault(
        "Redis master kill -9 (Sentinel)",
        &logs,
        &receipted,
        (fault, end),
        false,
    );
}

/// Waits until every instance is ready again, then 3 s more of load; the end of the window.
async fn recovered(ps: &[ServerProcess], fault: Instant) -> Instant {
    for p in ps {
        p.wait_ready(Duration::from_secs(20)).await;
    }
    println!("every instance ready {:?} after the fault", fault.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    Instant::now()
}

/// A Redis fault kills no session: every reader must have everything, and delivery resumes.
/// `store_lost`: Redis lost what it held (no persistence, no replica), so the messages it cut
/// off in the act of publishing are the one loss allowed (at most one per publisher).
fn judge_redis_fault(
    fault: &'static str,
    logs: &[ReaderLog],
    receipted: &[Vec<String>],
    window: (Instant, Instant),
    store_lost: bool,
) {
    let mut r = judge(fault, logs, receipted, &[0, 1, 2], None, window);
    if store_lost {
        assert!(r.cut.len() <= INSTANCES.len(), "{:?}", r.cut);
        r.lost -= r.cut_losses;
    }
    assert_clean(&r, 100);
    assert!(
        r.longest_gap < Duration::from_secs(10),
        "{:?}",
        r.longest_gap
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_without_persistence() {
    let _one = SERIAL.lock().await;
    let mut redis = RedisServer::start(RedisOpts::default());
    let mut env = registry_env();
    env.push(("CHAT_REDIS_URL", redis.url()));
    let (ps, load) = under_load(&env).await;
    let fault = Instant::now();
    tokio::task::block_in_place(|| redis.restart());
    let end = recovered(&ps, fault).await;
    // Every instance put its sessions' presence back into the empty Redis.
    let members: serde_json::Value = reqwest::get(ps[0].url("/api/rooms/chaos/presence"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (logs, receipted) = load.finish().await;
    judge_redis_fault(
        "Redis restart (no persistence)",
        &logs,
        &receipted,
        (fault, end),
        true,
    );
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(3 * READERS),
        "presence was restored in the new Redis: {members}; keys: {}",
        redis.cli(&["KEYS", "*"])
    );
}

/// The judge's account of store cuts, on made-up logs: a message lost by every reader counts
/// as cut only at its publisher's seam between the epochs.
#[test]
fn a_message_no_reader_got_is_cut_by_the_store_only_at_the_epoch_seam() {
    let chat = |text: &str, offset: u64, epoch: &str| Chat {
        text: text.into(),
        at: Instant::now(),
        offset,
        epoch: epoch.into(),
    };
    // C-2 was receipted and went with the old Redis; C-3 opened the new epoch. A-2 went
    // missing in the middle of the old epoch: that is a loss, not a cut.
    let reader = ReaderLog {
        chats: vec![
            chat("A-1", 1, "old"),
            chat("C-1", 2, "old"),
            chat("A-3", 3, "old"),
            chat("B-1", 4, "old"),
            chat("A-4", 5, "old"),
            chat("C-3", 1, "new"),
            chat("B-2", 2, "new"),
        ],
        ..ReaderLog::default()
    };
    let logs = [reader];
    assert!(cut_by_the_store(&logs, &logs[0], "C-2"));
    assert!(!cut_by_the_store(&logs, &logs[0], "A-2"), "mid-epoch");
    assert!(
        !cut_by_the_store(&logs, &logs[0], "B-9"),
        "nothing around it"
    );
    // Not at the seam when the publisher's next message is still in the old epoch.
    let mut logs = logs;
    logs[0].chats.insert(4, chat("C-3", 5, "old"));
    assert!(!cut_by_the_store(&logs, &logs[0], "C-2"));
}
