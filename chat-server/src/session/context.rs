//! What a session needs from the instance, and nothing more: the services, the hub's metrics,
//! the limits taken from the configuration, the authenticator, the server's id and the drain.
//!
//! `server.rs` builds one `Context` per instance and every session shares it; a session never
//! sees the HTTP layer or the server, so `session` depends on neither.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::broker::Services;
use crate::config::Config;
use crate::destination::Destinations;
use crate::limit::UserLimiter;
use crate::metrics::Metrics;

/// The configured limits a session enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionLimits {
    /// Deliveries queued for a session before it counts as a slow consumer.
    pub(crate) outbound_queue: usize,
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_subscriptions: usize,
    /// SENDs per second per connection, and per user over their connections (0: no limit).
    pub(crate) send_rate: u32,
    pub(crate) user_send_rate: u32,
    /// The server's heart-beat offer (sx, sy) in milliseconds.
    pub(crate) stomp_heartbeat: (u64, u64),
}

impl SessionLimits {
    pub(crate) fn from_config(config: &Config) -> SessionLimits {
        SessionLimits {
            outbound_queue: config.outbound_queue,
            max_frame_bytes: config.max_frame_bytes,
            max_subscriptions: config.max_subscriptions,
            send_rate: config.send_rate,
            user_send_rate: config.user_send_rate,
            stomp_heartbeat: config.stomp_heartbeat,
        }
    }
}

/// What every session of one instance shares.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) services: Services,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) limits: SessionLimits,
    pub(crate) server_id: String,
    /// The configured room and SEND destinations, built once at start-up.
    pub(crate) destinations: Arc<Destinations>,
    /// Cancelled when the instance starts draining: sessions close with a reconnect code.
    pub(crate) drain: CancellationToken,
    /// Where a session's clean-up (presence LEAVE) runs after the session itself ended.
    pub(crate) tracker: TaskTracker,
    /// SEND rate per user over all their connections on this instance.
    pub(crate) user_limiter: UserLimiter,
    /// Random per process start, so session ids never repeat across restarts.
    boot: String,
    next_session: AtomicU64,
}

impl Context {
    pub(crate) fn new(
        config: &Config,
        services: Services,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        drain: CancellationToken,
        tracker: TaskTracker,
    ) -> Context {
        Context {
            services,
            metrics,
            auth,
            limits: SessionLimits::from_config(config),
            server_id: config.server_id.clone(),
            destinations: config.destinations.clone(),
            drain,
            tracker,
            user_limiter: UserLimiter::new(config.user_send_rate),
            boot: format!("{:06x}", rand::random::<u32>() & 0xff_ffff),
            next_session: AtomicU64::new(1),
        }
    }

    /// A new session's number (unique in this process) and id (unique across restarts).
    pub(crate) fn next_session(&self) -> (u64, String) {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        (n, format!("{}.{}.{n}", self.server_id, self.boot))
    }
}
