//! Events: what the model did (from applied commands, the same on every node) and what the
//! leader observed of units (from agents' reports, by comparing each report with the last).

use std::fmt;

use tandem_core::{
    ClusterState, FaultKind, ModelEvent, NodeId, Presence, Role, ShardName, UnitName, UnitReport,
};

/// A change in what an agent reports about a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The process changed state.
    Presence {
        /// New state.
        presence: Presence,
        /// Its pid, if it has one.
        pid: Option<u32>,
        /// The instance.
        generation: u64,
    },
    /// The unit confirmed a role.
    Confirmed {
        /// The shard.
        shard: ShardName,
        /// The role.
        role: Role,
    },
    /// The unit faulted (reported by its agent, not yet handled).
    Fault {
        /// What went wrong.
        kind: FaultKind,
    },
}

/// Something worth telling an operator (`tandemctl events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// The committed model changed (entry `index`).
    Model {
        /// The Raft index of the entry.
        index: u64,
        /// What happened.
        event: ModelEvent,
    },
    /// The leader observed a unit (from its agent's report).
    Observed {
        /// The unit's node.
        node: NodeId,
        /// The unit.
        unit: UnitName,
        /// What changed.
        change: Observed,
    },
    /// This node saw the leader change.
    Leader {
        /// The term.
        term: u64,
        /// The new leader, if any.
        leader: Option<NodeId>,
    },
}

impl NodeEvent {
    /// A short machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Model { event, .. } => event.kind(),
            Self::Observed { change, .. } => match change {
                Observed::Presence { .. } => "process",
                Observed::Confirmed { .. } => "confirmed",
                Observed::Fault { .. } => "fault-reported",
            },
            Self::Leader { .. } => "leader",
        }
    }
}

impl fmt::Display for NodeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Model { event, .. } => write!(f, "{event}"),
            Self::Observed { unit, change, .. } => match change {
                Observed::Presence {
                    presence,
                    pid,
                    generation,
                } => {
                    write!(f, "unit {unit}: instance {generation} {}", presence.name())?;
                    if let Some(pid) = pid {
                        write!(f, " (pid {pid})")?;
                    }
                    Ok(())
                }
                Observed::Confirmed { shard, role } => {
                    write!(f, "unit {unit} confirmed {role} for shard {shard}")
                }
                Observed::Fault { kind } => write!(f, "unit {unit} faulted: {kind}"),
            },
            Self::Leader { term, leader } => match leader {
                Some(leader) => write!(f, "node {leader} leads term {term}"),
                None => write!(f, "no leader (term {term})"),
            },
        }
    }
}

/// The changes between a unit's previous report and its new one.
pub fn diff(
    state: &ClusterState,
    unit: &UnitName,
    before: Option<&UnitReport>,
    after: &UnitReport,
) -> Vec<Observed> {
    let mut changes = Vec::new();
    let presence_changed = before.is_none_or(|before| {
        before.presence != after.presence
            || before.generation != after.generation
            || before.pid != after.pid
    });
    if presence_changed {
        changes.push(Observed::Presence {
            presence: after.presence,
            pid: after.pid,
            generation: after.generation,
        });
    }
    // A shard the unit listed as unsettled and no longer does: it confirmed its role.
    if let (Some(was), Some(now)) = (
        before.and_then(|before| before.settled.as_ref()),
        after.settled.as_ref(),
    ) {
        for shard in was.unsettled.difference(&now.unsettled) {
            if let Some(role) = state
                .shards
                .get(shard)
                .and_then(|record| record.roles.get(unit))
            {
                changes.push(Observed::Confirmed {
                    shard: shard.clone(),
                    role: tandem_core::confirmed_role(*role),
                });
            }
        }
    }
    for (id, kind) in &after.faults {
        let known = before.is_some_and(|before| before.faults.iter().any(|(seen, _)| seen == id));
        if !known {
            changes.push(Observed::Fault { kind: kind.clone() });
        }
    }
    changes
}
