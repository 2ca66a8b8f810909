//! A client's frame as a typed command: each STOMP 1.2 client command with the header values
//! the protocol requires, already checked.
//!
//! Only the protocol's own rules live here (required headers, ack modes, version negotiation,
//! the heart-beat format, server commands coming from a client); what an application makes of
//! destinations, transactions or credentials is its own business. Each refusal is a
//! [`ProtocolError`] whose [`ProtocolError::label`] is a short, fixed reason (fit for an ERROR
//! frame's `message` header and for a metrics label) and whose text is the detail.

use bytes::Bytes;

use super::frame::{Command, Frame, find_header, parse_heart_beat};

/// The STOMP versions this codec speaks, preferred first.
pub const VERSIONS: [&str; 3] = ["1.2", "1.1", "1.0"];

/// Why a client's frame is not a valid command. The text is the detail shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{command} needs {} {header} header", article(header))]
    MissingHeader {
        command: Command,
        header: &'static str,
    },
    /// The value is cut to [`excerpt`] length.
    #[error("unknown ack mode {0:?}")]
    BadAckMode(String),
    #[error("heart-beat must be two numbers: cx,cy")]
    BadHeartBeat,
    #[error("this server speaks STOMP 1.0, 1.1 and 1.2")]
    UnsupportedVersion,
    #[error("{0} is a server frame")]
    ServerFrame(Command),
}

impl ProtocolError {
    /// The short, fixed reason: the `message` header of the ERROR and the metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            ProtocolError::MissingHeader { .. } => "missing header",
            ProtocolError::BadAckMode(_) => "bad ack mode",
            ProtocolError::BadHeartBeat => "bad heart-beat",
            ProtocolError::UnsupportedVersion => "unsupported version",
            ProtocolError::ServerFrame(_) => "unexpected frame",
        }
    }
}

fn article(header: &str) -> &'static str {
    if header.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// At most 64 characters of a client's value, for quoting it back in an error.
pub fn excerpt(s: &str) -> String {
    s.chars().take(64).collect()
}

/// How a subscription acknowledges its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

/// CONNECT or STOMP: the version both sides speak and what the client offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The highest version in both the client's `accept-version` (1.0 if absent) and ours.
    pub version: &'static str,
    /// The client's `heart-beat` (cx, cy) in milliseconds; (0, 0) if absent.
    pub heart_beat: (u64, u64),
    pub login: Option<String>,
    pub passcode: Option<String>,
    /// The `Authorization` header (or its lower-case spelling), as written.
    pub authorization: Option<String>,
}

/// SEND: where to, in which transaction, every header as sent, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub destination: String,
    pub transaction: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Send {
    /// The value of header `name`; if it is repeated, the first one.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// SUBSCRIBE: the subscription's id, destination and ack mode, and every header as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub id: String,
    pub destination: String,
    pub ack: AckMode,
    pub headers: Vec<(String, String)>,
}

impl Subscribe {
    /// The value of header `name`; if it is repeated, the first one.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// ACK or NACK of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub id: String,
    pub transaction: Option<String>,
}

/// A command a client sends, with its required headers checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    Connect(Connect),
    Send(Send),
    Subscribe(Subscribe),
    Unsubscribe { id: String },
    Ack(Ack),
    Nack(Ack),
    Begin { transaction: String },
    Commit { transaction: String },
    Abort { transaction: String },
    Disconnect,
}

