//! Conversion between the SDK's checkpoint and stream calls (`tandem_core::data`'s
//! `DataRequest`, `DataReply`, `Delivery`) and their protobuf form (`proto/sdk.proto`). Both
//! the SDK and tandemd use it. Decoding never panics and bounds every count through
//! [`data_wire`](crate::data_wire)'s checks.

use tandem_core::data::{DataReply, DataRequest, Delivery, Digest, RefusalCode, Section};
use tandem_core::ShardName;

use crate::data as data_wire_types;
use crate::data_wire::{
    decode_digest, decode_sections, decode_stream_message, decode_writes, encode_sections,
    encode_stream_message, encode_writes, DataWireError,
};
use crate::sdk as wire;

/// A refusal's code on the wire. Exhaustive both ways: a new [`RefusalCode`] does not compile
/// until it has its number here.
pub fn encode_refusal(code: RefusalCode) -> wire::RefusalCode {
    match code {
        RefusalCode::BadRequest => wire::RefusalCode::RefusalBadRequest,
        RefusalCode::NotActive => wire::RefusalCode::RefusalNotActive,
        RefusalCode::StaleEpoch => wire::RefusalCode::RefusalStaleEpoch,
        RefusalCode::EpochChanged => wire::RefusalCode::RefusalEpochChanged,
        RefusalCode::NoLease => wire::RefusalCode::RefusalNoLease,
        RefusalCode::NoReplica => wire::RefusalCode::RefusalNoReplica,
        RefusalCode::NotRegistered => wire::RefusalCode::RefusalNotRegistered,
        RefusalCode::OutcomeUnknown => wire::RefusalCode::RefusalOutcomeUnknown,
        RefusalCode::QueueBroken => wire::RefusalCode::RefusalQueueBroken,
        RefusalCode::Unknown => wire::RefusalCode::RefusalUnknown,
    }
}

/// A refusal's code from the wire: its enum `kind`, or, when that is unset (a tandemd from
/// before it), its name; what this build does not know (from a newer tandemd) is
/// [`RefusalCode::Unknown`].
pub fn decode_refusal(kind: i32, name: &str) -> RefusalCode {
    match wire::RefusalCode::try_from(kind).unwrap_or(wire::RefusalCode::RefusalUnknown) {
        wire::RefusalCode::RefusalUnknown => {
            RefusalCode::from_name(name).unwrap_or(RefusalCode::Unknown)
        }
        wire::RefusalCode::RefusalBadRequest => RefusalCode::BadRequest,
        wire::RefusalCode::RefusalNotActive => RefusalCode::NotActive,
        wire::RefusalCode::RefusalStaleEpoch => RefusalCode::StaleEpoch,
        wire::RefusalCode::RefusalEpochChanged => RefusalCode::EpochChanged,
        wire::RefusalCode::RefusalNoLease => RefusalCode::NoLease,
        wire::RefusalCode::RefusalNoReplica => RefusalCode::NoReplica,
        wire::RefusalCode::RefusalNotRegistered => RefusalCode::NotRegistered,
        wire::RefusalCode::RefusalOutcomeUnknown => RefusalCode::OutcomeUnknown,
        wire::RefusalCode::RefusalQueueBroken => RefusalCode::QueueBroken,
    }
}

fn bad(what: impl Into<String>) -> DataWireError {
    DataWireError(what.into())
}

fn shard(name: String) -> Result<ShardName, DataWireError> {
    if name.is_empty() || name.len() > 256 {
        return Err(bad("shard name empty or longer than 256 bytes"));
    }
    Ok(ShardName(name))
}

