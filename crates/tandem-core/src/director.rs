//! The director: the leader's decisions about assignments, failover and recovery.
//!
//! It is a planner. Each round it reads the committed [`ClusterState`] (the intent) and the
//! agents' latest [`Observations`] (what units actually are), and returns commands to propose.
//! It never changes anything itself: a decision takes effect when its command commits, and
//! `apply` re-checks every command against the state it finds, so a plan made on a stale view
//! (an old leader's, a lost race) is refused instead of applied. A new leader's director starts
//! with no memory and continues from the committed state, which is how an operation begun under
//! one leader is finished, or rolled back, under the next.
//!
//! Rules that keep at most one unit acting ACTIVE per shard (single-ACTIVE models):
//! - a unit becomes ACTIVE only when no unit holds ACTIVE or QUIESCING (checked by `apply`);
//! - an ACTIVE or QUIESCING role is taken from a unit only when that unit cannot act: its
//!   agent confirmed it QUIESCED, or it faulted (a fault is reported only once the unit is
//!   dead, killed, or stopped acting), or its node was declared down (its agent's lease, and
//!   with it every unit's permission to act, ran out before that; see `lease`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::cluster::{
    AdminState, Changes, ClusterState, Command, FaultId, Handover, HandoverReason, HandoverUpdate,
    Role, RoleChange, ShardRecord, UnitRecord,
};
use crate::ids::{NodeId, ServiceName, ShardName, UnitName};
use crate::refusal::{AdminCode, Refusal};
use crate::report::{confirmed_role, Judged, Observations, Presence, UnitReport};
use crate::time::Time;
use crate::topology::{RedundancyModel, ServiceSpec};

/// How long a proposal is given to commit before the director plans the same thing again.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);

/// What the director is waiting for, so it does not propose the same change twice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PendingKey {
    Shard(ShardName),
    InSync(ShardName, u64, BTreeSet<UnitName>, u64),
    Fault(UnitName, FaultId),
    Restart(UnitName, u64),
}

/// Shards planned in one round at most: a round's cost is bounded whatever is dirty; the
/// rest waits for the next round (see [`Director::has_more`]).
pub const PLAN_SHARDS_MAX: usize = 512;

/// Waiting shards planned again each round in turn, whatever was observed.
pub const WAITING_SWEEP: usize = 32;

/// The leader's director. Keeps the proposals in flight and which shards to look at: those
/// that changed (committed, or observed) and those not yet where they should be. A steady
/// shard is never looked at, so a round costs what changed, not the number of shards.
#[derive(Debug, Clone)]
pub struct Director {
    /// Proposals made and not yet seen committed or expired.
    pending: pending::Pending,
    /// Every shard is to be planned (a new director knows nothing yet).
    everything: bool,
    /// Shards to plan at the next round.
    dirty: BTreeSet<ShardName>,
    /// Shards not yet complete and settled. They are planned again when something they
    /// wait for is observed, and a few a round in turn ([`WAITING_SWEEP`]), so that a
    /// shard a missed observation left behind is not left for good.
    waiting: BTreeSet<ShardName>,
    /// Where the sweep of `waiting` goes on from.
    sweep_from: Option<ShardName>,
    /// Where the next round's dirty shards begin.
    plan_from: Option<ShardName>,
    /// Shards the last round planned (for tests and the simulation's step-cost check).
    planned_last_round: usize,
    /// Shards whose in-sync claim is to be looked at next round: a report brought a new
    /// claim, the shard's record changed, or a proposal of its claim had its time.
    claims_due: BTreeSet<ShardName>,
}

impl Default for Director {
    fn default() -> Self {
        Self {
            pending: pending::Pending::default(),
            everything: true,
            dirty: BTreeSet::new(),
            waiting: BTreeSet::new(),
            sweep_from: None,
            plan_from: None,
            planned_last_round: 0,
            claims_due: BTreeSet::new(),
        }
    }
}

/// A read-only view joining the committed state with the observations.
pub struct View<'a> {
    /// The committed state.
    pub state: &'a ClusterState,
    /// The agents' reports.
    pub observations: &'a Observations,
}

impl<'a> View<'a> {
    /// A view of `state` and `observations`.
    pub fn new(state: &'a ClusterState, observations: &'a Observations) -> Self {
        Self {
            state,
            observations,
        }
    }

