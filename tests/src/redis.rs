#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Redis and Sentinel processes for end-to-end tests.
//!
//! Every process listens on a free port on 127.0.0.1, lives in its own fresh temporary
//! directory (its log file is `redis.log` / `sentinel.log` there) and is killed with SIGKILL
//! (and reaped) when its handle drops, also while a test unwinds from a panic. Every wait is
//! bounded and panics with the tail of the relevant log when it runs out.
//!
//! The harness talks to Redis with a minimal RESP2 exchange over a `std::net::TcpStream`
//! ([`resp_command`]) or with `redis-cli` ([`RedisServer::cli`]); it does not depend on a
//! Redis client crate. Needs `redis-server`, `redis-sentinel` and `redis-cli` on the `PATH`
//! (Debian: `apt-get install redis-server redis-sentinel redis-tools`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a single process may take to answer its first PING.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a whole Sentinel setup may take until every sentinel sees every node.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(45);
/// Timeout of one command sent by [`RedisServer::command`], [`RedisServer::cli`] and friends.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The master name every [`SentinelCluster`] monitors.
pub const MASTER_NAME: &str = "mymaster";

const POLL_INTERVAL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const LOG_TAIL_LINES: usize = 40;
const PORT_ATTEMPTS: usize = 5;

/// A port that was free on 127.0.0.1 a moment ago (bound to port 0, read, released).
/// A free TCP port on 127.0.0.1 (the crate's one helper).
pub use crate::free_port;

// ---------------------------------------------------------------------------------------------
// RESP
// ---------------------------------------------------------------------------------------------

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// A simple string or a non-nil bulk string, as (lossy) UTF-8.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Resp::Integer(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Resp]> {
        match self {
            Resp::Array(Some(items)) => Some(items),
            _ => None,
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Resp::Error(_))
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, Resp::Bulk(None) | Resp::Array(None))
    }

    /// A flat array of alternating field names and values (as `SENTINEL REPLICAS` returns for
    /// each instance) as a map.
    pub fn as_field_map(&self) -> Option<HashMap<String, String>> {
        let items = self.as_array()?;
        let mut map = HashMap::new();
        for pair in items.chunks(2) {
            if let [k, v] = pair {
                map.insert(k.as_text()?, v.as_text()?);
            }
        }
        Some(map)
    }
}

/// One command in RESP2 (an array of bulk strings).
pub fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn protocol_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let n = reader.read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a complete reply",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(protocol_error(format!(
            "reply line without CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn parse_len(s: &str) -> io::Result<i64> {
    s.parse()
        .map_err(|_| protocol_error(format!("bad length in reply: {s:?}")))
}

/// Reads one whole RESP2 reply.
pub fn read_reply(reader: &mut impl BufRead) -> io::Result<Resp> {
    let line = read_line(reader)?;
    let (kind, rest) = line.split_at(line.chars().next().map_or(0, char::len_utf8));
    match kind {
        "+" => Ok(Resp::Simple(rest.to_owned())),
        "-" => Ok(Resp::Error(rest.to_owned())),
        ":" => Ok(Resp::Integer(parse_len(rest)?)),
        "$" => {
            let len = parse_len(rest)?;
            if len < 0 {
                return Ok(Resp::Bulk(None));
            }
            let len = usize::try_from(len).map_err(|e| protocol_error(e.to_string()))?;
            let mut data = vec![0; len + 2];
            reader.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(protocol_error("bulk string without CRLF".to_owned()));
            }
            data.truncate(len);
            Ok(Resp::Bulk(Some(data)))
        }
        "*" => {
            let len = parse_len(rest)?;
            if len < 0 {
                return Ok(Resp::Array(None));
            }
            let mut items = Vec::new();
            for _ in 0..len {
                items.push(read_reply(reader)?);
            }
            Ok(Resp::Array(Some(items)))
        }
        _ => Err(protocol_error(format!("unexpected reply line: {line:?}"))),
    }
}

/// Sends one command to 127.0.0.1:`port` on a fresh connection and reads its reply.
///
/// With a password, `AUTH <password>` goes first; if it fails, its error reply is returned.
/// Error replies are `Ok(Resp::Error(..))`; `Err` means the connection failed or timed out
/// (`timeout` applies to connecting and to each read and write).
pub fn resp_command(
    port: u16,
    password: Option<&str>,
    args: &[&str],
    timeout: Duration,
) -> io::Result<Resp> {
    resp_command_at(
        SocketAddr::from(([127, 0, 0, 1], port)),
        password,
        args,
        timeout,
    )
}

