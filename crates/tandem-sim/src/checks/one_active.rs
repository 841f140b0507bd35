//! Invariant: at most one unit acts ACTIVE for a shard of a single-ACTIVE model at any
//! instant, judged by what the units believe on their own clocks (their leases).

use std::collections::BTreeMap;

use tandem_core::{ShardName, UnitName};

use crate::checks::Violation;
use crate::sim::Sim;
use crate::FailureKind;

impl Sim {
    /// At most one unit acts for a shard of a single-ACTIVE model at any instant, judged by
    /// what the units believe (on their own clocks).
    pub(crate) fn check_one_active(&self) -> Result<(), Violation> {
        let mut acting: BTreeMap<&ShardName, Vec<(u32, &UnitName)>> = BTreeMap::new();
        for (pid, process) in &self.units.processes {
            let local_now = self.nodes[process.node].local_now(self.now);
            for (shard, _, _) in process.belief.roles() {
                if process.belief.is_acting(shard, local_now) {
                    acting.entry(shard).or_default().push((*pid, &process.unit));
                }
            }
        }
        for (shard, units) in acting {
            let multi = self
                .topology
                .services
                .iter()
                .find(|service| service.shards.contains(shard))
                .is_some_and(|service| service.model.multi_active());
            if !multi && units.len() > 1 {
                return Err(Violation {
                    kind: FailureKind::TwoActives,
                    detail: format!(
                        "shard {shard} has {} units acting ACTIVE at once: {}",
                        units.len(),
                        units
                            .iter()
                            .map(|(pid, unit)| {
                                let process = &self.units.processes[pid];
                                format!(
                                    "{unit} (pid {pid}, node {}, belief {:?})",
                                    process.node + 1,
                                    process.belief
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        Ok(())
    }
}
