//! Opening connections: a TCP socket bound to one of several loopback source addresses, the
//! WebSocket handshake with the `v12.stomp` subprotocol, CONNECT and an optional SUBSCRIBE that
//! is confirmed by a RECEIPT. Many connections open at once with a bound on handshakes in
//! flight, and the process's open-files limit is checked before anything is opened.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};

use crate::wire::{self, Inbound};
use crate::ws::{Incoming, Ws};

/// How long one connection may take from TCP connect to its SUBSCRIBE receipt.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Descriptors the process needs besides its connections (stdio, epoll, the runtime's own).
const FD_HEADROOM: u64 = 64;

/// Why a connection could not be opened or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("bad url {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
    #[error("websocket protocol: {0}")]
    Protocol(String),
    #[error("the server sent ERROR: {0}")]
    Stomp(String),
    #[error("the server closed the connection")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection task failed: {0}")]
    Task(String),
}

/// One instance to connect to: its URL and the address it resolved to.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Resolves a `ws://host:port/path` URL once, so each connection needs no lookup.
    pub async fn resolve(url: &str) -> Result<Target, ConnError> {
        let bad = |reason: &str| ConnError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("ws") {
            return Err(bad("only ws:// is supported"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| bad("the host does not resolve"))?;
        Ok(Target {
            url: url.to_owned(),
            addr,
        })
    }
}

/// How connections are opened.
#[derive(Debug, Clone, Copy)]
pub struct Dialer {
    /// Loopback source addresses to spread connections over (1: let the kernel choose).
    pub source_ips: u8,
}

impl Dialer {
    /// Connection `i`'s source address: 127.0.0.(1 + i % K), each good for one ephemeral range.
    pub fn source(&self, i: usize) -> Option<IpAddr> {
        if self.source_ips <= 1 {
            return None;
        }
        let host = 1 + i % usize::from(self.source_ips);
        Some(IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            u8::try_from(host).ok()?,
        )))
    }

    /// Opens TCP and the WebSocket for connection `i`; `recv_buffer` shrinks the socket's
    /// receive buffer (slow consumers, so their backlog builds up on the server sooner).
    pub async fn open(
        &self,
        target: &Target,
        i: usize,
        recv_buffer: Option<u32>,
    ) -> Result<Ws, ConnError> {
        let socket = if target.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.source(i) {
            // Pick the port at connect time, by the whole 4-tuple: a port bound with port 0
            // would stay reserved for this address, TIME_WAIT of earlier runs included.
            #[cfg(target_os = "linux")]
            nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            )
            .map_err(std::io::Error::from)?;
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        socket.set_nodelay(true)?;
        let stream = socket.connect(target.addr).await?;
        let mut request = target.url.as_str().into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("v12.stomp"),
        );
        Ws::upgrade(request, stream).await
    }

    /// Opens connection `spec` and runs its STOMP handshake, all within the handshake timeout.
    pub async fn session(&self, spec: &Spec) -> Result<Ws, ConnError> {
        let work = async {
            let mut ws = self
                .open(&spec.target, spec.index, spec.recv_buffer)
                .await?;
            ws.send(&wire::connect(&spec.login)).await?;
            expect(&mut ws, |f| matches!(f, Inbound::Connected)).await?;
            if let Some(room) = &spec.room {
                subscribe(&mut ws, 0, room, spec.presence).await?;
            }
            Ok(ws)
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
            .await
            .unwrap_or(Err(ConnError::Timeout(HANDSHAKE_TIMEOUT)))
    }
}

/// One connection to open.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Its number among all of this process's connections (picks the source address).
    pub index: usize,
    pub target: Target,
    pub login: String,
    /// The room to SUBSCRIBE to, if any.
    pub room: Option<String>,
    pub presence: bool,
    pub recv_buffer: Option<u32>,
}

/// SUBSCRIBEs `id` to `room` and waits for the receipt.
pub async fn subscribe(
    ws: &mut Ws,
    id: usize,
    room: &str,
    presence: bool,
) -> Result<(), ConnError> {
    let receipt = format!("sub-{id}");
    ws.send(&wire::subscribe(id, room, presence, &receipt))
        .await?;
    expect(
        ws,
        |f| matches!(f, Inbound::Receipt { id } if *id == receipt.as_bytes()),
    )
    .await
}

/// Reads until a frame `want` accepts; ERROR or the end of the connection is an error.
pub async fn expect(ws: &mut Ws, want: impl Fn(&Inbound<'_>) -> bool) -> Result<(), ConnError> {
    loop {
        let Incoming::Data(bytes) = ws.next().await? else {
            return Err(ConnError::Closed);
        };
        match wire::classify(bytes) {
            Inbound::Error { message } => return Err(ConnError::Stomp(message)),
            f if want(&f) => return Ok(()),
            _ => {}
        }
    }
}

/// Opens every connection of `specs` with at most `concurrency` handshakes in flight. Results
/// come back in the order of `specs`; `opened` counts successes as they happen (for progress).
pub async fn open_all(
    dialer: Dialer,
    specs: Vec<Spec>,
    concurrency: usize,
    opened: Arc<AtomicU64>,
) -> Vec<Result<Ws, ConnError>> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    let count = specs.len();
    for (slot, spec) in specs.into_iter().enumerate() {
        let permits = permits.clone();
        let opened = opened.clone();
        set.spawn(async move {
            // The semaphore is never closed, so a permit always comes.
            let _permit = permits.acquire_owned().await.ok();
            let r = dialer.session(&spec).await;
            if r.is_ok() {
                opened.fetch_add(1, Ordering::Relaxed);
            }
            (slot, r)
        });
    }
    let mut out: Vec<Option<Result<Ws, ConnError>>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((slot, r)) => out[slot] = Some(r),
            // A panicked task leaves its slot empty; it is reported below.
            Err(e) => eprintln!("chat-load: a connection task failed: {e}"),
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ConnError::Task("panicked".into()))))
        .collect()
}

