//! The list of every configuration variable with its meaning and default: the one place a
//! default is written. `Config::from_lookup` falls back to it, `--help` is made from it, and
//! `tests/tests/docs.rs` checks `docs/CONFIGURATION.md` against it.

/// One configuration variable: its name, what it means, and its default as text.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    pub name: &'static str,
    pub help: &'static str,
    pub default: Option<&'static str>,
}

/// Every variable the server reads, with its default: the one place a default is written.
/// `--help` is made from this list, and `tests/tests/docs.rs` checks `docs/CONFIGURATION.md`
/// against it. A variable whose default depends on others (`None` here) says so in `help`.
pub const VARS: &[Var] = &[
    var(
        "CHAT_LISTEN_ADDR",
        "address to listen on",
        Some("0.0.0.0:8080"),
    ),
    var(
        "CHAT_REDIS_URL",
        "Redis URL (redis://host:port/db); unset: in-memory",
        None,
    ),
    var(
        "CHAT_REDIS_SENTINELS",
        "sentinel addresses host:port,host:port,...",
        None,
    ),
    var(
        "CHAT_REDIS_SENTINEL_MASTER",
        "sentinel master name",
        Some("mymaster"),
    ),
    var(
        "CHAT_REDIS_PASSWORD",
        "password of the Redis data nodes",
        None,
    ),
    var(
        "CHAT_REDIS_PASSWORD_FILE",
        "file holding the Redis password",
        None,
    ),
    var(
        "CHAT_REDIS_SENTINEL_PASSWORD",
        "password of the sentinels, if they require one",
        None,
    ),
    var(
        "CHAT_REDIS_MIN_REPLICAS",
        "replicas that must hold a message before it is receipted (Sentinel: 1, else 0)",
        None,
    ),
    var(
        "CHAT_REDIS_WAIT_MS",
        "how long a SEND waits for Redis to come back (at most 30000)",
        Some("10000"),
    ),
    var("CHAT_KEY_PREFIX", "prefix of every Redis key", Some("chat")),
    var(
        "CHAT_SERVER_ID",
        "this instance's id (default: POD_NAME, else hostname-random)",
        None,
    ),
    var("CHAT_JWT_SECRET", "HS256 secret for JWT", None),
    var(
        "CHAT_JWT_PUBLIC_KEY_FILE",
        "PEM public key for RS256/ES256 JWT",
        None,
    ),
    var("CHAT_JWT_AUDIENCE", "required `aud` claim, if set", None),
    var("CHAT_JWT_ISSUER", "required `iss` claim, if set", None),
    var(
        "CHAT_ALLOW_ANONYMOUS",
        "allow clients without a token (default: on when no JWT key)",
        None,
    ),
    var(
        "CHAT_ALLOWED_ORIGINS",
        "comma-separated Origins allowed to open /ws (empty: any)",
        None,
    ),
    var(
        "CHAT_HEARTBEAT_INTERVAL_MS",
        "server registry heartbeat interval",
        Some("2000"),
    ),
    var(
        "CHAT_SERVER_TTL_MS",
        "a server is dead after this long without heartbeat",
        Some("6000"),
    ),
    var(
        "CHAT_HISTORY_MAX_LEN",
        "messages kept per room",
        Some("1000"),
    ),
    var(
        "CHAT_HISTORY_TTL_SECS",
        "idle room history expires after this (0: never)",
        Some("604800"),
    ),
    var(
        "CHAT_MAX_FRAME_BYTES",
        "largest STOMP frame accepted",
        Some("65536"),
    ),
    var(
        "CHAT_MAX_CONNECTIONS",
        "WebSocket connections accepted at once",
        Some("100000"),
    ),
    var(
        "CHAT_MAX_SUBSCRIPTIONS",
        "subscriptions per connection",
        Some("100"),
    ),
    var(
        "CHAT_OUTBOUND_QUEUE",
        "frames queued per connection before it counts as slow",
        Some("1024"),
    ),
    var(
        "CHAT_SEND_RATE",
        "SEND frames per second per connection (0: unlimited)",
        Some("200"),
    ),
    var(
        "CHAT_USER_SEND_RATE",
        "SEND frames per second per user over all their connections here (0: unlimited)",
        Some("400"),
    ),
    var(
        "CHAT_STOMP_HEARTBEAT_MS",
        "STOMP heart-beat the server offers: send,receive",
        Some("10000,10000"),
    ),
    var(
        "CHAT_SOCKJS_HEARTBEAT_MS",
        "SockJS heartbeat frame (h) interval on an idle receiving connection",
        Some("25000"),
    ),
    var(
        "CHAT_SOCKJS_DISCONNECT_MS",
        "a SockJS session with no receiving connection for this long is closed and reaped",
        Some("5000"),
    ),
    var(
        "CHAT_SHUTDOWN_GRACE_SECS",
        "drain time after SIGTERM",
        Some("20"),
    ),
    var("CHAT_LOG_FORMAT", "text or json", Some("text")),
    var(
        "CHAT_ARCHIVE_URL",
        "PostgreSQL URL (postgres://user@host:port/db) of the message archive; unset: no archive (needs Redis)",
        None,
    ),
    var(
        "CHAT_ARCHIVE_PASSWORD_FILE",
        "file holding the archive database's password",
        None,
    ),
    var(
        "CHAT_ARCHIVE_SSL_MODE",
        "TLS to the archive: disable, allow, prefer, require, verify-ca or verify-full; unset: the URL's sslmode (prefer)",
        None,
    ),
    var(
        "CHAT_ARCHIVE_SSL_ROOT_CERT_FILE",
        "PEM file of the CA certificates the archive's server certificate is checked against; unset: the URL's sslrootcert, else the system's",
        None,
    ),
    var(
        "CHAT_ARCHIVE_SSL_CERT_FILE",
        "PEM client certificate the servers present to the archive (certificate authentication); needs CHAT_ARCHIVE_SSL_KEY_FILE",
        None,
    ),
    var(
        "CHAT_ARCHIVE_SSL_KEY_FILE",
        "PEM private key of CHAT_ARCHIVE_SSL_CERT_FILE",
        None,
    ),
    var(
        "CHAT_ARCHIVE_BACKLOG",
        "records waiting for the archive (all instances) before the oldest is dropped and counted",
        Some("1000000"),
    ),
    var(
        "CHAT_ARCHIVE_BATCH",
        "records an instance archives in one INSERT (at most 10000)",
        Some("2000"),
    ),
    var(
        "CHAT_ARCHIVE_CLAIM_IDLE_MS",
        "records a (dead) instance holds this long unarchived are taken over by another",
        Some("30000"),
    ),
    var(
        "CHAT_ROOM_DESTINATIONS",
        "comma-separated destination patterns naming a room for SUBSCRIBE and SEND",
        Some("/topic/room/{room}"),
    ),
    var(
        "CHAT_SEND_DESTINATIONS",
        "comma-separated SEND-only destination patterns (`pattern?field`: the room is that body field)",
        Some("/app/room/{room}"),
    ),
];

const fn var(name: &'static str, help: &'static str, default: Option<&'static str>) -> Var {
    Var {
        name,
        help,
        default,
    }
}
