//! Conversion between peer messages and the wire envelope (`proto/peer.proto`). Decoding never
//! panics; a message that does not make sense is an error and is dropped by the receiver.

use std::collections::BTreeMap;

use tandem_core::{AgentReport, Presence, SettledRoles, ShardName, Time, UnitName, UnitReport};
use tandem_proto::peer::{self as wire, envelope::Body};
use tandem_proto::state_wire::{
    decode_fault_id, decode_fault_kind, encode_fault_id, encode_fault_kind, CodecError,
};

use crate::{Grant, Heartbeat, PeerMessage};

/// Why an envelope's body could not be turned into a peer message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The envelope has no body.
    #[error("empty peer envelope")]
    Empty,
    /// The raft message inside does not decode.
    #[error("undecodable raft message: {0}")]
    Raft(String),
    /// A data plane message where a control message was expected (the caller routes data
    /// bodies to the data plane first).
    #[error("a data plane message on the control path")]
    DataOnControl,
    /// A part of a tandem message is invalid.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Reports with more units than this are refused (a node hosts far fewer).
pub const REPORT_UNITS_MAX: usize = 100_000;

/// The envelope body for `message`.
pub fn encode(message: &PeerMessage) -> Body {
    match message {
        PeerMessage::Raft(raft) => Body::Raft(tandem_raft::encode_raft_message(raft)),
        PeerMessage::Heartbeat(heartbeat) => Body::Heartbeat(wire::Heartbeat {
            term: heartbeat.term,
            commit_index: heartbeat.commit_index,
            applied_index: heartbeat.applied_index,
            sent_at_us: heartbeat.sent_at.as_micros(),
            report: Some(encode_report(&heartbeat.report)),
        }),
        PeerMessage::Grant(grant) => Body::Grant(wire::Grant {
            sent_at_us: grant.sent_at.as_micros(),
            floor: grant.floor,
            term: grant.term,
            shortened_by_us: u64::try_from(grant.shortened_by.as_micros()).unwrap_or(u64::MAX),
        }),
        PeerMessage::Report(report) => Body::Report(encode_report(report)),
    }
}

/// The peer message in an envelope body.
pub fn decode(body: Option<Body>) -> Result<PeerMessage, WireError> {
    Ok(match body.ok_or(WireError::Empty)? {
        Body::Raft(bytes) => PeerMessage::Raft(
            tandem_raft::decode_raft_message(&bytes)
                .map_err(|error| WireError::Raft(error.to_string()))?,
        ),
        Body::Heartbeat(heartbeat) => PeerMessage::Heartbeat(Heartbeat {
            term: heartbeat.term,
            commit_index: heartbeat.commit_index,
            applied_index: heartbeat.applied_index,
            sent_at: Time::from_micros(heartbeat.sent_at_us),
            report: decode_report(heartbeat.report.unwrap_or_default())?,
        }),
        Body::Grant(grant) => PeerMessage::Grant(Grant {
            sent_at: Time::from_micros(grant.sent_at_us),
            floor: grant.floor,
            term: grant.term,
            shortened_by: std::time::Duration::from_micros(grant.shortened_by_us),
        }),
        Body::Report(report) => PeerMessage::Report(decode_report(report)?),
        Body::Data(_) => return Err(WireError::DataOnControl),
    })
}

fn encode_presence(presence: Presence) -> wire::Presence {
    match presence {
        Presence::Stopped => wire::Presence::Stopped,
        Presence::Starting => wire::Presence::Starting,
        Presence::Running => wire::Presence::Running,
        Presence::Stopping => wire::Presence::Stopping,
    }
}

fn decode_presence(value: i32) -> Result<Presence, WireError> {
    Ok(
        match wire::Presence::try_from(value).map_err(|_| CodecError::Invalid("presence"))? {
            wire::Presence::Stopped => Presence::Stopped,
            wire::Presence::Starting => Presence::Starting,
            wire::Presence::Running => Presence::Running,
            wire::Presence::Stopping => Presence::Stopping,
        },
    )
}

