//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go does it, so two or
//! more replicas never reconcile at once:
//! - a follower measures a holder's expiry from when it *itself* last saw the Lease change
//!   (its own monotonic clock), never from the holder's `renewTime`, so clock skew between
//!   nodes cannot shorten a lease;
//! - the leader stops its work when it has not renewed within the renew deadline, which is
//!   shorter than the lease duration, so it has stopped before any follower can take over;
//! - every Lease call has a timeout, so a hung call counts against the deadline instead of
//!   blocking it;
//! - a replica that shuts down releases the Lease for a fast hand-over.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The three durations of an election (client-go's defaults are 15 s, 10 s, 2 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeaseTiming {
    /// How long a follower waits, from its last observed change of the Lease, to take over.
    pub(crate) lease_duration: Duration,
    /// How long the leader keeps working without a successful renewal; below
    /// `lease_duration`, so the leader has stopped before a follower may take over.
    pub(crate) renew_deadline: Duration,
    /// Pause between attempts (to acquire, or to renew).
    pub(crate) retry_period: Duration,
}

impl LeaseTiming {
    /// The timing for a lease of `lease_duration`: renew deadline 2/3 of it, retry period
    /// 2/15 of it (15 s gives client-go's 15 s / 10 s / 2 s).
    pub(crate) fn for_lease(lease_duration: Duration) -> Self {
        Self {
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration * 2 / 15,
        }
    }

    /// The longest one Lease call may take: a quarter of the renew deadline, so a hung call
    /// still leaves room for further attempts before the deadline.
    pub(crate) fn call_timeout(&self) -> Duration {
        self.renew_deadline / 4
    }
}

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

/// Decide from the Lease `lease` (if any) what `me` does at `now`, when this replica last saw
/// the Lease change at `observed_at` (its own clock). The holder has expired when neither
/// `lease_duration` nor the duration the Lease declares has passed since that observation.
pub(crate) fn decide(
    lease: Option<&Lease>,
    me: &str,
    observed_at: Instant,
    now: Instant,
    lease_duration: Duration,
) -> LeaseDecision {
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
    let declared = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    if observed_at + lease_duration.max(declared) > now {
        LeaseDecision::Follow { holder }
    } else {
        LeaseDecision::TakeOver
    }
}

/// The Lease `me` writes for `decision`, starting from `existing` (its resourceVersion makes
/// the write fail if someone else wrote first). `now` is wall-clock time, for people reading
/// the Lease; no replica's decision depends on it.
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

/// The Lease as last seen, and when (this replica's clock).
#[derive(Clone, Debug)]
struct Observation {
    record: Option<LeaseSpec>,
    at: Instant,
}

/// Holds or waits for one Lease.
pub(crate) struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    observed: Mutex<Option<Observation>>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict() || s.is_already_exists())
}

