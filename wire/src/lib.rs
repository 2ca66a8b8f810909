//! chat-wire: what travels between a chat client and chat-server, as pure functions over bytes.
//!
//! [`stomp`] is the STOMP 1.2 codec (frames, header escaping, a decoder that tells "need more
//! bytes" from "malformed", and a client's frame as a typed command); [`body`] reads the message
//! body a client sends. Nothing here touches a socket, so the codec is fuzzed and tested on its
//! own (`fuzz/` depends on this crate alone).

pub mod body;
pub mod stomp;
