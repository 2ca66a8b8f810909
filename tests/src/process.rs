//! Real processes for tests: the chat-server binary, and (for cluster tests) Redis.
//!
//! Every child is killed when its handle drops, so a failing test leaves nothing running.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The chat-server binary of this build (`cargo build --workspace --bins` puts it there).
pub fn chat_server_bin() -> PathBuf {
    workspace_bin("chat-server", "CHAT_SERVER_BIN")
}

/// The chat-load binary of this build (`cargo build --workspace --bins` puts it there).
pub fn chat_load_bin() -> PathBuf {
    workspace_bin("chat-load", "CHAT_LOAD_BIN")
}

/// A binary of this workspace beside the running test binary, or the path in `env_var`.
fn workspace_bin(name: &str, env_var: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env_var) {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// A chat-server process on a free loopback port.
pub struct ServerProcess {
    pub child: Child,
    pub port: u16,
    pub id: String,
}

impl ServerProcess {
    /// Starts the binary with `env` (plus a free CHAT_LISTEN_ADDR) and waits for /healthz.
    pub async fn start(id: &str, env: &[(&str, &str)]) -> ServerProcess {
        Self::start_via(id, env, &[]).await
    }

    /// [`ServerProcess::start`] under `prefix` (a program and its arguments that end by
    /// exec'ing the binary appended to them, so the child is the server itself), e.g. the
    /// topology test's own mount namespace with its hosts file.
    pub async fn start_via(id: &str, env: &[(&str, &str)], prefix: &[&str]) -> ServerProcess {
        let port = crate::free_port();
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(chat_server_bin());
                c
            }
            None => Command::new(chat_server_bin()),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CHAT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("CHAT_SERVER_ID", id)
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("chat-server starts");
        let p = ServerProcess {
            child,
            port,
            id: id.to_owned(),
        };
        p.wait_healthy(Duration::from_secs(15)).await;
        p
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub async fn wait_healthy(&self, within: Duration) {
        self.wait_for("/healthz", "healthy", within).await;
    }

    /// Waits until `/readyz` is 200 (Redis reachable and the instance registered).
    pub async fn wait_ready(&self, within: Duration) {
        self.wait_for("/readyz", "ready", within).await;
    }

    pub async fn is_ready(&self) -> bool {
        reqwest::get(self.url("/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    async fn wait_for(&self, path: &str, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(self.url(path)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server {} did not become {what}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "kill -{sig} failed");
    }

    /// Waits for the process to exit; its status.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit in {within:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
