//! The data checker: the checkpoint and stream invariants, held against what the units were
//! acknowledged and what the cluster reported (possible losses).
//!
//! - **No acknowledged sync write is lost**: when a unit starts acting ACTIVE for a shard, its
//!   replica holds the newest acknowledged sync write of every key (same value at the same
//!   version, or a newer version), unless the cluster reported a possible loss since.
//! - **Every accepted stream message is applied exactly once, in order**: a message is
//!   accepted once an ACTIVE got it; each delivery comes in stream order, a message already
//!   applied (its mark is in the replica) is never delivered again, and at the end every
//!   accepted message is applied in the final ACTIVE's replica, unless a possible loss was
//!   reported after it was accepted.
//! - **Replicas agree at quiescent points**: at the end, every STANDBY is in sync, at the
//!   ACTIVE's version, with the same digest; each digest equals one computed from scratch.

use std::collections::BTreeMap;

use tandem_core::data::{ShardReplica, Write};
use tandem_core::ShardName;

use crate::checks::{violation, Violation};
use crate::workload::stream::applied_key;
use crate::FailureKind;

/// What the checker knows of one key.
#[derive(Debug, Clone, Default)]
struct KeyState {
    /// Issue number of the newest write issued.
    last_issued: u64,
    /// The newest acknowledged sync write: (value, seq, epoch, issue number).
    acked: Option<(Option<Vec<u8>>, u64, u64, u64)>,
}

/// The checker of the data invariants.
#[derive(Debug, Default)]
pub struct DataChecker {
    /// Per shard and key: the newest acknowledged sync write, as (value, seq, epoch, issue
    /// number), and the issue number of the newest write issued. A write issued after the
    /// acknowledged one may or may not have been applied, so the key is checked only when
    /// the acknowledged write is also the last one issued.
    acked: BTreeMap<ShardName, BTreeMap<Vec<u8>, KeyState>>,
    /// Writes issued so far.
    issued: u64,
    /// Newest epoch at which the cluster reported a possible loss, per shard, and when.
    losses: BTreeMap<ShardName, (u64, u64)>,
    /// Messages accepted (delivered to an ACTIVE): shard → id → when first delivered.
    delivered: BTreeMap<ShardName, BTreeMap<u64, u64>>,
    /// Checks made, for the report.
    pub checks: u64,
}

impl DataChecker {
    /// The cluster reported a possible loss on `shard` at `epoch` (simulated time `now`).
    pub fn on_loss(&mut self, shard: &ShardName, epoch: u64, now: u64) {
        let entry = self.losses.entry(shard.clone()).or_insert((0, 0));
        if epoch > entry.0 {
            *entry = (epoch, now);
        }
    }

    /// Whether the cluster reported a possible loss on `shard` at an epoch after `epoch`.
    pub fn loss_after(&self, shard: &ShardName, epoch: u64) -> bool {
        self.losses
            .get(shard)
            .is_some_and(|(loss_epoch, _)| *loss_epoch > epoch)
    }

    /// A unit issues a commit of `writes`; returns its issue number.
    pub fn on_issued(&mut self, shard: &ShardName, writes: &[Write]) -> u64 {
        self.issued += 1;
        let keys = self.acked.entry(shard.clone()).or_default();
        for write in writes {
            keys.entry(write.key.clone()).or_default().last_issued = self.issued;
        }
        self.issued
    }

    /// The sync commit `issue` of `writes` at `epoch` was acknowledged at `seq`.
    pub fn on_acked(
        &mut self,
        shard: &ShardName,
        epoch: u64,
        seq: u64,
        writes: &[Write],
        issue: u64,
    ) {
        let keys = self.acked.entry(shard.clone()).or_default();
        for write in writes {
            let state = keys.entry(write.key.clone()).or_default();
            // At the same version too: commits that arrive together share one op (the
            // primary merges them), and their answers come in commit order, the last one's
            // write is the one the op leaves.
            let newer = state
                .acked
                .as_ref()
                .is_none_or(|(_, old_seq, old_epoch, _)| (epoch, seq) >= (*old_epoch, *old_seq));
            if newer {
                state.acked = Some((
                    write.value.as_ref().map(|value| value.to_vec()),
                    seq,
                    epoch,
                    issue,
                ));
            }
        }
    }

