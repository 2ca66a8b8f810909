//! Redis data nodes: the StatefulSet and its Services (standalone, headless, `-redis-master`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, ExecAction,
    Lifecycle, LifecycleHandler, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, Service, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config_map::{
    DATA_NODE_GRACE_SECONDS, DATA_NODE_KEYS, SENTINEL_KEYS, checksum, redis_config_map,
};
use super::{
    CLUSTER_IP, Component, Names, REDIS_PORT, REDIS_ROLE_LABEL, REDIS_ROLE_MASTER, ServiceKind,
    container_security_context, disruption_budget, env_field, env_secret, env_value,
    label_selector, labels, meta, named_port, namespace, pod_security_context, redis_password_ref,
    selector_labels, service, spread_constraints,
};
use crate::crd::{ChatCluster, RedisMode, SENTINEL_MASTER_NAME};

/// The uid the official Redis image's `redis` user has.
pub(crate) const REDIS_UID: i64 = 999;
/// Annotation with the checksum of the scripts a pod was started with.
pub(crate) const CONFIG_CHECKSUM_ANNOTATION: &str = "chat.dev/config-checksum";

/// Environment shared by data nodes and sentinels: who they are and where the others live.
pub(crate) fn topology_env(cc: &ChatCluster) -> Vec<EnvVar> {
    let names = Names::of(cc);
    let mut env = vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("NAMESPACE", "metadata.namespace"),
        env_value("MODE", cc.spec.redis.mode.as_str()),
        env_value("MASTER_NAME", SENTINEL_MASTER_NAME),
        env_value("REDIS_STATEFULSET", names.redis()),
        env_value("REDIS_HEADLESS", names.redis_headless()),
        env_value("SENTINEL_STATEFULSET", names.sentinel()),
        env_value("SENTINEL_HEADLESS", names.sentinel_headless()),
        env_value("SENTINELS", cc.spec.redis.sentinel_replicas().to_string()),
        env_value("REDIS_NODES", cc.spec.redis.data_replicas().to_string()),
    ];
    if let Some((secret, key)) = redis_password_ref(cc) {
        env.insert(0, env_secret("REDIS_PASSWORD", &secret, &key));
    }
    env
}

/// An exec probe that PINGs a local Redis (or sentinel) with the password.
pub(crate) fn ping_probe(port: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "sh".to_owned(),
                "-c".to_owned(),
                format!(
                    "REDISCLI_AUTH=\"$REDIS_PASSWORD\" timeout 3 redis-cli -p {port} ping | grep -q PONG"
                ),
            ]),
        }),
        initial_delay_seconds: Some(5),
        period_seconds: Some(5),
        timeout_seconds: Some(5),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// A TCP liveness probe (a node loading a big data set answers PING with an error).
pub(crate) fn tcp_probe(port: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            ..TCPSocketAction::default()
        }),
        initial_delay_seconds: Some(15),
        period_seconds: Some(10),
        failure_threshold: Some(6),
        ..Probe::default()
    }
}

/// `requests` for a Redis container when the spec leaves resources unset.
pub(crate) fn default_resources(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])),
        ..ResourceRequirements::default()
    }
}

/// Memory limit of a data node when the spec sets no resources.
pub(crate) const DEFAULT_REDIS_MEMORY_LIMIT: &str = "512Mi";
/// Share of the memory limit Redis may fill (`maxmemory`); the rest is for the process, the
/// fork of a background save and replication buffers.
pub(crate) const MAXMEMORY_PERCENT: u64 = 80;

/// Resources of a data node: the spec's, else requests cpu 100m / memory 128Mi and a memory
/// limit of [`DEFAULT_REDIS_MEMORY_LIMIT`].
pub(crate) fn data_node_resources(cc: &ChatCluster) -> ResourceRequirements {
    cc.spec.redis.resources.clone().unwrap_or_else(|| {
        let mut r = default_resources("100m", "128Mi");
        r.limits = Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(DEFAULT_REDIS_MEMORY_LIMIT.to_owned()),
        )]));
        r
    })
}

