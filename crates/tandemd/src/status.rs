//! Builds the answer to `tandemctl status` from a node: the committed state (services, units,
//! shards, roles, admin states, escalation counters) joined with what the leader observed
//! (processes, pids, confirmed roles). A node that is not the leader knows only its own units'
//! processes; its answer says so (`from_leader: false`).
//!
//! The request narrows the answer (`tandem_admin::status_view`): shards by name and service,
//! and a summary that counts every matching shard in one pass but builds a message only for
//! the unhealthy ones. The answer is built on the event loop, so a summary of 10,000 shards
//! must not cost what a full answer does.

use std::collections::{BTreeMap, BTreeSet};

use tandem_admin::status_view::{self, ShardFacts, ShardFilter, SummaryBuilder};
use tandem_core::director::View;
use tandem_core::{ClusterState, NodeId, Observations, Role, ShardRecord, Time};
use tandem_node::Node;
use tandem_proto::admin::{
    NodeStatus, RoleStatus, ServiceStatus, ShardStatus, Status, StatusRequest, UnitRef, UnitStatus,
};
use tandem_raft::disk::FsDisk;

use crate::config::Config;

/// The status `request` asks for, as `node` (named `name`) sees it at `now`: with the
/// checkpoint replicas and sessions of the shards it lists.
pub fn answer(
    config: &Config,
    name: &str,
    node: &Node<FsDisk>,
    now: Time,
    request: &StatusRequest,
) -> Status {
    let filter = ShardFilter::of(request);
    if request.data_only {
        let mut status = Status {
            cluster: config.cluster.name.clone(),
            answered_by: name.to_owned(),
            ..Status::default()
        };
        add_data(
            &mut status,
            name,
            node,
            now,
            &|shard: &str, service: &str| filter.matches(shard, service),
        );
        return status;
    }
    let mut status = build(config, name, node, now, request);
    let listed: BTreeSet<String> = status
        .shards
        .iter()
        .map(|shard| shard.name.clone())
        .collect();
    if !status
        .summary
        .as_ref()
        .is_some_and(|summary| summary.summarised)
    {
        add_data(&mut status, name, node, now, &|shard: &str, _: &str| {
            listed.contains(shard)
        });
    }
    status
}

/// The status as `node` (named `name`) sees it at `now`, narrowed by `request`, without the
/// checkpoint replicas and sessions (`add_data`).
pub fn build(
    config: &Config,
    name: &str,
    node: &tandem_node::Node<FsDisk>,
    now: Time,
    request: &StatusRequest,
) -> Status {
    let replica = node.replica();
    let state = node.state();
    let leader_id = replica.leader_id();
    let node_name = |id: NodeId| {
        config
            .node_by_id(id.0)
            .map_or_else(|| id.to_string(), |node| node.name.clone())
    };
    // On the leader, every agent's report; elsewhere, this node's own.
    let own;
    let observations: &Observations = match node.observations() {
        Some(observations) => observations,
        None => {
            let mut single = Observations::new(node.replica().applied_index());
            single.record(now, node.id(), node.own_report(now));
            own = single;
            &own
        }
    };
    let view = View::new(state, observations);
    let filter = ShardFilter::of(request);
    let (listed, summary) = select_shards(state, &view, &filter, request);
    let summarised = summary.summarised;
    let shard_rows = shards(state, &view, &node_name, &listed);
    let nodes = config
        .nodes
        .iter()
        .map(|member| {
            let id = NodeId(member.id);
            let mut status = NodeStatus {
                name: member.name.clone(),
                id: member.id,
                up: state.is_up(id),
                leader: leader_id == Some(member.id),
                peer_addr: member.peer_addr.to_string(),
                admin_addr: member.admin_addr.to_string(),
                membership: if replica.is_voter(member.id) {
                    "voter"
                } else {
                    "learner"
                }
                .to_owned(),
                match_index: replica.match_index(member.id).unwrap_or(0),
                admin: state
                    .nodes
                    .get(&id)
                    .map_or("unknown", |record| record.admin.name())
                    .to_owned(),
                ..Default::default()
            };
            if id == node.id() {
                status.term = replica.term();
                status.commit_index = replica.commit_index();
                status.applied_index = replica.applied_index();
            } else if let Some(tracker) = node.liveness() {
                if let Some(report) = tracker.report(id) {
                    status.term = report.term;
                    status.commit_index = report.commit_index;
                    status.applied_index = report.applied_index;
                }
                status.heartbeat_age_ms = tracker
                    .heartbeat_age(now, id)
                    .map(|age| age.as_millis() as u64);
            }
            status
        })
        .collect();
    Status {
        cluster: config.cluster.name.clone(),
        answered_by: name.to_owned(),
        leader: leader_id
            .and_then(|id| config.node_by_id(id))
            .map(|leader| leader.name.clone())
            .unwrap_or_default(),
        term: replica.term(),
        commit_index: replica.commit_index(),
        applied_index: replica.applied_index(),
        nodes,
        from_leader: replica.is_leader(),
        services: services(state, &filter, summarised),
        units: units(state, &view, &node_name, &filter),
        shards: shard_rows,
        // Filled by `add_data` (the data plane is the daemon's, not the node's).
        replicas: Vec::new(),
        sessions: Vec::new(),
        summary: Some(summary),
    }
}

