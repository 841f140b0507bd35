//! A node's data plane: every replica the node keeps, the replication sessions between them,
//! sync waits and stream delivery. Sans-IO: inputs with `now`, outputs drained with
//! [`DataPlane::take_output`].
//!
//! This module holds the public types and [`DataPlane`] itself: its state, the view and role
//! changes, and the entry points, which route each input to the part that owns it:
//! - `primary`: a shard's primary: commit intake and merging, the op log, wait sets and
//!   waiters, `safe_version`.
//! - `session`: a primary's replication session with one STANDBY (delta, full transfer,
//!   verification, lag); the session's transitions are its own methods.
//! - `secondary`: a STANDBY's replica following its primary (`Start`, `Items`, `Stale`).
//! - `stream`: stream messages accepted, forwarded, held and released, and delivery rounds.
//! - `claims`: in-sync claims and the caches behind `take_claims_change` and
//!   `awaits_local_durability`.
//! - `view`: [`DataView`] and [`ShardView`], the committed facts the plane acts on.
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

use super::protocol::{DataMessage, DataReply, DataRequest, Delivery, RefusalCode};
use super::replica::{ReplicaSnapshot, Section, ShardReplica};
use super::{Op, StreamMessage};

mod claims;
mod primary;
mod secondary;
mod session;
mod stream;
mod view;

pub use view::{DataView, ShardView};

use claims::ClaimLog;
use primary::{safe_version, CommitRequest, OpLog, Primary};
use secondary::Secondary;
use session::Sending;

/// Busy replicas a tick looks at at most (in turn): time-driven work (follow retries,
/// resends, lag watches) waits at most `busy replicas / TICK_REPLICAS_MAX` ticks, and a tick
/// costs the same whether the node holds a hundred busy replicas or ten thousand.
pub const TICK_REPLICAS_MAX: usize = 256;

/// Every replica, busy or quiet, is looked at at least once in this many ticks (a sweep in
/// turn, `replicas / SWEEP_TICKS` a tick; 10 s at the default 10 ms tick): a quiet replica
/// has no timer running, and the sweep is the backstop should one have been missed. At 1,250
/// replicas a node (10,000 shards on 16 nodes) a sweep every second was a tenth of an idle
/// daemon's CPU.
pub const SWEEP_TICKS: usize = 1000;

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

impl PersistAction {
    /// The replica version its file's records reach once this is written, when it sets one
    /// (an op, or a reset to a snapshot).
    pub fn version(&self) -> Option<u64> {
        match self {
            PersistAction::Op(op) => Some(op.seq),
            PersistAction::Reset(snapshot) => Some(snapshot.version),
            PersistAction::Sections(_)
            | PersistAction::Messages(_)
            | PersistAction::Complete
            | PersistAction::Incomplete
            | PersistAction::Remove
            | PersistAction::Stamp(_) => None,
        }
    }
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

/// Why an inbound stream message was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAccepted {
    /// The message is over a limit.
    #[error("{0}")]
    Invalid(String),
    /// No shard of that name has a stream.
    #[error("there is no shard {0} with a stream")]
    NoShard(ShardName),
    /// No ACTIVE takes the shard's messages and the plane holds as many as it may.
    #[error("shard {shard} has no ACTIVE taking messages and {held} are held already")]
    TooManyHeld {
        /// The shard.
        shard: ShardName,
        /// Messages held.
        held: usize,
    },
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
    /// Whether nothing here waits on a timer: a secondary with a session, a primary whose
    /// sessions have nothing unacknowledged, that has no waiters, no orphans, no commit held
    /// back and no stream message left to deliver. Events (a commit, an acknowledgement, a
    /// new view, a unit's request) make a quiet replica busy again; the sweep looks at it
    /// anyway now and then.
    fn quiet(&self) -> bool {
        match &self.role {
            SlotRole::Idle => true,
            SlotRole::Secondary(secondary) => secondary.session.is_some(),
            SlotRole::Primary(primary) => {
                primary.waiters.is_empty()
                    && primary.lag_waiters.is_empty()
                    && primary.orphans.is_empty()
                    && primary.held_back_since.is_none()
                    && primary.sessions.values().all(session::Session::quiet)
                    && primary
                        .delivered
                        .is_none_or(|(_, seq)| self.replica.pending_after(seq).next().is_none())
            }
        }
    }

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
    /// Replicas with time-driven work (see [`Slot::quiet`]): a tick looks at them in turn,
    /// [`TICK_REPLICAS_MAX`] at most; an idle node looks at almost nothing.
    busy: BTreeSet<ReplicaId>,
    /// Where the next tick's slice of busy replicas begins.
    busy_from: Option<ReplicaId>,
    /// Where the next tick's slice of the sweep over every replica begins (see
    /// [`SWEEP_TICKS`]).
    sweep_from: Option<ReplicaId>,
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
    /// Shards whose entry in `claim_cache` changed since the claims were last taken.
    claims_changed: BTreeSet<ShardName>,
    /// The primaries here whose commits may wait for the local disk, as last refreshed.
    awaiting_disk: BTreeSet<ReplicaId>,
    out: DataOutput,
}

