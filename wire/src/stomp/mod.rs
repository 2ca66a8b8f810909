//! STOMP 1.2 frames and codec (pure: never touches a socket).
//!
//! [`frame`] holds the values (commands, frames), [`headers`] the 1.2 header escaping,
//! [`codec`] turns bytes into frames and back, and [`command`] turns a client's frame into a
//! typed command with its required headers checked. Everything here works on byte buffers only, so
//! the session code owns the WebSocket and these pieces are tested without one.

pub mod codec;
pub mod command;
pub mod frame;
pub mod headers;

pub use codec::{Decoded, Decoder, FrameError, Limits, encode};
pub use command::{AckMode, ClientCommand, ProtocolError, excerpt};
pub use frame::{Command, Frame, find_header, parse_heart_beat};