/// A data call on the wire (the request is moved in: a commit's writes are not copied).
pub fn encode_call(id: u64, request: DataRequest) -> wire::DataCall {
    use wire::data_call::Kind;
    let kind = match request {
        DataRequest::Commit {
            shard,
            epoch,
            writes,
            consumed,
            sync,
            chain,
        } => Kind::Commit(wire::CommitCall {
            shard: shard.0,
            epoch,
            writes: writes
                .into_iter()
                .map(|write| crate::data::Write {
                    key: write.key,
                    value: write.value,
                    priority: write.priority,
                })
                .collect(),
            consumed,
            sync,
            chain: chain.map(|(chain, _)| chain),
            chain_index: chain.map(|(_, index)| index),
        }),
        DataRequest::Get { shard, key } => Kind::Get(wire::GetCall {
            shard: shard.0,
            key,
        }),
        DataRequest::Scan {
            shard,
            start,
            bytes_max,
        } => Kind::Scan(wire::ScanCall {
            shard: shard.0,
            start,
            bytes_max,
        }),
        DataRequest::Deliver { shard, epoch } => Kind::Deliver(wire::DeliverCall {
            shard: shard.0,
            epoch,
        }),
        DataRequest::Flush { shard } => Kind::Flush(wire::FlushCall { shard: shard.0 }),
        DataRequest::Subscribe { shard, on } => {
            Kind::Subscribe(wire::SubscribeCall { shard: shard.0, on })
        }
        DataRequest::Position { shard } => Kind::Position(wire::PositionCall { shard: shard.0 }),
    };
    wire::DataCall {
        id,
        kind: Some(kind),
    }
}

/// A data call from the wire: its id and the request.
pub fn decode_call(call: wire::DataCall) -> Result<(u64, DataRequest), DataWireError> {
    use wire::data_call::Kind;
    let request = match call.kind.ok_or_else(|| bad("data call without a kind"))? {
        Kind::Commit(commit) => DataRequest::Commit {
            shard: shard(commit.shard)?,
            epoch: commit.epoch,
            writes: decode_writes(commit.writes)?,
            consumed: commit.consumed,
            sync: commit.sync,
            chain: match (commit.chain, commit.chain_index) {
                (Some(chain), Some(index)) => Some((chain, index)),
                (None, None) => None,
                _ => return Err(bad("a commit with a chain and no index, or the reverse")),
            },
        },
        Kind::Get(get) => DataRequest::Get {
            shard: shard(get.shard)?,
            key: get.key,
        },
        Kind::Scan(scan) => DataRequest::Scan {
            shard: shard(scan.shard)?,
            start: scan.start,
            bytes_max: scan.bytes_max,
        },
        Kind::Deliver(deliver) => DataRequest::Deliver {
            shard: shard(deliver.shard)?,
            epoch: deliver.epoch,
        },
        Kind::Flush(flush) => DataRequest::Flush {
            shard: shard(flush.shard)?,
        },
        Kind::Subscribe(subscribe) => DataRequest::Subscribe {
            shard: shard(subscribe.shard)?,
            on: subscribe.on,
        },
        Kind::Position(position) => DataRequest::Position {
            shard: shard(position.shard)?,
        },
    };
    Ok((call.id, request))
}

fn encode_section(key: &[u8], section: &Section) -> data_wire_types::Section {
    data_wire_types::Section {
        key: key.to_vec(),
        value: section.value.clone(),
        version: section.version,
        priority: section.priority,
        changes: section.changes,
    }
}

/// An answer on the wire.
pub fn encode_answer(id: u64, reply: &DataReply) -> wire::DataAnswer {
    use wire::data_answer::Kind;
    let kind = match reply {
        DataReply::Committed { version } => Kind::Committed(*version),
        DataReply::Value(section) => Kind::Value(wire::ValueAnswer {
            section: section.as_ref().map(|section| encode_section(&[], section)),
        }),
        DataReply::Sections { sections, next } => Kind::Sections(wire::SectionsAnswer {
            sections: Some(encode_sections(sections)),
            next: next.clone(),
        }),
        DataReply::Done { version } => Kind::Done(*version),
        DataReply::Position {
            version,
            consumed,
            digest,
            sections,
            in_sync,
        } => Kind::Position(wire::PositionAnswer {
            version: *version,
            consumed: *consumed,
            digest: digest.0.to_le_bytes().to_vec(),
            sections: *sections,
            in_sync: *in_sync,
        }),
        DataReply::Error { code, message } => Kind::Error(wire::ErrorAnswer {
            code: code.name().to_owned(),
            message: message.clone(),
            kind: encode_refusal(*code) as i32,
        }),
    };
    wire::DataAnswer {
        id,
        kind: Some(kind),
    }
}

