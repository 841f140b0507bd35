//! Durable Raft storage: a write-ahead log in segments, plus snapshot files.
//!
//! ## On disk
//! - `wal-<seq>.log`: segments of records, each one frame of the shared codec
//!   (`[len][crc32][payload]`), the payload being `[kind: u8][body]`. Kinds: a log entry, the
//!   hard state, the configuration state, and a log reset (the log was replaced by a snapshot
//!   from the leader). A new segment starts with the current configuration and hard state, so
//!   older segments can be deleted once a snapshot covers their entries.
//! - `snap-<index>.snap`: the newest snapshot, one frame, written atomically.
//!
//! ## Recovery
//! Replay reads the newest valid snapshot, then every segment in order. A record that is cut
//! short or fails its crc at the tail of the last segment is a torn write: the file is cut there
//! and the cut is reported (never applied). The same in an earlier segment, which was synced
//! before the next one began, is corruption: opening fails with the segment and offset.
//!
//! ## Durability
//! Writes are buffered until [`WalStorage::sync`], which writes and `fdatasync`s them. The
//! replica syncs before it sends any message that acknowledges them.

use std::cell::Cell;
use std::io;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use tandem_proto::frame::{encode_frame, parse_frame, SliceFrame};

use crate::disk::{Disk, DiskFile};

const RECORD_ENTRY: u8 = 1;
const RECORD_HARD_STATE: u8 = 2;
const RECORD_CONF_STATE: u8 = 3;
const RECORD_LOG_RESET: u8 = 4;

/// Tunables of the write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment that reaches this size is closed and a new one begins.
    pub segment_len_max: u64,
    /// Largest record (or snapshot) accepted when reading; anything larger is corruption.
    pub record_len_max: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_len_max: 64 * 1024 * 1024,
            record_len_max: 256 * 1024 * 1024,
        }
    }
}

/// Failure of the durable storage. Every variant is fatal for the node: it must not go on
/// with a log it cannot trust or cannot write.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The disk refused an operation.
    #[error("{action} {file}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file concerned.
        file: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A synced part of the log or a snapshot is damaged.
    #[error("corrupt raft storage in {file} at byte {offset}: {reason}")]
    Corrupt {
        /// The file concerned.
        file: String,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

fn io_error<'a>(
    action: &'static str,
    file: &'a str,
) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        action,
        file: file.to_owned(),
        source,
    }
}

/// What recovery found when the storage was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments read.
    pub segments: usize,
    /// Log entries held after replay.
    pub entries: usize,
    /// Index of the snapshot loaded (0: none).
    pub snapshot_index: u64,
    /// A torn tail that was cut: the segment, the offset of the cut and the bytes dropped.
    pub torn_tail: Option<(String, u64, u64)>,
    /// Whether the storage was empty and was bootstrapped with the given configuration.
    pub bootstrapped: bool,
}

/// One segment of the log.
#[derive(Debug, Clone)]
struct Segment {
    /// File name.
    name: String,
    /// Sequence number (from the name).
    seq: u64,
    /// Highest entry index written into it (0: none).
    last_index: u64,
}

/// Raft storage on a [`Disk`]: the in-memory image of the log plus its durable write-ahead log.
pub struct WalStorage<D: Disk> {
    /// The directory.
    disk: D,
    /// Tunables.
    options: WalOptions,
    /// Current hard state (term, vote, commit).
    hard_state: HardState,
    /// Current configuration (voters, learners).
    conf_state: ConfState,
    /// Newest snapshot on disk; its metadata index is the log's base (0 and empty when none).
    snapshot: Snapshot,
    /// Entries after the snapshot, contiguous.
    entries: Vec<Entry>,
    /// Segments in order; the last is the one being appended.
    segments: Vec<Segment>,
    /// Handle of the active segment.
    active: D::File,
    /// Bytes in the active segment, flushed or pending.
    active_len: u64,
    /// Records written since the last sync, not yet handed to the disk.
    pending: Vec<u8>,
    /// Bytes were handed to the active segment and not synced since.
    unsynced: bool,
    /// Set when raft asked for a snapshot newer than the one we hold.
    snapshot_wanted: Cell<bool>,
    /// What recovery found.
    recovery: RecoveryReport,
}

