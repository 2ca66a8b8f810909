//! Configuration: every setting is an environment variable and a `--FLAG` of the same name.
//!
//! Parsing is a pure function of a lookup (`Config::from_lookup`), so tests and the operator
//! pass a map instead of the real environment. A bad value stops start-up with an error that
//! names the variable; nothing is bound before the whole configuration is valid. Every default
//! is written once, in `VARS`: `from_lookup` falls back to it, `--help` shows it, and a test
//! checks that `docs/CONFIGURATION.md` lists exactly these names and defaults.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::destination::{Destinations, parse_patterns};

mod vars;

pub use crate::archive::{ArchiveConfig, MAX_ARCHIVE_BATCH};

pub use vars::{VARS, Var};

/// How late a resend of a command (by fred, after a lost reply) is still recognised: the
/// publish script's duplicate window and deadline (`WINDOW` in the broker's `common.lua` is set
/// from this), the direct messages' window, and the bound on `CHAT_REDIS_WAIT_MS`.
pub const RESEND_WINDOW: Duration = Duration::from_secs(30);

/// A configuration value was missing or malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn bad(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Where messages, history and presence live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// One process, nothing shared.
    Memory,
    /// One Redis node.
    Redis { url: String },
    /// Redis behind sentinels.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Keys a JWT may be checked with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKey {
    Hs256Secret(String),
    PublicKeyPem(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub backend: Backend,
    pub redis_password: Option<String>,
    pub redis_sentinel_password: Option<String>,
    pub redis_min_replicas: u32,
    pub redis_wait: Duration,
    pub key_prefix: String,
    pub server_id: String,
    pub jwt_key: Option<JwtKey>,
    pub jwt_audience: Option<String>,
    pub jwt_issuer: Option<String>,
    pub allow_anonymous: bool,
    pub allowed_origins: Vec<String>,
    pub heartbeat_interval: Duration,
    pub server_ttl: Duration,
    pub history_max_len: usize,
    pub history_ttl: Option<Duration>,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub max_subscriptions: usize,
    pub outbound_queue: usize,
    pub send_rate: u32,
    pub user_send_rate: u32,
    /// (what the server can send, what it wants to receive), in ms; 0 is "none".
    pub stomp_heartbeat: (u64, u64),
    pub sockjs_heartbeat: Duration,
    pub sockjs_disconnect: Duration,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// The PostgreSQL archive, when `CHAT_ARCHIVE_URL` is set.
    pub archive: Option<ArchiveConfig>,
    /// The patterns of `CHAT_ROOM_DESTINATIONS` and `CHAT_SEND_DESTINATIONS`, as configured.
    pub room_destinations: Vec<String>,
    pub send_destinations: Vec<String>,
    /// The matcher built from them, once; every session shares it.
    pub(crate) destinations: Arc<Destinations>,
}

