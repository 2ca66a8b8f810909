//! chat-server: the environment contract, Deployment, Service, PodDisruptionBudget,
//! ServiceAccount and HorizontalPodAutoscaler.
//!
//! [`server_env`] is the one place where the operator speaks chat-server's configuration
//! contract (`docs/CONFIGURATION.md`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, KeyToPath, Lifecycle,
    LifecycleHandler, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SecretVolumeSource,
    Service, ServiceAccount, ServicePort, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    Component, Names, REDIS_PORT, SERVER_PORT, ServiceKind, container_security_context,
    disruption_budget, env_field, env_secret, env_value, label_selector, labels, meta, named_port,
    pod_security_context, redis_password_ref, selector_labels, sentinel_addresses,
    spread_constraints,
};
use crate::crd::{ChatCluster, RedisMode, SENTINEL_MASTER_NAME, SecretKeyRef};

/// The uid of the `nonroot` user of the chat-server image.
pub(crate) const SERVER_UID: i64 = 65532;
/// Seconds the pod waits in preStop so that endpoints stop sending it traffic first.
pub(crate) const PRE_STOP_SLEEP_SECS: i64 = 5;
/// Slack between the server's own drain deadline and the kubelet's SIGKILL.
pub(crate) const GRACE_MARGIN_SECS: i64 = 10;
/// Where the archive password Secret is mounted (read-only, one file).
pub(crate) const ARCHIVE_PASSWORD_DIR: &str = "/var/run/secrets/chat-archive";
/// The archive password file inside [`ARCHIVE_PASSWORD_DIR`] (`CHAT_ARCHIVE_PASSWORD_FILE`).
pub(crate) const ARCHIVE_PASSWORD_FILE: &str = "/var/run/secrets/chat-archive/password";
/// The pod volume holding the archive password.
const ARCHIVE_PASSWORD_VOLUME: &str = "archive-password";
/// Where the archive's CA certificates Secret is mounted (read-only, one file).
pub(crate) const ARCHIVE_CA_DIR: &str = "/var/run/secrets/chat-archive-ca";
/// The CA certificates file inside [`ARCHIVE_CA_DIR`] (`CHAT_ARCHIVE_SSL_ROOT_CERT_FILE`).
pub(crate) const ARCHIVE_CA_FILE: &str = "/var/run/secrets/chat-archive-ca/ca.crt";
/// The pod volume holding the archive's CA certificates.
const ARCHIVE_CA_VOLUME: &str = "archive-ca";
/// Where the archive's client certificate Secret is mounted (read-only, two files).
pub(crate) const ARCHIVE_CLIENT_DIR: &str = "/var/run/secrets/chat-archive-client";
/// The client certificate inside [`ARCHIVE_CLIENT_DIR`] (`CHAT_ARCHIVE_SSL_CERT_FILE`).
pub(crate) const ARCHIVE_CLIENT_CERT_FILE: &str = "/var/run/secrets/chat-archive-client/tls.crt";
/// Its private key (`CHAT_ARCHIVE_SSL_KEY_FILE`).
pub(crate) const ARCHIVE_CLIENT_KEY_FILE: &str = "/var/run/secrets/chat-archive-client/tls.key";
/// The pod volume holding the archive's client certificate.
const ARCHIVE_CLIENT_VOLUME: &str = "archive-client-cert";
/// The variables naming files that exist only inside the pod (mounted Secrets): the server's
/// parser reads them at start-up, so the operator's check of the environment leaves them out.
const POD_FILE_VARS: [&str; 4] = [
    "CHAT_ARCHIVE_PASSWORD_FILE",
    "CHAT_ARCHIVE_SSL_ROOT_CERT_FILE",
    "CHAT_ARCHIVE_SSL_CERT_FILE",
    "CHAT_ARCHIVE_SSL_KEY_FILE",
];
/// What stands in for a Secret's content when the operator checks the environment with the
/// server's parser: the operator never reads the Secrets the servers get.
const SAMPLE_SECRET: &str = "a-sample-secret-of-enough-length";
/// What stands in for the archive URL Secret in that check.
const SAMPLE_ARCHIVE_URL: &str = "postgres://chat@postgres.sample:5432/chat";

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// The chat-server environment for `cc`, exactly as `docs/CONFIGURATION.md` names it.
/// `CHAT_SERVER_ID` is left unset: the server uses `POD_NAME`, set here from the pod name.
pub(crate) fn server_env(cc: &ChatCluster) -> Vec<EnvVar> {
    let server = &cc.spec.server;
    let redis = &cc.spec.redis;
    let names = Names::of(cc);
    let mut env = vec![
        env_field("POD_NAME", "metadata.name"),
        env_value("CHAT_LISTEN_ADDR", format!("0.0.0.0:{SERVER_PORT}")),
        env_value("CHAT_LOG_FORMAT", "json"),
    ];
    match (&redis.external, redis.mode) {
        (None, RedisMode::Standalone) => env.push(env_value(
            "CHAT_REDIS_URL",
            format!("redis://{}:{REDIS_PORT}", names.redis()),
        )),
        (None, RedisMode::Sentinel) => {
            env.push(env_value(
                "CHAT_REDIS_SENTINELS",
                sentinel_addresses(cc).join(","),
            ));
            env.push(env_value(
                "CHAT_REDIS_SENTINEL_MASTER",
                SENTINEL_MASTER_NAME,
            ));
        }
        (Some(ext), RedisMode::Standalone) => {
            env.push(env_value(
                "CHAT_REDIS_URL",
                ext.url.clone().unwrap_or_default(),
            ));
        }
        (Some(ext), RedisMode::Sentinel) => {
            env.push(env_value(
                "CHAT_REDIS_SENTINELS",
                ext.sentinels.clone().unwrap_or_default().join(","),
            ));
            env.push(env_value(
                "CHAT_REDIS_SENTINEL_MASTER",
                ext.master_name.as_deref().unwrap_or(SENTINEL_MASTER_NAME),
            ));
        }
    }
    if let Some((secret, key)) = redis_password_ref(cc) {
        env.push(env_secret("CHAT_REDIS_PASSWORD", &secret, &key));
        // The sentinels this operator deploys require the same password as the data nodes.
        if redis.external.is_none() && redis.mode == RedisMode::Sentinel {
            env.push(env_secret("CHAT_REDIS_SENTINEL_PASSWORD", &secret, &key));
        }
    }
    if let Some(n) = redis.effective_min_replicas_to_ack() {
        env.push(env_value("CHAT_REDIS_MIN_REPLICAS", n.to_string()));
    }
    env.push(env_value("CHAT_KEY_PREFIX", server.key_prefix.clone()));
    if let Some(jwt) = &server.jwt_secret_ref {
        env.push(env_secret("CHAT_JWT_SECRET", &jwt.name, &jwt.key));
    }
    env.push(env_value(
        "CHAT_ALLOW_ANONYMOUS",
        bool_str(server.effective_allow_anonymous()),
    ));
    env.push(env_value(
        "CHAT_HEARTBEAT_INTERVAL_MS",
        server.heartbeat.interval_ms.to_string(),
    ));
    env.push(env_value(
        "CHAT_SERVER_TTL_MS",
        server.heartbeat.ttl_ms.to_string(),
    ));
    env.push(env_value(
        "CHAT_HISTORY_MAX_LEN",
        server.history.max_length.to_string(),
    ));
    if let Some(ttl) = server.history.ttl_seconds {
        env.push(env_value("CHAT_HISTORY_TTL_SECS", ttl.to_string()));
    }
    env.push(env_value(
        "CHAT_SHUTDOWN_GRACE_SECS",
        server.shutdown_grace_seconds.to_string(),
    ));
    // Unset lists leave the server's defaults in place.
    if let Some(d) = &server.destinations {
        for (name, list) in [
            ("CHAT_ROOM_DESTINATIONS", &d.room),
            ("CHAT_SEND_DESTINATIONS", &d.send),
        ] {
            if !list.is_empty() {
                env.push(env_value(name, list.join(",")));
            }
        }
    }
    if let Some(archive) = &cc.spec.archive {
        let url = &archive.url_secret_ref;
        env.push(env_secret("CHAT_ARCHIVE_URL", &url.name, &url.key));
        // A file, not an env secret: that is the only way chat-server takes this password.
        if archive.password_secret_ref.is_some() {
            env.push(env_value(
                "CHAT_ARCHIVE_PASSWORD_FILE",
                ARCHIVE_PASSWORD_FILE,
            ));
        }
        for (name, value) in [
            ("CHAT_ARCHIVE_BACKLOG", archive.backlog),
            ("CHAT_ARCHIVE_BATCH", archive.batch),
        ] {
            if let Some(value) = value {
                env.push(env_value(name, value.to_string()));
            }
        }
        // Unset TLS fields leave the URL's sslmode and sslrootcert in charge.
        if let Some(tls) = &archive.tls {
            if let Some(mode) = tls.mode {
                env.push(env_value("CHAT_ARCHIVE_SSL_MODE", mode.as_str()));
            }
            if tls.ca_secret_ref.is_some() {
                env.push(env_value(
                    "CHAT_ARCHIVE_SSL_ROOT_CERT_FILE",
                    ARCHIVE_CA_FILE,
                ));
            }
            if tls.client_cert_secret_name.is_some() {
                env.push(env_value(
                    "CHAT_ARCHIVE_SSL_CERT_FILE",
                    ARCHIVE_CLIENT_CERT_FILE,
                ));
                env.push(env_value(
                    "CHAT_ARCHIVE_SSL_KEY_FILE",
                    ARCHIVE_CLIENT_KEY_FILE,
                ));
            }
        }
    }
    env
}

