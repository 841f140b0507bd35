//! Storage tests: restart, torn tails, corruption, conflicts, compaction and snapshots, on a
//! real directory (fsync and all) and on the crashable in-memory disk.

use std::fs::OpenOptions;
use std::io::Write as _;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage};
use tandem_raft::disk::{Disk, FsDisk, MemDisk};
use tandem_raft::{StorageError, WalOptions, WalStorage};

fn conf() -> ConfState {
    let mut conf = ConfState::default();
    conf.set_voters(vec![1, 2, 3]);
    conf
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index} of term {term}").into_bytes().into(),
        ..Default::default()
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|index| entry(index, term)).collect()
}

fn all_entries<D: Disk>(storage: &WalStorage<D>) -> Vec<Entry> {
    let first = storage.first_index().unwrap();
    let last = storage.last_index().unwrap();
    storage
        .entries(first, last + 1, None, GetEntriesContext::empty(false))
        .unwrap()
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_len_max: 512,
        ..WalOptions::default()
    }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    files.sort();
    files
}

#[test]
fn entries_and_hard_state_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = WalStorage::open(
            FsDisk::open(dir.path()).unwrap(),
            WalOptions::default(),
            conf(),
        )
        .unwrap();
        assert!(storage.recovery().bootstrapped);
        storage.append(&entries(1..=10, 1));
        storage.set_hard_state(hard_state(1, 2, 7));
        storage.sync().unwrap();
    }
    let storage = WalStorage::open(
        FsDisk::open(dir.path()).unwrap(),
        WalOptions::default(),
        ConfState::default(),
    )
    .unwrap();
    assert!(!storage.recovery().bootstrapped);
    let state = storage.initial_state().unwrap();
    assert_eq!(state.hard_state, hard_state(1, 2, 7));
    assert_eq!(
        state.conf_state.get_voters(),
        &[1, 2, 3],
        "bootstrap conf is durable"
    );
    assert_eq!(all_entries(&storage), entries(1..=10, 1));
    assert_eq!(storage.term(10).unwrap(), 1);
    assert_eq!(storage.recovery().torn_tail, None);
}

#[test]
fn torn_tail_is_cut_at_every_byte_and_never_applied() {
    // Write 5 synced entries, then a 6th, and cut the file at every byte inside the 6th record:
    // each reopen must yield exactly the 5 entries and a report of the cut.
    let dir = tempfile::tempdir().unwrap();
    let synced_len;
    let full_len;
    {
        let mut storage = WalStorage::open(
            FsDisk::open(dir.path()).unwrap(),
            WalOptions::default(),
            conf(),
        )
        .unwrap();
        storage.append(&entries(1..=5, 1));
        storage.sync().unwrap();
        synced_len = std::fs::metadata(&segment_files(dir.path())[0])
            .unwrap()
            .len();
        storage.append(&entries(6..=6, 1));
        storage.sync().unwrap();
        full_len = std::fs::metadata(&segment_files(dir.path())[0])
            .unwrap()
            .len();
    }
    let segment = segment_files(dir.path())[0].clone();
    let full = std::fs::read(&segment).unwrap();
    for cut in synced_len + 1..full_len {
        std::fs::write(&segment, &full[..cut as usize]).unwrap();
        let storage = WalStorage::open(
            FsDisk::open(dir.path()).unwrap(),
            WalOptions::default(),
            conf(),
        )
        .unwrap();
        assert_eq!(
            all_entries(&storage),
            entries(1..=5, 1),
            "cut at byte {cut}"
        );
        let (_, offset, dropped) = storage.recovery().torn_tail.clone().expect("cut reported");
        assert_eq!(offset, synced_len);
        assert_eq!(dropped, cut - synced_len);
        // The cut is durable: the file now ends at the last good record.
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), synced_len);
    }
}