    /// A commit of `writes` ended with an unknown outcome: it may or may not be kept, so what
    /// was acknowledged before for those keys can no longer be demanded.
    pub fn on_uncertain(&mut self, shard: &ShardName, writes: &[Write]) {
        if let Some(keys) = self.acked.get_mut(shard) {
            for write in writes {
                if let Some(state) = keys.get_mut(&write.key) {
                    state.acked = None;
                }
            }
        }
    }

    /// A unit starts acting ACTIVE for `shard` at `epoch` with `replica`.
    pub fn check_active(
        &mut self,
        shard: &ShardName,
        epoch: u64,
        unit: &str,
        replica: &ShardReplica,
    ) -> Result<(), Violation> {
        let loss_epoch = self.losses.get(shard).map_or(0, |(epoch, _)| *epoch);
        let Some(keys) = self.acked.get(shard) else {
            return Ok(());
        };
        for (key, state) in keys {
            let Some((value, seq, write_epoch, issue)) = &state.acked else {
                continue;
            };
            if *write_epoch < loss_epoch || *write_epoch >= epoch || *issue != state.last_issued {
                continue;
            }
            self.checks += 1;
            let held = replica.get(key);
            let ok = match (held, value) {
                (Some(section), Some(value)) => {
                    section.version > *seq || (section.version == *seq && section.value == *value)
                }
                (Some(section), None) => section.version > *seq,
                // A deleted key that is still deleted; or written and deleted again later.
                (None, None) => true,
                (None, Some(_)) => false,
            };
            if !ok {
                return Err(violation(
                    FailureKind::LostWrite,
                    format!(
                        "shard {shard}: unit {unit} became ACTIVE at epoch {epoch} without the \
                         acknowledged sync write of {:?} (seq {seq}, epoch {write_epoch}); its \
                         replica holds {:?} at version {} (replica version {}, no possible \
                         loss reported since epoch {loss_epoch})",
                        String::from_utf8_lossy(key),
                        held.map(|section| (
                            String::from_utf8_lossy(&section.value).into_owned(),
                            section.version
                        )),
                        held.map_or(0, |section| section.version),
                        replica.version()
                    ) + &format!(
                        "; sections: {}",
                        replica
                            .sections()
                            .take(24)
                            .map(|(key, section)| format!(
                                "{}@{}",
                                String::from_utf8_lossy(key),
                                section.version
                            ))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Message `id` was delivered to an ACTIVE at `now`: it is accepted.
    pub fn on_delivered(&mut self, shard: &ShardName, id: u64, now: u64) {
        self.delivered
            .entry(shard.clone())
            .or_default()
            .entry(id)
            .or_insert(now);
    }

    /// Shards with accepted messages.
    pub fn stream_shards(&self) -> impl Iterator<Item = &ShardName> + '_ {
        self.delivered.keys()
    }

    /// At the end: every accepted message of `shard` is applied in the ACTIVE's `replica`,
    /// unless a possible loss was reported after it was accepted. Returns how many were
    /// waived.
    pub fn check_final(
        &mut self,
        shard: &ShardName,
        replica: &ShardReplica,
    ) -> Result<u64, Violation> {
        let loss_time = self.losses.get(shard).map(|(_, at)| *at);
        let mut waived = 0;
        for (id, delivered_at) in self.delivered.get(shard).into_iter().flatten() {
            self.checks += 1;
            if replica.get(&applied_key(*id)).is_some() {
                continue;
            }
            if loss_time.is_some_and(|at| at >= *delivered_at) {
                waived += 1;
                continue;
            }
            return Err(violation(
                FailureKind::LostMessage,
                format!(
                    "shard {shard}: stream message m{id}, delivered to an ACTIVE at {delivered_at} \
                     us, is not applied in the final ACTIVE's replica (version {}, consumed {}) \
                     and no possible loss was reported after it",
                    replica.version(),
                    replica.consumed()
                ),
            ));
        }
        Ok(waived)
    }
}
