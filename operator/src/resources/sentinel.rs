//! Redis sentinels (Sentinel mode): the StatefulSet, its headless Service and the Service.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;

use super::redis::{
    RedisImageSet, default_resources, redis_image_container, redis_image_statefulset, topology_env,
};
use super::{
    CLUSTER_IP, Component, Names, SENTINEL_PORT, ServiceKind, env_value, named_port,
    selector_labels, service,
};
use crate::crd::ChatCluster;

/// Sentinels that must agree before a failover: a majority.
pub(crate) fn quorum(sentinels: i32) -> i32 {
    sentinels / 2 + 1
}

/// The StatefulSet `NAME-sentinel` (three or more sentinels).
pub(crate) fn sentinel_statefulset(cc: &ChatCluster) -> StatefulSet {
    let names = Names::of(cc);
    let sentinels = cc.spec.redis.sentinel_replicas();
    let mut env = topology_env(cc);
    env.push(env_value("QUORUM", quorum(sentinels).to_string()));
    let resources = default_resources("50m", "64Mi");
    let set = RedisImageSet {
        component: Component::Sentinel,
        name: names.sentinel(),
        service_name: names.sentinel_headless(),
        replicas: sentinels,
        container: redis_image_container(cc, "sentinel", SENTINEL_PORT, env, resources),
        // Sentinels keep nothing but their rewritten config in the run directory.
        volumes: Vec::new(),
        grace_seconds: 10,
    };
    redis_image_statefulset(cc, set)
}

/// A sentinel Service of `kind`.
fn sentinel_service_of(cc: &ChatCluster, name: String, kind: ServiceKind<'_>) -> Service {
    let selector = selector_labels(cc, Component::Sentinel);
    let port = named_port("sentinel", SENTINEL_PORT);
    service(cc, name, Component::Sentinel, kind, selector, port)
}

/// The headless Service `NAME-sentinel-headless`: a stable DNS name per sentinel.
pub(crate) fn sentinel_headless_service(cc: &ChatCluster) -> Service {
    sentinel_service_of(cc, Names::of(cc).sentinel_headless(), ServiceKind::Headless)
}

/// The Service `NAME-sentinel` in front of the ready sentinels.
pub(crate) fn sentinel_service(cc: &ChatCluster) -> Service {
    sentinel_service_of(cc, Names::of(cc).sentinel(), CLUSTER_IP)
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
