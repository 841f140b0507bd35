//! A node's data plane: every replica the node keeps, the replication sessions between them,
//! sync waits and stream delivery. Sans-IO: inputs with `now`, outputs drained with
//! [`DataPlane::take_output`].
//!
//! Rules:
//! - A replica exists for every (shard, unit) where the unit is placed on this node and the
//!   shard belongs to its service (single-ACTIVE models only).
//! - The replica of the shard's primary unit (ACTIVE, QUIESCING, or the QUIESCED old ACTIVE of
//!   a handover) is the primary; the replicas of its STANDBYs follow it. Only a primary at the
//!   committed epoch, whose unit holds ACTIVE or QUIESCING, while this node holds a lease,
//!   takes commits from its registered unit.
//! - The *wait set* of a primary is its verified sessions, the STANDBYs the cluster committed
//!   as in sync, and the STANDBYs a claim of this primary included that the cluster may still
//!   apply (the claim's sequence number is above the view's `in_sync_claim`). A sync commit is
//!   answered, and a stream message delivered to the ACTIVE, only once every member of the
//!   wait set applied it, and only while the node holds a lease (without one, its view of the
//!   in-sync set may be stale). A member leaves the wait set only when the cluster committed
//!   it out of sync by a claim at least as new as the last one that included it (the cluster
//!   never applies an older claim after a newer one), so a STANDBY the director may promote
//!   as "in sync" always holds every acknowledged sync write.
//! - A secondary empties its replica for a full transfer only while the cluster does not count
//!   it as in sync and it is not verified in its current session (its primary may have claimed
//!   it, and the commit of that claim may not have reached this node's view yet); a complete
//!   replica at the transfer's starting position is kept rather than emptied.
//! - A promoted replica is taken as the shard's truth only if it can be what the cluster judged
//!   it to be. When the cluster continues the shard from the new primary's memory (it was
//!   promoted from in sync: no possible loss reported) and this run never saw the replica
//!   verified by its primary, or serving as the primary, since it was read back from disk,
//!   created or emptied (a full transfer, a reinitialisation, a failed digest check), the
//!   in-sync record rests on contents the replica may no longer have (its node crashed after
//!   acknowledging, before its disk had them): the primary stays passive (no commits, no
//!   messages, no sessions, no claims) until the cluster gives the shard a new epoch, as one
//!   inherited from before a restart does. The agent's restart report takes the role away,
//!   and the next promotion is judged without this replica.
//! - A primary's session with a STANDBY lasts while the view shows the same unit on the same
//!   node as the same instance (generation): a new instance means the cluster handled a fault
//!   of the unit and took its role, even when no view in between showed that (its daemon may
//!   have restarted without the replica the session verified), so it is claimed in sync only
//!   after a new session verified it.
//! - A Follow may arrive late or twice: when the position it gives allows no delta and the
//!   STANDBY's session here is in step, the new session is a delta from what that session
//!   acknowledged, not a full transfer.
//! - A secondary applies items of its current session strictly in order; a gap is answered
//!   with a `Nack`, an unknown session or an older epoch is ignored.
//! - A primary sends `Stale` to a STANDBY of its view that has no session with it and does not
//!   follow (it may keep a session the primary dropped); the STANDBY then follows again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::ids::{NodeId, ShardName, UnitName};
use crate::time::Time;

use super::protocol::{
    DataMessage, DataReply, DataRequest, Delivery, Item, RefusalCode, ReplicaStatus, SessionStart,
    TransferStatus,
};
use super::replica::{ReplicaSnapshot, Section, ShardReplica};
use super::{check_message, check_writes, Op, OpKind, StreamMessage};

/// Times a stream message may be forwarded between nodes before it is dropped (a bound on
/// loops while the nodes' views of the primary disagree).
const FORWARD_HOPS_MAX: u32 = 4;

mod view;

pub use view::{DataView, ShardView};

/// Identity of a replica: a shard as seen by one unit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId {
    /// The shard.
    pub shard: ShardName,
    /// The unit.
    pub unit: UnitName,
}

/// Tuning of the data plane.
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// Bytes a session may have sent and not had acknowledged.
    pub window_bytes: usize,
    /// Bytes of items per `Items` message.
    pub batch_bytes: usize,
    /// Bytes of sections per transfer item.
    pub chunk_bytes: usize,
    /// Bytes of recent ops each replica keeps to catch a secondary up with a delta.
    pub retain_bytes: usize,
    /// Unacknowledged items are sent again after this long without progress.
    pub resend_after: Duration,
    /// A secondary without a session repeats its `Follow` this often.
    pub follow_retry: Duration,
    /// A member of the wait set that holds back a commit this long stops counting as
    /// verified (the primary asks the cluster to take it out of sync).
    pub sync_timeout: Duration,
    /// Stream messages delivered to the ACTIVE and not yet consumed, at most.
    pub delivery_window: usize,
    /// Stream messages held while a shard has no primary able to take them, per shard.
    pub held_max: usize,
    /// Bytes of items the sessions send in one [`DataPlane::take_output`]: the owner's pass
    /// over the plane stays short (the rest goes out after the next [`DataPlane::begin_step`],
    /// see [`DataPlane::has_pending_work`]), so a window opening wide never holds up the
    /// owner's heartbeats.
    pub pump_bytes_per_step: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            window_bytes: 8 * 1024 * 1024,
            batch_bytes: 512 * 1024,
            chunk_bytes: 1024 * 1024,
            retain_bytes: 16 * 1024 * 1024,
            resend_after: Duration::from_millis(200),
            follow_retry: Duration::from_millis(100),
            sync_timeout: Duration::from_millis(1000),
            delivery_window: 1024,
            held_max: 4096,
            pump_bytes_per_step: 1024 * 1024,
        }
    }
}

/// What the daemon (or the simulation) writes to a replica's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistAction {
    /// The replica was emptied for a full transfer starting at this snapshot; it is incomplete
    /// until `Complete`.
    Reset(ReplicaSnapshot),
    /// An op was applied.
    Op(Op),
    /// Sections copied by a transfer.
    Sections(Vec<(Vec<u8>, Section)>),
    /// Stream messages copied by a transfer.
    Messages(Vec<(u64, StreamMessage)>),
    /// The transfer ended verified (or a promoted primary took the replica as it is).
    Complete,
    /// The replica failed a digest check: it is no longer a trusted prefix of the primary's
    /// (promoting it reports a possible loss) until a transfer verifies it again.
    Incomplete,
    /// The replica is no longer kept here: delete its file.
    Remove,
    /// Rewrite the file's stamp: the records written so far make this replica. The plane
    /// emits one for each replica it wrote to in an output, after that replica's records.
    Stamp(ReplicaStamp),
}

/// What a replica file's stamp says of the replica its records make (the file's length, the
/// writer's to add).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStamp {
    /// The replica's epoch.
    pub epoch: u64,
    /// Its version.
    pub version: u64,
    /// Its digest.
    pub digest: u128,
}

impl ReplicaStamp {
    /// The stamp of `replica` as it is.
    pub fn of(replica: &ShardReplica) -> Self {
        Self {
            epoch: replica.epoch(),
            version: replica.version(),
            digest: replica.digest().0,
        }
    }
}

/// Something worth an event log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataEvent {
    /// A session started.
    SessionStarted {
        /// The replica of the STANDBY.
        standby: ReplicaId,
        /// The primary's epoch.
        epoch: u64,
        /// Full transfer (else delta).
        full: bool,
        /// Sections to copy (full) or ops to send (delta).
        count: u64,
        /// Bytes to copy (full).
        bytes: u64,
    },
    /// A STANDBY's replica matched the primary's digest.
    Verified {
        /// The replica of the STANDBY.
        standby: ReplicaId,
        /// The primary's epoch.
        epoch: u64,
        /// The version verified.
        version: u64,
    },
    /// A STANDBY's replica did not match: it asks for a full transfer.
    DigestMismatch {
        /// The replica of the STANDBY.
        standby: ReplicaId,
        /// The version compared.
        version: u64,
    },
    /// A STANDBY held a commit back too long and no longer counts as verified.
    Lagging {
        /// The replica of the STANDBY.
        standby: ReplicaId,
        /// How far behind it is, in ops.
        behind: u64,
    },
    /// A secondary could not apply an item of its session: it asks for a full transfer.
    ItemRefused {
        /// The replica of the STANDBY.
        standby: ReplicaId,
        /// Why.
        reason: String,
    },
    /// Stream messages were dropped (no primary took them in time).
    Dropped {
        /// The shard.
        shard: ShardName,
        /// How many.
        count: u64,
        /// Why.
        reason: &'static str,
    },
}

/// Everything one round of inputs produced.
#[derive(Debug, Default)]
pub struct DataOutput {
    /// Messages to other nodes' data planes.
    pub messages: Vec<(NodeId, DataMessage)>,
    /// Answers to units: (unit, generation, request id, answer).
    pub replies: Vec<(UnitName, u64, u64, DataReply)>,
    /// Deliveries to units: (unit, generation, delivery).
    pub deliveries: Vec<(UnitName, u64, Delivery)>,
    /// File writes, in order per replica.
    pub persist: Vec<(ReplicaId, PersistAction)>,
    /// Events.
    pub events: Vec<DataEvent>,
}

impl DataOutput {
    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.replies.is_empty()
            && self.deliveries.is_empty()
            && self.persist.is_empty()
            && self.events.is_empty()
    }
}

/// What became of an inbound stream message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Appended to the primary's stream at this seq.
    Appended(u64),
    /// Sent on to the primary's node.
    Forwarded(NodeId),
    /// Held until the shard has a primary that takes messages.
    Held,
}

/// The most recent ops of a replica, for deltas.
#[derive(Debug, Clone, Default)]
struct OpLog {
    ops: VecDeque<Op>,
    /// For each op held, the bytes (as [`Op::size`] counts them) pushed before it, counted
    /// since the log was made.
    starts: VecDeque<u64>,
    /// Bytes pushed since the log was made (an op that grows by a merged commit counts its
    /// growth here too).
    total: u64,
}

impl OpLog {
    fn push(&mut self, op: Op, retain_bytes: usize) {
        if let Some(last) = self.ops.back() {
            if last.seq + 1 != op.seq {
                self.clear();
            }
        }
        self.starts.push_back(self.total);
        self.total += op.size() as u64;
        self.ops.push_back(op);
        while self.bytes() > retain_bytes && self.ops.len() > 1 {
            self.ops.pop_front();
            self.starts.pop_front();
        }
    }

    /// Bytes of the ops held.
    fn bytes(&self) -> usize {
        self.starts
            .front()
            .map_or(0, |first| (self.total - first) as usize)
    }

    /// The last op grew by `bytes` (a commit merged into it).
    fn grew(&mut self, bytes: usize) {
        self.total += bytes as u64;
    }

    fn clear(&mut self) {
        self.ops.clear();
        self.starts.clear();
    }

    /// Bytes of the ops after `after` up to and including `upto`; `None` when some of them
    /// are no longer held (whoever has only `after` is further behind than the log reaches).
    fn bytes_between(&self, after: u64, upto: u64) -> Option<u64> {
        if after >= upto {
            return Some(0);
        }
        let first = self.ops.front()?.seq;
        let last = self.ops.back()?.seq;
        if after + 1 < first || upto > last {
            return None;
        }
        let start = self.starts[(after + 1 - first) as usize];
        let end = if upto == last {
            self.total
        } else {
            self.starts[(upto + 1 - first) as usize]
        };
        Some(end - start)
    }

