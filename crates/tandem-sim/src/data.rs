//! The data plane in the simulation: each node's replica files (which outlive crashes and can
//! be torn), the checker of the data invariants, and what a simulated unit remembers about its
//! data requests.
//!
//! Invariants checked:
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

use std::collections::{BTreeMap, BTreeSet};

use tandem_core::data::{PersistAction, ReplicaId, ShardReplica, Write};
use tandem_core::ShardName;
use tandem_node::replica_file::{self, Recovered};
use tandem_node::{FileOp, Installed, Synced};

use crate::checks::{violation, Violation};
use crate::rng::Rng;
use crate::workload::stream::applied_key;
use crate::FailureKind;

/// One replica file: its bytes and how much of them is synced, its stamp (rewritten in
/// place) as of the last sync, and what the writer knows of it (as tandemd's `ReplicaFile`):
/// the generation of its content and the version its records reach.
#[derive(Debug, Clone, Default)]
struct SimFile {
    bytes: Vec<u8>,
    synced: usize,
    stamp_at: usize,
    stamp_synced: Vec<u8>,
    generation: u64,
    written: u64,
}

impl SimFile {
    /// A file holding `bytes`, all of them synced.
    fn new(bytes: Vec<u8>, stamp_at: usize, generation: u64, written: u64) -> Self {
        let stamp_synced = bytes[stamp_at..stamp_at + replica_file::STAMP_LEN].to_vec();
        Self {
            synced: bytes.len(),
            bytes,
            stamp_at,
            stamp_synced,
            generation,
            written,
        }
    }

    fn stamp_range(&self) -> std::ops::Range<usize> {
        self.stamp_at..self.stamp_at + replica_file::STAMP_LEN
    }

    fn is_synced(&self) -> bool {
        self.synced == self.bytes.len() && self.bytes[self.stamp_range()] == self.stamp_synced
    }

    fn sync(&mut self) {
        self.synced = self.bytes.len();
        self.stamp_synced = self.bytes[self.stamp_range()].to_vec();
    }
}

/// A compacted file written but not yet put in place.
#[derive(Debug, Clone)]
struct Install {
    /// The file it replaces: what a restart reads until the install.
    old: SimFile,
    /// The compaction's generation and version, for the report.
    generation: u64,
    version: u64,
}

/// A node's replica files, written as tandemd's writer and sync threads write them: each
/// [`FileOp`] the node's books queue is carried out at once (the writer), appends stay
/// unsynced until a sync round (the sync thread), which first installs the compacted files
/// written since (unless their install report comes late), then syncs every file and reports
/// what is durable. A crash keeps, loses or tears what was not synced, and a compacted file
/// not yet installed is lost whole (the old one stays).
#[derive(Debug, Clone, Default)]
pub struct ReplicaFiles {
    /// The file each replica's writes go to (a compacted one not yet installed, if any).
    files: BTreeMap<ReplicaId, SimFile>,
    /// Compactions written and not yet installed.
    installs: BTreeMap<ReplicaId, Install>,
    /// Installs of replicas removed meanwhile, still to report (as not installed).
    orphaned: Vec<Installed>,
}

impl ReplicaFiles {
    /// Carries out one file operation.
    pub fn run(&mut self, op: FileOp) {
        match op {
            FileOp::Stamp {
                id,
                generation,
                stamp,
            } => {
                // As the daemon's writer does: the records written so far make `stamp`.
                if let Some(file) = self.files.get_mut(&id) {
                    if file.generation == generation {
                        let bytes = replica_file::encode_stamp(&stamp, file.bytes.len());
                        let range = file.stamp_range();
                        file.bytes[range].copy_from_slice(&bytes);
                    }
                }
            }
            FileOp::Persist {
                id,
                generation,
                action,
            } => {
                let Some(record) = replica_file::record(&action) else {
                    self.files.remove(&id);
                    if let Some(install) = self.installs.remove(&id) {
                        self.orphaned.push(Installed {
                            id,
                            generation: install.generation,
                            version: install.version,
                            installed: false,
                        });
                    }
                    return;
                };
                // A new file's header is synced when it is created, as tandemd does.
                let file = self.files.entry(id.clone()).or_insert_with(|| {
                    SimFile::new(
                        replica_file::header(&id.shard, &id.unit),
                        replica_file::stamp_at(&id.shard, &id.unit),
                        generation,
                        0,
                    )
                });
                file.generation = generation;
                match &action {
                    PersistAction::Op(op) => file.written = op.seq,
                    PersistAction::Reset(snapshot) => file.written = snapshot.version,
                    _ => {}
                }
                file.bytes.extend(record);
            }
            FileOp::Compact {
                id,
                generation,
                image,
                version,
            } => {
                let mut compacted = SimFile::new(
                    image.encode(),
                    replica_file::stamp_at(&id.shard, &id.unit),
                    generation,
                    version,
                );
                compacted.synced = 0;
                if let Some(old) = self.files.insert(id.clone(), compacted) {
                    let previous = self.installs.insert(
                        id,
                        Install {
                            old,
                            generation,
                            version,
                        },
                    );
                    assert!(previous.is_none(), "two compactions of a file under way");
                }
            }
        }
    }

    /// Compacted files written and not yet installed (a crash now loses them whole).
    pub fn pending_installs(&self) -> usize {
        self.installs.len()
    }

