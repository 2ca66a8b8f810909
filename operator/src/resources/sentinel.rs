//! Redis sentinels (Sentinel mode): the StatefulSet, its headless Service and the Service.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Affinity, PodAffinityTerm, PodAntiAffinity, Service, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::redis::{
    RedisImageSet, default_resources, redis_image_container, redis_image_statefulset, topology_env,
};
use super::{
    CLUSTER_IP, Component, Names, SENTINEL_PORT, ServiceKind, disruption_budget, env_value,
    label_selector, named_port, selector_labels, service,
};
use crate::crd::{AntiAffinity, ChatCluster};

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
    let mut sts = redis_image_statefulset(cc, set);
    if let Some(pod) = sts.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pod.affinity = Some(sentinel_affinity(cc));
    }
    sts
}

/// Keep sentinels on different nodes: required or preferred, as the spec says. A node that
/// carries two sentinels takes two votes with it when it goes.
fn sentinel_affinity(cc: &ChatCluster) -> Affinity {
    let term = PodAffinityTerm {
        label_selector: Some(label_selector(cc, Component::Sentinel)),
        topology_key: "kubernetes.io/hostname".to_owned(),
        ..PodAffinityTerm::default()
    };
    let anti = match cc.spec.redis.sentinel_anti_affinity {
        AntiAffinity::Required => PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term]),
            ..PodAntiAffinity::default()
        },
        AntiAffinity::Preferred => PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: term,
                },
            ]),
            ..PodAntiAffinity::default()
        },
    };
    Affinity {
        pod_anti_affinity: Some(anti),
        ..Affinity::default()
    }
}

/// The PodDisruptionBudget `NAME-sentinel`: evictions never leave fewer sentinels than the
/// quorum (with 3 sentinels, one at a time), so a failover stays possible during a drain.
pub(crate) fn sentinel_disruption_budget(cc: &ChatCluster) -> PodDisruptionBudget {
    let sentinels = cc.spec.redis.sentinel_replicas();
    let spare = (sentinels - quorum(sentinels)).max(1);
    disruption_budget(
        cc,
        Names::of(cc).sentinel(),
        Component::Sentinel,
        IntOrString::Int(spare),
    )
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
    fn the_sentinel_budget_keeps_a_quorum_through_evictions() {
        let mut cc = sentinel();
        let budget = |cc: &ChatCluster| {
            let pdb = sentinel_disruption_budget(cc);
            assert_eq!(pdb.metadata.name.as_deref(), Some("chat-sentinel"));
            pdb.spec.unwrap().max_unavailable.unwrap()
        };
        assert_eq!(budget(&cc), IntOrString::Int(1));
        cc.spec.redis.sentinels = Some(5);
        assert_eq!(budget(&cc), IntOrString::Int(2));
        let selector = sentinel_disruption_budget(&cc)
            .spec
            .unwrap()
            .selector
            .unwrap();
        assert_eq!(
            selector.match_labels.unwrap()["app.kubernetes.io/component"],
            "sentinel"
        );
    }

    #[test]
    fn sentinels_prefer_separate_nodes_unless_the_spec_requires_it() {
        let anti = |cc: &ChatCluster| {
            let sts = sentinel_statefulset(cc);
            sts.spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .affinity
                .unwrap()
                .pod_anti_affinity
                .unwrap()
        };
        let mut cc = sentinel();
        let preferred = anti(&cc);
        assert!(
            preferred
                .required_during_scheduling_ignored_during_execution
                .is_none()
        );
        let terms = preferred
            .preferred_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(
            terms[0].pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        cc.spec.redis.sentinel_anti_affinity = AntiAffinity::Required;
        let required = anti(&cc);
        assert!(
            required
                .preferred_during_scheduling_ignored_during_execution
                .is_none()
        );
        let terms = required
            .required_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(terms[0].topology_key, "kubernetes.io/hostname");
        let selector = terms[0]
            .label_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap();
        assert_eq!(selector["app.kubernetes.io/component"], "sentinel");
    }

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
        assert_eq!(c.image.as_deref(), Some("redis:7.2.7"));
        assert_eq!(c.command.as_ref().unwrap()[1], "/config/sentinel-start.sh");
        let quorum = c.env.iter().flatten().find(|e| e.name == "QUORUM").unwrap();
        assert_eq!(quorum.value.as_deref(), Some("3"));
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    }

    #[test]
    fn sentinels_and_data_nodes_roll_on_their_own_checksums() {
        let cc = sentinel();
        let sum = |sts: StatefulSet| {
            sts.spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[super::super::redis::CONFIG_CHECKSUM_ANNOTATION]
                .clone()
        };
        let sentinels = sum(sentinel_statefulset(&cc));
        let data = sum(super::super::redis::redis_statefulset(&cc));
        assert_ne!(sentinels, data);
        // A data-node setting (persistence) changes only the data nodes' checksum.
        let mut persistent = cc.clone();
        persistent.spec.redis.persistence.enabled = Some(!cc.spec.redis.persistent());
        assert_eq!(sum(sentinel_statefulset(&persistent)), sentinels);
        assert_ne!(
            sum(super::super::redis::redis_statefulset(&persistent)),
            data
        );
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