/// Bytes in a Kubernetes memory quantity (`512Mi`, `1G`, `1.5Gi`, `1048576`); `None` when it
/// is not one.
pub(crate) fn quantity_bytes(q: &str) -> Option<u64> {
    const UNITS: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, factor) = UNITS
        .iter()
        .find_map(|(suffix, f)| q.strip_suffix(suffix).map(|n| (n, *f)))
        .unwrap_or((q, 1.0));
    let value: f64 = number.parse().ok()?;
    let bytes = (value * factor).floor();
    // An f64 above u64::MAX would saturate; memory limits that large are not real.
    (value.is_finite() && value >= 0.0 && bytes < 1.8e19).then(|| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let b = bytes as u64;
        b
    })
}

/// `maxmemory` of the data nodes: [`MAXMEMORY_PERCENT`] of their memory limit (`None`
/// without a limit). A limit that is not a memory quantity is an error naming the field.
pub(crate) fn maxmemory(cc: &ChatCluster) -> Result<Option<u64>, String> {
    let resources = data_node_resources(cc);
    let Some(limit) = resources.limits.as_ref().and_then(|l| l.get("memory")) else {
        return Ok(None);
    };
    let bytes = quantity_bytes(&limit.0).ok_or_else(|| {
        format!(
            "redis.resources.limits.memory {:?} is not a memory quantity",
            limit.0
        )
    })?;
    Ok(Some(bytes / 100 * MAXMEMORY_PERCENT))
}

/// Volumes both StatefulSets mount: the scripts and a writable run directory.
pub(crate) fn script_volumes(cc: &ChatCluster) -> Vec<Volume> {
    vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: Names::of(cc).redis(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "run".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ]
}

/// A read-only or writable volume mount.
pub(crate) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// How the data nodes' StatefulSet and the sentinels' differ; the rest they share.
pub(crate) struct RedisImageSet {
    /// Data nodes or sentinels.
    pub(crate) component: Component,
    /// Names the StatefulSet.
    pub(crate) name: String,
    /// The headless (or standalone) Service that names the pods.
    pub(crate) service_name: String,
    /// How many pods.
    pub(crate) replicas: i32,
    /// The one container.
    pub(crate) container: Container,
    /// Volumes beside the scripts and the run directory.
    pub(crate) volumes: Vec<Volume>,
    /// Seconds a pod has to stop.
    pub(crate) grace_seconds: i64,
}

/// The container of a Redis-image pod: `role` (`redis`, `sentinel`) names it, its port, its
/// start script `/config/ROLE-start.sh` and its writable run directory `/run/ROLE`.
pub(crate) fn redis_image_container(
    cc: &ChatCluster,
    role: &str,
    port: i32,
    env: Vec<EnvVar>,
    resources: ResourceRequirements,
) -> Container {
    Container {
        name: role.to_owned(),
        image: Some(cc.spec.redis.image.clone()),
        command: Some(vec!["sh".to_owned(), format!("/config/{role}-start.sh")]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(role.to_owned()),
            container_port: port,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(ping_probe(port)),
        liveness_probe: Some(tcp_probe(port)),
        resources: Some(resources),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![
            mount("config", "/config", true),
            mount("run", &format!("/run/{role}"), false),
        ]),
        ..Container::default()
    }
}