/// [`resp_command`] to any address (the topology test's pods have addresses of their own).
pub fn resp_command_at(
    addr: SocketAddr,
    password: Option<&str>,
    args: &[&str],
    timeout: Duration,
) -> io::Result<Resp> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    if let Some(password) = password {
        writer.write_all(&encode_command(&["AUTH", password]))?;
        let reply = read_reply(&mut reader)?;
        if reply.is_error() {
            return Ok(reply);
        }
    }
    writer.write_all(&encode_command(args))?;
    read_reply(&mut reader)
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child process that is SIGKILLed and reaped when dropped.
struct ChildProc {
    child: Mutex<Child>,
    pid: u32,
    what: String,
}

impl ChildProc {
    fn spawn(program: &str, args: &[OsString], dir: &Path, log: &Path, what: String) -> Self {
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open log file {}: {e}", log.display()));
        let log_err = log_file
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone log file handle: {e}"));
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {program} for {what}: {e} (Debian: apt-get install \
                     redis-server redis-sentinel redis-tools)"
                )
            });
        let pid = child.id();
        ChildProc {
            child: Mutex::new(child),
            pid,
            what,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn exit_status(&self) -> Option<ExitStatus> {
        self.lock().try_wait().ok().flatten()
    }

    fn is_alive(&self) -> bool {
        matches!(self.lock().try_wait(), Ok(None))
    }

    /// SIGKILL (works on a SIGSTOPped process too) and reap. No-op if it already exited.
    fn kill9(&self) {
        let mut child = self.lock();
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // `Child::kill` sends SIGKILL on Unix; the pid cannot have been reused because the
        // child has not been reaped yet.
        if let Err(e) = child.kill() {
            eprintln!(
                "[redis harness] SIGKILL of {} (pid {}) failed: {e}",
                self.what, self.pid
            );
        }
        if let Err(e) = child.wait() {
            eprintln!(
                "[redis harness] waiting for {} (pid {}) failed: {e}",
                self.what, self.pid
            );
        }
    }

    fn signal(&self, signal: &str) {
        assert!(
            self.is_alive(),
            "cannot send SIG{signal} to {} (pid {}): it has exited",
            self.what,
            self.pid
        );
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run `kill -{signal} {}`: {e}", self.pid));
        assert!(
            status.success(),
            "`kill -{signal} {}` failed: {status}",
            self.pid
        );
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The last lines of a log file, starting at byte `from` (also the PostgreSQL harness's).
pub(crate) fn log_tail_from(path: &Path, from: u64) -> String {
    let mut text = Vec::new();
    let read = File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(from))?;
        f.read_to_end(&mut text)
    });
    if let Err(e) = read {
        return format!("<cannot read {}: {e}>", path.display());
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join("\n")
}

enum Launch {
    Ready,
    AddressInUse,
}

/// Polls PING until PONG. `Err` if the process exited because its port was taken; panics on
/// any other early exit and on timeout.
fn wait_for_pong(
    child: &ChildProc,
    port: u16,
    password: Option<&str>,
    log: &Path,
    log_from: u64,
    timeout: Duration,
) -> Launch {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.exit_status() {
            let tail = log_tail_from(log, log_from);
            if tail.contains("Address already in use") {
                return Launch::AddressInUse;
            }
            panic!(
                "{} (pid {}) exited with {status} before answering PING on port {port}; log {}:\n{tail}",
                child.what,
                child.pid,
                log.display()
            );
        }
        let last = match resp_command(port, password, &["PING"], PROBE_TIMEOUT) {
            // The PONG may come from another process that holds the port while ours is
            // about to fail with "Address already in use": check the pid too.
            Ok(Resp::Simple(s)) if s == "PONG" => match answering_pid(port, password) {
                Ok(pid) if pid == child.pid => return Launch::Ready,
                Ok(pid) => format!("PONG from another process (pid {pid})"),
                Err(e) => format!("PONG, then INFO server: {e}"),
            },
            Ok(other) => format!("{other:?}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            panic!(
                "{} (pid {}) did not answer PING with PONG on port {port} within {timeout:?} \
                 (last answer: {last}); log {}:\n{}",
                child.what,
                child.pid,
                log.display(),
                log_tail_from(log, log_from)
            );
        }
        sleep(POLL_INTERVAL);
    }
}

