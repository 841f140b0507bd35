//! Conversion between the data plane's messages and records (`tandem_core::data`) and their
//! protobuf form (`proto/data.proto`). Decoding never panics and bounds every count; a value
//! that does not make sense is an error.

use crate::data as wire;
use tandem_core::data::{
    DataMessage, Digest, EncodedOp, EpochHistory, Item, MessageOrigin, Op, OpKind, Origin,
    ReplicaSnapshot, Section, SessionStart, StreamMessage, Write, COMMIT_WRITES_MAX,
};
use tandem_core::{ShardName, UnitName};

/// Most items in one `Items` message.
pub const ITEMS_MAX: usize = 100_000;
/// Most sections or messages in one transfer item.
pub const TRANSFER_ENTRIES_MAX: usize = 1_000_000;

/// Why a data message or record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid data message: {0}")]
pub struct DataWireError(pub String);

fn bad(what: impl Into<String>) -> DataWireError {
    DataWireError(what.into())
}

fn encode_origin(origin: Origin) -> wire::Origin {
    match origin {
        Origin::Client => wire::Origin::Client,
        Origin::Udp => wire::Origin::Udp,
        Origin::Tcp => wire::Origin::Tcp,
    }
}

fn decode_origin(value: i32) -> Result<Origin, DataWireError> {
    Ok(
        match wire::Origin::try_from(value).map_err(|_| bad("message origin"))? {
            wire::Origin::Client => Origin::Client,
            wire::Origin::Udp => Origin::Udp,
            wire::Origin::Tcp => Origin::Tcp,
        },
    )
}

/// A stream message on the wire.
pub fn encode_stream_message(message: &StreamMessage) -> wire::StreamMessage {
    wire::StreamMessage {
        payload: message.payload.clone(),
        origin: encode_origin(message.origin.origin) as i32,
        peer: message.origin.peer.clone(),
    }
}

/// A stream message from the wire.
pub fn decode_stream_message(message: wire::StreamMessage) -> Result<StreamMessage, DataWireError> {
    let message = StreamMessage {
        origin: MessageOrigin {
            origin: decode_origin(message.origin)?,
            peer: message.peer,
        },
        payload: message.payload,
    };
    tandem_core::data::check_message(&message).map_err(bad)?;
    Ok(message)
}

/// Writes on the wire.
pub fn encode_writes(writes: &[Write]) -> Vec<wire::Write> {
    writes
        .iter()
        .map(|write| wire::Write {
            key: write.key.clone(),
            value: write.value.clone(),
            priority: write.priority,
        })
        .collect()
}

/// Writes from the wire, checked against the commit limits.
pub fn decode_writes(writes: Vec<wire::Write>) -> Result<Vec<Write>, DataWireError> {
    if writes.len() > COMMIT_WRITES_MAX {
        return Err(bad(format!("{} writes in one commit", writes.len())));
    }
    let writes: Vec<Write> = writes
        .into_iter()
        .map(|write| Write {
            key: write.key,
            value: write.value,
            priority: write.priority,
        })
        .collect();
    tandem_core::data::check_writes(&writes).map_err(bad)?;
    Ok(writes)
}

/// An op on the wire.
pub fn encode_op(op: &Op) -> wire::Op {
    wire::Op {
        seq: op.seq,
        epoch: op.epoch,
        kind: Some(match &op.kind {
            OpKind::Commit { writes, consumed } => wire::op::Kind::Commit(wire::Commit {
                writes: encode_writes(writes),
                consumed: *consumed,
            }),
            OpKind::Message(message) => wire::op::Kind::Message(encode_stream_message(message)),
        }),
    }
}

/// Protobuf wire types this file encodes by hand.
const WIRE_VARINT: u64 = 0;
const WIRE_LEN: u64 = 2;

fn varint_len(value: u64) -> usize {
    // 7 bits a byte; zero takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut bytes::BytesMut, mut value: u64) {
    use bytes::BufMut as _;
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// A field's key (every field number here is below 16: one byte).
fn put_key(out: &mut bytes::BytesMut, field: u64, wire_type: u64) {
    put_varint(out, (field << 3) | wire_type);
}

/// Bytes of a length-delimited field of `len` bytes, key and length included.
fn len_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn put_bytes_field(out: &mut bytes::BytesMut, field: u64, bytes: &[u8]) {
    use bytes::BufMut as _;
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

/// Bytes of `write` as a `tandem.data.Write` (without its own key and length).
fn write_len(write: &Write) -> usize {
    let key = if write.key.is_empty() {
        0
    } else {
        len_field_len(write.key.len())
    };
    let value = write
        .value
        .as_ref()
        .map_or(0, |value| len_field_len(value.len()));
    // An optional field is written when present, zero or not.
    let priority = write
        .priority
        .map_or(0, |priority| 1 + varint_len(u64::from(priority)));
    key + value + priority
}

/// Bytes of a varint field holding `value` (proto3 leaves a zero out).
fn varint_field_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + varint_len(value)
    }
}