    /// The op `seq`, if retained.
    fn get(&self, seq: u64) -> Option<&Op> {
        let first = self.ops.front()?.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.ops.get(index)
    }
}

/// A sync commit, flush or lag-bound async commit waiting.
#[derive(Debug, Clone)]
struct Waiter {
    unit: UnitName,
    generation: u64,
    request: u64,
    seq: u64,
    /// What to answer: a commit or a flush.
    flush: bool,
}

/// A state transfer in progress on a session.
#[derive(Debug, Clone)]
struct Transfer {
    /// Keys in transfer order, as they were when it began.
    order: Vec<Vec<u8>>,
    /// Next key to copy.
    position: usize,
    /// The pending messages were copied.
    messages_done: bool,
    /// Progress.
    status: TransferStatus,
    /// When it began.
    started: Time,
}

/// The primary's side of a session with one STANDBY.
#[derive(Debug, Clone)]
struct Session {
    node: NodeId,
    /// The STANDBY's instance (generation) in the view when the session began.
    generation: u64,
    id: u64,
    /// Number of the next item.
    next_n: u64,
    /// Last item acknowledged.
    acked_n: u64,
    /// The STANDBY's version as acknowledged.
    acked_version: u64,
    /// Items sent, not acknowledged.
    inflight: VecDeque<(u64, Item)>,
    inflight_bytes: usize,
    /// Next op to send.
    next_op: u64,
    transfer: Option<Transfer>,
    verify_sent: bool,
    /// The STANDBY's digest matched in this session (it stays in step since: items apply in
    /// order or the session ends).
    verified: bool,
    /// The STANDBY held commits back longer than the sync timeout: it is left out of the claim
    /// (and, once the cluster took it out of sync, of the wait set) until it catches up.
    lagging: bool,
    /// Last time the STANDBY made progress (or items were re-sent).
    last_progress: Time,
}

impl Session {
    /// Whether the primary counts this STANDBY as in sync.
    fn in_step(&self) -> bool {
        self.verified && !self.lagging
    }
}

/// A primary replica's state.
#[derive(Debug, Clone)]
struct Primary {
    epoch: u64,
    /// It stays passive (no commits, no messages, no sessions, no claims) until the cluster
    /// gives the shard a new epoch, because its replica cannot be what the cluster takes it
    /// for: the node restarted while this replica was the primary (its file may miss what the
    /// previous run acknowledged without waiting for the disk, and the ops it would create
    /// could collide with that run's at the same epoch), or the cluster continues the shard
    /// from this replica's memory ([`ShardView::continued_in_memory`]) while the replica is
    /// [`Slot::suspect`] (read back after a restart, or emptied, since the in-sync record that
    /// promotion rests on was made). Serving it would lose acknowledged writes with no
    /// possible loss reported; passive, it waits for the cluster to take the role away (the
    /// agent reports its restart; the next promotion is judged without it).
    passive: bool,
    sessions: BTreeMap<UnitName, Session>,
    waiters: VecDeque<Waiter>,
    lag_waiters: VecDeque<Waiter>,
    /// (instance, seq) of the last message delivered to the unit.
    delivered: Option<(u64, u64)>,
    /// Since when a member of the wait set holds back the oldest waiter.
    held_back_since: Option<Time>,
    /// The last batch of queued commits applied: (unit instance, chain, index).
    queued_chain: Option<(u64, u64, u64)>,
    /// The highest version whose effect left this primary: a sync commit (or flush)
    /// answered, or a stream message delivered. A STANDBY is claimed in sync only once it
    /// has acknowledged this far, so that a promotion the cluster deems lossless is.
    exposed: u64,
    /// STANDBYs of the view without a session here, and since when (or when they were last
    /// told so): one that does not follow within `resend_after` may believe it still has a
    /// session that this primary dropped, and is sent a `Stale`.
    orphans: BTreeMap<UnitName, Time>,
}

/// A secondary replica's state.
#[derive(Debug, Clone)]
struct Secondary {
    epoch: u64,
    primary: UnitName,
    node: NodeId,
    session: Option<(u64, u64)>,
    /// The current session is verified.
    verified: bool,
    follow_sent: Option<Time>,
    /// Ask for a full transfer.
    want_full: bool,
}

#[derive(Debug, Clone)]
enum SlotRole {
    Idle,
    Primary(Primary),
    Secondary(Secondary),
}

#[derive(Debug, Clone)]
struct Slot {
    replica: ShardReplica,
    oplog: OpLog,
    /// False while a transfer fills the replica (it is not a consistent state then).
    complete: bool,
    role: SlotRole,
    /// The instance subscribed to change notifications.
    subscriber: Option<u64>,
    /// The version known to be on the local disk.
    durable: u64,
    /// Read back from disk when the node started.
    loaded: bool,
    /// This run has not seen the replica verified by its primary, nor served it as the
    /// shard's primary, since the replica was created, read back from disk or emptied (a full
    /// transfer, a reinitialisation, a failed digest check). An in-sync record of the cluster
    /// may still vouch for what the replica held before (in the previous run's memory, or
    /// before it was emptied): a promotion resting on it must not take this replica as the
    /// truth.
    suspect: bool,
}

impl Slot {
    fn new(replica: ShardReplica, complete: bool) -> Self {
        Self {
            durable: replica.version(),
            loaded: false,
            suspect: true,
            replica,
            oplog: OpLog::default(),
            complete,
            role: SlotRole::Idle,
            subscriber: None,
        }
    }
}

/// The in-sync claims a primary of one shard made at one epoch (kept by the plane, not the
/// primary, so that they outlive a primary replaced at the same epoch).
#[derive(Debug, Clone, Default)]
struct ClaimLog {
    epoch: u64,
    /// The sequence number of the last claim; it grows whenever the claimed units change.
    seq: u64,
    /// The units of the last claim (`None`: no claim yet at this sequence number).
    units: Option<BTreeSet<UnitName>>,
    /// Each STANDBY ever claimed at this epoch, and the last claim that included it. While the
    /// view's `in_sync_claim` is below it, that claim may still be applied (recording the
    /// STANDBY in sync), so the STANDBY stays in the wait set.
    last_claimed: BTreeMap<UnitName, u64>,
}

impl ClaimLog {
    /// STANDBYs a claim of the primary at `view`'s epoch included that the cluster may still
    /// record in sync.
    fn pending<'a>(
        log: Option<&'a Self>,
        view: &'a ShardView,
    ) -> impl Iterator<Item = &'a UnitName> + 'a {
        log.filter(|log| log.epoch == view.epoch)
            .into_iter()
            .flat_map(|log| log.last_claimed.iter())
            .filter(|(_, claim)| **claim > view.in_sync_claim)
            .map(|(unit, _)| unit)
    }
}

/// A node's data plane.
#[derive(Debug)]
pub struct DataPlane {
    node: NodeId,
    config: DataConfig,
    view: DataView,
    lease_until: Option<Time>,
    slots: BTreeMap<ReplicaId, Slot>,
    /// Registered unit instances on this node.
    units: BTreeMap<UnitName, u64>,
    /// Stream messages waiting for a primary, by shard.
    held: BTreeMap<ShardName, VecDeque<(StreamMessage, u32)>>,
    next_session: u64,
    /// Bytes the sessions may still send in this step (see [`DataConfig::pump_bytes_per_step`]).
    pump_budget: usize,
    /// Replicas whose sessions stopped on the budget, processed again in the next step.
    pump_deferred: BTreeSet<ReplicaId>,
    /// Each shard's epoch in the first view after the node started (what it may have known
    /// before a restart).
    epochs_at_start: Option<BTreeMap<ShardName, u64>>,
    /// Id of the next stream message forwarded from here.
    next_forward: u64,
    /// Forwards taken recently, per sending node (the newest `FORWARDS_REMEMBERED`).
    forwards_seen: BTreeMap<NodeId, (BTreeSet<u64>, VecDeque<u64>)>,
    /// Replicas touched since the last output.
    dirty: BTreeSet<ReplicaId>,
    /// The in-sync claims of this node's primaries, by shard (the current epoch's).
    claim_logs: BTreeMap<ShardName, ClaimLog>,
    /// Each primary's claim as last refreshed (see [`DataPlane::take_claims_change`]).
    claim_cache: BTreeMap<ReplicaId, crate::report::InSyncClaim>,
    /// Whether `claim_cache` changed since the claims were last taken.
    claims_changed: bool,
    /// The primaries here whose commits may wait for the local disk, as last refreshed.
    awaiting_disk: BTreeSet<ReplicaId>,
    out: DataOutput,
}

/// Forwarded messages remembered per sending node, to drop copies.
const FORWARDS_REMEMBERED: usize = 4096;

/// The smallest acknowledged version over a primary's wait set; with an empty wait set, what
/// is durable on the local disk (nothing else holds the writes then). Besides the sessions in
/// step and the STANDBYs the view has in sync, the wait set holds the STANDBYs a claim of this
/// primary included while the cluster may still apply that claim (`claims`): a STANDBY that
/// left the verified set after it was claimed must not miss writes acknowledged before that
/// claim is recorded, or a STANDBY recorded in sync could lack them.
fn safe_version(
    primary: &Primary,
    view: &ShardView,
    claims: Option<&ClaimLog>,
    version: u64,
    durable: u64,
) -> u64 {
    let claimed: BTreeSet<&UnitName> = ClaimLog::pending(claims, view).collect();
    let member = |unit: &UnitName| view.in_sync.contains(unit) || claimed.contains(unit);
    if !has_wait_set(primary, view, claims) {
        return version.min(durable);
    }
    let mut safe = version;
    for (unit, session) in &primary.sessions {
        if session.in_step() || member(unit) {
            safe = safe.min(session.acked_version);
        }
    }
    for unit in view.in_sync.iter().chain(claimed.iter().copied()) {
        if !primary.sessions.contains_key(unit) {
            safe = 0;
        }
    }
    safe
}

/// A replica's claim is the one cached (see `DataPlane::compute_claim`).
struct Unchanged;

/// Whether a primary's wait set (see [`safe_version`]) has anyone in it: a session in step, a
/// STANDBY the view has in sync, or one a pending claim included. With nobody, its commits
/// wait for the local disk instead.
fn has_wait_set(primary: &Primary, view: &ShardView, claims: Option<&ClaimLog>) -> bool {
    !view.in_sync.is_empty()
        || ClaimLog::pending(claims, view).next().is_some()
        || primary.sessions.values().any(|session| session.in_step())
}

/// Most writes a commit merged from several (see [`extend_open_commit`]) may hold.
const MERGED_WRITES_MAX: usize = 256;
/// Most bytes (keys and values) a commit merged from several may hold.
const MERGED_BYTES_MAX: usize = 1024 * 1024;

