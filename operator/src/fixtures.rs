//! Test fixtures: a fake API server behind a `tower-test` mock service, and a fake sentinel.
//!
//! The fake answers the way the API server would for the requests a reconcile makes (server-
//! side apply echoes the object with a status, Secrets and pods come from its state) and
//! records every request, so scenarios assert on exactly what was sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use crate::controller::Context;
use crate::crd::ChatCluster;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::role::{NodeRole, RoleProbe, RoleQuery};
use crate::sentinel::{Answer, MasterAddr, MasterQuery, SentinelProbe};
use futures_util::future::BoxFuture;

/// One request the fake received.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    /// HTTP method.
    pub(crate) method: String,
    /// URL path.
    pub(crate) path: String,
    /// URL query.
    pub(crate) query: String,
    /// JSON body (`Null` when empty).
    pub(crate) body: Value,
}

impl Call {
    /// `(resource, name, subresource)` of a namespaced path.
    pub(crate) fn target(&self) -> (String, Option<String>, Option<String>) {
        let segs: Vec<&str> = self.path.split('/').collect();
        let i = segs.iter().position(|s| *s == "namespaces").unwrap_or(0);
        (
            segs.get(i + 2).map(|s| (*s).to_owned()).unwrap_or_default(),
            segs.get(i + 3).map(|s| (*s).to_owned()),
            segs.get(i + 4).map(|s| (*s).to_owned()),
        )
    }

    /// Whether this is a server-side apply of `resource`.
    pub(crate) fn is_apply_of(&self, resource: &str) -> bool {
        self.method == "PATCH"
            && self.target().0 == resource
            && self.target().2.is_none()
            && self.query.contains("fieldManager=chat-operator")
    }
}

/// The fake API server's state.
#[derive(Clone, Debug)]
pub(crate) struct FakeApi {
    /// The ChatCluster the status patches are answered with.
    pub(crate) cluster: Value,
    /// Secrets by name.
    pub(crate) secrets: BTreeMap<String, Value>,
    /// Pods returned by a list.
    pub(crate) pods: Vec<Value>,
    /// Replicas a Deployment reports when its apply leaves them out (the HPA's choice).
    pub(crate) hpa_replicas: i32,
    /// Whether workloads report every pod ready.
    pub(crate) ready: bool,
    /// Other existing objects a GET finds, by `(resource, name)`.
    pub(crate) objects: BTreeMap<(String, String), Value>,
    /// PersistentVolumeClaims returned by a list.
    pub(crate) claims: Vec<Value>,
    /// Applies answered 422 Invalid, by `(resource, name)`.
    pub(crate) invalid: Vec<(String, String)>,
    /// `status.updateRevision` of the StatefulSets it answers applies with.
    pub(crate) update_revision: Option<String>,
}

impl FakeApi {
    /// A fake for `cc` with nothing in it yet.
    pub(crate) fn new(cc: &ChatCluster) -> Self {
        Self {
            cluster: serde_json::to_value(cc).unwrap_or(Value::Null),
            secrets: BTreeMap::new(),
            pods: Vec::new(),
            hpa_replicas: 4,
            ready: true,
            objects: BTreeMap::new(),
            claims: Vec::new(),
            invalid: Vec::new(),
            update_revision: None,
        }
    }

    /// The same, with StatefulSets at `status.updateRevision` `revision`.
    pub(crate) fn at_revision(mut self, revision: &str) -> Self {
        self.update_revision = Some(revision.to_owned());
        self
    }

