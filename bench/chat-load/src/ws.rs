//! chat-load's WebSocket connection: tungstenite does the HTTP upgrade and parses and formats
//! frame headers; after the upgrade, frames are read out of one buffer this type keeps and
//! handed out as borrowed slices.
//!
//! Why not tungstenite's own `WebSocketStream` for the frames: the load tool runs on the same
//! cores as the servers it measures, so its cost per delivery comes off their throughput.
//! Per message, tungstenite zero-fills its whole read buffer before every read, checks that
//! text is UTF-8 and makes an owned message; here a read lands in a buffer zeroed once, and a
//! message is a slice of it. chat-load only ever looks at a few ASCII headers of a frame.
//!
//! Scope: what a STOMP server sends. Server frames must be unmasked and whole (a fragmented
//! message is an error: the servers measured here never fragment); a ping is answered; a
//! close frame or the end of the stream ends the connection.

use std::hash::{BuildHasher, Hasher};
use std::io::Cursor;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::net::ConnError;

/// The read buffer's size: many small frames per read (it grows for a larger frame).
const READ_BUFFER: usize = 8 << 10;
/// tungstenite's read buffer, made for the upgrade and dropped after it.
const HANDSHAKE_BUFFER: usize = 1 << 10;
/// The largest frame accepted from a server.
const MAX_FRAME: usize = 1 << 20;

/// What the server sent next.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A text or binary message's payload.
    Data(&'a [u8]),
    /// A close frame, or the end of the stream.
    Closed,
}

/// One client WebSocket connection.
pub struct Ws<S = TcpStream> {
    stream: S,
    /// Bytes read: `rbuf[start..end]` are not yet handed out.
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// Frames fed and not yet flushed.
    wbuf: Vec<u8>,
    /// xorshift state for the masking keys a client must use.
    mask: u64,
}

impl Ws<TcpStream> {
    /// Upgrades `stream` to a WebSocket on `request` (with tungstenite's handshake).
    pub async fn upgrade(
        request: impl IntoClientRequest + Unpin,
        stream: TcpStream,
    ) -> Result<Self, ConnError> {
        // tungstenite makes a read buffer (128 KiB by default) that is never read into here.
        let config = WebSocketConfig::default().read_buffer_size(HANDSHAKE_BUFFER);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        // A STOMP server says nothing before the client's CONNECT, so no frame can have been
        // read past the upgrade response: the bare stream carries on where the handshake ended.
        Ok(Ws::new(ws.into_inner()))
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Ws<S> {
    /// A connection over `stream`, whose handshake is done.
    pub fn new(stream: S) -> Self {
        // Keys of a fresh RandomState differ per call: a seed of its own for each connection.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Ws {
            stream,
            rbuf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
            wbuf: Vec::new(),
            mask: seed | 1,
        }
    }

    /// The next message; pings are answered on the way.
    pub async fn next(&mut self) -> Result<Incoming<'_>, ConnError> {
        let (from, to) = loop {
            if let Some((header, at, len)) = self.header()? {
                if at.saturating_add(len) > MAX_FRAME {
                    return Err(ConnError::Protocol(format!("a frame of {len} bytes")));
                }
                let (from, to) = (self.start + at, self.start + at + len);
                if to <= self.end {
                    self.start = to;
                    match header.opcode {
                        OpCode::Data(Data::Text | Data::Binary) if header.is_final => {
                            break (from, to);
                        }
                        OpCode::Data(_) => {
                            return Err(ConnError::Protocol("a fragmented message".into()));
                        }
                        OpCode::Control(Control::Close) => return Ok(Incoming::Closed),
                        OpCode::Control(Control::Ping) => {
                            let payload = self.rbuf[from..to].to_vec();
                            self.frame(OpCode::Control(Control::Pong), &payload);
                            self.flush().await?;
                        }
                        OpCode::Control(_) => {}
                    }
                    continue;
                }
                self.make_room(at + len);
            } else {
                self.make_room(0);
            }
            let n = self.stream.read(&mut self.rbuf[self.end..]).await?;
            if n == 0 {
                return Ok(Incoming::Closed);
            }
            self.end += n;
        };
        Ok(Incoming::Data(&self.rbuf[from..to]))
    }

    /// The header at `start`, with its length and the payload's, if it has all arrived.
    fn header(&self) -> Result<Option<(FrameHeader, usize, usize)>, ConnError> {
        let mut cursor = Cursor::new(&self.rbuf[self.start..self.end]);
        let Some((header, len)) = FrameHeader::parse(&mut cursor)? else {
            return Ok(None);
        };
        if header.mask.is_some() {
            return Err(ConnError::Protocol("a masked frame from the server".into()));
        }
        let at = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        Ok(Some((header, at, len)))
    }

