//! Topology chaos test: the Redis data nodes and sentinels exactly as the operator renders them
//! (scripts from the rendered ConfigMap, env and hooks from the rendered StatefulSets; see
//! `chat_tests::topology`), 3 data + 3 sentinel "pods" in their own network and mount
//! namespaces, two chat-server instances on top with a receipted publisher, and one fault:
//!
//! - the master partitioned (its link down) until the sentinels replace it, then back,
//! - the master killed and restarted within a second,
//! - the master killed, and restarted while the sentinels fail over,
//! - every sentinel restarted together while the master is not pod 0,
//! - every pod killed and restarted together,
//! - a rolling restart in the order the StatefulSet (or the operator, with `OnDelete`) takes,
//!   each pod's preStop hook run before it stops,
//! - a replica restarted with a new IP.
//!
//! Each runs with persistence on and off. Measured: receipted messages missing from the room's
//! history afterwards (read by a STOMP reader with `x-history`), history Streams before/after,
//! the most masters at once after convergence (ROLE of every node), the time to converge (one
//! master, every replica linked, every sentinel naming it), the time until every server's
//! /readyz is 200 again, and how long after the first `+switch-master` the first receipt came.
//! Asserted is what the mode promises (see [`promises`]). Each test prints its Markdown table
//! row; `operator/README.md` ("Topology chaos test") holds the table of one full run.
//!
//! CI runs a representative subset (five faults, both modes among them; the mid-failover
//! restart, whose outcome depends on timing, only in the full matrix); set `TOPOLOGY_FULL=1`
//! for the whole matrix, `TOPOLOGY_LOGS=1` for the pods' logs of every run. Needs root,
//! `unshare`, `nsenter` and `ip`; without them every test skips with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chat_tests::topology::{Cluster, Kind, Rendered, unsupported};
use chat_tests::{Client, body};
use chat_wire::stomp::{Command, Frame};

const ROOM: &str = "/topic/room/lobby";
const SEND: &str = "/app/room/lobby";
/// Rooms with one message each before the fault: the history the fault must not lose.
const SEED_ROOMS: usize = 20;
/// The history Streams (`PREFIX:log:ROOM`).
const HISTORY_KEYS: &str = "*:log:*";
/// Pause between the publisher's receipted SENDs (~20 msg/s).
const GAP: Duration = Duration::from_millis(50);
/// How long the publisher waits for one RECEIPT (the servers wait up to 10 s for Redis).
const RECEIPT_WAIT: Duration = Duration::from_secs(15);
/// How long a fault may take to converge before the test gives up on it.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
/// How long after convergence the masters are still counted.
const OBSERVE: Duration = Duration::from_secs(3);
/// Readiness promised after convergence.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// Receipts promised after `+switch-master`.
const RESUME_WITHIN: Duration = Duration::from_millis(500);

/// One fault at a time: each runs six pods and two servers, and timing is part of the result.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    MasterPartition,
    MasterKillRestart,
    KillMidFailover,
    AllSentinelsRestart,
    AllPodsRestart,
    RollingRestart,
    ReplicaIpChange,
}

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::MasterPartition => "master partitioned until the failover, then back",
            Fault::MasterKillRestart => "master kill -9 + restart within 1 s",
            Fault::KillMidFailover => "master kill -9, restarted mid-failover",
            Fault::AllSentinelsRestart => "all sentinels restarted, master != pod 0",
            Fault::AllPodsRestart => "every pod killed and restarted together",
            Fault::RollingRestart => "rolling restart with preStop hooks",
            Fault::ReplicaIpChange => "replica restarted with a new IP",
        }
    }
}

/// What a mode promises under a fault: `(no receipted message lost, no history lost)`. With
/// one replica ack (the rendered `CHAT_REDIS_MIN_REPLICAS=1`) a receipted message is on two
/// nodes, so any fault that leaves one of them promises both. Killing every pod at once keeps
/// only what persistence wrote: the history with appendonly (but `appendfsync everysec` may
/// drop the last second of receipted messages), nothing without it.
fn promises(fault: Fault, persistence: bool) -> (bool, bool) {
    match fault {
        Fault::AllPodsRestart => (false, persistence),
        _ => (true, true),
    }
}

fn manifest(persistence: bool) -> String {
    format!(
        "apiVersion: chat.dev/v1alpha1
kind: ChatCluster
metadata:
  name: chat
  namespace: chaos
spec:
  redis:
    mode: Sentinel
    replicas: 3
    sentinels: 3
    minReplicasToAck: 1
    persistence:
      enabled: {persistence}
"
    )
}

