//! The driver: the whole simulated world (`Sim`), its event queue and the run loop; node
//! inputs (ticks, timers, peer messages, unit and data inputs, queued while a node is
//! paused); driving a node (its Raft drive, its data step with the replica files' sync
//! rounds, deferred Raft log syncs); restarts; and carrying out agents' actions on unit
//! processes. The workloads, fault injection, checkers and diagnostics add their own
//! `impl Sim` blocks in their modules (see the crate's module map).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use tandem_core::data::{DataConfig, DataEvent, DataReply, Delivery};
use tandem_core::{AgentAction, NodeId, ShardName, Time, Topology, UnitCommand};
use tandem_node::{CompactionPolicy, FileOp, Node, NodeSettings, UnitEvent};
use tandem_raft::{ReplicaConfig, WalOptions};

use crate::checks::data::DataChecker;
use crate::checks::raft::{Checker, LoggedEntry};
use crate::checks::Violation;
use crate::disk::SimDisk;
use crate::faults::CrashKind;
use crate::net::{Network, Wire};
use crate::node::{Inbound, SimNode, Status, INBOX_LEN_MAX};
use crate::replica_files::ReplicaFiles;
use crate::rng::{mix, Rng};
use crate::topology::topology;
use crate::workload::operator::ADMIN_ID_BASE;
use crate::workload::units::Units;
use crate::{FailureKind, SimConfig, SimFailure, SimReport};

/// A node's raft tick, in microseconds of its own clock.
const TICK_US: u64 = 10_000;
/// Heartbeat period (agent heartbeats, leader verdicts), in microseconds of the node's clock.
const HEARTBEAT_US: u64 = 50_000;
/// The liveness tracker's node timeout.
const NODE_TIMEOUT: Duration = Duration::from_millis(300);
/// Agents' lease.
const LEASE: Duration = Duration::from_millis(200);
/// A disk armed to crash during a write that sees no write for this long crashes anyway.
const ARMED_CRASH_DEADLINE_US: u64 = 300_000;
/// Lying mode's write-back period: writes acknowledged within this window before a crash
/// are lost.
const WRITE_BACK_US: u64 = 1_000_000;
/// Clock drift bound per node, parts per million (±1 %): any two clocks then differ in rate by
/// at most 2 %, the bound tandem's leases assume (`tandem_core::DRIFT_PPM`).
const DRIFT_PPM_MAX: u64 = 10_000;
/// The first second of an idle tail is not measured: the last of the start's work may
/// still commit in it (an entry settling a thousand shards costs every node a thousand).
const TAIL_SETTLE_US: u64 = 1_000_000;
/// A run handling more events than this is stuck in a loop.
const EVENTS_MAX: u64 = 20_000_000;
/// Chance (per million) that a data step leaves its replica writes unsynced until the next
/// one, so a crash can find (and tear) an unsynced tail.
const REPLICA_SYNC_DELAY_PPM: u64 = 200_000;
/// Chances, one drawn per seed, that a sync round leaves a compacted file's install (and its
/// report) for a later round, after syncs of the compacted file: the highest keeps installs
/// pending for about ten rounds, long enough for a replica to start over meanwhile.
const LATE_INSTALL_PPM: [u64; 3] = [250_000, 600_000, 900_000];

/// Random streams, one per concern (see [`crate::rng`]).
const STREAM_PARAMS: u64 = 1;
const STREAM_NET: u64 = 2;
const STREAM_FAULTS: u64 = 3;
const STREAM_DISK: u64 = 4;
const STREAM_WORKLOAD: u64 = 5;
const STREAM_UNITS: u64 = 6;
const STREAM_SYNC: u64 = 7;
const STREAM_STAMP: u64 = 8;
const STREAM_LINKS: u64 = 9;
const STREAM_INTAKE: u64 = 10;
const STREAM_INTAKE_DELAY: u64 = 11;
const STREAM_COMPACTION: u64 = 12;
const STREAM_INSTALLS: u64 = 13;

/// Longest a node with batched intake leaves a unit's data call before its next pass.
const INTAKE_BATCH_US: u64 = 200;

/// Something that happens at a point of simulated time.
#[derive(Debug)]
pub(crate) enum Event {
    /// A node's raft tick.
    Tick { node: usize, epoch: u64 },
    /// A node's heartbeat timer.
    Timer { node: usize, epoch: u64 },
    /// A message arrives.
    Deliver { from: u64, to: u64, wire: Wire },
    /// A client proposes (and now and then an operator acts).
    Client,
    /// The fault generator acts.
    Fault,
    /// A node's deferred Raft log fsync completes.
    RaftSynced {
        node: usize,
        epoch: u64,
        number: u64,
    },
    /// A crashed node restarts.
    Restart { node: usize, epoch: u64 },
    /// A paused node resumes.
    Resume { node: usize, epoch: u64 },
    /// A node's pass over the data calls it took in since its last one (batched intake).
    Pass { node: usize, life: u64 },
    /// A partition heals.
    Heal { partition: u64 },
    /// Lying mode: everything written becomes durable.
    WriteBack,
    /// The fault phase ends.
    EndFaults,
    /// After the faults: propose a liveness probe through the leader.
    Probe,
    /// After the faults: the operator unlocks and repairs what the workload left.
    Tidy,
    /// The liveness bound has passed.
    Deadline,
    /// A unit process registers through the SDK.
    UnitRegister { pid: u32 },
    /// A request reaches a unit process.
    UnitRequest {
        pid: u32,
        request: u64,
        command: UnitCommand,
    },
    /// A unit process's hook completes and it answers.
    UnitAnswer {
        pid: u32,
        request: u64,
        command: UnitCommand,
        ok: bool,
    },
    /// A unit process exits (a graceful stop finished).
    UnitExit { pid: u32 },
    /// The answer to a unit's data request reaches it.
    UnitDataReply {
        pid: u32,
        request: u64,
        reply: DataReply,
    },
    /// A stream message (or a change notification) reaches a unit.
    UnitDelivery { pid: u32, delivery: Delivery },
    /// An input reaches a node from its own units or supervisor.
    NodeInput {
        node: usize,
        life: u64,
        input: Inbound,
    },
}

