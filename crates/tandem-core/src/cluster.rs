//! The replicated cluster model and the commands that change it.
//!
//! Every node applies the same committed commands in the same order, so every node holds the
//! same `ClusterState` at the same applied index. Later capabilities (services, units, shards,
//! assignments) extend `Command` and `ClusterState`; the apply function stays deterministic.

use std::collections::BTreeMap;

/// A node's Raft id. Ids are assigned from the config: the n-th `[[nodes]]` entry is id n (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the cluster agreed about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's id.
    pub id: NodeId,
    /// The leader's committed verdict: true while the node sends heartbeats within the timeout.
    pub up: bool,
    /// Raft index of the entry that last changed `up` (0: never changed since bootstrap).
    pub changed_at_index: u64,
}

/// A command carried by one Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Changes nothing; committing it proves the leader can reach a quorum.
    Noop {
        /// Chosen by the proposer so that two no-ops are distinguishable in the log.
        nonce: u64,
    },
    /// The leader's verdict that a node is up or down.
    SetNodeLiveness {
        /// The node concerned.
        node: NodeId,
        /// New verdict.
        up: bool,
    },
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The state changed.
    Changed,
    /// The command was valid but changed nothing (a no-op, or a verdict already in force).
    Unchanged,
    /// The command was refused; the state is untouched. Every node refuses it alike.
    Refused(String),
}

/// The replicated cluster model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterState {
    /// Every configured node, by id. Nodes start `up` at bootstrap: the first leader's liveness
    /// tracker gives each one a full timeout to prove itself before it is declared down.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
}

impl ClusterState {
    /// The initial state of a cluster whose configured nodes are `ids`.
    pub fn bootstrap(ids: impl IntoIterator<Item = NodeId>) -> Self {
        let nodes = ids
            .into_iter()
            .map(|id| {
                (
                    id,
                    NodeRecord {
                        id,
                        up: true,
                        changed_at_index: 0,
                    },
                )
            })
            .collect();
        Self { nodes }
    }

    /// Applies the command committed at `index`. Deterministic: every node gets the same outcome.
    pub fn apply(&mut self, index: u64, command: &Command) -> ApplyOutcome {
        match command {
            Command::Noop { .. } => ApplyOutcome::Unchanged,
            Command::SetNodeLiveness { node, up } => match self.nodes.get_mut(node) {
                None => ApplyOutcome::Refused(format!("node {node} is not a member")),
                Some(record) if record.up == *up => ApplyOutcome::Unchanged,
                Some(record) => {
                    record.up = *up;
                    record.changed_at_index = index;
                    ApplyOutcome::Changed
                }
            },
        }
    }

    /// Whether `node` is a member and currently judged up.
    pub fn is_up(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|record| record.up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_verdicts_apply_once_and_unknown_nodes_are_refused() {
        let mut state = ClusterState::bootstrap([NodeId(1), NodeId(2)]);
        assert!(state.is_up(NodeId(2)));
        let down = Command::SetNodeLiveness {
            node: NodeId(2),
            up: false,
        };
        assert_eq!(state.apply(5, &down), ApplyOutcome::Changed);
        assert!(!state.is_up(NodeId(2)));
        assert_eq!(state.nodes[&NodeId(2)].changed_at_index, 5);
        // Re-applying the same verdict is harmless and keeps the original index.
        assert_eq!(state.apply(6, &down), ApplyOutcome::Unchanged);
        assert_eq!(state.nodes[&NodeId(2)].changed_at_index, 5);
        let before = state.clone();
        let unknown = Command::SetNodeLiveness {
            node: NodeId(9),
            up: false,
        };
        assert!(matches!(state.apply(7, &unknown), ApplyOutcome::Refused(_)));
        assert_eq!(state, before);
        assert_eq!(
            state.apply(8, &Command::Noop { nonce: 1 }),
            ApplyOutcome::Unchanged
        );
    }
}
