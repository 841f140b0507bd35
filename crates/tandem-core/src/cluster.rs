//! The replicated cluster model and the commands that change it.
//!
//! Every node applies the same committed commands in the same order, so every node holds the
//! same `ClusterState` at the same applied index. `apply` is deterministic and checks each
//! command against the state it finds (a command proposed on a stale view is refused, never
//! half-applied), so the safety of an assignment never depends on who proposed it or when.
//!
//! Assignment invariants kept by `apply`:
//! - a shard of a single-ACTIVE model (2n, n+m, none) has at most one unit that is ACTIVE or
//!   QUIESCING;
//! - a unit holds roles only for shards of its own service;
//! - a shard's `epoch` grows whenever a unit becomes ACTIVE for it, and its `version` grows
//!   with every change of its roles, so agents and the director can tell stale views apart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::ids::{NodeId, ServiceName, ShardName, UnitName};
use crate::ladder::{FaultKind, FaultRecord, Ladder, RecoveryAction};
use crate::table::{Indexer, RecordDigest, Table};
use crate::topology::{RedundancyModel, ServiceSpec, Topology};

/// AMF administrative state of a unit or a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub enum AdminState {
    /// In service.
    #[default]
    Unlocked,
    /// Out of service: holds no assignments, but its process runs.
    Locked,
    /// Locked, and its process is not run either.
    LockedInstantiation,
    /// Giving its assignments away gracefully; becomes `Locked` when it holds none.
    ShuttingDown,
}

impl AdminState {
    /// Lower-case name for status.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unlocked => "unlocked",
            Self::Locked => "locked",
            Self::LockedInstantiation => "locked-instantiation",
            Self::ShuttingDown => "shutting-down",
        }
    }
}

/// A unit's HA state for one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Does the shard's work.
    Active,
    /// Ready to take over.
    Standby,
    /// Finishing in-flight work, taking no new work; becomes QUIESCED.
    Quiescing,
    /// Does no work for the shard.
    Quiesced,
}

impl Role {
    /// Upper-case name, as AMF writes HA states.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Standby => "STANDBY",
            Self::Quiescing => "QUIESCING",
            Self::Quiesced => "QUIESCED",
        }
    }

    /// Whether a unit in this role may be doing the shard's work (ACTIVE, or QUIESCING while
    /// it finishes).
    pub fn is_acting(self) -> bool {
        matches!(self, Self::Active | Self::Quiescing)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the cluster agreed about one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeRecord {
    /// The node's id.
    pub id: NodeId,
    /// The leader's committed verdict: true while the node sends heartbeats within the timeout.
    pub up: bool,
    /// Raft index of the entry that last changed `up` (0: never changed since bootstrap).
    pub changed_at_index: u64,
    /// Administrative state (applies to every unit on the node).
    pub admin: AdminState,
    /// Bumped by an L3 node restart: the node's agent runs the node-restart command once per
    /// value.
    pub restart_generation: u64,
}

/// A fault's identity: the unit instance (generation) and a per-instance sequence number, so a
/// fault reported again (it is repeated until committed) is applied once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct FaultId {
    /// The instance's generation.
    pub generation: u64,
    /// The agent's number for this fault within the instance (from 1).
    pub seq: u64,
}

/// What the cluster agreed about one unit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnitRecord {
    /// Its name.
    pub name: UnitName,
    /// Its service.
    pub service: ServiceName,
    /// The node it runs on now (its configured node unless relocated).
    pub node: NodeId,
    /// Administrative state.
    pub admin: AdminState,
    /// Operational state: false once the ladder gave up, until `repair`.
    pub enabled: bool,
    /// The instance the agent should run; a new value means "restart".
    pub generation: u64,
    /// An admin or L3 restart waits for the unit's assignments to be handed over first.
    pub restart_pending: bool,
    /// The next start rebuilds the unit's local replica (L2).
    pub reinitialise: bool,
    /// Bumped by an L0 recovery: the agent calls the unit's `reset` hook once per value.
    pub reset_requests: u64,
    /// The newest fault its agent reported that was applied, so a repeated report is not
    /// counted twice (a node loss takes no number: see `set_liveness`).
    pub fault_seen: FaultId,
    /// Restart escalation counters.
    pub ladder: Ladder,
}

/// A planned move of a shard's ACTIVE away from a unit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Handover {
    /// The unit giving the ACTIVE up (QUIESCING or QUIESCED while the handover runs).
    pub from: UnitName,
    /// The unit taking it (holds STANDBY meanwhile), if there is one.
    pub to: Option<UnitName>,
    /// Why.
    pub reason: HandoverReason,
}

/// Why a handover runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandoverReason {
    /// An operator's switchover.
    Switchover,
    /// The unit or its node was locked (no grace) or shut down (graceful).
    OutOfService,
    /// The unit is about to restart (admin restart, L3 node restart).
    Restart,
}

impl HandoverReason {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Switchover => "switchover",
            Self::OutOfService => "out-of-service",
            Self::Restart => "restart",
        }
    }
}

/// What the cluster agreed about one shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardRecord {
    /// Its name.
    pub name: ShardName,
    /// Its service.
    pub service: ServiceName,
    /// Grows whenever a unit becomes ACTIVE for the shard; fences stale actors.
    pub epoch: u64,
    /// Grows with every change of the roles; agents confirm roles at a version.
    pub version: u64,
    /// Every unit holding a role for the shard.
    pub roles: BTreeMap<UnitName, Role>,
    /// A handover in progress.
    pub handover: Option<Handover>,
    /// STANDBYs recorded as in sync with the ACTIVE at this epoch: each holds every write the
    /// ACTIVE acknowledged as sync. Cleared when the epoch changes; a unit leaves it when it
    /// stops being STANDBY.
    pub in_sync: BTreeSet<UnitName>,
    /// The unit that became ACTIVE at the current epoch (the holder of the newest replica),
    /// while its replica can be trusted to hold everything it acknowledged.
    pub last_active: Option<UnitName>,
    /// The ACTIVE's replica may hold acknowledged sync writes that are not on its own disk, so
    /// it does not survive a crash of its node: a STANDBY was in sync at some point of this
    /// epoch (the ACTIVE acknowledged sync writes without waiting for its own disk), or the
    /// ACTIVE continued from such a replica when the epoch began (a STANDBY promoted from in
    /// sync: the previous ACTIVE acknowledged once it had applied the writes, in memory; or
    /// the previous epoch's ACTIVE again, while this was set).
    pub synced_this_epoch: bool,
    /// The sequence number of the primary's in-sync claim last applied at this epoch (0: none
    /// yet): a `SetInSync` with a claim not above it is refused.
    pub in_sync_claim: u64,
    /// Processing restriction: the ACTIVE admits this many new sessions per thousand
    /// (`None`: no restriction).
    pub admitted_permille: Option<u32>,
}

impl ShardRecord {
    /// A shard of `service` nobody holds a role for yet.
    pub fn new(name: ShardName, service: ServiceName) -> Self {
        Self {
            name,
            service,
            epoch: 0,
            version: 0,
            roles: BTreeMap::new(),
            handover: None,
            in_sync: BTreeSet::new(),
            last_active: None,
            synced_this_epoch: false,
            in_sync_claim: 0,
            admitted_permille: None,
        }
    }

    /// `unit` becomes ACTIVE: a new epoch, whose in-sync set starts empty. With a single
    /// ACTIVE, a unit that is neither the previous ACTIVE nor recorded in sync with it may miss
    /// acknowledged writes: that is reported.
    fn begin_epoch(&mut self, unit: &UnitName, single_active: bool, events: &mut Vec<ModelEvent>) {
        let promoted_in_sync = self.in_sync.contains(unit);
        let same_active = self.last_active.as_ref() == Some(unit);
        let continuous = same_active || promoted_in_sync;
        // What the new ACTIVE continues from may be in memory only: an in-sync STANDBY
        // acknowledged writes once it applied them, before its disk had them; the previous
        // ACTIVE may not have waited for its disk. A crash of its node before the disk caught
        // up loses them, which `strip_unit` must know to report.
        let memory_only = promoted_in_sync || (same_active && self.synced_this_epoch);
        self.epoch += 1;
        if single_active && self.epoch > 1 && !continuous {
            events.push(ModelEvent::PossibleLoss {
                shard: self.name.clone(),
                unit: unit.clone(),
                epoch: self.epoch,
            });
        }
        self.last_active = Some(unit.clone());
        self.in_sync.clear();
        self.in_sync_claim = 0;
        self.synced_this_epoch = memory_only;
    }

    /// Units holding `role`.
    pub fn units_in(&self, role: Role) -> impl Iterator<Item = &UnitName> + '_ {
        self.roles
            .iter()
            .filter(move |(_, held)| **held == role)
            .map(|(unit, _)| unit)
    }

    /// Units that may be doing the shard's work (ACTIVE or QUIESCING).
    pub fn acting(&self) -> impl Iterator<Item = &UnitName> + '_ {
        self.roles
            .iter()
            .filter(|(_, role)| role.is_acting())
            .map(|(unit, _)| unit)
    }
}

/// The target of an administrative operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTarget {
    /// One unit.
    Unit(UnitName),
    /// A node and every unit on it.
    Node(NodeId),
}

impl fmt::Display for AdminTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unit(unit) => write!(f, "unit {unit}"),
            Self::Node(node) => write!(f, "node {node}"),
        }
    }
}

/// An AMF administrative operation on a unit or node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOp {
    /// Take assignments away at once (ACTIVE → QUIESCED, then to the standby).
    Lock,
    /// Put back in service.
    Unlock,
    /// Take assignments away gracefully (ACTIVE → QUIESCING), then lock.
    Shutdown,
    /// Stop the process of a locked unit (or of every unit of a locked node).
    LockInstantiation,
    /// Start it again (stays locked).
    UnlockInstantiation,
    /// Restart the process, after handing its ACTIVE shards over.
    Restart,
    /// Clear a disabled unit (or every unit of a node) and its escalation counters.
    Repair,
}

impl AdminOp {
    /// The operation's CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lock => "lock",
            Self::Unlock => "unlock",
            Self::Shutdown => "shutdown",
            Self::LockInstantiation => "lock-instantiation",
            Self::UnlockInstantiation => "unlock-instantiation",
            Self::Restart => "restart",
            Self::Repair => "repair",
        }
    }
}

/// One change of one unit's role in a `Reassign`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChange {
    /// The unit.
    pub unit: UnitName,
    /// Its new role; `None` removes it from the shard.
    pub role: Option<Role>,
}

/// What a `Reassign` does to the shard's handover.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HandoverUpdate {
    /// Leave it as it is.
    #[default]
    Keep,
    /// Start one.
    Start(Handover),
    /// It is over (finished or given up).
    Clear,
}