    /// The agent's report about `unit`'s current instance, if it has one.
    pub fn report(&self, unit: &UnitRecord) -> Option<&'a UnitReport> {
        self.observations
            .unit(unit.node, &unit.name)
            .filter(|report| report.generation == unit.generation)
    }

    /// Whether `unit`'s current instance runs and registered, with no unhandled fault.
    pub fn running(&self, unit: &UnitRecord) -> bool {
        self.report(unit).is_some_and(|report| {
            report.presence == Presence::Running
                && !report
                    .faults
                    .iter()
                    .any(|(id, _)| id.generation == unit.generation && *id > unit.fault_seen)
        })
    }

    /// Whether `unit` may take new assignments: in service and running.
    pub fn eligible(&self, unit: &UnitRecord) -> bool {
        self.state.in_service(unit) && self.state.is_up(unit.node) && self.running(unit)
    }

    /// The role `unit` confirmed for `shard` at the shard's current version.
    pub fn settled(&self, unit: &UnitRecord, shard: &ShardRecord) -> Option<Role> {
        self.report(unit)?;
        let role = *shard.roles.get(&unit.name)?;
        self.observations
            .settled(unit.node, &unit.name, &shard.name, role)
            .then_some(confirmed_role(role))
    }

    /// The unit record of `name`.
    fn unit(&self, name: &UnitName) -> Option<&'a UnitRecord> {
        self.state.units.get(name)
    }

    /// A STANDBY of `shard` that can take over at once: eligible and confirmed STANDBY at the
    /// current version. In-sync STANDBYs first, then by preference.
    pub fn ready_standby(&self, shard: &ShardRecord, except: &UnitName) -> Option<UnitName> {
        self.ready_standbys(shard, except).into_iter().next()
    }

    /// Every STANDBY of `shard` that can take over at once, in-sync ones first, then by
    /// preference.
    pub fn ready_standbys(&self, shard: &ShardRecord, except: &UnitName) -> Vec<UnitName> {
        let Some(service) = self.state.topology.service(&shard.service) else {
            return Vec::new();
        };
        let mut ready: Vec<&UnitRecord> = shard
            .units_in(Role::Standby)
            .filter(|name| *name != except)
            .filter_map(|name| self.unit(name))
            .filter(|unit| self.eligible(unit) && self.settled(unit, shard) == Some(Role::Standby))
            .collect();
        ready.sort_by_key(|unit| {
            (
                !shard.in_sync.contains(&unit.name),
                self.preference(service, unit),
            )
        });
        ready.into_iter().map(|unit| unit.name.clone()).collect()
    }

    /// What the agent of `shard`'s primary (the unit acting for it, or the QUIESCED unit of a
    /// handover) claims in sync at the current epoch, limited to current STANDBYs, with the
    /// claim's sequence number.
    pub fn claimed_in_sync(&self, shard: &ShardRecord) -> Option<(BTreeSet<UnitName>, u64)> {
        let primary = shard
            .acting()
            .next()
            .or_else(|| shard.handover.as_ref().map(|handover| &handover.from))?;
        let node = self.unit(primary)?.node;
        let (_, report) = self.observations.nodes.get(&node)?;
        let claim = report.in_sync.get(&shard.name)?;
        if claim.epoch != shard.epoch || claim.version != shard.version {
            return None;
        }
        Some((
            claim
                .units
                .iter()
                .filter(|unit| shard.roles.get(*unit) == Some(&Role::Standby))
                .cloned()
                .collect(),
            claim.seq,
        ))
    }

    /// Static preference of a unit: its rank, its node's rank, its place in the config.
    fn preference(&self, service: &ServiceSpec, unit: &UnitRecord) -> (u32, u32, usize) {
        let spec_rank = service.unit(&unit.name).map_or(u32::MAX, |spec| spec.rank);
        (
            spec_rank,
            self.state.topology.node_rank(unit.node),
            service.unit_position(&unit.name).unwrap_or(usize::MAX),
        )
    }
}

/// Counts of roles per unit within one service, for balancing.
#[derive(Default)]
struct Load {
    actives: BTreeMap<UnitName, usize>,
    standbys: BTreeMap<UnitName, usize>,
    total: BTreeMap<UnitName, usize>,
}

impl Load {
    /// The committed role counts of the units of `service` (from the shard index: costs the
    /// service's units).
    fn of(state: &ClusterState, service: &ServiceSpec) -> Self {
        let mut load = Load::default();
        for spec in &service.units {
            let Some(held) = state.shards.index().of(&spec.name) else {
                continue;
            };
            load.total.insert(spec.name.clone(), held.roles);
            load.actives.insert(spec.name.clone(), held.acting);
            load.standbys.insert(spec.name.clone(), held.standby);
        }
        load
    }

    /// Counts roles a planned `Reassign` gives (removals are left counted: conservative).
    fn note(&mut self, changes: &[RoleChange]) {
        for change in changes {
            let map = match change.role {
                Some(Role::Active) => &mut self.actives,
                Some(Role::Standby) => &mut self.standbys,
                _ => continue,
            };
            *map.entry(change.unit.clone()).or_default() += 1;
            *self.total.entry(change.unit.clone()).or_default() += 1;
        }
    }

    fn get(map: &BTreeMap<UnitName, usize>, unit: &UnitName) -> usize {
        map.get(unit).copied().unwrap_or(0)
    }
}

