//! The node's replica files: one memory-mapped file per (shard, unit) replica under
//! `<data_dir>/<node>/replicas/`, named `<shard>@<unit>.replica`. What goes into them (header,
//! records, compacted form) and how they are read back is `tandem_node::replica_file`'s; this
//! module only maps, appends, syncs and renames.
//!
//! A file is pre-allocated (zeros) and grown by doubling; records are copied into the map and
//! made durable with `msync` of the dirty range before the data plane hears that a version is
//! on disk. A file that grew well past its replica is replaced by a compacted one (written to
//! a temporary file, synced, renamed over, directory synced), so a crash leaves either file
//! whole.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use memmap2::MmapMut;
use tandem_core::data::{PersistAction, ReplicaId, ShardReplica};
use tandem_core::{ShardName, UnitName};
use tandem_node::replica_file::{self, Recovered};

/// First size of a file.
const INITIAL_CAPACITY: usize = 1024 * 1024;
/// A file is compacted when it holds more than this many times its replica's live bytes...
const COMPACT_RATIO: u64 = 4;
/// ...and at least this many bytes.
const COMPACT_FLOOR: u64 = 4 * 1024 * 1024;
/// File name suffix.
const SUFFIX: &str = ".replica";

/// One replica's file.
struct ReplicaFile {
    path: PathBuf,
    file: File,
    map: MmapMut,
    /// Bytes of records written (the rest of the map is zeros).
    len: usize,
    /// Start of what is written and not yet synced.
    dirty_from: Option<usize>,
    /// Version of the last op or reset written.
    written: u64,
}

impl ReplicaFile {
    fn create(path: PathBuf, initial: &[u8], written: u64) -> anyhow::Result<Self> {
        let capacity = initial.len().next_power_of_two().max(INITIAL_CAPACITY);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("create replica file {}", path.display()))?;
        file.set_len(capacity as u64)
            .with_context(|| format!("size replica file {}", path.display()))?;
        // SAFETY: the file is ours (the data directory is locked by this daemon), opened
        // read-write and sized; nothing else maps or truncates it while the map lives.
        let mut map = unsafe { MmapMut::map_mut(&file) }
            .with_context(|| format!("map replica file {}", path.display()))?;
        map[..initial.len()].copy_from_slice(initial);
        let mut replica = Self {
            path,
            file,
            map,
            len: initial.len(),
            dirty_from: Some(0),
            written,
        };
        replica.sync()?;
        Ok(replica)
    }

    fn open(path: PathBuf, len: usize, written: u64) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open replica file {}", path.display()))?;
        let size = file.metadata()?.len() as usize;
        if size < len.max(INITIAL_CAPACITY) {
            file.set_len(len.max(INITIAL_CAPACITY) as u64)?;
        }
        // SAFETY: as in `create`.
        let mut map = unsafe { MmapMut::map_mut(&file) }
            .with_context(|| format!("map replica file {}", path.display()))?;
        // Whatever follows the valid records (a torn write) is zeroed, so that it can never
        // be read as records later.
        let end = map.len();
        if len < end {
            map[len..end].fill(0);
        }
        map.flush()
            .with_context(|| format!("sync replica file {}", path.display()))?;
        Ok(Self {
            path,
            file,
            map,
            len,
            dirty_from: None,
            written,
        })
    }

    fn append(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let needed = self.len + bytes.len();
        if needed > self.map.len() {
            // Make what is written durable before remapping, then grow by doubling.
            self.sync()?;
            let capacity = needed.next_power_of_two();
            self.file
                .set_len(capacity as u64)
                .with_context(|| format!("grow replica file {}", self.path.display()))?;
            // SAFETY: as in `create`; the old map is dropped by the assignment.
            self.map = unsafe { MmapMut::map_mut(&self.file) }
                .with_context(|| format!("map replica file {}", self.path.display()))?;
        }
        self.map[self.len..needed].copy_from_slice(bytes);
        self.dirty_from.get_or_insert(self.len);
        self.len = needed;
        Ok(())
    }

    fn sync(&mut self) -> anyhow::Result<()> {
        if let Some(from) = self.dirty_from.take() {
            // msync works on pages: start at the page holding `from`.
            let page = page_size();
            let start = from / page * page;
            self.map
                .flush_range(start, self.len - start)
                .with_context(|| format!("sync replica file {}", self.path.display()))?;
        }
        Ok(())
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety conditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(4096)
}