impl Config {
    /// Reads every variable through `lookup` (an empty value counts as unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &'static str| -> Option<String> {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .or_else(|| {
                    VARS.iter()
                        .find(|v| v.name == name)
                        .and_then(|v| v.default)
                        .map(str::to_owned)
                })
        };
        let listen_addr = parse_with(&get, "CHAT_LISTEN_ADDR", |s| {
            s.parse::<SocketAddr>()
                .map_err(|e| format!("not a socket address ({e})"))
        })?
        .ok_or_else(|| bad("CHAT_LISTEN_ADDR", "required"))?;

        let url = get("CHAT_REDIS_URL");
        let sentinels = get("CHAT_REDIS_SENTINELS");
        let backend = match (url, sentinels) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "CHAT_REDIS_SENTINELS",
                    "set either CHAT_REDIS_URL or CHAT_REDIS_SENTINELS, not both",
                ));
            }
            (Some(url), None) => {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(bad(
                        "CHAT_REDIS_URL",
                        "must start with redis:// or rediss://",
                    ));
                }
                Backend::Redis { url }
            }
            (None, Some(list)) => Backend::Sentinel {
                sentinels: parse_host_ports(&list).map_err(|m| bad("CHAT_REDIS_SENTINELS", m))?,
                master: defaulted(&get, "CHAT_REDIS_SENTINEL_MASTER")?,
            },
            (None, None) => Backend::Memory,
        };

        let redis_password = match (get("CHAT_REDIS_PASSWORD"), get("CHAT_REDIS_PASSWORD_FILE")) {
            (Some(p), _) => Some(p),
            (None, Some(file)) => Some(
                std::fs::read_to_string(&file)
                    .map_err(|e| {
                        bad(
                            "CHAT_REDIS_PASSWORD_FILE",
                            format!("cannot read {file}: {e}"),
                        )
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let default_replicas = u32::from(matches!(backend, Backend::Sentinel { .. }));
        let redis_min_replicas =
            parse_num(&get, "CHAT_REDIS_MIN_REPLICAS")?.unwrap_or(default_replicas);

        let server_id = get("CHAT_SERVER_ID")
            .or_else(|| lookup("POD_NAME").filter(|s| !s.is_empty()))
            .unwrap_or_else(default_server_id);
        if !crate::model::is_valid_id(&server_id) {
            return Err(bad("CHAT_SERVER_ID", "1-128 characters of [A-Za-z0-9_.-]"));
        }

        let jwt_key = match (get("CHAT_JWT_SECRET"), get("CHAT_JWT_PUBLIC_KEY_FILE")) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "CHAT_JWT_PUBLIC_KEY_FILE",
                    "set either CHAT_JWT_SECRET or CHAT_JWT_PUBLIC_KEY_FILE, not both",
                ));
            }
            (Some(secret), None) => {
                if secret.len() < 16 {
                    return Err(bad("CHAT_JWT_SECRET", "must be at least 16 bytes"));
                }
                Some(JwtKey::Hs256Secret(secret))
            }
            (None, Some(file)) => {
                Some(JwtKey::PublicKeyPem(std::fs::read(&file).map_err(|e| {
                    bad(
                        "CHAT_JWT_PUBLIC_KEY_FILE",
                        format!("cannot read {file}: {e}"),
                    )
                })?))
            }
            (None, None) => None,
        };
        let allow_anonymous =
            parse_bool(&get, "CHAT_ALLOW_ANONYMOUS")?.unwrap_or(jwt_key.is_none());
        if !allow_anonymous && jwt_key.is_none() {
            return Err(bad(
                "CHAT_ALLOW_ANONYMOUS",
                "false needs CHAT_JWT_SECRET or CHAT_JWT_PUBLIC_KEY_FILE, or no one could connect",
            ));
        }

        let allowed_origins = get("CHAT_ALLOWED_ORIGINS")
            .map(|s| {
                s.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect()
            })
            .unwrap_or_default();

        let heartbeat_interval = millis(&get, "CHAT_HEARTBEAT_INTERVAL_MS", 1)?;
        let server_ttl = millis(&get, "CHAT_SERVER_TTL_MS", 1)?;
        if server_ttl <= heartbeat_interval {
            return Err(bad(
                "CHAT_SERVER_TTL_MS",
                "must be longer than CHAT_HEARTBEAT_INTERVAL_MS",
            ));
        }
        let history_max_len = positive(&get, "CHAT_HISTORY_MAX_LEN")?;
        let history_ttl = parse_num::<u64>(&get, "CHAT_HISTORY_TTL_SECS")?
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let max_frame_bytes = positive(&get, "CHAT_MAX_FRAME_BYTES")?;
        if max_frame_bytes < 1024 {
            return Err(bad("CHAT_MAX_FRAME_BYTES", "must be at least 1024"));
        }
        let stomp_heartbeat = parse_with(&get, "CHAT_STOMP_HEARTBEAT_MS", |s| {
            crate::stomp::parse_heart_beat(s)
                .ok_or_else(|| "expected two numbers: send,receive".into())
        })?
        .ok_or_else(|| bad("CHAT_STOMP_HEARTBEAT_MS", "required"))?;
        let log_format = match defaulted(&get, "CHAT_LOG_FORMAT")?.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(bad(
                    "CHAT_LOG_FORMAT",
                    format!("expected text or json, got {other:?}"),
                ));
            }
        };

        let archive = archive(&get, &backend)?;

        let room_list = defaulted(&get, "CHAT_ROOM_DESTINATIONS")?;
        let send_list = defaulted(&get, "CHAT_SEND_DESTINATIONS")?;
        let destinations = Destinations::new(
            parse_patterns(&room_list, false)
                .map_err(|e| bad("CHAT_ROOM_DESTINATIONS", e.to_string()))?,
            parse_patterns(&send_list, true)
                .map_err(|e| bad("CHAT_SEND_DESTINATIONS", e.to_string()))?,
        );
        let list = |s: &str| s.split(',').map(|p| p.trim().to_owned()).collect();

        Ok(Config {
            listen_addr,
            backend,
            redis_password,
            redis_sentinel_password: get("CHAT_REDIS_SENTINEL_PASSWORD"),
            redis_min_replicas,
            redis_wait: redis_wait(&get)?,
            key_prefix: defaulted(&get, "CHAT_KEY_PREFIX")?,
            server_id,
            jwt_key,
            jwt_audience: get("CHAT_JWT_AUDIENCE"),
            jwt_issuer: get("CHAT_JWT_ISSUER"),
            allow_anonymous,
            allowed_origins,
            heartbeat_interval,
            server_ttl,
            history_max_len,
            history_ttl,
            max_frame_bytes,
            max_connections: positive(&get, "CHAT_MAX_CONNECTIONS")?,
            max_subscriptions: positive(&get, "CHAT_MAX_SUBSCRIPTIONS")?,
            outbound_queue: positive(&get, "CHAT_OUTBOUND_QUEUE")?,
            send_rate: number(&get, "CHAT_SEND_RATE")?,
            user_send_rate: number(&get, "CHAT_USER_SEND_RATE")?,
            stomp_heartbeat,
            sockjs_heartbeat: millis(&get, "CHAT_SOCKJS_HEARTBEAT_MS", 100)?,
            sockjs_disconnect: millis(&get, "CHAT_SOCKJS_DISCONNECT_MS", 100)?,
            shutdown_grace: Duration::from_secs(number(&get, "CHAT_SHUTDOWN_GRACE_SECS")?),
            log_format,
            archive,
            room_destinations: list(&room_list),
            send_destinations: list(&send_list),
            destinations: Arc::new(destinations),
        })
    }

    /// A configuration for tests and embedding: in-memory, anonymous, port 0 on loopback.
    pub fn for_tests() -> Config {
        let mut c = Config::from_lookup(|name| match name {
            "CHAT_LISTEN_ADDR" => Some("127.0.0.1:0".into()),
            "CHAT_SERVER_ID" => Some("test-server".into()),
            _ => None,
        })
        .unwrap_or_else(|e| unreachable!("defaults are valid: {e}"));
        c.shutdown_grace = Duration::from_secs(5);
        c
    }
}

