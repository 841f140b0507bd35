//! Deterministic simulation of whole tandem clusters in one thread, from one `u64` seed.
//!
//! Every node runs the real [`tandem_node::Node`], as tandemd does: the Raft replica (raft-rs
//! over tandem's WAL storage), the leader's liveness tracker, quorum clock and director, the
//! agent, the data plane and the replica-file books. Only the world around them is simulated:
//!
//! - **time**: one event queue ordered by (time, sequence number); each node ticks every
//!   10 ms of its own clock, which drifts by up to ±1 % ([`node`]);
//! - **network**: per-message delay (1 ms to a per-seed maximum of 5–20 ms, a few messages
//!   held back up to 200 ms more), loss, duplication, and partitions made of cut directed
//!   links (symmetric and one-way), healed later ([`net`]). Messages travel as the bytes of
//!   their wire codecs;
//! - **disk**: each node has a [`tandem_raft::disk::MemDisk`] for its Raft log ([`disk`]) and
//!   simulated replica files ([`replica_files`]) written as tandemd's writer and sync threads
//!   write them; a crash drops all memory and keeps, loses or tears each file's unsynced tail,
//!   can strike in the middle of a write, and loses a compacted replica file not yet installed;
//! - **units**: simulated unit processes that answer hooks (late, with errors, or never),
//!   crash, report faults, fence themselves on their own clocks, write checkpoints and consume
//!   streams ([`workload`]);
//! - **faults**: crashes and restarts, pauses (SIGSTOP-like: no ticks, messages queue),
//!   partitions and bad network weather, drawn from the seed for a `fault_duration`;
//! - **operator and clients**: admin operations, client proposals and stream messages.
//!
//! The checkers ([`checks`]) verify election safety, leader completeness, that committed
//! entries are never lost or changed, equal cluster models, the model's own invariants after
//! every applied entry, at most one ACTIVE per shard (judged by what units believe), no
//! acknowledged write lost, streams applied exactly once in order, and replicas that agree.
//! After the fault phase the world calms down (partitions heal, crashed nodes restart, no
//! more loss or pauses) and the run must show liveness within `liveness_bound` (see
//! [`SimConfig::liveness_bound`]).
//!
//! Everything is drawn from the seed (no thread RNG, no wall clock, no hash-map iteration),
//! so a failing seed replays exactly:
//! `TANDEM_SEED=<seed> cargo test -p tandem-sim --test sim -- replay --nocapture`.
//!
//! # Module map
//!
//! The layout: one driver, the world it simulates, the workloads, fault injection from one
//! place, and one checker per invariant. `Sim` is a single struct; its methods live in `impl Sim` blocks in the module
//! of the part they belong to.
//!
//! - `sim`: the driver: `Sim`, the event queue, node inputs, driving a node (its Raft and
//!   data steps, deferred log syncs), restarts, and carrying out agents' actions;
//! - the simulated world: [`node`] (one node: status, clock drift, inbox), [`disk`] (its
//!   Raft disk), [`replica_files`] (its replica files), [`net`] (the network, and the
//!   driver's sending over it), `topology` (the services every run deploys), [`rng`];
//! - [`workload`]: [`workload::units`] (the simulated unit processes), [`workload::stream`]
//!   (stream messages), [`workload::operator`] (clients and the operator);
//! - `faults`: the fault generator, crashes, pauses, partitions, unit faults, the end of the
//!   fault phase;
//! - [`checks`]: [`checks::raft`] (election safety, leader completeness, committed entries
//!   never change, equal models), [`checks::data`] (no acknowledged write lost, stream
//!   exactly once in order, replicas agree), `checks::one_active` (one ACTIVE per shard),
//!   `checks::settled` (liveness after the faults);
//! - `dump`: diagnostics for failure messages.

pub mod checks;
pub mod disk;
mod dump;
mod faults;
pub mod net;
pub mod node;
pub mod replica_files;
pub mod rng;
mod sim;
mod topology;
pub mod workload;

pub use topology::topology;

use std::fmt;
use std::time::Duration;

pub use checks::raft::LoggedEntry;