impl LeaderElector {
    /// An elector for the Lease `namespace/name`, as `identity`, with `timing`.
    pub(crate) fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: Mutex::new(None),
        }
    }

    /// `call`, failing with [`Error::Timeout`] after the timing's call timeout.
    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = kube::Result<T>>,
    ) -> Result<kube::Result<T>> {
        let limit = self.timing.call_timeout();
        tokio::time::timeout(limit, call)
            .await
            .map_err(|_| Error::Timeout {
                what,
                after_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            })
    }

    /// When this replica first saw the Lease as `record` is now: the time of the last change.
    fn observe(&self, record: Option<LeaseSpec>, now: Instant) -> Instant {
        let mut observed = self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match observed.as_ref() {
            Some(o) if o.record == record => o.at,
            _ => {
                *observed = Some(Observation { record, at: now });
                now
            }
        }
    }

    /// One attempt to acquire or renew; `Ok(true)` when we hold the Lease afterwards,
    /// `Ok(false)` when another replica holds it (or won a race to take it).
    pub(crate) async fn try_acquire_or_renew(&self) -> Result<bool> {
        let existing = self
            .bounded("get the Lease", self.api.get_opt(&self.name))
            .await??;
        let now = Instant::now();
        let observed_at = self.observe(existing.as_ref().and_then(|l| l.spec.clone()), now);
        let decision = decide(
            existing.as_ref(),
            &self.identity,
            observed_at,
            now,
            self.timing.lease_duration,
        );
        let lease = next_lease(
            &decision,
            existing.as_ref(),
            &self.name,
            &self.identity,
            self.timing.lease_duration,
            Timestamp::now(),
        );
        let params = PostParams::default();
        let written = match &decision {
            LeaseDecision::Follow { holder } => {
                debug!(%holder, "another replica leads");
                return Ok(false);
            }
            LeaseDecision::Create => {
                self.bounded("create the Lease", self.api.create(&params, &lease))
                    .await?
            }
            LeaseDecision::Renew | LeaseDecision::TakeOver => {
                self.bounded(
                    "write the Lease",
                    self.api.replace(&self.name, &params, &lease),
                )
                .await?
            }
        };
        match written {
            Ok(_) => Ok(true),
            // Someone else won the race to create or take the Lease.
            Err(e) if conflict(&e) && decision != LeaseDecision::Renew => Ok(false),
            // A renewal that conflicts (say, an earlier write that timed out on our side but
            // landed) is retried with a fresh read until the renew deadline.
            Err(e) => Err(e.into()),
        }
    }

    /// Give the Lease up (on shutdown) so that a follower takes over at once.
    pub(crate) async fn release(&self) -> Result<()> {
        let Some(mut lease) = self
            .bounded("get the Lease", self.api.get_opt(&self.name))
            .await??
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        let params = PostParams::default();
        match self
            .bounded(
                "release the Lease",
                self.api.replace(&self.name, &params, &lease),
            )
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) if conflict(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Renew every retry period; give up (returning why) once no renewal succeeded within the
/// renew deadline, counted from the start of the last successful attempt (the earliest moment
/// any follower can have observed that write).
async fn keep_renewing(elector: &LeaderElector, mut renewed_at: Instant) -> Error {
    let timing = elector.timing;
    loop {
        let deadline = renewed_at + timing.renew_deadline;
        // Never sleep past the deadline: stepping down must not wait for the next attempt.
        tokio::time::sleep_until((Instant::now() + timing.retry_period).min(deadline)).await;
        let attempt = Instant::now();
        match tokio::time::timeout_at(deadline, elector.try_acquire_or_renew()).await {
            Ok(Ok(true)) => renewed_at = attempt,
            Ok(Ok(false)) => return Error::LostLease("another replica took the Lease".to_owned()),
            Ok(Err(e)) => {
                warn!(error = %e, "could not renew the Lease");
                if Instant::now() >= deadline {
                    return Error::LostLease(format!("not renewed within the deadline: {e}"));
                }
            }
            Err(_) => {
                return Error::LostLease(format!(
                    "not renewed within the renew deadline of {} ms",
                    timing.renew_deadline.as_millis()
                ));
            }
        }
    }
}

/// Wait for the Lease, then run `work` while renewing it. Returns when `work` ends, when the
/// Lease is lost (an error: `work` has been stopped, and the process should stop), or when
/// `shutdown` resolves first.
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
    let acquired_at = loop {
        let attempt = Instant::now();
        match elector.try_acquire_or_renew().await {
            Ok(true) => break attempt,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "could not read or write the Lease"),
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(elector.timing.retry_period) => {}
        }
    };
    info!(lease = %elector.name, identity = %elector.identity, "became leader");
    metrics.set_leader(true);
    // Losing the Lease drops `work`: the leader stops reconciling before a follower may start.
    let result = tokio::select! {
        result = work() => result,
        lost = keep_renewing(elector, acquired_at) => Err(lost),
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
    use std::sync::{Arc, Mutex as StdMutex};

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

    const LEASE: Duration = Duration::from_secs(15);

    /// An elector for the Lease `ops/chat-operator` as `identity`, with the default timing.
    fn elector_as(client: Client, identity: &str) -> LeaderElector {
        LeaderElector::new(client, "ops", "chat-operator", identity, timing())
    }

    fn timing() -> LeaseTiming {
        LeaseTiming::for_lease(LEASE)
    }

    #[test]
    fn the_default_timing_is_client_gos_with_the_renew_deadline_below_the_lease() {
        let t = timing();
        assert_eq!(
            (t.lease_duration, t.renew_deadline, t.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        assert!(t.call_timeout() < t.renew_deadline);
    }

    #[test]
    fn a_missing_lease_is_created() {
        let now = Instant::now();
        assert_eq!(decide(None, "me", now, now, LEASE), LeaseDecision::Create);
    }

    #[test]
    fn the_holder_renews_its_own_lease() {
        let now = Instant::now();
        assert_eq!(
            decide(Some(&lease(Some("me"), 0, 15)), "me", now, now, LEASE),
            LeaseDecision::Renew
        );
    }

    #[test]
    fn expiry_counts_from_the_followers_own_observation_not_the_holders_renew_time() {
        // renewTime is decades old (a holder with a skewed clock), yet the Lease was seen to
        // change just now: it is live for a full lease duration from now.
        let seen = Instant::now();
        let held = lease(Some("other"), 0, 15);
        let at = |secs: u64| seen + Duration::from_secs(secs);
        let follow = LeaseDecision::Follow {
            holder: "other".into(),
        };
        assert_eq!(decide(Some(&held), "me", seen, at(14), LEASE), follow);
        assert_eq!(
            decide(Some(&held), "me", seen, at(15), LEASE),
            LeaseDecision::TakeOver
        );
        // A longer duration declared in the Lease is honoured too.
        let long = lease(Some("other"), 0, 40);
        assert_eq!(decide(Some(&long), "me", seen, at(39), LEASE), follow);
    }

    #[test]
    fn a_released_lease_is_taken_over_with_a_new_transition() {
        let now = Instant::now();
        assert_eq!(
            decide(Some(&lease(None, 100, 15)), "me", now, now, LEASE),
            LeaseDecision::TakeOver
        );
        let expired = lease(Some("other"), 100, 15);
        let next = next_lease(
            &LeaseDecision::TakeOver,
            Some(&expired),
            "chat-operator",
            "me",
            LEASE,
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
        let elector = elector_as(client, "pod-a");
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

    /// Run `elector` for `within`: whether it ever became leader and ran its work.
    async fn runs_work(elector: &LeaderElector, metrics: &Metrics, within: Duration) -> bool {
        let mut ran = false;
        let work = || {
            ran = true;
            async { Ok(()) }
        };
        let result = run_as_leader(elector, metrics, work, tokio::time::sleep(within)).await;
        assert!(result.is_ok(), "{result:?}");
        ran
    }

    #[tokio::test]
    async fn a_follower_never_runs_the_work_while_another_replica_holds_the_lease() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let elector = elector_as(Client::new(svc, "ops"), "pod-b");
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
        let ran = runs_work(&elector, &metrics, Duration::from_millis(50)).await;
        assert!(!ran);
        drop(elector);
        assert!(server.await.unwrap() >= 1);
        assert!(metrics.encode().unwrap().contains("chat_operator_leader 0"));
    }

    #[tokio::test]
    async fn the_leader_runs_the_work_and_releases_the_lease_when_it_stops() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let elector = elector_as(Client::new(svc, "ops"), "pod-a");
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

    /// A Lease API server on `store` (`Null`: no Lease). After answering `answered` requests
    /// it holds every further one unanswered: an API server this replica can no longer reach.
    /// The task yields the methods it received.
    fn lease_server(
        store: Arc<StdMutex<serde_json::Value>>,
        answered: Option<usize>,
    ) -> (Client, tokio::task::JoinHandle<Vec<String>>) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let task = tokio::spawn(async move {
            let mut methods = Vec::new();
            let mut held = Vec::new();
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().to_string();
                methods.push(method.clone());
                if answered.is_some_and(|n| methods.len() > n) {
                    held.push(send);
                    continue;
                }
                let body = req.into_body().collect_bytes().await.unwrap();
                let mut stored = store.lock().unwrap();
                match method.as_str() {
                    "GET" if stored.is_null() => respond(
                        send,
                        404,
                        &serde_json::json!({"kind": "Status", "apiVersion": "v1",
                            "metadata": {}, "status": "Failure", "reason": "NotFound",
                            "code": 404}),
                    ),
                    "GET" => respond(send, 200, &stored),
                    _ => {
                        *stored = serde_json::from_slice(&body).unwrap();
                        respond(send, 200, &stored);
                    }
                }
            }
            methods
        });
        (Client::new(svc, "ops"), task)
    }

    /// Records when it is dropped: when the work that owns it stopped.
    struct StopGuard(Arc<StdMutex<Option<Instant>>>);

    impl Drop for StopGuard {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(Instant::now());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_lease_call_times_out_instead_of_blocking() {
        let (client, _server) =
            lease_server(Arc::new(StdMutex::new(serde_json::Value::Null)), Some(0));
        let elector = elector_as(client, "pod-a");
        let started = Instant::now();
        let err = elector.try_acquire_or_renew().await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        let waited = started.elapsed();
        assert!(waited >= timing().call_timeout(), "{waited:?}");
        assert!(
            waited < timing().call_timeout() + Duration::from_millis(100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_stops_working_before_a_follower_can_take_over() {
        let store = Arc::new(StdMutex::new(serde_json::Value::Null));
        // The leader creates the Lease (GET, POST), renews it once (GET, PUT), then loses the
        // API server: its calls hang from then on. The follower still reaches it.
        let (leader_client, _leader_server) = lease_server(store.clone(), Some(4));
        let (follower_client, _follower_server) = lease_server(store, None);
        let leader = elector_as(leader_client, "pod-a");
        let follower = elector_as(follower_client, "pod-b");
        let leader_stopped = Arc::new(StdMutex::new(None));
        let follower_started = Arc::new(StdMutex::new(None));
        let start = Instant::now();

        let guard = StopGuard(leader_stopped.clone());
        let leading = async {
            run_as_leader(
                &leader,
                &Metrics::default(),
                move || async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok(())
                },
                std::future::pending(),
            )
            .await
        };
        let started = follower_started.clone();
        let following = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            run_as_leader(
                &follower,
                &Metrics::default(),
                move || async move {
                    *started.lock().unwrap() = Some(Instant::now());
                    Ok(())
                },
                tokio::time::sleep(Duration::from_secs(60)),
            )
            .await
        };
        let (led, followed) = tokio::join!(leading, following);

        assert!(matches!(led, Err(Error::LostLease(_))), "{led:?}");
        assert!(followed.is_ok());
        let stopped = leader_stopped
            .lock()
            .unwrap()
            .expect("the leader's work stopped");
        let took_over = follower_started
            .lock()
            .unwrap()
            .expect("the follower took over");
        // Last renewal at 2 s: the leader gives up by its renew deadline after it...
        assert!(
            stopped - start <= Duration::from_secs(12),
            "{:?}",
            stopped - start
        );
        // ...while the follower, which saw that renewal at 2.5 s, waits a full lease from
        // then: no moment with two leaders.
        assert!(took_over > stopped, "overlap: {stopped:?} vs {took_over:?}");
        assert!(
            took_over - start >= Duration::from_millis(17_500),
            "{:?}",
            took_over - start
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_never_takes_over_while_it_keeps_seeing_the_lease_change() {
        // The holder's clock is decades behind (renewTime in 2001), but it keeps renewing:
        // every read shows a new renewTime.
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut methods = Vec::new();
            let mut renewed = 1_000_000_000;
            while let Some((req, send)) = handle.next_request().await {
                methods.push(req.method().to_string());
                renewed += 2;
                respond(
                    send,
                    200,
                    &serde_json::to_value(lease(Some("pod-a"), renewed, 15)).unwrap(),
                );
            }
            methods
        });
        let elector = elector_as(Client::new(svc, "ops"), "pod-b");
        let ran = runs_work(&elector, &Metrics::default(), Duration::from_secs(120)).await;
        assert!(!ran, "took over a Lease that kept changing");
        drop(elector);
        let methods = server.await.unwrap();
        assert!(methods.len() >= 50, "it kept asking: {}", methods.len());
        assert!(methods.iter().all(|m| m == "GET"), "{methods:?}");
    }
}
