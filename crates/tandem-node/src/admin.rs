//! Administrative requests on the leader: validation, the commands they become, and when they
//! are done.
//!
//! A request is validated against the committed state and the agents' reports first; when it
//! cannot succeed it is refused with the reason and nothing is proposed. Otherwise its commands
//! are proposed, and the request is answered when its effect is complete (a switchover: the new
//! ACTIVE confirmed; a lock: the target holds no assignment; a restart: the new instance runs),
//! when a command is refused at apply time (a race), or when its deadline passes (the work goes
//! on; the answer says what is still outstanding).

use std::collections::BTreeMap;

use tandem_core::cluster::admin_transition;
use tandem_core::director::{plan_switchover, View};
use tandem_core::{
    AdminCode, AdminOp, AdminTarget, ClusterState, Command, Observations, Presence, Refusal, Role,
    ShardName, SwitchoverTarget, Time, UnitName,
};

/// What an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAction {
    /// Commit a no-op (proves the cluster can commit).
    Noop,
    /// A planned role swap.
    Switchover(SwitchoverTarget),
    /// An AMF administrative operation.
    Admin {
        /// Unit or node.
        target: AdminTarget,
        /// What to do.
        op: AdminOp,
    },
    /// Processing restriction of a shard's ACTIVE: new sessions admitted per thousand
    /// (`None` lifts it).
    Restrict {
        /// The shard.
        shard: ShardName,
        /// Per thousand.
        admitted_permille: Option<u32>,
    },
}

/// A request carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminDone {
    /// One sentence on what was done.
    pub message: String,
    /// Index of the (last) entry the request committed.
    pub index: u64,
    /// Its term.
    pub term: u64,
}

/// A request's answer.
pub type AdminResult = Result<AdminDone, Refusal>;

/// What a request waits for once its commands are committed.
#[derive(Debug, Clone)]
pub(crate) enum Goal {
    /// Nothing more.
    Committed,
    /// Every (shard, new ACTIVE) settled, handovers over.
    Switched(Vec<(ShardName, UnitName)>),
    /// These units hold no role.
    NoRoles(Vec<UnitName>),
    /// These units' processes stopped.
    Stopped(Vec<UnitName>),
    /// These units run an instance newer than the given generation.
    Restarted(Vec<(UnitName, u64)>),
}

/// A request waiting for its commands and its goal.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    /// Commands proposed and not yet applied.
    pub outstanding: usize,
    /// What "done" means.
    pub goal: Goal,
    /// When to give up waiting.
    pub deadline: Time,
    /// Index and term of the last applied command.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// What to say when done.
    pub summary: String,
}