/// `op` encoded as a `tandem.data.Op`: the bytes prost gives for [`encode_op`]. A commit is
/// written straight from tandem's types, so one of many writes costs no reference count per
/// value and no copy per key, as building the prost structs first did (twice per op on the
/// primary: once for its file, once for the STANDBY).
///
/// A commit's encoding is kept with its writes ([`tandem_core::data::Writes::encoded`]): an
/// op encoded for the file and for a STANDBY is encoded once.
pub fn encode_op_bytes(op: &Op) -> bytes::Bytes {
    use prost::Message as _;
    let OpKind::Commit { writes, consumed } = &op.kind else {
        // A stream op holds one message: prost's encoder does.
        return encode_op(op).encode_to_vec().into();
    };
    if let Some(kept) = writes.encoded() {
        if (kept.seq, kept.epoch, kept.consumed) == (op.seq, op.epoch, *consumed) {
            return kept.bytes.clone();
        }
    }
    let bytes = encode_commit_op(op.seq, op.epoch, writes, *consumed);
    writes.keep_encoded(EncodedOp {
        seq: op.seq,
        epoch: op.epoch,
        consumed: *consumed,
        bytes: bytes.clone(),
    });
    bytes
}

/// A commit op's `tandem.data.Op` bytes, field by field in prost's order.
fn encode_commit_op(seq: u64, epoch: u64, writes: &[Write], consumed: Option<u64>) -> bytes::Bytes {
    let commit_len = writes
        .iter()
        .map(|write| len_field_len(write_len(write)))
        .sum::<usize>()
        + consumed.map_or(0, |consumed| 1 + varint_len(consumed));
    let len = varint_field_len(seq) + varint_field_len(epoch) + len_field_len(commit_len);
    let mut out = bytes::BytesMut::with_capacity(len);
    for (field, value) in [(1, seq), (2, epoch)] {
        if value != 0 {
            put_key(&mut out, field, WIRE_VARINT);
            put_varint(&mut out, value);
        }
    }
    put_key(&mut out, 3, WIRE_LEN);
    put_varint(&mut out, commit_len as u64);
    for write in writes {
        put_key(&mut out, 1, WIRE_LEN);
        put_varint(&mut out, write_len(write) as u64);
        if !write.key.is_empty() {
            put_bytes_field(&mut out, 1, &write.key);
        }
        if let Some(value) = &write.value {
            put_bytes_field(&mut out, 2, value);
        }
        if let Some(priority) = write.priority {
            put_key(&mut out, 3, WIRE_VARINT);
            put_varint(&mut out, u64::from(priority));
        }
    }
    if let Some(consumed) = consumed {
        put_key(&mut out, 2, WIRE_VARINT);
        put_varint(&mut out, consumed);
    }
    debug_assert_eq!(out.len(), len);
    out.freeze()
}

/// An op from its encoded bytes (a `tandem.data.Op`); given a `Bytes`, its values share them.
///
/// A commit keeps the bytes as its encoded form (a STANDBY writes them to its file as they
/// came): they decode to this op, so they are an encoding of it, canonical or not.
pub fn decode_op_bytes(bytes: bytes::Bytes) -> Result<Op, DataWireError> {
    use prost::Message as _;
    let op = wire::Op::decode(bytes.clone()).map_err(|error| bad(format!("op: {error}")))?;
    let op = decode_op(op)?;
    if let OpKind::Commit { writes, consumed } = &op.kind {
        writes.keep_encoded(EncodedOp {
            seq: op.seq,
            epoch: op.epoch,
            consumed: *consumed,
            bytes,
        });
    }
    Ok(op)
}

