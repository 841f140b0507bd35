//! WAL replay (`WalStorage::open`) over arbitrary segment contents, optionally split across two
//! segments and optionally on top of a snapshot (layout in `tandem_fuzz::wal_input`).
//!
//! Properties:
//! - opening either fails with `Corrupt`/`Io` or yields a storage whose `raft::Storage` view is
//!   consistent: `first_index() <= last_index() + 1`; `entries(first, last + 1)` returns
//!   exactly `last + 1 - first` entries with consecutive indexes; `term(i)` answers for every
//!   `i` in `first - 1..=last` (the snapshot's term at `first - 1`, the entry's term after);
//!   `term` and `entries` refuse below and above the log; the commit index lies in
//!   `first - 1..=last` (raft-rs panics otherwise); a snapshot is served when one was loaded;
//! - recovery is idempotent: opening the same disk again succeeds, finds no torn tail, and
//!   yields the same log, hard state and configuration;
//! - the recovered storage is writable: an entry appended at `last + 1` and synced is there
//!   after another reopen, after the same log.
//!
//! - replay agrees with a model of the log (`model_replay`): the records applied in order to a
//!   log that is never compacted, an entry replacing the one at its index and all after it,
//!   a log reset clearing it; the storage must hold exactly the model's entries above the
//!   snapshot, its last hard state (commit clamped to the log, term raised to the snapshot's),
//!   and fail with `Corrupt` exactly when the model finds a bad record, a gap, a reset past the
//!   snapshot, or a bad frame in a segment other than the last.
//!
//! Never a panic, whatever the bytes.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage};
use tandem_fuzz::wal_input;
use tandem_proto::frame::{frame_bytes, parse_frame, SliceFrame};
use tandem_raft::disk::{Disk, MemDisk};
use tandem_raft::{StorageError, WalOptions, WalStorage};

const OPTIONS: WalOptions = WalOptions {
    segment_len_max: 4096,
    record_len_max: 1 << 20,
};

fn initial_conf() -> ConfState {
    ConfState::from((vec![1, 2, 3], vec![]))
}

/// A snapshot file as tandem-raft writes it: one frame holding the protobuf snapshot.
fn snapshot_file(index: u64, term: u64) -> Vec<u8> {
    let mut snapshot = Snapshot::default();
    snapshot.set_data(b"fuzz".to_vec().into());
    let metadata = snapshot.mut_metadata();
    metadata.index = index;
    metadata.term = term;
    metadata.set_conf_state(ConfState::from((vec![1, 2], vec![3])));
    let payload = snapshot.write_to_bytes().expect("encode snapshot");
    frame_bytes(&payload).to_vec()
}

// Record kinds of the WAL (private consts of `tandem_raft::storage`).
const RECORD_ENTRY: u8 = 1;
const RECORD_HARD_STATE: u8 = 2;
const RECORD_CONF_STATE: u8 = 3;
const RECORD_LOG_RESET: u8 = 4;

