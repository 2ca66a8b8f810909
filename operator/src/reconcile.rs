//! One reconcile of a ChatCluster: validate, ensure the password Secret, server-side apply
//! every child, learn the Redis master from the sentinels and label it, write the status, and
//! publish Events for what changed.
//!
//! Deletion needs no finalizer: every child has a controller owner reference, so the garbage
//! collector removes them with the ChatCluster. A cluster being deleted is left alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::controller::{Context, key};
use crate::crd::{ChatCluster, ChatClusterStatus, RedisMode, SENTINEL_MASTER_NAME};
use crate::error::{Error, Result};
use crate::render::validate;
use crate::resources::redis::standalone_address;
use crate::resources::sentinel::quorum;
use crate::resources::{
    self, Children, Component, FIELD_MANAGER, Names, REDIS_PORT, REDIS_ROLE_LABEL,
    REDIS_ROLE_MASTER, deploys, generates_password, redis_password_ref, secret, selector_string,
    sentinel_addresses,
};
use crate::role::{NodeRole, RoleCheck, RoleQuery, check_roles, may_label_master};
use crate::rollout::{DataPod, RollStep, next_step};
use crate::sentinel::MasterQuery;
use crate::status::{self, MasterView, Observed, Workload, compute, decide_master, flipped};

/// Requeue interval in Sentinel mode: how soon a failover is noticed at the latest.
pub(crate) const SENTINEL_REQUEUE: Duration = Duration::from_secs(15);
/// The longest one reconcile may take, every API call and sentinel probe in it included (the
/// controller's client has no read timeout, so that idle watches survive): a hung call fails
/// the reconcile, which the error policy retries.
pub(crate) const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Requeue interval otherwise (owned workloads trigger reconciles on change anyway).
pub(crate) const DEFAULT_REQUEUE: Duration = Duration::from_secs(300);

/// Reconcile `cc`: the entry point the controller calls.
pub(crate) async fn reconcile(cc: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action> {
    let span = info_span!(
        "reconcile",
        namespace = cc.namespace().unwrap_or_default(),
        name = cc.name_any(),
        generation = cc.metadata.generation.unwrap_or_default()
    );
    let started = Instant::now();
    ctx.metrics.reconcile_started();
    let result = tokio::time::timeout(RECONCILE_TIMEOUT, reconcile_inner(&cc, &ctx))
        .instrument(span)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout {
                what: "reconcile",
                after_ms: u64::try_from(RECONCILE_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
            })
        });
    ctx.metrics.reconcile_finished(started.elapsed());
    match &result {
        Ok(_) => ctx.record_success(&key(&cc)),
        Err(e) => ctx.metrics.reconcile_failed(e),
    }
    result
}

async fn reconcile_inner(cc: &ChatCluster, ctx: &Context) -> Result<Action> {
    if cc.metadata.deletion_timestamp.is_some() {
        info!("being deleted: its children go with it through their owner references");
        return Ok(Action::await_change());
    }
    let ns = cc.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    if let Err(e) = validate(cc) {
        write_failure(ctx, cc, &ns, status::INVALID_SPEC, &e).await?;
        return Err(e);
    }
    match converge(cc, ctx, &ns).await {
        Ok(action) => Ok(action),
        Err(e) => {
            // Best effort: say so in the status too; the error policy retries either way.
            let reason = match e {
                Error::PasswordSecretLost { .. } => status::PASSWORD_SECRET_LOST,
                Error::InvalidSecret { .. } => status::INVALID_SECRET,
                _ => status::RECONCILE_FAILED,
            };
            if let Err(status_error) = write_failure(ctx, cc, &ns, reason, &e).await {
                debug!(error = %status_error, "could not record the failure in the status");
            }
            Err(e)
        }
    }
}

async fn converge(cc: &ChatCluster, ctx: &Context, ns: &str) -> Result<Action> {
    let password = ensure_password(ctx, cc, ns).await?;
    let archive_secrets = check_archive_secrets(ctx, cc, ns).await?;
    let mut children = resources::children(cc, &ctx.operator_namespace);
    if let (Some(password), Some((_, key))) = (&password, redis_password_ref(cc)) {
        children.stamp_secret_checksum(&secret::password_checksum(&key, password));
    }
    if let Some(checksum) = &archive_secrets {
        children.stamp_archive_secrets(checksum);
    }
    if cc.spec.server.autoscaling.enabled {
        hand_replicas_to_the_hpa(ctx, cc, ns, &mut children.deployment).await?;
    }
    let applied = apply_children(ctx, ns, &children).await?;
    if children.horizontal_pod_autoscaler.is_none() {
        delete_hpa(ctx, cc, ns).await?;
    }
    let mut observed = observe(cc, ns, &applied);
    if deploys(cc, RedisMode::Sentinel) {
        let view = ask_sentinels(ctx, cc, password.as_deref()).await;
        let roles = ask_roles(ctx, cc, password.as_deref()).await;
        let named = match &view {
            MasterView::Agreed(host) => Some(pod_of(host)),
            _ => None,
        };
        let check = check_roles(named, &roles);
        // The roll moves only when the sentinels agree and no node's own role contradicts them.
        let agreed_master = named.filter(|_| check == RoleCheck::Consistent);
        roll_data_nodes(ctx, cc, ns, &applied, agreed_master, &roles).await?;
        match &view {
            MasterView::Agreed(host) if may_label_master(&check, pod_of(host)) => {
                label_master(ctx, cc, ns, host).await?;
                observed.redis_master = Some(format!("{host}:{REDIS_PORT}"));
            }
            _ => {
                observed.redis_master = cc.status.as_ref().and_then(|s| s.redis_master.clone());
            }
        }
        if check != RoleCheck::Consistent {
            warn!(
                ?check,
                "the data nodes' own roles contradict a single master"
            );
        }
        observed.roles = Some(check);
        if let MasterView::Conflict(hosts) = &view {
            warn!(
                ?hosts,
                "sentinels name more than one master; not relabelling"
            );
        }
        observed.master = Some(view);
    }
    write_status(ctx, cc, ns, &observed).await?;
    Ok(Action::requeue(if deploys(cc, RedisMode::Sentinel) {
        SENTINEL_REQUEUE
    } else {
        DEFAULT_REQUEUE
    }))
}

