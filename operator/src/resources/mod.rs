//! Pure builders: one function per child object, from the `ChatCluster` alone.
//!
//! Nothing here talks to the API server. Every child is named from the cluster, carries the
//! standard `app.kubernetes.io/*` labels and a controller owner reference (so deleting the
//! ChatCluster deletes it), and every pod runs as non-root with a read-only root file system,
//! no privilege escalation, all capabilities dropped and the runtime's seccomp profile.

pub(crate) mod config_map;
pub(crate) mod network_policy;
pub(crate) mod redis;
#[cfg(test)]
mod script_tests;
pub(crate) mod secret;
pub(crate) mod sentinel;
pub(crate) mod server;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, EnvVar, EnvVarSource, ObjectFieldSelector, PodSecurityContext,
    SeccompProfile, SecretKeySelector, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec, TopologySpreadConstraint,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{ChatCluster, RedisMode};

/// Field manager of every server-side apply.
pub(crate) const FIELD_MANAGER: &str = "chat-operator";
/// Label the operator puts on the Redis pod the sentinels name as master.
pub(crate) const REDIS_ROLE_LABEL: &str = "chat.dev/redis-role";
/// Value of [`REDIS_ROLE_LABEL`] on the master.
pub(crate) const REDIS_ROLE_MASTER: &str = "master";
/// chat-server's HTTP/WebSocket port.
pub(crate) const SERVER_PORT: i32 = 8080;
/// Redis data port.
pub(crate) const REDIS_PORT: i32 = 6379;
/// Sentinel port.
pub(crate) const SENTINEL_PORT: i32 = 26379;
/// Key of the generated password in its Secret.
pub(crate) const PASSWORD_KEY: &str = "password";

/// Which part of the cluster an object belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Component {
    /// chat-server pods and their objects.
    Server,
    /// Redis data nodes.
    Redis,
    /// Redis sentinels.
    Sentinel,
}

impl Component {
    /// `app.kubernetes.io/component`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Redis => "redis",
            Self::Sentinel => "sentinel",
        }
    }

    /// `app.kubernetes.io/name`.
    pub(crate) fn app_name(self) -> &'static str {
        match self {
            Self::Server => "chat-server",
            Self::Redis => "redis",
            Self::Sentinel => "redis-sentinel",
        }
    }
}

/// Names of every child, derived from the cluster's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Names {
    base: String,
}

impl Names {
    /// Names for the cluster `cc`.
    pub(crate) fn of(cc: &ChatCluster) -> Self {
        Self {
            base: cc.name_any(),
        }
    }

    /// `NAME-suffix`: every child but the clients' Service is named so.
    fn suffixed(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.base)
    }

    /// The clients' Service: the cluster's name itself.
    pub(crate) fn server_service(&self) -> String {
        self.base.clone()
    }
    /// Deployment, PodDisruptionBudget, ServiceAccount and HPA of the servers.
    pub(crate) fn server(&self) -> String {
        self.suffixed("server")
    }
    /// Redis StatefulSet, ConfigMap, Service (standalone) and NetworkPolicy.
    pub(crate) fn redis(&self) -> String {
        self.suffixed("redis")
    }
    /// Headless Service of the Redis data nodes (Sentinel mode).
    pub(crate) fn redis_headless(&self) -> String {
        self.suffixed("redis-headless")
    }
    /// Service that follows the master label (Sentinel mode).
    pub(crate) fn redis_master(&self) -> String {
        self.suffixed("redis-master")
    }
    /// Generated password Secret.
    pub(crate) fn redis_password(&self) -> String {
        self.suffixed("redis-password")
    }
    /// Sentinel StatefulSet and Service.
    pub(crate) fn sentinel(&self) -> String {
        self.suffixed("sentinel")
    }
    /// Headless Service of the sentinels.
    pub(crate) fn sentinel_headless(&self) -> String {
        self.suffixed("sentinel-headless")
    }
}

/// The namespace of the cluster (`default` when the manifest names none).
pub(crate) fn namespace(cc: &ChatCluster) -> String {
    cc.namespace().unwrap_or_else(|| "default".to_owned())
}

/// DNS name of pod `ordinal` of a StatefulSet behind a headless Service.
pub(crate) fn pod_host(statefulset: &str, ordinal: i32, headless: &str, namespace: &str) -> String {
    format!("{statefulset}-{ordinal}.{headless}.{namespace}.svc")
}

