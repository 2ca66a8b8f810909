//! Topology chaos harness: the Redis data nodes and sentinels exactly as the operator renders
//! them, run as real processes in "pods" on this machine, with chat-server instances on top.
//!
//! - The scripts come from the rendered ConfigMap, the command, environment, mounts, preStop
//!   hook and grace period from the rendered StatefulSets' containers, the password from the
//!   rendered Secret and the servers' Redis settings from the rendered Deployment; the harness
//!   only fills in what the kubelet would (`POD_NAME`, `NAMESPACE`, `status.podIP`).
//! - A pod is a holder process (`unshare --net --mount`, like Kubernetes' pause container) with
//!   a veth into a per-cluster bridge, and its container entered into those namespaces with
//!   `nsenter`, in a process group of its own. Addresses are `127.0.X.10+` on bridge
//!   `127.0.X.1/24` (`route_localnet`), so no packet leaves the machine and the rendered
//!   `bind * -::*` and ports work unchanged in every pod.
//! - Every pod and server sees one hosts file (bind-mounted over `/etc/hosts`) naming each pod
//!   `POD.HEADLESS.NAMESPACE.svc`; it is rewritten in place (a bind mount pins the inode).
//! - A pod's volumes are directories bind-mounted over their mount paths; they outlive the pod
//!   (persistence off included: wiping `/data` is the scripts' business), as does its IP.
//! - Everything started here is SIGKILLed and the network devices deleted when the
//!   [`Cluster`] drops, panics included; leftovers of a dead run are deleted at the next start.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize as _;
use serde_json::Value;
use tempfile::TempDir;

use crate::process::ServerProcess;
use crate::redis::{Resp, encode_command, read_reply, resp_command_at};

/// Data node and sentinel ports, as rendered.
pub const REDIS_PORT: u16 = 6379;
pub const SENTINEL_PORT: u16 = 26379;
/// `PATH` of the containers (the Redis image's; the environment the operator renders has none).
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Timeout of one probe command to a node.
const PROBE: Duration = Duration::from_millis(800);
/// How long an init container may run.
const INIT_WITHIN: Duration = Duration::from_secs(120);
/// Prefix of every network device this harness creates.
const DEVICE_PREFIX: &str = "chx";

/// Why the harness cannot run on this machine (the test then skips), or `None`.
pub fn unsupported() -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?");
    if uid != "0" {
        return Some(format!(
            "needs root for network and mount namespaces (uid {uid})"
        ));
    }
    for tool in [
        "unshare",
        "nsenter",
        "ip",
        "mount",
        "redis-server",
        "redis-cli",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not on the PATH"));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// What the operator rendered
// ---------------------------------------------------------------------------------------------

/// One rendered StatefulSet, as far as running its pods needs it.
#[derive(Clone, Debug)]
pub struct PodTemplate {
    /// StatefulSet name: pods are `SET-0`, `SET-1`, ...
    pub set: String,
    /// Its headless Service (`serviceName`): pods are `POD.HEADLESS.NAMESPACE.svc`.
    pub headless: String,
    pub replicas: usize,
    pub command: Vec<String>,
    /// The container's `env` entries, unresolved.
    pub env: Vec<Value>,
    /// Init containers, in order: `(command and args, env entries)`.
    pub init: Vec<(Vec<String>, Vec<Value>)>,
    /// `lifecycle.preStop.exec.command`, if any.
    pub pre_stop: Option<Vec<String>>,
    pub grace: Duration,
    /// `(volume name, mount path)` of each mount of any of its containers (they share the
    /// pod's one mount namespace here, so a path means the same volume in all of them).
    pub mounts: Vec<(String, String)>,
    /// Volumes that are the ConfigMap (filled with its files).
    pub config_volumes: Vec<String>,
    /// `updateStrategy.type` is `OnDelete` (the operator picks the roll order).
    pub on_delete: bool,
}

/// The objects of one rendered ChatCluster the harness runs.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub namespace: String,
    /// The ConfigMap's files (`redis.conf`, the scripts).
    pub files: BTreeMap<String, String>,
    pub password: String,
    secret_name: String,
    pub data: PodTemplate,
    pub sentinels: PodTemplate,
    /// The server container's env entries, unresolved.
    server_env: Vec<Value>,
    /// `redis.conf` says `appendonly yes`.
    pub persistence: bool,
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(text).collect())
        .unwrap_or_default()
}

