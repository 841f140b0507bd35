//! The data plane's decisions, sans-IO: checkpoint replicas, signaling streams, their
//! replication from the ACTIVE's agent to the STANDBYs' agents, state transfer and digests.
//!
//! Every shard of a single-ACTIVE service has a *replica* on each node that runs one of its
//! units: the shard's checkpoint sections (key → value, each with a version and a priority) and
//! its signaling stream (inbound messages not yet consumed, and how far the ACTIVE consumed).
//! The replica changes only by *ops*, numbered by `seq` without gaps: the ACTIVE's atomic
//! commits and the stream messages its node accepted. The replica's `version` is the seq of the
//! last op it applied.
//!
//! The ACTIVE's agent is the *primary*: it applies ops first and streams them, tagged with
//! `(shard, epoch, seq)`, to every STANDBY's agent (a *secondary*), which applies them in
//! order and acknowledges. A secondary that is missing the history of the primary (new, stale,
//! or diverged after a failover) gets a *state transfer*: the primary sends every section in
//! descending priority while live ops keep flowing on the same ordered channel, and ends with
//! the digest of its replica at that point; the secondary compares with its own digest at the
//! same version. A match makes the secondary *verified*; the primary then asks the cluster
//! (through its agent's report and the director) to record the STANDBY as in sync, and from
//! then on waits for it before acknowledging a sync commit or delivering a stream message.
//!
//! The modules: [`digest`] (order-independent replica digest), [`replica`] (one replica and
//! its epoch history), [`protocol`] (the messages between agents and the requests of units),
//! [`plane`] (a node's whole data plane: every replica it keeps, primary and secondary
//! sessions, sync waits, stream delivery), split by responsibility into `plane::primary`
//! (commit intake, op log, wait sets), `plane::session` (a replication session to one
//! STANDBY), `plane::secondary` (following a primary), `plane::stream` (stream forwarding,
//! holding and delivery), `plane::claims` (in-sync claims) and `plane::view` (the committed
//! facts it acts on).

pub mod digest;
pub mod plane;
pub mod protocol;
pub mod replica;

pub use digest::Digest;
pub use plane::{
    Accepted, DataConfig, DataEvent, DataOutput, DataPlane, DataView, NotAccepted, PersistAction,
    ReplicaId, ReplicaStamp, ShardView,
};
pub use protocol::{
    DataMessage, DataReply, DataRequest, Delivery, Item, RefusalCode, ReplicaStatus, SessionStart,
    TransferStatus,
};
pub use replica::{ApplyError, EpochHistory, ReplicaSnapshot, Section, ShardReplica};

/// Longest section key, in bytes.
pub const KEY_LEN_MAX: usize = 1024;
/// Largest section value, in bytes.
pub const VALUE_LEN_MAX: usize = 1024 * 1024;
/// Most writes in one commit.
pub const COMMIT_WRITES_MAX: usize = 4096;
/// Largest commit (keys and values together), in bytes.
pub const COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest stream message payload, in bytes (a UDP datagram fits).
pub const MESSAGE_LEN_MAX: usize = 65_536;

/// One write of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The section.
    pub key: Vec<u8>,
    /// Its new value; `None` deletes the section. Shared, not copied, as the op travels.
    pub value: Option<bytes::Bytes>,
    /// An explicit state-transfer priority for the section (higher goes first); `None` keeps
    /// the section's current one.
    pub priority: Option<u32>,
}

/// Bytes of keys and values in `writes` (what the commit limits and the data plane's budgets
/// count).
pub fn writes_bytes(writes: &[Write]) -> usize {
    writes
        .iter()
        .map(|write| write.key.len() + write.value.as_ref().map_or(0, bytes::Bytes::len))
        .sum()
}

/// How a stream message reached the primary's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// Sent with the SDK's client API (or `tandemctl send`).
    Client = 0,
    /// A datagram on the shard's UDP ingress.
    Udp = 1,
    /// A frame on the shard's TCP ingress.
    Tcp = 2,
}

/// Where a stream message came from, so a reply can go back to its sender.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MessageOrigin {
    /// How it arrived.
    pub origin: Origin,
    /// The sender's address (`ip:port`), empty for a client message.
    pub peer: String,
}

/// An inbound message of a shard's signaling stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMessage {
    /// The bytes as received.
    pub payload: Vec<u8>,
    /// Who sent it.
    pub origin: MessageOrigin,
}

impl StreamMessage {
    /// Bytes it occupies (for windows and limits).
    pub fn size(&self) -> usize {
        self.payload.len() + self.origin.peer.len() + 8
    }
}

