//! The node's replica files: one memory-mapped file per (shard, unit) replica under
//! `<data_dir>/<node>/replicas/`, named `<shard>@<unit>.replica`. What goes into them (header,
//! records, compacted form) and how they are read back is `tandem_node::replica_file`'s; this
//! module only maps, appends, syncs and renames.
//!
//! A file is pre-allocated (zeros) and grown by doubling; records are written (`pwritev`)
//! into the page cache the map shares, and made durable with `msync` of the dirty range
//! before the data plane hears that a version is on disk. A file that grew well past its replica is replaced by a compacted one (written to
//! a temporary file, synced, renamed over, directory synced), so a crash leaves either file
//! whole.
//!
//! Three parties share the work, so that the event loop never waits for the disk:
//! - the node's `tandem_node::ReplicaBooks` (sans-IO, run by the event loop) decides: it
//!   queues each write as a [`FileOp`] and keeps a book of each file (its generation, the
//!   version written, its size when last synced, compactions);
//! - the writer thread ([`start_writer`]) owns the files ([`FileWriter`]): it encodes the
//!   records and writes them into the files' page cache (page faults and ext4 journal waits
//!   happen here, and under writeback they take tens of milliseconds), grows, creates,
//!   removes and compacts;
//! - the sync thread ([`start_syncer`]) msyncs what the writer wrote and installs compacted
//!   files, and reports what is durable to the event loop.
//!
//! Neither disk thread is woken for every commit: each gathers what comes while it lingers
//! (the writer for [`writer_linger`] after a batch, the sync thread until its next round is
//! due) through a [`mailbox`], which wakes a lingering receiver only for urgent work.
//!
//! A disk that cannot keep up pushes back on the data plane's intake, not on the event loop:
//! once [`INTAKE_PAUSE_AT`] bytes are on their way to the disk (the [`Backlog`]: queued for
//! the writer, or written and not yet msynced), the loop stops reading data events (commits,
//! replication, ingress: their senders wait, and TCP carries the wait back to the primary)
//! until the backlog is down to [`INTAKE_RESUME_AT`]; heartbeats, Raft and leases go on.
//! What a pass already produced is still queued: only past [`WRITES_QUEUED_MAX`] does the loop
//! itself wait. Bounding the dirty replica pages keeps the Raft log's fdatasyncs, which share
//! the disk, short: a lease's floor waits for them.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use memmap2::MmapRaw;
use parking_lot::{Condvar, Mutex};
use tandem_core::data::{OpKind, PersistAction, ReplicaId};
use tandem_core::{ShardName, UnitName};
use tandem_node::replica_file::{self, Recovered, Stamp};
use tandem_node::{FileOp, Installed, Synced};

use crate::mailbox;

/// First size of a file.
const INITIAL_CAPACITY: usize = 1024 * 1024;
/// File name suffix.
const SUFFIX: &str = ".replica";
/// Most bytes in the [`Backlog`] before the event loop waits for the disk.
pub const WRITES_QUEUED_MAX: usize = 512 * 1024 * 1024;
/// Bytes in the [`Backlog`] at which the event loop stops taking data events...
pub const INTAKE_PAUSE_AT: usize = 128 * 1024 * 1024;
/// ...and at which it takes them again.
pub const INTAKE_RESUME_AT: usize = 64 * 1024 * 1024;
/// From this many bytes in the [`Backlog`], a batch for the writer wakes it even while it
/// lingers: past this, gathering for longer saves no wake-up worth the delay.
pub const WRITE_URGENT_AT: usize = 256 * 1024;
/// The longest the writer gathers commits before writing them (see [`start_writer`]).
pub const WRITER_LINGER_MAX: Duration = Duration::from_micros(500);

/// How long the writer gathers before writing, for a sync interval of `interval`: a quarter
/// of it, at most [`WRITER_LINGER_MAX`] (so it adds little to how late a version is durable).
pub fn writer_linger(interval: Duration) -> Duration {
    (interval / 4).min(WRITER_LINGER_MAX)
}

/// One replica's file, held by the writer thread.
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
    /// Where the stamp is (see `replica_file`), and whether it was rewritten since the last
    /// job.
    stamp_at: usize,
    stamp_dirty: bool,
    /// Version of the last op or reset written.
    written: u64,
    /// Changes when the file's content starts over (created, reset, compacted): a sync of an
    /// older generation says nothing about what the file holds now. The event loop hands
    /// generations out (see `tandem_node::ReplicaBooks`).
    generation: u64,
    /// The temporary name this file was written under as a compaction, until the sync thread
    /// renames it over `path` (named by generation, so that two compactions of one replica
    /// never share it).
    tmp: Option<PathBuf>,
}

fn map_file(file: &File, path: &Path) -> anyhow::Result<Arc<MmapRaw>> {
    // SAFETY (of the raw accesses through it: msyncs, and zeroing a torn tail at open): the
    // file is ours (the data directory is locked by this daemon), opened read-write and
    // sized; nothing else maps or truncates it while the map lives.
    MmapRaw::map_raw(file)
        .map(Arc::new)
        .with_context(|| format!("map replica file {}", path.display()))
}

