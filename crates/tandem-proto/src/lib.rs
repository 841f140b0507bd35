//! Wire types of tandem and the frame codec that carries them.
//!
//! The prost types are generated at build time from `proto/*.proto` (protox, no system
//! `protoc`). Everything that crosses a socket or lands on disk is framed by [`frame`]:
//! a length, a crc32 of the payload, then the payload, with a hard size limit.

pub mod admin_wire;
pub mod data_wire;
pub mod frame;
#[cfg(feature = "tokio")]
pub mod sdk_stream;
pub mod sdk_wire;
pub mod state_wire;

/// Daemon-to-daemon messages (`proto/peer.proto`).
pub mod peer {
    #![allow(missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/tandem.peer.rs"));
}

/// Raft log commands and the cluster snapshot (`proto/state.proto`).
pub mod state {
    #![allow(missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/tandem.state.rs"));
}

/// Operator protocol (`proto/admin.proto`).
pub mod admin {
    #![allow(missing_docs)]
    // `AdminResponse::Kind::Status` is much larger than the other answers. One response is
    // built per request and moved once; boxing it would only cost an allocation.
    #![allow(clippy::large_enum_variant)]
    include!(concat!(env!("OUT_DIR"), "/tandem.admin.rs"));
}

/// Data plane messages and replica file records (`proto/data.proto`).
pub mod data {
    #![allow(missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/tandem.data.rs"));
}

/// Unit-to-agent protocol of the SDK (`proto/sdk.proto`).
pub mod sdk {
    #![allow(missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/tandem.sdk.rs"));
}

pub use prost::Message;

/// Error from decoding a protobuf message that arrived inside a valid frame.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {source}")]
pub struct DecodeError {
    /// What was being decoded, e.g. "peer envelope".
    pub what: &'static str,
    /// The prost error.
    #[source]
    pub source: prost::DecodeError,
}

/// Decodes a peer envelope from a frame payload. Given a `Bytes`, the checkpoint values in it
/// share the payload's buffer (given a slice, they are copied).
pub fn decode_envelope(payload: impl bytes::Buf) -> Result<peer::Envelope, DecodeError> {
    peer::Envelope::decode(payload).map_err(|source| DecodeError {
        what: "peer envelope",
        source,
    })
}

/// Decodes a Raft log command.
pub fn decode_command(payload: &[u8]) -> Result<state::Command, DecodeError> {
    state::Command::decode(payload).map_err(|source| DecodeError {
        what: "raft command",
        source,
    })
}

/// Decodes a cluster snapshot.
pub fn decode_cluster_snapshot(payload: &[u8]) -> Result<state::ClusterSnapshot, DecodeError> {
    state::ClusterSnapshot::decode(payload).map_err(|source| DecodeError {
        what: "cluster snapshot",
        source,
    })
}

/// Decodes an admin request.
pub fn decode_admin_request(payload: &[u8]) -> Result<admin::AdminRequest, DecodeError> {
    admin::AdminRequest::decode(payload).map_err(|source| DecodeError {
        what: "admin request",
        source,
    })
}

/// Decodes an admin response.
pub fn decode_admin_response(payload: &[u8]) -> Result<admin::AdminResponse, DecodeError> {
    admin::AdminResponse::decode(payload).map_err(|source| DecodeError {
        what: "admin response",
        source,
    })
}

/// Decodes what a unit sent its agent.
pub fn decode_unit_message(payload: impl bytes::Buf) -> Result<sdk::UnitToAgent, DecodeError> {
    sdk::UnitToAgent::decode(payload).map_err(|source| DecodeError {
        what: "unit message",
        source,
    })
}

/// Decodes what an agent sent its unit.
pub fn decode_agent_message(payload: impl bytes::Buf) -> Result<sdk::AgentToUnit, DecodeError> {
    sdk::AgentToUnit::decode(payload).map_err(|source| DecodeError {
        what: "agent message",
        source,
    })
}

/// Decodes a replica file record.
pub fn decode_replica_record(payload: &[u8]) -> Result<data::ReplicaRecord, DecodeError> {
    data::ReplicaRecord::decode(payload).map_err(|source| DecodeError {
        what: "replica record",
        source,
    })
}

/// Decodes a replica file header.
pub fn decode_replica_header(payload: &[u8]) -> Result<data::ReplicaHeader, DecodeError> {
    data::ReplicaHeader::decode(payload).map_err(|source| DecodeError {
        what: "replica header",
        source,
    })
}

/// Decodes a replica file's stamp (see `proto/data.proto`).
pub fn decode_replica_stamp(payload: &[u8]) -> Result<data::ReplicaStamp, DecodeError> {
    data::ReplicaStamp::decode(payload).map_err(|source| DecodeError {
        what: "replica stamp",
        source,
    })
}