impl ClientCommand {
    /// Checks `frame` against the protocol. Headers are checked in a fixed order (for SUBSCRIBE:
    /// `id`, `destination`, then `ack`), so the first problem is the one reported.
    pub fn parse(frame: &Frame) -> Result<ClientCommand, ProtocolError> {
        let command = frame.command;
        let required = |header: &'static str| {
            frame
                .header(header)
                .map(str::to_owned)
                .ok_or(ProtocolError::MissingHeader { command, header })
        };
        let optional = |header: &str| frame.header(header).map(str::to_owned);
        Ok(match command {
            Command::Connect | Command::Stomp => ClientCommand::Connect(parse_connect(frame)?),
            Command::Send => ClientCommand::Send(Send {
                destination: required("destination")?,
                transaction: optional("transaction"),
                headers: frame.headers.clone(),
                body: frame.body.clone(),
            }),
            Command::Subscribe => {
                let id = required("id")?;
                let destination = required("destination")?;
                let ack = match frame.header("ack").unwrap_or("auto") {
                    "auto" => AckMode::Auto,
                    "client" => AckMode::Client,
                    "client-individual" => AckMode::ClientIndividual,
                    other => return Err(ProtocolError::BadAckMode(excerpt(other))),
                };
                ClientCommand::Subscribe(Subscribe {
                    id,
                    destination,
                    ack,
                    headers: frame.headers.clone(),
                })
            }
            Command::Unsubscribe => ClientCommand::Unsubscribe {
                id: required("id")?,
            },
            Command::Ack | Command::Nack => {
                let ack = Ack {
                    id: required("id")?,
                    transaction: optional("transaction"),
                };
                if command == Command::Ack {
                    ClientCommand::Ack(ack)
                } else {
                    ClientCommand::Nack(ack)
                }
            }
            Command::Begin => ClientCommand::Begin {
                transaction: required("transaction")?,
            },
            Command::Commit => ClientCommand::Commit {
                transaction: required("transaction")?,
            },
            Command::Abort => ClientCommand::Abort {
                transaction: required("transaction")?,
            },
            Command::Disconnect => ClientCommand::Disconnect,
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                return Err(ProtocolError::ServerFrame(command));
            }
        })
    }
}

