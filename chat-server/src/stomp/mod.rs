//! STOMP 1.2 frames and codec (pure: never touches a socket).