/// Splits results into the open connections and a summary of the failures (count, first).
pub fn successes(results: Vec<Result<Ws, ConnError>>) -> (Vec<Ws>, Failures) {
    let mut ok = Vec::with_capacity(results.len());
    let mut failed = Failures::default();
    for r in results {
        match r {
            Ok(ws) => ok.push(ws),
            Err(e) => failed.add(e),
        }
    }
    (ok, failed)
}

/// Connections that could not be opened.
#[derive(Debug, Default)]
pub struct Failures {
    pub count: u64,
    pub first: Option<ConnError>,
}

impl Failures {
    fn add(&mut self, e: ConnError) {
        self.count += 1;
        self.first.get_or_insert(e);
    }
}

impl std::fmt::Display for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.first {
            Some(e) => write!(f, "{} connection(s) failed, the first: {e}", self.count),
            None => write!(f, "no connection failed"),
        }
    }
}

/// Why this process cannot hold the connections asked for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapacityError {
    #[error(
        "{connections} connections need about {needed} open files, but this process may open \
         at most {limit} (the hard RLIMIT_NOFILE): run several chat-load processes"
    )]
    Files {
        connections: u64,
        needed: u64,
        limit: u64,
    },
    #[error(
        "{per_source} connections from one source address exceed the {ports} ephemeral ports \
         ({range}): raise --source-ips"
    )]
    Ports {
        per_source: u64,
        ports: u64,
        range: String,
    },
}

/// Raises the soft open-files limit to the hard one; an error if `connections` will not fit.
pub fn raise_nofile(connections: u64) -> Result<u64, CapacityError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = connections + FD_HEADROOM;
    let raised = getrlimit(Resource::RLIMIT_NOFILE).and_then(|(soft, hard)| {
        if soft < hard {
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        }
        Ok(hard)
    });
    let limit = match raised {
        Ok(limit) => limit,
        // Could not even read it: say so, and let the connections show what fits.
        Err(e) => {
            eprintln!("chat-load: cannot raise RLIMIT_NOFILE: {e}");
            return Ok(needed);
        }
    };
    if needed > limit {
        return Err(CapacityError::Files {
            connections,
            needed,
            limit,
        });
    }
    Ok(limit)
}

/// Checks that `connections` spread over `source_ips` addresses fit the ephemeral port range.
pub fn check_ports(connections: u64, source_ips: u8) -> Result<(), CapacityError> {
    let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return Ok(());
    };
    ports_fit(connections, source_ips, &range)
}

fn ports_fit(connections: u64, source_ips: u8, range: &str) -> Result<(), CapacityError> {
    let mut bounds = range
        .split_whitespace()
        .filter_map(|p| p.parse::<u64>().ok());
    let (Some(lo), Some(hi)) = (bounds.next(), bounds.next()) else {
        return Ok(());
    };
    let ports = hi.saturating_sub(lo) + 1;
    let per_source = connections.div_ceil(u64::from(source_ips.max(1)));
    if per_source > ports {
        return Err(CapacityError::Ports {
            per_source,
            ports,
            range: format!("{lo}-{hi}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_rotate_over_the_source_addresses() {
        let d = Dialer { source_ips: 3 };
        let ips: Vec<_> = (0..4).map(|i| d.source(i).unwrap().to_string()).collect();
        assert_eq!(ips, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]);
        assert_eq!(Dialer { source_ips: 1 }.source(5), None);
        assert_eq!(
            Dialer { source_ips: 254 }.source(253).unwrap().to_string(),
            "127.0.0.254"
        );
    }

    #[test]
    fn too_many_connections_per_source_address_are_refused() {
        assert_eq!(ports_fit(28_232, 1, "32768\t60999\n"), Ok(()));
        assert!(matches!(
            ports_fit(40_000, 1, "32768\t60999\n"),
            Err(CapacityError::Ports {
                per_source: 40_000,
                ports: 28_232,
                ..
            })
        ));
        assert_eq!(ports_fit(40_000, 2, "32768\t60999\n"), Ok(()));
        assert_eq!(ports_fit(40_000, 1, "garbage"), Ok(()));
    }

    #[tokio::test]
    async fn urls_resolve_to_socket_addresses() {
        let t = Target::resolve("ws://127.0.0.1:8080/ws").await.unwrap();
        assert_eq!(t.addr.to_string(), "127.0.0.1:8080");
        let t = Target::resolve("ws://[::1]:9/ws").await.unwrap();
        assert_eq!(t.addr.to_string(), "[::1]:9");
        assert!(matches!(
            Target::resolve("wss://127.0.0.1/ws").await,
            Err(ConnError::Url { .. })
        ));
    }
}
