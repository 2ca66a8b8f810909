//! What every request and session of one instance shares: the configuration, the services, the
//! authenticator, the metrics, the drain and the session context built from them.
//!
//! The HTTP layer owns this state; sessions get only their narrow `session::Context`.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::broker::Services;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::session;

/// What every request and session shares.
#[derive(Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub services: Services,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the instance starts draining.
    pub drain: CancellationToken,
    /// Sessions and their clean-up tasks.
    pub tracker: TaskTracker,
    pub connections: AtomicUsize,
    /// The SockJS sessions of this instance.
    pub(crate) sockjs: Arc<super::sockjs::Table>,
    /// What a session is given of all this.
    pub(crate) session: Arc<session::Context>,
}

impl AppState {
    /// The HTTP layer's state over the session context `server.rs` built: the same services,
    /// authenticator, metrics, drain and tracker.
    pub(crate) fn new(config: Config, session: Arc<session::Context>) -> Arc<AppState> {
        Arc::new(AppState {
            config: Arc::new(config),
            services: session.services.clone(),
            auth: session.auth.clone(),
            metrics: session.metrics.clone(),
            drain: session.drain.clone(),
            tracker: session.tracker.clone(),
            connections: AtomicUsize::new(0),
            sockjs: Arc::default(),
            session,
        })
    }

    pub fn is_ready(&self) -> bool {
        !self.drain.is_cancelled()
            && self.services.broker.is_ready()
            && self.services.registry.is_registered()
    }
}