impl<D: Disk> std::fmt::Debug for WalStorage<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalStorage")
            .field("hard_state", &self.hard_state)
            .field("snapshot_index", &self.snapshot_index())
            .field("entries", &self.entries.len())
            .field("segments", &self.segments.len())
            .finish()
    }
}

fn segment_name(seq: u64) -> String {
    format!("wal-{seq:016}.log")
}

fn snapshot_name(index: u64) -> String {
    format!("snap-{index:020}.snap")
}

fn parse_numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

fn record(kind: u8, body: &[u8], out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(1 + body.len());
    payload.push(kind);
    payload.extend_from_slice(body);
    let mut framed = bytes::BytesMut::new();
    encode_frame(&payload, &mut framed);
    out.extend_from_slice(&framed);
}

fn encode<M: protobuf::Message>(message: &M) -> Vec<u8> {
    message
        .write_to_bytes()
        .expect("encoding a raft protobuf into memory cannot fail")
}

impl<D: Disk> WalStorage<D> {
    /// Opens the storage in `disk`, replaying what is there. An empty disk is bootstrapped
    /// with `initial_conf` (durably, before this returns).
    pub fn open(
        disk: D,
        options: WalOptions,
        initial_conf: ConfState,
    ) -> Result<Self, StorageError> {
        let names = disk.list().map_err(io_error("list", "raft directory"))?;
        let mut snapshot_indexes = Vec::new();
        let mut segment_seqs = Vec::new();
        for name in &names {
            if let Some(index) = parse_numbered(name, "snap-", ".snap") {
                snapshot_indexes.push(index);
            } else if let Some(seq) = parse_numbered(name, "wal-", ".log") {
                segment_seqs.push(seq);
            } else if name.ends_with(".tmp") {
                // A snapshot write that did not finish; the old snapshot is still whole.
                disk.remove(name).map_err(io_error("remove", name))?;
            }
        }
        snapshot_indexes.sort_unstable();
        segment_seqs.sort_unstable();

        let mut recovery = RecoveryReport::default();
        let mut snapshot = Snapshot::default();
        while let Some(index) = snapshot_indexes.pop() {
            let name = snapshot_name(index);
            let data = disk.read(&name).map_err(io_error("read", &name))?;
            let parsed = match parse_frame(&data, options.record_len_max) {
                SliceFrame::Frame { payload, .. } => {
                    Snapshot::parse_from_bytes(payload).map_err(|error| error.to_string())
                }
                SliceFrame::Truncated => Err("file is cut short".to_owned()),
                SliceFrame::Invalid(error) => Err(error.to_string()),
            };
            match parsed {
                Ok(parsed) if parsed.get_metadata().index == index => {
                    snapshot = parsed;
                    break;
                }
                Ok(_) => {
                    tracing::warn!(file = %name, "snapshot index differs from its name; ignored")
                }
                Err(reason) => {
                    tracing::warn!(file = %name, %reason, "snapshot unreadable; trying an older one")
                }
            }
        }
        recovery.snapshot_index = snapshot.get_metadata().index;

        let mut storage_hard_state = HardState::default();
        let mut conf_state: Option<ConfState> = None;
        if snapshot.get_metadata().index > 0 {
            conf_state = Some(snapshot.get_metadata().get_conf_state().clone());
        }
        let mut entries: Vec<Entry> = Vec::new();
        let mut segments = Vec::new();
        let base = snapshot.get_metadata().index;
        let segment_count = segment_seqs.len();
        for (position, seq) in segment_seqs.into_iter().enumerate() {
            let name = segment_name(seq);
            let is_last = position + 1 == segment_count;
            let data = disk.read(&name).map_err(io_error("read", &name))?;
            let mut offset = 0usize;
            let mut last_index = 0;
            while offset < data.len() {
                let failure = match parse_frame(&data[offset..], options.record_len_max) {
                    SliceFrame::Frame { payload, consumed } => {
                        let applied = Self::replay_record(
                            payload,
                            base,
                            &mut entries,
                            &mut storage_hard_state,
                            &mut conf_state,
                        );
                        match applied {
                            Ok(Some(index)) => last_index = last_index.max(index),
                            Ok(None) => {}
                            Err(reason) => {
                                return Err(StorageError::Corrupt {
                                    file: name,
                                    offset: offset as u64,
                                    reason,
                                })
                            }
                        }
                        offset += consumed;
                        continue;
                    }
                    SliceFrame::Truncated => "record cut short".to_owned(),
                    SliceFrame::Invalid(error) => error.to_string(),
                };
                if !is_last {
                    return Err(StorageError::Corrupt {
                        file: name,
                        offset: offset as u64,
                        reason: format!("{failure} in a segment that was synced and closed"),
                    });
                }
                let dropped = (data.len() - offset) as u64;
                tracing::warn!(
                    file = %name,
                    offset,
                    dropped_bytes = dropped,
                    reason = %failure,
                    "torn tail in the raft log; cutting it off (it was never acknowledged)"
                );
                disk.truncate(&name, offset as u64)
                    .map_err(io_error("truncate", &name))?;
                recovery.torn_tail = Some((name.clone(), offset as u64, dropped));
                break;
            }
            segments.push(Segment {
                name,
                seq,
                last_index,
            });
        }
        recovery.segments = segments.len();

        let bootstrapped = conf_state.is_none();
        let conf_state = conf_state.unwrap_or(initial_conf);
        let last_index = entries.last().map_or(base, |entry| entry.index);
        if storage_hard_state.commit < base {
            storage_hard_state.commit = base;
        }
        if storage_hard_state.term < snapshot.get_metadata().term {
            storage_hard_state.term = snapshot.get_metadata().term;
        }
        if storage_hard_state.commit > last_index {
            tracing::warn!(
                commit = storage_hard_state.commit,
                last_index,
                "recorded commit index is past the last durable entry; lowering it"
            );
            storage_hard_state.commit = last_index;
        }

        let (active_segment, active_len) = match segments.last() {
            Some(segment) => {
                let len = disk
                    .read(&segment.name)
                    .map_err(io_error("read", &segment.name))?
                    .len() as u64;
                (segment.clone(), len)
            }
            None => {
                let segment = Segment {
                    name: segment_name(1),
                    seq: 1,
                    last_index: 0,
                };
                segments.push(segment.clone());
                (segment, 0)
            }
        };
        let active = disk
            .open_append(&active_segment.name)
            .map_err(io_error("open", &active_segment.name))?;
        recovery.entries = entries.len();
        recovery.bootstrapped = bootstrapped;
        let mut storage = Self {
            disk,
            options,
            hard_state: storage_hard_state,
            conf_state,
            snapshot,
            entries,
            segments,
            active,
            active_len,
            pending: Vec::new(),
            unsynced: false,
            snapshot_wanted: Cell::new(false),
            recovery,
        };
        if bootstrapped {
            let conf = storage.conf_state.clone();
            storage.write_record(RECORD_CONF_STATE, &encode(&conf));
            storage.sync()?;
        }
        Ok(storage)
    }

