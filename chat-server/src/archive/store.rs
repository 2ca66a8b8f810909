//! The PostgreSQL side of the archive: the pool, the embedded migrations, the one INSERT.
//!
//! Keeps true: a batch is one statement, keyed by (room, epoch, offset) with
//! `ON CONFLICT DO NOTHING`, so storing a batch again (a retry, two instances holding the same
//! records) never stores a record twice. The pool connects lazily: PostgreSQL being down never
//! stops the server from starting.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

use super::ArchiveConfig;
use super::ArchiveError;
use super::batch::Row;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The archive database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// A lazily connecting pool for `config` (connections are made on first use).
    pub fn new(config: &ArchiveConfig) -> Result<Store, ArchiveError> {
        let options = connect_options(config, "chat-server")?;
        let pool = PgPoolOptions::new()
            // One archiver per instance: one statement at a time, plus one for start-up.
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Store { pool })
    }

    /// Creates or updates the schema (sqlx holds an advisory lock, so instances starting
    /// together migrate once).
    pub async fn migrate(&self) -> Result<(), ArchiveError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| ArchiveError::Postgres(e.to_string()))
    }

    /// Stores `rows` in one statement; the number of rows that were new.
    pub async fn insert(&self, rows: &[Row]) -> Result<u64, ArchiveError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut rooms = Vec::with_capacity(rows.len());
        let mut epochs = Vec::with_capacity(rows.len());
        let mut offsets = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        // i64::MIN stands for "no time" (NULL): arrays of plain values bind most simply.
        let mut sent = Vec::with_capacity(rows.len());
        let mut records = Vec::with_capacity(rows.len());
        for r in rows {
            rooms.push(r.room.as_str());
            epochs.push(r.epoch.as_str());
            offsets.push(r.offset);
            ids.push(r.id.as_str());
            sent.push(r.sent_at_ms.unwrap_or(i64::MIN));
            records.push(r.record.as_str());
        }
        let done = sqlx::query(
            r#"INSERT INTO chat_messages (room, epoch, "offset", id, sent_at, record)
               SELECT u.room, u.epoch, u.off, u.id,
                      to_timestamp(NULLIF(u.sent, -9223372036854775808) / 1000.0),
                      u.record::jsonb
               FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::text[])
                    AS u(room, epoch, off, id, sent, record)
               ON CONFLICT (room, epoch, "offset") DO NOTHING"#,
        )
        .bind(&rooms)
        .bind(&epochs)
        .bind(&offsets)
        .bind(&ids)
        .bind(&sent)
        .bind(&records)
        .execute(&self.pool)
        .await
        .map_err(|e| ArchiveError::Postgres(e.to_string()))?;
        Ok(done.rows_affected())
    }
}

/// How to connect to the archive of `config`, named `application` in `pg_stat_activity`.
pub(super) fn connect_options(
    config: &ArchiveConfig,
    application: &str,
) -> Result<PgConnectOptions, ArchiveError> {
    let mut options = PgConnectOptions::from_str(&config.url)
        .map_err(|e| ArchiveError::Config(e.to_string()))?
        .application_name(application);
    if let Some(pw) = &config.password {
        options = options.password(pw);
    }
    if let Some(mode) = config.ssl_mode {
        options = options.ssl_mode(mode.into());
    }
    if let Some(ca) = &config.ssl_root_cert {
        options = options.ssl_root_cert(ca);
    }
    if let Some((cert, key)) = &config.ssl_client {
        options = options.ssl_client_cert(cert).ssl_client_key(key);
    }
    Ok(options)
}

/// `CHAT_ARCHIVE_SSL_MODE`, as libpq names the modes. TLS is rustls; `prefer` and `require`
/// encrypt without checking the server's certificate, `verify-ca` checks it against the CA
/// certificates (`CHAT_ARCHIVE_SSL_ROOT_CERT_FILE`, else the URL's `sslrootcert`, else the
/// system's), `verify-full` also checks that it names the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The mode a libpq `sslmode` value names.
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

impl From<SslMode> for PgSslMode {
    fn from(m: SslMode) -> PgSslMode {
        match m {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow => PgSslMode::Allow,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// `Ok` if `url` is a PostgreSQL URL this server can use; the reason otherwise.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must start with postgres:// or postgresql://".into());
    }
    PgConnectOptions::from_str(url).map_err(|e| format!("not a PostgreSQL URL ({e})"))?;
    Ok(())
}

/// `Ok` if `file` is a readable PEM file with at least one certificate and nothing unreadable
/// (a CA bundle, or a client certificate); checked at start-up, so a wrong path or a key given
/// for a certificate stops the server instead of failing every connection later.
pub fn check_root_cert(file: &str) -> Result<(), String> {
    let pem = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    check_root_cert_pem(&pem).map_err(|m| format!("{file} {m}"))
}

/// `Ok` if `file` is a readable PEM file holding a private key (PKCS#8, PKCS#1 or SEC1); the
/// reason otherwise, without the key.
pub fn check_private_key(file: &str) -> Result<(), String> {
    let pem = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    check_private_key_pem(&pem).map_err(|m| format!("{file} {m}"))
}

/// `Ok` if `pem` holds a PEM private key; what is wrong otherwise, to follow the name of where
/// it came from (the operator checks a client certificate Secret's `tls.key` with this).
pub fn check_private_key_pem(pem: &[u8]) -> Result<(), String> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem)
        .map(|_| ())
        .map_err(|_| "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".to_owned())
}

/// `Ok` if `pem` holds at least one PEM certificate and nothing unreadable; else what is wrong
/// ("holds no PEM certificate ..."), to follow the name of where it came from. The operator
/// checks a CA Secret's value with this too.
pub fn check_root_cert_pem(pem: &[u8]) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut n = 0usize;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| format!("is not a PEM certificate file: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(())
}