impl ReplicaFile {
    fn create(
        path: PathBuf,
        initial: &[u8],
        stamp_at: usize,
        generation: u64,
    ) -> anyhow::Result<Self> {
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
            stamp_at,
            stamp_dirty: false,
            tmp: None,
            written: 0,
            generation,
        };
        replica.write_at(0, initial)?;
        replica.len = initial.len();
        replica
            .map
            .flush_range(0, replica.len)
            .with_context(|| format!("sync replica file {}", replica.path.display()))?;
        Ok(replica)
    }

    fn open(
        path: PathBuf,
        len: usize,
        stamp_at: usize,
        written: u64,
        generation: u64,
    ) -> anyhow::Result<Self> {
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
            stamp_at,
            stamp_dirty: false,
            tmp: None,
            written,
            generation,
        })
    }

    /// Writes `bytes` at `at` (which must lie inside the mapping) with `pwrite`: the page
    /// cache is the mapping's (it is shared), so the sync thread's msync of the range makes
    /// them durable. Copying into the mapping instead made every new page fault in, and the
    /// kernel read ahead and zeroed large folios of the file's holes first: 10 % of the
    /// whole machine's CPU under small commits, against nothing for `pwrite`.
    fn write_at(&mut self, at: usize, bytes: &[u8]) -> anyhow::Result<()> {
        use std::os::unix::fs::FileExt as _;
        assert!(at + bytes.len() <= self.map.len(), "write past the mapping");
        self.file
            .write_all_at(bytes, at as u64)
            .with_context(|| format!("write replica file {}", self.path.display()))
    }

    /// Writes `parts` one after the other from `at` (inside the mapping) with `pwritev`, as
    /// [`write_at`](Self::write_at) writes one buffer: large values go from their own
    /// buffers to the page cache, with no copy into a record buffer first.
    fn write_parts_at(&mut self, at: usize, parts: &[bytes::Bytes]) -> anyhow::Result<()> {
        use std::io::IoSlice;
        use std::os::fd::AsRawFd as _;
        /// Buffers per call; Linux takes at most 1024 (`IOV_MAX`).
        const IOVECS_MAX: usize = 1024;
        let total: usize = parts.iter().map(|part| part.len()).sum();
        assert!(at + total <= self.map.len(), "write past the mapping");
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|part| IoSlice::new(part)).collect();
        let mut left = &mut slices[..];
        IoSlice::advance_slices(&mut left, 0);
        let mut offset = at;
        while !left.is_empty() {
            // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; every slice points into
            // a live `Bytes` of `parts`, and pwritev only reads them.
            let written = unsafe {
                libc::pwritev(
                    self.file.as_raw_fd(),
                    left.as_ptr().cast::<libc::iovec>(),
                    left.len().min(IOVECS_MAX) as libc::c_int,
                    offset as libc::off_t,
                )
            };
            if written < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error)
                    .with_context(|| format!("write replica file {}", self.path.display()));
            }
            if written == 0 {
                anyhow::bail!("write replica file {}: wrote nothing", self.path.display());
            }
            offset += written as usize;
            IoSlice::advance_slices(&mut left, written as usize);
        }
        Ok(())
    }

    /// Appends a record given as parts (see [`write_parts_at`](Self::write_parts_at)).
    fn append_parts(&mut self, record: &tandem_proto::frame::FrameParts) -> anyhow::Result<()> {
        self.reserve(record.len())?;
        self.write_parts_at(self.len, record.parts())?;
        self.dirty_from.get_or_insert(self.len);
        self.len += record.len();
        Ok(())
    }

    /// Grows the file and its mapping, if need be, to take `more` bytes after `len`.
    fn reserve(&mut self, more: usize) -> anyhow::Result<()> {
        let needed = self.len + more;
        if needed > self.map.len() {
            // Grow by doubling. What is written and not yet synced stays dirty in the page
            // cache (the file is shared): the next msync of the new mapping covers it.
            let capacity = needed.next_power_of_two();
            self.file
                .set_len(capacity as u64)
                .with_context(|| format!("grow replica file {}", self.path.display()))?;
            self.map = map_file(&self.file, &self.path)?;
        }
        Ok(())
    }

    /// Rewrites the stamp: the file's records so far hold `stamp`.
    fn stamp(&mut self, stamp: &Stamp) -> anyhow::Result<()> {
        let bytes = replica_file::encode_stamp(stamp, self.len);
        self.write_at(self.stamp_at, &bytes)?;
        self.stamp_dirty = true;
        Ok(())
    }

    /// The msync of what was written since the last one, for the sync thread.
    fn take_job(&mut self, id: &ReplicaId) -> Option<SyncJob> {
        if self.dirty_from.is_none() && !self.stamp_dirty {
            return None;
        }
        // msync works on pages: start at the page holding `from`.
        let page = page_size();
        let start = self
            .dirty_from
            .take()
            .map_or(self.len, |from| from / page * page);
        let stamp = std::mem::take(&mut self.stamp_dirty).then(|| {
            let start = self.stamp_at / page * page;
            (start, self.stamp_at + replica_file::STAMP_LEN - start)
        });
        Some(SyncJob {
            id: id.clone(),
            generation: self.generation,
            map: self.map.clone(),
            start,
            end: self.len,
            stamp,
            version: self.written,
        })
    }
}

/// An msync the sync thread carries out: `start..end` of one replica file's mapping, then
/// the stamp's range (offset, length) if it was rewritten, which makes the file durable up to
/// `version`. The stamp goes second, so it never describes records that are not durable.
pub struct SyncJob {
    id: ReplicaId,
    generation: u64,
    map: Arc<MmapRaw>,
    start: usize,
    end: usize,
    stamp: Option<(usize, usize)>,
    version: u64,
}

/// Largest range one msync call covers. The disk's queue then holds at most this much of a
/// file's writeback at a time, and so does the ext4 journal commit that a Raft log fdatasync
/// on the same file system waits for (ordered mode writes the data of blocks allocated in
/// the committing transaction first): one msync of hundreds of MiB made those wait half a
/// second, and leases lapsed. 4 to 16 MiB measured alike (worst Raft fdatasync 25-170 ms
/// with 64 KiB commits saturating a shared disk); larger chunks write faster.
const SYNC_CHUNK: usize = 16 * 1024 * 1024;

impl SyncJob {
    fn run(&self) -> std::io::Result<()> {
        let mut from = self.start;
        while from < self.end {
            let len = (self.end - from).min(SYNC_CHUNK);
            self.map.flush_range(from, len)?;
            from += len;
        }
        if let Some((offset, len)) = self.stamp {
            self.map.flush_range(offset, len)?;
        }
        Ok(())
    }
}

/// Nice value of the sync thread (the event loop runs at 0).
const SYNC_THREAD_NICE: libc::c_int = 10;
/// Nice value of the writer thread: below the event loop, above the sync thread (the loop
/// waits for it when its queue is full).
const WRITER_THREAD_NICE: libc::c_int = 5;