impl Director {
    /// A director with nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// The committed state changed by `changes`: the shards to plan again. A changed unit or
    /// node can change what every shard of its service may be given.
    pub fn note_changes(&mut self, state: &ClusterState, changes: &Changes) {
        self.pending.note_changes(changes);
        if changes.topology {
            self.everything = true;
            return;
        }
        self.dirty.extend(changes.shards.iter().cloned());
        self.claims_due.extend(changes.shards.iter().cloned());
        let mut services: BTreeSet<&ServiceName> = BTreeSet::new();
        for unit in &changes.units {
            if let Some(record) = state.units.get(unit) {
                services.insert(&record.service);
            }
        }
        for node in &changes.nodes {
            services.extend(state.units_on(*node).map(|unit| &unit.service));
        }
        self.dirty_services(state, services);
    }

    /// A report became the one the leader judges its node by (see [`Judged`]): the shards
    /// whose settled state it may have changed are planned again. A unit that started,
    /// stopped, faulted, changed instance or may act again or no more can change what every
    /// shard of its service may be given; otherwise only the shards that entered or left its
    /// unsettled list, and those that changed at an index the previous report had not seen.
    pub fn note_report(
        &mut self,
        state: &ClusterState,
        observations: &Observations,
        judged: &Judged,
    ) {
        let Some((_, after)) = observations.nodes.get(&judged.node) else {
            return;
        };
        let before = judged.before.as_ref();
        // Claims new or changed since the report before (a report carries every claim its
        // node has not seen committed, most of them unchanged).
        self.claims_due.extend(
            after
                .in_sync
                .iter()
                .filter(|(shard, claim)| {
                    before.and_then(|before| before.in_sync.get(*shard)) != Some(*claim)
                })
                .map(|(shard, _)| shard.clone()),
        );
        let mut services: BTreeSet<&ServiceName> = BTreeSet::new();
        let empty = BTreeSet::new();
        for (name, unit) in &after.units {
            let was = before.and_then(|before| before.units.get(name));
            let same_process = was.is_some_and(|was| {
                was.generation == unit.generation
                    && was.presence == unit.presence
                    && was.faults == unit.faults
                    && was.settled.is_some() == unit.settled.is_some()
            });
            if !same_process {
                if let Some(record) = state.units.get(name) {
                    services.insert(&record.service);
                }
                continue;
            }
            let withheld = |report: Option<&UnitReport>| {
                report
                    .and_then(|report| report.settled.as_ref())
                    .map(|settled| settled.acting_withheld)
            };
            if withheld(was) != withheld(Some(unit)) {
                // The unit may act again, or no longer (its lease, a fault): only its acting
                // roles are settled or not by that.
                self.dirty.extend(
                    state
                        .roles_of(name)
                        .filter(|(_, role)| role.is_acting())
                        .map(|(shard, _)| shard.clone()),
                );
            }
            self.dirty.extend(
                unsettled(was, &empty)
                    .symmetric_difference(unsettled(Some(unit), &empty))
                    .cloned(),
            );
            // A cut list: the shards between the two cuts may have changed too.
            let cut = |report: Option<&UnitReport>| {
                report
                    .and_then(|report| report.settled.as_ref())
                    .and_then(|settled| settled.unsettled_after.clone())
            };
            let (old_cut, new_cut) = (cut(was), cut(Some(unit)));
            if old_cut != new_cut {
                let low = match (&old_cut, &new_cut) {
                    (Some(a), Some(b)) => Some(a.min(b).clone()),
                    (Some(a), None) | (None, Some(a)) => Some(a.clone()),
                    (None, None) => None,
                };
                let high = match (&old_cut, &new_cut) {
                    (Some(a), Some(b)) => Some(a.max(b).clone()),
                    _ => None,
                };
                if let (Some(low), Some(held)) = (low, state.shards.index().of(name)) {
                    let upper = match &high {
                        Some(high) => std::ops::Bound::Included(high),
                        None => std::ops::Bound::Unbounded,
                    };
                    self.dirty.extend(
                        held.mentioned
                            .range::<ShardName, _>((std::ops::Bound::Excluded(&low), upper))
                            .cloned(),
                    );
                }
            }
        }
        for name in before.iter().flat_map(|before| before.units.keys()) {
            if !after.units.contains_key(name) {
                if let Some(record) = state.units.get(name) {
                    services.insert(&record.service);
                }
            }
        }
        let from = before.map_or(0, |before| before.applied_index);
        match observations.changed_between(from, after.applied_index) {
            Some(shards) => self.dirty.extend(shards.into_iter().cloned()),
            // The history no longer reaches back: every shard waiting may have settled.
            None => self.dirty.extend(self.waiting.iter().cloned()),
        }
        self.dirty_services(state, services);
    }

    /// Marks the next few waiting shards dirty, in turn.
    fn sweep_waiting(&mut self) {
        let next = crate::turn::set_in_turn(&self.waiting, &mut self.sweep_from, WAITING_SWEEP);
        self.dirty.extend(next);
    }

    fn dirty_services(&mut self, state: &ClusterState, services: BTreeSet<&ServiceName>) {
        for service in services {
            if let Some(spec) = state.topology.service(service) {
                self.dirty.extend(spec.shards.iter().cloned());
            }
        }
    }

