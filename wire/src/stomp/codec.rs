//! The STOMP 1.2 wire codec: bytes in, [`Decoded`] out; [`Frame`] in, bytes out.
//!
//! Keeps true:
//! - [`Decoder::decode`] consumes nothing from the buffer until a whole heart-beat or frame is
//!   there, then consumes exactly that; `Ok(None)` means "send more bytes", `Err` means the
//!   peer is broken and the connection should be closed.
//! - Each byte is looked at about once however the frame is chunked: the decoder remembers how
//!   far it scanned, and the headers it already parsed, between calls.
//! - A frame over [`Limits::max_frame_bytes`] is refused as soon as that is certain (an
//!   announced `content-length`, or that many bytes without the frame's end), so the buffer
//!   never has to hold much more than the limit; header count and line length likewise.
//! - What [`encode`] writes, the decoder reads back as the same frame (plus the
//!   `content-length` the encoder adds to a non-empty body).

use bytes::{Buf, BufMut, BytesMut};
use thiserror::Error;

use super::frame::{Command, Frame};
use super::headers;

/// Longest command on the wire (`UNSUBSCRIBE`); a longer first line is refused unseen.
const MAX_COMMAND_LEN: usize = 11;
/// How much of an unknown command an error repeats back.
const MAX_ECHOED_COMMAND: usize = 32;

/// Size limits a decoder enforces on each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole frame on the wire, from the first byte of the command to the closing NUL.
    pub max_frame_bytes: usize,
    /// Header lines per frame (repeats count).
    pub max_headers: usize,
    /// One header line, without its EOL.
    pub max_header_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_headers: 100,
            max_header_line_bytes: 8 * 1024,
        }
    }
}

/// One unit read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Frame(Frame),
    /// A bare EOL between frames.
    Heartbeat,
}

/// Why the bytes are not a STOMP 1.2 frame. Messages are meant for the client's ERROR frame.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("header line has no colon")]
    MissingHeaderColon,
    #[error("header name is empty")]
    EmptyHeaderName,
    #[error("invalid escape in header (only \\r, \\n, \\c and \\\\ are allowed)")]
    InvalidEscape,
    #[error("carriage return not followed by line feed in frame header")]
    UnexpectedCarriageReturn,
    #[error("header is not valid utf-8")]
    InvalidUtf8,
    #[error("frame larger than {limit} bytes")]
    FrameTooLarge { limit: usize },
    #[error("more than {limit} headers")]
    TooManyHeaders { limit: usize },
    #[error("header line longer than {limit} bytes")]
    HeaderTooLong { limit: usize },
    #[error("content-length is not a non-negative decimal integer")]
    BadContentLength,
    #[error("frame body not followed by NUL where content-length says it ends")]
    MissingNul,
}

/// Reads heart-beats and frames from the front of a growing buffer.
///
/// Give it the same buffer on every call, with new bytes appended at the end; it keeps offsets
/// into that buffer between calls. After an error its state is reset.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
    state: State,
}

/// Progress on the frame at the front of the buffer.
#[derive(Debug, Clone, Default)]
struct State {
    /// Bytes from the front already examined.
    scanned: usize,
    /// Where the line being scanned starts (while reading the command and headers).
    line_start: usize,
    /// Set once the command line is read.
    command: Option<Command>,
    headers: Vec<(String, String)>,
    /// Set once the blank line ending the headers is read.
    body: Option<BodyStart>,
}

#[derive(Debug, Clone, Copy)]
struct BodyStart {
    command: Command,
    offset: usize,
    content_length: Option<usize>,
}

enum Head {
    Incomplete,
    /// A bare EOL of this many bytes.
    Heartbeat(usize),
    Complete(BodyStart),
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            state: State::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Consumes one heart-beat EOL or one complete frame from the front of `buf`.
    ///
    /// `Ok(None)`: need more bytes (`buf` untouched; only scan state kept). `Err`: malformed;
    /// the connection should be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        let result = self.step(buf);
        if result.is_err() {
            self.state = State::default();
        }
        result
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        if self.state.scanned > buf.len() {
            // Not the buffer we were scanning: start over rather than trust stale offsets.
            self.state = State::default();
        }
        let body = match self.state.body {
            Some(body) => body,
            None => match self.scan_head(buf)? {
                Head::Incomplete => return Ok(None),
                Head::Heartbeat(len) => {
                    buf.advance(len);
                    self.state = State::default();
                    return Ok(Some(Decoded::Heartbeat));
                }
                Head::Complete(body) => {
                    self.state.body = Some(body);
                    self.state.scanned = body.offset;
                    body
                }
            },
        };

