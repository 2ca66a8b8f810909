//! A real PostgreSQL for tests: `initdb` and `postgres` from Debian's packages
//! (`/usr/lib/postgresql/<version>/bin`), in a temp dir, listening on a free port on 127.0.0.1
//! only, without fsync. PostgreSQL refuses to run as root, so as root both run as the
//! `postgres` system user (`setpriv`, which execs: the child is the postmaster itself).
//! The server is stopped when the handle drops, so a failing test leaves nothing running.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// The directory holding `initdb` and `postgres`: `PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (scripts/test installs it from Debian)")
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().expect("no /usr/lib/postgresql/*/bin/initdb").1
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program` under the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL server on 127.0.0.1, stopped when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    child: Option<Child>,
    tls: bool,
    /// Whether `root.crt` holds a CA for client certificates (`ssl_ca_file`).
    client_ca: bool,
}

impl Postgres {
    /// Creates a cluster (user `postgres`, trust authentication on loopback) and starts it;
    /// returns once it answers a query.
    pub async fn start() -> Postgres {
        let mut pg = Postgres::init();
        pg.launch().await;
        pg
    }

    /// As [`Postgres::start`], but serving TLS with `cert` and accepting TCP connections only
    /// over TLS (`hostssl`; a plain one is rejected by `pg_hba.conf`).
    pub async fn start_tls(cert: &crate::certs::IssuedCert) -> Postgres {
        Postgres::start_tls_with(cert, None).await
    }

    /// As [`Postgres::start_tls`]; with `client_ca` (PEM), the user `chat` (a superuser) must
    /// also log in with a client certificate that CA signed, naming `chat`
    /// (`hostssl ... cert`); `postgres` still logs in without one.
    pub async fn start_tls_with(
        cert: &crate::certs::IssuedCert,
        client_ca: Option<&str>,
    ) -> Postgres {
        let mut pg = Postgres::init();
        let data = pg.dir.path().join("data");
        std::fs::write(data.join("server.crt"), &cert.cert_pem).expect("write server.crt");
        std::fs::write(data.join("server.key"), &cert.key_pem).expect("write server.key");
        std::fs::write(data.join("root.crt"), client_ca.unwrap_or("")).expect("write root.crt");
        let cert_rule = if client_ca.is_some() {
            "hostssl all chat 127.0.0.1/32 cert\n"
        } else {
            ""
        };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 {cert_rule}\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostnossl all all 127.0.0.1/32 reject\n"
            ),
        )
        .expect("write pg_hba.conf");
        pg.client_ca = client_ca.is_some();
        // PostgreSQL refuses a key file others can read; it must be its user's.
        let ok = Command::new("chmod")
            .arg("600")
            .arg(data.join("server.key"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chmod of server.key failed");
        if running_as_root() {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .arg(data.join("root.crt"))
                .arg(data.join("pg_hba.conf"))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown of the TLS files failed");
        }
        pg.tls = true;
        pg.launch().await;
        if pg.client_ca {
            let mut c = pg.connect().await;
            sqlx::query("CREATE ROLE chat LOGIN SUPERUSER")
                .execute(&mut c)
                .await
                .expect("create the role chat");
        }
        pg
    }

    fn init() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("chat-pg-")
            .tempdir()
            .expect("create a temp dir for PostgreSQL");
        if running_as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown of the PostgreSQL dir to postgres failed");
        }
        let bin = bin_dir();
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Postgres {
            dir,
            bin,
            port: crate::free_port(),
            child: None,
            tls: false,
            client_ca: false,
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn launch(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("open the PostgreSQL log");
        let child = as_postgres(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(match (self.tls, self.client_ca) {
                (true, true) => &["-c", "ssl=on", "-c", "ssl_ca_file=root.crt"][..],
                (true, false) => &["-c", "ssl=on"][..],
                (false, _) => &[][..],
            })
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = sqlx::PgConnection::connect(&self.url()).await
                && sqlx::query("SELECT 1").execute(&mut c).await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server (fast shutdown: clients are cut off), keeping its data and port.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the stopped server again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }

    /// A new connection (for the test's own queries).
    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url())
            .await
            .expect("connect to PostgreSQL")
    }

    pub fn log_tail(&self) -> String {
        crate::redis::log_tail_from(&self.dir.path().join("postgres.log"), 0)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
