//! STOMP 1.2 frames and codec (pure: never touches a socket).
//!
//! [`frame`] holds the values (commands, frames), [`headers`] the 1.2 header escaping, and
//! [`codec`] turns bytes into frames and back. Everything here works on byte buffers only, so
//! the session code owns the WebSocket and these pieces are tested without one.

pub mod codec;
pub mod frame;
pub mod headers;

pub use codec::{Decoded, Decoder, FrameError, Limits, encode};
pub use frame::{Command, Frame, parse_heart_beat};