/// The node's replica files.
pub struct ReplicaStore {
    dir: PathBuf,
    files: BTreeMap<ReplicaId, ReplicaFile>,
}

/// What opening the store found.
pub struct Opened {
    /// The store.
    pub store: ReplicaStore,
    /// Each replica read back.
    pub replicas: Vec<(ReplicaId, Recovered)>,
}

fn file_name(id: &ReplicaId) -> String {
    format!("{}@{}{SUFFIX}", id.shard, id.unit)
}

fn parse_name(name: &str) -> Option<ReplicaId> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (shard, unit) = stem.split_once('@')?;
    (!shard.is_empty() && !unit.is_empty()).then(|| ReplicaId {
        shard: ShardName(shard.to_owned()),
        unit: UnitName(unit.to_owned()),
    })
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("sync directory {}", dir.display()))
}

impl ReplicaStore {
    /// Opens (creating) `dir` and reads every replica file in it back. A file that is not a
    /// replica is set aside (renamed `*.bad`); a torn tail is cut.
    pub fn open(dir: PathBuf) -> anyhow::Result<Opened> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("create replica directory {}", dir.display()))?;
        let mut files = BTreeMap::new();
        let mut replicas = Vec::new();
        let entries = std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A compaction that did not finish: the original is still whole.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(id) = parse_name(&name) else {
                continue;
            };
            let path = entry.path();
            let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            match replica_file::recover(&bytes, &id.shard, &id.unit) {
                Ok(recovered) => {
                    if let Some(reason) = &recovered.stopped {
                        if bytes[recovered.valid_len..].iter().any(|byte| *byte != 0) {
                            tracing::warn!(file = %path.display(), offset = recovered.valid_len, %reason, "replica file: torn tail cut");
                        }
                    }
                    let file =
                        ReplicaFile::open(path, recovered.valid_len, recovered.replica.version())?;
                    files.insert(id.clone(), file);
                    replicas.push((id, recovered));
                }
                Err(error) => {
                    let bad = path.with_extension("bad");
                    tracing::error!(file = %path.display(), %error, moved_to = %bad.display(), "not a replica file; set aside");
                    std::fs::rename(&path, &bad)
                        .with_context(|| format!("rename {}", path.display()))?;
                }
            }
        }
        Ok(Opened {
            store: Self { dir, files },
            replicas,
        })
    }

    /// Writes one persist action (not yet durable: see [`sync`](Self::sync)).
    pub fn apply(&mut self, id: &ReplicaId, action: &PersistAction) -> anyhow::Result<()> {
        let Some(record) = replica_file::record(action) else {
            if let Some(file) = self.files.remove(id) {
                drop(file.map);
                std::fs::remove_file(&file.path)
                    .with_context(|| format!("remove {}", file.path.display()))?;
            }
            return Ok(());
        };
        let written = match action {
            PersistAction::Op(op) => Some(op.seq),
            PersistAction::Reset(snapshot) => Some(snapshot.version),
            _ => None,
        };
        let file = match self.files.entry(id.clone()) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let path = self.dir.join(file_name(id));
                let file =
                    ReplicaFile::create(path, &replica_file::header(&id.shard, &id.unit), 0)?;
                sync_dir(&self.dir)?;
                entry.insert(file)
            }
        };
        file.append(&record)?;
        if let Some(version) = written {
            file.written = version;
        }
        Ok(())
    }

    /// Makes everything written durable; returns the replicas whose files were synced, with
    /// the version now on disk.
    pub fn sync(&mut self) -> anyhow::Result<Vec<(ReplicaId, u64)>> {
        let mut synced = Vec::new();
        for (id, file) in &mut self.files {
            if file.dirty_from.is_some() {
                file.sync()?;
                synced.push((id.clone(), file.written));
            }
        }
        Ok(synced)
    }

    /// Replaces the file of `id` by a compacted one when it grew well past its replica.
    /// Returns whether it did.
    pub fn maybe_compact(
        &mut self,
        id: &ReplicaId,
        replica: &ShardReplica,
        complete: bool,
    ) -> anyhow::Result<bool> {
        let Some(file) = self.files.get(id) else {
            return Ok(false);
        };
        if file.written != replica.version() || file.dirty_from.is_some() {
            return Ok(false);
        }
        let live = replica.section_bytes() + replica.pending_bytes();
        if (file.len as u64) < (COMPACT_RATIO * live).max(COMPACT_FLOOR) {
            return Ok(false);
        }
        let bytes = replica_file::compacted(&id.shard, &id.unit, replica, complete);
        let path = self.dir.join(file_name(id));
        let tmp = self.dir.join(format!("{}.tmp", file_name(id)));
        {
            let mut out =
                File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
            out.write_all(&bytes)?;
            out.sync_all()?;
        }
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("rename {} over {}", tmp.display(), path.display()))?;
        sync_dir(&self.dir)?;
        let reopened = ReplicaFile::open(path, bytes.len(), replica.version())?;
        tracing::debug!(shard = %id.shard, unit = %id.unit, from = file.len, to = bytes.len(), "replica file compacted");
        self.files.insert(id.clone(), reopened);
        Ok(true)
    }

    /// Bytes of records in each file, for status.
    pub fn file_len(&self, id: &ReplicaId) -> Option<usize> {
        self.files.get(id).map(|file| file.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::data::{Op, OpKind, Write};

    fn id() -> ReplicaId {
        ReplicaId {
            shard: ShardName("s0".into()),
            unit: UnitName("u1".into()),
        }
    }

    fn op(seq: u64, value: &[u8]) -> PersistAction {
        PersistAction::Op(Op {
            seq,
            epoch: 1,
            kind: OpKind::Commit {
                writes: vec![Write {
                    key: format!("k{}", seq % 3).into_bytes(),
                    value: Some(value.to_vec()),
                    priority: None,
                }],
                consumed: None,
            },
        })
    }

    #[test]
    fn written_ops_come_back_after_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let mut store = ReplicaStore::open(path.clone()).expect("open").store;
        for seq in 1..=10 {
            store.apply(&id(), &op(seq, b"value")).expect("apply");
        }
        let synced = store.sync().expect("sync");
        assert_eq!(synced, vec![(id(), 10)]);
        let len = store.file_len(&id()).expect("file");
        drop(store);
        // Garbage after the records, as a torn write would leave.
        {
            use std::io::{Seek, SeekFrom};
            let mut file = OpenOptions::new()
                .write(true)
                .open(path.join(file_name(&id())))
                .expect("open");
            file.seek(SeekFrom::Start(len as u64)).expect("seek");
            file.write_all(&[7, 0, 0, 0, 1, 2, 3]).expect("write");
        }
        let opened = ReplicaStore::open(path.clone()).expect("reopen");
        assert_eq!(opened.replicas.len(), 1);
        let (_, recovered) = &opened.replicas[0];
        assert_eq!(recovered.replica.version(), 10);
        assert_eq!(recovered.valid_len, len);
        // Appending after the cut tail gives a readable file again.
        let mut store = opened.store;
        store.apply(&id(), &op(11, b"more")).expect("apply");
        store.sync().expect("sync");
        drop(store);
        let opened = ReplicaStore::open(path).expect("reopen");
        assert_eq!(opened.replicas[0].1.replica.version(), 11);
    }

    #[test]
    fn a_grown_file_is_compacted_and_reads_back_the_same_replica() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let mut store = ReplicaStore::open(path.clone()).expect("open").store;
        let mut replica = ShardReplica::new();
        let value = vec![b'x'; 64 * 1024];
        for seq in 1..=200 {
            let action = op(seq, &value);
            if let PersistAction::Op(op) = &action {
                replica.apply(op).expect("applies");
            }
            store.apply(&id(), &action).expect("apply");
        }
        store.sync().expect("sync");
        let before = store.file_len(&id()).expect("file");
        assert!(store.maybe_compact(&id(), &replica, true).expect("compact"));
        let after = store.file_len(&id()).expect("file");
        assert!(after * 10 < before, "compacted {before} -> {after}");
        drop(store);
        let opened = ReplicaStore::open(path).expect("reopen");
        let (_, recovered) = &opened.replicas[0];
        assert!(recovered.complete);
        assert_eq!(recovered.replica.version(), 200);
        assert_eq!(recovered.replica.digest(), replica.digest());
    }

    #[test]
    fn a_file_that_is_not_a_replica_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        std::fs::create_dir_all(&path).expect("mkdir");
        std::fs::write(path.join(file_name(&id())), b"hello").expect("write");
        let opened = ReplicaStore::open(path.clone()).expect("open");
        assert!(opened.replicas.is_empty());
        assert!(path.join("s0@u1.bad").exists());
    }
}
