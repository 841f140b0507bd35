//! One shard's replica: its checkpoint sections, its stream, its version and epoch history,
//! and its digest, kept current on every change.

use std::collections::BTreeMap;

use super::digest::{consumed_hash, message_hash, section_hash, Digest};
use super::{check_message, check_writes, Op, OpKind, StreamMessage};

/// A value as a replica keeps it: copied into an allocation of its own. A value decoded from
/// a received frame shares that frame's buffer; kept for long in a replica, it would keep the
/// whole buffer alive (and with it every other value the frame held), so memory could grow
/// many times over the live bytes as sections are overwritten. Ops in flight (op log, file
/// writes, replication) share; only what the replica keeps is copied, once.
pub fn own_value(value: &bytes::Bytes) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(value)
}

/// A commit at `seq` may consume only messages before itself.
fn check_consumed(seq: u64, consumed: Option<u64>) -> Result<(), ApplyError> {
    match consumed {
        Some(consumed) if consumed >= seq => Err(ApplyError::Invalid(format!(
            "commit {seq} consumes up to {consumed}, beyond itself"
        ))),
        _ => Ok(()),
    }
}

/// Most epochs remembered in a replica's history. Older epochs are forgotten; a secondary whose
/// last op is from a forgotten epoch gets a full state transfer instead of a delta.
pub const EPOCH_HISTORY_LEN_MAX: usize = 64;

/// One checkpoint section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Its value. A replica holds it in an allocation of its own (see
    /// [`own_value`]), never a slice of a received frame, which it would keep alive.
    pub value: bytes::Bytes,
    /// The seq of the op that last wrote it.
    pub version: u64,
    /// The explicit state-transfer priority the ACTIVE gave it, if any.
    pub priority: Option<u32>,
    /// How many times it was written (sections written most often go first in a transfer
    /// unless priorities say otherwise).
    pub changes: u64,
}

/// Which epoch created which ops: `(epoch, first seq)` pairs, ascending. Two replicas whose
/// op at seq `v` has the same epoch hold the same ops up to `v` (only one primary writes in an
/// epoch), which is how a primary decides whether a secondary can catch up with a delta.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EpochHistory {
    /// `(epoch, seq of its first op)`, ascending in both.
    entries: Vec<(u64, u64)>,
    /// Ops below this seq belong to forgotten epochs (0: nothing was forgotten).
    forgotten_below: u64,
}

impl EpochHistory {
    /// A history from its parts (a transfer or a file), checked.
    pub fn from_parts(entries: Vec<(u64, u64)>, forgotten_below: u64) -> Result<Self, String> {
        for pair in entries.windows(2) {
            if pair[0].0 >= pair[1].0 || pair[0].1 >= pair[1].1 {
                return Err(format!(
                    "epoch history is not ascending at {:?} then {:?}",
                    pair[0], pair[1]
                ));
            }
        }
        if entries.len() > EPOCH_HISTORY_LEN_MAX {
            return Err(format!(
                "epoch history of {} entries; at most {EPOCH_HISTORY_LEN_MAX}",
                entries.len()
            ));
        }
        Ok(Self {
            entries,
            forgotten_below,
        })
    }

    /// The pairs.
    pub fn entries(&self) -> &[(u64, u64)] {
        &self.entries
    }

    /// Ops below this seq belong to forgotten epochs.
    pub fn forgotten_below(&self) -> u64 {
        self.forgotten_below
    }

    /// The epoch of the last op (0 when there is none).
    pub fn last_epoch(&self) -> u64 {
        self.entries.last().map_or(0, |(epoch, _)| *epoch)
    }

    /// The epoch that created op `seq`, if known (`Some(0)` for seq 0: the empty replica).
    pub fn epoch_at(&self, seq: u64) -> Option<u64> {
        if seq == 0 {
            return Some(0);
        }
        if seq < self.forgotten_below {
            return None;
        }
        self.entries
            .iter()
            .rev()
            .find(|(_, first)| *first <= seq)
            .map(|(epoch, _)| *epoch)
    }

