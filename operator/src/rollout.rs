//! Rolling the Redis data nodes of a Sentinel-mode cluster (their StatefulSet is `OnDelete`).
//!
//! What it keeps true: at most one data node is restarted at a time, and only while every
//! data node is Ready and every replica's replication link is up; replicas go first (highest
//! ordinal first, as a StatefulSet would); the master goes last, and its pod is simply deleted:
//! its preStop hook pauses writes (`CLIENT PAUSE WRITE`) and only then asks the sentinels to
//! fail over, so no replica acknowledges a write the new master lacks, and the restarted pod
//! comes back as a replica (its start script never takes the master role back from a replica
//! holding data). The operator never asks a sentinel for a failover itself: one asked while
//! the master still takes writes lets a replica not yet reconfigured acknowledge (`WAIT`)
//! writes that its resync from the new master then discards. Nothing moves while the
//! sentinels do not agree on a master or the nodes' own roles contradict them. Each reconcile
//! takes at most one step; the next reconcile sees its effect.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::role::NodeRole;

/// Label the StatefulSet controller puts on each pod: the revision it was created from.
pub(crate) const REVISION_LABEL: &str = "controller-revision-hash";

/// What the roll needs to know of one data pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DataPod {
    /// Pod name (`NAME-redis-N`).
    pub(crate) name: String,
    /// Ordinal `N`.
    pub(crate) ordinal: i32,
    /// Its `controller-revision-hash`.
    pub(crate) revision: Option<String>,
    /// Its Ready condition is true.
    pub(crate) ready: bool,
    /// It is being deleted.
    pub(crate) deleting: bool,
}

impl DataPod {
    /// The roll's view of `pod` (`None`: not a pod of the StatefulSet `set`).
    pub(crate) fn of(pod: &Pod, set: &str) -> Option<Self> {
        let name = pod.name_any();
        let ordinal = name.strip_prefix(set)?.strip_prefix('-')?.parse().ok()?;
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Some(Self {
            revision: pod.labels().get(REVISION_LABEL).cloned(),
            ready,
            deleting: pod.metadata.deletion_timestamp.is_some(),
            name,
            ordinal,
        })
    }
}

/// The one thing to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RollStep {
    /// Every data pod runs the current revision.
    UpToDate,
    /// Not now, for this reason.
    Wait(String),
    /// Delete this (outdated replica, or a master with no replica) pod.
    Delete(String),
    /// Delete this outdated master, every replica ready and linked: its preStop hook pauses
    /// writes and hands the master role over to a replica before it stops.
    HandOver(String),
}

