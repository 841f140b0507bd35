//! The node agent's decisions: which unit processes run, which hooks they are asked to run,
//! when a unit has faulted, and what the agent reports to the leader.
//!
//! The agent works from the committed state (the intent for its node's units) and from what
//! happens to its units (process started or exited, SDK registration, hook answers, faults
//! the unit reports). It returns [`AgentAction`]s for the daemon's supervisor and SDK server
//! to carry out; it owns no process or socket.
//!
//! Rules:
//! - A unit runs when the committed state says it should (`ClusterState::should_run`) as the
//!   instance (generation) the state names; a newer generation means "restart".
//! - Each unit has at most one hook outstanding. Demotions and removals go first, then STANDBY,
//!   then ACTIVE, so a unit gives up work before it takes more.
//! - A unit acts for its ACTIVE or QUIESCING roles only while its lease is valid: the agent
//!   passes its own lease on, and the unit's SDK enforces the deadline by itself. A lapse
//!   suspends the roles (the SDK quiesces the application) without a hook or a change of what
//!   the agent reports as confirmed, only that the acting roles are withheld; the lease alone
//!   resumes them. A unit whose lease ran out gets it back only once it cannot believe in an
//!   ACTIVE the committed state no longer gives it at that epoch (`Instance::may_act_stale`):
//!   it is first told the roles that changed meanwhile, and answers.
//! - A unit with an unhandled fault is asked for QUIESCED on its acting roles.
//! - A fault is reported only once the unit can no longer act: after its process exited (a
//!   unit that misses a health check or a hook deadline is killed first), or after it reported
//!   the fault itself (the SDK quiesces before reporting). Faults are repeated in every report
//!   until the committed state shows them handled.
//! - After the agent starts (daemon start or restart), it starts nothing until it has a valid
//!   lease, i.e. has caught up with the leader's log; units that still held roles then (or
//!   that a shard continues from while their replica may be in memory only) are reported with
//!   an `AgentRestarted` fault, since their previous instance died with the daemon.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::cluster::{Changes, ClusterState, FaultId, Role};
use crate::ids::{NodeId, ServiceName, ShardName, UnitName};
use crate::ladder::{FaultKind, Severity};
use crate::lease::AgentLease;
use crate::report::{AgentReport, Presence, SettledRoles, UnitReport};
use crate::time::Time;
use crate::topology::{ProcessSpec, UnitTimeouts};

/// A request the agent sends to a unit through the SDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitCommand {
    /// Take `role` (ACTIVE, STANDBY or QUIESCED) for `shard` at `epoch`.
    Assign {
        /// The shard.
        shard: ShardName,
        /// The role.
        role: Role,
        /// The shard's epoch.
        epoch: u64,
    },
    /// Finish in-flight work for `shard`, take no new work; answering means QUIESCED.
    Quiesce {
        /// The shard.
        shard: ShardName,
        /// The shard's epoch.
        epoch: u64,
    },
    /// Forget `shard`.
    Remove {
        /// The shard.
        shard: ShardName,
    },
    /// Answer if healthy.
    Health,
    /// Reset the failing part in place (ladder L0).
    Reset,
    /// Several [`UnitCommand::Assign`]s of different shards, carried out in order and answered
    /// once (at most [`ASSIGN_BATCH_MAX`]). A unit given hundreds of roles at once (a start, a
    /// failover onto it, its lease back after a lapse) gets them in a few requests instead of
    /// one request per shard.
    Batch(Vec<UnitCommand>),
}

/// Assignments one [`UnitCommand::Batch`] carries at most. The unit's callback timeout covers
/// the whole batch.
pub const ASSIGN_BATCH_MAX: usize = 64;

impl UnitCommand {
    /// The commands this one carries out, in order: a batch's items, or the command itself.
    pub fn parts(&self) -> &[UnitCommand] {
        match self {
            UnitCommand::Batch(items) => items,
            single => std::slice::from_ref(single),
        }
    }

    /// The shard a single command is about (`None` for a health check, a reset or a batch).
    pub fn shard(&self) -> Option<&ShardName> {
        match self {
            UnitCommand::Assign { shard, .. }
            | UnitCommand::Quiesce { shard, .. }
            | UnitCommand::Remove { shard } => Some(shard),
            UnitCommand::Health | UnitCommand::Reset | UnitCommand::Batch(_) => None,
        }
    }
}

/// How a stop should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopSpec {
    /// Kill at once (SIGKILL to the process group) instead of a graceful terminate.
    pub kill: bool,
    /// The service's terminate command, for a graceful stop.
    pub terminate: Option<ProcessSpec>,
    /// The service's cleanup command, run after the process is gone.
    pub cleanup: Option<ProcessSpec>,
    /// How long the graceful stop may take before SIGKILL.
    pub terminate_timeout: Duration,
    /// How long the cleanup command may run.
    pub cleanup_timeout: Duration,
}

