//! The few STOMP frames chat-load writes, and a cheap look at the frames it reads.
//!
//! Pure bytes in, bytes out, no socket. Reading never runs the full codec: a server frame is
//! told apart by its command line, and of a MESSAGE only the header lines (up to the first blank
//! line) are looked at, in one pass, for the first `x-t` and `x-seq` (the first occurrence of a
//! repeated header is the one that counts in STOMP 1.2). Bodies are never looked at.

use std::fmt::Write as _;

/// The `x-seq` publisher number of the closing message; its sequence part names the publisher.
pub const DONE: u64 = 999_999;

/// What one WebSocket message from the server was.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A MESSAGE with its publish time and `(publisher, number)`, when it carried them.
    Message {
        t: Option<u64>,
        seq: Option<(u64, u64)>,
    },
    Receipt {
        id: &'a [u8],
    },
    Connected,
    /// An ERROR frame and its `message` header.
    Error {
        message: String,
    },
    Heartbeat,
    Other,
}

/// Reads the command and, for the frames chat-load cares about, the headers it needs.
pub fn classify(frame: &[u8]) -> Inbound<'_> {
    let mut lines = frame.split(|b| *b == b'\n').map(trim_cr);
    let command = lines.next().unwrap_or_default();
    // Everything up to the first blank line: the body is never scanned.
    let mut headers = lines.take_while(|l| !l.is_empty());
    match command {
        // The hot path (once per delivery): one pass over the header lines, no line splitting.
        b"MESSAGE" => message(frame),
        b"RECEIPT" => Inbound::Receipt {
            id: headers
                .find_map(|l| l.strip_prefix(b"receipt-id:"))
                .unwrap_or_default(),
        },
        b"CONNECTED" => Inbound::Connected,
        b"ERROR" => Inbound::Error {
            message: headers
                .find_map(|l| l.strip_prefix(b"message:"))
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default(),
        },
        b"" if frame.iter().all(|b| matches!(b, b'\n' | b'\r')) => Inbound::Heartbeat,
        _ => Inbound::Other,
    }
}

/// A MESSAGE's first `x-t` and `x-seq`: each newline up to the blank line that ends the
/// headers is looked at for the header that starts after it.
fn message(frame: &[u8]) -> Inbound<'_> {
    let (mut t, mut seq) = (None, None);
    for at in memchr::memchr_iter(b'\n', frame) {
        let line = &frame[at + 1..];
        match line.first() {
            None | Some(b'\n') => break,
            Some(b'\r') if line.get(1) == Some(&b'\n') => break,
            Some(b'x') => {
                if t.is_none()
                    && let Some(v) = line.strip_prefix(b"x-t:")
                {
                    t = Some(value(v));
                } else if seq.is_none()
                    && let Some(v) = line.strip_prefix(b"x-seq:")
                {
                    seq = Some(value(v));
                }
                if t.is_some() && seq.is_some() {
                    break;
                }
            }
            _ => {}
        }
    }
    Inbound::Message {
        t: t.and_then(parse_u64),
        seq: seq.and_then(parse_seq),
    }
}

/// A header's value: `v` up to the end of its line.
fn value(v: &[u8]) -> &[u8] {
    let end = memchr::memchr(b'\n', v).unwrap_or(v.len());
    trim_cr(&v[..end])
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| match d {
        b'0'..=b'9' => Some(n * 10 + u64::from(d - b'0')),
        _ => None,
    })
}

/// `p.n` as two numbers.
fn parse_seq(v: &[u8]) -> Option<(u64, u64)> {
    let dot = v.iter().position(|b| *b == b'.')?;
    Some((parse_u64(&v[..dot])?, parse_u64(&v[dot + 1..])?))
}

/// CONNECT as `login`, with heart-beats off: an idle connection then needs no attention.
pub fn connect(login: &str) -> String {
    format!("CONNECT\naccept-version:1.2\nhost:localhost\nlogin:{login}\nheart-beat:0,0\n\n\0")
}

/// SUBSCRIBE `id` to a room's topic, confirmed by RECEIPT `receipt`.
pub fn subscribe(id: usize, room: &str, presence: bool, receipt: &str) -> String {
    format!(
        "SUBSCRIBE\nid:{id}\ndestination:/topic/room/{room}\nx-presence:{presence}\nreceipt:{receipt}\n\n\0"
    )
}

/// One SEND of a load message: publish time `t` (µs), sequence `p.n`, an optional receipt.
#[derive(Debug, Clone, Copy)]
pub struct Send<'a> {
    pub room: &'a str,
    pub t: u64,
    pub publisher: u64,
    pub n: u64,
    pub receipt: Option<u64>,
    pub body: &'a str,
}