/// Merges a commit into the replica's last op when that op is a commit of this primary
/// (`epoch`) that has not left yet: created since the plane's output was last taken, so no
/// session has sent it and its file write is still queued in `persist`. Commits that arrive
/// together (a unit with many in flight) then cost one op: one file record, one item per
/// STANDBY, one acknowledgement. Applying the merged op is applying its commits in order, so
/// every replica ends the same; each commit is answered with the merged op's version.
/// Returns that version, or `None` when the commit needs an op of its own (nothing changed).
fn extend_open_commit(
    replica: &mut ShardReplica,
    oplog: &mut OpLog,
    persist: &mut [(ReplicaId, PersistAction)],
    id: &ReplicaId,
    epoch: u64,
    writes: &[super::Write],
    consumed: Option<u64>,
) -> Result<Option<u64>, super::replica::ApplyError> {
    let seq = replica.version();
    /// The writes and consumed position of `op` if it is a commit at `seq` and `epoch`.
    fn open_commit(
        op: &mut Op,
        seq: u64,
        epoch: u64,
    ) -> Option<(&mut super::Writes, &mut Option<u64>)> {
        match &mut op.kind {
            OpKind::Commit { writes, consumed } if op.seq == seq && op.epoch == epoch => {
                Some((writes, consumed))
            }
            _ => None,
        }
    }
    let Some((held, held_consumed)) = oplog
        .ops
        .back_mut()
        .and_then(|last| open_commit(last, seq, epoch))
    else {
        return Ok(None);
    };
    if held.len() + writes.len() > MERGED_WRITES_MAX
        || super::writes_bytes(held) + super::writes_bytes(writes) > MERGED_BYTES_MAX
    {
        return Ok(None);
    }
    // Its file write is this replica's last queued action: nothing was written after it.
    let queued = match persist.iter_mut().rev().find(|(queued, _)| queued == id) {
        Some((_, PersistAction::Op(queued))) => open_commit(queued, seq, epoch),
        _ => None,
    };
    let Some((queued_writes, queued_consumed)) = queued else {
        return Ok(None);
    };
    replica.extend_last_commit(epoch, writes, consumed)?;
    // The queued file write shares the op log's writes: it lets go of them, so that they are
    // the op log's alone and grow in place, then shares them again (nothing else holds an op
    // that has not left; if something did, `make_mut` would copy, still correct).
    *queued_writes = super::Writes::default();
    held.make_mut().extend_from_slice(writes);
    *queued_writes = held.clone();
    *held_consumed = (*held_consumed).max(consumed);
    *queued_consumed = (*queued_consumed).max(consumed);
    oplog.grew(super::writes_bytes(writes) + 16 * writes.len());
    Ok(Some(seq))
}

fn error(code: RefusalCode, message: impl Into<String>) -> DataReply {
    DataReply::Error {
        code,
        message: message.into(),
    }
}

/// A new session with a STANDBY on `node`: a delta from `delta` when given, else a full
/// transfer of `replica` as it is now.
fn open_session(
    now: Time,
    id: u64,
    (node, generation): (NodeId, u64),
    replica: &ShardReplica,
    delta: Option<u64>,
) -> Session {
    let version = replica.version();
    let transfer = match delta {
        Some(_) => None,
        None => {
            let order = replica.transfer_order();
            Some(Transfer {
                status: TransferStatus {
                    sections_total: order.len() as u64,
                    bytes_total: replica.section_bytes(),
                    ..TransferStatus::default()
                },
                order,
                position: 0,
                messages_done: false,
                started: now,
            })
        }
    };
    Session {
        node,
        generation,
        id,
        next_n: 1,
        acked_n: 0,
        acked_version: delta.unwrap_or(0),
        inflight: VecDeque::new(),
        inflight_bytes: 0,
        next_op: delta.map_or(version + 1, |from| from + 1),
        transfer,
        verify_sent: false,
        verified: false,
        lagging: false,
        last_progress: now,
    }
}

/// Sends a session's `Start` and records the event.
fn announce(
    out: &mut DataOutput,
    primary: &ReplicaId,
    standby: &ReplicaId,
    epoch: u64,
    session: &Session,
    replica: &ShardReplica,
    have_version: u64,
) {
    let start = match &session.transfer {
        None => SessionStart::Delta {
            from: session.next_op - 1,
        },
        Some(transfer) => SessionStart::Full {
            snapshot: replica.snapshot(),
            sections: transfer.status.sections_total,
            bytes: transfer.status.bytes_total,
        },
    };
    out.events.push(DataEvent::SessionStarted {
        standby: standby.clone(),
        epoch,
        full: session.transfer.is_some(),
        count: match &session.transfer {
            Some(transfer) => transfer.status.sections_total,
            None => replica.version().saturating_sub(have_version),
        },
        bytes: session
            .transfer
            .as_ref()
            .map_or(0, |transfer| transfer.status.bytes_total),
    });
    out.messages.push((
        session.node,
        DataMessage::Start {
            shard: primary.shard.clone(),
            epoch,
            standby: standby.unit.clone(),
            session: session.id,
            start,
        },
    ));
}

impl DataPlane {
    /// The data plane of node `node`. `incarnation` must differ between runs of the same
    /// node (session ids are drawn from it).
    pub fn new(node: NodeId, config: DataConfig, incarnation: u64) -> Self {
        Self {
            node,
            config,
            view: DataView::default(),
            lease_until: None,
            slots: BTreeMap::new(),
            units: BTreeMap::new(),
            held: BTreeMap::new(),
            next_session: incarnation << 24,
            pump_budget: 0,
            pump_deferred: BTreeSet::new(),
            next_forward: incarnation << 32,
            epochs_at_start: None,
            forwards_seen: BTreeMap::new(),
            dirty: BTreeSet::new(),
            claim_logs: BTreeMap::new(),
            claim_cache: BTreeMap::new(),
            claims_changed: true,
            awaiting_disk: BTreeSet::new(),
            out: DataOutput::default(),
        }
    }

    /// Adds a replica read back from disk (before the first view). `complete` is false when a
    /// transfer into it never finished.
    pub fn load(&mut self, id: ReplicaId, replica: ShardReplica, complete: bool) {
        let mut slot = Slot::new(replica, complete);
        slot.loaded = true;
        self.slots.insert(id, slot);
    }

    /// The replica of `id`, if kept.
    pub fn replica(&self, id: &ReplicaId) -> Option<&ShardReplica> {
        self.slots.get(id).map(|slot| &slot.replica)
    }

    /// Whether the replica of `id` is complete (not in the middle of a transfer).
    pub fn is_complete(&self, id: &ReplicaId) -> bool {
        self.slots.get(id).is_some_and(|slot| slot.complete)
    }

