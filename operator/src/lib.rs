//! chat-operator: turns `ChatCluster` resources into Redis plus chat-server replicas.
#![forbid(unsafe_code)]

pub mod crd;
pub mod error;

pub use error::{Error, Result};
