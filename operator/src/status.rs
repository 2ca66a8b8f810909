//! The ChatCluster status as a pure function of what a reconcile observed.
//!
//! `lastTransitionTime` of a condition moves only when its status flips; reason, message and
//! `observedGeneration` follow the latest observation.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{ChatCluster, ChatClusterStatus};
use crate::resources::{Component, selector_string};
use crate::role::RoleCheck;

/// Condition types, in the order they appear in the status.
pub(crate) const READY: &str = "Ready";
/// Redis (or the external Redis) can serve the servers.
pub(crate) const REDIS_READY: &str = "RedisReady";
/// Every desired chat-server replica is ready.
pub(crate) const SERVERS_READY: &str = "ServersReady";
/// A rollout or scale is under way.
pub(crate) const PROGRESSING: &str = "Progressing";
/// Something needs a human: a bad spec, a failing reconcile, more than one Redis master.
pub(crate) const DEGRADED: &str = "Degraded";

/// Replica counts of a Deployment or StatefulSet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Workload {
    /// Replicas wanted.
    pub(crate) desired: i32,
    /// Pods that exist.
    pub(crate) current: i32,
    /// Pods that are ready.
    pub(crate) ready: i32,
    /// Pods on the latest template.
    pub(crate) updated: i32,
    /// Whether the workload controller has seen the latest spec.
    pub(crate) observed_latest: bool,
}

impl Workload {
    /// All desired pods are ready and updated.
    pub(crate) fn settled(&self) -> bool {
        self.observed_latest
            && self.ready >= self.desired
            && self.updated >= self.desired
            && self.current == self.desired
    }
}

/// What the sentinels say about the master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MasterView {
    /// A quorum of sentinels names this host.
    Agreed(String),
    /// Fewer than a quorum answered: the topology is incomplete, nothing is changed.
    Unknown {
        /// Sentinels that named a master.
        answered: usize,
        /// Sentinels needed.
        needed: usize,
    },
    /// Sentinels name different masters.
    Conflict(Vec<String>),
}

/// Decide the master from each sentinel's answer (`None`: unreachable or no master known).
pub(crate) fn decide_master(answers: &[Option<String>], quorum: usize) -> MasterView {
    let mut named: Vec<&String> = answers.iter().flatten().collect();
    named.sort();
    let answered = named.len();
    named.dedup();
    match named.as_slice() {
        [] => MasterView::Unknown {
            answered: 0,
            needed: quorum,
        },
        [one] if answered >= quorum => MasterView::Agreed((*one).clone()),
        [_] => MasterView::Unknown {
            answered,
            needed: quorum,
        },
        many => MasterView::Conflict(many.iter().map(|s| (*s).clone()).collect()),
    }
}

/// Everything the status is computed from.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Observed {
    /// The chat-server Deployment.
    pub(crate) servers: Workload,
    /// Redis data nodes (`None` for an external Redis).
    pub(crate) redis: Option<Workload>,
    /// Sentinels (Sentinel mode only).
    pub(crate) sentinels: Option<Workload>,
    /// The sentinels' view of the master.
    pub(crate) master: Option<MasterView>,
    /// The Redis master to report (`host:port`).
    pub(crate) redis_master: Option<String>,
    /// Where clients connect.
    pub(crate) endpoint: Option<String>,
    /// What the data nodes' own `ROLE` says (Sentinel mode only).
    pub(crate) roles: Option<RoleCheck>,
    /// Children the API server refused as invalid (an immutable field changed), with why.
    pub(crate) refused: Vec<String>,
}

struct Verdict {
    type_: &'static str,
    ok: bool,
    reason: String,
    message: String,
}

fn verdict(type_: &'static str, ok: bool, reason: &str, message: impl Into<String>) -> Verdict {
    Verdict {
        type_,
        ok,
        reason: reason.to_owned(),
        message: message.into(),
    }
}

fn redis_verdict(o: &Observed) -> Verdict {
    let Some(redis) = o.redis else {
        return verdict(
            REDIS_READY,
            true,
            "External",
            "the servers use an external Redis",
        );
    };
    if redis.ready < 1 {
        return verdict(
            REDIS_READY,
            false,
            "RedisNotReady",
            "no Redis data node is ready",
        );
    }
    match (&o.sentinels, &o.master) {
        (None, _) => verdict(REDIS_READY, true, "RedisReady", "Redis is ready"),
        (Some(_), Some(MasterView::Agreed(host))) => verdict(
            REDIS_READY,
            true,
            "MasterKnown",
            format!("the sentinels agree that {host} is the master"),
        ),
        (Some(_), Some(MasterView::Conflict(hosts))) => verdict(
            REDIS_READY,
            false,
            "MultipleMasters",
            format!("the sentinels name different masters: {}", hosts.join(", ")),
        ),
        (Some(_), Some(MasterView::Unknown { answered, needed })) => verdict(
            REDIS_READY,
            false,
            "NoQuorum",
            format!("{answered} sentinel(s) named a master, {needed} needed"),
        ),
        (Some(_), _) => verdict(
            REDIS_READY,
            false,
            "MasterUnknown",
            "the sentinels were not asked",
        ),
    }
}

