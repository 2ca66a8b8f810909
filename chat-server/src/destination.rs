//! Where a client's SEND or SUBSCRIBE points: a room, a user, or the caller's own user queue.
//!
//! Room destinations are configured patterns (`CHAT_ROOM_DESTINATIONS` for SUBSCRIBE and SEND,
//! `CHAT_SEND_DESTINATIONS` for SEND only), parsed once at start-up into a [`Destinations`]
//! matcher that every session shares through its `Context`. The user destinations are fixed,
//! matched first, and no pattern may collide with them (refused at start-up). Only
//! well-formed ids pass (see `model::is_valid_id`), whether from a path or a body field; what
//! is refused says why, quoting at most 64 characters of what the client wrote.

use chat_wire::stomp::excerpt;
use serde_json::Value;

use crate::model::is_valid_id;

/// Where direct messages are delivered; only SUBSCRIBE.
pub(crate) const USER_QUEUE: &str = "/user/queue/messages";
/// A direct message's destination is this followed by the user id; only SEND.
const USER_SEND_PREFIX: &str = "/app/user/";
/// The placeholder of a pattern: one whole path segment naming the room.
const ROOM: &str = "{room}";

/// What a SUBSCRIBE points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dest {
    Room(String),
    UserQueue,
}

/// What a SEND points at; `RoomInField` names the body field that holds the room id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendTo<'a> {
    Room(String),
    RoomInField(&'a str),
    User(String),
}

/// Why a destination was refused; the text is the ERROR's detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DestinationError {
    #[error("invalid room id {:?}: 1-128 characters of [A-Za-z0-9_.-]", excerpt(.0))]
    BadRoom(String),
    #[error("invalid user id {:?}", excerpt(.0))]
    BadUser(String),
    #[error("unknown destination {:?}", excerpt(.0))]
    Unknown(String),
    #[error("cannot SEND to /user/queue/messages; use /app/user/{{userId}}")]
    SendToQueue,
    #[error("subscribe to /user/queue/messages for direct messages")]
    SubscribeToUser,
    #[error("{:?} only takes SEND", excerpt(.0))]
    SendOnly(String),
    #[error("the body's field {0:?} must name the room (a string or a whole number)")]
    NoRoomField(String),
}

/// Why a configured pattern was refused; the config names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty pattern (no patterns, or two commas in a row)")]
    Empty,
    #[error("{0:?} must start with /")]
    NotAPath(String),
    #[error("{0:?} has {{room}} twice; a pattern names one room")]
    TwoRooms(String),
    #[error("{0:?}: {{room}} must be a whole path segment, and no other braces are allowed")]
    RoomNotSegment(String),
    #[error("{0:?}: ?field only goes on CHAT_SEND_DESTINATIONS patterns")]
    FieldOnRoomPattern(String),
    #[error("{0:?}: a pattern takes its room from {{room}}, ?field or =room, only one of them")]
    TwoSources(String),
    #[error("{0:?}: the body field after ? must be 1-64 characters of [A-Za-z0-9_$-]")]
    BadField(String),
    #[error("{0:?}: its fixed room is not a valid room id (1-128 characters of [A-Za-z0-9_.-])")]
    BadFixedRoom(String),
    #[error("{0:?} collides with the user destinations (/user/queue/messages, /app/user/...)")]
    UserCollision(String),
}

/// Where a matched destination's room id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RoomFrom {
    /// The `{room}` segment: what lies between `prefix` and `suffix`.
    Segment { prefix: String, suffix: String },
    /// One fixed room, whatever is sent.
    Fixed { path: String, room: String },
    /// SEND only: a fixed path; the room is the body's `field`.
    Field { path: String, field: String },
}