/// What the agent asks the daemon to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAction {
    /// Start instance `generation` of `unit`.
    Start {
        /// The unit.
        unit: UnitName,
        /// Its service.
        service: ServiceName,
        /// The instance.
        generation: u64,
        /// How to start it.
        spec: ProcessSpec,
        /// Whether it should rebuild its local replica (ladder L2).
        reinitialise: bool,
    },
    /// Stop instance `generation` of `unit` (its whole process group), then clean up.
    Stop {
        /// The unit.
        unit: UnitName,
        /// The instance.
        generation: u64,
        /// How.
        how: StopSpec,
    },
    /// Send a request to the unit; the answer comes back through [`Agent::on_reply`].
    Send {
        /// The unit.
        unit: UnitName,
        /// The instance.
        generation: u64,
        /// The request's id.
        request: u64,
        /// What to ask.
        command: UnitCommand,
    },
    /// Tell the unit until when it may act (`None`: it may not). The SDK quiesces its ACTIVE
    /// roles by itself at the deadline.
    Lease {
        /// The unit.
        unit: UnitName,
        /// The instance.
        generation: u64,
        /// The deadline, on the agent's clock.
        valid_until: Option<Time>,
    },
    /// Run the node-restart command (ladder L3).
    NodeRestart {
        /// The command.
        spec: ProcessSpec,
    },
}

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Started at `since`, not registered yet.
    Starting { since: Time },
    /// Registered.
    Running,
    /// Being stopped; when it exits, `fault` (if any) is reported.
    Stopping { fault: Option<FaultKind> },
}

/// What a hook's success means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HookOutcome {
    /// The unit now holds this role for the shard at this epoch (`None`: removed).
    Role(ShardName, Option<(Role, u64)>),
    /// The unit now holds these roles at these epochs (a [`UnitCommand::Batch`]).
    Roles(Vec<(ShardName, Role, u64)>),
    /// The reset request with this number is done.
    Reset(u64),
}

/// Hooks a unit may have been sent and not answered yet. The SDK runs a unit's hooks one at
/// a time, in the order they were sent; sending the next ones before the answer saves a round
/// trip through the daemon's loop per hook, which is what a unit given hundreds of roles at
/// once (a start, a failover, a lease back after a lapse) would otherwise wait for.
pub const HOOKS_IN_FLIGHT_MAX: usize = 32;

/// A hook waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hook {
    id: u64,
    /// When the unit began to work on it, as far as the agent can tell: when it was sent, or
    /// when the hook ahead of it was answered. Its timeout runs from there.
    started: Option<Time>,
    outcome: HookOutcome,
}

impl Hook {
    /// The shards whose roles this hook changes.
    fn shards(&self) -> impl Iterator<Item = &ShardName> {
        let (one, many) = match &self.outcome {
            HookOutcome::Role(shard, _) => (Some(shard), &[][..]),
            HookOutcome::Roles(roles) => (None, &roles[..]),
            HookOutcome::Reset(_) => (None, &[][..]),
        };
        one.into_iter()
            .chain(many.iter().map(|(shard, _, _)| shard))
    }

    /// The shards this hook makes ACTIVE, with the epoch: once it ran, the unit believes it
    /// may act for them.
    fn activates(&self) -> impl Iterator<Item = (&ShardName, u64)> {
        let (one, many) = match &self.outcome {
            HookOutcome::Role(shard, Some((Role::Active, epoch))) => {
                (Some((shard, *epoch)), &[][..])
            }
            HookOutcome::Roles(roles) => (None, &roles[..]),
            HookOutcome::Role(..) | HookOutcome::Reset(_) => (None, &[][..]),
        };
        one.into_iter().chain(
            many.iter()
                .filter(|(_, role, _)| *role == Role::Active)
                .map(|(shard, _, epoch)| (shard, *epoch)),
        )
    }
}

/// One running (or starting, or stopping) process of a unit.
#[derive(Debug, Clone)]
struct Instance {
    generation: u64,
    phase: Phase,
    pid: Option<u32>,
    /// Roles the unit acknowledged, by shard.
    confirmed: BTreeMap<ShardName, Role>,
    /// The epoch of each confirmed ACTIVE role: a unit that missed a new epoch of a shard it
    /// holds ACTIVE is told it again (single-ACTIVE services; an n-way-active shard gets a new
    /// epoch whenever a unit joins, which changes nothing for the others).
    active_epochs: BTreeMap<ShardName, u64>,
    /// Whether the unit's service has one ACTIVE per shard.
    single_active: bool,
    /// Hooks sent and not answered, oldest first (the unit works on the first); at most
    /// [`HOOKS_IN_FLIGHT_MAX`], at most one per shard.
    hooks: std::collections::VecDeque<Hook>,
    /// The shards of `hooks` (up to `HOOKS_IN_FLIGHT_MAX × ASSIGN_BATCH_MAX` of them). They
    /// stay in the diff (`queued`: the report counts them unsettled) but leave `queue` until
    /// their hook is answered, so finding the next hook never walks past them.
    in_flight: BTreeSet<ShardName>,
    /// An outstanding health check: (request id, deadline).
    health: Option<(u64, Time)>,
    next_health: Time,
    /// The last reset request carried out.
    reset_seen: u64,
    /// The last lease deadline sent to the unit.
    lease_sent: Option<Option<Time>>,
    /// How to kill it (the service's cleanup command and timeouts, as when it started).
    kill: StopSpec,
    /// It reported a fault and was not reset since: its hooks cannot make it act again.
    faulted: bool,
    /// Shards where what it confirmed differs from what it should hold (see `differs`), with
    /// the priority of the hook that mends it, as of the last refresh: "the diff". Kept up to
    /// date from what changed, so that finding the next hook and reporting cost what is
    /// unsettled, not what the unit holds.
    queued: BTreeMap<ShardName, u8>,
    /// The diff by hook priority, then name, less the shards in flight: the next hook is the
    /// first entry, found without a walk (a unit given thousands of roles at once answers
    /// them one by one).
    queue: BTreeSet<(u8, ShardName)>,
    /// Shards whose place in the diff must be worked out again.
    stale: BTreeSet<ShardName>,
    /// The diff must be worked out again for every shard.
    all_stale: bool,
    /// The `may_act` that the diff was worked out with.
    diff_may_act: Option<bool>,
}

