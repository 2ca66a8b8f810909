//! Where a client's SEND or SUBSCRIBE points: a room, a user, or the caller's own user queue.
//!
//! Only well-formed ids pass (see `model::is_valid_id`); what is refused says why, quoting at
//! most 64 characters of what the client wrote.

use chat_wire::stomp::excerpt;

use crate::model::is_valid_id;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dest {
    Room(String),
    User(String),
    UserQueue,
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
}

pub(crate) fn parse_destination(dest: &str) -> Result<Dest, DestinationError> {
    let room = dest
        .strip_prefix("/topic/room/")
        .or_else(|| dest.strip_prefix("/app/room/"));
    if let Some(room) = room {
        return if is_valid_id(room) {
            Ok(Dest::Room(room.to_owned()))
        } else {
            Err(DestinationError::BadRoom(room.to_owned()))
        };
    }
    if let Some(user) = dest.strip_prefix("/app/user/") {
        return if is_valid_id(user) {
            Ok(Dest::User(user.to_owned()))
        } else {
            Err(DestinationError::BadUser(user.to_owned()))
        };
    }
    if dest == "/user/queue/messages" {
        return Ok(Dest::UserQueue);
    }
    Err(DestinationError::Unknown(dest.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_map_to_rooms_users_and_the_user_queue() {
        assert_eq!(
            parse_destination("/topic/room/lobby"),
            Ok(Dest::Room("lobby".into()))
        );
        assert_eq!(
            parse_destination("/app/room/a.b-c_1"),
            Ok(Dest::Room("a.b-c_1".into()))
        );
        assert_eq!(
            parse_destination("/app/user/bob"),
            Ok(Dest::User("bob".into()))
        );
        assert_eq!(
            parse_destination("/user/queue/messages"),
            Ok(Dest::UserQueue)
        );
        assert!(parse_destination("/topic/room/").is_err());
        assert!(parse_destination("/topic/room/a/b").is_err());
        assert!(parse_destination("/queue/x").is_err());
        assert!(parse_destination(&format!("/topic/room/{}", "x".repeat(129))).is_err());
    }
}
