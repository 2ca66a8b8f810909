//! Asking each Redis data node its real role (`ROLE`), through fred, and what the answers
//! say about the topology the sentinels describe.
//!
//! Read-only, like the sentinel probe: one fresh connection per question, bounded by one
//! timeout. What it keeps true: the master label never goes to a node whose own `ROLE` says
//! it is a replica, and two nodes that both say master are reported, never hidden.

use std::time::Duration;

use fred::prelude::Value;
use futures_util::future::BoxFuture;

use crate::error::{Error, Result};
use crate::sentinel::{one_command, text};

/// What a data node says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeRole {
    /// A master, with this many replicas attached.
    Master {
        /// Replicas the master lists as connected.
        replicas: usize,
    },
    /// A replica of `master` (`host:port`).
    Replica {
        /// `host:port` of the master it follows.
        master: String,
        /// Whether its link to the master is up (`connected`).
        linked: bool,
    },
    /// Anything else (`sentinel`, a future role).
    Other(String),
}

/// One question to one data node: what are you?
#[derive(Clone, Copy, Debug)]
pub struct RoleQuery<'a> {
    /// `host:port` of the data node.
    pub addr: &'a str,
    /// Its password, if it has one.
    pub password: Option<&'a str>,
}

/// Something that can ask a data node its role.
pub trait RoleProbe: Send + Sync {
    /// Ask the data node at `query.addr`.
    fn role<'a>(&'a self, query: RoleQuery<'a>) -> BoxFuture<'a, Result<NodeRole>>;
}

fn failure(addr: &str, reason: impl std::fmt::Display) -> Error {
    Error::Redis {
        addr: addr.to_owned(),
        reason: reason.to_string(),
    }
}

/// An integer of a reply, sent as an integer or as text.
fn integer(value: Value) -> Option<i64> {
    match value {
        Value::Integer(i) => Some(i),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

/// The role in a `ROLE` reply: `[master, offset, [[ip, port, offset], ...]]`,
/// `[slave, ip, port, state, offset]`, or `[sentinel, [names]]`.
pub(crate) fn role_from_reply(addr: &str, reply: Value) -> Result<NodeRole> {
    let Value::Array(items) = reply else {
        return Err(failure(addr, format!("unexpected ROLE reply {reply:?}")));
    };
    let mut items = items.into_iter();
    let kind = items.next().and_then(text).unwrap_or_default();
    match kind.as_str() {
        "master" => {
            let replicas = match items.nth(1) {
                Some(Value::Array(list)) => list.len(),
                _ => 0,
            };
            Ok(NodeRole::Master { replicas })
        }
        "slave" | "replica" => {
            let host = items.next().and_then(text);
            let port = items.next().and_then(integer);
            let state = items.next().and_then(text).unwrap_or_default();
            match (host, port) {
                (Some(host), Some(port)) => Ok(NodeRole::Replica {
                    master: format!("{host}:{port}"),
                    linked: state == "connected",
                }),
                _ => Err(failure(addr, "a replica's ROLE without its master")),
            }
        }
        "" => Err(failure(addr, "an empty ROLE reply")),
        other => Ok(NodeRole::Other(other.to_owned())),
    }
}

/// Asks data nodes with a short-lived fred client per question.
#[derive(Clone, Debug)]
pub struct FredRoleProbe {
    /// Bound on connecting plus the whole exchange.
    pub timeout: Duration,
}

impl Default for FredRoleProbe {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
        }
    }
}

impl RoleProbe for FredRoleProbe {
    fn role<'a>(&'a self, query: RoleQuery<'a>) -> BoxFuture<'a, Result<NodeRole>> {
        Box::pin(async move {
            let reply = one_command(query.addr, query.password, self.timeout, "ROLE", Vec::new())
                .await
                .map_err(|reason| failure(query.addr, reason))?;
            role_from_reply(query.addr, reply)
        })
    }
}

/// What the data nodes' own roles say about the topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoleCheck {
    /// Nothing contradicts the sentinels (nodes that did not answer count for nothing).
    Consistent,
    /// More than one node says it is master (split brain): these pods.
    MultipleMasters(Vec<String>),
    /// The node the sentinels name as master says it is a replica (of `of`).
    MasterIsReplica {
        /// The pod the sentinels name.
        pod: String,
        /// Whom it replicates.
        of: String,
    },
}