impl Event {
    /// The event's kind, for reports.
    fn kind(&self) -> &'static str {
        match self {
            Event::Tick { .. } => "tick",
            Event::Timer { .. } => "timer",
            Event::Deliver { .. } => "delivery",
            Event::Client => "client",
            Event::Fault => "fault",
            Event::RaftSynced { .. } => "raft log synced",
            Event::Restart { .. } => "restart",
            Event::Resume { .. } => "resume",
            Event::Pass { .. } => "pass",
            Event::Heal { .. } => "heal",
            Event::WriteBack => "write-back",
            Event::EndFaults => "end of faults",
            Event::Probe => "probe",
            Event::Tidy => "tidy",
            Event::Deadline => "deadline",
            Event::UnitRegister { .. } => "unit registers",
            Event::UnitRequest { .. } => "unit request",
            Event::UnitAnswer { .. } => "unit answer",
            Event::UnitExit { .. } => "unit exit",
            Event::UnitDataReply { .. } => "unit data reply",
            Event::UnitDelivery { .. } => "unit delivery",
            Event::NodeInput { .. } => "node input",
        }
    }
}

/// An event in the queue, ordered by time and then by scheduling order, so ties break the
/// same way in every replay.
#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Per-seed knobs ("swarm testing": each seed enables its own mix of faults, so some runs
/// hammer one kind of fault instead of diluting every kind).
#[derive(Debug)]
pub(crate) struct Params {
    pub(crate) crashes: bool,
    pub(crate) pauses: bool,
    pub(crate) partitions: bool,
    pub(crate) weather: bool,
    pub(crate) unit_faults: bool,
    pub(crate) operator: bool,
    /// Longest gap between fault actions, microseconds.
    pub(crate) fault_gap_max_us: u64,
    /// Longest gap between client proposals, microseconds.
    pub(crate) client_gap_max_us: u64,
    /// Whether peers hear of closed connections: a crashed node's at once, and some cut by
    /// a partition (a reset), while the node behind them lives on.
    pub(crate) link_loss: bool,
    /// Whether nodes take their units' data calls in batches, as tandemd's loop does under
    /// load: a call waits up to [`INTAKE_BATCH_US`] for the node's next pass, so commits that
    /// arrive together share one op.
    pub(crate) batched_intake: bool,
}

/// The whole simulated world.
pub(crate) struct Sim {
    pub(crate) config: SimConfig,
    pub(crate) params: Params,
    pub(crate) topology: Topology,
    /// Simulated time, microseconds.
    pub(crate) now: u64,
    /// Scheduling counter, the tie-breaker of the queue.
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    pub(crate) nodes: Vec<SimNode>,
    /// The unit processes and the unit workload's bookkeeping.
    pub(crate) units: Units,
    pub(crate) voters: Vec<u64>,
    pub(crate) net: Network,
    pub(crate) faults: Rng,
    pub(crate) disk_rng: Rng,
    /// When an install of a compacted replica file is reported late (a stream of its own).
    install_rng: Rng,
    /// When the nodes compact their replica files: the daemon's books, with a ratio and a
    /// floor drawn per seed, small enough for the simulation's files.
    compaction: CompactionPolicy,
    /// Chance that a sync round leaves an install for later (one of [`LATE_INSTALL_PPM`]).
    late_install_ppm: u64,
    /// How long deferred Raft log fsyncs take.
    sync_rng: Rng,
    /// What a crash does to replica file stamps (a stream of its own, so that adding the
    /// stamps left every other draw, and so older seeds, as they were).
    pub(crate) stamp_rng: Rng,
    /// Which closed connections peers hear of, and when (a stream of its own too).
    pub(crate) link_rng: Rng,
    /// Batched intake's delays.
    pub(crate) intake_rng: Rng,
    pub(crate) workload: Rng,
    pub(crate) unit_rng: Rng,
    pub(crate) checker: Checker,
    pub(crate) report: SimReport,
    logger: slog::Logger,
    /// Whether faults are still being injected.
    pub(crate) faults_active: bool,
    /// When the fault phase ended.
    pub(crate) calm_since: Option<u64>,
    /// The next client nonce.
    pub(crate) next_nonce: u64,
    /// Client nonce → the node that accepted the proposal, until that node applies it.
    pub(crate) proposals: BTreeMap<u64, u64>,
    /// Nonces of the probes proposed after the fault phase.
    pub(crate) probes: Vec<u64>,
    /// Set once a probe was applied on every node.
    pub(crate) probe_done: bool,
    /// The shard `check_done` last found without an acting ACTIVE: looked at first, so that
    /// while it stays so the check costs one shard, not all of them.
    pub(crate) unsettled_witness: Option<ShardName>,
    /// Active partitions: id → cut links.
    pub(crate) partitions: BTreeMap<u64, Vec<(u64, u64)>>,
    pub(crate) next_partition: u64,
    /// Next admin request id.
    pub(crate) next_admin: u64,
    /// Set when the run's goals after the faults are met: the run is over.
    pub(crate) done: bool,
    /// The data invariants.
    pub(crate) data_checker: DataChecker,
    /// Next stream message id.
    pub(crate) next_message: u64,
    /// Data steps run, for sampling the data caches' check at scale.
    pub(crate) cache_steps: u64,
    /// Shards some unit's belief about changed since the last one-ACTIVE check.
    pub(crate) acting_dirty: BTreeSet<ShardName>,
    /// Shards of multi-ACTIVE services (several acting units are fine there).
    pub(crate) multi_active: BTreeSet<ShardName>,
    /// The shards of services with one ACTIVE, which keep checkpoints and streams, in the
    /// topology's order (every other shard is in `multi_active`).
    pub(crate) data_shards: Vec<ShardName>,
    /// What measures the nodes' work (see [`crate::run_metered`]).
    meter: Option<crate::Meter>,
    /// The nodes' work in the event being handled, by `meter`.
    event_cost: u64,
    /// When the idle tail after the run's goals ends, once it started.
    tail_until: Option<u64>,
    /// The nodes' work per event in the idle tail.
    pub(crate) step_costs: crate::StepCosts,
}

