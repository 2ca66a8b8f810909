//! The decisions of the Redis scripts' shell functions, run by `sh` against a `redis-cli`
//! stub that answers from files and logs every call: which data node a survey picks, and
//! that a hand-over asks for one failover only, and none while another node is master.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::config_map::SCRIPT_FUNCTIONS;

/// Answers `[-h HOST] [-p PORT] [--raw] ARGS...` from `$STUB_DIR/HOST:PORT:ARGS` (spaces as
/// `_`), or from that file with `.after` once a `sentinel failover` was asked; logs each call
/// to `$STUB_DIR/calls`; a missing file is an unreachable node.
const STUB: &str = r#"#!/bin/sh
host=127.0.0.1; port=6379
while [ $# -gt 0 ]; do
  case "$1" in
    -h) host=$2; shift 2 ;;
    -p) port=$2; shift 2 ;;
    --raw) shift ;;
    *) break ;;
  esac
done
args="$(echo "$*" | tr ' ' '_')"
f="$STUB_DIR/$host:$port:$args"
if grep -q 'sentinel failover' "$STUB_DIR/calls" 2>/dev/null && [ -f "$f.after" ]; then
  f="$f.after"
fi
echo "$host $port $*" >> "$STUB_DIR/calls"
[ -f "$f" ] && cat "$f" || exit 1
"#;

/// A scratch directory with the stub as `redis-cli`, removed when dropped.
struct Stub {
    dir: PathBuf,
}

impl Stub {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("chat-op-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let cli = dir.join("bin/redis-cli");
        std::fs::write(&cli, STUB).unwrap();
        Command::new("chmod").arg("+x").arg(&cli).status().unwrap();
        Self { dir }
    }

    /// `redis-cli -h host -p port args` answers `reply`; with `after`, only once a failover
    /// was asked.
    fn answer(&self, host: &str, port: u16, args: &str, reply: &str, after: bool) -> &Self {
        let mut name = format!("{host}:{port}:{}", args.replace(' ', "_"));
        if after {
            name.push_str(".after");
        }
        std::fs::write(self.dir.join(name), reply).unwrap();
        self
    }

    /// Data node `i` answers `INFO replication` with `info`.
    fn node(&self, i: u8, info: &str) -> &Self {
        self.answer(&node(i), 6379, "info replication", info, false)
    }

    /// Run `body` after the functions, in the environment a StatefulSet sets: its stdout,
    /// and the calls the stub saw during this run.
    fn run(&self, body: &str) -> (String, Vec<String>) {
        let _ = std::fs::remove_file(self.dir.join("calls"));
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = succeeded(
            Command::new("sh")
                .arg("-c")
                .arg(format!("set -eu\n{SCRIPT_FUNCTIONS}\n{body}"))
                .env("PATH", path)
                .env("STUB_DIR", &self.dir)
                .envs(ENV),
        );
        let calls = std::fs::read_to_string(self.dir.join("calls")).unwrap_or_default();
        (
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            calls.lines().map(str::to_owned).collect(),
        )
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.path());
    }
}

/// Run `command`, which must succeed (else its stderr is the failure): its output.
pub(super) fn succeeded(command: &mut Command) -> std::process::Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const ENV: [(&str, &str); 9] = [
    ("REDIS_PASSWORD", "pw"),
    ("NAMESPACE", "ns"),
    ("REDIS_STATEFULSET", "chat-redis"),
    ("REDIS_HEADLESS", "chat-redis-headless"),
    ("REDIS_NODES", "3"),
    ("SENTINEL_STATEFULSET", "chat-sentinel"),
    ("SENTINEL_HEADLESS", "chat-sentinel-headless"),
    ("SENTINELS", "3"),
    ("MASTER_NAME", "mymaster"),
];

fn node(i: u8) -> String {
    format!("chat-redis-{i}.chat-redis-headless.ns.svc")
}

fn sentinel(i: u8) -> String {
    format!("chat-sentinel-{i}.chat-sentinel-headless.ns.svc")
}

fn info(role: &str, offset: u64, replicas: u32) -> String {
    format!(
        "# Replication\r\nrole:{role}\r\nconnected_slaves:{replicas}\r\nmaster_repl_offset:{offset}\r\n"
    )
}

#[test]
fn a_survey_prefers_the_master_with_most_replicas_over_any_offset() {
    let stub = Stub::new("survey-master");
    stub.node(0, &info("slave", 900, 0))
        .node(1, &info("master", 100, 0))
        .node(2, &info("master", 50, 2));
    assert_eq!(
        stub.run("survey_data_nodes").0,
        format!("master {}", node(2))
    );
    // The asking node is not asked.
    let (answer, calls) = stub.run(&format!("survey_data_nodes {}", node(2)));
    assert_eq!(answer, format!("master {}", node(1)));
    assert!(!calls.iter().any(|c| c.starts_with(&node(2))), "{calls:?}");
}

#[test]
fn without_a_master_a_survey_names_the_highest_offset_ties_to_the_lowest_ordinal() {
    let stub = Stub::new("survey-data");
    stub.node(0, &info("slave", 10, 0))
        .node(1, &info("slave", 30, 0))
        .node(2, &info("slave", 30, 0));
    assert_eq!(stub.run("survey_data_nodes").0, format!("data {}", node(1)));
    // Offsets of 0 (restarted, never synced) and silent nodes are no data.
    let empty = Stub::new("survey-empty");
    empty.node(0, &info("slave", 0, 0));
    assert_eq!(empty.run("survey_data_nodes").0, "");
}

#[test]
fn a_hand_over_asks_one_failover_of_a_sentinel_still_naming_this_node() {
    let stub = Stub::new("hand-over");
    let ask = "sentinel get-master-addr-by-name mymaster";
    for s in 0..3 {
        stub.answer(
            &sentinel(s),
            26379,
            ask,
            &format!("{}\n6379\n", node(0)),
            false,
        );
    }
    // Sentinel 0 accepts the failover; only sentinel 2 names the new master afterwards.
    stub.answer(
        &sentinel(0),
        26379,
        "sentinel failover mymaster",
        "OK\n",
        false,
    )
    .answer(
        &sentinel(2),
        26379,
        ask,
        &format!("{}\n6379\n", node(1)),
        true,
    );
    let (named, calls) = stub.run(&format!("hand_over {} 20", node(0)));
    assert_eq!(named, node(1));
    let failovers: Vec<&String> = calls.iter().filter(|c| c.contains("failover")).collect();
    assert_eq!(
        failovers,
        [&format!("{} 26379 sentinel failover mymaster", sentinel(0))]
    );
}

#[test]
fn a_hand_over_while_another_node_is_master_only_waits_and_gives_up_in_time() {
    let stub = Stub::new("hand-over-wait");
    let ask = "sentinel get-master-addr-by-name mymaster";
    stub.answer(
        &sentinel(0),
        26379,
        ask,
        &format!("{}\n6379\n", node(0)),
        false,
    );
    let started = std::time::Instant::now();
    let (named, calls) = stub.run(&format!("hand_over {} 2 wait", node(0)));
    assert_eq!(named, "", "nobody else was named");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(!calls.iter().any(|c| c.contains("failover")), "{calls:?}");
}