/// An op from the wire.
pub fn decode_op(op: wire::Op) -> Result<Op, DataWireError> {
    let kind = match op.kind.ok_or_else(|| bad("op without a kind"))? {
        wire::op::Kind::Commit(commit) => OpKind::Commit {
            writes: decode_writes(commit.writes)?.into(),
            consumed: commit.consumed,
        },
        wire::op::Kind::Message(message) => OpKind::Message(decode_stream_message(message)?),
    };
    if op.seq == 0 {
        return Err(bad("op with seq 0"));
    }
    Ok(Op {
        seq: op.seq,
        epoch: op.epoch,
        kind,
    })
}

/// A transfer's starting point on the wire.
pub fn encode_snapshot(snapshot: &ReplicaSnapshot) -> wire::Snapshot {
    wire::Snapshot {
        version: snapshot.version,
        consumed: snapshot.consumed,
        history: snapshot
            .history
            .entries()
            .iter()
            .map(|(epoch, first_seq)| wire::EpochStart {
                epoch: *epoch,
                first_seq: *first_seq,
            })
            .collect(),
        forgotten_below: snapshot.history.forgotten_below(),
    }
}

/// A transfer's starting point from the wire.
pub fn decode_snapshot(snapshot: wire::Snapshot) -> Result<ReplicaSnapshot, DataWireError> {
    if snapshot.consumed > snapshot.version {
        return Err(bad("snapshot consumed beyond its version"));
    }
    let history = EpochHistory::from_parts(
        snapshot
            .history
            .into_iter()
            .map(|start| (start.epoch, start.first_seq))
            .collect(),
        snapshot.forgotten_below,
    )
    .map_err(bad)?;
    if history
        .entries()
        .last()
        .is_some_and(|(_, first)| *first > snapshot.version)
    {
        return Err(bad("snapshot history beyond its version"));
    }
    Ok(ReplicaSnapshot {
        version: snapshot.version,
        consumed: snapshot.consumed,
        history,
    })
}

/// Sections on the wire.
pub fn encode_sections(sections: &[(Vec<u8>, Section)]) -> wire::Sections {
    wire::Sections {
        sections: sections
            .iter()
            .map(|(key, section)| wire::Section {
                key: key.clone(),
                value: section.value.clone(),
                version: section.version,
                priority: section.priority,
                changes: section.changes,
            })
            .collect(),
    }
}

/// Sections from the wire.
pub fn decode_sections(sections: wire::Sections) -> Result<Vec<(Vec<u8>, Section)>, DataWireError> {
    if sections.sections.len() > TRANSFER_ENTRIES_MAX {
        return Err(bad("too many sections in one item"));
    }
    Ok(sections
        .sections
        .into_iter()
        .map(|section| {
            (
                section.key,
                Section {
                    value: section.value,
                    version: section.version,
                    priority: section.priority,
                    changes: section.changes,
                },
            )
        })
        .collect())
}

/// Pending messages on the wire.
pub fn encode_messages(messages: &[(u64, StreamMessage)]) -> wire::Messages {
    wire::Messages {
        messages: messages
            .iter()
            .map(|(seq, message)| wire::PendingMessage {
                seq: *seq,
                message: Some(encode_stream_message(message)),
            })
            .collect(),
    }
}

/// Pending messages from the wire.
pub fn decode_messages(
    messages: wire::Messages,
) -> Result<Vec<(u64, StreamMessage)>, DataWireError> {
    if messages.messages.len() > TRANSFER_ENTRIES_MAX {
        return Err(bad("too many messages in one item"));
    }
    messages
        .messages
        .into_iter()
        .map(|pending| {
            let message = pending
                .message
                .ok_or_else(|| bad("pending message empty"))?;
            Ok((pending.seq, decode_stream_message(message)?))
        })
        .collect()
}

fn encode_item(item: &Item) -> wire::Item {
    use wire::item::Kind;
    wire::Item {
        kind: Some(match item {
            Item::Op(op) => Kind::Op(encode_op_bytes(op)),
            Item::Sections(sections) => Kind::Sections(encode_sections(sections)),
            Item::Messages(messages) => Kind::Messages(encode_messages(messages)),
            Item::Verify { version, digest } => Kind::Verify(wire::Verify {
                version: *version,
                digest: digest.0.to_le_bytes().to_vec(),
            }),
        }),
    }
}

fn decode_item(item: wire::Item) -> Result<Item, DataWireError> {
    use wire::item::Kind;
    Ok(match item.kind.ok_or_else(|| bad("item without a kind"))? {
        Kind::Op(op) => Item::Op(decode_op_bytes(op)?),
        Kind::Sections(sections) => Item::Sections(decode_sections(sections)?),
        Kind::Messages(messages) => Item::Messages(decode_messages(messages)?),
        Kind::Verify(verify) => Item::Verify {
            version: verify.version,
            digest: decode_digest(&verify.digest)?,
        },
    })
}

