//! chat-operator: turns `ChatCluster` resources into Redis plus chat-server replicas.
#![forbid(unsafe_code)]

pub mod crd;
pub mod error;
pub mod render;
pub mod resources;
pub mod sentinel;
pub mod status;

pub use error::{Error, Result};
