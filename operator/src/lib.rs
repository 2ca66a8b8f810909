//! chat-operator: turns `ChatCluster` resources into Redis plus chat-server replicas.
#![forbid(unsafe_code)]

pub mod app;
pub mod controller;
pub mod crd;
pub mod error;
#[cfg(test)]
pub mod fixtures;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod render;
pub mod resources;
pub mod sentinel;
pub mod status;

pub use error::{Error, Result};