/// A digest from its 16 little-endian bytes.
pub fn decode_digest(bytes: &[u8]) -> Result<Digest, DataWireError> {
    let bytes: [u8; 16] = bytes
        .try_into()
        .map_err(|_| bad(format!("digest of {} bytes, not 16", bytes.len())))?;
    Ok(Digest(u128::from_le_bytes(bytes)))
}

/// A data message on the wire.
pub fn encode_message(message: &DataMessage) -> wire::DataMessage {
    use wire::data_message::Kind;
    let kind = match message {
        DataMessage::Follow {
            shard,
            epoch,
            primary,
            standby,
            have_version,
            have_epoch,
            full,
        } => Kind::Follow(wire::Follow {
            shard: shard.0.clone(),
            epoch: *epoch,
            primary: primary.0.clone(),
            standby: standby.0.clone(),
            have_version: *have_version,
            have_epoch: *have_epoch,
            full: *full,
        }),
        DataMessage::Start {
            shard,
            epoch,
            standby,
            session,
            start,
        } => Kind::Start(wire::Start {
            shard: shard.0.clone(),
            epoch: *epoch,
            standby: standby.0.clone(),
            session: *session,
            start: Some(match start {
                SessionStart::Delta { from } => wire::start::Start::DeltaFrom(*from),
                SessionStart::Full {
                    snapshot,
                    sections,
                    bytes,
                } => wire::start::Start::Full(wire::Full {
                    snapshot: Some(encode_snapshot(snapshot)),
                    sections: *sections,
                    bytes: *bytes,
                }),
            }),
        }),
        DataMessage::Items {
            shard,
            epoch,
            standby,
            session,
            first,
            items,
        } => Kind::Items(wire::Items {
            shard: shard.0.clone(),
            epoch: *epoch,
            standby: standby.0.clone(),
            session: *session,
            first: *first,
            items: items.iter().map(encode_item).collect(),
        }),
        DataMessage::Ack {
            shard,
            epoch,
            standby,
            session,
            received,
            version,
            verified,
        } => Kind::Ack(wire::Ack {
            shard: shard.0.clone(),
            epoch: *epoch,
            standby: standby.0.clone(),
            session: *session,
            received: *received,
            version: *version,
            verified: *verified,
        }),
        DataMessage::Nack {
            shard,
            epoch,
            standby,
            session,
            expected,
        } => Kind::Nack(wire::Nack {
            shard: shard.0.clone(),
            epoch: *epoch,
            standby: standby.0.clone(),
            session: *session,
            expected: *expected,
        }),
        DataMessage::Stale {
            shard,
            epoch,
            standby,
        } => Kind::Stale(wire::Stale {
            shard: shard.0.clone(),
            epoch: *epoch,
            standby: standby.0.clone(),
        }),
        DataMessage::Forward {
            shard,
            message,
            hops,
            id,
        } => Kind::Forward(wire::Forward {
            shard: shard.0.clone(),
            message: Some(encode_stream_message(message)),
            hops: *hops,
            id: *id,
        }),
    };
    wire::DataMessage { kind: Some(kind) }
}