    /// Applies one replayed record to the image being rebuilt. Returns the entry index for an
    /// entry record. An error means the record is well-framed but makes no sense: corruption.
    fn replay_record(
        payload: &[u8],
        base: u64,
        entries: &mut Vec<Entry>,
        hard_state: &mut HardState,
        conf_state: &mut Option<ConfState>,
    ) -> Result<Option<u64>, String> {
        let (&kind, body) = payload.split_first().ok_or("empty record")?;
        match kind {
            RECORD_ENTRY => {
                let entry = Entry::parse_from_bytes(body).map_err(|error| error.to_string())?;
                let index = entry.index;
                if index <= base {
                    // The snapshot covers this entry, but when it was written it replaced
                    // everything after it, so any entry above the snapshot replayed so far
                    // came before it and was overwritten: keeping it would resurrect a
                    // conflicting suffix the leader had replaced.
                    entries.clear();
                    return Ok(Some(index));
                }
                let expected_max = entries.last().map_or(base, |last| last.index) + 1;
                if index > expected_max {
                    return Err(format!(
                        "log entry {index} follows entry {} (a gap)",
                        expected_max - 1
                    ));
                }
                // An entry at an index we already hold replaces it and everything after it:
                // the leader overwrote a conflicting suffix.
                let keep = (index - base - 1) as usize;
                entries.truncate(keep);
                entries.push(entry);
                Ok(Some(index))
            }
            RECORD_HARD_STATE => {
                *hard_state =
                    HardState::parse_from_bytes(body).map_err(|error| error.to_string())?;
                Ok(None)
            }
            RECORD_CONF_STATE => {
                *conf_state =
                    Some(ConfState::parse_from_bytes(body).map_err(|error| error.to_string())?);
                Ok(None)
            }
            RECORD_LOG_RESET => {
                let index_bytes: [u8; 8] = body
                    .get(..8)
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or("log reset record too short")?;
                let index = u64::from_be_bytes(index_bytes);
                if index > base {
                    return Err(format!(
                        "log reset to snapshot {index}, but the newest snapshot is {base}"
                    ));
                }
                entries.clear();
                Ok(None)
            }
            other => Err(format!("unknown record kind {other}")),
        }
    }