impl Sim {
    pub(crate) fn new(config: SimConfig) -> Self {
        assert!(
            (1..=64).contains(&config.nodes) && (1..=config.nodes).contains(&config.voters),
            "a simulated cluster has 1 to 64 nodes, of which 1 or more vote"
        );
        let seed = config.seed;
        let topology = topology(config.nodes, config.wide_shards, config.pinned_pair);
        let (multi, single): (Vec<_>, Vec<_>) = topology
            .services
            .iter()
            .partition(|service| service.model.multi_active());
        let multi_active: BTreeSet<ShardName> = multi
            .iter()
            .flat_map(|service| service.shards.iter().cloned())
            .collect();
        let data_shards: Vec<ShardName> = single
            .iter()
            .flat_map(|service| service.shards.iter().cloned())
            .collect();
        let mut params_rng = Rng::new(seed, STREAM_PARAMS);
        let mut link_rng = Rng::new(seed, STREAM_LINKS);
        let params = Params {
            link_loss: link_rng.chance(750_000),
            batched_intake: Rng::new(seed, STREAM_INTAKE).chance(500_000),
            crashes: params_rng.chance(850_000),
            pauses: params_rng.chance(850_000),
            partitions: params_rng.chance(850_000),
            weather: params_rng.chance(850_000),
            unit_faults: params_rng.chance(850_000),
            operator: params_rng.chance(700_000),
            fault_gap_max_us: params_rng.between(100_000, 400_000),
            client_gap_max_us: params_rng.between(5_000, 30_000),
        };
        let delay_max_us = params_rng.between(5_000, 20_000);
        let voters: Vec<u64> = (1..=config.nodes as u64).collect();
        let nodes = voters
            .iter()
            .map(|id| SimNode {
                id: *id,
                disk: SimDisk::new(config.lying_disk),
                node: None,
                status: Status::Crashed,
                epoch: 0,
                life: 0,
                restarts: 0,
                drift_ppm: params_rng.between(0, 2 * DRIFT_PPM_MAX) as i64 - DRIFT_PPM_MAX as i64,
                inbox: Vec::new(),
                pass_due: false,
                armed_at: None,
                snapshot_index: 0,
                files: ReplicaFiles::default(),
                // Half the nodes (by seed) sync their log as tandemd does, off the drive.
                deferred_sync: mix(seed ^ 0x5eed_defe ^ mix(*id)) & 1 == 0,
                raft_sync: None,
            })
            .collect();
        let mut compaction_rng = Rng::new(seed, STREAM_COMPACTION);
        Self {
            params,
            topology,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            units: Units::new(),
            checker: Checker::new(&voters),
            voters,
            net: Network::new(Rng::new(seed, STREAM_NET), delay_max_us),
            faults: Rng::new(seed, STREAM_FAULTS),
            disk_rng: Rng::new(seed, STREAM_DISK),
            install_rng: Rng::new(seed, STREAM_INSTALLS),
            compaction: CompactionPolicy {
                ratio: [2, 4, 8][compaction_rng.pick(3)],
                floor_bytes: [512, 2048, 16 * 1024][compaction_rng.pick(3)],
            },
            late_install_ppm: LATE_INSTALL_PPM[compaction_rng.pick(LATE_INSTALL_PPM.len())],
            sync_rng: Rng::new(seed, STREAM_SYNC),
            stamp_rng: Rng::new(seed, STREAM_STAMP),
            link_rng,
            intake_rng: Rng::new(seed, STREAM_INTAKE_DELAY),
            workload: Rng::new(seed, STREAM_WORKLOAD),
            unit_rng: Rng::new(seed, STREAM_UNITS),
            report: SimReport {
                seed,
                nodes: config.nodes,
                ..SimReport::default()
            },
            logger: tandem_raft::logging::discard_logger(),
            faults_active: true,
            calm_since: None,
            next_nonce: 1,
            proposals: BTreeMap::new(),
            probes: Vec::new(),
            probe_done: false,
            unsettled_witness: None,
            partitions: BTreeMap::new(),
            next_partition: 0,
            next_admin: ADMIN_ID_BASE,
            done: false,
            data_checker: DataChecker::default(),
            next_message: 1,
            cache_steps: 0,
            acting_dirty: BTreeSet::new(),
            multi_active,
            data_shards,
            meter: None,
            event_cost: 0,
            tail_until: None,
            step_costs: crate::StepCosts::default(),
            config,
        }
    }

    /// Measures the nodes' work in the idle tail with `meter`.
    pub(crate) fn set_meter(&mut self, meter: crate::Meter) {
        self.meter = Some(meter);
    }

    /// [`Sim::run`], returning the idle tail's costs instead of the log.
    pub(crate) fn run_metered(self) -> Result<(SimReport, crate::StepCosts), SimFailure> {
        self.run_measured()
            .map(|(report, _, costs)| (report, costs))
    }

    /// Runs to the end; a panic in the code under test becomes a failure with the seed.
    pub(crate) fn run(self) -> Result<(SimReport, Vec<LoggedEntry>), SimFailure> {
        self.run_measured().map(|(report, log, _)| (report, log))
    }

