//! The body of a SEND frame or a REST publish, as a client writes it: a JSON object or plain
//! text. Pure: bytes in, the message (content and the client's own fields) or a reason out.
//!
//! What it keeps true: `content` is non-empty text; `type` is ours and only `CHAT` (or absent;
//! `JOIN`/`LEAVE` mark a presence announcement, [`BodyError::Announcement`], which publishes nothing);
//! every other top-level field of a JSON object is kept as it came, except the names the
//! server's event envelope owns ([`ENVELOPE_FIELDS`]), which a client can never set.

use serde_json::{Map, Value};

/// Top-level names of an event that only the server sets: a client body carrying one of them
/// has that field dropped (silently), so a sender can never forge an id, an offset or a
/// sender. `headers` and `to` are fields of the stored records, so they are owned too.
pub const ENVELOPE_FIELDS: &[&str] = &[
    "id", "roomId", "offset", "epoch", "type", "sender", "content", "sentAt", "serverId",
    "headers", "to",
];

/// A client's message: its text and the other top-level fields of its JSON body, in the
/// order they came.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MessageBody {
    pub content: String,
    /// The body's own fields (a Spring DTO's `chatRoomId`, `messageType`, ...); never an
    /// envelope name.
    pub extra: Map<String, Value>,
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
    /// A `JOIN` or `LEAVE` body: the classic Spring demo's `chat.addUser` announces its user
    /// this way. Presence here comes from SUBSCRIBE and the end of a connection, so such a body
    /// is no message: STOMP acknowledges it and publishes nothing; REST refuses it.
    #[error(
        "a {0} body announces presence, which comes from subscribing to the room; nothing was published"
    )]
    Announcement(&'static str),
}

/// Reads a client's message; a body that starts with `{` must be a JSON object with a string
/// `content`. Any other body is the content itself, as plain text.
pub fn parse_message_body(body: &[u8]) -> Result<MessageBody, BodyError> {
    parse_message_body_with(body, None).map(|(message, _)| message)
}

