//! The chat's data: identities, room events and direct messages, and their JSON and wire forms.
//!
//! An event is serialized once, when it is made: `RoomEvent::wire` holds the whole MESSAGE frame
//! except the `subscription` and `destination` headers, the only parts that differ per
//! subscriber (a room may be subscribed to through several configured destinations).

use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::stomp::{self, Command, Frame};

/// Room, user and server ids: 1–128 characters of `[A-Za-z0-9_.-]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Who a connection or an API call acts as; always from the token (or `login` when anonymous).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub name: String,
    /// Rooms this identity may join or post to; `None` is every room. An entry ending in `*` is a prefix.
    pub rooms: Option<Vec<String>>,
}

impl Identity {
    pub fn may_use_room(&self, room: &str) -> bool {
        match &self.rooms {
            None => true,
            Some(allowed) => allowed
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => room.starts_with(prefix),
                    None => pattern == room,
                }),
        }
    }

    pub fn sender(&self) -> Sender {
        Sender {
            id: self.user_id.clone(),
            name: self.name.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventKind {
    Chat,
    Join,
    Leave,
    System,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub id: String,
    pub name: String,
}

/// One session's presence in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub user_id: String,
    pub name: String,
    pub session_id: String,
    pub server_id: String,
}

impl Member {
    pub fn sender(&self) -> Sender {
        Sender {
            id: self.user_id.clone(),
            name: self.name.clone(),
        }
    }

    /// The JOIN or LEAVE event of this member, sent by `server_id`.
    pub fn event(&self, kind: EventKind, server_id: &str) -> Draft {
        let mut d = Draft::new(kind, self.sender(), String::new(), server_id);
        d.headers
            .push(("x-session".into(), self.session_id.clone()));
        d
    }
}

/// Declares an event struct: `id`, the struct's own fields, then the fields its publisher sets.
/// `Draft` and `EventRecord` are both declared with it because a stored record is a draft's
/// JSON with `roomId`, `offset` and `epoch` added (the Redis scripts build it so, and
/// `EventRecord::from_draft` moves field by field): the two must not drift apart. A direct
/// message (`DirectRecord`, with its `to`) carries the same publisher's fields.
macro_rules! event_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $(pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            pub id: String,
            $(pub $field: $ty,)*
            #[serde(rename = "type")]
            pub kind: EventKind,
            pub sender: Sender,
            pub content: String,
            pub sent_at: String,
            pub server_id: String,
            /// The client's own body fields (chat_wire::body::MessageBody::extra), at the top
            /// level of the JSON beside the envelope's.
            #[serde(flatten)]
            pub extra: Map<String, Value>,
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub headers: Vec<(String, String)>,
        }

        impl $name {
            /// This event as the JSON body of its MESSAGE frame (docs/PROTOCOL.md): every field
            /// but `headers`, which travel as STOMP headers instead.
            pub fn message_body(&self) -> Vec<u8> {
                #[derive(Serialize)]
                #[serde(rename_all = "camelCase")]
                struct Body<'a> {
                    id: &'a str,
                    $($field: &'a $ty,)*
                    #[serde(rename = "type")]
                    kind: EventKind,
                    sender: &'a Sender,
                    content: &'a str,
                    sent_at: &'a str,
                    server_id: &'a str,
                    #[serde(flatten)]
                    extra: &'a Map<String, Value>,
                }
                serde_json::to_vec(&Body {
                    id: &self.id,
                    $($field: &self.$field,)*
                    kind: self.kind,
                    sender: &self.sender,
                    content: &self.content,
                    sent_at: &self.sent_at,
                    server_id: &self.server_id,
                    extra: &self.extra,
                })
                .unwrap_or_default()
            }
        }
    };
}

event_struct! {
    /// What a publisher hands the broker; the broker gives it an offset and an epoch.
    pub struct Draft {}
}

impl Draft {
    pub fn new(kind: EventKind, sender: Sender, content: String, server_id: &str) -> Draft {
        Draft {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            sender,
            content,
            sent_at: now_rfc3339(),
            server_id: server_id.to_owned(),
            extra: Map::new(),
            headers: Vec::new(),
        }
    }
}

event_struct! {
    /// A stored room event, as history and the REST API show it.
    pub struct EventRecord {
        pub room_id: String,
        pub offset: u64,
        pub epoch: String,
    }
}

impl EventRecord {
    pub fn from_draft(draft: Draft, room_id: &str, offset: u64, epoch: &str) -> EventRecord {
        EventRecord {
            id: draft.id,
            room_id: room_id.to_owned(),
            offset,
            epoch: epoch.to_owned(),
            kind: draft.kind,
            sender: draft.sender,
            content: draft.content,
            sent_at: draft.sent_at,
            server_id: draft.server_id,
            extra: draft.extra,
            headers: draft.headers,
        }
    }
}