impl Instance {
    fn new(generation: u64, now: Time, reset_seen: u64, kill: StopSpec) -> Self {
        Self {
            generation,
            phase: Phase::Starting { since: now },
            pid: None,
            confirmed: BTreeMap::new(),
            active_epochs: BTreeMap::new(),
            single_active: true,
            hooks: std::collections::VecDeque::new(),
            in_flight: BTreeSet::new(),
            health: None,
            next_health: now,
            reset_seen,
            lease_sent: None,
            kill,
            faulted: false,
            queue: BTreeSet::new(),
            queued: BTreeMap::new(),
            stale: BTreeSet::new(),
            all_stale: true,
            diff_may_act: None,
        }
    }

    /// Brings the diff up to date with the committed `state` for unit `name`.
    fn refresh_diff(&mut self, state: &ClusterState, name: &UnitName, may_act: bool) {
        if !self.all_stale && self.diff_may_act.is_some_and(|before| before != may_act) {
            // Whether the unit may act changes only what it should hold where its committed
            // role is acting (ACTIVE or QUIESCING becomes QUIESCED): a fault costs the shards
            // it acts for, not every shard it holds.
            self.diff_may_act = Some(may_act);
            self.stale.extend(
                state
                    .roles_of(name)
                    .filter(|(_, role)| role.is_acting())
                    .map(|(shard, _)| shard.clone()),
            );
        }
        if self.all_stale || self.diff_may_act != Some(may_act) {
            self.all_stale = false;
            self.stale.clear();
            self.diff_may_act = Some(may_act);
            self.queue.clear();
            self.queued.clear();
            let shards: BTreeSet<ShardName> = state
                .roles_of(name)
                .map(|(shard, _)| shard.clone())
                .chain(self.confirmed.keys().cloned())
                .collect();
            for shard in shards {
                let priority = hook_priority(state, name, self, &shard, may_act);
                self.place(shard, priority);
            }
            return;
        }
        for shard in std::mem::take(&mut self.stale) {
            let priority = hook_priority(state, name, self, &shard, may_act);
            self.place(shard, priority);
        }
    }

    /// Puts `shard` in the diff with `priority`, or takes it out (`None`).
    fn place(&mut self, shard: ShardName, priority: Option<u8>) {
        if let Some(old) = self.queued.remove(&shard) {
            self.queue.remove(&(old, shard.clone()));
        }
        if let Some(priority) = priority {
            if !self.in_flight.contains(&shard) {
                self.queue.insert((priority, shard.clone()));
            }
            self.queued.insert(shard, priority);
        }
    }

    /// `hook` was sent: its shards leave the queue until it is answered.
    fn sent(&mut self, hook: Hook) {
        for shard in hook.shards() {
            if let Some(priority) = self.queued.get(shard) {
                self.queue.remove(&(*priority, shard.clone()));
            }
            self.in_flight.insert(shard.clone());
        }
        self.hooks.push_back(hook);
    }

    /// `hook` was answered: its shards may have their next hook.
    fn answered(&mut self, hook: &Hook) {
        for shard in hook.shards() {
            self.in_flight.remove(shard);
            if let Some(priority) = self.queued.get(shard) {
                self.queue.insert((*priority, shard.clone()));
            }
        }
    }

    /// The confirmed role of `shard` changed.
    fn confirmed_changed(&mut self, shard: &ShardName) {
        self.stale.insert(shard.clone());
    }

    /// Whether the last lease deadline sent to the unit is still ahead at `now`.
    fn leased(&self, now: Time) -> bool {
        self.lease_sent.flatten().is_some_and(|until| now < until)
    }

    /// The unit confirmed `role` for `shard` at `epoch`.
    fn confirm(&mut self, shard: ShardName, role: Role, epoch: u64) {
        self.confirmed_changed(&shard);
        if role == Role::Active {
            self.active_epochs.insert(shard.clone(), epoch);
        } else {
            self.active_epochs.remove(&shard);
        }
        self.confirmed.insert(shard, role);
    }
}

/// The role `name` should hold for `shard` by the committed `state`: acting roles become
/// QUIESCED when it may not act.
fn wanted_role(
    state: &ClusterState,
    name: &UnitName,
    shard: &ShardName,
    may_act: bool,
) -> Option<Role> {
    let role = *state.shards.get(shard)?.roles.get(name)?;
    Some(if role.is_acting() && !may_act {
        Role::Quiesced
    } else {
        role
    })
}

/// The priority of the hook that brings what the unit confirmed for `shard` to what it should
/// hold (lower goes first: taking roles away and quiescing, then STANDBY, then ACTIVE), or
/// `None` when nothing differs (see [`Instance::holds`]).
fn hook_priority(
    state: &ClusterState,
    name: &UnitName,
    instance: &Instance,
    shard: &ShardName,
    may_act: bool,
) -> Option<u8> {
    let wanted = wanted_role(state, name, shard, may_act);
    if instance.holds(state, shard, wanted) {
        return None;
    }
    Some(match wanted {
        None | Some(Role::Quiescing | Role::Quiesced) => 0,
        Some(Role::Standby) => 2,
        Some(Role::Active) => 3,
    })
}

impl Instance {
    /// Whether what the unit confirmed for `shard` is what it should hold, `wanted` (`None`:
    /// nothing): a QUIESCING role is held once the unit confirmed QUIESCED, and an ACTIVE role
    /// of a single-ACTIVE service only at the shard's committed epoch.
    fn holds(&self, state: &ClusterState, shard: &ShardName, wanted: Option<Role>) -> bool {
        let held = self.confirmed.get(shard).copied();
        match wanted {
            None => held.is_none(),
            Some(Role::Active) if self.single_active => {
                held == Some(Role::Active)
                    && self.active_epochs.get(shard)
                        == state.shards.get(shard).map(|record| &record.epoch)
            }
            Some(role) => held == Some(crate::report::confirmed_role(role)),
        }
    }