    fn run_measured(
        mut self,
    ) -> Result<(SimReport, Vec<LoggedEntry>, crate::StepCosts), SimFailure> {
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run_events()));
        let violation = match outcome {
            Ok(Ok(())) => {
                self.report.end_time_us = self.now;
                self.report.elections = self.checker.elections();
                self.report.entries_committed = self.checker.max_committed();
                let log = self.checker.committed_log();
                self.report.log_digest = digest(&log);
                return Ok((self.report, log, self.step_costs));
            }
            Ok(Err(violation)) => violation,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                Violation {
                    kind: FailureKind::Panic,
                    detail: message,
                }
            }
        };
        if self.config.verbose {
            eprintln!("{}", self.dump());
        }
        Err(SimFailure {
            config: Box::new(self.config.clone()),
            time_us: self.now,
            event: self.report.events,
            kind: violation.kind,
            detail: violation.detail,
        })
    }

    fn run_events(&mut self) -> Result<(), Violation> {
        for node in 0..self.nodes.len() {
            self.restart(node)?;
        }
        self.report.restarts = 0;
        let first_fault = self.faults.between(0, 500_000);
        self.schedule(first_fault, Event::Fault);
        self.schedule(0, Event::Client);
        let fault_us = duration_us(self.config.fault_duration);
        self.schedule(fault_us, Event::EndFaults);
        let deadline = fault_us + duration_us(self.config.liveness_bound);
        self.schedule(deadline, Event::Deadline);
        if self.config.lying_disk {
            self.schedule(WRITE_BACK_US, Event::WriteBack);
        }
        while let Some(Reverse(scheduled)) = self.queue.pop() {
            self.now = scheduled.at;
            self.report.events += 1;
            if self.report.events > EVENTS_MAX {
                return Err(Violation {
                    kind: FailureKind::Stuck,
                    detail: format!("more than {EVENTS_MAX} events"),
                });
            }
            self.event_cost = 0;
            let what = self.tail_until.is_some().then(|| scheduled.event.kind());
            self.handle(scheduled.event)?;
            self.check_one_active()?;
            if let Some(until) = self.tail_until {
                let tail = duration_us(self.config.idle_tail);
                if self.now + tail.saturating_sub(TAIL_SETTLE_US) >= until {
                    self.step_costs
                        .note(self.event_cost, what.unwrap_or_default());
                }
                if self.now >= until {
                    return Ok(());
                }
            } else if self.calm_since.is_some() {
                self.check_done()?;
                if self.done {
                    let tail = duration_us(self.config.idle_tail);
                    if tail == 0 {
                        return Ok(());
                    }
                    self.trace(|| format!("idle for {:?}, measuring", self.config.idle_tail));
                    self.tail_until = Some(self.now + tail);
                }
            }
        }
        Err(Violation {
            kind: FailureKind::Stuck,
            detail: "the event queue ran dry".to_owned(),
        })
    }

    /// The meter's reading now (0 without one).
    fn meter_read(&self) -> u64 {
        self.meter.map_or(0, |meter| meter())
    }

    /// Charges the nodes' work since `start` (a [`Sim::meter_read`]) to the current event.
    fn charge(&mut self, start: u64) {
        self.event_cost += self.meter_read().saturating_sub(start);
    }

    /// Calls `call` on the `Node` of `node` (which runs), charging its work to the current
    /// event.
    fn metered<T>(&mut self, node: usize, call: impl FnOnce(&mut Node<SimDisk>) -> T) -> T {
        let start = self.meter_read();
        let out = call(self.nodes[node].node());
        self.charge(start);
        out
    }

    pub(crate) fn schedule(&mut self, delay_us: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + delay_us,
            seq: self.seq,
            event,
        }));
    }

    pub(crate) fn trace(&self, message: impl FnOnce() -> String) {
        if self.config.verbose {
            eprintln!(
                "[{:>14}] {}",
                Time::from_micros(self.now).to_string(),
                message()
            );
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Tick { node, epoch } => self.on_tick(node, epoch),
            Event::Timer { node, epoch } => self.on_timer(node, epoch),
            Event::Deliver { from, to, wire } => self.on_deliver(from, to, wire),
            Event::Client => self.on_client(),
            Event::Fault => self.on_fault(),
            Event::RaftSynced {
                node,
                epoch,
                number,
            } => self.on_raft_synced(node, epoch, number),
            Event::Restart { node, epoch } => {
                if self.nodes[node].status == Status::Crashed && self.nodes[node].epoch == epoch {
                    self.restart(node)?;
                }
                Ok(())
            }
            Event::Pass { node, life } => {
                let sim_node = &mut self.nodes[node];
                if sim_node.life != life {
                    return Ok(());
                }
                sim_node.pass_due = false;
                if sim_node.status == Status::Running {
                    self.drive(node)?;
                }
                Ok(())
            }
            Event::Resume { node, epoch } => {
                if self.nodes[node].status == Status::Paused && self.nodes[node].epoch == epoch {
                    self.resume(node)?;
                }
                Ok(())
            }
            Event::Heal { partition } => {
                if let Some(links) = self.partitions.remove(&partition) {
                    self.net.heal(&links);
                    self.trace(|| format!("partition #{partition} healed"));
                }
                Ok(())
            }
            Event::WriteBack => {
                for node in &self.nodes {
                    node.disk.write_back();
                }
                self.schedule(WRITE_BACK_US, Event::WriteBack);
                Ok(())
            }
            Event::EndFaults => self.end_faults(),
            Event::Probe => self.on_probe(),
            Event::Tidy => self.on_tidy(),
            // The deadline is for the run's goals; the idle tail comes after them.
            Event::Deadline if self.tail_until.is_some() => Ok(()),
            Event::Deadline => Err(self.deadline_passed()),
            Event::UnitRegister { pid } => self.on_unit_register(pid),
            Event::UnitRequest {
                pid,
                request,
                command,
            } => self.on_unit_request(pid, request, command),
            Event::UnitAnswer {
                pid,
                request,
                command,
                ok,
            } => self.on_unit_answer(pid, request, command, ok),
            Event::UnitExit { pid } => {
                self.on_unit_exit(pid);
                Ok(())
            }
            Event::NodeInput { node, life, input } => self.on_node_input(node, life, input),
            Event::UnitDataReply {
                pid,
                request,
                reply,
            } => self.on_unit_data_reply(pid, request, reply),
            Event::UnitDelivery { pid, delivery } => self.on_unit_delivery(pid, delivery),
        }
    }

    // ----- nodes -----

    fn is_running(&self, node: usize, epoch: u64) -> bool {
        self.nodes[node].status == Status::Running && self.nodes[node].epoch == epoch
    }

    fn on_tick(&mut self, node: usize, epoch: u64) -> Result<(), Violation> {
        if !self.is_running(node, epoch) {
            return Ok(());
        }
        if let Some(armed_at) = self.nodes[node].armed_at {
            if self.now >= armed_at + ARMED_CRASH_DEADLINE_US {
                self.crash(node, CrashKind::Idle);
                return Ok(());
            }
        }
        let local_now = self.nodes[node].local_now(self.now);
        let wall_ms = self.now / 1000;
        self.metered(node, |n| n.tick(local_now, wall_ms));
        let interval = self.nodes[node].real_duration(TICK_US);
        self.schedule(interval, Event::Tick { node, epoch });
        self.drive(node)
    }

    fn on_timer(&mut self, node: usize, epoch: u64) -> Result<(), Violation> {
        if !self.is_running(node, epoch) {
            return Ok(());
        }
        let interval = self.nodes[node].real_duration(HEARTBEAT_US);
        self.schedule(interval, Event::Timer { node, epoch });
        let local_now = self.nodes[node].local_now(self.now);
        self.metered(node, |n| n.heartbeat(local_now));
        self.drive(node)
    }

    fn on_deliver(&mut self, from: u64, to: u64, wire: Wire) -> Result<(), Violation> {
        let node = (to - 1) as usize;
        if self.net.is_cut(from, to) {
            self.report.messages_dropped += 1;
            return Ok(());
        }
        let life = self.nodes[node].life;
        self.on_node_input(node, life, Inbound::Peer(from, wire))
    }

    /// An input for a node: handled now if it runs, queued if paused, dropped if crashed (or
    /// if it belongs to a previous life of the node).
    pub(crate) fn on_node_input(
        &mut self,
        node: usize,
        life: u64,
        input: Inbound,
    ) -> Result<(), Violation> {
        if self.nodes[node].life != life {
            return Ok(());
        }
        match self.nodes[node].status {
            Status::Crashed => {
                if matches!(input, Inbound::Peer(..)) {
                    self.report.messages_dropped += 1;
                }
                Ok(())
            }
            Status::Paused => {
                if self.nodes[node].inbox.len() < INBOX_LEN_MAX {
                    self.nodes[node].inbox.push(input);
                } else if matches!(input, Inbound::Peer(..)) {
                    self.report.messages_dropped += 1;
                }
                Ok(())
            }
            Status::Running => {
                let batched = self.params.batched_intake && matches!(input, Inbound::Data { .. });
                self.receive(node, input)?;
                if !batched {
                    return self.drive(node);
                }
                if !self.nodes[node].pass_due {
                    self.nodes[node].pass_due = true;
                    let delay = self.intake_rng.between(0, INTAKE_BATCH_US);
                    self.schedule(delay, Event::Pass { node, life });
                }
                Ok(())
            }
        }
    }

    /// Hands one input to a running node.
    pub(crate) fn receive(&mut self, node: usize, input: Inbound) -> Result<(), Violation> {
        let start = self.meter_read();
        let received = self.receive_unmetered(node, input);
        self.charge(start);
        received
    }

    fn receive_unmetered(&mut self, node: usize, input: Inbound) -> Result<(), Violation> {
        let local_now = self.nodes[node].local_now(self.now);
        let id = self.nodes[node].id;
        match input {
            Inbound::Peer(from, Wire(bytes)) => {
                self.report.messages_delivered += 1;
                let envelope =
                    tandem_proto::decode_envelope(bytes.as_slice()).map_err(|error| Violation {
                        kind: FailureKind::Codec,
                        detail: format!("envelope from {from} to {id}: {error}"),
                    })?;
                assert_eq!(envelope.to, id, "message delivered to the wrong node");
                if let Some(tandem_proto::peer::envelope::Body::Data(data)) = envelope.body {
                    let message =
                        tandem_node::data_wire::decode_message(data).map_err(|error| {
                            Violation {
                                kind: FailureKind::Codec,
                                detail: format!("data message from {from} to {id}: {error}"),
                            }
                        })?;
                    self.nodes[node]
                        .node()
                        .on_data_peer(local_now, NodeId(from), message);
                    return Ok(());
                }
                let message =
                    tandem_node::wire::decode(envelope.body).map_err(|error| Violation {
                        kind: FailureKind::Codec,
                        detail: format!("peer message from {from} to {id}: {error}"),
                    })?;
                self.nodes[node].node().on_peer(local_now, from, message);
            }
            Inbound::Unit(event) => self.nodes[node].node().on_unit(local_now, event),
            Inbound::LinkLost(from) => self.nodes[node].node().on_link_lost(local_now, from),
            Inbound::Data {
                unit,
                generation,
                request,
                body,
            } => {
                self.nodes[node]
                    .node()
                    .on_unit_data(local_now, &unit, generation, request, body);
            }
            Inbound::Register(unit, generation) => {
                let accepted = self.nodes[node]
                    .node()
                    .on_registered(local_now, &unit, generation);
                if !accepted {
                    // A refused instance exits.
                    if let Some(pid) = self.units.find(node, &unit, generation) {
                        self.schedule(1_000, Event::UnitExit { pid });
                    }
                }
            }
        }
        Ok(())
    }

    /// Drives a node and its data plane; when the data plane's in-sync claims change, the node
    /// is driven again so its report goes out at once.
    pub(crate) fn drive(&mut self, node: usize) -> Result<(), Violation> {
        for _ in 0..3 {
            self.drive_node(node)?;
            if !self.data_step(node)? {
                break;
            }
        }
        Ok(())
    }

    /// The data step of a node: its output carried out round by round (messages, answers
    /// and deliveries to units, then the replica file operations), with the files' sync
    /// rounds, as tandemd runs it. Returns whether its in-sync claims changed.
    fn data_step(&mut self, node: usize) -> Result<bool, Violation> {
        let id = self.nodes[node].id;
        let local_now = self.nodes[node].local_now(self.now);
        if self.nodes[node].status != Status::Running || self.nodes[node].node.is_none() {
            return Ok(false);
        }
        self.metered(node, |n| n.begin_data_step(local_now));
        // A sync left for later happens now (by the next input or tick, like an fsync that
        // took a while).
        if self.nodes[node].files.has_unsynced() {
            self.sync_files(node);
        }
        for _ in 0..4 {
            let Some(round) = self.metered(node, |n| n.take_data_round(local_now)) else {
                break;
            };
            for (to, message) in &round.messages {
                self.send_data(id, to.0, message);
            }
            for (unit, generation, request, reply) in round.replies {
                if let Some(pid) = self.units.find(node, &unit, generation) {
                    let delay = self.unit_rng.between(20, 200);
                    let now = self.now;
                    let process = self.units.processes.get_mut(&pid).expect("found");
                    let delay = process.data.inbound(now, delay);
                    self.schedule(
                        delay,
                        Event::UnitDataReply {
                            pid,
                            request,
                            reply,
                        },
                    );
                }
            }
            for (unit, generation, delivery) in round.deliveries {
                if let Some(pid) = self.units.find(node, &unit, generation) {
                    if let Delivery::Message { shard, seq, .. } = &delivery {
                        self.trace(|| {
                            format!("node {node} delivers seq {seq} of {shard} to pid {pid}")
                        });
                    }
                    let delay = self.unit_rng.between(20, 200);
                    let now = self.now;
                    let process = self.units.processes.get_mut(&pid).expect("found");
                    let delay = process.data.inbound(now, delay);
                    self.schedule(delay, Event::UnitDelivery { pid, delivery });
                }
            }
            for event in &round.events {
                match event {
                    DataEvent::SessionStarted { full: true, .. } => self.report.full_transfers += 1,
                    DataEvent::SessionStarted { full: false, .. } => {
                        self.report.delta_sessions += 1
                    }
                    DataEvent::Verified { .. } => self.report.verified += 1,
                    _ => {}
                }
                self.trace(|| format!("node {id} data: {event:?}"));
            }
            for op in round.file_ops {
                if matches!(op, FileOp::Compact { .. }) {
                    self.report.compactions += 1;
                }
                if self.config.verbose {
                    self.trace(|| format!("node {id} file op: {op:?}"));
                }
                self.nodes[node].files.run(op);
            }
            // Usually the replica writes are synced at once; now and then the sync waits for
            // the next step, so a crash can find an unsynced tail.
            if !self.disk_rng.chance(REPLICA_SYNC_DELAY_PPM) {
                self.sync_files(node);
            }
        }
        let end = self.metered(node, |n| n.end_data_step());
        let n = self.nodes[node].node.as_mut().expect("checked");
        // The cache check walks every replica of the node: at scale, every 16th step, and
        // less often still past 2,000 shards (so that the check costs what the run does).
        self.cache_steps += 1;
        let every = 16.max(self.config.wide_shards as u64 / 128);
        if self.config.wide_shards == 0 || self.cache_steps.is_multiple_of(every) {
            n.check_data_caches().map_err(|detail| Violation {
                kind: FailureKind::StaleCache,
                detail: format!("node {id}: {detail}"),
            })?;
        }
        Ok(end.claims_changed)
    }

    /// A sync round of a node's replica files, its reports handed to the node in the order
    /// tandemd's sync thread sends them (installs first). Now and then an install's report
    /// comes a round late, after syncs of the compacted file it installs.
    fn sync_files(&mut self, node: usize) {
        let install_rng = &mut self.install_rng;
        let late_install_ppm = self.late_install_ppm;
        let mut late = 0;
        let started_over = self.nodes[node].files.installs_started_over;
        let (installed, synced) = self.nodes[node].files.sync(|| {
            let is_late = install_rng.chance(late_install_ppm);
            late += u64::from(is_late);
            is_late
        });
        self.report.late_installs += late;
        self.report.installs_started_over +=
            self.nodes[node].files.installs_started_over - started_over;
        self.report.installs += installed.iter().filter(|done| done.installed).count() as u64;
        if self.config.verbose && (!installed.is_empty() || !synced.is_empty()) {
            let id = self.nodes[node].id;
            self.trace(|| format!("node {id} files synced: {installed:?} then {synced:?}"));
        }
        self.metered(node, |n| {
            for done in installed {
                n.on_compaction_installed(done);
            }
            n.on_replicas_synced(synced);
        });
    }

    /// Drives a node: durable writes, sends, applies, agent actions; checks what it reports
    /// and follows leadership.
    fn drive_node(&mut self, node: usize) -> Result<(), Violation> {
        let id = self.nodes[node].id;
        let local_now = self.nodes[node].local_now(self.now);
        let wall_ms = self.now / 1000;
        let start = self.meter_read();
        let Some(sim_node) = self.nodes[node].node.as_mut() else {
            return Ok(());
        };
        let driven = sim_node.drive(local_now, wall_ms);
        self.charge(start);
        let mut output = match driven {
            Ok(output) => output,
            Err(error) => return self.write_failed(node, "drive", &error),
        };
        if self.nodes[node].disk.fired() {
            return Err(Violation {
                kind: FailureKind::NodeError,
                detail: format!("node {id}: a write failed but drive reported success"),
            });
        }
        self.start_raft_sync(node)?;
        // raft-rs builds some message batches by iterating its progress map; a stable sort by
        // destination makes the order (hence the random draws per message) independent of
        // that map, while keeping each peer's messages in order.
        output.messages.sort_by_key(|(to, _)| *to);
        let messages = std::mem::take(&mut output.messages);
        for (to, message) in &messages {
            self.send(id, *to, message);
        }
        self.check_output(node, &output)?;
        let actions = std::mem::take(&mut output.actions);
        for action in actions {
            self.carry_out(node, action);
        }
        self.follow_leadership(node)
    }

    /// Hands out the node's next deferred log fsync, if one is due; it completes a little
    /// later (an `RaftSynced` event), unless the node crashes first.
    fn start_raft_sync(&mut self, node: usize) -> Result<(), Violation> {
        let id = self.nodes[node].id;
        let start = self.meter_read();
        let Some(n) = self.nodes[node].node.as_mut() else {
            return Ok(());
        };
        let job = n.take_sync();
        self.charge(start);
        let job = job.map_err(|error| Violation {
            kind: FailureKind::NodeError,
            detail: format!("node {id}: taking a log sync failed: {error}"),
        })?;
        let sim_node = &mut self.nodes[node];
        if let Some(job) = job {
            let number = job.number;
            sim_node.raft_sync = Some(job);
            let epoch = sim_node.epoch;
            let delay = self.sync_rng.between(20, 3_000);
            self.schedule(
                delay,
                Event::RaftSynced {
                    node,
                    epoch,
                    number,
                },
            );
        }
        Ok(())
    }

    /// A deferred log fsync completes: the disk makes the log durable, then the node hears.
    fn on_raft_synced(&mut self, node: usize, epoch: u64, number: u64) -> Result<(), Violation> {
        if !self.is_running(node, epoch) {
            // A crash dropped the job; a pause keeps it for the resume.
            return Ok(());
        }
        let id = self.nodes[node].id;
        let Some(job) = self.nodes[node].raft_sync.take() else {
            return Ok(());
        };
        if job.number != number {
            self.nodes[node].raft_sync = Some(job);
            return Ok(());
        }
        if let Err(error) = tandem_raft::disk::FileSyncer::sync(&job.syncer) {
            return self.write_failed(node, "log sync", &error);
        }
        self.trace(|| format!("node {id} synced its log up to ready {number}"));
        self.metered(node, |n| n.synced(number));
        self.drive(node)
    }

    fn follow_leadership(&mut self, node: usize) -> Result<(), Violation> {
        let id = self.nodes[node].id;
        let Some(sim_node) = self.nodes[node].node.as_ref() else {
            return Ok(());
        };
        let replica = sim_node.replica();
        if replica.is_leader() && self.checker.on_leader(id, replica)? {
            let term = replica.term();
            self.trace(|| format!("node {id} leads term {term}"));
        }
        Ok(())
    }

    fn replica_config(&self, node: usize) -> ReplicaConfig {
        let sim_node = &self.nodes[node];
        ReplicaConfig {
            id: sim_node.id,
            voters: self.voters[..self.config.voters].to_vec(),
            learners: self.voters[self.config.voters..].to_vec(),
            heartbeat_ticks: self.config.heartbeat_ticks,
            election_ticks: 10,
            // Small, so that snapshots, compaction and snapshot transfer happen in every run
            // (less small at scale, where a snapshot holds thousands of shards).
            snapshot_interval_entries: if self.config.wide_shards == 0 {
                50
            } else {
                400
            },
            election_seed: mix(self.config.seed ^ mix(sim_node.id ^ mix(sim_node.restarts))),
            wal: WalOptions {
                // Small, so that segments rotate and old ones are deleted.
                segment_len_max: 4096,
                record_len_max: 1024 * 1024,
            },
            deferred_sync: sim_node.deferred_sync,
            check_model: true,
        }
    }

    /// Opens a node on its disk (start or restart).
    pub(crate) fn restart(&mut self, node: usize) -> Result<(), Violation> {
        let id = self.nodes[node].id;
        let settings = NodeSettings {
            replica: self.replica_config(node),
            heartbeat_interval: Duration::from_micros(HEARTBEAT_US),
            node_timeout: NODE_TIMEOUT,
            lease: LEASE,
            members: self.voters.iter().map(|id| NodeId(*id)).collect(),
            topology: self.topology.clone(),
            data: DataConfig::default(),
            data_incarnation: mix(self.config.seed ^ mix(id ^ mix(self.nodes[node].restarts + 1)))
                & 0xffff,
            compaction: self.compaction,
        };
        let disk = self.nodes[node].disk.clone();
        // Now and then the node crashes again during recovery's own writes (cutting a torn
        // tail, starting a segment) or, if recovery writes nothing, during its first write.
        if self.faults_active && self.faults.chance(100_000) {
            disk.arm();
        }
        let mut opened = match Node::open(settings, disk.clone(), &self.logger) {
            Ok(opened) => opened,
            Err(_) if disk.fired() => {
                self.trace(|| format!("node {id} crashed during recovery"));
                self.crash(node, CrashKind::MidWrite);
                return Ok(());
            }
            Err(error) => {
                return Err(Violation {
                    kind: FailureKind::NodeError,
                    detail: format!("node {id} failed to recover its disk: {error}"),
                })
            }
        };
        if disk.is_armed() {
            self.nodes[node].armed_at = Some(self.now);
        }
        let replica = opened.replica();
        if let Some((file, offset, dropped)) = &replica.recovery().torn_tail {
            self.report.torn_tails_recovered += 1;
            self.trace(|| {
                format!("node {id} recovery cut a torn tail: {file} at {offset}, {dropped} bytes")
            });
        }
        self.trace(|| {
            format!(
                "node {id} (re)started: term {}, snapshot {}, commit {}, last index {}",
                replica.term(),
                replica.snapshot_index(),
                replica.commit_index(),
                replica.last_index()
            )
        });
        self.checker.on_restart(id, replica)?;
        let sim_node = &mut self.nodes[node];
        sim_node.snapshot_index = replica.snapshot_index();
        let (files, cut) = sim_node.files.recover()?;
        for found in files {
            if found.recovered.stamp_unchecked.is_none() {
                self.report.replica_stamps_checked += 1;
            }
            opened.load_replica(
                found.id,
                found.recovered.replica,
                found.recovered.complete,
                found.generation,
                found.len,
            );
        }
        self.report.replica_tails_cut += cut;
        sim_node.node = Some(opened);
        sim_node.restarts += 1;
        self.report.restarts += 1;
        self.start_timers(node);
        self.drive(node)
    }

    /// Puts a node in the running state and starts its timers at a random phase.
    pub(crate) fn start_timers(&mut self, node: usize) {
        let sim_node = &mut self.nodes[node];
        sim_node.status = Status::Running;
        sim_node.epoch += 1;
        let epoch = sim_node.epoch;
        let tick = self.workload.below(TICK_US);
        let timer = self.workload.below(HEARTBEAT_US);
        self.schedule(tick, Event::Tick { node, epoch });
        self.schedule(timer, Event::Timer { node, epoch });
    }

    /// Schedules an input for a node from its own units or supervisor, `delay_us` later.
    pub(crate) fn send_input(&mut self, node: usize, life: u64, delay_us: u64, input: Inbound) {
        self.schedule(delay_us, Event::NodeInput { node, life, input });
    }

    /// Carries out an agent's action in the simulated world.
    fn carry_out(&mut self, node: usize, action: AgentAction) {
        let life = self.nodes[node].life;
        match action {
            AgentAction::Start {
                unit, generation, ..
            } => {
                if self.unit_rng.chance(10_000) {
                    let input = Inbound::Unit(UnitEvent::StartFailed {
                        unit,
                        generation,
                        error: "simulated exec failure".into(),
                    });
                    self.send_input(node, life, 1_000, input);
                    return;
                }
                let pid = self.units.start(unit.clone(), node, life, generation);
                self.report.unit_starts += 1;
                self.send_input(
                    node,
                    life,
                    0,
                    Inbound::Unit(UnitEvent::Started {
                        unit,
                        generation,
                        pid,
                    }),
                );
                // Now and then a unit never registers (a broken build, a wrong socket path).
                if !self.unit_rng.chance(20_000) {
                    let delay = self.unit_rng.between(1_000, 30_000);
                    self.schedule(delay, Event::UnitRegister { pid });
                }
            }
            AgentAction::Stop {
                unit,
                generation,
                how,
            } => {
                match self.units.find(node, &unit, generation) {
                    Some(pid) if how.kill => {
                        self.units.processes.remove(&pid);
                        let input = Inbound::Unit(UnitEvent::Exited {
                            unit,
                            generation,
                            code: None,
                            signal: Some(9),
                        });
                        let delay = self.unit_rng.between(0, 1_000);
                        self.send_input(node, life, delay, input);
                    }
                    Some(pid) => {
                        let delay = self.unit_rng.between(1_000, 20_000);
                        self.schedule(delay, Event::UnitExit { pid });
                    }
                    None => {
                        // Already gone: the supervisor reports it at once.
                        let input = Inbound::Unit(UnitEvent::Exited {
                            unit,
                            generation,
                            code: None,
                            signal: Some(9),
                        });
                        self.send_input(node, life, 0, input);
                    }
                }
            }
            AgentAction::Send {
                unit,
                generation,
                request,
                command,
            } => {
                if command != UnitCommand::Health {
                    self.trace(|| {
                        format!(
                            "agent {} -> {unit}/{generation}: #{request} {command:?}",
                            node + 1
                        )
                    });
                }
                if let Some(pid) = self.units.find(node, &unit, generation) {
                    if !self.units.processes[&pid].hung {
                        let delay = self.unit_rng.between(50, 300);
                        self.schedule(
                            delay,
                            Event::UnitRequest {
                                pid,
                                request,
                                command,
                            },
                        );
                    }
                }
            }
            AgentAction::Lease {
                unit,
                generation,
                valid_until,
            } => {
                if let Some(pid) = self.units.find(node, &unit, generation) {
                    let ignore = self.config.units_ignore_lease;
                    let process = self.units.processes.get_mut(&pid).expect("found");
                    if ignore {
                        // Mutation: the unit treats any lease as forever.
                        process
                            .belief
                            .on_lease(Some(Time::from_micros(u64::MAX / 2)));
                        let held: Vec<ShardName> = process
                            .belief
                            .roles()
                            .map(|(shard, _, _)| shard.clone())
                            .collect();
                        self.note_acting(&held);
                    } else if !process.hung {
                        let local_now = self.nodes[node].local_now(self.now);
                        let was_valid = process
                            .belief
                            .lease_until()
                            .is_some_and(|until| local_now < until);
                        let resumed = process.belief.renew_lease(valid_until, local_now);
                        if !was_valid {
                            // Every acting role (QUIESCING too) may act again.
                            let held: Vec<ShardName> = process
                                .belief
                                .roles()
                                .map(|(shard, _, _)| shard.clone())
                                .collect();
                            self.note_acting(&held);
                        }
                        for (shard, epoch) in resumed {
                            self.start_delivery_round(pid, &shard, epoch);
                        }
                    }
                }
            }
            AgentAction::NodeRestart { .. } => self.report.node_restarts += 1,
        }
    }

    pub(crate) fn leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|node| {
                self.nodes[*node].status == Status::Running
                    && self.nodes[*node]
                        .node
                        .as_ref()
                        .is_some_and(|n| n.is_leader())
            })
            .max_by_key(|node| self.nodes[*node].node.as_ref().map(|n| n.replica().term()))
    }

    pub(crate) fn running_node(&self, node: usize) -> Option<&Node<SimDisk>> {
        let sim_node = &self.nodes[node];
        sim_node
            .node
            .as_ref()
            .filter(|_| sim_node.status == Status::Running)
    }
}

fn duration_us(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX / 4)
}

/// FNV-1a over the committed log (index, term, command, context).
fn digest(log: &[LoggedEntry]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for entry in log {
        feed(&entry.index.to_be_bytes());
        feed(&entry.term.to_be_bytes());
        match &entry.command {
            Some(command) => feed(&tandem_proto::state_wire::encode_command(command)),
            None => feed(b"-"),
        }
        feed(&entry.context);
    }
    hash
}
