//! STOMP 1.2 commands and frames as plain values.
//!
//! A [`Frame`] holds header names and values already unescaped, in the order they came, repeats
//! included; [`Frame::header`] applies the 1.2 rule that the first occurrence of a repeated
//! header wins. Nothing here knows about bytes on the wire: see [`super::codec`] for that.

use std::fmt;

use bytes::Bytes;

/// A STOMP 1.2 command: the 11 a client sends and the 4 a server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    /// Every command, client commands first.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as written on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// The command spelled exactly (case-sensitive, no surrounding white space) by `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<Command> {
        let command = match bytes {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"CONNECTED" => Command::Connected,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        };
        Some(command)
    }

    /// Whether a client sends this command (the other four come from the server).
    pub fn is_client(&self) -> bool {
        !matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }

    /// Whether this frame's headers are escaped on the wire. STOMP 1.2 leaves CONNECT and
    /// CONNECTED unescaped for 1.0 compatibility; STOMP is escaped, as `@stomp/stompjs` does.
    pub fn escapes_headers(&self) -> bool {
        !matches!(self, Command::Connect | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame: a command, headers in wire order (unescaped), and a binary body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and an empty body.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// The value of header `name` (case-sensitive); if it is repeated, the first one.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Appends a header (an earlier header of the same name still wins).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// An ERROR frame: `message` says briefly what went wrong, `detail` is the plain-text body.
    pub fn error(message: &str, detail: &str) -> Frame {
        Frame::new(Command::Error)
            .with_header("message", message)
            .with_header("content-type", "text/plain")
            .with_body(Bytes::copy_from_slice(detail.as_bytes()))
    }
}

/// The value of header `name` in `headers` (case-sensitive); if it is repeated, the first one.
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Reads a `heart-beat` value, two whole numbers `x,y` in milliseconds.
pub fn parse_heart_beat(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_parses_from_its_own_spelling() {
        for command in Command::ALL {
            assert_eq!(Command::parse(command.as_str().as_bytes()), Some(command));
            assert_eq!(command.to_string(), command.as_str());
        }
    }

    #[test]
    fn command_parsing_is_exact_and_case_sensitive() {
        assert_eq!(Command::parse(b"send"), None);
        assert_eq!(Command::parse(b"SEND "), None);
        assert_eq!(Command::parse(b" SEND"), None);
        assert_eq!(Command::parse(b"SEND\r"), None);
        assert_eq!(Command::parse(b""), None);
    }

    #[test]
    fn there_are_eleven_client_commands_and_four_server_commands() {
        let client = Command::ALL.iter().filter(|c| c.is_client()).count();
        assert_eq!(client, 11);
        assert_eq!(Command::ALL.len() - client, 4);
        assert!(Command::Stomp.is_client());
        assert!(!Command::Message.is_client());
    }

    #[test]
    fn only_connect_and_connected_leave_headers_unescaped() {
        let unescaped: Vec<_> = Command::ALL
            .iter()
            .filter(|c| !c.escapes_headers())
            .collect();
        assert_eq!(unescaped, [&Command::Connect, &Command::Connected]);
    }

    #[test]
    fn the_first_of_a_repeated_header_wins() {
        let frame = Frame::new(Command::Send)
            .with_header("destination", "/topic/room/a")
            .with_header("destination", "/topic/room/b");
        assert_eq!(frame.header("destination"), Some("/topic/room/a"));
        assert_eq!(frame.header("Destination"), None);
        assert_eq!(frame.headers.len(), 2);
    }

    #[test]
    fn an_error_frame_carries_message_content_type_and_detail() {
        let frame = Frame::error("bad frame", "line 3 has no colon");
        assert_eq!(frame.command, Command::Error);
        assert_eq!(frame.header("message"), Some("bad frame"));
        assert_eq!(frame.header("content-type"), Some("text/plain"));
        assert_eq!(&frame.body[..], b"line 3 has no colon");
    }

    #[test]
    fn heart_beat_headers_are_two_numbers() {
        assert_eq!(parse_heart_beat("100,200"), Some((100, 200)));
        assert_eq!(parse_heart_beat(" 0 , 0 "), Some((0, 0)));
        assert_eq!(parse_heart_beat("100"), None);
        assert_eq!(parse_heart_beat("a,b"), None);
    }
}