        let max = self.limits.max_frame_bytes;
        let nul = match body.content_length {
            // scan_head made sure offset + len + 1 <= max.
            Some(len) => {
                let nul = body.offset + len;
                match buf.get(nul) {
                    None => {
                        self.state.scanned = buf.len();
                        return Ok(None);
                    }
                    Some(0) => nul,
                    Some(_) => return Err(FrameError::MissingNul),
                }
            }
            None => {
                // A NUL at index `max` or later would make the frame longer than `max`.
                let window = buf.len().min(max);
                let from = self.state.scanned.min(window);
                match buf[from..window].iter().position(|&b| b == 0) {
                    Some(i) => from + i,
                    None if buf.len() >= max => {
                        return Err(FrameError::FrameTooLarge { limit: max });
                    }
                    None => {
                        self.state.scanned = window;
                        return Ok(None);
                    }
                }
            }
        };

        let state = std::mem::take(&mut self.state);
        let bytes = buf.split_to(nul + 1).freeze();
        Ok(Some(Decoded::Frame(Frame {
            command: body.command,
            headers: state.headers,
            body: bytes.slice(body.offset..nul),
        })))
    }

    /// Reads lines from where the last call stopped until the blank line after the headers.
    fn scan_head(&mut self, buf: &BytesMut) -> Result<Head, FrameError> {
        let limits = self.limits;
        let state = &mut self.state;
        loop {
            let max_line = match state.command {
                None => MAX_COMMAND_LEN,
                Some(_) => limits.max_header_line_bytes,
            };
            // Look no further than the longest acceptable line plus CR LF.
            let window = buf
                .len()
                .min(state.line_start.saturating_add(max_line).saturating_add(2));
            let from = state.scanned.min(window);
            let Some(i) = buf[from..window].iter().position(|&b| b == b'\n') else {
                state.scanned = window;
                if window < buf.len() {
                    // More bytes than any acceptable line, and no LF among them.
                    return Err(match state.command {
                        None => unknown_command(&buf[state.line_start..window]),
                        Some(_) => FrameError::HeaderTooLong {
                            limit: limits.max_header_line_bytes,
                        },
                    });
                }
                if buf.len() >= limits.max_frame_bytes {
                    return Err(FrameError::FrameTooLarge {
                        limit: limits.max_frame_bytes,
                    });
                }
                return Ok(Head::Incomplete);
            };
            let lf = from + i;
            let raw = &buf[state.line_start..lf];
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            state.scanned = lf + 1;
            state.line_start = lf + 1;

            let Some(command) = state.command else {
                if line.is_empty() {
                    return Ok(Head::Heartbeat(lf + 1));
                }
                state.command = Some(Command::parse(line).ok_or_else(|| unknown_command(line))?);
                check_frame_size(lf + 1, limits)?;
                continue;
            };

            if line.is_empty() {
                let offset = lf + 1;
                check_frame_size(offset, limits)?;
                let content_length = content_length(&state.headers)?;
                if let Some(len) = content_length {
                    let end = offset.checked_add(len).and_then(|n| n.checked_add(1));
                    if end.is_none_or(|end| end > limits.max_frame_bytes) {
                        return Err(FrameError::FrameTooLarge {
                            limit: limits.max_frame_bytes,
                        });
                    }
                }
                return Ok(Head::Complete(BodyStart {
                    command,
                    offset,
                    content_length,
                }));
            }
            if line.len() > limits.max_header_line_bytes {
                return Err(FrameError::HeaderTooLong {
                    limit: limits.max_header_line_bytes,
                });
            }
            if state.headers.len() >= limits.max_headers {
                return Err(FrameError::TooManyHeaders {
                    limit: limits.max_headers,
                });
            }
            state
                .headers
                .push(parse_header(line, command.escapes_headers())?);
            check_frame_size(lf + 1, limits)?;
        }
    }
}