/// A StatefulSet of Redis-image pods: started in parallel, as the Redis user, hardened,
/// spread, with the scripts and a run directory mounted, and rolled when the scripts change.
pub(crate) fn redis_image_statefulset(cc: &ChatCluster, set: RedisImageSet) -> StatefulSet {
    let component = set.component;
    let mut volumes = script_volumes(cc);
    volumes.extend(set.volumes);
    let keys: &[&str] = match component {
        Component::Sentinel => &SENTINEL_KEYS,
        _ => &DATA_NODE_KEYS,
    };
    StatefulSet {
        metadata: meta(cc, set.name, component),
        spec: Some(StatefulSetSpec {
            replicas: Some(set.replicas),
            service_name: Some(set.service_name),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: label_selector(cc, component),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cc, component)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_CHECKSUM_ANNOTATION.to_owned(),
                        checksum(&redis_config_map(cc), keys),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security_context(REDIS_UID)),
                    topology_spread_constraints: Some(spread_constraints(cc, component)),
                    termination_grace_period_seconds: Some(set.grace_seconds),
                    containers: vec![set.container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The claim template of the data volume when persistence is on.
fn data_claim(cc: &ChatCluster) -> PersistentVolumeClaim {
    let persistence = &cc.spec.redis.persistence;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_owned()),
            labels: Some(labels(cc, Component::Redis)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: persistence.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    persistence.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The data-node StatefulSet `NAME-redis`: one node in Standalone mode, `replicas` in
/// Sentinel mode (pod 0 bootstraps as master; a restarted pod asks the sentinels first).
pub(crate) fn redis_statefulset(cc: &ChatCluster) -> StatefulSet {
    let names = Names::of(cc);
    let redis = &cc.spec.redis;
    let persistence = redis.persistent();
    // Without persistence the data lives as long as the pod.
    let volumes = if persistence {
        Vec::new()
    } else {
        vec![Volume {
            name: "data".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]
    };
    let resources = data_node_resources(cc);
    let mut container = redis_image_container(cc, "redis", REDIS_PORT, topology_env(cc), resources);
    if let Some(mounts) = container.volume_mounts.as_mut() {
        mounts.push(mount("data", "/data", false));
    }
    let sentinel_mode = redis.mode == RedisMode::Sentinel;
    if sentinel_mode {
        // A master hands its role to a replica before it stops (see `REDIS_PRESTOP`).
        container.lifecycle = Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["sh".to_owned(), "/config/redis-prestop.sh".to_owned()]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        });
    }
    let service_name = match redis.mode {
        RedisMode::Standalone => names.redis(),
        RedisMode::Sentinel => names.redis_headless(),
    };
    let mut sts = redis_image_statefulset(
        cc,
        RedisImageSet {
            component: Component::Redis,
            name: names.redis(),
            service_name,
            replicas: redis.data_replicas(),
            container,
            volumes,
            grace_seconds: DATA_NODE_GRACE_SECONDS,
        },
    );
    if let Some(spec) = sts.spec.as_mut() {
        spec.volume_claim_templates = persistence.then(|| vec![data_claim(cc)]);
        if sentinel_mode {
            // The operator rolls the data nodes itself: replicas first, the master last (its
            // preStop hook hands the role over; see `crate::rollout`).
            spec.update_strategy = Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_owned()),
                ..StatefulSetUpdateStrategy::default()
            });
        }
    }
    sts
}

/// The PodDisruptionBudget `NAME-redis`: one data node evicted at a time, so a drain never
/// takes the master and its replicas (or two replicas the writes wait for) at once.
pub(crate) fn data_disruption_budget(cc: &ChatCluster) -> PodDisruptionBudget {
    disruption_budget(
        cc,
        Names::of(cc).redis(),
        Component::Redis,
        IntOrString::Int(1),
    )
}

/// A data node Service of `kind` in front of the pods `selector` picks.
fn data_service(
    cc: &ChatCluster,
    name: String,
    kind: ServiceKind<'_>,
    selector: BTreeMap<String, String>,
) -> Service {
    let port = named_port("redis", REDIS_PORT);
    service(cc, name, Component::Redis, kind, selector, port)
}

/// The Standalone Service `NAME-redis` the servers connect to.
pub(crate) fn redis_service(cc: &ChatCluster) -> Service {
    let selector = selector_labels(cc, Component::Redis);
    data_service(cc, Names::of(cc).redis(), CLUSTER_IP, selector)
}

/// The headless Service `NAME-redis-headless` that gives each data node a DNS name, ready or not.
pub(crate) fn redis_headless_service(cc: &ChatCluster) -> Service {
    let selector = selector_labels(cc, Component::Redis);
    data_service(
        cc,
        Names::of(cc).redis_headless(),
        ServiceKind::Headless,
        selector,
    )
}

/// The Service `NAME-redis-master`: it selects the data node the operator labelled master
/// after asking the sentinels.
pub(crate) fn redis_master_service(cc: &ChatCluster) -> Service {
    let mut selector = selector_labels(cc, Component::Redis);
    selector.insert(REDIS_ROLE_LABEL.to_owned(), REDIS_ROLE_MASTER.to_owned());
    data_service(cc, Names::of(cc).redis_master(), CLUSTER_IP, selector)
}

