//! Redis sentinels (Sentinel mode): the StatefulSet, its headless Service and the Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config_map::{checksum, redis_config_map};
use super::redis::{
    CONFIG_CHECKSUM_ANNOTATION, REDIS_UID, default_resources, mount, ping_probe, script_volumes,
    tcp_probe, topology_env,
};
use super::{
    Component, Names, SENTINEL_PORT, container_security_context, env_value, label_selector, labels,
    meta, pod_security_context, selector_labels, spread_constraints,
};
use crate::crd::ChatCluster;

/// Sentinels that must agree before a failover: a majority.
pub fn quorum(sentinels: i32) -> i32 {
    sentinels / 2 + 1
}

/// The StatefulSet `NAME-sentinel` (three or more sentinels).
pub fn sentinel_statefulset(cc: &ChatCluster) -> StatefulSet {
    let names = Names::of(cc);
    let sentinels = cc.spec.redis.sentinel_replicas();
    let mut env = topology_env(cc);
    env.push(env_value("QUORUM", quorum(sentinels).to_string()));
    let container = Container {
        name: "sentinel".to_owned(),
        image: Some(cc.spec.redis.image.clone()),
        command: Some(vec![
            "sh".to_owned(),
            "/config/sentinel-start.sh".to_owned(),
        ]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("sentinel".to_owned()),
            container_port: SENTINEL_PORT,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(ping_probe(SENTINEL_PORT)),
        liveness_probe: Some(tcp_probe(SENTINEL_PORT)),
        resources: Some(default_resources("50m", "64Mi")),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![
            mount("config", "/config", true),
            mount("run", "/run/sentinel", false),
        ]),
        ..Container::default()
    };
    StatefulSet {
        metadata: meta(cc, names.sentinel(), Component::Sentinel),
        spec: Some(StatefulSetSpec {
            replicas: Some(sentinels),
            service_name: Some(names.sentinel_headless()),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: label_selector(cc, Component::Sentinel),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cc, Component::Sentinel)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_CHECKSUM_ANNOTATION.to_owned(),
                        checksum(&redis_config_map(cc)),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security_context(REDIS_UID)),
                    topology_spread_constraints: Some(spread_constraints(cc, Component::Sentinel)),
                    termination_grace_period_seconds: Some(10),
                    containers: vec![container],
                    volumes: Some(script_volumes(cc)),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn sentinel_port() -> ServicePort {
    ServicePort {
        name: Some("sentinel".to_owned()),
        port: SENTINEL_PORT,
        target_port: Some(IntOrString::String("sentinel".to_owned())),
        ..ServicePort::default()
    }
}

/// The headless Service `NAME-sentinel-headless`: a stable DNS name per sentinel.
pub fn sentinel_headless_service(cc: &ChatCluster) -> Service {
    Service {
        metadata: meta(cc, Names::of(cc).sentinel_headless(), Component::Sentinel),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cc, Component::Sentinel)),
            ports: Some(vec![sentinel_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Service `NAME-sentinel` in front of the ready sentinels.
pub fn sentinel_service(cc: &ChatCluster) -> Service {
    Service {
        metadata: meta(cc, Names::of(cc).sentinel(), Component::Sentinel),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(cc, Component::Sentinel)),
            ports: Some(vec![sentinel_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::sentinel;

    #[test]
    fn quorum_is_a_majority_of_the_sentinels() {
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(5), 3);
    }

    #[test]
    fn sentinels_run_from_the_redis_image_with_their_own_script() {
        let mut cc = sentinel();
        cc.spec.redis.sentinels = Some(5);
        let sts = sentinel_statefulset(&cc);
        assert_eq!(sts.metadata.name.as_deref(), Some("chat-sentinel"));
        assert!(sts.metadata.owner_references.is_some());
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(5));
        assert_eq!(spec.service_name.as_deref(), Some("chat-sentinel-headless"));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("redis:7.2"));
        assert_eq!(c.command.as_ref().unwrap()[1], "/config/sentinel-start.sh");
        let quorum = c.env.iter().flatten().find(|e| e.name == "QUORUM").unwrap();
        assert_eq!(quorum.value.as_deref(), Some("3"));
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    }

    #[test]
    fn sentinel_services_select_only_sentinels() {
        let cc = sentinel();
        for svc in [sentinel_service(&cc), sentinel_headless_service(&cc)] {
            let spec = svc.spec.unwrap();
            assert_eq!(
                spec.selector.unwrap()["app.kubernetes.io/component"],
                "sentinel"
            );
            assert_eq!(spec.ports.unwrap()[0].port, 26379);
        }
    }
}