#[test]
fn garbage_tail_is_cut_and_the_log_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = WalStorage::open(
            FsDisk::open(dir.path()).unwrap(),
            WalOptions::default(),
            conf(),
        )
        .unwrap();
        storage.append(&entries(1..=3, 1));
        storage.sync().unwrap();
    }
    let segment = segment_files(dir.path())[0].clone();
    // A whole-looking header with a wrong crc, as a torn sector might leave.
    let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
    file.write_all(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4])
        .unwrap();
    drop(file);
    {
        let mut storage = WalStorage::open(
            FsDisk::open(dir.path()).unwrap(),
            WalOptions::default(),
            conf(),
        )
        .unwrap();
        assert!(storage.recovery().torn_tail.is_some());
        assert_eq!(all_entries(&storage), entries(1..=3, 1));
        storage.append(&entries(4..=5, 1));
        storage.sync().unwrap();
    }
    let storage = WalStorage::open(
        FsDisk::open(dir.path()).unwrap(),
        WalOptions::default(),
        conf(),
    )
    .unwrap();
    assert_eq!(storage.recovery().torn_tail, None);
    assert_eq!(all_entries(&storage), entries(1..=5, 1));
}

#[test]
fn corruption_in_a_closed_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage =
            WalStorage::open(FsDisk::open(dir.path()).unwrap(), small_segments(), conf()).unwrap();
        for index in 1..=40 {
            storage.append(&[entry(index, 1)]);
            storage.sync().unwrap();
        }
        assert!(storage.segment_count() > 2);
    }
    let first = segment_files(dir.path())[0].clone();
    let mut bytes = std::fs::read(&first).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&first, bytes).unwrap();
    let error =
        WalStorage::open(FsDisk::open(dir.path()).unwrap(), small_segments(), conf()).unwrap_err();
    match error {
        StorageError::Corrupt { file, .. } => assert!(file.starts_with("wal-")),
        other => panic!("expected corruption, got {other}"),
    }
}

#[test]
fn conflicting_suffix_is_replaced_across_restart() {
    let disk = MemDisk::new();
    {
        let mut storage = WalStorage::open(disk.clone(), WalOptions::default(), conf()).unwrap();
        storage.append(&entries(1..=10, 1));
        storage.sync().unwrap();
        // A new leader of term 2 overwrites from index 6.
        storage.append(&entries(6..=8, 2));
        storage.sync().unwrap();
        assert_eq!(storage.last_index().unwrap(), 8);
    }
    let storage = WalStorage::open(disk, WalOptions::default(), conf()).unwrap();
    let mut expected = entries(1..=5, 1);
    expected.extend(entries(6..=8, 2));
    assert_eq!(all_entries(&storage), expected);
}

/// Found by the `wal_replay` fuzz target: a conflicting suffix overwritten from an index the
/// snapshot later covers must stay overwritten after a restart. Replay used to skip the
/// overwriting record (it lies below the snapshot) and so kept the stale entries after it.
#[test]
fn overwritten_suffix_stays_gone_when_the_overwrite_is_below_the_snapshot() {
    let disk = MemDisk::new();
    {
        let mut storage = WalStorage::open(disk.clone(), WalOptions::default(), conf()).unwrap();
        storage.append(&entries(1..=6, 1));
        storage.sync().unwrap();
        // A leader of term 2 overwrites from index 4 and its entry 4 commits; 5 and 6 of term
        // 1 are gone for good.
        storage.append(&entries(4..=4, 2));
        storage.set_commit(4);
        storage.sync().unwrap();
        storage
            .compact_with_snapshot(4, conf(), b"model at 4".to_vec())
            .unwrap();
        assert_eq!(storage.last_index().unwrap(), 4);
    }
    let storage = WalStorage::open(disk, WalOptions::default(), conf()).unwrap();
    assert_eq!(storage.recovery().snapshot_index, 4);
    assert_eq!(
        storage.last_index().unwrap(),
        4,
        "stale entries 5 and 6 came back"
    );
    assert_eq!(storage.term(4).unwrap(), 2);
}

#[test]
fn unsynced_writes_are_lost_in_a_crash_and_synced_ones_are_not() {
    let disk = MemDisk::new();
    {
        let mut storage = WalStorage::open(disk.clone(), WalOptions::default(), conf()).unwrap();
        storage.append(&entries(1..=4, 1));
        storage.sync().unwrap();
        storage.append(&entries(5..=9, 1));
        // Appended but not synced: buffered in the storage, so not even handed to the disk.
    }
    disk.crash(|_, unsynced| unsynced / 2);
    let storage = WalStorage::open(disk, WalOptions::default(), conf()).unwrap();
    assert_eq!(all_entries(&storage), entries(1..=4, 1));
}

