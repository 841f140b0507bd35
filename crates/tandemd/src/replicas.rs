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
use std::sync::Arc;

use anyhow::Context as _;
use memmap2::MmapRaw;
use tandem_core::data::{PersistAction, ReplicaId, ShardReplica};
use tandem_core::{ShardName, UnitName};
use tandem_node::replica_file::{self, Recovered};

/// First size of a file.
const INITIAL_CAPACITY: usize = 1024 * 1024;
/// A file is compacted when it holds more than this many times its replica's live bytes...
const COMPACT_RATIO: u64 = 8;
/// ...and at least this many bytes.
const COMPACT_FLOOR: u64 = 16 * 1024 * 1024;
/// File name suffix.
const SUFFIX: &str = ".replica";

/// One replica's file.
struct ReplicaFile {
    path: PathBuf,
    file: File,
    /// The mapping, shared with the sync thread while it msyncs a range of it (a grown file
    /// gets a new mapping; the old one lives until its last sync is done).
    map: Arc<MmapRaw>,
    /// Bytes of records written (the rest of the map is zeros).
    len: usize,
    /// Start of what is written and not yet handed to the sync thread.
    dirty_from: Option<usize>,
    /// Version of the last op or reset written.
    written: u64,
    /// Changes when the file's content starts over (created, reset, compacted): a sync of an
    /// older generation says nothing about what the file holds now.
    generation: u64,
    /// This is a compacted file the sync thread has not put in place yet.
    compacting: bool,
}

fn map_file(file: &File, path: &Path) -> anyhow::Result<Arc<MmapRaw>> {
    // SAFETY (of the later raw writes): the file is ours (the data directory is locked by this
    // daemon), opened read-write and sized; nothing else maps or truncates it while the map
    // lives, and only the event loop writes through it.
    MmapRaw::map_raw(file)
        .map(Arc::new)
        .with_context(|| format!("map replica file {}", path.display()))
}

impl ReplicaFile {
    fn create(path: PathBuf, initial: &[u8], generation: u64) -> anyhow::Result<Self> {
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
        let map = map_file(&file, &path)?;
        let mut replica = Self {
            path,
            file,
            map,
            len: 0,
            dirty_from: None,
            written: 0,
            generation,
            compacting: false,
        };
        replica.write_at(0, initial);
        replica.len = initial.len();
        replica
            .map
            .flush_range(0, replica.len)
            .with_context(|| format!("sync replica file {}", replica.path.display()))?;
        Ok(replica)
    }

    fn open(path: PathBuf, len: usize, written: u64, generation: u64) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open replica file {}", path.display()))?;
        let size = file.metadata()?.len() as usize;
        if size < len.max(INITIAL_CAPACITY) {
            file.set_len(len.max(INITIAL_CAPACITY) as u64)?;
        }
        let map = map_file(&file, &path)?;
        // Whatever follows the valid records (a torn write) is zeroed, so that it can never
        // be read as records later. Only a torn tail has anything there: a fresh or compacted
        // file is zeros (holes) past its records, and is left alone.
        // SAFETY: `len..map.len()` is inside the mapping; see `map_file`.
        let rest = unsafe { std::slice::from_raw_parts(map.as_ptr().add(len), map.len() - len) };
        if let Some(last) = rest.iter().rposition(|byte| *byte != 0) {
            // SAFETY: as above.
            unsafe { std::ptr::write_bytes(map.as_mut_ptr().add(len), 0, last + 1) };
            let page = page_size();
            let start = len / page * page;
            map.flush_range(start, len + last + 1 - start)
                .with_context(|| format!("sync replica file {}", path.display()))?;
        }
        Ok(Self {
            path,
            file,
            map,
            len,
            dirty_from: None,
            written,
            generation,
            compacting: false,
        })
    }

    /// Copies `bytes` into the mapping at `at` (which the caller checked fits).
    fn write_at(&mut self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.map.len(), "write past the mapping");
        // SAFETY: the range is inside the mapping (checked above); see `map_file`. The sync
        // thread only msyncs, which reads nothing through this pointer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(at),
                bytes.len(),
            )
        };
    }

    fn append(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let needed = self.len + bytes.len();
        if needed > self.map.len() {
            // Grow by doubling. What is written and not yet synced stays dirty in the page
            // cache (the file is shared): the next msync of the new mapping covers it.
            let capacity = needed.next_power_of_two();
            self.file
                .set_len(capacity as u64)
                .with_context(|| format!("grow replica file {}", self.path.display()))?;
            self.map = map_file(&self.file, &self.path)?;
        }
        self.write_at(self.len, bytes);
        self.dirty_from.get_or_insert(self.len);
        self.len = needed;
        Ok(())
    }

    /// The msync of what was written since the last one, for the sync thread.
    fn take_job(&mut self, id: &ReplicaId) -> Option<SyncJob> {
        let from = self.dirty_from.take()?;
        // msync works on pages: start at the page holding `from`.
        let page = page_size();
        let start = from / page * page;
        Some(SyncJob {
            id: id.clone(),
            generation: self.generation,
            map: self.map.clone(),
            start,
            end: self.len,
            version: self.written,
        })
    }
}

