//! The checkers: each invariant the simulation holds the cluster to, one file each, the
//! [`Violation`] they report, and `check_output`, which feeds them what a node's drive
//! produced (and counts it in the report).
//!
//! - [`raft`]: election safety, leader completeness, committed entries never change (nor
//!   commit twice), ordered progress per node, equal models at equal indexes;
//! - [`data`]: no acknowledged sync write lost, stream messages applied exactly once and in
//!   order, replicas agree at quiescent points;
//! - `one_active`: at most one unit acts ACTIVE per shard of a single-ACTIVE model;
//! - `settled`: liveness after the faults: a probe applied everywhere, every shard ACTIVE,
//!   the data plane settled.

pub mod data;
mod one_active;
pub mod raft;
mod settled;

use tandem_core::{Command, ModelEvent, Role};
use tandem_node::{NodeEvent, NodeOutput};
use tandem_raft::Applied;

use crate::checks::raft::CONTEXT_CLIENT;
use crate::sim::Sim;
use crate::workload::operator::ADMIN_ID_BASE;
use crate::FailureKind;

/// A broken invariant, before the simulation adds seed and time.
#[derive(Debug)]
pub struct Violation {
    /// Which invariant.
    pub kind: FailureKind,
    /// What was seen.
    pub detail: String,
}

/// A [`Violation`] of `kind`.
pub(crate) fn violation(kind: FailureKind, detail: String) -> Violation {
    Violation { kind, detail }
}

/// One [`Applied`] per log entry, as the Raft checker follows the log: the commands of a
/// batch, which the replica reports one by one, joined into their batch again.
fn log_entries(applied: &[Applied]) -> Vec<Applied> {
    let mut entries: Vec<Applied> = Vec::new();
    for applied in applied {
        match entries.last_mut() {
            Some(last) if last.index == applied.index => {
                let first = last.command.take();
                let mut commands = match first {
                    Some(Command::Batch(commands)) => commands,
                    other => other.into_iter().collect(),
                };
                commands.extend(applied.command.clone());
                last.command = Some(Command::Batch(commands));
            }
            _ => entries.push(applied.clone()),
        }
    }
    entries
}

impl Sim {
    /// Feeds the checkers with what a drive produced.
    pub(crate) fn check_output(
        &mut self,
        node: usize,
        output: &NodeOutput,
    ) -> Result<(), Violation> {
        let id = self.nodes[node].id;
        if let Some(index) = output.installed_snapshot {
            self.report.snapshots_installed += 1;
            self.checker.on_snapshot_installed(id, index)?;
            self.trace(|| format!("node {id} installed the leader's snapshot at {index}"));
        }
        let sim_node = &self.nodes[node];
        let replica = sim_node.node.as_ref().expect("driven").replica();
        let node_term = replica.term();
        let is_leader = replica.is_leader();
        for entry in log_entries(&output.applied) {
            self.checker.on_applied(id, node_term, &entry)?;
        }
        for applied in &output.applied {
            if let Some(broken) = &applied.model_broken {
                return Err(Violation {
                    kind: FailureKind::ModelInvariant,
                    detail: format!("node {id} after entry {}: {broken}", applied.index),
                });
            }
            if let tandem_core::ApplyOutcome::Unsafe(reason) = &applied.outcome {
                return Err(Violation {
                    kind: FailureKind::ModelInvariant,
                    detail: format!(
                        "node {id} refused entry {} ({:?}): {reason}",
                        applied.index, applied.command
                    ),
                });
            }
            if let Some((kind, nonce)) = raft::decode_context(&applied.context) {
                if kind == CONTEXT_CLIENT && self.proposals.get(&nonce) == Some(&id) {
                    self.proposals.remove(&nonce);
                    self.report.proposals_acknowledged += 1;
                }
            }
            for event in &applied.events {
                if let ModelEvent::PossibleLoss { shard, epoch, .. } = event {
                    self.data_checker.on_loss(shard, *epoch, self.now);
                }
            }
            if !is_leader {
                continue;
            }
            // Count what every node applies once, on the leader.
            for event in &applied.events {
                match event {
                    ModelEvent::NodeLiveness { .. } => self.report.liveness_changes += 1,
                    ModelEvent::RoleChanged {
                        from: Some(Role::Standby),
                        to: Some(Role::Active),
                        ..
                    } => self.report.promotions += 1,
                    ModelEvent::UnitFaulted { record, .. } => {
                        self.report.unit_faults_handled += 1;
                        self.report.ladder_levels[record.level as usize] += 1;
                    }
                    ModelEvent::HandoverEnded { moved: true, .. } => self.report.handovers += 1,
                    ModelEvent::UnitRelocated { .. } => self.report.relocations += 1,
                    ModelEvent::PossibleLoss { .. } => self.report.possible_losses += 1,
                    _ => {}
                }
                if self.config.verbose {
                    let index = applied.index;
                    self.trace(|| format!("index {index}: {event}"));
                }
            }
        }
        for (request, answer) in &output.admin {
            if *request >= ADMIN_ID_BASE {
                match answer {
                    Ok(_) => self.report.admin_done += 1,
                    Err(_) => self.report.admin_refused += 1,
                }
            }
        }
        if self.config.verbose {
            for event in &output.events {
                if matches!(event, NodeEvent::Observed { .. }) {
                    self.trace(|| format!("node {id} observed: {event}"));
                }
            }
        }
        let replica = self.nodes[node].node.as_ref().expect("driven").replica();
        self.checker.on_round(id, replica)?;
        let snapshot_index = replica.snapshot_index();
        if snapshot_index != self.nodes[node].snapshot_index {
            if output.installed_snapshot != Some(snapshot_index) {
                self.report.snapshots_taken += 1;
            }
            self.nodes[node].snapshot_index = snapshot_index;
        }
        Ok(())
    }
}
