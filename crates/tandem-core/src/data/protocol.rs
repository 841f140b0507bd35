//! What agents send each other about replicas, what units ask of their agent's data plane, and
//! what the data plane answers or delivers.

use crate::ids::{ShardName, UnitName};

use super::digest::Digest;
use super::replica::{ReplicaSnapshot, Section};
use super::{Op, StreamMessage, Write};

/// How a replication session starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionStart {
    /// The secondary's replica is a prefix of the primary's: ops follow from `from + 1`.
    Delta {
        /// The secondary's version.
        from: u64,
    },
    /// The secondary empties its replica and receives a full state transfer.
    Full {
        /// The primary's position when the transfer began.
        snapshot: ReplicaSnapshot,
        /// Sections to copy.
        sections: u64,
        /// Their bytes (keys and values).
        bytes: u64,
    },
}

/// One item of a session, numbered from 1. Items are applied strictly in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A live op.
    Op(Op),
    /// Sections copied by a state transfer.
    Sections(Vec<(Vec<u8>, Section)>),
    /// Pending stream messages copied by a state transfer.
    Messages(Vec<(u64, StreamMessage)>),
    /// The primary's digest at `version`: the secondary compares its own at the same point.
    Verify {
        /// The version.
        version: u64,
        /// The digest.
        digest: Digest,
    },
}

impl Item {
    /// Bytes it occupies (for windows).
    pub fn size(&self) -> usize {
        match self {
            Item::Op(op) => op.size(),
            Item::Sections(sections) => sections
                .iter()
                .map(|(key, section)| key.len() + section.value.len() + 32)
                .sum(),
            Item::Messages(messages) => messages.iter().map(|(_, m)| m.size() + 8).sum(),
            Item::Verify { .. } => 32,
        }
    }
}

/// A message between two nodes' data planes. `primary` and `standby` name the units whose
/// replicas the session joins (a node may hold replicas of one shard for two units).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataMessage {
    /// Secondary → primary: start (or restart) a session. Repeated until answered.
    Follow {
        /// The shard.
        shard: ShardName,
        /// The epoch the secondary believes current.
        epoch: u64,
        /// The primary's unit.
        primary: UnitName,
        /// The secondary's unit.
        standby: UnitName,
        /// The secondary's version.
        have_version: u64,
        /// The epoch of its last op.
        have_epoch: u64,
        /// Ask for a full transfer (the replica is incomplete or failed verification).
        full: bool,
    },
    /// Primary → secondary: a session begins.
    Start {
        /// The shard.
        shard: ShardName,
        /// The primary's epoch.
        epoch: u64,
        /// The secondary's unit.
        standby: UnitName,
        /// The session's id.
        session: u64,
        /// Delta or full.
        start: SessionStart,
    },
    /// Primary → secondary: items `first`, `first + 1`, ... of the session.
    Items {
        /// The shard.
        shard: ShardName,
        /// The primary's epoch.
        epoch: u64,
        /// The secondary's unit.
        standby: UnitName,
        /// The session.
        session: u64,
        /// Number of the first item.
        first: u64,
        /// The items.
        items: Vec<Item>,
    },
    /// Secondary → primary: items up to `received` are applied.
    Ack {
        /// The shard.
        shard: ShardName,
        /// The session's epoch.
        epoch: u64,
        /// The secondary's unit.
        standby: UnitName,
        /// The session.
        session: u64,
        /// Last item applied.
        received: u64,
        /// The secondary's version after them.
        version: u64,
        /// Set when a `Verify` was among them: whether the digests matched.
        verified: Option<bool>,
    },
    /// Secondary → primary: an item is missing; resend from `expected`.
    Nack {
        /// The shard.
        shard: ShardName,
        /// The session's epoch.
        epoch: u64,
        /// The secondary's unit.
        standby: UnitName,
        /// The session.
        session: u64,
        /// The item expected next.
        expected: u64,
    },
    /// Primary → secondary: not the primary for that epoch (the sender's view is `epoch`), or
    /// the primary of that epoch holding no session with the secondary (it dropped it while
    /// the secondary kept it): the secondary follows again.
    Stale {
        /// The shard.
        shard: ShardName,
        /// The sender's epoch.
        epoch: u64,
        /// The secondary's unit.
        standby: UnitName,
    },
    /// A stream message received on another node, forwarded to the primary's node.
    Forward {
        /// The shard.
        shard: ShardName,
        /// The message.
        message: StreamMessage,
        /// How many times it was forwarded already (bounded, so views that disagree during a
        /// change of ACTIVE cannot bounce a message for ever).
        hops: u32,
        /// Unique per sending node's run: a copy the network delivers twice is taken once.
        id: u64,
    },
}

