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
    // A shard the unit listed as unsettled and no longer does (nor counts past its cut): it
    // confirmed its role, or QUIESCED for an ACTIVE one while it may not act.
    if let (Some(was), Some(now)) = (
        before.and_then(|before| before.settled.as_ref()),
        after.settled.as_ref(),
    ) {
        for shard in was.unsettled.difference(&now.unsettled) {
            if now.lists(shard) {
                continue;
            }
            if let Some(role) = state
                .shards
                .get(shard)
                .and_then(|record| record.roles.get(unit))
            {
                let role = tandem_core::confirmed_role(*role);
                let role = if role.is_acting() && now.acting_withheld {
                    Role::Quiesced
                } else {
                    role
                };
                changes.push(Observed::Confirmed {
                    shard: shard.clone(),
                    role,
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

#[cfg(test)]
mod tests {
    use tandem_core::{
        ApplyOutcome, Command, HandoverUpdate, RedundancyModel, RoleChange, ServiceSpec,
        SettledRoles, Topology, UnitSpec,
    };

    use super::*;

    /// One 2N service whose unit `a` (node 1) is ACTIVE for shards `s0`..`s{count}`.
    fn state_with_actives(count: usize) -> ClusterState {
        let mut state = ClusterState::bootstrap([NodeId(1), NodeId(2)]);
        let shards: Vec<ShardName> = (0..count)
            .map(|i| format!("s{i}").as_str().into())
            .collect();
        let units = vec![
            UnitSpec {
                name: "a".into(),
                node: NodeId(1),
                rank: 0,
            },
            UnitSpec {
                name: "b".into(),
                node: NodeId(2),
                rank: 0,
            },
        ];
        let service = ServiceSpec::new(
            "svc",
            RedundancyModel::TwoN,
            units,
            shards.clone(),
            vec!["/bin/true".into()],
        );
        let topology = Topology {
            services: vec![service],
            ..Topology::default()
        };
        assert_eq!(
            state.apply(1, &Command::SetTopology(topology)),
            ApplyOutcome::Changed
        );
        for (index, shard) in shards.into_iter().enumerate() {
            let version = state.shards.get(&shard).expect("shard").version;
            let command = Command::Reassign {
                shard,
                expected_version: version,
                changes: vec![RoleChange {
                    unit: "a".into(),
                    role: Some(Role::Active),
                }],
                handover: HandoverUpdate::Keep,
            };
            assert_eq!(
                state.apply(2 + index as u64, &command),
                ApplyOutcome::Changed
            );
        }
        state
    }

    fn report(unsettled: &[&str], acting_withheld: bool) -> UnitReport {
        UnitReport {
            generation: 1,
            presence: Presence::Running,
            settled: Some(SettledRoles::listing(
                unsettled.iter().map(|shard| (*shard).into()),
                acting_withheld,
            )),
            ..UnitReport::default()
        }
    }

    fn confirmed(changes: &[Observed]) -> Vec<(String, Role)> {
        changes
            .iter()
            .filter_map(|change| match change {
                Observed::Confirmed { shard, role } => Some((shard.to_string(), *role)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_shard_leaving_the_unsettled_list_is_confirmed() {
        let state = state_with_actives(2);
        let unit = "a".into();
        let changes = diff(
            &state,
            &unit,
            Some(&report(&["s0", "s1"], false)),
            &report(&["s1"], false),
        );
        assert_eq!(confirmed(&changes), vec![("s0".to_string(), Role::Active)]);
    }

    #[test]
    fn an_active_settled_while_the_unit_may_not_act_is_confirmed_quiesced() {
        let state = state_with_actives(1);
        let unit = "a".into();
        let changes = diff(
            &state,
            &unit,
            Some(&report(&["s0"], true)),
            &report(&[], true),
        );
        assert_eq!(
            confirmed(&changes),
            vec![("s0".to_string(), Role::Quiesced)]
        );
    }

    #[test]
    fn a_shard_pushed_past_the_cut_of_the_list_is_not_confirmed() {
        let max = tandem_core::report::UNSETTLED_LISTED_MAX;
        let state = state_with_actives(max + 1);
        // Names in the list's order (by name): the last of them falls past the cut once a
        // shard with a smaller name becomes unsettled too.
        let mut names: Vec<String> = (0..=max).map(|i| format!("s{i}")).collect();
        names.sort();
        let first = names[0].clone();
        let rest: Vec<&str> = names[1..].iter().map(String::as_str).collect();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        let before = report(&rest, false);
        let after = report(&all, false);
        assert_eq!(
            after
                .settled
                .as_ref()
                .and_then(|s| s.unsettled_after.clone()),
            Some(names[max - 1].as_str().into())
        );
        assert!(!after
            .settled
            .as_ref()
            .expect("settled")
            .unsettled
            .contains(&names[max].as_str().into()));
        let changes = diff(&state, &unit_a(), Some(&before), &after);
        assert_eq!(
            confirmed(&changes),
            Vec::new(),
            "{first} became unsettled, nothing settled"
        );
    }

    fn unit_a() -> UnitName {
        "a".into()
    }
}