/// `host:port` of every sentinel the operator runs for `cc`.
pub(crate) fn sentinel_addresses(cc: &ChatCluster) -> Vec<String> {
    let names = Names::of(cc);
    let ns = namespace(cc);
    (0..cc.spec.redis.sentinel_replicas())
        .map(|i| {
            format!(
                "{}:{SENTINEL_PORT}",
                pod_host(&names.sentinel(), i, &names.sentinel_headless(), &ns)
            )
        })
        .collect()
}

/// Labels that select a component's pods (stable: part of immutable selectors).
pub(crate) fn selector_labels(cc: &ChatCluster, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            component.app_name().to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), cc.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.as_str().to_owned(),
        ),
    ])
}

/// The full standard label set of a component's objects.
pub(crate) fn labels(cc: &ChatCluster, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cc, component);
    labels.insert(
        "app.kubernetes.io/part-of".to_owned(),
        "chatcluster".to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "chat-operator".to_owned(),
    );
    labels
}

/// Labels every pod of the cluster shares, whatever its component.
pub(crate) fn cluster_pod_labels(cc: &ChatCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_owned(), cc.name_any()),
        (
            "app.kubernetes.io/part-of".to_owned(),
            "chatcluster".to_owned(),
        ),
    ])
}

/// `matchLabels` selector of a component's pods.
pub(crate) fn label_selector(cc: &ChatCluster, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(cc, component)),
        ..LabelSelector::default()
    }
}

/// The same selector as a string (`status.selector`, for the scale subresource).
pub(crate) fn selector_string(cc: &ChatCluster, component: Component) -> String {
    selector_labels(cc, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The controller owner reference to `cc` (none until the API server gave it a uid).
pub(crate) fn owner_references(cc: &ChatCluster) -> Option<Vec<OwnerReference>> {
    cc.controller_owner_ref(&()).map(|r| vec![r])
}

/// Metadata of a child: name, namespace, labels, owner reference.
pub(crate) fn meta(cc: &ChatCluster, name: String, component: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(cc)),
        labels: Some(labels(cc, component)),
        owner_references: owner_references(cc),
        ..ObjectMeta::default()
    }
}

/// How a Service is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServiceKind<'a> {
    /// A virtual IP of this Service type (`ClusterIP`, `LoadBalancer`, `NodePort`).
    Typed(&'a str),
    /// No virtual IP: a DNS name per pod, published before the pod is ready, because the data
    /// nodes and sentinels find each other through it while they start.
    Headless,
}

/// The Service type of every Service but the clients' (theirs comes from the spec).
pub(crate) const CLUSTER_IP: ServiceKind<'static> = ServiceKind::Typed("ClusterIP");

/// The Service `name` of `component` on one `port`, in front of the pods `selector` picks.
pub(crate) fn service(
    cc: &ChatCluster,
    name: String,
    component: Component,
    kind: ServiceKind<'_>,
    selector: BTreeMap<String, String>,
    port: ServicePort,
) -> Service {
    let spec = match kind {
        ServiceKind::Typed(type_) => ServiceSpec {
            type_: Some(type_.to_owned()),
            ..ServiceSpec::default()
        },
        ServiceKind::Headless => ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        },
    };
    Service {
        metadata: meta(cc, name, component),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![port]),
            ..spec
        }),
        ..Service::default()
    }
}

/// A Service port that targets the container port of the same name.
pub(crate) fn named_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        ..ServicePort::default()
    }
}