/// The shards `request` lists (every matching one, or in a summary the unhealthy ones, at
/// most `shards_max`), and the summary's counts.
fn select_shards<'a>(
    state: &'a ClusterState,
    view: &View<'_>,
    filter: &ShardFilter,
    request: &StatusRequest,
) -> (Vec<&'a ShardRecord>, tandem_proto::admin::StatusSummary) {
    let mut builder = SummaryBuilder::new(state.shards.len() as u64);
    for service in &state.topology.services {
        if filter.wants_service(&service.name.0) {
            builder.service(
                &service.name.0,
                service.model.name(),
                service.units.iter().map(|unit| unit.name.0.as_str()),
            );
        }
    }
    let models: BTreeMap<&tandem_core::ServiceName, &'static str> = state
        .topology
        .services
        .iter()
        .map(|service| (&service.name, service.model.name()))
        .collect();
    let mut matched: Vec<(&ShardRecord, bool)> = Vec::new();
    for shard in state.shards.values() {
        if !filter.matches(&shard.name.0, &shard.service.0) {
            continue;
        }
        let model_name = models.get(&shard.service).copied().unwrap_or("");
        let facts = builder.add(
            &shard.service.0,
            ShardFacts::new(model_name, shard.handover.is_some()),
            shard.roles.iter().map(|(unit, role)| {
                (
                    unit.0.as_str(),
                    role.name(),
                    confirmed(state, view, shard, unit, *role),
                    shard.in_sync.contains(unit),
                )
            }),
        );
        matched.push((shard, facts.healthy()));
    }
    let summarised = status_view::summarises(request, matched.len() as u64);
    if !summarised {
        let shards = matched.into_iter().map(|(shard, _)| shard).collect();
        return (shards, builder.finish(request, false, 0));
    }
    let limit = match request.shards_max {
        0 => usize::MAX,
        max => max as usize,
    };
    let unhealthy: Vec<&ShardRecord> = matched
        .into_iter()
        .filter(|(_, healthy)| !healthy)
        .map(|(shard, _)| shard)
        .collect();
    let unlisted = unhealthy.len().saturating_sub(limit) as u64;
    let listed = unhealthy.into_iter().take(limit).collect();
    (listed, builder.finish(request, true, unlisted))
}

/// Whether `unit` confirmed `role` for `shard` at its current version (QUIESCING is confirmed
/// by a QUIESCED report).
fn confirmed(
    state: &ClusterState,
    view: &View<'_>,
    shard: &ShardRecord,
    unit: &tandem_core::UnitName,
    role: Role,
) -> bool {
    state.units.get(unit).is_some_and(|record| {
        let expected = if role == Role::Quiescing {
            Role::Quiesced
        } else {
            role
        };
        view.settled(record, shard) == Some(expected)
    })
}

fn services(state: &ClusterState, filter: &ShardFilter, summarised: bool) -> Vec<ServiceStatus> {
    state
        .topology
        .services
        .iter()
        .map(|service| ServiceStatus {
            name: service.name.0.clone(),
            model: service.model.name().to_owned(),
            units: service
                .units
                .iter()
                .map(|unit| unit.name.0.clone())
                .collect(),
            shards: if summarised {
                Vec::new()
            } else {
                service
                    .shards
                    .iter()
                    .filter(|shard| filter.matches(&shard.0, &service.name.0))
                    .map(|shard| shard.0.clone())
                    .collect()
            },
        })
        .collect()
}

fn units(
    state: &ClusterState,
    view: &View<'_>,
    node_name: &dyn Fn(NodeId) -> String,
    filter: &ShardFilter,
) -> Vec<UnitStatus> {
    state
        .units
        .values()
        .filter(|unit| filter.wants_service(&unit.service.0))
        .map(|unit| {
            let report = view.observations.unit(unit.node, &unit.name);
            let current = report.filter(|report| report.generation == unit.generation);
            let last_fault = unit.ladder.last.as_ref().map_or(String::new(), |record| {
                format!(
                    "{} -> {} {}",
                    record.kind,
                    record.level.label(),
                    record.action
                )
            });
            UnitStatus {
                name: unit.name.0.clone(),
                service: unit.service.0.clone(),
                node: node_name(unit.node),
                pid: report.and_then(|report| report.pid).unwrap_or(0),
                state: match (report, current) {
                    (_, Some(report)) => report.presence.name().to_owned(),
                    (Some(_), None) => "restarting".to_owned(),
                    (None, None) => "unknown".to_owned(),
                },
                admin: state.effective_admin(unit).name().to_owned(),
                enabled: unit.enabled,
                generation: unit.generation,
                restart_pending: unit.restart_pending,
                faults_total: unit.ladder.faults_total,
                ladder_counts: unit.ladder.counts.to_vec(),
                last_fault,
                load: report.and_then(|report| report.load),
            }
        })
        .collect()
}