    /// Whether some write is not durable yet.
    pub fn has_unsynced(&self) -> bool {
        !self.installs.is_empty()
            || !self.orphaned.is_empty()
            || self.files.values().any(|file| !file.is_synced())
    }

    /// A sync round: the compacted files written since the last one are installed (synced,
    /// renamed over the old file), except those `late` picks, whose install is reported in a
    /// later round; then every file is synced. Returns the installs, then the syncs, as the
    /// sync thread reports them.
    pub fn sync(&mut self, mut late: impl FnMut() -> bool) -> (Vec<Installed>, Vec<Synced>) {
        // What was written since the last round is reported synced even when an install
        // made it durable first (tandemd's writer handed its msync over all the same).
        let written: BTreeSet<ReplicaId> = self
            .files
            .iter()
            .filter(|(_, file)| !file.is_synced())
            .map(|(id, _)| id.clone())
            .collect();
        let mut installed = std::mem::take(&mut self.orphaned);
        let ids: Vec<ReplicaId> = self.installs.keys().cloned().collect();
        for id in ids {
            if late() {
                continue;
            }
            let install = self.installs.remove(&id).expect("listed");
            let file = self
                .files
                .get_mut(&id)
                .expect("a compacted file is in the books");
            file.sync();
            installed.push(Installed {
                id,
                generation: install.generation,
                version: install.version,
                installed: true,
            });
        }
        let mut synced = Vec::new();
        for (id, file) in &mut self.files {
            if file.is_synced() && !written.contains(id) {
                continue;
            }
            file.sync();
            synced.push(Synced {
                id: id.clone(),
                generation: file.generation,
                version: file.written,
                len: file.bytes.len(),
            });
        }
        (installed, synced)
    }

    /// A crash: a compacted file not yet installed is lost and the old file stays; each
    /// file's unsynced tail is kept, lost or torn at a random byte, and a stamp rewritten
    /// since the last sync is kept, lost or torn, apart from the tail (the kernel writes pages
    /// back in any order). Returns how many were torn.
    pub fn crash(&mut self, rng: &mut Rng, stamp_rng: &mut Rng) -> u64 {
        for (id, install) in std::mem::take(&mut self.installs) {
            self.files.insert(id, install.old);
        }
        self.orphaned.clear();
        let mut torn = 0;
        for file in self.files.values_mut() {
            let range = file.stamp_range();
            if file.bytes[range.clone()] != file.stamp_synced {
                match stamp_rng.below(3) {
                    0 => {}
                    1 => file.bytes[range].copy_from_slice(&file.stamp_synced),
                    _ => {
                        let at =
                            range.start + stamp_rng.below(replica_file::STAMP_LEN as u64) as usize;
                        file.bytes[at..range.end]
                            .copy_from_slice(&file.stamp_synced[at - range.start..]);
                    }
                }
                file.stamp_synced = file.bytes[file.stamp_range()].to_vec();
            }
            let unsynced = file.bytes.len() - file.synced;
            if unsynced == 0 {
                continue;
            }
            let keep = match rng.below(3) {
                0 => 0,
                1 => unsynced,
                _ => {
                    torn += 1;
                    rng.below(unsynced as u64) as usize
                }
            };
            file.bytes.truncate(file.synced + keep);
            file.synced = file.bytes.len();
        }
        torn
    }

    /// Reads every file back (a restart), as tandemd's `replicas::open` does: a file that is
    /// not a replica is dropped, a torn tail is cut, and each file gets a distinct generation.
    /// Returns the replicas with their generation and length, and how many files had a tail
    /// cut. A file whose records replay to another replica than its stamp says is a
    /// violation: the daemon would refuse it, and the simulation's files are only ever written
    /// as the daemon writes them.
    pub fn recover(&mut self) -> Result<(Vec<RecoveredFile>, u64), Violation> {
        assert!(self.installs.is_empty(), "recovering after a crash");
        let mut replicas = Vec::new();
        let mut cut = 0;
        let ids: Vec<ReplicaId> = self.files.keys().cloned().collect();
        for id in ids {
            let file = self.files.get_mut(&id).expect("listed");
            match replica_file::recover(&file.bytes, &id.shard, &id.unit) {
                Ok(recovered) => {
                    if recovered.valid_len < file.bytes.len() {
                        cut += 1;
                        file.bytes.truncate(recovered.valid_len);
                        file.synced = file.bytes.len();
                    }
                    file.generation = replicas.len() as u64;
                    file.written = recovered.replica.version();
                    replicas.push(RecoveredFile {
                        generation: file.generation,
                        len: file.bytes.len(),
                        id,
                        recovered,
                    });
                }
                Err(error) if error.reason.contains("stamp says") => {
                    return Err(violation(FailureKind::DigestMismatch, error.to_string()));
                }
                Err(_) => {
                    self.files.remove(&id);
                    cut += 1;
                }
            }
        }
        Ok((replicas, cut))
    }
}

/// A replica file read back at a restart.
pub struct RecoveredFile {
    /// The replica.
    pub id: ReplicaId,
    /// What the file holds.
    pub recovered: Recovered,
    /// The generation it was given.
    pub generation: u64,
    /// Its length in bytes.
    pub len: usize,
}

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
