//! The leader's view of node liveness.
//!
//! Every agent sends a heartbeat to the node it believes is the leader every
//! `heartbeat_interval`. The leader feeds them to this tracker; when a node's last heartbeat
//! is older than `node_timeout`, or a node judged down is heard again, the tracker asks for a
//! `SetNodeLiveness` command. The verdict takes effect when that command commits, so every
//! node agrees on it. A new leader does not know when its predecessor last heard from each
//! node, so it starts by giving every node a grace period (`first_verdict_after`): long
//! enough for a live node to find the new leader and send it a heartbeat, and (the fencing
//! rule) long enough for any lease the old leader granted to have run out.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cluster::{ClusterState, Command};
use crate::ids::NodeId;
use crate::time::Time;

/// Timers of the liveness tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// A node whose last heartbeat is older than this is judged down.
    pub node_timeout: Duration,
    /// A node not heard from since this tracker started is judged down after this long; at
    /// most `node_timeout`.
    pub first_verdict_after: Duration,
}

/// Figures a node reported in its last heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeReport {
    /// The node's Raft term.
    pub term: u64,
    /// The node's commit index.
    pub commit_index: u64,
    /// The node's applied index.
    pub applied_index: u64,
}

/// What the tracker knows of one node.
#[derive(Debug, Clone, Copy)]
struct Observed {
    /// When the node was last heard (or when this leader began, as grace).
    last_seen: Time,
    /// Whether a heartbeat arrived since this leader began.
    heard: bool,
    /// Its last report, if any.
    report: Option<NodeReport>,
    /// A verdict proposed and not yet seen committed, with when it was proposed.
    pending: Option<(bool, Time)>,
}

/// Leader-side liveness tracker. Sans-IO: time is an input, verdicts are returned as commands.
#[derive(Debug, Clone)]
pub struct LivenessTracker {
    /// Timers.
    config: LivenessConfig,
    /// This node's id; the leader always counts itself as alive.
    self_id: NodeId,
    /// Per-node observations, for every member.
    nodes: BTreeMap<NodeId, Observed>,
}

impl LivenessTracker {
    /// A tracker for `members`, run by `self_id`, starting at `now` (every node gets a full
    /// timeout of grace).
    pub fn new(
        config: LivenessConfig,
        self_id: NodeId,
        members: impl IntoIterator<Item = NodeId>,
        now: Time,
    ) -> Self {
        let nodes = members
            .into_iter()
            .map(|id| {
                (
                    id,
                    Observed {
                        last_seen: now,
                        heard: false,
                        report: None,
                        pending: None,
                    },
                )
            })
            .collect();
        Self {
            config,
            self_id,
            nodes,
        }
    }

    /// Records a heartbeat from `node` at `now`. Heartbeats from non-members are ignored.
    pub fn observe(&mut self, now: Time, node: NodeId, report: NodeReport) {
        if let Some(observed) = self.nodes.get_mut(&node) {
            observed.last_seen = observed.last_seen.max(now);
            observed.heard = true;
            observed.report = Some(report);
        }
    }

    /// Compares what the tracker sees at `now` with the committed verdicts in `committed` and
    /// returns the commands to propose. A verdict already proposed is not proposed again until
    /// a further `node_timeout` has passed without it committing (a bounded retry). A down
    /// verdict comes without promotions and with `at_ms` 0: the proposer fills them in
    /// ([`crate::director::node_down_promotions`] knows which STANDBYs are ready).
    pub fn decide(&mut self, now: Time, committed: &ClusterState) -> Vec<Command> {
        let mut commands = Vec::new();
        for (id, observed) in &mut self.nodes {
            let timeout = if observed.heard {
                self.config.node_timeout
            } else {
                self.config
                    .first_verdict_after
                    .min(self.config.node_timeout)
            };
            let seen_up = *id == self.self_id || now.saturating_since(observed.last_seen) < timeout;
            let committed_up = committed.is_up(*id);
            if seen_up == committed_up {
                observed.pending = None;
                continue;
            }
            let retry_due = match observed.pending {
                Some((verdict, at)) if verdict == seen_up => {
                    now.saturating_since(at) >= self.config.node_timeout
                }
                _ => true,
            };
            if retry_due {
                observed.pending = Some((seen_up, now));
                commands.push(Command::SetNodeLiveness {
                    node: *id,
                    up: seen_up,
                    at_ms: 0,
                    promotions: Vec::new(),
                });
            }
        }
        commands
    }

