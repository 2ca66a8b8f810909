//! `chat-operator run`: tracing, the metrics endpoint, leader election and the controller,
//! all stopped by one shutdown signal (SIGTERM or SIGINT).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tracing::info;

use crate::controller::{self, Context};
use crate::error::Result;
use crate::leader::{LeaderElector, LeaseTiming, run_as_leader};
use crate::metrics::{self, Metrics};
use crate::role::FredRoleProbe;
use crate::sentinel::FredSentinelProbe;

/// Settings of `chat-operator run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub listen_addr: SocketAddr,
    /// Namespace the operator runs in (its Lease lives there).
    pub operator_namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// How long a Lease lives without renewal.
    pub lease_duration: Duration,
}

/// This replica's identity when no pod name is given: the host name, else the process id.
pub fn default_identity() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("chat-operator-{}", std::process::id()))
}

/// Log as JSON lines (`json`) or human-readable text, filtered by `RUST_LOG`.
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn stopped(
    rx: &watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
    let mut rx = rx.clone();
    async move {
        // An error means the sender is gone, which also means stop.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Run the operator until a shutdown signal, or until this replica loses its Lease.
pub async fn run(config: RunConfig) -> Result<()> {
    let kube_config = kube::Config::infer()
        .await
        .map_err(|e| crate::error::Error::Kube(kube::Error::InferConfig(e)))?;
    // The controller's client keeps kube's defaults (connect and write timeouts, no read
    // timeout, which would cut idle watches; each reconcile is bounded as a whole instead).
    let client = Client::try_from(kube_config.clone())?;
    let timing = LeaseTiming::for_lease(config.lease_duration);
    // The Lease client answers within one call timeout or fails (the elector bounds each call
    // too); a renewal must never wait on a hung connection.
    let mut lease_config = kube_config;
    lease_config.read_timeout = Some(timing.call_timeout());
    lease_config.write_timeout = Some(timing.call_timeout());
    lease_config.connect_timeout = Some(timing.call_timeout());
    lease_config.reset_reader_on_write = true;
    let lease_client = Client::try_from(lease_config)?;
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        chat_server::shutdown::signal().await;
        info!("shutdown signal received");
        let _ = stop_tx.send(true);
    });
    let server = tokio::spawn(metrics::serve(
        config.listen_addr,
        metrics.clone(),
        stopped(&stop_rx),
    ));
    metrics.set_ready(true);
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        config.operator_namespace.clone(),
        Some(config.identity.clone()),
        Arc::new(FredSentinelProbe::default()),
        Arc::new(FredRoleProbe::default()),
    ));
    let elector = LeaderElector::new(
        lease_client,
        &config.operator_namespace,
        &config.lease_name,
        &config.identity,
        timing,
    );
    info!(identity = %config.identity, lease = %config.lease_name, "waiting for the leader Lease");
    let controller_stop = stopped(&stop_rx);
    let result = run_as_leader(
        &elector,
        &metrics,
        || controller::run(ctx, controller_stop),
        stopped(&stop_rx),
    )
    .await;
    metrics.set_ready(false);
    server.abort();
    result
}