    /// Space after `end` to read into, keeping `rbuf[start..end]` and room for a frame of
    /// `frame` bytes from `start`.
    fn make_room(&mut self, frame: usize) {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.start > 0
            && (self.end == self.rbuf.len() || frame > self.rbuf.len() - self.start)
        {
            self.rbuf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let want = frame.max(self.end + 1).max(READ_BUFFER);
        if want > self.rbuf.len() {
            self.rbuf.resize(want, 0);
        }
    }

    /// Queues a text message (masked, as a client's must be); `flush` writes what is queued.
    pub fn feed(&mut self, text: &str) {
        self.frame(OpCode::Data(Data::Text), text.as_bytes());
    }

    fn frame(&mut self, opcode: OpCode, payload: &[u8]) {
        // xorshift64: masking keys only need to differ, not to be secret, on loopback.
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 7;
        self.mask ^= self.mask << 17;
        let key = (self.mask as u32).to_ne_bytes();
        let header = FrameHeader {
            opcode,
            mask: Some(key),
            ..FrameHeader::default()
        };
        // Formatting into a Vec cannot fail.
        let _ = header.format(payload.len() as u64, &mut self.wbuf);
        self.wbuf
            .extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    }

    pub async fn flush(&mut self) -> Result<(), ConnError> {
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    /// `feed` and `flush`.
    pub async fn send(&mut self, text: &str) -> Result<(), ConnError> {
        self.feed(text);
        self.flush().await
    }

    /// Sends a close frame and ends the stream (without waiting for the server's answer).
    pub async fn close(&mut self) -> Result<(), ConnError> {
        self.frame(OpCode::Control(Control::Close), &[]);
        self.flush().await?;
        self.stream.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// Our client on one end of a pipe, tungstenite's server on the other.
    async fn pair() -> (
        Ws<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        (Ws::new(a), server)
    }

    async fn data(ws: &mut Ws<tokio::io::DuplexStream>) -> Vec<u8> {
        match ws.next().await.unwrap() {
            Incoming::Data(d) => d.to_vec(),
            Incoming::Closed => panic!("closed"),
        }
    }

    #[tokio::test]
    async fn frames_of_every_length_form_arrive_whole_and_in_order() {
        let (mut ws, mut server) = pair().await;
        // 7-bit, 16-bit and 64-bit lengths, and one larger than the read buffer.
        let sizes = [0, 1, 125, 126, 65_535, 65_536, 3 * READ_BUFFER + 5, 200];
        for (i, n) in sizes.iter().enumerate() {
            let text = char::from(b'a' + i as u8).to_string().repeat(*n);
            server.feed(Message::text(text)).await.unwrap();
        }
        server.flush().await.unwrap();
        for (i, n) in sizes.iter().enumerate() {
            let got = data(&mut ws).await;
            assert_eq!(got.len(), *n, "frame {i}");
            assert!(got.iter().all(|b| *b == b'a' + i as u8), "frame {i}");
        }
    }

    #[tokio::test]
    async fn frames_split_across_reads_are_put_back_together() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut ws = Ws::new(a);
        let writer = tokio::spawn(async move {
            let mut bytes = Vec::new();
            for i in 0..50u8 {
                let body = vec![b'0' + i % 10; 40 + usize::from(i) * 7];
                let h = FrameHeader {
                    opcode: OpCode::Data(Data::Text),
                    ..FrameHeader::default()
                };
                h.format(body.len() as u64, &mut bytes).unwrap();
                bytes.extend(body);
            }
            // One byte at a time at first, then in odd chunks.
            for (k, chunk) in bytes.chunks(13).enumerate() {
                if k < 20 {
                    for b1 in chunk {
                        b.write_all(&[*b1]).await.unwrap();
                    }
                } else {
                    b.write_all(chunk).await.unwrap();
                }
            }
            b
        });
        for i in 0..50u8 {
            let got = data(&mut ws).await;
            assert_eq!(
                got,
                vec![b'0' + i % 10; 40 + usize::from(i) * 7],
                "frame {i}"
            );
        }
        drop(writer.await.unwrap());
        assert_eq!(ws.next().await.unwrap(), Incoming::Closed, "end of stream");
    }

    #[tokio::test]
    async fn what_the_client_sends_the_server_reads_unmasked() {
        let (mut ws, mut server) = pair().await;
        ws.feed("CONNECT\n\n\0");
        ws.feed(&"x".repeat(70_000));
        ws.flush().await.unwrap();
        ws.send("last").await.unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            match server.next().await.unwrap().unwrap() {
                Message::Text(t) => got.push(t.to_string()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            got,
            [
                "CONNECT\n\n\0".to_owned(),
                "x".repeat(70_000),
                "last".to_owned()
            ]
        );
        ws.close().await.unwrap();
        assert!(matches!(server.next().await, Some(Ok(Message::Close(_)))));
    }

    #[tokio::test]
    async fn a_ping_is_answered_and_a_close_ends_the_connection() {
        let (mut ws, mut server) = pair().await;
        server
            .send(Message::Ping(b"hi".to_vec().into()))
            .await
            .unwrap();
        server.send(Message::text("after")).await.unwrap();
        assert_eq!(data(&mut ws).await, b"after");
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Message::Pong(b"hi".to_vec().into())
        );
        server.close(None).await.unwrap();
        assert_eq!(ws.next().await.unwrap(), Incoming::Closed);
    }

    #[tokio::test]
    async fn masked_fragmented_and_oversized_frames_are_errors() {
        let cases: [(FrameHeader, u64, &str); 3] = [
            (
                FrameHeader {
                    opcode: OpCode::Data(Data::Text),
                    mask: Some([1, 2, 3, 4]),
                    ..FrameHeader::default()
                },
                3,
                "masked",
            ),
            (
                FrameHeader {
                    opcode: OpCode::Data(Data::Text),
                    is_final: false,
                    ..FrameHeader::default()
                },
                3,
                "fragmented",
            ),
            (
                FrameHeader {
                    opcode: OpCode::Data(Data::Binary),
                    ..FrameHeader::default()
                },
                MAX_FRAME as u64 + 1,
                "bytes",
            ),
        ];
        for (header, len, why) in cases {
            let (a, mut b) = tokio::io::duplex(1 << 10);
            let mut ws = Ws::new(a);
            let mut bytes = Vec::new();
            header.format(len, &mut bytes).unwrap();
            bytes.extend([b'x'; 3]);
            b.write_all(&bytes).await.unwrap();
            match ws.next().await {
                Err(ConnError::Protocol(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{why}: {other:?}"),
            }
        }
    }
}