/// The next step of the roll towards `update_revision`, given the data pods, how many there
/// should be, the pod the sentinels agree is master (`None`: no agreement, or the roles
/// contradict it) and each pod's own role.
pub(crate) fn next_step(
    pods: &[DataPod],
    update_revision: &str,
    desired: usize,
    master: Option<&str>,
    roles: &[(String, Option<NodeRole>)],
) -> RollStep {
    let outdated = |p: &&DataPod| p.revision.as_deref() != Some(update_revision);
    if !pods.iter().any(|p| outdated(&p)) && pods.len() >= desired {
        return RollStep::UpToDate;
    }
    if pods.len() < desired {
        return RollStep::Wait(format!("{} of {desired} data pods exist", pods.len()));
    }
    if let Some(p) = pods.iter().find(|p| !p.ready || p.deleting) {
        return RollStep::Wait(format!("{} is not ready", p.name));
    }
    let Some(master) = master else {
        return RollStep::Wait("the sentinels agree on no master".to_owned());
    };
    let role = |pod: &str| {
        roles
            .iter()
            .find(|(p, _)| p == pod)
            .and_then(|(_, r)| r.as_ref())
    };
    for p in pods.iter().filter(|p| p.name != master) {
        if !matches!(role(&p.name), Some(NodeRole::Replica { linked: true, .. })) {
            return RollStep::Wait(format!("{} is not a linked replica", p.name));
        }
    }
    if let Some(replica) = pods
        .iter()
        .filter(outdated)
        .filter(|p| p.name != master)
        .max_by_key(|p| p.ordinal)
    {
        return RollStep::Delete(replica.name.clone());
    }
    match pods.iter().find(|p| p.name == master) {
        // Only the master is left to roll: with replicas (all ready and linked, checked above)
        // to take over, its deletion runs the preStop hook that hands the role over.
        Some(_) if pods.len() > 1 => RollStep::HandOver(master.to_owned()),
        Some(_) => RollStep::Delete(master.to_owned()),
        None => RollStep::Wait(format!("the master {master} is not among the data pods")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "rev-2";

    fn pod(ordinal: i32, revision: &str) -> DataPod {
        DataPod {
            name: format!("chat-redis-{ordinal}"),
            ordinal,
            revision: Some(revision.to_owned()),
            ready: true,
            deleting: false,
        }
    }

    /// Pod `master` is master, the others linked replicas.
    fn roles(pods: &[DataPod], master: &str) -> Vec<(String, Option<NodeRole>)> {
        pods.iter()
            .map(|p| {
                let role = if p.name == master {
                    NodeRole::Master {
                        replicas: pods.len() - 1,
                    }
                } else {
                    NodeRole::Replica {
                        master: format!("{master}.h:6379"),
                        linked: true,
                    }
                };
                (p.name.clone(), Some(role))
            })
            .collect()
    }

    fn step(pods: &[DataPod], master: &str) -> RollStep {
        next_step(pods, NEW, 3, Some(master), &roles(pods, master))
    }

    #[test]
    fn replicas_roll_first_highest_ordinal_first_and_the_master_is_handed_over_last() {
        let m = "chat-redis-1";
        let mut pods = vec![pod(0, "rev-1"), pod(1, "rev-1"), pod(2, "rev-1")];
        assert_eq!(step(&pods, m), RollStep::Delete("chat-redis-2".into()));
        pods[2] = pod(2, NEW);
        assert_eq!(step(&pods, m), RollStep::Delete("chat-redis-0".into()));
        pods[0] = pod(0, NEW);
        assert_eq!(step(&pods, m), RollStep::HandOver("chat-redis-1".into()));
        // While the old master stops (its hook hands over), nothing else moves.
        pods[1].deleting = true;
        assert!(matches!(step(&pods, m), RollStep::Wait(w) if w.contains("chat-redis-1")));
        assert!(matches!(
            step(&pods, "chat-redis-2"),
            RollStep::Wait(w) if w.contains("chat-redis-1")
        ));
        // Back at the new revision as pod 2's replica: done.
        pods[1] = pod(1, NEW);
        assert_eq!(step(&pods, "chat-redis-2"), RollStep::UpToDate);
    }

    #[test]
    fn an_outdated_master_is_not_handed_over_while_a_replica_is_unlinked_or_not_ready() {
        let m = "chat-redis-1";
        let mut pods = vec![pod(0, NEW), pod(1, "rev-1"), pod(2, NEW)];
        let mut unlinked = roles(&pods, m);
        unlinked[2].1 = Some(NodeRole::Replica {
            master: format!("{m}.h:6379"),
            linked: false,
        });
        assert!(matches!(
            next_step(&pods, NEW, 3, Some(m), &unlinked),
            RollStep::Wait(w) if w.contains("chat-redis-2")
        ));
        pods[0].ready = false;
        assert!(matches!(step(&pods, m), RollStep::Wait(w) if w.contains("chat-redis-0")));
        pods[0].ready = true;
        assert_eq!(step(&pods, m), RollStep::HandOver(m.into()));
    }

    #[test]
    fn nothing_moves_while_a_pod_is_not_ready_missing_or_unlinked() {
        let m = "chat-redis-0";
        let mut pods = vec![pod(0, "rev-1"), pod(1, NEW), pod(2, "rev-1")];
        pods[1].ready = false;
        assert!(matches!(step(&pods, m), RollStep::Wait(w) if w.contains("chat-redis-1")));
        pods[1].ready = true;
        pods[1].deleting = true;
        assert!(matches!(step(&pods, m), RollStep::Wait(_)));
        pods[1].deleting = false;
        assert!(matches!(step(&pods[..2], m), RollStep::Wait(w) if w.contains("2 of 3")));
        let mut unlinked = roles(&pods, m);
        unlinked[1].1 = Some(NodeRole::Replica {
            master: "x:6379".into(),
            linked: false,
        });
        assert!(matches!(
            next_step(&pods, NEW, 3, Some(m), &unlinked),
            RollStep::Wait(w) if w.contains("chat-redis-1")
        ));
        unlinked[1].1 = None;
        assert!(matches!(
            next_step(&pods, NEW, 3, Some(m), &unlinked),
            RollStep::Wait(_)
        ));
        assert!(matches!(
            next_step(&pods, NEW, 3, None, &roles(&pods, m)),
            RollStep::Wait(w) if w.contains("no master")
        ));
        // All ready, linked and agreed: the outdated replica goes.
        assert_eq!(step(&pods, m), RollStep::Delete("chat-redis-2".into()));
    }

    #[test]
    fn a_lone_master_is_deleted_without_a_hand_over() {
        let pods = vec![pod(0, "rev-1")];
        assert_eq!(
            next_step(
                &pods,
                NEW,
                1,
                Some("chat-redis-0"),
                &roles(&pods, "chat-redis-0")
            ),
            RollStep::Delete("chat-redis-0".into())
        );
    }

    #[test]
    fn a_pod_is_read_by_its_revision_label_ready_condition_and_ordinal() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "chat-redis-2", "labels": {REVISION_LABEL: "rev-1"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        assert_eq!(
            DataPod::of(&pod, "chat-redis"),
            Some(DataPod {
                name: "chat-redis-2".into(),
                ordinal: 2,
                revision: Some("rev-1".into()),
                ready: true,
                deleting: false,
            })
        );
        assert_eq!(DataPod::of(&pod, "chat-sentinel"), None);
    }
}
