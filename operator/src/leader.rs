//! Leader election on a `coordination.k8s.io/v1` Lease, so two or more replicas are safe:
//! only the holder reconciles; a replica that cannot renew in time stops (and restarts as a
//! follower), and a replica that shuts down releases the Lease for a fast hand-over.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// What to do with the Lease as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LeaseDecision {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it over.
    TakeOver,
    /// Someone else holds a live Lease.
    Follow {
        /// The holder's identity.
        holder: String,
    },
}

/// Decide from the Lease `lease` (if any) what `me` does at `now`.
pub(crate) fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> LeaseDecision {
    let Some(lease) = lease else {
        return LeaseDecision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == me {
        return LeaseDecision::Renew;
    }
    if holder.is_empty() {
        return LeaseDecision::TakeOver;
    }
    let last = spec.renew_time.or(spec.acquire_time).map(|t| t.0);
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    match last {
        Some(last) if last + duration > now => LeaseDecision::Follow { holder },
        _ => LeaseDecision::TakeOver,
    }
}

/// The Lease `me` writes for `decision`, starting from `existing` (its resourceVersion makes
/// the write fail if someone else wrote first).
pub(crate) fn next_lease(
    decision: &LeaseDecision,
    existing: Option<&Lease>,
    name: &str,
    me: &str,
    duration: Duration,
    now: Timestamp,
) -> Lease {
    let mut lease = existing.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_default();
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    match decision {
        LeaseDecision::Create | LeaseDecision::TakeOver => {
            if *decision == LeaseDecision::TakeOver {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            } else {
                spec.lease_transitions = Some(0);
            }
            spec.holder_identity = Some(me.to_owned());
            spec.acquire_time = Some(MicroTime(now));
        }
        LeaseDecision::Renew | LeaseDecision::Follow { .. } => {}
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    lease.spec = Some(LeaseSpec { ..spec });
    lease
}

/// Holds or waits for one Lease.
#[derive(Clone)]
pub(crate) struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict() || s.is_already_exists())
}