/// A command carried by one Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Changes nothing; committing it proves the leader can reach a quorum.
    Noop {
        /// Chosen by the proposer so that two no-ops are distinguishable in the log.
        nonce: u64,
    },
    /// The leader's verdict that a node is up or down. A down verdict also takes every role
    /// away from the node's units (their lease ran out before the verdict, so they no longer
    /// act), promotes the listed STANDBYs and hands each unit that held a role to the ladder as
    /// a node-class fault, all in this one entry: a node seen down never still holds roles, so
    /// no lease granted around the verdict can let its units act on an assignment being moved.
    SetNodeLiveness {
        /// The node concerned.
        node: NodeId,
        /// New verdict.
        up: bool,
        /// The proposing leader's wall clock, ms since the Unix epoch (for the ladder).
        at_ms: u64,
        /// With a down verdict: shards whose STANDBY becomes ACTIVE, (shard, standby unit).
        promotions: Vec<(ShardName, UnitName)>,
    },
    /// Installs the topology from the leader's config, keeping the runtime state of every
    /// unit and shard that is still there.
    SetTopology(Topology),
    /// An administrative operation.
    Admin {
        /// Unit or node.
        target: AdminTarget,
        /// What to do.
        op: AdminOp,
    },
    /// Changes a shard's roles, if its version is still `expected_version`.
    Reassign {
        /// The shard.
        shard: ShardName,
        /// The version the proposer planned from.
        expected_version: u64,
        /// Role changes, applied in order.
        changes: Vec<RoleChange>,
        /// What happens to the shard's handover.
        handover: HandoverUpdate,
    },
    /// A unit failed: its roles are taken away (it can no longer act: it is dead, killed, or
    /// stopped acting before reporting), the listed STANDBYs take over, and the ladder picks a
    /// recovery.
    UnitFault {
        /// The unit.
        unit: UnitName,
        /// Which instance and which of its faults.
        fault: FaultId,
        /// What went wrong.
        kind: FaultKind,
        /// The proposing leader's wall clock, ms since the Unix epoch (for probation windows).
        at_ms: u64,
        /// Shards whose STANDBY becomes ACTIVE in the same step: (shard, standby unit).
        promotions: Vec<(ShardName, UnitName)>,
    },
    /// The ACTIVE's agent verified these STANDBYs' replicas at `epoch` (refused silently,
    /// as unchanged, when the epoch moved on; units that are no longer STANDBY are left out).
    SetInSync {
        /// The shard.
        shard: ShardName,
        /// The epoch the ACTIVE's agent verified at.
        epoch: u64,
        /// The STANDBYs in sync.
        units: BTreeSet<UnitName>,
        /// The primary's claim sequence number at `epoch` ([`crate::report::InSyncClaim::seq`]):
        /// refused, as unchanged, unless it is above the record's `in_sync_claim`, so that a
        /// claim still in flight can never apply after a newer one (the primary stops waiting
        /// for a STANDBY a newer claim dropped once the cluster applied that claim, or a later
        /// one).
        claim: u64,
    },
    /// Processing restriction of a shard's ACTIVE (an operator's `tandemctl restrict`).
    Restrict {
        /// The shard.
        shard: ShardName,
        /// New sessions admitted per thousand; `None` lifts the restriction.
        admitted_permille: Option<u32>,
    },
    /// Several commands in one log entry, each applied on its own in order (a refusal of one
    /// leaves the others be). The director batches a round's decisions so that thousands of
    /// shards cost a few entries. Never nested: a batch inside a batch is refused.
    Batch(Vec<Command>),
    /// A restart that waited for handovers goes ahead: the unit's generation grows.
    RestartUnit {
        /// The unit.
        unit: UnitName,
        /// Its generation when the restart was planned.
        expected_generation: u64,
    },
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The state changed.
    Changed,
    /// The command was valid but changed nothing (a no-op, or a verdict already in force).
    Unchanged,
    /// The command was refused; the state is untouched. Every node refuses it alike.
    Refused(String),
    /// The command would have left a single-ACTIVE shard with two acting units: refused like
    /// [`ApplyOutcome::Refused`], the state untouched, but a bug in whoever proposed it.
    Unsafe(String),
}

impl ApplyOutcome {
    /// Why the command was not applied, if it was not.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            ApplyOutcome::Refused(reason) | ApplyOutcome::Unsafe(reason) => Some(reason),
            ApplyOutcome::Changed | ApplyOutcome::Unchanged => None,
        }
    }
}

/// Something that happened to the model, reported by `apply` (the same on every node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelEvent {
    /// A node's committed liveness changed.
    NodeLiveness {
        /// The node.
        node: NodeId,
        /// New verdict.
        up: bool,
    },
    /// A topology was installed.
    TopologySet {
        /// Services in it.
        services: usize,
        /// Units in it.
        units: usize,
        /// Shards in it.
        shards: usize,
    },
    /// An administrative state changed.
    AdminChanged {
        /// Unit or node.
        target: AdminTarget,
        /// The operation.
        op: AdminOp,
        /// The new state.
        state: AdminState,
    },
    /// A unit's role for a shard changed.
    RoleChanged {
        /// The shard.
        shard: ShardName,
        /// The unit.
        unit: UnitName,
        /// Role before (`None`: none).
        from: Option<Role>,
        /// Role after (`None`: removed).
        to: Option<Role>,
        /// The shard's epoch after the change.
        epoch: u64,
    },
    /// A handover started.
    HandoverStarted {
        /// The shard.
        shard: ShardName,
        /// The handover.
        handover: Handover,
    },
    /// A handover ended.
    HandoverEnded {
        /// The shard.
        shard: ShardName,
        /// The unit that held the ACTIVE.
        from: UnitName,
        /// Whether the ACTIVE moved (`false`: given up, the old ACTIVE kept it or the shard
        /// waits for a new one).
        moved: bool,
    },
    /// A fault was handled.
    UnitFaulted {
        /// The unit.
        unit: UnitName,
        /// What the ladder did.
        record: FaultRecord,
    },
    /// A unit will (re)start as a new instance.
    UnitRestarting {
        /// The unit.
        unit: UnitName,
        /// The new generation.
        generation: u64,
    },
    /// A unit moved to another node.
    UnitRelocated {
        /// The unit.
        unit: UnitName,
        /// Old node.
        from: NodeId,
        /// New node.
        to: NodeId,
    },
    /// A unit became ACTIVE without being recorded in sync with the previous ACTIVE: writes
    /// the previous ACTIVE acknowledged may be missing from its replica.
    PossibleLoss {
        /// The shard.
        shard: ShardName,
        /// The new ACTIVE.
        unit: UnitName,
        /// The new epoch.
        epoch: u64,
    },
    /// The set of in-sync STANDBYs changed.
    InSyncChanged {
        /// The shard.
        shard: ShardName,
        /// The epoch.
        epoch: u64,
        /// The STANDBYs in sync now.
        units: BTreeSet<UnitName>,
    },
    /// A shard's processing restriction changed.
    Restricted {
        /// The shard.
        shard: ShardName,
        /// New sessions admitted per thousand (`None`: unrestricted).
        admitted_permille: Option<u32>,
    },
    /// A unit was disabled or repaired.
    UnitEnabled {
        /// The unit.
        unit: UnitName,
        /// New operational state.
        enabled: bool,
    },
}

impl fmt::Display for ModelEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = |role: &Option<Role>| role.map_or("none", Role::name);
        match self {
            Self::NodeLiveness { node, up } => {
                write!(f, "node {node} is {}", if *up { "up" } else { "down" })
            }
            Self::TopologySet {
                services,
                units,
                shards,
            } => write!(
                f,
                "topology installed: {services} services, {units} units, {shards} shards"
            ),
            Self::AdminChanged { target, op, state } => {
                write!(f, "{} {target}: now {}", op.name(), state.name())
            }
            Self::RoleChanged {
                shard,
                unit,
                from,
                to,
                epoch,
            } => write!(
                f,
                "shard {shard}: unit {unit} {} -> {} (epoch {epoch})",
                role(from),
                role(to)
            ),
            Self::HandoverStarted { shard, handover } => write!(
                f,
                "shard {shard}: {} handover from {} to {}",
                handover.reason.name(),
                handover.from,
                handover.to.as_ref().map_or("none", UnitName::as_str)
            ),
            Self::HandoverEnded { shard, from, moved } => write!(
                f,
                "shard {shard}: handover from {from} {}",
                if *moved { "done" } else { "given up" }
            ),
            Self::UnitFaulted { unit, record } => write!(
                f,
                "unit {unit}: {} -> {} {}",
                record.kind,
                record.level.label(),
                record.action
            ),
            Self::UnitRestarting { unit, generation } => {
                write!(f, "unit {unit}: starting instance {generation}")
            }
            Self::UnitRelocated { unit, from, to } => {
                write!(f, "unit {unit}: relocated from node {from} to node {to}")
            }
            Self::PossibleLoss { shard, unit, epoch } => write!(
                f,
                "shard {shard}: unit {unit} became ACTIVE (epoch {epoch}) without being in sync; \
                 writes acknowledged by the previous ACTIVE may be lost"
            ),
            Self::InSyncChanged {
                shard,
                epoch,
                units,
            } => write!(
                f,
                "shard {shard}: in-sync STANDBYs at epoch {epoch}: {}",
                if units.is_empty() {
                    "none".to_owned()
                } else {
                    units
                        .iter()
                        .map(UnitName::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            Self::Restricted {
                shard,
                admitted_permille,
            } => match admitted_permille {
                Some(permille) => write!(
                    f,
                    "shard {shard}: processing restricted to {}.{}% of new sessions",
                    permille / 10,
                    permille % 10
                ),
                None => write!(f, "shard {shard}: processing restriction lifted"),
            },
            Self::UnitEnabled { unit, enabled } => write!(
                f,
                "unit {unit}: {}",
                if *enabled {
                    "repaired"
                } else {
                    "disabled until repaired"
                }
            ),
        }
    }
}

impl ModelEvent {
    /// A short machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NodeLiveness { .. } => "node-liveness",
            Self::TopologySet { .. } => "topology",
            Self::AdminChanged { .. } => "admin",
            Self::RoleChanged { .. } => "role",
            Self::HandoverStarted { .. } => "handover-started",
            Self::HandoverEnded { .. } => "handover-ended",
            Self::UnitFaulted { .. } => "fault",
            Self::UnitRestarting { .. } => "restart",
            Self::UnitRelocated { .. } => "relocated",
            Self::PossibleLoss { .. } => "possible-loss",
            Self::InSyncChanged { .. } => "in-sync",
            Self::Restricted { .. } => "restricted",
            Self::UnitEnabled { .. } => "operational",
        }
    }
}