impl Rendered {
    /// Reads the YAML stream `chat-operator render` prints (one Sentinel-mode ChatCluster).
    pub fn from_yaml(yaml: &str) -> Result<Rendered, String> {
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            docs.push(Value::deserialize(doc).map_err(|e| format!("rendered YAML: {e}"))?);
        }
        let find = |kind: &str, pick: &dyn Fn(&Value) -> bool| {
            docs.iter()
                .find(|d| d["kind"] == kind && pick(d))
                .cloned()
                .ok_or_else(|| format!("no {kind} in the rendered objects"))
        };
        let config_map = find("ConfigMap", &|_| true)?;
        let files: BTreeMap<String, String> =
            serde_json::from_value(config_map["data"].clone()).map_err(|e| e.to_string())?;
        let secret = find("Secret", &|_| true)?;
        let secret_name = text(&secret["metadata"]["name"]).unwrap_or_default();
        let password = match (secret["data"]["password"].as_str(), &secret["stringData"]) {
            (Some(b64), _) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| format!("Secret data: {e}"))?;
                String::from_utf8(bytes).map_err(|e| e.to_string())?
            }
            (None, s) => text(&s["password"]).ok_or("the Secret has no password")?,
        };
        let component =
            |d: &Value, c: &str| d["metadata"]["labels"]["app.kubernetes.io/component"] == c;
        let data = template(&find("StatefulSet", &|d| component(d, "redis"))?)?;
        let sentinels = template(&find("StatefulSet", &|d| component(d, "sentinel"))?)?;
        let deployment = find("Deployment", &|_| true)?;
        let server_env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let namespace = text(&config_map["metadata"]["namespace"]).unwrap_or_default();
        let persistence = files
            .get("redis.conf")
            .is_some_and(|c| c.lines().any(|l| l.trim() == "appendonly yes"));
        Ok(Rendered {
            namespace,
            files,
            password,
            secret_name,
            data,
            sentinels,
            server_env,
            persistence,
        })
    }

    /// `env` with the values the kubelet fills in: the downward API and the Secret.
    fn resolve(&self, env: &[Value], pod: &str, ip: Ipv4Addr) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for e in env {
            let name = text(&e["name"]).unwrap_or_default();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.name" => pod.to_owned(),
                    "metadata.namespace" => self.namespace.clone(),
                    "status.podIP" => ip.to_string(),
                    // Every pod on a node of its own, as required anti-affinity would have it.
                    "spec.nodeName" => format!("node-{pod}"),
                    other => panic!("env {name}: downward-API field {other} is not simulated"),
                }
            } else if let Some(secret) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                assert_eq!(
                    secret, self.secret_name,
                    "env {name}: only the rendered password Secret is simulated"
                );
                self.password.clone()
            } else {
                panic!("env {name}: {e} is not simulated");
            };
            out.push((name, value));
        }
        out
    }

    /// The env the operator renders for a server that matters on this machine: where Redis and
    /// the sentinels are, the password, the replica acks and the key prefix.
    pub fn server_env(&self, pod: &str) -> Vec<(String, String)> {
        self.resolve(&self.server_env, pod, Ipv4Addr::LOCALHOST)
            .into_iter()
            .filter(|(k, _)| k.starts_with("CHAT_REDIS_") || k == "CHAT_KEY_PREFIX")
            .collect()
    }
}

fn template(sts: &Value) -> Result<PodTemplate, String> {
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    let name = text(&sts["metadata"]["name"]).ok_or("a StatefulSet without a name")?;
    let containers: Vec<&Value> = pod["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(container))
        .collect();
    let mut mounts: Vec<(String, String)> = Vec::new();
    for c in &containers {
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if let (Some(v), Some(path)) = (text(&m["name"]), text(&m["mountPath"]))
                && !mounts.iter().any(|(_, p)| *p == path)
            {
                mounts.push((v, path));
            }
        }
    }
    let argv = |c: &Value| -> Vec<String> {
        strings(&c["command"])
            .into_iter()
            .chain(strings(&c["args"]))
            .collect()
    };
    let init = containers[..containers.len() - 1]
        .iter()
        .map(|c| (argv(c), c["env"].as_array().cloned().unwrap_or_default()))
        .collect();
    let config_volumes = pod["volumes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|v| v.get("configMap").is_some())
                .filter_map(|v| text(&v["name"]))
                .collect()
        })
        .unwrap_or_default();
    let pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .map(|_| strings(&container["lifecycle"]["preStop"]["exec"]["command"]));
    Ok(PodTemplate {
        headless: text(&spec["serviceName"]).ok_or("a StatefulSet without serviceName")?,
        replicas: usize::try_from(spec["replicas"].as_i64().unwrap_or(1)).unwrap_or(1),
        command: argv(container),
        env: container["env"].as_array().cloned().unwrap_or_default(),
        init,
        pre_stop,
        grace: Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30)),
        mounts,
        config_volumes,
        on_delete: spec["updateStrategy"]["type"] == "OnDelete",
        set: name,
    })
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// Runs `program args`, panicking with its stderr when it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `program args`, ignoring failure (cleanup of what may already be gone).
fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGKILLs process group `pgid` and reaps `child` (its leader).
fn kill_group(child: &mut Child) {
    run_quiet("kill", &["-KILL", "--", &format!("-{}", child.id())]);
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `argv` with `env` (and the image's `PATH`) inside the namespaces of holder `pid`, in a
/// process group of its own, its output appended to `log` after `banner`.
fn spawn_in(
    pid: u32,
    argv: &[String],
    env: Vec<(String, String)>,
    log: &Path,
    banner: &str,
) -> io::Result<Child> {
    let mut out = OpenOptions::new().create(true).append(true).open(log)?;
    writeln!(out, "{banner}")?;
    let err = out.try_clone()?;
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "-m", "--"])
        .args(argv)
        .env_clear()
        .env("PATH", CONTAINER_PATH)
        .envs(env)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
}