    /// The same, with data pod `name` of `revision`, Ready or not.
    pub(crate) fn with_data_pod(mut self, name: &str, revision: &str, ready: bool) -> Self {
        self = self.with_redis_pod(name, false);
        if let Some(pod) = self.pods.last_mut() {
            pod["metadata"]["labels"]["controller-revision-hash"] = json!(revision);
            pod["status"] = json!({"conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]});
        }
        self
    }

    /// Applies of `resource` `name` are refused as invalid, as for a changed immutable field.
    pub(crate) fn refusing_apply(mut self, resource: &str, name: &str) -> Self {
        self.invalid.push((resource.to_owned(), name.to_owned()));
        self
    }

    /// An existing object of `resource` (plural, e.g. `statefulsets`) named `name`.
    pub(crate) fn with_object(mut self, resource: &str, name: &str, object: Value) -> Self {
        self.objects
            .insert((resource.to_owned(), name.to_owned()), object);
        self
    }

    /// An existing PersistentVolumeClaim named `name`.
    pub(crate) fn with_claim(mut self, name: &str) -> Self {
        self.claims.push(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "prod"},
        }));
        self
    }

    /// A Redis data pod, with or without the master label.
    pub(crate) fn with_redis_pod(mut self, name: &str, master: bool) -> Self {
        let mut labels = json!({
            "app.kubernetes.io/name": "redis",
            "app.kubernetes.io/instance": "chat",
            "app.kubernetes.io/component": "redis",
        });
        if master {
            labels["chat.dev/redis-role"] = json!("master");
        }
        self.pods.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "prod", "labels": labels},
        }));
        self
    }

    /// An existing Secret.
    pub(crate) fn with_secret(mut self, name: &str, key: &str, value: &str) -> Self {
        use std::io::Write as _;
        let mut encoded = Vec::new();
        // A tiny base64 encoder keeps the fixture free of another dependency.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for chunk in value.as_bytes().chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    let idx = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap_or(0);
                    encoded.write_all(&[ALPHABET[idx]]).unwrap_or(());
                } else {
                    encoded.write_all(b"=").unwrap_or(());
                }
            }
        }
        let encoded = String::from_utf8(encoded).unwrap_or_default();
        // A second key of a Secret added before joins the first.
        if let Some(existing) = self.secrets.get_mut(name) {
            existing["data"][key] = json!(encoded);
            return self;
        }
        self.secrets.insert(
            name.to_owned(),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}"),
                                "resourceVersion": "1"},
                   "data": {key: encoded}}),
        );
        self
    }

    /// Gives the Secret `name` (added before) another resourceVersion, as an edit would.
    pub(crate) fn with_secret_version(mut self, name: &str, version: &str) -> Self {
        if let Some(s) = self.secrets.get_mut(name) {
            s["metadata"]["resourceVersion"] = json!(version);
        }
        self
    }

    fn respond(&mut self, call: &Call) -> (u16, Value) {
        let (resource, name, sub) = call.target();
        match (
            call.method.as_str(),
            resource.as_str(),
            name,
            sub.as_deref(),
        ) {
            ("GET", "secrets", Some(name), None) => match self.secrets.get(&name) {
                Some(s) => (200, s.clone()),
                None => not_found(),
            },
            ("POST", "secrets", None, None) => {
                let name = call.body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                self.secrets.insert(name, call.body.clone());
                (201, call.body.clone())
            }
            ("GET", "persistentvolumeclaims", None, None) => (
                200,
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList",
                       "metadata": {}, "items": self.claims}),
            ),
            ("GET", kind, Some(name), None)
                if self.objects.contains_key(&(kind.to_owned(), name.clone())) =>
            {
                let key = (kind.to_owned(), name);
                (200, self.objects.get(&key).cloned().unwrap_or(Value::Null))
            }
            ("GET", "pods", None, None) => (
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": self.pods}),
            ),
            ("PATCH" | "DELETE", "pods", Some(name), None) => {
                let pod = self
                    .pods
                    .iter()
                    .find(|p| p["metadata"]["name"] == name.as_str())
                    .cloned();
                pod.map_or_else(not_found, |p| (200, p))
            }
            ("DELETE", "horizontalpodautoscalers", Some(_), None) => not_found(),
            ("POST", "events", None, None) => (201, call.body.clone()),
            ("PATCH", "chatclusters", Some(_), Some("status")) => {
                let mut cc = self.cluster.clone();
                cc["status"] = call.body["status"].clone();
                (200, cc)
            }
            ("PATCH", kind, Some(name), None)
                if self.invalid.contains(&(kind.to_owned(), name.clone())) =>
            {
                (
                    422,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                           "status": "Failure", "reason": "Invalid", "code": 422,
                           "message": format!("{kind} {name:?} is invalid: spec: Forbidden: \
                               updates to statefulset spec for fields other than 'replicas', \
                               'ordinals', 'template', 'updateStrategy', \
                               'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' \
                               are forbidden")}),
                )
            }
            ("PATCH", kind, Some(_), None) => (200, self.applied(kind, &call.body)),
            _ => not_found(),
        }
    }

    /// What the API server returns for an apply: the object with a generation and a status.
    fn applied(&self, kind: &str, body: &Value) -> Value {
        let mut object = body.clone();
        object["metadata"]["generation"] = json!(1);
        let wanted = body["spec"]["replicas"]
            .as_i64()
            .unwrap_or(i64::from(self.hpa_replicas));
        let ready = if self.ready { wanted } else { 0 };
        match kind {
            "deployments" => {
                object["spec"]["replicas"] = json!(wanted);
                object["status"] = json!({"replicas": wanted, "readyReplicas": ready,
                    "updatedReplicas": wanted, "observedGeneration": 1});
            }
            "statefulsets" => {
                object["status"] = json!({"replicas": wanted, "readyReplicas": ready,
                    "updatedReplicas": wanted, "currentReplicas": wanted, "observedGeneration": 1});
                if let Some(revision) = &self.update_revision {
                    object["status"]["updateRevision"] = json!(revision);
                }
            }
            _ => {}
        }
        object
    }
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// Serve `fake` until every client is dropped; the handle yields every request received.
pub(crate) fn serve(mut fake: FakeApi) -> (Client, tokio::task::JoinHandle<Vec<Call>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut calls = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .unwrap_or_default();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let call = Call {
                method,
                path,
                query,
                body,
            };
            let (status, response) = fake.respond(&call);
            calls.push(call);
            let response = Response::builder().status(status).body(Body::from(
                serde_json::to_vec(&response).unwrap_or_default(),
            ));
            if let Ok(response) = response {
                send.send_response(response);
            }
        }
        calls
    });
    (Client::new(service, "default"), task)
}

