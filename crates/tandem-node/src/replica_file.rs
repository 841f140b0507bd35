//! The on-disk form of a replica, sans-IO: what to append for each [`PersistAction`], and how
//! to read a file's bytes back into a replica. The daemon keeps the bytes in a memory-mapped
//! file; the simulation keeps them in memory and tears their unsynced tail at a crash.
//!
//! A file is a header frame, a stamp frame, then record frames (tandem's length + crc32
//! framing, `proto/data.proto`'s `ReplicaHeader`, `ReplicaStamp` and `ReplicaRecord`). Reading
//! stops at the first record frame that is truncated, fails its crc, does not decode, is empty
//! (a pre-allocated zero tail), or does not apply: everything before it is the replica,
//! everything from it on is a torn or unfinished write and is cut. A compacted file starts with
//! the whole replica (`base`, then its sections and pending messages), so reading it needs no
//! history.
//!
//! The stamp has a fixed size and is overwritten in place after records are appended: the
//! replica's epoch, version and digest after the records in the file's first `len` bytes. It
//! is synced after those records, so it never describes records that are not durable. A file
//! read back to exactly `len` bytes must give that version, epoch and digest, or it is refused:
//! that catches a record stream that replays to another replica than the one written (which
//! the per-record crc cannot see). A stamp that is torn, or stale (the crash came before it
//! was rewritten), is only reported.

use tandem_core::data::{PersistAction, ReplicaSnapshot, Section, ShardReplica, StreamMessage};
use tandem_core::{ShardName, UnitName};
use tandem_proto::data as wire;
use tandem_proto::frame::{parse_frame, SliceFrame};

use crate::data_wire::{
    decode_messages, decode_op_bytes, decode_sections, decode_snapshot, encode_messages,
    encode_op_bytes, encode_sections, encode_snapshot,
};

/// The header's format string. Files of format 1 (no stamp) are refused: the replica is
/// rebuilt by a transfer.
pub const FORMAT: &str = "tandem replica 2";
/// Largest record (a commit is at most 8 MiB, a transfer chunk a few MiB).
pub const RECORD_LEN_MAX: usize = 32 * 1024 * 1024;
/// Sections per record of a compacted file.
const SECTIONS_PER_RECORD: usize = 4096;

fn frame(message: &impl tandem_proto::Message) -> Vec<u8> {
    tandem_proto::frame::message_frame(message).into()
}

fn header_frame(shard: &ShardName, unit: &UnitName) -> Vec<u8> {
    frame(&wire::ReplicaHeader {
        format: FORMAT.to_owned(),
        shard: shard.0.clone(),
        unit: unit.0.clone(),
    })
}

/// The start of a new file of `shard`'s replica kept for `unit`: the header and the stamp of
/// an empty replica.
pub fn header(shard: &ShardName, unit: &UnitName) -> Vec<u8> {
    let mut out = header_frame(shard, unit);
    let len = out.len() + STAMP_LEN;
    out.extend(stamp(&ShardReplica::new(), len));
    out
}

/// Where the stamp of a file of `shard`'s replica for `unit` starts (it is [`STAMP_LEN`]
/// bytes long).
pub fn stamp_at(shard: &ShardName, unit: &UnitName) -> usize {
    header_frame(shard, unit).len()
}

/// Bytes of a stamp frame (every field is fixed-size and present).
pub const STAMP_LEN: usize = 8 + 5 * 9;

/// The stamp saying that the file's first `len` bytes hold `replica`.
pub fn stamp(replica: &ShardReplica, len: usize) -> Vec<u8> {
    encode_stamp(&Stamp::of(replica), len)
}

/// What a stamp says of a replica (the file length aside).
pub use tandem_core::data::ReplicaStamp as Stamp;

/// The stamp frame ([`STAMP_LEN`] bytes) saying that a file's first `len` bytes hold `stamp`.
pub fn encode_stamp(stamp: &Stamp, len: usize) -> Vec<u8> {
    let bytes = frame(&wire::ReplicaStamp {
        epoch: Some(stamp.epoch),
        version: Some(stamp.version),
        digest_high: Some((stamp.digest >> 64) as u64),
        digest_low: Some(stamp.digest as u64),
        records_end: Some(len as u64),
    });
    debug_assert_eq!(bytes.len(), STAMP_LEN);
    bytes
}

