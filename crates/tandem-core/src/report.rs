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
    /// confirmed, or for which a hook is in flight: the first [`UNSETTLED_LISTED_MAX`] by name.
    pub unsettled: BTreeSet<ShardName>,
    /// When the list was cut: every shard named after this one is unsettled too. A unit given
    /// thousands of roles at once reports a few hundred names, not thousands, while it works
    /// through them (in name order).
    pub unsettled_after: Option<ShardName>,
    /// The unit may not act (its node's lease is not valid, or it has an unhandled fault):
    /// none of its ACTIVE roles counts as settled (a QUIESCING one, confirmed QUIESCED, does).
    pub acting_withheld: bool,
}

/// Unsettled shards a report names at most (see [`SettledRoles::unsettled_after`]).
pub const UNSETTLED_LISTED_MAX: usize = 256;

impl SettledRoles {
    /// The summary of `unsettled` (in name order), cut at [`UNSETTLED_LISTED_MAX`] names.
    pub fn listing(unsettled: impl Iterator<Item = ShardName>, acting_withheld: bool) -> Self {
        let mut listed = BTreeSet::new();
        let mut unsettled_after = None;
        for shard in unsettled {
            if listed.len() == UNSETTLED_LISTED_MAX {
                unsettled_after = listed.last().cloned();
                break;
            }
            listed.insert(shard);
        }
        Self {
            unsettled: listed,
            unsettled_after,
            acting_withheld,
        }
    }

    /// Whether the summary says `shard` is unsettled (whatever its role).
    pub fn lists(&self, shard: &ShardName) -> bool {
        self.unsettled.contains(shard)
            || self
                .unsettled_after
                .as_ref()
                .is_some_and(|after| shard > after)
    }

    /// Whether `role`, committed for `shard` at the report's applied index, is settled.
    pub fn settled(&self, shard: &ShardName, role: Role) -> bool {
        if self
            .unsettled_after
            .as_ref()
            .is_some_and(|after| shard > after)
        {
            return false;
        }
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
/// judge them: the applied index at which each shard last changed.
///
/// Architecture invariant: every report in `nodes` was made at an applied index the leader
/// has reached; a report from further on waits aside until the leader gets there, so that
/// what a report says can be judged when it is recorded ([`Judged`]).
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Node → (arrival time, report).
    pub nodes: BTreeMap<NodeId, (Time, AgentReport)>,
    /// Reports made at an applied index the leader has not reached yet.
    ahead: BTreeMap<NodeId, (Time, AgentReport)>,
    /// The leader's applied index.
    applied: u64,
    /// The leader's applied index when these observations began: a shard not in `changed_at`
    /// last changed no later.
    since: u64,
    /// The applied index at which each shard changed last, for shards changed since `since`.
    changed_at: BTreeMap<ShardName, u64>,
    /// Shards changed at each applied index above `log_from`.
    changed_log: BTreeMap<u64, BTreeSet<ShardName>>,
    /// `changed_log` holds every index above this one.
    log_from: u64,
}

/// A report that became the one the leader judges a node by, and the one it replaced.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The node.
    pub node: NodeId,
    /// Its previous judged report.
    pub before: Option<AgentReport>,
}

/// Applied indexes of change history kept at most, for judging what a new report settles.
const CHANGED_LOG_MAX: usize = 65_536;

impl Observations {
    /// Observations of a leader whose model is applied up to `applied`.
    pub fn new(applied: u64) -> Self {
        Self {
            applied,
            since: applied,
            log_from: applied,
            ..Self::default()
        }
    }

    /// Records a report from `node` received at `now`. Returns what became judged (nothing
    /// while the report is ahead of the leader's applied index).
    pub fn record(&mut self, now: Time, node: NodeId, report: AgentReport) -> Option<Judged> {
        if report.applied_index > self.applied {
            self.ahead.insert(node, (now, report));
            return None;
        }
        self.ahead.remove(&node);
        let before = self
            .nodes
            .insert(node, (now, report))
            .map(|(_, report)| report);
        Some(Judged { node, before })
    }