    /// Whether what the unit confirmed for `shard` differs from what it should hold.
    fn differs(
        &self,
        state: &ClusterState,
        name: &UnitName,
        shard: &ShardName,
        may_act: bool,
    ) -> bool {
        !self.holds(state, shard, wanted_role(state, name, shard, may_act))
    }

    /// Whether the unit may believe it acts for a shard that the committed `state` does not
    /// have it act for at that epoch: a confirmed ACTIVE the diff holds against it, or a hook
    /// in flight that makes it ACTIVE at another epoch (or where it should not be ACTIVE at
    /// all). Costs the diff and the hooks in flight.
    fn may_act_stale(&self, state: &ClusterState, name: &UnitName) -> bool {
        let acting_at = |shard: &ShardName, epoch: Option<u64>| {
            state.shards.get(shard).is_some_and(|record| {
                record.roles.get(name).is_some_and(|role| role.is_acting())
                    && (!self.single_active || Some(record.epoch) == epoch)
            })
        };
        let confirmed_stale = self.queued.keys().any(|shard| {
            self.confirmed.get(shard) == Some(&Role::Active)
                && !acting_at(shard, self.active_epochs.get(shard).copied())
        });
        confirmed_stale
            || self.hooks.iter().any(|hook| {
                hook.activates()
                    .any(|(shard, epoch)| !acting_at(shard, Some(epoch)))
            })
    }
}

/// What the agent knows of one unit.
#[derive(Debug, Clone, Default)]
struct Slot {
    instance: Option<Instance>,
    /// Faults not yet seen committed.
    faults: Vec<(FaultId, FaultKind)>,
    /// Last fault number used per generation: (generation, seq).
    fault_seq: (u64, u64),
    /// The committed `fault_seen`, last time the agent looked.
    committed_fault_seen: FaultId,
    /// The unit's last load report.
    load: Option<u32>,
}

impl Slot {
    fn next_fault_id(&mut self, generation: u64) -> FaultId {
        let committed = if self.committed_fault_seen.generation == generation {
            self.committed_fault_seen.seq
        } else {
            0
        };
        let local = if self.fault_seq.0 == generation {
            self.fault_seq.1
        } else {
            0
        };
        let seq = committed.max(local) + 1;
        self.fault_seq = (generation, seq);
        FaultId { generation, seq }
    }

    fn has_fault_for(&self, generation: u64) -> bool {
        self.faults
            .iter()
            .any(|(id, _)| id.generation == generation)
    }
}

/// A node's agent.
#[derive(Debug, Clone)]
pub struct Agent {
    /// This node.
    node: NodeId,
    /// The lease granted by the leader.
    lease: AgentLease,
    /// Units placed on this node (and units that were, until their process is gone).
    units: BTreeMap<UnitName, Slot>,
    /// Next request id.
    next_request: u64,
    /// Whether the agent has had a valid lease since it started.
    caught_up: bool,
    /// The node-restart generation already acted on.
    node_restart_seen: Option<u64>,
}

impl Agent {
    /// The agent of `node`, with leases of length `lease`.
    pub fn new(node: NodeId, lease: Duration) -> Self {
        Self {
            node,
            lease: AgentLease::new(lease),
            units: BTreeMap::new(),
            next_request: 1,
            caught_up: false,
            node_restart_seen: None,
        }
    }

    /// The leader granted the heartbeat sent at `sent_at` with its log ending at `floor`,
    /// `shortened_by` less than a whole lease.
    ///
    /// Returns false, taking nothing, for a grant of a heartbeat sent after `now`: a grant
    /// answers a heartbeat this node sent, so one from its future answers a heartbeat of an
    /// earlier run of the node on another clock (a reboot, another host). Taken, it would
    /// outlast every real grant (those would all look older).
    pub fn on_grant(
        &mut self,
        now: Time,
        sent_at: Time,
        floor: u64,
        shortened_by: std::time::Duration,
    ) -> bool {
        if sent_at > now {
            return false;
        }
        self.lease.on_grant(sent_at, floor, shortened_by);
        true
    }

    /// The lease's deadline, if it is valid at `now` for an agent that applied `applied`.
    pub fn lease_until(&self, now: Time, applied: u64) -> Option<Time> {
        self.lease.valid_until(now, applied)
    }

    /// The newest lease grant: its heartbeat's send time and its floor (for logs).
    pub fn newest_grant(&self) -> Option<(Time, u64)> {
        self.lease.newest_grant()
    }

    /// The committed `state` changed by `changes` (applied since the last call): the shards
    /// whose roles a unit must compare with what it confirmed. Costs the changed shards times
    /// the node's units, never the shards a unit holds.
    pub fn on_changes(&mut self, state: &ClusterState, changes: &Changes) {
        for (name, slot) in &mut self.units {
            let Some(instance) = &mut slot.instance else {
                continue;
            };
            if changes.topology {
                instance.all_stale = true;
                continue;
            }
            for shard in &changes.shards {
                let holds = state
                    .shards
                    .get(shard)
                    .is_some_and(|record| record.roles.contains_key(name));
                if holds || instance.confirmed.contains_key(shard) {
                    instance.stale.insert(shard.clone());
                }
            }
        }
    }

