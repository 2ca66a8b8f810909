//! Harness for end-to-end tests: servers on free loopback ports, STOMP test clients.

pub mod redis;