/// An msync the sync thread carries out: `start..end` of one replica file's mapping, which
/// makes the file durable up to `version`.
pub struct SyncJob {
    id: ReplicaId,
    generation: u64,
    map: Arc<MmapRaw>,
    start: usize,
    end: usize,
    version: u64,
}

impl SyncJob {
    fn run(&self) -> std::io::Result<()> {
        self.map.flush_range(self.start, self.end - self.start)
    }
}

/// Nice value of the sync thread (the event loop runs at 0).
const SYNC_THREAD_NICE: libc::c_int = 10;

/// What the sync thread made durable: replica, file generation, version.
#[derive(Debug)]
pub struct Synced(ReplicaId, u64, u64);

/// A compacted replica file for the sync thread to install: the event loop wrote it (to the
/// page cache) as `tmp` and appends to it from then on; the sync thread makes it durable and
/// renames it over `path`. Until then the old file, whole and synced, is what a restart reads.
pub struct CompactJob {
    id: ReplicaId,
    generation: u64,
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    /// The replica version the compacted content holds.
    version: u64,
}

impl CompactJob {
    /// Syncs the new file, renames it over the old one, syncs the directory. A file removed
    /// meanwhile (the replica is no longer kept) is not an error: there is nothing to install.
    fn run(self) -> anyhow::Result<Installed> {
        self.file
            .sync_all()
            .with_context(|| format!("sync {}", self.tmp.display()))?;
        let installed = match std::fs::rename(&self.tmp, &self.path) {
            Ok(()) => {
                sync_dir(&self.dir)?;
                true
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("rename {} over {}", self.tmp.display(), self.path.display())
                })
            }
        };
        Ok(Installed {
            id: self.id,
            generation: self.generation,
            version: self.version,
            installed,
        })
    }
}

/// A compacted file now in place of the old one (durable at `version`).
#[derive(Debug)]
pub struct Installed {
    id: ReplicaId,
    generation: u64,
    version: u64,
    installed: bool,
}

/// Work for the sync thread.
pub enum DiskWork {
    /// msyncs (merged with whatever else queued up).
    Sync(Vec<SyncJob>),
    /// Install a compacted file (before any msync gathered with it).
    Compact(CompactJob),
}

/// What the sync thread did.
#[derive(Debug)]
pub enum DiskReport {
    /// Versions now durable.
    Synced(Vec<Synced>),
    /// A compacted file was installed.
    Installed(Installed),
}