/// The objects the operator's own builders render for the test's ChatCluster.
fn rendered(persistence: bool) -> Rendered {
    let yaml = chat_operator::render::render(&manifest(persistence), "ops").expect("render");
    let rendered = Rendered::from_yaml(&yaml).expect("the rendered objects");
    assert_eq!(rendered.persistence, persistence, "redis.conf's appendonly");
    rendered
}

/// One table row.
struct Row {
    fault: Fault,
    persistence: bool,
    receipted: usize,
    /// `None`: no reader could read the history.
    lost: Option<usize>,
    keys_before: Option<usize>,
    keys_after: Option<usize>,
    masters_during: usize,
    masters_after: usize,
    converged: Option<Duration>,
    ready_after_convergence: Option<Duration>,
    resume: Option<Duration>,
}

const HEADER: &str = "| fault | persistence | receipted | lost | history keys before → after | max masters during / after convergence | converged after | servers ready after convergence | first receipt after +switch-master |\n|---|---|---|---|---|---|---|---|---|";

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_owned(),
        |d| format!("{:.1} s", d.as_secs_f64()),
    )
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = |k: Option<usize>| k.map_or_else(|| "?".to_owned(), |k| k.to_string());
        write!(
            f,
            "| {} | {} | {} | {} | {} → {} | {} / {} | {} | {} | {} |",
            self.fault.describe(),
            if self.persistence { "on" } else { "off" },
            self.receipted,
            self.lost
                .map_or_else(|| "unreadable".to_owned(), |l| l.to_string()),
            keys(self.keys_before),
            keys(self.keys_after),
            self.masters_during,
            self.masters_after,
            secs(self.converged),
            if self.converged.is_some() {
                secs(self.ready_after_convergence)
            } else {
                "-".to_owned()
            },
            self.resume.map_or_else(
                || "no switch".to_owned(),
                |d| format!("{} ms", d.as_millis())
            ),
        )
    }
}

/// A publisher sending `m1`, `m2`, ... with receipts through one server until stopped,
/// reconnecting when its connection fails; the receipted ones with when each receipt came.
struct Publisher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(String, Instant)>>,
}

impl Publisher {
    fn start(url: String) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut receipted = Vec::new();
            let mut client: Option<Client> = None;
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                let Some(c) = client.as_mut() else {
                    client = Client::try_login(&url, "pub", Duration::from_secs(2)).await;
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                };
                i += 1;
                let text = format!("m{i}");
                match c.try_send(SEND, &text, RECEIPT_WAIT).await {
                    Ok(()) => receipted.push((text, Instant::now())),
                    Err(_) => client = None,
                }
                tokio::time::sleep(GAP).await;
            }
            receipted
        });
        Publisher { stop, task }
    }

    async fn finish(self) -> Vec<(String, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the publisher task")
    }
}

/// The contents of the room's last 10,000 messages (all of a run), as a reader subscribing
/// with `x-history` gets them from `url`; `None` when no reader gets a subscription there.
async fn history_contents(url: &str) -> Option<BTreeSet<String>> {
    let mut reader = Client::try_login(url, "reader", Duration::from_secs(5)).await?;
    let subscribe = Frame::new(Command::Subscribe)
        .with_header("id", "h")
        .with_header("destination", ROOM)
        .with_header("x-history", "10000");
    reader.send_frame(&subscribe).await;
    let mut seen = BTreeSet::new();
    while let Ok(Some(f)) = reader.next_frame_within(Duration::from_millis(1500)).await {
        match f.command {
            Command::Message => {
                if let Some(c) = body(&f)["content"].as_str() {
                    seen.insert(c.to_owned());
                }
            }
            Command::Error => return None,
            _ => {}
        }
    }
    Some(seen)
}