/// Waits for `child` at most `within`; its status, `None` (and it killed) when it ran over.
fn wait_bounded(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_group(child);
    None
}

fn ns_link(pid: u32, ns: &str) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()
}

// ---------------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------------

static NETWORKS: AtomicU32 = AtomicU32::new(0);

/// The per-cluster bridge `127.0.X.1/24` and the names of the devices on it.
struct Net {
    bridge: String,
    prefix: String,
    subnet: u8,
    devices: AtomicU32,
}

impl Net {
    fn create() -> Net {
        delete_leftovers();
        let pid = std::process::id();
        let n = NETWORKS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{DEVICE_PREFIX}{:05}{n:x}", pid % 100_000);
        // A subnet of 127/8 other than 127.0.0.x, varied so two runs rarely meet.
        let subnet = u8::try_from(100 + (pid + n * 37) % 150).unwrap_or(200);
        let bridge = format!("{prefix}b");
        run_quiet("ip", &["link", "del", &bridge]);
        run("sysctl", &["-qw", "net.ipv4.conf.all.route_localnet=1"]);
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        let net = Net {
            bridge,
            prefix,
            subnet,
            devices: AtomicU32::new(0),
        };
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("127.0.{subnet}.1/24"),
                "dev",
                &net.bridge,
            ],
        );
        run("ip", &["link", "set", &net.bridge, "up"]);
        run(
            "sysctl",
            &[
                "-qw",
                &format!("net.ipv4.conf.{}.route_localnet=1", net.bridge),
            ],
        );
        net
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.subnet, host)
    }

    /// A fresh veth pair, its host end on the bridge: `(host end, pod end)`.
    fn veth(&self) -> (String, String) {
        let n = self.devices.fetch_add(1, Ordering::Relaxed);
        let host = format!("{}h{n:x}", self.prefix);
        let pod = format!("{}p{n:x}", self.prefix);
        run(
            "ip",
            &["link", "add", &host, "type", "veth", "peer", "name", &pod],
        );
        run("ip", &["link", "set", &host, "master", &self.bridge, "up"]);
        (host, pod)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        run_quiet("ip", &["link", "del", &self.bridge]);
    }
}

