//! The balancer's real view against the engine's belief: what is eligible, what is out, and
//! which states changed by someone else's hand since the deploy last looked.

use std::collections::{BTreeMap, BTreeSet};

use nonstop_ports::{Instance, LbState, Member, NodeName};

use crate::plan::Change;

pub type Members = BTreeMap<NodeName, Member>;

/// Whether the balancer itself would send `member` new requests, and its process (where the
/// engine knows it) is alive.
pub fn eligible(
    member: &Member,
    live: &BTreeMap<NodeName, Instance>,
    known: &BTreeSet<NodeName>,
) -> bool {
    member.state == LbState::Active
        && member.healthy
        && (!known.contains(&member.node) || live.contains_key(&member.node))
}

/// `members` with `changes` applied, as the balancer will show them right after.
pub fn after(members: &Members, changes: &[Change]) -> Members {
    let mut view = members.clone();
    for c in changes {
        if let Some(m) = view.get_mut(&c.node) {
            m.state = c.state;
            if let Some(w) = c.weight {
                m.weight = w;
            }
        }
    }
    view
}

/// The eligible members of `view`.
pub fn eligible_nodes(
    view: &Members,
    live: &BTreeMap<NodeName, Instance>,
    known: &BTreeSet<NodeName>,
) -> Vec<NodeName> {
    view.values()
        .filter(|m| eligible(m, live, known))
        .map(|m| m.node.clone())
        .collect()
}

/// Members of the service (`nodes`) that take no new requests: out by the deploy, by an
/// operator, or by the balancer's own health view.
pub fn out_nodes(
    view: &Members,
    nodes: &[NodeName],
    live: &BTreeMap<NodeName, Instance>,
    known: &BTreeSet<NodeName>,
) -> Vec<NodeName> {
    nodes
        .iter()
        .filter(|n| view.get(*n).is_some_and(|m| !eligible(m, live, known)))
        .cloned()
        .collect()
}

/// Members whose state is not the one last seen: changed by someone else since.
pub fn changed_by_others(
    last_seen: &BTreeMap<NodeName, LbState>,
    now: &Members,
) -> Vec<(NodeName, LbState, LbState)> {
    last_seen
        .iter()
        .filter_map(|(node, was)| {
            let m = now.get(node)?;
            (m.state != *was).then(|| (node.clone(), *was, m.state))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nonstop_ports::Traffic;

    fn member(node: &str, state: LbState, healthy: bool) -> Member {
        Member {
            node: NodeName::from(node),
            addr: String::new(),
            state,
            weight: 1,
            in_flight: 0,
            healthy,
            traffic: Traffic::default(),
        }
    }

    #[test]
    fn unhealthy_or_inactive_members_are_not_eligible() {
        let view: Members = [
            member("a", LbState::Active, true),
            member("b", LbState::Active, false),
            member("c", LbState::Draining, true),
        ]
        .into_iter()
        .map(|m| (m.node.clone(), m))
        .collect();
        let none = BTreeMap::new();
        assert_eq!(
            eligible_nodes(&view, &none, &BTreeSet::new()),
            vec![NodeName::from("a")]
        );
        // A node whose instance the engine knows is dead is not eligible, whatever the balancer says.
        let known = BTreeSet::from([NodeName::from("a")]);
        assert!(eligible_nodes(&view, &none, &known).is_empty());
        let nodes = [
            NodeName::from("a"),
            NodeName::from("b"),
            NodeName::from("c"),
        ];
        assert_eq!(out_nodes(&view, &nodes, &none, &BTreeSet::new()).len(), 2);
        let switched = after(
            &view,
            &[Change::new(&NodeName::from("a"), LbState::Draining, None)],
        );
        assert!(eligible_nodes(&switched, &none, &BTreeSet::new()).is_empty());
        let seen = BTreeMap::from([(NodeName::from("a"), LbState::Active)]);
        assert_eq!(changed_by_others(&seen, &switched).len(), 1);
        assert!(changed_by_others(&seen, &view).is_empty());
    }
}