/// An answer from the wire: the id of the call it answers and the reply.
pub fn decode_answer(answer: wire::DataAnswer) -> Result<(u64, DataReply), DataWireError> {
    use wire::data_answer::Kind;
    let reply = match answer
        .kind
        .ok_or_else(|| bad("data answer without a kind"))?
    {
        Kind::Committed(version) => DataReply::Committed { version },
        Kind::Value(value) => DataReply::Value(value.section.map(|section| Section {
            value: section.value,
            version: section.version,
            priority: section.priority,
            changes: section.changes,
        })),
        Kind::Sections(sections) => DataReply::Sections {
            sections: decode_sections(sections.sections.unwrap_or_default())?,
            next: sections.next,
        },
        Kind::Done(version) => DataReply::Done { version },
        Kind::Position(position) => DataReply::Position {
            version: position.version,
            consumed: position.consumed,
            digest: decode_digest(&position.digest)?,
            sections: position.sections,
            in_sync: position.in_sync,
        },
        Kind::Error(error) => DataReply::Error {
            code: decode_refusal(error.kind, &error.code),
            message: error.message,
        },
    };
    Ok((answer.id, reply))
}

/// A delivery on the wire.
pub fn encode_delivery(delivery: &Delivery) -> wire::DataDelivery {
    use wire::data_delivery::Kind;
    let kind = match delivery {
        Delivery::Message {
            shard,
            epoch,
            seq,
            message,
        } => Kind::Message(wire::MessageDelivery {
            shard: shard.0.clone(),
            epoch: *epoch,
            seq: *seq,
            message: Some(encode_stream_message(message)),
        }),
        Delivery::Changed {
            shard,
            version,
            writes,
            reset,
        } => Kind::Changed(wire::ChangeDelivery {
            shard: shard.0.clone(),
            version: *version,
            writes: encode_writes(writes),
            reset: *reset,
        }),
    };
    wire::DataDelivery { kind: Some(kind) }
}

/// A delivery from the wire.
pub fn decode_delivery(delivery: wire::DataDelivery) -> Result<Delivery, DataWireError> {
    use wire::data_delivery::Kind;
    Ok(
        match delivery
            .kind
            .ok_or_else(|| bad("delivery without a kind"))?
        {
            Kind::Message(message) => Delivery::Message {
                shard: shard(message.shard)?,
                epoch: message.epoch,
                seq: message.seq,
                message: decode_stream_message(
                    message
                        .message
                        .ok_or_else(|| bad("message delivery without a message"))?,
                )?,
            },
            Kind::Changed(changed) => Delivery::Changed {
                shard: shard(changed.shard)?,
                version: changed.version,
                writes: decode_writes(changed.writes)?,
                reset: changed.reset,
            },
        },
    )
}

