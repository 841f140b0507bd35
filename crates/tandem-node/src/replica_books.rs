//! The books of a node's replica files, sans-IO: which file *generation* each replica's
//! content is of, which version was written to it, how long it was at its last sync, when to
//! replace it by a compacted one, and in which order durability reports count.
//!
//! The data plane says what to persist ([`PersistAction`]); [`ReplicaBooks`] turns each into a
//! [`FileOp`] tagged with the file's generation, for whatever carries the operations out (the
//! daemon's writer and sync threads, the simulation's files). What is durable comes back as
//! [`Synced`] and [`Installed`] reports, which the books turn into the versions the data plane
//! may count as on disk:
//!
//! - A file *starts over* (a new generation) when the replica is reset (a state transfer) or
//!   created. A report about an older generation says nothing of the new content: dropped.
//! - A file that holds [`CompactionPolicy::ratio`] times its replica's live bytes (and at least
//!   [`CompactionPolicy::floor_bytes`]) is replaced by a compacted one, written under a new
//!   generation and installed (synced, renamed over the old file) later; every later write of
//!   the replica goes to the new file, even one that starts it over again. Until the install
//!   is reported, a restart reads the old file: while a compaction is pending no sync of the
//!   replica's file counts, even one reported first (its content is in the new file); the
//!   newest is held and counted at the install.
//!
//! Architecture invariant: no files, no threads, no clock: the same books run in tandemd and in
//! the simulation.

use std::collections::BTreeMap;

use tandem_core::data::{PersistAction, ReplicaId, ShardReplica};

use crate::replica_file::{self, Stamp};

/// When a replica file is replaced by a compacted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// A file is compacted once it holds this many times its replica's live bytes...
    pub ratio: u64,
    /// ...and at least this many bytes.
    pub floor_bytes: u64,
}

impl Default for CompactionPolicy {
    /// tandemd's: 8x the live bytes and 16 MiB.
    fn default() -> Self {
        Self {
            ratio: 8,
            floor_bytes: 16 * 1024 * 1024,
        }
    }
}

/// One thing to do to the files, carried out in the order the books queued them.
#[derive(Debug)]
pub enum FileOp {
    /// Write `action` to the file of `id` (created when there is none; `Remove` deletes it,
    /// and a compacted file not yet in place with it); the file's content is of `generation`
    /// from then on.
    Persist {
        /// The replica.
        id: ReplicaId,
        /// The generation of the file's content from now on.
        generation: u64,
        /// What to write.
        action: PersistAction,
    },
    /// Rewrite the stamp of the file of `id`, if its content is still of `generation`.
    Stamp {
        /// The replica.
        id: ReplicaId,
        /// The generation the stamp describes.
        generation: u64,
        /// The stamp.
        stamp: Stamp,
    },
    /// Write `image`, the replica compacted at `version`, to a new file that takes the place
    /// of the file of `id` once it is durable ([`Installed`]); later operations on `id` go to
    /// the new file.
    Compact {
        /// The replica.
        id: ReplicaId,
        /// The new file's generation.
        generation: u64,
        /// The replica's content (encoded by whoever writes it).
        image: Box<replica_file::Compaction>,
        /// The version the image holds.
        version: u64,
    },
}

/// A file made durable: its generation, the version its records reach, its length in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// The replica.
    pub id: ReplicaId,
    /// The generation of the content made durable.
    pub generation: u64,
    /// The version the durable records reach.
    pub version: u64,
    /// Bytes of records in the file.
    pub len: usize,
}

/// A compacted file put in place (or not: `installed` is false when the replica was removed
/// meanwhile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The replica.
    pub id: ReplicaId,
    /// The compacted file's generation.
    pub generation: u64,
    /// The version the compacted content holds.
    pub version: u64,
    /// Whether it took the old file's place.
    pub installed: bool,
}

/// The books of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Book {
    /// The generation of its content.
    generation: u64,
    /// Version of the last op or reset queued.
    written: u64,
    /// Bytes of records in the file as of its last sync.
    len: usize,
    /// The generation of a compacted file not yet installed.
    compacting: Option<u64>,
    /// The newest sync of the current generation reported while a compaction is pending:
    /// (version, len); it counts at the install.
    held: Option<(u64, usize)>,
}

/// The books of every replica file of a node (see the module doc).
#[derive(Debug, Default)]
pub struct ReplicaBooks {
    books: BTreeMap<ReplicaId, Book>,
    /// The last generation handed out.
    last_generation: u64,
    /// Operations not yet taken.
    queued: Vec<FileOp>,
    policy: CompactionPolicy,
}