    /// Reconciles the node's units with the committed `state` (applied up to `applied`) at
    /// `now`, and returns what to do.
    pub fn reconcile(&mut self, now: Time, state: &ClusterState, applied: u64) -> Vec<AgentAction> {
        let mut actions = Vec::new();
        let lease_until = self.lease.valid_until(now, applied);
        let node_restart = state
            .nodes
            .get(&self.node)
            .map(|node| node.restart_generation);
        if lease_until.is_some() && !self.caught_up {
            self.caught_up = true;
            self.node_restart_seen = node_restart;
            // Units that held roles when the daemon stopped lost their instance with it. So
            // did a unit without roles that a shard continues from (its last ACTIVE) while its
            // replica may hold acknowledged writes in memory only: the fault tells the cluster
            // that the replica no longer has them.
            for unit in state.units_on(self.node) {
                let continued_in_memory = state.shards_naming(&unit.name).any(|shard| {
                    shard.synced_this_epoch && shard.last_active.as_ref() == Some(&unit.name)
                });
                if state.roles_of(&unit.name).next().is_some() || continued_in_memory {
                    let slot = self.units.entry(unit.name.clone()).or_default();
                    slot.committed_fault_seen = unit.fault_seen;
                    let id = slot.next_fault_id(unit.generation);
                    slot.faults.push((id, FaultKind::AgentRestarted));
                }
            }
        }
        if self.caught_up && node_restart > self.node_restart_seen {
            self.node_restart_seen = node_restart;
            if let Some(spec) = &state.topology.node_restart {
                actions.push(AgentAction::NodeRestart { spec: spec.clone() });
            }
        }

        let mut names: BTreeSet<UnitName> = self.units.keys().cloned().collect();
        names.extend(state.units_on(self.node).map(|unit| unit.name.clone()));
        for name in names {
            self.reconcile_unit(now, state, &name, lease_until, &mut actions);
        }
        actions
    }

    fn reconcile_unit(
        &mut self,
        now: Time,
        state: &ClusterState,
        name: &UnitName,
        lease_until: Option<Time>,
        actions: &mut Vec<AgentAction>,
    ) {
        let record = state
            .units
            .get(name)
            .filter(|record| record.node == self.node);
        let service = state.service_of_unit(name);
        let stop_spec = |kill: bool| StopSpec {
            kill,
            terminate: service.and_then(|service| service.terminate.clone()),
            cleanup: service.and_then(|service| service.cleanup.clone()),
            terminate_timeout: Duration::from_millis(
                service.map_or(UnitTimeouts::default().terminate_ms, |s| {
                    s.timeouts.terminate_ms
                }),
            ),
            cleanup_timeout: Duration::from_millis(
                service.map_or(UnitTimeouts::default().cleanup_ms, |s| {
                    s.timeouts.cleanup_ms
                }),
            ),
        };
        let caught_up = self.caught_up;
        let slot = self.units.entry(name.clone()).or_default();
        if let Some(record) = record {
            slot.committed_fault_seen = record.fault_seen;
            slot.faults
                .retain(|(id, _)| id.generation == record.generation && *id > record.fault_seen);
        }
        let Some(record) = record else {
            // Not this node's unit (any more): stop what runs, then forget it.
            match &mut slot.instance {
                Some(instance) if !matches!(instance.phase, Phase::Stopping { .. }) => {
                    instance.phase = Phase::Stopping { fault: None };
                    actions.push(AgentAction::Stop {
                        unit: name.clone(),
                        generation: instance.generation,
                        how: stop_spec(false),
                    });
                }
                Some(_) => {}
                None => {
                    self.units.remove(name);
                }
            }
            return;
        };
        let service = service.expect("a unit record has a service in the topology");
        let timeouts = service.timeouts;
        let should_run = state.should_run(record);

        let Some(instance) = &mut slot.instance else {
            if caught_up && should_run && !slot.has_fault_for(record.generation) {
                slot.instance = Some(Instance::new(
                    record.generation,
                    now,
                    record.reset_requests,
                    stop_spec(true),
                ));
                actions.push(AgentAction::Start {
                    unit: name.clone(),
                    service: record.service.clone(),
                    generation: record.generation,
                    spec: service.instantiate.clone(),
                    reinitialise: record.reinitialise,
                });
            }
            return;
        };
        if matches!(instance.phase, Phase::Stopping { .. }) {
            return;
        }
        if instance.generation != record.generation || !should_run {
            let kill = matches!(instance.phase, Phase::Starting { .. });
            instance.phase = Phase::Stopping { fault: None };
            actions.push(AgentAction::Stop {
                unit: name.clone(),
                generation: instance.generation,
                how: stop_spec(kill),
            });
            return;
        }
        let kill_with =
            |instance: &mut Instance, fault: FaultKind, actions: &mut Vec<AgentAction>| {
                instance.phase = Phase::Stopping { fault: Some(fault) };
                actions.push(AgentAction::Stop {
                    unit: name.clone(),
                    generation: instance.generation,
                    how: stop_spec(true),
                });
            };
        match instance.phase {
            Phase::Starting { since } => {
                if now.saturating_since(since) >= Duration::from_millis(timeouts.instantiate_ms) {
                    kill_with(instance, FaultKind::InstantiationFailed, actions);
                }
                return;
            }
            Phase::Stopping { .. } => return,
            Phase::Running => {}
        }
        if instance.health.is_some_and(|(_, deadline)| now >= deadline) {
            kill_with(instance, FaultKind::HealthTimeout, actions);
            return;
        }
        let callback_timeout = Duration::from_millis(timeouts.callback_ms);
        if let Some(front) = instance.hooks.front_mut() {
            let started = *front.started.get_or_insert(now);
            if now.saturating_since(started) >= callback_timeout {
                kill_with(instance, FaultKind::CallbackFailed, actions);
                return;
            }
        }

        let faulted = slot
            .faults
            .iter()
            .any(|(id, _)| id.generation == record.generation);
        let may_act = !faulted && !instance.faulted;
        let single_active = !matches!(
            service.model,
            crate::topology::RedundancyModel::NWayActive { .. }
        );
        if instance.single_active != single_active {
            instance.single_active = single_active;
            instance.all_stale = true;
        }
        instance.refresh_diff(state, name, may_act);

        // The lease first, so that a unit told ACTIVE already knows until when. A unit whose
        // lease ran out keeps its roles, suspended (its SDK stopped it acting); it gets a lease
        // again only once it cannot believe in an ACTIVE the cluster moved meanwhile.
        let unit_lease =
            lease_until.filter(|_| instance.leased(now) || !instance.may_act_stale(state, name));
        if instance.lease_sent != Some(unit_lease) {
            instance.lease_sent = Some(unit_lease);
            actions.push(AgentAction::Lease {
                unit: name.clone(),
                generation: instance.generation,
                valid_until: unit_lease,
            });
        }
        while instance.hooks.len() < HOOKS_IN_FLIGHT_MAX {
            let Some((command, outcome)) =
                next_hook(state, name, instance, record.reset_requests, may_act)
            else {
                break;
            };
            let id = self.next_request;
            self.next_request += 1;
            // The first hook starts now; the others when the one ahead is answered.
            let started = instance.hooks.is_empty().then_some(now);
            let hook = Hook {
                id,
                started,
                outcome,
            };
            instance.sent(hook);
            actions.push(AgentAction::Send {
                unit: name.clone(),
                generation: instance.generation,
                request: id,
                command,
            });
        }
        // A health check would wait behind the hooks, which have their own timeout.
        if instance.health.is_none() && instance.hooks.is_empty() && now >= instance.next_health {
            let id = self.next_request;
            self.next_request += 1;
            instance.health = Some((id, now + Duration::from_millis(timeouts.health_timeout_ms)));
            instance.next_health = now + Duration::from_millis(timeouts.health_interval_ms);
            actions.push(AgentAction::Send {
                unit: name.clone(),
                generation: instance.generation,
                request: id,
                command: UnitCommand::Health,
            });
        }
    }