/// A room event ready to deliver: the record and its encoded MESSAGE frame.
#[derive(Debug)]
pub struct RoomEvent {
    pub record: EventRecord,
    /// The MESSAGE frame without its command line, `subscription` and `destination` headers.
    wire: Box<str>,
    /// The whole frame for the first (subscription id, destination) it was made for, shared
    /// with every later subscription of that id and destination.
    shared: OnceLock<(Box<str>, Box<str>, Utf8Bytes)>,
}

impl RoomEvent {
    pub fn new(record: EventRecord) -> Arc<RoomEvent> {
        let body = record.message_body();
        let wire = message_wire(
            None,
            &record.id,
            [
                ("x-offset", record.offset.to_string()),
                ("x-epoch", record.epoch.clone()),
            ],
            &record.headers,
            body,
        );
        Arc::new(RoomEvent {
            record,
            wire,
            shared: OnceLock::new(),
        })
    }

    /// A stored record's JSON (as Redis and the archive both hold it) as an event: the one
    /// conversion every history read uses, so a record reads back the same from either store.
    pub fn from_json(raw: &str) -> Result<Arc<RoomEvent>, serde_json::Error> {
        serde_json::from_str::<EventRecord>(raw).map(RoomEvent::new)
    }

    pub fn offset(&self) -> u64 {
        self.record.offset
    }

    pub fn epoch(&self) -> &str {
        &self.record.epoch
    }

    pub fn room(&self) -> &str {
        &self.record.room_id
    }

    /// This event's MESSAGE frame for one subscription and the destination it subscribed with,
    /// as WebSocket text (made from a `String`, so its UTF-8 is not checked again). Clients
    /// mostly number their subscriptions alike (`sub-0`, ...) and use one destination layout,
    /// so the frame made for the first subscription is kept and handed to every later one of
    /// the same id and destination: a reference count instead of a new frame per subscriber.
    pub fn frame_for(&self, subscription: &str, destination: &str) -> Utf8Bytes {
        if let Some((sub, dest, frame)) = self.shared.get()
            && **sub == *subscription
            && **dest == *destination
        {
            return frame.clone();
        }
        let frame = Utf8Bytes::from(with_subscription(
            &self.wire,
            subscription,
            Some(destination),
        ));
        // Only the first one is kept; a racing session with another id keeps its own.
        let _ = self
            .shared
            .set((subscription.into(), destination.into(), frame.clone()));
        frame
    }
}

event_struct! {
    /// A direct message to one user, on every instance where that user is connected.
    pub struct DirectRecord {
        pub to: String,
    }
}

#[derive(Debug)]
pub struct DirectEvent {
    pub record: DirectRecord,
    wire: Box<str>,
}

impl DirectEvent {
    pub fn new(record: DirectRecord) -> Arc<DirectEvent> {
        let body = record.message_body();
        let wire = message_wire(
            Some("/user/queue/messages"),
            &record.id,
            [],
            &record.headers,
            body,
        );
        Arc::new(DirectEvent { record, wire })
    }

    pub fn frame_for(&self, subscription: &str) -> Utf8Bytes {
        Utf8Bytes::from(with_subscription(&self.wire, subscription, None))
    }
}