    /// Time since `node` was last heard, or `None` if it was not heard since this leader began.
    pub fn heartbeat_age(&self, now: Time, node: NodeId) -> Option<Duration> {
        let observed = self.nodes.get(&node)?;
        observed
            .heard
            .then(|| now.saturating_since(observed.last_seen))
    }

    /// The last report from `node`, if any.
    pub fn report(&self, node: NodeId) -> Option<NodeReport> {
        self.nodes.get(&node)?.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(now: Time) -> LivenessTracker {
        LivenessTracker::new(
            LivenessConfig {
                node_timeout: Duration::from_millis(300),
                first_verdict_after: Duration::from_millis(300),
            },
            NodeId(1),
            [NodeId(1), NodeId(2), NodeId(3)],
            now,
        )
    }

    #[test]
    fn silent_node_is_judged_down_after_the_timeout_and_up_when_heard_again() {
        let mut state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let mut tracker = tracker(Time::ZERO);
        // Within the grace period nothing changes, even for nodes never heard.
        assert!(tracker.decide(Time::from_millis(299), &state).is_empty());
        tracker.observe(Time::from_millis(250), NodeId(2), NodeReport::default());
        let commands = tracker.decide(Time::from_millis(300), &state);
        assert_eq!(
            commands,
            vec![Command::SetNodeLiveness {
                node: NodeId(3),
                up: false,
                at_ms: 0,
                promotions: vec![],
            }]
        );
        // Not proposed again while pending, until a further timeout passes.
        assert!(tracker.decide(Time::from_millis(400), &state).is_empty());
        assert_eq!(tracker.decide(Time::from_millis(600), &state).len(), 2);
        for command in &commands {
            state.apply(10, command);
        }
        tracker.observe(Time::from_millis(700), NodeId(3), NodeReport::default());
        tracker.observe(Time::from_millis(700), NodeId(2), NodeReport::default());
        assert_eq!(
            tracker.decide(Time::from_millis(701), &state),
            vec![Command::SetNodeLiveness {
                node: NodeId(3),
                up: true,
                at_ms: 0,
                promotions: vec![],
            }]
        );
    }

    #[test]
    fn a_new_leader_judges_unheard_nodes_after_the_first_verdict_grace() {
        let state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let mut tracker = LivenessTracker::new(
            LivenessConfig {
                node_timeout: Duration::from_millis(300),
                first_verdict_after: Duration::from_millis(200),
            },
            NodeId(1),
            [NodeId(1), NodeId(2), NodeId(3)],
            Time::ZERO,
        );
        tracker.observe(Time::from_millis(150), NodeId(2), NodeReport::default());
        assert!(tracker.decide(Time::from_millis(199), &state).is_empty());
        // Node 3 was never heard: down at 200. Node 2 was: its full timeout runs from 150.
        let commands = tracker.decide(Time::from_millis(200), &state);
        assert_eq!(commands.len(), 1);
        assert!(matches!(
            commands[0],
            Command::SetNodeLiveness {
                node: NodeId(3),
                up: false,
                ..
            }
        ));
        assert!(tracker.decide(Time::from_millis(449), &state).is_empty());
    }

    #[test]
    fn the_leader_never_judges_itself_down() {
        let state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let mut tracker = tracker(Time::ZERO);
        tracker.observe(Time::from_millis(900), NodeId(2), NodeReport::default());
        tracker.observe(Time::from_millis(900), NodeId(3), NodeReport::default());
        assert!(tracker.decide(Time::from_millis(1000), &state).is_empty());
        assert_eq!(
            tracker.heartbeat_age(Time::from_millis(1000), NodeId(2)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            tracker.heartbeat_age(Time::from_millis(1000), NodeId(1)),
            None
        );
    }
}
