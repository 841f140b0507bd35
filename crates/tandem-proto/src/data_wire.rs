//! Conversion between the data plane's messages and records (`tandem_core::data`) and their
//! protobuf form (`proto/data.proto`). Decoding never panics and bounds every count; a value
//! that does not make sense is an error.

use crate::data as wire;
use tandem_core::data::{
    DataMessage, Digest, EpochHistory, Item, MessageOrigin, Op, OpKind, Origin, ReplicaSnapshot,
    Section, SessionStart, StreamMessage, Write, COMMIT_WRITES_MAX,
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
            Item::Op(op) => Kind::Op(encode_op(op)),
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
        Kind::Op(op) => Item::Op(decode_op(op)?),
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