impl DataMessage {
    /// The shard concerned.
    pub fn shard(&self) -> &ShardName {
        match self {
            Self::Follow { shard, .. }
            | Self::Start { shard, .. }
            | Self::Items { shard, .. }
            | Self::Ack { shard, .. }
            | Self::Nack { shard, .. }
            | Self::Stale { shard, .. }
            | Self::Forward { shard, .. } => shard,
        }
    }
}

/// What a unit asks its agent's data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataRequest {
    /// Apply `writes` and consume the stream up to `consumed`, atomically (ACTIVE only, at
    /// `epoch`). `sync`: answer once every in-sync STANDBY applied it; otherwise at once
    /// (unless a STANDBY lags beyond the service's bound).
    Commit {
        /// The shard.
        shard: ShardName,
        /// The epoch the unit holds ACTIVE at.
        epoch: u64,
        /// The writes.
        writes: Vec<Write>,
        /// Stream position consumed.
        consumed: Option<u64>,
        /// Sync or async.
        sync: bool,
        /// `(chain, index)` of a batch of queued commits (the SDK sends up to two at once).
        /// Index 0 starts a chain; a later index applies only right after the one before it
        /// in the same chain, from the same unit instance, so that what is applied of a queue
        /// stays a prefix of it: once one batch is refused, the rest of its chain is too.
        chain: Option<(u64, u64)>,
    },
    /// Read one section of the unit's replica.
    Get {
        /// The shard.
        shard: ShardName,
        /// The key.
        key: Vec<u8>,
    },
    /// Read sections in key order from `start`, up to about `bytes_max` bytes.
    Scan {
        /// The shard.
        shard: ShardName,
        /// First key (inclusive).
        start: Vec<u8>,
        /// Bytes to return at most (at least one section is returned).
        bytes_max: u64,
    },
    /// Start (or restart) delivering the shard's stream to the unit, from the first message
    /// not consumed. The SDK sends it once the unit's hook took ACTIVE at `epoch`.
    Deliver {
        /// The shard.
        shard: ShardName,
        /// The epoch the unit holds ACTIVE at.
        epoch: u64,
    },
    /// Answer once everything committed so far is on every in-sync STANDBY.
    Flush {
        /// The shard.
        shard: ShardName,
    },
    /// Start or stop change notifications for the unit's replica (hot standby).
    Subscribe {
        /// The shard.
        shard: ShardName,
        /// On or off.
        on: bool,
    },
    /// The replica's position (version, consumed, digest, sync).
    Position {
        /// The shard.
        shard: ShardName,
    },
}

impl DataRequest {
    /// The shard concerned.
    pub fn shard(&self) -> &ShardName {
        match self {
            Self::Commit { shard, .. }
            | Self::Get { shard, .. }
            | Self::Scan { shard, .. }
            | Self::Deliver { shard, .. }
            | Self::Flush { shard }
            | Self::Subscribe { shard, .. }
            | Self::Position { shard } => shard,
        }
    }
}

/// The answer to a [`DataRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataReply {
    /// The commit is applied (and, for sync, on every in-sync STANDBY) at this version.
    Committed {
        /// The replica's version after it.
        version: u64,
    },
    /// A section (or none).
    Value(Option<Section>),
    /// Sections, and where to continue (`None`: the end).
    Sections {
        /// The sections.
        sections: Vec<(Vec<u8>, Section)>,
        /// The key to continue from.
        next: Option<Vec<u8>>,
    },
    /// Done (flush, subscribe).
    Done {
        /// The replica's version.
        version: u64,
    },
    /// The replica's position.
    Position {
        /// Its version.
        version: u64,
        /// How far the stream is consumed.
        consumed: u64,
        /// Its digest.
        digest: Digest,
        /// Sections held.
        sections: u64,
        /// In-sync STANDBYs (on the ACTIVE) or whether this replica is verified (on a
        /// STANDBY: 1 or 0).
        in_sync: u64,
    },
    /// Refused; nothing was applied, except with [`RefusalCode::OutcomeUnknown`].
    Error {
        /// Why.
        code: RefusalCode,
        /// What to do about it.
        message: String,
    },
}

