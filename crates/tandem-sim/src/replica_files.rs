//! Each node's replica files, as the simulation keeps them: written as tandemd's writer and
//! sync threads write them, they outlive crashes, which keep, lose or tear what was not
//! synced, and are read back at a restart.

use std::collections::{BTreeMap, BTreeSet};

use tandem_core::data::ReplicaId;
use tandem_node::replica_file::{self, Recovered};
use tandem_node::{FileOp, Installed, Synced};

use crate::checks::{violation, Violation};
use crate::rng::Rng;
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
    /// Installs of a compacted file whose replica started over after the compaction.
    pub installs_started_over: u64,
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
                if let Some(version) = action.version() {
                    file.written = version;
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
            if file.generation != install.generation {
                // The replica started over (a reset) after the compaction: the install puts
                // the new content in place, and its report must not count the old version.
                self.installs_started_over += 1;
            }
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