    /// What recovery found when this storage was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Index of the newest snapshot (0 when none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// The newest snapshot (empty when none).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The current hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The current configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Whether raft asked for a snapshot newer than the newest one; clears the flag.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    fn last_entry_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |entry| entry.index)
    }

    fn write_record(&mut self, kind: u8, body: &[u8]) {
        let before = self.pending.len();
        record(kind, body, &mut self.pending);
        self.active_len += (self.pending.len() - before) as u64;
    }

    /// Appends entries (buffered until [`WalStorage::sync`]). Entries at indexes already held
    /// replace them and everything after.
    ///
    /// # Panics
    /// If the entries would leave a gap or reach below the snapshot: raft-rs never asks that.
    pub fn append(&mut self, new_entries: &[Entry]) {
        let Some(first) = new_entries.first() else {
            return;
        };
        let base = self.snapshot_index();
        assert!(
            first.index > base && first.index <= self.last_entry_index() + 1,
            "append of entries {}.. to a log holding {}..={} (snapshot {base})",
            first.index,
            base + 1,
            self.last_entry_index()
        );
        self.entries.truncate((first.index - base - 1) as usize);
        for entry in new_entries {
            self.write_record(RECORD_ENTRY, &encode(entry));
            self.entries.push(entry.clone());
        }
        let last = self.last_entry_index();
        let active = self
            .segments
            .last_mut()
            .expect("there is always an active segment");
        active.last_index = active.last_index.max(last);
    }

    /// Records a new hard state (buffered until [`WalStorage::sync`]).
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        if hard_state != self.hard_state {
            self.write_record(RECORD_HARD_STATE, &encode(&hard_state));
            self.hard_state = hard_state;
        }
    }

    /// Records a new commit index (buffered until [`WalStorage::sync`]).
    pub fn set_commit(&mut self, commit: u64) {
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = commit;
        self.set_hard_state(hard_state);
    }

    /// Hands the buffered records to the disk (the page cache, for a real file) without
    /// waiting for them to be durable: [`WalStorage::syncer`] makes them so, possibly on another
    /// thread. Starts a new segment (synced at once) when the active one is full.
    pub fn write_pending(&mut self) -> Result<(), StorageError> {
        self.hand_over()?;
        if self.active_len >= self.options.segment_len_max {
            // A closed segment is whole on disk: recovery treats a torn record in one as
            // corruption, and entries in the next segment must not outlive its tail.
            self.sync_active()?;
            self.start_segment()?;
        }
        Ok(())
    }

    /// A handle that makes everything written to the active segment durable. Older segments
    /// need none: a segment is synced whole before the next one starts.
    pub fn syncer(&self) -> Result<<D::File as DiskFile>::Syncer, StorageError> {
        let name = &self.segments.last().expect("active segment").name;
        self.active.syncer().map_err(io_error("sync", name))
    }

    /// Writes buffered records and makes them durable, with everything handed to the disk
    /// before (by [`WalStorage::write_pending`]); starts a new segment when the active one is
    /// full.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.hand_over()?;
        self.sync_active()?;
        if self.active_len >= self.options.segment_len_max {
            self.start_segment()?;
        }
        Ok(())
    }

    /// Appends the buffered records to the active segment.
    fn hand_over(&mut self) -> Result<(), StorageError> {
        if !self.pending.is_empty() {
            let name = &self.segments.last().expect("active segment").name;
            self.active
                .append(&self.pending)
                .map_err(io_error("append to", name))?;
            self.pending.clear();
            self.unsynced = true;
        }
        Ok(())
    }

    /// Syncs the active segment if anything was appended to it since its last sync.
    fn sync_active(&mut self) -> Result<(), StorageError> {
        if self.unsynced {
            let name = &self.segments.last().expect("active segment").name;
            self.active.sync().map_err(io_error("sync", name))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Closes the active segment and begins the next one with the current configuration and
    /// hard state, so that older segments are never needed for them.
    fn start_segment(&mut self) -> Result<(), StorageError> {
        let seq = self.segments.last().map_or(1, |segment| segment.seq + 1);
        let name = segment_name(seq);
        self.active = self
            .disk
            .open_append(&name)
            .map_err(io_error("create", &name))?;
        self.segments.push(Segment {
            name,
            seq,
            last_index: 0,
        });
        self.active_len = 0;
        let conf = encode(&self.conf_state);
        let hard = encode(&self.hard_state);
        self.write_record(RECORD_CONF_STATE, &conf);
        self.write_record(RECORD_HARD_STATE, &hard);
        self.sync()
    }

    /// Installs a snapshot received from the leader: the log is replaced by it. Durable on return.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let metadata = snapshot.get_metadata().clone();
        self.write_snapshot_file(&snapshot)?;
        self.entries.clear();
        self.snapshot = snapshot;
        self.conf_state = metadata.get_conf_state().clone();
        let mut body = metadata.index.to_be_bytes().to_vec();
        body.extend_from_slice(&metadata.term.to_be_bytes());
        self.write_record(RECORD_LOG_RESET, &body);
        self.write_record(
            RECORD_CONF_STATE,
            &encode(&metadata.get_conf_state().clone()),
        );
        let mut hard_state = self.hard_state.clone();
        hard_state.term = hard_state.term.max(metadata.term);
        hard_state.commit = hard_state.commit.max(metadata.index);
        self.set_hard_state(hard_state);
        self.sync()?;
        self.remove_obsolete(metadata.index)
    }

    /// Records a snapshot of the applied state at `index` (which must be held in the log) and
    /// drops the entries it covers, in memory and, segment by segment, on disk.
    pub fn compact_with_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let base = self.snapshot_index();
        assert!(
            index > base && index <= self.last_entry_index(),
            "snapshot at {index} outside the log {}..={}",
            base + 1,
            self.last_entry_index()
        );
        let term = self.entries[(index - base - 1) as usize].term;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let metadata = snapshot.mut_metadata();
        metadata.index = index;
        metadata.term = term;
        metadata.set_conf_state(conf_state);
        // The entries after `index` must be durable before the snapshot lets go of older ones.
        self.sync()?;
        self.write_snapshot_file(&snapshot)?;
        self.entries.drain(..(index - base) as usize);
        self.snapshot = snapshot;
        self.remove_obsolete(index)
    }

    fn write_snapshot_file(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let name = snapshot_name(snapshot.get_metadata().index);
        let payload = encode(snapshot);
        let mut framed = bytes::BytesMut::new();
        encode_frame(&payload, &mut framed);
        self.disk
            .write_atomic(&name, &framed)
            .map_err(io_error("write snapshot", &name))
    }

    /// Deletes snapshot files older than `index` and closed segments whose entries it covers.
    fn remove_obsolete(&mut self, index: u64) -> Result<(), StorageError> {
        let names = self
            .disk
            .list()
            .map_err(io_error("list", "raft directory"))?;
        for name in names {
            if parse_numbered(&name, "snap-", ".snap").is_some_and(|old| old < index) {
                self.disk.remove(&name).map_err(io_error("remove", &name))?;
            }
        }
        let active_seq = self.segments.last().expect("active segment").seq;
        let mut kept = Vec::with_capacity(self.segments.len());
        for segment in self.segments.drain(..) {
            if segment.seq != active_seq && segment.last_index <= index {
                self.disk
                    .remove(&segment.name)
                    .map_err(io_error("remove", &segment.name))?;
            } else {
                kept.push(segment);
            }
        }
        self.segments = kept;
        Ok(())
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

impl<D: Disk> Storage for WalStorage<D> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let base = self.snapshot_index();
        if low <= base {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last_entry_index() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let start = (low - base - 1) as usize;
        let end = (high - base - 1) as usize;
        let mut entries = self.entries[start..end].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let base = self.snapshot_index();
        if index == base {
            return Ok(self.snapshot.get_metadata().term);
        }
        if index < base {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if index > self.last_entry_index() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.entries[(index - base - 1) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_entry_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() >= request_index && self.snapshot_index() > 0 {
            Ok(self.snapshot.clone())
        } else {
            // The replica notices the flag and takes a fresh snapshot; raft asks again later.
            self.snapshot_wanted.set(true);
            Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ))
        }
    }
}