/// The Redis password: read from its Secret, or generated once into a new Secret. An
/// existing Secret is never overwritten, so the password never rotates by accident; a missing
/// generated Secret is re-created only while no Redis data exists (see
/// [`redis_data_evidence`]), because the running pods and any data on volumes keep the old one.
async fn ensure_password(ctx: &Context, cc: &ChatCluster, ns: &str) -> Result<Option<String>> {
    let Some((name, key)) = redis_password_ref(cc) else {
        return Ok(None);
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(existing) = api.get_opt(&name).await? {
        return read_key(&existing, &name, &key).map(Some);
    }
    if !generates_password(cc) {
        return Err(Error::MissingSecret {
            name,
            reason: "not found".to_owned(),
        });
    }
    if let Some(evidence) = redis_data_evidence(ctx, cc, ns).await? {
        warn!(secret = %name, %evidence, "password Secret lost while Redis data exists");
        return Err(Error::PasswordSecretLost { name, evidence });
    }
    let password = secret::generate_password();
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match api
        .create(&params, &secret::redis_password_secret(cc, &password))
        .await
    {
        Ok(_) => {
            info!(secret = %name, "generated the Redis password");
            publish(
                ctx,
                cc,
                EventType::Normal,
                "PasswordGenerated",
                format!("generated the Redis password in Secret {name}"),
            )
            .await;
            Ok(Some(password))
        }
        // Someone (another replica, a retry) created it first: theirs wins.
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let existing = api.get(&name).await?;
            read_key(&existing, &name, &key).map(Some)
        }
        Err(e) => Err(e.into()),
    }
}

/// What a Secret of the archive must hold for the servers to start.
#[derive(Clone, Copy)]
enum ArchiveSecret {
    /// `CHAT_ARCHIVE_URL`: a URL chat-server's parser accepts.
    Url,
    /// `CHAT_ARCHIVE_PASSWORD_FILE`: any value.
    Password,
    /// `CHAT_ARCHIVE_SSL_ROOT_CERT_FILE` or `CHAT_ARCHIVE_SSL_CERT_FILE`: at least one PEM
    /// certificate.
    Ca,
    /// `CHAT_ARCHIVE_SSL_KEY_FILE`: a PEM private key.
    Key,
}

impl ArchiveSecret {
    /// Why the servers would refuse `value`; never quotes it (it may hold a password).
    fn refuse(self, value: &str) -> Option<String> {
        match self {
            ArchiveSecret::Url => chat_server::archive::check_url(value).err().map(|m| {
                if m.contains(value) {
                    "not a PostgreSQL URL".to_owned()
                } else {
                    m
                }
            }),
            ArchiveSecret::Password => None,
            ArchiveSecret::Ca => chat_server::archive::check_root_cert_pem(value.as_bytes()).err(),
            ArchiveSecret::Key => {
                chat_server::archive::check_private_key_pem(value.as_bytes()).err()
            }
        }
    }
}

/// The archive's Secrets (URL, password, CA and client certificates), read and checked as the servers will
/// read them, so a missing key or a URL they would refuse degrades the cluster before any server
/// is rolled onto it (the servers would crash-loop). Returns what goes on the servers' pod
/// template so an edited Secret rolls them: a checksum of the Secrets' uid and
/// resourceVersion, never of their values.
async fn check_archive_secrets(
    ctx: &Context,
    cc: &ChatCluster,
    ns: &str,
) -> Result<Option<String>> {
    let Some(archive) = &cc.spec.archive else {
        return Ok(None);
    };
    let tls = archive.tls.as_ref();
    let mut wanted: Vec<(crate::crd::SecretKeyRef, ArchiveSecret)> =
        vec![(archive.url_secret_ref.clone(), ArchiveSecret::Url)];
    wanted.extend(
        archive
            .password_secret_ref
            .clone()
            .map(|r| (r, ArchiveSecret::Password)),
    );
    wanted.extend(
        tls.and_then(|t| t.ca_secret_ref.clone())
            .map(|r| (r, ArchiveSecret::Ca)),
    );
    // The client certificate Secret is a kubernetes.io/tls one: two keys of fixed names.
    if let Some(name) = tls.and_then(|t| t.client_cert_secret_name.as_ref()) {
        for (key, kind) in [
            ("tls.crt", ArchiveSecret::Ca),
            ("tls.key", ArchiveSecret::Key),
        ] {
            let r = crate::crd::SecretKeyRef {
                name: name.clone(),
                key: key.to_owned(),
            };
            wanted.push((r, kind));
        }
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    // Each Secret read once (the client certificate's gives two keys; one Secret may serve
    // several references), with its version for the checksum.
    let mut read: BTreeMap<String, (Secret, String)> = BTreeMap::new();
    for (r, kind) in wanted {
        if !read.contains_key(&r.name) {
            let found = api
                .get_opt(&r.name)
                .await?
                .ok_or_else(|| Error::MissingSecret {
                    name: r.name.clone(),
                    reason: "not found (named by spec.archive)".to_owned(),
                })?;
            let meta = &found.metadata;
            let version = format!(
                "{}/{}",
                meta.uid.as_deref().unwrap_or_default(),
                meta.resource_version.as_deref().unwrap_or_default()
            );
            read.insert(r.name.clone(), (found, version));
        }
        let Some((found, _)) = read.get(&r.name) else {
            continue;
        };
        let value = read_key(found, &r.name, &r.key)?;
        if let Some(reason) = kind.refuse(&value) {
            return Err(Error::InvalidSecret {
                name: r.name.clone(),
                reason: format!("key {:?}: {reason}", r.key),
            });
        }
    }
    Ok(Some(resources::config_map::fnv_hex(
        read.iter().map(|(n, (_, v))| (n.as_bytes(), v.as_bytes())),
    )))
}

/// What still holds Redis data of `cc`, if anything: its data StatefulSet (whose pods were
/// started with the current password, and whose emptyDir or volumes hold the data) or a claim
/// of its data volumes (kept after the StatefulSet is gone).
async fn redis_data_evidence(ctx: &Context, cc: &ChatCluster, ns: &str) -> Result<Option<String>> {
    let name = Names::of(cc).redis();
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    if sets.get_opt(&name).await?.is_some() {
        return Ok(Some(format!("StatefulSet {name}")));
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let selector = ListParams::default().labels(&selector_string(cc, Component::Redis));
    Ok(claims
        .list(&selector)
        .await?
        .items
        .first()
        .map(|c| format!("PersistentVolumeClaim {}", c.name_any())))
}

fn read_key(secret: &Secret, name: &str, key: &str) -> Result<String> {
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned());
    let from_string_data = || {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .cloned()
    };
    from_data
        .or_else(from_string_data)
        .ok_or_else(|| Error::MissingSecret {
            name: name.to_owned(),
            reason: format!("has no key {key:?}"),
        })
}

async fn apply<K>(ctx: &Context, ns: &str, object: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = object
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api.patch(&name, &params, &Patch::Apply(object)).await?;
    debug!(kind = K::kind(&()).as_ref(), %name, "applied");
    Ok(applied)
}

/// Set the `replicas` the Deployment is applied with while autoscaling is on; see
/// [`autoscaled_replicas`].
async fn hand_replicas_to_the_hpa(
    ctx: &Context,
    cc: &ChatCluster,
    ns: &str,
    deployment: &mut Deployment,
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let live = api.get_opt(&Names::of(cc).server()).await?;
    let replicas = autoscaled_replicas(live.as_ref(), cc.spec.server.autoscaling.min_replicas);
    debug!(?replicas, "deployment replicas while autoscaling");
    if let Some(spec) = deployment.spec.as_mut() {
        spec.replicas = replicas;
    }
    Ok(())
}

/// The `replicas` to apply the servers' Deployment with while autoscaling is on: the
/// server-side apply ownership hand-over of the Kubernetes documentation ("Transferring
/// ownership"). Applying without `replicas` while the operator still owns the field releases
/// it, and a released `replicas` is reset to its default of 1 (a 7-pod Deployment drops to 1
/// pod until the HPA reacts). So:
/// - no Deployment yet: apply `minReplicas`, which the HPA takes over from;
/// - another manager (the HPA's scale updates, `kubectl scale`) owns `spec.replicas`: leave
///   the field out, the operator owns nothing there to release;
/// - otherwise apply the live value: nothing scales, and the HPA's first change of it takes
///   the field over, after which the case above applies.
pub(crate) fn autoscaled_replicas(live: Option<&Deployment>, min_replicas: i32) -> Option<i32> {
    let Some(live) = live else {
        return Some(min_replicas);
    };
    if replicas_owned_by_another_manager(live) {
        return None;
    }
    Some(
        live.spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(min_replicas),
    )
}

/// Whether a field manager other than the operator owns `spec.replicas` of `deployment`.
fn replicas_owned_by_another_manager(deployment: &Deployment) -> bool {
    deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() != Some(FIELD_MANAGER))
        .filter_map(|m| m.fields_v1.as_ref())
        .any(|f| {
            f.0.get("f:spec")
                .and_then(|s| s.get("f:replicas"))
                .is_some()
        })
}