/// What to simulate. Build it with [`SimConfig::for_seed`], which is also what the replay
/// command uses, so only the seed needs to be reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Everything random in the run derives from this.
    pub seed: u64,
    /// Cluster size: 3 or 5 nodes, or 16 to 64 at scale.
    pub nodes: usize,
    /// Raft voters: the first this many nodes; the others are learners (all are members).
    pub voters: usize,
    /// Shards of the wide services (2n pairs over neighbouring nodes) on top of the standard
    /// topology's; 0 for the standard runs, thousands at scale.
    pub wide_shards: usize,
    /// The 2n pair's units are never relocated (see [`topology`]): a node declared down
    /// keeps them, with their roles taken away, so they come back with the same instance.
    pub pinned_pair: bool,
    /// How long faults are injected, in simulated time.
    pub fault_duration: Duration,
    /// After the fault phase ends, within this much simulated time there must be a leader and
    /// a freshly proposed `Noop` must be committed and applied on every node. 10 s is far more
    /// than an election (100–200 ms timeouts) plus catching up a restarted node by snapshot
    /// needs; a run that takes longer is stuck, not slow.
    pub liveness_bound: Duration,
    /// The Raft leader's heartbeat period in 10 ms ticks, which is also how often it asks
    /// the quorum to confirm it and sends the lease grants that wait for an ask: 5 (the
    /// daemon's default, one heartbeat interval) or 2.
    pub heartbeat_ticks: usize,
    /// Mutation mode for testing the checkers: `fsync` lies, so a crash can lose writes that
    /// were acknowledged (they become durable only at a write-back every second). Runs in
    /// this mode are expected to fail.
    pub lying_disk: bool,
    /// Mutation mode for testing the one-ACTIVE checker: units ignore their lease (they never
    /// fence themselves). Runs in this mode are expected to fail.
    pub units_ignore_lease: bool,
    /// Print every fault, election, recovery and the liveness probe to stderr.
    pub verbose: bool,
    /// After the run's goals are met, keep the cluster running this long with no faults, no
    /// client and no workload, measuring the nodes' work per event ([`run_metered`]) after
    /// its first second; zero (the standard) ends the run there.
    pub idle_tail: Duration,
}

impl SimConfig {
    /// The standard configuration for `seed`: 3 nodes for even seeds, 5 for odd ones, the
    /// pair pinned for every other pair of seeds, the daemon's Raft heartbeat period for
    /// every other four seeds (a shorter one for the others), 4 s of faults, a 10 s liveness
    /// bound.
    pub fn for_seed(seed: u64) -> Self {
        let nodes = if seed.is_multiple_of(2) { 3 } else { 5 };
        Self {
            seed,
            nodes,
            voters: nodes,
            wide_shards: 0,
            pinned_pair: (seed / 2) % 2 == 1,
            heartbeat_ticks: if (seed / 4) % 2 == 1 { 5 } else { 2 },
            fault_duration: Duration::from_secs(4),
            liveness_bound: Duration::from_secs(10),
            lying_disk: false,
            units_ignore_lease: false,
            verbose: false,
            idle_tail: Duration::ZERO,
        }
    }