/// A MESSAGE frame's wire form without its command line and `subscription` header: the
/// contract headers (`destination` only when every subscriber shares it; else
/// `with_subscription` puts each one's), then `extra`, then the sender's own headers, then the
/// JSON body.
fn message_wire<const N: usize>(
    destination: Option<&str>,
    id: &str,
    extra: [(&'static str, String); N],
    user_headers: &[(String, String)],
    body: Vec<u8>,
) -> Box<str> {
    let mut frame = Frame::new(Command::Message);
    if let Some(destination) = destination {
        frame = frame.with_header("destination", destination);
    }
    let mut frame = frame
        .with_header("message-id", id)
        .with_header("content-type", "application/json");
    for (k, v) in extra {
        frame = frame.with_header(k, v);
    }
    for (k, v) in user_headers {
        frame = frame.with_header(k.clone(), v.clone());
    }
    tail_of(&frame.with_body(body))
}

/// Encodes `frame` and keeps everything after its command line, as text (checked once here:
/// the headers are `str`s and the body is serialized JSON).
fn tail_of(frame: &Frame) -> Box<str> {
    let mut buf = BytesMut::with_capacity(256 + frame.body.len());
    stomp::encode(frame, &mut buf);
    let skip = buf.iter().position(|b| *b == b'\n').map_or(0, |p| p + 1);
    String::from_utf8_lossy(&buf[skip..]).into()
}

/// The whole frame: command line, `subscription`, then `destination` when the tail lacks it.
fn with_subscription(tail: &str, subscription: &str, destination: Option<&str>) -> String {
    let dest_len = destination.map_or(0, |d| 13 + d.len());
    let mut out = String::with_capacity(24 + subscription.len() + dest_len + tail.len());
    out.push_str("MESSAGE\nsubscription:");
    stomp::headers::escape_into_string(subscription, &mut out);
    out.push('\n');
    if let Some(destination) = destination {
        out.push_str("destination:");
        stomp::headers::escape_into_string(destination, &mut out);
        out.push('\n');
    }
    out.push_str(tail);
    out
}

/// Now, as RFC 3339 in UTC with exactly three fraction digits (`2026-01-02T03:04:05.067Z`).
pub fn now_rfc3339() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64) -> EventRecord {
        EventRecord {
            id: "m1".into(),
            room_id: "lobby".into(),
            offset,
            epoch: "e1".into(),
            kind: EventKind::Chat,
            sender: Sender {
                id: "u1".into(),
                name: "Ann".into(),
            },
            content: "hi: there\n".into(),
            sent_at: "2026-01-01T00:00:00.000Z".into(),
            server_id: "s1".into(),
            extra: serde_json::json!({"chatRoomId": "7", "meta": {"n": [1, 2.5]}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            headers: vec![("x-sent-ns".into(), "12:34".into())],
        }
    }

    #[test]
    fn ids_are_one_to_128_safe_characters() {
        assert!(is_valid_id("room-1_a.b"));
        assert!(is_valid_id(&"a".repeat(128)));
        assert!(!is_valid_id(&"a".repeat(129)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("ä"));
    }

    #[test]
    fn subscriptions_of_one_id_and_destination_share_one_frame_and_others_get_their_own() {
        let ev = RoomEvent::new(record(7));
        let d = "/topic/room/lobby";
        let a = ev.frame_for("sub-0", d);
        let b = ev.frame_for("sub-0", d);
        assert_eq!(
            a.as_str().as_ptr(),
            b.as_str().as_ptr(),
            "shared, not copied"
        );
        let other = ev.frame_for("x:1", d);
        let again = ev.frame_for("x:1", d);
        assert_ne!(other.as_str().as_ptr(), again.as_str().as_ptr());
        assert_eq!(other.as_str(), again.as_str());
        let alias = ev.frame_for("sub-0", "/topic/chatroom/lobby");
        assert_ne!(alias.as_str(), a.as_str());
        let head_of =
            |sub: &str, dest: &str| format!("MESSAGE\nsubscription:{sub}\ndestination:{dest}\n");
        let tail = &a.as_str()[head_of("sub-0", d).len()..];
        for (f, sub, dest) in [
            (&a, "sub-0", d),
            (&other, "x\\c1", d),
            (&alias, "sub-0", "/topic/chatroom/lobby"),
        ] {
            let head = head_of(sub, dest);
            assert!(f.as_str().starts_with(&head), "{:?}", f.as_str());
            assert_eq!(&f.as_str()[head.len()..], tail);
        }
    }

    #[test]
    fn a_room_event_frame_decodes_with_every_contract_header_and_body_field() {
        let ev = RoomEvent::new(record(7));
        let mut out = BytesMut::from(
            ev.frame_for("sub:0", "/topic/room/lobby")
                .as_str()
                .as_bytes(),
        );
        let mut dec = stomp::Decoder::new(stomp::Limits::default());
        let Some(stomp::Decoded::Frame(f)) = dec.decode(&mut out).unwrap() else {
            panic!("no frame")
        };
        assert_eq!(f.command, Command::Message);
        assert_eq!(f.header("subscription"), Some("sub:0"));
        assert_eq!(f.header("destination"), Some("/topic/room/lobby"));
        assert_eq!(f.header("message-id"), Some("m1"));
        assert_eq!(f.header("content-type"), Some("application/json"));
        assert_eq!(f.header("x-offset"), Some("7"));
        assert_eq!(f.header("x-epoch"), Some("e1"));
        assert_eq!(f.header("x-sent-ns"), Some("12:34"));
        let body: serde_json::Value = serde_json::from_slice(&f.body).unwrap();
        assert_eq!(body["roomId"], "lobby");
        assert_eq!(body["offset"], 7);
        assert_eq!(body["type"], "CHAT");
        assert_eq!(body["sender"]["name"], "Ann");
        assert_eq!(body["content"], "hi: there\n");
        assert_eq!(body["serverId"], "s1");
        assert_eq!(body["chatRoomId"], "7");
        assert_eq!(body["meta"]["n"][1], 2.5);
        assert!(out.is_empty());
    }

    #[test]
    fn a_stored_record_with_extra_fields_reads_back_the_same() {
        let r = record(3);
        let json = serde_json::to_string(&r).unwrap();
        let back: EventRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["meta"]["n"][0], 1, "extra fields at the top level");
    }

    #[test]
    fn a_rooms_claim_allows_exact_names_and_prefixes() {
        let id = Identity {
            user_id: "u".into(),
            name: "u".into(),
            rooms: Some(vec!["a".into(), "team-*".into()]),
        };
        assert!(id.may_use_room("a"));
        assert!(id.may_use_room("team-x"));
        assert!(!id.may_use_room("b"));
        assert!(!id.may_use_room("ab"));
    }

    #[test]
    fn timestamps_are_rfc3339_with_millis() {
        let t = now_rfc3339();
        assert!(t.ends_with('Z') && t.len() == 24, "{t}");
    }
}