/// Why the data plane refused a unit's call. Stable: each has its own number on the SDK wire
/// (`sdk.proto`'s `RefusalCode`) and its own name ([`RefusalCode::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    /// The call was malformed or over a limit; nothing was applied.
    BadRequest,
    /// The unit is not (or no longer) the shard's ACTIVE; nothing was applied.
    NotActive,
    /// The call named an epoch the shard has left; nothing was applied.
    StaleEpoch,
    /// The shard's epoch changed while the call waited; nothing was applied.
    EpochChanged,
    /// The unit's lease lapsed; nothing was applied until it is renewed.
    NoLease,
    /// This node keeps no replica of the shard.
    NoReplica,
    /// The unit has not registered with its daemon.
    NotRegistered,
    /// A commit was applied locally, then the shard's ACTIVE changed before it was
    /// confirmed: it may or may not survive; the new ACTIVE's replica tells.
    OutcomeUnknown,
    /// A queued commit was refused because an earlier one of the same queue was: the queue
    /// must be flushed and started over before more commits are taken.
    QueueBroken,
    /// A code this build does not know (sent by a newer daemon).
    Unknown,
}

impl RefusalCode {
    /// Every code, in wire order.
    pub const ALL: [RefusalCode; 10] = [
        RefusalCode::BadRequest,
        RefusalCode::NotActive,
        RefusalCode::StaleEpoch,
        RefusalCode::EpochChanged,
        RefusalCode::NoLease,
        RefusalCode::NoReplica,
        RefusalCode::NotRegistered,
        RefusalCode::OutcomeUnknown,
        RefusalCode::QueueBroken,
        RefusalCode::Unknown,
    ];

    /// The code of a stable name ([`RefusalCode::name`]), if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.name() == name)
    }

    /// Its stable name, in `snake_case`.
    pub fn name(self) -> &'static str {
        match self {
            RefusalCode::BadRequest => "bad_request",
            RefusalCode::NotActive => "not_active",
            RefusalCode::StaleEpoch => "stale_epoch",
            RefusalCode::EpochChanged => "epoch_changed",
            RefusalCode::NoLease => "no_lease",
            RefusalCode::NoReplica => "no_replica",
            RefusalCode::NotRegistered => "not_registered",
            RefusalCode::OutcomeUnknown => "outcome_unknown",
            RefusalCode::QueueBroken => "queue_broken",
            RefusalCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the data plane sends a unit without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A stream message for the ACTIVE to process; consume it with a commit.
    Message {
        /// The shard.
        shard: ShardName,
        /// The epoch the unit holds ACTIVE at.
        epoch: u64,
        /// The message's stream position.
        seq: u64,
        /// The message.
        message: StreamMessage,
    },
    /// The replica changed (for a subscribed STANDBY).
    Changed {
        /// The shard.
        shard: ShardName,
        /// The replica's version.
        version: u64,
        /// What an op wrote (empty for a stream message or a transfer).
        writes: Vec<Write>,
        /// A state transfer replaced the replica: read it again.
        reset: bool,
    },
}

/// Progress of a state transfer, for status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransferStatus {
    /// Sections to copy.
    pub sections_total: u64,
    /// Sections copied.
    pub sections_sent: u64,
    /// Bytes to copy.
    pub bytes_total: u64,
    /// Bytes copied.
    pub bytes_sent: u64,
    /// Microseconds since it began.
    pub elapsed_us: u64,
}

/// A primary's view of one STANDBY's replica, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The shard.
    pub shard: ShardName,
    /// The STANDBY unit.
    pub standby: UnitName,
    /// The primary's epoch.
    pub epoch: u64,
    /// The primary's version.
    pub primary_version: u64,
    /// The STANDBY's acknowledged version.
    pub standby_version: u64,
    /// Verified in this session (digest matched).
    pub verified: bool,
    /// A state transfer running, if any.
    pub transfer: Option<TransferStatus>,
}