/// Until every server answers /readyz with 200, at most `within`; when they all did.
async fn wait_servers_ready(cluster: &Cluster, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let mut all = true;
        for s in &cluster.servers {
            all &= s.is_ready().await;
        }
        if all {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Makes a data node other than pod 0 the master (a failover the sentinels run).
fn move_master_off_pod_0(cluster: &Cluster) {
    if cluster.converged() != Some(0) {
        return;
    }
    // Right after start-up the sentinels may not yet count the replicas as good (they learn
    // them from the master's INFO every 10 s): ask again until one accepts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = cluster.command(&cluster.sentinels[0], &["SENTINEL", "FAILOVER", "mymaster"]);
        if reply.as_ref().is_some_and(|r| !r.is_error()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SENTINEL FAILOVER refused for 30 s: {reply:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let deadline = Instant::now() + CONVERGE_WITHIN;
    loop {
        if let Some(m) = cluster.converged()
            && m != 0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the master did not move off pod 0{}",
            cluster.logs(15)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The data nodes in the order a roll takes them: with `OnDelete` (the operator rolls)
/// replicas first and the master last, else the StatefulSet's ordinal descending.
fn roll_order(cluster: &Cluster, kind: Kind, master: usize) -> Vec<usize> {
    let n = cluster.pods(kind).len();
    let template = match kind {
        Kind::Data => &cluster.rendered.data,
        Kind::Sentinel => &cluster.rendered.sentinels,
    };
    let mut order: Vec<usize> = (0..n).rev().collect();
    if kind == Kind::Data && template.on_delete {
        order.retain(|i| *i != master);
        order.push(master);
    }
    order
}

/// Applies `fault`; returns when the faulted pods have been started again.
async fn apply(cluster: &mut Cluster, fault: Fault, master: usize, events_after: Instant) {
    let events = cluster.watch_events();
    match fault {
        Fault::MasterPartition => {
            cluster.set_connected(Kind::Data, master, false);
            let switched = blocking(|| {
                events.wait_first("+switch-master", events_after, Duration::from_secs(30))
            });
            println!(
                "partitioned master replaced: {:?}",
                switched.map(|(at, what)| (at - events_after, what))
            );
            cluster.set_connected(Kind::Data, master, true);
        }
        Fault::MasterKillRestart => {
            cluster.kill_pod(Kind::Data, master);
            tokio::time::sleep(Duration::from_millis(500)).await;
            cluster.start_pod(Kind::Data, master);
        }
        Fault::KillMidFailover => {
            cluster.kill_pod(Kind::Data, master);
            let started = blocking(|| {
                events.wait_first("+try-failover", events_after, Duration::from_secs(30))
            });
            println!(
                "failover started: {:?}",
                started.map(|(at, what)| (at - events_after, what))
            );
            cluster.start_pod(Kind::Data, master);
        }
        Fault::AllSentinelsRestart => {
            for i in 0..cluster.sentinels.len() {
                cluster.kill_pod(Kind::Sentinel, i);
            }
            for i in 0..cluster.sentinels.len() {
                cluster.start_pod(Kind::Sentinel, i);
            }
        }
        Fault::AllPodsRestart => {
            for kind in [Kind::Data, Kind::Sentinel] {
                for i in 0..cluster.pods(kind).len() {
                    cluster.kill_pod(kind, i);
                }
            }
            for kind in [Kind::Data, Kind::Sentinel] {
                for i in 0..cluster.pods(kind).len() {
                    cluster.start_pod(kind, i);
                }
            }
        }
        Fault::RollingRestart => {
            // One StatefulSet after the other (Kubernetes rolls both at once), each pod ready
            // (answering PING, as its readiness probe asks) before the next goes.
            for kind in [Kind::Data, Kind::Sentinel] {
                for i in roll_order(cluster, kind, master) {
                    let hook = blocking(|| cluster.stop_pod_gracefully(kind, i));
                    let hook = hook.map_or_else(
                        || "no preStop hook rendered".to_owned(),
                        |d| format!("its preStop hook ran {d:?}"),
                    );
                    println!("{} stopped: {hook}", cluster.pods(kind)[i].name);
                    cluster.start_pod(kind, i);
                    let ready = blocking(|| cluster.wait_pod_ready(kind, i, CONVERGE_WITHIN));
                    assert!(
                        ready,
                        "{} never answered PING after its restart{}",
                        cluster.pods(kind)[i].name,
                        cluster.logs(20)
                    );
                    if kind == Kind::Data && cluster.rendered.data.on_delete {
                        // The operator's roll (`operator/src/rollout.rs`) takes its next step
                        // only once every data pod is ready, every replica linked and the
                        // sentinels agree on the master.
                        let (settled, _) = blocking(|| cluster.wait_converged(CONVERGE_WITHIN));
                        assert!(
                            settled.is_some(),
                            "the topology never settled after {} restarted{}",
                            cluster.pods(kind)[i].name,
                            cluster.logs(20)
                        );
                    }
                }
            }
        }
        Fault::ReplicaIpChange => {
            let replica = (0..cluster.data.len())
                .find(|i| *i != master)
                .expect("a replica");
            cluster.kill_pod(Kind::Data, replica);
            let ip = cluster.change_ip(Kind::Data, replica);
            println!("{} now at {ip}", cluster.data[replica].name);
            cluster.start_pod(Kind::Data, replica);
        }
    }
    drop(events);
}

/// Runs one fault in one mode and returns its row (`None`: skipped).
async fn run(fault: Fault, persistence: bool) -> Option<Row> {
    let _serial = SERIAL.lock().await;
    if let Some(why) = unsupported() {
        println!("SKIPPED topology chaos test ({fault:?}): {why}");
        return None;
    }
    let mut cluster = Cluster::start(rendered(persistence));
    let (first, _) = blocking(|| cluster.wait_converged(Duration::from_secs(60)));
    assert!(
        first.is_some(),
        "the fresh topology never converged{}",
        cluster.logs(30)
    );
    if fault == Fault::AllSentinelsRestart {
        blocking(|| move_master_off_pod_0(&cluster));
    }
    // Every message of a run stays in the room's history (the default keeps 1000), so a
    // message missing there was lost, not trimmed.
    let extra = [
        ("CHAT_SEND_RATE", "0"),
        ("CHAT_REDIS_WAIT_MS", "10000"),
        ("CHAT_HISTORY_MAX_LEN", "10000"),
    ];
    for id in ["a", "b"] {
        cluster.start_server(id, &extra).await;
    }
    assert!(
        wait_servers_ready(&cluster, Duration::from_secs(30))
            .await
            .is_some(),
        "servers not ready on a healthy topology"
    );
    let mut seeder = Client::login(&cluster.servers[0].ws_url(), "seed").await;
    for r in 0..SEED_ROOMS {
        seeder.send(&format!("/app/room/seed{r}"), "seed").await;
    }
    seeder.disconnect().await;

    let publisher = Publisher::start(cluster.servers[0].ws_url());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let master = blocking(|| cluster.converged()).expect("converged before the fault");
    let keys_before = blocking(|| cluster.key_count(master, HISTORY_KEYS));

    let events = cluster.watch_events();
    let faulted = Instant::now();
    println!(
        "{fault:?}, persistence {persistence}: master {}",
        cluster.data[master].name
    );
    apply(&mut cluster, fault, master, faulted).await;
    let (after, masters_during) = blocking(|| cluster.wait_converged(CONVERGE_WITHIN));
    let converged_at = Instant::now();
    let ready_at = if after.is_some() {
        wait_servers_ready(&cluster, Duration::from_secs(30)).await
    } else {
        None
    };
    // Masters counted after convergence, while the publisher goes on.
    let mut masters_after = 0;
    let observe_until = Instant::now() + OBSERVE;
    while Instant::now() < observe_until {
        masters_after = masters_after.max(blocking(|| {
            cluster.supervise();
            cluster.masters().len()
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let receipted = publisher.finish().await;
    let switched = events.first("+switch-master", faulted);
    drop(events);
    let resume = switched.as_ref().and_then(|(at, _)| {
        receipted
            .iter()
            .find(|(_, r)| r > at)
            .map(|(_, r)| *r - *at)
    });
    let keys_after = after.and_then(|m| blocking(|| cluster.key_count(m, HISTORY_KEYS)));
    // Read even when the servers are not ready: what a reader can still get is the history.
    let seen = history_contents(&cluster.servers[1].ws_url()).await;
    let lost: Option<Vec<&str>> = seen.as_ref().map(|seen| {
        receipted
            .iter()
            .map(|(t, _)| t.as_str())
            .filter(|t| !seen.contains(*t))
            .collect()
    });
    let row = Row {
        fault,
        persistence,
        receipted: receipted.len(),
        lost: lost.as_ref().map(Vec::len),
        keys_before,
        keys_after,
        masters_during,
        masters_after: if after.is_some() {
            masters_after
        } else {
            masters_during
        },
        converged: after.map(|_| converged_at - faulted),
        ready_after_convergence: ready_at.map(|r| r - converged_at),
        resume,
    };
    println!("{HEADER}\n{row}");
    if let Some((at, what)) = switched {
        println!("+switch-master {:?} after the fault: {what}", at - faulted);
    }
    // When each lost message was receipted, relative to the fault: which phase lost it.
    if let Some(lost) = &lost
        && !lost.is_empty()
    {
        let when: Vec<String> = receipted
            .iter()
            .filter(|(t, _)| lost.contains(&t.as_str()))
            .take(20)
            .map(|(t, at)| format!("{t} at {:.1} s", (*at - faulted).as_secs_f64()))
            .collect();
        println!("lost (receipted after the fault): {}", when.join(", "));
    }
    let lossy = lost.as_ref().is_none_or(|l| !l.is_empty());
    if lossy || after.is_none() || std::env::var_os("TOPOLOGY_LOGS").is_some() {
        println!("pod logs:{}", cluster.logs(12));
    }
    drop(cluster);
    Some(row)
}

/// Runs the fault (unless it is outside CI's subset and `TOPOLOGY_FULL` is unset) and asserts
/// what the mode promises.
async fn check(fault: Fault, persistence: bool, in_ci_subset: bool) {
    if !in_ci_subset && std::env::var_os("TOPOLOGY_FULL").is_none() {
        println!(
            "{fault:?} with persistence {persistence}: only in the full matrix (TOPOLOGY_FULL=1)"
        );
        return;
    }
    let Some(row) = run(fault, persistence).await else {
        return;
    };
    let (no_loss, no_history_loss) = promises(fault, persistence);
    assert!(row.converged.is_some(), "never converged: {row}");
    assert_eq!(row.masters_after, 1, "masters after convergence: {row}");
    let ready = row.ready_after_convergence;
    assert!(
        ready.is_some_and(|r| r <= READY_WITHIN),
        "servers not ready within {READY_WITHIN:?} of convergence: {row}"
    );
    if no_history_loss {
        assert!(
            row.keys_after >= row.keys_before && row.keys_before.is_some(),
            "history keys lost: {row}"
        );
    }
    if no_loss {
        assert_eq!(row.lost, Some(0), "receipted messages lost: {row}");
    }
    if matches!(
        fault,
        Fault::MasterPartition | Fault::MasterKillRestart | Fault::KillMidFailover
    ) && let Some(resume) = row.resume
    {
        assert!(
            resume <= RESUME_WITHIN,
            "receipts resumed {resume:?} after +switch-master: {row}"
        );
    }
    assert!(row.receipted > 0, "nothing was receipted: {row}");
}

#[test]
fn the_harness_runs_what_the_operator_renders_for_data_nodes_sentinels_and_servers() {
    let r = rendered(true);
    assert_eq!(r.namespace, "chaos");
    assert_eq!((r.data.replicas, r.sentinels.replicas), (3, 3));
    assert_eq!(r.data.command, ["sh", "/config/redis-start.sh"]);
    assert_eq!(r.sentinels.command, ["sh", "/config/sentinel-start.sh"]);
    assert_eq!(r.data.headless, "chat-redis-headless");
    assert!(r.files.contains_key("redis-start.sh") && r.files.contains_key("sentinel-start.sh"));
    assert!(r.data.mounts.iter().any(|(_, path)| path == "/data"));
    assert!(r.data.mounts.iter().any(|(_, path)| path == "/config"));
    assert!(!r.password.is_empty());
    let env: std::collections::HashMap<String, String> = r.server_env("a").into_iter().collect();
    assert_eq!(env["CHAT_REDIS_PASSWORD"], r.password);
    assert_eq!(env["CHAT_REDIS_MIN_REPLICAS"], "1");
    assert!(
        env["CHAT_REDIS_SENTINELS"]
            .contains("chat-sentinel-0.chat-sentinel-headless.chaos.svc:26379"),
        "{env:?}"
    );
    assert!(!rendered(false).persistence);
}

/// `rendered(false)` with an init container and a preStop hook added to the data nodes'
/// StatefulSet (in the YAML, so reading them is tested too), each leaving a file in `/data`.
fn rendered_with_hooks() -> Rendered {
    let yaml = chat_operator::render::render(&manifest(false), "ops").expect("render");
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        use serde::Deserialize as _;
        let mut v = serde_json::Value::deserialize(doc).expect("a rendered object");
        if v["kind"] == "StatefulSet" && v["metadata"]["name"] == "chat-redis" {
            let pod = &mut v["spec"]["template"]["spec"];
            let mounts = pod["containers"][0]["volumeMounts"].clone();
            pod["initContainers"] = serde_json::json!([{
                "name": "init",
                "command": ["sh", "-c", "echo \"$POD_NAME\" > /data/init-ran"],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "volumeMounts": mounts,
            }]);
            pod["containers"][0]["lifecycle"] = serde_json::json!({
                "preStop": {"exec": {"command": ["sh", "-c", "echo \"$POD_NAME\" > /data/pre-stop-ran"]}}
            });
        }
        docs.push(format!("---\n{}", serde_yaml::to_string(&v).expect("YAML")));
    }
    Rendered::from_yaml(&docs.concat()).expect("the rendered objects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_runs_init_containers_before_a_pod_and_its_pre_stop_hook_before_it_stops() {
    let _serial = SERIAL.lock().await;
    if let Some(why) = unsupported() {
        println!("SKIPPED: {why}");
        return;
    }
    let rendered = rendered_with_hooks();
    assert_eq!(rendered.data.init.len(), 1);
    assert!(rendered.data.pre_stop.is_some());
    let mut cluster = Cluster::start(rendered);
    let data = cluster.volume_dir(Kind::Data, 1, "data");
    let read = |file: &str| std::fs::read_to_string(data.join(file)).unwrap_or_default();
    assert_eq!(read("init-ran").trim(), "chat-redis-1");
    assert!(
        blocking(|| cluster.wait_pod_ready(Kind::Data, 1, Duration::from_secs(20))),
        "{}",
        cluster.logs(20)
    );
    assert_eq!(read("pre-stop-ran"), "", "no hook before the stop");
    let hook = blocking(|| cluster.stop_pod_gracefully(Kind::Data, 1));
    assert!(hook.is_some());
    assert_eq!(read("pre-stop-ran").trim(), "chat-redis-1");
    assert!(
        cluster.command(&cluster.data[1], &["PING"]).is_none(),
        "the pod is gone after its stop"
    );
}

macro_rules! topology_test {
    ($name:ident, $fault:expr, persistence = $p:expr, ci = $ci:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            check($fault, $p, $ci).await;
        }
    };
}

topology_test!(
    a_partitioned_master_without_persistence_is_replaced_and_receipts_resume_within_half_a_second,
    Fault::MasterPartition,
    persistence = false,
    ci = true
);
topology_test!(
    a_partitioned_master_with_persistence_is_replaced_and_receipts_resume_within_half_a_second,
    Fault::MasterPartition,
    persistence = true,
    ci = false
);
topology_test!(
    a_master_killed_and_restarted_within_a_second_without_persistence_loses_nothing_receipted,
    Fault::MasterKillRestart,
    persistence = false,
    ci = true
);
topology_test!(
    a_master_killed_and_restarted_within_a_second_with_persistence_loses_nothing_receipted,
    Fault::MasterKillRestart,
    persistence = true,
    ci = false
);
topology_test!(
    a_master_restarted_mid_failover_without_persistence_leaves_one_master_and_every_message,
    Fault::KillMidFailover,
    persistence = false,
    ci = false
);
topology_test!(
    a_master_restarted_mid_failover_with_persistence_leaves_one_master_and_every_message,
    Fault::KillMidFailover,
    persistence = true,
    ci = false
);
topology_test!(
    sentinels_restarted_together_without_persistence_find_the_master_that_is_not_pod_0,
    Fault::AllSentinelsRestart,
    persistence = false,
    ci = false
);
topology_test!(
    sentinels_restarted_together_with_persistence_find_the_master_that_is_not_pod_0,
    Fault::AllSentinelsRestart,
    persistence = true,
    ci = true
);
topology_test!(
    every_pod_killed_together_without_persistence_comes_back_with_one_master,
    Fault::AllPodsRestart,
    persistence = false,
    ci = false
);
topology_test!(
    every_pod_killed_together_with_persistence_comes_back_with_its_history,
    Fault::AllPodsRestart,
    persistence = true,
    ci = true
);
topology_test!(
    a_rolling_restart_without_persistence_loses_nothing_receipted,
    Fault::RollingRestart,
    persistence = false,
    ci = true
);
topology_test!(
    a_rolling_restart_with_persistence_loses_nothing_receipted,
    Fault::RollingRestart,
    persistence = true,
    ci = false
);
topology_test!(
    a_replica_back_with_a_new_ip_without_persistence_rejoins_and_loses_nothing,
    Fault::ReplicaIpChange,
    persistence = false,
    ci = false
);
topology_test!(
    a_replica_back_with_a_new_ip_with_persistence_rejoins_and_loses_nothing,
    Fault::ReplicaIpChange,
    persistence = true,
    ci = false
);