/// The head alone ends at `head_len` and a NUL must still follow.
fn check_frame_size(head_len: usize, limits: Limits) -> Result<(), FrameError> {
    if head_len >= limits.max_frame_bytes {
        return Err(FrameError::FrameTooLarge {
            limit: limits.max_frame_bytes,
        });
    }
    Ok(())
}

fn unknown_command(line: &[u8]) -> FrameError {
    let shown = &line[..line.len().min(MAX_ECHOED_COMMAND)];
    FrameError::UnknownCommand(String::from_utf8_lossy(shown).into_owned())
}

/// Splits a header line at its first colon. A later raw colon in an escaped frame's value is
/// kept as is (the spec wants `\c`, but older clients send it raw and nothing is ambiguous).
fn parse_header(line: &[u8], escaped: bool) -> Result<(String, String), FrameError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(FrameError::MissingHeaderColon)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() {
        return Err(FrameError::EmptyHeaderName);
    }
    if escaped {
        Ok((headers::unescape(name)?, headers::unescape(value)?))
    } else {
        Ok((headers::verbatim(name)?, headers::verbatim(value)?))
    }
}

/// The first `content-length` header, if any. A value too big for `usize` is reported as
/// `usize::MAX`, which no frame limit admits.
fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, FrameError> {
    let Some((_, value)) = headers.iter().find(|(name, _)| name == "content-length") else {
        return Ok(None);
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FrameError::BadContentLength);
    }
    Ok(Some(value.bytes().fold(0usize, |n, digit| {
        n.saturating_mul(10)
            .saturating_add(usize::from(digit - b'0'))
    })))
}

/// Appends the wire form of `frame` to `out`: command, headers (escaped per 1.2, except in
/// CONNECT/CONNECTED frames, which are not escaped), blank line, body, NUL.
///
/// Adds `content-length` after the other headers for a non-empty body unless the frame already
/// carries one (which is then trusted to be right).
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    let escaped = frame.command.escapes_headers();
    let add_length = !frame.body.is_empty() && frame.header("content-length").is_none();
    let head_len: usize = frame
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 2)
        .sum();
    out.reserve(frame.command.as_str().len() + head_len + frame.body.len() + 40);

    out.put_slice(frame.command.as_str().as_bytes());
    out.put_u8(b'\n');
    for (name, value) in &frame.headers {
        if escaped {
            headers::escape_into(name, out);
            out.put_u8(b':');
            headers::escape_into(value, out);
        } else {
            headers::write_verbatim(name, true, out);
            out.put_u8(b':');
            headers::write_verbatim(value, false, out);
        }
        out.put_u8(b'\n');
    }
    if add_length {
        out.put_slice(b"content-length:");
        put_decimal(frame.body.len(), out);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.put_slice(&frame.body);
    out.put_u8(0);
}