/// The bytes to append for `action` (`None` for `Remove`, which deletes the file, and
/// `Stamp`, which rewrites the stamp in place): [`record_parts`] joined, so the simulation's
/// in-memory files take the daemon's very encoding.
pub fn record(action: &PersistAction) -> Option<Vec<u8>> {
    record_parts(action).map(|parts| parts.to_vec())
}

/// The bytes to append for `action`, as parts to write with one gathering write: large
/// values are not copied (see [`FrameParts`](tandem_proto::frame::FrameParts)).
pub fn record_parts(action: &PersistAction) -> Option<tandem_proto::frame::FrameParts> {
    record_message(action).map(|record| tandem_proto::frame::message_frame_parts(&record))
}

fn record_message(action: &PersistAction) -> Option<wire::ReplicaRecord> {
    use wire::replica_record::Kind;
    let kind = match action {
        PersistAction::Reset(snapshot) => Kind::Reset(encode_snapshot(snapshot)),
        PersistAction::Op(op) => Kind::Op(encode_op_bytes(op)),
        PersistAction::Sections(sections) => Kind::Sections(encode_sections(sections)),
        PersistAction::Messages(messages) => Kind::Messages(encode_messages(messages)),
        PersistAction::Complete => Kind::Complete(true),
        PersistAction::Incomplete => Kind::Incomplete(true),
        PersistAction::Remove | PersistAction::Stamp(_) => return None,
    };
    Some(wire::ReplicaRecord { kind: Some(kind) })
}

/// A compacted file holding `replica` as it is.
pub fn compacted(
    shard: &ShardName,
    unit: &UnitName,
    replica: &ShardReplica,
    complete: bool,
) -> Vec<u8> {
    Compaction::capture(shard, unit, replica, complete).encode()
}

/// A replica's content at one version, taken for a compacted file: taking it only clones
/// keys and counts references to values, so the daemon's loop takes it and the writer thread
/// does the encoding (which copies every byte; for a large replica, far too long for the loop).
#[derive(Debug, Clone)]
pub struct Compaction {
    shard: ShardName,
    unit: UnitName,
    base: ReplicaSnapshot,
    sections: Vec<(Vec<u8>, Section)>,
    messages: Vec<(u64, StreamMessage)>,
    complete: bool,
    stamp: Stamp,
    value_bytes: usize,
}

impl Compaction {
    /// Takes `replica` as it is now.
    pub fn capture(
        shard: &ShardName,
        unit: &UnitName,
        replica: &ShardReplica,
        complete: bool,
    ) -> Self {
        Self {
            shard: shard.clone(),
            unit: unit.clone(),
            base: replica.snapshot(),
            sections: replica
                .sections()
                .map(|(key, section)| (key.clone(), section.clone()))
                .collect(),
            messages: replica
                .pending()
                .map(|(seq, message)| (seq, message.clone()))
                .collect(),
            complete,
            stamp: Stamp::of(replica),
            value_bytes: (replica.section_bytes() + replica.pending_bytes()) as usize,
        }
    }

    /// About the bytes [`encode`](Self::encode) gives (within a few bytes per section).
    pub fn len_estimate(&self) -> usize {
        const PER_SECTION: usize = 24;
        self.value_bytes + self.sections.len() * PER_SECTION + self.messages.len() * PER_SECTION
    }

    /// The compacted file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        use wire::replica_record::Kind;
        let mut out = Vec::with_capacity(self.len_estimate() + 4096);
        out.extend(header_frame(&self.shard, &self.unit));
        let stamp_at = out.len();
        out.extend([0; STAMP_LEN]);
        let base = Kind::Base(encode_snapshot(&self.base));
        out.extend(frame(&wire::ReplicaRecord { kind: Some(base) }));
        for chunk in self.sections.chunks(SECTIONS_PER_RECORD) {
            let kind = Kind::Sections(encode_sections(chunk));
            out.extend(frame(&wire::ReplicaRecord { kind: Some(kind) }));
        }
        if !self.messages.is_empty() {
            let kind = Kind::Messages(encode_messages(&self.messages));
            out.extend(frame(&wire::ReplicaRecord { kind: Some(kind) }));
        }
        if self.complete {
            out.extend(frame(&wire::ReplicaRecord {
                kind: Some(Kind::Complete(true)),
            }));
        }
        let len = out.len();
        out[stamp_at..stamp_at + STAMP_LEN].copy_from_slice(&encode_stamp(&self.stamp, len));
        out
    }
}