/// The `process_id` in `INFO server` of whatever answers on `port`.
fn answering_pid(port: u16, password: Option<&str>) -> Result<u32, String> {
    let reply = resp_command(port, password, &["INFO", "server"], PROBE_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let info = parse_info(&reply.as_text().ok_or_else(|| format!("{reply:?}"))?);
    info.get("process_id")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no process_id in INFO server: {reply:?}"))
}

/// Runs `redis-cli` against 127.0.0.1:`port`, bounded by `timeout`. Returns trimmed stdout.
fn run_cli(
    port: u16,
    password: Option<&str>,
    args: &[&str],
    timeout: Duration,
) -> Result<String, String> {
    let out = tempfile::tempfile().map_err(|e| format!("temp file: {e}"))?;
    let err = tempfile::tempfile().map_err(|e| format!("temp file: {e}"))?;
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        cmd.args(["-a", password, "--no-auth-warning"]);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(err.try_clone().map_err(|e| e.to_string())?);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start redis-cli: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("redis-cli timed out after {timeout:?}"));
            }
            Ok(None) => sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for redis-cli: {e}")),
        }
    };
    let read_all = |mut f: File| -> String {
        let mut buf = Vec::new();
        let _ = f
            .seek(SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut buf));
        String::from_utf8_lossy(&buf).into_owned()
    };
    let stdout = read_all(out);
    let stderr = read_all(err);
    if !status.success() {
        return Err(format!(
            "redis-cli exited with {status}; stdout: {}; stderr: {}",
            stdout.trim(),
            stderr.trim()
        ));
    }
    Ok(stdout.trim().to_owned())
}

// ---------------------------------------------------------------------------------------------
// Nodes: what data nodes and sentinels share
// ---------------------------------------------------------------------------------------------

/// What a [`Node`] runs: `redis-server` ([`DataNode`]) or `redis-sentinel` ([`Sentinel`]).
pub trait Role {
    /// How messages name the process.
    const WHAT: &'static str;
    /// The password this process's clients authenticate with.
    fn password(&self) -> Option<&str>;
}

/// A `redis-server` or `redis-sentinel` process on 127.0.0.1, killed when dropped.
pub struct Node<R> {
    pub port: u16,
    pub dir: TempDir,
    child: ChildProc,
    log: PathBuf,
    role: R,
}

impl<R: Role> Node<R> {
    /// Runs `redis-cli -h 127.0.0.1 -p <port> [-a <pw> --no-auth-warning] args...` and returns
    /// its trimmed stdout. Panics if redis-cli fails (cannot connect, exits non-zero) or takes
    /// longer than [`COMMAND_TIMEOUT`]. Note: redis-cli exits 0 on error replies and prints
    /// them (e.g. `NOAUTH ...`); a nil reply prints as an empty string.
    pub fn cli(&self, args: &[&str]) -> String {
        run_cli(self.port, self.role.password(), args, COMMAND_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "redis-cli {args:?} against {} on port {} failed: {e}; log tail:\n{}",
                R::WHAT,
                self.port,
                self.log_tail()
            )
        })
    }

    /// One command over RESP (authenticated when the process has a password). Panics if the
    /// connection fails or times out; error replies are returned as [`Resp::Error`].
    pub fn command(&self, args: &[&str]) -> Resp {
        self.try_command(args, COMMAND_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "{args:?} against {} on port {} failed: {e}; log tail:\n{}",
                R::WHAT,
                self.port,
                self.log_tail()
            )
        })
    }

    /// Like [`Self::command`] but returns connection failures and timeouts.
    pub fn try_command(&self, args: &[&str], timeout: Duration) -> io::Result<Resp> {
        resp_command(self.port, self.role.password(), args, timeout)
    }

    /// SIGKILL and wait. No-op if the process already exited.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    /// SIGSTOP: the process keeps its port but answers nothing until [`Self::cont_signal`].
    pub fn stop_signal(&self) {
        self.child.signal("STOP");
    }

    pub fn cont_signal(&self) {
        self.child.signal("CONT");
    }

    /// The process has not exited (a SIGSTOPped process is alive).
    pub fn is_alive(&self) -> bool {
        self.child.is_alive()
    }

    /// The pid of the current process (a data node's changes on [`RedisServer::restart`]).
    pub fn pid(&self) -> u32 {
        self.child.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self) -> String {
        log_tail_from(&self.log, 0)
    }
}