/// `host:port` of the standalone Redis inside the cluster.
pub(crate) fn standalone_address(cc: &ChatCluster) -> String {
    format!(
        "{}.{}.svc:{REDIS_PORT}",
        Names::of(cc).redis(),
        namespace(cc)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::{sentinel, standalone};

    fn pod_spec(sts: &StatefulSet) -> PodSpec {
        sts.spec.clone().unwrap().template.spec.unwrap()
    }

    fn env_var(c: &Container, name: &str) -> EnvVar {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .cloned()
            .unwrap()
    }

    fn env_names(c: &Container) -> Vec<String> {
        c.env.iter().flatten().map(|e| e.name.clone()).collect()
    }

    #[test]
    fn memory_quantities_are_read_in_binary_and_decimal_units() {
        assert_eq!(quantity_bytes("512Mi"), Some(536_870_912));
        assert_eq!(quantity_bytes("1Gi"), Some(1_073_741_824));
        assert_eq!(quantity_bytes("1.5Gi"), Some(1_610_612_736));
        assert_eq!(quantity_bytes("1G"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("128974848"), Some(128_974_848));
        assert_eq!(quantity_bytes("100k"), Some(100_000));
        for bad in ["", "lots", "12Qi", "-1Gi", "NaN"] {
            assert_eq!(quantity_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn data_nodes_get_a_default_memory_limit_and_a_bad_one_is_named() {
        let cc = standalone();
        let limits = data_node_resources(&cc).limits.unwrap();
        assert_eq!(limits["memory"].0, "512Mi");
        assert_eq!(maxmemory(&cc), Ok(Some(429_496_720)));
        let mut bad = standalone();
        bad.spec.redis.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("plenty".to_owned()),
            )])),
            ..ResourceRequirements::default()
        });
        let err = maxmemory(&bad).unwrap_err();
        assert!(err.contains("redis.resources.limits.memory"), "{err}");
        let refused = crate::render::validate(&bad).unwrap_err();
        assert!(refused.to_string().contains("plenty"), "{refused}");
    }

    #[test]
    fn the_data_budget_evicts_one_node_at_a_time() {
        let pdb = data_disruption_budget(&sentinel());
        assert_eq!(pdb.metadata.name.as_deref(), Some("chat-redis"));
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/component"],
            "redis"
        );
    }

    #[test]
    fn standalone_without_persistence_runs_one_node_behind_its_service_on_an_empty_dir() {
        let mut cc = standalone();
        cc.spec.redis.persistence.enabled = Some(false);
        let sts = redis_statefulset(&cc);
        assert_eq!(sts.metadata.name.as_deref(), Some("chat-redis"));
        assert!(sts.metadata.owner_references.is_some());
        let spec = sts.spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.service_name.as_deref(), Some("chat-redis"));
        assert!(spec.volume_claim_templates.is_none());
        let pod = pod_spec(&sts);
        assert!(
            pod.volumes
                .unwrap()
                .iter()
                .any(|v| v.name == "data" && v.empty_dir.is_some())
        );
    }

    #[test]
    fn persistence_adds_a_claim_template_of_the_requested_size_and_class() {
        let mut cc = standalone();
        cc.spec.redis.persistence.enabled = Some(true);
        cc.spec.redis.persistence.size = Quantity("5Gi".into());
        cc.spec.redis.persistence.storage_class_name = Some("fast".into());
        let spec = redis_statefulset(&cc).spec.unwrap();
        let claim = &spec.volume_claim_templates.unwrap()[0];
        let claim_spec = claim.spec.clone().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("5Gi".into())
        );
        let pod = spec.template.spec.unwrap();
        assert!(!pod.volumes.unwrap().iter().any(|v| v.name == "data"));
    }

    #[test]
    fn sentinel_mode_runs_three_data_nodes_behind_the_headless_service() {
        let sts = redis_statefulset(&sentinel());
        let spec = sts.spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("chat-redis-headless"));
        let c = &pod_spec(&sts).containers[0];
        let env = env_names(c);
        for name in [
            "REDIS_PASSWORD",
            "POD_NAME",
            "NAMESPACE",
            "SENTINELS",
            "MASTER_NAME",
        ] {
            assert!(
                env.contains(&name.to_owned()),
                "{name} missing from {env:?}"
            );
        }
        let sentinels = env_var(c, "SENTINELS");
        assert_eq!(sentinels.value.as_deref(), Some("3"));
    }

    #[test]
    fn sentinel_mode_data_nodes_fail_over_before_stopping_and_are_rolled_by_the_operator() {
        let sts = redis_statefulset(&sentinel());
        let spec = sts.spec.clone().unwrap();
        assert_eq!(
            spec.update_strategy.unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        let pod = pod_spec(&sts);
        assert_eq!(
            pod.termination_grace_period_seconds,
            Some(DATA_NODE_GRACE_SECONDS)
        );
        let hook = pod.containers[0]
            .lifecycle
            .clone()
            .unwrap()
            .pre_stop
            .unwrap();
        assert_eq!(
            hook.exec.unwrap().command.unwrap(),
            ["sh", "/config/redis-prestop.sh"]
        );
        assert_eq!(
            env_var(&pod.containers[0], "REDIS_NODES").value.as_deref(),
            Some("3")
        );
        // One standalone node has no replica to hand over to nor an order to roll in.
        let standalone = redis_statefulset(&standalone());
        assert!(standalone.spec.clone().unwrap().update_strategy.is_none());
        assert!(pod_spec(&standalone).containers[0].lifecycle.is_none());
    }

    #[test]
    fn redis_pods_are_non_root_with_a_read_only_root_and_no_capabilities() {
        for cc in [standalone(), sentinel()] {
            let pod = pod_spec(&redis_statefulset(&cc));
            let psc = pod.security_context.unwrap();
            assert_eq!(psc.run_as_non_root, Some(true));
            assert_eq!(psc.run_as_user, Some(REDIS_UID));
            assert_eq!(pod.automount_service_account_token, Some(false));
            let sc = pod.containers[0].security_context.clone().unwrap();
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
        }
    }

    #[test]
    fn redis_probes_ping_with_the_password_and_check_the_port() {
        let c = pod_spec(&redis_statefulset(&standalone())).containers[0].clone();
        let ready = c.readiness_probe.unwrap().exec.unwrap().command.unwrap();
        assert!(ready[2].contains("REDISCLI_AUTH") && ready[2].contains("ping"));
        let live = c.liveness_probe.unwrap().tcp_socket.unwrap();
        assert_eq!(live.port, IntOrString::Int(6379));
    }

    /// The Secret name and key the data node's `REDIS_PASSWORD` comes from.
    fn password_source(cc: &ChatCluster) -> (String, String) {
        let pw = env_var(
            &pod_spec(&redis_statefulset(cc)).containers[0],
            "REDIS_PASSWORD",
        );
        let sel = pw.value_from.unwrap().secret_key_ref.unwrap();
        (sel.name, sel.key)
    }

    #[test]
    fn the_password_comes_from_the_generated_secret_unless_one_is_named() {
        let (name, key) = password_source(&standalone());
        assert_eq!(
            (name.as_str(), key.as_str()),
            ("chat-redis-password", "password")
        );

        let mut cc = standalone();
        cc.spec.redis.password_secret_ref = Some(crate::crd::SecretKeyRef {
            name: "mine".into(),
            key: "pw".into(),
        });
        let (name, key) = password_source(&cc);
        assert_eq!((name.as_str(), key.as_str()), ("mine", "pw"));
    }

    #[test]
    fn the_master_service_selects_the_master_label() {
        let svc = redis_master_service(&sentinel());
        assert_eq!(svc.metadata.name.as_deref(), Some("chat-redis-master"));
        let selector = svc.spec.unwrap().selector.unwrap();
        assert_eq!(selector[REDIS_ROLE_LABEL], "master");
        assert_eq!(selector["app.kubernetes.io/instance"], "chat");
        assert_eq!(selector["app.kubernetes.io/component"], "redis");
    }

    #[test]
    fn the_headless_service_publishes_not_ready_pods() {
        let spec = redis_headless_service(&sentinel()).spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
    }
}