/// Deletes devices of this harness whose process is gone (a run that was killed).
fn delete_leftovers() {
    let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() else {
        return;
    };
    let me = std::process::id() % 100_000;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        let Some(digits) = name.strip_prefix(DEVICE_PREFIX).and_then(|r| r.get(..5)) else {
            continue;
        };
        let Ok(pid) = digits.parse::<u32>() else {
            continue;
        };
        if pid != me && !Path::new(&format!("/proc/{pid}")).exists() {
            run_quiet("ip", &["link", "del", name]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------------------------

/// Data node or sentinel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Data,
    Sentinel,
}

/// One pod: its identity, address, volumes and (while it runs) its processes.
pub struct Pod {
    pub kind: Kind,
    pub ordinal: usize,
    pub name: String,
    pub fqdn: String,
    pub ip: Ipv4Addr,
    dir: PathBuf,
    holder: Option<Child>,
    container: Option<Child>,
    /// The root-namespace end of its veth while it runs.
    veth: Option<String>,
    /// Times its container exited and was started again in the same pod (kubelet style).
    pub restarts: u32,
    /// When an exited container is due to start again (the kubelet's back-off).
    restart_at: Option<Instant>,
}

impl Pod {
    pub fn port(&self) -> u16 {
        match self.kind {
            Kind::Data => REDIS_PORT,
            Kind::Sentinel => SENTINEL_PORT,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, self.port()))
    }

    pub fn is_running(&self) -> bool {
        self.holder.is_some()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pod.log")
    }

    /// The last lines of the pod's log (every start of it), for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn kill(&mut self) {
        self.restart_at = None;
        if let Some(mut c) = self.container.take() {
            kill_group(&mut c);
        }
        if let Some(mut h) = self.holder.take() {
            kill_group(&mut h);
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A role as `ROLE` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Master,
    /// A replica of `master` (a host as configured), its link `state` (`connected` when linked).
    Replica {
        master: String,
        state: String,
    },
    /// Down, or an answer that is not a role.
    Unknown,
}

/// The 3 + 3 pods, the servers on top, and everything needed to fault them.
pub struct Cluster {
    pub rendered: Rendered,
    pub data: Vec<Pod>,
    pub sentinels: Vec<Pod>,
    pub servers: Vec<ServerProcess>,
    hosts: PathBuf,
    next_host: u8,
    // Dropped last: the pods (in the fields above) must be gone before their bridge and
    // before the mount points they bound volumes over.
    net: Net,
    dir: TempDir,
    _mount_points: MountPointLease,
}

/// The empty mount points (`/config`, `/data`, `/run/redis`, ...) this process created in the
/// machine's root file system for the pods' volumes, and how many clusters use them: the last
/// cluster to go removes them again, so a run leaves the machine's root as it found it.
/// (A pod's bind mounts live in its own mount namespace, but their targets must exist.)
struct MountPoints {
    users: usize,
    created: Vec<PathBuf>,
}

static MOUNT_POINTS: Mutex<MountPoints> = Mutex::new(MountPoints {
    users: 0,
    created: Vec::new(),
});

/// One cluster's use of [`MOUNT_POINTS`].
struct MountPointLease;

impl MountPointLease {
    fn take() -> MountPointLease {
        MOUNT_POINTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .users += 1;
        MountPointLease
    }

    /// Creates `path` (and missing parents) unless it exists, remembering what it created.
    fn ensure(&self, path: &Path) {
        let mut m = MOUNT_POINTS.lock().unwrap_or_else(PoisonError::into_inner);
        let mut missing: Vec<&Path> = path.ancestors().take_while(|p| !p.exists()).collect();
        fs::create_dir_all(path).expect("a mount point");
        // Parents after children in `created`: removal runs in that order.
        m.created.extend(missing.drain(..).map(Path::to_path_buf));
    }
}

impl Drop for MountPointLease {
    fn drop(&mut self) {
        let mut m = MOUNT_POINTS.lock().unwrap_or_else(PoisonError::into_inner);
        m.users = m.users.saturating_sub(1);
        if m.users == 0 {
            // Only empty directories go (remove_dir refuses others).
            for p in m.created.drain(..) {
                let _ = fs::remove_dir(&p);
            }
        }
    }
}

impl Cluster {
    /// Creates the network and the pods' volumes and starts every pod at once (the rendered
    /// StatefulSets use `Parallel` pod management).
    pub fn start(rendered: Rendered) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("topology-")
            .tempdir()
            .expect("a temporary directory");
        let net = Net::create();
        let hosts = dir.path().join("hosts");
        let mut cluster = Cluster {
            data: Vec::new(),
            sentinels: Vec::new(),
            servers: Vec::new(),
            hosts,
            next_host: 10,
            net,
            dir,
            rendered,
            _mount_points: MountPointLease::take(),
        };
        for (kind, t) in [
            (Kind::Data, cluster.rendered.data.clone()),
            (Kind::Sentinel, cluster.rendered.sentinels.clone()),
        ] {
            for ordinal in 0..t.replicas {
                let name = format!("{}-{ordinal}", t.set);
                let pod = Pod {
                    kind,
                    ordinal,
                    fqdn: format!("{name}.{}.{}.svc", t.headless, cluster.rendered.namespace),
                    ip: cluster.fresh_ip(),
                    dir: cluster.dir.path().join(&name),
                    name,
                    holder: None,
                    container: None,
                    veth: None,
                    restarts: 0,
                    restart_at: None,
                };
                cluster.prepare_volumes(&pod, &t);
                match kind {
                    Kind::Data => cluster.data.push(pod),
                    Kind::Sentinel => cluster.sentinels.push(pod),
                }
            }
        }
        cluster.write_hosts();
        for kind in [Kind::Data, Kind::Sentinel] {
            for i in 0..cluster.pods(kind).len() {
                cluster.start_pod(kind, i);
            }
        }
        cluster
    }

    fn fresh_ip(&mut self) -> Ipv4Addr {
        let ip = self.net.ip(self.next_host);
        self.next_host += 1;
        ip
    }

    pub fn pods(&self, kind: Kind) -> &Vec<Pod> {
        match kind {
            Kind::Data => &self.data,
            Kind::Sentinel => &self.sentinels,
        }
    }

    fn pod_mut(&mut self, kind: Kind, i: usize) -> &mut Pod {
        match kind {
            Kind::Data => &mut self.data[i],
            Kind::Sentinel => &mut self.sentinels[i],
        }
    }

    fn template(&self, kind: Kind) -> &PodTemplate {
        match kind {
            Kind::Data => &self.rendered.data,
            Kind::Sentinel => &self.rendered.sentinels,
        }
    }

    /// One directory per volume; the ConfigMap's files in its volumes (scripts executable).
    fn prepare_volumes(&self, pod: &Pod, t: &PodTemplate) {
        for (volume, path) in &t.mounts {
            let dir = pod.dir.join("volumes").join(volume);
            fs::create_dir_all(&dir).expect("a volume directory");
            if t.config_volumes.contains(volume) {
                for (file, content) in &self.rendered.files {
                    let f = dir.join(file);
                    fs::write(&f, content).expect("a ConfigMap file");
                    fs::set_permissions(&f, fs::Permissions::from_mode(0o755))
                        .expect("chmod a ConfigMap file");
                }
            }
            // The mount point has to exist (empty) in the root file system; the pod's own
            // mount namespace puts the volume over it.
            self._mount_points.ensure(Path::new(path));
        }
    }

    /// The hosts file every pod and server sees, rewritten in place.
    fn write_hosts(&self) {
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
        for p in self.data.iter().chain(&self.sentinels) {
            let _ = writeln!(text, "{} {} {}", p.ip, p.fqdn, p.name);
        }
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .create(true)
            .open(&self.hosts)
            .expect("open the hosts file");
        f.write_all(text.as_bytes()).expect("write the hosts file");
    }

    /// Starts pod `i` of `kind`: a holder in new network and mount namespaces, its veth, its
    /// volumes, then the container's command as rendered.
    pub fn start_pod(&mut self, kind: Kind, i: usize) {
        let t = self.template(kind).clone();
        // The host end goes with the pod end when the pod's network namespace goes.
        let (host_end, pod_end) = self.net.veth();
        let hosts = self.hosts.clone();
        let pod = &self.pods(kind)[i];
        assert!(!pod.is_running(), "{} is already running", pod.name);
        let (name, ip, dir) = (pod.name.clone(), pod.ip, pod.dir.clone());
        let mut holder = Command::new("unshare");
        holder
            .args(["--net", "--mount", "--", "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let holder = holder.spawn().expect("unshare starts");
        let pid = holder.id();
        // Owned by the pod at once, so a failure below still kills it (the pod's drop).
        let pod = self.pod_mut(kind, i);
        pod.holder = Some(holder);
        pod.veth = Some(host_end);
        pod.restarts = 0;
        // `ip link set .. netns PID` must not run before unshare(2) did, or the device stays.
        let deadline = Instant::now() + Duration::from_secs(5);
        let me = std::process::id();
        while ns_link(pid, "net") == ns_link(me, "net") || ns_link(pid, "mnt") == ns_link(me, "mnt")
        {
            assert!(Instant::now() < deadline, "{name}: no namespaces after 5 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid_s = pid.to_string();
        run("ip", &["link", "set", &pod_end, "netns", &pid_s]);
        // A MAC derived from the IP: a restarted pod keeps its address's MAC, so the ARP
        // caches of the others stay right.
        let o = ip.octets();
        let mac = format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        let setup_net = format!(
            "ip link set lo up && ip link set {pod_end} name eth0 && ip link set eth0 address {mac} \
             && ip addr add {ip}/24 dev eth0 && ip link set eth0 up \
             && sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.eth0.route_localnet=1"
        );
        run("nsenter", &["-t", &pid_s, "-n", "sh", "-c", &setup_net]);
        let mut binds = format!("mount --bind {} /etc/hosts", hosts.display());
        for (volume, path) in &t.mounts {
            let src = dir.join("volumes").join(volume);
            let _ = write!(binds, " && mount --bind {} {path}", src.display());
        }
        run("nsenter", &["-t", &pid_s, "-m", "sh", "-c", &binds]);
        let log = dir.join("pod.log");
        for (argv, env) in &t.init {
            let env = self.rendered.resolve(env, &name, ip);
            let banner = format!("=== {name} init container at {ip}: {argv:?}");
            let mut init = spawn_in(pid, argv, env, &log, &banner).expect("an init container");
            let status = wait_bounded(&mut init, INIT_WITHIN);
            assert!(
                status.is_some_and(|s| s.success()),
                "{name}: init container {argv:?} ended {status:?}:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        self.start_container(kind, i);
    }

    /// Starts the main container of a pod whose sandbox (holder) runs.
    fn start_container(&mut self, kind: Kind, i: usize) {
        let t = self.template(kind).clone();
        let pod = &self.pods(kind)[i];
        let pid = pod.holder.as_ref().map(Child::id).expect("a pod sandbox");
        let env = self.rendered.resolve(&t.env, &pod.name, pod.ip);
        let banner = format!("=== {} starts at {}: {:?}", pod.name, pod.ip, t.command);
        let container =
            spawn_in(pid, &t.command, env, &pod.log_path(), &banner).expect("the container starts");
        let pod = self.pod_mut(kind, i);
        pod.container = Some(container);
        pod.restart_at = None;
    }

    /// Does what the kubelet does for a container that exited (`restartPolicy: Always`):
    /// starts it again in the same pod after a back-off (10 s doubling to 5 min). Called by
    /// every wait of the harness.
    pub fn supervise(&mut self) {
        for kind in [Kind::Data, Kind::Sentinel] {
            for i in 0..self.pods(kind).len() {
                let pod = self.pod_mut(kind, i);
                if let Some(c) = pod.container.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    // Its group may still hold children (a redis-cli of the script).
                    kill_group(c);
                    pod.container = None;
                    let backoff = Duration::from_secs(10)
                        .saturating_mul(1 << pod.restarts.min(5))
                        .min(Duration::from_secs(300));
                    pod.restart_at = Some(Instant::now() + backoff);
                    pod.restarts += 1;
                    if let Ok(mut log) = OpenOptions::new().append(true).open(pod.log_path()) {
                        let _ = writeln!(log, "=== exited ({status}); restart in {backoff:?}");
                    }
                }
                let due = pod.restart_at.is_some_and(|at| Instant::now() >= at);
                if due && pod.holder.is_some() {
                    self.start_container(kind, i);
                }
            }
        }
    }

    /// SIGKILLs the pod's processes (container and holder); its volumes stay.
    pub fn kill_pod(&mut self, kind: Kind, i: usize) {
        self.pod_mut(kind, i).kill();
    }

    /// Deletes a pod as the kubelet does: the preStop hook (if rendered), SIGTERM, and SIGKILL
    /// once the grace period is over. Returns how long the hook ran (`None`: none rendered).
    pub fn stop_pod_gracefully(&mut self, kind: Kind, i: usize) -> Option<Duration> {
        let t = self.template(kind).clone();
        let started = Instant::now();
        let deadline = started + t.grace;
        let pod = &self.pods(kind)[i];
        let (name, ip) = (pod.name.clone(), pod.ip);
        let holder_pid = pod.holder.as_ref().map(Child::id);
        if let (Some(hook), Some(pid)) = (&t.pre_stop, holder_pid) {
            let env = self.rendered.resolve(&t.env, &name, ip);
            let log = self.pods(kind)[i].log_path();
            let banner = format!("=== {name} preStop: {hook:?}");
            if let Ok(mut child) = spawn_in(pid, hook, env, &log, &banner) {
                wait_bounded(
                    &mut child,
                    deadline.saturating_duration_since(Instant::now()),
                );
                kill_group(&mut child);
            }
        }
        let hook_ran = t.pre_stop.as_ref().map(|_| started.elapsed());
        let pod = self.pod_mut(kind, i);
        if let Some(c) = pod.container.as_mut() {
            run_quiet("kill", &["-TERM", "--", &format!("-{}", c.id())]);
            wait_bounded(c, deadline.saturating_duration_since(Instant::now()));
        }
        pod.kill();
        hook_ran
    }

    /// Kills and starts pod `i` again with the same volumes and address.
    pub fn restart_pod(&mut self, kind: Kind, i: usize) {
        self.kill_pod(kind, i);
        self.start_pod(kind, i);
    }

    /// The directory behind volume `volume` of pod `i` (what it wrote there stays).
    pub fn volume_dir(&self, kind: Kind, i: usize, volume: &str) -> PathBuf {
        self.pods(kind)[i].dir.join("volumes").join(volume)
    }

    /// Cuts a running pod off the network (`connected` false: its link on the bridge down, as
    /// when its node is partitioned) or puts it back.
    pub fn set_connected(&mut self, kind: Kind, i: usize, connected: bool) {
        let pod = &self.pods(kind)[i];
        let veth = pod.veth.as_deref().expect("a running pod");
        let state = if connected { "up" } else { "down" };
        run("ip", &["link", "set", veth, state]);
    }

    /// Gives a (stopped) pod a new address and rewrites the hosts file.
    pub fn change_ip(&mut self, kind: Kind, i: usize) -> Ipv4Addr {
        let ip = self.fresh_ip();
        self.pod_mut(kind, i).ip = ip;
        self.write_hosts();
        ip
    }

    /// `argv` prefix that runs a program with this cluster's hosts file over `/etc/hosts`.
    pub fn hosts_wrapper(&self) -> Vec<String> {
        vec![
            "unshare".into(),
            "--mount".into(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            r#"mount --bind "$0" /etc/hosts && exec "$@""#.into(),
            self.hosts.display().to_string(),
        ]
    }

    /// Starts a chat-server named `id` with the rendered servers' Redis settings plus `extra`,
    /// in the root network namespace with the pods' names resolvable.
    pub async fn start_server(&mut self, id: &str, extra: &[(&str, &str)]) {
        let env = self.rendered.server_env(id);
        let mut pairs: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        pairs.extend_from_slice(extra);
        let wrapper = self.hosts_wrapper();
        let prefix: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let server = ServerProcess::start_via(id, &pairs, &prefix).await;
        self.servers.push(server);
    }

    // -----------------------------------------------------------------------------------------
    // Observation
    // -----------------------------------------------------------------------------------------

    /// One command to a pod (with the password), `None` when it does not answer.
    pub fn command(&self, pod: &Pod, args: &[&str]) -> Option<Resp> {
        resp_command_at(pod.addr(), Some(&self.rendered.password), args, PROBE).ok()
    }

    /// The pod whose name, FQDN or address is `host`.
    pub fn data_pod_named(&self, host: &str) -> Option<usize> {
        self.data
            .iter()
            .position(|p| p.fqdn == host || p.name == host || p.ip.to_string() == host)
    }

    pub fn role(&self, i: usize) -> Role {
        let Some(reply) = self.command(&self.data[i], &["ROLE"]) else {
            return Role::Unknown;
        };
        let items = reply.as_array().unwrap_or_default();
        match items.first().and_then(Resp::as_text).as_deref() {
            Some("master") => Role::Master,
            Some("slave") => Role::Replica {
                master: items.get(1).and_then(Resp::as_text).unwrap_or_default(),
                state: items.get(3).and_then(Resp::as_text).unwrap_or_default(),
            },
            _ => Role::Unknown,
        }
    }

    /// The data nodes that say they are master.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.data.len())
            .filter(|i| self.role(*i) == Role::Master)
            .collect()
    }

    /// The data node sentinel `i` names as master (by its address as announced).
    pub fn sentinel_master(&self, i: usize) -> Option<String> {
        let name = self.master_name();
        let reply = self.command(
            &self.sentinels[i],
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &name],
        )?;
        reply.as_array()?.first()?.as_text()
    }

    /// The data nodes sentinel `i` counts as healthy replicas (flags just `slave`).
    pub fn sentinel_replicas(&self, i: usize) -> Vec<usize> {
        let name = self.master_name();
        let Some(reply) = self.command(&self.sentinels[i], &["SENTINEL", "REPLICAS", &name]) else {
            return Vec::new();
        };
        let mut out: Vec<usize> = reply
            .as_array()
            .unwrap_or_default()
            .iter()
            .filter_map(Resp::as_field_map)
            .filter(|f| f.get("flags").map(String::as_str) == Some("slave"))
            .filter_map(|f| self.data_pod_named(f.get("ip")?))
            .collect();
        out.sort_unstable();
        out
    }

    /// The master name the sentinels monitor (`MASTER_NAME` of the rendered env).
    pub fn master_name(&self) -> String {
        self.rendered
            .sentinels
            .env
            .iter()
            .find(|e| e["name"] == "MASTER_NAME")
            .and_then(|e| text(&e["value"]))
            .unwrap_or_else(|| "mymaster".to_owned())
    }

    /// The master when the topology has converged: exactly one data node is master, every
    /// other one is its replica with the link up, and every sentinel names it and counts
    /// every other node as a healthy replica (a sentinel that does not know a replica can
    /// neither promote it nor point it at a new master).
    pub fn converged(&self) -> Option<usize> {
        let masters = self.masters();
        let [m] = masters.as_slice() else {
            return None;
        };
        let linked = (0..self.data.len()).filter(|i| i != m).all(|i| {
            matches!(self.role(i), Role::Replica { master, state }
                if self.data_pod_named(&master) == Some(*m) && state == "connected")
        });
        let others: Vec<usize> = (0..self.data.len()).filter(|i| i != m).collect();
        let agreed = (0..self.sentinels.len()).all(|s| {
            self.sentinel_master(s)
                .and_then(|h| self.data_pod_named(&h))
                == Some(*m)
                && self.sentinel_replicas(s) == others
        });
        (linked && agreed).then_some(*m)
    }

    /// Polls until [`Cluster::converged`], at most `within`; also the most masters seen at
    /// once meanwhile.
    pub fn wait_converged(&mut self, within: Duration) -> (Option<usize>, usize) {
        let deadline = Instant::now() + within;
        let mut most = 0;
        loop {
            self.supervise();
            most = most.max(self.masters().len());
            if let Some(m) = self.converged() {
                return (Some(m), most);
            }
            if Instant::now() >= deadline {
                return (None, most);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until pod `i` answers PING with PONG (the rendered readiness probe's test).
    pub fn wait_pod_ready(&mut self, kind: Kind, i: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            self.supervise();
            if self
                .command(&self.pods(kind)[i], &["PING"])
                .and_then(|r| r.as_text())
                .is_some_and(|t| t == "PONG")
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Keys of data node `i` matching `pattern` (`KEYS`: the data sets here are small).
    pub fn key_count(&self, i: usize, pattern: &str) -> Option<usize> {
        let reply = self.command(&self.data[i], &["KEYS", pattern])?;
        reply.as_array().map(<[Resp]>::len)
    }

    /// Every pod's log tail, for a failure message.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in self.data.iter().chain(&self.sentinels) {
            let _ = write!(out, "\n--- {} ({})\n{}", p.name, p.ip, p.log_tail(lines));
        }
        out
    }

    /// Watches every sentinel's events from now on.
    pub fn watch_events(&self) -> EventWatch {
        EventWatch::start(
            self.sentinels.iter().map(Pod::addr).collect(),
            &self.rendered.password,
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.servers.clear();
        for p in self.data.iter_mut().chain(self.sentinels.iter_mut()) {
            p.kill();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sentinel events
// ---------------------------------------------------------------------------------------------

/// Every event (`+switch-master`, `+try-failover`, ...) the sentinels published, with when it
/// arrived, read by one thread per sentinel until this drops. A sentinel that dies ends its
/// thread; the others go on.
pub struct EventWatch {
    seen: Arc<Mutex<Vec<(Instant, String, String)>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EventWatch {
    fn start(addrs: Vec<SocketAddr>, password: &str) -> EventWatch {
        let seen: Arc<Mutex<Vec<(Instant, String, String)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for addr in addrs {
            let Ok(stream) = subscribe(addr, password) else {
                continue;
            };
            let (seen, stop) = (seen.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                while !stop.load(Ordering::Relaxed) {
                    match read_reply(&mut reader) {
                        Ok(reply) => {
                            let items = reply.as_array().map(<[Resp]>::to_vec).unwrap_or_default();
                            if let [kind, _, channel, payload] = items.as_slice()
                                && kind.as_text().as_deref() == Some("pmessage")
                            {
                                seen.lock().unwrap_or_else(PoisonError::into_inner).push((
                                    Instant::now(),
                                    channel.as_text().unwrap_or_default(),
                                    payload.as_text().unwrap_or_default(),
                                ));
                            }
                        }
                        Err(e)
                            if e.kind() == io::ErrorKind::WouldBlock
                                || e.kind() == io::ErrorKind::TimedOut => {}
                        Err(_) => return,
                    }
                }
            }));
        }
        EventWatch {
            seen,
            stop,
            threads,
        }
    }

    /// When `channel` was first published (after `after`), and its payload.
    pub fn first(&self, channel: &str, after: Instant) -> Option<(Instant, String)> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(at, c, _)| c == channel && *at >= after)
            .map(|(at, _, p)| (*at, p.clone()))
    }

    /// Waits up to `within` for [`EventWatch::first`].
    pub fn wait_first(
        &self,
        channel: &str,
        after: Instant,
        within: Duration,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(hit) = self.first(channel, after) {
                return Some(hit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A connection to the sentinel at `addr`, authenticated and PSUBSCRIBEd to every channel.
fn subscribe(addr: SocketAddr, password: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, PROBE)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    writer.write_all(&encode_command(&["AUTH", password]))?;
    let auth = read_reply(&mut reader)?;
    if auth.is_error() {
        return Err(io::Error::other(format!("AUTH: {auth:?}")));
    }
    writer.write_all(&encode_command(&["PSUBSCRIBE", "*"]))?;
    read_reply(&mut reader)?;
    // Short reads from here on, so the thread notices `stop`; events arrive whole.
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    // The BufReader above holds nothing more: the PSUBSCRIBE reply was the last sent.
    Ok(stream)
}