impl ReplicaBooks {
    /// Empty books that compact by `policy`.
    pub fn new(policy: CompactionPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// A file read back at start: of `generation` (each distinct), holding `version` in `len`
    /// bytes of records.
    pub fn recovered(&mut self, id: ReplicaId, generation: u64, version: u64, len: usize) {
        self.last_generation = self.last_generation.max(generation);
        let book = Book {
            generation,
            written: version,
            len,
            compacting: None,
            held: None,
        };
        let previous = self.books.insert(id, book);
        assert!(previous.is_none(), "a replica file read back twice");
    }

    fn next_generation(&mut self) -> u64 {
        self.last_generation += 1;
        self.last_generation
    }

    /// Queues one persist action (see [`take_ops`](Self::take_ops)).
    pub fn apply(&mut self, id: &ReplicaId, action: PersistAction) {
        if let PersistAction::Stamp(stamp) = action {
            if let Some(book) = self.books.get(id) {
                self.queued.push(FileOp::Stamp {
                    id: id.clone(),
                    generation: book.generation,
                    stamp,
                });
            }
            return;
        }
        if matches!(action, PersistAction::Remove) {
            self.books.remove(id);
            self.queued.push(FileOp::Persist {
                id: id.clone(),
                generation: 0,
                action,
            });
            return;
        }
        let fresh = matches!(action, PersistAction::Reset(_)) || !self.books.contains_key(id);
        let generation = if fresh {
            self.next_generation()
        } else {
            self.books[id].generation
        };
        let book = self.books.entry(id.clone()).or_insert(Book {
            generation,
            written: 0,
            len: 0,
            compacting: None,
            held: None,
        });
        if book.generation != generation {
            // Started over: a sync held for the compacted file is of the old content.
            book.held = None;
        }
        book.generation = generation;
        if let Some(version) = action.version() {
            book.written = version;
        }
        self.queued.push(FileOp::Persist {
            id: id.clone(),
            generation,
            action,
        });
    }

    /// The operations queued since the last call, in order.
    pub fn take_ops(&mut self) -> Vec<FileOp> {
        std::mem::take(&mut self.queued)
    }

    /// Whether operations are queued.
    pub fn has_ops(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Syncs reported, as the versions now durable per replica. A report of a generation the
    /// file left is dropped; one of a compacted file not yet installed is held until it is.
    pub fn synced(&mut self, reports: Vec<Synced>) -> Vec<(ReplicaId, u64)> {
        let mut durable = Vec::with_capacity(reports.len());
        for Synced {
            id,
            generation,
            version,
            len,
        } in reports
        {
            let Some(book) = self.books.get_mut(&id) else {
                continue;
            };
            if book.generation != generation {
                continue;
            }
            if book.compacting.is_some() {
                // In the compacted file, which a crash before its install loses whole.
                let (held_version, held_len) = book.held.get_or_insert((version, len));
                *held_version = (*held_version).max(version);
                *held_len = (*held_len).max(len);
                continue;
            }
            book.len = len;
            durable.push((id, version));
        }
        durable
    }

    /// Queues the replacement of the file of `id` by a compacted one when it grew well past
    /// its replica (by the policy), every version of the replica is queued for it and no other
    /// compaction of it is under way. Returns whether it did.
    pub fn start_compaction(
        &mut self,
        id: &ReplicaId,
        replica: &ShardReplica,
        complete: bool,
    ) -> bool {
        let Some(book) = self.books.get(id) else {
            return false;
        };
        if book.compacting.is_some() || book.written != replica.version() {
            return false;
        }
        let live = replica.section_bytes() + replica.pending_bytes();
        if (book.len as u64) < (self.policy.ratio * live).max(self.policy.floor_bytes) {
            return false;
        }
        let image = Box::new(replica_file::Compaction::capture(
            &id.shard, &id.unit, replica, complete,
        ));
        let generation = self.next_generation();
        let len = image.len_estimate();
        self.books.insert(
            id.clone(),
            Book {
                generation,
                written: replica.version(),
                // Corrected by the first sync of the new file.
                len,
                compacting: Some(generation),
                held: None,
            },
        );
        self.queued.push(FileOp::Compact {
            id: id.clone(),
            generation,
            image,
            version: replica.version(),
        });
        true
    }

    /// A compaction's install reported, as the version now durable: the compacted one (unless
    /// the replica started over since), or the newest sync held meanwhile. None when neither
    /// counts, or the replica was removed.
    pub fn installed(&mut self, done: Installed) -> Option<(ReplicaId, u64)> {
        let book = self.books.get_mut(&done.id)?;
        if book.compacting != Some(done.generation) {
            return None;
        }
        book.compacting = None;
        let held = book.held.take();
        if !done.installed {
            return None;
        }
        let compacted = (book.generation == done.generation).then_some(done.version);
        let version = match (compacted, held) {
            (None, None) => return None,
            (Some(version), None) => version,
            (compacted, Some((version, len))) => {
                book.len = len;
                version.max(compacted.unwrap_or(0))
            }
        };
        Some((done.id, version))
    }

    /// Bytes of records in each file as of its last sync, for status.
    pub fn file_len(&self, id: &ReplicaId) -> Option<usize> {
        self.books.get(id).map(|book| book.len)
    }

    /// Whether a compacted file of `id` waits to be installed.
    #[cfg(test)]
    fn is_compacting(&self, id: &ReplicaId) -> bool {
        self.books
            .get(id)
            .is_some_and(|book| book.compacting.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::data::{Op, OpKind, Write};
    use tandem_core::{ShardName, UnitName};

    fn id() -> ReplicaId {
        ReplicaId {
            shard: ShardName("s0".into()),
            unit: UnitName("u1".into()),
        }
    }

    fn op(seq: u64) -> PersistAction {
        PersistAction::Op(Op {
            seq,
            epoch: 1,
            kind: OpKind::Commit {
                writes: vec![Write {
                    key: b"k".to_vec(),
                    value: Some(bytes::Bytes::from_static(b"v")),
                    priority: None,
                }]
                .into(),
                consumed: None,
            },
        })
    }

    fn synced(generation: u64, version: u64, len: usize) -> Synced {
        Synced {
            id: id(),
            generation,
            version,
            len,
        }
    }

    /// Books that compact anything, with `id()` written up to `version` and synced.
    fn books_at(version: u64) -> (ReplicaBooks, ShardReplica, u64) {
        let mut books = ReplicaBooks::new(CompactionPolicy {
            ratio: 1,
            floor_bytes: 1,
        });
        let mut replica = ShardReplica::new();
        for seq in 1..=version {
            let PersistAction::Op(op) = op(seq) else {
                unreachable!()
            };
            replica.apply(&op).expect("applies");
            books.apply(&id(), PersistAction::Op(op));
        }
        let generation = match &books.take_ops()[0] {
            FileOp::Persist { generation, .. } => *generation,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            books.synced(vec![synced(generation, version, 4096)]),
            vec![(id(), version)]
        );
        (books, replica, generation)
    }

    #[test]
    fn a_report_of_a_generation_the_file_left_is_dropped() {
        let (mut books, _, old) = books_at(3);
        let mut snapshot = ShardReplica::new().snapshot();
        snapshot.version = 9;
        books.apply(&id(), PersistAction::Reset(snapshot));
        let FileOp::Persist { generation, .. } = &books.take_ops()[0] else {
            panic!("a persist")
        };
        assert!(*generation > old);
        assert_eq!(books.synced(vec![synced(old, 3, 10)]), vec![]);
        assert_eq!(
            books.synced(vec![synced(*generation, 9, 10)]),
            vec![(id(), 9)]
        );
    }

    #[test]
    fn a_compacted_file_counts_only_once_installed_and_a_sync_before_is_held() {
        let (mut books, replica, old) = books_at(5);
        assert!(books.start_compaction(&id(), &replica, true));
        assert!(books.is_compacting(&id()));
        assert!(
            !books.start_compaction(&id(), &replica, true),
            "one at a time"
        );
        let ops = books.take_ops();
        let [FileOp::Compact {
            generation,
            version: 5,
            ..
        }] = ops.as_slice()
        else {
            panic!("{ops:?}")
        };
        let new = *generation;
        assert!(new > old);
        // A write after the compaction goes to the new file; its sync is reported before the
        // install (a late install report): held, not durable yet.
        books.apply(&id(), op(6));
        assert_eq!(books.synced(vec![synced(new, 6, 200)]), vec![]);
        // A sync of the old file, still in flight, says nothing of the new content.
        assert_eq!(books.synced(vec![synced(old, 5, 4096)]), vec![]);
        let done = Installed {
            id: id(),
            generation: new,
            version: 5,
            installed: true,
        };
        assert_eq!(books.installed(done.clone()), Some((id(), 6)));
        assert_eq!(books.file_len(&id()), Some(200));
        assert!(!books.is_compacting(&id()));
        assert_eq!(books.installed(done), None, "reported once");
        assert_eq!(books.synced(vec![synced(new, 6, 210)]), vec![(id(), 6)]);
    }

    #[test]
    fn a_late_install_report_for_a_file_that_started_over_reports_nothing() {
        let (mut books, replica, _) = books_at(4);
        assert!(books.start_compaction(&id(), &replica, true));
        let FileOp::Compact { generation, .. } = books.take_ops().remove(0) else {
            panic!("a compaction")
        };
        books.apply(&id(), op(5));
        assert_eq!(books.synced(vec![synced(generation, 5, 100)]), vec![]);
        let mut snapshot = ShardReplica::new().snapshot();
        snapshot.version = 2;
        books.apply(&id(), PersistAction::Reset(snapshot));
        let done = Installed {
            id: id(),
            generation,
            version: 4,
            installed: true,
        };
        assert_eq!(books.installed(done), None);
        assert!(!books.is_compacting(&id()), "the next compaction may start");
    }

    #[test]
    fn a_reset_written_to_a_compacted_file_counts_only_once_that_file_is_installed() {
        let (mut books, replica, _) = books_at(4);
        assert!(books.start_compaction(&id(), &replica, true));
        let FileOp::Compact { generation, .. } = books.take_ops().remove(0) else {
            panic!("a compaction")
        };
        // The replica starts over; the reset and what follows go to the compacted file,
        // which a crash before its install loses whole.
        let mut snapshot = ShardReplica::new().snapshot();
        snapshot.version = 2;
        books.apply(&id(), PersistAction::Reset(snapshot));
        books.apply(&id(), op(3));
        let FileOp::Persist {
            generation: reset, ..
        } = books.take_ops().remove(0)
        else {
            panic!("a persist")
        };
        assert!(reset > generation);
        assert_eq!(
            books.synced(vec![synced(reset, 3, 300)]),
            vec![],
            "not durable before the install"
        );
        let done = Installed {
            id: id(),
            generation,
            version: 4,
            installed: true,
        };
        assert_eq!(
            books.installed(done),
            Some((id(), 3)),
            "the held sync counts at the install, the compacted version 4 does not"
        );
        assert_eq!(books.file_len(&id()), Some(300));
        assert_eq!(books.synced(vec![synced(reset, 3, 310)]), vec![(id(), 3)]);
    }

    #[test]
    fn a_removed_replica_reports_nothing_and_its_compaction_install_is_ignored() {
        let (mut books, replica, _) = books_at(4);
        assert!(books.start_compaction(&id(), &replica, true));
        let FileOp::Compact { generation, .. } = books.take_ops().remove(0) else {
            panic!("a compaction")
        };
        books.apply(&id(), PersistAction::Remove);
        let ops = books.take_ops();
        assert!(matches!(
            ops.as_slice(),
            [FileOp::Persist {
                action: PersistAction::Remove,
                ..
            }]
        ));
        let done = Installed {
            id: id(),
            generation,
            version: 4,
            installed: false,
        };
        assert_eq!(books.installed(done), None);
        assert_eq!(books.synced(vec![synced(generation, 4, 10)]), vec![]);
        assert_eq!(books.file_len(&id()), None);
    }

    #[test]
    fn a_file_is_compacted_only_past_the_policy_and_with_every_version_queued() {
        let mut books = ReplicaBooks::new(CompactionPolicy {
            ratio: 8,
            floor_bytes: 1000,
        });
        let mut replica = ShardReplica::new();
        let PersistAction::Op(first) = op(1) else {
            unreachable!()
        };
        replica.apply(&first).expect("applies");
        books.recovered(id(), 3, 1, 999);
        assert!(
            !books.start_compaction(&id(), &replica, true),
            "under the floor"
        );
        assert_eq!(books.synced(vec![synced(3, 1, 1000)]), vec![(id(), 1)]);
        assert!(books.start_compaction(&id(), &replica, true));
        let FileOp::Compact { generation, .. } = books.take_ops().remove(0) else {
            panic!("a compaction")
        };
        assert_eq!(generation, 4, "after the generations read back");
        let mut later = ReplicaBooks::new(CompactionPolicy {
            ratio: 1,
            floor_bytes: 1,
        });
        later.recovered(id(), 1, 0, 4096);
        assert!(
            !later.start_compaction(&id(), &replica, true),
            "version 1 is not queued to the file yet"
        );
    }
}