/// The digest as tandemd shows it (32 hex digits).
pub fn digest_hex(digest: Digest) -> String {
    format!("{:032x}", digest.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::data::{MessageOrigin, Origin, StreamMessage, Write};

    #[test]
    fn calls_answers_and_deliveries_survive_the_round_trip() {
        let shard = ShardName("s0".into());
        let requests = vec![
            DataRequest::Commit {
                shard: shard.clone(),
                epoch: 3,
                writes: vec![
                    Write {
                        key: b"a".to_vec(),
                        value: Some(b"1".to_vec().into()),
                        priority: Some(4),
                    },
                    Write {
                        key: b"b".to_vec(),
                        value: None,
                        priority: None,
                    },
                ],
                consumed: Some(9),
                sync: true,
                chain: None,
            },
            DataRequest::Commit {
                shard: shard.clone(),
                epoch: 4,
                writes: Vec::new(),
                consumed: None,
                sync: false,
                chain: Some((2, 0)),
            },
            DataRequest::Get {
                shard: shard.clone(),
                key: b"a".to_vec(),
            },
            DataRequest::Scan {
                shard: shard.clone(),
                start: b"x".to_vec(),
                bytes_max: 100,
            },
            DataRequest::Deliver {
                shard: shard.clone(),
                epoch: 2,
            },
            DataRequest::Flush {
                shard: shard.clone(),
            },
            DataRequest::Subscribe {
                shard: shard.clone(),
                on: true,
            },
            DataRequest::Position {
                shard: shard.clone(),
            },
        ];
        for (id, request) in requests.into_iter().enumerate() {
            let decoded = decode_call(encode_call(id as u64, request.clone())).expect("decodes");
            assert_eq!(decoded, (id as u64, request));
        }
        let section = Section {
            value: b"v".to_vec().into(),
            version: 5,
            priority: Some(1),
            changes: 2,
        };
        let replies = vec![
            DataReply::Committed { version: 7 },
            DataReply::Value(Some(section.clone())),
            DataReply::Value(None),
            DataReply::Sections {
                sections: vec![(b"k".to_vec(), section)],
                next: Some(b"l".to_vec()),
            },
            DataReply::Done { version: 1 },
            DataReply::Position {
                version: 1,
                consumed: 2,
                digest: Digest(0xfeed),
                sections: 3,
                in_sync: 1,
            },
        ];
        let replies = replies
            .into_iter()
            .chain(RefusalCode::ALL.map(|code| DataReply::Error {
                code,
                message: format!("refused: {code}"),
            }));
        for reply in replies {
            assert_eq!(
                decode_answer(encode_answer(4, &reply)).expect("decodes"),
                (4, reply)
            );
        }
        let deliveries = vec![
            Delivery::Message {
                shard: shard.clone(),
                epoch: 1,
                seq: 2,
                message: StreamMessage {
                    payload: b"INVITE".to_vec(),
                    origin: MessageOrigin {
                        origin: Origin::Udp,
                        peer: "127.0.0.1:5060".into(),
                    },
                },
            },
            Delivery::Changed {
                shard,
                version: 3,
                writes: Vec::new(),
                reset: true,
            },
        ];
        for delivery in deliveries {
            assert_eq!(
                decode_delivery(encode_delivery(&delivery)).expect("decodes"),
                delivery
            );
        }
    }

    #[test]
    fn a_foreign_error_code_and_a_bad_digest_are_handled() {
        let answer = wire::DataAnswer {
            id: 1,
            kind: Some(wire::data_answer::Kind::Error(wire::ErrorAnswer {
                code: "from_the_future".into(),
                kind: 4242,
                message: "m".into(),
            })),
        };
        let (_, reply) = decode_answer(answer).expect("decodes");
        assert!(matches!(
            reply,
            DataReply::Error {
                code: RefusalCode::Unknown,
                ..
            }
        ));
        // A tandemd from before the enum sends only the name; every name still decodes.
        for code in RefusalCode::ALL {
            let answer = wire::DataAnswer {
                id: 1,
                kind: Some(wire::data_answer::Kind::Error(wire::ErrorAnswer {
                    code: code.name().into(),
                    kind: 0,
                    message: "m".into(),
                })),
            };
            let (_, reply) = decode_answer(answer).expect("decodes");
            assert!(
                matches!(reply, DataReply::Error { code: got, .. } if got == code),
                "{code}"
            );
        }
        let answer = wire::DataAnswer {
            id: 1,
            kind: Some(wire::data_answer::Kind::Position(wire::PositionAnswer {
                digest: vec![1, 2, 3],
                ..Default::default()
            })),
        };
        assert!(decode_answer(answer).is_err());
        let call = wire::DataCall {
            id: 1,
            kind: Some(wire::data_call::Kind::Get(wire::GetCall {
                shard: String::new(),
                key: Vec::new(),
            })),
        };
        assert!(decode_call(call).is_err());
    }
}
