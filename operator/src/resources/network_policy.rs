//! The NetworkPolicy `NAME-redis`: Redis and the sentinels accept only the cluster's own pods,
//! plus, in Sentinel mode, the operator on the sentinel and data ports (it asks the sentinels
//! who the master is, and each data node its own `ROLE`).

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

use super::{Component, Names, REDIS_PORT, SENTINEL_PORT, cluster_pod_labels, deploys, meta};
use crate::crd::{ChatCluster, RedisMode};

/// `app.kubernetes.io/name` of the operator's own pods (the Helm chart sets it).
pub(crate) const OPERATOR_APP_NAME: &str = "chat-operator";

fn port(p: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some("TCP".to_owned()),
        port: Some(IntOrString::Int(p)),
        ..NetworkPolicyPort::default()
    }
}

/// The policy for `cc`; `operator_namespace` is where the operator's pods run. `None` when the
/// operator deploys no Redis.
pub(crate) fn redis_network_policy(
    cc: &ChatCluster,
    operator_namespace: &str,
) -> Option<NetworkPolicy> {
    if cc.spec.redis.external.is_some() {
        return None;
    }
    let sentinel = deploys(cc, RedisMode::Sentinel);
    let mut components = vec![Component::Redis.as_str().to_owned()];
    let mut ports = vec![port(REDIS_PORT)];
    if sentinel {
        components.push(Component::Sentinel.as_str().to_owned());
        ports.push(port(SENTINEL_PORT));
    }
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(cluster_pod_labels(cc)),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(ports),
    }];
    if sentinel {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_owned(),
                        operator_namespace.to_owned(),
                    )])),
                    ..LabelSelector::default()
                }),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/name".to_owned(),
                        OPERATOR_APP_NAME.to_owned(),
                    )])),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![port(SENTINEL_PORT), port(REDIS_PORT)]),
        });
    }
    Some(NetworkPolicy {
        metadata: meta(cc, Names::of(cc).redis(), Component::Redis),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/instance".to_owned(),
                    cc.name_any(),
                )])),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "app.kubernetes.io/component".to_owned(),
                    operator: "In".to_owned(),
                    values: Some(components),
                }]),
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ExternalRedis;
    use crate::resources::testing::{sentinel, standalone};

    #[test]
    fn standalone_redis_accepts_only_the_clusters_own_pods() {
        let np = redis_network_policy(&standalone(), "ops").unwrap();
        assert_eq!(np.metadata.name.as_deref(), Some("chat-redis"));
        assert!(np.metadata.owner_references.is_some());
        let spec = np.spec.unwrap();
        let target = spec.pod_selector.unwrap();
        assert_eq!(
            target.match_labels.unwrap()["app.kubernetes.io/instance"],
            "chat"
        );
        assert_eq!(
            target.match_expressions.unwrap()[0].values,
            Some(vec!["redis".to_owned()])
        );
        let ingress = spec.ingress.unwrap();
        assert_eq!(ingress.len(), 1);
        let from = ingress[0].from.clone().unwrap();
        let peer = from[0].pod_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(peer["app.kubernetes.io/instance"], "chat");
        assert!(
            from[0].namespace_selector.is_none(),
            "only pods of this namespace"
        );
    }

    #[test]
    fn sentinel_mode_also_accepts_the_operator_on_the_sentinel_and_data_ports_only() {
        let spec = redis_network_policy(&sentinel(), "ops")
            .unwrap()
            .spec
            .unwrap();
        let ingress = spec.ingress.unwrap();
        assert_eq!(ingress.len(), 2);
        let operator = &ingress[1];
        let peer = &operator.from.as_ref().unwrap()[0];
        assert_eq!(
            peer.namespace_selector
                .clone()
                .unwrap()
                .match_labels
                .unwrap()["kubernetes.io/metadata.name"],
            "ops"
        );
        let ports: Vec<_> = operator
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port.clone())
            .collect();
        assert_eq!(
            ports,
            [Some(IntOrString::Int(26379)), Some(IntOrString::Int(6379))]
        );
    }

    #[test]
    fn no_policy_for_an_external_redis() {
        let mut cc = standalone();
        cc.spec.redis.external = Some(ExternalRedis {
            url: Some("redis://x:6379".into()),
            sentinels: None,
            master_name: None,
        });
        assert!(redis_network_policy(&cc, "ops").is_none());
    }
}