/// The sync thread: takes batches of [`SyncJob`]s, merges what queued up meanwhile (one msync
/// per file however many commits wrote to it: a group commit), and reports each batch with
/// `report`. Two msync rounds are at least `interval` apart: what comes meanwhile is gathered
/// into the next round. It stops when the sender is dropped or `report` returns false.
pub fn start_syncer(
    interval: std::time::Duration,
    report: impl Fn(Result<DiskReport, String>) -> bool + Send + 'static,
) -> std::io::Result<std::sync::mpsc::Sender<DiskWork>> {
    let (sender, receiver) = std::sync::mpsc::channel::<DiskWork>();
    std::thread::Builder::new()
        .name("replica-sync".into())
        .spawn(move || {
            // Below the event loop: an msync is the slow part of no commit's answer (STANDBYs
            // acknowledge what they applied), so it takes the CPU only after the loop.
            // SAFETY: setpriority on this thread's own id has no memory-safety conditions.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, SYNC_THREAD_NICE);
            }
            let mut last: Option<std::time::Instant> = None;
            let mut compactions = Vec::new();
            while let Ok(work) = receiver.recv() {
                let mut jobs = Vec::new();
                let mut take = |work: DiskWork| match work {
                    DiskWork::Sync(more) => jobs.extend(more),
                    DiskWork::Compact(job) => compactions.push(job),
                };
                take(work);
                let gather_until = last.map(|at| at + interval);
                loop {
                    let more = match gather_until {
                        Some(until) => {
                            let left = until.saturating_duration_since(std::time::Instant::now());
                            if left.is_zero() {
                                receiver.try_recv().ok()
                            } else {
                                receiver.recv_timeout(left).ok()
                            }
                        }
                        None => receiver.try_recv().ok(),
                    };
                    match more {
                        Some(more) => take(more),
                        None => break,
                    }
                }
                // Compactions first: an msync of the new file gathered with its compaction
                // must not report versions before the file is in place.
                for job in compactions.drain(..) {
                    let done = job.run().map_err(|error| format!("{error:#}"));
                    if !report(done.map(DiskReport::Installed)) {
                        return;
                    }
                }
                if !jobs.is_empty() {
                    last = Some(std::time::Instant::now());
                    if !report(sync_merged(jobs).map(DiskReport::Synced)) {
                        return;
                    }
                }
            }
        })?;
    Ok(sender)
}