/// What the API server answered to the applies that the status is computed from.
#[derive(Clone, Debug, Default)]
pub(crate) struct Applied {
    /// The servers' Deployment, with its status.
    pub(crate) deployment: Option<Deployment>,
    /// Redis and sentinel StatefulSets, with their status.
    pub(crate) stateful_sets: Vec<StatefulSet>,
    /// The clients' Service, with its status.
    pub(crate) service: Option<Service>,
    /// StatefulSets the API server refused as invalid, with its message.
    pub(crate) refused: Vec<String>,
}

/// Apply `sts`; when the API server refuses it as invalid (an immutable field such as the
/// volumeClaimTemplates changed, say by a spec edited past the CRD's rules), record why and
/// carry on with the live StatefulSet, so one refused change cannot block every other child.
async fn apply_stateful_set(
    ctx: &Context,
    ns: &str,
    sts: &StatefulSet,
    applied: &mut Applied,
) -> Result<()> {
    match apply(ctx, ns, sts).await {
        Ok(live) => applied.stateful_sets.push(live),
        Err(Error::Kube(kube::Error::Api(status))) if status.is_invalid() => {
            let name = sts.metadata.name.clone().unwrap_or_default();
            warn!(statefulset = %name, reason = %status.message, "refused as invalid; needs a migration");
            applied
                .refused
                .push(format!("StatefulSet {name}: {}", status.message));
            let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
            if let Some(live) = api.get_opt(&name).await? {
                applied.stateful_sets.push(live);
            }
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

async fn apply_children(ctx: &Context, ns: &str, c: &Children) -> Result<Applied> {
    let mut applied = Applied::default();
    if let Some(cm) = &c.config_map {
        apply(ctx, ns, cm).await?;
    }
    for svc in &c.redis_services {
        apply(ctx, ns, svc).await?;
    }
    for sts in &c.stateful_sets {
        apply_stateful_set(ctx, ns, sts, &mut applied).await?;
    }
    for pdb in &c.redis_disruption_budgets {
        apply(ctx, ns, pdb).await?;
    }
    if let Some(np) = &c.network_policy {
        apply(ctx, ns, np).await?;
    }
    apply(ctx, ns, &c.service_account).await?;
    applied.deployment = Some(apply(ctx, ns, &c.deployment).await?);
    applied.service = Some(apply(ctx, ns, &c.service).await?);
    apply(ctx, ns, &c.pod_disruption_budget).await?;
    if let Some(hpa) = &c.horizontal_pod_autoscaler {
        apply(ctx, ns, hpa).await?;
    }
    Ok(applied)
}

async fn delete_hpa(ctx: &Context, cc: &ChatCluster, ns: &str) -> Result<()> {
    let api: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::namespaced(ctx.client.clone(), ns);
    match api
        .delete(&Names::of(cc).server(), &DeleteParams::default())
        .await
    {
        Ok(_) => {
            info!("autoscaling is off: deleted the HorizontalPodAutoscaler");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn deployment_workload(d: &Deployment) -> Workload {
    let status = d.status.clone().unwrap_or_default();
    Workload {
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        current: status.replicas.unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        observed_latest: status.observed_generation >= d.metadata.generation,
    }
}

fn statefulset_workload(s: &StatefulSet) -> Workload {
    let status = s.status.clone().unwrap_or_default();
    Workload {
        desired: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        current: status.replicas,
        ready: status.ready_replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        observed_latest: status.observed_generation >= s.metadata.generation,
    }
}

/// Where clients connect: the load balancer's address once it has one, else the Service's
/// cluster DNS name.
pub(crate) fn endpoint(cc: &ChatCluster, ns: &str, service: Option<&Service>) -> String {
    let port = cc.spec.server.service.port;
    let ingress = service
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.ip.clone().or_else(|| i.hostname.clone()));
    match ingress {
        Some(host) => format!("{host}:{port}"),
        None => format!("{}.{ns}.svc:{port}", Names::of(cc).server_service()),
    }
}

/// The observation a status is computed from, given the apply responses.
pub(crate) fn observe(cc: &ChatCluster, ns: &str, applied: &Applied) -> Observed {
    let names = Names::of(cc);
    let find = |name: String| {
        applied
            .stateful_sets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
            .map(statefulset_workload)
    };
    Observed {
        servers: applied
            .deployment
            .as_ref()
            .map(deployment_workload)
            .unwrap_or_default(),
        redis: find(names.redis()),
        sentinels: find(names.sentinel()),
        master: None,
        redis_master: deploys(cc, RedisMode::Standalone).then(|| standalone_address(cc)),
        endpoint: Some(endpoint(cc, ns, applied.service.as_ref())),
        roles: None,
        refused: applied.refused.clone(),
    }
}

/// Ask every sentinel at once (each bounded by the probe's timeout) and decide.
async fn ask_sentinels(ctx: &Context, cc: &ChatCluster, password: Option<&str>) -> MasterView {
    let addresses = sentinel_addresses(cc);
    let asks = addresses.iter().map(|addr| async move {
        let query = MasterQuery {
            addr,
            password,
            master_name: SENTINEL_MASTER_NAME,
        };
        match ctx.sentinel.master_addr(query).await {
            // The data nodes' port is fixed; what identifies the master is its host.
            Ok(master) => master.map(|m| m.host),
            Err(e) => {
                debug!(sentinel = %addr, error = %e, "sentinel did not answer");
                None
            }
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let needed = usize::try_from(quorum(cc.spec.redis.sentinel_replicas())).unwrap_or(usize::MAX);
    decide_master(&answers, needed)
}

/// The pod name in a pod's host name (`NAME-redis-1.NAME-redis-headless.ns.svc`).
fn pod_of(host: &str) -> &str {
    host.split('.').next().unwrap_or(host)
}

/// Ask every data node its own role at once (each bounded by the probe's timeout): `(pod,
/// role)`, `None` where a node did not answer.
async fn ask_roles(
    ctx: &Context,
    cc: &ChatCluster,
    password: Option<&str>,
) -> Vec<(String, Option<NodeRole>)> {
    let names = Names::of(cc);
    let ns = resources::namespace(cc);
    let asks = (0..cc.spec.redis.data_replicas()).map(|i| {
        let pod = format!("{}-{i}", names.redis());
        let addr = format!(
            "{}:{REDIS_PORT}",
            resources::pod_host(&names.redis(), i, &names.redis_headless(), &ns)
        );
        async move {
            let role = match ctx
                .roles
                .role(RoleQuery {
                    addr: &addr,
                    password,
                })
                .await
            {
                Ok(role) => Some(role),
                Err(e) => {
                    debug!(%pod, error = %e, "data node did not say its role");
                    None
                }
            };
            (pod, role)
        }
    });
    futures_util::future::join_all(asks).await
}

/// One step of the data nodes' roll (their StatefulSet is `OnDelete`; see [`crate::rollout`]):
/// delete one outdated replica, or the outdated master (its preStop hook hands the role over),
/// or wait.
async fn roll_data_nodes(
    ctx: &Context,
    cc: &ChatCluster,
    ns: &str,
    applied: &Applied,
    master: Option<&str>,
    roles: &[(String, Option<NodeRole>)],
) -> Result<()> {
    let set = Names::of(cc).redis();
    let Some(sts) = applied
        .stateful_sets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(set.as_str()))
    else {
        return Ok(());
    };
    // Until the StatefulSet controller has seen the latest template, its updateRevision is
    // the previous one: rolling towards it would restart pods for nothing.
    let Some(revision) = sts.status.as_ref().and_then(|s| s.update_revision.clone()) else {
        return Ok(());
    };
    if !statefulset_workload(sts).observed_latest {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let listed = api
        .list(&ListParams::default().labels(&selector_string(cc, Component::Redis)))
        .await?;
    let pods: Vec<DataPod> = listed
        .items
        .iter()
        .filter_map(|p| DataPod::of(p, &set))
        .collect();
    let desired = usize::try_from(cc.spec.redis.data_replicas()).unwrap_or(0);
    match next_step(&pods, &revision, desired, master, roles) {
        RollStep::UpToDate => {}
        RollStep::Wait(reason) => debug!(%reason, "data-node roll waits"),
        RollStep::Delete(pod) => {
            info!(%pod, %revision, "rolling a data node");
            api.delete(&pod, &DeleteParams::default()).await?;
            publish(
                ctx,
                cc,
                EventType::Normal,
                "DataNodeRolled",
                format!("deleted {pod} to restart it at revision {revision}"),
            )
            .await;
        }
        RollStep::HandOver(pod) => {
            info!(%pod, %revision, "rolling the master: its preStop hook hands the role over");
            api.delete(&pod, &DeleteParams::default()).await?;
            publish(
                ctx,
                cc,
                EventType::Normal,
                "MasterHandOver",
                format!(
                    "deleted the master {pod} to restart it at revision {revision}: its preStop \
                     hook pauses writes and hands the master role over to a replica"
                ),
            )
            .await;
        }
    }
    Ok(())
}

/// Label changes that make `master` the only pod with the master label: `(pod, add?)`,
/// removals first. Nothing changes when `master` is not among `pods` (an incomplete view).
pub(crate) fn master_label_changes(pods: &[(String, bool)], master: &str) -> Vec<(String, bool)> {
    if !pods.iter().any(|(name, _)| name == master) {
        return Vec::new();
    }
    let removals = pods
        .iter()
        .filter(|(name, labelled)| *labelled && name != master)
        .map(|(name, _)| (name.clone(), false));
    let addition = pods
        .iter()
        .filter(|(name, labelled)| !*labelled && name == master)
        .map(|(name, _)| (name.clone(), true));
    removals.chain(addition).collect()
}

async fn label_master(ctx: &Context, cc: &ChatCluster, ns: &str, host: &str) -> Result<()> {
    let master = pod_of(host);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pods = api
        .list(&ListParams::default().labels(&selector_string(cc, Component::Redis)))
        .await?;
    let current: Vec<(String, bool)> = pods
        .items
        .iter()
        .map(|p| {
            let labelled =
                p.labels().get(REDIS_ROLE_LABEL).map(String::as_str) == Some(REDIS_ROLE_MASTER);
            (p.name_any(), labelled)
        })
        .collect();
    let changes = master_label_changes(&current, master);
    let previous: Vec<&str> = current
        .iter()
        .filter(|(_, l)| *l)
        .map(|(n, _)| n.as_str())
        .collect();
    for (pod, add) in &changes {
        let value = if *add {
            json!(REDIS_ROLE_MASTER)
        } else {
            json!(null)
        };
        let patch = json!({ "metadata": { "labels": { REDIS_ROLE_LABEL: value } } });
        api.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if changes.iter().any(|(_, add)| *add) {
        info!(%master, ?previous, "labelled the Redis master");
        publish(
            ctx,
            cc,
            EventType::Normal,
            "MasterChanged",
            format!(
                "the sentinels name {master} as Redis master (was: {})",
                if previous.is_empty() {
                    "none".to_owned()
                } else {
                    previous.join(", ")
                }
            ),
        )
        .await;
    }
    Ok(())
}

/// Mark the status degraded for `reason` and publish a Warning Event when that is news.
async fn write_failure(
    ctx: &Context,
    cc: &ChatCluster,
    ns: &str,
    reason: &str,
    error: &Error,
) -> Result<()> {
    let new = status::mark_failed(cc, reason, &error.to_string(), Time(Timestamp::now()));
    let news = cc
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == status::DEGRADED))
        .is_none_or(|c| c.status != "True" || c.reason != reason);
    if news {
        publish(ctx, cc, EventType::Warning, reason, error.to_string()).await;
    }
    patch_status(ctx, cc, ns, &new).await
}

/// Write `new` as the status of `cc`, unless it already is.
async fn patch_status(
    ctx: &Context,
    cc: &ChatCluster,
    ns: &str,
    new: &ChatClusterStatus,
) -> Result<()> {
    if cc.status.as_ref() == Some(new) {
        return Ok(());
    }
    let api: Api<ChatCluster> = Api::namespaced(ctx.client.clone(), ns);
    api.patch_status(
        &cc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": new })),
    )
    .await?;
    Ok(())
}

async fn write_status(
    ctx: &Context,
    cc: &ChatCluster,
    ns: &str,
    observed: &Observed,
) -> Result<()> {
    let new = compute(cc, observed, Time(Timestamp::now()));
    let old = cc.status.as_ref();
    patch_status(ctx, cc, ns, &new).await?;
    for (type_, state, reason, message) in flipped(old, &new) {
        // A first observation of a healthy condition is not news.
        if old.is_none() && !is_bad(&type_, &state) && type_ != status::READY {
            continue;
        }
        let kind = if is_bad(&type_, &state) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(
            ctx,
            cc,
            kind,
            &reason,
            format!("{type_} is {state}: {message}"),
        )
        .await;
    }
    Ok(())
}

fn is_bad(type_: &str, state: &str) -> bool {
    match type_ {
        status::DEGRADED => state == "True",
        status::PROGRESSING => false,
        _ => state == "False" && type_ != status::READY,
    }
}

/// Publish an Event about `cc`; a failure to publish is logged, never fatal.
async fn publish(ctx: &Context, cc: &ChatCluster, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &cc.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter().map(|(n, l)| ((*n).to_owned(), *l)).collect()
    }

    #[test]
    fn the_master_label_moves_by_removing_it_first_then_adding_it() {
        let changes = master_label_changes(
            &pods(&[("r-0", true), ("r-1", false), ("r-2", false)]),
            "r-1",
        );
        assert_eq!(changes, pods(&[("r-0", false), ("r-1", true)]));
    }

    #[test]
    fn nothing_moves_when_the_label_is_already_right() {
        assert!(master_label_changes(&pods(&[("r-0", true), ("r-1", false)]), "r-0").is_empty());
    }

    #[test]
    fn a_master_that_is_not_among_the_pods_changes_nothing() {
        assert!(master_label_changes(&pods(&[("r-0", true)]), "elsewhere-0").is_empty());
    }

    #[test]
    fn two_labelled_pods_are_reduced_to_the_agreed_master() {
        let changes = master_label_changes(&pods(&[("r-0", true), ("r-1", true)]), "r-1");
        assert_eq!(changes, pods(&[("r-0", false)]));
    }

    #[test]
    fn the_endpoint_is_the_service_dns_name_until_a_load_balancer_answers() {
        let cc = crate::resources::testing::standalone();
        assert_eq!(endpoint(&cc, "prod", None), "chat.prod.svc:80");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "chat"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}
        }))
        .unwrap();
        assert_eq!(endpoint(&cc, "prod", Some(&svc)), "203.0.113.7:80");
    }
}

/// Reconcile scenarios against the fake API server.
#[cfg(test)]
mod scenarios {
    use super::*;
    use crate::controller::error_policy;
    use crate::crd::ChatClusterStatus;
    use crate::fixtures::{Call, FakeApi, FakeRoles, FakeSentinels, context, finish};
    use crate::resources::testing::{sentinel, standalone};
    use serde_json::Value;

    /// Reconcile `cc` once against `fake` and `sentinels`: the result and every request sent.
    async fn run(
        cc: &ChatCluster,
        fake: FakeApi,
        sentinels: FakeSentinels,
    ) -> (Result<Action>, Vec<Call>) {
        let (ctx, task) = context(fake, sentinels);
        let result = reconcile(Arc::new(cc.clone()), ctx.clone()).await;
        (result, finish(ctx, task).await)
    }

    /// Like [`run`], for a reconcile that succeeds: the requests sent.
    async fn reconciled(cc: &ChatCluster, fake: FakeApi, sentinels: FakeSentinels) -> Vec<Call> {
        let (result, calls) = run(cc, fake, sentinels).await;
        result.unwrap();
        calls
    }

    /// A data pod that holds a roll back.
    #[derive(Clone, Copy, PartialEq)]
    enum Holding {
        /// Pod `N` is not Ready.
        NotReady(usize),
        /// Replica `N` reports its replication link down.
        Unlinked(usize),
    }

    /// One reconcile of a Sentinel cluster at revision `rev-2` whose data pod `i` is at
    /// `revisions[i]`, pod `master` the master the sentinels name and the others its replicas,
    /// all Ready and linked unless `holding` says otherwise: the pods deleted and the reasons
    /// of the Events published about the roll.
    async fn roll_step(
        revisions: [&str; 3],
        master: usize,
        holding: Option<Holding>,
    ) -> (Vec<String>, Vec<String>) {
        let cc = sentinel();
        let host = |i: usize| format!("chat-redis-{i}.chat-redis-headless.prod.svc");
        let mut fake = FakeApi::new(&cc)
            .with_secret("chat-redis-password", "password", "pw")
            .at_revision("rev-2");
        let mut roles = FakeRoles::default();
        for (i, revision) in revisions.iter().enumerate() {
            let ready = holding != Some(Holding::NotReady(i));
            fake = fake.with_data_pod(&format!("chat-redis-{i}"), revision, ready);
            let role = if i == master {
                NodeRole::Master { replicas: 2 }
            } else {
                NodeRole::Replica {
                    master: format!("{}:6379", host(master)),
                    linked: holding != Some(Holding::Unlinked(i)),
                }
            };
            roles = roles.with(&cc, i32::try_from(i).unwrap(), role);
        }
        let sentinels = FakeSentinels::all_naming(&cc, &host(master));
        let (ctx, task) = crate::fixtures::context_with_roles(fake, sentinels, roles);
        reconcile(Arc::new(cc.clone()), ctx.clone()).await.unwrap();
        let calls = finish(ctx, task).await;
        let deleted = calls
            .iter()
            .filter(|c| c.method == "DELETE" && c.target().0 == "pods")
            .filter_map(|c| c.target().1)
            .collect();
        let rolled = event_reasons(&calls)
            .into_iter()
            .filter(|r| r == "DataNodeRolled" || r == "MasterHandOver")
            .collect();
        (deleted, rolled)
    }

    fn applied_kinds(calls: &[Call]) -> Vec<String> {
        calls
            .iter()
            .filter(|c| c.method == "PATCH" && c.query.contains("fieldManager=chat-operator"))
            .map(|c| c.target().0)
            .collect()
    }

    fn status_written(calls: &[Call]) -> ChatClusterStatus {
        let call = calls
            .iter()
            .rfind(|c| c.target().2.as_deref() == Some("status"))
            .expect("a status patch");
        serde_json::from_value(call.body["status"].clone()).unwrap()
    }

    /// The status a reconcile wrote, asserting it patched no pod (so moved no master label).
    fn status_moving_no_label(calls: &[Call]) -> ChatClusterStatus {
        assert!(!calls.iter().any(|c| c.target().0 == "pods"));
        status_written(calls)
    }

    fn condition<'a>(s: &'a ChatClusterStatus, t: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (&c.status, &c.reason)
    }

    /// `Degraded` is true for `reason`, and its message mentions `needle`.
    fn assert_degraded(s: &ChatClusterStatus, reason: &str, needle: &str) {
        let c = s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", reason));
        assert!(c.message.contains(needle), "{}", c.message);
    }

    fn event_reasons(calls: &[Call]) -> Vec<String> {
        calls
            .iter()
            .filter(|c| c.target().0 == "events")
            .map(|c| c.body["reason"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn creating_a_standalone_cluster_applies_every_child_and_writes_status() {
        let cc = standalone();
        let (action, calls) = run(&cc, FakeApi::new(&cc), FakeSentinels::default()).await;
        let action = action.unwrap();
        assert_eq!(action, Action::requeue(DEFAULT_REQUEUE));

        // The password Secret is looked up; with no Redis data anywhere it is created once.
        let first: Vec<(&str, String)> = calls[..4]
            .iter()
            .map(|c| (c.method.as_str(), c.target().0))
            .collect();
        assert_eq!(
            first,
            [
                ("GET", "secrets".to_owned()),
                ("GET", "statefulsets".to_owned()),
                ("GET", "persistentvolumeclaims".to_owned()),
                ("POST", "secrets".to_owned()),
            ]
        );
        assert_eq!(calls[3].body["metadata"]["name"], "chat-redis-password");
        assert_eq!(
            applied_kinds(&calls),
            [
                "configmaps",
                "services",
                "statefulsets",
                "networkpolicies",
                "serviceaccounts",
                "deployments",
                "services",
                "poddisruptionbudgets",
            ]
        );
        for c in calls
            .iter()
            .filter(|c| c.method == "PATCH" && c.query.contains("fieldManager"))
        {
            assert!(c.query.contains("force=true"), "{c:?}");
            assert_eq!(c.body["metadata"]["ownerReferences"][0]["name"], "chat");
        }
        // With autoscaling off, any HPA left from before is removed.
        assert!(calls.iter().any(|c| c.method == "DELETE"
            && c.target()
                == (
                    "horizontalpodautoscalers".into(),
                    Some("chat-server".into()),
                    None
                )));

        let status = status_written(&calls);
        assert_eq!(condition(&status, "Ready"), ("True", "Ready"));
        assert_eq!(condition(&status, "RedisReady").0, "True");
        assert_eq!(condition(&status, "ServersReady").0, "True");
        assert_eq!(condition(&status, "Degraded").0, "False");
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(
            (status.server_replicas, status.ready_server_replicas),
            (2, 2)
        );
        assert_eq!(status.endpoint.as_deref(), Some("chat.prod.svc:80"));
        assert_eq!(
            status.redis_master.as_deref(),
            Some("chat-redis.prod.svc:6379")
        );
        assert!(status.selector.is_some());
        assert_eq!(event_reasons(&calls), ["PasswordGenerated", "Ready"]);
    }

    #[tokio::test]
    async fn an_existing_password_secret_is_read_and_never_rewritten() {
        let cc = standalone();
        let fake = FakeApi::new(&cc).with_secret("chat-redis-password", "password", "kept");
        let calls = reconciled(&cc, fake, FakeSentinels::default()).await;
        assert!(
            !calls
                .iter()
                .any(|c| c.target().0 == "secrets" && c.method != "GET"),
            "the Secret must not be written"
        );
    }

    /// A reconcile of `cc` whose generated Secret is gone while `fake` still holds Redis data:
    /// it must fail, mint nothing, and say why in the status.
    async fn assert_password_not_regenerated(cc: &ChatCluster, fake: FakeApi, evidence: &str) {
        let (result, calls) = run(cc, fake, FakeSentinels::default()).await;
        let err = result.unwrap_err();
        assert!(matches!(err, Error::PasswordSecretLost { .. }), "{err}");
        assert!(err.to_string().contains(evidence), "{err}");
        assert!(
            !calls
                .iter()
                .any(|c| c.target().0 == "secrets" && c.method != "GET"),
            "no new password may be written"
        );
        assert!(applied_kinds(&calls).is_empty());
        let status = status_written(&calls);
        assert_eq!(
            condition(&status, "Degraded"),
            ("True", "PasswordSecretLost")
        );
        assert_eq!(event_reasons(&calls), ["PasswordSecretLost"]);
    }

    #[tokio::test]
    async fn a_lost_password_secret_is_not_regenerated_while_the_data_statefulset_exists() {
        let cc = sentinel();
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                         "metadata": {"name": "chat-redis", "namespace": "prod"}});
        let fake = FakeApi::new(&cc).with_object("statefulsets", "chat-redis", sts);
        assert_password_not_regenerated(&cc, fake, "StatefulSet chat-redis").await;
    }

    #[tokio::test]
    async fn a_lost_password_secret_is_not_regenerated_while_data_volume_claims_remain() {
        let mut cc = standalone();
        cc.spec.redis.persistence.enabled = Some(true);
        let fake = FakeApi::new(&cc).with_claim("data-chat-redis-0");
        assert_password_not_regenerated(&cc, fake, "PersistentVolumeClaim data-chat-redis-0").await;
    }

    #[tokio::test]
    async fn pod_templates_carry_a_checksum_of_the_password_that_changes_with_it() {
        let cc = sentinel();
        let checksums = |password: &'static str| {
            let cc = cc.clone();
            async move {
                let fake =
                    FakeApi::new(&cc).with_secret("chat-redis-password", "password", password);
                let calls = reconciled(&cc, fake, FakeSentinels::default()).await;
                let sums: Vec<Value> = calls
                    .iter()
                    .filter(|c| c.is_apply_of("statefulsets") || c.is_apply_of("deployments"))
                    .map(|c| {
                        c.body["spec"]["template"]["metadata"]["annotations"]
                            ["chat.dev/secret-checksum"]
                            .clone()
                    })
                    .collect();
                sums
            }
        };
        let old = checksums("old").await;
        assert_eq!(old.len(), 3, "data nodes, sentinels and servers");
        assert!(old.iter().all(|s| s.is_string() && *s == old[0]), "{old:?}");
        let new = checksums("new").await;
        assert_ne!(old[0], new[0], "a changed password rolls the pods");
    }

    /// The live servers' Deployment with `replicas`, whose `spec.replicas` is owned by `owner`.
    fn live_deployment(replicas: i32, owner: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "chat-server", "namespace": "prod", "managedFields": [
                   {"manager": owner, "operation": if owner == FIELD_MANAGER { "Apply" } else { "Update" },
                    "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
               "spec": {"replicas": replicas}})
    }

    /// Reconcile an autoscaled cluster whose live Deployment has `replicas`, owned by `owner`.
    async fn reconciled_autoscaled(replicas: i32, owner: &str) -> Vec<Call> {
        let mut cc = standalone();
        cc.spec.server.autoscaling.enabled = true;
        let live = live_deployment(replicas, owner);
        let fake = FakeApi::new(&cc).with_object("deployments", "chat-server", live);
        reconciled(&cc, fake, FakeSentinels::default()).await
    }

    /// The `spec.replicas` of the one Deployment apply in `calls` (`None`: left out).
    fn applied_replicas(calls: &[Call]) -> Option<i64> {
        let applies: Vec<&Call> = calls
            .iter()
            .filter(|c| c.is_apply_of("deployments"))
            .collect();
        assert_eq!(applies.len(), 1);
        applies[0].body["spec"]["replicas"].as_i64()
    }

    #[tokio::test]
    async fn autoscaling_applies_an_hpa_and_omits_replicas_once_the_hpa_owns_them() {
        let calls = reconciled_autoscaled(4, "kube-controller-manager").await;
        assert_eq!(applied_replicas(&calls), None);
        let hpa = calls
            .iter()
            .find(|c| c.is_apply_of("horizontalpodautoscalers"))
            .unwrap();
        assert_eq!(hpa.body["spec"]["scaleTargetRef"]["name"], "chat-server");
        assert_eq!(
            hpa.body["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            600
        );
        assert!(!calls.iter().any(|c| c.method == "DELETE"));
        // The status reports what the HPA chose.
        assert_eq!(status_written(&calls).server_replicas, 4);
    }

    #[tokio::test]
    async fn re_enabling_autoscaling_hands_replicas_over_without_scaling_to_one() {
        // The operator still owns replicas (7, applied while autoscaling was off): it reads
        // the live Deployment first, then applies the live value, never a release.
        let calls = reconciled_autoscaled(7, FIELD_MANAGER).await;
        let read = calls
            .iter()
            .position(|c| c.method == "GET" && c.target().0 == "deployments")
            .expect("the live Deployment is read");
        let apply = calls
            .iter()
            .position(|c| c.is_apply_of("deployments"))
            .unwrap();
        assert!(read < apply);
        assert_eq!(applied_replicas(&calls), Some(7));
        assert_eq!(status_written(&calls).server_replicas, 7);

        // The HPA scaled to 9 through the scale subresource and so took the field over: only
        // now is replicas left out of the apply.
        let calls = reconciled_autoscaled(9, "kube-controller-manager").await;
        assert_eq!(applied_replicas(&calls), None);
    }

    #[tokio::test]
    async fn a_new_autoscaled_deployment_starts_at_min_replicas() {
        let mut cc = standalone();
        cc.spec.server.autoscaling.enabled = true;
        cc.spec.server.autoscaling.min_replicas = 3;
        let calls = reconciled(&cc, FakeApi::new(&cc), FakeSentinels::default()).await;
        assert_eq!(applied_replicas(&calls), Some(3));
    }

    #[tokio::test]
    async fn a_refused_statefulset_change_degrades_the_cluster_and_blocks_no_other_child() {
        let mut cc = sentinel();
        cc.spec.redis.persistence.enabled = Some(true);
        let live = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "chat-redis", "namespace": "prod", "generation": 4},
            "spec": {"replicas": 3, "selector": {}, "template": {}, "serviceName": "x"},
            "status": {"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
                       "currentReplicas": 3, "observedGeneration": 4}});
        let fake = FakeApi::new(&cc)
            .with_secret("chat-redis-password", "password", "kept")
            .with_object("statefulsets", "chat-redis", live)
            .refusing_apply("statefulsets", "chat-redis");
        let (action, calls) = run(&cc, fake, FakeSentinels::default()).await;
        assert_eq!(action.unwrap(), Action::requeue(SENTINEL_REQUEUE));
        // Every child after the refused one was still applied.
        let applied: Vec<String> = calls
            .iter()
            .filter(|c| c.method == "PATCH" && c.query.contains("fieldManager=chat-operator"))
            .map(|c| format!("{}/{}", c.target().0, c.target().1.unwrap_or_default()))
            .collect();
        for child in [
            "statefulsets/chat-sentinel",
            "networkpolicies/chat-redis",
            "deployments/chat-server",
            "services/chat",
            "poddisruptionbudgets/chat-server",
        ] {
            assert!(
                applied.contains(&child.to_owned()),
                "{child} in {applied:?}"
            );
        }
        let status = status_written(&calls);
        assert_degraded(&status, "NeedsMigration", "StatefulSet chat-redis");
        // The data nodes' state comes from the live StatefulSet, not from nothing.
        assert_eq!(condition(&status, "RedisReady").0, "False"); // the sentinels were not reachable
        assert_ne!(condition(&status, "RedisReady").1, "External");
        assert!(event_reasons(&calls).contains(&"NeedsMigration".to_owned()));
    }

    #[tokio::test]
    async fn data_nodes_roll_one_at_a_time_replicas_first_then_the_master_whose_hook_hands_over() {
        const OLD: &str = "rev-1";
        const NEW: &str = "rev-2";
        let nothing = (Vec::<String>::new(), Vec::<String>::new());
        let rolled = |pod: &str, reason: &str| (vec![pod.to_owned()], vec![reason.to_owned()]);
        // All outdated, pod 1 master: the highest replica goes first, alone.
        assert_eq!(
            roll_step([OLD, OLD, OLD], 1, None).await,
            rolled("chat-redis-2", "DataNodeRolled")
        );
        // Pod 2 restarted but not Ready yet, or Ready but not linked yet: nothing moves.
        let not_ready = Some(Holding::NotReady(2));
        assert_eq!(roll_step([OLD, OLD, NEW], 1, not_ready).await, nothing);
        let unlinked = Some(Holding::Unlinked(2));
        assert_eq!(roll_step([OLD, OLD, NEW], 1, unlinked).await, nothing);
        // Ready and linked: the other replica.
        assert_eq!(
            roll_step([OLD, OLD, NEW], 1, None).await,
            rolled("chat-redis-0", "DataNodeRolled")
        );
        // Pod 0 restarted but not Ready, or not linked, yet: the master is not touched.
        let not_ready = Some(Holding::NotReady(0));
        assert_eq!(roll_step([NEW, OLD, NEW], 1, not_ready).await, nothing);
        let unlinked = Some(Holding::Unlinked(0));
        assert_eq!(roll_step([NEW, OLD, NEW], 1, unlinked).await, nothing);
        // Only the master is left, its replicas Ready and linked: it is deleted (once, the
        // only DELETE), its preStop hook handing the role over.
        assert_eq!(
            roll_step([NEW, OLD, NEW], 1, None).await,
            rolled("chat-redis-1", "MasterHandOver")
        );
        // Pod 1 back at the new revision, a replica of pod 2: nothing left to do.
        assert_eq!(roll_step([NEW, NEW, NEW], 2, None).await, nothing);
    }

    #[tokio::test]
    async fn a_master_change_moves_the_master_label() {
        let cc = sentinel();
        let new_master = "chat-redis-1.chat-redis-headless.prod.svc";
        let fake = FakeApi::new(&cc)
            .with_redis_pod("chat-redis-0", true)
            .with_redis_pod("chat-redis-1", false)
            .with_redis_pod("chat-redis-2", false);
        let (action, calls) = run(&cc, fake, FakeSentinels::all_naming(&cc, new_master)).await;
        let action = action.unwrap();
        assert_eq!(action, Action::requeue(SENTINEL_REQUEUE));

        let pod_patches: Vec<(String, Value)> = calls
            .iter()
            .filter(|c| c.method == "PATCH" && c.target().0 == "pods")
            .map(|c| {
                (
                    c.target().1.unwrap(),
                    c.body["metadata"]["labels"]["chat.dev/redis-role"].clone(),
                )
            })
            .collect();
        assert_eq!(
            pod_patches,
            [
                ("chat-redis-0".to_owned(), Value::Null),
                ("chat-redis-1".to_owned(), json!("master")),
            ]
        );
        let status = status_written(&calls);
        assert_eq!(
            status.redis_master.as_deref(),
            Some(&*format!("{new_master}:6379"))
        );
        assert_eq!(condition(&status, "RedisReady"), ("True", "MasterKnown"));
        assert!(event_reasons(&calls).contains(&"MasterChanged".to_owned()));
        assert_eq!(
            applied_kinds(&calls)
                .iter()
                .filter(|k| *k == "statefulsets")
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn the_label_never_moves_to_a_node_whose_role_says_replica() {
        let cc = sentinel();
        let named = "chat-redis-1.chat-redis-headless.prod.svc";
        let fake = FakeApi::new(&cc)
            .with_redis_pod("chat-redis-0", true)
            .with_redis_pod("chat-redis-1", false);
        let roles = FakeRoles::default()
            .with(&cc, 0, NodeRole::Master { replicas: 1 })
            .with(
                &cc,
                1,
                NodeRole::Replica {
                    master: "chat-redis-0.chat-redis-headless.prod.svc:6379".into(),
                    linked: true,
                },
            );
        let (ctx, task) =
            crate::fixtures::context_with_roles(fake, FakeSentinels::all_naming(&cc, named), roles);
        reconcile(Arc::new(cc.clone()), ctx.clone()).await.unwrap();
        let status = status_moving_no_label(&finish(ctx, task).await);
        assert_eq!(condition(&status, "Degraded"), ("True", "MasterIsReplica"));
        assert_eq!(condition(&status, "Ready").0, "False");
    }

    #[tokio::test]
    async fn two_data_nodes_saying_master_degrade_the_cluster() {
        let cc = sentinel();
        let named = "chat-redis-0.chat-redis-headless.prod.svc";
        let fake = FakeApi::new(&cc).with_redis_pod("chat-redis-0", true);
        let roles = FakeRoles::default()
            .with(&cc, 0, NodeRole::Master { replicas: 1 })
            .with(&cc, 2, NodeRole::Master { replicas: 0 });
        let (ctx, task) =
            crate::fixtures::context_with_roles(fake, FakeSentinels::all_naming(&cc, named), roles);
        reconcile(Arc::new(cc.clone()), ctx.clone()).await.unwrap();
        let status = status_written(&finish(ctx, task).await);
        assert_degraded(&status, "MultipleMasters", "chat-redis-0, chat-redis-2");
    }

    #[tokio::test]
    async fn sentinels_naming_two_masters_degrade_the_cluster_and_move_nothing() {
        let cc = sentinel();
        let sentinels = FakeSentinels::all_naming(&cc, "chat-redis-0.chat-redis-headless.prod.svc")
            .first_naming(&cc, "chat-redis-1.chat-redis-headless.prod.svc");
        let fake = FakeApi::new(&cc)
            .with_redis_pod("chat-redis-0", true)
            .with_redis_pod("chat-redis-1", false);
        let status = status_moving_no_label(&reconciled(&cc, fake, sentinels).await);
        assert_eq!(condition(&status, "Degraded"), ("True", "MultipleMasters"));
        assert_eq!(condition(&status, "Ready").0, "False");
    }

    #[tokio::test]
    async fn an_incomplete_sentinel_view_changes_no_label() {
        let cc = sentinel();
        let sentinels =
            FakeSentinels::default().first_naming(&cc, "chat-redis-1.chat-redis-headless.prod.svc");
        let fake = FakeApi::new(&cc).with_redis_pod("chat-redis-0", true);
        let status = status_moving_no_label(&reconciled(&cc, fake, sentinels).await);
        assert_eq!(condition(&status, "RedisReady"), ("False", "NoQuorum"));
        assert_eq!(condition(&status, "Degraded").0, "False");
    }

    #[tokio::test]
    async fn a_bad_spec_goes_through_the_error_policy_without_applying_anything() {
        let mut cc = sentinel();
        cc.spec.redis.sentinels = Some(2);
        let cc = Arc::new(cc);
        let (ctx, task) = context(FakeApi::new(&cc), FakeSentinels::default());
        let err = reconcile(cc.clone(), ctx.clone()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidSpec(_)), "{err}");
        assert_eq!(
            error_policy(cc.clone(), &err, ctx.clone()),
            Action::requeue(Duration::from_secs(5))
        );
        assert_eq!(
            error_policy(cc.clone(), &err, ctx.clone()),
            Action::requeue(Duration::from_secs(10))
        );
        let metrics = ctx.metrics.encode().unwrap();
        assert!(
            metrics.contains(r#"reconcile_failures_total{error="invalid_spec"} 1"#),
            "{metrics}"
        );
        let calls = finish(ctx, task).await;
        assert!(applied_kinds(&calls).is_empty());
        assert!(!calls.iter().any(|c| c.target().0 == "secrets"));
        assert_eq!(event_reasons(&calls)[0], "InvalidSpec");
        let status = status_written(&calls);
        assert_eq!(condition(&status, "Degraded"), ("True", "InvalidSpec"));
        assert_eq!(condition(&status, "Ready").0, "False");
    }

    #[tokio::test]
    async fn a_missing_named_password_secret_is_an_error_and_nothing_is_created() {
        let mut cc = standalone();
        cc.spec.redis.password_secret_ref = Some(crate::crd::SecretKeyRef {
            name: "mine".into(),
            key: "pw".into(),
        });
        let (ctx, task) = context(FakeApi::new(&cc), FakeSentinels::default());
        let err = reconcile(Arc::new(cc), ctx.clone()).await.unwrap_err();
        assert!(matches!(err, Error::MissingSecret { .. }), "{err}");
        let calls = finish(ctx, task).await;
        assert!(
            !calls
                .iter()
                .any(|c| c.method == "POST" && c.target().0 == "secrets")
        );
        assert!(applied_kinds(&calls).is_empty());
        let status = status_written(&calls);
        assert_eq!(condition(&status, "Degraded"), ("True", "ReconcileFailed"));
    }

    #[tokio::test]
    async fn a_cluster_being_deleted_is_left_to_the_garbage_collector() {
        let mut cc = standalone();
        cc.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1).unwrap()));
        let (ctx, task) = context(FakeApi::new(&cc), FakeSentinels::default());
        let action = reconcile(Arc::new(cc), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::await_change());
        assert!(
            finish(ctx, task).await.is_empty(),
            "no request while deleting"
        );
    }

    #[tokio::test]
    async fn an_unchanged_status_is_not_rewritten_and_raises_no_events() {
        let cc = standalone();
        let fake = FakeApi::new(&cc).with_secret("chat-redis-password", "password", "kept");
        let first = status_written(&reconciled(&cc, fake.clone(), FakeSentinels::default()).await);

        let mut again = cc;
        again.status = Some(first);
        let calls = reconciled(&again, fake, FakeSentinels::default()).await;
        assert!(
            !calls
                .iter()
                .any(|c| c.target().2.as_deref() == Some("status"))
        );
        assert!(event_reasons(&calls).is_empty());
    }
}