impl LeaderElector {
    /// An elector for the Lease `namespace/name`, as `identity`, holding it for `duration`.
    pub(crate) fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    /// One attempt to acquire or renew; `Ok(true)` when we hold the Lease afterwards.
    pub(crate) async fn try_acquire_or_renew(&self) -> Result<bool> {
        let existing = self.api.get_opt(&self.name).await?;
        let now = Timestamp::now();
        let decision = decide(existing.as_ref(), &self.identity, now);
        let lease = next_lease(
            &decision,
            existing.as_ref(),
            &self.name,
            &self.identity,
            self.duration,
            now,
        );
        let written = match decision {
            LeaseDecision::Follow { holder } => {
                debug!(%holder, "another replica leads");
                return Ok(false);
            }
            LeaseDecision::Create => self.api.create(&PostParams::default(), &lease).await,
            LeaseDecision::Renew | LeaseDecision::TakeOver => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Give the Lease up (on shutdown) so that a follower takes over at once.
    pub(crate) async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if conflict(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// How often to retry or renew.
    pub(crate) fn retry_period(&self) -> Duration {
        self.duration / 3
    }
}

async fn keep_renewing(elector: &LeaderElector) -> Error {
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(elector.retry_period()).await;
        match elector.try_acquire_or_renew().await {
            Ok(true) => last_renewal = tokio::time::Instant::now(),
            Ok(false) => return Error::LostLease("another replica took the Lease".to_owned()),
            Err(e) => {
                warn!(error = %e, "could not renew the Lease");
                if last_renewal.elapsed() >= elector.duration {
                    return Error::LostLease(format!("not renewed in time: {e}"));
                }
            }
        }
    }
}

/// Wait for the Lease, then run `work` while renewing it. Returns when `work` ends, when the
/// Lease is lost (an error: the process should stop), or when `shutdown` resolves first.
pub(crate) async fn run_as_leader<W, F, S>(
    elector: &LeaderElector,
    metrics: &Metrics,
    work: W,
    shutdown: S,
) -> Result<()>
where
    W: FnOnce() -> F,
    F: Future<Output = Result<()>>,
    S: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "could not read or write the Lease"),
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(elector.retry_period()) => {}
        }
    }
    info!(lease = %elector.name, identity = %elector.identity, "became leader");
    metrics.set_leader(true);
    let result = tokio::select! {
        result = work() => result,
        lost = keep_renewing(elector) => Err(lost),
    };
    metrics.set_leader(false);
    if result.is_ok()
        && let Err(e) = elector.release().await
    {
        warn!(error = %e, "could not release the Lease");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    fn lease(holder: Option<&str>, renewed: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("chat-operator".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                lease_duration_seconds: Some(duration),
                lease_transitions: Some(2),
                ..LeaseSpec::default()
            }),
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(decide(None, "me", at(0)), LeaseDecision::Create);
    }

    #[test]
    fn the_holder_renews_its_own_lease() {
        assert_eq!(
            decide(Some(&lease(Some("me"), 0, 15)), "me", at(100)),
            LeaseDecision::Renew
        );
    }

    #[test]
    fn a_live_lease_of_another_replica_is_followed() {
        assert_eq!(
            decide(Some(&lease(Some("other"), 100, 15)), "me", at(110)),
            LeaseDecision::Follow {
                holder: "other".into()
            }
        );
    }

    #[test]
    fn an_expired_or_released_lease_is_taken_over_with_a_new_transition() {
        let expired = lease(Some("other"), 100, 15);
        assert_eq!(
            decide(Some(&expired), "me", at(116)),
            LeaseDecision::TakeOver
        );
        assert_eq!(
            decide(Some(&lease(None, 100, 15)), "me", at(101)),
            LeaseDecision::TakeOver
        );
        let next = next_lease(
            &LeaseDecision::TakeOver,
            Some(&expired),
            "chat-operator",
            "me",
            Duration::from_secs(15),
            at(116),
        );
        let spec = next.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.renew_time, Some(MicroTime(at(116))));
        assert_eq!(next.metadata.resource_version.as_deref(), Some("7"));
    }

    #[tokio::test]
    async fn acquiring_creates_the_lease_when_there_is_none() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "ops");
        let elector = LeaderElector::new(
            client,
            "ops",
            "chat-operator",
            "pod-a",
            Duration::from_secs(15),
        );
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), http::Method::GET);
            assert_eq!(
                req.uri().path(),
                "/apis/coordination.k8s.io/v1/namespaces/ops/leases/chat-operator"
            );
            let not_found = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
            send.send_response(
                Response::builder()
                    .status(404)
                    .body(Body::from(serde_json::to_vec(&not_found).unwrap()))
                    .unwrap(),
            );
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), http::Method::POST);
            let body = req.into_body().collect_bytes().await.unwrap();
            let lease: Lease = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                lease.spec.unwrap().holder_identity.as_deref(),
                Some("pod-a")
            );
            send.send_response(
                Response::builder()
                    .status(201)
                    .body(Body::from(body))
                    .unwrap(),
            );
        });
        assert!(elector.try_acquire_or_renew().await.unwrap());
        server.await.unwrap();
    }

    fn respond(
        send: tower_test::mock::SendResponse<Response<Body>>,
        status: u16,
        body: &serde_json::Value,
    ) {
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    #[tokio::test]
    async fn a_follower_never_runs_the_work_while_another_replica_holds_the_lease() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let elector = LeaderElector::new(
            Client::new(svc, "ops"),
            "ops",
            "chat-operator",
            "pod-b",
            Duration::from_secs(15),
        );
        let held =
            serde_json::to_value(lease(Some("pod-a"), Timestamp::now().as_second(), 15)).unwrap();
        let server = tokio::spawn(async move {
            let mut gets = 0;
            while let Some((req, send)) = handle.next_request().await {
                assert_eq!(req.method(), http::Method::GET, "a follower only reads");
                gets += 1;
                respond(send, 200, &held);
            }
            gets
        });
        let metrics = Metrics::default();
        let mut ran = false;
        let result = run_as_leader(
            &elector,
            &metrics,
            || {
                ran = true;
                async { Ok(()) }
            },
            tokio::time::sleep(Duration::from_millis(50)),
        )
        .await;
        assert!(result.is_ok());
        assert!(!ran);
        drop(elector);
        assert!(server.await.unwrap() >= 1);
        assert!(metrics.encode().unwrap().contains("chat_operator_leader 0"));
    }

    #[tokio::test]
    async fn the_leader_runs_the_work_and_releases_the_lease_when_it_stops() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let elector = LeaderElector::new(
            Client::new(svc, "ops"),
            "ops",
            "chat-operator",
            "pod-a",
            Duration::from_secs(15),
        );
        let server = tokio::spawn(async move {
            let mut methods = Vec::new();
            let mut stored = serde_json::Value::Null;
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().to_string();
                let body = req.into_body().collect_bytes().await.unwrap();
                match method.as_str() {
                    "GET" if stored.is_null() => respond(
                        send,
                        404,
                        &serde_json::json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "NotFound", "code": 404}),
                    ),
                    "GET" => respond(send, 200, &stored),
                    _ => {
                        stored = serde_json::from_slice(&body).unwrap();
                        respond(send, 200, &stored);
                    }
                }
                methods.push(method);
            }
            (methods, stored)
        });
        let metrics = Metrics::default();
        let result = run_as_leader(
            &elector,
            &metrics,
            || async { Ok(()) },
            std::future::pending::<()>(),
        )
        .await;
        assert!(result.is_ok());
        drop(elector);
        let (methods, stored) = server.await.unwrap();
        assert_eq!(methods, ["GET", "POST", "GET", "PUT"]);
        let released: Lease = serde_json::from_value(stored).unwrap();
        assert_eq!(released.spec.unwrap().holder_identity, None);
    }
}