/// What replay should find: the entries above the snapshot at `base` and the last hard state
/// recorded; `None` when the log must be refused as corrupt.
///
/// The model keeps every entry it is told about, never compacting, so an entry at or below the
/// snapshot still replaces everything after it, as it did when it was written. Index 0, which
/// raft never writes, is ignored (as the storage does).
fn model_replay(segments: &[&[u8]], base: u64) -> Option<(Vec<Entry>, HardState)> {
    let mut log: BTreeMap<u64, Entry> = BTreeMap::new();
    let mut hard_state = HardState::default();
    for (position, segment) in segments.iter().enumerate() {
        let is_last = position + 1 == segments.len();
        let mut offset = 0;
        while offset < segment.len() {
            let payload = match parse_frame(&segment[offset..], OPTIONS.record_len_max) {
                SliceFrame::Frame { payload, consumed } => {
                    offset += consumed;
                    payload
                }
                // A torn tail is cut off; anywhere else it is corruption.
                SliceFrame::Truncated | SliceFrame::Invalid(_) if is_last => break,
                SliceFrame::Truncated | SliceFrame::Invalid(_) => return None,
            };
            let (&kind, body) = payload.split_first()?;
            match kind {
                RECORD_ENTRY => {
                    let entry = Entry::parse_from_bytes(body).ok()?;
                    let index = entry.index;
                    if index == 0 {
                        continue;
                    }
                    let last = log
                        .range(base + 1..)
                        .next_back()
                        .map_or(base, |(index, _)| *index);
                    if index > last + 1 {
                        return None;
                    }
                    log.split_off(&index);
                    log.insert(index, entry);
                }
                RECORD_HARD_STATE => hard_state = HardState::parse_from_bytes(body).ok()?,
                RECORD_CONF_STATE => {
                    ConfState::parse_from_bytes(body).ok()?;
                }
                RECORD_LOG_RESET => {
                    let index = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
                    if index > base {
                        return None;
                    }
                    log.clear();
                }
                _ => return None,
            }
        }
    }
    Some((
        log.split_off(&(base + 1)).into_values().collect(),
        hard_state,
    ))
}

fn open(disk: &MemDisk) -> Result<WalStorage<MemDisk>, StorageError> {
    WalStorage::open(disk.clone(), OPTIONS, initial_conf())
}

/// What a storage exposes through `raft::Storage`, checked for consistency on the way.
#[derive(Debug, PartialEq)]
struct View {
    first: u64,
    last: u64,
    snapshot_term: u64,
    entries: Vec<Entry>,
    hard_state: raft::eraftpb::HardState,
    conf_state: ConfState,
}

