//! Harness for end-to-end tests: the real server in-process on a free loopback port (or as a
//! process), and a STOMP-over-WebSocket test client that speaks raw frames.
//!
//! Every wait here is bounded, so a broken server fails a test instead of hanging it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod certs;
pub mod http;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod topology;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use chat_server::{AppState, Config, Server};
use chat_wire::stomp::{Command, Decoded, Decoder, Frame, Limits, encode};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expectation waits.
pub const WAIT: Duration = Duration::from_secs(5);

/// The real server, in this process, on 127.0.0.1 and a free port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), chat_server::ServerError>>>,
}

impl TestServer {
    pub async fn start(mut config: Config) -> TestServer {
        config.listen_addr = "127.0.0.1:0".parse().unwrap();
        let server = Server::bind(config).await.expect("server binds");
        let addr = server.local_addr();
        let state = server.state();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            state,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// In-memory, anonymous, defaults otherwise.
    pub async fn memory() -> TestServer {
        TestServer::start(Config::for_tests()).await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts the drain and waits until the server has stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("server stops")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A STOMP client over a real WebSocket, frame by frame.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    decoder: Decoder,
    buf: BytesMut,
    frames: VecDeque<Frame>,
    pub heartbeats: usize,
    pub close: Option<Option<CloseFrame>>,
    pub protocol: Option<String>,
}

impl Client {
    /// Opens the WebSocket offering the STOMP subprotocols.
    pub async fn open(url: &str) -> Client {
        Client::open_with(url, &["v12.stomp", "v11.stomp", "v10.stomp"], None)
            .await
            .expect("websocket opens")
    }

    pub async fn open_with(
        url: &str,
        protocols: &[&str],
        origin: Option<&str>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut req = url.into_client_request()?;
        if !protocols.is_empty() {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(&protocols.join(", ")).unwrap(),
            );
        }
        if let Some(o) = origin {
            req.headers_mut()
                .insert("Origin", HeaderValue::from_str(o).unwrap());
        }
        let (ws, resp) = tokio_tungstenite::connect_async_with_config(req, None, true).await?;
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Client {
            ws,
            decoder: Decoder::new(Limits {
                max_frame_bytes: 16 << 20,
                max_headers: 10_000,
                max_header_line_bytes: 1 << 20,
            }),
            buf: BytesMut::new(),
            frames: VecDeque::new(),
            heartbeats: 0,
            close: None,
            protocol,
        })
    }