    /// Every replica kept.
    pub fn replicas(&self) -> impl Iterator<Item = (&ReplicaId, &ShardReplica)> + '_ {
        self.slots.iter().map(|(id, slot)| (id, &slot.replica))
    }

    /// A one-line account of replica `id`'s role state, for failure reports.
    pub fn describe(&self, id: &ReplicaId) -> String {
        let Some(slot) = self.slots.get(id) else {
            return "no replica".into();
        };
        match &slot.role {
            SlotRole::Idle => format!("idle, durable {}", slot.durable),
            SlotRole::Primary(primary) => format!(
                "primary epoch {} passive {} delivered {:?} waiters {} lag-waiters {} \
                 sessions {:?} durable {}",
                primary.epoch,
                primary.passive,
                primary.delivered,
                primary.waiters.len(),
                primary.lag_waiters.len(),
                primary
                    .sessions
                    .iter()
                    .map(|(unit, session)| (unit.as_str(), session.acked_version, session.verified))
                    .collect::<Vec<_>>(),
                slot.durable
            ),
            SlotRole::Secondary(secondary) => format!(
                "secondary of {} on node {} epoch {} session {:?} verified {}",
                secondary.primary,
                secondary.node,
                secondary.epoch,
                secondary.session,
                secondary.verified
            ),
        }
    }

    /// The view last set.
    pub fn view(&self) -> &DataView {
        &self.view
    }

    /// Whether `id` is a secondary whose current session was verified.
    pub fn is_verified(&self, id: &ReplicaId) -> bool {
        matches!(
            self.slots.get(id).map(|slot| &slot.role),
            Some(SlotRole::Secondary(Secondary { verified: true, .. }))
        )
    }

    /// Shards whose primary replica is here and whose unit holds ACTIVE: this node takes
    /// their ingress.
    pub fn active_shards(&self) -> BTreeSet<ShardName> {
        self.view
            .shards
            .iter()
            .filter(|(_, view)| {
                view.active
                    && view
                        .primary
                        .as_ref()
                        .is_some_and(|(_, node)| *node == self.node)
            })
            .map(|(shard, _)| shard.clone())
            .collect()
    }

    /// The ACTIVE unit of `shard` if it is on this node (for replies through the ingress).
    pub fn local_active(&self, shard: &ShardName) -> Option<&UnitName> {
        let view = self.view.shards.get(shard)?;
        match &view.primary {
            Some((unit, node)) if *node == self.node && view.acting => Some(unit),
            _ => None,
        }
    }

    /// What each primary here asks the cluster to record as in sync: the STANDBYs verified in
    /// their current session, at the epoch and shard version of the view, with the claim's
    /// sequence number (a new one whenever the units change). The primary keeps every STANDBY
    /// claimed here in its wait set until the view shows a claim at least as new applied.
    pub fn claims(&mut self) -> BTreeMap<ShardName, crate::report::InSyncClaim> {
        self.refresh_pending_claims();
        self.claims_changed = false;
        self.claims_by_shard()
    }

    /// [`DataPlane::claims`], but only when they changed since the last call of either (a new
    /// plane: at its first call). The owner's every pass asks; a pass refreshes only the
    /// replicas its inputs touched, so that a commit costs the same whatever the number of
    /// shards here.
    pub fn take_claims_change(
        &mut self,
    ) -> Option<BTreeMap<ShardName, crate::report::InSyncClaim>> {
        self.refresh_pending_claims();
        std::mem::take(&mut self.claims_changed).then(|| self.claims_by_shard())
    }

    fn claims_by_shard(&self) -> BTreeMap<ShardName, crate::report::InSyncClaim> {
        self.claim_cache
            .iter()
            .map(|(id, claim)| (id.shard.clone(), claim.clone()))
            .collect()
    }

    /// Refreshes the claims of replicas touched but not yet processed by
    /// [`DataPlane::take_output`] (which refreshes the ones it processes).
    fn refresh_pending_claims(&mut self) {
        let pending = std::mem::take(&mut self.dirty);
        for id in &pending {
            self.refresh_claim(id);
        }
        self.dirty = pending;
    }

    /// Brings replica `id`'s cached claim and its place in `awaiting_disk` up to date.
    fn refresh_claim(&mut self, id: &ReplicaId) {
        match self.compute_claim(id) {
            Err(Unchanged) => {}
            Ok(Some(claim)) => {
                if self.claim_cache.get(id) != Some(&claim) {
                    self.claim_cache.insert(id.clone(), claim);
                    self.claims_changed = true;
                }
            }
            Ok(None) => {
                if self.claim_cache.remove(id).is_some() {
                    self.claims_changed = true;
                }
            }
        }
        if self.awaits_disk_now(id) {
            if !self.awaiting_disk.contains(id) {
                self.awaiting_disk.insert(id.clone());
            }
        } else {
            self.awaiting_disk.remove(id);
        }
    }

    /// The claim of replica `id` if it is a primary here at the view's epoch (`Err` when it is
    /// the cached one); a change of its verified STANDBYs takes the next sequence number.
    fn compute_claim(
        &mut self,
        id: &ReplicaId,
    ) -> Result<Option<crate::report::InSyncClaim>, Unchanged> {
        let Some(slot) = self.slots.get(id) else {
            return Ok(None);
        };
        let SlotRole::Primary(primary) = &slot.role else {
            return Ok(None);
        };
        let Some(view) = self.view.shards.get(&id.shard) else {
            return Ok(None);
        };
        if view.epoch != primary.epoch || primary.passive {
            return Ok(None);
        }
        let verified = || {
            primary
                .sessions
                .iter()
                .filter(|(_, session)| {
                    session.in_step() && session.acked_version >= primary.exposed
                })
                .map(|(unit, _)| unit)
        };
        if !self.claim_logs.contains_key(&id.shard) {
            self.claim_logs
                .insert(id.shard.clone(), ClaimLog::default());
        }
        let log = self.claim_logs.get_mut(&id.shard).expect("inserted above");
        if let Some(cached) = self.claim_cache.get(id) {
            // The common case, every commit: nothing moved, nothing to allocate.
            let unchanged = log.epoch == primary.epoch
                && log.seq >= view.in_sync_claim
                && cached.epoch == primary.epoch
                && cached.version == view.version
                && cached.seq == log.seq
                && log.units.as_ref() == Some(&cached.units)
                && cached.units.iter().eq(verified());
            if unchanged {
                return Err(Unchanged);
            }
        }
        let verified: BTreeSet<UnitName> = verified().cloned().collect();
        if log.epoch != primary.epoch {
            *log = ClaimLog {
                epoch: primary.epoch,
                ..ClaimLog::default()
            };
        }
        if log.seq < view.in_sync_claim {
            // Claims of this epoch applied that this log does not know of (it started
            // over): the next one must be newer.
            log.seq = view.in_sync_claim;
            log.units = None;
        }
        if log.units.as_ref() != Some(&verified) {
            log.seq += 1;
            log.units = Some(verified.clone());
        }
        for unit in &verified {
            if log.last_claimed.get(unit) != Some(&log.seq) {
                log.last_claimed.insert(unit.clone(), log.seq);
            }
        }
        Ok(Some(crate::report::InSyncClaim {
            epoch: primary.epoch,
            version: view.version,
            units: verified,
            seq: log.seq,
        }))
    }

    /// Whether replica `id` is a primary whose commits may wait for the local disk now (see
    /// [`DataPlane::awaits_local_durability`]).
    fn awaits_disk_now(&self, id: &ReplicaId) -> bool {
        let Some(SlotRole::Primary(primary)) = self.slots.get(id).map(|slot| &slot.role) else {
            return false;
        };
        self.view
            .shards
            .get(&id.shard)
            .is_none_or(|view| !has_wait_set(primary, view, self.claim_logs.get(&id.shard)))
    }

    /// Whether a commit of a primary here may be waiting for the local disk: one whose wait set
    /// is empty (no STANDBY in step or in sync), so that its sync commits and flushes are
    /// answered only once the replica file's msync reports their version durable (see
    /// `safe_version`). A primary without a view counts too. While this is false, every
    /// acknowledged write is also held by a STANDBY, and the daemon may sync its replica files
    /// less often: that costs no commit any latency, only what a crash of every replica's node
    /// at once could lose. Kept per replica as its inputs touch it, so this costs no walk over
    /// every shard.
    pub fn awaits_local_durability(&self) -> bool {
        self.awaiting_disk.iter().any(|id| !self.dirty.contains(id))
            || self.dirty.iter().any(|id| self.awaits_disk_now(id))
    }

    /// Checks the cached claims and `awaiting_disk` against a walk over every replica: where
    /// they differ, a change reached a replica without marking it touched. For the
    /// simulation, after [`DataPlane::take_claims_change`]; `Err` says what differs.
    pub fn check_claim_cache(&self) -> Result<(), String> {
        for (id, slot) in &self.slots {
            let awaiting = self.awaits_disk_now(id);
            if awaiting != self.awaiting_disk.contains(id) && !self.dirty.contains(id) {
                return Err(format!(
                    "replica {id:?}: awaits the disk {awaiting}, the cache says {}",
                    !awaiting
                ));
            }
            let SlotRole::Primary(primary) = &slot.role else {
                if self.claim_cache.contains_key(id) {
                    return Err(format!(
                        "replica {id:?} is no primary but has a cached claim"
                    ));
                }
                continue;
            };
            let claimable = self
                .view
                .shards
                .get(&id.shard)
                .is_some_and(|view| view.epoch == primary.epoch && !primary.passive);
            let cached = self.claim_cache.get(id);
            if claimable != cached.is_some() {
                return Err(format!(
                    "replica {id:?}: claimable {claimable}, cached claim {cached:?}"
                ));
            }
            if let Some(cached) = cached {
                let verified: BTreeSet<&UnitName> = primary
                    .sessions
                    .iter()
                    .filter(|(_, session)| {
                        session.in_step() && session.acked_version >= primary.exposed
                    })
                    .map(|(unit, _)| unit)
                    .collect();
                let view = &self.view.shards[&id.shard];
                let log = self.claim_logs.get(&id.shard);
                let current = cached.units.iter().collect::<BTreeSet<_>>() == verified
                    && cached.version == view.version
                    && log
                        .is_some_and(|log| log.seq == cached.seq && log.seq >= view.in_sync_claim);
                if !current {
                    return Err(format!(
                        "replica {id:?}: cached claim {cached:?} is stale (verified {verified:?})"
                    ));
                }
            }
        }
        if let Some(id) = self
            .claim_cache
            .keys()
            .find(|id| !self.slots.contains_key(id))
        {
            return Err(format!("replica {id:?} is gone but has a cached claim"));
        }
        Ok(())
    }

    /// Each primary's sessions, for status.
    pub fn status(&self, now: Time) -> Vec<ReplicaStatus> {
        let mut status = Vec::new();
        for (id, slot) in &self.slots {
            let SlotRole::Primary(primary) = &slot.role else {
                continue;
            };
            for (standby, session) in &primary.sessions {
                status.push(ReplicaStatus {
                    shard: id.shard.clone(),
                    standby: standby.clone(),
                    epoch: primary.epoch,
                    primary_version: slot.replica.version(),
                    standby_version: session.acked_version,
                    verified: session.in_step(),
                    transfer: session.transfer.as_ref().map(|transfer| TransferStatus {
                        elapsed_us: now.saturating_since(transfer.started).as_micros() as u64,
                        ..transfer.status.clone()
                    }),
                });
            }
        }
        status
    }

    /// Everything persisted for replica `id` up to `version` is on the local disk (synced).
    pub fn persisted(&mut self, id: &ReplicaId, version: u64) {
        if let Some(slot) = self.slots.get_mut(id) {
            if version > slot.durable {
                slot.durable = version.min(slot.replica.version());
                self.dirty.insert(id.clone());
            }
        }
    }

    /// This node's lease: until when its units may act.
    pub fn set_lease(&mut self, until: Option<Time>) {
        self.lease_until = until;
    }

    /// Instance `generation` of `unit` registered.
    pub fn unit_connected(&mut self, unit: &UnitName, generation: u64) {
        self.units.insert(unit.clone(), generation);
        let ids: Vec<ReplicaId> = self
            .slots
            .keys()
            .filter(|id| id.unit == *unit)
            .cloned()
            .collect();
        for id in ids {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.subscriber = None;
            }
            self.dirty.insert(id);
        }
    }

    /// Instance `generation` of `unit` is gone: its waiters are dropped (nobody hears the
    /// answers) and nothing more is delivered to it.
    pub fn unit_disconnected(&mut self, unit: &UnitName, generation: u64) {
        if self.units.get(unit) == Some(&generation) {
            self.units.remove(unit);
        }
        for (id, slot) in &mut self.slots {
            if id.unit != *unit {
                continue;
            }
            if slot.subscriber == Some(generation) {
                slot.subscriber = None;
            }
            if let SlotRole::Primary(primary) = &mut slot.role {
                primary
                    .waiters
                    .retain(|waiter| waiter.generation != generation);
                primary
                    .lag_waiters
                    .retain(|waiter| waiter.generation != generation);
            }
        }
    }

    /// An instance of `unit` starts that must rebuild its replicas (restart escalation L2):
    /// they are emptied, and refilled by a full transfer from the ACTIVE (or, with no ACTIVE to
    /// copy from, start empty).
    pub fn reinitialise(&mut self, unit: &UnitName) {
        for (id, slot) in &mut self.slots {
            if id.unit != *unit {
                continue;
            }
            match &mut slot.role {
                SlotRole::Primary(primary) => primary.sessions.clear(),
                SlotRole::Secondary(secondary) => {
                    // The session's items follow the replica that is gone: follow again (for a
                    // full transfer, the replica being incomplete).
                    secondary.session = None;
                    secondary.verified = false;
                    secondary.follow_sent = None;
                }
                SlotRole::Idle => {}
            }
            let empty = ShardReplica::new();
            slot.replica = empty.clone();
            slot.oplog.clear();
            slot.complete = false;
            slot.suspect = true;
            slot.durable = 0;
            self.out
                .persist
                .push((id.clone(), PersistAction::Reset(empty.snapshot())));
            self.dirty.insert(id.clone());
        }
    }

    /// The committed facts changed (or the node caught up).
    pub fn set_view(&mut self, now: Time, view: DataView) {
        if self.epochs_at_start.is_none() {
            self.epochs_at_start = Some(
                view.shards
                    .iter()
                    .map(|(shard, view)| (shard.clone(), view.epoch))
                    .collect(),
            );
        }
        self.view = view;
        let wanted: BTreeSet<ReplicaId> = self
            .view
            .shards
            .iter()
            .flat_map(|(shard, view)| {
                view.local_units.iter().map(|unit| ReplicaId {
                    shard: shard.clone(),
                    unit: unit.clone(),
                })
            })
            .collect();
        let gone: Vec<ReplicaId> = self
            .slots
            .keys()
            .filter(|id| !wanted.contains(id))
            .cloned()
            .collect();
        for id in gone {
            self.awaiting_disk.remove(&id);
            if self.claim_cache.remove(&id).is_some() {
                self.claims_changed = true;
            }
            if let Some(slot) = self.slots.remove(&id) {
                self.fail_waiters(
                    &id,
                    slot.role,
                    RefusalCode::NoReplica,
                    "the replica is gone from here",
                );
            }
            self.out.persist.push((id, PersistAction::Remove));
        }
        for id in wanted {
            self.slots
                .entry(id.clone())
                .or_insert_with(|| Slot::new(ShardReplica::new(), true));
            self.update_role(now, &id);
            self.dirty.insert(id);
        }
        self.release_held(now);
    }

    /// Sets the role of replica `id` from the view.
    fn update_role(&mut self, now: Time, id: &ReplicaId) {
        let Some(view) = self.view.shards.get(&id.shard).cloned() else {
            return;
        };
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let is_primary = view
            .primary
            .as_ref()
            .is_some_and(|(unit, node)| *unit == id.unit && *node == self.node);
        if is_primary {
            match &mut slot.role {
                SlotRole::Primary(primary) if primary.epoch == view.epoch => {
                    // A session lasts while its STANDBY does: the same unit on the same node,
                    // as the same instance. A new instance means the cluster handled a fault of
                    // the unit and took its role (the view may never have shown it without):
                    // its daemon may have restarted, and the replica the session verified
                    // may be gone; kept, the session would have the STANDBY claimed in sync
                    // again on the strength of it.
                    primary.sessions.retain(|unit, session| {
                        view.standbys.get(unit) == Some(&session.node)
                            && view.standby_generations.get(unit).copied().unwrap_or(0)
                                == session.generation
                    });
                }
                _ => {
                    let old = std::mem::replace(&mut slot.role, SlotRole::Idle);
                    // A primary at an epoch the cluster already had when this node started may
                    // have been this replica's before the restart.
                    let inherited = slot.loaded
                        && self
                            .epochs_at_start
                            .as_ref()
                            .and_then(|epochs| epochs.get(&id.shard))
                            .is_some_and(|epoch| view.epoch <= *epoch);
                    // The cluster judged this promotion lossless because it recorded this
                    // replica in sync (or it continues the previous ACTIVE's memory), but what
                    // it recorded was a replica this run no longer has: say the node crashed
                    // after its STANDBY acknowledged a transfer the disk never got, and the
                    // claim was committed, and acted on, before the cluster heard of the
                    // restart. Taken as the truth, it would drop acknowledged writes (and
                    // copy that loss to the other STANDBYs, which the cluster would then
                    // record in sync) with no possible loss reported.
                    let untrusted = view.continued_in_memory && slot.suspect;
                    let passive = inherited || untrusted;
                    if !passive {
                        if !slot.complete {
                            // Promoted in the middle of a transfer: this replica is the
                            // shard's truth now (the director reported the failover as a
                            // possible loss: it did not count the replica in sync).
                            slot.complete = true;
                            self.out.persist.push((id.clone(), PersistAction::Complete));
                        }
                        slot.suspect = false;
                    }
                    slot.role = SlotRole::Primary(Primary {
                        epoch: view.epoch,
                        passive,
                        sessions: BTreeMap::new(),
                        waiters: VecDeque::new(),
                        lag_waiters: VecDeque::new(),
                        delivered: None,
                        held_back_since: None,
                        queued_chain: None,
                        exposed: 0,
                        orphans: BTreeMap::new(),
                    });
                    self.fail_waiters(
                        id,
                        old,
                        RefusalCode::EpochChanged,
                        "the shard got a new ACTIVE epoch; commit again if still ACTIVE",
                    );
                }
            }
            return;
        }
        let follows = match (&view.primary, view.standbys.contains_key(&id.unit)) {
            (Some((primary, node)), true) if *primary != id.unit => Some((primary.clone(), *node)),
            _ => None,
        };
        match follows {
            Some((primary, node)) => {
                let same = matches!(&slot.role, SlotRole::Secondary(secondary)
                    if secondary.epoch == view.epoch && secondary.primary == primary && secondary.node == node);
                if !same {
                    let old = std::mem::replace(
                        &mut slot.role,
                        SlotRole::Secondary(Secondary {
                            epoch: view.epoch,
                            primary,
                            node,
                            session: None,
                            verified: false,
                            follow_sent: None,
                            want_full: false,
                        }),
                    );
                    self.fail_waiters(
                        id,
                        old,
                        RefusalCode::NotActive,
                        "the unit is no longer ACTIVE",
                    );
                }
            }
            None => {
                if !matches!(slot.role, SlotRole::Idle) {
                    let old = std::mem::replace(&mut slot.role, SlotRole::Idle);
                    self.fail_waiters(
                        id,
                        old,
                        RefusalCode::NotActive,
                        "the unit is no longer ACTIVE",
                    );
                }
            }
        }
        let _ = now;
    }

    fn fail_waiters(&mut self, id: &ReplicaId, role: SlotRole, code: RefusalCode, why: &str) {
        let SlotRole::Primary(primary) = role else {
            return;
        };
        for waiter in primary.waiters.into_iter().chain(primary.lag_waiters) {
            let answer = if waiter.flush {
                error(code, format!("{why} (shard {})", id.shard))
            } else {
                // The commit is in the replica already; whether it survives depends on whether
                // the next ACTIVE got it before the change.
                error(
                    RefusalCode::OutcomeUnknown,
                    format!(
                        "{why} (shard {}) before the commit at version {} was confirmed; it may \
                         or may not be kept: read the section back to know",
                        id.shard, waiter.seq
                    ),
                )
            };
            self.out
                .replies
                .push((waiter.unit, waiter.generation, waiter.request, answer));
        }
    }

    /// A unit's request. The answer comes in a later output (at once for most requests; a sync
    /// commit or a flush once the wait set caught up).
    pub fn on_unit(
        &mut self,
        now: Time,
        unit: &UnitName,
        generation: u64,
        request_id: u64,
        request: DataRequest,
    ) {
        let id = ReplicaId {
            shard: request.shard().clone(),
            unit: unit.clone(),
        };
        let answer = self.answer(now, &id, generation, request_id, request);
        if let Some(answer) = answer {
            self.out
                .replies
                .push((unit.clone(), generation, request_id, answer));
        }
        self.dirty.insert(id);
    }

    fn answer(
        &mut self,
        now: Time,
        id: &ReplicaId,
        generation: u64,
        request_id: u64,
        request: DataRequest,
    ) -> Option<DataReply> {
        if self.units.get(&id.unit) != Some(&generation) {
            return Some(error(
                RefusalCode::NotRegistered,
                "this instance of the unit is not registered with its agent",
            ));
        }
        let leased = self.has_lease(now);
        let Some(slot) = self.slots.get_mut(id) else {
            return Some(error(
                RefusalCode::NoReplica,
                format!(
                    "unit {} keeps no replica of shard {} (is the shard in its service, and \
                     does the service use a single-ACTIVE model?)",
                    id.unit, id.shard
                ),
            ));
        };
        match request {
            DataRequest::Get { key, .. } => Some(DataReply::Value(slot.replica.get(&key).cloned())),
            DataRequest::Scan {
                start, bytes_max, ..
            } => {
                let mut sections = Vec::new();
                let mut bytes = 0u64;
                let mut next = None;
                for (key, section) in slot.replica.range_from(&start) {
                    if !sections.is_empty() && bytes >= bytes_max {
                        next = Some(key.clone());
                        break;
                    }
                    bytes += (key.len() + section.value.len()) as u64;
                    sections.push((key.clone(), section.clone()));
                }
                Some(DataReply::Sections { sections, next })
            }
            DataRequest::Subscribe { on, .. } => {
                slot.subscriber = on.then_some(generation);
                Some(DataReply::Done {
                    version: slot.replica.version(),
                })
            }
            DataRequest::Position { .. } => {
                let in_sync = match &slot.role {
                    SlotRole::Primary(primary) => primary
                        .sessions
                        .values()
                        .filter(|session| session.in_step())
                        .count() as u64,
                    SlotRole::Secondary(secondary) => u64::from(secondary.verified),
                    SlotRole::Idle => 0,
                };
                Some(DataReply::Position {
                    version: slot.replica.version(),
                    consumed: slot.replica.consumed(),
                    digest: slot.replica.digest(),
                    sections: slot.replica.section_count() as u64,
                    in_sync,
                })
            }
            DataRequest::Deliver { epoch, .. } => {
                let view = self.view.shards.get(&id.shard)?;
                match &mut slot.role {
                    SlotRole::Primary(primary)
                        if view.active
                            && primary.epoch == view.epoch
                            && primary.epoch == epoch
                            && !primary.passive =>
                    {
                        // (Re)start the stream after what is consumed: what was delivered
                        // before and not consumed comes again, in order.
                        primary.delivered = Some((generation, slot.replica.consumed()));
                        Some(DataReply::Done {
                            version: slot.replica.version(),
                        })
                    }
                    _ => Some(error(
                        RefusalCode::NotActive,
                        format!(
                            "unit {} is not ACTIVE for shard {} at epoch {epoch}",
                            id.unit, id.shard
                        ),
                    )),
                }
            }
            DataRequest::Flush { .. } => match &mut slot.role {
                SlotRole::Primary(primary) => {
                    primary.waiters.push_back(Waiter {
                        unit: id.unit.clone(),
                        generation,
                        request: request_id,
                        seq: slot.replica.version(),
                        flush: true,
                    });
                    None
                }
                _ => Some(DataReply::Done {
                    version: slot.replica.version(),
                }),
            },
            DataRequest::Commit {
                epoch,
                writes,
                consumed,
                sync,
                chain,
                ..
            } => {
                let view = self.view.shards.get(&id.shard)?;
                let SlotRole::Primary(primary) = &mut slot.role else {
                    return Some(error(
                        RefusalCode::NotActive,
                        format!("unit {} is not ACTIVE for shard {}", id.unit, id.shard),
                    ));
                };
                if let Some((chain, index)) = chain {
                    if index > 0 && primary.queued_chain != Some((generation, chain, index - 1)) {
                        return Some(error(
                            RefusalCode::QueueBroken,
                            format!(
                                "queued batch {index} of chain {chain} does not follow the                                  last batch applied (an earlier one was refused)"
                            ),
                        ));
                    }
                }
                if primary.passive && view.acting && primary.epoch == view.epoch {
                    return Some(error(
                        RefusalCode::NotActive,
                        format!(
                            "the replica of unit {} for shard {} here may miss writes the \
                             cluster counts on (its node restarted, or it was emptied); it \
                             takes no commits until the cluster moves the shard on",
                            id.unit, id.shard
                        ),
                    ));
                }
                if !view.acting || primary.epoch != view.epoch {
                    return Some(error(
                        RefusalCode::NotActive,
                        format!(
                            "unit {} no longer acts for shard {} (it is quiesced)",
                            id.unit, id.shard
                        ),
                    ));
                }
                if epoch != primary.epoch {
                    return Some(error(
                        RefusalCode::StaleEpoch,
                        format!(
                            "commit at epoch {epoch}, the shard is at epoch {}",
                            primary.epoch
                        ),
                    ));
                }
                if !leased {
                    return Some(error(
                        RefusalCode::NoLease,
                        "this node's lease ran out (it lost the cluster's quorum); the unit \
                         must not act",
                    ));
                }
                if let Err(reason) = check_writes(&writes) {
                    return Some(error(RefusalCode::BadRequest, reason));
                }
                if let Some(consumed) = consumed {
                    let delivered = primary
                        .delivered
                        .filter(|(instance, _)| *instance == generation)
                        .map_or(slot.replica.consumed(), |(_, seq)| seq);
                    if consumed > delivered {
                        return Some(error(
                            RefusalCode::BadRequest,
                            format!(
                                "consumes up to {consumed}, but the last message delivered \
                                 is {delivered}"
                            ),
                        ));
                    }
                }
                let merged = extend_open_commit(
                    &mut slot.replica,
                    &mut slot.oplog,
                    &mut self.out.persist,
                    id,
                    primary.epoch,
                    &writes,
                    consumed,
                );
                let seq = match merged {
                    Ok(Some(seq)) => seq,
                    Ok(None) => {
                        let op = Op {
                            seq: slot.replica.version() + 1,
                            epoch: primary.epoch,
                            kind: OpKind::Commit {
                                writes: writes.into(),
                                consumed,
                            },
                        };
                        if let Err(reason) = slot.replica.apply(&op) {
                            return Some(error(RefusalCode::BadRequest, reason.to_string()));
                        }
                        let seq = op.seq;
                        self.out
                            .persist
                            .push((id.clone(), PersistAction::Op(op.clone())));
                        slot.oplog.push(op, self.config.retain_bytes);
                        seq
                    }
                    Err(reason) => return Some(error(RefusalCode::BadRequest, reason.to_string())),
                };
                if let Some((chain, index)) = chain {
                    primary.queued_chain = Some((generation, chain, index));
                }
                let waiter = Waiter {
                    unit: id.unit.clone(),
                    generation,
                    request: request_id,
                    seq,
                    flush: false,
                };
                if sync {
                    primary.waiters.push_back(waiter);
                } else {
                    primary.lag_waiters.push_back(waiter);
                }
                None
            }
        }
    }

    /// A stream message received on this node for `shard` (ingress or client).
    pub fn accept(
        &mut self,
        now: Time,
        shard: &ShardName,
        message: StreamMessage,
    ) -> Result<Accepted, String> {
        self.accept_hops(now, shard, message, 0, None)
    }

    /// `from`: the node that forwarded the message here, if any. A message is never sent back
    /// to it: its view and ours disagree on the primary (one of us has not applied the change
    /// yet), so it is held until our view moves on.
    fn accept_hops(
        &mut self,
        now: Time,
        shard: &ShardName,
        message: StreamMessage,
        hops: u32,
        from: Option<NodeId>,
    ) -> Result<Accepted, String> {
        check_message(&message)?;
        let Some(view) = self.view.shards.get(shard) else {
            return Err(format!("there is no shard {shard} with a stream"));
        };
        let held_count = self.held.get(shard).map_or(0, VecDeque::len);
        // A primary creates ops only while its node holds a lease: without one it may have
        // been replaced already, and its ops would diverge from the new primary's.
        let takes = self.has_lease(now)
            && view
                .primary
                .as_ref()
                .is_some_and(|(unit, _)| self.takes_messages(shard, unit));
        match view.primary.clone() {
            Some((unit, node)) if node == self.node && view.active && held_count == 0 && takes => {
                let id = ReplicaId {
                    shard: shard.clone(),
                    unit,
                };
                Ok(self
                    .append_message(&id, message)
                    .map_or(Accepted::Held, Accepted::Appended))
            }
            Some((_, node))
                if node != self.node && hops < FORWARD_HOPS_MAX && Some(node) != from =>
            {
                self.next_forward += 1;
                self.out.messages.push((
                    node,
                    DataMessage::Forward {
                        shard: shard.clone(),
                        message,
                        hops: hops + 1,
                        id: self.next_forward,
                    },
                ));
                Ok(Accepted::Forwarded(node))
            }
            _ => {
                let held = self.held.entry(shard.clone()).or_default();
                if held.len() >= self.config.held_max {
                    return Err(format!(
                        "shard {shard} has no ACTIVE taking messages and {} are held already",
                        held.len()
                    ));
                }
                held.push_back((message, hops));
                let _ = now;
                Ok(Accepted::Held)
            }
        }
    }

    /// Whether this node holds a lease at `now`.
    fn has_lease(&self, now: Time) -> bool {
        self.lease_until.is_some_and(|until| now < until)
    }

    /// Whether `unit`'s replica of `shard` here is a primary that takes stream messages (not
    /// a passive one).
    fn takes_messages(&self, shard: &ShardName, unit: &UnitName) -> bool {
        let id = ReplicaId {
            shard: shard.clone(),
            unit: unit.clone(),
        };
        matches!(
            self.slots.get(&id).map(|slot| &slot.role),
            Some(SlotRole::Primary(Primary { passive: false, .. }))
        )
    }

    /// Appends a message to primary `id`'s stream; its seq.
    fn append_message(&mut self, id: &ReplicaId, message: StreamMessage) -> Option<u64> {
        let slot = self.slots.get_mut(id)?;
        let SlotRole::Primary(primary) = &slot.role else {
            return None;
        };
        let op = Op {
            seq: slot.replica.version() + 1,
            epoch: primary.epoch,
            kind: OpKind::Message(message),
        };
        slot.replica.apply(&op).ok()?;
        let seq = op.seq;
        self.out
            .persist
            .push((id.clone(), PersistAction::Op(op.clone())));
        slot.oplog.push(op, self.config.retain_bytes);
        self.dirty.insert(id.clone());
        Some(seq)
    }

    /// Messages held for shards whose primary can now take them go there.
    fn release_held(&mut self, now: Time) {
        let shards: Vec<ShardName> = self.held.keys().cloned().collect();
        for shard in shards {
            let Some(view) = self.view.shards.get(&shard) else {
                let count = self.held.remove(&shard).map_or(0, |held| held.len());
                self.out.events.push(DataEvent::Dropped {
                    shard,
                    count: count as u64,
                    reason: "the shard no longer exists",
                });
                continue;
            };
            let target = match &view.primary {
                Some((unit, node))
                    if *node == self.node
                        && view.active
                        && self.has_lease(now)
                        && self.takes_messages(&shard, unit) =>
                {
                    Some((unit.clone(), *node))
                }
                Some((unit, node)) if *node != self.node => Some((unit.clone(), *node)),
                _ => None,
            };
            let Some((unit, node)) = target else {
                continue;
            };
            let held = self.held.remove(&shard).unwrap_or_default();
            let mut dropped = 0u64;
            for (message, hops) in held {
                if node == self.node {
                    let id = ReplicaId {
                        shard: shard.clone(),
                        unit: unit.clone(),
                    };
                    if self.append_message(&id, message).is_none() {
                        dropped += 1;
                    }
                } else if hops < FORWARD_HOPS_MAX {
                    self.next_forward += 1;
                    self.out.messages.push((
                        node,
                        DataMessage::Forward {
                            shard: shard.clone(),
                            message,
                            hops: hops + 1,
                            id: self.next_forward,
                        },
                    ));
                } else {
                    dropped += 1;
                }
            }
            if dropped > 0 {
                self.out.events.push(DataEvent::Dropped {
                    shard,
                    count: dropped,
                    reason: "forwarded too often while the ACTIVE moved",
                });
            }
        }
        let _ = now;
    }

    /// A message from node `from`'s data plane.
    pub fn on_peer(&mut self, now: Time, from: NodeId, message: DataMessage) {
        match message {
            DataMessage::Follow {
                shard,
                epoch,
                primary,
                standby,
                have_version,
                have_epoch,
                full,
            } => self.on_follow(
                now,
                from,
                ReplicaId {
                    shard,
                    unit: primary,
                },
                epoch,
                standby,
                (have_version, have_epoch, full),
            ),
            DataMessage::Start {
                shard,
                epoch,
                standby,
                session,
                start,
            } => self.on_start(
                now,
                from,
                ReplicaId {
                    shard,
                    unit: standby,
                },
                epoch,
                session,
                start,
            ),
            DataMessage::Items {
                shard,
                epoch,
                standby,
                session,
                first,
                items,
            } => self.on_items(
                now,
                from,
                ReplicaId {
                    shard,
                    unit: standby,
                },
                epoch,
                session,
                first,
                items,
            ),
            DataMessage::Ack {
                shard,
                epoch,
                standby,
                session,
                received,
                version,
                verified,
            } => self.on_ack(
                now,
                from,
                &shard,
                epoch,
                standby,
                session,
                (received, version, verified),
            ),
            DataMessage::Nack {
                shard,
                epoch,
                standby,
                session,
                expected,
            } => {
                let mut messages = Vec::new();
                if let Some((id, session)) =
                    self.session_mut(&shard, epoch, &standby, session, from)
                {
                    Self::resend(session, expected, &mut messages, &id, epoch, &standby);
                    session.last_progress = now;
                }
                self.out.messages.extend(messages);
            }
            DataMessage::Stale {
                shard,
                epoch,
                standby,
            } => {
                // The primary we follow is not (or no longer) the primary of our epoch: our
                // view is behind or theirs is. The view will change; until then, retry slowly.
                // Or it is, and holds no session with us: it dropped the one we have (its view
                // saw us leave STANDBY and come back, ours did not), so we follow again.
                let id = ReplicaId {
                    shard,
                    unit: standby,
                };
                if let Some(Slot {
                    role: SlotRole::Secondary(secondary),
                    ..
                }) = self.slots.get_mut(&id)
                {
                    if secondary.node == from
                        && secondary.epoch == epoch
                        && secondary.session.is_some()
                    {
                        secondary.session = None;
                        secondary.verified = false;
                        secondary.follow_sent = None;
                        self.dirty.insert(id);
                    }
                }
            }
            DataMessage::Forward {
                shard,
                message,
                hops,
                id,
            } => {
                let (seen, order) = self.forwards_seen.entry(from).or_default();
                if !seen.insert(id) {
                    return;
                }
                order.push_back(id);
                if order.len() > FORWARDS_REMEMBERED {
                    if let Some(old) = order.pop_front() {
                        seen.remove(&old);
                    }
                }
                if let Err(reason) = self.accept_hops(now, &shard, message, hops, Some(from)) {
                    self.out.events.push(DataEvent::Dropped {
                        shard,
                        count: 1,
                        reason: if reason.contains("held") {
                            "too many messages held"
                        } else {
                            "refused"
                        },
                    });
                }
            }
        }
    }

    fn on_follow(
        &mut self,
        now: Time,
        from: NodeId,
        id: ReplicaId,
        epoch: u64,
        standby: UnitName,
        (have_version, have_epoch, full): (u64, u64, bool),
    ) {
        let Some(view) = self.view.shards.get(&id.shard) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let SlotRole::Primary(primary) = &mut slot.role else {
            self.out.messages.push((
                from,
                DataMessage::Stale {
                    shard: id.shard.clone(),
                    epoch: view.epoch,
                    standby,
                },
            ));
            return;
        };
        if primary.passive {
            return;
        }
        if epoch != primary.epoch || view.standbys.get(&standby) != Some(&from) {
            if epoch < primary.epoch {
                self.out.messages.push((
                    from,
                    DataMessage::Stale {
                        shard: id.shard.clone(),
                        epoch: primary.epoch,
                        standby,
                    },
                ));
            }
            return;
        }
        let version = slot.replica.version();
        let oplog = &slot.oplog;
        let reaches = |base: u64| base == version || oplog.get(base + 1).is_some();
        let delta = if !full
            && have_version <= version
            && slot.replica.history().epoch_at(have_version) == Some(have_epoch)
            && reaches(have_version)
        {
            Some(have_version)
        } else if !full {
            // The network delays and duplicates: a Follow for a STANDBY whose session here is
            // in step may be a late copy of one sent before that session started, describing
            // the replica as it was then (empty, say), not as it is. Taken at its word it
            // would start a full transfer of a replica this primary verified and may have
            // claimed in sync. The session knows better: the STANDBY holds what it
            // acknowledged, so the new session is a delta from there (a STANDBY that holds
            // something else refuses it and follows again with its replica as it is).
            primary
                .sessions
                .get(&standby)
                .filter(|session| session.node == from && session.in_step())
                .map(|session| session.acked_version)
                .filter(|acked| *acked <= version && reaches(*acked))
        } else {
            None
        };
        self.next_session += 1;
        let generation = view.standby_generations.get(&standby).copied().unwrap_or(0);
        let session = open_session(
            now,
            self.next_session,
            (from, generation),
            &slot.replica,
            delta,
        );
        let standby_id = ReplicaId {
            shard: id.shard.clone(),
            unit: standby.clone(),
        };
        announce(
            &mut self.out,
            &id,
            &standby_id,
            epoch,
            &session,
            &slot.replica,
            delta.unwrap_or(have_version),
        );
        primary.sessions.insert(standby, session);
        self.dirty.insert(id);
    }

    fn session_mut(
        &mut self,
        shard: &ShardName,
        epoch: u64,
        standby: &UnitName,
        session_id: u64,
        from: NodeId,
    ) -> Option<(ReplicaId, &mut Session)> {
        let view = self.view.shards.get(shard)?;
        let (unit, node) = view.primary.as_ref()?;
        if *node != self.node {
            return None;
        }
        let id = ReplicaId {
            shard: shard.clone(),
            unit: unit.clone(),
        };
        let slot = self.slots.get_mut(&id)?;
        let SlotRole::Primary(primary) = &mut slot.role else {
            return None;
        };
        if primary.epoch != epoch {
            return None;
        }
        let session = primary.sessions.get_mut(standby)?;
        if session.id != session_id || session.node != from {
            return None;
        }
        self.dirty.insert(id.clone());
        Some((id, session))
    }

    fn resend(
        session: &mut Session,
        from_n: u64,
        messages: &mut Vec<(NodeId, DataMessage)>,
        id: &ReplicaId,
        epoch: u64,
        standby: &UnitName,
    ) {
        let items: Vec<(u64, Item)> = session
            .inflight
            .iter()
            .filter(|(n, _)| *n >= from_n)
            .cloned()
            .collect();
        let mut batch: Vec<Item> = Vec::new();
        let mut first = 0;
        for (n, item) in items {
            if batch.is_empty() {
                first = n;
            }
            batch.push(item);
            if batch.len() >= 256 {
                messages.push((
                    session.node,
                    DataMessage::Items {
                        shard: id.shard.clone(),
                        epoch,
                        standby: standby.clone(),
                        session: session.id,
                        first,
                        items: std::mem::take(&mut batch),
                    },
                ));
            }
        }
        if !batch.is_empty() {
            messages.push((
                session.node,
                DataMessage::Items {
                    shard: id.shard.clone(),
                    epoch,
                    standby: standby.clone(),
                    session: session.id,
                    first,
                    items: batch,
                },
            ));
        }
    }

    #[allow(clippy::too_many_arguments)] // One message's fields, unpacked.
    fn on_ack(
        &mut self,
        now: Time,
        from: NodeId,
        shard: &ShardName,
        epoch: u64,
        standby: UnitName,
        session_id: u64,
        (received, version, verified): (u64, u64, Option<bool>),
    ) {
        let Some((id, session)) = self.session_mut(shard, epoch, &standby, session_id, from) else {
            return;
        };
        if received > session.acked_n {
            session.acked_n = received;
            session.last_progress = now;
            while let Some((n, item)) = session.inflight.front() {
                if *n > received {
                    break;
                }
                session.inflight_bytes -= item.size();
                session.inflight.pop_front();
            }
        }
        session.acked_version = session.acked_version.max(version);
        match verified {
            Some(true) if !session.verified => {
                session.verified = true;
                session.transfer = None;
                self.out.events.push(DataEvent::Verified {
                    standby: ReplicaId {
                        shard: shard.clone(),
                        unit: standby,
                    },
                    epoch,
                    version,
                });
            }
            Some(false) => session.verified = false,
            _ => {}
        }

        self.dirty.insert(id);
    }

    fn on_start(
        &mut self,
        now: Time,
        from: NodeId,
        id: ReplicaId,
        epoch: u64,
        session: u64,
        start: SessionStart,
    ) {
        let in_sync = self
            .view
            .shards
            .get(&id.shard)
            .is_some_and(|view| view.in_sync.contains(&id.unit));
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let SlotRole::Secondary(secondary) = &mut slot.role else {
            return;
        };
        if secondary.epoch != epoch || secondary.node != from {
            return;
        }
        if secondary
            .session
            .is_some_and(|(current, _)| session <= current)
        {
            // A Start overtaken by a newer one, or a copy of the current session's (the
            // network duplicates): session ids grow within a primary's run, and a primary that
            // restarted serves no sessions at that epoch. Taking a copy again would empty a
            // replica the session may already have verified.
            return;
        }
        match start {
            SessionStart::Delta { from: version } => {
                if version != slot.replica.version() || !slot.complete {
                    // Our replica changed since we asked: ask again.
                    secondary.follow_sent = None;
                    secondary.session = None;
                    secondary.verified = false;
                    self.dirty.insert(id);
                    return;
                }
            }
            SessionStart::Full { snapshot, .. } => {
                // A complete replica at the snapshot's position (the same version, created by
                // the same epoch: the same ops, as a delta would assume) holds what the
                // transfer copies already. It is kept: the copies only install what it has,
                // and the digest at the end checks it.
                let holds = slot.complete
                    && !secondary.want_full
                    && snapshot.version == slot.replica.version()
                    && snapshot.consumed == slot.replica.consumed()
                    && snapshot.history.epoch_at(snapshot.version) == Some(slot.replica.epoch());
                if !holds {
                    if in_sync || secondary.verified {
                        // The cluster counts this replica as holding every acknowledged write,
                        // or may do so soon: the primary claims it in sync once it verified,
                        // and the commit of that claim can reach our view after the
                        // primary's next session reached us (a late copy of an old Follow
                        // starts one). Emptying it now could lose an acknowledged write. A
                        // verified replica follows again at once with what it holds, for a
                        // delta; one the cluster counts in sync waits until the primary took
                        // it out of sync (this session never verifies, so the primary's
                        // claim no longer has it), then asks again.
                        secondary.session = None;
                        if std::mem::take(&mut secondary.verified) {
                            secondary.follow_sent = None;
                            self.dirty.insert(id);
                        }
                        return;
                    }
                    slot.replica.reset_to(&snapshot);
                    slot.oplog.clear();
                    slot.complete = false;
                    slot.suspect = true;
                    slot.durable = 0;
                    self.out
                        .persist
                        .push((id.clone(), PersistAction::Reset(snapshot)));
                    if let Some(generation) = slot.subscriber {
                        self.out.deliveries.push((
                            id.unit.clone(),
                            generation,
                            Delivery::Changed {
                                shard: id.shard.clone(),
                                version: slot.replica.version(),
                                writes: Vec::new(),
                                reset: true,
                            },
                        ));
                    }
                }
            }
        }
        secondary.session = Some((session, 1));
        secondary.verified = false;
        secondary.want_full = false;
        let _ = now;
    }

    #[allow(clippy::too_many_arguments)] // One message's fields, unpacked.
    fn on_items(
        &mut self,
        now: Time,
        from: NodeId,
        id: ReplicaId,
        epoch: u64,
        session: u64,
        first: u64,
        items: Vec<Item>,
    ) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let SlotRole::Secondary(secondary) = &mut slot.role else {
            return;
        };
        if secondary.epoch != epoch || secondary.node != from {
            return;
        }
        let Some((current, mut next_n)) = secondary.session else {
            return;
        };
        if session > current {
            // The Start of a newer session went missing: ask again.
            secondary.session = None;
            secondary.follow_sent = None;
            self.dirty.insert(id);
            return;
        }
        if current != session {
            return;
        }
        if first > next_n {
            self.out.messages.push((
                from,
                DataMessage::Nack {
                    shard: id.shard.clone(),
                    epoch,
                    standby: id.unit.clone(),
                    session,
                    expected: next_n,
                },
            ));
            return;
        }
        let mut verified = None;
        let mut failed = false;
        for (offset, item) in items.into_iter().enumerate() {
            let n = first + offset as u64;
            if n < next_n {
                continue;
            }
            let result = match item {
                Item::Op(op) => match slot.replica.apply(&op) {
                    Ok(()) => {
                        if let Some(generation) = slot.subscriber {
                            let writes = match &op.kind {
                                OpKind::Commit { writes, .. } => writes.to_vec(),
                                OpKind::Message(_) => Vec::new(),
                            };
                            self.out.deliveries.push((
                                id.unit.clone(),
                                generation,
                                Delivery::Changed {
                                    shard: id.shard.clone(),
                                    version: op.seq,
                                    writes,
                                    reset: false,
                                },
                            ));
                        }
                        self.out
                            .persist
                            .push((id.clone(), PersistAction::Op(op.clone())));
                        slot.oplog.push(op, self.config.retain_bytes);
                        Ok(())
                    }
                    Err(error) => Err(error.to_string()),
                },
                Item::Sections(sections) => {
                    let mut result = Ok(());
                    for (key, section) in &sections {
                        if let Err(error) =
                            slot.replica.install_section(key.clone(), section.clone())
                        {
                            result = Err(error.to_string());
                            break;
                        }
                    }
                    if result.is_ok() {
                        self.out
                            .persist
                            .push((id.clone(), PersistAction::Sections(sections)));
                    }
                    result
                }
                Item::Messages(messages) => {
                    let mut result = Ok(());
                    for (seq, message) in &messages {
                        if let Err(error) = slot.replica.install_message(*seq, message.clone()) {
                            result = Err(error.to_string());
                            break;
                        }
                    }
                    if result.is_ok() {
                        self.out
                            .persist
                            .push((id.clone(), PersistAction::Messages(messages)));
                    }
                    result
                }
                Item::Verify { version, digest } => {
                    let matches =
                        version == slot.replica.version() && digest == slot.replica.digest();
                    verified = Some(matches);
                    if matches {
                        if !slot.complete {
                            slot.complete = true;
                            self.out.persist.push((id.clone(), PersistAction::Complete));
                        }
                        slot.suspect = false;
                        secondary.verified = true;
                    } else {
                        self.out.events.push(DataEvent::DigestMismatch {
                            standby: id.clone(),
                            version,
                        });
                        secondary.verified = false;
                        secondary.want_full = true;
                        slot.suspect = true;
                        if slot.complete {
                            slot.complete = false;
                            self.out
                                .persist
                                .push((id.clone(), PersistAction::Incomplete));
                        }
                    }
                    Ok(())
                }
            };
            if let Err(reason) = result {
                // An item that does not apply means our replica is not what the primary
                // thinks: start over with a full transfer.
                self.out.events.push(DataEvent::ItemRefused {
                    standby: id.clone(),
                    reason,
                });
                secondary.want_full = true;
                failed = true;
                break;
            }
            next_n = n + 1;
        }
        secondary.session = Some((session, next_n));
        self.out.messages.push((
            from,
            DataMessage::Ack {
                shard: id.shard.clone(),
                epoch,
                standby: id.unit.clone(),
                session,
                received: next_n - 1,
                version: slot.replica.version(),
                verified: verified.or(secondary.verified.then_some(true)),
            },
        ));
        if failed || verified == Some(false) {
            secondary.session = None;
            secondary.verified = false;
            secondary.follow_sent = None;
        }
        let _ = now;
    }

    /// Time passes: resends, follows, lag checks.
    pub fn tick(&mut self, now: Time) {
        self.pump_deferred.clear();
        let ids: Vec<ReplicaId> = self.slots.keys().cloned().collect();
        self.dirty.extend(ids);
        self.release_held(now);
    }

    /// Starts a step of the owner's: the replicas whose sessions stopped on the budget of a
    /// [`DataPlane::take_output`] (see [`DataConfig::pump_bytes_per_step`]) go on sending.
    /// (A tick does it too.)
    pub fn begin_step(&mut self) {
        let deferred = std::mem::take(&mut self.pump_deferred);
        self.dirty.extend(deferred);
    }

    /// Whether sessions have items to send that the last step's budget held back: the owner
    /// should run another step soon, without waiting for an input.
    pub fn has_pending_work(&self) -> bool {
        !self.pump_deferred.is_empty()
    }

    /// Processes the replicas touched since the last call (sessions pumped, waiters answered,
    /// messages delivered, follows sent) and returns everything to carry out.
    pub fn take_output(&mut self, now: Time) -> DataOutput {
        self.pump_budget = self.config.pump_bytes_per_step;
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            self.progress(now, &id);
            self.refresh_claim(&id);
        }
        let mut out = std::mem::take(&mut self.out);
        // Each file's stamp after its records: what they make is the replica as it is now.
        let mut written: Vec<&ReplicaId> = Vec::new();
        for (id, _) in &out.persist {
            if !written.contains(&id) {
                written.push(id);
            }
        }
        let stamps: Vec<(ReplicaId, PersistAction)> = written
            .into_iter()
            .filter_map(|id| {
                let slot = self.slots.get(id)?;
                Some((
                    id.clone(),
                    PersistAction::Stamp(ReplicaStamp::of(&slot.replica)),
                ))
            })
            .collect();
        out.persist.extend(stamps);
        out
    }

    fn progress(&mut self, now: Time, id: &ReplicaId) {
        let Some(view) = self.view.shards.get(&id.shard).cloned() else {
            return;
        };
        let registered = self.units.get(&id.unit).copied();
        let leased = self.has_lease(now);
        let config = self.config.clone();
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        match &mut slot.role {
            SlotRole::Idle => {}
            SlotRole::Secondary(secondary) => {
                let due = secondary.session.is_none()
                    && secondary
                        .follow_sent
                        .is_none_or(|sent| now.saturating_since(sent) >= config.follow_retry);
                if due {
                    secondary.follow_sent = Some(now);
                    self.out.messages.push((
                        secondary.node,
                        DataMessage::Follow {
                            shard: id.shard.clone(),
                            epoch: secondary.epoch,
                            primary: secondary.primary.clone(),
                            standby: id.unit.clone(),
                            have_version: slot.replica.version(),
                            have_epoch: slot.replica.epoch(),
                            full: secondary.want_full || !slot.complete,
                        },
                    ));
                }
            }
            SlotRole::Primary(primary) => {
                for (standby, session) in &mut primary.sessions {
                    if !session.inflight.is_empty()
                        && now.saturating_since(session.last_progress) >= config.resend_after
                    {
                        let first = session.acked_n + 1;
                        Self::resend(
                            session,
                            first,
                            &mut self.out.messages,
                            id,
                            primary.epoch,
                            standby,
                        );
                        session.last_progress = now;
                    }
                    if Self::pump(
                        &config,
                        &slot.replica,
                        &slot.oplog,
                        id,
                        primary.epoch,
                        standby,
                        session,
                        &mut self.out,
                        &mut self.pump_budget,
                    ) {
                        self.pump_deferred.insert(id.clone());
                    }
                }
                // A session whose secondary is further behind than the op log reaches starts
                // over as a full transfer.
                for (standby, session) in &mut primary.sessions {
                    if session.next_op != u64::MAX {
                        continue;
                    }
                    self.next_session += 1;
                    *session = open_session(
                        now,
                        self.next_session,
                        (session.node, session.generation),
                        &slot.replica,
                        None,
                    );
                    let standby_id = ReplicaId {
                        shard: id.shard.clone(),
                        unit: standby.clone(),
                    };
                    announce(
                        &mut self.out,
                        id,
                        &standby_id,
                        primary.epoch,
                        session,
                        &slot.replica,
                        0,
                    );
                    if Self::pump(
                        &config,
                        &slot.replica,
                        &slot.oplog,
                        id,
                        primary.epoch,
                        standby,
                        session,
                        &mut self.out,
                        &mut self.pump_budget,
                    ) {
                        self.pump_deferred.insert(id.clone());
                    }
                }
                // A STANDBY that has no session here and does not follow may hold on to one
                // this primary dropped (when its view saw the STANDBY leave and come back and
                // the STANDBY's own view did not): it would wait for items forever. Tell it.
                primary
                    .orphans
                    .retain(|unit, _| view.standbys.contains_key(unit));
                if !primary.passive && primary.epoch == view.epoch {
                    for (standby, node) in &view.standbys {
                        if primary.sessions.contains_key(standby) || *standby == id.unit {
                            primary.orphans.remove(standby);
                            continue;
                        }
                        let since = primary.orphans.entry(standby.clone()).or_insert(now);
                        if now.saturating_since(*since) >= config.resend_after {
                            *since = now;
                            self.out.messages.push((
                                *node,
                                DataMessage::Stale {
                                    shard: id.shard.clone(),
                                    epoch: primary.epoch,
                                    standby: standby.clone(),
                                },
                            ));
                        }
                    }
                }
                let version = slot.replica.version();
                for session in primary.sessions.values_mut() {
                    if session.lagging && session.acked_version >= version {
                        session.lagging = false;
                    }
                }
                let safe = safe_version(
                    primary,
                    &view,
                    self.claim_logs.get(&id.shard),
                    version,
                    slot.durable,
                );
                // Waiters the wait set has caught up with, while this node holds a lease. Without
                // one, the view may be far behind the committed state: a STANDBY this primary
                // claimed may be committed in sync (and even promoted) though the view does not
                // show it, and it leaves the wait set (lagging, not in the view's in-sync set)
                // while it may lack the write. A lease means the view has caught up with what
                // the leader had recently; until then the answer waits, like deliveries do.
                while leased
                    && primary
                        .waiters
                        .front()
                        .is_some_and(|waiter| waiter.seq <= safe)
                {
                    let waiter = primary.waiters.pop_front().expect("front exists");
                    primary.exposed = primary.exposed.max(waiter.seq);
                    let answer = if waiter.flush {
                        DataReply::Done {
                            version: waiter.seq,
                        }
                    } else {
                        DataReply::Committed {
                            version: waiter.seq,
                        }
                    };
                    self.out
                        .replies
                        .push((waiter.unit, waiter.generation, waiter.request, answer));
                }
                // An async commit also waits while the wait set lags more than half the op
                // log's bytes: a STANDBY further behind than the log reaches would need a
                // whole state transfer (with large values, `async_lag_max` ops are far more).
                let lag_bytes_max = (config.retain_bytes / 2) as u64;
                while primary.lag_waiters.front().is_some_and(|waiter| {
                    waiter.seq.saturating_sub(safe) <= view.async_lag_max
                        && slot
                            .oplog
                            .bytes_between(safe, waiter.seq)
                            .is_some_and(|bytes| bytes <= lag_bytes_max)
                }) {
                    let waiter = primary.lag_waiters.pop_front().expect("front exists");
                    self.out.replies.push((
                        waiter.unit,
                        waiter.generation,
                        waiter.request,
                        DataReply::Committed {
                            version: waiter.seq,
                        },
                    ));
                }
                // A member of the wait set holding a waiter back too long stops counting as
                // verified; the cluster then takes it out of sync and the waiters go on.
                let held_back = !primary.waiters.is_empty() || !primary.lag_waiters.is_empty();
                if held_back {
                    let since = *primary.held_back_since.get_or_insert(now);
                    if now.saturating_since(since) >= config.sync_timeout {
                        for (standby, session) in &mut primary.sessions {
                            if session.in_step() && session.acked_version < version {
                                session.lagging = true;
                                self.out.events.push(DataEvent::Lagging {
                                    standby: ReplicaId {
                                        shard: id.shard.clone(),
                                        unit: standby.clone(),
                                    },
                                    behind: version - session.acked_version,
                                });
                            }
                        }
                        primary.held_back_since = Some(now);
                    }
                } else {
                    primary.held_back_since = None;
                }
                // Stream messages the wait set holds go to the ACTIVE, once it asked for them,
                // while this node holds a lease.
                let Some(generation) = registered else {
                    return;
                };
                if !leased {
                    // The unit fences itself when the lease runs out and drops what reaches it
                    // meanwhile; the round ends here, and the unit asks for the stream again
                    // (`Deliver`) once its lease is valid again. Going on with the old round
                    // instead could hand it a later message while earlier ones were dropped.
                    primary.delivered = None;
                    return;
                }
                if !view.active || primary.epoch != view.epoch {
                    return;
                }
                let consumed = slot.replica.consumed();
                let delivered = match primary.delivered {
                    Some((instance, seq)) if instance == generation => seq.max(consumed),
                    _ => return,
                };
                let outstanding = slot
                    .replica
                    .pending()
                    .take_while(|(seq, _)| *seq <= delivered)
                    .count();
                let mut last = delivered;
                for (seq, message) in slot
                    .replica
                    .pending_after(delivered)
                    .take(config.delivery_window.saturating_sub(outstanding))
                {
                    if seq > safe {
                        break;
                    }
                    self.out.deliveries.push((
                        id.unit.clone(),
                        generation,
                        Delivery::Message {
                            shard: id.shard.clone(),
                            epoch: primary.epoch,
                            seq,
                            message: message.clone(),
                        },
                    ));
                    last = seq;
                }
                primary.delivered = Some((generation, last));
                primary.exposed = primary.exposed.max(last);
            }
        }
    }

    /// Sends what a session's window allows: unsent ops first, then the next transfer chunk,
    /// then (when nothing else is left) the digest to verify.
    #[allow(clippy::too_many_arguments)] // The pieces of one replica, borrowed apart.
    fn pump(
        config: &DataConfig,
        replica: &ShardReplica,
        oplog: &OpLog,
        id: &ReplicaId,
        epoch: u64,
        standby: &UnitName,
        session: &mut Session,
        out: &mut DataOutput,
        budget: &mut usize,
    ) -> bool {
        let mut batch: Vec<Item> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut held_back = false;
        let mut first = session.next_n;
        let (node, session_id) = (session.node, session.id);
        let flush = |batch: &mut Vec<Item>, first: u64, out: &mut DataOutput| {
            if batch.is_empty() {
                return;
            }
            out.messages.push((
                node,
                DataMessage::Items {
                    shard: id.shard.clone(),
                    epoch,
                    standby: standby.clone(),
                    session: session_id,
                    first,
                    items: std::mem::take(batch),
                },
            ));
        };
        while session.inflight_bytes < config.window_bytes {
            if *budget == 0 {
                held_back = true;
                break;
            }
            let item = if session.next_op <= replica.version() {
                match oplog.get(session.next_op) {
                    Some(op) => {
                        session.next_op += 1;
                        Item::Op(op.clone())
                    }
                    None => {
                        // The secondary is further behind than the op log reaches: drop the
                        // session; its next follow gets a full transfer.
                        session.next_op = u64::MAX;
                        break;
                    }
                }
            } else if let Some(transfer) = &mut session.transfer {
                if transfer.position < transfer.order.len() {
                    let mut sections = Vec::new();
                    let mut bytes = 0usize;
                    while transfer.position < transfer.order.len() && bytes < config.chunk_bytes {
                        let key = &transfer.order[transfer.position];
                        transfer.position += 1;
                        if let Some(section) = replica.get(key) {
                            bytes += key.len() + section.value.len();
                            sections.push((key.clone(), section.clone()));
                        }
                    }
                    transfer.status.sections_sent = transfer.position as u64;
                    transfer.status.bytes_sent += bytes as u64;
                    Item::Sections(sections)
                } else if !transfer.messages_done {
                    transfer.messages_done = true;
                    let messages: Vec<(u64, StreamMessage)> = replica
                        .pending()
                        .map(|(seq, message)| (seq, message.clone()))
                        .collect();
                    if messages.is_empty() {
                        continue;
                    }
                    Item::Messages(messages)
                } else if !session.verify_sent {
                    session.verify_sent = true;
                    Item::Verify {
                        version: replica.version(),
                        digest: replica.digest(),
                    }
                } else {
                    break;
                }
            } else if !session.verify_sent {
                session.verify_sent = true;
                Item::Verify {
                    version: replica.version(),
                    digest: replica.digest(),
                }
            } else {
                break;
            };
            let size = item.size();
            if batch.is_empty() {
                first = session.next_n;
            }
            session.inflight.push_back((session.next_n, item.clone()));
            session.inflight_bytes += size;
            session.next_n += 1;
            *budget = budget.saturating_sub(size.max(1));
            batch.push(item);
            batch_bytes += size;
            if batch_bytes >= config.batch_bytes {
                flush(&mut batch, first, out);
                batch_bytes = 0;
            }
        }
        flush(&mut batch, first, out);
        held_back
    }
}

#[cfg(test)]
mod tests;