/// msyncs `jobs`, merged per file and generation (one msync however many batches wrote).
fn sync_merged(jobs: Vec<SyncJob>) -> Result<Vec<Synced>, String> {
    let mut merged: BTreeMap<(ReplicaId, u64), SyncJob> = BTreeMap::new();
    for job in jobs {
        match merged.entry((job.id.clone(), job.generation)) {
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(job);
            }
            std::collections::btree_map::Entry::Occupied(mut entry) => {
                let held = entry.get_mut();
                held.start = held.start.min(job.start);
                held.end = held.end.max(job.end);
                held.version = held.version.max(job.version);
                // A later job's mapping covers the whole file written so far.
                if job.map.len() > held.map.len() {
                    held.map = job.map;
                }
            }
        }
    }
    let mut done = Vec::with_capacity(merged.len());
    for job in merged.into_values() {
        job.run().map_err(|error| {
            format!("msync of replica {}@{}: {error}", job.id.shard, job.id.unit)
        })?;
        done.push(Synced(job.id, job.generation, job.version));
    }
    Ok(done)
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
    /// The next file generation handed out.
    next_generation: u64,
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
                    let file = ReplicaFile::open(
                        path,
                        recovered.valid_len,
                        recovered.replica.version(),
                        files.len() as u64,
                    )?;
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
            store: Self {
                dir,
                next_generation: files.len() as u64,
                files,
            },
            replicas,
        })
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Writes one persist action (not yet durable: see [`take_sync_jobs`](Self::take_sync_jobs)).
    pub fn apply(&mut self, id: &ReplicaId, action: &PersistAction) -> anyhow::Result<()> {
        let Some(record) = replica_file::record(action) else {
            if let Some(file) = self.files.remove(id) {
                drop(file.map);
                // A compacted file not yet in place first, so that the sync thread cannot
                // rename it over the path after the path was removed.
                let tmp = self.dir.join(format!("{}.tmp", file_name(id)));
                for path in [&tmp, &file.path] {
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                        Err(error) => {
                            return Err(error).with_context(|| format!("remove {}", path.display()))
                        }
                    }
                }
            }
            return Ok(());
        };
        let written = match action {
            PersistAction::Op(op) => Some(op.seq),
            PersistAction::Reset(snapshot) => Some(snapshot.version),
            _ => None,
        };
        let fresh = matches!(action, PersistAction::Reset(_)) || !self.files.contains_key(id);
        let generation = if fresh { self.generation() } else { 0 };
        let file = match self.files.entry(id.clone()) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let path = self.dir.join(file_name(id));
                let file = ReplicaFile::create(
                    path,
                    &replica_file::header(&id.shard, &id.unit),
                    generation,
                )?;
                sync_dir(&self.dir)?;
                entry.insert(file)
            }
        };
        if fresh {
            // Created, or the replica starts over: syncs of what came before no longer tell
            // its version.
            file.generation = generation;
        }
        file.append(&record)?;
        if let Some(version) = written {
            file.written = version;
        }
        Ok(())
    }

    /// The msyncs of everything written since the last call, for the sync thread.
    pub fn take_sync_jobs(&mut self) -> Vec<SyncJob> {
        self.files
            .iter_mut()
            .filter_map(|(id, file)| file.take_job(id))
            .collect()
    }

    /// What the sync thread reported, as the versions now durable per replica (reports of a
    /// file that started over since are dropped).
    pub fn synced(&self, reports: Vec<Synced>) -> Vec<(ReplicaId, u64)> {
        reports
            .into_iter()
            .filter(|Synced(id, generation, _)| {
                self.files
                    .get(id)
                    .is_some_and(|file| file.generation == *generation)
            })
            .map(|Synced(id, _, version)| (id, version))
            .collect()
    }

    /// Makes everything written durable here and now; returns the versions durable.
    pub fn sync_now(&mut self) -> anyhow::Result<Vec<(ReplicaId, u64)>> {
        let mut reports = Vec::new();
        for job in self.take_sync_jobs() {
            job.run()
                .with_context(|| format!("sync replica file {}@{}", job.id.shard, job.id.unit))?;
            reports.push(Synced(job.id, job.generation, job.version));
        }
        Ok(self.synced(reports))
    }

    /// Replaces the file of `id` by a compacted one when it grew well past its replica: writes
    /// the compacted content to a new file (page cache only) and appends there from now on;
    /// returns the job that makes it durable and puts it in place (the slow part, for the sync
    /// thread). Versions written to the new file are reported durable only after that.
    pub fn start_compaction(
        &mut self,
        id: &ReplicaId,
        replica: &ShardReplica,
        complete: bool,
    ) -> anyhow::Result<Option<CompactJob>> {
        let Some(file) = self.files.get(id) else {
            return Ok(None);
        };
        if file.compacting || file.written != replica.version() {
            return Ok(None);
        }
        let live = replica.section_bytes() + replica.pending_bytes();
        if (file.len as u64) < (COMPACT_RATIO * live).max(COMPACT_FLOOR) {
            return Ok(None);
        }
        let bytes = replica_file::compacted(&id.shard, &id.unit, replica, complete);
        let path = self.dir.join(file_name(id));
        let tmp = self.dir.join(format!("{}.tmp", file_name(id)));
        {
            let mut out =
                File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
            out.write_all(&bytes)
                .with_context(|| format!("write {}", tmp.display()))?;
        }
        let generation = self.generation();
        let mut compacted =
            ReplicaFile::open(tmp.clone(), bytes.len(), replica.version(), generation)?;
        // Later operations on the file (growth, removal) name it by its final path.
        compacted.path = path.clone();
        compacted.compacting = true;
        let job = CompactJob {
            id: id.clone(),
            generation,
            file: compacted
                .file
                .try_clone()
                .with_context(|| format!("reopen {}", tmp.display()))?,
            tmp,
            path,
            dir: self.dir.clone(),
            version: replica.version(),
        };
        let old = self.files.insert(id.clone(), compacted);
        tracing::debug!(shard = %id.shard, unit = %id.unit, from = old.map_or(0, |file| file.len), to = bytes.len(), "replica file compaction started");
        Ok(Some(job))
    }

    /// What the sync thread reported of a compaction, as the version now durable (None when
    /// the file started over or was removed meanwhile).
    pub fn installed(&mut self, done: Installed) -> Option<(ReplicaId, u64)> {
        let file = self.files.get_mut(&done.id)?;
        if file.compacting && done.installed {
            file.compacting = false;
        }
        (done.installed && file.generation == done.generation).then_some((done.id, done.version))
    }

    /// Compacts the file of `id` here and now, when it grew well past its replica. Returns
    /// whether it did.
    pub fn maybe_compact(
        &mut self,
        id: &ReplicaId,
        replica: &ShardReplica,
        complete: bool,
    ) -> anyhow::Result<bool> {
        let Some(job) = self.start_compaction(id, replica, complete)? else {
            return Ok(false);
        };
        let done = job.run()?;
        Ok(self.installed(done).is_some())
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

    /// Writes 300 ops of 64 KiB (three keys) to the store: a file big enough to compact.
    /// Returns the replica they make.
    fn fill(store: &mut ReplicaStore) -> ShardReplica {
        let mut replica = ShardReplica::new();
        for seq in 1..=300 {
            write_op(store, &mut replica, seq);
        }
        replica
    }

    /// Writes op `seq` (a 64 KiB value) to the store and applies it to `replica`.
    fn write_op(store: &mut ReplicaStore, replica: &mut ShardReplica, seq: u64) {
        let action = op(seq, &[b'x'; 64 * 1024]);
        if let PersistAction::Op(op) = &action {
            replica.apply(op).expect("applies");
        }
        store.apply(&id(), &action).expect("apply");
    }

    #[test]
    fn written_ops_come_back_after_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let mut store = ReplicaStore::open(path.clone()).expect("open").store;
        for seq in 1..=10 {
            store.apply(&id(), &op(seq, b"value")).expect("apply");
        }
        let synced = store.sync_now().expect("sync");
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
        store.sync_now().expect("sync");
        drop(store);
        let opened = ReplicaStore::open(path).expect("reopen");
        assert_eq!(opened.replicas[0].1.replica.version(), 11);
    }

    fn synced(report: Result<DiskReport, String>) -> Vec<Synced> {
        match report.expect("no disk error") {
            DiskReport::Synced(synced) => synced,
            other => panic!("expected a sync report, got {other:?}"),
        }
    }

    #[test]
    fn the_sync_thread_merges_queued_jobs_and_a_report_of_a_file_that_started_over_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let mut store = ReplicaStore::open(path.clone()).expect("open").store;
        let (reports_tx, reports) = std::sync::mpsc::channel();
        let syncer = start_syncer(std::time::Duration::from_millis(50), move |outcome| {
            reports_tx.send(outcome).is_ok()
        })
        .expect("sync thread");
        // Three batches of writes, queued before the thread can take them one by one: the
        // first round syncs at once, the next two are gathered into one round 50 ms later.
        let mut sent = Vec::new();
        for seq in 1..=3 {
            store.apply(&id(), &op(seq, b"value")).expect("apply");
            sent.extend(store.take_sync_jobs());
        }
        assert_eq!(sent.len(), 3, "one job per batch of writes");
        for job in sent {
            syncer.send(DiskWork::Sync(vec![job])).expect("queued");
        }
        let wait = std::time::Duration::from_secs(10);
        let mut durable = Vec::new();
        while durable.last().map(|(_, version)| *version) != Some(3) {
            let report = synced(reports.recv_timeout(wait).expect("a report"));
            durable.extend(store.synced(report));
        }
        assert!(
            durable.len() <= 2,
            "queued jobs are merged per file: {durable:?}"
        );
        // A job taken before the replica started over reports a version of the old content:
        // it is dropped, and the reset's own sync is reported.
        store.apply(&id(), &op(4, b"value")).expect("apply");
        let old = store.take_sync_jobs();
        let mut snapshot = ShardReplica::new().snapshot();
        snapshot.version = 2;
        store
            .apply(&id(), &PersistAction::Reset(snapshot))
            .expect("apply");
        syncer.send(DiskWork::Sync(old)).expect("queued");
        let report = synced(reports.recv_timeout(wait).expect("a report"));
        assert_eq!(store.synced(report), Vec::new());
        syncer
            .send(DiskWork::Sync(store.take_sync_jobs()))
            .expect("queued");
        let report = synced(reports.recv_timeout(wait).expect("a report"));
        assert_eq!(store.synced(report), vec![(id(), 2)]);
    }

    #[test]
    fn a_grown_file_is_compacted_and_reads_back_the_same_replica() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let mut store = ReplicaStore::open(path.clone()).expect("open").store;
        let replica = fill(&mut store);
        store.sync_now().expect("sync");
        let before = store.file_len(&id()).expect("file");
        assert!(store.maybe_compact(&id(), &replica, true).expect("compact"));
        let after = store.file_len(&id()).expect("file");
        assert!(after * 10 < before, "compacted {before} -> {after}");
        drop(store);
        let opened = ReplicaStore::open(path).expect("reopen");
        let (_, recovered) = &opened.replicas[0];
        assert!(recovered.complete);
        assert_eq!(recovered.replica.version(), 300);
        assert_eq!(recovered.replica.digest(), replica.digest());
    }

    #[test]
    fn writes_made_while_a_compacted_file_is_put_in_place_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let mut store = ReplicaStore::open(path.clone()).expect("open").store;
        let mut replica = fill(&mut store);
        let job = store
            .start_compaction(&id(), &replica, true)
            .expect("compaction")
            .expect("the file is big enough to compact");
        // Writes go on, to the compacted file, while the sync thread puts it in place.
        for seq in 301..=305 {
            write_op(&mut store, &mut replica, seq);
        }
        assert!(
            store
                .start_compaction(&id(), &replica, true)
                .expect("compaction")
                .is_none(),
            "one at a time"
        );
        let done = job.run().expect("installed");
        assert_eq!(
            store.installed(done),
            Some((id(), 300)),
            "durable as compacted"
        );
        store.sync_now().expect("sync");
        drop(store);
        let opened = ReplicaStore::open(path).expect("reopen");
        let (_, recovered) = &opened.replicas[0];
        assert_eq!(recovered.replica.version(), 305);
        assert_eq!(recovered.replica.digest(), replica.digest());
        assert!(
            !std::fs::read_dir(dir.path().join("replicas"))
                .expect("list")
                .any(|entry| entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")),
            "no temporary file is left"
        );
    }

    #[test]
    fn a_compaction_of_a_file_that_started_over_reports_no_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let mut store = ReplicaStore::open(path.clone()).expect("open").store;
        let replica = fill(&mut store);
        let job = store
            .start_compaction(&id(), &replica, true)
            .expect("compaction")
            .expect("the file is big enough to compact");
        let mut snapshot = ShardReplica::new().snapshot();
        snapshot.version = 7;
        store
            .apply(&id(), &PersistAction::Reset(snapshot))
            .expect("reset");
        let done = job.run().expect("installed");
        assert_eq!(
            store.installed(done),
            None,
            "the compacted version is not reported"
        );
        store.sync_now().expect("sync");
        drop(store);
        let opened = ReplicaStore::open(path).expect("reopen");
        assert_eq!(
            opened.replicas[0].1.replica.version(),
            7,
            "the reset stands"
        );
    }

    #[test]
    fn a_replica_removed_while_its_compacted_file_is_put_in_place_stays_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let mut store = ReplicaStore::open(path.clone()).expect("open").store;
        let replica = fill(&mut store);
        let job = store
            .start_compaction(&id(), &replica, true)
            .expect("compaction")
            .expect("the file is big enough to compact");
        store.apply(&id(), &PersistAction::Remove).expect("remove");
        let done = job.run().expect("nothing to install is no error");
        assert_eq!(store.installed(done), None);
        drop(store);
        assert!(ReplicaStore::open(path)
            .expect("reopen")
            .replicas
            .is_empty());
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