/// A replica read back from its file.
#[derive(Debug)]
pub struct Recovered {
    /// The replica.
    pub replica: ShardReplica,
    /// False when a transfer into it never finished (it must not be trusted as a prefix).
    pub complete: bool,
    /// Bytes of valid frames; the rest is cut.
    pub valid_len: usize,
    /// Records applied.
    pub records: u64,
    /// Why reading stopped before the end of the bytes, if it did.
    pub stopped: Option<String>,
    /// What the stamp said, when it was not checked: (its `len`, its version), or why it
    /// could not be read.
    pub stamp_unchecked: Option<String>,
}

/// Why a file is not a replica at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a replica file of shard {shard} for unit {unit}: {reason}")]
pub struct NotAReplica {
    /// The shard expected.
    pub shard: String,
    /// The unit expected.
    pub unit: String,
    /// What is wrong.
    pub reason: String,
}

/// Reads a replica file's bytes. A file with a bad or foreign header is refused (the caller
/// starts an empty replica); a bad record ends the replica there.
pub fn recover(bytes: &[u8], shard: &ShardName, unit: &UnitName) -> Result<Recovered, NotAReplica> {
    let not = |reason: String| NotAReplica {
        shard: shard.0.clone(),
        unit: unit.0.clone(),
        reason,
    };
    let (header, mut offset) = match parse_frame(bytes, RECORD_LEN_MAX) {
        SliceFrame::Frame { payload, consumed } => (
            tandem_proto::decode_replica_header(payload).map_err(|error| not(error.to_string()))?,
            consumed,
        ),
        SliceFrame::Truncated => return Err(not("the header is incomplete".into())),
        SliceFrame::Invalid(error) => return Err(not(error.to_string())),
    };
    if header.format != FORMAT || header.shard != shard.0 || header.unit != unit.0 {
        return Err(not(format!(
            "header says {:?} for shard {:?} and unit {:?}",
            header.format, header.shard, header.unit
        )));
    }
    let stamp = match bytes
        .get(offset..offset + STAMP_LEN)
        .map(|bytes| parse_frame(bytes, STAMP_LEN))
    {
        Some(SliceFrame::Frame { payload, .. }) => tandem_proto::decode_replica_stamp(payload)
            .map_err(|error| error.to_string())
            .and_then(|stamp| match stamp {
                wire::ReplicaStamp {
                    epoch: Some(epoch),
                    version: Some(version),
                    digest_high: Some(high),
                    digest_low: Some(low),
                    records_end: Some(len),
                } => Ok((
                    epoch,
                    version,
                    (u128::from(high) << 64) | u128::from(low),
                    len,
                )),
                _ => Err("a stamp with a field missing".to_owned()),
            }),
        Some(SliceFrame::Invalid(error)) => Err(error.to_string()),
        Some(SliceFrame::Truncated) | None => Err("the stamp is incomplete".to_owned()),
    };
    offset += STAMP_LEN;
    let mut replica = ShardReplica::new();
    let mut complete = true;
    let mut records = 0;
    let mut stopped = None;
    while offset < bytes.len() {
        let (payload, consumed) = match parse_frame(&bytes[offset..], RECORD_LEN_MAX) {
            SliceFrame::Frame { payload, consumed } => (payload, consumed),
            SliceFrame::Truncated => {
                stopped = Some(format!("a truncated record at byte {offset}"));
                break;
            }
            SliceFrame::Invalid(error) => {
                stopped = Some(format!("{error} at byte {offset}"));
                break;
            }
        };
        if payload.is_empty() {
            // The zero-filled room after the last record.
            break;
        }
        let applied = tandem_proto::decode_replica_record(payload)
            .map_err(|error| error.to_string())
            .and_then(|record| {
                replay(&mut replica, &mut complete, record).map_err(|error| error.to_string())
            });
        if let Err(reason) = applied {
            stopped = Some(format!("{reason} at byte {offset}"));
            break;
        }
        records += 1;
        offset += consumed;
    }
    let stamp_unchecked = match stamp {
        Ok((epoch, version, digest, len)) if len == offset as u64 => {
            let found = (replica.epoch(), replica.version(), replica.digest().0);
            if found != (epoch, version, digest) {
                return Err(not(format!(
                    "its {offset} bytes replay to epoch {}, version {}, digest {:032x}, but its \
                     stamp says epoch {epoch}, version {version}, digest {digest:032x}",
                    found.0, found.1, found.2
                )));
            }
            None
        }
        Ok((_, version, _, len)) => Some(format!(
            "the stamp is for {len} bytes (version {version}), the records end at {offset}"
        )),
        Err(reason) => Some(format!("the stamp is unreadable: {reason}")),
    };
    Ok(Recovered {
        replica,
        complete,
        valid_len: offset,
        records,
        stopped,
        stamp_unchecked,
    })
}

