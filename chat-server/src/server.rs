//! The running instance: start-up and the drain on shutdown.
//!
//! `Server::bind` validates everything and binds the port; `Server::run` serves until the
//! shutdown future resolves, then drains: readiness fails, upgrades are refused, every session
//! gets a close that tells it to reconnect, presence is left and the instance deregisters, all
//! within the configured grace period. Upgraded WebSockets outlive axum's graceful shutdown, so
//! sessions are tracked here and waited for.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::archive::{ArchiveReads, Archiver};
use crate::auth::{AuthError, Authenticator};
use crate::broker::{ArchivedHistory, Services};
use crate::config::{Backend, Config};
use crate::http::AppState;
use crate::metrics::Metrics;
use crate::session;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("bad JWT key: {0}")]
    Auth(#[from] AuthError),
    #[error("cannot start the Redis backend: {0}")]
    Backend(#[from] crate::broker::BackendError),
    #[error("cannot start the archive: {0}")]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// A bound, not yet serving, instance.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    app: Arc<AppState>,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let metrics = Arc::new(Metrics::new());
        let drain = CancellationToken::new();
        let services = match &config.backend {
            Backend::Memory => Services::memory(config.history_max_len, &config.server_id),
            Backend::Redis { .. } | Backend::Sentinel { .. } => {
                let (mut services, queue) = Services::redis_with_queue(&config).await?;
                if let Some(archive) = &config.archive {
                    // Stops with the drain: what it has not acknowledged another instance
                    // takes over after CHAT_ARCHIVE_CLAIM_IDLE_MS.
                    Archiver::spawn(archive, queue, metrics.clone(), drain.clone())?;
                    // History (REST, x-history, recovery) reaches past the Redis window.
                    services.history = Arc::new(ArchivedHistory::new(
                        services.history.clone(),
                        Arc::new(ArchiveReads::new(archive, metrics.clone())?),
                    ));
                }
                services
            }
        };
        // The sessions' context first: the HTTP state shares its services, metrics and drain.
        let session = Arc::new(session::Context::new(
            &config,
            services,
            Arc::new(Authenticator::new(&config)?),
            metrics,
            drain,
            TaskTracker::new(),
        ));
        let app = AppState::new(config, session);
        let addr = app.config.listen_addr;
        let listener = listen(addr).map_err(|source| ServerError::Bind { addr, source })?;
        Ok(Server { listener, app })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.app.config.listen_addr)
    }

    pub fn state(&self) -> Arc<AppState> {
        self.app.clone()
    }

    /// Serves until `shutdown` resolves, then drains within the grace period.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server { listener, app } = self;
        info!(addr = %listener.local_addr().map_err(ServerError::Serve)?, server_id = %app.config.server_id, "listening");
        let drain = app.drain.clone();
        tokio::spawn({
            let drain = drain.clone();
            async move {
                shutdown.await;
                info!("shutdown requested: draining");
                drain.cancel();
            }
        });
        let router = crate::http::router(app.clone());
        // Chat frames are small and latency-bound: never let Nagle hold them for a delayed ACK.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                warn!(error = %e, "could not set TCP_NODELAY");
            }
        });
        let serve = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(drain.clone().cancelled_owned());
        let served = serve.await;
        drain.cancel();

        app.tracker.close();
        let grace = app.config.shutdown_grace;
        if tokio::time::timeout(grace, app.tracker.wait())
            .await
            .is_err()
        {
            warn!(?grace, "sessions still open after the grace period");
        }
        if let Err(e) = app.services.registry.deregister().await {
            warn!(error = %e, "could not deregister");
        }
        info!("stopped");
        served.map_err(ServerError::Serve)
    }
}

/// Binds the listening socket with a backlog of [`LISTEN_BACKLOG`] (capped by the kernel's
/// `somaxconn`); the default of the standard library and mio is 128, which drops SYNs during a
/// reconnect storm and makes those clients wait a second for the retry.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

const LISTEN_BACKLOG: u32 = 4096;