/// The replicated cluster model.
///
/// Its tables are [`Table`]s: every command applies in a transaction whose journal keeps the
/// originals of the records it touches, so a refusal undoes exactly those, and the shard table
/// keeps a [`ShardIndex`] of which shards mention each unit. Architecture invariant: applying
/// a command costs in proportion to the records it touches, not to the number of shards
/// (`SetTopology` excepted: it may touch them all).
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Every configured node, by id. Nodes start `up` at bootstrap: the first leader's liveness
    /// tracker gives each one a full timeout to prove itself before it is declared down.
    pub nodes: Table<NodeId, NodeRecord, RecordDigest>,
    /// The committed topology (empty until the first leader installs its config's).
    pub topology: Topology,
    /// Every unit of the topology, by name.
    pub units: Table<UnitName, UnitRecord, RecordDigest>,
    /// Every shard of the topology, by name, indexed by unit.
    pub shards: Table<ShardName, ShardRecord, ShardIndex>,
    /// The topology changed since the last [`ClusterState::take_changes`].
    topology_changed: bool,
    /// Shards whose version moved since the last [`ClusterState::take_changes`].
    roles_changed: BTreeSet<ShardName>,
    /// The topology's hash, worked out once per topology (see `digest`).
    topology_hash: std::cell::Cell<Option<u64>>,
    /// Shards the last committed transaction touched, or `None` when it may have touched
    /// them all (for `check_changed_invariants`).
    last_touched: Option<Vec<ShardName>>,
}

impl PartialEq for ClusterState {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes
            && self.topology == other.topology
            && self.units == other.units
            && self.shards == other.shards
    }
}

impl Eq for ClusterState {}

/// What committed commands changed since the last [`ClusterState::take_changes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Shards whose record changed (or appeared, or went).
    pub shards: BTreeSet<ShardName>,
    /// Units whose record changed.
    pub units: BTreeSet<UnitName>,
    /// Nodes whose record changed.
    pub nodes: BTreeSet<NodeId>,
    /// Shards whose roles changed (their version moved, or they appeared or went): a subset
    /// of `shards`.
    pub roles: BTreeSet<ShardName>,
    /// The topology changed: anything may have.
    pub topology: bool,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
            && self.units.is_empty()
            && self.nodes.is_empty()
            && self.roles.is_empty()
            && !self.topology
    }

    /// Adds `other`.
    pub fn extend(&mut self, other: Changes) {
        self.shards.extend(other.shards);
        self.units.extend(other.units);
        self.nodes.extend(other.nodes);
        self.roles.extend(other.roles);
        self.topology |= other.topology;
    }
}

/// What one unit holds across shards, kept by [`ShardIndex`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitShards {
    /// Shards that name the unit: it holds a role there, is a side of its handover, or is
    /// its `last_active`.
    pub mentioned: BTreeSet<ShardName>,
    /// Shards where it holds ACTIVE or QUIESCING.
    pub acting: usize,
    /// Shards where it holds STANDBY.
    pub standby: usize,
    /// Shards where it holds any role.
    pub roles: usize,
}

/// The shard table's index: for each unit, the shards that name it and its role counts; and
/// the records' digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardIndex {
    /// By unit.
    pub units: BTreeMap<UnitName, UnitShards>,
    /// The digest of every shard record.
    pub digest: RecordDigest,
}

impl ShardIndex {
    /// What `unit` holds (empty when nothing names it).
    pub fn of(&self, unit: &UnitName) -> Option<&UnitShards> {
        self.units.get(unit)
    }

    fn named(record: &ShardRecord) -> BTreeSet<&UnitName> {
        let mut named: BTreeSet<&UnitName> = record.roles.keys().collect();
        if let Some(handover) = &record.handover {
            named.insert(&handover.from);
            named.extend(handover.to.as_ref());
        }
        named.extend(record.last_active.as_ref());
        named
    }
}

impl Indexer<ShardName, ShardRecord> for ShardIndex {
    fn add(&mut self, key: &ShardName, record: &ShardRecord) {
        self.digest.add(key, record);
        for unit in Self::named(record) {
            let entry = self.units.entry(unit.clone()).or_default();
            entry.mentioned.insert(key.clone());
            if let Some(role) = record.roles.get(unit) {
                entry.roles += 1;
                entry.acting += usize::from(role.is_acting());
                entry.standby += usize::from(*role == Role::Standby);
            }
        }
    }

    fn remove(&mut self, key: &ShardName, record: &ShardRecord) {
        self.digest.remove(key, record);
        for unit in Self::named(record) {
            let Some(entry) = self.units.get_mut(unit) else {
                continue;
            };
            entry.mentioned.remove(key);
            if let Some(role) = record.roles.get(unit) {
                entry.roles -= 1;
                entry.acting -= usize::from(role.is_acting());
                entry.standby -= usize::from(*role == Role::Standby);
            }
            if entry.mentioned.is_empty() {
                self.units.remove(unit);
            }
        }
    }
}

fn refused(reason: impl Into<String>) -> ApplyOutcome {
    ApplyOutcome::Refused(reason.into())
}

impl ClusterState {
    /// The initial state of a cluster whose configured nodes are `ids`.
    pub fn bootstrap(ids: impl IntoIterator<Item = NodeId>) -> Self {
        let nodes = ids
            .into_iter()
            .map(|id| {
                (
                    id,
                    NodeRecord {
                        id,
                        up: true,
                        changed_at_index: 0,
                        admin: AdminState::Unlocked,
                        restart_generation: 0,
                    },
                )
            })
            .collect();
        Self {
            nodes,
            ..Self::default()
        }
    }

    /// A state made of these records (a decoded snapshot). Everything counts as changed.
    pub fn from_parts(
        nodes: BTreeMap<NodeId, NodeRecord>,
        topology: Topology,
        units: BTreeMap<UnitName, UnitRecord>,
        shards: BTreeMap<ShardName, ShardRecord>,
    ) -> Self {
        Self {
            nodes: nodes.into(),
            topology,
            units: units.into(),
            shards: shards.into(),
            topology_changed: true,
            roles_changed: BTreeSet::new(),
            topology_hash: Default::default(),
            last_touched: None,
        }
    }

    /// Applies the command committed at `index`. Deterministic: every node gets the same outcome.
    pub fn apply(&mut self, index: u64, command: &Command) -> ApplyOutcome {
        let mut events = Vec::new();
        self.apply_with_events(index, command, &mut events)
    }

    /// Like [`ClusterState::apply`], and reports what happened to `events`. A refused command
    /// reports nothing and changes nothing: every command runs in a transaction (see
    /// [`Table`]) that is rolled back when it is refused.
    pub fn apply_with_events(
        &mut self,
        index: u64,
        command: &Command,
        events: &mut Vec<ModelEvent>,
    ) -> ApplyOutcome {
        if let Command::Batch(commands) = command {
            return self.apply_batch(index, commands, events);
        }
        let whole = matches!(command, Command::SetTopology(_));
        self.transact(whole, events, |state, events| {
            state.apply_command(index, command, events)
        })
    }

    /// Runs `change` in a transaction and keeps what it did only if it was not refused and
    /// leaves no shard with two acting units. `whole`: the change may touch every record (a
    /// new topology: a service's model can change under roles that stay, so every shard is
    /// checked).
    fn transact(
        &mut self,
        whole: bool,
        events: &mut Vec<ModelEvent>,
        change: impl FnOnce(&mut Self, &mut Vec<ModelEvent>) -> ApplyOutcome,
    ) -> ApplyOutcome {
        let topology_before = whole.then(|| self.topology.clone());
        self.nodes.begin();
        self.units.begin();
        self.shards.begin();
        let mut draft_events = Vec::new();
        let mut outcome = change(self, &mut draft_events);
        if outcome.refusal().is_none() {
            self.keep_in_sync_standbys();
            self.keep_continued_replicas();
            let broken = if whole {
                self.check_one_acting(self.shards.keys())
            } else {
                self.check_one_acting(self.shards.touched())
            };
            if let Err(broken) = broken {
                outcome = ApplyOutcome::Unsafe(broken);
            }
        }
        if outcome.refusal().is_some() {
            self.nodes.rollback();
            self.units.rollback();
            self.shards.rollback();
            if let Some(topology) = topology_before {
                self.topology = topology;
                self.topology_hash.set(None);
            }
        } else {
            self.last_touched = (!whole).then(|| self.shards.touched().cloned().collect());
            let moved: Vec<ShardName> = self
                .shards
                .touched()
                .filter(|name| {
                    let before = self.shards.original(name).flatten().map(|r| r.version);
                    before != self.shards.get(*name).map(|record| record.version)
                })
                .cloned()
                .collect();
            self.roles_changed.extend(moved);
            self.nodes.commit();
            self.units.commit();
            self.shards.commit();
            if topology_before.is_some_and(|before| before != self.topology) {
                self.topology_changed = true;
                self.topology_hash.set(None);
            }
            events.extend(draft_events);
        }
        outcome
    }

    /// Applies each command of a batch (see [`Command::Batch`]): `Changed` if any did.
    /// Callers that need each command's outcome apply them one by one, as the Raft replica
    /// does.
    fn apply_batch(
        &mut self,
        index: u64,
        commands: &[Command],
        events: &mut Vec<ModelEvent>,
    ) -> ApplyOutcome {
        if commands
            .iter()
            .any(|command| matches!(command, Command::Batch(_)))
        {
            return refused("a batch inside a batch");
        }
        let mut outcome = ApplyOutcome::Unchanged;
        for command in commands {
            if self.apply_with_events(index, command, events) == ApplyOutcome::Changed {
                outcome = ApplyOutcome::Changed;
            }
        }
        outcome
    }