fn replay(
    replica: &mut ShardReplica,
    complete: &mut bool,
    record: wire::ReplicaRecord,
) -> Result<(), String> {
    use wire::replica_record::Kind;
    match record.kind.ok_or("a record without a kind")? {
        Kind::Reset(snapshot) => {
            let snapshot: ReplicaSnapshot = decode_snapshot(snapshot).map_err(|e| e.to_string())?;
            replica.reset_to(&snapshot);
            *complete = false;
        }
        Kind::Base(snapshot) => {
            let snapshot: ReplicaSnapshot = decode_snapshot(snapshot).map_err(|e| e.to_string())?;
            replica.reset_to(&snapshot);
            *complete = false;
        }
        Kind::Op(op) => {
            let op = decode_op_bytes(op).map_err(|e| e.to_string())?;
            replica.apply(&op).map_err(|e| e.to_string())?;
        }
        Kind::Sections(sections) => {
            for (key, section) in decode_sections(sections).map_err(|e| e.to_string())? {
                replica
                    .install_section(key, section)
                    .map_err(|e| e.to_string())?;
            }
        }
        Kind::Messages(messages) => {
            for (seq, message) in decode_messages(messages).map_err(|e| e.to_string())? {
                replica
                    .install_message(seq, message)
                    .map_err(|e| e.to_string())?;
            }
        }
        Kind::Complete(_) => *complete = true,
        Kind::Incomplete(_) => *complete = false,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::data::{MessageOrigin, Op, OpKind, Origin, StreamMessage, Write};

    fn ops() -> Vec<Op> {
        (1..=20)
            .map(|seq| Op {
                seq,
                epoch: 1 + seq / 10,
                kind: if seq % 3 == 0 {
                    OpKind::Message(StreamMessage {
                        payload: format!("m{seq}").into_bytes(),
                        origin: MessageOrigin {
                            origin: Origin::Client,
                            peer: String::new(),
                        },
                    })
                } else {
                    OpKind::Commit {
                        writes: vec![Write {
                            key: format!("k{}", seq % 4).into_bytes(),
                            value: Some(vec![seq as u8; 100].into()),
                            priority: None,
                        }]
                        .into(),
                        consumed: (seq % 3 == 1 && seq > 3).then_some(seq - 1),
                    }
                },
            })
            .collect()
    }

    #[test]
    fn gathered_records_have_the_bytes_of_copied_ones() {
        let large: bytes::Bytes = vec![5u8; 70_000].into();
        let op = Op {
            seq: 9,
            epoch: 2,
            kind: OpKind::Commit {
                writes: vec![
                    Write {
                        key: b"big".to_vec(),
                        value: Some(large.clone()),
                        priority: Some(1),
                    },
                    Write {
                        key: b"small".to_vec(),
                        value: Some(b"v".to_vec().into()),
                        priority: None,
                    },
                    Write {
                        key: b"gone".to_vec(),
                        value: None,
                        priority: None,
                    },
                ]
                .into(),
                consumed: Some(4),
            },
        };
        let section = |value: bytes::Bytes| Section {
            value,
            version: 7,
            priority: None,
            changes: 3,
        };
        let actions = [
            PersistAction::Op(op),
            PersistAction::Sections(vec![
                (b"a".to_vec(), section(large.clone())),
                (b"b".to_vec(), section(b"x".to_vec().into())),
            ]),
            PersistAction::Complete,
        ];
        for action in &actions {
            let parts = record_parts(action).unwrap();
            let copied = frame(&record_message(action).unwrap());
            assert_eq!(parts.to_vec(), copied, "{action:?}");
        }
        // The large value is written from its own buffer, not copied.
        let parts = record_parts(&actions[1]).unwrap();
        assert!(parts
            .parts()
            .iter()
            .any(|part| part.as_ptr() == large.as_ptr()));
        assert!(record_parts(&PersistAction::Remove).is_none());
    }

    #[test]
    fn a_file_replays_to_the_replica_and_a_torn_tail_is_cut() {
        let shard = ShardName::from("s0");
        let unit = UnitName::from("a");
        let mut expected = ShardReplica::new();
        let mut file = header(&shard, &unit);
        let mut lengths = Vec::new();
        for op in ops() {
            expected.apply(&op).unwrap();
            file.extend(record(&PersistAction::Op(op)).unwrap());
            lengths.push(file.len());
        }
        let recovered = recover(&file, &shard, &unit).unwrap();
        assert_eq!(recovered.replica, expected);
        assert_eq!(recovered.replica.digest(), expected.digest());
        assert!(recovered.complete && recovered.stopped.is_none());
        // Every cut in the middle of the last record loses exactly that record.
        let mut before = ShardReplica::new();
        for op in ops().into_iter().take(19) {
            before.apply(&op).unwrap();
        }
        for cut in lengths[18] + 1..lengths[19] {
            let recovered = recover(&file[..cut], &shard, &unit).unwrap();
            assert_eq!(recovered.replica, before, "cut at {cut}");
            assert_eq!(recovered.valid_len, lengths[18]);
        }
        // Garbage and zero room after the records are ignored.
        let mut padded = file.clone();
        padded.extend([0u8; 64]);
        assert_eq!(recover(&padded, &shard, &unit).unwrap().replica, expected);
        let mut flipped = file.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0xff;
        let recovered = recover(&flipped, &shard, &unit).unwrap();
        assert_eq!(recovered.replica, before);
        assert!(recovered.stopped.unwrap().contains("crc"));
        // Someone else's file is refused.
        assert!(recover(&file, &shard, &UnitName::from("b")).is_err());
        assert!(recover(b"garbage!garbage!", &shard, &unit).is_err());
    }

    #[test]
    fn the_stamp_is_checked_when_it_covers_exactly_the_records_read() {
        let shard = ShardName::from("s0");
        let unit = UnitName::from("a");
        let at = stamp_at(&shard, &unit);
        let mut replica = ShardReplica::new();
        let mut file = header(&shard, &unit);
        // A fresh file's stamp covers it exactly.
        assert!(recover(&file, &shard, &unit)
            .unwrap()
            .stamp_unchecked
            .is_none());
        for op in ops() {
            replica.apply(&op).unwrap();
            file.extend(record(&PersistAction::Op(op)).unwrap());
        }
        // Records written after the stamp: reported, not refused.
        let stale = recover(&file, &shard, &unit).unwrap();
        assert_eq!(stale.replica, replica);
        assert!(stale
            .stamp_unchecked
            .unwrap()
            .contains("the records end at"));
        // Stamped after the records: checked and accepted.
        let len = file.len();
        file[at..at + STAMP_LEN].copy_from_slice(&stamp(&replica, len));
        let checked = recover(&file, &shard, &unit).unwrap();
        assert!(checked.stamp_unchecked.is_none());
        assert_eq!(checked.replica, replica);
        // A stamp whose digest differs from what the records give: refused.
        let mut other = replica.clone();
        other
            .apply(&Op {
                seq: replica.version() + 1,
                epoch: replica.epoch(),
                kind: OpKind::Commit {
                    writes: vec![Write {
                        key: b"extra".to_vec(),
                        value: Some(b"x".to_vec().into()),
                        priority: None,
                    }]
                    .into(),
                    consumed: None,
                },
            })
            .unwrap();
        let mut wrong = file.clone();
        wrong[at..at + STAMP_LEN].copy_from_slice(&stamp(&other, len));
        let error = recover(&wrong, &shard, &unit).unwrap_err();
        assert!(error.reason.contains("stamp says"), "{error}");
        // A torn stamp: reported, the records still read.
        let mut torn = file.clone();
        torn[at + STAMP_LEN - 1] ^= 0xff;
        let recovered = recover(&torn, &shard, &unit).unwrap();
        assert_eq!(recovered.replica, replica);
        assert!(recovered.stamp_unchecked.unwrap().contains("unreadable"));
        // A compacted file is stamped.
        let compact = compacted(&shard, &unit, &replica, true);
        assert!(recover(&compact, &shard, &unit)
            .unwrap()
            .stamp_unchecked
            .is_none());
        // A file of the format before stamps is refused (its replica comes by transfer).
        let mut old = frame(&wire::ReplicaHeader {
            format: "tandem replica 1".to_owned(),
            shard: shard.0.clone(),
            unit: unit.0.clone(),
        });
        old.extend(record(&PersistAction::Complete).unwrap());
        assert!(recover(&old, &shard, &unit).is_err());
    }

    #[test]
    fn transfers_and_compaction_round_trip() {
        let shard = ShardName::from("s0");
        let unit = UnitName::from("a");
        let mut source = ShardReplica::new();
        for op in ops() {
            source.apply(&op).unwrap();
        }
        // A transfer into a file: reset, sections, messages; incomplete until the end.
        let mut file = header(&shard, &unit);
        file.extend(record(&PersistAction::Reset(source.snapshot())).unwrap());
        let sections: Vec<_> = source
            .sections()
            .map(|(key, section)| (key.clone(), section.clone()))
            .collect();
        file.extend(record(&PersistAction::Sections(sections)).unwrap());
        let messages: Vec<_> = source
            .pending()
            .map(|(seq, message)| (seq, message.clone()))
            .collect();
        file.extend(record(&PersistAction::Messages(messages)).unwrap());
        let partial = recover(&file, &shard, &unit).unwrap();
        assert!(!partial.complete);
        assert_eq!(partial.replica, source);
        file.extend(record(&PersistAction::Complete).unwrap());
        assert!(recover(&file, &shard, &unit).unwrap().complete);
        // A failed digest check takes it back, until a transfer completes again.
        let mut failed = file.clone();
        failed.extend(record(&PersistAction::Incomplete).unwrap());
        assert!(!recover(&failed, &shard, &unit).unwrap().complete);
        // Compaction keeps the replica and its completeness.
        let compact = compacted(&shard, &unit, &source, true);
        let recovered = recover(&compact, &shard, &unit).unwrap();
        assert_eq!(recovered.replica, source);
        assert!(recovered.complete);
        assert!(
            !recover(&compacted(&shard, &unit, &source, false), &shard, &unit)
                .unwrap()
                .complete
        );
        // A capture is the replica at the moment it was taken, whatever happens to the
        // replica before it is encoded (the writer thread encodes it later).
        let image = Compaction::capture(&shard, &unit, &source, true);
        let captured = source.clone();
        source
            .apply(&Op {
                seq: source.version() + 1,
                epoch: 9,
                kind: OpKind::Commit {
                    writes: vec![Write {
                        key: b"later".to_vec(),
                        value: Some(bytes::Bytes::from_static(b"not in the image")),
                        priority: None,
                    }]
                    .into(),
                    consumed: None,
                },
            })
            .unwrap();
        let encoded = image.encode();
        assert!(image.len_estimate().abs_diff(encoded.len()) < encoded.len() / 2 + 256);
        let recovered = recover(&encoded, &shard, &unit).unwrap();
        assert_eq!(recovered.replica, captured);
        assert_ne!(recovered.replica, source);
        assert!(recovered.stamp_unchecked.is_none());
    }
}