/// Negotiates the version first, then reads the heart-beat.
fn parse_connect(frame: &Frame) -> Result<Connect, ProtocolError> {
    let accepted = frame.header("accept-version").unwrap_or("1.0");
    let version = VERSIONS
        .into_iter()
        .find(|v| accepted.split(',').any(|a| a.trim() == *v))
        .ok_or(ProtocolError::UnsupportedVersion)?;
    let heart_beat = match frame.header("heart-beat") {
        None => (0, 0),
        Some(v) => parse_heart_beat(v).ok_or(ProtocolError::BadHeartBeat)?,
    };
    Ok(Connect {
        version,
        heart_beat,
        login: frame.header("login").map(str::to_owned),
        passcode: frame.header("passcode").map(str::to_owned),
        authorization: frame
            .header("Authorization")
            .or_else(|| frame.header("authorization"))
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(command: Command, headers: &[(&str, &str)]) -> Frame {
        headers
            .iter()
            .fold(Frame::new(command), |f, (k, v)| f.with_header(*k, *v))
    }

    fn parse(command: Command, headers: &[(&str, &str)]) -> Result<ClientCommand, ProtocolError> {
        ClientCommand::parse(&frame(command, headers))
    }

    #[test]
    fn connect_negotiates_the_highest_common_version() {
        let Ok(ClientCommand::Connect(c)) = parse(Command::Connect, &[]) else {
            panic!("CONNECT without headers is valid");
        };
        assert_eq!(c.version, "1.0");
        assert_eq!(c.heart_beat, (0, 0));
        let Ok(ClientCommand::Connect(c)) = parse(
            Command::Stomp,
            &[("accept-version", "1.1, 1.2"), ("heart-beat", "100,200")],
        ) else {
            panic!("STOMP with 1.1,1.2 is valid");
        };
        assert_eq!(c.version, "1.2");
        assert_eq!(c.heart_beat, (100, 200));
        assert_eq!(
            parse(Command::Connect, &[("accept-version", "2.0")]),
            Err(ProtocolError::UnsupportedVersion)
        );
    }

    #[test]
    fn connect_checks_the_version_before_the_heart_beat() {
        let err = parse(
            Command::Connect,
            &[("accept-version", "9"), ("heart-beat", "x")],
        );
        assert_eq!(err, Err(ProtocolError::UnsupportedVersion));
        let err = parse(Command::Connect, &[("heart-beat", "100")]);
        assert_eq!(err, Err(ProtocolError::BadHeartBeat));
        assert_eq!(ProtocolError::BadHeartBeat.label(), "bad heart-beat");
    }

    #[test]
    fn connect_takes_either_spelling_of_authorization() {
        for name in ["Authorization", "authorization"] {
            let Ok(ClientCommand::Connect(c)) = parse(
                Command::Connect,
                &[(name, "Bearer t"), ("login", "ann"), ("passcode", "p")],
            ) else {
                panic!("valid CONNECT");
            };
            assert_eq!(c.authorization.as_deref(), Some("Bearer t"));
            assert_eq!(c.login.as_deref(), Some("ann"));
            assert_eq!(c.passcode.as_deref(), Some("p"));
        }
    }

    /// A command, its headers, and what the client is told.
    type Case<'a> = (Command, &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn missing_required_headers_name_the_command_and_header() {
        let cases: [Case; 9] = [
            (Command::Send, &[], "SEND needs a destination header"),
            (Command::Subscribe, &[], "SUBSCRIBE needs an id header"),
            (
                Command::Subscribe,
                &[("id", "0")],
                "SUBSCRIBE needs a destination header",
            ),
            (Command::Unsubscribe, &[], "UNSUBSCRIBE needs an id header"),
            (Command::Ack, &[], "ACK needs an id header"),
            (Command::Nack, &[], "NACK needs an id header"),
            (Command::Begin, &[], "BEGIN needs a transaction header"),
            (Command::Commit, &[], "COMMIT needs a transaction header"),
            (Command::Abort, &[], "ABORT needs a transaction header"),
        ];
        for (command, headers, text) in cases {
            let err = parse(command, headers).expect_err("a header is missing");
            assert_eq!(err.label(), "missing header");
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn subscribe_reads_its_ack_mode_and_keeps_every_header() {
        let Ok(ClientCommand::Subscribe(s)) = parse(
            Command::Subscribe,
            &[
                ("id", "s1"),
                ("destination", "/topic/room/a"),
                ("ack", "client-individual"),
                ("x-since-offset", "4"),
            ],
        ) else {
            panic!("valid SUBSCRIBE");
        };
        assert_eq!(s.id, "s1");
        assert_eq!(s.destination, "/topic/room/a");
        assert_eq!(s.ack, AckMode::ClientIndividual);
        assert_eq!(s.header("x-since-offset"), Some("4"));
        let Ok(ClientCommand::Subscribe(s)) =
            parse(Command::Subscribe, &[("id", "s"), ("destination", "/d")])
        else {
            panic!("valid SUBSCRIBE");
        };
        assert_eq!(s.ack, AckMode::Auto);
        let err = parse(
            Command::Subscribe,
            &[("id", "s"), ("destination", "/d"), ("ack", "never")],
        );
        assert_eq!(err, Err(ProtocolError::BadAckMode("never".into())));
        assert_eq!(
            ProtocolError::BadAckMode("never".into()).to_string(),
            "unknown ack mode \"never\""
        );
    }

    #[test]
    fn a_long_ack_mode_is_quoted_back_cut_short() {
        let long = "x".repeat(200);
        let err = parse(
            Command::Subscribe,
            &[("id", "s"), ("destination", "/d"), ("ack", &long)],
        );
        assert_eq!(err, Err(ProtocolError::BadAckMode("x".repeat(64))));
    }

    #[test]
    fn send_carries_destination_transaction_headers_and_body() {
        let f = frame(
            Command::Send,
            &[("destination", "/topic/room/a"), ("transaction", "t1")],
        )
        .with_body("hi");
        let Ok(ClientCommand::Send(s)) = ClientCommand::parse(&f) else {
            panic!("valid SEND");
        };
        assert_eq!(s.destination, "/topic/room/a");
        assert_eq!(s.transaction.as_deref(), Some("t1"));
        assert_eq!(s.header("destination"), Some("/topic/room/a"));
        assert_eq!(&s.body[..], b"hi");
    }

    #[test]
    fn transactions_acks_and_disconnect_parse() {
        assert_eq!(
            parse(Command::Begin, &[("transaction", "t")]),
            Ok(ClientCommand::Begin {
                transaction: "t".into()
            })
        );
        assert_eq!(
            parse(Command::Nack, &[("id", "m"), ("transaction", "t")]),
            Ok(ClientCommand::Nack(Ack {
                id: "m".into(),
                transaction: Some("t".into())
            }))
        );
        assert_eq!(
            parse(Command::Disconnect, &[]),
            Ok(ClientCommand::Disconnect)
        );
    }

    #[test]
    fn server_commands_from_a_client_are_refused() {
        for command in Command::ALL.into_iter().filter(|c| !c.is_client()) {
            let err = parse(command, &[]).expect_err("a server frame");
            assert_eq!(err.label(), "unexpected frame");
            assert_eq!(err.to_string(), format!("{command} is a server frame"));
        }
    }
}