    /// A digest of the whole state, kept as records change: equal states have equal digests
    /// (the simulation compares every node's state with the committed log's this way).
    /// Costs nothing but a hash of the topology once per topology.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        (
            self.nodes.index().0,
            self.units.index().0,
            self.shards.index().digest.0,
            self.topology_digest(),
        )
            .hash(&mut hasher);
        hasher.finish()
    }

    /// The topology lists every shard: it is hashed once, where it is set.
    fn topology_digest(&self) -> u64 {
        if let Some(digest) = self.topology_hash.get() {
            return digest;
        }
        let digest = RecordDigest::of(&0u8, &self.topology);
        self.topology_hash.set(Some(digest));
        digest
    }

    /// What committed commands changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        Changes {
            shards: self.shards.take_changed(),
            units: self.units.take_changed(),
            nodes: self.nodes.take_changed(),
            roles: std::mem::take(&mut self.roles_changed),
            topology: std::mem::take(&mut self.topology_changed),
        }
    }

    /// Applies `command` inside the open transaction.
    fn apply_command(
        &mut self,
        index: u64,
        command: &Command,
        events: &mut Vec<ModelEvent>,
    ) -> ApplyOutcome {
        match command {
            Command::Noop { .. } => ApplyOutcome::Unchanged,
            Command::Batch(_) => refused("a batch inside a batch"),
            Command::SetNodeLiveness {
                node,
                up,
                at_ms,
                promotions,
            } => match self.nodes.get(node) {
                None => refused(format!("node {node} is not a member")),
                Some(record) if record.up == *up => ApplyOutcome::Unchanged,
                Some(_) => self.set_liveness(index, *node, *up, *at_ms, promotions, events),
            },
            Command::SetTopology(topology) => self.set_topology(topology, events),
            Command::Admin { target, op } => self.admin(target, *op, events),
            Command::Reassign {
                shard,
                expected_version,
                changes,
                handover,
            } => self.reassign(shard, *expected_version, changes, handover, events),
            Command::UnitFault {
                unit,
                fault,
                kind,
                at_ms,
                promotions,
            } => self.unit_fault(unit, *fault, kind, *at_ms, promotions, events),
            Command::SetInSync {
                shard,
                epoch,
                units,
                claim,
            } => match self.shards.get_mut(shard) {
                None => refused(format!("shard {shard} does not exist")),
                Some(record) if record.epoch != *epoch => ApplyOutcome::Unchanged,
                // An older claim, still in flight: the primary has stopped waiting for the
                // STANDBYs a newer one dropped.
                Some(record) if *claim <= record.in_sync_claim => ApplyOutcome::Unchanged,
                Some(mut record) => {
                    let units: BTreeSet<UnitName> = units
                        .iter()
                        .filter(|unit| record.roles.get(*unit) == Some(&Role::Standby))
                        .cloned()
                        .collect();
                    record.in_sync_claim = *claim;
                    if units != record.in_sync {
                        record.in_sync = units.clone();
                        record.synced_this_epoch |= !units.is_empty();
                        events.push(ModelEvent::InSyncChanged {
                            shard: shard.clone(),
                            epoch: *epoch,
                            units,
                        });
                    }
                    ApplyOutcome::Changed
                }
            },
            Command::Restrict {
                shard,
                admitted_permille,
            } => match self.shards.get_mut(shard) {
                None => refused(format!("shard {shard} does not exist")),
                Some(_) if admitted_permille.is_some_and(|permille| permille > 1000) => {
                    refused("a restriction admits at most 1000 per thousand".to_owned())
                }
                Some(record) if record.admitted_permille == *admitted_permille => {
                    ApplyOutcome::Unchanged
                }
                Some(mut record) => {
                    record.admitted_permille = *admitted_permille;
                    events.push(ModelEvent::Restricted {
                        shard: shard.clone(),
                        admitted_permille: *admitted_permille,
                    });
                    ApplyOutcome::Changed
                }
            },
            Command::RestartUnit {
                unit,
                expected_generation,
            } => match self.units.get_mut(unit) {
                None => refused(format!("unit {unit} does not exist")),
                Some(record)
                    if record.generation != *expected_generation || !record.restart_pending =>
                {
                    ApplyOutcome::Unchanged
                }
                Some(mut record) => {
                    record.restart_pending = false;
                    record.generation += 1;
                    record.reinitialise = false;
                    events.push(ModelEvent::UnitRestarting {
                        unit: unit.clone(),
                        generation: record.generation,
                    });
                    ApplyOutcome::Changed
                }
            },
        }
    }

    /// Architecture invariant, checked wherever roles or models change: a shard of a
    /// single-ACTIVE service has at most one acting (ACTIVE or QUIESCING) unit. Checks
    /// `shards`, so a command that changes roles pays for the shards it touched.
    fn check_one_acting<'a>(
        &self,
        shards: impl Iterator<Item = &'a ShardName>,
    ) -> Result<(), String> {
        for shard in shards {
            let Some(record) = self.shards.get(shard) else {
                continue;
            };
            let single = self
                .topology
                .service(&record.service)
                .is_some_and(|service| !service.model.multi_active());
            if single && record.acting().nth(1).is_some() {
                return Err(format!(
                    "the command would leave shard {shard} with several acting units: {:?}",
                    record.roles
                ));
            }
        }
        Ok(())
    }

    /// A unit is in sync only while it holds STANDBY (checked on the shards the open
    /// transaction touched: only a change of a shard's roles can break it).
    fn keep_in_sync_standbys(&mut self) {
        let broken: Vec<ShardName> = self
            .shards
            .touched()
            .filter(|name| {
                self.shards.get(*name).is_some_and(|shard| {
                    shard
                        .in_sync
                        .iter()
                        .any(|unit| shard.roles.get(unit) != Some(&Role::Standby))
                })
            })
            .cloned()
            .collect();
        for name in &broken {
            let mut shard = self.shards.get_mut(name).expect("listed");
            let roles = shard.roles.clone();
            shard
                .in_sync
                .retain(|unit| roles.get(unit) == Some(&Role::Standby));
        }
    }

    /// A unit the cluster continues a shard from (its `last_active`) keeps its replicas: an L2
    /// instance rebuilt them when it started, and a later start of the same instance (its
    /// daemon restarted while the unit held no role, so no fault replaced the instance) must
    /// not empty them again, or writes acknowledged since would be lost with no possible loss
    /// reported. Only the shards and units the open transaction touched can break it.
    fn keep_continued_replicas(&mut self) {
        let mut continued: BTreeSet<UnitName> = self
            .shards
            .touched()
            .filter_map(|name| self.shards.get(name)?.last_active.clone())
            .collect();
        continued.extend(
            self.units
                .touched()
                .filter(|unit| self.is_last_active_anywhere(unit))
                .cloned(),
        );
        for name in &continued {
            if self.units.get(name).is_some_and(|unit| unit.reinitialise) {
                self.units.get_mut(name).expect("checked").reinitialise = false;
            }
        }
    }

    /// Whether `unit` is some shard's `last_active`.
    fn is_last_active_anywhere(&self, unit: &UnitName) -> bool {
        self.shards.index().of(unit).is_some_and(|held| {
            held.mentioned.iter().any(|shard| {
                self.shards
                    .get(shard)
                    .is_some_and(|record| record.last_active.as_ref() == Some(unit))
            })
        })
    }

    /// Shards that name `unit` (see [`UnitShards::mentioned`]).
    pub fn shards_naming<'a>(
        &'a self,
        unit: &UnitName,
    ) -> impl Iterator<Item = &'a ShardRecord> + 'a {
        self.shards
            .index()
            .of(unit)
            .into_iter()
            .flat_map(|held| held.mentioned.iter())
            .filter_map(|shard| self.shards.get(shard))
    }

    /// Whether `node` is a member and currently judged up.
    pub fn is_up(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|record| record.up)
    }

    /// The spec of `unit`'s service.
    pub fn service_of_unit(&self, unit: &UnitName) -> Option<&ServiceSpec> {
        let record = self.units.get(unit)?;
        self.topology.service(&record.service)
    }

    /// Units placed on `node`, by name.
    pub fn units_on(&self, node: NodeId) -> impl Iterator<Item = &UnitRecord> + '_ {
        self.units.values().filter(move |unit| unit.node == node)
    }

    /// Every (shard, role) held by `unit`, by shard name. Costs what the unit holds.
    pub fn roles_of<'a>(
        &'a self,
        unit: &'a UnitName,
    ) -> impl Iterator<Item = (&'a ShardName, Role)> + 'a {
        self.shards_naming(unit)
            .filter_map(move |shard| shard.roles.get(unit).map(|role| (&shard.name, *role)))
    }

    /// Whether the agent should run `unit`'s process: it is enabled and neither it nor its
    /// node is locked for instantiation.
    pub fn should_run(&self, unit: &UnitRecord) -> bool {
        let node_allows = self
            .nodes
            .get(&unit.node)
            .is_some_and(|node| node.admin != AdminState::LockedInstantiation);
        unit.enabled && unit.admin != AdminState::LockedInstantiation && node_allows
    }

    /// Whether `unit` may be given new assignments as far as the committed state tells (the
    /// director also wants its process running and registered): enabled, unlocked, no restart
    /// pending, on an up and unlocked node.
    pub fn in_service(&self, unit: &UnitRecord) -> bool {
        let node_ok = self
            .nodes
            .get(&unit.node)
            .is_some_and(|node| node.up && node.admin == AdminState::Unlocked);
        unit.enabled && unit.admin == AdminState::Unlocked && !unit.restart_pending && node_ok
    }

    /// The admin state that governs `unit`: the more restrictive of its own and its node's.
    pub fn effective_admin(&self, unit: &UnitRecord) -> AdminState {
        let node = self
            .nodes
            .get(&unit.node)
            .map_or(AdminState::Unlocked, |node| node.admin);
        let rank = |state: AdminState| match state {
            AdminState::Unlocked => 0,
            AdminState::ShuttingDown => 1,
            AdminState::Locked => 2,
            AdminState::LockedInstantiation => 3,
        };
        if rank(node) > rank(unit.admin) {
            node
        } else {
            unit.admin
        }
    }

    // ----- topology -----

    fn set_topology(&mut self, topology: &Topology, events: &mut Vec<ModelEvent>) -> ApplyOutcome {
        if *topology == self.topology {
            return ApplyOutcome::Unchanged;
        }
        let members: BTreeSet<NodeId> = self.nodes.keys().copied().collect();
        if let Err(error) = topology.validate(&members) {
            return refused(format!("invalid topology: {error}"));
        }
        // A unit that may be doing a shard's work cannot just vanish: its process would keep
        // acting while the shard is given to another unit.
        let placed: BTreeSet<(&ServiceName, &ShardName)> = topology
            .services
            .iter()
            .flat_map(|service| {
                service
                    .shards
                    .iter()
                    .map(move |shard| (&service.name, shard))
            })
            .collect();
        for shard in self.shards.values() {
            for unit in shard.acting() {
                let kept = topology.service(&shard.service).is_some_and(|service| {
                    service.unit(unit).is_some() && placed.contains(&(&shard.service, &shard.name))
                });
                if !kept {
                    return refused(format!(
                        "the new topology drops unit {unit} or its shard {} while the unit is \
                         ACTIVE for it; lock the unit first (tandemctl lock {unit})",
                        shard.name
                    ));
                }
            }
        }
        let old = std::mem::replace(&mut self.topology, topology.clone());
        let mut units = BTreeMap::new();
        let mut shards = BTreeMap::new();
        for service in &topology.services {
            let old_service = old.service(&service.name);
            for spec in &service.units {
                let kept = self
                    .units
                    .remove(&spec.name)
                    .filter(|record| record.service == service.name);
                let record = match kept {
                    Some(mut record) => {
                        // A node changed in the config moves the unit; otherwise a relocated
                        // unit stays where the ladder put it.
                        let old_node = old_service
                            .and_then(|old| old.unit(&spec.name))
                            .map(|u| u.node);
                        if old_node != Some(spec.node) && record.node != spec.node {
                            record.node = spec.node;
                            record.generation += 1;
                        }
                        record
                    }
                    None => UnitRecord {
                        name: spec.name.clone(),
                        service: service.name.clone(),
                        node: spec.node,
                        admin: AdminState::Unlocked,
                        enabled: true,
                        generation: 1,
                        restart_pending: false,
                        reinitialise: false,
                        reset_requests: 0,
                        fault_seen: FaultId::default(),
                        ladder: Ladder::default(),
                    },
                };
                units.insert(spec.name.clone(), record);
            }
            for name in &service.shards {
                let record = match self.shards.remove(name) {
                    Some(mut record) if record.service == service.name => {
                        let before = record.roles.len();
                        record.roles.retain(|unit, _| service.unit(unit).is_some());
                        if record
                            .handover
                            .as_ref()
                            .is_some_and(|handover| !record.roles.contains_key(&handover.from))
                        {
                            record.handover = None;
                        }
                        if record.roles.len() != before {
                            record.version += 1;
                        }
                        record
                    }
                    _ => ShardRecord::new(name.clone(), service.name.clone()),
                };
                shards.insert(name.clone(), record);
            }
        }
        // Whatever the new topology dropped goes; the rest is (re)placed, journaled.
        let dropped_units: Vec<UnitName> = self.units.keys().cloned().collect();
        for name in dropped_units {
            self.units.remove(&name);
        }
        let dropped_shards: Vec<ShardName> = self.shards.keys().cloned().collect();
        for name in dropped_shards {
            self.shards.remove(&name);
        }
        for (name, record) in units {
            self.units.insert(name, record);
        }
        for (name, record) in shards {
            self.shards.insert(name, record);
        }
        events.push(ModelEvent::TopologySet {
            services: topology.services.len(),
            units: self.units.len(),
            shards: self.shards.len(),
        });
        self.settle_shutdowns(events);
        ApplyOutcome::Changed
    }

    // ----- administrative operations -----

    fn admin(
        &mut self,
        target: &AdminTarget,
        op: AdminOp,
        events: &mut Vec<ModelEvent>,
    ) -> ApplyOutcome {
        let state = match target {
            AdminTarget::Unit(unit) => match self.units.get(unit) {
                Some(record) => record.admin,
                None => return refused(format!("unit {unit} does not exist")),
            },
            AdminTarget::Node(node) => match self.nodes.get(node) {
                Some(record) => record.admin,
                None => return refused(format!("node {node} is not a member")),
            },
        };
        let next = match admin_transition(state, op) {
            Ok(next) => next,
            Err(reason) => return refused(format!("{target}: {reason}")),
        };
        let units: Vec<UnitName> = match target {
            AdminTarget::Unit(unit) => vec![unit.clone()],
            AdminTarget::Node(node) => self.units_on(*node).map(|unit| unit.name.clone()).collect(),
        };
        match op {
            AdminOp::Restart => {
                for unit in &units {
                    let mut record = self.units.get_mut(unit).expect("listed above");
                    if record.enabled && record.admin != AdminState::LockedInstantiation {
                        record.restart_pending = true;
                    }
                }
            }
            AdminOp::Repair => {
                for unit in &units {
                    let mut record = self.units.get_mut(unit).expect("listed above");
                    if !record.enabled {
                        events.push(ModelEvent::UnitEnabled {
                            unit: unit.clone(),
                            enabled: true,
                        });
                    }
                    record.enabled = true;
                    record.ladder = Ladder::default();
                }
            }
            _ => {}
        }
        match target {
            AdminTarget::Unit(unit) => self.units.get_mut(unit).expect("checked").admin = next,
            AdminTarget::Node(node) => self.nodes.get_mut(node).expect("checked").admin = next,
        }
        events.push(ModelEvent::AdminChanged {
            target: target.clone(),
            op,
            state: next,
        });
        self.settle_shutdowns(events);
        ApplyOutcome::Changed
    }

    /// Units and nodes shutting down that hold no assignments any more become locked.
    fn settle_shutdowns(&mut self, events: &mut Vec<ModelEvent>) {
        let holds = |state: &Self, unit: &UnitName| {
            state
                .shards
                .index()
                .of(unit)
                .is_some_and(|held| held.roles > 0)
        };
        let settled: Vec<UnitName> = self
            .units
            .values()
            .filter(|unit| unit.admin == AdminState::ShuttingDown && !holds(self, &unit.name))
            .map(|unit| unit.name.clone())
            .collect();
        for name in settled {
            self.units.get_mut(&name).expect("listed").admin = AdminState::Locked;
            events.push(ModelEvent::AdminChanged {
                target: AdminTarget::Unit(name),
                op: AdminOp::Shutdown,
                state: AdminState::Locked,
            });
        }
        let shutting: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|node| node.admin == AdminState::ShuttingDown)
            .map(|node| node.id)
            .collect();
        for node in shutting {
            if self.units_on(node).any(|unit| holds(self, &unit.name)) {
                continue;
            }
            self.nodes.get_mut(&node).expect("listed").admin = AdminState::Locked;
            events.push(ModelEvent::AdminChanged {
                target: AdminTarget::Node(node),
                op: AdminOp::Shutdown,
                state: AdminState::Locked,
            });
        }
    }

    // ----- assignments -----

    fn reassign(
        &mut self,
        shard_name: &ShardName,
        expected_version: u64,
        changes: &[RoleChange],
        handover: &HandoverUpdate,
        events: &mut Vec<ModelEvent>,
    ) -> ApplyOutcome {
        let Some(shard) = self.shards.get(shard_name) else {
            return refused(format!("shard {shard_name} does not exist"));
        };
        if shard.version != expected_version {
            return refused(format!(
                "shard {shard_name} changed meanwhile (version {} now, {expected_version} planned)",
                shard.version
            ));
        }
        let Some(service) = self.topology.service(&shard.service) else {
            return refused(format!("shard {shard_name} has no service"));
        };
        for change in changes {
            if service.unit(&change.unit).is_none() {
                return refused(format!(
                    "unit {} is not a unit of service {}",
                    change.unit, service.name
                ));
            }
        }
        if let HandoverUpdate::Start(planned) = handover {
            for unit in std::iter::once(&planned.from).chain(planned.to.as_ref()) {
                if service.unit(unit).is_none() {
                    return refused(format!(
                        "unit {unit} is not a unit of service {}",
                        service.name
                    ));
                }
            }
        }
        let model = service.model;
        let unit_count = service.units.len();
        let mut shard = self.shards.get_mut(shard_name).expect("checked");
        let mut changed = false;
        for change in changes {
            let before = shard.roles.get(&change.unit).copied();
            if before == change.role {
                continue;
            }
            match change.role {
                Some(role) => {
                    shard.roles.insert(change.unit.clone(), role);
                }
                None => {
                    shard.roles.remove(&change.unit);
                }
            }
            if change.role == Some(Role::Active) {
                shard.begin_epoch(&change.unit, !model.multi_active(), events);
            }
            changed = true;
            events.push(ModelEvent::RoleChanged {
                shard: shard_name.clone(),
                unit: change.unit.clone(),
                from: before,
                to: change.role,
                epoch: shard.epoch,
            });
        }
        let acting = shard.acting().count();
        if !model.multi_active() && acting > 1 {
            return refused(format!(
                "shard {shard_name} would have {acting} units ACTIVE or QUIESCING (model {model} allows one)"
            ));
        }
        if model.multi_active() && acting > unit_count {
            return refused(format!(
                "shard {shard_name} would have more ACTIVEs than units"
            ));
        }
        match handover {
            HandoverUpdate::Keep => {}
            HandoverUpdate::Start(planned) => {
                if shard.handover.is_some() {
                    return refused(format!("shard {shard_name} already has a handover running"));
                }
                shard.handover = Some(planned.clone());
                changed = true;
                events.push(ModelEvent::HandoverStarted {
                    shard: shard_name.clone(),
                    handover: planned.clone(),
                });
            }
            HandoverUpdate::Clear => {
                if let Some(ended) = shard.handover.take() {
                    let moved = !shard
                        .roles
                        .get(&ended.from)
                        .is_some_and(|role| role.is_acting());
                    changed = true;
                    events.push(ModelEvent::HandoverEnded {
                        shard: shard_name.clone(),
                        from: ended.from,
                        moved,
                    });
                }
            }
        }
        if !changed {
            return ApplyOutcome::Unchanged;
        }
        shard.version += 1;
        drop(shard);
        self.settle_shutdowns(events);
        ApplyOutcome::Changed
    }

    /// The node an L5 relocation of `unit` would go to: an up, unlocked node other than its
    /// own that hosts no unit of the same service, best node rank first (ties: lowest id).
    pub fn relocation_target(&self, unit: &UnitRecord) -> Option<NodeId> {
        let taken: BTreeSet<NodeId> = self
            .units
            .values()
            .filter(|other| other.service == unit.service)
            .map(|other| other.node)
            .collect();
        self.nodes
            .values()
            .filter(|node| node.up && node.admin == AdminState::Unlocked)
            .filter(|node| node.id != unit.node && !taken.contains(&node.id))
            .min_by_key(|node| (self.topology.node_rank(node.id), node.id))
            .map(|node| node.id)
    }

    fn set_liveness(
        &mut self,
        index: u64,
        node: NodeId,
        up: bool,
        at_ms: u64,
        promotions: &[(ShardName, UnitName)],
        events: &mut Vec<ModelEvent>,
    ) -> ApplyOutcome {
        let mut record = self.nodes.get_mut(&node).expect("checked by the caller");
        record.up = up;
        record.changed_at_index = index;
        drop(record);
        events.push(ModelEvent::NodeLiveness { node, up });
        if up {
            return ApplyOutcome::Changed;
        }
        let holding: Vec<UnitName> = self
            .units_on(node)
            .filter(|unit| self.roles_of(&unit.name).next().is_some())
            .map(|unit| unit.name.clone())
            .collect();
        for unit in &holding {
            self.strip_unit(unit, true, events);
        }
        self.promote(promotions, events);
        for unit in &holding {
            // The verdict takes no fault number: the agent numbers its unit's faults itself, so
            // a number taken here could be one the agent gave a fault of its own meanwhile (a
            // unit that reported a fault just before its node was cut off). Marking that
            // number seen would pass the agent's fault for handled while only the node loss
            // was, and a still faulted unit would be given roles again once its node is back.
            self.recover(unit, None, &FaultKind::NodeLost, at_ms, events);
        }
        self.settle_shutdowns(events);
        ApplyOutcome::Changed
    }

    fn unit_fault(
        &mut self,
        unit_name: &UnitName,
        fault: FaultId,
        kind: &FaultKind,
        at_ms: u64,
        promotions: &[(ShardName, UnitName)],
        events: &mut Vec<ModelEvent>,
    ) -> ApplyOutcome {
        let Some(unit) = self.units.get(unit_name) else {
            return refused(format!("unit {unit_name} does not exist"));
        };
        if fault.generation != unit.generation || fault <= unit.fault_seen {
            // A report about an instance already replaced, or a fault already applied.
            return ApplyOutcome::Unchanged;
        }
        if self.topology.service(&unit.service).is_none() {
            return refused(format!("unit {unit_name} has no service"));
        }
        self.strip_unit(unit_name, *kind == FaultKind::AgentRestarted, events);
        self.promote(promotions, events);
        self.recover(unit_name, Some(fault), kind, at_ms, events);
        self.settle_shutdowns(events);
        ApplyOutcome::Changed
    }

    /// Takes every role from `unit_name` and ends the handovers it was part of. With
    /// `memory_lost` (its node's daemon died), its replicas of shards whose ACTIVE did not wait
    /// for its disk can no longer be trusted to continue from.
    fn strip_unit(
        &mut self,
        unit_name: &UnitName,
        memory_lost: bool,
        events: &mut Vec<ModelEvent>,
    ) {
        let held: Vec<ShardName> = self
            .shards_naming(unit_name)
            .filter(|shard| {
                shard.roles.contains_key(unit_name)
                    || shard
                        .handover
                        .as_ref()
                        .is_some_and(|h| h.to.as_ref() == Some(unit_name))
            })
            .map(|shard| shard.name.clone())
            .collect();
        if memory_lost {
            // Every shard continued from this unit's memory, whether or not the unit still holds
            // a role there: an ACTIVE role taken away by an earlier fault (the unit's own,
            // handled after the daemon restarted) leaves it the shard's `last_active`, and
            // giving it ACTIVE again would continue from the memory its daemon lost.
            let continued: Vec<ShardName> = self
                .shards_naming(unit_name)
                .filter(|shard| {
                    shard.synced_this_epoch && shard.last_active.as_ref() == Some(unit_name)
                })
                .map(|shard| shard.name.clone())
                .collect();
            for name in &continued {
                self.shards.get_mut(name).expect("listed").last_active = None;
            }
        }
        for name in &held {
            let mut shard = self.shards.get_mut(name).expect("listed");
            if let Some(before) = shard.roles.remove(unit_name) {
                events.push(ModelEvent::RoleChanged {
                    shard: name.clone(),
                    unit: unit_name.clone(),
                    from: Some(before),
                    to: None,
                    epoch: shard.epoch,
                });
            }
            if shard
                .handover
                .as_ref()
                .is_some_and(|h| &h.from == unit_name)
            {
                let ended = shard.handover.take().expect("checked");
                events.push(ModelEvent::HandoverEnded {
                    shard: name.clone(),
                    from: ended.from,
                    moved: false,
                });
            } else if let Some(handover) = &mut shard.handover {
                if handover.to.as_ref() == Some(unit_name) {
                    handover.to = None;
                }
            }
            shard.version += 1;
        }
    }

    /// STANDBYs take over where the proposer planned it and it is still possible.
    fn promote(&mut self, promotions: &[(ShardName, UnitName)], events: &mut Vec<ModelEvent>) {
        for (shard_name, standby) in promotions {
            let Some(mut shard) = self.shards.get_mut(shard_name) else {
                continue;
            };
            let multi = self
                .topology
                .service(&shard.service)
                .is_some_and(|service| service.model.multi_active());
            if shard.roles.get(standby) != Some(&Role::Standby)
                || (!multi && shard.acting().next().is_some())
            {
                continue;
            }
            shard.roles.insert(standby.clone(), Role::Active);
            shard.begin_epoch(standby, !multi, events);
            shard.version += 1;
            events.push(ModelEvent::RoleChanged {
                shard: shard_name.clone(),
                unit: standby.clone(),
                from: Some(Role::Standby),
                to: Some(Role::Active),
                epoch: shard.epoch,
            });
        }
    }

    /// The ladder chooses the recovery for a fault of `unit_name` and it is recorded; `fault`
    /// is the agent's number for it (`None` for a node loss, which the leader judged).
    fn recover(
        &mut self,
        unit_name: &UnitName,
        fault: Option<FaultId>,
        kind: &FaultKind,
        at_ms: u64,
        events: &mut Vec<ModelEvent>,
    ) {
        let unit = &self.units[unit_name];
        let policy = self
            .topology
            .service(&unit.service)
            .map(|service| service.escalation.clone())
            .unwrap_or_default();
        let relocation = self.relocation_target(unit);
        let node = unit.node;
        let mut unit = self.units.get_mut(unit_name).expect("checked");
        if let Some(fault) = fault {
            unit.fault_seen = fault;
        }
        let record = unit
            .ladder
            .escalate(&policy, kind.clone(), at_ms, relocation);
        drop(unit);
        events.push(ModelEvent::UnitFaulted {
            unit: unit_name.clone(),
            record: record.clone(),
        });
        if matches!(
            record.action,
            RecoveryAction::Reinitialise | RecoveryAction::Relocate { .. }
        ) {
            // The unit's local replicas are rebuilt or left behind: whoever is ACTIVE next is
            // not continuing from them.
            let continued: Vec<ShardName> = self
                .shards_naming(unit_name)
                .filter(|shard| shard.last_active.as_ref() == Some(unit_name))
                .map(|shard| shard.name.clone())
                .collect();
            for name in &continued {
                self.shards.get_mut(name).expect("listed").last_active = None;
            }
        }
        let mut unit = self.units.get_mut(unit_name).expect("checked");
        match record.action {
            RecoveryAction::Reset => unit.reset_requests += 1,
            RecoveryAction::Restart | RecoveryAction::Reinitialise => {
                unit.generation += 1;
                unit.reinitialise = record.action == RecoveryAction::Reinitialise;
                unit.restart_pending = false;
                events.push(ModelEvent::UnitRestarting {
                    unit: unit_name.clone(),
                    generation: unit.generation,
                });
            }
            RecoveryAction::NodeRestart => {
                unit.generation += 1;
                // Only an L2 instance rebuilds its replicas; a later one keeps what it built.
                unit.reinitialise = false;
                unit.restart_pending = false;
                events.push(ModelEvent::UnitRestarting {
                    unit: unit_name.clone(),
                    generation: unit.generation,
                });
                drop(unit);
                let others: Vec<UnitName> = self
                    .units_on(node)
                    .filter(|other| &other.name != unit_name && other.enabled)
                    .map(|other| other.name.clone())
                    .collect();
                for other in &others {
                    self.units.get_mut(other).expect("listed").restart_pending = true;
                }
                if let Some(mut node) = self.nodes.get_mut(&node) {
                    node.restart_generation += 1;
                }
            }
            RecoveryAction::Relocate { to } => {
                unit.node = to;
                unit.generation += 1;
                unit.reinitialise = false;
                unit.restart_pending = false;
                events.push(ModelEvent::UnitRelocated {
                    unit: unit_name.clone(),
                    from: node,
                    to,
                });
                events.push(ModelEvent::UnitRestarting {
                    unit: unit_name.clone(),
                    generation: unit.generation,
                });
            }
            RecoveryAction::AwaitNode => {}
            RecoveryAction::Disable => {
                unit.enabled = false;
                unit.restart_pending = false;
                events.push(ModelEvent::UnitEnabled {
                    unit: unit_name.clone(),
                    enabled: false,
                });
            }
        }
    }

    /// For the simulation, after each command: [`ClusterState::check_invariants`] on the
    /// shards the last committed command touched (on every record after a new topology),
    /// plus the shard index against the records it names.
    pub fn check_changed_invariants(&self) -> Result<(), String> {
        let Some(touched) = &self.last_touched else {
            return self.check_invariants();
        };
        self.check_shards(touched.iter())?;
        for name in touched {
            let Some(shard) = self.shards.get(name) else {
                continue;
            };
            for unit in ShardIndex::named(shard) {
                let indexed = self
                    .shards
                    .index()
                    .of(unit)
                    .is_some_and(|held| held.mentioned.contains(name));
                if !indexed {
                    return Err(format!(
                        "the shard index misses unit {unit} in shard {name}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// For tests and the simulation: every single-ACTIVE shard has at most one acting unit,
    /// and only units of its service hold roles.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_shards(self.shards.keys())?;
        let rebuilt = Table::<ShardName, ShardRecord, ShardIndex>::from(
            self.shards
                .iter()
                .map(|(name, record)| (name.clone(), record.clone()))
                .collect::<BTreeMap<_, _>>(),
        );
        if rebuilt.index() != self.shards.index() {
            return Err("the shard index differs from one rebuilt from the records".into());
        }
        let nodes = Table::<NodeId, NodeRecord, RecordDigest>::from(
            self.nodes
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect::<BTreeMap<_, _>>(),
        );
        let units = Table::<UnitName, UnitRecord, RecordDigest>::from(
            self.units
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        );
        if nodes.index() != self.nodes.index() || units.index() != self.units.index() {
            return Err("a table's digest differs from one rebuilt from its records".into());
        }
        Ok(())
    }

    fn check_shards<'a>(&self, names: impl Iterator<Item = &'a ShardName>) -> Result<(), String> {
        for shard in names.filter_map(|name| self.shards.get(name)) {
            let Some(service) = self.topology.service(&shard.service) else {
                return Err(format!("shard {} has no service", shard.name));
            };
            if !service.model.multi_active() && shard.acting().count() > 1 {
                return Err(format!(
                    "shard {} has several acting units: {:?}",
                    shard.name, shard.roles
                ));
            }
            for unit in shard.roles.keys() {
                if service.unit(unit).is_none() {
                    return Err(format!(
                        "shard {} holds a role for foreign unit {unit}",
                        shard.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The AMF admin state machine: the state `op` leads to from `state`, or why it is refused.
pub fn admin_transition(state: AdminState, op: AdminOp) -> Result<AdminState, String> {
    use AdminState::*;
    match (op, state) {
        (AdminOp::Lock, Unlocked | ShuttingDown) => Ok(Locked),
        (AdminOp::Lock, Locked | LockedInstantiation) => Err("already locked".into()),
        (AdminOp::Unlock, Locked | ShuttingDown) => Ok(Unlocked),
        (AdminOp::Unlock, Unlocked) => Err("already unlocked".into()),
        (AdminOp::Unlock, LockedInstantiation) => {
            Err("locked for instantiation; unlock-instantiation first".into())
        }
        (AdminOp::Shutdown, Unlocked) => Ok(ShuttingDown),
        (AdminOp::Shutdown, ShuttingDown) => Err("already shutting down".into()),
        (AdminOp::Shutdown, Locked | LockedInstantiation) => Err("already locked".into()),
        (AdminOp::LockInstantiation, Locked) => Ok(LockedInstantiation),
        (AdminOp::LockInstantiation, LockedInstantiation) => {
            Err("already locked for instantiation".into())
        }
        (AdminOp::LockInstantiation, Unlocked | ShuttingDown) => {
            Err("still in service; lock it first".into())
        }
        (AdminOp::UnlockInstantiation, LockedInstantiation) => Ok(Locked),
        (AdminOp::UnlockInstantiation, _) => Err("not locked for instantiation".into()),
        (AdminOp::Restart, LockedInstantiation) => {
            Err("locked for instantiation: nothing runs to restart".into())
        }
        (AdminOp::Restart | AdminOp::Repair, state) => Ok(state),
    }
}

/// The role model: for every shard of a service, the units of `model` that a complete
/// assignment has (1 ACTIVE and 1 STANDBY, n ACTIVEs, or 1 ACTIVE).
pub fn wanted_counts(model: RedundancyModel, unit_count: usize) -> (usize, usize) {
    match model {
        RedundancyModel::TwoN | RedundancyModel::NPlusM { .. } => (1, 1),
        RedundancyModel::NWayActive {
            actives_per_shard: 0,
        } => (unit_count, 0),
        RedundancyModel::NWayActive { actives_per_shard } => (actives_per_shard as usize, 0),
        RedundancyModel::NoRedundancy => (1, 0),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ladder::Severity;

    pub(crate) fn two_n_state() -> ClusterState {
        let mut state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let mut service = crate::topology::tests::service(
            "counter",
            RedundancyModel::TwoN,
            &[("a", 1), ("b", 2)],
            &["s0", "s1"],
        );
        service.instantiate.argv = vec!["/bin/counter".into()];
        let topology = Topology {
            services: vec![service],
            ..Topology::default()
        };
        assert_eq!(
            state.apply(1, &Command::SetTopology(topology)),
            ApplyOutcome::Changed
        );
        state
    }

    fn set(shard: &str, version: u64, changes: &[(&str, Option<Role>)]) -> Command {
        Command::Reassign {
            shard: shard.into(),
            expected_version: version,
            changes: changes
                .iter()
                .map(|(unit, role)| RoleChange {
                    unit: (*unit).into(),
                    role: *role,
                })
                .collect(),
            handover: HandoverUpdate::Keep,
        }
    }

    #[test]
    fn liveness_verdicts_apply_once_and_unknown_nodes_are_refused() {
        let mut state = ClusterState::bootstrap([NodeId(1), NodeId(2)]);
        assert!(state.is_up(NodeId(2)));
        let down = Command::SetNodeLiveness {
            node: NodeId(2),
            up: false,
            at_ms: 0,
            promotions: vec![],
        };
        assert_eq!(state.apply(5, &down), ApplyOutcome::Changed);
        assert!(!state.is_up(NodeId(2)));
        assert_eq!(state.nodes[&NodeId(2)].changed_at_index, 5);
        // Re-applying the same verdict is harmless and keeps the original index.
        assert_eq!(state.apply(6, &down), ApplyOutcome::Unchanged);
        assert_eq!(state.nodes[&NodeId(2)].changed_at_index, 5);
        let before = state.clone();
        let unknown = Command::SetNodeLiveness {
            node: NodeId(9),
            up: false,
            at_ms: 0,
            promotions: vec![],
        };
        assert!(matches!(state.apply(7, &unknown), ApplyOutcome::Refused(_)));
        assert_eq!(state, before);
        assert_eq!(
            state.apply(8, &Command::Noop { nonce: 1 }),
            ApplyOutcome::Unchanged
        );
    }

    #[test]
    fn topology_creates_units_and_shards_and_keeps_them_across_reinstall() {
        let mut state = two_n_state();
        assert_eq!(state.units.len(), 2);
        assert_eq!(state.shards.len(), 2);
        assert_eq!(state.units[&UnitName::from("a")].generation, 1);
        assert_eq!(
            state.apply(2, &set("s0", 0, &[("a", Some(Role::Active))])),
            ApplyOutcome::Changed
        );
        // Reinstalling with one more shard keeps s0's roles.
        let mut topology = state.topology.clone();
        topology.services[0].shards.push("s2".into());
        assert_eq!(
            state.apply(3, &Command::SetTopology(topology.clone())),
            ApplyOutcome::Changed
        );
        assert_eq!(state.shards[&ShardName::from("s0")].roles.len(), 1);
        assert_eq!(state.shards.len(), 3);
        // Dropping unit a while it is ACTIVE is refused; once it is only STANDBY, its roles go.
        topology.services[0].units.remove(0);
        topology.services[0].model = RedundancyModel::NoRedundancy;
        assert!(matches!(
            state.apply(4, &Command::SetTopology(topology.clone())),
            ApplyOutcome::Refused(reason) if reason.contains("lock the unit first")
        ));
        assert_eq!(
            state.apply(5, &set("s0", 1, &[("a", Some(Role::Standby))])),
            ApplyOutcome::Changed
        );
        assert_eq!(
            state.apply(6, &Command::SetTopology(topology)),
            ApplyOutcome::Changed
        );
        assert!(state.shards[&ShardName::from("s0")].roles.is_empty());
        assert!(!state.units.contains_key(&UnitName::from("a")));
    }

    #[test]
    fn reassign_checks_version_and_the_one_active_rule_and_bumps_epoch() {
        let mut state = two_n_state();
        assert_eq!(
            state.apply(
                2,
                &set(
                    "s0",
                    0,
                    &[("a", Some(Role::Active)), ("b", Some(Role::Standby))]
                )
            ),
            ApplyOutcome::Changed
        );
        let shard = &state.shards[&ShardName::from("s0")];
        assert_eq!((shard.epoch, shard.version), (1, 1));
        // A stale plan is refused and changes nothing.
        let before = state.clone();
        assert!(matches!(
            state.apply(3, &set("s0", 0, &[("b", None)])),
            ApplyOutcome::Refused(_)
        ));
        assert_eq!(state, before);
        // Two ACTIVEs are refused, atomically.
        assert!(matches!(
            state.apply(3, &set("s0", 1, &[("b", Some(Role::Active))])),
            ApplyOutcome::Refused(_)
        ));
        assert_eq!(state, before);
        // A unit of another service is refused.
        assert!(matches!(
            state.apply(3, &set("s0", 1, &[("zz", Some(Role::Standby))])),
            ApplyOutcome::Refused(_)
        ));
        // Switch: a QUIESCED, b ACTIVE in one step is fine and bumps the epoch.
        assert_eq!(
            state.apply(
                3,
                &set(
                    "s0",
                    1,
                    &[("a", Some(Role::Quiesced)), ("b", Some(Role::Active))]
                )
            ),
            ApplyOutcome::Changed
        );
        assert_eq!(state.shards[&ShardName::from("s0")].epoch, 2);
        state.check_invariants().unwrap();
    }

    #[test]
    fn a_change_that_would_leave_two_acting_units_is_refused_as_unsafe_and_undone() {
        let mut state = two_n_state();
        state.apply(
            2,
            &set(
                "s0",
                0,
                &[("a", Some(Role::Active)), ("b", Some(Role::Standby))],
            ),
        );
        let before = state.clone();
        let mut events = Vec::new();
        // Whatever path a bug takes, the transaction's own check catches a second ACTIVE on
        // the shards it changed.
        let outcome = state.transact(false, &mut events, |draft, events| {
            let shard = ShardName::from("s0");
            let mut record = draft.shards.get_mut(&shard).expect("s0");
            record.roles.insert("b".into(), Role::Active);
            events.push(ModelEvent::RoleChanged {
                shard: shard.clone(),
                unit: "b".into(),
                from: Some(Role::Standby),
                to: Some(Role::Active),
                epoch: record.epoch,
            });
            ApplyOutcome::Changed
        });
        let ApplyOutcome::Unsafe(reason) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(reason.contains("s0"), "{reason}");
        assert_eq!(state, before, "nothing applied");
        assert!(events.is_empty(), "nothing reported");
        assert_eq!(
            ApplyOutcome::Unsafe(reason.clone()).refusal(),
            Some(reason.as_str())
        );
    }

    #[test]
    fn a_model_change_under_two_actives_is_refused_as_unsafe() {
        let mut state = two_n_state();
        let mut topology = state.topology.clone();
        topology.services[0].model = RedundancyModel::NWayActive {
            actives_per_shard: 0,
        };
        assert_eq!(
            state.apply(2, &Command::SetTopology(topology.clone())),
            ApplyOutcome::Changed
        );
        assert_eq!(
            state.apply(
                3,
                &set(
                    "s0",
                    0,
                    &[("a", Some(Role::Active)), ("b", Some(Role::Active))]
                )
            ),
            ApplyOutcome::Changed
        );
        // Back to 2n with both units still ACTIVE: no role changes, but two ACTIVEs.
        let before = state.clone();
        topology.services[0].model = RedundancyModel::TwoN;
        let outcome = state.apply(4, &Command::SetTopology(topology));
        assert!(
            matches!(&outcome, ApplyOutcome::Unsafe(reason) if reason.contains("s0")),
            "{outcome:?}"
        );
        assert_eq!(state, before);
    }

    #[test]
    fn a_fault_takes_roles_away_promotes_the_standby_and_restarts_the_unit() {
        let mut state = two_n_state();
        for shard in ["s0", "s1"] {
            state.apply(
                2,
                &set(
                    shard,
                    0,
                    &[("a", Some(Role::Active)), ("b", Some(Role::Standby))],
                ),
            );
        }
        let fault = Command::UnitFault {
            unit: "a".into(),
            fault: FaultId {
                generation: 1,
                seq: 1,
            },
            kind: FaultKind::ProcessExit {
                code: Some(3),
                signal: None,
            },
            at_ms: 1000,
            promotions: vec![("s0".into(), "b".into()), ("s1".into(), "b".into())],
        };
        let mut events = Vec::new();
        assert_eq!(
            state.apply_with_events(3, &fault, &mut events),
            ApplyOutcome::Changed
        );
        for shard in ["s0", "s1"] {
            let record = &state.shards[&ShardName::from(shard)];
            assert_eq!(record.roles.get(&UnitName::from("b")), Some(&Role::Active));
            assert!(!record.roles.contains_key(&UnitName::from("a")));
            assert_eq!(record.epoch, 2);
        }
        let a = &state.units[&UnitName::from("a")];
        assert_eq!(a.generation, 2, "L1 restart");
        assert_eq!(a.ladder.faults_total, 1);
        assert!(events
            .iter()
            .any(|event| matches!(event, ModelEvent::UnitFaulted { .. })));
        // The same report again is a duplicate, and so is one about the old instance.
        assert_eq!(state.apply(4, &fault), ApplyOutcome::Unchanged);
    }

    #[test]
    fn an_older_in_sync_claim_never_applies_after_a_newer_one() {
        let mut state = two_n_state();
        state.apply(
            2,
            &set(
                "s0",
                0,
                &[("a", Some(Role::Active)), ("b", Some(Role::Standby))],
            ),
        );
        let claim = |units: &[&str], claim: u64| Command::SetInSync {
            shard: "s0".into(),
            epoch: 1,
            units: units.iter().map(|unit| UnitName::from(*unit)).collect(),
            claim,
        };
        let shard = |state: &ClusterState| state.shards[&ShardName::from("s0")].clone();
        // The primary claimed b (claim 1), then dropped it (claim 2, applied first).
        assert_eq!(state.apply(3, &claim(&[], 2)), ApplyOutcome::Changed);
        assert_eq!(shard(&state).in_sync_claim, 2);
        // Claim 1 arrives late: b must not be recorded in sync.
        assert_eq!(state.apply(4, &claim(&["b"], 1)), ApplyOutcome::Unchanged);
        assert!(shard(&state).in_sync.is_empty());
        assert_eq!(state.apply(5, &claim(&["b"], 2)), ApplyOutcome::Unchanged);
        assert!(shard(&state).in_sync.is_empty());
        // A newer claim applies, and moves the record's claim even with the same units.
        assert_eq!(state.apply(6, &claim(&["b"], 3)), ApplyOutcome::Changed);
        assert_eq!(shard(&state).in_sync, ["b".into()].into());
        assert_eq!(state.apply(7, &claim(&["b"], 4)), ApplyOutcome::Changed);
        assert_eq!(shard(&state).in_sync_claim, 4);
        assert_eq!(shard(&state).in_sync, ["b".into()].into());
    }

    /// A 2n shard s0 with a ACTIVE and b STANDBY, b committed in sync at epoch 1 (index 3).
    fn b_in_sync_behind_a() -> ClusterState {
        let mut state = two_n_state();
        state.apply(
            2,
            &set(
                "s0",
                0,
                &[("a", Some(Role::Active)), ("b", Some(Role::Standby))],
            ),
        );
        let in_sync = Command::SetInSync {
            shard: "s0".into(),
            epoch: 1,
            units: vec!["b".into()].into_iter().collect(),
            claim: 1,
        };
        assert_eq!(state.apply(3, &in_sync), ApplyOutcome::Changed);
        state
    }

    /// The first fault of `unit`'s instance `generation`, with the STANDBYs it promotes.
    fn unit_fault(
        unit: &str,
        generation: u64,
        kind: FaultKind,
        promotions: Vec<(ShardName, UnitName)>,
    ) -> Command {
        Command::UnitFault {
            unit: unit.into(),
            fault: FaultId { generation, seq: 1 },
            kind,
            at_ms: 1000,
            promotions,
        }
    }

    #[test]
    fn a_promoted_in_sync_standby_continues_from_memory_and_its_daemon_restart_is_a_loss() {
        let mut state = b_in_sync_behind_a();
        let crash = FaultKind::ProcessExit {
            code: Some(3),
            signal: None,
        };
        let mut events = Vec::new();
        state.apply_with_events(
            4,
            &unit_fault("a", 1, crash, vec![("s0".into(), "b".into())]),
            &mut events,
        );
        assert!(
            !events
                .iter()
                .any(|event| matches!(event, ModelEvent::PossibleLoss { .. })),
            "b was in sync"
        );
        let s0 = &state.shards[&ShardName::from("s0")];
        assert_eq!(
            (s0.epoch, s0.last_active.as_ref()),
            (2, Some(&UnitName::from("b")))
        );
        assert!(
            s0.synced_this_epoch,
            "b acknowledged a's writes once applied in memory; its disk may not have them"
        );
        // b's daemon restarts, losing what its disk did not have: b no longer continues s0.
        state.apply(5, &unit_fault("b", 1, FaultKind::AgentRestarted, vec![]));
        assert_eq!(state.shards[&ShardName::from("s0")].last_active, None);
        let mut events = Vec::new();
        let version = state.shards[&ShardName::from("s0")].version;
        state.apply_with_events(
            6,
            &set("s0", version, &[("b", Some(Role::Active))]),
            &mut events,
        );
        assert!(events
            .iter()
            .any(|event| matches!(event, ModelEvent::PossibleLoss { .. })));
    }

    #[test]
    fn a_daemon_restart_reported_after_the_unit_lost_its_role_still_ends_the_continuation() {
        // b is promoted from in sync (its replica may hold a's writes in memory only), then
        // loses ACTIVE to a fault of its own, handled after its daemon restarted; the agent's
        // restart fault then finds b without roles. Giving b ACTIVE again must be reported as
        // a possible loss: its daemon lost the memory the cluster would continue from.
        let mut state = b_in_sync_behind_a();
        let crash = FaultKind::ProcessExit {
            code: Some(3),
            signal: None,
        };
        state.apply(
            4,
            &unit_fault("a", 1, crash.clone(), vec![("s0".into(), "b".into())]),
        );
        state.apply(5, &unit_fault("b", 1, crash, vec![]));
        let s0 = &state.shards[&ShardName::from("s0")];
        assert_eq!(
            (s0.roles.get(&UnitName::from("b")), s0.last_active.as_ref()),
            (None, Some(&UnitName::from("b"))),
            "a fault of the process alone leaves b's replica to continue from"
        );
        let generation = state.units[&UnitName::from("b")].generation;
        assert_eq!(
            state.apply(
                6,
                &unit_fault("b", generation, FaultKind::AgentRestarted, vec![])
            ),
            ApplyOutcome::Changed
        );
        assert_eq!(state.shards[&ShardName::from("s0")].last_active, None);
        let mut events = Vec::new();
        let version = state.shards[&ShardName::from("s0")].version;
        state.apply_with_events(
            7,
            &set("s0", version, &[("b", Some(Role::Active))]),
            &mut events,
        );
        assert!(events
            .iter()
            .any(|event| matches!(event, ModelEvent::PossibleLoss { .. })));
    }

    #[test]
    fn a_rebuilt_replica_that_became_active_is_not_rebuilt_again() {
        let mut state = two_n_state();
        // An L2 instance of a starts (it empties its replicas when it starts)...
        state
            .units
            .get_mut(&UnitName::from("a"))
            .unwrap()
            .reinitialise = true;
        // ...and becomes ACTIVE: the cluster continues from what it holds now, so a later start
        // of the same instance (after a daemon restart) must keep it.
        state.apply(2, &set("s0", 0, &[("a", Some(Role::Active))]));
        assert!(!state.units[&UnitName::from("a")].reinitialise);
    }

    #[test]
    fn node_loss_relocates_the_unit_to_a_free_node() {
        let mut state = two_n_state();
        state.apply(
            2,
            &set(
                "s0",
                0,
                &[("a", Some(Role::Active)), ("b", Some(Role::Standby))],
            ),
        );
        let down = Command::SetNodeLiveness {
            node: NodeId(1),
            up: false,
            at_ms: 0,
            promotions: vec![("s0".into(), "b".into())],
        };
        assert_eq!(state.apply(3, &down), ApplyOutcome::Changed);
        let s0 = &state.shards[&ShardName::from("s0")];
        assert_eq!(s0.roles.get(&UnitName::from("b")), Some(&Role::Active));
        assert!(
            !s0.roles.contains_key(&UnitName::from("a")),
            "a node seen down holds no role"
        );
        let a = &state.units[&UnitName::from("a")];
        assert_eq!(a.node, NodeId(3), "n2 hosts b, n1 is down");
        assert_eq!(a.generation, 2);
        // A reported transient fault asks for a reset and keeps the instance.
        let b_fault = Command::UnitFault {
            unit: "b".into(),
            fault: FaultId {
                generation: 1,
                seq: 1,
            },
            kind: FaultKind::Reported(Severity::Transient),
            at_ms: 0,
            promotions: vec![],
        };
        state.apply(4, &b_fault);
        let b = &state.units[&UnitName::from("b")];
        assert_eq!((b.generation, b.reset_requests), (1, 1));
    }

    #[test]
    fn admin_state_machine_and_shutdown_settles_to_locked() {
        let mut state = two_n_state();
        let unit = |name: &str| AdminTarget::Unit(name.into());
        let admin = |target: AdminTarget, op| Command::Admin { target, op };
        assert!(matches!(
            state.apply(2, &admin(unit("a"), AdminOp::LockInstantiation)),
            ApplyOutcome::Refused(reason) if reason.contains("lock it first")
        ));
        assert!(matches!(
            state.apply(2, &admin(unit("a"), AdminOp::Unlock)),
            ApplyOutcome::Refused(reason) if reason.contains("already unlocked")
        ));
        state.apply(2, &set("s0", 0, &[("a", Some(Role::Active))]));
        assert_eq!(
            state.apply(3, &admin(unit("a"), AdminOp::Shutdown)),
            ApplyOutcome::Changed
        );
        assert_eq!(
            state.units[&UnitName::from("a")].admin,
            AdminState::ShuttingDown
        );
        // When the last role goes, shutting-down becomes locked.
        state.apply(4, &set("s0", 1, &[("a", None)]));
        assert_eq!(state.units[&UnitName::from("a")].admin, AdminState::Locked);
        assert_eq!(
            state.apply(5, &admin(unit("a"), AdminOp::LockInstantiation)),
            ApplyOutcome::Changed
        );
        assert!(!state.should_run(&state.units[&UnitName::from("a")]));
        // Node-level lock makes its units out of service.
        assert_eq!(
            state.apply(6, &admin(AdminTarget::Node(NodeId(2)), AdminOp::Lock)),
            ApplyOutcome::Changed
        );
        assert!(!state.in_service(&state.units[&UnitName::from("b")]));
        assert_eq!(
            state.effective_admin(&state.units[&UnitName::from("b")]),
            AdminState::Locked
        );
        // Restart marks a pending restart; RestartUnit carries it out once.
        assert_eq!(
            state.apply(7, &admin(unit("b"), AdminOp::Restart)),
            ApplyOutcome::Changed
        );
        assert!(state.units[&UnitName::from("b")].restart_pending);
        let go = Command::RestartUnit {
            unit: "b".into(),
            expected_generation: 1,
        };
        assert_eq!(state.apply(8, &go), ApplyOutcome::Changed);
        assert_eq!(state.apply(9, &go), ApplyOutcome::Unchanged);
        assert_eq!(state.units[&UnitName::from("b")].generation, 2);
    }
}