/// Pod-level security: non-root as `uid`, group-owned volumes, runtime seccomp profile.
pub(crate) fn pod_security_context(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Container-level security: read-only root, no escalation, every capability dropped.
pub(crate) fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

/// Spread a component's pods across nodes (and zones), preferring but not requiring it.
pub(crate) fn spread_constraints(
    cc: &ChatCluster,
    component: Component,
) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(label_selector(cc, component)),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// The PodDisruptionBudget `name` over `component`'s pods: evictions (drains, upgrades) take
/// at most `max_unavailable` of them at a time.
pub(crate) fn disruption_budget(
    cc: &ChatCluster,
    name: String,
    component: Component,
    max_unavailable: IntOrString,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(cc, name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(max_unavailable),
            selector: Some(label_selector(cc, component)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// Where the Redis password lives: the spec's Secret or the generated one. `None` for an
/// external Redis without a password.
pub(crate) fn redis_password_ref(cc: &ChatCluster) -> Option<(String, String)> {
    match (&cc.spec.redis.password_secret_ref, &cc.spec.redis.external) {
        (Some(r), _) => Some((r.name.clone(), r.key.clone())),
        (None, Some(_)) => None,
        (None, None) => Some((Names::of(cc).redis_password(), PASSWORD_KEY.to_owned())),
    }
}

/// Whether the operator generates the password Secret for `cc`.
pub(crate) fn generates_password(cc: &ChatCluster) -> bool {
    cc.spec.redis.password_secret_ref.is_none() && cc.spec.redis.external.is_none()
}

/// Whether the operator deploys Redis in `mode` for `cc`.
pub(crate) fn deploys(cc: &ChatCluster, mode: RedisMode) -> bool {
    cc.spec.redis.external.is_none() && cc.spec.redis.mode == mode
}

/// A plain `name=value` environment variable.
pub(crate) fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// An environment variable read from a Secret key.
pub(crate) fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// An environment variable from the pod's own fields (downward API).
pub(crate) fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Every child the operator applies for a cluster, except the password Secret (which is
/// created once, see [`secret`]). Listed in apply order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Children {
    /// Redis configuration and start scripts (none for an external Redis).
    pub(crate) config_map: Option<ConfigMap>,
    /// Redis and sentinel Services.
    pub(crate) redis_services: Vec<Service>,
    /// Redis data nodes, then sentinels.
    pub(crate) stateful_sets: Vec<StatefulSet>,
    /// Disruption budgets of the data nodes and sentinels (Sentinel mode).
    pub(crate) redis_disruption_budgets: Vec<PodDisruptionBudget>,
    /// Who may reach Redis.
    pub(crate) network_policy: Option<NetworkPolicy>,
    /// The servers' ServiceAccount.
    pub(crate) service_account: ServiceAccount,
    /// The servers.
    pub(crate) deployment: Deployment,
    /// The clients' Service.
    pub(crate) service: Service,
    /// The servers' disruption budget.
    pub(crate) pod_disruption_budget: PodDisruptionBudget,
    /// The autoscaler, when autoscaling is on.
    pub(crate) horizontal_pod_autoscaler: Option<HorizontalPodAutoscaler>,
}

/// Build every child of `cc`. `operator_namespace` is where the operator runs (the
/// NetworkPolicy lets it reach the sentinels).
pub(crate) fn children(cc: &ChatCluster, operator_namespace: &str) -> Children {
    let mut redis_services = Vec::new();
    let mut stateful_sets = Vec::new();
    let mut redis_disruption_budgets = Vec::new();
    if deploys(cc, RedisMode::Standalone) {
        redis_services.push(redis::redis_service(cc));
        stateful_sets.push(redis::redis_statefulset(cc));
    }
    if deploys(cc, RedisMode::Sentinel) {
        redis_services.push(redis::redis_headless_service(cc));
        redis_services.push(redis::redis_master_service(cc));
        redis_services.push(sentinel::sentinel_headless_service(cc));
        redis_services.push(sentinel::sentinel_service(cc));
        stateful_sets.push(redis::redis_statefulset(cc));
        stateful_sets.push(sentinel::sentinel_statefulset(cc));
        // Standalone gets no budget: on its one pod a budget either blocks every drain or
        // allows the eviction anyway.
        redis_disruption_budgets.push(redis::data_disruption_budget(cc));
        redis_disruption_budgets.push(sentinel::sentinel_disruption_budget(cc));
    }
    Children {
        config_map: cc
            .spec
            .redis
            .external
            .is_none()
            .then(|| config_map::redis_config_map(cc)),
        redis_services,
        stateful_sets,
        redis_disruption_budgets,
        network_policy: network_policy::redis_network_policy(cc, operator_namespace),
        service_account: server::service_account(cc),
        deployment: server::deployment(cc),
        service: server::service(cc),
        pod_disruption_budget: server::pod_disruption_budget(cc),
        horizontal_pod_autoscaler: server::horizontal_pod_autoscaler(cc),
    }
}

/// Sets the annotation `key` of a pod template (a change of it rolls the pods).
fn annotate(template: &mut k8s_openapi::api::core::v1::PodTemplateSpec, key: &str, value: &str) {
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
}

impl Children {
    /// Put `checksum` (of the password Secret's data) on the pod templates of the data nodes,
    /// sentinels and servers, so a changed password rolls every pod that reads it.
    pub(crate) fn stamp_secret_checksum(&mut self, checksum: &str) {
        let templates = self
            .stateful_sets
            .iter_mut()
            .filter_map(|s| s.spec.as_mut().map(|s| &mut s.template))
            .chain(self.deployment.spec.as_mut().map(|s| &mut s.template));
        for template in templates {
            annotate(template, secret::SECRET_CHECKSUM_ANNOTATION, checksum);
        }
    }

    /// Put `checksum` (of the archive Secrets' versions) on the servers' pod template.
    pub(crate) fn stamp_archive_secrets(&mut self, checksum: &str) {
        if let Some(spec) = self.deployment.spec.as_mut() {
            annotate(
                &mut spec.template,
                secret::ARCHIVE_SECRETS_ANNOTATION,
                checksum,
            );
        }
    }

    /// Every child as JSON, in apply order.
    pub(crate) fn to_values(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        let mut out = Vec::new();
        if let Some(cm) = &self.config_map {
            out.push(serde_json::to_value(cm)?);
        }
        for svc in &self.redis_services {
            out.push(serde_json::to_value(svc)?);
        }
        for sts in &self.stateful_sets {
            out.push(serde_json::to_value(sts)?);
        }
        for pdb in &self.redis_disruption_budgets {
            out.push(serde_json::to_value(pdb)?);
        }
        if let Some(np) = &self.network_policy {
            out.push(serde_json::to_value(np)?);
        }
        out.push(serde_json::to_value(&self.service_account)?);
        out.push(serde_json::to_value(&self.deployment)?);
        out.push(serde_json::to_value(&self.service)?);
        out.push(serde_json::to_value(&self.pod_disruption_budget)?);
        if let Some(hpa) = &self.horizontal_pod_autoscaler {
            out.push(serde_json::to_value(hpa)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Clusters the builder tests share.
    use kube::api::ObjectMeta;

    use crate::crd::{ChatCluster, ChatClusterSpec, RedisMode, RedisSpec};

    /// A ChatCluster as the API server hands it over: namespaced, with a uid.
    pub(crate) fn cluster(spec: ChatClusterSpec) -> ChatCluster {
        let mut cc = ChatCluster::new("chat", spec);
        cc.metadata = ObjectMeta {
            name: Some("chat".into()),
            namespace: Some("prod".into()),
            uid: Some("0d1e2f3a-1111-2222-3333-444455556666".into()),
            generation: Some(3),
            ..ObjectMeta::default()
        };
        cc
    }

    pub(crate) fn standalone() -> ChatCluster {
        cluster(ChatClusterSpec::default())
    }

    pub(crate) fn sentinel() -> ChatCluster {
        cluster(ChatClusterSpec {
            redis: RedisSpec {
                mode: RedisMode::Sentinel,
                ..RedisSpec::default()
            },
            ..ChatClusterSpec::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn kinds_and_names(cc: &ChatCluster) -> Vec<String> {
        children(cc, "ops")
            .to_values()
            .unwrap()
            .iter()
            .map(|v| {
                format!(
                    "{}/{}",
                    v["kind"].as_str().unwrap(),
                    v["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn standalone_children_are_config_map_stateful_set_and_services() {
        assert_eq!(
            kinds_and_names(&standalone()),
            [
                "ConfigMap/chat-redis",
                "Service/chat-redis",
                "StatefulSet/chat-redis",
                "NetworkPolicy/chat-redis",
                "ServiceAccount/chat-server",
                "Deployment/chat-server",
                "Service/chat",
                "PodDisruptionBudget/chat-server",
            ]
        );
    }

    #[test]
    fn sentinel_children_add_sentinels_headless_services_and_the_master_service() {
        let mut cc = sentinel();
        cc.spec.server.autoscaling.enabled = true;
        assert_eq!(
            kinds_and_names(&cc),
            [
                "ConfigMap/chat-redis",
                "Service/chat-redis-headless",
                "Service/chat-redis-master",
                "Service/chat-sentinel-headless",
                "Service/chat-sentinel",
                "StatefulSet/chat-redis",
                "StatefulSet/chat-sentinel",
                "PodDisruptionBudget/chat-redis",
                "PodDisruptionBudget/chat-sentinel",
                "NetworkPolicy/chat-redis",
                "ServiceAccount/chat-server",
                "Deployment/chat-server",
                "Service/chat",
                "PodDisruptionBudget/chat-server",
                "HorizontalPodAutoscaler/chat-server",
            ]
        );
    }

    #[test]
    fn an_external_redis_deploys_nothing_of_redis() {
        let mut cc = standalone();
        cc.spec.redis.external = Some(crate::crd::ExternalRedis {
            url: Some("redis://x:6379".into()),
            sentinels: None,
            master_name: None,
        });
        assert_eq!(
            kinds_and_names(&cc),
            [
                "ServiceAccount/chat-server",
                "Deployment/chat-server",
                "Service/chat",
                "PodDisruptionBudget/chat-server",
            ]
        );
        assert!(!generates_password(&cc));
    }

    #[test]
    fn every_child_carries_the_owner_reference_and_instance_label() {
        for cc in [standalone(), sentinel()] {
            for v in children(&cc, "ops").to_values().unwrap() {
                let meta = &v["metadata"];
                assert_eq!(
                    meta["ownerReferences"][0]["uid"], "0d1e2f3a-1111-2222-3333-444455556666",
                    "{v}"
                );
                assert_eq!(meta["ownerReferences"][0]["controller"], true);
                assert_eq!(meta["labels"]["app.kubernetes.io/instance"], "chat");
                assert_eq!(meta["namespace"], "prod");
            }
        }
    }

    #[test]
    fn the_secret_checksum_lands_on_every_pod_template_that_reads_the_password() {
        let mut c = children(&sentinel(), "ops");
        c.stamp_secret_checksum("abc");
        let templates: Vec<_> = c
            .stateful_sets
            .iter()
            .map(|s| s.spec.clone().unwrap().template)
            .chain([c.deployment.spec.clone().unwrap().template])
            .collect();
        assert_eq!(templates.len(), 3);
        for t in templates {
            let annotations = t.metadata.unwrap().annotations.unwrap();
            assert_eq!(annotations[secret::SECRET_CHECKSUM_ANNOTATION], "abc");
        }
    }

    #[test]
    fn children_are_named_after_the_cluster() {
        let names = Names::of(&standalone());
        assert_eq!(names.server_service(), "chat");
        assert_eq!(names.server(), "chat-server");
        assert_eq!(names.redis(), "chat-redis");
        assert_eq!(names.redis_headless(), "chat-redis-headless");
        assert_eq!(names.redis_master(), "chat-redis-master");
        assert_eq!(names.redis_password(), "chat-redis-password");
        assert_eq!(names.sentinel(), "chat-sentinel");
        assert_eq!(names.sentinel_headless(), "chat-sentinel-headless");
    }

    #[test]
    fn child_metadata_has_standard_labels_and_a_controller_owner_reference() {
        let cc = standalone();
        let meta = meta(&cc, "x".into(), Component::Redis);
        assert_eq!(meta.namespace.as_deref(), Some("prod"));
        let labels = meta.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "redis");
        assert_eq!(labels["app.kubernetes.io/instance"], "chat");
        assert_eq!(labels["app.kubernetes.io/component"], "redis");
        assert_eq!(labels["app.kubernetes.io/part-of"], "chatcluster");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "chat-operator");
        let owner = &meta.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "ChatCluster");
        assert_eq!(owner.api_version, "chat.dev/v1alpha1");
        assert_eq!(owner.name, "chat");
        assert_eq!(owner.uid, "0d1e2f3a-1111-2222-3333-444455556666");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn the_selector_string_lists_the_selector_labels() {
        assert_eq!(
            selector_string(&standalone(), Component::Server),
            "app.kubernetes.io/component=server,app.kubernetes.io/instance=chat,app.kubernetes.io/name=chat-server"
        );
    }

    #[test]
    fn sentinel_addresses_name_each_sentinel_pod() {
        assert_eq!(
            sentinel_addresses(&sentinel()),
            [
                "chat-sentinel-0.chat-sentinel-headless.prod.svc:26379",
                "chat-sentinel-1.chat-sentinel-headless.prod.svc:26379",
                "chat-sentinel-2.chat-sentinel-headless.prod.svc:26379",
            ]
        );
        assert!(sentinel_addresses(&standalone()).is_empty());
    }
}
