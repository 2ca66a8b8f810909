//! The body of a SEND frame or a REST publish, as a client writes it: JSON
//! `{"content": "...", "type": "CHAT"}` or plain text. Pure: bytes in, content or a reason out.

use serde::Deserialize;

/// The body of a SEND (or REST publish): JSON `{"content": "...", "type": "CHAT"}` or plain text.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    content: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// Why a message body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("body is not valid UTF-8")]
    NotUtf8,
    #[error("invalid JSON body: {0}")]
    BadJson(String),
    #[error("message content is empty")]
    Empty,
    #[error("message type must be CHAT, got {0:?}")]
    BadType(String),
}

/// Reads the content of a client's message; a body that starts with `{` must be the JSON form.
pub fn parse_message_body(body: &[u8]) -> Result<String, BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let content = if text.trim_start().starts_with('{') {
        let parsed: SendBody =
            serde_json::from_str(text).map_err(|e| BodyError::BadJson(e.to_string()))?;
        match parsed.kind.as_deref() {
            None | Some("CHAT") => {}
            Some(other) => return Err(BodyError::BadType(other.to_owned())),
        }
        parsed.content
    } else {
        text.to_owned()
    };
    if content.trim().is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bodies_are_json_or_plain_text() {
        assert_eq!(
            parse_message_body(br#"{"content":"hi","type":"CHAT"}"#).unwrap(),
            "hi"
        );
        assert_eq!(parse_message_body(br#"{"content":"hi"}"#).unwrap(), "hi");
        assert_eq!(parse_message_body(b"plain words").unwrap(), "plain words");
        assert!(matches!(
            parse_message_body(b"{not json"),
            Err(BodyError::BadJson(_))
        ));
        assert!(matches!(
            parse_message_body(br#"{"content":1}"#),
            Err(BodyError::BadJson(_))
        ));
        assert_eq!(
            parse_message_body(br#"{"content":"x","type":"JOIN"}"#),
            Err(BodyError::BadType("JOIN".into()))
        );
        assert_eq!(parse_message_body(b"  "), Err(BodyError::Empty));
        assert_eq!(parse_message_body(&[0xff, 0xfe]), Err(BodyError::NotUtf8));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_message_body(format!("{{\"content\":{deep}}}").as_bytes()).is_err());
    }
}