impl<R> Drop for Node<R> {
    fn drop(&mut self) {
        // Before `dir` is removed.
        self.child.kill9();
    }
}

// ---------------------------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------------------------

/// Options of [`RedisServer::start`].
#[derive(Debug, Clone, Default)]
pub struct RedisOpts {
    /// Sets both `requirepass` and `masterauth`.
    pub password: Option<String>,
    /// `replicaof 127.0.0.1 <port>`.
    pub replica_of: Option<u16>,
    /// A fixed port; a free one when `None`.
    pub port: Option<u16>,
    /// Append-only file with `appendfsync always`: every write a client was answered is on
    /// disk, so [`RedisServer::relaunch`] after a kill brings it all back (a Sentinel-less
    /// production Redis with persistence). Off: nothing is written to disk.
    pub persist: bool,
}

/// A data node: a `redis-server` started with [`RedisOpts`].
pub struct DataNode {
    opts: RedisOpts,
}

impl Role for DataNode {
    const WHAT: &'static str = "redis-server";

    fn password(&self) -> Option<&str> {
        self.opts.password.as_deref()
    }
}

/// A `redis-server` process on 127.0.0.1, killed when dropped.
pub type RedisServer = Node<DataNode>;

impl Node<DataNode> {
    /// Starts `redis-server` on a free port (or `opts.port`) without persistence and waits
    /// until it answers PING with PONG.
    pub fn start(opts: RedisOpts) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("chat-redis-")
            .tempdir()
            .expect("create a temp dir for redis-server");
        let log = dir.path().join("redis.log");
        let (port, child) = launch_redis(dir.path(), &log, opts.port, &opts);
        RedisServer {
            port,
            dir,
            child,
            log,
            role: DataNode { opts },
        }
    }

    /// `redis://127.0.0.1:<port>` (the password is not part of it: see [`Self::password`]).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn password(&self) -> Option<&str> {
        self.role.password()
    }

    pub fn opts(&self) -> &RedisOpts {
        &self.role.opts
    }

    /// `INFO <section>` as a field map (`role`, `master_link_status`, ...).
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        let text = self
            .command(&["INFO", section])
            .as_text()
            .unwrap_or_else(|| panic!("INFO {section} on port {} gave no text", self.port));
        parse_info(&text)
    }

    /// Kills the process (if running) and starts it again on the same port with the same
    /// options and directory; the data is gone (any RDB file a replica wrote is removed).
    /// Waits until it answers PING.
    pub fn restart(&mut self) {
        self.child.kill9();
        remove_rdb_files(self.dir.path());
        let (port, child) =
            launch_redis(self.dir.path(), &self.log, Some(self.port), &self.role.opts);
        debug_assert_eq!(port, self.port);
        self.child = child;
    }

    /// Starts the process again (after [`Self::kill9`]) on the same port with the same
    /// options, keeping what it wrote to disk: with [`RedisOpts::persist`] the data comes
    /// back. Waits until it answers PING (which Redis gives only once the data is loaded).
    pub fn relaunch(&mut self) {
        self.child.kill9();
        let (port, child) =
            launch_redis(self.dir.path(), &self.log, Some(self.port), &self.role.opts);
        debug_assert_eq!(port, self.port);
        self.child = child;
    }
}

fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn remove_rdb_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "rdb") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn redis_args(port: u16, dir: &Path, opts: &RedisOpts) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--appendonly",
        if opts.persist { "yes" } else { "no" },
        "--daemonize",
        "no",
        "--logfile",
        "",
        // Redis 7.0 defaults to waiting 5 s for more replicas before a diskless full sync.
        "--repl-diskless-sync-delay",
        "0",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push("--dir".into());
    args.push(dir.as_os_str().to_owned());
    if let Some(password) = &opts.password {
        args.extend(["--requirepass", password, "--masterauth", password].map(OsString::from));
    }
    if let Some(master) = opts.replica_of {
        args.extend(["--replicaof", "127.0.0.1", &master.to_string()].map(OsString::from));
    }
    if opts.persist {
        args.extend(["--appendfsync", "always"].map(OsString::from));
    }
    args
}

