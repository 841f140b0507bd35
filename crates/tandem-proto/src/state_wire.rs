//! Conversion between the core's plain Rust types and the bytes the Raft log and snapshots hold
//! (`proto/state.proto`). Decoding never panics: bytes from disk or a peer that do not make a
//! valid value are an error. The conversions of shared pieces (roles, faults, process specs)
//! are public so that the peer protocol reuses them.

use std::collections::BTreeMap;

use crate::state as wire;
use crate::Message as _;
use tandem_core::cluster::{AdminOp, AdminState, AdminTarget, HandoverUpdate, RoleChange};
use tandem_core::ladder::{FaultRecord, Ladder, Level, RecoveryAction};
use tandem_core::topology::EscalationPolicy;
use tandem_core::{
    CheckpointSpec, ClusterState, Command, FaultId, FaultKind, Handover, HandoverReason,
    IngressSpec, NodeId, NodeRecord, ProcessSpec, RedundancyModel, Role, ServiceName, ServiceSpec,
    Severity, ShardName, ShardRecord, Topology, UnitName, UnitRecord, UnitSpec, UnitTimeouts,
};

/// Why log or snapshot bytes could not be turned into core values.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The protobuf itself is malformed.
    #[error(transparent)]
    Decode(#[from] crate::DecodeError),
    /// The protobuf is well-formed but names no known command.
    #[error("raft command has no kind (written by a newer tandem?)")]
    EmptyCommand,
    /// A field holds a value no tandem writes (unknown enum value, missing part).
    #[error("invalid {0}")]
    Invalid(&'static str),
}

fn invalid(what: &'static str) -> CodecError {
    CodecError::Invalid(what)
}

/// Commands in one batch at most.
pub const BATCH_COMMANDS_MAX: usize = 4096;

/// Encodes a command as a log entry's data.
pub fn encode_command(command: &Command) -> Vec<u8> {
    command_to_wire(command).encode_to_vec()
}

fn command_to_wire(command: &Command) -> wire::Command {
    use wire::command::Kind;
    let kind = match command {
        Command::Batch(commands) => Kind::Batch(wire::Batch {
            commands: commands.iter().map(command_to_wire).collect(),
        }),
        Command::Noop { nonce } => Kind::Noop(wire::Noop { nonce: *nonce }),
        Command::SetNodeLiveness {
            node,
            up,
            at_ms,
            promotions,
        } => Kind::SetNodeLiveness(wire::SetNodeLiveness {
            node: node.0,
            up: *up,
            at_ms: *at_ms,
            promotions: encode_promotions(promotions),
        }),
        Command::SetTopology(topology) => Kind::SetTopology(encode_topology(topology)),
        Command::Admin { target, op } => Kind::Admin(wire::AdminCommand {
            target: Some(match target {
                AdminTarget::Unit(unit) => wire::admin_command::Target::Unit(unit.0.clone()),
                AdminTarget::Node(node) => wire::admin_command::Target::Node(node.0),
            }),
            op: encode_admin_op(*op) as i32,
        }),
        Command::Reassign {
            shard,
            expected_version,
            changes,
            handover,
        } => Kind::Reassign(wire::Reassign {
            shard: shard.0.clone(),
            expected_version: *expected_version,
            changes: changes
                .iter()
                .map(|change| wire::RoleChange {
                    unit: change.unit.0.clone(),
                    role: encode_role(change.role) as i32,
                })
                .collect(),
            handover: match handover {
                HandoverUpdate::Keep => None,
                HandoverUpdate::Start(planned) => {
                    Some(wire::reassign::Handover::Start(encode_handover(planned)))
                }
                HandoverUpdate::Clear => Some(wire::reassign::Handover::Clear(true)),
            },
        }),
        Command::UnitFault {
            unit,
            fault,
            kind,
            at_ms,
            promotions,
        } => Kind::UnitFault(wire::UnitFault {
            unit: unit.0.clone(),
            fault: Some(encode_fault_id(*fault)),
            kind: Some(encode_fault_kind(kind)),
            at_ms: *at_ms,
            promotions: encode_promotions(promotions),
        }),
        Command::SetInSync {
            shard,
            epoch,
            units,
            claim,
        } => Kind::SetInSync(wire::SetInSync {
            shard: shard.0.clone(),
            epoch: *epoch,
            units: units.iter().map(|unit| unit.0.clone()).collect(),
            claim: *claim,
        }),
        Command::Restrict {
            shard,
            admitted_permille,
        } => Kind::Restrict(wire::Restrict {
            shard: shard.0.clone(),
            admitted_permille: *admitted_permille,
        }),
        Command::RestartUnit {
            unit,
            expected_generation,
        } => Kind::RestartUnit(wire::RestartUnit {
            unit: unit.0.clone(),
            expected_generation: *expected_generation,
        }),
    };
    wire::Command { kind: Some(kind) }
}

/// Decodes a log entry's data into a command.
pub fn decode_command(data: &[u8]) -> Result<Command, CodecError> {
    command_from_wire(crate::decode_command(data)?, false)
}

fn command_from_wire(command: wire::Command, in_batch: bool) -> Result<Command, CodecError> {
    use wire::command::Kind;
    Ok(match command.kind.ok_or(CodecError::EmptyCommand)? {
        Kind::Batch(_) if in_batch => return Err(invalid("a batch inside a batch")),
        Kind::Batch(batch) if batch.commands.len() > BATCH_COMMANDS_MAX => {
            return Err(invalid("a batch of more than BATCH_COMMANDS_MAX commands"))
        }
        Kind::Batch(batch) => Command::Batch(
            batch
                .commands
                .into_iter()
                .map(|command| command_from_wire(command, true))
                .collect::<Result<_, CodecError>>()?,
        ),
        Kind::Noop(noop) => Command::Noop { nonce: noop.nonce },
        Kind::SetNodeLiveness(set) => Command::SetNodeLiveness {
            node: NodeId(set.node),
            up: set.up,
            at_ms: set.at_ms,
            promotions: decode_promotions(set.promotions),
        },
        Kind::SetTopology(topology) => Command::SetTopology(decode_topology(topology)?),
        Kind::Admin(admin) => Command::Admin {
            target: match admin.target.ok_or(invalid("admin target"))? {
                wire::admin_command::Target::Unit(unit) => AdminTarget::Unit(UnitName(unit)),
                wire::admin_command::Target::Node(node) => AdminTarget::Node(NodeId(node)),
            },
            op: decode_admin_op(admin.op)?,
        },
        Kind::Reassign(reassign) => Command::Reassign {
            shard: ShardName(reassign.shard),
            expected_version: reassign.expected_version,
            changes: reassign
                .changes
                .into_iter()
                .map(|change| {
                    Ok(RoleChange {
                        unit: UnitName(change.unit),
                        role: decode_role(change.role)?,
                    })
                })
                .collect::<Result<_, CodecError>>()?,
            handover: match reassign.handover {
                None => HandoverUpdate::Keep,
                Some(wire::reassign::Handover::Start(planned)) => {
                    HandoverUpdate::Start(decode_handover(planned)?)
                }
                Some(wire::reassign::Handover::Clear(_)) => HandoverUpdate::Clear,
            },
        },
        Kind::UnitFault(fault) => Command::UnitFault {
            unit: UnitName(fault.unit),
            fault: decode_fault_id(fault.fault.ok_or(invalid("fault id"))?),
            kind: decode_fault_kind(fault.kind.ok_or(invalid("fault kind"))?)?,
            at_ms: fault.at_ms,
            promotions: decode_promotions(fault.promotions),
        },
        Kind::RestartUnit(restart) => Command::RestartUnit {
            unit: UnitName(restart.unit),
            expected_generation: restart.expected_generation,
        },
        Kind::SetInSync(set) => Command::SetInSync {
            shard: ShardName(set.shard),
            epoch: set.epoch,
            units: set.units.into_iter().map(UnitName).collect(),
            claim: set.claim,
        },
        Kind::Restrict(restrict) => Command::Restrict {
            shard: ShardName(restrict.shard),
            admitted_permille: restrict.admitted_permille,
        },
    })
}

// ----- shared pieces -----

fn encode_promotions(promotions: &[(ShardName, UnitName)]) -> Vec<wire::Promotion> {
    promotions
        .iter()
        .map(|(shard, unit)| wire::Promotion {
            shard: shard.0.clone(),
            unit: unit.0.clone(),
        })
        .collect()
}

fn decode_promotions(promotions: Vec<wire::Promotion>) -> Vec<(ShardName, UnitName)> {
    promotions
        .into_iter()
        .map(|promotion| (ShardName(promotion.shard), UnitName(promotion.unit)))
        .collect()
}

/// A role as the wire writes it (`None` is `ROLE_NONE`).
pub fn encode_role(role: Option<Role>) -> wire::Role {
    match role {
        None => wire::Role::None,
        Some(Role::Active) => wire::Role::Active,
        Some(Role::Standby) => wire::Role::Standby,
        Some(Role::Quiescing) => wire::Role::Quiescing,
        Some(Role::Quiesced) => wire::Role::Quiesced,
    }
}

/// A role from the wire (`ROLE_NONE` is `None`).
pub fn decode_role(value: i32) -> Result<Option<Role>, CodecError> {
    Ok(
        match wire::Role::try_from(value).map_err(|_| invalid("role"))? {
            wire::Role::None => None,
            wire::Role::Active => Some(Role::Active),
            wire::Role::Standby => Some(Role::Standby),
            wire::Role::Quiescing => Some(Role::Quiescing),
            wire::Role::Quiesced => Some(Role::Quiesced),
        },
    )
}

/// A role that must be present.
pub fn decode_some_role(value: i32) -> Result<Role, CodecError> {
    decode_role(value)?.ok_or(invalid("role (none given)"))
}

/// A fault id.
pub fn encode_fault_id(fault: FaultId) -> wire::FaultId {
    wire::FaultId {
        generation: fault.generation,
        seq: fault.seq,
    }
}

/// A fault id from the wire.
pub fn decode_fault_id(fault: wire::FaultId) -> FaultId {
    FaultId {
        generation: fault.generation,
        seq: fault.seq,
    }
}

/// A severity.
pub fn encode_severity(severity: Severity) -> wire::Severity {
    match severity {
        Severity::Transient => wire::Severity::Transient,
        Severity::Restart => wire::Severity::Restart,
        Severity::Node => wire::Severity::Node,
    }
}

/// A severity from the wire.
pub fn decode_severity(value: i32) -> Result<Severity, CodecError> {
    match wire::Severity::try_from(value).map_err(|_| invalid("severity"))? {
        wire::Severity::Unspecified => Err(invalid("severity (none given)")),
        wire::Severity::Transient => Ok(Severity::Transient),
        wire::Severity::Restart => Ok(Severity::Restart),
        wire::Severity::Node => Ok(Severity::Node),
    }
}

/// A fault kind.
pub fn encode_fault_kind(kind: &FaultKind) -> wire::FaultKind {
    use wire::fault_kind::Kind;
    let kind = match kind {
        FaultKind::ProcessExit { code, signal } => Kind::ProcessExit(wire::ProcessExit {
            code: *code,
            signal: *signal,
        }),
        FaultKind::HealthTimeout => Kind::HealthTimeout(true),
        FaultKind::CallbackFailed => Kind::CallbackFailed(true),
        FaultKind::InstantiationFailed => Kind::InstantiationFailed(true),
        FaultKind::AgentRestarted => Kind::AgentRestarted(true),
        FaultKind::Reported(severity) => Kind::Reported(encode_severity(*severity) as i32),
        FaultKind::NodeLost => Kind::NodeLost(true),
    };
    wire::FaultKind { kind: Some(kind) }
}

/// A fault kind from the wire.
pub fn decode_fault_kind(kind: wire::FaultKind) -> Result<FaultKind, CodecError> {
    use wire::fault_kind::Kind;
    Ok(match kind.kind.ok_or(invalid("fault kind"))? {
        Kind::ProcessExit(exit) => FaultKind::ProcessExit {
            code: exit.code,
            signal: exit.signal,
        },
        Kind::HealthTimeout(_) => FaultKind::HealthTimeout,
        Kind::CallbackFailed(_) => FaultKind::CallbackFailed,
        Kind::InstantiationFailed(_) => FaultKind::InstantiationFailed,
        Kind::AgentRestarted(_) => FaultKind::AgentRestarted,
        Kind::Reported(severity) => FaultKind::Reported(decode_severity(severity)?),
        Kind::NodeLost(_) => FaultKind::NodeLost,
    })
}

/// A process spec.
pub fn encode_process(spec: &ProcessSpec) -> wire::ProcessSpec {
    wire::ProcessSpec {
        argv: spec.argv.clone(),
        env: spec.env.clone().into_iter().collect(),
        working_dir: spec.working_dir.clone(),
    }
}

/// A process spec from the wire.
pub fn decode_process(spec: wire::ProcessSpec) -> ProcessSpec {
    ProcessSpec {
        argv: spec.argv,
        env: spec.env.into_iter().collect::<BTreeMap<_, _>>(),
        working_dir: spec.working_dir,
    }
}

fn encode_admin_op(op: AdminOp) -> wire::AdminOp {
    match op {
        AdminOp::Lock => wire::AdminOp::Lock,
        AdminOp::Unlock => wire::AdminOp::Unlock,
        AdminOp::Shutdown => wire::AdminOp::Shutdown,
        AdminOp::LockInstantiation => wire::AdminOp::LockInstantiation,
        AdminOp::UnlockInstantiation => wire::AdminOp::UnlockInstantiation,
        AdminOp::Restart => wire::AdminOp::Restart,
        AdminOp::Repair => wire::AdminOp::Repair,
    }
}

fn decode_admin_op(value: i32) -> Result<AdminOp, CodecError> {
    Ok(
        match wire::AdminOp::try_from(value).map_err(|_| invalid("admin op"))? {
            wire::AdminOp::Unspecified => return Err(invalid("admin op (none given)")),
            wire::AdminOp::Lock => AdminOp::Lock,
            wire::AdminOp::Unlock => AdminOp::Unlock,
            wire::AdminOp::Shutdown => AdminOp::Shutdown,
            wire::AdminOp::LockInstantiation => AdminOp::LockInstantiation,
            wire::AdminOp::UnlockInstantiation => AdminOp::UnlockInstantiation,
            wire::AdminOp::Restart => AdminOp::Restart,
            wire::AdminOp::Repair => AdminOp::Repair,
        },
    )
}

fn encode_admin_state(state: AdminState) -> wire::AdminState {
    match state {
        AdminState::Unlocked => wire::AdminState::AdminUnlocked,
        AdminState::Locked => wire::AdminState::AdminLocked,
        AdminState::LockedInstantiation => wire::AdminState::AdminLockedInstantiation,
        AdminState::ShuttingDown => wire::AdminState::AdminShuttingDown,
    }
}

fn decode_admin_state(value: i32) -> Result<AdminState, CodecError> {
    Ok(
        match wire::AdminState::try_from(value).map_err(|_| invalid("admin state"))? {
            wire::AdminState::AdminUnlocked => AdminState::Unlocked,
            wire::AdminState::AdminLocked => AdminState::Locked,
            wire::AdminState::AdminLockedInstantiation => AdminState::LockedInstantiation,
            wire::AdminState::AdminShuttingDown => AdminState::ShuttingDown,
        },
    )
}

fn encode_handover(handover: &Handover) -> wire::Handover {
    wire::Handover {
        from: handover.from.0.clone(),
        to: handover.to.as_ref().map(|unit| unit.0.clone()),
        reason: match handover.reason {
            HandoverReason::Switchover => wire::HandoverReason::HandoverSwitchover,
            HandoverReason::OutOfService => wire::HandoverReason::HandoverOutOfService,
            HandoverReason::Restart => wire::HandoverReason::HandoverRestart,
        } as i32,
    }
}

fn decode_handover(handover: wire::Handover) -> Result<Handover, CodecError> {
    Ok(Handover {
        from: UnitName(handover.from),
        to: handover.to.map(UnitName),
        reason: match wire::HandoverReason::try_from(handover.reason)
            .map_err(|_| invalid("handover reason"))?
        {
            wire::HandoverReason::Unspecified => return Err(invalid("handover reason")),
            wire::HandoverReason::HandoverSwitchover => HandoverReason::Switchover,
            wire::HandoverReason::HandoverOutOfService => HandoverReason::OutOfService,
            wire::HandoverReason::HandoverRestart => HandoverReason::Restart,
        },
    })
}

// ----- topology -----

fn encode_topology(topology: &Topology) -> wire::Topology {
    wire::Topology {
        services: topology.services.iter().map(encode_service).collect(),
        node_ranks: topology
            .node_ranks
            .iter()
            .map(|(node, rank)| wire::NodeRank {
                node: node.0,
                rank: *rank,
            })
            .collect(),
        node_restart: topology.node_restart.as_ref().map(encode_process),
    }
}

fn decode_topology(topology: wire::Topology) -> Result<Topology, CodecError> {
    Ok(Topology {
        services: topology
            .services
            .into_iter()
            .map(decode_service)
            .collect::<Result<_, _>>()?,
        node_ranks: topology
            .node_ranks
            .into_iter()
            .map(|rank| (NodeId(rank.node), rank.rank))
            .collect(),
        node_restart: topology.node_restart.map(decode_process),
    })
}

fn encode_service(service: &ServiceSpec) -> wire::Service {
    let (model, model_param) = match service.model {
        RedundancyModel::TwoN => (wire::Model::TwoN, 0),
        RedundancyModel::NPlusM { active_units } => (wire::Model::NPlusM, active_units),
        RedundancyModel::NWayActive { actives_per_shard } => {
            (wire::Model::NWayActive, actives_per_shard)
        }
        RedundancyModel::NoRedundancy => (wire::Model::None, 0),
    };
    let timeouts = &service.timeouts;
    let escalation = &service.escalation;
    wire::Service {
        name: service.name.0.clone(),
        model: model as i32,
        model_param,
        units: service
            .units
            .iter()
            .map(|unit| wire::UnitSpec {
                name: unit.name.0.clone(),
                node: unit.node.0,
                rank: unit.rank,
            })
            .collect(),
        shards: service.shards.iter().map(|shard| shard.0.clone()).collect(),
        instantiate: Some(encode_process(&service.instantiate)),
        terminate: service.terminate.as_ref().map(encode_process),
        cleanup: service.cleanup.as_ref().map(encode_process),
        timeouts: Some(wire::Timeouts {
            instantiate_ms: timeouts.instantiate_ms,
            terminate_ms: timeouts.terminate_ms,
            cleanup_ms: timeouts.cleanup_ms,
            health_interval_ms: timeouts.health_interval_ms,
            health_timeout_ms: timeouts.health_timeout_ms,
            callback_ms: timeouts.callback_ms,
        }),
        escalation: Some(wire::Escalation {
            reset_max: escalation.reset_max,
            restart_max: escalation.restart_max,
            reinitialise_max: escalation.reinitialise_max,
            node_restart_max: escalation.node_restart_max,
            window_ms: escalation.window_ms,
            relocate: escalation.relocate,
        }),
        max_shards_per_unit: service.max_shards_per_unit,
        allow_colocation: service.allow_colocation,
        checkpoint: Some(wire::Checkpoint {
            sync: service.checkpoint.sync,
            async_lag_max_ops: service.checkpoint.async_lag_max_ops,
        }),
        ingress: service
            .ingress
            .iter()
            .map(|(shard, ingress)| wire::Ingress {
                shard: shard.0.clone(),
                udp: ingress.udp.clone(),
                tcp: ingress.tcp.clone(),
            })
            .collect(),
        vip_up: service.vip_up.as_ref().map(encode_process),
        vip_down: service.vip_down.as_ref().map(encode_process),
    }
}

fn decode_service(service: wire::Service) -> Result<ServiceSpec, CodecError> {
    let model = match wire::Model::try_from(service.model).map_err(|_| invalid("model"))? {
        wire::Model::Unspecified => return Err(invalid("model (none given)")),
        wire::Model::TwoN => RedundancyModel::TwoN,
        wire::Model::NPlusM => RedundancyModel::NPlusM {
            active_units: service.model_param,
        },
        wire::Model::NWayActive => RedundancyModel::NWayActive {
            actives_per_shard: service.model_param,
        },
        wire::Model::None => RedundancyModel::NoRedundancy,
    };
    let timeouts = service.timeouts.ok_or(invalid("service timeouts"))?;
    let escalation = service.escalation.ok_or(invalid("service escalation"))?;
    Ok(ServiceSpec {
        name: ServiceName(service.name),
        model,
        units: service
            .units
            .into_iter()
            .map(|unit| UnitSpec {
                name: UnitName(unit.name),
                node: NodeId(unit.node),
                rank: unit.rank,
            })
            .collect(),
        shards: service.shards.into_iter().map(ShardName).collect(),
        instantiate: decode_process(service.instantiate.ok_or(invalid("instantiate command"))?),
        terminate: service.terminate.map(decode_process),
        cleanup: service.cleanup.map(decode_process),
        timeouts: UnitTimeouts {
            instantiate_ms: timeouts.instantiate_ms,
            terminate_ms: timeouts.terminate_ms,
            cleanup_ms: timeouts.cleanup_ms,
            health_interval_ms: timeouts.health_interval_ms,
            health_timeout_ms: timeouts.health_timeout_ms,
            callback_ms: timeouts.callback_ms,
        },
        escalation: EscalationPolicy {
            reset_max: escalation.reset_max,
            restart_max: escalation.restart_max,
            reinitialise_max: escalation.reinitialise_max,
            node_restart_max: escalation.node_restart_max,
            window_ms: escalation.window_ms,
            relocate: escalation.relocate,
        },
        max_shards_per_unit: service.max_shards_per_unit,
        allow_colocation: service.allow_colocation,
        checkpoint: service
            .checkpoint
            .map_or_else(CheckpointSpec::default, |checkpoint| CheckpointSpec {
                sync: checkpoint.sync,
                async_lag_max_ops: checkpoint.async_lag_max_ops,
            }),
        ingress: service
            .ingress
            .into_iter()
            .map(|ingress| {
                (
                    ShardName(ingress.shard),
                    IngressSpec {
                        udp: ingress.udp,
                        tcp: ingress.tcp,
                    },
                )
            })
            .collect(),
        vip_up: service.vip_up.map(decode_process),
        vip_down: service.vip_down.map(decode_process),
    })
}

// ----- snapshot -----

fn encode_recovery(action: RecoveryAction) -> wire::RecoveryAction {
    use wire::recovery_action::Kind;
    let kind = match action {
        RecoveryAction::Reset => Kind::Reset(true),
        RecoveryAction::Restart => Kind::Restart(true),
        RecoveryAction::Reinitialise => Kind::Reinitialise(true),
        RecoveryAction::NodeRestart => Kind::NodeRestart(true),
        RecoveryAction::Relocate { to } => Kind::RelocateTo(to.0),
        RecoveryAction::AwaitNode => Kind::AwaitNode(true),
        RecoveryAction::Disable => Kind::Disable(true),
    };
    wire::RecoveryAction { kind: Some(kind) }
}

fn decode_recovery(action: wire::RecoveryAction) -> Result<RecoveryAction, CodecError> {
    use wire::recovery_action::Kind;
    Ok(match action.kind.ok_or(invalid("recovery action"))? {
        Kind::Reset(_) => RecoveryAction::Reset,
        Kind::Restart(_) => RecoveryAction::Restart,
        Kind::Reinitialise(_) => RecoveryAction::Reinitialise,
        Kind::NodeRestart(_) => RecoveryAction::NodeRestart,
        Kind::RelocateTo(node) => RecoveryAction::Relocate { to: NodeId(node) },
        Kind::AwaitNode(_) => RecoveryAction::AwaitNode,
        Kind::Disable(_) => RecoveryAction::Disable,
    })
}

fn decode_level(level: u32) -> Result<Level, CodecError> {
    Ok(match level {
        0 => Level::Reset,
        1 => Level::Restart,
        2 => Level::Reinitialise,
        3 => Level::NodeRestart,
        4 => Level::Restore,
        5 => Level::Relocate,
        _ => return Err(invalid("ladder level")),
    })
}

fn encode_ladder(ladder: &Ladder) -> wire::Ladder {
    wire::Ladder {
        window_start_ms: ladder.window_start_ms,
        counts: ladder.counts.to_vec(),
        faults_total: ladder.faults_total,
        last: ladder.last.as_ref().map(|record| wire::FaultRecord {
            kind: Some(encode_fault_kind(&record.kind)),
            at_ms: record.at_ms,
            level: record.level as u32,
            action: Some(encode_recovery(record.action)),
        }),
    }
}

fn decode_ladder(ladder: wire::Ladder) -> Result<Ladder, CodecError> {
    let counts: [u32; 6] = ladder
        .counts
        .try_into()
        .map_err(|_| invalid("ladder counters (six expected)"))?;
    let last = match ladder.last {
        None => None,
        Some(record) => Some(FaultRecord {
            kind: decode_fault_kind(record.kind.ok_or(invalid("fault kind"))?)?,
            at_ms: record.at_ms,
            level: decode_level(record.level)?,
            action: decode_recovery(record.action.ok_or(invalid("recovery action"))?)?,
        }),
    };
    Ok(Ladder {
        window_start_ms: ladder.window_start_ms,
        counts,
        faults_total: ladder.faults_total,
        last,
    })
}

/// Encodes the cluster model for a snapshot.
pub fn encode_state(state: &ClusterState) -> Vec<u8> {
    wire::ClusterSnapshot {
        nodes: state
            .nodes
            .values()
            .map(|record| wire::NodeRecord {
                id: record.id.0,
                up: record.up,
                changed_at_index: record.changed_at_index,
                admin: encode_admin_state(record.admin) as i32,
                restart_generation: record.restart_generation,
            })
            .collect(),
        topology: Some(encode_topology(&state.topology)),
        units: state
            .units
            .values()
            .map(|unit| wire::UnitRecord {
                name: unit.name.0.clone(),
                service: unit.service.0.clone(),
                node: unit.node.0,
                admin: encode_admin_state(unit.admin) as i32,
                enabled: unit.enabled,
                generation: unit.generation,
                restart_pending: unit.restart_pending,
                reinitialise: unit.reinitialise,
                reset_requests: unit.reset_requests,
                fault_seen: Some(encode_fault_id(unit.fault_seen)),
                ladder: Some(encode_ladder(&unit.ladder)),
            })
            .collect(),
        shards: state
            .shards
            .values()
            .map(|shard| wire::ShardRecord {
                name: shard.name.0.clone(),
                service: shard.service.0.clone(),
                epoch: shard.epoch,
                version: shard.version,
                roles: shard
                    .roles
                    .iter()
                    .map(|(unit, role)| wire::Assignment {
                        unit: unit.0.clone(),
                        role: encode_role(Some(*role)) as i32,
                    })
                    .collect(),
                handover: shard.handover.as_ref().map(encode_handover),
                in_sync: shard.in_sync.iter().map(|unit| unit.0.clone()).collect(),
                last_active: shard.last_active.as_ref().map(|unit| unit.0.clone()),
                admitted_permille: shard.admitted_permille,
                synced_this_epoch: shard.synced_this_epoch,
                in_sync_claim: shard.in_sync_claim,
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Decodes the cluster model from a snapshot.
pub fn decode_state(data: &[u8]) -> Result<ClusterState, CodecError> {
    let snapshot = crate::decode_cluster_snapshot(data)?;
    let nodes = snapshot
        .nodes
        .into_iter()
        .map(|record| {
            let id = NodeId(record.id);
            Ok((
                id,
                NodeRecord {
                    id,
                    up: record.up,
                    changed_at_index: record.changed_at_index,
                    admin: decode_admin_state(record.admin)?,
                    restart_generation: record.restart_generation,
                },
            ))
        })
        .collect::<Result<_, CodecError>>()?;
    let topology = match snapshot.topology {
        Some(topology) => decode_topology(topology)?,
        None => Topology::default(),
    };
    let units = snapshot
        .units
        .into_iter()
        .map(|unit| {
            let name = UnitName(unit.name);
            Ok((
                name.clone(),
                UnitRecord {
                    name,
                    service: ServiceName(unit.service),
                    node: NodeId(unit.node),
                    admin: decode_admin_state(unit.admin)?,
                    enabled: unit.enabled,
                    generation: unit.generation,
                    restart_pending: unit.restart_pending,
                    reinitialise: unit.reinitialise,
                    reset_requests: unit.reset_requests,
                    fault_seen: unit.fault_seen.map(decode_fault_id).unwrap_or_default(),
                    ladder: match unit.ladder {
                        Some(ladder) => decode_ladder(ladder)?,
                        None => Ladder::default(),
                    },
                },
            ))
        })
        .collect::<Result<_, CodecError>>()?;
    let shards = snapshot
        .shards
        .into_iter()
        .map(|shard| {
            let name = ShardName(shard.name);
            let roles = shard
                .roles
                .into_iter()
                .map(|assignment| {
                    Ok((
                        UnitName(assignment.unit),
                        decode_some_role(assignment.role)?,
                    ))
                })
                .collect::<Result<_, CodecError>>()?;
            Ok((
                name.clone(),
                ShardRecord {
                    name,
                    service: ServiceName(shard.service),
                    epoch: shard.epoch,
                    version: shard.version,
                    roles,
                    handover: shard.handover.map(decode_handover).transpose()?,
                    in_sync: shard.in_sync.into_iter().map(UnitName).collect(),
                    last_active: shard.last_active.map(UnitName),
                    synced_this_epoch: shard.synced_this_epoch,
                    in_sync_claim: shard.in_sync_claim,
                    admitted_permille: shard.admitted_permille,
                },
            ))
        })
        .collect::<Result<_, CodecError>>()?;
    Ok(ClusterState::from_parts(nodes, topology, units, shards))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::ladder::Severity;

    fn sample_topology() -> Topology {
        let mut env = BTreeMap::new();
        env.insert("MODE".to_owned(), "demo".to_owned());
        Topology {
            services: vec![ServiceSpec {
                name: "counter".into(),
                model: RedundancyModel::NPlusM { active_units: 1 },
                units: vec![
                    UnitSpec {
                        name: "a".into(),
                        node: NodeId(1),
                        rank: 2,
                    },
                    UnitSpec {
                        name: "b".into(),
                        node: NodeId(2),
                        rank: 0,
                    },
                ],
                shards: vec!["s0".into()],
                instantiate: ProcessSpec {
                    argv: vec!["/bin/counter".into(), "--fast".into()],
                    env,
                    working_dir: Some("/tmp".into()),
                },
                terminate: None,
                cleanup: Some(ProcessSpec {
                    argv: vec!["/bin/cleanup".into()],
                    ..ProcessSpec::default()
                }),
                timeouts: UnitTimeouts::default(),
                escalation: EscalationPolicy::default(),
                max_shards_per_unit: 4,
                allow_colocation: true,
                checkpoint: CheckpointSpec {
                    sync: false,
                    async_lag_max_ops: 77,
                },
                ingress: [(
                    ShardName::from("s0"),
                    IngressSpec {
                        udp: Some("127.0.0.1:5060".into()),
                        tcp: None,
                    },
                )]
                .into(),
                vip_up: Some(ProcessSpec {
                    argv: vec!["/bin/vip".into(), "up".into()],
                    ..ProcessSpec::default()
                }),
                vip_down: None,
            }],
            node_ranks: [(NodeId(2), 1)].into(),
            node_restart: None,
        }
    }

    #[test]
    fn commands_and_state_round_trip() {
        let commands = vec![
            Command::Noop { nonce: 42 },
            Command::SetNodeLiveness {
                node: NodeId(3),
                up: false,
                at_ms: 17,
                promotions: vec![("s0".into(), "b".into())],
            },
            Command::SetTopology(sample_topology()),
            Command::SetInSync {
                shard: "s0".into(),
                epoch: 4,
                units: ["b".into()].into(),
                claim: 9,
            },
            Command::Restrict {
                shard: "s0".into(),
                admitted_permille: Some(250),
            },
            Command::Restrict {
                shard: "s0".into(),
                admitted_permille: None,
            },
            Command::Admin {
                target: AdminTarget::Node(NodeId(2)),
                op: AdminOp::LockInstantiation,
            },
            Command::Reassign {
                shard: "s0".into(),
                expected_version: 7,
                changes: vec![
                    RoleChange {
                        unit: "a".into(),
                        role: Some(Role::Quiescing),
                    },
                    RoleChange {
                        unit: "b".into(),
                        role: None,
                    },
                ],
                handover: HandoverUpdate::Start(Handover {
                    from: "a".into(),
                    to: Some("b".into()),
                    reason: HandoverReason::Switchover,
                }),
            },
            Command::UnitFault {
                unit: "a".into(),
                fault: FaultId {
                    generation: 2,
                    seq: 1,
                },
                kind: FaultKind::Reported(Severity::Node),
                at_ms: 99,
                promotions: vec![("s0".into(), "b".into())],
            },
            Command::RestartUnit {
                unit: "b".into(),
                expected_generation: 3,
            },
        ];
        for command in commands {
            assert_eq!(decode_command(&encode_command(&command)).unwrap(), command);
        }
        let mut state = ClusterState::bootstrap([NodeId(1), NodeId(2)]);
        state.apply(1, &Command::SetTopology(sample_topology()));
        state.apply(
            2,
            &Command::UnitFault {
                unit: "a".into(),
                fault: FaultId {
                    generation: 1,
                    seq: 1,
                },
                kind: FaultKind::HealthTimeout,
                at_ms: 5,
                promotions: vec![],
            },
        );
        state.apply(
            3,
            &Command::Reassign {
                shard: "s0".into(),
                expected_version: 0,
                changes: vec![RoleChange {
                    unit: "b".into(),
                    role: Some(Role::Active),
                }],
                handover: HandoverUpdate::Keep,
            },
        );
        let version = state.shards[&ShardName::from("s0")].version;
        state.apply(
            4,
            &Command::Reassign {
                shard: "s0".into(),
                expected_version: version,
                changes: vec![RoleChange {
                    unit: "a".into(),
                    role: Some(Role::Standby),
                }],
                handover: HandoverUpdate::Keep,
            },
        );
        state.apply(
            5,
            &Command::SetInSync {
                shard: "s0".into(),
                epoch: 1,
                units: ["a".into()].into(),
                claim: 3,
            },
        );
        state.apply(
            6,
            &Command::Restrict {
                shard: "s0".into(),
                admitted_permille: Some(500),
            },
        );
        let shard = &state.shards[&ShardName::from("s0")];
        assert_eq!(shard.in_sync, ["a".into()].into());
        assert_eq!(shard.in_sync_claim, 3);
        assert_eq!(shard.last_active, Some("b".into()));
        assert_eq!(shard.admitted_permille, Some(500));
        assert_eq!(decode_state(&encode_state(&state)).unwrap(), state);
        state.apply(
            9,
            &Command::SetNodeLiveness {
                node: NodeId(2),
                up: false,
                at_ms: 0,
                promotions: vec![],
            },
        );
        assert_eq!(decode_state(&encode_state(&state)).unwrap(), state);
        assert!(matches!(decode_command(&[]), Err(CodecError::EmptyCommand)));
        assert!(decode_command(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn invalid_enum_values_are_errors_not_panics() {
        let command = wire::Command {
            kind: Some(wire::command::Kind::Admin(wire::AdminCommand {
                target: Some(wire::admin_command::Target::Node(1)),
                op: 99,
            })),
        };
        assert!(matches!(
            decode_command(&command.encode_to_vec()),
            Err(CodecError::Invalid(_))
        ));
        let snapshot = wire::ClusterSnapshot {
            units: vec![wire::UnitRecord {
                ladder: Some(wire::Ladder {
                    counts: vec![1, 2],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(decode_state(&snapshot.encode_to_vec()).is_err());
    }
}