    /// How many shards the last round looked at: what changed and what waits, never the
    /// steady rest.
    pub fn planned_last_round(&self) -> usize {
        self.planned_last_round
    }

    /// Whether shards are left to plan (the last round stopped at [`PLAN_SHARDS_MAX`]).
    pub fn has_more(&self) -> bool {
        self.everything || !self.dirty.is_empty()
    }

    /// Plans one round: the commands to propose now, given the committed `state`, the agents'
    /// `observations`, the local time `now` and the wall clock `wall_ms` (ms since the Unix
    /// epoch, stamped on faults for the ladder's probation windows). Looks at the dirty
    /// shards (at most [`PLAN_SHARDS_MAX`]), and at the waiting ones when a report changed.
    pub fn plan(
        &mut self,
        now: Time,
        state: &ClusterState,
        observations: &Observations,
        wall_ms: u64,
    ) -> Vec<Command> {
        self.expire(now, state);
        let view = View::new(state, observations);
        let mut commands = Vec::new();
        // Shards a fault in this round touches are left for the next round.
        let mut touched: BTreeSet<ShardName> = BTreeSet::new();

        self.plan_faults(now, &view, wall_ms, &mut commands, &mut touched);
        if std::mem::take(&mut self.everything) {
            self.dirty.extend(state.shards.keys().cloned());
            for (_, report) in observations.nodes.values() {
                self.claims_due.extend(report.in_sync.keys().cloned());
            }
        }
        self.sweep_waiting();
        // In turn from where the last round stopped, so that shards made dirty again and
        // again cannot keep the others waiting.
        let round = crate::turn::set_in_turn(&self.dirty, &mut self.plan_from, PLAN_SHARDS_MAX);
        self.planned_last_round = round.len();
        for shard in &round {
            self.dirty.remove(shard);
        }
        // Role counts per service, updated with this round's plans so that shards planned in
        // one round spread over the units instead of all picking the same one.
        let mut loads: BTreeMap<ServiceName, Load> = BTreeMap::new();
        for name in &round {
            let Some(shard) = state.shards.get(name) else {
                self.waiting.remove(name);
                continue;
            };
            if touched.contains(&shard.name)
                || self.is_pending(&PendingKey::Shard(shard.name.clone()))
            {
                // Planned again when its proposal commits (a change) or expires.
                self.waiting.insert(name.clone());
                continue;
            }
            let Some(service) = state.topology.service(&shard.service) else {
                continue;
            };
            let load = loads
                .entry(shard.service.clone())
                .or_insert_with(|| Load::of(state, service));
            if let Some(command) = plan_shard(&view, shard, load) {
                if let Command::Reassign { changes, .. } = &command {
                    load.note(changes);
                }
                self.pending
                    .insert(PendingKey::Shard(shard.name.clone()), now, shard.version);
                commands.push(command);
                self.waiting.insert(name.clone());
            } else if quiet(&view, service, shard) {
                self.waiting.remove(name);
            } else {
                self.waiting.insert(name.clone());
            }
        }
        for name in std::mem::take(&mut self.claims_due) {
            let Some(shard) = state.shards.get(&name) else {
                continue;
            };
            let Some((units, claim_seq)) = view.claimed_in_sync(shard) else {
                continue;
            };
            // A newer claim with the same units is proposed too: its primary keeps
            // waiting for a STANDBY it claimed until the cluster applied a claim at least
            // as new (an older one still in flight could otherwise apply after a claim
            // that dropped it).
            if units == shard.in_sync && claim_seq <= shard.in_sync_claim {
                continue;
            }
            let key = PendingKey::InSync(shard.name.clone(), shard.epoch, units.clone(), claim_seq);
            if self.is_pending(&key) {
                continue;
            }
            self.pending.insert(key, now, 0);
            commands.push(Command::SetInSync {
                shard: shard.name.clone(),
                epoch: shard.epoch,
                units,
                claim: claim_seq,
            });
        }
        for unit in state.units.values() {
            if !unit.restart_pending || state.roles_of(&unit.name).next().is_some() {
                continue;
            }
            let key = PendingKey::Restart(unit.name.clone(), unit.generation);
            if self.is_pending(&key) {
                continue;
            }
            self.pending.insert(key, now, 0);
            commands.push(Command::RestartUnit {
                unit: unit.name.clone(),
                expected_generation: unit.generation,
            });
        }
        commands
    }

    fn is_pending(&self, key: &PendingKey) -> bool {
        self.pending.contains(key)
    }

    /// Forgets proposals that committed (the state moved on) or that had their time; those
    /// that had their time are looked at again.
    fn expire(&mut self, now: Time, state: &ClusterState) {
        let dirty = &mut self.dirty;
        let claims_due = &mut self.claims_due;
        self.pending.expire(now, state, |key| match key {
            PendingKey::Shard(shard) => {
                dirty.insert(shard.clone());
            }
            PendingKey::InSync(shard, ..) => {
                claims_due.insert(shard.clone());
            }
            PendingKey::Fault(..) | PendingKey::Restart(..) => {}
        });
    }