/// Judge the roles (`(pod, role)`, `None`: no answer) against the pod the sentinels name as
/// master, if they agree on one. Two masters weigh more than a mislabelled one.
pub fn check_roles(named_master: Option<&str>, roles: &[(String, Option<NodeRole>)]) -> RoleCheck {
    let masters: Vec<String> = roles
        .iter()
        .filter(|(_, role)| matches!(role, Some(NodeRole::Master { .. })))
        .map(|(pod, _)| pod.clone())
        .collect();
    if masters.len() > 1 {
        return RoleCheck::MultipleMasters(masters);
    }
    let named = named_master.and_then(|m| roles.iter().find(|(pod, _)| pod == m));
    if let Some((pod, Some(NodeRole::Replica { master, .. }))) = named {
        return RoleCheck::MasterIsReplica {
            pod: pod.clone(),
            of: master.clone(),
        };
    }
    RoleCheck::Consistent
}

/// Whether the master label may go to `pod`: not when its own `ROLE` says replica.
pub fn may_label_master(check: &RoleCheck, pod: &str) -> bool {
    !matches!(check, RoleCheck::MasterIsReplica { pod: p, .. } if p == pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica_of(master: &str) -> Option<NodeRole> {
        Some(NodeRole::Replica {
            master: master.to_owned(),
            linked: true,
        })
    }

    fn master(replicas: usize) -> Option<NodeRole> {
        Some(NodeRole::Master { replicas })
    }

    fn roles(list: &[(&str, Option<NodeRole>)]) -> Vec<(String, Option<NodeRole>)> {
        list.iter()
            .map(|(p, r)| ((*p).to_owned(), r.clone()))
            .collect()
    }

    #[test]
    fn role_replies_of_master_replica_and_sentinel_are_read() {
        let m = Value::Array(vec![
            Value::from("master"),
            Value::Integer(100),
            Value::Array(vec![
                Value::Array(vec![
                    Value::from("10.0.0.2"),
                    Value::from("6379"),
                    Value::from("100"),
                ]),
                Value::Array(vec![
                    Value::from("10.0.0.3"),
                    Value::from("6379"),
                    Value::from("90"),
                ]),
            ]),
        ]);
        assert_eq!(
            role_from_reply("a", m).unwrap(),
            NodeRole::Master { replicas: 2 }
        );
        let r = Value::Array(vec![
            Value::from("slave"),
            Value::from("10.0.0.1"),
            Value::Integer(6379),
            Value::from("connect"),
            Value::Integer(-1),
        ]);
        assert_eq!(
            role_from_reply("a", r).unwrap(),
            NodeRole::Replica {
                master: "10.0.0.1:6379".to_owned(),
                linked: false
            }
        );
        let s = Value::Array(vec![Value::from("sentinel"), Value::Array(Vec::new())]);
        assert_eq!(
            role_from_reply("a", s).unwrap(),
            NodeRole::Other("sentinel".to_owned())
        );
        assert!(role_from_reply("a", Value::Null).is_err());
        assert!(role_from_reply("a", Value::Array(vec![Value::from("slave")])).is_err());
    }

    #[test]
    fn one_master_named_by_the_sentinels_is_consistent() {
        let r = roles(&[
            ("r-0", replica_of("r-1:6379")),
            ("r-1", master(2)),
            ("r-2", None),
        ]);
        assert_eq!(check_roles(Some("r-1"), &r), RoleCheck::Consistent);
        assert!(may_label_master(&RoleCheck::Consistent, "r-1"));
    }

    #[test]
    fn two_nodes_saying_master_are_reported_whatever_the_sentinels_say() {
        let r = roles(&[("r-0", master(0)), ("r-1", master(1)), ("r-2", None)]);
        let expected = RoleCheck::MultipleMasters(vec!["r-0".to_owned(), "r-1".to_owned()]);
        assert_eq!(check_roles(Some("r-1"), &r), expected);
        assert_eq!(check_roles(None, &r), expected);
    }

    #[test]
    fn a_named_master_that_says_replica_is_never_labelled() {
        let r = roles(&[("r-0", replica_of("r-1:6379")), ("r-1", master(1))]);
        let check = check_roles(Some("r-0"), &r);
        assert_eq!(
            check,
            RoleCheck::MasterIsReplica {
                pod: "r-0".to_owned(),
                of: "r-1:6379".to_owned()
            }
        );
        assert!(!may_label_master(&check, "r-0"));
        assert!(may_label_master(&check, "r-1"));
    }

    #[test]
    fn a_named_master_that_does_not_answer_is_not_held_against_it() {
        let r = roles(&[("r-0", None), ("r-1", replica_of("r-0:6379"))]);
        assert_eq!(check_roles(Some("r-0"), &r), RoleCheck::Consistent);
    }
}