/// What one pattern makes of a destination.
enum Found<'p, 'd> {
    /// The `{room}` segment as written: not checked yet.
    Segment(&'d str),
    Fixed(&'p str),
    Field(&'p str),
}

/// One configured destination pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    from: RoomFrom,
}

impl Pattern {
    /// `/path/{room}/more`, `/path` (the room is its last segment), `/path=room` (that room), or
    /// (SEND only) `/path?field` (the room is the body's `field`).
    fn parse(text: &str, send_only: bool) -> Result<Pattern, PatternError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if !text.starts_with('/') {
            return Err(PatternError::NotAPath(text.to_owned()));
        }
        let (rest, field) = match text.split_once('?') {
            Some(_) if !send_only => return Err(PatternError::FieldOnRoomPattern(text.into())),
            Some((path, field)) => (path, Some(field)),
            None => (text, None),
        };
        let (path, fixed) = match rest.split_once('=') {
            Some((path, room)) => (path, Some(room)),
            None => (rest, None),
        };
        let rooms = path.matches(ROOM).count();
        if rooms > 1 {
            return Err(PatternError::TwoRooms(text.into()));
        }
        let braces = path.matches(['{', '}']).count();
        let whole_segment = path.split('/').any(|s| s == ROOM);
        if braces != 2 * rooms || (rooms == 1 && !whole_segment) {
            return Err(PatternError::RoomNotSegment(text.into()));
        }
        let from = match (rooms, field, fixed) {
            (1, None, None) => {
                let (prefix, suffix) = path.split_once(ROOM).unwrap_or((path, ""));
                RoomFrom::Segment {
                    prefix: prefix.into(),
                    suffix: suffix.into(),
                }
            }
            (0, Some(field), None) => {
                let ok = (1..=64).contains(&field.len())
                    && field
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'-'));
                if !ok {
                    return Err(PatternError::BadField(text.into()));
                }
                RoomFrom::Field {
                    path: path.into(),
                    field: field.into(),
                }
            }
            (0, None, fixed) => {
                let room = fixed.unwrap_or_else(|| path.rsplit('/').next().unwrap_or(path));
                if !is_valid_id(room) {
                    return Err(PatternError::BadFixedRoom(text.into()));
                }
                RoomFrom::Fixed {
                    path: path.into(),
                    room: room.into(),
                }
            }
            _ => return Err(PatternError::TwoSources(text.into())),
        };
        let pattern = Pattern { from };
        // A pattern that would catch a user destination would take its place.
        let collides = path.starts_with(USER_SEND_PREFIX)
            || [USER_QUEUE, "/app/user/x"]
                .iter()
                .any(|d| matches!(pattern.find(d), Some(Found::Segment(r)) if !r.contains('/')))
            || matches!(
                pattern.find(USER_QUEUE),
                Some(Found::Fixed(_) | Found::Field(_))
            );
        if collides {
            return Err(PatternError::UserCollision(text.into()));
        }
        Ok(pattern)
    }

    fn find<'p, 'd>(&'p self, dest: &'d str) -> Option<Found<'p, 'd>> {
        match &self.from {
            RoomFrom::Segment { prefix, suffix } => dest
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.strip_suffix(suffix.as_str()))
                .map(Found::Segment),
            RoomFrom::Fixed { path, room } => (path == dest).then_some(Found::Fixed(room)),
            RoomFrom::Field { path, field } => (path == dest).then_some(Found::Field(field)),
        }
    }
}

/// Parses a comma-separated list of patterns; `send_only` allows `?field`.
pub(crate) fn parse_patterns(list: &str, send_only: bool) -> Result<Vec<Pattern>, PatternError> {
    list.split(',')
        .map(|p| Pattern::parse(p, send_only))
        .collect()
}

/// The instance's destinations: the configured room and SEND-only patterns, and the fixed user
/// destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Destinations {
    rooms: Vec<Pattern>,
    sends: Vec<Pattern>,
}

impl Destinations {
    pub(crate) fn new(rooms: Vec<Pattern>, sends: Vec<Pattern>) -> Destinations {
        Destinations { rooms, sends }
    }

    /// What a SUBSCRIBE to `dest` listens to.
    pub(crate) fn subscribe(&self, dest: &str) -> Result<Dest, DestinationError> {
        if dest == USER_QUEUE {
            return Ok(Dest::UserQueue);
        }
        if dest.starts_with(USER_SEND_PREFIX) {
            return Err(DestinationError::SubscribeToUser);
        }
        match first_match(&self.rooms, dest) {
            Some(Ok(SendTo::Room(room))) => Ok(Dest::Room(room)),
            Some(Err(e)) => Err(e),
            // Room patterns never take a field; a SEND-only pattern gets its own answer.
            Some(Ok(_)) | None => match first_match(&self.sends, dest) {
                Some(_) => Err(DestinationError::SendOnly(dest.to_owned())),
                None => Err(DestinationError::Unknown(dest.to_owned())),
            },
        }
    }