    /// The newest report from `node`, judged or waiting aside.
    pub fn latest(&self, node: NodeId) -> Option<&AgentReport> {
        self.ahead
            .get(&node)
            .or_else(|| self.nodes.get(&node))
            .map(|(_, report)| report)
    }

    /// The leader applied up to `applied`, changing the roles of `shards` (all of them with
    /// `everything`). Returns the reports that waited for this index. Only a change of roles
    /// (a new version) makes what a unit confirmed before stale: an in-sync record does not.
    pub fn applied(
        &mut self,
        applied: u64,
        shards: &BTreeSet<ShardName>,
        everything: bool,
    ) -> Vec<Judged> {
        self.applied = applied;
        if everything {
            self.since = applied;
            self.changed_at.clear();
            self.changed_log.clear();
            self.log_from = applied;
        }
        for shard in shards {
            self.changed_at.insert(shard.clone(), applied);
        }
        if !shards.is_empty() && !everything {
            self.changed_log
                .entry(applied)
                .or_default()
                .extend(shards.iter().cloned());
        }
        // Only what some judged report has not seen yet is worth keeping.
        let oldest = self
            .nodes
            .values()
            .map(|(_, report)| report.applied_index)
            .min()
            .unwrap_or(applied);
        while let Some((&index, _)) = self.changed_log.first_key_value() {
            if index > oldest && self.changed_log.len() <= CHANGED_LOG_MAX {
                break;
            }
            self.changed_log.pop_first();
            self.log_from = self.log_from.max(index);
        }
        let ready: Vec<NodeId> = self
            .ahead
            .iter()
            .filter(|(_, (_, report))| report.applied_index <= applied)
            .map(|(node, _)| *node)
            .collect();
        ready
            .into_iter()
            .filter_map(|node| {
                let (now, report) = self.ahead.remove(&node)?;
                self.record(now, node, report)
            })
            .collect()
    }

    /// The leader's applied index these observations are judged at.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Shards that changed at an applied index in `(from, to]`; `None` when that history is
    /// no longer kept.
    pub fn changed_between(&self, from: u64, to: u64) -> Option<BTreeSet<&ShardName>> {
        if from < self.log_from || from >= to {
            return (from >= to).then(BTreeSet::new);
        }
        Some(
            self.changed_log
                .range(from + 1..=to)
                .flat_map(|(_, shards)| shards)
                .collect(),
        )
    }

    /// What `node` last said about `unit`, if anything.
    pub fn unit(&self, node: NodeId, unit: &UnitName) -> Option<&UnitReport> {
        self.nodes.get(&node)?.1.units.get(unit)
    }

    /// Whether `unit` (on `node`) settled `role`, the committed role it holds for `shard`:
    /// its agent's report was made after the shard last changed, and does not list the shard
    /// as unsettled.
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
        debug_assert!(
            report.applied_index <= self.applied,
            "judged reports are not ahead"
        );
        report.applied_index >= changed_at && summary.settled(shard, role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_unsettled_list_is_cut_and_everything_after_the_cut_counts_unsettled() {
        let names: Vec<ShardName> = (0..1000)
            .map(|i| ShardName::from(format!("s{i:04}").as_str()))
            .collect();
        let summary = SettledRoles::listing(names.iter().skip(1).step_by(2).cloned(), false);
        assert_eq!(summary.unsettled.len(), UNSETTLED_LISTED_MAX);
        let cut = summary.unsettled_after.clone().expect("cut");
        for (index, shard) in names.iter().enumerate() {
            let listed_odd = index % 2 == 1;
            // Below the cut, exactly the odd ones; above it, everything.
            let expected = listed_odd || *shard > cut;
            assert_eq!(summary.lists(shard), expected, "{shard}");
            assert_eq!(summary.settled(shard, Role::Standby), !expected, "{shard}");
        }
        let short = SettledRoles::listing(names.iter().take(3).cloned(), true);
        assert_eq!(short.unsettled_after, None);
        assert!(!short.settled(&names[5], Role::Active), "ACTIVE withheld");
        assert!(
            short.settled(&names[5], Role::Quiescing),
            "QUIESCED is not acting"
        );
    }
}