fn put_decimal(mut n: usize, out: &mut BytesMut) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn limits(max_frame_bytes: usize, max_headers: usize, max_header_line_bytes: usize) -> Limits {
        Limits {
            max_frame_bytes,
            max_headers,
            max_header_line_bytes,
        }
    }

    /// Decodes everything `wire` holds at once, failing on an error or leftover bytes.
    fn decode_all(wire: &[u8]) -> Vec<Decoded> {
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(wire);
        let mut out = Vec::new();
        while let Some(decoded) = decoder.decode(&mut buf).unwrap() {
            out.push(decoded);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        out
    }

    fn decode_one(wire: &[u8]) -> Frame {
        match decode_all(wire).as_slice() {
            [Decoded::Frame(frame)] => frame.clone(),
            other => panic!("expected one frame, got {other:?}"),
        }
    }

    fn decode_err(wire: &[u8], limits: Limits) -> FrameError {
        let mut decoder = Decoder::new(limits);
        let mut buf = BytesMut::from(wire);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => panic!("no error, {} bytes pending", buf.len()),
                Err(err) => return err,
            }
        }
    }

    fn encoded(frame: &Frame) -> BytesMut {
        let mut out = BytesMut::new();
        encode(frame, &mut out);
        out
    }

    /// What a frame decodes back to: the encoder adds `content-length` to a non-empty body.
    fn as_received(frame: &Frame) -> Frame {
        if frame.body.is_empty() || frame.header("content-length").is_some() {
            frame.clone()
        } else {
            let len = frame.body.len().to_string();
            frame.clone().with_header("content-length", len)
        }
    }

    /// Feeds `wire` in the given chunk sizes (cycled), decoding after each chunk.
    fn decode_in_chunks(wire: &[u8], sizes: &[usize], limits: Limits) -> Vec<Decoded> {
        let mut decoder = Decoder::new(limits);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = wire;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let size = (*sizes.next().unwrap()).clamp(1, rest.len());
            buf.extend_from_slice(&rest[..size]);
            rest = &rest[size..];
            while let Some(decoded) = decoder.decode(&mut buf).unwrap() {
                out.push(decoded);
            }
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        out
    }

    #[test]
    fn a_simple_send_frame_decodes() {
        let frame = decode_one(b"SEND\ndestination:/topic/room/a\n\nhello\0");
        assert_eq!(frame.command, Command::Send);
        assert_eq!(frame.header("destination"), Some("/topic/room/a"));
        assert_eq!(&frame.body[..], b"hello");
    }

    #[test]
    fn crlf_line_endings_decode_like_lf() {
        let lf = decode_one(b"SEND\ndestination:/a\nreceipt:1\n\nbody\0");
        let crlf = decode_one(b"SEND\r\ndestination:/a\r\nreceipt:1\r\n\r\nbody\0");
        assert_eq!(lf, crlf);
    }

    #[test]
    fn a_frame_without_headers_or_body_decodes() {
        let frame = decode_one(b"DISCONNECT\n\n\0");
        assert_eq!(frame, Frame::new(Command::Disconnect));
    }

    #[test]
    fn bare_eols_are_heartbeats() {
        assert_eq!(
            decode_all(b"\n\r\n\n"),
            vec![Decoded::Heartbeat, Decoded::Heartbeat, Decoded::Heartbeat]
        );
    }

    #[test]
    fn a_lone_carriage_return_waits_for_its_line_feed() {
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"\r"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"\r");
        buf.extend_from_slice(b"\n");
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Decoded::Heartbeat)));
        assert!(buf.is_empty());
    }

    #[test]
    fn several_frames_in_one_buffer_with_heartbeats_between_decode_one_per_call() {
        let wire =
            b"\nSEND\ndestination:/a\n\none\0\n\r\nSEND\ndestination:/b\n\ntwo\0\nACK\nid:7\n\n\0";
        let decoded = decode_all(wire);
        let kinds: Vec<_> = decoded
            .iter()
            .map(|d| match d {
                Decoded::Heartbeat => "beat".to_string(),
                Decoded::Frame(f) => format!("{}:{}", f.command, String::from_utf8_lossy(&f.body)),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "beat", "SEND:one", "beat", "beat", "SEND:two", "beat", "ACK:"
            ]
        );
    }

    #[test]
    fn a_frame_split_across_three_chunks_decodes_once_complete() {
        let wire = b"SEND\ndestination:/topic/room/a\n\nhello\0";
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&wire[..7]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&wire[7..33]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(
            buf.len(),
            33,
            "nothing is consumed before the frame is complete"
        );
        buf.extend_from_slice(&wire[33..]);
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(Decoded::Frame(frame))) => frame,
            other => panic!("{other:?}"),
        };
        assert_eq!(&frame.body[..], b"hello");
        assert!(buf.is_empty());
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn frames_fed_byte_by_byte_decode_the_same_as_all_at_once() {
        let wire: &[u8] =
            b"\r\nSEND\r\ndestination:/a\r\ncontent-length:3\r\n\r\na\0b\0\nMESSAGE\nx:\\c\n\nhi\0";
        assert_eq!(
            decode_in_chunks(wire, &[1], Limits::default()),
            decode_all(wire)
        );
    }

    #[test]
    fn a_large_body_fed_byte_by_byte_decodes_once() {
        let frame = Frame::new(Command::Send)
            .with_header("destination", "/a")
            .with_body(vec![b'x'; 60_000]);
        let mut wire = encoded(&frame).to_vec();
        // Once more without content-length, so the decoder hunts for the NUL.
        wire.extend_from_slice(b"SEND\n\n");
        wire.extend_from_slice(&[b'y'; 60_000]);
        wire.push(0);
        let decoded = decode_in_chunks(&wire, &[1], Limits::default());
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0], Decoded::Frame(as_received(&frame)));
    }

    #[test]
    fn a_content_length_body_may_contain_nul_bytes() {
        let frame = decode_one(b"SEND\ncontent-length:5\n\na\0b\0c\0");
        assert_eq!(&frame.body[..], b"a\0b\0c");
    }

    #[test]
    fn a_body_without_content_length_ends_at_the_first_nul() {
        let decoded = decode_all(b"SEND\n\nab\0\n");
        assert_eq!(
            decoded,
            vec![
                Decoded::Frame(Frame::new(Command::Send).with_body(&b"ab"[..])),
                Decoded::Heartbeat
            ]
        );
    }

    #[test]
    fn a_content_length_too_short_is_a_missing_nul() {
        let err = decode_err(b"SEND\ncontent-length:2\n\nabc\0", Limits::default());
        assert_eq!(err, FrameError::MissingNul);
    }

    #[test]
    fn a_content_length_too_long_waits_for_more_bytes() {
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:9\n\nabc\0"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn a_content_length_that_is_not_a_number_is_an_error() {
        for value in ["abc", "-1", "+1", " 1", "1 ", "", "1.0", "0x10"] {
            let wire = format!("SEND\ncontent-length:{value}\n\n\0");
            let err = decode_err(wire.as_bytes(), Limits::default());
            assert_eq!(err, FrameError::BadContentLength, "value {value:?}");
        }
    }

    #[test]
    fn only_the_first_content_length_counts() {
        let frame = decode_one(b"SEND\ncontent-length:3\ncontent-length:junk\n\na\0b\0");
        assert_eq!(&frame.body[..], b"a\0b");
    }

    #[test]
    fn a_repeated_header_keeps_both_and_the_first_wins() {
        let frame = decode_one(b"MESSAGE\nfoo:World\nfoo:I am\n\n\0");
        assert_eq!(frame.header("foo"), Some("World"));
        assert_eq!(
            frame.headers,
            [
                ("foo".into(), "World".into()),
                ("foo".into(), "I am".into())
            ]
        );
    }

    #[test]
    fn escaped_headers_are_unescaped() {
        let frame = decode_one(b"SEND\na\\cb:c\\nd\\re\\\\f\n\n\0");
        assert_eq!(frame.header("a:b"), Some("c\nd\re\\f"));
    }

    #[test]
    fn a_raw_colon_in_an_escaped_value_is_kept() {
        let frame = decode_one(b"SEND\ntime:12:30\n\n\0");
        assert_eq!(frame.header("time"), Some("12:30"));
    }

    #[test]
    fn a_bad_escape_is_an_error() {
        let err = decode_err(b"SEND\nfoo:a\\tb\n\n\0", Limits::default());
        assert_eq!(err, FrameError::InvalidEscape);
    }

    #[test]
    fn connect_headers_are_not_unescaped() {
        let frame = decode_one(b"CONNECT\npasscode:a\\tb\\c:c\nhost:h\n\n\0");
        assert_eq!(frame.header("passcode"), Some("a\\tb\\c:c"));
        let frame = decode_one(b"CONNECTED\nserver:x\\ny\n\n\0");
        assert_eq!(frame.header("server"), Some("x\\ny"));
    }

    #[test]
    fn a_stomp_frame_is_escaped_like_stompjs_does() {
        let frame = decode_one(b"STOMP\nlogin:a\\cb\n\n\0");
        assert_eq!(frame.header("login"), Some("a:b"));
    }

    #[test]
    fn connect_headers_are_written_unescaped_and_others_escaped() {
        let frame = Frame::new(Command::Connect).with_header("passcode", "a:b\\c");
        assert_eq!(&encoded(&frame)[..], b"CONNECT\npasscode:a:b\\c\n\n\0");
        let frame = Frame::new(Command::Send).with_header("k:1", "a:b\\c\n");
        assert_eq!(&encoded(&frame)[..], b"SEND\nk\\c1:a\\cb\\\\c\\n\n\n\0");
    }

    #[test]
    fn a_header_line_without_a_colon_is_an_error() {
        let err = decode_err(b"SEND\ndestination\n\n\0", Limits::default());
        assert_eq!(err, FrameError::MissingHeaderColon);
    }

    #[test]
    fn an_empty_header_name_is_an_error() {
        let err = decode_err(b"SEND\n:value\n\n\0", Limits::default());
        assert_eq!(err, FrameError::EmptyHeaderName);
    }

    #[test]
    fn an_empty_header_value_is_fine() {
        let frame = decode_one(b"SEND\nreceipt:\n\n\0");
        assert_eq!(frame.header("receipt"), Some(""));
    }

    #[test]
    fn a_carriage_return_inside_a_header_line_is_an_error() {
        let err = decode_err(b"CONNECT\nlogin:a\rb\n\n\0", Limits::default());
        assert_eq!(err, FrameError::UnexpectedCarriageReturn);
        let err = decode_err(b"SEND\nlogin:ab\r\r\n\n\0", Limits::default());
        assert_eq!(err, FrameError::UnexpectedCarriageReturn);
    }

    #[test]
    fn an_unknown_command_is_an_error_that_names_it() {
        let err = decode_err(b"FOO\n\n\0", Limits::default());
        assert_eq!(err, FrameError::UnknownCommand("FOO".into()));
        assert_eq!(err.to_string(), "unknown command \"FOO\"");
        let err = decode_err(b"send\n\n\0", Limits::default());
        assert_eq!(err, FrameError::UnknownCommand("send".into()));
    }

    #[test]
    fn a_long_unknown_command_is_refused_before_its_line_ends() {
        let err = decode_err(b"GET /index.html HTTP/1.1", Limits::default());
        assert_eq!(err, FrameError::UnknownCommand("GET /index.ht".into()));
    }

    #[test]
    fn an_unknown_command_is_truncated_in_the_error() {
        let err = decode_err(&[b'X'; 200], Limits::default());
        let FrameError::UnknownCommand(shown) = err else {
            panic!("{err:?}")
        };
        assert!(shown.len() <= 32);
    }

    #[test]
    fn invalid_utf8_in_a_header_is_an_error() {
        let err = decode_err(b"SEND\nname:\xff\xfe\n\n\0", Limits::default());
        assert_eq!(err, FrameError::InvalidUtf8);
        let err = decode_err(b"CONNECT\n\xc3:x\n\n\0", Limits::default());
        assert_eq!(err, FrameError::InvalidUtf8);
    }

    #[test]
    fn a_body_need_not_be_utf8() {
        let frame = decode_one(b"SEND\n\n\xff\xfe\0");
        assert_eq!(&frame.body[..], b"\xff\xfe");
    }

    #[test]
    fn a_frame_exactly_at_the_size_limit_decodes() {
        let wire = b"SEND\n\n0123456789\0";
        let mut decoder = Decoder::new(limits(wire.len(), 10, 100));
        let mut buf = BytesMut::from(&wire[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Ok(Some(Decoded::Frame(_)))
        ));
        let wire = b"SEND\ncontent-length:10\n\n0123456789\0";
        let mut decoder = Decoder::new(limits(wire.len(), 10, 100));
        let mut buf = BytesMut::from(&wire[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Ok(Some(Decoded::Frame(_)))
        ));
    }

    #[test]
    fn a_body_past_the_frame_limit_is_too_large() {
        let wire = b"SEND\n\n01234567890\0";
        let err = decode_err(wire, limits(wire.len() - 1, 10, 100));
        assert_eq!(
            err,
            FrameError::FrameTooLarge {
                limit: wire.len() - 1
            }
        );
    }

    #[test]
    fn a_body_without_its_nul_is_too_large_once_the_limit_is_buffered() {
        let mut decoder = Decoder::new(limits(100, 10, 100));
        let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[b'x'; 93]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(None),
            "99 bytes, NUL may still come"
        );
        buf.extend_from_slice(b"x");
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::FrameTooLarge { limit: 100 })
        );
    }

    #[test]
    fn a_content_length_announcing_too_much_fails_before_the_body_arrives() {
        let mut decoder = Decoder::new(limits(1000, 10, 100));
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:1000\n\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::FrameTooLarge { limit: 1000 })
        );
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:99999999999999999999999999\n\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::FrameTooLarge { limit: 1000 })
        );
    }

    #[test]
    fn headers_that_never_end_are_too_large_once_the_limit_is_buffered() {
        let mut decoder = Decoder::new(limits(200, 1000, 100));
        let mut buf = BytesMut::from(&b"SEND\n"[..]);
        let mut result = Ok(None);
        for i in 0..100 {
            buf.extend_from_slice(format!("h{i}:v\n").as_bytes());
            result = decoder.decode(&mut buf);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(FrameError::FrameTooLarge { limit: 200 }));
        assert!(buf.len() <= 210, "buffered {} bytes", buf.len());
    }

    #[test]
    fn too_many_headers_is_an_error() {
        let ok = b"SEND\na:1\nb:2\nc:3\n\n\0";
        let mut decoder = Decoder::new(limits(1000, 3, 100));
        assert!(decoder.decode(&mut BytesMut::from(&ok[..])).is_ok());
        let err = decode_err(b"SEND\na:1\nb:2\nc:3\nd:4\n\n\0", limits(1000, 3, 100));
        assert_eq!(err, FrameError::TooManyHeaders { limit: 3 });
    }

    #[test]
    fn too_many_headers_fails_before_the_frame_ends() {
        let err = decode_err(b"SEND\na:1\na:1\na:1\n", limits(1000, 2, 100));
        assert_eq!(err, FrameError::TooManyHeaders { limit: 2 });
    }

    #[test]
    fn a_header_line_at_the_limit_is_fine_and_one_byte_more_is_too_long() {
        let line = format!("k:{}", "v".repeat(8));
        let wire = format!("SEND\r\n{line}\r\n\r\n\0");
        assert_eq!(line.len(), 10);
        let mut decoder = Decoder::new(limits(1000, 10, 10));
        assert!(matches!(
            decoder.decode(&mut BytesMut::from(wire.as_bytes())),
            Ok(Some(Decoded::Frame(_)))
        ));
        let wire = format!("SEND\n{line}v\n\n\0");
        let err = decode_err(wire.as_bytes(), limits(1000, 10, 10));
        assert_eq!(err, FrameError::HeaderTooLong { limit: 10 });
    }

    #[test]
    fn a_header_line_that_never_ends_is_too_long_early() {
        let mut decoder = Decoder::new(limits(1_000_000, 10, 100));
        let mut buf = BytesMut::from(&b"SEND\nk:"[..]);
        buf.extend_from_slice(&[b'v'; 100]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[b'v'; 100]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::HeaderTooLong { limit: 100 })
        );
    }

    #[test]
    fn the_decoder_starts_clean_after_an_error() {
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&b"SEND\nbad\n\n\0"[..]);
        assert!(decoder.decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"ACK\nid:1\n\n\0"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Ok(Some(Decoded::Frame(f))) if f.command == Command::Ack
        ));
    }

    #[test]
    fn encoding_adds_content_length_to_a_non_empty_body_only() {
        let frame = Frame::new(Command::Message).with_body(&b"hi"[..]);
        assert_eq!(&encoded(&frame)[..], b"MESSAGE\ncontent-length:2\n\nhi\0");
        let frame = Frame::new(Command::Receipt).with_header("receipt-id", "7");
        assert_eq!(&encoded(&frame)[..], b"RECEIPT\nreceipt-id:7\n\n\0");
        let frame = Frame::new(Command::Send)
            .with_header("content-length", "2")
            .with_body(&b"hi"[..]);
        assert_eq!(&encoded(&frame)[..], b"SEND\ncontent-length:2\n\nhi\0");
    }

    #[test]
    fn an_error_frame_round_trips() {
        let frame = Frame::error("bad: frame\nreally", "details\0here");
        assert_eq!(decode_one(&encoded(&frame)), as_received(&frame));
    }

    #[test]
    fn decimal_formatting_matches_std() {
        for n in [0, 1, 9, 10, 65_536, usize::MAX] {
            let mut out = BytesMut::new();
            put_decimal(n, &mut out);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
    }

    fn header_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z:\\\\\r\n é漢🦀-]{0,12}",
            any::<String>().prop_map(|s| s.chars().take(12).collect()),
        ]
    }

    fn escaped_header() -> impl Strategy<Value = (String, String)> {
        (
            header_text().prop_filter("non-empty name, not content-length", |n| {
                !n.is_empty() && n != "content-length"
            }),
            header_text(),
        )
    }

    fn verbatim_header() -> impl Strategy<Value = (String, String)> {
        (
            "[^:\r\n]{1,12}".prop_filter("not content-length", |n| n != "content-length"),
            "[^\r\n]{0,16}",
        )
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let body = prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        prop::sample::select(Command::ALL.to_vec()).prop_flat_map(move |command| {
            let header = if command.escapes_headers() {
                escaped_header().boxed()
            } else {
                verbatim_header().boxed()
            };
            (prop::collection::vec(header, 0..6), body.clone()).prop_map(move |(headers, body)| {
                Frame {
                    command,
                    headers,
                    body,
                }
            })
        })
    }

    proptest! {
        #[test]
        fn any_frame_round_trips_through_encode_and_decode(frame in arb_frame()) {
            prop_assert_eq!(decode_one(&encoded(&frame)), as_received(&frame));
        }

        #[test]
        fn frames_and_heartbeats_in_random_chunks_decode_to_the_same_sequence(
            items in prop::collection::vec(
                prop_oneof![1 => Just(None), 3 => arb_frame().prop_map(Some)],
                1..6,
            ),
            crlf in any::<bool>(),
            sizes in prop::collection::vec(1usize..40, 1..8),
        ) {
            let mut wire = BytesMut::new();
            let mut expected = Vec::new();
            for item in &items {
                match item {
                    None => {
                        wire.put_slice(if crlf { b"\r\n" } else { b"\n" });
                        expected.push(Decoded::Heartbeat);
                    }
                    Some(frame) => {
                        encode(frame, &mut wire);
                        expected.push(Decoded::Frame(as_received(frame)));
                    }
                }
            }
            prop_assert_eq!(decode_in_chunks(&wire, &sizes, Limits::default()), expected);
        }

        #[test]
        fn decoding_random_bytes_never_panics(
            prefix in prop::sample::select(vec!["", "SEND\n", "CONNECT\n", "MESSAGE\r\n", "\n"]),
            bytes in prop::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    prop::sample::select(b"\0\n\r:\\cnrt0123456789-content-length".to_vec()),
                ],
                0..300,
            ),
            small in any::<bool>(),
            sizes in prop::collection::vec(1usize..50, 1..5),
        ) {
            let limits = if small { limits(64, 3, 16) } else { Limits::default() };
            let mut decoder = Decoder::new(limits);
            let mut buf = BytesMut::new();
            let mut input = prefix.as_bytes().to_vec();
            input.extend_from_slice(&bytes);
            let mut rest = &input[..];
            let mut sizes = sizes.iter().cycle();
            'feed: while !rest.is_empty() {
                let size = (*sizes.next().unwrap()).min(rest.len());
                buf.extend_from_slice(&rest[..size]);
                rest = &rest[size..];
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(Decoded::Frame(frame))) => {
                            let mut again = Decoder::new(Limits::default());
                            let mut wire = encoded(&frame);
                            prop_assert_eq!(
                                again.decode(&mut wire),
                                Ok(Some(Decoded::Frame(as_received(&frame))))
                            );
                        }
                        Ok(Some(Decoded::Heartbeat)) => {}
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }
}