    /// Opens and sends CONNECT with `headers`; returns the client and the CONNECTED frame.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> (Client, Frame) {
        let mut c = Client::open(url).await;
        let f = c.stomp_connect(headers).await;
        assert_eq!(
            f.command,
            Command::Connected,
            "expected CONNECTED, got {f:?}"
        );
        (c, f)
    }

    /// Connects anonymously as `login`.
    pub async fn login(url: &str, login: &str) -> Client {
        Client::connect(url, &[("login", login)]).await.0
    }

    /// Connects anonymously as `login` without panicking: `None` if the WebSocket or the
    /// CONNECTED reply doesn't come within `wait` (what a client does while an instance is down).
    pub async fn try_login(url: &str, login: &str, wait: Duration) -> Option<Client> {
        let attempt = async {
            let mut c = Client::open_with(url, &["v12.stomp"], None).await.ok()?;
            c.send_frame(&connect_frame(&[("login", login)])).await;
            let reply = c.read_raw().await?;
            (reply.command == Command::Connected).then_some(c)
        };
        tokio::time::timeout(wait, attempt).await.ok().flatten()
    }

    pub async fn stomp_connect(&mut self, headers: &[(&str, &str)]) -> Frame {
        self.send_frame(&connect_frame(headers)).await;
        self.next_frame().await.expect("a reply to CONNECT")
    }

    pub async fn send_frame(&mut self, frame: &Frame) {
        let mut out = BytesMut::new();
        encode(frame, &mut out);
        self.send_raw(&out).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let msg = match std::str::from_utf8(bytes) {
            Ok(s) => Message::text(s),
            Err(_) => Message::binary(bytes.to_vec()),
        };
        let _ = self.ws.send(msg).await;
    }

    pub async fn send_message(&mut self, msg: Message) {
        let _ = self.ws.send(msg).await;
    }

    pub async fn subscribe(&mut self, id: &str, dest: &str, extra: &[(&str, &str)]) {
        let receipt = format!("sub-{id}");
        let mut f = Frame::new(Command::Subscribe)
            .with_header("id", id)
            .with_header("destination", dest)
            .with_header("receipt", receipt.clone());
        for (k, v) in extra {
            f = f.with_header(*k, *v);
        }
        self.send_frame(&f).await;
        self.wait_receipt(&receipt).await;
    }

    pub async fn unsubscribe(&mut self, id: &str) {
        let receipt = format!("unsub-{id}");
        self.send_frame(
            &Frame::new(Command::Unsubscribe)
                .with_header("id", id)
                .with_header("receipt", receipt.clone()),
        )
        .await;
        self.wait_receipt(&receipt).await;
    }

    /// SENDs `body` to `dest` and waits for its RECEIPT (frames arriving meanwhile are kept).
    pub async fn send(&mut self, dest: &str, body: &str) {
        self.send_with(dest, body, &[]).await;
    }

    pub async fn send_with(&mut self, dest: &str, body: &str, extra: &[(&str, &str)]) {
        let receipt = format!("r-{}", rand_id());
        let mut f = Frame::new(Command::Send)
            .with_header("destination", dest)
            .with_header("receipt", receipt.clone());
        for (k, v) in extra {
            f = f.with_header(*k, *v);
        }
        self.send_frame(&f.with_body(body.as_bytes().to_vec()))
            .await;
        self.wait_receipt(&receipt).await;
    }

    /// SENDs and waits for the RECEIPT; `Err` with the ERROR frame (or `None` if the connection
    /// ended) instead of panicking.
    pub async fn try_send(
        &mut self,
        dest: &str,
        body: &str,
        wait: Duration,
    ) -> Result<(), Option<Frame>> {
        let receipt = format!("r-{}", rand_id());
        let f = Frame::new(Command::Send)
            .with_header("destination", dest)
            .with_header("receipt", receipt.clone());
        self.send_frame(&f.with_body(body.as_bytes().to_vec()))
            .await;
        let result = tokio::time::timeout(wait, async {
            loop {
                let Some(f) = self.read_raw().await else {
                    return Err(None);
                };
                match f.command {
                    Command::Receipt if f.header("receipt-id") == Some(receipt.as_str()) => {
                        return Ok(());
                    }
                    Command::Error => return Err(Some(f)),
                    _ => self.frames.push_back(f),
                }
            }
        })
        .await;
        result.unwrap_or(Err(None))
    }

    /// Waits for RECEIPT `id`; other frames are kept for `next_frame`. Panics on ERROR.
    pub async fn wait_receipt(&mut self, id: &str) {
        let mut kept = VecDeque::new();
        loop {
            let f = self
                .read_one()
                .await
                .unwrap_or_else(|| panic!("connection ended waiting for receipt {id}"));
            match f.command {
                Command::Receipt if f.header("receipt-id") == Some(id) => break,
                Command::Error => panic!("ERROR waiting for receipt {id}: {f:?}"),
                _ => kept.push_back(f),
            }
        }
        kept.extend(self.frames.drain(..));
        self.frames = kept;
    }

    /// The next frame (kept ones first), or `None` if the connection ended. Panics after WAIT.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        if let Some(f) = self.frames.pop_front() {
            return Some(f);
        }
        self.read_one().await
    }

    /// The receipts `r{i}` of a `send_run` over `range`, each the next frame, in order.
    pub async fn expect_run_receipts(&mut self, range: std::ops::Range<usize>) {
        for i in range {
            let f = self.next_frame().await.expect("a receipt");
            assert_eq!(
                f.header("receipt-id"),
                Some(format!("r{i}").as_str()),
                "{f:?}"
            );
        }
    }

    /// The next frame within `wait`, `Err` on timeout.
    pub async fn next_frame_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Frame>, tokio::time::error::Elapsed> {
        if let Some(f) = self.frames.pop_front() {
            return Ok(Some(f));
        }
        tokio::time::timeout(wait, self.read_raw()).await
    }

    async fn read_one(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, self.read_raw())
            .await
            .expect("a frame within the wait")
    }

    async fn read_raw(&mut self) -> Option<Frame> {
        loop {
            match self
                .decoder
                .decode(&mut self.buf)
                .expect("server frames decode")
            {
                Some(Decoded::Frame(f)) => return Some(f),
                Some(Decoded::Heartbeat) => {
                    self.heartbeats += 1;
                    continue;
                }
                None => {}
            }
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => self.buf.extend_from_slice(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(Message::Close(c))) => {
                    self.close = Some(c);
                    return None;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next MESSAGE frame; panics on ERROR or end.
    pub async fn next_message(&mut self) -> Frame {
        loop {
            let f = self
                .next_frame()
                .await
                .expect("a MESSAGE, not the end of the connection");
            match f.command {
                Command::Message => return f,
                Command::Error => panic!("ERROR instead of MESSAGE: {f:?}"),
                _ => {}
            }
        }
    }

    /// The next MESSAGE's JSON body.
    pub async fn next_event(&mut self) -> serde_json::Value {
        body(&self.next_message().await)
    }

    /// Expects an ERROR frame, then the close; returns the ERROR.
    pub async fn expect_error(&mut self) -> Frame {
        loop {
            let f = self
                .next_frame()
                .await
                .expect("an ERROR frame before the close");
            if f.command == Command::Error {
                let end = tokio::time::timeout(WAIT, async {
                    while let Some(f) = self.next_frame().await {
                        assert_ne!(f.command, Command::Message, "nothing after ERROR");
                    }
                })
                .await;
                assert!(end.is_ok(), "the connection closes after ERROR");
                return f;
            }
        }
    }

    /// Waits until the server ends the connection; returns the close frame if there was one.
    pub async fn expect_closed(&mut self) -> Option<CloseFrame> {
        tokio::time::timeout(Duration::from_secs(15), async {
            while self.next_frame_any().await.is_some() {}
        })
        .await
        .expect("the server closes the connection");
        self.close.clone().flatten()
    }

    /// Reads whatever arrives for `dur` and returns the longest silence between two WebSocket
    /// messages (heart-beats or frames).
    pub async fn longest_silence(&mut self, dur: Duration) -> Duration {
        let end = tokio::time::Instant::now() + dur;
        let mut last = tokio::time::Instant::now();
        let mut longest = Duration::ZERO;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(end, self.ws.next()).await {
            let now = tokio::time::Instant::now();
            longest = longest.max(now - last);
            last = now;
        }
        longest.max(end - last)
    }

    /// Reads everything the server sent until the end; `true` if the connection did end.
    pub async fn expect_closed_or_error(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(15), async {
            while self.next_frame_any().await.is_some() {}
        })
        .await
        .is_ok()
    }

    async fn next_frame_any(&mut self) -> Option<Frame> {
        if let Some(f) = self.frames.pop_front() {
            return Some(f);
        }
        self.read_raw().await
    }

    /// Asserts no MESSAGE arrives within `wait`.
    pub async fn expect_quiet(&mut self, wait: Duration) {
        if let Ok(Some(f)) = self.next_frame_within(wait).await {
            panic!("expected nothing, got {f:?}");
        }
    }

    pub async fn disconnect(mut self) {
        let r = "bye";
        self.send_frame(&Frame::new(Command::Disconnect).with_header("receipt", r))
            .await;
        self.wait_receipt(r).await;
    }
}

/// A STOMP 1.2 CONNECT with `headers` added.
fn connect_frame(headers: &[(&str, &str)]) -> Frame {
    let mut f = Frame::new(Command::Connect)
        .with_header("accept-version", "1.2")
        .with_header("host", "localhost");
    for (k, v) in headers {
        f = f.with_header(*k, *v);
    }
    f
}

/// SEND frames `m{i}` with receipts `r{i}`, one after another in one buffer: sent as one
/// WebSocket message, they reach the server together (a run the broker gets as one batch).
pub fn send_run(range: std::ops::Range<usize>, dest: impl Fn(usize) -> String) -> Vec<u8> {
    let mut out = BytesMut::new();
    for i in range {
        let f = Frame::new(Command::Send)
            .with_header("destination", dest(i))
            .with_header("receipt", format!("r{i}"))
            .with_body(format!("m{i}").into_bytes());
        encode(&f, &mut out);
    }
    out.to_vec()
}

pub fn body(f: &Frame) -> serde_json::Value {
    serde_json::from_slice(&f.body).unwrap_or_else(|e| panic!("JSON body ({e}): {f:?}"))
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Makes an HS256 token with the given claims.
pub fn hs256_token(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