/// A commit's writes, shared by every clone of its op (its file write, the op log, each
/// STANDBY's item): cloning an op counts one reference instead of copying every key
/// (thousands per op under queued commits).
///
/// They also keep the op's encoded form once someone made it ([`Writes::encoded`]): the
/// primary encodes an op for its own file and for each STANDBY, and a STANDBY writes to its
/// file the bytes it received; one encoding serves them all. The core never reads it: it is
/// the daemon's wire format, opaque here.
#[derive(Clone, Default)]
pub struct Writes(std::sync::Arc<WritesInner>);

#[derive(Clone, Default)]
struct WritesInner {
    list: Vec<Write>,
    encoded: std::sync::OnceLock<EncodedOp>,
}

/// An op's encoded form, with what it was encoded with besides the writes (an op with the
/// same writes and other fields must not take it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedOp {
    /// The op's seq.
    pub seq: u64,
    /// The op's epoch.
    pub epoch: u64,
    /// The op's `consumed`.
    pub consumed: Option<u64>,
    /// The bytes.
    pub bytes: bytes::Bytes,
}

impl Writes {
    /// The writes, to change: copied first if another op shares them; the encoded form is
    /// dropped (it no longer matches).
    pub fn make_mut(&mut self) -> &mut Vec<Write> {
        let inner = std::sync::Arc::make_mut(&mut self.0);
        inner.encoded = std::sync::OnceLock::new();
        &mut inner.list
    }

    /// The op's encoded form, if one was kept.
    pub fn encoded(&self) -> Option<&EncodedOp> {
        self.0.encoded.get()
    }

    /// Keeps the op's encoded form (the first one kept stays).
    pub fn keep_encoded(&self, encoded: EncodedOp) {
        let _ = self.0.encoded.set(encoded);
    }
}

impl std::ops::Deref for Writes {
    type Target = [Write];

    fn deref(&self) -> &[Write] {
        &self.0.list
    }
}

impl From<Vec<Write>> for Writes {
    fn from(list: Vec<Write>) -> Self {
        Self(std::sync::Arc::new(WritesInner {
            list,
            encoded: std::sync::OnceLock::new(),
        }))
    }
}

impl PartialEq for Writes {
    fn eq(&self, other: &Self) -> bool {
        self.0.list == other.0.list
    }
}

impl Eq for Writes {}

impl std::fmt::Debug for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.list.fmt(f)
    }
}

/// What an op does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// The ACTIVE's atomic commit: its writes, and (optionally) the stream position it consumed
    /// up to, together.
    Commit {
        /// Writes, applied in order. Shared by every clone of the op (see [`Writes`]).
        writes: Writes,
        /// Every stream message at or below this seq is consumed.
        consumed: Option<u64>,
    },
    /// A stream message accepted by the primary's node.
    Message(StreamMessage),
}

/// One change of a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Its number: the replica's version after applying it.
    pub seq: u64,
    /// The shard epoch of the primary that created it.
    pub epoch: u64,
    /// What it does.
    pub kind: OpKind,
}

impl Op {
    /// Bytes it occupies (for windows and limits).
    pub fn size(&self) -> usize {
        24 + match &self.kind {
            OpKind::Commit { writes, .. } => writes_bytes(writes) + 16 * writes.len(),
            OpKind::Message(message) => message.size(),
        }
    }
}

/// Checks a commit's writes against the limits; the error says which one is broken.
pub fn check_writes(writes: &[Write]) -> Result<(), String> {
    if writes.len() > COMMIT_WRITES_MAX {
        return Err(format!(
            "{} writes in one commit; at most {COMMIT_WRITES_MAX}",
            writes.len()
        ));
    }
    let mut total = 0usize;
    for write in writes {
        if write.key.is_empty() {
            return Err("a section key is empty".into());
        }
        if write.key.len() > KEY_LEN_MAX {
            return Err(format!(
                "section key of {} bytes; at most {KEY_LEN_MAX}",
                write.key.len()
            ));
        }
        let value_len = write.value.as_ref().map_or(0, bytes::Bytes::len);
        if value_len > VALUE_LEN_MAX {
            return Err(format!(
                "section value of {value_len} bytes; at most {VALUE_LEN_MAX}"
            ));
        }
        total += write.key.len() + value_len;
    }
    if total > COMMIT_BYTES_MAX {
        return Err(format!(
            "commit of {total} bytes; at most {COMMIT_BYTES_MAX}"
        ));
    }
    Ok(())
}

/// Checks a stream message against the limits.
pub fn check_message(message: &StreamMessage) -> Result<(), String> {
    if message.payload.len() > MESSAGE_LEN_MAX {
        return Err(format!(
            "message of {} bytes; at most {MESSAGE_LEN_MAX}",
            message.payload.len()
        ));
    }
    if message.origin.peer.len() > 256 {
        return Err("message origin address longer than 256 bytes".into());
    }
    Ok(())
}
