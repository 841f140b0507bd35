//! The client and operator workload: clients propose `Noop`s with unique nonces (through
//! the leader, after one redirect), and now and then drive the unit and stream workloads; a
//! simulated operator switches over, locks, unlocks and restarts units during the faults, and
//! puts back in service whatever is left out after them.

use std::time::Duration;

use tandem_core::{
    AdminOp, AdminState, AdminTarget, Command, ShardName, SwitchoverTarget, UnitName,
};
use tandem_node::AdminAction;

use crate::checks::raft::{self, CONTEXT_CLIENT};
use crate::checks::Violation;
use crate::node::Status;
use crate::sim::{Event, Sim};

/// Admin request ids of the simulated operator start here.
pub(crate) const ADMIN_ID_BASE: u64 = 1 << 40;

impl Sim {
    /// A client proposes a `Noop` (during the faults, now and then the operator acts and the unit
    /// and stream workloads run first).
    pub(crate) fn on_client(&mut self) -> Result<(), Violation> {
        if self.done {
            // The idle tail: nothing but the cluster's own work.
            return Ok(());
        }
        let gap = self.workload.between(1_000, self.params.client_gap_max_us);
        self.schedule(gap, Event::Client);
        if self.params.operator && self.faults_active && self.workload.chance(15_000) {
            self.operator_action()?;
        }
        if self.faults_active {
            if self.workload.chance(400_000) {
                self.unit_writes();
            }
            // Bursts of commits, which a node with batched intake merges into one op.
            if self.params.batched_intake && self.intake_rng.chance(300_000) {
                for _ in 0..self.intake_rng.between(2, 6) {
                    self.unit_writes();
                }
            }
            if self.workload.chance(300_000) {
                self.offer_message()?;
            }
        }
        // The client asks a random node; a follower that knows the leader redirects it once.
        let mut target = self.workload.pick(self.nodes.len());
        let Some(node) = self.running_node(target) else {
            return Ok(());
        };
        if !node.is_leader() {
            match node.replica().leader_id() {
                Some(leader) => target = (leader - 1) as usize,
                None => return Ok(()),
            }
        }
        let nonce = self.next_nonce;
        if self.nodes[target].status != Status::Running {
            return Ok(());
        }
        let Some(node) = self.nodes[target].node.as_mut() else {
            return Ok(());
        };
        // `NotLeader` (a stale hint) and dropped proposals are normal; the client moves on.
        if node
            .propose_raw(
                &Command::Noop { nonce },
                raft::encode_context(CONTEXT_CLIENT, nonce),
            )
            .is_ok()
        {
            self.next_nonce += 1;
            self.report.proposals += 1;
            self.proposals.insert(nonce, self.nodes[target].id);
            // Drive now, so the proposal goes out without waiting for the next tick.
            return self.drive(target);
        }
        Ok(())
    }

    /// A simulated operator: switchovers, locks and unlocks, restarts.
    fn operator_action(&mut self) -> Result<(), Violation> {
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let units: Vec<UnitName> = self
            .topology
            .services
            .iter()
            .flat_map(|service| service.units.iter().map(|unit| unit.name.clone()))
            .collect();
        let shards: Vec<ShardName> = self
            .topology
            .services
            .iter()
            .filter(|service| service.model.has_standby())
            .flat_map(|service| service.shards.iter().cloned())
            .collect();
        let state = self.nodes[leader]
            .node
            .as_ref()
            .expect("leader runs")
            .state();
        let action = match self.workload.below(4) {
            0 | 1 => AdminAction::Switchover(SwitchoverTarget::Shard(
                shards[self.workload.pick(shards.len())].clone(),
            )),
            2 => {
                let unit = units[self.workload.pick(units.len())].clone();
                let op = match state.units.get(&unit).map(|record| record.admin) {
                    Some(AdminState::Unlocked) => {
                        if self.workload.chance(500_000) {
                            AdminOp::Lock
                        } else {
                            AdminOp::Shutdown
                        }
                    }
                    _ => AdminOp::Unlock,
                };
                AdminAction::Admin {
                    target: AdminTarget::Unit(unit),
                    op,
                }
            }
            _ => AdminAction::Admin {
                target: AdminTarget::Unit(units[self.workload.pick(units.len())].clone()),
                op: AdminOp::Restart,
            },
        };
        self.admin(leader, action)
    }

    /// Hands an admin request to the leader, with a 5 s deadline.
    fn admin(&mut self, leader: usize, action: AdminAction) -> Result<(), Violation> {
        let id = self.next_admin;
        self.next_admin += 1;
        let local_now = self.nodes[leader].local_now(self.now);
        let deadline = local_now + Duration::from_secs(5);
        self.trace(|| format!("operator: {action:?}"));
        match self.nodes[leader]
            .node()
            .admin(local_now, id, action, deadline)
        {
            Ok(()) => self.report.admin_requests += 1,
            Err(refusal) => {
                self.report.admin_refused += 1;
                self.trace(|| format!("operator refused: {}", refusal.message));
            }
        }
        self.drive(leader)
    }

    /// The operator puts back in service what the workload or the ladder took out.
    pub(crate) fn on_tidy(&mut self) -> Result<(), Violation> {
        if self.done {
            return Ok(());
        }
        self.schedule(300_000, Event::Tidy);
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let state = self.nodes[leader]
            .node
            .as_ref()
            .expect("leader runs")
            .state();
        let mut actions = Vec::new();
        for unit in state.units.values() {
            let target = AdminTarget::Unit(unit.name.clone());
            match unit.admin {
                AdminState::Unlocked => {}
                AdminState::LockedInstantiation => actions.push(AdminAction::Admin {
                    target: target.clone(),
                    op: AdminOp::UnlockInstantiation,
                }),
                AdminState::Locked | AdminState::ShuttingDown => actions.push(AdminAction::Admin {
                    target: target.clone(),
                    op: AdminOp::Unlock,
                }),
            }
            if !unit.enabled {
                actions.push(AdminAction::Admin {
                    target,
                    op: AdminOp::Repair,
                });
            }
        }
        for action in actions {
            self.admin(leader, action)?;
        }
        Ok(())
    }
}