/// The environment of [`server_env`] as the kubelet would resolve it, with a sample in place
/// of every Secret (the archive URL gets a sample URL) and of the pod name. The password and
/// CA certificates files are left out: they exist only inside the pod.
pub(crate) fn sample_resolved_env(cc: &ChatCluster) -> BTreeMap<String, String> {
    server_env(cc)
        .into_iter()
        .filter(|e| !POD_FILE_VARS.contains(&e.name.as_str()))
        .map(|e| {
            let from = e.value_from.as_ref();
            let value = match (e.value, from.and_then(|f| f.field_ref.as_ref())) {
                (Some(v), _) => v,
                (None, Some(_)) => "chat-server-7f9c-abcde".to_owned(),
                (None, None) if e.name == "CHAT_ARCHIVE_URL" => SAMPLE_ARCHIVE_URL.to_owned(),
                (None, None) => SAMPLE_SECRET.to_owned(),
            };
            (e.name, value)
        })
        .collect()
}

/// Whether chat-server's own parser (`Config::from_lookup`) accepts what the operator renders
/// for `cc`; its message names the variable when not. The spec check runs this, so a spec
/// every server would refuse at start-up is `InvalidSpec` (Degraded) instead of crash-looping
/// pods. What lives in Secrets (the archive URL itself) is the servers' to check.
pub(crate) fn check_with_servers_parser(cc: &ChatCluster) -> Result<(), String> {
    let env = sample_resolved_env(cc);
    chat_server::config::Config::from_lookup(|name| env.get(name).cloned())
        .map(|_| ())
        .map_err(|e| format!("the servers would refuse to start: {e}"))
}

/// The archive's Secret files (the password, the CA certificates) as volumes and their
/// mounts, for those `spec.archive` names.
fn archive_secret_volumes(cc: &ChatCluster) -> Vec<(Volume, VolumeMount)> {
    let Some(archive) = cc.spec.archive.as_ref() else {
        return Vec::new();
    };
    let tls = archive.tls.as_ref();
    let ca = tls.and_then(|t| t.ca_secret_ref.as_ref());
    let client = tls.and_then(|t| t.client_cert_secret_name.as_ref());
    let one = |s: &SecretKeyRef, file: &'static str| (s.name.clone(), vec![(s.key.clone(), file)]);
    [
        archive.password_secret_ref.as_ref().map(|s| {
            (
                ARCHIVE_PASSWORD_VOLUME,
                ARCHIVE_PASSWORD_DIR,
                one(s, "password"),
            )
        }),
        ca.map(|s| (ARCHIVE_CA_VOLUME, ARCHIVE_CA_DIR, one(s, "ca.crt"))),
        client.map(|name| {
            let keys = vec![
                ("tls.crt".to_owned(), "tls.crt"),
                ("tls.key".to_owned(), "tls.key"),
            ];
            (
                ARCHIVE_CLIENT_VOLUME,
                ARCHIVE_CLIENT_DIR,
                (name.clone(), keys),
            )
        }),
    ]
    .into_iter()
    .flatten()
    .map(|(name, dir, (secret, files))| secret_file_volume(name, dir, &secret, &files))
    .collect()
}

/// Keys of the Secret `secret` as the files `dir/<file>` (key -> file), in a volume of its own
/// mounted read-only at `dir` (a directory mount, not a subPath: the kubelet updates the files
/// when the Secret changes).
fn secret_file_volume(
    name: &str,
    dir: &str,
    secret: &str,
    files: &[(String, &str)],
) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(
                files
                    .iter()
                    .map(|(key, file)| KeyToPath {
                        key: key.clone(),
                        path: (*file).to_owned(),
                        mode: None,
                    })
                    .collect(),
            ),
            // Owner and group (the pod's fsGroup) may read it, nobody else.
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: name.to_owned(),
        mount_path: dir.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// The pod's termination grace period: preStop, then the server's drain, then a margin.