    /// Records that op `seq` was created in `epoch` (a no-op unless the epoch is new).
    fn record(&mut self, epoch: u64, seq: u64) {
        if self.last_epoch() == epoch && !self.entries.is_empty() {
            return;
        }
        self.entries.push((epoch, seq));
        if self.entries.len() > EPOCH_HISTORY_LEN_MAX {
            self.entries.remove(0);
            self.forgotten_below = self.entries[0].1;
        }
    }
}

/// Why an op was not applied. The replica is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The op does not follow the replica's version.
    #[error("op {got} does not follow version {version}")]
    Gap {
        /// The replica's version.
        version: u64,
        /// The op's seq.
        got: u64,
    },
    /// The op comes from an epoch older than the replica's last op.
    #[error("op from epoch {got} is older than the replica's epoch {have}")]
    StaleEpoch {
        /// The replica's last epoch.
        have: u64,
        /// The op's epoch.
        got: u64,
    },
    /// The op breaks a limit or a rule.
    #[error("invalid op: {0}")]
    Invalid(String),
}

/// What a state transfer starts from: the primary's position when it began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSnapshot {
    /// The primary's version.
    pub version: u64,
    /// Its consumed position.
    pub consumed: u64,
    /// Its epoch history.
    pub history: EpochHistory,
}

/// A section as a replica holds it: with its hash, so that overwriting or deleting it takes
/// its old hash out of the digest without hashing its value again (the hash was most of the
/// cost of applying a small write).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    section: Section,
    /// `section_hash(key, &section.value)`.
    hash: u128,
}

/// One shard's replica.
#[derive(Debug, Clone, Default)]
pub struct ShardReplica {
    /// Sections by key.
    sections: BTreeMap<Vec<u8>, Held>,
    /// Stream messages not yet consumed, by seq.
    pending: BTreeMap<u64, StreamMessage>,
    /// Every message at or below this seq is consumed.
    consumed: u64,
    /// The seq of the last op applied.
    version: u64,
    /// Which epoch created which ops.
    history: EpochHistory,
    /// The digest of everything above, kept current.
    digest: Digest,
    /// Bytes of keys and values held.
    section_bytes: u64,
    /// Bytes of pending messages held.
    pending_bytes: u64,
}

impl PartialEq for ShardReplica {
    fn eq(&self, other: &Self) -> bool {
        self.sections == other.sections
            && self.pending == other.pending
            && self.consumed == other.consumed
            && self.version == other.version
            && self.history == other.history
    }
}

impl ShardReplica {
    /// An empty replica (version 0, consumed 0).
    pub fn new() -> Self {
        let mut replica = Self::default();
        replica.digest.add(consumed_hash(0));
        replica
    }

    /// The seq of the last op applied.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The epoch of the last op applied (0 for none).
    pub fn epoch(&self) -> u64 {
        self.history.last_epoch()
    }

    /// The epoch history.
    pub fn history(&self) -> &EpochHistory {
        &self.history
    }

    /// How far the stream was consumed.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The digest, kept current.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Number of sections.
    pub fn section_count(&self) -> usize {
        self.sections.len()
    }

    /// Bytes of keys and values.
    pub fn section_bytes(&self) -> u64 {
        self.section_bytes
    }

    /// Bytes of pending stream messages.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// One section.
    pub fn get(&self, key: &[u8]) -> Option<&Section> {
        self.sections.get(key).map(|held| &held.section)
    }