fn servers_verdict(o: &Observed) -> Verdict {
    let s = o.servers;
    if s.desired == 0 {
        return verdict(
            SERVERS_READY,
            false,
            "ScaledToZero",
            "no chat-server replicas are wanted",
        );
    }
    let message = format!("{}/{} chat-server replicas ready", s.ready, s.desired);
    if s.ready >= s.desired {
        verdict(SERVERS_READY, true, "ReplicasReady", message)
    } else {
        verdict(SERVERS_READY, false, "ReplicasNotReady", message)
    }
}

fn progressing_verdict(o: &Observed) -> Verdict {
    let moving: Vec<&str> = [
        (Some(o.servers), "chat-server"),
        (o.redis, "redis"),
        (o.sentinels, "sentinels"),
    ]
    .into_iter()
    .filter_map(|(w, name)| w.filter(|w| !w.settled()).map(|_| name))
    .collect();
    if moving.is_empty() {
        verdict(
            PROGRESSING,
            false,
            "Settled",
            "every workload is at its desired state",
        )
    } else {
        verdict(
            PROGRESSING,
            true,
            "RollingOut",
            format!("rolling out: {}", moving.join(", ")),
        )
    }
}

fn degraded_verdict(o: &Observed) -> Verdict {
    match &o.roles {
        Some(RoleCheck::MultipleMasters(pods)) => {
            return verdict(
                DEGRADED,
                true,
                "MultipleMasters",
                format!(
                    "more than one data node says it is master: {}",
                    pods.join(", ")
                ),
            );
        }
        Some(RoleCheck::MasterIsReplica { pod, of }) => {
            return verdict(
                DEGRADED,
                true,
                "MasterIsReplica",
                format!(
                    "the sentinels name {pod} as master but it replicates {of}; the master label was not moved"
                ),
            );
        }
        Some(RoleCheck::Consistent) | None => {}
    }
    if !o.refused.is_empty() {
        return verdict(
            DEGRADED,
            true,
            NEEDS_MIGRATION,
            format!(
                "the API server refused: {}; the rest was applied",
                o.refused.join("; ")
            ),
        );
    }
    if let Some(MasterView::Conflict(hosts)) = &o.master {
        return verdict(
            DEGRADED,
            true,
            "MultipleMasters",
            format!("more than one Redis master: {}", hosts.join(", ")),
        );
    }
    verdict(DEGRADED, false, "AsExpected", "nothing needs attention")
}

/// The status for `cc` given what was observed, keeping transition times from `previous`
/// where a condition did not flip.
pub(crate) fn compute(cc: &ChatCluster, observed: &Observed, now: Time) -> ChatClusterStatus {
    let previous = cc.status.as_ref();
    let redis = redis_verdict(observed);
    let servers = servers_verdict(observed);
    let progressing = progressing_verdict(observed);
    let degraded = degraded_verdict(observed);
    let ready = if redis.ok && servers.ok && !degraded.ok {
        verdict(
            READY,
            true,
            "Ready",
            "Redis and every chat-server replica are ready",
        )
    } else {
        let failing: Vec<&str> = [
            (&redis, !redis.ok),
            (&servers, !servers.ok),
            (&degraded, degraded.ok),
        ]
        .into_iter()
        .filter(|(_, failing)| *failing)
        .map(|(v, _)| v.type_)
        .collect();
        verdict(
            READY,
            false,
            "NotReady",
            format!("not ready: {}", failing.join(", ")),
        )
    };
    let generation = cc.metadata.generation;
    let conditions = [ready, redis, servers, progressing, degraded]
        .into_iter()
        .map(|v| {
            let status = if v.ok { "True" } else { "False" }.to_owned();
            let last = previous
                .and_then(|p| p.conditions.iter().find(|c| c.type_ == v.type_))
                .filter(|c| c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: v.type_.to_owned(),
                status,
                reason: v.reason,
                message: v.message,
                observed_generation: generation,
                last_transition_time: last,
            }
        })
        .collect();
    ChatClusterStatus {
        conditions,
        observed_generation: generation,
        server_replicas: observed.servers.current,
        ready_server_replicas: observed.servers.ready,
        selector: Some(selector_string(cc, Component::Server)),
        redis_master: observed.redis_master.clone(),
        endpoint: observed.endpoint.clone(),
    }
}

fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            let last = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *old = Condition {
                last_transition_time: last,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

/// Reason of `Degraded` when a child cannot be changed in place (an immutable field).
pub(crate) const NEEDS_MIGRATION: &str = "NeedsMigration";
/// Reason of `Degraded` when the spec was refused.
pub(crate) const INVALID_SPEC: &str = "InvalidSpec";
/// Reason of `Degraded` when a reconcile failed.
pub(crate) const RECONCILE_FAILED: &str = "ReconcileFailed";
/// Reason of `Degraded` when a Secret the spec names holds what the servers would refuse.
pub(crate) const INVALID_SECRET: &str = "InvalidSecret";
/// Reason of `Degraded` when the generated password Secret is gone while Redis data exists.
pub(crate) const PASSWORD_SECRET_LOST: &str = "PasswordSecretLost";

/// The previous status with `Degraded` true (for `reason`) and `Ready` false: what a refused
/// spec or a failed reconcile can say without having observed the workloads.
pub(crate) fn mark_failed(
    cc: &ChatCluster,
    reason: &str,
    message: &str,
    now: Time,
) -> ChatClusterStatus {
    let mut status = cc.status.clone().unwrap_or_default();
    let generation = cc.metadata.generation;
    for (type_, status_, reason, msg) in [
        (DEGRADED, "True", reason, message.to_owned()),
        (READY, "False", "NotReady", format!("not ready: {DEGRADED}")),
    ] {
        set_condition(
            &mut status.conditions,
            Condition {
                type_: type_.to_owned(),
                status: status_.to_owned(),
                reason: reason.to_owned(),
                message: msg,
                observed_generation: generation,
                last_transition_time: now.clone(),
            },
        );
    }
    status.observed_generation = generation;
    status
}

/// Conditions whose status differs between `old` and `new` (new ones included), as
/// `(type, new status, reason, message)`.
pub(crate) fn flipped(
    old: Option<&ChatClusterStatus>,
    new: &ChatClusterStatus,
) -> Vec<(String, String, String, String)> {
    new.conditions
        .iter()
        .filter(|c| {
            old.and_then(|o| o.conditions.iter().find(|p| p.type_ == c.type_))
                .is_none_or(|p| p.status != c.status)
        })
        .map(|c| {
            (
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::{sentinel, standalone};
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn settled(n: i32) -> Workload {
        Workload {
            desired: n,
            current: n,
            ready: n,
            updated: n,
            observed_latest: true,
        }
    }

    fn condition<'a>(s: &'a ChatClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    fn healthy_standalone() -> Observed {
        Observed {
            servers: settled(2),
            redis: Some(settled(1)),
            redis_master: Some("chat-redis.prod.svc:6379".into()),
            endpoint: Some("chat.prod.svc:80".into()),
            ..Observed::default()
        }
    }

    #[test]
    fn a_settled_standalone_cluster_is_ready_and_not_progressing() {
        let s = compute(&standalone(), &healthy_standalone(), at(100));
        assert_eq!(condition(&s, READY).status, "True");
        assert_eq!(condition(&s, REDIS_READY).status, "True");
        assert_eq!(condition(&s, SERVERS_READY).status, "True");
        assert_eq!(condition(&s, PROGRESSING).status, "False");
        assert_eq!(condition(&s, DEGRADED).status, "False");
        assert_eq!(s.observed_generation, Some(3));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert_eq!((s.server_replicas, s.ready_server_replicas), (2, 2));
        assert_eq!(s.endpoint.as_deref(), Some("chat.prod.svc:80"));
        assert!(
            s.selector
                .unwrap()
                .contains("app.kubernetes.io/component=server")
        );
    }

    #[test]
    fn servers_still_starting_make_the_cluster_progressing_and_not_ready() {
        let mut o = healthy_standalone();
        o.servers.ready = 1;
        let s = compute(&standalone(), &o, at(100));
        assert_eq!(condition(&s, SERVERS_READY).status, "False");
        assert_eq!(
            condition(&s, SERVERS_READY).message,
            "1/2 chat-server replicas ready"
        );
        assert_eq!(condition(&s, PROGRESSING).status, "True");
        assert_eq!(condition(&s, READY).status, "False");
    }

    #[test]
    fn transition_time_moves_only_when_a_condition_flips() {
        let mut cc = standalone();
        cc.status = Some(compute(&cc, &healthy_standalone(), at(100)));
        // Same observation later: every time stays.
        let again = compute(&cc, &healthy_standalone(), at(200));
        assert!(
            again
                .conditions
                .iter()
                .all(|c| c.last_transition_time == at(100))
        );
        // Servers drop: ServersReady and Ready flip and move, Redis stays.
        let mut o = healthy_standalone();
        o.servers.ready = 0;
        let dropped = compute(&cc, &o, at(300));
        assert_eq!(
            condition(&dropped, SERVERS_READY).last_transition_time,
            at(300)
        );
        assert_eq!(condition(&dropped, READY).last_transition_time, at(300));
        assert_eq!(
            condition(&dropped, REDIS_READY).last_transition_time,
            at(100)
        );
    }

    #[test]
    fn sentinels_that_disagree_mark_the_cluster_degraded() {
        let o = Observed {
            servers: settled(2),
            redis: Some(settled(3)),
            sentinels: Some(settled(3)),
            master: Some(MasterView::Conflict(vec!["a".into(), "b".into()])),
            ..Observed::default()
        };
        let s = compute(&sentinel(), &o, at(1));
        assert_eq!(condition(&s, DEGRADED).status, "True");
        assert_eq!(condition(&s, DEGRADED).reason, "MultipleMasters");
        assert_eq!(condition(&s, REDIS_READY).status, "False");
        assert_eq!(condition(&s, READY).status, "False");
    }

    #[test]
    fn an_invalid_spec_is_degraded_with_its_reason() {
        let s = mark_failed(
            &sentinel(),
            INVALID_SPEC,
            "Sentinel mode needs at least 3 sentinels",
            at(1),
        );
        let d = condition(&s, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert!(d.message.contains("3 sentinels"));
    }

    #[test]
    fn a_failed_reconcile_marks_degraded_and_keeps_the_other_conditions() {
        let mut cc = standalone();
        cc.status = Some(compute(&cc, &healthy_standalone(), at(100)));
        let s = mark_failed(&cc, RECONCILE_FAILED, "kubernetes api: boom", at(200));
        let d = condition(&s, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "ReconcileFailed")
        );
        assert_eq!(d.last_transition_time, at(200));
        assert_eq!(condition(&s, READY).status, "False");
        let redis = condition(&s, REDIS_READY);
        assert_eq!(
            (redis.status.as_str(), &redis.last_transition_time),
            ("True", &at(100))
        );
        assert_eq!(s.endpoint.as_deref(), Some("chat.prod.svc:80"));
        // Failing again moves nothing.
        cc.status = Some(s.clone());
        let again = mark_failed(&cc, RECONCILE_FAILED, "kubernetes api: boom", at(300));
        assert_eq!(condition(&again, DEGRADED).last_transition_time, at(200));
    }

    #[test]
    fn the_master_is_agreed_only_by_a_quorum_naming_one_host() {
        let a = || Some("chat-redis-1.h".to_owned());
        assert_eq!(
            decide_master(&[a(), a(), None], 2),
            MasterView::Agreed("chat-redis-1.h".into())
        );
        assert_eq!(
            decide_master(&[a(), None, None], 2),
            MasterView::Unknown {
                answered: 1,
                needed: 2
            }
        );
        assert_eq!(
            decide_master(&[None, None, None], 2),
            MasterView::Unknown {
                answered: 0,
                needed: 2
            }
        );
        assert_eq!(
            decide_master(&[a(), Some("chat-redis-0.h".into()), a()], 2),
            MasterView::Conflict(vec!["chat-redis-0.h".into(), "chat-redis-1.h".into()])
        );
    }

    #[test]
    fn flipped_lists_new_and_changed_conditions_only() {
        let mut cc = standalone();
        let first = compute(&cc, &healthy_standalone(), at(1));
        assert_eq!(flipped(None, &first).len(), 5);
        cc.status = Some(first.clone());
        assert!(flipped(Some(&first), &compute(&cc, &healthy_standalone(), at(2))).is_empty());
        let mut o = healthy_standalone();
        o.redis = Some(Workload::default());
        let changed: Vec<String> = flipped(Some(&first), &compute(&cc, &o, at(3)))
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(changed, [READY, REDIS_READY, PROGRESSING]);
    }
}