fn view(storage: &WalStorage<MemDisk>) -> View {
    let first = storage.first_index().expect("first_index");
    let last = storage.last_index().expect("last_index");
    assert!(first >= 1, "first index {first} is 0");
    let base = first - 1;
    assert!(
        base <= last,
        "first index {first} is past last index {last} + 1"
    );
    assert_eq!(base, storage.snapshot_index());
    let end = last.checked_add(1).expect("last index is u64::MAX");

    let entries = storage
        .entries(first, end, None, GetEntriesContext::empty(false))
        .expect("entries(first, last + 1)");
    assert_eq!(
        entries.len() as u64,
        end - first,
        "entries(first, last + 1) count"
    );
    for (entry, index) in entries.iter().zip(first..) {
        assert_eq!(entry.index, index, "entry indexes are not consecutive");
        assert_eq!(
            storage.term(index).expect("term of a held entry"),
            entry.term
        );
    }
    // A size limit keeps at least one entry and a prefix of the log.
    let limited = storage
        .entries(first, end, Some(0), GetEntriesContext::empty(false))
        .expect("entries with a size limit");
    assert_eq!(limited.len(), entries.len().min(1));
    assert_eq!(limited[..], entries[..limited.len()]);

    let snapshot_term = storage.term(base).expect("term of the snapshot index");
    assert_eq!(snapshot_term, storage.latest_snapshot().get_metadata().term);
    assert!(storage.term(end).is_err(), "term past the log answered");
    assert!(
        storage
            .entries(first, end + 1, None, GetEntriesContext::empty(false))
            .is_err(),
        "entries past the log answered"
    );
    if base > 0 {
        assert!(
            storage.term(base - 1).is_err(),
            "term below the snapshot answered"
        );
        assert!(
            storage
                .entries(base, end, None, GetEntriesContext::empty(false))
                .is_err(),
            "entries below the snapshot answered"
        );
        let snapshot = storage
            .snapshot(base, 0)
            .expect("the loaded snapshot is served");
        assert_eq!(snapshot.get_metadata().index, base);
    }

    let state = storage.initial_state().expect("initial_state");
    assert!(
        (base..=last).contains(&state.hard_state.commit),
        "commit {} outside {base}..={last}",
        state.hard_state.commit
    );
    assert!(
        state.hard_state.term >= snapshot_term,
        "term below the snapshot's"
    );
    assert_eq!(&state.hard_state, storage.hard_state());
    assert_eq!(&state.conf_state, storage.conf_state());

    View {
        first,
        last,
        snapshot_term,
        entries,
        hard_state: state.hard_state,
        conf_state: state.conf_state,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = wal_input::parse(data) else {
        return;
    };
    let disk = MemDisk::new();
    for (seq, content) in (1..).zip(&input.segments) {
        disk.write_atomic(&wal_input::segment_name(seq), content)
            .expect("MemDisk write");
    }
    if let Some((index, term)) = input.snapshot {
        disk.write_atomic(
            &wal_input::snapshot_name(index),
            &snapshot_file(index, term),
        )
        .expect("MemDisk write");
    }

    let base = input.snapshot.map_or(0, |(index, _)| index);
    let expected = model_replay(&input.segments, base);
    let storage = match open(&disk) {
        Ok(storage) => storage,
        // Refusing a log it cannot trust is the documented outcome, when the model agrees.
        Err(error @ StorageError::Corrupt { .. }) => {
            assert!(expected.is_none(), "replay refused a sound log: {error}");
            return;
        }
        Err(error @ StorageError::Io { .. }) => panic!("MemDisk failed: {error}"),
    };
    let recovered = view(&storage);
    let Some((expected_entries, expected_hard_state)) = expected else {
        panic!("replay accepted a log the model refuses");
    };
    assert_eq!(
        recovered.entries, expected_entries,
        "replay holds other entries than the records say (stale or lost entries)"
    );
    let snapshot_term = input.snapshot.map_or(0, |(_, term)| term);
    assert_eq!(recovered.snapshot_term, snapshot_term);
    assert_eq!(recovered.hard_state.vote, expected_hard_state.vote);
    assert_eq!(
        recovered.hard_state.term,
        expected_hard_state.term.max(snapshot_term)
    );
    assert_eq!(
        recovered.hard_state.commit,
        expected_hard_state.commit.clamp(base, recovered.last)
    );
    let report = storage.recovery().clone();
    assert_eq!(report.entries, recovered.entries.len());
    if let Some((index, _)) = input.snapshot {
        assert_eq!(
            report.snapshot_index, index,
            "a valid snapshot was not loaded"
        );
    }
    drop(storage);

    // Recovery is idempotent.
    let mut storage = match open(&disk) {
        Ok(storage) => storage,
        Err(error) => panic!("a log that opened once does not open again: {error}"),
    };
    assert_eq!(storage.recovery().torn_tail, None, "torn tail found again");
    assert!(!storage.recovery().bootstrapped, "bootstrapped twice");
    assert_eq!(
        view(&storage),
        recovered,
        "a second recovery saw another log"
    );

    // The recovered log takes appends that survive a restart.
    let Some(next) = recovered.last.checked_add(1) else {
        return;
    };
    let term = recovered.hard_state.term.max(
        recovered
            .entries
            .last()
            .map_or(recovered.snapshot_term, |e| e.term),
    );
    let mut entry = Entry::default();
    entry.index = next;
    entry.term = term;
    entry.data = b"after recovery".to_vec().into();
    storage.append(std::slice::from_ref(&entry));
    storage.sync().expect("sync on MemDisk");
    drop(storage);
    let storage = match open(&disk) {
        Ok(storage) => storage,
        Err(error) => panic!("the log does not open after an append to the recovered log: {error}"),
    };
    let after = view(&storage);
    assert_eq!(after.first, recovered.first);
    assert_eq!(after.last, next, "the appended entry is missing");
    assert_eq!(
        after.entries[..recovered.entries.len()],
        recovered.entries[..]
    );
    assert_eq!(after.entries.last(), Some(&entry));
    assert_eq!(after.conf_state, recovered.conf_state);
});