fn launch_redis(
    dir: &Path,
    log: &Path,
    fixed_port: Option<u16>,
    opts: &RedisOpts,
) -> (u16, ChildProc) {
    for _ in 0..PORT_ATTEMPTS {
        let port = fixed_port.unwrap_or_else(free_port);
        let from = log_len(log);
        let what = format!("redis-server on port {port}");
        let child = ChildProc::spawn("redis-server", &redis_args(port, dir, opts), dir, log, what);
        match wait_for_pong(
            &child,
            port,
            opts.password.as_deref(),
            log,
            from,
            START_TIMEOUT,
        ) {
            Launch::Ready => return (port, child),
            Launch::AddressInUse if fixed_port.is_none() => continue,
            Launch::AddressInUse => panic!(
                "redis-server cannot bind its fixed port {port} (address in use); log:\n{}",
                log_tail_from(log, from)
            ),
        }
    }
    panic!("redis-server found no free port after {PORT_ATTEMPTS} attempts");
}

// ---------------------------------------------------------------------------------------------
// redis-sentinel
// ---------------------------------------------------------------------------------------------

/// A sentinel: a `redis-sentinel` with its own config file. It has no password itself.
pub struct Sentinel {
    conf: PathBuf,
}

impl Role for Sentinel {
    const WHAT: &'static str = "sentinel";

    fn password(&self) -> Option<&str> {
        None
    }
}

/// A `redis-sentinel` process on 127.0.0.1 monitoring [`MASTER_NAME`], killed when dropped.
pub type SentinelProc = Node<Sentinel>;

/// Quotes a value for a redis config file.
fn conf_quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Node<Sentinel> {
    /// Starts a sentinel on a free port monitoring `127.0.0.1:<master_port>` as
    /// [`MASTER_NAME`] (down-after-milliseconds 1000, failover-timeout 3000, parallel-syncs 1)
    /// and waits until it answers PING. It gets a fresh config file in its own temp dir.
    pub fn start(master_port: u16, quorum: u32, password: Option<&str>) -> SentinelProc {
        let dir = tempfile::Builder::new()
            .prefix("chat-sentinel-")
            .tempdir()
            .expect("create a temp dir for redis-sentinel");
        let log = dir.path().join("sentinel.log");
        let conf = dir.path().join("sentinel.conf");
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut text = format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 daemonize no\n\
                 logfile \"\"\n\
                 dir {dir}\n\
                 sentinel resolve-hostnames no\n\
                 sentinel announce-hostnames no\n\
                 sentinel announce-ip 127.0.0.1\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {quorum}\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 3000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = conf_quote(&dir.path().to_string_lossy()),
            );
            if let Some(password) = password {
                text.push_str(&format!(
                    "sentinel auth-pass {MASTER_NAME} {}\n",
                    conf_quote(password)
                ));
            }
            std::fs::write(&conf, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
            let from = log_len(&log);
            let what = format!("redis-sentinel on port {port}");
            let child = ChildProc::spawn(
                "redis-sentinel",
                &[conf.as_os_str().to_owned()],
                dir.path(),
                &log,
                what,
            );
            match wait_for_pong(&child, port, None, &log, from, START_TIMEOUT) {
                Launch::Ready => {
                    return SentinelProc {
                        port,
                        dir,
                        child,
                        log,
                        role: Sentinel { conf },
                    };
                }
                Launch::AddressInUse => continue,
            }
        }
        panic!("redis-sentinel found no free port after {PORT_ATTEMPTS} attempts");
    }

    /// `SENTINEL get-master-addr-by-name mymaster` → the master's port.
    pub fn try_master_port(&self, timeout: Duration) -> Result<u16, String> {
        let reply = self
            .try_command(
                &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
                timeout,
            )
            .map_err(|e| e.to_string())?;
        let addr = reply
            .as_array()
            .map(|a| a.iter().map(Resp::as_text).collect::<Vec<_>>());
        match addr.as_deref() {
            Some([Some(ip), Some(port)]) if ip == "127.0.0.1" => {
                port.parse().map_err(|_| format!("bad port in {reply:?}"))
            }
            _ => Err(format!("unexpected reply {reply:?}")),
        }
    }

    /// `SENTINEL <what> mymaster` (`REPLICAS`, `SENTINELS`) as one field map per instance.
    pub fn instances(&self, what: &str) -> Result<Vec<HashMap<String, String>>, String> {
        let reply = self
            .try_command(&["SENTINEL", what, MASTER_NAME], PROBE_TIMEOUT)
            .map_err(|e| e.to_string())?;
        reply
            .as_array()
            .and_then(|items| items.iter().map(Resp::as_field_map).collect())
            .ok_or_else(|| format!("unexpected reply to SENTINEL {what}: {reply:?}"))
    }

    /// The config file the sentinel runs with (and rewrites).
    pub fn conf_path(&self) -> &Path {
        &self.role.conf
    }
}

