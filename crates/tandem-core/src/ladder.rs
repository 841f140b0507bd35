//! The restart-escalation ladder (SPEC 4.3, seed 004): which recovery a unit's fault gets.
//!
//! | level | seed phase | action |
//! |---|---|---|
//! | L0 reset | PH0.5 | the unit resets the failing part in place (`reset` hook) |
//! | L1 restart | PH1.0 | restart the unit's process |
//! | L2 reinitialise | PH2.0 | restart it and rebuild its local replica from a peer |
//! | L3 node restart | PH2.5 | restart every unit of the node (and the node-restart command) |
//! | L4 restore | PH3.0 | not available: it needs checkpoint backups (data-plane issue) |
//! | L5 relocate | auto-heal | re-create the unit on another healthy node |
//!
//! A fault starts at the lowest level its kind allows (a dead process cannot be reset in
//! place), and climbs while the level's counter within the probation window is at its
//! maximum. Node-class faults (node loss, `report_fault(Severity::Node)`) take the fast path
//! straight to L5. Above L5, or when L5 is impossible, the unit is disabled until an operator
//! repairs it. A unit that lost its instance because its daemon restarted is restarted without
//! climbing: the fault was not its own. The ladder is part of the replicated state and runs
//! inside `apply`, so every node and every future leader agrees on counters and actions.

use std::fmt;

use crate::ids::NodeId;
use crate::topology::EscalationPolicy;

/// How badly a unit says it failed (`report_fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// A part of the unit failed; resetting it in place may do (starts at L0).
    Transient,
    /// The unit needs a restart (starts at L1).
    Restart,
    /// The node is at fault (starts at L5, the fast path).
    Node,
}

impl Severity {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Restart => "restart",
            Self::Node => "node",
        }
    }
}

/// What went wrong with a unit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The process exited without being asked to (exit code or signal).
    ProcessExit {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal number, if a signal ended it.
        signal: Option<i32>,
    },
    /// It did not answer a health check in time (the agent killed it).
    HealthTimeout,
    /// A hook (role change, reset) failed or did not complete in time (the agent killed it).
    CallbackFailed,
    /// It did not register through the SDK within the instantiate timeout, or could not be
    /// started at all.
    InstantiationFailed,
    /// Its agent restarted (daemon crash or restart) while the unit held assignments; the
    /// process died with the daemon.
    AgentRestarted,
    /// The unit reported a fault through the SDK (it stopped acting ACTIVE before reporting).
    Reported(Severity),
    /// Its node was declared down.
    NodeLost,
}

impl FaultKind {
    /// The lowest ladder level this kind of fault may be handled at.
    pub fn start_level(&self) -> Level {
        match self {
            Self::Reported(Severity::Transient) => Level::Reset,
            Self::Reported(Severity::Node) | Self::NodeLost => Level::Relocate,
            _ => Level::Restart,
        }
    }

    /// Short name for status and events.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ProcessExit { .. } => "process-exit",
            Self::HealthTimeout => "health-timeout",
            Self::CallbackFailed => "callback-failed",
            Self::InstantiationFailed => "instantiation-failed",
            Self::AgentRestarted => "agent-restarted",
            Self::Reported(_) => "reported",
            Self::NodeLost => "node-lost",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ProcessExit {
                code: Some(code), ..
            } => write!(f, "process exited with code {code}"),
            Self::ProcessExit {
                signal: Some(signal),
                ..
            } => {
                write!(f, "process killed by signal {signal}")
            }
            Self::ProcessExit { .. } => f.write_str("process exited"),
            Self::HealthTimeout => f.write_str("missed a health check"),
            Self::CallbackFailed => f.write_str("a hook failed or did not complete in time"),
            Self::InstantiationFailed => f.write_str("did not start or register in time"),
            Self::AgentRestarted => f.write_str("its node's daemon restarted"),
            Self::Reported(severity) => write!(f, "reported a {} fault", severity.name()),
            Self::NodeLost => f.write_str("its node was declared down"),
        }
    }
}

/// A ladder level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// L0.
    Reset = 0,
    /// L1.
    Restart = 1,
    /// L2.
    Reinitialise = 2,
    /// L3.
    NodeRestart = 3,
    /// L4 (not available yet; skipped).
    Restore = 4,
    /// L5.
    Relocate = 5,
}