    /// The process of `unit`'s instance `generation` started as `pid`.
    pub fn on_started(&mut self, unit: &UnitName, generation: u64, pid: u32) {
        if let Some(instance) = self.instance_mut(unit, generation) {
            instance.pid = Some(pid);
        }
    }

    /// The process could not be started at all.
    pub fn on_start_failed(&mut self, unit: &UnitName, generation: u64) {
        let Some(slot) = self.units.get_mut(unit) else {
            return;
        };
        if slot
            .instance
            .as_ref()
            .is_some_and(|i| i.generation == generation)
        {
            slot.instance = None;
            let id = slot.next_fault_id(generation);
            slot.faults.push((id, FaultKind::InstantiationFailed));
        }
    }

    /// The process of instance `generation` exited (with `code`, or killed by `signal`).
    pub fn on_exited(
        &mut self,
        unit: &UnitName,
        generation: u64,
        code: Option<i32>,
        signal: Option<i32>,
    ) {
        let Some(slot) = self.units.get_mut(unit) else {
            return;
        };
        let Some(instance) = slot.instance.take_if(|i| i.generation == generation) else {
            return;
        };
        let fault = match instance.phase {
            // Killed after its SDK connection dropped: the exit itself says more.
            Phase::Stopping {
                fault: Some(FaultKind::ProcessExit { .. }),
            } => Some(FaultKind::ProcessExit { code, signal }),
            Phase::Stopping { fault } => fault,
            Phase::Starting { .. } | Phase::Running => {
                Some(FaultKind::ProcessExit { code, signal })
            }
        };
        if let Some(kind) = fault {
            let id = slot.next_fault_id(generation);
            slot.faults.push((id, kind));
        }
    }

    /// The unit's instance `generation` registered through the SDK. Returns false if the agent
    /// does not expect it (an old instance, or one being stopped), in which case the daemon
    /// refuses the registration.
    pub fn on_registered(&mut self, now: Time, unit: &UnitName, generation: u64) -> bool {
        let Some(instance) = self.instance_mut(unit, generation) else {
            return false;
        };
        if !matches!(instance.phase, Phase::Starting { .. }) {
            return false;
        }
        instance.phase = Phase::Running;
        instance.next_health = now;
        true
    }

    /// The unit's SDK connection closed. A unit without its agent cannot be told to stop
    /// acting, so it is killed (its SDK also quiesces and exits when the connection drops).
    pub fn on_disconnected(&mut self, unit: &UnitName, generation: u64) -> Option<AgentAction> {
        let instance = self.instance_mut(unit, generation)?;
        if matches!(instance.phase, Phase::Stopping { .. }) {
            return None;
        }
        instance.phase = Phase::Stopping {
            fault: Some(FaultKind::ProcessExit {
                code: None,
                signal: None,
            }),
        };
        let how = instance.kill.clone();
        Some(AgentAction::Stop {
            unit: unit.clone(),
            generation,
            how,
        })
    }