// ---------------------------------------------------------------------------------------------
// Sentinel setup
// ---------------------------------------------------------------------------------------------

/// One master, its replicas and the sentinels monitoring them as [`MASTER_NAME`].
///
/// `master` and `replicas` keep the processes they were started as: after a failover the
/// process in `master` is no longer the master; use [`Self::current_master_port`] and
/// [`Self::data_node_mut`].
pub struct SentinelCluster {
    pub master: RedisServer,
    pub replicas: Vec<RedisServer>,
    pub sentinels: Vec<SentinelProc>,
}

fn flags_ok(instance: &HashMap<String, String>, role: &str) -> Result<(), String> {
    let flags = instance.get("flags").map_or("", String::as_str);
    let set: Vec<&str> = flags.split(',').collect();
    if !set.contains(&role)
        || set
            .iter()
            .any(|f| matches!(*f, "s_down" | "o_down" | "disconnected"))
    {
        return Err(format!("flags {flags:?}"));
    }
    Ok(())
}

impl SentinelCluster {
    /// Starts a master, `replicas` replicas and `sentinels` sentinels (quorum 2, or 1 with a
    /// single sentinel) and waits until every replica's link is up and every sentinel reports
    /// the master, all replicas (flag `slave`, not down, link ok) and all other sentinels.
    pub fn start(replicas: usize, sentinels: usize, password: Option<&str>) -> SentinelCluster {
        assert!(
            sentinels > 0,
            "a Sentinel setup needs at least one sentinel"
        );
        let opts = RedisOpts {
            password: password.map(str::to_owned),
            ..RedisOpts::default()
        };
        let master = RedisServer::start(opts.clone());
        let replica_opts = RedisOpts {
            replica_of: Some(master.port),
            ..opts
        };
        let replicas = (0..replicas)
            .map(|_| RedisServer::start(replica_opts.clone()))
            .collect();
        let mut cluster = SentinelCluster {
            master,
            replicas,
            sentinels: Vec::new(),
        };
        // Replicas linked before the sentinels start: the sentinels' first INFO shows them.
        cluster.wait_until("every replica's master_link_status is up", |c| {
            c.replica_problems()
        });
        let quorum = if sentinels >= 2 { 2 } else { 1 };
        for _ in 0..sentinels {
            let sentinel = SentinelProc::start(cluster.master.port, quorum, password);
            cluster.sentinels.push(sentinel);
        }
        cluster.wait_until(
            "every sentinel sees the master, the replicas and the others",
            |c| {
                let mut problems = c.replica_problems();
                problems.extend(c.sentinel_problems());
                problems
            },
        );
        cluster
    }

    /// The log tail of every sentinel, each under a heading, for a panic message.
    fn sentinel_logs(&self) -> String {
        let mut logs = String::new();
        for s in &self.sentinels {
            logs.push_str(&format!(
                "\n--- sentinel {} log tail:\n{}",
                s.port,
                s.log_tail()
            ));
        }
        logs
    }

