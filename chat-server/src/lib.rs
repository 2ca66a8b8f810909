//! chat-server: STOMP 1.2 over WebSocket chat, alone in memory or clustered on Redis.
pub mod stomp;
