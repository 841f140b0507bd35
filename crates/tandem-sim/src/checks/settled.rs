//! Invariant (liveness): within the liveness bound after the faults end, a probe proposed
//! through the leader is applied on every node, every shard has a unit acting ACTIVE, and the
//! data plane settles (every ACTIVE consumed its stream, every STANDBY is in sync with the
//! same digest, every accepted message is applied). Reaching this ends the run.

use tandem_core::cluster::ShardRecord;
use tandem_core::data::ReplicaId;
use tandem_core::{Command, Role, ShardName, UnitName};

use crate::checks::raft::{self, CONTEXT_PROBE};
use crate::checks::Violation;
use crate::node::Status;
use crate::sim::{Event, Sim};
use crate::FailureKind;

/// Nonces of the liveness probes start here, far from the clients' nonces.
const PROBE_NONCE_BASE: u64 = 1 << 62;

impl Sim {
    /// After the faults: proposes a liveness probe through the leader, again every 500 ms until
    /// one is applied everywhere.
    pub(crate) fn on_probe(&mut self) -> Result<(), Violation> {
        if self.probe_done {
            return Ok(());
        }
        let Some(leader) = self.leader() else {
            self.schedule(50_000, Event::Probe);
            return Ok(());
        };
        let nonce = PROBE_NONCE_BASE + self.probes.len() as u64;
        let proposed = self.nodes[leader].node().propose_raw(
            &Command::Noop { nonce },
            raft::encode_context(CONTEXT_PROBE, nonce),
        );
        if proposed.is_ok() {
            self.probes.push(nonce);
            let id = self.nodes[leader].id;
            self.trace(|| format!("probe {nonce} proposed on leader {id}"));
        }
        // A probe can be lost with a leader change; propose a fresh one now and then.
        self.schedule(500_000, Event::Probe);
        self.drive(leader)
    }

    /// Ends the run once some probe is applied on every node and every shard has a unit
    /// acting ACTIVE for it, as the leader's committed state says and the unit believes.
    pub(crate) fn check_done(&mut self) -> Result<(), Violation> {
        if !self.probe_done {
            for nonce in &self.probes {
                let Some(index) = self.checker.nonce_index(*nonce) else {
                    continue;
                };
                let everywhere = self.nodes.iter().all(|node| {
                    node.status == Status::Running
                        && node
                            .node
                            .as_ref()
                            .is_some_and(|n| n.replica().applied_index() >= index)
                });
                if everywhere {
                    self.probe_done = true;
                    let calm_since = self.calm_since.expect("probes run after the faults");
                    self.report.recovery_time_us = self.now - calm_since;
                    self.trace(|| format!("probe {nonce} applied on every node at index {index}"));
                    break;
                }
            }
        }
        if !self.probe_done {
            return Ok(());
        }
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let state = self.nodes[leader]
            .node
            .as_ref()
            .expect("leader runs")
            .state();
        let has_active = |shard: &ShardRecord| {
            shard.units_in(Role::Active).any(|unit| {
                self.units.processes.values().any(|process| {
                    &process.unit == unit
                        && process
                            .belief
                            .is_acting(&shard.name, self.nodes[process.node].local_now(self.now))
                })
            })
        };
        // The same answer as checking every shard, at the cost of one while the witness lacks
        // its ACTIVE (a run at scale has tens of thousands of shards and millions of events).
        if let Some(witness) = self
            .unsettled_witness
            .as_ref()
            .and_then(|w| state.shards.get(w))
        {
            if !has_active(witness) {
                return Ok(());
            }
        }
        let unsettled = state.shards.values().find(|shard| !has_active(shard));
        self.unsettled_witness = unsettled.map(|shard| shard.name.clone());
        let all_active = unsettled.is_none();
        if all_active && !state.shards.is_empty() && self.data_settled(leader)? {
            let calm_since = self.calm_since.expect("after the faults");
            self.report.service_recovery_time_us = self.now - calm_since;
            self.done = true;
            self.trace(|| "every shard has an ACTIVE unit".to_owned());
        }
        Ok(())
    }

    /// Whether the data plane is quiescent: every shard's ACTIVE consumed its stream, every
    /// STANDBY is in sync at the ACTIVE's version with the same digest. Checks the digests
    /// and, once quiescent, that every accepted message was applied.
    fn data_settled(&mut self, leader: usize) -> Result<bool, Violation> {
        let state = self.nodes[leader]
            .node
            .as_ref()
            .expect("leader runs")
            .state();
        let mut shards = Vec::new();
        for shard in state.shards.values() {
            if !self.is_data_shard(&shard.name) {
                continue;
            }
            let Some(active) = shard.units_in(Role::Active).next() else {
                return Ok(false);
            };
            let node_of = |unit: &UnitName| state.units.get(unit).map(|record| record.node.0);
            let standbys: Vec<(UnitName, Option<u64>, bool)> = shard
                .units_in(Role::Standby)
                .map(|unit| (unit.clone(), node_of(unit), shard.in_sync.contains(unit)))
                .collect();
            shards.push((
                shard.name.clone(),
                active.clone(),
                node_of(active),
                standbys,
            ));
        }
        let replica_of = |sim: &Self, node: Option<u64>, shard: &ShardName, unit: &UnitName| {
            let node = node? as usize - 1;
            let n = sim.nodes[node].node.as_ref()?;
            n.checkpoint_replica(&ReplicaId {
                shard: shard.clone(),
                unit: unit.clone(),
            })
            .cloned()
        };
        let mut finals = Vec::new();
        for (shard, active, active_node, standbys) in &shards {
            let Some(primary) = replica_of(self, *active_node, shard, active) else {
                return Ok(false);
            };
            if primary.digest() != primary.compute_digest() {
                return Err(Violation {
                    kind: FailureKind::DigestMismatch,
                    detail: format!(
                        "shard {shard}: the ACTIVE {active}'s replica keeps digest {} but has {}",
                        primary.digest(),
                        primary.compute_digest()
                    ),
                });
            }
            if primary.pending_count() > 0 {
                return Ok(false);
            }
            for (standby, node, in_sync) in standbys {
                let Some(replica) = replica_of(self, *node, shard, standby) else {
                    return Ok(false);
                };
                if !in_sync || replica.version() != primary.version() {
                    return Ok(false);
                }
                if replica.digest() != primary.digest()
                    || replica.digest() != replica.compute_digest()
                {
                    return Err(Violation {
                        kind: FailureKind::DigestMismatch,
                        detail: format!(
                            "shard {shard}: STANDBY {standby} (in sync) at version {} has digest \
                             {} (computed {}), the ACTIVE {active} has {}",
                            replica.version(),
                            replica.digest(),
                            replica.compute_digest(),
                            primary.digest()
                        ),
                    });
                }
            }
            finals.push((shard.clone(), primary));
        }
        for (shard, primary) in finals {
            self.data_checker.check_final(&shard, &primary)?;
        }
        self.report.data_checks = self.data_checker.checks;
        Ok(true)
    }

    /// The liveness bound passed before the run's goals after the faults were met.
    pub(crate) fn deadline_passed(&self) -> Violation {
        Violation {
            kind: FailureKind::Liveness,
            detail: format!(
                "within {:?} after the faults ended, {}\n{}",
                self.config.liveness_bound,
                if self.probe_done {
                    format!(
                        "not every shard got an ACTIVE unit, or the data plane did not \
                         settle:\n{}",
                        self.data_dump()
                    )
                } else {
                    "no probe was applied on every node".to_owned()
                },
                self.dump()
            ),
        }
    }
}