/// A sentinel that answers from a fixed table (`None`: unreachable).
#[derive(Clone, Debug, Default)]
pub(crate) struct FakeSentinels {
    /// Answer per sentinel address; addresses not listed are unreachable.
    pub(crate) answers: BTreeMap<String, Option<String>>,
}

impl FakeSentinels {
    /// The same, except that the first sentinel of `cc` names `host`.
    pub(crate) fn first_naming(mut self, cc: &ChatCluster, host: &str) -> Self {
        if let Some(first) = crate::resources::sentinel_addresses(cc).into_iter().next() {
            self.answers.insert(first, Some(host.to_owned()));
        }
        self
    }

    /// Every sentinel of `cc` names `host`.
    pub(crate) fn all_naming(cc: &ChatCluster, host: &str) -> Self {
        Self {
            answers: crate::resources::sentinel_addresses(cc)
                .into_iter()
                .map(|a| (a, Some(host.to_owned())))
                .collect(),
        }
    }
}

impl SentinelProbe for FakeSentinels {
    fn master_addr<'a>(&'a self, query: MasterQuery<'a>) -> Answer<'a> {
        let answer = match self.answers.get(query.addr) {
            Some(host) => Ok(host.clone().map(|host| MasterAddr { host, port: 6379 })),
            None => Err(Error::Sentinel {
                addr: query.addr.to_owned(),
                reason: "unreachable".to_owned(),
            }),
        };
        Box::pin(std::future::ready(answer))
    }
}

/// Data nodes that answer `ROLE` from a fixed table, by address; others are unreachable.
#[derive(Clone, Debug, Default)]
pub(crate) struct FakeRoles {
    /// Role per data node address (`host:6379`).
    pub(crate) roles: BTreeMap<String, NodeRole>,
}

impl FakeRoles {
    /// The same, with data pod `ordinal` of `cc` answering `role`.
    pub(crate) fn with(mut self, cc: &ChatCluster, ordinal: i32, role: NodeRole) -> Self {
        let names = crate::resources::Names::of(cc);
        let host = crate::resources::pod_host(
            &names.redis(),
            ordinal,
            &names.redis_headless(),
            &crate::resources::namespace(cc),
        );
        self.roles.insert(format!("{host}:6379"), role);
        self
    }
}

impl RoleProbe for FakeRoles {
    fn role<'a>(&'a self, query: RoleQuery<'a>) -> BoxFuture<'a, crate::Result<NodeRole>> {
        let answer = self
            .roles
            .get(query.addr)
            .cloned()
            .ok_or_else(|| Error::Redis {
                addr: query.addr.to_owned(),
                reason: "unreachable".to_owned(),
            });
        Box::pin(std::future::ready(answer))
    }
}

/// A context on the fake API server.
pub(crate) fn context(
    fake: FakeApi,
    sentinels: FakeSentinels,
) -> (Arc<Context>, tokio::task::JoinHandle<Vec<Call>>) {
    context_with_roles(fake, sentinels, FakeRoles::default())
}

/// A context on the fake API server whose data nodes answer `ROLE` from `roles`.
pub(crate) fn context_with_roles(
    fake: FakeApi,
    sentinels: FakeSentinels,
    roles: FakeRoles,
) -> (Arc<Context>, tokio::task::JoinHandle<Vec<Call>>) {
    let (client, task) = serve(fake);
    let ctx = Context::new(
        client,
        Arc::new(Metrics::default()),
        "ops".to_owned(),
        Some("test".to_owned()),
        Arc::new(sentinels),
        Arc::new(roles),
    );
    (Arc::new(ctx), task)
}

/// Drop the context and collect what the fake received.
pub(crate) async fn finish(
    ctx: Arc<Context>,
    task: tokio::task::JoinHandle<Vec<Call>>,
) -> Vec<Call> {
    drop(ctx);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(calls)) => calls,
        other => panic!("the fake API server did not finish: {other:?}"),
    }
}