    /// A run at scale for `seed`: 16 to 64 nodes (5 voting), 1,000 to 3,000 shards of wide
    /// services besides the standard ones, the standard faults and operator actions, and a
    /// 20 s liveness bound (thousands of role hooks take simulated time).
    pub fn at_scale(seed: u64) -> Self {
        let draw = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        Self {
            nodes: 16 + (draw % 49) as usize,
            voters: 5,
            wide_shards: 1_000 + (draw / 49 % 3) as usize * 1_000,
            liveness_bound: Duration::from_secs(20),
            ..Self::for_seed(seed)
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let lying = match (self.lying_disk, self.units_ignore_lease) {
            (true, true) => "TANDEM_LYING_DISK=1 TANDEM_NO_FENCING=1 ",
            (true, false) => "TANDEM_LYING_DISK=1 ",
            (false, true) => "TANDEM_NO_FENCING=1 ",
            (false, false) => "",
        };
        let base = if self.wide_shards > 0 {
            Self::at_scale(self.seed)
        } else {
            Self::for_seed(self.seed)
        };
        let scale = if self.wide_shards > 0 {
            "TANDEM_SCALE=1 "
        } else {
            ""
        };
        let standard = Self {
            lying_disk: self.lying_disk,
            units_ignore_lease: self.units_ignore_lease,
            verbose: self.verbose,
            ..base
        };
        let note = if *self == standard {
            ""
        } else {
            " (the test replays SimConfig::for_seed or at_scale; this run used a different config)"
        };
        format!(
            "{lying}{scale}TANDEM_SEED={} cargo test --release -p tandem-sim --test sim -- replay \
             --nocapture{note}",
            self.seed
        )
    }
}

/// What a successful run did. Tests sum these to check that faults really happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Simulated time at the end, microseconds.
    pub end_time_us: u64,
    /// Events handled.
    pub events: u64,
    /// Messages sent (raft and liveness heartbeats).
    pub messages_sent: u64,
    /// Messages delivered to a running (or paused, then resumed) node.
    pub messages_delivered: u64,
    /// Messages lost: by loss, partitions, or a crashed or overloaded receiver.
    pub messages_dropped: u64,
    /// Messages delivered twice.
    pub messages_duplicated: u64,
    /// Crashes.
    pub crashes: u64,
    /// Crashes that struck in the middle of a write (an fsync that never returned).
    pub crashes_mid_write: u64,
    /// Unsynced tails a crash tore at a byte in the middle.
    pub torn_writes: u64,
    /// Crashes after which garbage was left after the last record.
    pub garbage_tails: u64,
    /// Restarts.
    pub restarts: u64,
    /// Restarts whose recovery found and cut a torn tail.
    pub torn_tails_recovered: u64,
    /// Pauses.
    pub pauses: u64,
    /// Partitions (isolations, splits, one-way cuts).
    pub partitions: u64,
    /// Closed connections a node was told of (a crashed peer's, or a reset one's).
    pub links_lost: u64,
    /// Terms that had a leader.
    pub elections: u64,
    /// Highest committed (applied) index.
    pub entries_committed: u64,
    /// Client proposals the leader accepted.
    pub proposals: u64,
    /// Client proposals the proposing leader saw applied (acknowledged to the client).
    pub proposals_acknowledged: u64,
    /// `SetNodeLiveness` commands that changed the model.
    pub liveness_changes: u64,
    /// Snapshots nodes took of their own model.
    pub snapshots_taken: u64,
    /// Snapshots sent by a leader and installed by a follower.
    pub snapshots_installed: u64,
    /// Simulated time from the end of the fault phase until a probe was applied everywhere.
    pub recovery_time_us: u64,
    /// Simulated time from the end of the fault phase until every shard had an ACTIVE unit.
    pub service_recovery_time_us: u64,
    /// Unit processes started.
    pub unit_starts: u64,
    /// Unit processes crashed by the fault generator.
    pub unit_crashes: u64,
    /// Unit processes hung by the fault generator.
    pub unit_hangs: u64,
    /// Faults units reported themselves.
    pub unit_reported_faults: u64,
    /// Unit faults the cluster handled (committed `UnitFault`s).
    pub unit_faults_handled: u64,
    /// STANDBYs promoted to ACTIVE.
    pub promotions: u64,
    /// Handovers that moved an ACTIVE (switchovers, locks, restarts).
    pub handovers: u64,
    /// Units relocated to another node (ladder L5).
    pub relocations: u64,
    /// Node-restart commands run (ladder L3).
    pub node_restarts: u64,
    /// Faults handled at each ladder level, L0..L5.
    pub ladder_levels: [u64; 6],
    /// Operator requests proposed.
    pub admin_requests: u64,
    /// Operator requests completed.
    pub admin_done: u64,
    /// Operator requests refused (up front or when applied) or not finished in time.
    pub admin_refused: u64,
    /// Checkpoint commits the units made (sync and async).
    pub commits: u64,
    /// Sync commits acknowledged.
    pub sync_commits_acked: u64,
    /// Commits answered with the version of the commit answered just before them on the
    /// same shard: merged into one op with it (batched intake).
    pub commits_merged: u64,
    /// Stream messages offered to an ingress.
    pub messages_offered: u64,
    /// Stream messages delivered to an ACTIVE (accepted).
    pub messages_accepted: u64,
    /// Stream messages whose application was acknowledged.
    pub messages_applied: u64,
    /// Replication sessions that began with a full state transfer.
    pub full_transfers: u64,
    /// Replication sessions that caught up with a delta.
    pub delta_sessions: u64,
    /// STANDBY replicas verified by digest.
    pub verified: u64,
    /// Possible losses the cluster reported (failovers to a STANDBY not in sync).
    pub possible_losses: u64,
    /// Replica files whose torn tail a restart cut.
    pub replica_tails_cut: u64,
    /// Replica files a crash tore.
    pub replica_tails_torn: u64,
    /// Replica files read back whose stamp covered exactly their records, so was checked.
    pub replica_stamps_checked: u64,
    /// Compactions of replica files started.
    pub compactions: u64,
    /// Compacted files installed.
    pub installs: u64,
    /// Installs whose report came a sync round late.
    pub late_installs: u64,
    /// Installs of a compacted file whose replica had started over (a reset) since.
    pub installs_started_over: u64,
    /// Compacted files a crash found written but not installed (lost whole).
    pub installs_lost: u64,
    /// Data invariant checks made.
    pub data_checks: u64,
    /// Digest of the committed log, for determinism checks.
    pub log_digest: u64,
}