    /// What a SEND to `dest` publishes to. A destination several patterns match goes by the
    /// first that yields a valid room, room patterns first.
    pub(crate) fn send<'a>(&'a self, dest: &str) -> Result<SendTo<'a>, DestinationError> {
        if dest == USER_QUEUE {
            return Err(DestinationError::SendToQueue);
        }
        if let Some(user) = dest.strip_prefix(USER_SEND_PREFIX) {
            return if is_valid_id(user) {
                Ok(SendTo::User(user.to_owned()))
            } else {
                Err(DestinationError::BadUser(user.to_owned()))
            };
        }
        let from_rooms = first_match(&self.rooms, dest);
        if let Some(Ok(to)) = from_rooms {
            return Ok(to);
        }
        match (first_match(&self.sends, dest), from_rooms) {
            (Some(found), _) => found,
            (None, Some(err)) => err,
            (None, None) => Err(DestinationError::Unknown(dest.to_owned())),
        }
    }
}

/// The first pattern that gives `dest` a valid room; else the refusal of the first that
/// matched it at all; `None` when none matched.
fn first_match<'p>(
    patterns: &'p [Pattern],
    dest: &str,
) -> Option<Result<SendTo<'p>, DestinationError>> {
    let mut refused = None;
    for p in patterns {
        match p.find(dest) {
            Some(Found::Segment(room)) if is_valid_id(room) => {
                return Some(Ok(SendTo::Room(room.to_owned())));
            }
            Some(Found::Segment(room)) => {
                refused.get_or_insert_with(|| DestinationError::BadRoom(room.to_owned()));
            }
            Some(Found::Fixed(room)) => return Some(Ok(SendTo::Room(room.to_owned()))),
            Some(Found::Field(field)) => return Some(Ok(SendTo::RoomInField(field))),
            None => {}
        }
    }
    refused.map(Err)
}