    /// Faults the agents reported, and units on nodes that were declared down.
    fn plan_faults(
        &mut self,
        now: Time,
        view: &View<'_>,
        wall_ms: u64,
        commands: &mut Vec<Command>,
        touched: &mut BTreeSet<ShardName>,
    ) {
        let state = view.state;
        for unit in state.units.values() {
            // Units on a down node hold no roles: the down verdict took them away.
            let fault = view.report(unit).and_then(|report| {
                report
                    .faults
                    .iter()
                    .find(|(id, _)| id.generation == unit.generation && *id > unit.fault_seen)
                    .cloned()
            });
            let Some((id, kind)) = fault else { continue };
            let key = PendingKey::Fault(unit.name.clone(), id);
            if self.is_pending(&key) {
                continue;
            }
            self.pending.insert(key, now, 0);
            touched.extend(state.roles_of(&unit.name).map(|(shard, _)| shard.clone()));
            let promotions = promotions_for(view, std::slice::from_ref(&unit.name));
            commands.push(Command::UnitFault {
                unit: unit.name.clone(),
                fault: id,
                kind,
                at_ms: wall_ms,
                promotions,
            });
        }
    }
}

/// For shards where one of `leaving` acts alone: a ready STANDBY (not among `leaving`) to
/// promote when they lose their roles.
fn promotions_for(view: &View<'_>, leaving: &[UnitName]) -> Vec<(ShardName, UnitName)> {
    let state = view.state;
    let mut promotions = Vec::new();
    let shards: BTreeSet<&ShardName> = leaving
        .iter()
        .flat_map(|unit| state.shards_naming(unit))
        .map(|shard| &shard.name)
        .collect();
    for shard in shards.into_iter().filter_map(|name| state.shards.get(name)) {
        let acting: Vec<&UnitName> = shard.acting().collect();
        if acting.is_empty() || !acting.iter().all(|unit| leaving.contains(unit)) {
            continue;
        }
        let standby = shard
            .units_in(Role::Standby)
            .filter(|unit| !leaving.contains(unit))
            .filter_map(|name| state.units.get(name))
            .filter(|unit| view.eligible(unit) && view.settled(unit, shard) == Some(Role::Standby))
            .min_by_key(|unit| {
                (
                    !shard.in_sync.contains(&unit.name),
                    state
                        .topology
                        .service(&shard.service)
                        .map(|service| view.preference(service, unit)),
                )
            });
        if let Some(standby) = standby {
            promotions.push((shard.name.clone(), standby.name.clone()));
        }
    }
    promotions
}

/// The promotions to attach to a down verdict on `node`: a ready STANDBY for every shard whose
/// acting units are all on that node.
pub fn node_down_promotions(view: &View<'_>, node: NodeId) -> Vec<(ShardName, UnitName)> {
    let leaving: Vec<UnitName> = view
        .state
        .units_on(node)
        .map(|unit| unit.name.clone())
        .collect();
    promotions_for(view, &leaving)
}

/// The shards `report` lists as unsettled (`empty` when it has no summary).
fn unsettled<'a>(
    report: Option<&'a UnitReport>,
    empty: &'a BTreeSet<ShardName>,
) -> &'a BTreeSet<ShardName> {
    report
        .and_then(|report| report.settled.as_ref())
        .map_or(empty, |settled| &settled.unsettled)
}

/// Whether `shard` is where it should be: no handover, as many ACTIVEs and STANDBYs as its
/// model wants, every role settled by its unit. A quiet shard needs nothing until something
/// about it changes.
fn quiet(view: &View<'_>, service: &ServiceSpec, shard: &ShardRecord) -> bool {
    if shard.handover.is_some() {
        return false;
    }
    let (actives_wanted, standbys_wanted) =
        crate::cluster::wanted_counts(service.model, service.units.len());
    let acting = shard.units_in(Role::Active).count();
    let standbys = shard.units_in(Role::Standby).count();
    if acting != actives_wanted
        || standbys != standbys_wanted
        || shard.roles.len() != acting + standbys
    {
        return false;
    }
    shard.roles.iter().all(|(name, role)| {
        view.state
            .units
            .get(name)
            .is_some_and(|unit| view.settled(unit, shard) == Some(*role))
    })
}

