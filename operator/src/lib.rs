//! chat-operator: turns `ChatCluster` resources into Redis plus chat-server replicas.
#![forbid(unsafe_code)]

pub mod app;
pub(crate) mod controller;
pub mod crd;
pub mod error;
#[cfg(test)]
pub(crate) mod fixtures;
pub(crate) mod leader;
pub(crate) mod metrics;
pub(crate) mod reconcile;
pub mod render;
pub(crate) mod resources;
pub mod role;
pub(crate) mod rollout;
pub mod sentinel;
pub(crate) mod status;

pub use error::{Error, Result};
