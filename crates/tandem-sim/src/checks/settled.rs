//! Invariant (liveness): within the liveness bound after the faults end, a probe proposed
//! through the leader is applied on every node, every shard has a unit acting ACTIVE, and the
//! data plane settles (every ACTIVE consumed its stream, every STANDBY is in sync with the
//! same digest, every accepted message is applied). Reaching this ends the run.

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

    /// Ends the run once some probe is applied on every node and every shard is settled
    /// ([`Sim::shard_data`]).
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
        // The same answer as checking every shard, at the cost of one while the shard last
        // found unsettled stays so (a run at scale has thousands of shards and millions of
        // events). A digest the full walk would have found wrong on another shard meanwhile
        // is found by the walk that ends the run.
        if let Some(witness) = self.unsettled_witness.clone() {
            if !self.shard_settled(leader, &witness)? {
                return Ok(());
            }
        }
        let state = self.nodes[leader]
            .node
            .as_ref()
            .expect("leader runs")
            .state();
        if state.shards.is_empty() {
            return Ok(());
        }
        let names: Vec<ShardName> = state.shards.keys().cloned().collect();
        let mut primaries = Vec::new();
        for name in names {
            match self.shard_data(leader, &name)? {
                Settled::No => {
                    self.unsettled_witness = Some(name);
                    return Ok(());
                }
                Settled::Yes(primary) => primaries.extend(primary.map(|p| (name, p))),
            }
        }
        self.unsettled_witness = None;
        for (shard, primary) in primaries {
            self.data_checker.check_final(&shard, &primary)?;
        }
        self.report.data_checks = self.data_checker.checks;
        let calm_since = self.calm_since.expect("after the faults");
        self.report.service_recovery_time_us = self.now - calm_since;
        self.done = true;
        self.trace(|| "every shard has an ACTIVE unit and the data plane is quiet".to_owned());
        Ok(())
    }

    fn shard_settled(&self, leader: usize, shard: &ShardName) -> Result<bool, Violation> {
        Ok(matches!(self.shard_data(leader, shard)?, Settled::Yes(_)))
    }

    /// Whether `shard` is settled, as the leader's committed state says: a unit acting
    /// ACTIVE for it believes so, and for a data shard, its ACTIVE consumed its stream and
    /// every STANDBY is in sync at the ACTIVE's version with the same digest (with the
    /// ACTIVE's replica, for the final checks). Checks the digests on the way.
    fn shard_data(&self, leader: usize, name: &ShardName) -> Result<Settled, Violation> {
        let state = self.nodes[leader]
            .node
            .as_ref()
            .expect("leader runs")
            .state();
        let Some(shard) = state.shards.get(name) else {
            return Ok(Settled::No);
        };
        let has_active = shard.units_in(Role::Active).any(|unit| {
            self.units.processes.values().any(|process| {
                &process.unit == unit
                    && process
                        .belief
                        .is_acting(&shard.name, self.nodes[process.node].local_now(self.now))
            })
        });
        if !has_active {
            return Ok(Settled::No);
        }
        if !self.is_data_shard(name) {
            return Ok(Settled::Yes(None));
        }
        let Some(active) = shard.units_in(Role::Active).next() else {
            return Ok(Settled::No);
        };
        let node_of = |unit: &UnitName| state.units.get(unit).map(|record| record.node.0);
        let replica_of = |node: Option<u64>, unit: &UnitName| {
            let node = node? as usize - 1;
            let n = self.nodes[node].node.as_ref()?;
            n.checkpoint_replica(&ReplicaId {
                shard: name.clone(),
                unit: unit.clone(),
            })
        };
        let Some(primary) = replica_of(node_of(active), active) else {
            return Ok(Settled::No);
        };
        if primary.digest() != primary.compute_digest() {
            return Err(Violation {
                kind: FailureKind::DigestMismatch,
                detail: format!(
                    "shard {name}: the ACTIVE {active}'s replica keeps digest {} but has {}",
                    primary.digest(),
                    primary.compute_digest()
                ),
            });
        }
        if primary.pending_count() > 0 {
            return Ok(Settled::No);
        }
        for standby in shard.units_in(Role::Standby) {
            let Some(replica) = replica_of(node_of(standby), standby) else {
                return Ok(Settled::No);
            };
            if !shard.in_sync.contains(standby) || replica.version() != primary.version() {
                return Ok(Settled::No);
            }
            if replica.digest() != primary.digest() || replica.digest() != replica.compute_digest()
            {
                return Err(Violation {
                    kind: FailureKind::DigestMismatch,
                    detail: format!(
                        "shard {name}: STANDBY {standby} (in sync) at version {} has digest {} \
                         (computed {}), the ACTIVE {active} has {}",
                        replica.version(),
                        replica.digest(),
                        replica.compute_digest(),
                        primary.digest()
                    ),
                });
            }
        }
        Ok(Settled::Yes(Some(primary.clone())))
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

/// Whether a shard is settled, with its ACTIVE's replica for a data shard.
enum Settled {
    No,
    Yes(Option<tandem_core::data::ShardReplica>),
}
