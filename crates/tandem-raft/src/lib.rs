//! Raft for tandem: raft-rs's `RawNode` over our own durable storage, driven sans-IO.
//!
//! - [`disk`]: the little file-system surface the storage needs, with a real implementation
//!   ([`disk::FsDisk`], fsync and all) and an in-memory one that can lose unsynced bytes and
//!   tear the last write ([`disk::MemDisk`], used by the simulation and tests).
//! - [`storage`]: the write-ahead log (segments of crc32-framed records), hard state,
//!   snapshots and compaction, implementing `raft::Storage`.
//! - [`replica`]: one node's Raft replica: `RawNode` plus the applied cluster model. It takes
//!   ticks and messages and returns messages to send and entries applied; it owns no socket,
//!   thread or clock, so the daemon and the simulation drive the very same code.
//! - [`logging`]: raft-rs logs through slog; this bridges it into `tracing`.

pub mod disk;
pub mod logging;
pub mod replica;
pub mod storage;

pub use replica::{Applied, ReadyOutput, Replica, ReplicaConfig, ReplicaError, SyncJob};
pub use storage::{StorageError, WalOptions, WalStorage};

/// raft-rs's wire message, re-exported for the transports.
pub use raft::eraftpb::Message as RaftMessage;

/// Encodes a raft-rs message with raft-rs's own protobuf codec.
pub fn encode_raft_message(message: &RaftMessage) -> Vec<u8> {
    use protobuf::Message as _;
    message
        .write_to_bytes()
        .expect("encoding a raft message into memory cannot fail")
}

/// Decodes a raft-rs message that arrived inside a peer envelope.
pub fn decode_raft_message(bytes: &[u8]) -> Result<RaftMessage, protobuf::ProtobufError> {
    use protobuf::Message as _;
    RaftMessage::parse_from_bytes(bytes)
}
