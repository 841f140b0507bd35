//! The leader's view of node liveness.
//!
//! Every agent sends a heartbeat to the node it believes is the leader about every
//! `heartbeat_interval` (with its answer to the leader's own heartbeat; on its own when those
//! stop, at most 1¼ intervals after its last). The leader feeds them to this tracker; when a node's last heartbeat
//! is older than `node_timeout`, or a node judged down is heard again, the tracker asks for a
//! `SetNodeLiveness` command. The verdict takes effect when that command commits, so every
//! node agrees on it. A new leader does not know when its predecessor last heard from each
//! node, so it starts by giving every node a grace period (`first_verdict_after`): long
//! enough for a live node to find the new leader and send it a heartbeat, and (the fencing
//! rule) long enough for any lease the old leader granted to have run out.
//!
//! A node's daemon that dies (killed, crashed, stopped) closes its connections, and the
//! kernel tells the leader at once. The leader then need not wait `node_timeout`: it judges the
//! node down as soon as every lease it granted the node has surely run out
//! (`link_loss_timeout` after the node's last heartbeat, [`crate::lease_expiry_bound`]), and
//! never before `first_verdict_after` from the tracker's start, which covers leases of
//! earlier leaders. A heartbeat heard after the loss (the node reconnected) cancels it. A
//! silent node whose connections stay open (a partition, a power cut) still waits
//! `node_timeout`.
//!
//! Silence counts only while the leader itself listens. When two verdict rounds are further
//! apart than `pause_after`, the leader was paused (its process stopped, starved of CPU, or
//! busy in one long pass) and the heartbeats sent meanwhile wait unread in its sockets; the
//! excess is not counted against any node still connected. Without this, a leader back from
//! a pause longer than `node_timeout` would declare every node down at once. A later verdict
//! is never less safe: the fencing rule asks only that a verdict comes late enough.

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
    /// A node whose connection to this leader closed is judged down this long after its last
    /// heartbeat (not before `first_verdict_after` from the start); at most `node_timeout`.
    pub link_loss_timeout: Duration,
    /// Two calls of [`LivenessTracker::decide`] further apart than this mean the leader was
    /// paused; the excess does not count as silence of nodes still connected.
    pub pause_after: Duration,
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
    /// Whether the node's connection to this leader closed after its last heartbeat.
    link_lost: bool,
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
    /// When this tracker started (this node became leader), moved on by the leader's pauses.
    started: Time,
    /// When `decide` last ran.
    last_decided: Time,
    /// The leader's pauses so far, for logs and tests.
    paused: Duration,
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
                        link_lost: false,
                    },
                )
            })
            .collect();
        Self {
            config,
            self_id,
            nodes,
            started: now,
            last_decided: now,
            paused: Duration::ZERO,
        }
    }

    /// The leader was not listening between the last verdict round and `now` beyond
    /// `pause_after`: the excess is forgiven to every node whose connection is open (a closed
    /// connection is the kernel's word that nothing more is coming, so it keeps its time).
    fn forgive_pause(&mut self, now: Time) {
        let gap = now.saturating_since(self.last_decided);
        self.last_decided = self.last_decided.max(now);
        let Some(excess) = gap.checked_sub(self.config.pause_after) else {
            return;
        };
        if excess.is_zero() {
            return;
        }
        self.paused += excess;
        self.started = self.started + excess;
        for observed in self.nodes.values_mut() {
            if !observed.link_lost {
                observed.last_seen = observed.last_seen + excess;
            }
        }
    }

    /// How long the leader was paused in all (beyond `pause_after` each time) since this
    /// tracker started.
    pub fn paused(&self) -> Duration {
        self.paused
    }

    /// Records a heartbeat from `node` at `now`. Heartbeats from non-members are ignored.
    pub fn observe(&mut self, now: Time, node: NodeId, report: NodeReport) {
        if let Some(observed) = self.nodes.get_mut(&node) {
            observed.last_seen = observed.last_seen.max(now);
            observed.heard = true;
            observed.report = Some(report);
            observed.link_lost = false;
        }
    }

    /// `node`'s connection to this leader closed: everything it sent before has arrived, and
    /// nothing more will come until it reconnects. Only the verdict's timing depends on it, so
    /// a spurious report (a connection reset between live daemons) costs at most an early
    /// failover of a node that stays silent, never two ACTIVEs.
    pub fn link_lost(&mut self, node: NodeId) {
        if node == self.self_id {
            return;
        }
        if let Some(observed) = self.nodes.get_mut(&node) {
            observed.link_lost = true;
        }
    }

    /// When a node is judged down at the earliest, if nothing more is heard from it, by a
    /// tracker with `config` that started at `started`.
    fn down_at(config: &LivenessConfig, started: Time, observed: &Observed) -> Time {
        if !observed.heard {
            return observed.last_seen + config.first_verdict_after.min(config.node_timeout);
        }
        if observed.link_lost {
            let leases_ended = observed.last_seen + config.link_loss_timeout;
            let earlier_leaders_fenced = started + config.first_verdict_after;
            return leases_ended
                .max(earlier_leaders_fenced)
                .min(observed.last_seen + config.node_timeout);
        }
        observed.last_seen + config.node_timeout
    }

    /// Compares what the tracker sees at `now` with the committed verdicts in `committed` and
    /// returns the commands to propose. A verdict already proposed is not proposed again until
    /// a further `node_timeout` has passed without it committing (a bounded retry). A down
    /// verdict comes without promotions and with `at_ms` 0: the proposer fills them in
    /// ([`crate::director::node_down_promotions`] knows which STANDBYs are ready).
    pub fn decide(&mut self, now: Time, committed: &ClusterState) -> Vec<Command> {
        self.forgive_pause(now);
        let mut commands = Vec::new();
        for (id, observed) in &mut self.nodes {
            let down_at = Self::down_at(&self.config, self.started, observed);
            let seen_up = *id == self.self_id || now < down_at;
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

    /// The verdict the tracker proposes for `node` (the proposer fills in the rest).
    fn verdict(node: NodeId, up: bool) -> Command {
        Command::SetNodeLiveness {
            node,
            up,
            at_ms: 0,
            promotions: vec![],
        }
    }

    fn tracker(now: Time) -> LivenessTracker {
        tracker_with(now, 300, 209)
    }

    /// A tracker on node 1 of three with a 300 ms node timeout and the given grace and
    /// link-loss timeout, in milliseconds; pauses are forgiven only past 1 s, so these tests
    /// may call `decide` sparsely.
    fn tracker_with(now: Time, first_verdict_after_ms: u64, link_loss_ms: u64) -> LivenessTracker {
        tracker_pausing(now, first_verdict_after_ms, link_loss_ms, 1000)
    }

    fn tracker_pausing(
        now: Time,
        first_verdict_after_ms: u64,
        link_loss_ms: u64,
        pause_after_ms: u64,
    ) -> LivenessTracker {
        LivenessTracker::new(
            LivenessConfig {
                node_timeout: Duration::from_millis(300),
                first_verdict_after: Duration::from_millis(first_verdict_after_ms),
                link_loss_timeout: Duration::from_millis(link_loss_ms),
                pause_after: Duration::from_millis(pause_after_ms),
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
        assert_eq!(commands, vec![verdict(NodeId(3), false)]);
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
            vec![verdict(NodeId(3), true)]
        );
    }

    #[test]
    fn a_new_leader_judges_unheard_nodes_after_the_first_verdict_grace() {
        let state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let mut tracker = tracker_with(Time::ZERO, 200, 150);
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
    fn a_node_whose_connection_closed_is_down_once_its_leases_ran_out() {
        let state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let mut tracker = tracker_with(Time::ZERO, 261, 209);
        let down = |node| verdict(node, false);
        tracker.observe(Time::from_millis(10), NodeId(2), NodeReport::default());
        tracker.observe(Time::from_millis(200), NodeId(3), NodeReport::default());
        tracker.link_lost(NodeId(2));
        tracker.link_lost(NodeId(3));
        tracker.link_lost(NodeId(1));
        // Node 2's leases ended at 10 + 209, but leases of an earlier leader may run until
        // the fencing bound after this one started.
        assert!(tracker.decide(Time::from_millis(260), &state).is_empty());
        assert_eq!(
            tracker.decide(Time::from_millis(261), &state),
            vec![down(NodeId(2))]
        );
        // Node 3: 200 + 209, well before its node timeout at 500.
        assert!(tracker.decide(Time::from_millis(408), &state).is_empty());
        assert_eq!(
            tracker.decide(Time::from_millis(409), &state),
            vec![down(NodeId(3))]
        );
    }

    #[test]
    fn a_heartbeat_after_a_lost_connection_brings_back_the_node_timeout() {
        let state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let mut tracker = tracker(Time::ZERO);
        tracker.observe(Time::from_millis(450), NodeId(2), NodeReport::default());
        tracker.observe(Time::from_millis(400), NodeId(3), NodeReport::default());
        tracker.link_lost(NodeId(3));
        // The node reconnected and was heard again: only a whole node timeout of silence
        // judges it now.
        tracker.observe(Time::from_millis(450), NodeId(3), NodeReport::default());
        assert!(tracker.decide(Time::from_millis(749), &state).is_empty());
        assert_eq!(tracker.decide(Time::from_millis(750), &state).len(), 2);
    }

    #[test]
    fn a_lost_connection_of_a_node_never_heard_waits_the_first_verdict_grace() {
        let state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let mut tracker = tracker(Time::ZERO);
        tracker.observe(Time::from_millis(250), NodeId(2), NodeReport::default());
        tracker.link_lost(NodeId(3));
        assert!(tracker.decide(Time::from_millis(299), &state).is_empty());
        assert_eq!(tracker.decide(Time::from_millis(300), &state).len(), 1);
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

    /// Verdict rounds every `step_ms` from `from_ms` up to `to_ms` (inclusive), the commands
    /// of all of them.
    fn rounds(
        tracker: &mut LivenessTracker,
        state: &ClusterState,
        from_ms: u64,
        to_ms: u64,
        step_ms: u64,
    ) -> Vec<Command> {
        (from_ms..=to_ms)
            .step_by(step_ms as usize)
            .flat_map(|at| tracker.decide(Time::from_millis(at), state))
            .collect()
    }

    #[test]
    fn a_leader_back_from_a_pause_does_not_count_it_as_anyone_s_silence() {
        let state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let mut tracker = tracker_pausing(Time::ZERO, 300, 209, 50);
        tracker.observe(Time::from_millis(10), NodeId(2), NodeReport::default());
        tracker.observe(Time::from_millis(10), NodeId(3), NodeReport::default());
        assert!(rounds(&mut tracker, &state, 0, 100, 10).is_empty());
        // The leader stalls from 100 to 900 ms: 750 ms beyond the 50 ms allowance.
        assert!(tracker.decide(Time::from_millis(900), &state).is_empty());
        assert_eq!(tracker.paused(), Duration::from_millis(750));
        // Node 2's heartbeats, read after the pause, keep it up; node 3 stays silent and is
        // judged after the 300 ms it was silent while the leader listened: 10 + 300 + 750.
        tracker.observe(Time::from_millis(901), NodeId(2), NodeReport::default());
        assert!(rounds(&mut tracker, &state, 910, 1050, 10).is_empty());
        assert_eq!(
            tracker.decide(Time::from_millis(1060), &state),
            vec![verdict(NodeId(3), false)]
        );
    }

    #[test]
    fn a_closed_connection_keeps_its_time_through_a_pause() {
        let state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let mut tracker = tracker_pausing(Time::ZERO, 100, 209, 50);
        tracker.observe(Time::from_millis(10), NodeId(2), NodeReport::default());
        tracker.observe(Time::from_millis(10), NodeId(3), NodeReport::default());
        assert!(rounds(&mut tracker, &state, 0, 100, 10).is_empty());
        tracker.link_lost(NodeId(3));
        // Back from a pause at 600: node 3's leases ran out at 10 + 209, so it is down at
        // once; node 2, still connected, is not.
        let commands = tracker.decide(Time::from_millis(600), &state);
        assert_eq!(commands, vec![verdict(NodeId(3), false)]);
    }

    #[test]
    fn rounds_within_the_allowance_are_no_pause() {
        let state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let mut tracker = tracker_pausing(Time::ZERO, 300, 209, 50);
        tracker.observe(Time::from_millis(10), NodeId(2), NodeReport::default());
        tracker.observe(Time::from_millis(10), NodeId(3), NodeReport::default());
        // Rounds 50 ms apart: silence counts in full, both are down at 310.
        assert!(rounds(&mut tracker, &state, 0, 300, 50).is_empty());
        assert_eq!(tracker.decide(Time::from_millis(350), &state).len(), 2);
        assert_eq!(tracker.paused(), Duration::ZERO);
    }
}
