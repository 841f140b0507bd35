//! What agents tell the leader about their units: the observed side of "intent vs observed".
//!
//! The committed assignment is the intent; each agent reports what its units actually are
//! (process state, the roles they confirmed, faults not yet handled). The director reconciles
//! the two. Reports are repeated with every heartbeat, so a new leader learns everything within
//! one heartbeat interval, and a lost report costs nothing.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::{FaultId, Role};
use crate::ids::{NodeId, ShardName, UnitName};
use crate::ladder::FaultKind;
use crate::time::Time;

/// A unit's process, as its agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Presence {
    /// Not running (never started, stopped, or dead and not restarted yet).
    #[default]
    Stopped,
    /// Started, not yet registered through the SDK.
    Starting,
    /// Registered through the SDK: it answers hooks and health checks.
    Running,
    /// Being stopped.
    Stopping,
}

impl Presence {
    /// Lower-case name for status.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
        }
    }
}

/// A role the unit confirmed (its hook returned) and that is still the committed role at the
/// shard version the agent had applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The role.
    pub role: Role,
    /// The shard's version at which the agent saw it settled.
    pub version: u64,
}

/// One unit in an agent's report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitReport {
    /// The instance the agent runs (or last ran).
    pub generation: u64,
    /// Its process.
    pub presence: Presence,
    /// Its process id, while it has one.
    pub pid: Option<u32>,
    /// Roles the unit confirmed, by shard. A unit that was fenced (lease lost) reports nothing
    /// for the shards it gave up.
    pub settled: BTreeMap<ShardName, Settled>,
    /// Faults of this instance not yet seen committed, oldest first. The unit can no longer act
    /// when a fault is listed: it is dead, was killed, or stopped acting before reporting.
    pub faults: Vec<(FaultId, FaultKind)>,
    /// The last load figure the unit reported (`report_load`), if any.
    pub load: Option<u32>,
}

/// One agent's report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentReport {
    /// The agent's applied index when it made the report.
    pub applied_index: u64,
    /// Every unit placed on the agent's node, by name.
    pub units: BTreeMap<UnitName, UnitReport>,
    /// For each shard whose primary replica is on the node: the STANDBYs its data plane
    /// verified in sync (the director records them with `SetInSync`).
    pub in_sync: BTreeMap<ShardName, InSyncClaim>,
}

/// What a primary's data plane verified, and against which committed assignment: a claim made
/// before the shard's roles changed says nothing about the STANDBYs after the change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InSyncClaim {
    /// The shard's epoch.
    pub epoch: u64,
    /// The shard's version (of its roles) the data plane acted on.
    pub version: u64,
    /// The STANDBYs verified in their current session.
    pub units: BTreeSet<UnitName>,
    /// The primary's claim sequence number at this epoch: it grows whenever `units` changes.
    /// The cluster applies a claim only when its number is above the last one applied
    /// (`ShardRecord::in_sync_claim`), so a claim still in flight never undoes a newer one.
    pub seq: u64,
}

/// The leader's latest report from each node, with when it arrived.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Node → (arrival time, report).
    pub nodes: BTreeMap<NodeId, (Time, AgentReport)>,
}

impl Observations {
    /// Records a report from `node` received at `now`.
    pub fn record(&mut self, now: Time, node: NodeId, report: AgentReport) {
        self.nodes.insert(node, (now, report));
    }

    /// What `node` last said about `unit`, if anything.
    pub fn unit(&self, node: NodeId, unit: &UnitName) -> Option<&UnitReport> {
        self.nodes.get(&node)?.1.units.get(unit)
    }
}