/// `CHAT_ARCHIVE_*`: `None` without a URL. The archive reads the Redis archive Stream, so the
/// in-memory backend refuses it rather than archiving nothing.
fn archive(
    get: &impl Fn(&'static str) -> Option<String>,
    backend: &Backend,
) -> Result<Option<ArchiveConfig>, ConfigError> {
    let Some(url) = get("CHAT_ARCHIVE_URL") else {
        for name in [
            "CHAT_ARCHIVE_PASSWORD_FILE",
            "CHAT_ARCHIVE_SSL_MODE",
            "CHAT_ARCHIVE_SSL_ROOT_CERT_FILE",
            "CHAT_ARCHIVE_SSL_CERT_FILE",
            "CHAT_ARCHIVE_SSL_KEY_FILE",
        ] {
            if get(name).is_some() {
                return Err(bad(name, "set without CHAT_ARCHIVE_URL"));
            }
        }
        return Ok(None);
    };
    if *backend == Backend::Memory {
        return Err(bad(
            "CHAT_ARCHIVE_URL",
            "the archive needs the Redis backend (set CHAT_REDIS_URL or CHAT_REDIS_SENTINELS)",
        ));
    }
    crate::archive::check_url(&url).map_err(|m| bad("CHAT_ARCHIVE_URL", m))?;
    let password = get("CHAT_ARCHIVE_PASSWORD_FILE")
        .map(|file| {
            std::fs::read_to_string(&file)
                .map(|p| p.trim().to_owned())
                .map_err(|e| {
                    bad(
                        "CHAT_ARCHIVE_PASSWORD_FILE",
                        format!("cannot read {file}: {e}"),
                    )
                })
        })
        .transpose()?;
    let ssl_mode = parse_with(get, "CHAT_ARCHIVE_SSL_MODE", |v| {
        crate::archive::SslMode::parse(v).ok_or_else(|| {
            "must be disable, allow, prefer, require, verify-ca or verify-full".to_owned()
        })
    })?;
    let ssl_root_cert = get("CHAT_ARCHIVE_SSL_ROOT_CERT_FILE")
        .map(|file| {
            crate::archive::check_root_cert(&file)
                .map(|()| std::path::PathBuf::from(&file))
                .map_err(|m| bad("CHAT_ARCHIVE_SSL_ROOT_CERT_FILE", m))
        })
        .transpose()?;
    let ssl_client = match (
        get("CHAT_ARCHIVE_SSL_CERT_FILE"),
        get("CHAT_ARCHIVE_SSL_KEY_FILE"),
    ) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(bad(
                "CHAT_ARCHIVE_SSL_KEY_FILE",
                "missing: CHAT_ARCHIVE_SSL_CERT_FILE needs its private key",
            ));
        }
        (None, Some(_)) => {
            return Err(bad(
                "CHAT_ARCHIVE_SSL_CERT_FILE",
                "missing: CHAT_ARCHIVE_SSL_KEY_FILE is the key of a certificate",
            ));
        }
        (Some(cert), Some(key)) => {
            crate::archive::check_root_cert(&cert)
                .map_err(|m| bad("CHAT_ARCHIVE_SSL_CERT_FILE", m))?;
            crate::archive::check_private_key(&key)
                .map_err(|m| bad("CHAT_ARCHIVE_SSL_KEY_FILE", m))?;
            Some((
                std::path::PathBuf::from(cert),
                std::path::PathBuf::from(key),
            ))
        }
    };
    let backlog = number::<u64>(get, "CHAT_ARCHIVE_BACKLOG")?;
    if backlog < 1000 {
        return Err(bad("CHAT_ARCHIVE_BACKLOG", "must be at least 1000"));
    }
    let batch = positive(get, "CHAT_ARCHIVE_BATCH")?;
    if batch > MAX_ARCHIVE_BATCH {
        return Err(bad(
            "CHAT_ARCHIVE_BATCH",
            format!("must be at most {MAX_ARCHIVE_BATCH}"),
        ));
    }
    Ok(Some(ArchiveConfig {
        url,
        password,
        ssl_mode,
        ssl_root_cert,
        ssl_client,
        backlog,
        batch,
        claim_idle: millis(get, "CHAT_ARCHIVE_CLAIM_IDLE_MS", 100)?,
    }))
}

