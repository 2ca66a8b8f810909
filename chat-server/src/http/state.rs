//! What every request and session of one instance shares: the configuration, the services, the
//! authenticator, the metrics, the drain and the session context built from them.
//!
//! The HTTP layer owns this state; sessions get only their narrow `session::Context`.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, Authenticator};
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
    /// What a session is given of all this.
    pub session: Arc<session::Context>,
}

impl AppState {
    pub fn new(config: Config, services: Services) -> Result<Arc<AppState>, AuthError> {
        let auth = Arc::new(Authenticator::new(&config)?);
        let metrics = Arc::new(Metrics::new());
        let drain = CancellationToken::new();
        let tracker = TaskTracker::new();
        let session = Arc::new(session::Context::new(
            &config,
            services.clone(),
            auth.clone(),
            metrics.clone(),
            drain.clone(),
            tracker.clone(),
        ));
        Ok(Arc::new(AppState {
            config: Arc::new(config),
            services,
            auth,
            metrics,
            drain,
            tracker,
            connections: AtomicUsize::new(0),
            session,
        }))
    }

    pub fn is_ready(&self) -> bool {
        !self.drain.is_cancelled()
            && self.services.broker.is_ready()
            && self.services.registry.is_registered()
    }
}