impl SimReport {
    /// Adds another run's counts to these (seed, nodes and digest are left alone; times are
    /// maxed).
    pub fn accumulate(&mut self, other: &SimReport) {
        self.end_time_us = self.end_time_us.max(other.end_time_us);
        self.recovery_time_us = self.recovery_time_us.max(other.recovery_time_us);
        self.service_recovery_time_us = self
            .service_recovery_time_us
            .max(other.service_recovery_time_us);
        self.unit_starts += other.unit_starts;
        self.unit_crashes += other.unit_crashes;
        self.unit_hangs += other.unit_hangs;
        self.unit_reported_faults += other.unit_reported_faults;
        self.unit_faults_handled += other.unit_faults_handled;
        self.promotions += other.promotions;
        self.handovers += other.handovers;
        self.relocations += other.relocations;
        self.node_restarts += other.node_restarts;
        for (total, more) in self.ladder_levels.iter_mut().zip(other.ladder_levels) {
            *total += more;
        }
        self.admin_requests += other.admin_requests;
        self.admin_done += other.admin_done;
        self.admin_refused += other.admin_refused;
        self.commits += other.commits;
        self.sync_commits_acked += other.sync_commits_acked;
        self.commits_merged += other.commits_merged;
        self.messages_offered += other.messages_offered;
        self.messages_accepted += other.messages_accepted;
        self.messages_applied += other.messages_applied;
        self.full_transfers += other.full_transfers;
        self.delta_sessions += other.delta_sessions;
        self.verified += other.verified;
        self.possible_losses += other.possible_losses;
        self.replica_tails_cut += other.replica_tails_cut;
        self.replica_stamps_checked += other.replica_stamps_checked;
        self.compactions += other.compactions;
        self.installs += other.installs;
        self.late_installs += other.late_installs;
        self.installs_started_over += other.installs_started_over;
        self.installs_lost += other.installs_lost;
        self.replica_tails_torn += other.replica_tails_torn;
        self.data_checks += other.data_checks;
        self.events += other.events;
        self.messages_sent += other.messages_sent;
        self.messages_delivered += other.messages_delivered;
        self.messages_dropped += other.messages_dropped;
        self.messages_duplicated += other.messages_duplicated;
        self.crashes += other.crashes;
        self.crashes_mid_write += other.crashes_mid_write;
        self.torn_writes += other.torn_writes;
        self.garbage_tails += other.garbage_tails;
        self.restarts += other.restarts;
        self.torn_tails_recovered += other.torn_tails_recovered;
        self.pauses += other.pauses;
        self.partitions += other.partitions;
        self.links_lost += other.links_lost;
        self.elections += other.elections;
        self.entries_committed += other.entries_committed;
        self.proposals += other.proposals;
        self.proposals_acknowledged += other.proposals_acknowledged;
        self.liveness_changes += other.liveness_changes;
        self.snapshots_taken += other.snapshots_taken;
        self.snapshots_installed += other.snapshots_installed;
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "events {}, messages {} sent / {} dropped / {} duplicated, crashes {} ({} mid-write, \
             {} torn, {} garbage), restarts {} ({} torn tails recovered), pauses {}, \
             partitions {}, links lost {}, elections {}, committed {}, proposals {} ({} acked), liveness \
             changes {}, snapshots {} taken / {} installed, slowest recovery {:.3} s; units: \
             {} starts, {} crashes, {} hangs, {} reported faults, {} faults handled (by level \
             L0..L5: {:?}), {} node-restart commands, {} promotions, {} handovers, {} \
             relocations; operator: {} requests, {} done, {} refused; slowest service recovery \
             {:.3} s; data: {} commits ({} sync acked, {} merged), {} messages offered / {} accepted / {} \
             applied, {} full transfers, {} deltas, {} verified, {} possible losses, replica \
             tails {} torn / {} cut, {} replica stamps checked, {} data checks, compactions {} \
             started / {} installed / {} late / {} of a replica that started over / {} lost to a \
             crash",
            self.events,
            self.messages_sent,
            self.messages_dropped,
            self.messages_duplicated,
            self.crashes,
            self.crashes_mid_write,
            self.torn_writes,
            self.garbage_tails,
            self.restarts,
            self.torn_tails_recovered,
            self.pauses,
            self.partitions,
            self.links_lost,
            self.elections,
            self.entries_committed,
            self.proposals,
            self.proposals_acknowledged,
            self.liveness_changes,
            self.snapshots_taken,
            self.snapshots_installed,
            self.recovery_time_us as f64 / 1e6,
            self.unit_starts,
            self.unit_crashes,
            self.unit_hangs,
            self.unit_reported_faults,
            self.unit_faults_handled,
            self.ladder_levels,
            self.node_restarts,
            self.promotions,
            self.handovers,
            self.relocations,
            self.admin_requests,
            self.admin_done,
            self.admin_refused,
            self.service_recovery_time_us as f64 / 1e6,
            self.commits,
            self.sync_commits_acked,
            self.commits_merged,
            self.messages_offered,
            self.messages_accepted,
            self.messages_applied,
            self.full_transfers,
            self.delta_sessions,
            self.verified,
            self.possible_losses,
            self.replica_tails_torn,
            self.replica_tails_cut,
            self.replica_stamps_checked,
            self.data_checks,
            self.compactions,
            self.installs,
            self.late_installs,
            self.installs_started_over,
            self.installs_lost,
        )
    }
}