/// Plans one shard: at most one `Reassign` bringing it one step closer to a complete, valid
/// assignment.
fn plan_shard(view: &View<'_>, shard: &ShardRecord, load: &Load) -> Option<Command> {
    let state = view.state;
    let service = state.topology.service(&shard.service)?;
    let reassign = |changes: Vec<RoleChange>, handover: HandoverUpdate| Command::Reassign {
        shard: shard.name.clone(),
        expected_version: shard.version,
        changes,
        handover,
    };
    let change = |unit: &UnitName, role: Option<Role>| RoleChange {
        unit: unit.clone(),
        role,
    };

    // A handover in progress: finish it once the old ACTIVE is confirmed quiesced.
    if let Some(handover) = &shard.handover {
        return plan_handover(view, service, shard, handover)
            .map(|(changes, update)| reassign(changes, update));
    }

    // Roles held by units that cannot keep them.
    for (name, role) in &shard.roles {
        let Some(unit) = state.units.get(name) else {
            continue;
        };
        if !state.is_up(unit.node) {
            // The fault path handles units on down nodes.
            continue;
        }
        let in_service = state.in_service(unit);
        match role {
            Role::Active if !in_service => {
                // Move the ACTIVE away: gracefully for shutdown and restart, at once for lock.
                let graceful =
                    unit.restart_pending || state.effective_admin(unit) == AdminState::ShuttingDown;
                let reason = if unit.restart_pending
                    && state.effective_admin(unit) == AdminState::Unlocked
                {
                    HandoverReason::Restart
                } else {
                    HandoverReason::OutOfService
                };
                let to = if service.model.multi_active() {
                    None
                } else {
                    view.ready_standby(shard, name)
                };
                let demoted = if graceful {
                    Role::Quiescing
                } else {
                    Role::Quiesced
                };
                return Some(reassign(
                    vec![change(name, Some(demoted))],
                    HandoverUpdate::Start(Handover {
                        from: name.clone(),
                        to,
                        reason,
                    }),
                ));
            }
            Role::Standby if !in_service => {
                return Some(reassign(vec![change(name, None)], HandoverUpdate::Keep));
            }
            Role::Quiescing | Role::Quiesced => {
                // Left over without a handover (its handover was cleared by a fault of the
                // other side): a quiesced unit can be a standby again, or leave.
                let settled = view.settled(unit, shard) == Some(Role::Quiesced);
                if *role == Role::Quiescing && !settled {
                    continue;
                }
                let wants_standby = service.model.has_standby()
                    && in_service
                    && view.eligible(unit)
                    && shard.units_in(Role::Standby).next().is_none();
                let next = if wants_standby {
                    Some(Role::Standby)
                } else {
                    None
                };
                return Some(reassign(vec![change(name, next)], HandoverUpdate::Keep));
            }
            _ => {}
        }
    }

    let (actives_wanted, standbys_wanted) =
        crate::cluster::wanted_counts(service.model, service.units.len());
    let acting: Vec<&UnitName> = shard.acting().collect();

    // Missing ACTIVEs.
    if acting.len() < actives_wanted && (service.model.multi_active() || acting.is_empty()) {
        let quiesced_present = shard.units_in(Role::Quiesced).next().is_some();
        if !service.model.multi_active() && quiesced_present {
            // Wait for the leftover QUIESCED unit to be settled first (handled above).
            return None;
        }
        if let Some(standby) = view.ready_standby(shard, &UnitName::default()) {
            if !service.model.multi_active() {
                return Some(reassign(
                    vec![change(&standby, Some(Role::Active))],
                    HandoverUpdate::Keep,
                ));
            }
        }
        if let Some(unit) = best_candidate(view, service, shard, load, Role::Active) {
            return Some(reassign(
                vec![change(&unit, Some(Role::Active))],
                HandoverUpdate::Keep,
            ));
        }
    }

    // Missing STANDBYs.
    let standbys = shard.units_in(Role::Standby).count();
    if standbys < standbys_wanted && !acting.is_empty() {
        if let Some(unit) = best_candidate(view, service, shard, load, Role::Standby) {
            return Some(reassign(
                vec![change(&unit, Some(Role::Standby))],
                HandoverUpdate::Keep,
            ));
        }
    }
    None
}