    /// Sections in key order, from `start` (inclusive) on.
    pub fn range_from<'a>(
        &'a self,
        start: &[u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Section)> + 'a {
        self.sections
            .range::<[u8], _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            .map(|(key, held)| (key, &held.section))
    }

    /// Every section in key order.
    pub fn sections(&self) -> impl Iterator<Item = (&Vec<u8>, &Section)> + '_ {
        self.sections.iter().map(|(key, held)| (key, &held.section))
    }

    /// Messages not yet consumed, in order.
    pub fn pending(&self) -> impl Iterator<Item = (u64, &StreamMessage)> + '_ {
        self.pending.iter().map(|(seq, message)| (*seq, message))
    }

    /// Pending messages after `seq`, in order.
    pub fn pending_after(&self, seq: u64) -> impl Iterator<Item = (u64, &StreamMessage)> + '_ {
        self.pending
            .range(seq.saturating_add(1)..)
            .map(|(seq, message)| (*seq, message))
    }

    /// Number of pending messages.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Where a state transfer from this replica starts.
    pub fn snapshot(&self) -> ReplicaSnapshot {
        ReplicaSnapshot {
            version: self.version,
            consumed: self.consumed,
            history: self.history.clone(),
        }
    }

    /// The digest computed from scratch (what `tandemctl checkpoint verify` compares; it also
    /// checks the incremental one).
    pub fn compute_digest(&self) -> Digest {
        let mut digest = Digest::default();
        // Hashed again, not the held hashes: this checks them too.
        for (key, held) in &self.sections {
            digest.add(section_hash(key, &held.section.value));
        }
        for (seq, message) in &self.pending {
            digest.add(message_hash(*seq, &message.origin, &message.payload));
        }
        digest.add(consumed_hash(self.consumed));
        digest
    }

    /// Keys in state-transfer order: explicit priority first (highest first), then sections
    /// written most often, then key order.
    pub fn transfer_order(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<(&Vec<u8>, &Section)> = self.sections().collect();
        keys.sort_by(|(key_a, a), (key_b, b)| {
            b.priority
                .cmp(&a.priority)
                .then(b.changes.cmp(&a.changes))
                .then(key_a.cmp(key_b))
        });
        keys.into_iter().map(|(key, _)| key.clone()).collect()
    }

    /// Applies `op`, which must follow the version and not come from an older epoch. On error
    /// nothing changed.
    pub fn apply(&mut self, op: &Op) -> Result<(), ApplyError> {
        if op.seq != self.version + 1 {
            return Err(ApplyError::Gap {
                version: self.version,
                got: op.seq,
            });
        }
        if op.epoch < self.epoch() {
            return Err(ApplyError::StaleEpoch {
                have: self.epoch(),
                got: op.epoch,
            });
        }
        match &op.kind {
            OpKind::Commit { writes, consumed } => {
                check_writes(writes).map_err(ApplyError::Invalid)?;
                check_consumed(op.seq, *consumed)?;
                self.apply_commit(op.seq, writes, *consumed);
            }
            OpKind::Message(message) => {
                check_message(message).map_err(ApplyError::Invalid)?;
                self.insert_message(op.seq, message.clone());
            }
        }
        self.history.record(op.epoch, op.seq);
        self.version = op.seq;
        Ok(())
    }

    /// Applies one more commit's `writes` (and consumed position) as part of the last op, a
    /// commit at `epoch` that is not yet sent or written anywhere: the primary merges commits
    /// that arrive together into one op. The version stays; the caller extends the op the
    /// same way (and checked the merged op's limits).
    pub fn extend_last_commit(
        &mut self,
        epoch: u64,
        writes: &[super::Write],
        consumed: Option<u64>,
    ) -> Result<(), ApplyError> {
        if epoch != self.epoch() {
            return Err(ApplyError::StaleEpoch {
                have: self.epoch(),
                got: epoch,
            });
        }
        check_writes(writes).map_err(ApplyError::Invalid)?;
        check_consumed(self.version, consumed)?;
        self.apply_commit(self.version, writes, consumed);
        Ok(())
    }

    fn apply_commit(&mut self, seq: u64, writes: &[super::Write], consumed: Option<u64>) {
        for write in writes {
            self.write(seq, write);
        }
        if let Some(consumed) = consumed {
            self.consume(consumed);
        }
    }

    fn write(&mut self, seq: u64, write: &super::Write) {
        match &write.value {
            Some(value) => {
                let hash = section_hash(&write.key, value);
                // One search for an update (the common case), no copy of its key.
                if let Some(held) = self.sections.get_mut(&write.key) {
                    self.digest.remove(held.hash);
                    let section = &mut held.section;
                    self.section_bytes -= (write.key.len() + section.value.len()) as u64;
                    section.value = own_value(value);
                    section.version = seq;
                    section.priority = write.priority.or(section.priority);
                    section.changes += 1;
                    held.hash = hash;
                } else {
                    self.sections.insert(
                        write.key.clone(),
                        Held {
                            section: Section {
                                value: own_value(value),
                                version: seq,
                                priority: write.priority,
                                changes: 1,
                            },
                            hash,
                        },
                    );
                }
                self.digest.add(hash);
                self.section_bytes += (write.key.len() + value.len()) as u64;
            }
            None => {
                if let Some(old) = self.sections.remove(&write.key) {
                    self.digest.remove(old.hash);
                    self.section_bytes -= (write.key.len() + old.section.value.len()) as u64;
                }
            }
        }
    }

    fn consume(&mut self, consumed: u64) {
        if consumed <= self.consumed {
            return;
        }
        self.digest.remove(consumed_hash(self.consumed));
        self.consumed = consumed;
        self.digest.add(consumed_hash(consumed));
        let kept = self.pending.split_off(&(consumed + 1));
        for (seq, message) in std::mem::replace(&mut self.pending, kept) {
            self.digest
                .remove(message_hash(seq, &message.origin, &message.payload));
            self.pending_bytes -= message.size() as u64;
        }
    }

    fn insert_message(&mut self, seq: u64, message: StreamMessage) {
        if seq <= self.consumed || self.pending.contains_key(&seq) {
            return;
        }
        self.digest
            .add(message_hash(seq, &message.origin, &message.payload));
        self.pending_bytes += message.size() as u64;
        self.pending.insert(seq, message);
    }

    /// Empties the replica and places it at `snapshot` for a state transfer: sections and
    /// messages arrive with [`ShardReplica::install_section`] and
    /// [`ShardReplica::install_message`], live ops with [`ShardReplica::apply`].
    pub fn reset_to(&mut self, snapshot: &ReplicaSnapshot) {
        *self = Self::new();
        self.digest.remove(consumed_hash(0));
        self.consumed = snapshot.consumed;
        self.digest.add(consumed_hash(snapshot.consumed));
        self.version = snapshot.version;
        self.history = snapshot.history.clone();
    }

    /// Installs a section copied by a state transfer. The newest version wins: a live write
    /// that reached the replica before the copy of the section is kept.
    pub fn install_section(&mut self, key: Vec<u8>, section: Section) -> Result<(), ApplyError> {
        if key.is_empty() || key.len() > super::KEY_LEN_MAX {
            return Err(ApplyError::Invalid(format!(
                "section key of {} bytes",
                key.len()
            )));
        }
        if section.value.len() > super::VALUE_LEN_MAX {
            return Err(ApplyError::Invalid(format!(
                "section value of {} bytes",
                section.value.len()
            )));
        }
        if section.version > self.version {
            return Err(ApplyError::Invalid(format!(
                "section at version {} is newer than the replica ({})",
                section.version, self.version
            )));
        }
        if let Some(old) = self.sections.get(&key) {
            // A newer live write stays; an equal version takes the copy's counters (a live
            // write that reached a section before its copy did counted from zero).
            if old.section.version > section.version {
                return Ok(());
            }
            self.digest.remove(old.hash);
            self.section_bytes -= (key.len() + old.section.value.len()) as u64;
        }
        let hash = section_hash(&key, &section.value);
        self.digest.add(hash);
        self.section_bytes += (key.len() + section.value.len()) as u64;
        let section = Section {
            value: own_value(&section.value),
            ..section
        };
        self.sections.insert(key, Held { section, hash });
        Ok(())
    }

    /// Installs a pending stream message copied by a state transfer (ignored if consumed or
    /// present).
    pub fn install_message(&mut self, seq: u64, message: StreamMessage) -> Result<(), ApplyError> {
        check_message(&message).map_err(ApplyError::Invalid)?;
        if seq > self.version {
            return Err(ApplyError::Invalid(format!(
                "message {seq} is newer than the replica ({})",
                self.version
            )));
        }
        self.insert_message(seq, message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{MessageOrigin, Origin, Write};

    fn put(key: &str, value: &str) -> Write {
        Write {
            key: key.as_bytes().to_vec(),
            value: Some(value.as_bytes().to_vec().into()),
            priority: None,
        }
    }

    fn commit(seq: u64, epoch: u64, writes: Vec<Write>, consumed: Option<u64>) -> Op {
        Op {
            seq,
            epoch,
            kind: OpKind::Commit {
                writes: writes.into(),
                consumed,
            },
        }
    }

    fn message(seq: u64, epoch: u64, payload: &str) -> Op {
        Op {
            seq,
            epoch,
            kind: OpKind::Message(StreamMessage {
                payload: payload.as_bytes().to_vec(),
                origin: MessageOrigin {
                    origin: Origin::Udp,
                    peer: "127.0.0.1:5062".into(),
                },
            }),
        }
    }

    #[test]
    fn ops_apply_in_order_and_keep_the_digest_current() {
        let mut replica = ShardReplica::new();
        replica
            .apply(&commit(1, 1, vec![put("a", "1")], None))
            .unwrap();
        replica.apply(&message(2, 1, "INVITE")).unwrap();
        replica.apply(&message(3, 1, "BYE")).unwrap();
        replica
            .apply(&commit(4, 1, vec![put("a", "2"), put("b", "3")], Some(2)))
            .unwrap();
        assert_eq!(replica.version(), 4);
        assert_eq!(replica.consumed(), 2);
        assert_eq!(
            replica.pending().map(|(seq, _)| seq).collect::<Vec<_>>(),
            [3]
        );
        assert_eq!(replica.get(b"a").unwrap().value, &b"2"[..]);
        assert_eq!(replica.get(b"a").unwrap().changes, 2);
        assert_eq!(replica.digest(), replica.compute_digest());
        let delete = Write {
            key: b"a".to_vec(),
            value: None,
            priority: None,
        };
        replica.apply(&commit(5, 2, vec![delete], Some(3))).unwrap();
        assert!(replica.get(b"a").is_none());
        assert_eq!(replica.pending_count(), 0);
        assert_eq!(replica.digest(), replica.compute_digest());
        assert_eq!(replica.history().entries(), &[(1, 1), (2, 5)]);
        assert_eq!(replica.history().epoch_at(4), Some(1));
        assert_eq!(replica.history().epoch_at(5), Some(2));
    }

    #[test]
    fn gaps_stale_epochs_and_bad_consumption_are_refused_without_change() {
        let mut replica = ShardReplica::new();
        replica
            .apply(&commit(1, 3, vec![put("a", "1")], None))
            .unwrap();
        let before = replica.clone();
        assert_eq!(
            replica.apply(&commit(3, 3, vec![], None)),
            Err(ApplyError::Gap { version: 1, got: 3 })
        );
        assert_eq!(
            replica.apply(&commit(2, 2, vec![], None)),
            Err(ApplyError::StaleEpoch { have: 3, got: 2 })
        );
        assert!(matches!(
            replica.apply(&commit(2, 3, vec![], Some(2))),
            Err(ApplyError::Invalid(_))
        ));
        assert!(matches!(
            replica.apply(&commit(2, 3, vec![put("", "x")], None)),
            Err(ApplyError::Invalid(_))
        ));
        assert_eq!(replica, before);
        assert_eq!(replica.digest(), before.digest());
    }

    #[test]
    fn a_transfer_with_live_writes_overtaking_it_ends_equal() {
        // The primary: some history, then live writes while the copy runs.
        let mut primary = ShardReplica::new();
        primary
            .apply(&commit(1, 1, vec![put("a", "1"), put("b", "1")], None))
            .unwrap();
        primary.apply(&message(2, 1, "m2")).unwrap();
        primary
            .apply(&commit(3, 1, vec![put("c", "1")], None))
            .unwrap();
        let start = primary.snapshot();
        let order = primary.transfer_order();
        let mut target = ShardReplica::new();
        target.reset_to(&start);
        // Live ops after the start reach the target before some copies.
        let live = [
            commit(4, 1, vec![put("b", "2")], Some(2)),
            message(5, 1, "m5"),
        ];
        for op in &live {
            primary.apply(op).unwrap();
            target.apply(op).unwrap();
        }
        // The copy is made from the primary's current state, in priority order.
        for key in order {
            if let Some(section) = primary.get(&key) {
                target
                    .install_section(key.clone(), section.clone())
                    .unwrap();
            }
        }
        for (seq, message) in primary.pending() {
            target.install_message(seq, message.clone()).unwrap();
        }
        assert_eq!(target, primary);
        assert_eq!(target.digest(), primary.digest());
        assert_eq!(target.digest(), target.compute_digest());
    }

    #[test]
    fn an_older_copy_never_replaces_a_newer_section() {
        let mut target = ShardReplica::new();
        target.reset_to(&ReplicaSnapshot {
            version: 10,
            consumed: 0,
            history: EpochHistory::default(),
        });
        target
            .apply(&commit(11, 1, vec![put("k", "new")], None))
            .unwrap();
        target
            .install_section(
                b"k".to_vec(),
                Section {
                    value: b"old".to_vec().into(),
                    version: 7,
                    priority: None,
                    changes: 1,
                },
            )
            .unwrap();
        assert_eq!(target.get(b"k").unwrap().value, &b"new"[..]);
        assert_eq!(target.digest(), target.compute_digest());
    }

    #[test]
    fn transfer_order_puts_explicit_priority_then_hot_sections_first() {
        let mut replica = ShardReplica::new();
        let mut seq = 0;
        let mut next = |writes: Vec<Write>, replica: &mut ShardReplica| {
            seq += 1;
            replica.apply(&commit(seq, 1, writes, None)).unwrap();
        };
        next(vec![put("cold", "x")], &mut replica);
        for _ in 0..3 {
            next(vec![put("hot", "x")], &mut replica);
        }
        next(
            vec![Write {
                key: b"pinned".to_vec(),
                value: Some(b"x".to_vec().into()),
                priority: Some(9),
            }],
            &mut replica,
        );
        // A later write without a priority keeps the explicit one.
        next(vec![put("pinned", "y")], &mut replica);
        assert_eq!(
            replica.transfer_order(),
            vec![b"pinned".to_vec(), b"hot".to_vec(), b"cold".to_vec()]
        );
    }

    #[test]
    fn the_epoch_history_forgets_its_oldest_epochs() {
        let mut replica = ShardReplica::new();
        for seq in 1..=(EPOCH_HISTORY_LEN_MAX as u64 + 5) {
            replica.apply(&commit(seq, seq, vec![], None)).unwrap();
        }
        assert_eq!(replica.history().entries().len(), EPOCH_HISTORY_LEN_MAX);
        assert_eq!(replica.history().epoch_at(3), None);
        assert_eq!(replica.history().epoch_at(6), Some(6));
        assert_eq!(replica.history().epoch_at(0), Some(0));
    }
}
