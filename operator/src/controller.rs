//! The controller: what a reconcile needs (`Context`), the error policy with per-object
//! exponential backoff, and the watch loop over ChatClusters and the workloads they own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::crd::ChatCluster;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::reconcile::reconcile;
use crate::role::RoleProbe;
use crate::sentinel::SentinelProbe;

/// Name the operator reports Events under.
pub(crate) const CONTROLLER_NAME: &str = "chat-operator";
/// First retry after a failure; doubled per consecutive failure.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest wait between retries.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Shared state of every reconcile.
pub(crate) struct Context {
    /// The Kubernetes client.
    pub(crate) client: Client,
    /// Publishes Kubernetes Events.
    pub(crate) recorder: Recorder,
    /// The operator's metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Namespace the operator runs in.
    pub(crate) operator_namespace: String,
    /// Asks sentinels who the master is.
    pub(crate) sentinel: Arc<dyn SentinelProbe>,
    /// Asks data nodes their own role.
    pub(crate) roles: Arc<dyn RoleProbe>,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("operator_namespace", &self.operator_namespace)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context around `client`; `instance` names this replica in Events.
    pub(crate) fn new(
        client: Client,
        metrics: Arc<Metrics>,
        operator_namespace: String,
        instance: Option<String>,
        sentinel: Arc<dyn SentinelProbe>,
        roles: Arc<dyn RoleProbe>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.to_owned(),
                instance,
            },
        );
        Self {
            client,
            recorder,
            metrics,
            operator_namespace,
            sentinel,
            roles,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Count one more consecutive failure of `key`; returns the count.
    pub(crate) fn record_failure(&self, key: &str) -> u32 {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// `key` reconciled: its backoff starts over.
    pub(crate) fn record_success(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

/// `namespace/name` of a cluster, the key of its backoff.
pub(crate) fn key(cc: &ChatCluster) -> String {
    format!("{}/{}", cc.namespace().unwrap_or_default(), cc.name_any())
}

/// Wait before retry number `failures` (1-based): 5 s, 10 s, 20 s, ... up to 5 min.
pub(crate) fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// The error policy: log, count, and retry with exponential backoff per object.
pub(crate) fn error_policy(cc: Arc<ChatCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&key(&cc));
    let wait = backoff(failures);
    warn!(
        namespace = cc.namespace().unwrap_or_default(),
        name = cc.name_any(),
        error = %error,
        kind = error.metric_label(),
        failures,
        retry_in_secs = wait.as_secs(),
        "reconcile failed"
    );
    Action::requeue(wait)
}

/// Watch ChatClusters and every kind of child they own, and reconcile them until `shutdown`
/// resolves. A child deleted or changed by hand triggers a reconcile of its owner at once
/// (the watch sees the deletion), instead of waiting for the next periodic requeue.
pub(crate) async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<()> {
    let client = ctx.client.clone();
    let clusters = Api::<ChatCluster>::all(client.clone());
    // Fail early and clearly when the CRD is missing.
    clusters
        .list(&ListParams::default().limit(1))
        .await
        .map_err(|e| {
            warn!(error = %e, "cannot list ChatClusters; is the CRD installed?");
            Error::Kube(e)
        })?;
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=chat-operator");
    info!("controller started");
    Controller::new(clusters, watcher::Config::default().any_semantic())
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), owned.clone())
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            owned.clone(),
        )
        .owns(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            owned.clone(),
        )
        .owns(Api::<NetworkPolicy>::all(client.clone()), owned.clone())
        // Only the generated password Secret carries the managed-by label; the trigger keeps
        // no cache of Secrets, it only maps each event to the owning ChatCluster.
        .owns(Api::<Secret>::all(client), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, action)) => debug!(%object, ?action, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile did not complete"),
            }
        })
        .await;
    info!("controller stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(20));
        assert_eq!(backoff(7), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }
}