/// An agent report on the wire.
pub fn encode_report(report: &AgentReport) -> wire::AgentReport {
    wire::AgentReport {
        applied_index: report.applied_index,
        units: report
            .units
            .iter()
            .map(|(name, unit)| wire::UnitReport {
                unit: name.0.clone(),
                generation: unit.generation,
                presence: encode_presence(unit.presence) as i32,
                pid: unit.pid,
                settled: unit.settled.as_ref().map(|settled| wire::SettledRoles {
                    unsettled: settled
                        .unsettled
                        .iter()
                        .map(|shard| shard.0.clone())
                        .collect(),
                    acting_withheld: settled.acting_withheld,
                    unsettled_after: settled
                        .unsettled_after
                        .as_ref()
                        .map(|shard| shard.0.clone()),
                }),
                faults: unit
                    .faults
                    .iter()
                    .map(|(id, kind)| wire::Fault {
                        id: Some(encode_fault_id(*id)),
                        kind: Some(encode_fault_kind(kind)),
                    })
                    .collect(),
                load: unit.load,
            })
            .collect(),
        in_sync: report
            .in_sync
            .iter()
            .map(|(shard, claim)| wire::InSyncClaim {
                shard: shard.0.clone(),
                epoch: claim.epoch,
                version: claim.version,
                units: claim.units.iter().map(|unit| unit.0.clone()).collect(),
                seq: claim.seq,
            })
            .collect(),
    }
}

/// An agent report from the wire.
pub fn decode_report(report: wire::AgentReport) -> Result<AgentReport, WireError> {
    if report.units.len() > REPORT_UNITS_MAX {
        return Err(CodecError::Invalid("agent report (too many units)").into());
    }
    let mut units = BTreeMap::new();
    for unit in report.units {
        if unit.settled.as_ref().is_some_and(|settled| {
            settled.unsettled.len() > tandem_core::report::UNSETTLED_LISTED_MAX
        }) {
            return Err(CodecError::Invalid("agent report (too many unsettled shards)").into());
        }
        let settled = unit.settled.map(|settled| SettledRoles {
            unsettled: settled.unsettled.into_iter().map(ShardName).collect(),
            unsettled_after: settled.unsettled_after.map(ShardName),
            acting_withheld: settled.acting_withheld,
        });
        let faults = unit
            .faults
            .into_iter()
            .map(|fault| {
                let id = decode_fault_id(fault.id.ok_or(CodecError::Invalid("fault id"))?);
                let kind = decode_fault_kind(fault.kind.ok_or(CodecError::Invalid("fault kind"))?)?;
                Ok((id, kind))
            })
            .collect::<Result<_, WireError>>()?;
        units.insert(
            UnitName(unit.unit),
            UnitReport {
                generation: unit.generation,
                presence: decode_presence(unit.presence)?,
                pid: unit.pid,
                settled,
                faults,
                load: unit.load,
            },
        );
    }
    if report.in_sync.len() > REPORT_UNITS_MAX {
        return Err(CodecError::Invalid("agent report (too many in-sync claims)").into());
    }
    let in_sync = report
        .in_sync
        .into_iter()
        .map(|claim| {
            (
                ShardName(claim.shard),
                tandem_core::InSyncClaim {
                    epoch: claim.epoch,
                    version: claim.version,
                    units: claim.units.into_iter().map(UnitName).collect(),
                    seq: claim.seq,
                },
            )
        })
        .collect();
    Ok(AgentReport {
        applied_index: report.applied_index,
        units,
        in_sync,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::{FaultId, FaultKind};

    #[test]
    fn messages_round_trip() {
        let mut report = AgentReport {
            applied_index: 12,
            units: BTreeMap::new(),
            in_sync: [(
                ShardName::from("s0"),
                tandem_core::InSyncClaim {
                    epoch: 4,
                    version: 9,
                    units: ["b".into()].into(),
                    seq: 7,
                },
            )]
            .into(),
        };
        report.units.insert(
            "a".into(),
            UnitReport {
                generation: 3,
                presence: Presence::Running,
                pid: Some(77),
                settled: Some(SettledRoles {
                    unsettled: [ShardName::from("s0")].into(),
                    unsettled_after: Some(ShardName::from("s9")),
                    acting_withheld: true,
                }),
                faults: vec![(
                    FaultId {
                        generation: 3,
                        seq: 1,
                    },
                    FaultKind::HealthTimeout,
                )],
                load: Some(40),
            },
        );
        let messages = [
            PeerMessage::Heartbeat(Heartbeat {
                term: 2,
                commit_index: 5,
                applied_index: 4,
                sent_at: Time::from_micros(123),
                report: report.clone(),
            }),
            PeerMessage::Grant(Grant {
                sent_at: Time::from_micros(123),
                floor: 8,
                term: 2,
                shortened_by: std::time::Duration::from_micros(4_500),
            }),
            PeerMessage::Report(report),
        ];
        for message in messages {
            assert_eq!(decode(Some(encode(&message))).unwrap(), message);
        }
        assert!(matches!(decode(None), Err(WireError::Empty)));
    }
}