/// Which invariant a failed run broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Two leaders in one term.
    ElectionSafety,
    /// A new leader lacks an entry that was already committed.
    LeaderCompleteness,
    /// Two nodes applied different entries at one index (a committed entry was lost or
    /// changed).
    CommittedEntryChanged,
    /// One client proposal was committed at two indexes.
    DuplicateCommit,
    /// A node's applied or commit index went backwards (or skipped) within one life.
    WentBackwards,
    /// Two nodes hold different cluster models at the same applied index.
    StateDiverged,
    /// Two units acted ACTIVE for one shard (of a single-ACTIVE model) at the same instant.
    TwoActives,
    /// A unit became ACTIVE without a sync write that was acknowledged before, and no
    /// possible loss was reported.
    LostWrite,
    /// An accepted stream message was never applied, and no possible loss was reported.
    LostMessage,
    /// A stream message already applied was delivered again, or deliveries came out of order.
    DuplicateMessage,
    /// Two replicas at the same version have different digests, or a digest kept current
    /// differs from one computed from scratch.
    DigestMismatch,
    /// After the faults ended, the cluster did not commit a probe everywhere, or did not give
    /// every shard an ACTIVE unit, in time.
    Liveness,
    /// A replica failed (recovery refused its disk, storage failed without a simulated
    /// crash, an unreadable snapshot).
    NodeError,
    /// A message's bytes could not be decoded.
    Codec,
    /// What the data plane keeps per replica as its inputs touch it (the in-sync claims, which
    /// primaries wait for the disk) differs from a walk over every replica.
    StaleCache,
    /// The code under test panicked.
    Panic,
    /// The run exceeded its event budget.
    Stuck,
    /// The replicated model broke one of its own invariants after an applied entry
    /// (`ClusterState::check_invariants`), or `apply` refused a command because it would have
    /// (`ApplyOutcome::Unsafe`): whoever proposed it is wrong.
    ModelInvariant,
}