impl Send<'_> {
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(96 + self.room.len() + self.body.len());
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "SEND\ndestination:/app/room/{}\nx-t:{}\nx-seq:{}.{}\n",
            self.room, self.t, self.publisher, self.n
        );
        if let Some(r) = self.receipt {
            let _ = writeln!(s, "receipt:{r}");
        }
        s.push('\n');
        s.push_str(self.body);
        s.push('\0');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use chat_wire::stomp::{Decoded, Decoder, Limits};

    fn decode(text: &str) -> chat_wire::stomp::Frame {
        let mut buf = BytesMut::from(text.as_bytes());
        match Decoder::new(Limits::default()).decode(&mut buf).unwrap() {
            Some(Decoded::Frame(f)) => f,
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn a_message_yields_its_time_and_sequence_from_the_header_block() {
        let f = "MESSAGE\nsubscription:0\ndestination:/topic/room/r\nx-offset:7\n\
                 x-t:123456\nx-seq:3.42\n\n{\"content\":\"x-t:1\\nx-seq:9.9\"}\0";
        assert_eq!(
            classify(f.as_bytes()),
            Inbound::Message {
                t: Some(123_456),
                seq: Some((3, 42))
            }
        );
    }

    #[test]
    fn headers_in_the_body_are_not_read() {
        let f = "MESSAGE\nsubscription:0\n\nx-t:1\nx-seq:2.3\n\0";
        assert_eq!(
            classify(f.as_bytes()),
            Inbound::Message { t: None, seq: None }
        );
    }

    #[test]
    fn the_first_of_repeated_headers_counts() {
        let f = "MESSAGE\nx-seq:1.2\nx-t:5\nx-seq:9.9\nx-t:6\n\n\0";
        assert_eq!(
            classify(f.as_bytes()),
            Inbound::Message {
                t: Some(5),
                seq: Some((1, 2))
            }
        );
    }

    #[test]
    fn malformed_numbers_are_absent_not_wrong() {
        let f = "MESSAGE\nx-t:12a\nx-seq:1-2\n\n\0";
        assert_eq!(
            classify(f.as_bytes()),
            Inbound::Message { t: None, seq: None }
        );
        assert_eq!(parse_u64(b"99999999999999999999"), None);
        assert_eq!(parse_seq(b"1."), None);
    }

    #[test]
    fn receipts_errors_and_heartbeats_are_recognised() {
        assert_eq!(
            classify(b"RECEIPT\nreceipt-id:17\n\n\0"),
            Inbound::Receipt { id: b"17" }
        );
        assert_eq!(
            classify(b"ERROR\ncontent-type:text/plain\nmessage:too fast\n\nbody\0"),
            Inbound::Error {
                message: "too fast".into()
            }
        );
        assert_eq!(
            classify(b"CONNECTED\nversion:1.2\n\n\0"),
            Inbound::Connected
        );
        assert_eq!(classify(b"\n"), Inbound::Heartbeat);
        assert_eq!(classify(b"\r\n"), Inbound::Heartbeat);
        assert_eq!(classify(b"NOPE\n\n\0"), Inbound::Other);
    }

    #[test]
    fn crlf_lines_are_read_too() {
        assert_eq!(
            classify(b"MESSAGE\r\nx-t:1\r\nx-seq:2.3\r\n\r\n\0"),
            Inbound::Message {
                t: Some(1),
                seq: Some((2, 3))
            }
        );
    }

    #[test]
    fn written_frames_are_valid_stomp() {
        let c = decode(&connect("load-sub-1"));
        assert_eq!(c.header("login"), Some("load-sub-1"));
        assert_eq!(c.header("heart-beat"), Some("0,0"));

        let s = decode(&subscribe(3, "load-1-0", false, "s"));
        assert_eq!(s.header("id"), Some("3"));
        assert_eq!(s.header("destination"), Some("/topic/room/load-1-0"));
        assert_eq!(s.header("x-presence"), Some("false"));
        assert_eq!(s.header("receipt"), Some("s"));

        let send = Send {
            room: "load-1-2",
            t: 77,
            publisher: 4,
            n: 9,
            receipt: Some(12),
            body: "xxxx",
        };
        let f = decode(&send.encode());
        assert_eq!(f.header("destination"), Some("/app/room/load-1-2"));
        assert_eq!(f.header("x-t"), Some("77"));
        assert_eq!(f.header("x-seq"), Some("4.9"));
        assert_eq!(f.header("receipt"), Some("12"));
        assert_eq!(&f.body[..], b"xxxx");
        let unreceipted = decode(
            &Send {
                receipt: None,
                ..send
            }
            .encode(),
        );
        assert_eq!(unreceipted.header("receipt"), None);
    }
}