fn set_thread_nice(nice: libc::c_int) {
    // SAFETY: setpriority on this thread's own id has no memory-safety conditions.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

/// A compacted replica file for the sync thread to install: the writer wrote it (to the page
/// cache) as `tmp` and appends to it from then on; the sync thread makes it durable and
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
        sync_file_in_chunks(&self.file)
            .and_then(|()| self.file.sync_all())
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

/// Writes `file`'s dirty pages out [`SYNC_CHUNK`] at a time, waiting for each (see there);
/// the fsync that follows has only the metadata left.
fn sync_file_in_chunks(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let len = file.metadata()?.len();
    let mut from = 0;
    while from < len {
        let chunk = (len - from).min(SYNC_CHUNK as u64);
        // SAFETY: sync_file_range on a descriptor we own has no memory-safety conditions.
        let done = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                from as libc::off64_t,
                chunk as libc::off64_t,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        if done != 0 {
            return Err(std::io::Error::last_os_error());
        }
        from += chunk;
    }
    Ok(())
}

/// Work for the sync thread. `weight` is what the work counts in the [`Backlog`]: released
/// once it is done.
pub enum DiskWork {
    /// msyncs (merged with whatever else queued up).
    Sync { jobs: Vec<SyncJob>, weight: usize },
    /// Install a compacted file (before any msync gathered with it).
    Compact { job: CompactJob, weight: usize },
}

/// What the writer and sync threads did.
#[derive(Debug)]
pub enum DiskReport {
    /// Versions now durable.
    Synced(Vec<Synced>),
    /// A compacted file was installed.
    Installed(Installed),
}

/// How far apart the sync thread's msync rounds are: `interval` while a commit here may be
/// waiting for the local disk (a primary with no STANDBY in step or in sync, see
/// `DataPlane::awaits_local_durability`), and `in_sync_interval` (never less than `interval`)
/// while every commit waits for an in-sync STANDBY instead. Fewer rounds then cost no commit
/// any latency; they save the CPU and the disk notifications of the msyncs, and widen only
/// what a crash of every replica's node at once could lose.
#[derive(Debug)]
pub struct SyncPace {
    interval: Duration,
    in_sync_interval: Duration,
    /// Starts set: until the event loop's first pass says otherwise, a commit may wait.
    awaited: std::sync::atomic::AtomicBool,
}

impl SyncPace {
    /// A pace of `interval` while the disk is awaited and `in_sync_interval` (raised to
    /// `interval` if shorter) while it is not.
    pub fn new(interval: Duration, in_sync_interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            interval,
            in_sync_interval: in_sync_interval.max(interval),
            awaited: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// The same spacing whatever is awaited.
    pub fn fixed(interval: Duration) -> Arc<Self> {
        Self::new(interval, interval)
    }

    /// Records whether a commit may be waiting for the local disk; true when that just became
    /// so (the sync thread may be lingering for the longer spacing: nudge it, see
    /// [`SyncPace::nudge`]).
    pub fn set_awaited(&self, awaited: bool) -> bool {
        let was = self
            .awaited
            .swap(awaited, std::sync::atomic::Ordering::Relaxed);
        awaited && !was
    }

    /// Cuts the sync thread's current wait short, so that it spaces its next round by the
    /// short interval: an urgent send of no work.
    pub fn nudge(syncer: &mailbox::Sender<DiskWork>) -> bool {
        syncer
            .send(
                DiskWork::Sync {
                    jobs: Vec::new(),
                    weight: 0,
                },
                true,
            )
            .is_ok()
    }

    fn spacing(&self) -> Duration {
        if self.awaited.load(std::sync::atomic::Ordering::Relaxed) {
            self.interval
        } else {
            self.in_sync_interval
        }
    }
}

/// The sync thread: takes batches of [`SyncJob`]s, merges what queued up meanwhile (one msync
/// per file however many commits wrote to it: a group commit), and reports each batch with
/// `report`. Two msync rounds are at least `pace`'s current spacing apart: what comes
/// meanwhile is gathered into the next round, and a send meanwhile does not wake the thread
/// unless it is urgent (see [`mailbox`]), which starts the next round at once. It stops when
/// the sender is dropped or `report` returns false.
pub fn start_syncer(
    pace: Arc<SyncPace>,
    backlog: Backlog,
    report: impl Fn(Result<DiskReport, String>) -> bool + Send + 'static,
) -> std::io::Result<mailbox::Sender<DiskWork>> {
    let (sender, receiver) = mailbox::mailbox::<DiskWork>();
    std::thread::Builder::new()
        .name("replica-sync".into())
        .spawn(move || {
            // However the thread ends, the backlog stops: nobody waits for it any more.
            let backlog = StopOnDrop(backlog);
            // Below the event loop: an msync is the slow part of no commit's answer (STANDBYs
            // acknowledge what they applied), so it takes the CPU only after the loop.
            set_thread_nice(SYNC_THREAD_NICE);
            let mut last: Option<std::time::Instant> = None;
            let mut compactions = Vec::new();
            // Woken by the first work after an idle spell; what comes before the round is
            // due is gathered without waking the thread for each.
            while let Some(mut works) = receiver.recv_all() {
                let mut jobs = Vec::new();
                let mut weight = 0;
                if let Some(until) = last.map(|at| at + pace.spacing()) {
                    if std::time::Instant::now() < until {
                        works.extend(receiver.linger_until(until).unwrap_or_default());
                    }
                }
                works.extend(receiver.try_recv_all());
                for work in works {
                    match work {
                        DiskWork::Sync {
                            jobs: more,
                            weight: more_weight,
                        } => {
                            jobs.extend(more);
                            weight += more_weight;
                        }
                        DiskWork::Compact { job, weight } => compactions.push((job, weight)),
                    }
                }
                // Compactions first: an msync of the new file gathered with its compaction
                // must not report versions before the file is in place.
                for (job, weight) in compactions.drain(..) {
                    let done = job.run().map_err(|error| format!("{error:#}"));
                    let failed = done.is_err();
                    backlog.0.release(weight);
                    if !report(done.map(DiskReport::Installed)) || failed {
                        return;
                    }
                }
                if !jobs.is_empty() {
                    last = Some(std::time::Instant::now());
                    let done = sync_merged(jobs);
                    let failed = done.is_err();
                    backlog.0.release(weight);
                    if !report(done.map(DiskReport::Synced)) || failed {
                        return;
                    }
                } else {
                    backlog.0.release(weight);
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
                held.stamp = held.stamp.or(job.stamp);
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
        done.push(Synced {
            id: job.id,
            generation: job.generation,
            version: job.version,
            len: job.end,
        });
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

/// Roughly the bytes `op` writes: what it counts against [`WRITES_QUEUED_MAX`].
fn weight(op: &FileOp) -> usize {
    const OVERHEAD: usize = 64;
    OVERHEAD
        + match op {
            FileOp::Compact { image, .. } => image.len_estimate(),
            FileOp::Stamp { .. } => 0,
            FileOp::Persist { action, .. } => match action {
                PersistAction::Op(op) => match &op.kind {
                    OpKind::Commit { writes, .. } => tandem_core::data::writes_bytes(writes),
                    OpKind::Message(message) => message.size(),
                },
                PersistAction::Sections(sections) => sections
                    .iter()
                    .map(|(key, section)| key.len() + section.value.len())
                    .sum(),
                PersistAction::Messages(messages) => {
                    messages.iter().map(|(_, message)| message.size()).sum()
                }
                PersistAction::Reset(_)
                | PersistAction::Complete
                | PersistAction::Incomplete
                | PersistAction::Remove
                | PersistAction::Stamp(_) => 0,
            },
        }
}

/// The replica files themselves, owned by the writer thread.
pub struct FileWriter {
    dir: PathBuf,
    files: BTreeMap<ReplicaId, ReplicaFile>,
}

impl FileWriter {
    /// Carries out one operation. A compaction returns the job that puts the new file in
    /// place (for the sync thread).
    pub fn run(&mut self, op: FileOp) -> anyhow::Result<Option<CompactJob>> {
        match op {
            FileOp::Persist {
                id,
                generation,
                action,
            } => {
                self.persist(&id, generation, &action)?;
                Ok(None)
            }
            FileOp::Stamp {
                id,
                generation,
                stamp,
            } => {
                if let Some(file) = self.files.get_mut(&id) {
                    if file.generation == generation {
                        file.stamp(&stamp)?;
                    }
                }
                Ok(None)
            }
            FileOp::Compact {
                id,
                generation,
                image,
                version,
            } => self
                .compact(id, generation, &image.encode(), version)
                .map(Some),
        }
    }

    fn persist(
        &mut self,
        id: &ReplicaId,
        generation: u64,
        action: &PersistAction,
    ) -> anyhow::Result<()> {
        let Some(record) = replica_file::record_parts(action) else {
            if let Some(file) = self.files.remove(id) {
                drop(file.map);
                // A compacted file not yet in place first, so that the sync thread cannot
                // rename it over the path after the path was removed.
                for path in file.tmp.iter().chain([&file.path]) {
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
        let file = match self.files.entry(id.clone()) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let path = self.dir.join(file_name(id));
                let file = ReplicaFile::create(
                    path,
                    &replica_file::header(&id.shard, &id.unit),
                    replica_file::stamp_at(&id.shard, &id.unit),
                    generation,
                )?;
                sync_dir(&self.dir)?;
                entry.insert(file)
            }
        };
        // A new generation (the replica starts over): syncs of what came before no longer
        // tell its version.
        file.generation = generation;
        file.append_parts(&record)?;
        if let Some(version) = action.version() {
            file.written = version;
        }
        Ok(())
    }

    /// Writes the compacted content to a new file (page cache only) and appends there from
    /// now on; returns the job that makes it durable and puts it in place.
    fn compact(
        &mut self,
        id: ReplicaId,
        generation: u64,
        bytes: &[u8],
        version: u64,
    ) -> anyhow::Result<CompactJob> {
        let path = self.dir.join(file_name(&id));
        let tmp = self
            .dir
            .join(format!("{}.{generation}.tmp", file_name(&id)));
        {
            let mut out =
                File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
            out.write_all(bytes)
                .with_context(|| format!("write {}", tmp.display()))?;
        }
        let mut compacted = ReplicaFile::open(
            tmp.clone(),
            bytes.len(),
            replica_file::stamp_at(&id.shard, &id.unit),
            version,
            generation,
        )?;
        // Later operations on the file (growth, removal) name it by its final path.
        compacted.path = path.clone();
        compacted.tmp = Some(tmp.clone());
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
            version,
        };
        let old = self.files.insert(id.clone(), compacted);
        tracing::debug!(shard = %id.shard, unit = %id.unit, from = old.map_or(0, |file| file.len), to = bytes.len(), "replica file compaction started");
        Ok(job)
    }

    /// The msyncs of everything written since the last call, for the sync thread.
    pub fn take_sync_jobs(&mut self) -> Vec<SyncJob> {
        self.files
            .iter_mut()
            .filter_map(|(id, file)| file.take_job(id))
            .collect()
    }
}

/// Bytes of replica writes not yet durable, and whether the writer or sync thread stopped.
#[derive(Default)]
struct Queue {
    bytes: usize,
    stopped: bool,
}

/// The bytes of replica writes on their way to the disk: queued for the writer thread, or
/// written to the maps and waiting for their msync. The event loop adds what it queues; the
/// writer releases what needs no msync, the sync thread what it made durable. Counting up to
/// the msync keeps the dirty pages, and so the disk's queue, short: a Raft log fdatasync on
/// the same disk waits behind at most that much replica data (ext4 also writes a file's
/// newly allocated dirty blocks before the journal commit that an fdatasync waits for).
#[derive(Clone, Default)]
pub struct Backlog {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    /// Woken when the backlog comes down to [`INTAKE_RESUME_AT`], or stops.
    resumed: Arc<tokio::sync::Notify>,
}

impl Backlog {
    /// `weight` bytes are durable (or need no msync).
    fn release(&self, weight: usize) {
        if weight == 0 {
            return;
        }
        let (queue, drained) = &*self.queue;
        let mut queue = queue.lock();
        let before = queue.bytes;
        queue.bytes = queue.bytes.saturating_sub(weight);
        if before > INTAKE_RESUME_AT && queue.bytes <= INTAKE_RESUME_AT {
            self.resumed.notify_one();
        }
        drained.notify_all();
    }

    /// A thread that releases bytes stopped: nobody may wait for the backlog any more.
    fn stop(&self) {
        let (queue, drained) = &*self.queue;
        queue.lock().stopped = true;
        drained.notify_all();
        self.resumed.notify_one();
    }
}

/// Stops the backlog when the thread holding it ends, however it ends (so the event loop never
/// waits for a thread that is gone).
struct StopOnDrop(Backlog);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The event loop's handle on the writer thread.
pub struct Writer {
    sender: mailbox::Sender<Vec<FileOp>>,
    backlog: Backlog,
    /// Data intake is paused (see the module doc).
    paused: bool,
}

impl Writer {
    /// Whether the event loop should leave data events waiting, because the disk is
    /// behind: true from [`INTAKE_PAUSE_AT`] bytes in the [`Backlog`] until it is down to
    /// [`INTAKE_RESUME_AT`] ([`resumed`](Self::resumed) tells when).
    /// A stopped writer pauses nothing: the loop must go on to hear why it stopped.
    pub fn intake_paused(&mut self) -> bool {
        let queue = self.backlog.queue.0.lock();
        let bytes = if queue.stopped { 0 } else { queue.bytes };
        drop(queue);
        self.paused = if self.paused {
            bytes > INTAKE_RESUME_AT
        } else {
            bytes > INTAKE_PAUSE_AT
        };
        self.paused
    }

    /// Bytes in the backlog now.
    pub fn queued_bytes(&self) -> usize {
        self.backlog.queue.0.lock().bytes
    }

    /// Completes once the backlog came down to [`INTAKE_RESUME_AT`] since the last call (or
    /// a disk thread stopped).
    pub fn resumed(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.backlog.resumed.notified()
    }

    /// Queues `ops` for the writer thread. While more than [`WRITES_QUEUED_MAX`] bytes are
    /// in the backlog it first waits for the disk; returns how long it waited. Fails when the
    /// writer or sync thread stopped (it reported why).
    pub fn send(&self, ops: Vec<FileOp>) -> anyhow::Result<Duration> {
        let weight: usize = ops.iter().map(weight).sum();
        let started = std::time::Instant::now();
        let urgent = {
            let (queue, drained) = &*self.backlog.queue;
            let mut queue = queue.lock();
            while !queue.stopped && queue.bytes > 0 && queue.bytes + weight > WRITES_QUEUED_MAX {
                drained.wait(&mut queue);
            }
            if queue.stopped {
                anyhow::bail!("the replica writer or sync thread stopped");
            }
            queue.bytes += weight;
            queue.bytes >= WRITE_URGENT_AT
        };
        let waited = started.elapsed();
        self.sender
            .send(ops, urgent)
            .map_err(|_| anyhow::anyhow!("the replica writer thread stopped"))?;
        Ok(waited)
    }
}

/// The writer thread: carries out the queued [`FileOp`]s in order, then hands the msyncs of
/// what it wrote (and any compacted file to install) to the sync thread `syncer`. After a
/// batch it gathers what comes for up to `linger` before the next (one wake-up for several
/// commits rather than one each), unless [`WRITE_URGENT_AT`] bytes are in the backlog; a
/// batch after an idle spell is written at once. A failed write is reported with `report`
/// and stops the thread. It stops when the [`Writer`] is dropped.
pub fn start_writer(
    mut writer: FileWriter,
    backlog: Backlog,
    syncer: mailbox::Sender<DiskWork>,
    linger: Duration,
    report: impl Fn(Result<DiskReport, String>) -> bool + Send + 'static,
) -> std::io::Result<Writer> {
    let (sender, receiver) = mailbox::mailbox::<Vec<FileOp>>();
    let stopper = StopOnDrop(backlog.clone());
    std::thread::Builder::new()
        .name("replica-write".into())
        .spawn(move || {
            let stopper = stopper;
            set_thread_nice(WRITER_THREAD_NICE);
            // The weight of what was written since the last msyncs were handed over.
            let mut written = 0;
            let hand_over = |writer: &mut FileWriter, written: &mut usize| {
                let weight = std::mem::take(written);
                let jobs = writer.take_sync_jobs();
                if jobs.is_empty() {
                    stopper.0.release(weight);
                    true
                } else {
                    syncer.send(DiskWork::Sync { jobs, weight }, false).is_ok()
                }
            };
            let mut linger_until = None;
            loop {
                let batches = match linger_until {
                    None => receiver.recv_all(),
                    Some(until) => receiver.linger_until(until),
                };
                let Some(batches) = batches else {
                    return;
                };
                if batches.is_empty() {
                    // Nothing came while it lingered: idle until the next batch.
                    linger_until = None;
                    continue;
                }
                for op in batches.into_iter().flatten() {
                    let weight = weight(&op);
                    match writer.run(op) {
                        Ok(None) => written += weight,
                        Ok(Some(job)) => {
                            // What the old file holds needs no msync: the compacted file
                            // replaces it. What was written to other files goes first.
                            if !hand_over(&mut writer, &mut written)
                                || syncer
                                    .send(DiskWork::Compact { job, weight }, false)
                                    .is_err()
                            {
                                return;
                            }
                        }
                        Err(error) => {
                            // Stopped first: the report may wait for the loop's data intake.
                            drop(stopper);
                            report(Err(format!("replica file write: {error:#}")));
                            return;
                        }
                    }
                }
                if !hand_over(&mut writer, &mut written) {
                    return;
                }
                linger_until = (!linger.is_zero()).then(|| std::time::Instant::now() + linger);
            }
        })?;
    Ok(Writer {
        sender,
        backlog,
        paused: false,
    })
}

/// A replica file read back at start.
pub struct OpenedReplica {
    /// The replica.
    pub id: ReplicaId,
    /// What its file holds.
    pub recovered: Recovered,
    /// The generation the file was opened with (distinct per file).
    pub generation: u64,
    /// Bytes of records in it.
    pub len: usize,
}

/// What opening the replica directory found.
pub struct Opened {
    /// The files, for the writer thread.
    pub writer: FileWriter,
    /// Each replica read back, for the node's data plane and books.
    pub replicas: Vec<OpenedReplica>,
}

/// Opens (creating) `dir` and reads every replica file in it back. A file that is not a
/// replica is set aside (renamed `*.bad`); a torn tail is cut; a compacted file that was not
/// put in place (`*.tmp`) is removed: the original is still whole.
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
                let generation = files.len() as u64;
                let version = recovered.replica.version();
                if let Some(note) = &recovered.stamp_unchecked {
                    tracing::info!(file = %path.display(), %note, "replica file stamp not checked");
                }
                let file = ReplicaFile::open(
                    path,
                    recovered.valid_len,
                    replica_file::stamp_at(&id.shard, &id.unit),
                    version,
                    generation,
                )?;
                files.insert(id.clone(), file);
                replicas.push(OpenedReplica {
                    id,
                    len: recovered.valid_len,
                    recovered,
                    generation,
                });
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
        writer: FileWriter { dir, files },
        replicas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::data::ShardReplica;
    use tandem_core::data::{Op, OpKind, Write};
    use tandem_node::ReplicaBooks;

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
                    value: Some(value.to_vec().into()),
                    priority: None,
                }]
                .into(),
                consumed: None,
            },
        })
    }

    /// What [`open`] found, with the books the node would keep of it.
    struct TestOpened {
        store: ReplicaBooks,
        writer: FileWriter,
        replicas: Vec<(ReplicaId, Recovered)>,
    }

    fn open_dir(path: PathBuf) -> anyhow::Result<TestOpened> {
        let opened = open(path)?;
        let mut store = ReplicaBooks::new(Default::default());
        let replicas = opened
            .replicas
            .into_iter()
            .map(|found| {
                store.recovered(
                    found.id.clone(),
                    found.generation,
                    found.recovered.replica.version(),
                    found.len,
                );
                (found.id, found.recovered)
            })
            .collect();
        Ok(TestOpened {
            store,
            writer: opened.writer,
            replicas,
        })
    }

    /// The event loop's store and the writer's files, run in line: what the daemon runs on
    /// three threads, in the same order.
    struct Files {
        store: ReplicaBooks,
        writer: FileWriter,
    }

    impl Files {
        fn open(path: &Path) -> (Self, Vec<(ReplicaId, Recovered)>) {
            let opened = open_dir(path.to_owned()).expect("open");
            let files = Files {
                store: opened.store,
                writer: opened.writer,
            };
            (files, opened.replicas)
        }

        fn apply(&mut self, id: &ReplicaId, action: &PersistAction) {
            self.store.apply(id, action.clone());
            assert!(self.write().is_empty(), "no compaction");
        }

        /// Carries out the queued operations; returns the compactions to install.
        fn write(&mut self) -> Vec<CompactJob> {
            self.store
                .take_ops()
                .into_iter()
                .filter_map(|op| self.writer.run(op).expect("write"))
                .collect()
        }

        /// Writes and msyncs everything queued; returns the versions durable.
        fn sync_now(&mut self) -> Vec<(ReplicaId, u64)> {
            assert!(self.write().is_empty(), "no compaction");
            let mut reports = Vec::new();
            for job in self.writer.take_sync_jobs() {
                job.run().expect("msync");
                reports.push(Synced {
                    id: job.id,
                    generation: job.generation,
                    version: job.version,
                    len: job.end,
                });
            }
            self.store.synced(reports)
        }

        /// Queues and writes a compaction of `replica` when the file is big enough.
        fn start_compaction(&mut self, replica: &ShardReplica) -> Option<CompactJob> {
            if !self.store.start_compaction(&id(), replica, true) {
                return None;
            }
            let mut jobs = self.write();
            assert_eq!(jobs.len(), 1);
            jobs.pop()
        }
    }

    /// Writes 300 ops of 64 KiB (three keys) to the store, synced: a file big enough to
    /// compact. Returns the replica they make.
    fn fill(store: &mut Files) -> ShardReplica {
        let mut replica = ShardReplica::new();
        for seq in 1..=300 {
            write_op(store, &mut replica, seq);
        }
        store.sync_now();
        replica
    }

    /// Writes op `seq` (a 64 KiB value) to the store, applies it to `replica` and stamps
    /// the file with it.
    fn write_op(store: &mut Files, replica: &mut ShardReplica, seq: u64) {
        let action = op(seq, &[b'x'; 64 * 1024]);
        if let PersistAction::Op(op) = &action {
            replica.apply(op).expect("applies");
        }
        store.apply(&id(), &action);
        store.apply(&id(), &PersistAction::Stamp(Stamp::of(replica)));
        assert!(store.write().is_empty(), "no compaction");
    }

    #[test]
    fn written_ops_come_back_after_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let (mut store, _) = Files::open(&path);
        for seq in 1..=10 {
            store.apply(&id(), &op(seq, b"value"));
        }
        let synced = store.sync_now();
        assert_eq!(synced, vec![(id(), 10)]);
        let len = store.store.file_len(&id()).expect("file");
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
        let (mut store, replicas) = Files::open(&path);
        assert_eq!(replicas.len(), 1);
        let (_, recovered) = &replicas[0];
        assert_eq!(recovered.replica.version(), 10);
        assert_eq!(recovered.valid_len, len);
        // Appending after the cut tail gives a readable file again.
        store.apply(&id(), &op(11, b"more"));
        store.sync_now();
        drop(store);
        let opened = open_dir(path).expect("reopen");
        assert_eq!(opened.replicas[0].1.replica.version(), 11);
    }

    #[test]
    fn a_commit_of_more_large_values_than_one_gathering_write_takes_comes_back_whole() {
        // 1500 values of 5000 bytes: each is a part of its own (3000 parts with the keys'
        // bytes between them, over the 1024 one `pwritev` takes) and the file grows.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let (mut store, _) = Files::open(&path);
        let writes: Vec<Write> = (0..1500u32)
            .map(|n| Write {
                key: format!("k{n}").into_bytes(),
                value: Some(vec![(n % 251) as u8; 5000].into()),
                priority: None,
            })
            .collect();
        let op = Op {
            seq: 1,
            epoch: 1,
            kind: OpKind::Commit {
                writes: writes.into(),
                consumed: None,
            },
        };
        let mut expected = ShardReplica::new();
        expected.apply(&op).expect("applies");
        store.apply(&id(), &PersistAction::Op(op));
        assert_eq!(store.sync_now(), vec![(id(), 1)]);
        drop(store);
        let opened = open_dir(path).expect("reopen");
        let recovered = &opened.replicas[0].1;
        assert!(recovered.stopped.is_none(), "{:?}", recovered.stopped);
        assert_eq!(recovered.replica, expected);
    }

    fn synced(report: Result<DiskReport, String>) -> Vec<Synced> {
        match report.expect("no disk error") {
            DiskReport::Synced(synced) => synced,
            other => panic!("expected a sync report, got {other:?}"),
        }
    }

    #[test]
    fn while_no_commit_awaits_the_disk_rounds_wait_for_the_long_spacing_until_a_nudge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = Files::open(&dir.path().join("replicas"));
        let (reports_tx, reports) = std::sync::mpsc::channel();
        let hour = Duration::from_secs(3600);
        let pace = SyncPace::new(Duration::ZERO, hour);
        assert!(!pace.set_awaited(false), "not a change to awaited");
        let syncer = start_syncer(pace.clone(), Backlog::default(), move |outcome| {
            reports_tx.send(outcome).is_ok()
        })
        .expect("sync thread");
        let send = |store: &mut Files, seq: u64| {
            store.apply(&id(), &op(seq, b"value"));
            let jobs = store.writer.take_sync_jobs();
            syncer
                .send(DiskWork::Sync { jobs, weight: 0 }, false)
                .expect("queued");
        };
        let wait = Duration::from_secs(10);
        // The first round after an idle start is at once.
        send(&mut store, 1);
        let report = synced(reports.recv_timeout(wait).expect("a report"));
        assert_eq!(store.store.synced(report), vec![(id(), 1)]);
        // The next waits for the in-sync spacing (an hour)...
        send(&mut store, 2);
        assert!(
            reports.recv_timeout(Duration::from_millis(100)).is_err(),
            "a round before the spacing was up"
        );
        // ...until a commit may wait for the disk and the thread is nudged.
        assert!(pace.set_awaited(true), "a change to awaited");
        assert!(!pace.set_awaited(true), "no change");
        assert!(SyncPace::nudge(&syncer));
        let report = synced(
            reports
                .recv_timeout(wait)
                .expect("a report after the nudge"),
        );
        assert_eq!(store.store.synced(report), vec![(id(), 2)]);
    }

    #[test]
    fn the_sync_thread_merges_queued_jobs_and_a_report_of_a_file_that_started_over_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let (mut store, _) = Files::open(&path);
        let (reports_tx, reports) = std::sync::mpsc::channel();
        let syncer = start_syncer(
            SyncPace::fixed(std::time::Duration::from_millis(50)),
            Backlog::default(),
            move |outcome| reports_tx.send(outcome).is_ok(),
        )
        .expect("sync thread");
        // Three batches of writes, queued before the thread can take them one by one: the
        // first round syncs at once, the next two are gathered into one round 50 ms later.
        let mut sent = Vec::new();
        for seq in 1..=3 {
            store.apply(&id(), &op(seq, b"value"));
            sent.extend(store.writer.take_sync_jobs());
        }
        assert_eq!(sent.len(), 3, "one job per batch of writes");
        for job in sent {
            syncer
                .send(
                    DiskWork::Sync {
                        jobs: vec![job],
                        weight: 0,
                    },
                    false,
                )
                .expect("queued");
        }
        let wait = std::time::Duration::from_secs(10);
        let mut durable = Vec::new();
        while durable.last().map(|(_, version)| *version) != Some(3) {
            let report = synced(reports.recv_timeout(wait).expect("a report"));
            durable.extend(store.store.synced(report));
        }
        assert!(
            durable.len() <= 2,
            "queued jobs are merged per file: {durable:?}"
        );
        // A job taken before the replica started over reports a version of the old content:
        // it is dropped, and the reset's own sync is reported.
        store.apply(&id(), &op(4, b"value"));
        let old = store.writer.take_sync_jobs();
        let mut snapshot = ShardReplica::new().snapshot();
        snapshot.version = 2;
        store.apply(&id(), &PersistAction::Reset(snapshot));
        syncer
            .send(
                DiskWork::Sync {
                    jobs: old,
                    weight: 0,
                },
                false,
            )
            .expect("queued");
        let report = synced(reports.recv_timeout(wait).expect("a report"));
        assert_eq!(store.store.synced(report), Vec::new());
        syncer
            .send(
                DiskWork::Sync {
                    jobs: store.writer.take_sync_jobs(),
                    weight: 0,
                },
                false,
            )
            .expect("queued");
        let report = synced(reports.recv_timeout(wait).expect("a report"));
        assert_eq!(store.store.synced(report), vec![(id(), 2)]);
    }

    #[test]
    fn a_grown_file_is_compacted_and_reads_back_the_same_replica() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let (mut store, _) = Files::open(&path);
        let replica = fill(&mut store);
        let before = store.store.file_len(&id()).expect("file");
        let job = store
            .start_compaction(&replica)
            .expect("the file is big enough to compact");
        let done = job.run().expect("installed");
        assert_eq!(store.store.installed(done), Some((id(), 300)));
        let after = store.store.file_len(&id()).expect("file");
        assert!(after * 10 < before, "compacted {before} -> {after}");
        drop(store);
        let opened = open_dir(path).expect("reopen");
        let (_, recovered) = &opened.replicas[0];
        assert!(recovered.complete);
        assert_eq!(recovered.replica.version(), 300);
        assert_eq!(recovered.replica.digest(), replica.digest());
        assert_eq!(recovered.stamp_unchecked, None, "the stamp was checked");
    }

    #[test]
    fn writes_made_while_a_compacted_file_is_put_in_place_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let (mut store, _) = Files::open(&path);
        let mut replica = fill(&mut store);
        let job = store
            .start_compaction(&replica)
            .expect("the file is big enough to compact");
        // Writes go on, to the compacted file, while the sync thread puts it in place.
        for seq in 301..=305 {
            write_op(&mut store, &mut replica, seq);
        }
        assert!(store.start_compaction(&replica).is_none(), "one at a time");
        let done = job.run().expect("installed");
        assert_eq!(
            store.store.installed(done),
            Some((id(), 300)),
            "durable as compacted"
        );
        store.sync_now();
        drop(store);
        let opened = open_dir(path).expect("reopen");
        let (_, recovered) = &opened.replicas[0];
        assert_eq!(recovered.replica.version(), 305);
        assert_eq!(recovered.replica.digest(), replica.digest());
        assert_eq!(
            recovered.stamp_unchecked, None,
            "the stamp of the writes made meanwhile was checked"
        );
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
        let (mut store, _) = Files::open(&path);
        let replica = fill(&mut store);
        let job = store
            .start_compaction(&replica)
            .expect("the file is big enough to compact");
        let mut snapshot = ShardReplica::new().snapshot();
        snapshot.version = 7;
        store.apply(&id(), &PersistAction::Reset(snapshot));
        let done = job.run().expect("installed");
        assert_eq!(
            store.store.installed(done),
            None,
            "the compacted version is not reported"
        );
        store.sync_now();
        drop(store);
        let opened = open_dir(path).expect("reopen");
        assert_eq!(
            opened.replicas[0].1.replica.version(),
            7,
            "the reset stands"
        );
    }

    #[test]
    fn two_compactions_of_a_replica_removed_in_between_never_share_a_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let (mut store, _) = Files::open(&path);
        let replica = fill(&mut store);
        let first = store
            .start_compaction(&replica)
            .expect("the file is big enough to compact");
        // The replica goes and comes back, compacted again, before the sync thread ran the
        // first job: each job must install its own file, or none.
        store.apply(&id(), &PersistAction::Remove);
        let again = fill(&mut store);
        let second = store
            .start_compaction(&again)
            .expect("the new file is big enough to compact");
        let done = first.run().expect("nothing to install is no error");
        assert!(!done.installed, "the first file went with its replica");
        assert_eq!(store.store.installed(done), None);
        let done = second.run().expect("installed");
        assert!(done.installed, "the second job found its own file");
        assert_eq!(store.store.installed(done), Some((id(), 300)));
        drop(store);
        let opened = open_dir(path).expect("reopen");
        assert_eq!(opened.replicas[0].1.replica.digest(), again.digest());
    }

    #[test]
    fn a_replica_removed_while_its_compacted_file_is_put_in_place_stays_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let (mut store, _) = Files::open(&path);
        let replica = fill(&mut store);
        let job = store
            .start_compaction(&replica)
            .expect("the file is big enough to compact");
        store.apply(&id(), &PersistAction::Remove);
        let done = job.run().expect("nothing to install is no error");
        assert_eq!(store.store.installed(done), None);
        drop(store);
        assert!(open_dir(path).expect("reopen").replicas.is_empty());
    }

    #[test]
    fn written_bytes_count_in_the_backlog_until_their_msync_is_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opened = open_dir(dir.path().join("replicas")).expect("open");
        let mut store = opened.store;
        let backlog = Backlog::default();
        // The writer hands its msyncs to us first, then we pass them on to a sync thread.
        let (to_us, handed) = mailbox::mailbox();
        let writer = start_writer(
            opened.writer,
            backlog.clone(),
            to_us,
            Duration::ZERO,
            |_| true,
        )
        .expect("writer thread");
        store.apply(&id(), op(1, &[7; 4096]));
        let ops = store.take_ops();
        let weight: usize = ops.iter().map(weight).sum();
        writer.send(ops).expect("queued");
        let wait = Duration::from_secs(10);
        let deadline = std::time::Instant::now() + wait;
        let mut handed_over = loop {
            let taken = handed.try_recv_all();
            if !taken.is_empty() {
                break taken;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the writer handed over an msync"
            );
            std::thread::yield_now();
        };
        assert_eq!(handed_over.len(), 1, "one msync for one batch");
        let work = handed_over.remove(0);
        assert_eq!(
            writer.queued_bytes(),
            weight,
            "written to the map but not durable: still in the backlog"
        );
        let (reports_tx, reports) = std::sync::mpsc::channel();
        let syncer = start_syncer(SyncPace::fixed(Duration::ZERO), backlog, move |outcome| {
            reports_tx.send(outcome).is_ok()
        })
        .expect("sync thread");
        syncer.send(work, false).expect("queued");
        let durable = store.synced(synced(reports.recv_timeout(wait).expect("a report")));
        assert_eq!(durable, vec![(id(), 1)]);
        assert_eq!(writer.queued_bytes(), 0, "released once synced");
        // A sync thread that is gone stops the backlog: the loop never waits for it.
        drop(syncer);
        let deadline = std::time::Instant::now() + wait;
        let mut seq = 2;
        loop {
            store.apply(&id(), op(seq, b"value"));
            seq += 1;
            if writer.send(store.take_ops()).is_err() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the backlog stopped");
            std::thread::yield_now();
        }
    }

    #[test]
    fn the_writer_thread_writes_in_order_and_its_failure_stops_the_event_loop_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        let opened = open_dir(path.clone()).expect("open");
        let mut store = opened.store;
        let (reports_tx, reports) = std::sync::mpsc::channel();
        let sync_reports = reports_tx.clone();
        let backlog = Backlog::default();
        let syncer = start_syncer(
            SyncPace::fixed(Duration::ZERO),
            backlog.clone(),
            move |outcome| sync_reports.send(outcome).is_ok(),
        )
        .expect("sync thread");
        // The writer lingers after each batch: the batches that come meanwhile are written
        // together, in order.
        let linger = Duration::from_millis(1);
        let writer = start_writer(opened.writer, backlog, syncer, linger, move |outcome| {
            reports_tx.send(outcome).is_ok()
        })
        .expect("writer thread");
        // A reset in the middle (a transfer starting at version 10): what the file holds from
        // then on is the new generation's.
        for seq in 1..=20 {
            store.apply(&id(), op(seq, b"value"));
            if seq == 10 {
                let mut snapshot = ShardReplica::new().snapshot();
                snapshot.version = 10;
                store.apply(&id(), PersistAction::Reset(snapshot));
            }
            writer.send(store.take_ops()).expect("queued");
        }
        let wait = Duration::from_secs(10);
        let mut durable = Vec::new();
        while durable.last().map(|(_, version)| *version) != Some(20) {
            let report = synced(reports.recv_timeout(wait).expect("a report"));
            durable.extend(store.synced(report));
        }
        assert!(
            durable.windows(2).all(|pair| pair[0].1 <= pair[1].1),
            "durable versions only grow: {durable:?}"
        );
        drop(writer);
        let (_, recovered) = &open_dir(path.clone()).expect("reopen").replicas[0];
        assert_eq!(recovered.replica.version(), 20);
        // A write that fails (the directory is gone, so a new file cannot be created) is
        // reported, and the event loop's next hand-over fails instead of waiting.
        let opened = open_dir(path.clone()).expect("open");
        let mut store = opened.store;
        let (reports_tx, reports) = std::sync::mpsc::channel();
        let backlog = Backlog::default();
        let syncer = start_syncer(SyncPace::fixed(Duration::ZERO), backlog.clone(), |_| true)
            .expect("sync thread");
        let linger = Duration::ZERO;
        let writer = start_writer(opened.writer, backlog, syncer, linger, move |outcome| {
            reports_tx.send(outcome).is_ok()
        })
        .expect("writer thread");
        std::fs::remove_dir_all(&path).expect("remove the directory");
        let other = ReplicaId {
            shard: ShardName("s1".into()),
            unit: UnitName("u1".into()),
        };
        store.apply(&other, op(1, b"value"));
        writer.send(store.take_ops()).expect("queued");
        let error = reports
            .recv_timeout(wait)
            .expect("a report")
            .expect_err("the write failed");
        assert!(error.contains("create replica file"), "{error}");
        let deadline = std::time::Instant::now() + wait;
        loop {
            store.apply(&other, op(2, b"value"));
            if writer.send(store.take_ops()).is_err() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the writer stopped");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_file_that_is_not_a_replica_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replicas");
        std::fs::create_dir_all(&path).expect("mkdir");
        std::fs::write(path.join(file_name(&id())), b"hello").expect("write");
        let opened = open_dir(path.clone()).expect("open");
        assert!(opened.replicas.is_empty());
        assert!(path.join("s0@u1.bad").exists());
    }
}