/// The step of a running handover, if one can be taken now.
fn plan_handover(
    view: &View<'_>,
    service: &ServiceSpec,
    shard: &ShardRecord,
    handover: &Handover,
) -> Option<(Vec<RoleChange>, HandoverUpdate)> {
    let state = view.state;
    let Some(from_role) = shard.roles.get(&handover.from).copied() else {
        // The old ACTIVE lost its role another way (a fault): nothing left to hand over.
        return Some((Vec::new(), HandoverUpdate::Clear));
    };
    let from = state.units.get(&handover.from)?;
    match from_role {
        Role::Quiescing | Role::Quiesced => {}
        // Rolled back already, or never started: the handover is over.
        Role::Active | Role::Standby => return Some((Vec::new(), HandoverUpdate::Clear)),
    }
    if view.settled(from, shard) != Some(Role::Quiesced) {
        // Still quiescing (or its agent has not reported yet). A hook that takes too long is
        // a fault the agent reports, which ends the handover through the fault path.
        return None;
    }
    // The planned target, while it can still take over: eligible, and holding STANDBY. Its
    // agent may not have confirmed the role at the shard's new version yet (it reports after
    // applying the handover's start); that is worth waiting for, not a reason to give up.
    // A switchover moves the ACTIVE only to an in-sync STANDBY (nothing acknowledged may be
    // lost by a planned operation); taking a unit out of service moves it to the best there is.
    let needs_sync = handover.reason == HandoverReason::Switchover;
    let planned = handover
        .to
        .as_ref()
        .and_then(|to| state.units.get(to))
        .filter(|unit| view.eligible(unit) && shard.roles.get(&unit.name) == Some(&Role::Standby))
        .filter(|unit| !needs_sync || shard.in_sync.contains(&unit.name));
    if let Some(unit) = planned {
        if view.settled(unit, shard) != Some(Role::Standby) {
            return None;
        }
    }
    let target = planned.map(|unit| unit.name.clone()).or_else(|| {
        if service.model.multi_active() {
            None
        } else {
            view.ready_standby(shard, &handover.from)
                .filter(|unit| !needs_sync || shard.in_sync.contains(unit))
        }
    });
    let mut changes = Vec::new();
    let from_stays_standby = service.model.has_standby()
        && handover.reason == HandoverReason::Switchover
        && view.eligible(from);
    match target {
        Some(to) => {
            let from_next = if from_stays_standby {
                Some(Role::Standby)
            } else {
                None
            };
            changes.push(RoleChange {
                unit: handover.from.clone(),
                role: from_next,
            });
            changes.push(RoleChange {
                unit: to,
                role: Some(Role::Active),
            });
        }
        None if handover.reason == HandoverReason::Switchover && view.eligible(from) => {
            // Nobody can take over: roll back, the old ACTIVE carries on.
            changes.push(RoleChange {
                unit: handover.from.clone(),
                role: Some(Role::Active),
            });
        }
        None => changes.push(RoleChange {
            unit: handover.from.clone(),
            role: None,
        }),
    }
    Some((changes, HandoverUpdate::Clear))
}

/// The best unit to give `shard` a new `role`, by the service's model: eligible, not already
/// holding a role in the shard, within the per-unit limit, and (unless colocation is allowed)
/// not on the node of the shard's other role.
fn best_candidate(
    view: &View<'_>,
    service: &ServiceSpec,
    shard: &ShardRecord,
    load: &Load,
    role: Role,
) -> Option<UnitName> {
    let state = view.state;
    let other_nodes: BTreeSet<NodeId> = shard
        .roles
        .keys()
        .filter_map(|unit| state.units.get(unit))
        .map(|unit| unit.node)
        .collect();
    let active_set: BTreeSet<UnitName> = match service.model {
        RedundancyModel::NPlusM { active_units } => {
            let mut ordered: Vec<&UnitRecord> = service
                .units
                .iter()
                .filter_map(|spec| state.units.get(&spec.name))
                .collect();
            ordered.sort_by_key(|unit| view.preference(service, unit));
            ordered
                .into_iter()
                .take(active_units as usize)
                .map(|unit| unit.name.clone())
                .collect()
        }
        _ => BTreeSet::new(),
    };
    let mut candidates: Vec<(_, UnitName)> = service
        .units
        .iter()
        .filter_map(|spec| state.units.get(&spec.name))
        .filter(|unit| view.eligible(unit) && !shard.roles.contains_key(&unit.name))
        .filter(|unit| {
            service.max_shards_per_unit == 0
                || Load::get(&load.total, &unit.name) < service.max_shards_per_unit as usize
        })
        .filter(|unit| {
            service.allow_colocation
                || service.model.multi_active()
                || !other_nodes.contains(&unit.node)
        })
        .map(|unit| {
            let name = unit.name.clone();
            let actives = Load::get(&load.actives, &name) as i64;
            let standbys = Load::get(&load.standbys, &name) as i64;
            let in_active_set = active_set.contains(&name);
            // Lower sorts first.
            let primary: (i64, i64) = match (service.model, role) {
                // 2n: follow the unit that already carries the most of that role.
                (RedundancyModel::TwoN, Role::Active) => (0, -actives),
                (RedundancyModel::TwoN, _) => (0, -standbys),
                // n+m: actives on the first N units, standbys on the others, balanced.
                (RedundancyModel::NPlusM { .. }, Role::Active) => {
                    (i64::from(!in_active_set), actives)
                }
                (RedundancyModel::NPlusM { .. }, _) => (i64::from(in_active_set), standbys),
                _ => (0, Load::get(&load.total, &name) as i64),
            };
            ((primary, view.preference(service, unit)), name)
        })
        .collect();
    candidates.sort();
    candidates.into_iter().next().map(|(_, name)| name)
}

fn refusal(code: AdminCode, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

/// What a switchover applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchoverTarget {
    /// One shard.
    Shard(ShardName),
    /// Every shard of a service.
    Service(crate::ids::ServiceName),
    /// Every shard whose ACTIVE is on a node.
    Node(NodeId),
}

