//! The SockJS protocol's framing: the frames a receiving connection gets (`o`, `h`, `a[...]`,
//! `c[code,"reason"]`) and the client's messages (a JSON array of strings, or one string).
//!
//! Pure: no I/O. Every message is JSON-encoded on the way out, so a frame never breaks the
//! transport's own framing (a newline, an event-stream line) whatever the STOMP text holds.

use thiserror::Error;

/// One frame for a receiving connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Open,
    Heartbeat,
    Messages(Vec<String>),
    Close { code: u16, reason: String },
}

/// The close a client gets once its session ended normally (SockJS's own code and text).
pub(crate) const GO_AWAY: (u16, &str) = (3000, "Go away!");
/// The close a second receiving connection gets while another one is open.
pub(crate) const ANOTHER_CONNECTION: (u16, &str) = (2010, "Another connection still open");

impl Frame {
    pub(crate) fn close(code: u16, reason: impl Into<String>) -> Frame {
        Frame::Close {
            code,
            reason: reason.into(),
        }
    }

    /// The frame's text, without the transport's own delimiter.
    pub(crate) fn encode(&self) -> String {
        match self {
            Frame::Open => "o".to_owned(),
            Frame::Heartbeat => "h".to_owned(),
            Frame::Messages(messages) => {
                // A `Vec<String>` always serialises; the fallback only keeps this infallible.
                let json = serde_json::to_string(messages).unwrap_or_else(|_| "[]".to_owned());
                format!("a{json}")
            }
            Frame::Close { code, reason } => {
                let reason = serde_json::Value::String(reason.clone());
                format!("c[{code},{reason}]")
            }
        }
    }

    /// Whether the receiving connection ends after this frame.
    pub(crate) fn is_close(&self) -> bool {
        matches!(self, Frame::Close { .. })
    }
}

/// Why a client's message body was refused; the texts are the protocol's own.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum BodyError {
    #[error("Payload expected.")]
    Empty,
    #[error("Broken JSON encoding.")]
    BrokenJson,
}

/// The messages in one client body: a JSON array of strings (what sockjs-client sends) or a
/// single JSON string (which the reference servers accept too).
pub(crate) fn decode_messages(body: &[u8]) -> Result<Vec<String>, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Empty);
    }
    if let Ok(messages) = serde_json::from_slice::<Vec<String>>(body) {
        return Ok(messages);
    }
    serde_json::from_slice::<String>(body)
        .map(|one| vec![one])
        .map_err(|_| BodyError::BrokenJson)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_as_the_protocol_spells_them() {
        assert_eq!(Frame::Open.encode(), "o");
        assert_eq!(Frame::Heartbeat.encode(), "h");
        assert_eq!(
            Frame::Messages(vec!["CONNECTED\nversion:1.2\n\n\0".into(), "x\"y".into()]).encode(),
            r#"a["CONNECTED\nversion:1.2\n\n\u0000","x\"y"]"#
        );
        assert_eq!(
            Frame::close(GO_AWAY.0, GO_AWAY.1).encode(),
            r#"c[3000,"Go away!"]"#
        );
        assert_eq!(
            Frame::close(ANOTHER_CONNECTION.0, ANOTHER_CONNECTION.1).encode(),
            r#"c[2010,"Another connection still open"]"#
        );
        assert!(Frame::close(1012, "x").is_close() && !Frame::Heartbeat.is_close());
    }

    #[test]
    fn a_body_is_an_array_of_strings_or_one_string() {
        assert_eq!(
            decode_messages(br#"["a","b\u0000"]"#),
            Ok(vec!["a".to_owned(), "b\0".to_owned()])
        );
        assert_eq!(decode_messages(br#""one""#), Ok(vec!["one".to_owned()]));
        assert_eq!(decode_messages(b"[]"), Ok(vec![]));
    }

    #[test]
    fn bad_bodies_get_the_protocols_errors() {
        assert_eq!(decode_messages(b""), Err(BodyError::Empty));
        assert_eq!(decode_messages(b" \n"), Err(BodyError::Empty));
        assert_eq!(decode_messages(b"[\"x"), Err(BodyError::BrokenJson));
        assert_eq!(decode_messages(b"[1,2]"), Err(BodyError::BrokenJson));
        assert_eq!(decode_messages(b"{}"), Err(BodyError::BrokenJson));
        assert_eq!(BodyError::BrokenJson.to_string(), "Broken JSON encoding.");
        assert_eq!(BodyError::Empty.to_string(), "Payload expected.");
    }
}