fn parse_with<T>(
    get: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    f: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    get(name)
        .map(|s| f(&s).map_err(|m| bad(name, m)))
        .transpose()
}

fn parse_num<T: std::str::FromStr>(
    get: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
) -> Result<Option<T>, ConfigError> {
    parse_with(get, name, |s| {
        s.parse::<T>()
            .map_err(|_| format!("not a whole number: {s:?}"))
    })
}

/// A variable with a default in `VARS`: missing only if `VARS` lost it, which is a bug the
/// config tests catch.
fn defaulted(
    get: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
) -> Result<String, ConfigError> {
    get(name).ok_or_else(|| bad(name, "required"))
}

/// A whole number with a default in `VARS`.
fn number<T: std::str::FromStr>(
    get: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
) -> Result<T, ConfigError> {
    parse_num(get, name)?.ok_or_else(|| bad(name, "required"))
}

fn positive(
    get: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
) -> Result<usize, ConfigError> {
    match parse_num::<usize>(get, name)? {
        Some(n) if n > 0 => Ok(n),
        Some(_) => Err(bad(name, "must be greater than 0")),
        None => Err(bad(name, "required")),
    }
}

/// At most `RESEND_WINDOW`: the publish script refuses a message that reaches Redis later than
/// that after it was sent (its duplicate check covers that long; see the broker's `common.lua`).
fn redis_wait(get: &impl Fn(&'static str) -> Option<String>) -> Result<Duration, ConfigError> {
    let wait = millis(get, "CHAT_REDIS_WAIT_MS", 0)?;
    let most = RESEND_WINDOW;
    if wait > most {
        return Err(bad(
            "CHAT_REDIS_WAIT_MS",
            format!(
                "must be at most {} (a message that reaches Redis later than that is not stored)",
                most.as_millis()
            ),
        ));
    }
    Ok(wait)
}

fn millis(
    get: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    min: u64,
) -> Result<Duration, ConfigError> {
    match parse_num::<u64>(get, name)? {
        Some(n) if n >= min => Ok(Duration::from_millis(n)),
        Some(_) => Err(bad(name, format!("must be at least {min}"))),
        None => Err(bad(name, "required")),
    }
}

fn parse_bool(
    get: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
) -> Result<Option<bool>, ConfigError> {
    parse_with(get, name, |s| match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    })
}

