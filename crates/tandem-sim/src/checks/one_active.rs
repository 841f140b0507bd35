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
    ///
    /// A unit starts acting for a shard only when its belief about the shard changes (a hook)
    /// or its lease comes back; time only ends acting. So only the shards noted since the last
    /// check ([`Sim::note_belief`], [`Sim::note_acting`]) are looked at: the check costs what
    /// changed, whatever the number of shards.
    pub(crate) fn check_one_active(&mut self) -> Result<(), Violation> {
        if self.acting_dirty.is_empty() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.acting_dirty);
        let mut acting: BTreeMap<&ShardName, Vec<(u32, &UnitName)>> = BTreeMap::new();
        for (pid, process) in &self.units.processes {
            let local_now = self.nodes[process.node].local_now(self.now);
            for shard in &dirty {
                if process.belief.is_acting(shard, local_now) {
                    acting.entry(shard).or_default().push((*pid, &process.unit));
                }
            }
        }
        for (shard, units) in acting {
            let multi = self.multi_active.contains(shard);
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

    /// A unit's belief about the shard `command` names changed.
    pub(crate) fn note_belief(&mut self, command: &tandem_core::UnitCommand) {
        use tandem_core::UnitCommand;
        for part in command.parts() {
            match part {
                UnitCommand::Assign { shard, .. }
                | UnitCommand::Quiesce { shard, .. }
                | UnitCommand::Remove { shard } => {
                    self.acting_dirty.insert(shard.clone());
                }
                _ => {}
            }
        }
    }

    /// A unit may act again for these shards (its lease came back).
    pub(crate) fn note_acting<'a>(&mut self, shards: impl IntoIterator<Item = &'a ShardName>) {
        self.acting_dirty.extend(shards.into_iter().cloned());
    }
}