pub(crate) fn termination_grace_seconds(cc: &ChatCluster) -> i64 {
    PRE_STOP_SLEEP_SECS + cc.spec.server.shutdown_grace_seconds + GRACE_MARGIN_SECS
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// Resources when the spec leaves them unset.
pub(crate) fn default_server_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("128Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("512Mi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The Deployment `NAME-server`. With autoscaling on, `replicas` is left out so that the
/// server-side apply never fights the HPA over it.
pub(crate) fn deployment(cc: &ChatCluster) -> Deployment {
    let server = &cc.spec.server;
    let names = Names::of(cc);
    let mut volumes = vec![Volume {
        name: "tmp".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut volume_mounts = vec![VolumeMount {
        name: "tmp".to_owned(),
        mount_path: "/tmp".to_owned(),
        ..VolumeMount::default()
    }];
    for (volume, mount) in archive_secret_volumes(cc) {
        volumes.push(volume);
        volume_mounts.push(mount);
    }
    let container = Container {
        name: "chat-server".to_owned(),
        image: Some(server.image.clone()),
        env: Some(server_env(cc)),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: SERVER_PORT,
            ..ContainerPort::default()
        }]),
        startup_probe: Some(http_probe("/healthz", 2, 30)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: Some(
            server
                .resources
                .clone()
                .unwrap_or_else(default_server_resources),
        ),
        security_context: Some(container_security_context()),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    };
    Deployment {
        metadata: meta(cc, names.server(), Component::Server),
        spec: Some(DeploymentSpec {
            replicas: (!server.autoscaling.enabled).then_some(server.replicas),
            selector: label_selector(cc, Component::Server),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".to_owned())),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cc, Component::Server)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(names.server()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security_context(SERVER_UID)),
                    termination_grace_period_seconds: Some(termination_grace_seconds(cc)),
                    topology_spread_constraints: Some(spread_constraints(cc, Component::Server)),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The Service clients connect to, named like the cluster.
pub(crate) fn service(cc: &ChatCluster) -> Service {
    let svc = &cc.spec.server.service;
    let port = ServicePort {
        app_protocol: Some("http".to_owned()),
        ..named_port("http", svc.port)
    };
    let mut service = super::service(
        cc,
        Names::of(cc).server_service(),
        Component::Server,
        ServiceKind::Typed(svc.type_.as_str()),
        selector_labels(cc, Component::Server),
        port,
    );
    if !svc.annotations.is_empty() {
        service.metadata.annotations = Some(svc.annotations.clone());
    }
    service
}

/// The PodDisruptionBudget `NAME-server`.
pub(crate) fn pod_disruption_budget(cc: &ChatCluster) -> PodDisruptionBudget {
    let max_unavailable = cc.spec.server.pod_disruption_budget.max_unavailable.clone();
    disruption_budget(
        cc,
        Names::of(cc).server(),
        Component::Server,
        max_unavailable,
    )
}

/// The ServiceAccount `NAME-server` (the servers need no API access: no token is mounted).
pub(crate) fn service_account(cc: &ChatCluster) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(cc, Names::of(cc).server(), Component::Server),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// The HorizontalPodAutoscaler `NAME-server`, when autoscaling is on.
pub(crate) fn horizontal_pod_autoscaler(cc: &ChatCluster) -> Option<HorizontalPodAutoscaler> {
    let auto = &cc.spec.server.autoscaling;
    auto.enabled.then(|| HorizontalPodAutoscaler {
        metadata: meta(cc, Names::of(cc).server(), Component::Server),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: Names::of(cc).server(),
            },
            min_replicas: Some(auto.min_replicas),
            max_replicas: auto.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(auto.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(websocket_scale_down()),
                scale_up: None,
            }),
        }),
        ..HorizontalPodAutoscaler::default()
    })
}

/// Seconds of recommendations the HPA looks back over before it scales down.
pub(crate) const SCALE_DOWN_STABILIZATION_SECS: i32 = 600;

/// How the servers shrink. Every removed pod closes its WebSockets and all of those clients
/// reconnect (and re-subscribe, and recover history) at once on the pods that remain, so
/// CPU dips must not flap replicas away: look back 10 minutes, then remove at most 10 % of the
/// pods (at least one) per minute.
fn websocket_scale_down() -> HPAScalingRules {
    let policy = |type_: &str, value: i32| HPAScalingPolicy {
        type_: type_.to_owned(),
        value,
        period_seconds: 60,
    };
    HPAScalingRules {
        stabilization_window_seconds: Some(SCALE_DOWN_STABILIZATION_SECS),
        select_policy: Some("Max".to_owned()),
        policies: Some(vec![policy("Percent", 10), policy("Pods", 1)]),
        ..HPAScalingRules::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::{ArchiveSslMode, ExternalRedis};
    use crate::resources::testing::{sentinel, standalone};

    /// The rendered environment as `name -> value`, with secret and field references spelled
    /// `secret:NAME/KEY` and `field:PATH`.
    pub(crate) fn env_map(env: &[EnvVar]) -> BTreeMap<String, String> {
        env.iter()
            .map(|e| {
                let value = match (&e.value, &e.value_from) {
                    (Some(v), _) => v.clone(),
                    (None, Some(from)) => match (&from.secret_key_ref, &from.field_ref) {
                        (Some(s), _) => format!("secret:{}/{}", s.name, s.key),
                        (None, Some(f)) => format!("field:{}", f.field_path),
                        _ => String::new(),
                    },
                    (None, None) => String::new(),
                };
                (e.name.clone(), value)
            })
            .collect()
    }

    #[test]
    fn standalone_env_follows_the_configuration_contract() {
        let env = env_map(&server_env(&standalone()));
        let expected = BTreeMap::from(
            [
                ("POD_NAME", "field:metadata.name"),
                ("CHAT_LISTEN_ADDR", "0.0.0.0:8080"),
                ("CHAT_LOG_FORMAT", "json"),
                ("CHAT_REDIS_URL", "redis://chat-redis:6379"),
                ("CHAT_REDIS_PASSWORD", "secret:chat-redis-password/password"),
                ("CHAT_KEY_PREFIX", "chat"),
                ("CHAT_ALLOW_ANONYMOUS", "true"),
                ("CHAT_HEARTBEAT_INTERVAL_MS", "2000"),
                ("CHAT_SERVER_TTL_MS", "6000"),
                ("CHAT_HISTORY_MAX_LEN", "1000"),
                ("CHAT_SHUTDOWN_GRACE_SECS", "20"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        assert_eq!(env, expected);
    }

    #[test]
    fn sentinel_env_lists_every_sentinel_and_the_master_name() {
        let env = env_map(&server_env(&sentinel()));
        assert_eq!(
            env["CHAT_REDIS_SENTINELS"],
            "chat-sentinel-0.chat-sentinel-headless.prod.svc:26379,\
             chat-sentinel-1.chat-sentinel-headless.prod.svc:26379,\
             chat-sentinel-2.chat-sentinel-headless.prod.svc:26379"
        );
        assert_eq!(env["CHAT_REDIS_SENTINEL_MASTER"], "mymaster");
        assert_eq!(env["CHAT_REDIS_MIN_REPLICAS"], "1");
        assert_eq!(
            env["CHAT_REDIS_PASSWORD"],
            "secret:chat-redis-password/password"
        );
        assert!(!env.contains_key("CHAT_REDIS_URL"));
    }

    /// `spec.archive` reading the URL from `pg-app`/`uri`, every other field unset.
    fn archive_from_pg_app() -> crate::crd::ArchiveSpec {
        crate::crd::ArchiveSpec {
            url_secret_ref: SecretKeyRef {
                name: "pg-app".into(),
                key: "uri".into(),
            },
            password_secret_ref: None,
            backlog: None,
            batch: None,
            tls: None,
        }
    }

    /// The Secret behind the server pod's volume `name`, and that volume's mount.
    fn mounted_secret(cc: &ChatCluster, name: &str) -> (SecretVolumeSource, VolumeMount) {
        let pod = pod(&deployment(cc));
        let secret = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == name)
            .and_then(|v| v.secret)
            .unwrap_or_else(|| panic!("no Secret volume {name}"));
        let mount = pod.containers[0]
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no mount of {name}"));
        (secret, mount)
    }

    /// The names of the server pod's volumes, in order.
    fn volume_names(cc: &ChatCluster) -> Vec<String> {
        pod(&deployment(cc))
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect()
    }

    #[test]
    fn the_archive_url_comes_from_its_secret_and_the_password_from_a_mounted_file() {
        let mut cc = standalone();
        cc.spec.archive = Some(crate::crd::ArchiveSpec {
            batch: Some(250),
            ..archive_from_pg_app()
        });
        let env = env_map(&server_env(&cc));
        assert_eq!(env["CHAT_ARCHIVE_URL"], "secret:pg-app/uri");
        assert_eq!(env["CHAT_ARCHIVE_BATCH"], "250");
        assert!(!env.contains_key("CHAT_ARCHIVE_BACKLOG"), "server default");
        assert!(!env.contains_key("CHAT_ARCHIVE_PASSWORD_FILE"));
        assert_eq!(volume_names(&cc), ["tmp"], "only /tmp without a password");

        if let Some(a) = cc.spec.archive.as_mut() {
            a.password_secret_ref = Some(SecretKeyRef {
                name: "pg-archiver".into(),
                key: "pw".into(),
            });
        }
        let env = env_map(&server_env(&cc));
        assert_eq!(env["CHAT_ARCHIVE_PASSWORD_FILE"], ARCHIVE_PASSWORD_FILE);
        let (secret, mount) = mounted_secret(&cc, "archive-password");
        assert_eq!(secret.secret_name.as_deref(), Some("pg-archiver"));
        let items = secret.items.unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("pw", "password")
        );
        assert_eq!(secret.default_mode, Some(0o440));
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(
            format!("{}/password", mount.mount_path),
            ARCHIVE_PASSWORD_FILE
        );
    }

    #[test]
    fn the_archive_tls_mode_reaches_the_env_and_the_ca_certificates_a_mounted_file_of_their_own() {
        let mut cc = standalone();
        cc.spec.archive = Some(crate::crd::ArchiveSpec {
            password_secret_ref: Some(SecretKeyRef {
                name: "pg-archiver".into(),
                key: "pw".into(),
            }),
            tls: Some(crate::crd::ArchiveTlsSpec {
                mode: None,
                ca_secret_ref: None,
                client_cert_secret_name: None,
            }),
            ..archive_from_pg_app()
        });
        // An empty tls block leaves the URL's sslmode and sslrootcert in charge.
        let env = env_map(&server_env(&cc));
        assert!(!env.contains_key("CHAT_ARCHIVE_SSL_MODE"));
        assert!(!env.contains_key("CHAT_ARCHIVE_SSL_ROOT_CERT_FILE"));
        assert_eq!(volume_names(&cc), ["tmp", "archive-password"]);

        if let Some(tls) = cc.spec.archive.as_mut().and_then(|a| a.tls.as_mut()) {
            tls.mode = ArchiveSslMode::parse("verify-full");
            tls.ca_secret_ref = Some(SecretKeyRef {
                name: "pg-ca".into(),
                key: "ca.crt".into(),
            });
        }
        let env = env_map(&server_env(&cc));
        assert_eq!(env["CHAT_ARCHIVE_SSL_MODE"], "verify-full");
        assert_eq!(env["CHAT_ARCHIVE_SSL_ROOT_CERT_FILE"], ARCHIVE_CA_FILE);
        assert_eq!(env["CHAT_ARCHIVE_PASSWORD_FILE"], ARCHIVE_PASSWORD_FILE);
        assert_eq!(volume_names(&cc), ["tmp", "archive-password", "archive-ca"]);
        let (secret, mount) = mounted_secret(&cc, "archive-ca");
        assert_eq!(secret.secret_name.as_deref(), Some("pg-ca"));
        let items = secret.items.unwrap();
        assert_eq!(items.len(), 1, "only the named key is mounted");
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("ca.crt", "ca.crt")
        );
        assert_eq!(secret.default_mode, Some(0o440));
        assert_eq!(secret.optional, Some(false));
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(format!("{}/ca.crt", mount.mount_path), ARCHIVE_CA_FILE);
        assert!(mount.sub_path.is_none(), "a subPath mount never updates");
        let (_, password) = mounted_secret(&cc, "archive-password");
        assert_ne!(password.mount_path, mount.mount_path);

        // The CA certificates without a mode: the URL's sslmode checks against them.
        if let Some(tls) = cc.spec.archive.as_mut().and_then(|a| a.tls.as_mut()) {
            tls.mode = None;
        }
        let env = env_map(&server_env(&cc));
        assert!(!env.contains_key("CHAT_ARCHIVE_SSL_MODE"));
        assert_eq!(env["CHAT_ARCHIVE_SSL_ROOT_CERT_FILE"], ARCHIVE_CA_FILE);
    }

    #[test]
    fn jwt_history_ttl_and_anonymous_access_reach_the_env() {
        let mut cc = standalone();
        cc.spec.server.jwt_secret_ref = Some(SecretKeyRef {
            name: "jwt".into(),
            key: "hs256".into(),
        });
        cc.spec.server.history.ttl_seconds = Some(3600);
        let env = env_map(&server_env(&cc));
        assert_eq!(env["CHAT_JWT_SECRET"], "secret:jwt/hs256");
        assert_eq!(env["CHAT_ALLOW_ANONYMOUS"], "false");
        assert_eq!(env["CHAT_HISTORY_TTL_SECS"], "3600");
        cc.spec.server.allow_anonymous = Some(true);
        assert_eq!(env_map(&server_env(&cc))["CHAT_ALLOW_ANONYMOUS"], "true");
    }

    #[test]
    fn external_redis_points_the_servers_at_it() {
        let mut cc = standalone();
        cc.spec.redis.external = Some(ExternalRedis {
            url: Some("redis://redis.example:6379".into()),
            sentinels: None,
            master_name: None,
        });
        let env = env_map(&server_env(&cc));
        assert_eq!(env["CHAT_REDIS_URL"], "redis://redis.example:6379");
        assert!(!env.contains_key("CHAT_REDIS_PASSWORD"));

        let mut cc = sentinel();
        cc.spec.redis.external = Some(ExternalRedis {
            url: None,
            sentinels: Some(vec!["a:26379".into(), "b:26379".into()]),
            master_name: Some("primary".into()),
        });
        cc.spec.redis.password_secret_ref = Some(SecretKeyRef {
            name: "ext".into(),
            key: "pw".into(),
        });
        let env = env_map(&server_env(&cc));
        assert_eq!(env["CHAT_REDIS_SENTINELS"], "a:26379,b:26379");
        assert_eq!(env["CHAT_REDIS_SENTINEL_MASTER"], "primary");
        assert_eq!(env["CHAT_REDIS_PASSWORD"], "secret:ext/pw");
    }

    #[test]
    fn env_booleans_and_numbers_use_the_contract_spelling() {
        for cc in [standalone(), sentinel()] {
            for e in server_env(&cc) {
                let Some(v) = e.value else { continue };
                if e.name == "CHAT_ALLOW_ANONYMOUS" {
                    assert!(v == "true" || v == "false");
                }
                if e.name.ends_with("_MS") || e.name.ends_with("_SECS") || e.name.ends_with("_LEN")
                {
                    assert!(v.parse::<u64>().is_ok(), "{} = {v}", e.name);
                }
            }
        }
    }

    fn pod(d: &Deployment) -> PodSpec {
        d.spec.clone().unwrap().template.spec.unwrap()
    }

    #[test]
    fn the_deployment_is_named_labelled_and_owned() {
        let d = deployment(&standalone());
        assert_eq!(d.metadata.name.as_deref(), Some("chat-server"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(
            d.metadata.owner_references.as_ref().unwrap()[0].name,
            "chat"
        );
        let spec = d.spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let template_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in spec.selector.match_labels.unwrap() {
            assert_eq!(template_labels[&k], v);
        }
        assert_eq!(pod(&d).service_account_name.as_deref(), Some("chat-server"));
    }

    #[test]
    fn server_pods_are_hardened() {
        let p = pod(&deployment(&standalone()));
        let psc = p.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(SERVER_UID));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let sc = p.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(p.automount_service_account_token, Some(false));
    }

    #[test]
    fn server_probes_use_healthz_and_readyz_on_the_http_port() {
        let c = pod(&deployment(&standalone())).containers[0].clone();
        let path = |p: Option<Probe>| p.unwrap().http_get.unwrap().path.unwrap();
        assert_eq!(path(c.liveness_probe.clone()), "/healthz");
        assert_eq!(path(c.startup_probe.clone()), "/healthz");
        assert_eq!(path(c.readiness_probe.clone()), "/readyz");
        assert_eq!(c.ports.unwrap()[0].container_port, 8080);
    }

    #[test]
    fn the_grace_period_outlasts_pre_stop_and_the_servers_own_drain() {
        let mut cc = standalone();
        cc.spec.server.shutdown_grace_seconds = 40;
        let p = pod(&deployment(&cc));
        let pre_stop = p.containers[0]
            .lifecycle
            .clone()
            .unwrap()
            .pre_stop
            .unwrap()
            .sleep
            .unwrap()
            .seconds;
        assert!(p.termination_grace_period_seconds.unwrap() > pre_stop + 40);
    }

    #[test]
    fn server_pods_spread_across_nodes() {
        let p = pod(&deployment(&standalone()));
        let spread = p.topology_spread_constraints.unwrap();
        assert!(
            spread
                .iter()
                .any(|t| t.topology_key == "kubernetes.io/hostname")
        );
    }

    #[test]
    fn scaling_the_cluster_sets_the_deployment_replicas() {
        // `kubectl scale cc/chat --replicas=5` writes spec.server.replicas (the scale
        // subresource's specReplicasPath); the next apply carries it to the Deployment.
        let mut cc = standalone();
        cc.spec.server.replicas = 5;
        assert_eq!(deployment(&cc).spec.unwrap().replicas, Some(5));
        cc.spec.server.replicas = 0;
        assert_eq!(deployment(&cc).spec.unwrap().replicas, Some(0));
    }

    #[test]
    fn autoscaling_adds_an_hpa_and_leaves_replicas_out_of_the_deployment() {
        let mut cc = standalone();
        assert!(horizontal_pod_autoscaler(&cc).is_none());
        cc.spec.server.autoscaling.enabled = true;
        let hpa = horizontal_pod_autoscaler(&cc).unwrap();
        let spec = hpa.spec.unwrap();
        assert_eq!(spec.scale_target_ref.name, "chat-server");
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 10));
        let target = &spec.metrics.unwrap()[0].resource.clone().unwrap().target;
        assert_eq!(target.average_utilization, Some(70));
        let down = spec.behavior.unwrap().scale_down.unwrap();
        assert_eq!(down.stabilization_window_seconds, Some(600));
        let policies = down.policies.unwrap();
        assert!(policies.iter().all(|p| p.period_seconds == 60));
        assert!(
            policies
                .iter()
                .any(|p| p.type_ == "Percent" && p.value == 10)
        );
        assert_eq!(deployment(&cc).spec.unwrap().replicas, None);
        let json = serde_json::to_value(deployment(&cc)).unwrap();
        assert!(json["spec"].get("replicas").is_none());
    }

    #[test]
    fn the_service_is_named_like_the_cluster_and_targets_the_http_port() {
        let mut cc = standalone();
        cc.spec.server.service.type_ = crate::crd::ServiceType::LoadBalancer;
        cc.spec.server.service.annotations =
            BTreeMap::from([("example.com/lb".to_owned(), "internal".to_owned())]);
        let svc = service(&cc);
        assert_eq!(svc.metadata.name.as_deref(), Some("chat"));
        assert_eq!(
            svc.metadata.annotations.unwrap()["example.com/lb"],
            "internal"
        );
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.ports.unwrap()[0].port, 80);
    }

    #[test]
    fn the_pdb_and_service_account_belong_to_the_servers() {
        let cc = standalone();
        let pdb = pod_disruption_budget(&cc);
        assert_eq!(pdb.metadata.name.as_deref(), Some("chat-server"));
        assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
        let sa = service_account(&cc);
        assert_eq!(sa.metadata.name.as_deref(), Some("chat-server"));
        assert_eq!(sa.automount_service_account_token, Some(false));
    }
}

/// The environment contract checked from both sides.
///
/// The rendered environment of every cluster shape goes through chat-server's own parser
/// (`Config::from_lookup`), with secret references replaced by sample values and the downward
/// API by a pod name, so the two sides cannot drift apart.
#[cfg(test)]
mod chat_server_contract {
    use super::tests::env_map;
    use super::*;
    use crate::resources::testing::{sentinel, standalone};

    /// Whether chat-server reads `name`: one of its own variables (`chat_server::config::VARS`,
    /// the list `docs/CONFIGURATION.md` documents), or `POD_NAME`, which is not a `CHAT_`
    /// variable but the server's default for `CHAT_SERVER_ID`.
    fn is_a_configuration_variable(name: &str) -> bool {
        chat_server::config::VARS.iter().any(|v| v.name == name) || name == "POD_NAME"
    }

    fn shapes() -> Vec<crate::crd::ChatCluster> {
        let mut with_jwt = sentinel();
        with_jwt.spec.server.jwt_secret_ref = Some(SecretKeyRef {
            name: "jwt".into(),
            key: "k".into(),
        });
        with_jwt.spec.server.history.ttl_seconds = Some(60);
        vec![
            standalone(),
            sentinel(),
            with_jwt,
            with_destinations(),
            with_archive(),
        ]
    }

    /// A cluster archiving to a CloudNativePG cluster `pg` (its `pg-app` Secret), with a
    /// password of its own, both tuning knobs set, and TLS checked against `pg-ca`.
    pub(super) fn with_archive() -> crate::crd::ChatCluster {
        let mut cc = sentinel();
        cc.spec.archive = Some(crate::crd::ArchiveSpec {
            url_secret_ref: SecretKeyRef {
                name: "pg-app".into(),
                key: "uri".into(),
            },
            password_secret_ref: Some(SecretKeyRef {
                name: "pg-archiver".into(),
                key: "password".into(),
            }),
            backlog: Some(200_000),
            batch: Some(1000),
            tls: Some(crate::crd::ArchiveTlsSpec {
                mode: crate::crd::ArchiveSslMode::parse("verify-full"),
                ca_secret_ref: Some(SecretKeyRef {
                    name: "pg-ca".into(),
                    key: "ca.crt".into(),
                }),
                client_cert_secret_name: Some("pg-client".into()),
            }),
        });
        cc
    }

    #[test]
    fn the_archive_settings_reach_the_servers_parser() {
        use chat_server::config::Config;
        let env = resolved(&with_archive());
        let config = Config::from_lookup(|name| env.get(name).cloned()).unwrap();
        let archive = config.archive.unwrap();
        assert_eq!(archive.backlog, 200_000);
        assert_eq!(archive.batch, 1000);
        assert!(archive.url.starts_with("postgres://"));
        // Without spec.archive the servers archive nothing.
        let env = resolved(&standalone());
        let config = Config::from_lookup(|name| env.get(name).cloned()).unwrap();
        assert_eq!(config.archive, None);
        assert!(check_with_servers_parser(&with_archive()).is_ok());
    }

    #[test]
    fn every_archive_tls_mode_passes_the_spec_check_as_a_mode_of_its_own_the_server_parses() {
        use chat_server::archive::SslMode;
        use chat_server::config::Config;
        let mut seen: Vec<SslMode> = Vec::new();
        for spelling in crate::crd::ARCHIVE_SSL_MODES {
            let mode = crate::crd::ArchiveSslMode::parse(spelling);
            let mut cc = with_archive();
            if let Some(tls) = cc.spec.archive.as_mut().and_then(|a| a.tls.as_mut()) {
                tls.mode = mode;
            }
            assert_eq!(check_with_servers_parser(&cc), Ok(()), "{mode:?}");
            let env = resolved(&cc);
            // The CA file exists only in the pod, like the password file: left out of the check.
            assert!(!env.contains_key("CHAT_ARCHIVE_SSL_ROOT_CERT_FILE"));
            assert!(!env.contains_key("CHAT_ARCHIVE_PASSWORD_FILE"));
            let archive = Config::from_lookup(|name| env.get(name).cloned())
                .unwrap()
                .archive
                .unwrap();
            assert_eq!(archive.ssl_mode, SslMode::parse(spelling), "{mode:?}");
            let parsed = archive
                .ssl_mode
                .unwrap_or_else(|| panic!("the server must know {spelling}"));
            assert!(!seen.contains(&parsed), "{spelling} repeats a mode");
            seen.push(parsed);
            assert_eq!(archive.ssl_root_cert, None);
        }
    }

    #[test]
    fn archive_bounds_the_server_refuses_are_refused_by_the_spec_check_naming_the_variable() {
        // The CRD schema says the same bounds (backlog >= 1000, batch 1..=10000); the server's
        // parser is the authority, so its answer is checked at both ends of each range.
        // (backlog, batch, the variable refused)
        let cases = [
            (1000, 500, None),
            (999, 500, Some("CHAT_ARCHIVE_BACKLOG")),
            (1000, 10_000, None),
            (1000, 10_001, Some("CHAT_ARCHIVE_BATCH")),
            (1000, 0, Some("CHAT_ARCHIVE_BATCH")),
        ];
        for (backlog, batch, refused) in cases {
            let mut cc = with_archive();
            if let Some(a) = cc.spec.archive.as_mut() {
                a.backlog = Some(backlog);
                a.batch = Some(batch);
            }
            match (check_with_servers_parser(&cc), refused) {
                (Ok(()), None) => {}
                (Err(message), Some(var)) => assert!(message.contains(var), "{message}"),
                (result, expected) => panic!("{result:?}, expected refusal of {expected:?}"),
            }
        }
    }

    /// A cluster serving a Spring front-end's destination layout.
    fn with_destinations() -> crate::crd::ChatCluster {
        let mut cc = standalone();
        cc.spec.server.destinations = Some(crate::crd::DestinationsSpec {
            room: vec!["/topic/chatroom/{room}".into(), "/topic/public".into()],
            send: vec!["/app/chat.sendMessage?chatRoomId".into()],
        });
        cc
    }

    #[test]
    fn destination_patterns_reach_the_servers_parser_as_configured() {
        use chat_server::config::Config;
        let env = resolved(&with_destinations());
        assert_eq!(
            env["CHAT_ROOM_DESTINATIONS"],
            "/topic/chatroom/{room},/topic/public"
        );
        let config = Config::from_lookup(|name| env.get(name).cloned()).unwrap();
        assert_eq!(
            config.room_destinations,
            ["/topic/chatroom/{room}", "/topic/public"]
        );
        assert_eq!(
            config.send_destinations,
            ["/app/chat.sendMessage?chatRoomId"]
        );
        // Without the field the server keeps its defaults.
        let env = resolved(&standalone());
        assert!(!env.contains_key("CHAT_ROOM_DESTINATIONS"));
        let config = Config::from_lookup(|name| env.get(name).cloned()).unwrap();
        assert_eq!(config.room_destinations, ["/topic/room/{room}"]);
        // A bad pattern is refused by the server's parser, naming the variable.
        let mut bad = with_destinations();
        if let Some(d) = bad.spec.server.destinations.as_mut() {
            d.send = vec!["/app/{room}/{room}".into()];
        }
        let env = resolved(&bad);
        let err = Config::from_lookup(|name| env.get(name).cloned()).unwrap_err();
        assert_eq!(err.var, "CHAT_SEND_DESTINATIONS");
    }

    #[test]
    fn every_rendered_variable_is_one_the_configuration_names() {
        for cc in shapes() {
            for name in env_map(&server_env(&cc)).keys() {
                assert!(
                    is_a_configuration_variable(name),
                    "{name} is not in docs/CONFIGURATION.md"
                );
            }
        }
    }

    #[test]
    fn the_server_id_is_left_to_pod_name_and_logs_are_json() {
        for cc in shapes() {
            let env = env_map(&server_env(&cc));
            assert!(!env.contains_key("CHAT_SERVER_ID"));
            assert_eq!(env["POD_NAME"], "field:metadata.name");
            assert_eq!(env["CHAT_LOG_FORMAT"], "json");
            assert_eq!(env["CHAT_LISTEN_ADDR"], "0.0.0.0:8080");
        }
    }

    /// What the kubelet would put in the environment: secrets and fields resolved.
    fn resolved(cc: &crate::crd::ChatCluster) -> std::collections::BTreeMap<String, String> {
        sample_resolved_env(cc)
    }

    #[test]
    fn chat_servers_own_parser_accepts_every_rendered_environment() {
        use chat_server::config::{Backend, Config};
        for cc in shapes() {
            let env = resolved(&cc);
            let config = Config::from_lookup(|name| env.get(name).cloned())
                .unwrap_or_else(|e| panic!("{:?}: {e}", cc.spec.redis.mode));
            assert_eq!(config.server_id, "chat-server-7f9c-abcde");
            assert_eq!(config.listen_addr.to_string(), "0.0.0.0:8080");
            assert_eq!(
                config.redis_password.as_deref(),
                Some("a-sample-secret-of-enough-length")
            );
            match config.backend {
                Backend::Redis { url } => assert_eq!(url, env["CHAT_REDIS_URL"]),
                Backend::Sentinel { sentinels, master } => {
                    assert_eq!(
                        sentinels.len(),
                        env["CHAT_REDIS_SENTINELS"].split(',').count()
                    );
                    assert_eq!(master, "mymaster");
                    assert!(config.redis_sentinel_password.is_some());
                    assert!(config.redis_min_replicas >= 1);
                }
                Backend::Memory => panic!("a ChatCluster always has Redis"),
            }
            assert_eq!(
                config.allow_anonymous,
                cc.spec.server.jwt_secret_ref.is_none()
            );
            assert_eq!(
                config.jwt_key.is_some(),
                cc.spec.server.jwt_secret_ref.is_some()
            );
            for name in env.keys() {
                assert!(
                    is_a_configuration_variable(name),
                    "{name} is not a variable chat-server reads"
                );
            }
        }
    }

    #[test]
    fn exactly_one_way_to_reach_redis_is_configured() {
        for cc in shapes() {
            let env = env_map(&server_env(&cc));
            assert_ne!(
                env.contains_key("CHAT_REDIS_URL"),
                env.contains_key("CHAT_REDIS_SENTINELS")
            );
            assert_eq!(
                env.contains_key("CHAT_REDIS_SENTINELS"),
                env.contains_key("CHAT_REDIS_SENTINEL_MASTER")
            );
        }
    }
}

/// `spec.archive` through a whole reconcile against the fake API server.
#[cfg(test)]
mod archive_reconcile {
    use std::sync::Arc;

    use serde_json::Value;

    use super::chat_server_contract::with_archive;
    use crate::crd::ChatClusterStatus;
    use crate::fixtures::{Call, FakeApi, FakeSentinels, context, finish};
    use crate::reconcile::reconcile;

    /// A CA certificate as far as the PEM check goes (rustls parses the DER when connecting).
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n";
    const URL: &str = "postgresql://app:s3cret@pg-rw.prod:5432/app";

    /// The API server holding the Secrets `with_archive` names, as given.
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIBAAAA\n-----END PRIVATE KEY-----\n";

    fn api_with(cc: &crate::crd::ChatCluster, url: &str, ca: &str) -> FakeApi {
        api_with_client_key(cc, url, ca, KEY_PEM)
    }

    fn api_with_client_key(
        cc: &crate::crd::ChatCluster,
        url: &str,
        ca: &str,
        key: &str,
    ) -> FakeApi {
        FakeApi::new(cc)
            .with_secret("pg-app", "uri", url)
            .with_secret("pg-archiver", "password", "hunter2")
            .with_secret("pg-ca", "ca.crt", ca)
            .with_secret("pg-client", "tls.crt", CA_PEM)
            .with_secret("pg-client", "tls.key", key)
    }

    async fn run_with(cc: &crate::crd::ChatCluster, api: FakeApi) -> (bool, Vec<Call>) {
        let (ctx, task) = context(api, FakeSentinels::default());
        let ok = reconcile(Arc::new(cc.clone()), ctx.clone()).await.is_ok();
        (ok, finish(ctx, task).await)
    }

    async fn run(cc: &crate::crd::ChatCluster) -> (bool, Vec<Call>) {
        run_with(cc, api_with(cc, URL, CA_PEM)).await
    }

    /// The `Degraded` condition of the last status written.
    fn degraded(calls: &[Call]) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        let status_call = calls
            .iter()
            .rfind(|c| c.target().2.as_deref() == Some("status"))
            .expect("a status patch");
        let status: ChatClusterStatus =
            serde_json::from_value(status_call.body["status"].clone()).unwrap();
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap()
    }

    fn archive_stamp(calls: &[Call]) -> Option<String> {
        applied_deployment(calls)?["spec"]["template"]["metadata"]["annotations"]
            ["chat.dev/archive-secrets"]
            .as_str()
            .map(str::to_owned)
    }

    fn applied_deployment(calls: &[Call]) -> Option<&Value> {
        calls
            .iter()
            .find(|c| c.is_apply_of("deployments"))
            .map(|c| &c.body)
    }

    #[tokio::test]
    async fn an_archived_cluster_applies_servers_reading_the_url_secret_the_password_and_ca_files()
    {
        let cc = with_archive();
        let (_, calls) = run(&cc).await;
        let deployment = applied_deployment(&calls).expect("the Deployment is applied");
        let pod = &deployment["spec"]["template"]["spec"];
        let env = pod["containers"][0]["env"].as_array().unwrap();
        let url = env
            .iter()
            .find(|e| e["name"] == "CHAT_ARCHIVE_URL")
            .unwrap();
        assert_eq!(url["valueFrom"]["secretKeyRef"]["name"], "pg-app");
        assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], "uri");
        let volumes = pod["volumes"].as_array().unwrap();
        let password = volumes
            .iter()
            .find(|v| v["name"] == "archive-password")
            .unwrap();
        assert_eq!(password["secret"]["secretName"], "pg-archiver");
        // The client certificate: both keys of its kubernetes.io/tls Secret, and the variables
        // naming them.
        let client = volumes
            .iter()
            .find(|v| v["name"] == "archive-client-cert")
            .unwrap();
        assert_eq!(client["secret"]["secretName"], "pg-client");
        let items: Vec<_> = client["secret"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["key"].as_str().unwrap(), i["path"].as_str().unwrap()))
            .collect();
        assert_eq!(items, [("tls.crt", "tls.crt"), ("tls.key", "tls.key")]);
        for (var, file) in [
            (
                "CHAT_ARCHIVE_SSL_CERT_FILE",
                super::ARCHIVE_CLIENT_CERT_FILE,
            ),
            ("CHAT_ARCHIVE_SSL_KEY_FILE", super::ARCHIVE_CLIENT_KEY_FILE),
        ] {
            let e = env.iter().find(|e| e["name"] == var).unwrap();
            assert_eq!(e["value"], file);
        }
        let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
        let mount = mounts
            .iter()
            .find(|m| m["name"] == "archive-client-cert")
            .unwrap();
        assert_eq!(mount["mountPath"], super::ARCHIVE_CLIENT_DIR);
        assert_eq!(mount["readOnly"], true);
        let ca = volumes.iter().find(|v| v["name"] == "archive-ca").unwrap();
        assert_eq!(ca["secret"]["secretName"], "pg-ca");
        let mode = env
            .iter()
            .find(|e| e["name"] == "CHAT_ARCHIVE_SSL_MODE")
            .unwrap();
        assert_eq!(mode["value"], "verify-full");
        // The operator reads each archive Secret to check it, once a reconcile (the kubelet
        // hands them to the pods), and the servers' template carries their versions.
        for name in ["pg-app", "pg-archiver", "pg-ca", "pg-client"] {
            let reads = calls
                .iter()
                .filter(|c| c.method == "GET" && c.path.ends_with(&format!("/secrets/{name}")))
                .count();
            assert_eq!(reads, 1, "the archive Secret {name} read {reads} times");
        }
        let stamp = archive_stamp(&calls).expect("the archive Secrets' checksum");
        assert!(!stamp.contains("s3cret") && !stamp.contains("hunter2"));
    }

    #[tokio::test]
    async fn an_edited_archive_secret_rolls_the_servers_and_an_unchanged_one_does_not() {
        let cc = with_archive();
        let (_, first) = run(&cc).await;
        let (_, again) = run(&cc).await;
        assert_eq!(archive_stamp(&first), archive_stamp(&again));
        for edited in ["pg-app", "pg-archiver", "pg-ca", "pg-client"] {
            let api = api_with(&cc, URL, CA_PEM).with_secret_version(edited, "2");
            let (ok, calls) = run_with(&cc, api).await;
            assert!(ok);
            assert_ne!(
                archive_stamp(&calls),
                archive_stamp(&first),
                "editing {edited} must change the servers' template"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_archive_secret_degrades_the_cluster_and_applies_nothing() {
        let cc = with_archive();
        let api = FakeApi::new(&cc)
            .with_secret("pg-app", "uri", URL)
            .with_secret("pg-ca", "ca.crt", CA_PEM);
        let (ok, calls) = run_with(&cc, api).await;
        assert!(!ok, "the reconcile must fail");
        assert!(calls.iter().all(|c| !c.is_apply_of("deployments")));
        assert!(calls.iter().all(|c| !c.is_apply_of("statefulsets")));
        let d = degraded(&calls);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "ReconcileFailed")
        );
        assert!(
            d.message.contains("pg-archiver") && d.message.contains("not found"),
            "{}",
            d.message
        );
    }

    #[tokio::test]
    async fn an_archive_secret_the_servers_would_refuse_is_named_without_its_value() {
        let cc = with_archive();
        let cases = [
            (
                api_with(&cc, "mysql://app:s3cret@db/app", CA_PEM),
                "pg-app",
                "postgres://",
            ),
            (
                api_with(
                    &cc,
                    URL,
                    "-----BEGIN PRIVATE KEY-----\nMIIBAAAA\n-----END PRIVATE KEY-----\n",
                ),
                "pg-ca",
                "no PEM certificate",
            ),
            // The client certificate's key swapped for a certificate.
            (
                api_with_client_key(&cc, URL, CA_PEM, CA_PEM),
                "pg-client",
                "no PEM private key",
            ),
        ];
        for (api, secret, why) in cases {
            let (ok, calls) = run_with(&cc, api).await;
            assert!(!ok, "{secret}: the reconcile must fail");
            assert!(applied_deployment(&calls).is_none());
            let d = degraded(&calls);
            assert_eq!(
                (d.status.as_str(), d.reason.as_str()),
                ("True", "InvalidSecret")
            );
            assert!(
                d.message.contains(secret) && d.message.contains(why),
                "{}",
                d.message
            );
            assert!(!d.message.contains("s3cret"), "{}", d.message);
        }
    }

    #[tokio::test]
    async fn an_archive_setting_the_servers_would_refuse_degrades_the_cluster_and_applies_nothing()
    {
        let mut cc = with_archive();
        if let Some(a) = cc.spec.archive.as_mut() {
            a.backlog = Some(500);
        }
        let (ok, calls) = run(&cc).await;
        assert!(!ok, "the reconcile must fail");
        assert!(applied_deployment(&calls).is_none());
        let degraded = degraded(&calls);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert!(
            degraded.message.contains("CHAT_ARCHIVE_BACKLOG"),
            "{}",
            degraded.message
        );
    }
}