/// The room id a body `field` holds: a string, or a whole number (Spring DTOs often carry a
/// `Long` room id), checked like any room id.
pub(crate) fn room_in_field(
    field: &str,
    value: Option<&Value>,
) -> Result<String, DestinationError> {
    let room = match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => return Err(DestinationError::NoRoomField(field.to_owned())),
    };
    if is_valid_id(&room) {
        Ok(room)
    } else {
        Err(DestinationError::BadRoom(room))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dests(rooms: &str, sends: &str) -> Destinations {
        Destinations::new(
            parse_patterns(rooms, false).unwrap(),
            parse_patterns(sends, true).unwrap(),
        )
    }

    fn room(r: &str) -> Result<SendTo<'static>, DestinationError> {
        Ok(SendTo::Room(r.into()))
    }

    #[test]
    fn the_defaults_map_to_rooms_users_and_the_user_queue() {
        let d = dests("/topic/room/{room}", "/app/room/{room}");
        assert_eq!(
            d.subscribe("/topic/room/lobby"),
            Ok(Dest::Room("lobby".into()))
        );
        assert_eq!(d.send("/topic/room/lobby"), room("lobby"));
        assert_eq!(d.send("/app/room/a.b-c_1"), room("a.b-c_1"));
        assert_eq!(d.send("/app/user/bob"), Ok(SendTo::User("bob".into())));
        assert_eq!(d.subscribe(USER_QUEUE), Ok(Dest::UserQueue));
        assert_eq!(d.send(USER_QUEUE), Err(DestinationError::SendToQueue));
        assert_eq!(
            d.subscribe("/app/user/bob"),
            Err(DestinationError::SubscribeToUser)
        );
        assert_eq!(
            d.subscribe("/app/room/lobby"),
            Err(DestinationError::SendOnly("/app/room/lobby".into()))
        );
        assert_eq!(
            d.send("/topic/room/"),
            Err(DestinationError::BadRoom(String::new()))
        );
        assert_eq!(
            d.send("/topic/room/a/b"),
            Err(DestinationError::BadRoom("a/b".into()))
        );
        assert!(matches!(
            d.send("/queue/x"),
            Err(DestinationError::Unknown(_))
        ));
        assert!(d.send(&format!("/topic/room/{}", "x".repeat(129))).is_err());
        assert!(matches!(
            d.send("/app/user/a/b"),
            Err(DestinationError::BadUser(_))
        ));
    }

    #[test]
    fn a_room_named_in_a_body_field_is_read_from_that_field() {
        let d = dests("/topic/chatroom/{room}", "/app/chat.sendMessage?chatRoomId");
        assert_eq!(
            d.send("/app/chat.sendMessage"),
            Ok(SendTo::RoomInField("chatRoomId"))
        );
        assert_eq!(d.subscribe("/topic/chatroom/7"), Ok(Dest::Room("7".into())));
        let v = serde_json::json!({"s": "7", "n": 42, "f": 1.5, "bad": "a b"});
        assert_eq!(room_in_field("s", v.get("s")), Ok("7".into()));
        assert_eq!(room_in_field("n", v.get("n")), Ok("42".into()));
        assert_eq!(
            room_in_field("f", v.get("f")),
            Err(DestinationError::NoRoomField("f".into()))
        );
        assert_eq!(
            room_in_field("x", None),
            Err(DestinationError::NoRoomField("x".into()))
        );
        assert_eq!(
            room_in_field("bad", v.get("bad")),
            Err(DestinationError::BadRoom("a b".into()))
        );
    }

    #[test]
    fn the_spring_layouts_each_name_their_rooms() {
        let d = dests("/sub/chat/{room}", "/pub/chat/message/{room}");
        assert_eq!(d.send("/pub/chat/message/r1"), room("r1"));
        assert_eq!(d.subscribe("/sub/chat/r1"), Ok(Dest::Room("r1".into())));
        assert_eq!(d.send("/sub/chat/r1"), room("r1"));

        let d = dests("/topic/public", "/app/chat.sendMessage=public");
        assert_eq!(
            d.subscribe("/topic/public"),
            Ok(Dest::Room("public".into()))
        );
        assert_eq!(d.send("/app/chat.sendMessage"), room("public"));
        assert!(d.subscribe("/topic/public/x").is_err());

        let d = dests("/topic/room/{room}", "/app/room/{room}/message");
        assert_eq!(d.send("/app/room/r2/message"), room("r2"));
        assert!(d.send("/app/room/r2").is_err());

        // Two patterns that both match: the one giving a valid room wins.
        let d = dests(
            "/topic/room/{room}",
            "/app/room/{room},/app/room/{room}/message",
        );
        assert_eq!(d.send("/app/room/r3/message"), room("r3"));
        assert_eq!(d.send("/app/room/r3"), room("r3"));

        let d = dests(
            "/topic/room/{room},/topic/chatroom/{room}",
            "/app/room/{room}",
        );
        assert_eq!(d.subscribe("/topic/chatroom/x"), Ok(Dest::Room("x".into())));
        assert_eq!(d.subscribe("/topic/room/x"), Ok(Dest::Room("x".into())));
    }

    #[test]
    fn bad_patterns_are_refused_with_their_reason() {
        let room_err = |p: &str| parse_patterns(p, false).unwrap_err();
        let send_err = |p: &str| parse_patterns(p, true).unwrap_err();
        assert_eq!(room_err(""), PatternError::Empty);
        assert_eq!(room_err("/a/{room},,/b/{room}"), PatternError::Empty);
        assert!(matches!(
            room_err("topic/{room}"),
            PatternError::NotAPath(_)
        ));
        assert!(matches!(
            room_err("/a/{room}/{room}"),
            PatternError::TwoRooms(_)
        ));
        assert!(matches!(
            room_err("/a/x{room}"),
            PatternError::RoomNotSegment(_)
        ));
        assert!(matches!(
            room_err("/a/{roomId}"),
            PatternError::RoomNotSegment(_)
        ));
        assert!(matches!(
            room_err("/a?f"),
            PatternError::FieldOnRoomPattern(_)
        ));
        assert!(matches!(
            send_err("/a/{room}?f"),
            PatternError::TwoSources(_)
        ));
        assert!(matches!(
            send_err("/a/{room}=r"),
            PatternError::TwoSources(_)
        ));
        assert!(matches!(send_err("/a?"), PatternError::BadField(_)));
        assert!(matches!(send_err("/a?x.y"), PatternError::BadField(_)));
        assert!(matches!(room_err("/a/b c"), PatternError::BadFixedRoom(_)));
        assert!(matches!(room_err("/a="), PatternError::BadFixedRoom(_)));
        for p in [
            "/user/queue/messages",
            "/user/queue/{room}",
            "/app/user/{room}",
            "/app/{room}/x",
            "/app/user/x/{room}",
        ] {
            let e = room_err(p);
            assert!(matches!(e, PatternError::UserCollision(_)), "{p}: {e:?}");
        }
        assert!(matches!(
            send_err("/user/queue/messages?room"),
            PatternError::UserCollision(_)
        ));
        // A fixed room "user" matches no user destination.
        assert!(parse_patterns("/app/user", false).is_ok());
    }
}