/// A data message from the wire.
pub fn decode_message(message: wire::DataMessage) -> Result<DataMessage, DataWireError> {
    use wire::data_message::Kind;
    Ok(
        match message
            .kind
            .ok_or_else(|| bad("data message without a kind"))?
        {
            Kind::Follow(follow) => DataMessage::Follow {
                shard: ShardName(follow.shard),
                epoch: follow.epoch,
                primary: UnitName(follow.primary),
                standby: UnitName(follow.standby),
                have_version: follow.have_version,
                have_epoch: follow.have_epoch,
                full: follow.full,
            },
            Kind::Start(start) => DataMessage::Start {
                shard: ShardName(start.shard),
                epoch: start.epoch,
                standby: UnitName(start.standby),
                session: start.session,
                start: match start.start.ok_or_else(|| bad("start without a kind"))? {
                    wire::start::Start::DeltaFrom(from) => SessionStart::Delta { from },
                    wire::start::Start::Full(full) => SessionStart::Full {
                        snapshot: decode_snapshot(
                            full.snapshot
                                .ok_or_else(|| bad("full start without a snapshot"))?,
                        )?,
                        sections: full.sections,
                        bytes: full.bytes,
                    },
                },
            },
            Kind::Items(items) => {
                if items.items.len() > ITEMS_MAX {
                    return Err(bad(format!("{} items in one message", items.items.len())));
                }
                if items.first == 0 {
                    return Err(bad("items numbered from 0"));
                }
                DataMessage::Items {
                    shard: ShardName(items.shard),
                    epoch: items.epoch,
                    standby: UnitName(items.standby),
                    session: items.session,
                    first: items.first,
                    items: items
                        .items
                        .into_iter()
                        .map(decode_item)
                        .collect::<Result<_, _>>()?,
                }
            }
            Kind::Ack(ack) => DataMessage::Ack {
                shard: ShardName(ack.shard),
                epoch: ack.epoch,
                standby: UnitName(ack.standby),
                session: ack.session,
                received: ack.received,
                version: ack.version,
                verified: ack.verified,
            },
            Kind::Nack(nack) => DataMessage::Nack {
                shard: ShardName(nack.shard),
                epoch: nack.epoch,
                standby: UnitName(nack.standby),
                session: nack.session,
                expected: nack.expected,
            },
            Kind::Stale(stale) => DataMessage::Stale {
                shard: ShardName(stale.shard),
                epoch: stale.epoch,
                standby: UnitName(stale.standby),
            },
            Kind::Forward(forward) => DataMessage::Forward {
                shard: ShardName(forward.shard),
                message: decode_stream_message(
                    forward
                        .message
                        .ok_or_else(|| bad("forward without a message"))?,
                )?,
                hops: forward.hops,
                id: forward.id,
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> StreamMessage {
        StreamMessage {
            payload: b"INVITE sip:a@b SIP/2.0".to_vec(),
            origin: MessageOrigin {
                origin: Origin::Udp,
                peer: "127.0.0.1:5062".into(),
            },
        }
    }

    #[test]
    fn a_commit_is_encoded_once_and_a_received_one_keeps_its_bytes() {
        let op = Op {
            seq: 4,
            epoch: 2,
            kind: OpKind::Commit {
                writes: vec![Write {
                    key: b"k".to_vec(),
                    value: Some(b"v".to_vec().into()),
                    priority: None,
                }]
                .into(),
                consumed: Some(1),
            },
        };
        let first = encode_op_bytes(&op);
        assert_eq!(encode_op_bytes(&op.clone()).as_ptr(), first.as_ptr());
        // The same writes in an op with another seq are encoded anew.
        let moved = Op {
            seq: 5,
            ..op.clone()
        };
        let other = encode_op_bytes(&moved);
        assert_ne!(other, first);
        assert_eq!(decode_op_bytes(other).expect("decodes"), moved);
        // Changed writes drop what was kept.
        let mut changed = op.clone();
        if let OpKind::Commit { writes, .. } = &mut changed.kind {
            writes.make_mut().push(Write {
                key: b"k2".to_vec(),
                value: None,
                priority: None,
            });
        }
        let again = encode_op_bytes(&changed);
        assert_eq!(decode_op_bytes(again).expect("decodes"), changed);
        // A received op is written on as it came.
        let received = decode_op_bytes(first.clone()).expect("decodes");
        assert_eq!(encode_op_bytes(&received).as_ptr(), first.as_ptr());
    }

    #[test]
    fn hand_encoded_ops_are_the_bytes_prost_gives_and_decode_back() {
        use prost::Message as _;
        let values: [Option<bytes::Bytes>; 4] = [
            None,
            Some(bytes::Bytes::new()),
            Some(b"v".to_vec().into()),
            Some(vec![9u8; 300].into()),
        ];
        let mut ops = vec![Op {
            seq: 7,
            epoch: 3,
            kind: OpKind::Message(message()),
        }];
        for (n, (seq, epoch)) in [(1, 1), (0, 0), (127, 128), (u64::MAX, 16384)]
            .into_iter()
            .enumerate()
        {
            let writes: Vec<Write> = (0..n * 3 + 1)
                .map(|w| Write {
                    key: if w == 5 {
                        Vec::new()
                    } else {
                        vec![b'k'; w * 50 + 1]
                    },
                    value: values[w % 4].clone(),
                    priority: [None, Some(0), Some(300), Some(u32::MAX)][(w + n) % 4],
                })
                .collect();
            for consumed in [None, Some(0), Some(seq / 2)] {
                ops.push(Op {
                    seq,
                    epoch,
                    kind: OpKind::Commit {
                        writes: writes.clone().into(),
                        consumed,
                    },
                });
            }
        }
        ops.push(Op {
            seq: 2,
            epoch: 1,
            kind: OpKind::Commit {
                writes: Vec::new().into(),
                consumed: None,
            },
        });
        for op in &ops {
            let bytes = encode_op_bytes(op);
            assert_eq!(bytes.to_vec(), encode_op(op).encode_to_vec(), "{op:?}");
            let valid = op.seq != 0
                && match &op.kind {
                    OpKind::Commit { writes, .. } => {
                        tandem_core::data::check_writes(writes).is_ok()
                    }
                    OpKind::Message(_) => true,
                };
            assert_eq!(decode_op_bytes(bytes).ok().as_ref(), valid.then_some(op));
        }
        assert!(decode_op_bytes(bytes::Bytes::from_static(&[0x1a, 0x05, 0x0a])).is_err());
    }

    #[test]
    fn every_message_round_trips() {
        let op = Op {
            seq: 7,
            epoch: 2,
            kind: OpKind::Commit {
                writes: vec![
                    Write {
                        key: b"k".to_vec(),
                        value: Some(b"v".to_vec().into()),
                        priority: Some(3),
                    },
                    Write {
                        key: b"gone".to_vec(),
                        value: None,
                        priority: None,
                    },
                ]
                .into(),
                consumed: Some(5),
            },
        };
        let snapshot = ReplicaSnapshot {
            version: 9,
            consumed: 4,
            history: EpochHistory::from_parts(vec![(1, 1), (2, 6)], 0).unwrap(),
        };
        let messages = vec![
            DataMessage::Follow {
                shard: "s".into(),
                epoch: 2,
                primary: "a".into(),
                standby: "b".into(),
                have_version: 3,
                have_epoch: 1,
                full: true,
            },
            DataMessage::Start {
                shard: "s".into(),
                epoch: 2,
                standby: "b".into(),
                session: 11,
                start: SessionStart::Full {
                    snapshot,
                    sections: 2,
                    bytes: 100,
                },
            },
            DataMessage::Start {
                shard: "s".into(),
                epoch: 2,
                standby: "b".into(),
                session: 12,
                start: SessionStart::Delta { from: 3 },
            },
            DataMessage::Items {
                shard: "s".into(),
                epoch: 2,
                standby: "b".into(),
                session: 11,
                first: 1,
                items: vec![
                    Item::Op(op),
                    Item::Op(Op {
                        seq: 8,
                        epoch: 2,
                        kind: OpKind::Message(message()),
                    }),
                    Item::Sections(vec![(
                        b"k".to_vec(),
                        Section {
                            value: b"v".to_vec().into(),
                            version: 7,
                            priority: None,
                            changes: 4,
                        },
                    )]),
                    Item::Messages(vec![(8, message())]),
                    Item::Verify {
                        version: 8,
                        digest: Digest(u128::MAX - 5),
                    },
                ],
            },
            DataMessage::Ack {
                shard: "s".into(),
                epoch: 2,
                standby: "b".into(),
                session: 11,
                received: 5,
                version: 8,
                verified: Some(true),
            },
            DataMessage::Nack {
                shard: "s".into(),
                epoch: 2,
                standby: "b".into(),
                session: 11,
                expected: 2,
            },
            DataMessage::Stale {
                shard: "s".into(),
                epoch: 3,
                standby: "b".into(),
            },
            DataMessage::Forward {
                shard: "s".into(),
                message: message(),
                hops: 1,
                id: 99,
            },
        ];
        for message in messages {
            assert_eq!(decode_message(encode_message(&message)).unwrap(), message);
        }
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(decode_message(wire::DataMessage { kind: None }).is_err());
        assert!(decode_digest(&[1, 2, 3]).is_err());
        let bad_history = wire::Snapshot {
            version: 3,
            consumed: 1,
            history: vec![
                wire::EpochStart {
                    epoch: 2,
                    first_seq: 1,
                },
                wire::EpochStart {
                    epoch: 1,
                    first_seq: 2,
                },
            ],
            forgotten_below: 0,
        };
        assert!(decode_snapshot(bad_history).is_err());
        let too_big = wire::Op {
            seq: 1,
            epoch: 1,
            kind: Some(wire::op::Kind::Commit(wire::Commit {
                writes: vec![wire::Write {
                    key: vec![b'k'; 5000],
                    value: None,
                    priority: None,
                }],
                consumed: None,
            })),
        };
        assert!(decode_op(too_big).is_err());
    }
}
