//! Asking Redis sentinels who the master is, over a minimal RESP2 exchange.
//!
//! The operator only reads: it sends `AUTH` and `SENTINEL GET-MASTER-ADDR-BY-NAME` and never
//! reconfigures replication; the sentinels own failover.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// Something that can ask one sentinel for the master's host.
pub trait SentinelProbe: Send + Sync {
    /// The host the sentinel at `addr` names as master of `master_name` (`None`: it knows none).
    fn master_host<'a>(
        &'a self,
        addr: &'a str,
        password: Option<&'a str>,
        master_name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>>;
}

/// Encode a command as a RESP array of bulk strings.
pub fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A RESP2 reply, as far as the operator needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:n`
    Integer(i64),
    /// `$n` (None for `$-1`)
    Bulk(Option<String>),
    /// `*n` (None for `*-1`)
    Array(Option<Vec<Reply>>),
}

fn protocol(addr: &str, reason: impl Into<String>) -> Error {
    Error::Sentinel {
        addr: addr.to_owned(),
        reason: reason.into(),
    }
}

/// Read one reply. Boxed because arrays nest.
pub fn read_reply<'a, R>(reader: &'a mut R, addr: &'a str) -> BoxFuture<'a, Result<Reply>>
where
    R: AsyncBufReadExt + Unpin + Send,
{
    Box::pin(async move {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| protocol(addr, e.to_string()))?;
        if n == 0 {
            return Err(protocol(addr, "connection closed"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (kind, rest) = line.split_at(line.len().min(1));
        let number = || {
            rest.parse::<i64>()
                .map_err(|_| protocol(addr, format!("bad length in {line:?}")))
        };
        match kind {
            "+" => Ok(Reply::Simple(rest.to_owned())),
            "-" => Ok(Reply::Error(rest.to_owned())),
            ":" => Ok(Reply::Integer(number()?)),
            "$" => {
                let len = number()?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len).map_err(|_| protocol(addr, "bad length"))?;
                let mut buf = vec![0; len + 2];
                reader
                    .read_exact(&mut buf)
                    .await
                    .map_err(|e| protocol(addr, e.to_string()))?;
                buf.truncate(len);
                Ok(Reply::Bulk(Some(
                    String::from_utf8(buf).map_err(|_| protocol(addr, "non-UTF-8 reply"))?,
                )))
            }
            "*" => {
                let len = number()?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                let mut items = Vec::new();
                for _ in 0..len {
                    items.push(read_reply(reader, addr).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(protocol(addr, format!("unexpected reply {line:?}"))),
        }
    })
}

/// The master host in a `GET-MASTER-ADDR-BY-NAME` reply.
pub fn master_from_reply(addr: &str, reply: Reply) -> Result<Option<String>> {
    match reply {
        Reply::Array(None) | Reply::Bulk(None) => Ok(None),
        Reply::Array(Some(items)) => match items.first() {
            Some(Reply::Bulk(Some(host))) => Ok(Some(host.clone())),
            _ => Err(protocol(addr, "unexpected master address")),
        },
        Reply::Error(e) => Err(protocol(addr, e)),
        other => Err(protocol(addr, format!("unexpected reply {other:?}"))),
    }
}

/// Asks sentinels over TCP, each exchange bounded by a timeout.
#[derive(Clone, Debug)]
pub struct TcpSentinelProbe {
    /// Bound on connecting plus the whole exchange.
    pub timeout: Duration,
}

impl Default for TcpSentinelProbe {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
        }
    }
}

impl TcpSentinelProbe {
    async fn ask(
        &self,
        addr: &str,
        password: Option<&str>,
        master_name: &str,
    ) -> Result<Option<String>> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| protocol(addr, e.to_string()))?;
        let mut stream = BufReader::new(stream);
        if let Some(pw) = password {
            stream
                .get_mut()
                .write_all(&encode_command(&["AUTH", pw]))
                .await
                .map_err(|e| protocol(addr, e.to_string()))?;
            if let Reply::Error(e) = read_reply(&mut stream, addr).await? {
                return Err(protocol(addr, format!("auth refused: {e}")));
            }
        }
        stream
            .get_mut()
            .write_all(&encode_command(&[
                "SENTINEL",
                "GET-MASTER-ADDR-BY-NAME",
                master_name,
            ]))
            .await
            .map_err(|e| protocol(addr, e.to_string()))?;
        let reply = read_reply(&mut stream, addr).await?;
        master_from_reply(addr, reply)
    }
}

impl SentinelProbe for TcpSentinelProbe {
    fn master_host<'a>(
        &'a self,
        addr: &'a str,
        password: Option<&'a str>,
        master_name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.ask(addr, password, master_name))
                .await
                .map_err(|_| protocol(addr, "timed out"))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn parse(bytes: &[u8]) -> Result<Reply> {
        let mut reader = BufReader::new(bytes);
        read_reply(&mut reader, "test").await
    }

    #[test]
    fn commands_are_encoded_as_arrays_of_bulk_strings() {
        assert_eq!(
            encode_command(&["AUTH", "pw"]),
            b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
        );
    }

    #[tokio::test]
    async fn replies_of_every_kind_are_parsed() {
        assert_eq!(parse(b"+OK\r\n").await.unwrap(), Reply::Simple("OK".into()));
        assert_eq!(
            parse(b"-ERR no\r\n").await.unwrap(),
            Reply::Error("ERR no".into())
        );
        assert_eq!(parse(b":7\r\n").await.unwrap(), Reply::Integer(7));
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Reply::Bulk(None));
        assert_eq!(parse(b"*-1\r\n").await.unwrap(), Reply::Array(None));
        assert_eq!(
            parse(b"*2\r\n$6\r\nhost-1\r\n$4\r\n6379\r\n")
                .await
                .unwrap(),
            Reply::Array(Some(vec![
                Reply::Bulk(Some("host-1".into())),
                Reply::Bulk(Some("6379".into()))
            ]))
        );
        assert!(parse(b"").await.is_err());
        assert!(parse(b"?what\r\n").await.is_err());
    }

    #[test]
    fn the_master_host_is_the_first_element_and_null_means_unknown() {
        let reply = Reply::Array(Some(vec![
            Reply::Bulk(Some("chat-redis-1.h".into())),
            Reply::Bulk(Some("6379".into())),
        ]));
        assert_eq!(
            master_from_reply("s", reply).unwrap().as_deref(),
            Some("chat-redis-1.h")
        );
        assert_eq!(master_from_reply("s", Reply::Array(None)).unwrap(), None);
        assert!(master_from_reply("s", Reply::Error("NOAUTH".into())).is_err());
    }

    #[tokio::test]
    async fn the_tcp_probe_authenticates_then_asks_for_the_master() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut socket = BufReader::new(socket);
            let mut seen = Vec::new();
            for reply in [&b"+OK\r\n"[..], b"*2\r\n$3\r\nm-0\r\n$4\r\n6379\r\n"] {
                let Reply::Array(Some(args)) = read_reply(&mut socket, "client").await.unwrap()
                else {
                    panic!("expected a command array");
                };
                seen.push(args);
                socket.get_mut().write_all(reply).await.unwrap();
            }
            seen
        });
        let probe = TcpSentinelProbe::default();
        let host = probe
            .master_host(&addr, Some("pw"), "mymaster")
            .await
            .unwrap();
        assert_eq!(host.as_deref(), Some("m-0"));
        let seen = server.await.unwrap();
        assert_eq!(seen[0][0], Reply::Bulk(Some("AUTH".into())));
        assert_eq!(seen[1][2], Reply::Bulk(Some("mymaster".into())));
    }

    #[tokio::test]
    async fn an_unreachable_sentinel_is_an_error_not_a_hang() {
        let probe = TcpSentinelProbe {
            timeout: Duration::from_millis(500),
        };
        // Port 1 on localhost refuses connections.
        assert!(
            probe
                .master_host("127.0.0.1:1", None, "mymaster")
                .await
                .is_err()
        );
    }
}