impl Level {
    /// `L0`..`L5`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Reset => "L0",
            Self::Restart => "L1",
            Self::Reinitialise => "L2",
            Self::NodeRestart => "L3",
            Self::Restore => "L4",
            Self::Relocate => "L5",
        }
    }

    fn from_index(index: usize) -> Self {
        match index {
            0 => Self::Reset,
            1 => Self::Restart,
            2 => Self::Reinitialise,
            3 => Self::NodeRestart,
            4 => Self::Restore,
            _ => Self::Relocate,
        }
    }
}

/// The recovery chosen for a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecoveryAction {
    /// Ask the unit to reset in place.
    Reset,
    /// Restart the process.
    Restart,
    /// Restart the process and rebuild its local replica.
    Reinitialise,
    /// Restart every unit of the node.
    NodeRestart,
    /// Re-create the unit on this node.
    Relocate {
        /// The new node.
        to: NodeId,
    },
    /// Wait for the node to come back (node lost, relocation not possible or not allowed).
    AwaitNode,
    /// Give up: the unit stays down until repaired.
    Disable,
}

impl fmt::Display for RecoveryAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reset => f.write_str("reset in place"),
            Self::Restart => f.write_str("restart"),
            Self::Reinitialise => f.write_str("restart and rebuild the local replica"),
            Self::NodeRestart => f.write_str("restart every unit of the node"),
            Self::Relocate { to } => write!(f, "relocate to node {to}"),
            Self::AwaitNode => f.write_str("wait for the node to return"),
            Self::Disable => f.write_str("disable until repaired"),
        }
    }
}

/// One handled fault, as the ladder remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FaultRecord {
    /// What went wrong.
    pub kind: FaultKind,
    /// When (the proposing leader's wall clock, ms since the Unix epoch).
    pub at_ms: u64,
    /// The level it was handled at.
    pub level: Level,
    /// What was done.
    pub action: RecoveryAction,
}

/// A unit's escalation state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Ladder {
    /// Start of the current probation window; `None` before the first fault.
    pub window_start_ms: Option<u64>,
    /// Faults handled at each level (L0..L5) within the window.
    pub counts: [u32; 6],
    /// Faults handled since the unit was created or repaired.
    pub faults_total: u64,
    /// The last fault.
    pub last: Option<FaultRecord>,
}

impl Ladder {
    /// Chooses the recovery for a fault of `kind` at `at_ms` and counts it. `relocation` is the
    /// node an L5 relocation would go to, if there is one.
    pub fn escalate(
        &mut self,
        policy: &EscalationPolicy,
        kind: FaultKind,
        at_ms: u64,
        relocation: Option<NodeId>,
    ) -> FaultRecord {
        match self.window_start_ms {
            Some(start) if at_ms.saturating_sub(start) < policy.window_ms => {}
            _ => {
                self.window_start_ms = Some(at_ms);
                self.counts = [0; 6];
            }
        }
        if kind == FaultKind::AgentRestarted {
            // The daemon went away, not the unit: restart it without climbing the ladder, so
            // that restarting a node (or a whole dev cluster) never escalates its units.
            self.faults_total += 1;
            let record = FaultRecord {
                kind,
                at_ms,
                level: Level::Restart,
                action: RecoveryAction::Restart,
            };
            self.last = Some(record.clone());
            return record;
        }
        let maxima = [
            policy.reset_max,
            policy.restart_max,
            policy.reinitialise_max,
            policy.node_restart_max,
            0, // L4 is not available.
            u32::MAX,
        ];
        let mut level = kind.start_level() as usize;
        while level < Level::Relocate as usize && self.counts[level] >= maxima[level] {
            level += 1;
        }
        self.counts[level] = self.counts[level].saturating_add(1);
        self.faults_total += 1;
        let level = Level::from_index(level);
        let action = match level {
            Level::Reset => RecoveryAction::Reset,
            Level::Restart => RecoveryAction::Restart,
            Level::Reinitialise => RecoveryAction::Reinitialise,
            Level::NodeRestart => RecoveryAction::NodeRestart,
            Level::Restore | Level::Relocate => match (policy.relocate, relocation) {
                (true, Some(to)) => RecoveryAction::Relocate { to },
                _ if kind == FaultKind::NodeLost => RecoveryAction::AwaitNode,
                // A node-class fault reported by a live unit whose node is still up: without a
                // place to go, restarting it here is the best left.
                _ if kind == FaultKind::Reported(Severity::Node)
                    && self.counts[Level::Restart as usize] < policy.restart_max =>
                {
                    RecoveryAction::Restart
                }
                _ => RecoveryAction::Disable,
            },
        };
        let record = FaultRecord {
            kind,
            at_ms,
            level,
            action,
        };
        self.last = Some(record.clone());
        record
    }