/// As [`parse_message_body`], and also hands back the value of the top-level `field` of a
/// JSON body as it came (before envelope names are dropped: a destination may read its room
/// from a body's `roomId`). `None` when there is no such field or the body is plain text.
pub fn parse_message_body_with(
    body: &[u8],
    field: Option<&str>,
) -> Result<(MessageBody, Option<Value>), BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let mut picked = None;
    let message = if text.trim_start().starts_with('{') {
        // serde_json's recursion limit refuses absurdly deep nesting; the frame limit bounds
        // the size.
        let mut fields: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| BodyError::BadJson(e.to_string()))?;
        picked = field.and_then(|f| fields.get(f)).cloned();
        match fields.get("type").and_then(Value::as_str) {
            Some("JOIN") => return Err(BodyError::Announcement("JOIN")),
            Some("LEAVE") => return Err(BodyError::Announcement("LEAVE")),
            _ => {}
        }
        let content = match fields.remove("content") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(BodyError::BadJson("`content` must be a string".into())),
            None => return Err(BodyError::BadJson("missing field `content`".into())),
        };
        match fields.remove("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t == "CHAT" => {}
            Some(Value::String(t)) => return Err(BodyError::BadType(t)),
            Some(other) => return Err(BodyError::BadType(other.to_string())),
        }
        fields.retain(|k, _| !ENVELOPE_FIELDS.contains(&k.as_str()));
        MessageBody {
            content,
            extra: fields,
        }
    } else {
        MessageBody {
            content: text.to_owned(),
            extra: Map::new(),
        }
    };
    if message.content.trim().is_empty() {
        return Err(BodyError::Empty);
    }
    Ok((message, picked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn content(body: &[u8]) -> Result<String, BodyError> {
        parse_message_body(body).map(|m| m.content)
    }

    #[test]
    fn message_bodies_are_json_or_plain_text() {
        assert_eq!(content(br#"{"content":"hi","type":"CHAT"}"#).unwrap(), "hi");
        assert_eq!(content(br#"{"content":"hi"}"#).unwrap(), "hi");
        assert_eq!(content(br#"{"content":"hi","type":null}"#).unwrap(), "hi");
        assert_eq!(content(b"plain words").unwrap(), "plain words");
        assert_eq!(content(b"[1,2]").unwrap(), "[1,2]");
        assert!(parse_message_body(b"plain").unwrap().extra.is_empty());
        assert!(matches!(content(b"{not json"), Err(BodyError::BadJson(_))));
        assert!(matches!(
            content(br#"{"content":1}"#),
            Err(BodyError::BadJson(_))
        ));
        assert!(matches!(
            content(br#"{"text":"no content"}"#),
            Err(BodyError::BadJson(_))
        ));
        assert_eq!(
            content(br#"{"content":"x","type":"TYPING"}"#),
            Err(BodyError::BadType("TYPING".into()))
        );
        assert_eq!(
            content(br#"{"content":"x","type":3}"#),
            Err(BodyError::BadType("3".into()))
        );
        assert_eq!(content(b"  "), Err(BodyError::Empty));
        assert_eq!(content(br#"{"content":" "}"#), Err(BodyError::Empty));
        assert_eq!(content(&[0xff, 0xfe]), Err(BodyError::NotUtf8));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(content(format!("{{\"content\":{deep}}}").as_bytes()).is_err());
        assert!(content(format!("{{\"content\":\"x\",\"a\":{deep}}}").as_bytes()).is_err());
    }

    #[test]
    fn a_join_or_leave_body_is_a_presence_announcement_with_or_without_content() {
        for (body, kind) in [
            (&br#"{"sender":"ann","type":"JOIN"}"#[..], "JOIN"),
            (
                br#"{"sender":"ann","type":"LEAVE","content":"bye"}"#,
                "LEAVE",
            ),
        ] {
            assert_eq!(parse_message_body(body), Err(BodyError::Announcement(kind)));
        }
        // Only the exact names: anything else is still a wrong type.
        assert_eq!(
            content(br#"{"content":"x","type":"join"}"#),
            Err(BodyError::BadType("join".into()))
        );
    }

    #[test]
    fn a_spring_dto_keeps_its_own_fields_beside_the_content() {
        let m = parse_message_body(
            br#"{"chatRoomId":"7","senderNickname":"ann","content":"hi","messageType":"TALK"}"#,
        )
        .unwrap();
        assert_eq!(m.content, "hi");
        assert_eq!(
            Value::Object(m.extra),
            json!({"chatRoomId":"7","senderNickname":"ann","messageType":"TALK"})
        );
    }

    #[test]
    fn envelope_names_in_a_body_are_dropped_and_the_rest_kept() {
        let m = parse_message_body(
            br#"{"content":"hi","sender":{"id":"evil"},"offset":99,"id":"x","roomId":"r",
                "epoch":"e","sentAt":"t","serverId":"s","headers":[],"to":"u","keep":true}"#,
        )
        .unwrap();
        assert_eq!(Value::Object(m.extra), json!({"keep": true}));
    }

    #[test]
    fn a_picked_field_comes_back_even_when_it_is_an_envelope_name() {
        let body = br#"{"roomId":"r1","chatRoomId":7,"content":"hi"}"#;
        let (m, v) = parse_message_body_with(body, Some("roomId")).unwrap();
        assert_eq!(v, Some(json!("r1")));
        assert!(!m.extra.contains_key("roomId"));
        let (m, v) = parse_message_body_with(body, Some("chatRoomId")).unwrap();
        assert_eq!((v, &m.extra["chatRoomId"]), (Some(json!(7)), &json!(7)));
        assert_eq!(parse_message_body_with(body, Some("nope")).unwrap().1, None);
        assert_eq!(
            parse_message_body_with(b"plain", Some("roomId")).unwrap().1,
            None
        );
    }

    #[test]
    fn nested_values_numbers_and_unicode_survive_unchanged() {
        let m = parse_message_body(
            r#"{"content":"é","meta":{"a":[1,-2,3.5,null,{"b":"ü😀"}]},"n":18446744073709551615,"f":-0.25}"#
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(m.content, "é");
        assert_eq!(m.extra["meta"], json!({"a":[1,-2,3.5,null,{"b":"ü😀"}]}));
        assert_eq!(m.extra["n"], json!(u64::MAX));
        assert_eq!(m.extra["f"], json!(-0.25));
        let again = serde_json::to_string(&m.extra).unwrap();
        let back: Map<String, Value> = serde_json::from_str(&again).unwrap();
        assert_eq!(back, m.extra);
    }
}