    fn wait_until(&self, what: &str, problems: impl Fn(&Self) -> Vec<String>) {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        loop {
            let found = problems(self);
            if found.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let mut logs = self.sentinel_logs();
                for r in self.data_nodes() {
                    logs.push_str(&format!(
                        "\n--- redis {} log tail:\n{}",
                        r.port,
                        r.log_tail()
                    ));
                }
                panic!(
                    "Sentinel setup: not ready after {CLUSTER_READY_TIMEOUT:?} ({what}):\n  {}{logs}",
                    found.join("\n  ")
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn replica_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for replica in &self.replicas {
            match replica.try_command(&["INFO", "replication"], PROBE_TIMEOUT) {
                Ok(reply) => {
                    let info = parse_info(&reply.as_text().unwrap_or_default());
                    let link = info.get("master_link_status").map_or("?", String::as_str);
                    if link != "up" {
                        problems.push(format!(
                            "replica {}: master_link_status {link}",
                            replica.port
                        ));
                    }
                }
                Err(e) => problems.push(format!("replica {}: {e}", replica.port)),
            }
        }
        problems
    }

    fn sentinel_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for s in &self.sentinels {
            let name = format!("sentinel {}", s.port);
            match s.try_master_port(PROBE_TIMEOUT) {
                Ok(p) if p == self.master.port => {}
                Ok(p) => problems.push(format!("{name}: master is {p}, not {}", self.master.port)),
                Err(e) => problems.push(format!("{name}: get-master-addr-by-name: {e}")),
            }
            match s.instances("REPLICAS") {
                Ok(found) => {
                    for replica in &self.replicas {
                        let port = replica.port.to_string();
                        let Some(entry) = found.iter().find(|r| r.get("port") == Some(&port))
                        else {
                            problems.push(format!("{name}: does not list replica {port} yet"));
                            continue;
                        };
                        if let Err(e) = flags_ok(entry, "slave") {
                            problems.push(format!("{name}: replica {port}: {e}"));
                        }
                        let link = entry.get("master-link-status").map_or("?", String::as_str);
                        if link != "ok" {
                            problems
                                .push(format!("{name}: replica {port}: master-link-status {link}"));
                        }
                    }
                    if found.len() != self.replicas.len() {
                        problems.push(format!(
                            "{name}: lists {} replicas, expected {}",
                            found.len(),
                            self.replicas.len()
                        ));
                    }
                }
                Err(e) => problems.push(format!("{name}: SENTINEL REPLICAS: {e}")),
            }
            match s.instances("SENTINELS") {
                Ok(found) => {
                    let healthy = found
                        .iter()
                        .filter(|i| flags_ok(i, "sentinel").is_ok())
                        .count();
                    if healthy != self.sentinels.len() - 1 {
                        problems.push(format!(
                            "{name}: sees {healthy} healthy other sentinels, expected {}",
                            self.sentinels.len() - 1
                        ));
                    }
                }
                Err(e) => problems.push(format!("{name}: SENTINEL SENTINELS: {e}")),
            }
        }
        problems
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,...` of all sentinels.
    pub fn sentinel_addrs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Master and replicas, in that order.
    pub fn data_nodes(&self) -> impl Iterator<Item = &RedisServer> {
        std::iter::once(&self.master).chain(self.replicas.iter())
    }

    /// The master port according to the first live sentinel that answers.
    pub fn current_master_port(&self) -> u16 {
        let mut errors = Vec::new();
        for s in self.sentinels.iter().filter(|s| s.is_alive()) {
            match s.try_master_port(PROBE_TIMEOUT) {
                Ok(port) => return port,
                Err(e) => errors.push(format!("sentinel {}: {e}", s.port)),
            }
        }
        panic!("no live sentinel told the master address: {errors:?}");
    }

    /// Polls the live sentinels until every one that answers names the same master and that
    /// master is not `old_port`; returns its port. Panics after `timeout`.
    pub fn wait_for_new_master(&self, old_port: u16, timeout: Duration) -> u16 {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut first_switch: Option<Duration> = None;
        loop {
            let answers: Vec<(u16, Result<u16, String>)> = self
                .sentinels
                .iter()
                .filter(|s| s.is_alive())
                .map(|s| (s.port, s.try_master_port(Duration::from_secs(1))))
                .collect();
            let ports: Vec<u16> = answers.iter().filter_map(|(_, r)| r.clone().ok()).collect();
            if first_switch.is_none() && ports.iter().any(|p| *p != old_port) {
                first_switch = Some(start.elapsed());
            }
            if let Some(&new) = ports.first()
                && new != old_port
                && ports.iter().all(|p| *p == new)
            {
                eprintln!(
                    "[redis harness] master {old_port} -> {new}: first sentinel switched after \
                     {:?}, all {} answering sentinels agreed after {:?}",
                    first_switch.unwrap_or_default(),
                    ports.len(),
                    start.elapsed()
                );
                return new;
            }
            if Instant::now() >= deadline {
                let logs = self.sentinel_logs();
                panic!(
                    "sentinels did not agree on a master other than {old_port} within {timeout:?}; \
                     answers (sentinel port, master port): {answers:?}{logs}"
                );
            }
            sleep(POLL_INTERVAL);
        }
    }

    /// The master or replica process listening on `port`.
    pub fn data_node_mut(&mut self, port: u16) -> &mut RedisServer {
        if self.master.port == port {
            return &mut self.master;
        }
        let known: Vec<u16> = self.data_nodes().map(|n| n.port).collect();
        self.replicas
            .iter_mut()
            .find(|r| r.port == port)
            .unwrap_or_else(|| panic!("no data node on port {port}; data nodes: {known:?}"))
    }
}

impl Drop for SentinelCluster {
    fn drop(&mut self) {
        // Sentinels first, so they do not react to the data nodes going away.
        for s in &mut self.sentinels {
            s.kill9();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Watching a sentinel's events
// ---------------------------------------------------------------------------------------------

/// The `+switch-master` messages one sentinel published, each with when it arrived, read by a
/// thread of its own (a SUBSCRIBE connection) until this is dropped.
pub struct SwitchWatch {
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SwitchWatch {
    /// Subscribes to `+switch-master` on the sentinel at 127.0.0.1:`port`; returns once the
    /// subscription is confirmed.
    pub fn start(port: u16) -> SwitchWatch {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to sentinel {port}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set a read timeout");
        let mut writer = stream.try_clone().expect("clone the sentinel stream");
        writer
            .write_all(&encode_command(&["SUBSCRIBE", "+switch-master"]))
            .expect("send SUBSCRIBE");
        let mut reader = BufReader::new(stream);
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            match read_reply(&mut reader) {
                Ok(_) => break,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    assert!(
                        Instant::now() < deadline,
                        "sentinel {port}: no SUBSCRIBE reply"
                    );
                }
                Err(e) => panic!("sentinel {port}: SUBSCRIBE failed: {e}"),
            }
        }
        let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // A read timeout mid-reply would desynchronise the stream; the messages
                    // are small and arrive whole, so a timeout only ever hits between them.
                    match read_reply(&mut reader) {
                        Ok(reply) => {
                            let items = reply.as_array().map(<[Resp]>::to_vec).unwrap_or_default();
                            if let [kind, _, payload] = items.as_slice()
                                && kind.as_text().as_deref() == Some("message")
                            {
                                let text = payload.as_text().unwrap_or_default();
                                seen.lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .push((Instant::now(), text));
                            }
                        }
                        Err(e)
                            if e.kind() == io::ErrorKind::WouldBlock
                                || e.kind() == io::ErrorKind::TimedOut => {}
                        Err(_) => return,
                    }
                }
            })
        };
        SwitchWatch {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The first `+switch-master` seen (when, and its `<name> <old-ip> <old-port> <new-ip>
    /// <new-port>`), waiting up to `timeout` for it.
    pub fn first(&self, timeout: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(first) = self
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .first()
            {
                return Some(first.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for SwitchWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Node<Sentinel> {
    /// Makes this sentinel monitor 127.0.0.1:`port` as [`MASTER_NAME`] from now on (`SENTINEL
    /// REMOVE` + `MONITOR` + the harness's timings and auth-pass): how a sentinel set that
    /// names a replica as master is made, and how it is healed by hand.
    pub fn remonitor(&self, port: u16, quorum: u32, password: Option<&str>) {
        let port = port.to_string();
        let quorum = quorum.to_string();
        let _ = self.command(&["SENTINEL", "REMOVE", MASTER_NAME]);
        let mut commands: Vec<Vec<&str>> = vec![
            vec![
                "SENTINEL",
                "MONITOR",
                MASTER_NAME,
                "127.0.0.1",
                &port,
                &quorum,
            ],
            vec![
                "SENTINEL",
                "SET",
                MASTER_NAME,
                "down-after-milliseconds",
                "1000",
            ],
            vec!["SENTINEL", "SET", MASTER_NAME, "failover-timeout", "3000"],
        ];
        if let Some(pw) = password {
            commands.push(vec!["SENTINEL", "SET", MASTER_NAME, "auth-pass", pw]);
        }
        for c in commands {
            let reply = self.command(&c);
            assert!(
                !reply.is_error(),
                "sentinel {}: {c:?} -> {reply:?}",
                self.port
            );
        }
    }
}
