"""Process harness for the benchmark and soak scripts: starts redis-server, chat-server and
Socket.IO instances on free loopback ports, reads CPU time, RSS and open files from /proc, and
stops everything it started when the script ends (normally, on an exception, or on a signal).
"""

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
_children = []


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cleanup(*_):
    for p in reversed(_children):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in _children:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    _children.clear()


atexit.register(_cleanup)
for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_sig, lambda *a: (_cleanup(), sys.exit(1)))


def spawn(args, env=None, log_path=None, cwd=None):
    """Starts a child in its own process group (killed at exit); stderr to log_path."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    p = subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        cwd=cwd,
        start_new_session=True,
    )
    _children.append(p)
    return p


def stop(p, sig=signal.SIGTERM, wait=10):
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
            p.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if p in _children:
        _children.remove(p)


def wait_http(url, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Proc:
    """A started server: its process, port, and /proc readings."""

    def __init__(self, name, popen, port):
        self.name, self.p, self.port = name, popen, port

    @property
    def pid(self):
        return self.p.pid

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 (1-based); after the ")" split, 12 and 13.
        return (int(fields[11]) + int(fields[12])) / TICK

    def rss_bytes(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def open_files(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self):
        return len(os.listdir(f"/proc/{self.pid}/task"))


def start_redis(workdir):
    port = free_port()
    p = spawn(
        [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", workdir,
            "--daemonize", "no",
        ],
        log_path=os.path.join(workdir, f"redis-{port}.log"),
    )
    wait_port(port)
    return Proc("redis", p, port)


def start_chat_server(name, workdir, bin_path, env):
    port = free_port()
    e = {
        "CHAT_LISTEN_ADDR": f"127.0.0.1:{port}",
        "CHAT_SERVER_ID": name,
        "RUST_LOG": "warn",
        **env,
    }
    p = spawn([bin_path], env=e, log_path=os.path.join(workdir, f"{name}.log"))
    proc = Proc(name, p, port)
    wait_http(f"http://127.0.0.1:{port}/readyz" if "CHAT_REDIS_URL" in env else f"http://127.0.0.1:{port}/healthz")
    return proc


def start_socketio(name, workdir, redis_port):
    port = free_port()
    p = spawn(
        ["node", os.path.join(ROOT, "bench", "socketio", "server.mjs")],
        env={"PORT": str(port), "REDIS_URL": f"redis://127.0.0.1:{redis_port}", "SERVER_ID": name},
        log_path=os.path.join(workdir, f"{name}.log"),
    )
    proc = Proc(name, p, port)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def tempdir(prefix):
    return tempfile.mkdtemp(prefix=prefix)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