    /// The unit answered request `request`: `Ok` or an error message. A failed hook is a
    /// fault: the unit is killed (see the module rules) and the fault reported once it exited.
    pub fn on_reply(
        &mut self,
        unit: &UnitName,
        generation: u64,
        request: u64,
        result: Result<(), String>,
    ) -> Option<AgentAction> {
        let instance = self
            .units
            .get_mut(unit)?
            .instance
            .as_mut()
            .filter(|instance| instance.generation == generation)?;
        if instance.health.is_some_and(|(id, _)| id == request) {
            instance.health = None;
            return None;
        }
        let position = instance.hooks.iter().position(|hook| hook.id == request)?;
        let hook = instance.hooks.remove(position).expect("found above");
        instance.answered(&hook);
        if position == 0 {
            // The next one's timeout runs from the next reconcile (within a tick).
            if let Some(next) = instance.hooks.front_mut() {
                next.started = None;
            }
        }
        match result {
            Ok(()) => {
                // A unit that reported a fault does not act again before its reset, even when
                // an ACTIVE hook sent earlier completes.
                let faulted = instance.faulted;
                let held = |role: Role| {
                    if faulted && role.is_acting() {
                        Role::Quiesced
                    } else {
                        role
                    }
                };
                match hook.outcome {
                    HookOutcome::Role(shard, Some((role, epoch))) => {
                        instance.confirm(shard, held(role), epoch);
                    }
                    HookOutcome::Roles(roles) => {
                        for (shard, role, epoch) in roles {
                            instance.confirm(shard, held(role), epoch);
                        }
                    }
                    HookOutcome::Role(shard, None) => {
                        instance.confirmed_changed(&shard);
                        instance.confirmed.remove(&shard);
                        instance.active_epochs.remove(&shard);
                    }
                    HookOutcome::Reset(number) => {
                        instance.reset_seen = number;
                        instance.faulted = false;
                    }
                }
                None
            }
            Err(_) => {
                instance.phase = Phase::Stopping {
                    fault: Some(FaultKind::CallbackFailed),
                };
                Some(AgentAction::Stop {
                    unit: unit.clone(),
                    generation,
                    how: instance.kill.clone(),
                })
            }
        }
    }

    /// The unit reported a fault through the SDK. The SDK stopped its ACTIVE work before
    /// sending this, so the unit's acting roles count as QUIESCED from now on.
    pub fn on_unit_fault(&mut self, unit: &UnitName, generation: u64, severity: Severity) {
        let Some(slot) = self.units.get_mut(unit) else {
            return;
        };
        let Some(instance) = slot
            .instance
            .as_mut()
            .filter(|i| i.generation == generation)
        else {
            return;
        };
        if matches!(instance.phase, Phase::Stopping { .. }) {
            return;
        }
        for role in instance.confirmed.values_mut() {
            if role.is_acting() {
                *role = Role::Quiesced;
            }
        }
        instance.active_epochs.clear();
        instance.all_stale = true;
        instance.faulted = true;
        let id = slot.next_fault_id(generation);
        slot.faults.push((id, FaultKind::Reported(severity)));
    }

    /// The unit reported its load.
    pub fn on_load(&mut self, unit: &UnitName, generation: u64, load: u32) {
        if self.instance_mut(unit, generation).is_some() {
            if let Some(slot) = self.units.get_mut(unit) {
                slot.load = Some(load);
            }
        }
    }

    fn instance_mut(&mut self, unit: &UnitName, generation: u64) -> Option<&mut Instance> {
        self.units
            .get_mut(unit)?
            .instance
            .as_mut()
            .filter(|instance| instance.generation == generation)
    }

    /// The agent's report for the leader, given the committed `state` it applied up to
    /// `applied`, at `now`.
    pub fn report(&self, now: Time, state: &ClusterState, applied: u64) -> AgentReport {
        let lease_valid = self.lease.is_valid(now, applied);
        let mut report = AgentReport {
            applied_index: applied,
            units: BTreeMap::new(),
            in_sync: BTreeMap::new(),
        };
        for (name, slot) in &self.units {
            let record = state
                .units
                .get(name)
                .filter(|record| record.node == self.node);
            let Some(record) = record else {
                if slot.faults.is_empty() && slot.instance.is_none() {
                    continue;
                }
                // A unit that moved away: report only its faults and its process.
                report.units.insert(
                    name.clone(),
                    UnitReport {
                        generation: slot.instance.as_ref().map_or(0, |i| i.generation),
                        presence: slot
                            .instance
                            .as_ref()
                            .map_or(Presence::Stopped, |_| Presence::Stopping),
                        pid: slot.instance.as_ref().and_then(|i| i.pid),
                        faults: slot.faults.clone(),
                        ..UnitReport::default()
                    },
                );
                continue;
            };
            let mut unit_report = UnitReport {
                generation: record.generation,
                presence: Presence::Stopped,
                pid: None,
                settled: None,
                faults: slot.faults.clone(),
                load: slot.load,
            };
            if let Some(instance) = &slot.instance {
                unit_report.generation = instance.generation;
                unit_report.pid = instance.pid;
                unit_report.presence = match instance.phase {
                    Phase::Starting { .. } => Presence::Starting,
                    Phase::Running => Presence::Running,
                    Phase::Stopping { .. } => Presence::Stopping,
                };
                if instance.generation == record.generation && instance.phase == Phase::Running {
                    let faulted = instance.faulted || !slot.faults.is_empty();
                    // In name order, cut at UNSETTLED_LISTED_MAX: conservative while the diff is
                    // not up to date (everything the committed state may have changed since is
                    // worked out here, or counted unsettled), and the shard of a hook in
                    // flight is unsettled (the unit may already act on an ACTIVE it was just
                    // given).
                    // Each run is in name order, so the first MAX + 1 of each hold the first
                    // MAX + 1 of all, which is enough to list the first MAX (thousands of
                    // hooks may be in flight at a start).
                    let listed = crate::report::UNSETTLED_LISTED_MAX + 1;
                    let in_flight = instance.in_flight.iter().take(listed);
                    let mut unsettled: BTreeSet<ShardName> = match instance.diff_may_act {
                        Some(may_act) if !instance.all_stale => {
                            let differing = instance
                                .queued
                                .keys()
                                .filter(|shard| !instance.stale.contains(*shard))
                                .take(listed);
                            let worked_out = instance
                                .stale
                                .iter()
                                .filter(|shard| instance.differs(state, name, shard, may_act))
                                .take(listed);
                            differing.chain(worked_out).cloned().collect()
                        }
                        _ => state
                            .roles_of(name)
                            .map(|(shard, _)| shard.clone())
                            .take(listed)
                            .collect(),
                    };
                    unsettled.extend(in_flight.cloned());
                    unit_report.settled = Some(SettledRoles::listing(
                        unsettled.into_iter(),
                        !lease_valid
                            || !instance.leased(now)
                            || faulted
                            || instance.diff_may_act != Some(true),
                    ));
                }
            }
            report.units.insert(name.clone(), unit_report);
        }
        report
    }