#[test]
fn a_sync_makes_durable_what_was_written_out_before_it() {
    let disk = MemDisk::new();
    {
        let mut storage = WalStorage::open(disk.clone(), WalOptions::default(), conf()).unwrap();
        storage.append(&entries(1..=4, 1));
        // Handed to the disk but not synced (the deferred mode's write)...
        storage.write_pending().unwrap();
        // ...then a sync with nothing buffered must still sync it.
        storage.sync().unwrap();
    }
    disk.crash(|_, _| 0);
    let storage = WalStorage::open(disk, WalOptions::default(), conf()).unwrap();
    assert_eq!(all_entries(&storage), entries(1..=4, 1));
}

#[test]
fn compaction_drops_covered_segments_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let segments_before;
    {
        let mut storage =
            WalStorage::open(FsDisk::open(dir.path()).unwrap(), small_segments(), conf()).unwrap();
        for index in 1..=100 {
            storage.append(&[entry(index, 1 + index / 50)]);
            storage.set_commit(index);
            storage.sync().unwrap();
        }
        segments_before = storage.segment_count();
        storage
            .compact_with_snapshot(90, conf(), b"model at 90".to_vec())
            .unwrap();
        assert!(
            storage.segment_count() < segments_before / 2,
            "old segments removed"
        );
        assert_eq!(storage.first_index().unwrap(), 91);
        assert!(matches!(
            storage.entries(80, 95, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        ));
    }
    let storage =
        WalStorage::open(FsDisk::open(dir.path()).unwrap(), small_segments(), conf()).unwrap();
    assert_eq!(storage.recovery().snapshot_index, 90);
    assert_eq!(storage.first_index().unwrap(), 91);
    assert_eq!(storage.last_index().unwrap(), 100);
    assert_eq!(storage.term(90).unwrap(), 1 + 90 / 50);
    assert_eq!(all_entries(&storage).len(), 10);
    assert_eq!(storage.snapshot(90, 2).unwrap().get_data(), b"model at 90");
    assert!(
        storage.snapshot(95, 2).is_err(),
        "a newer snapshot is asked for"
    );
    assert!(storage.take_snapshot_wanted());
    assert_eq!(storage.initial_state().unwrap().hard_state.commit, 100);
}

#[test]
fn snapshot_from_the_leader_replaces_a_stale_log_for_good() {
    let disk = MemDisk::new();
    {
        let mut storage = WalStorage::open(disk.clone(), WalOptions::default(), conf()).unwrap();
        // A stale follower: entries 1..=20 of an old term, only 1..=5 committed.
        storage.append(&entries(1..=20, 1));
        storage.set_hard_state(hard_state(1, 1, 5));
        storage.sync().unwrap();
        let mut snapshot = Snapshot::default();
        snapshot.set_data(b"leader model".to_vec().into());
        snapshot.mut_metadata().index = 12;
        snapshot.mut_metadata().term = 3;
        snapshot.mut_metadata().set_conf_state(conf());
        storage.apply_snapshot(snapshot).unwrap();
        storage.append(&entries(13..=14, 3));
        storage.sync().unwrap();
    }
    let storage = WalStorage::open(disk, WalOptions::default(), conf()).unwrap();
    assert_eq!(storage.first_index().unwrap(), 13);
    assert_eq!(storage.term(12).unwrap(), 3);
    assert_eq!(
        all_entries(&storage),
        entries(13..=14, 3),
        "stale entries 13..=20 stay gone"
    );
    let hard_state = storage.initial_state().unwrap().hard_state;
    assert_eq!((hard_state.term, hard_state.commit), (3, 12));
}

#[test]
fn segments_rotate_and_replay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage =
            WalStorage::open(FsDisk::open(dir.path()).unwrap(), small_segments(), conf()).unwrap();
        for index in 1..=60 {
            storage.append(&[entry(index, 1)]);
            storage.set_hard_state(hard_state(1, 1, index));
            storage.sync().unwrap();
        }
        assert!(storage.segment_count() >= 5);
    }
    let storage =
        WalStorage::open(FsDisk::open(dir.path()).unwrap(), small_segments(), conf()).unwrap();
    assert_eq!(all_entries(&storage), entries(1..=60, 1));
    assert_eq!(
        storage.initial_state().unwrap().hard_state,
        hard_state(1, 1, 60)
    );
}
