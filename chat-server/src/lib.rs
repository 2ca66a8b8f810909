//! chat-server: STOMP 1.2 over WebSocket chat, alone in memory or clustered on Redis.
//!
//! `main.rs` only parses configuration and starts `server::Server`; everything else is here so
//! tests can run the real server in-process on port 0.

pub mod archive;
pub mod auth;
pub mod broker;
pub mod config;
pub(crate) mod destination;
pub mod http;
pub mod hub;
pub(crate) mod limit;
pub mod metrics;
pub mod model;
pub mod server;
pub(crate) mod session;
pub mod shutdown;

pub use chat_wire::stomp;
pub use config::Config;
pub use http::AppState;
pub use server::{Server, ServerError};