fn shards(
    state: &ClusterState,
    view: &View<'_>,
    node_name: &dyn Fn(NodeId) -> String,
    listed: &[&ShardRecord],
) -> Vec<ShardStatus> {
    listed
        .iter()
        .map(|shard| {
            let reference = |unit: &tandem_core::UnitName| UnitRef {
                unit: unit.0.clone(),
                node: state
                    .units
                    .get(unit)
                    .map_or_else(String::new, |record| node_name(record.node)),
            };
            let multi = state
                .topology
                .service(&shard.service)
                .is_some_and(|service| service.model.multi_active());
            ShardStatus {
                name: shard.name.0.clone(),
                service: shard.service.0.clone(),
                active: if multi {
                    None
                } else {
                    shard.units_in(Role::Active).next().map(reference)
                },
                standbys: shard.units_in(Role::Standby).map(reference).collect(),
                epoch: shard.epoch,
                version: shard.version,
                roles: shard
                    .roles
                    .iter()
                    .map(|(unit, role)| {
                        let confirmed = confirmed(state, view, shard, unit, *role);
                        let target = reference(unit);
                        RoleStatus {
                            unit: target.unit,
                            node: target.node,
                            role: role.name().to_owned(),
                            confirmed,
                        }
                    })
                    .collect(),
                in_sync: shard.in_sync.iter().map(|unit| unit.0.clone()).collect(),
                admitted_permille: shard.admitted_permille,
                handover: shard.handover.as_ref().map_or(String::new(), |handover| {
                    format!(
                        "{} from {} to {}",
                        handover.reason.name(),
                        handover.from,
                        handover.to.as_ref().map_or("none", |to| to.as_str())
                    )
                }),
            }
        })
        .collect()
}

/// Adds this node's checkpoint replicas and the replication sessions of the shards it is
/// primary for, of the shards `wanted` (by name and service) says.
pub fn add_data(
    status: &mut Status,
    node_name: &str,
    node: &Node<FsDisk>,
    now: Time,
    wanted: &dyn Fn(&str, &str) -> bool,
) {
    let view = node.data_view();
    let state = node.state();
    let wanted_shard = |shard: &tandem_core::ShardName| {
        state
            .shards
            .get(shard)
            .is_some_and(|record| wanted(&shard.0, &record.service.0))
    };
    for (id, replica) in node.checkpoint_replicas() {
        if !wanted_shard(&id.shard) {
            continue;
        }
        let shard_view = view.shards.get(&id.shard);
        let role = match shard_view {
            Some(shard)
                if shard
                    .primary
                    .as_ref()
                    .is_some_and(|(unit, _)| *unit == id.unit) =>
            {
                "primary"
            }
            Some(shard) if shard.standbys.contains_key(&id.unit) => "secondary",
            _ => "idle",
        };
        status.replicas.push(tandem_proto::admin::ReplicaInfo {
            node: node_name.to_owned(),
            shard: id.shard.0.clone(),
            unit: id.unit.0.clone(),
            role: role.to_owned(),
            version: replica.version(),
            consumed: replica.consumed(),
            digest: tandem_proto::sdk_wire::digest_hex(replica.digest()),
            sections: replica.section_count() as u64,
            complete: node.checkpoint_replica_complete(id),
            bytes: replica.section_bytes(),
            pending: replica.pending_count() as u64,
            file_bytes: node.replica_file_len(id).unwrap_or(0) as u64,
        });
    }
    for session in node.replication_status(now) {
        if !wanted_shard(&session.shard) {
            continue;
        }
        status.sessions.push(tandem_proto::admin::SessionInfo {
            node: node_name.to_owned(),
            shard: session.shard.0,
            standby: session.standby.0,
            epoch: session.epoch,
            primary_version: session.primary_version,
            standby_version: session.standby_version,
            verified: session.verified,
            transfer: session
                .transfer
                .map(|transfer| tandem_proto::admin::TransferInfo {
                    sections_total: transfer.sections_total,
                    sections_sent: transfer.sections_sent,
                    bytes_total: transfer.bytes_total,
                    bytes_sent: transfer.bytes_sent,
                    elapsed_us: transfer.elapsed_us,
                }),
        });
    }
}