fn refusal(code: AdminCode, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

/// Validates `action` and returns its commands and what it waits for.
pub(crate) fn plan(
    state: &ClusterState,
    observations: &Observations,
    action: &AdminAction,
) -> Result<(Vec<Command>, Goal, String), Refusal> {
    let view = View::new(state, observations);
    match action {
        AdminAction::Noop => Ok((
            vec![Command::Noop { nonce: 0 }],
            Goal::Committed,
            "committed a no-op".into(),
        )),
        AdminAction::Restrict {
            shard,
            admitted_permille,
        } => {
            let Some(record) = state.shards.get(shard) else {
                return Err(refusal(
                    AdminCode::NotFound,
                    format!(
                        "there is no shard {shard} (shards: {})",
                        state
                            .shards
                            .keys()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            if admitted_permille.is_some_and(|permille| permille > 1000) {
                return Err(refusal(
                    AdminCode::BadRequest,
                    "a restriction admits a fraction between 0 and 1 of new sessions",
                ));
            }
            if record.admitted_permille == *admitted_permille {
                return Err(refusal(
                    AdminCode::NoOp,
                    format!("shard {shard} is already restricted so"),
                ));
            }
            let summary = match admitted_permille {
                Some(permille) => format!(
                    "restricted shard {shard}: its ACTIVE admits {}.{}% of new sessions",
                    permille / 10,
                    permille % 10
                ),
                None => format!("lifted the restriction of shard {shard}"),
            };
            Ok((
                vec![Command::Restrict {
                    shard: shard.clone(),
                    admitted_permille: *admitted_permille,
                }],
                Goal::Committed,
                summary,
            ))
        }
        AdminAction::Switchover(target) => {
            let commands = plan_switchover(&view, target)?;
            let mut pairs = Vec::new();
            for command in &commands {
                if let Command::Reassign {
                    shard,
                    handover: tandem_core::HandoverUpdate::Start(handover),
                    ..
                } = command
                {
                    if let Some(to) = &handover.to {
                        pairs.push((shard.clone(), to.clone()));
                    }
                }
            }
            let summary = format!(
                "switched over {}",
                pairs
                    .iter()
                    .map(|(shard, to)| format!("{shard} (now ACTIVE on {to})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok((commands, Goal::Switched(pairs), summary))
        }
        AdminAction::Admin { target, op } => {
            let (state_now, units): (_, Vec<UnitName>) = match target {
                AdminTarget::Unit(unit) => {
                    let record = state.units.get(unit).ok_or_else(|| {
                        refusal(
                            AdminCode::NotFound,
                            format!(
                                "there is no unit {unit} (units: {})",
                                state
                                    .units
                                    .keys()
                                    .map(|u| u.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?;
                    (record.admin, vec![unit.clone()])
                }
                AdminTarget::Node(node) => {
                    let record = state.nodes.get(node).ok_or_else(|| {
                        refusal(AdminCode::NotFound, format!("there is no node {node}"))
                    })?;
                    (
                        record.admin,
                        state
                            .units_on(*node)
                            .map(|unit| unit.name.clone())
                            .collect(),
                    )
                }
            };
            let next = admin_transition(state_now, *op).map_err(|reason| {
                let code = if reason.starts_with("already") {
                    AdminCode::NoOp
                } else {
                    AdminCode::Invalid
                };
                refusal(code, format!("cannot {} {target}: {reason}", op.name()))
            })?;
            if *op == AdminOp::Restart {
                if let Some(unit) = units
                    .iter()
                    .filter_map(|u| state.units.get(u))
                    .find(|u| !u.enabled)
                {
                    return Err(refusal(
                        AdminCode::Invalid,
                        format!(
                            "cannot restart unit {}: it is disabled; repair it first",
                            unit.name
                        ),
                    ));
                }
                if units.is_empty() {
                    return Err(refusal(
                        AdminCode::NoOp,
                        format!("{target} has no units to restart"),
                    ));
                }
            }
            let goal = match op {
                AdminOp::Lock | AdminOp::Shutdown => Goal::NoRoles(units.clone()),
                AdminOp::LockInstantiation => Goal::Stopped(units.clone()),
                AdminOp::Restart => Goal::Restarted(
                    units
                        .iter()
                        .filter_map(|unit| state.units.get(unit))
                        .filter(|unit| state.should_run(unit))
                        .map(|unit| (unit.name.clone(), unit.generation))
                        .collect(),
                ),
                AdminOp::Unlock | AdminOp::UnlockInstantiation | AdminOp::Repair => Goal::Committed,
            };
            let summary = format!("{} {target}: now {}", op.name(), next.name());
            Ok((
                vec![Command::Admin {
                    target: target.clone(),
                    op: *op,
                }],
                goal,
                summary,
            ))
        }
    }
}

/// Whether `goal` is reached; `Err` when it can no longer be.
pub(crate) fn reached(
    state: &ClusterState,
    observations: &Observations,
    goal: &Goal,
) -> Result<bool, String> {
    let view = View::new(state, observations);
    match goal {
        Goal::Committed => Ok(true),
        Goal::Switched(pairs) => {
            for (shard_name, to) in pairs {
                let Some(shard) = state.shards.get(shard_name) else {
                    return Err(format!("shard {shard_name} disappeared"));
                };
                if shard.handover.is_some() {
                    return Ok(false);
                }
                let Some(unit) = state.units.get(to) else {
                    return Err(format!("unit {to} disappeared"));
                };
                let active_now: Vec<&UnitName> = shard.units_in(Role::Active).collect();
                if shard.roles.get(to) != Some(&Role::Active) {
                    return Err(format!(
                        "shard {shard_name}: the switchover ended without moving to {to} (ACTIVE now: {})",
                        if active_now.is_empty() {
                            "none".to_owned()
                        } else {
                            active_now.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", ")
                        }
                    ));
                }
                if view.settled(unit, shard) != Some(Role::Active) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Goal::NoRoles(units) => Ok(units
            .iter()
            .all(|unit| state.roles_of(unit).next().is_none())),
        Goal::Stopped(units) => Ok(units.iter().all(|unit| {
            state.units.get(unit).is_none_or(|record| {
                observations
                    .unit(record.node, unit)
                    .is_none_or(|report| report.presence == Presence::Stopped)
            })
        })),
        Goal::Restarted(units) => Ok(units.iter().all(|(unit, generation)| {
            state
                .units
                .get(unit)
                .is_some_and(|record| record.generation > *generation && view.running(record))
        })),
    }
}

/// What is still outstanding for `goal`, for a timeout answer.
pub(crate) fn outstanding(state: &ClusterState, goal: &Goal) -> String {
    match goal {
        Goal::Committed => "the commit".into(),
        Goal::Switched(pairs) => format!(
            "{} to confirm ACTIVE",
            pairs
                .iter()
                .map(|(_, to)| to.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Goal::NoRoles(units) => {
            let holding: BTreeMap<&UnitName, Vec<String>> = units
                .iter()
                .map(|unit| {
                    (
                        unit,
                        state
                            .roles_of(unit)
                            .map(|(shard, role)| format!("{role} {shard}"))
                            .collect(),
                    )
                })
                .filter(|(_, roles): &(&UnitName, Vec<String>)| !roles.is_empty())
                .collect();
            holding
                .iter()
                .map(|(unit, roles)| format!("{unit} still holds {}", roles.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        }
        Goal::Stopped(units) => format!(
            "the processes of {} to stop",
            units
                .iter()
                .map(|u| u.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Goal::Restarted(units) => format!(
            "new instances of {} to run",
            units
                .iter()
                .map(|(u, _)| u.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