fn error(code: RefusalCode, message: impl Into<String>) -> DataReply {
    DataReply::Error {
        code,
        message: message.into(),
    }
}

/// Sections of `replica` from key `start` on, about `bytes_max` bytes of them (at least one),
/// and the key to go on from.
fn scan(replica: &ShardReplica, start: &[u8], bytes_max: u64) -> DataReply {
    let mut sections = Vec::new();
    let mut bytes = 0u64;
    let mut next = None;
    for (key, section) in replica.range_from(start) {
        if !sections.is_empty() && bytes >= bytes_max {
            next = Some(key.clone());
            break;
        }
        bytes += (key.len() + section.value.len()) as u64;
        sections.push((key.clone(), section.clone()));
    }
    DataReply::Sections { sections, next }
}

/// The position of the replica in `slot`, with how many STANDBYs it counts in sync (a
/// primary) or whether it is verified (a secondary).
fn position(slot: &Slot) -> DataReply {
    let in_sync = match &slot.role {
        SlotRole::Primary(primary) => primary
            .sessions
            .values()
            .filter(|session| session.in_step())
            .count() as u64,
        SlotRole::Secondary(secondary) => u64::from(secondary.verified),
        SlotRole::Idle => 0,
    };
    DataReply::Position {
        version: slot.replica.version(),
        consumed: slot.replica.consumed(),
        digest: slot.replica.digest(),
        sections: slot.replica.section_count() as u64,
        in_sync,
    }
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
            busy: BTreeSet::new(),
            busy_from: None,
            sweep_from: None,
            next_forward: incarnation << 32,
            epochs_at_start: None,
            forwards_seen: BTreeMap::new(),
            dirty: BTreeSet::new(),
            claim_logs: BTreeMap::new(),
            claim_cache: BTreeMap::new(),
            claims_changed: BTreeSet::new(),
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
                    .map(|(unit, session)| {
                        (
                            unit.as_str(),
                            session.acked_version(),
                            session.is_verified(),
                        )
                    })
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
                    secondary.follow_again();
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

    /// The committed facts changed (or the node caught up): a whole new view.
    pub fn set_view(&mut self, now: Time, view: DataView) {
        if self.epochs_at_start.is_none() {
            self.epochs_at_start = Some(
                view.shards
                    .iter()
                    .map(|(shard, view)| (shard.clone(), view.epoch))
                    .collect(),
            );
        }
        let shards: BTreeSet<ShardName> = view
            .shards
            .keys()
            .chain(self.view.shards.keys())
            .cloned()
            .collect();
        self.view = view;
        self.view_changed(now, &shards);
    }

    /// The committed facts of some shards changed (see [`DataView::changes`]): `changed`
    /// holds their new views (`None`: gone). Costs those shards' replicas, not the node's.
    pub fn update_view(&mut self, now: Time, changed: BTreeMap<ShardName, Option<ShardView>>) {
        if self.epochs_at_start.is_none() {
            // Never had a view: this is the first one.
            let mut view = self.view.clone();
            for (shard, shard_view) in changed {
                match shard_view {
                    Some(shard_view) => view.shards.insert(shard, shard_view),
                    None => view.shards.remove(&shard),
                };
            }
            self.set_view(now, view);
            return;
        }
        let shards: BTreeSet<ShardName> = changed.keys().cloned().collect();
        for (shard, shard_view) in changed {
            match shard_view {
                Some(shard_view) => self.view.shards.insert(shard, shard_view),
                None => self.view.shards.remove(&shard),
            };
        }
        self.view_changed(now, &shards);
    }

    /// Replicas of `shards` follow the view: created, removed, or given their new role.
    fn view_changed(&mut self, now: Time, shards: &BTreeSet<ShardName>) {
        let wanted: BTreeSet<ReplicaId> = shards
            .iter()
            .filter_map(|shard| Some((shard, self.view.shards.get(shard)?)))
            .flat_map(|(shard, view)| {
                view.local_units.iter().map(|unit| ReplicaId {
                    shard: shard.clone(),
                    unit: unit.clone(),
                })
            })
            .collect();
        let gone: Vec<ReplicaId> = shards
            .iter()
            .flat_map(|shard| {
                let from = ReplicaId {
                    shard: shard.clone(),
                    unit: UnitName::default(),
                };
                self.slots
                    .range(from..)
                    .take_while(move |(id, _)| &id.shard == shard)
                    .map(|(id, _)| id)
            })
            .filter(|id| !wanted.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.awaiting_disk.remove(&id);
            if self.claim_cache.remove(&id).is_some() {
                self.claims_changed.insert(id.shard.clone());
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
        if !self.slots.contains_key(id) {
            return;
        }
        let is_primary = view
            .primary
            .as_ref()
            .is_some_and(|(unit, node)| *unit == id.unit && *node == self.node);
        if is_primary {
            self.be_primary(id, &view);
        } else {
            self.follow_or_idle(id, &view);
        }
        let _ = now;
    }

    /// Replica `id` is the shard's primary in `view`: at the same epoch it keeps the sessions
    /// whose STANDBY is still there; else it becomes a new primary (passive if it cannot be
    /// what the cluster takes it for), and the old role's waiters are answered.
    fn be_primary(&mut self, id: &ReplicaId, view: &ShardView) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        match &mut slot.role {
            SlotRole::Primary(primary) if primary.epoch == view.epoch => {
                // A session lasts while its STANDBY does: the same unit on the same node,
                // as the same instance. A new instance means the cluster handled a fault of
                // the unit and took its role (the view may never have shown it without):
                // its daemon may have restarted, and the replica the session verified
                // may be gone; kept, the session would have the STANDBY claimed in sync
                // again on the strength of it.
                primary.sessions.retain(|unit, session| {
                    view.standbys.get(unit) == Some(&session.node())
                        && view.standby_generations.get(unit).copied().unwrap_or(0)
                            == session.generation()
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
                slot.role = SlotRole::Primary(Primary::new(view.epoch, passive));
                self.fail_waiters(
                    id,
                    old,
                    RefusalCode::EpochChanged,
                    "the shard got a new ACTIVE epoch; commit again if still ACTIVE",
                );
            }
        }
    }

    /// Replica `id` is not the shard's primary in `view`: it follows the primary if its unit
    /// is a STANDBY, else it is idle; the old role's waiters are answered.
    fn follow_or_idle(&mut self, id: &ReplicaId, view: &ShardView) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
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
                        SlotRole::Secondary(Secondary::new(view.epoch, primary, node)),
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

    /// The answer to a unit's request now, or `None` when it comes later (a waiter).
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
            } => Some(scan(&slot.replica, &start, bytes_max)),
            DataRequest::Subscribe { on, .. } => {
                slot.subscriber = on.then_some(generation);
                Some(DataReply::Done {
                    version: slot.replica.version(),
                })
            }
            DataRequest::Position { .. } => Some(position(slot)),
            DataRequest::Deliver { epoch, .. } => self.start_delivery(id, generation, epoch),
            DataRequest::Flush { .. } => self.flush(id, generation, request_id),
            DataRequest::Commit {
                epoch,
                writes,
                consumed,
                sync,
                chain,
                ..
            } => self.commit(
                leased,
                id,
                generation,
                request_id,
                CommitRequest {
                    epoch,
                    writes,
                    consumed,
                    sync,
                    chain,
                },
            ),
        }
    }

    /// Whether this node holds a lease at `now`.
    fn has_lease(&self, now: Time) -> bool {
        self.lease_until.is_some_and(|until| now < until)
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
            } => self.on_nack(now, from, &shard, epoch, &standby, session, expected),
            DataMessage::Stale {
                shard,
                epoch,
                standby,
            } => self.on_stale(
                from,
                ReplicaId {
                    shard,
                    unit: standby,
                },
                epoch,
            ),
            DataMessage::Forward {
                shard,
                message,
                hops,
                id,
            } => self.on_forward(now, from, shard, message, (hops, id)),
        }
    }

    /// Time passes: resends, follows, lag checks, for the busy replicas and a slice of the
    /// sweep over all of them.
    pub fn tick(&mut self, now: Time) {
        let deferred = std::mem::take(&mut self.pump_deferred);
        self.dirty.extend(deferred);
        let busy = crate::turn::set_in_turn(&self.busy, &mut self.busy_from, TICK_REPLICAS_MAX);
        self.dirty.extend(busy);
        let sweep = self
            .slots
            .len()
            .div_ceil(SWEEP_TICKS)
            .min(TICK_REPLICAS_MAX);
        let swept = crate::turn::keys_in_turn(&self.slots, &mut self.sweep_from, sweep);
        self.dirty.extend(swept);
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
            let busy = self
                .slots
                .get(&id)
                .is_some_and(|slot| !slot.quiet() || self.pump_deferred.contains(&id));
            if busy {
                self.busy.insert(id);
            } else {
                self.busy.remove(&id);
            }
        }
        let mut out = std::mem::take(&mut self.out);
        // Each file's stamp after its records: what they make is the replica as it is now.
        let written: BTreeSet<&ReplicaId> = out.persist.iter().map(|(id, _)| id).collect();
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

    /// Moves replica `id` on: a secondary follows if it has to; a primary sends what its
    /// sessions have to send, tells orphaned STANDBYs, answers the waiters its wait set
    /// caught up with, watches for lagging STANDBYs and delivers stream messages.
    fn progress(&mut self, now: Time, id: &ReplicaId) {
        let registered = self.units.get(&id.unit).copied();
        let leased = self.has_lease(now);
        let Some(view) = self.view.shards.get(&id.shard) else {
            return;
        };
        let config = &self.config;
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let primary = match &mut slot.role {
            SlotRole::Idle => return,
            SlotRole::Secondary(secondary) => {
                secondary.follow_if_due(
                    now,
                    config.follow_retry,
                    id,
                    (slot.replica.version(), slot.replica.epoch()),
                    slot.complete,
                    &mut self.out.messages,
                );
                return;
            }
            SlotRole::Primary(primary) => primary,
        };
        let mut sending = Sending {
            config,
            replica: &slot.replica,
            oplog: &slot.oplog,
            id,
            out: &mut self.out,
            budget: &mut self.pump_budget,
        };
        let mut held_back = primary.send_sessions(now, &mut sending);
        held_back |= primary.restart_lost_sessions(now, &mut self.next_session, &mut sending);
        if held_back {
            self.pump_deferred.insert(id.clone());
        }
        primary.tell_orphans(now, view, id, config.resend_after, &mut self.out.messages);
        let version = slot.replica.version();
        primary.end_lagging(version);
        let safe = safe_version(
            primary,
            view,
            self.claim_logs.get(&id.shard),
            version,
            slot.durable,
        );
        primary.answer_waiters(safe, leased, &mut self.out.replies);
        primary.answer_lag_waiters(
            safe,
            view.async_lag_max,
            &slot.oplog,
            (config.retain_bytes / 2) as u64,
            &mut self.out.replies,
        );
        primary.watch_held_back(now, config.sync_timeout, version, id, &mut self.out.events);
        primary.deliver(
            registered,
            leased,
            view,
            &slot.replica,
            id,
            (safe, config.delivery_window),
            &mut self.out.deliveries,
        );
    }
}

#[cfg(test)]
mod tests;
