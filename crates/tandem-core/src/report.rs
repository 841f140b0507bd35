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

/// What a running unit confirmed, summarised: every role the committed state gave it at the
/// report's `applied_index` is settled (the unit's hook for it returned, and nothing is in
/// flight), except the shards listed. A summary costs what is unsettled, not what the unit
/// holds, so a steady unit with thousands of shards reports a few bytes.
///
/// A QUIESCING role counts as settled once the unit confirmed QUIESCED.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SettledRoles {
    /// Shards whose committed role (at the report's applied index) the unit has not
    /// confirmed, or for which a hook is in flight.
    pub unsettled: BTreeSet<ShardName>,
    /// The unit may not act (its node's lease is not valid, or it has an unhandled fault):
    /// none of its ACTIVE roles counts as settled (a QUIESCING one, confirmed QUIESCED, does).
    pub acting_withheld: bool,
}

impl SettledRoles {
    /// Whether `role`, committed for `shard` at the report's applied index, is settled.
    pub fn settled(&self, shard: &ShardName, role: Role) -> bool {
        let withheld = confirmed_role(role).is_acting() && self.acting_withheld;
        !self.unsettled.contains(shard) && !withheld
    }
}

/// The role a unit confirms for a committed `role`: QUIESCED for QUIESCING, else the same.
pub fn confirmed_role(role: Role) -> Role {
    if role == Role::Quiescing {
        Role::Quiesced
    } else {
        role
    }
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
    /// Roles the unit confirmed, summarised; `None` unless the current instance runs.
    pub settled: Option<SettledRoles>,
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
    /// For shards whose primary replica is on the node: the STANDBYs its data plane verified
    /// in sync (the director records them with `SetInSync`). Only claims the committed state
    /// does not hold yet (a newer sequence number at the current epoch) are listed.
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

/// The leader's latest report from each node, with when it arrived, and what it needs to
/// judge them: the applied index of each shard's last change.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Node → (arrival time, report).
    pub nodes: BTreeMap<NodeId, (Time, AgentReport)>,
    /// The leader's applied index.
    applied: u64,
    /// The leader's applied index when these observations began: a shard not in `changed_at`
    /// last changed no later.
    since: u64,
    /// The applied index at which each shard changed last, for shards changed since `since`.
    changed_at: BTreeMap<ShardName, u64>,
}

impl Observations {
    /// Observations of a leader whose model is applied up to `applied`.
    pub fn new(applied: u64) -> Self {
        Self {
            applied,
            since: applied,
            ..Self::default()
        }
    }

    /// Records a report from `node` received at `now`.
    pub fn record(&mut self, now: Time, node: NodeId, report: AgentReport) {
        self.nodes.insert(node, (now, report));
    }

    /// The leader applied up to `applied`, changing `shards` (all of them with `everything`).
    pub fn applied(&mut self, applied: u64, shards: &BTreeSet<ShardName>, everything: bool) {
        self.applied = applied;
        if everything {
            self.since = applied;
            self.changed_at.clear();
        }
        for shard in shards {
            self.changed_at.insert(shard.clone(), applied);
        }
    }

    /// The leader's applied index these observations are judged at.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// What `node` last said about `unit`, if anything.
    pub fn unit(&self, node: NodeId, unit: &UnitName) -> Option<&UnitReport> {
        self.nodes.get(&node)?.1.units.get(unit)
    }

    /// Whether `unit` (on `node`) settled `role`, the committed role it holds for `shard`:
    /// its agent's report was made at an applied index the leader has reached, after the
    /// shard last changed, and does not list the shard as unsettled.
    pub fn settled(&self, node: NodeId, unit: &UnitName, shard: &ShardName, role: Role) -> bool {
        let Some((_, report)) = self.nodes.get(&node) else {
            return false;
        };
        let Some(summary) = report
            .units
            .get(unit)
            .and_then(|unit| unit.settled.as_ref())
        else {
            return false;
        };
        let changed_at = self.changed_at.get(shard).copied().unwrap_or(self.since);
        report.applied_index <= self.applied
            && report.applied_index >= changed_at
            && summary.settled(shard, role)
    }
}