/// Validates a switchover and returns the commands that start it (one per shard), or why it
/// cannot succeed. Every shard must be switchable, or none is touched.
pub fn plan_switchover(
    view: &View<'_>,
    target: &SwitchoverTarget,
) -> Result<Vec<Command>, Refusal> {
    let state = view.state;
    let shards: Vec<&ShardRecord> = match target {
        SwitchoverTarget::Shard(name) => vec![state
            .shards
            .get(name)
            .ok_or_else(|| refusal(AdminCode::NotFound, format!("there is no shard {name}")))?],
        SwitchoverTarget::Service(name) => {
            if state.topology.service(name).is_none() {
                return Err(refusal(
                    AdminCode::NotFound,
                    format!("there is no service {name}"),
                ));
            }
            state
                .shards
                .values()
                .filter(|shard| &shard.service == name)
                .collect()
        }
        SwitchoverTarget::Node(node) => {
            if !state.nodes.contains_key(node) {
                return Err(refusal(
                    AdminCode::NotFound,
                    format!("there is no node {node}"),
                ));
            }
            let shards: Vec<&ShardRecord> = state
                .shards
                .values()
                .filter(|shard| {
                    shard.units_in(Role::Active).any(|unit| {
                        state
                            .units
                            .get(unit)
                            .is_some_and(|record| record.node == *node)
                    })
                })
                .collect();
            if shards.is_empty() {
                return Err(refusal(
                    AdminCode::NoOp,
                    format!("no shard is ACTIVE on node {node}"),
                ));
            }
            shards
        }
    };
    let mut commands = Vec::new();
    for shard in shards {
        let service = state.topology.service(&shard.service).ok_or_else(|| {
            refusal(
                AdminCode::Invalid,
                format!("shard {} has no service", shard.name),
            )
        })?;
        if !service.model.has_standby() {
            return Err(refusal(
                AdminCode::Invalid,
                format!(
                    "shard {} belongs to service {} with model {}, which has no STANDBY to switch to",
                    shard.name, service.name, service.model
                ),
            ));
        }
        if let Some(handover) = &shard.handover {
            return Err(refusal(
                AdminCode::Busy,
                format!(
                    "shard {} is already handing over from {} ({}); wait for it to finish",
                    shard.name,
                    handover.from,
                    handover.reason.name()
                ),
            ));
        }
        let active = shard.units_in(Role::Active).next().ok_or_else(|| {
            refusal(
                AdminCode::Invalid,
                format!("shard {} has no ACTIVE to switch over", shard.name),
            )
        })?;
        let active_unit = &state.units[active];
        if view.settled(active_unit, shard) != Some(Role::Active) {
            return Err(refusal(
                AdminCode::Busy,
                format!(
                    "shard {}: ACTIVE unit {active} has not confirmed its role yet; retry in a moment",
                    shard.name
                ),
            ));
        }
        let ready = view.ready_standbys(shard, active);
        if let Some(first) = ready.first() {
            if !shard.in_sync.contains(first) {
                return Err(refusal(
                    AdminCode::NotInSync,
                    format!(
                        "shard {} cannot switch over: STANDBY {} is not in sync with the ACTIVE \
                         yet (its replica is being transferred or verified; `tandemctl status` \
                         shows the progress); retry once it is",
                        shard.name,
                        ready
                            .iter()
                            .map(UnitName::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let standby = ready.into_iter().next().ok_or_else(|| {
            let detail = shard
                .units_in(Role::Standby)
                .filter_map(|name| state.units.get(name))
                .map(|unit| describe_unready(view, unit, shard))
                .collect::<Vec<_>>();
            let why = if detail.is_empty() {
                "it has no STANDBY".to_owned()
            } else {
                detail.join("; ")
            };
            refusal(
                AdminCode::NoStandby,
                format!("shard {} cannot switch over: {why}", shard.name),
            )
        })?;
        commands.push(Command::Reassign {
            shard: shard.name.clone(),
            expected_version: shard.version,
            changes: vec![RoleChange {
                unit: active.clone(),
                role: Some(Role::Quiescing),
            }],
            handover: HandoverUpdate::Start(Handover {
                from: active.clone(),
                to: Some(standby),
                reason: HandoverReason::Switchover,
            }),
        });
    }
    Ok(commands)
}

/// Why `unit` is not a ready STANDBY of `shard`, for refusals.
fn describe_unready(view: &View<'_>, unit: &UnitRecord, shard: &ShardRecord) -> String {
    let state = view.state;
    let name = &unit.name;
    if !state.is_up(unit.node) {
        return format!("STANDBY {name}'s node {} is down", unit.node);
    }
    if !state.in_service(unit) {
        return format!(
            "STANDBY {name} is out of service ({})",
            state.effective_admin(unit).name()
        );
    }
    match view.report(unit) {
        None => format!("STANDBY {name} has not been reported by its agent yet"),
        Some(report) if report.presence != Presence::Running => {
            format!("STANDBY {name} is {}", report.presence.name())
        }
        Some(_) if view.settled(unit, shard).is_none() => {
            format!("STANDBY {name} has not confirmed its role yet")
        }
        Some(_) => format!("STANDBY {name} is not ready"),
    }
}

mod pending;

#[cfg(test)]
mod tests;