impl FailureKind {
    /// Whether this is a violated safety property (rather than a crash of the code under test
    /// or a liveness failure).
    pub fn is_safety(self) -> bool {
        matches!(
            self,
            Self::ElectionSafety
                | Self::LeaderCompleteness
                | Self::CommittedEntryChanged
                | Self::DuplicateCommit
                | Self::WentBackwards
                | Self::StateDiverged
                | Self::TwoActives
                | Self::LostWrite
                | Self::LostMessage
                | Self::DuplicateMessage
                | Self::DigestMismatch
                | Self::ModelInvariant
        )
    }
}

/// A failed run: which invariant broke, when, and how to replay it.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The configuration of the run (its seed first of all).
    pub config: Box<SimConfig>,
    /// Simulated time of the failure, microseconds.
    pub time_us: u64,
    /// Number of the event being handled.
    pub event: u64,
    /// Which invariant.
    pub kind: FailureKind,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation failed: seed {} ({} nodes{}), at {} (event #{}): {:?}: {}\n  replay: {}",
            self.config.seed,
            self.config.nodes,
            if self.config.lying_disk {
                ", lying disk"
            } else {
                ""
            },
            tandem_core::Time::from_micros(self.time_us),
            self.event,
            self.kind,
            self.detail,
            self.config.replay_command()
        )
    }
}

impl std::error::Error for SimFailure {}

/// Runs one simulation.
pub fn run(config: SimConfig) -> Result<SimReport, SimFailure> {
    run_with_log(config).map(|(report, _)| report)
}

/// Reads a counter of the work done so far on this thread (for instance, allocations
/// counted by a test's global allocator).
pub type Meter = fn() -> u64;

/// The nodes' work per event in a run's idle tail, as a [`Meter`] counts it: what the nodes
/// do with their inputs, ticks, heartbeats, passes, data steps and syncs, not what the
/// simulation's checks cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepCosts {
    /// Events handled in the tail.
    pub events: u64,
    /// Their summed cost.
    pub total: u64,
    /// The costliest event's cost, and its kind.
    pub max: (u64, &'static str),
}

impl StepCosts {
    pub(crate) fn note(&mut self, cost: u64, kind: &'static str) {
        self.events += 1;
        self.total += cost;
        if cost > self.max.0 {
            self.max = (cost, kind);
        }
    }

    /// The mean cost of an event.
    pub fn mean(&self) -> f64 {
        self.total as f64 / self.events.max(1) as f64
    }
}

impl fmt::Display for StepCosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} events, mean {:.1}, max {} ({})",
            self.events,
            self.mean(),
            self.max.0,
            self.max.1
        )
    }
}

/// Runs one simulation with a nonzero [`SimConfig::idle_tail`], measuring the nodes' work
/// per event in the tail with `meter`.
pub fn run_metered(config: SimConfig, meter: Meter) -> Result<(SimReport, StepCosts), SimFailure> {
    assert!(
        !config.idle_tail.is_zero(),
        "a metered run needs an idle tail"
    );
    let mut sim = sim::Sim::new(config);
    sim.set_meter(meter);
    sim.run_metered()
}

/// Runs one simulation and also returns the committed log it produced.
pub fn run_with_log(config: SimConfig) -> Result<(SimReport, Vec<LoggedEntry>), SimFailure> {
    sim::Sim::new(config).run()
}