fn parse_host_ports(list: &str) -> Result<Vec<(String, u16)>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (host, port) = item
            .rsplit_once(':')
            .ok_or_else(|| format!("{item:?} is not host:port"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{item:?} has a bad port"))?;
        if host.is_empty() {
            return Err(format!("{item:?} has no host"));
        }
        out.push((host.trim_matches(['[', ']']).to_owned(), port));
    }
    if out.is_empty() {
        return Err("no sentinel address given".into());
    }
    Ok(out)
}

fn default_server_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && crate::model::is_valid_id(h))
        .unwrap_or_else(|| "chat".into());
    let suffix: u32 = rand::random();
    format!("{host}-{suffix:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_serve_one_anonymous_in_memory_instance_on_8080() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.backend, Backend::Memory);
        assert!(c.allow_anonymous);
        assert_eq!(c.history_max_len, 1000);
        assert_eq!(c.max_frame_bytes, 65536);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.server_ttl, Duration::from_secs(6));
        assert_eq!(c.redis_min_replicas, 0);
        assert_eq!(c.key_prefix, "chat");
    }

    #[test]
    fn the_archive_is_off_by_default_and_takes_its_settings_with_redis() {
        assert_eq!(parse(&[]).unwrap().archive, None);
        let c = parse(&[
            ("CHAT_REDIS_URL", "redis://127.0.0.1:6379"),
            ("CHAT_ARCHIVE_URL", "postgres://chat@db:5432/chat"),
            ("CHAT_ARCHIVE_BATCH", "200"),
            ("CHAT_ARCHIVE_CLAIM_IDLE_MS", "1500"),
        ])
        .unwrap();
        let a = c.archive.unwrap();
        assert_eq!(a.url, "postgres://chat@db:5432/chat");
        assert_eq!(a.backlog, 1_000_000);
        assert_eq!(a.batch, 200);
        assert_eq!(a.claim_idle, Duration::from_millis(1500));
        assert_eq!(a.password, None);
    }

    #[test]
    fn bad_archive_settings_stop_start_up_naming_their_variable() {
        let redis = ("CHAT_REDIS_URL", "redis://127.0.0.1:6379");
        let url = ("CHAT_ARCHIVE_URL", "postgres://chat@db/chat");
        let cases: &[(&[(&str, &str)], &str)] = &[
            // The in-memory backend has no archive Stream to archive from.
            (&[url], "CHAT_ARCHIVE_URL"),
            (
                &[redis, ("CHAT_ARCHIVE_URL", "mysql://db/chat")],
                "CHAT_ARCHIVE_URL",
            ),
            (
                &[redis, ("CHAT_ARCHIVE_URL", "postgres://db:notaport/x")],
                "CHAT_ARCHIVE_URL",
            ),
            (
                &[redis, ("CHAT_ARCHIVE_PASSWORD_FILE", "/etc/hostname")],
                "CHAT_ARCHIVE_PASSWORD_FILE",
            ),
            (
                &[
                    redis,
                    url,
                    ("CHAT_ARCHIVE_PASSWORD_FILE", "/nonexistent/pw"),
                ],
                "CHAT_ARCHIVE_PASSWORD_FILE",
            ),
            (
                &[redis, url, ("CHAT_ARCHIVE_BACKLOG", "999")],
                "CHAT_ARCHIVE_BACKLOG",
            ),
            (
                &[redis, url, ("CHAT_ARCHIVE_BATCH", "0")],
                "CHAT_ARCHIVE_BATCH",
            ),
            (
                &[redis, url, ("CHAT_ARCHIVE_BATCH", "10001")],
                "CHAT_ARCHIVE_BATCH",
            ),
            (
                &[redis, url, ("CHAT_ARCHIVE_CLAIM_IDLE_MS", "soon")],
                "CHAT_ARCHIVE_CLAIM_IDLE_MS",
            ),
            (
                &[redis, ("CHAT_ARCHIVE_SSL_MODE", "require")],
                "CHAT_ARCHIVE_SSL_MODE",
            ),
            (
                &[redis, url, ("CHAT_ARCHIVE_SSL_MODE", "verify")],
                "CHAT_ARCHIVE_SSL_MODE",
            ),
            (
                &[redis, ("CHAT_ARCHIVE_SSL_ROOT_CERT_FILE", "/etc/hostname")],
                "CHAT_ARCHIVE_SSL_ROOT_CERT_FILE",
            ),
            (
                &[
                    redis,
                    url,
                    ("CHAT_ARCHIVE_SSL_ROOT_CERT_FILE", "/nonexistent/ca.crt"),
                ],
                "CHAT_ARCHIVE_SSL_ROOT_CERT_FILE",
            ),
            (
                &[redis, url, ("CHAT_ARCHIVE_SSL_CERT_FILE", "/etc/hostname")],
                "CHAT_ARCHIVE_SSL_KEY_FILE",
            ),
            (
                &[redis, url, ("CHAT_ARCHIVE_SSL_KEY_FILE", "/etc/hostname")],
                "CHAT_ARCHIVE_SSL_CERT_FILE",
            ),
            // A file without a certificate (the wrong key of a Secret, say).
            (
                &[
                    redis,
                    url,
                    ("CHAT_ARCHIVE_SSL_ROOT_CERT_FILE", "/etc/hostname"),
                ],
                "CHAT_ARCHIVE_SSL_ROOT_CERT_FILE",
            ),
        ];
        for (pairs, var) in cases {
            assert_eq!(parse(pairs).unwrap_err().var, *var, "{pairs:?}");
        }
    }

    #[test]
    fn the_archive_tls_settings_are_taken_and_a_pem_private_key_is_no_ca_file() {
        let dir = std::env::temp_dir();
        let ca = dir.join(format!("chat-archive-ca-{}.crt", std::process::id()));
        let key = dir.join(format!("chat-archive-key-{}.pem", std::process::id()));
        // Base64 of some bytes: the start-up check reads PEM; rustls parses the DER on connect.
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nMIIBAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let base = [
            ("CHAT_REDIS_URL", "redis://127.0.0.1:6379"),
            ("CHAT_ARCHIVE_URL", "postgres://chat@db:5432/chat"),
            ("CHAT_ARCHIVE_SSL_MODE", "verify-full"),
        ];
        let mut pairs = base.to_vec();
        pairs.push(("CHAT_ARCHIVE_SSL_ROOT_CERT_FILE", ca.to_str().unwrap()));
        let a = parse(&pairs).unwrap().archive.unwrap();
        assert_eq!(a.ssl_mode, Some(crate::archive::SslMode::VerifyFull));
        assert_eq!(a.ssl_root_cert.as_deref(), Some(ca.as_path()));
        let mut pairs = base.to_vec();
        pairs.push(("CHAT_ARCHIVE_SSL_ROOT_CERT_FILE", key.to_str().unwrap()));
        let e = parse(&pairs).unwrap_err();
        assert_eq!(e.var, "CHAT_ARCHIVE_SSL_ROOT_CERT_FILE");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let a = parse(&base[..2]).unwrap().archive.unwrap();
        assert_eq!(
            (a.ssl_mode, a.ssl_root_cert, a.ssl_client),
            (None, None, None)
        );
        // A client certificate and its key, each checked for what it must hold.
        let (ca_s, key_s) = (ca.to_str().unwrap(), key.to_str().unwrap());
        let mut pairs = base.to_vec();
        pairs.extend([
            ("CHAT_ARCHIVE_SSL_CERT_FILE", ca_s),
            ("CHAT_ARCHIVE_SSL_KEY_FILE", key_s),
        ]);
        let a = parse(&pairs).unwrap().archive.unwrap();
        assert_eq!(a.ssl_client, Some((ca.clone(), key.clone())));
        for (cert, key_file, var) in [
            (key_s, key_s, "CHAT_ARCHIVE_SSL_CERT_FILE"),
            (ca_s, ca_s, "CHAT_ARCHIVE_SSL_KEY_FILE"),
        ] {
            let mut pairs = base.to_vec();
            pairs.extend([
                ("CHAT_ARCHIVE_SSL_CERT_FILE", cert),
                ("CHAT_ARCHIVE_SSL_KEY_FILE", key_file),
            ]);
            assert_eq!(parse(&pairs).unwrap_err().var, var);
        }
        let _ = std::fs::remove_file(ca);
        let _ = std::fs::remove_file(key);
    }

    #[test]
    fn the_archive_password_file_is_read_and_never_printed() {
        let path = std::env::temp_dir().join(format!("chat-archive-pw-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let c = parse(&[
            ("CHAT_REDIS_URL", "redis://127.0.0.1:6379"),
            ("CHAT_ARCHIVE_URL", "postgres://chat:inurl@db/chat"),
            ("CHAT_ARCHIVE_PASSWORD_FILE", path.to_str().unwrap()),
        ])
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        let a = c.archive.unwrap();
        assert_eq!(a.password.as_deref(), Some("s3cret"));
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("inurl"),
            "{shown}"
        );
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let e = parse(&[("CHAT_HISTORY_MAX_LEN", "lots")]).unwrap_err();
        assert_eq!(e.var, "CHAT_HISTORY_MAX_LEN");
        assert!(e.to_string().starts_with("CHAT_HISTORY_MAX_LEN: "));
        for (var, value) in [
            ("CHAT_LISTEN_ADDR", "nowhere"),
            ("CHAT_REDIS_URL", "http://x"),
            ("CHAT_REDIS_SENTINELS", "a:b"),
            ("CHAT_ALLOW_ANONYMOUS", "maybe"),
            ("CHAT_LOG_FORMAT", "xml"),
            ("CHAT_MAX_FRAME_BYTES", "0"),
            ("CHAT_STOMP_HEARTBEAT_MS", "1"),
            ("CHAT_SERVER_ID", "bad id!"),
            ("CHAT_JWT_SECRET", "short"),
            ("CHAT_REDIS_PASSWORD_FILE", "/nonexistent/password"),
            ("CHAT_REDIS_WAIT_MS", "30001"),
            ("CHAT_SOCKJS_HEARTBEAT_MS", "99"),
            ("CHAT_SOCKJS_DISCONNECT_MS", "soon"),
            ("CHAT_ROOM_DESTINATIONS", "/topic/{room}/{room}"),
            ("CHAT_ROOM_DESTINATIONS", "/topic/x{room}"),
            ("CHAT_ROOM_DESTINATIONS", "/topic/a,,/topic/b"),
            ("CHAT_ROOM_DESTINATIONS", "/app/chat?roomId"),
            ("CHAT_ROOM_DESTINATIONS", "/user/queue/{room}"),
            ("CHAT_SEND_DESTINATIONS", "/app/user/{room}"),
            ("CHAT_SEND_DESTINATIONS", "/app/chat?"),
        ] {
            assert_eq!(
                parse(&[(var, value)]).unwrap_err().var,
                var,
                "{var}={value}"
            );
        }
    }

    #[test]
    fn destination_patterns_default_to_the_classic_layout_and_may_be_replaced() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.room_destinations, ["/topic/room/{room}"]);
        assert_eq!(c.send_destinations, ["/app/room/{room}"]);
        let c = parse(&[
            (
                "CHAT_ROOM_DESTINATIONS",
                "/topic/chatroom/{room}, /topic/public",
            ),
            ("CHAT_SEND_DESTINATIONS", "/app/chat.sendMessage?chatRoomId"),
        ])
        .unwrap();
        assert_eq!(
            c.room_destinations,
            ["/topic/chatroom/{room}", "/topic/public"]
        );
        assert_eq!(
            c.destinations.subscribe("/topic/public"),
            Ok(crate::destination::Dest::Room("public".into()))
        );
        let e = parse(&[("CHAT_ROOM_DESTINATIONS", "/a/{room}/{room}")]).unwrap_err();
        assert!(e.to_string().contains("{room} twice"), "{e}");
    }

    #[test]
    fn sentinel_mode_needs_one_replica_by_default() {
        let c = parse(&[("CHAT_REDIS_SENTINELS", "10.0.0.1:26379, s2:26380")]).unwrap();
        assert_eq!(
            c.backend,
            Backend::Sentinel {
                sentinels: vec![("10.0.0.1".into(), 26379), ("s2".into(), 26380)],
                master: "mymaster".into()
            }
        );
        assert_eq!(c.redis_min_replicas, 1);
    }

    #[test]
    fn a_jwt_key_turns_anonymous_off_unless_asked() {
        let c = parse(&[("CHAT_JWT_SECRET", "0123456789abcdef0123")]).unwrap();
        assert!(!c.allow_anonymous);
        let c = parse(&[
            ("CHAT_JWT_SECRET", "0123456789abcdef0123"),
            ("CHAT_ALLOW_ANONYMOUS", "true"),
        ])
        .unwrap();
        assert!(c.allow_anonymous);
        assert_eq!(
            parse(&[("CHAT_ALLOW_ANONYMOUS", "false")]).unwrap_err().var,
            "CHAT_ALLOW_ANONYMOUS"
        );
    }

    #[test]
    fn server_id_falls_back_to_pod_name() {
        assert_eq!(
            parse(&[("POD_NAME", "chat-7f9c-abcde")]).unwrap().server_id,
            "chat-7f9c-abcde"
        );
        assert_eq!(
            parse(&[("POD_NAME", "p"), ("CHAT_SERVER_ID", "explicit")])
                .unwrap()
                .server_id,
            "explicit"
        );
    }

    #[test]
    fn ttl_must_outlast_the_heartbeat() {
        let e = parse(&[
            ("CHAT_HEARTBEAT_INTERVAL_MS", "5000"),
            ("CHAT_SERVER_TTL_MS", "4000"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "CHAT_SERVER_TTL_MS");
    }

    #[test]
    fn every_variable_is_documented_once() {
        let mut names: Vec<_> = VARS.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), VARS.len());
    }
}
