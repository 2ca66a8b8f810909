//! Asking Redis sentinels who the master is, through fred (the Redis client chat-server uses).
//!
//! The operator only reads: it sends `SENTINEL GET-MASTER-ADDR-BY-NAME` (after `AUTH` when
//! the sentinels have a password) and never reconfigures replication itself; the sentinels own
//! failover. Not even a roll asks for one: it deletes the master, whose preStop hook pauses
//! writes before it asks (see `crate::rollout`).
//! Each question is one fresh connection that is closed after the answer. Connecting, the
//! command and closing are bounded by one timeout and nothing is retried or reconnected, so an
//! unreachable sentinel costs at most that timeout and the reconcile decides with the others.

use std::fmt::Display;
use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, ServerConfig, Value};
use fred::types::{ClusterHash, CustomCommand};
use futures_util::future::BoxFuture;

use crate::error::{Error, Result};

/// One question to one sentinel: who is master of `master_name`?
#[derive(Clone, Copy)]
pub struct MasterQuery<'a> {
    /// `host:port` of the sentinel.
    pub addr: &'a str,
    /// The sentinel's password, if it has one.
    pub password: Option<&'a str>,
    /// The name the sentinels monitor the master under.
    pub master_name: &'a str,
}

/// Where a sentinel says the master is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterAddr {
    /// The master's host name or IP, as the sentinels announce it.
    pub host: String,
    /// The master's port.
    pub port: u16,
}

/// A sentinel's answer: the master's address (`None`: it knows no master of that name).
pub type Answer<'a> = BoxFuture<'a, Result<Option<MasterAddr>>>;

/// Something that can ask one sentinel where the master is.
pub trait SentinelProbe: Send + Sync {
    /// Ask the sentinel at `query.addr`.
    fn master_addr<'a>(&'a self, query: MasterQuery<'a>) -> Answer<'a>;
}

fn failure(addr: &str, reason: impl Display) -> Error {
    Error::Sentinel {
        addr: addr.to_owned(),
        reason: reason.to_string(),
    }
}

/// `host` and `port` of a `host:port` address (`[v6]:port` too); the error says why not.
pub(crate) fn split_addr(addr: &str) -> std::result::Result<(&str, u16), String> {
    let bad = || "not a host:port address".to_owned();
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// A bulk string of a reply as text.
pub(crate) fn text(value: Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        _ => None,
    }
}

/// The master address in a `GET-MASTER-ADDR-BY-NAME` reply: `[host, port]`, or nil when the
/// sentinel monitors no master of that name.
fn master_from_reply(addr: &str, reply: Value) -> Result<Option<MasterAddr>> {
    match reply {
        Value::Null => Ok(None),
        Value::Array(items) => {
            let mut items = items.into_iter().map(text);
            match (items.next().flatten(), items.next().flatten()) {
                (Some(host), Some(port)) => {
                    let port = port
                        .parse()
                        .map_err(|_| failure(addr, format!("bad master port {port:?}")))?;
                    Ok(Some(MasterAddr { host, port }))
                }
                _ => Err(failure(addr, "unexpected master address")),
            }
        }
        other => Err(failure(addr, format!("unexpected reply {other:?}"))),
    }
}

/// Asks sentinels with a short-lived fred client per question.
#[derive(Clone, Debug)]
pub struct FredSentinelProbe {
    /// Bound on connecting plus the whole exchange.
    pub(crate) timeout: Duration,
}

impl Default for FredSentinelProbe {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
        }
    }
}

/// Send `command args` to the Redis (or sentinel) at `addr` over a fresh connection, after
/// `AUTH` with `password`, and close it. Connecting, the command and closing are bounded by
/// `timeout`; nothing is retried or reconnected. The error is the reason, for the caller to
/// name the node it asked.
pub(crate) async fn one_command(
    addr: &str,
    password: Option<&str>,
    timeout: Duration,
    command: &'static str,
    args: Vec<&str>,
) -> std::result::Result<Value, String> {
    let exchange = async {
        let (host, port) = split_addr(addr)?;
        let mut builder = Builder::from_config(Config {
            server: ServerConfig::new_centralized(host, port),
            password: password.map(str::to_owned),
            // A command while disconnected fails at once instead of waiting for a reconnect.
            fail_fast: true,
            ..Config::default()
        });
        // No reconnect policy is set: a failed connection is this node's answer; the next
        // reconcile asks again.
        builder
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = timeout);
        let client = builder.build().map_err(|e| e.to_string())?;
        // `init` fails when the connection or the `AUTH` fails, and then closes the client.
        client.init().await.map_err(|e| e.to_string())?;
        let reply = client
            .custom::<Value, _>(
                CustomCommand::new_static(command, ClusterHash::FirstKey, false),
                args,
            )
            .await;
        // The answer is in; a failure to say goodbye changes nothing.
        let _ = client.quit().await;
        reply.map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

impl FredSentinelProbe {
    async fn ask(&self, query: MasterQuery<'_>) -> Result<Option<MasterAddr>> {
        let addr = query.addr;
        let args = vec!["GET-MASTER-ADDR-BY-NAME", query.master_name];
        let reply = one_command(addr, query.password, self.timeout, "SENTINEL", args)
            .await
            .map_err(|reason| failure(addr, reason))?;
        master_from_reply(addr, reply)
    }
}

impl SentinelProbe for FredSentinelProbe {
    fn master_addr<'a>(&'a self, query: MasterQuery<'a>) -> Answer<'a> {
        // `one_command` bounds the whole exchange by the timeout.
        Box::pin(self.ask(query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_host_is_the_first_element_and_null_means_unknown() {
        let reply = Value::Array(vec![Value::from("chat-redis-1.h"), Value::from("6379")]);
        assert_eq!(
            master_from_reply("s", reply).unwrap(),
            Some(MasterAddr {
                host: "chat-redis-1.h".to_owned(),
                port: 6379
            })
        );
        assert_eq!(master_from_reply("s", Value::Null).unwrap(), None);
        assert!(master_from_reply("s", Value::Array(Vec::new())).is_err());
        assert!(master_from_reply("s", Value::Integer(1)).is_err());
        let bad_port = Value::Array(vec![Value::from("h"), Value::from("x")]);
        assert!(master_from_reply("s", bad_port).is_err());
    }

    #[test]
    fn addresses_are_split_into_host_and_port() {
        assert_eq!(
            split_addr("chat-sentinel-0.h.prod.svc:26379").unwrap(),
            ("chat-sentinel-0.h.prod.svc", 26379)
        );
        assert_eq!(split_addr("[::1]:26379").unwrap(), ("::1", 26379));
        assert!(split_addr("no-port").is_err());
        assert!(split_addr("host:port").is_err());
    }

    #[tokio::test]
    async fn an_unreachable_sentinel_is_an_error_not_a_hang() {
        let probe = FredSentinelProbe {
            timeout: Duration::from_millis(500),
        };
        let query = MasterQuery {
            // Port 1 on localhost refuses connections.
            addr: "127.0.0.1:1",
            password: None,
            master_name: "mymaster",
        };
        assert!(probe.master_addr(query).await.is_err());
    }
}