    /// What the agent believes `unit` holds (for status and tests): confirmed roles.
    pub fn confirmed(&self, unit: &UnitName) -> BTreeMap<ShardName, Role> {
        self.units
            .get(unit)
            .and_then(|slot| slot.instance.as_ref())
            .map(|instance| instance.confirmed.clone())
            .unwrap_or_default()
    }
}

/// The next hook for a running unit, if its confirmed roles differ from what it should hold.
/// `may_act`: whether it may hold ACTIVE or QUIESCING (no unhandled fault).
fn next_hook(
    state: &ClusterState,
    name: &UnitName,
    instance: &Instance,
    reset_requests: u64,
    may_act: bool,
) -> Option<(UnitCommand, HookOutcome)> {
    let epoch = |shard: &ShardName| state.shards.get(shard).map_or(0, |record| record.epoch);
    // (priority, shard, command, outcome); lower priority goes first.
    let mut candidates: Vec<(u8, ShardName, UnitCommand, HookOutcome)> = Vec::new();
    let reset_in_flight = instance
        .hooks
        .iter()
        .any(|hook| matches!(hook.outcome, HookOutcome::Reset(_)));
    if reset_requests > instance.reset_seen && !reset_in_flight {
        candidates.push((
            1,
            ShardName::default(),
            UnitCommand::Reset,
            HookOutcome::Reset(reset_requests),
        ));
    }
    // Only the shards where the unit's confirmed role differs from what it should hold, best
    // first: the first that makes a hook is the one (the reset competes at priority 1).
    // A shard with a hook in flight is out of the queue until its answer.
    let mut batch: Vec<(u8, UnitCommand, (ShardName, Role, u64))> = Vec::new();
    for (_, shard) in &instance.queue {
        debug_assert!(
            !instance.in_flight.contains(shard),
            "a shard in flight is out of the queue"
        );
        let wanted = wanted_role(state, name, shard, may_act);
        if instance.holds(state, shard, wanted) {
            continue;
        }
        let Some(role) = wanted else {
            candidates.push((
                0,
                shard.clone(),
                UnitCommand::Remove {
                    shard: shard.clone(),
                },
                HookOutcome::Role(shard.clone(), None),
            ));
            break;
        };
        let (priority, command, outcome) = match role {
            Role::Quiescing => (
                0,
                UnitCommand::Quiesce {
                    shard: shard.clone(),
                    epoch: epoch(shard),
                },
                Role::Quiesced,
            ),
            Role::Quiesced => (
                0,
                assign(shard, Role::Quiesced, epoch(shard)),
                Role::Quiesced,
            ),
            Role::Standby => (2, assign(shard, Role::Standby, epoch(shard)), Role::Standby),
            Role::Active => (3, assign(shard, Role::Active, epoch(shard)), Role::Active),
        };
        // The queue is in (priority, name) order, as candidates are compared: the first
        // candidate is the best, and the assignments right behind it at the same priority go
        // in the same batch.
        match batch.first() {
            None => {}
            Some((first, _, _))
                if *first == priority && matches!(command, UnitCommand::Assign { .. }) =>
            {
                batch.push((priority, command, (shard.clone(), outcome, epoch(shard))));
                if batch.len() == ASSIGN_BATCH_MAX {
                    break;
                }
                continue;
            }
            Some(_) => break,
        }
        if !matches!(command, UnitCommand::Assign { .. }) {
            candidates.push((
                priority,
                shard.clone(),
                command,
                HookOutcome::Role(shard.clone(), Some((outcome, epoch(shard)))),
            ));
            break;
        }
        batch.push((priority, command, (shard.clone(), outcome, epoch(shard))));
    }
    if let Some((priority, _, (shard, _, _))) = batch.first() {
        let (priority, shard) = (*priority, shard.clone());
        let (command, outcome) = if batch.len() == 1 {
            let (_, command, (shard, role, epoch)) = batch.pop().expect("one");
            (command, HookOutcome::Role(shard, Some((role, epoch))))
        } else {
            let (commands, roles) = batch
                .into_iter()
                .map(|(_, command, role)| (command, role))
                .unzip();
            (UnitCommand::Batch(commands), HookOutcome::Roles(roles))
        };
        candidates.push((priority, shard, command, outcome));
    }
    candidates
        .into_iter()
        .min_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)))
        .map(|(_, _, command, outcome)| (command, outcome))
}

fn assign(shard: &ShardName, role: Role, epoch: u64) -> UnitCommand {
    UnitCommand::Assign {
        shard: shard.clone(),
        role,
        epoch,
    }
}

#[cfg(test)]
mod tests;