    /// The highest level with a fault counted in the current window, if any.
    pub fn level(&self) -> Option<Level> {
        (0..6)
            .rev()
            .find(|level| self.counts[*level] > 0)
            .map(Level::from_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> EscalationPolicy {
        EscalationPolicy {
            reset_max: 1,
            restart_max: 2,
            reinitialise_max: 1,
            node_restart_max: 1,
            window_ms: 1000,
            relocate: true,
        }
    }

    fn exit() -> FaultKind {
        FaultKind::ProcessExit {
            code: Some(1),
            signal: None,
        }
    }

    #[test]
    fn repeated_crashes_climb_the_ladder_and_the_window_resets_it() {
        let mut ladder = Ladder::default();
        let policy = policy();
        let actions: Vec<RecoveryAction> = (0..6)
            .map(|i| {
                ladder
                    .escalate(&policy, exit(), 100 + i, Some(NodeId(3)))
                    .action
            })
            .collect();
        assert_eq!(
            actions,
            vec![
                RecoveryAction::Restart,
                RecoveryAction::Restart,
                RecoveryAction::Reinitialise,
                RecoveryAction::NodeRestart,
                RecoveryAction::Relocate { to: NodeId(3) },
                RecoveryAction::Relocate { to: NodeId(3) },
            ]
        );
        assert_eq!(ladder.level(), Some(Level::Relocate));
        assert_eq!(ladder.faults_total, 6);
        // After the window, a crash starts over at L1.
        let record = ladder.escalate(&policy, exit(), 5000, None);
        assert_eq!(record.level, Level::Restart);
        assert_eq!(ladder.counts, [0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn transient_faults_start_with_a_reset_and_node_faults_take_the_fast_path() {
        let mut ladder = Ladder::default();
        let policy = policy();
        let transient = FaultKind::Reported(Severity::Transient);
        assert_eq!(
            ladder.escalate(&policy, transient.clone(), 0, None).action,
            RecoveryAction::Reset
        );
        assert_eq!(
            ladder.escalate(&policy, transient, 1, None).action,
            RecoveryAction::Restart
        );

        let mut ladder = Ladder::default();
        let record = ladder.escalate(&policy, FaultKind::NodeLost, 0, Some(NodeId(2)));
        assert_eq!(record.level, Level::Relocate);
        assert_eq!(record.action, RecoveryAction::Relocate { to: NodeId(2) });
        assert_eq!(
            ladder
                .escalate(&policy, FaultKind::NodeLost, 1, None)
                .action,
            RecoveryAction::AwaitNode
        );
    }

    #[test]
    fn a_daemon_restart_restarts_the_unit_without_climbing() {
        let mut ladder = Ladder::default();
        let policy = policy();
        for at in 0..10 {
            let record = ladder.escalate(&policy, FaultKind::AgentRestarted, at, None);
            assert_eq!(record.action, RecoveryAction::Restart);
        }
        assert_eq!(ladder.counts, [0; 6]);
        assert_eq!(ladder.faults_total, 10);
    }

    #[test]
    fn without_relocation_the_top_of_the_ladder_disables() {
        let mut ladder = Ladder::default();
        let policy = EscalationPolicy {
            relocate: false,
            ..policy()
        };
        let last = (0..5)
            .map(|i| ladder.escalate(&policy, exit(), i, Some(NodeId(3))).action)
            .last();
        assert_eq!(last, Some(RecoveryAction::Disable));
    }
}
