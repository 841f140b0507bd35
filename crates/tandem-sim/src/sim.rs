//! The simulation engine: the event queue, the nodes, the fault generator and the workload.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use tandem_core::{
    ApplyOutcome, Command, LivenessConfig, LivenessTracker, NodeId, NodeReport, Time,
};
use tandem_raft::{Replica, ReplicaConfig, WalOptions};

use crate::check::{self, Checker, LoggedEntry, Violation, CONTEXT_CLIENT, CONTEXT_PROBE};
use crate::disk::SimDisk;
use crate::net::{Network, Wire};
use crate::node::{SimNode, Status, INBOX_LEN_MAX};
use crate::rng::{mix, Rng};
use crate::{FailureKind, SimConfig, SimFailure, SimReport};

/// A node's raft tick, in microseconds of its own clock.
const TICK_US: u64 = 10_000;
/// Liveness heartbeat (and the leader's verdict) period, in microseconds of the node's clock.
const LIVENESS_PERIOD_US: u64 = 50_000;
/// The liveness tracker's node timeout.
const NODE_TIMEOUT: Duration = Duration::from_millis(300);
/// A disk armed to crash during a write that sees no write for this long crashes anyway.
const ARMED_CRASH_DEADLINE_US: u64 = 300_000;
/// Lying mode's write-back period: writes acknowledged within this window before a crash
/// are lost.
const WRITE_BACK_US: u64 = 1_000_000;
/// Clock drift bound, parts per million (±3 %).
const DRIFT_PPM_MAX: u64 = 30_000;
/// Nonces of the liveness probes start here, far from the clients' nonces.
const PROBE_NONCE_BASE: u64 = 1 << 62;
/// A run handling more events than this is stuck in a loop.
const EVENTS_MAX: u64 = 20_000_000;
/// Ready rounds per drive: `process_ready` may leave work for a next round (entries that
/// became committed while the previous round was persisted).
const READY_ROUNDS_MAX: usize = 4;

/// Random streams, one per concern (see [`crate::rng`]).
const STREAM_PARAMS: u64 = 1;
const STREAM_NET: u64 = 2;
const STREAM_FAULTS: u64 = 3;
const STREAM_DISK: u64 = 4;
const STREAM_WORKLOAD: u64 = 5;

/// Something that happens at a point of simulated time.
#[derive(Debug)]
enum Event {
    /// A node's raft tick.
    Tick { node: usize, epoch: u64 },
    /// A node's liveness timer: heartbeat to the leader, or (on the leader) verdicts.
    Timer { node: usize, epoch: u64 },
    /// A message arrives.
    Deliver { from: u64, to: u64, wire: Wire },
    /// A client proposes.
    Client,
    /// The fault generator acts.
    Fault,
    /// A crashed node restarts.
    Restart { node: usize, epoch: u64 },
    /// A paused node resumes.
    Resume { node: usize, epoch: u64 },
    /// A partition heals.
    Heal { partition: u64 },
    /// Lying mode: everything written becomes durable.
    WriteBack,
    /// The fault phase ends.
    EndFaults,
    /// After the faults: propose a liveness probe through the leader.
    Probe,
    /// The liveness bound has passed.
    Deadline,
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
struct Params {
    crashes: bool,
    pauses: bool,
    partitions: bool,
    weather: bool,
    /// Longest gap between fault actions, microseconds.
    fault_gap_max_us: u64,
    /// Longest gap between client proposals, microseconds.
    client_gap_max_us: u64,
}

/// How a node goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashKind {
    /// Between two events: nothing unsynced is on the disk (unless garbage is added).
    Idle,
    /// During a write: the fsync of the last append never returned.
    MidWrite,
}

/// The whole simulated world.
pub(crate) struct Sim {
    config: SimConfig,
    params: Params,
    /// Simulated time, microseconds.
    now: u64,
    /// Scheduling counter, the tie-breaker of the queue.
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<SimNode>,
    voters: Vec<u64>,
    net: Network,
    faults: Rng,
    disk_rng: Rng,
    workload: Rng,
    checker: Checker,
    report: SimReport,
    logger: slog::Logger,
    /// Whether faults are still being injected.
    faults_active: bool,
    /// When the fault phase ended.
    calm_since: Option<u64>,
    /// The next client nonce.
    next_nonce: u64,
    /// Client nonce → the node that accepted the proposal, until that node applies it.
    proposals: BTreeMap<u64, u64>,
    /// Nonces of the probes proposed after the fault phase.
    probes: Vec<u64>,
    /// Active partitions: id → cut links.
    partitions: BTreeMap<u64, Vec<(u64, u64)>>,
    next_partition: u64,
    /// Set when a probe was applied everywhere: the run is over.
    done: bool,
}

impl Sim {
    pub(crate) fn new(config: SimConfig) -> Self {
        assert!(
            (1..=9).contains(&config.nodes),
            "a simulated cluster has 1 to 9 nodes"
        );
        let seed = config.seed;
        let mut params_rng = Rng::new(seed, STREAM_PARAMS);
        let params = Params {
            crashes: params_rng.chance(850_000),
            pauses: params_rng.chance(850_000),
            partitions: params_rng.chance(850_000),
            weather: params_rng.chance(850_000),
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
                replica: None,
                status: Status::Crashed,
                epoch: 0,
                restarts: 0,
                drift_ppm: params_rng.between(0, 2 * DRIFT_PPM_MAX) as i64 - DRIFT_PPM_MAX as i64,
                tracker: None,
                inbox: Vec::new(),
                armed_at: None,
                snapshot_index: 0,
            })
            .collect();
        Self {
            params,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            checker: Checker::new(&voters),
            voters,
            net: Network::new(Rng::new(seed, STREAM_NET), delay_max_us),
            faults: Rng::new(seed, STREAM_FAULTS),
            disk_rng: Rng::new(seed, STREAM_DISK),
            workload: Rng::new(seed, STREAM_WORKLOAD),
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
            partitions: BTreeMap::new(),
            next_partition: 0,
            done: false,
            config,
        }
    }

    /// Runs to the end; a panic in the code under test becomes a failure with the seed.
    pub(crate) fn run(mut self) -> Result<(SimReport, Vec<LoggedEntry>), SimFailure> {
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run_events()));
        let violation = match outcome {
            Ok(Ok(())) => {
                self.report.end_time_us = self.now;
                self.report.elections = self.checker.elections();
                self.report.entries_committed = self.checker.max_committed();
                let log = self.checker.committed_log();
                self.report.log_digest = digest(&log);
                return Ok((self.report, log));
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
            config: self.config.clone(),
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
            self.handle(scheduled.event)?;
            if self.calm_since.is_some() {
                self.check_probes();
                if self.done {
                    return Ok(());
                }
            }
        }
        Err(Violation {
            kind: FailureKind::Stuck,
            detail: "the event queue ran dry".to_owned(),
        })
    }

    fn schedule(&mut self, delay_us: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + delay_us,
            seq: self.seq,
            event,
        }));
    }

    fn trace(&self, message: impl FnOnce() -> String) {
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
            Event::Restart { node, epoch } => {
                if self.nodes[node].status == Status::Crashed && self.nodes[node].epoch == epoch {
                    self.restart(node)?;
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
            Event::Deadline => Err(Violation {
                kind: FailureKind::Liveness,
                detail: format!(
                    "no probe was applied on every node within {:?} after the faults ended\n{}",
                    self.config.liveness_bound,
                    self.dump()
                ),
            }),
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
        self.nodes[node].replica().tick();
        let interval = self.nodes[node].real_duration(TICK_US);
        self.schedule(interval, Event::Tick { node, epoch });
        self.drive(node)
    }

    fn on_timer(&mut self, node: usize, epoch: u64) -> Result<(), Violation> {
        if !self.is_running(node, epoch) {
            return Ok(());
        }
        let interval = self.nodes[node].real_duration(LIVENESS_PERIOD_US);
        self.schedule(interval, Event::Timer { node, epoch });
        let local_now = self.nodes[node].local_now(self.now);
        let sim_node = &mut self.nodes[node];
        let replica = sim_node
            .replica
            .as_mut()
            .expect("running node has a replica");
        if let Some(tracker) = &mut sim_node.tracker {
            let commands = tracker.decide(local_now, replica.state());
            for command in commands {
                // A refusal (the node just lost leadership) is fine: the next leader decides
                // again.
                let _ = replica.propose(&command, Vec::new());
            }
            return self.drive(node);
        }
        let id = sim_node.id;
        if let Some(leader) = replica.leader_id().filter(|leader| *leader != id) {
            let report = NodeReport {
                term: replica.term(),
                commit_index: replica.commit_index(),
                applied_index: replica.applied_index(),
            };
            self.send(id, leader, Wire::Heartbeat(report));
        }
        Ok(())
    }

    fn on_deliver(&mut self, from: u64, to: u64, wire: Wire) -> Result<(), Violation> {
        let node = (to - 1) as usize;
        if self.net.is_cut(from, to) {
            self.report.messages_dropped += 1;
            return Ok(());
        }
        match self.nodes[node].status {
            Status::Crashed => {
                self.report.messages_dropped += 1;
                Ok(())
            }
            Status::Paused => {
                if self.nodes[node].inbox.len() < INBOX_LEN_MAX {
                    self.nodes[node].inbox.push((from, wire));
                } else {
                    self.report.messages_dropped += 1;
                }
                Ok(())
            }
            Status::Running => {
                self.receive(node, from, wire)?;
                self.drive(node)
            }
        }
    }

    /// Hands one arrived message to a running node.
    fn receive(&mut self, node: usize, from: u64, wire: Wire) -> Result<(), Violation> {
        self.report.messages_delivered += 1;
        let local_now = self.nodes[node].local_now(self.now);
        let sim_node = &mut self.nodes[node];
        match wire {
            Wire::Raft(bytes) => {
                let message =
                    tandem_raft::decode_raft_message(&bytes).map_err(|error| Violation {
                        kind: FailureKind::Codec,
                        detail: format!("raft message from {from} to {}: {error}", sim_node.id),
                    })?;
                assert_eq!(
                    message.to, sim_node.id,
                    "message delivered to the wrong node"
                );
                // raft-rs refuses some messages (e.g. stale ones); that changes nothing.
                let _ = sim_node.replica().step(message);
            }
            Wire::Heartbeat(report) => {
                if let Some(tracker) = &mut sim_node.tracker {
                    tracker.observe(local_now, NodeId(from), report);
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, from: u64, to: u64, wire: Wire) {
        self.report.messages_sent += 1;
        if self.net.is_cut(from, to) {
            self.report.messages_dropped += 1;
            return;
        }
        let delays = self.net.transmit();
        match delays.len() {
            0 => self.report.messages_dropped += 1,
            1 => {}
            _ => self.report.messages_duplicated += 1,
        }
        if let Some((last, copies)) = delays.split_last() {
            for delay in copies {
                let wire = wire.clone();
                self.schedule(*delay, Event::Deliver { from, to, wire });
            }
            self.schedule(*last, Event::Deliver { from, to, wire });
        }
    }

    /// Runs a node's ready loop: makes writes durable, sends messages, applies entries, checks
    /// everything it reports, and follows leadership changes.
    fn drive(&mut self, node: usize) -> Result<(), Violation> {
        let id = self.nodes[node].id;
        for _ in 0..READY_ROUNDS_MAX {
            let Some(replica) = self.nodes[node].replica.as_mut() else {
                return Ok(());
            };
            let mut output = match replica.process_ready() {
                Ok(output) => output,
                Err(error) => {
                    if self.nodes[node].disk.fired() {
                        // The simulated crash struck inside this write; nothing the write
                        // would have acknowledged was returned.
                        self.crash(node, CrashKind::MidWrite);
                        return Ok(());
                    }
                    return Err(Violation {
                        kind: FailureKind::NodeError,
                        detail: format!("node {id}: process_ready failed: {error}"),
                    });
                }
            };
            if self.nodes[node].disk.fired() {
                return Err(Violation {
                    kind: FailureKind::NodeError,
                    detail: format!("node {id}: a write failed but process_ready reported success"),
                });
            }
            let idle = output.messages.is_empty()
                && output.applied.is_empty()
                && output.installed_snapshot.is_none();
            // raft-rs builds some message batches by iterating its progress map; a stable
            // sort by destination makes the order (hence the random draws per message)
            // independent of that map, while keeping each peer's messages in order.
            output.messages.sort_by_key(|message| message.to);
            for message in &output.messages {
                let bytes = tandem_raft::encode_raft_message(message);
                self.send(id, message.to, Wire::Raft(bytes));
            }
            if let Some(index) = output.installed_snapshot {
                self.report.snapshots_installed += 1;
                self.checker.on_snapshot_installed(id, index)?;
                self.trace(|| format!("node {id} installed the leader's snapshot at {index}"));
            }
            let node_term = self.nodes[node].replica.as_ref().map_or(0, |r| r.term());
            for applied in &output.applied {
                self.checker.on_applied(id, node_term, applied)?;
                if let Some((kind, nonce)) = check::decode_context(&applied.context) {
                    if kind == CONTEXT_CLIENT && self.proposals.get(&nonce) == Some(&id) {
                        self.proposals.remove(&nonce);
                        self.report.proposals_acknowledged += 1;
                    }
                }
                if let (Some(command @ Command::SetNodeLiveness { .. }), ApplyOutcome::Changed) =
                    (&applied.command, &applied.outcome)
                {
                    // Every node applies it; count it once, on the leader.
                    if self.nodes[node].tracker.is_some() {
                        self.report.liveness_changes += 1;
                        self.trace(|| format!("index {}: {command:?} committed", applied.index));
                    }
                }
            }
            let replica = self.nodes[node].replica.as_ref().expect("still running");
            self.checker.on_round(id, replica)?;
            let snapshot_index = replica.snapshot_index();
            if snapshot_index != self.nodes[node].snapshot_index {
                if output.installed_snapshot != Some(snapshot_index) {
                    self.report.snapshots_taken += 1;
                }
                self.nodes[node].snapshot_index = snapshot_index;
            }
            if idle {
                break;
            }
        }
        self.follow_leadership(node)
    }

    fn follow_leadership(&mut self, node: usize) -> Result<(), Violation> {
        let local_now = self.nodes[node].local_now(self.now);
        let id = self.nodes[node].id;
        let Some(replica) = self.nodes[node].replica.as_ref() else {
            return Ok(());
        };
        if replica.is_leader() {
            if self.checker.on_leader(id, replica)? {
                let term = replica.term();
                self.trace(|| format!("node {id} leads term {term}"));
            }
            if self.nodes[node].tracker.is_none() {
                self.nodes[node].tracker = Some(LivenessTracker::new(
                    LivenessConfig {
                        node_timeout: NODE_TIMEOUT,
                    },
                    NodeId(id),
                    self.voters.iter().map(|voter| NodeId(*voter)),
                    local_now,
                ));
            }
        } else {
            self.nodes[node].tracker = None;
        }
        Ok(())
    }

    fn replica_config(&self, node: usize) -> ReplicaConfig {
        let sim_node = &self.nodes[node];
        ReplicaConfig {
            id: sim_node.id,
            voters: self.voters.clone(),
            learners: Vec::new(),
            heartbeat_ticks: 2,
            election_ticks: 10,
            // Small, so that snapshots, compaction and snapshot transfer happen in every run.
            snapshot_interval_entries: 50,
            election_seed: mix(self.config.seed ^ mix(sim_node.id ^ mix(sim_node.restarts))),
            wal: WalOptions {
                // Small, so that segments rotate and old ones are deleted.
                segment_len_max: 4096,
                record_len_max: 1024 * 1024,
            },
        }
    }

    /// Opens a node's replica on its disk (start or restart).
    fn restart(&mut self, node: usize) -> Result<(), Violation> {
        let config = self.replica_config(node);
        let id = self.nodes[node].id;
        let disk = self.nodes[node].disk.clone();
        // Now and then the node crashes again during recovery's own writes (cutting a torn
        // tail, starting a segment) or, if recovery writes nothing, during its first write.
        if self.faults_active && self.faults.chance(100_000) {
            disk.arm();
        }
        let replica = match Replica::open(&config, disk.clone(), &self.logger) {
            Ok(replica) => replica,
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
        self.checker.on_restart(id, &replica)?;
        let sim_node = &mut self.nodes[node];
        sim_node.snapshot_index = replica.snapshot_index();
        sim_node.replica = Some(replica);
        sim_node.restarts += 1;
        self.report.restarts += 1;
        self.start_timers(node);
        self.drive(node)
    }

    /// Puts a node in the running state and starts its timers at a random phase.
    fn start_timers(&mut self, node: usize) {
        let sim_node = &mut self.nodes[node];
        sim_node.status = Status::Running;
        sim_node.epoch += 1;
        let epoch = sim_node.epoch;
        let tick = self.workload.below(TICK_US);
        let timer = self.workload.below(LIVENESS_PERIOD_US);
        self.schedule(tick, Event::Tick { node, epoch });
        self.schedule(timer, Event::Timer { node, epoch });
    }

    fn crash(&mut self, node: usize, kind: CrashKind) {
        let id = self.nodes[node].id;
        let disk = self.nodes[node].disk.clone();
        let sim_node = &mut self.nodes[node];
        // Dropping the replica is the crash of the process: everything in memory is gone,
        // including writes buffered but not yet handed to the disk.
        sim_node.replica = None;
        sim_node.tracker = None;
        sim_node.status = Status::Crashed;
        sim_node.epoch += 1;
        sim_node.armed_at = None;
        self.report.messages_dropped += sim_node.inbox.len() as u64;
        sim_node.inbox.clear();
        let epoch = sim_node.epoch;
        let mut garbage = None;
        if self.disk_rng.chance(100_000) {
            let len = self.disk_rng.between(1, 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| self.disk_rng.next_u64() as u8).collect();
            if let Some(file) = disk.append_garbage(&bytes) {
                self.report.garbage_tails += 1;
                garbage = Some((file, len));
            }
        }
        let rng = &mut self.disk_rng;
        let mut torn = 0;
        let lying = self.config.lying_disk;
        disk.crash(|_, unsynced| {
            if unsynced == 0 || lying {
                // A lying disk loses everything since its last write-back.
                return 0;
            }
            match rng.below(3) {
                0 => 0,
                1 => unsynced,
                _ if unsynced < 2 => unsynced,
                _ => {
                    torn += 1;
                    rng.between(1, unsynced as u64 - 1) as usize
                }
            }
        });
        self.report.torn_writes += torn;
        self.report.crashes += 1;
        if kind == CrashKind::MidWrite {
            self.report.crashes_mid_write += 1;
        }
        self.trace(|| {
            let garbage = garbage
                .map(|(file, len)| format!(", {len} bytes of garbage after {file}"))
                .unwrap_or_default();
            format!("node {id} crashed ({kind:?}{garbage}, {torn} unsynced tails torn)")
        });
        let delay = if self.faults_active {
            self.faults.between(20_000, 1_500_000)
        } else {
            1_000
        };
        self.schedule(delay, Event::Restart { node, epoch });
    }

    fn pause(&mut self, node: usize) {
        let sim_node = &mut self.nodes[node];
        sim_node.status = Status::Paused;
        sim_node.epoch += 1;
        let epoch = sim_node.epoch;
        let id = sim_node.id;
        let duration = self.faults.between(50_000, 1_500_000);
        self.report.pauses += 1;
        self.trace(|| format!("node {id} paused for {} ms", duration / 1000));
        self.schedule(duration, Event::Resume { node, epoch });
    }

    fn resume(&mut self, node: usize) -> Result<(), Violation> {
        let id = self.nodes[node].id;
        let inbox = std::mem::take(&mut self.nodes[node].inbox);
        self.trace(|| format!("node {id} resumed with {} queued messages", inbox.len()));
        self.start_timers(node);
        for (from, wire) in inbox {
            self.receive(node, from, wire)?;
        }
        self.drive(node)
    }

    // ----- workload -----

    fn on_client(&mut self) -> Result<(), Violation> {
        let gap = self.workload.between(1_000, self.params.client_gap_max_us);
        self.schedule(gap, Event::Client);
        // The client asks a random node; a follower that knows the leader redirects it once.
        let mut target = self.workload.pick(self.nodes.len());
        let Some(replica) = self.running_replica(target) else {
            return Ok(());
        };
        if !replica.is_leader() {
            match replica.leader_id() {
                Some(leader) => target = (leader - 1) as usize,
                None => return Ok(()),
            }
        }
        let nonce = self.next_nonce;
        if self.nodes[target].status != Status::Running {
            return Ok(());
        }
        let Some(replica) = self.nodes[target].replica.as_mut() else {
            return Ok(());
        };
        // `NotLeader` (a stale hint) and dropped proposals are normal; the client moves on.
        if replica
            .propose(
                &Command::Noop { nonce },
                check::encode_context(CONTEXT_CLIENT, nonce),
            )
            .is_ok()
        {
            self.next_nonce += 1;
            self.report.proposals += 1;
            self.proposals.insert(nonce, self.nodes[target].id);
            // Drive now, so the proposal goes out without waiting for the next tick.
            return self.drive(target);
        }
        Ok(())
    }

    fn running_replica(&self, node: usize) -> Option<&Replica<SimDisk>> {
        let sim_node = &self.nodes[node];
        sim_node
            .replica
            .as_ref()
            .filter(|_| sim_node.status == Status::Running)
    }

    // ----- faults -----

    fn on_fault(&mut self) -> Result<(), Violation> {
        if !self.faults_active {
            return Ok(());
        }
        let gap = self.faults.between(10_000, self.params.fault_gap_max_us);
        self.schedule(gap, Event::Fault);
        let down = self
            .nodes
            .iter()
            .filter(|node| node.status != Status::Running)
            .count();
        // Usually keep a majority up so the cluster makes progress between faults; now and
        // then take it down further (even all nodes), which tests durability across a
        // whole-cluster crash.
        let minority = (self.nodes.len() - 1) / 2;
        let may_take_down = down < minority || self.faults.chance(150_000);
        match self.faults.below(100) {
            0..=24 if self.params.crashes && may_take_down => {
                let Some(node) = self.pick_node(|node| node.status != Status::Crashed) else {
                    return Ok(());
                };
                let sim_node = &self.nodes[node];
                if sim_node.status == Status::Running
                    && sim_node.armed_at.is_none()
                    && self.faults.chance(500_000)
                {
                    // Crash during the node's next write.
                    sim_node.disk.arm();
                    let id = sim_node.id;
                    self.nodes[node].armed_at = Some(self.now);
                    self.trace(|| format!("node {id} will crash during its next write"));
                } else {
                    self.crash(node, CrashKind::Idle);
                }
            }
            25..=39 if self.params.pauses && may_take_down => {
                if let Some(node) = self.pick_node(|node| node.status == Status::Running) {
                    self.pause(node);
                }
            }
            40..=64 if self.params.partitions => self.partition(),
            65..=74 if self.params.weather => {
                self.net.loss_per_million = [0, 0, 10_000, 50_000, 200_000][self.faults.pick(5)];
                self.net.duplicate_per_million = [0, 10_000, 50_000][self.faults.pick(3)];
                let (loss, duplicate) = (self.net.loss_per_million, self.net.duplicate_per_million);
                self.trace(|| {
                    format!(
                        "network weather: {}% loss, {}% duplication",
                        loss / 10_000,
                        duplicate / 10_000
                    )
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// A node matching `filter`; half of the time the leader if it matches (leaders are the
    /// most interesting nodes to hit).
    fn pick_node(&mut self, filter: impl Fn(&SimNode) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|node| filter(&self.nodes[*node]))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        if self.faults.chance(500_000) {
            if let Some(leader) = candidates.iter().copied().find(|node| {
                self.nodes[*node]
                    .replica
                    .as_ref()
                    .is_some_and(|replica| replica.is_leader())
            }) {
                return Some(leader);
            }
        }
        Some(candidates[self.faults.pick(candidates.len())])
    }

    fn partition(&mut self) {
        let ids = self.voters.clone();
        let mut links = Vec::new();
        let description = match self.faults.below(3) {
            0 => {
                let node = self.pick_node(|_| true).expect("clusters are not empty");
                let isolated = ids[node];
                for other in ids.iter().copied().filter(|other| *other != isolated) {
                    links.push((isolated, other));
                    links.push((other, isolated));
                }
                format!("node {isolated} isolated")
            }
            1 => {
                let mut shuffled = ids.clone();
                for position in (1..shuffled.len()).rev() {
                    let other = self.faults.pick(position + 1);
                    shuffled.swap(position, other);
                }
                let size = self.faults.between(1, (ids.len() / 2) as u64) as usize;
                let (side, rest) = shuffled.split_at(size);
                for a in side {
                    for b in rest {
                        links.push((*a, *b));
                        links.push((*b, *a));
                    }
                }
                format!("split {side:?} | {rest:?}")
            }
            _ => {
                let count = self.faults.between(1, ids.len() as u64);
                for _ in 0..count {
                    let from = ids[self.faults.pick(ids.len())];
                    let to = ids[self.faults.pick(ids.len())];
                    if from != to {
                        links.push((from, to));
                    }
                }
                format!("one-way cuts {links:?}")
            }
        };
        let duration = self.faults.between(100_000, 1_500_000);
        let partition = self.next_partition;
        self.next_partition += 1;
        self.net.cut(&links);
        self.partitions.insert(partition, links);
        self.report.partitions += 1;
        self.trace(|| {
            format!(
                "partition #{partition}: {description} for {} ms",
                duration / 1000
            )
        });
        self.schedule(duration, Event::Heal { partition });
    }

    /// The end of the fault phase: heal everything and restart everyone, then probe.
    fn end_faults(&mut self) -> Result<(), Violation> {
        self.faults_active = false;
        self.calm_since = Some(self.now);
        self.trace(|| "faults end: partitions healed, loss stopped, every node up".to_owned());
        self.net.calm();
        self.partitions.clear();
        for node in 0..self.nodes.len() {
            if self.nodes[node].disk.is_armed() {
                // Crash it now rather than leave a crash pending in the calm phase.
                self.crash(node, CrashKind::Idle);
            }
            match self.nodes[node].status {
                Status::Running => {}
                Status::Paused => self.resume(node)?,
                Status::Crashed => self.restart(node)?,
            }
        }
        self.schedule(0, Event::Probe);
        Ok(())
    }

    fn on_probe(&mut self) -> Result<(), Violation> {
        if self.done {
            return Ok(());
        }
        // The leader of the highest term, if any node leads.
        let leader = (0..self.nodes.len())
            .filter(|node| {
                self.running_replica(*node)
                    .is_some_and(|replica| replica.is_leader())
            })
            .max_by_key(|node| self.nodes[*node].replica.as_ref().map(|r| r.term()));
        let Some(leader) = leader else {
            self.schedule(50_000, Event::Probe);
            return Ok(());
        };
        let nonce = PROBE_NONCE_BASE + self.probes.len() as u64;
        let proposed = self.nodes[leader].replica().propose(
            &Command::Noop { nonce },
            check::encode_context(CONTEXT_PROBE, nonce),
        );
        if proposed.is_ok() {
            self.probes.push(nonce);
            let id = self.nodes[leader].id;
            self.trace(|| format!("probe {nonce} proposed on leader {id}"));
        }
        // A probe can be lost with a leader change; propose a fresh one now and then.
        self.schedule(500_000, Event::Probe);
        self.drive(leader)
    }

    /// Ends the run once some probe is applied on every node.
    fn check_probes(&mut self) {
        for nonce in &self.probes {
            let Some(index) = self.checker.nonce_index(*nonce) else {
                continue;
            };
            let everywhere = self.nodes.iter().all(|node| {
                node.status == Status::Running
                    && node
                        .replica
                        .as_ref()
                        .is_some_and(|replica| replica.applied_index() >= index)
            });
            if everywhere {
                let calm_since = self.calm_since.expect("probes run after the faults");
                self.report.recovery_time_us = self.now - calm_since;
                self.done = true;
                self.trace(|| format!("probe {nonce} applied on every node at index {index}"));
                return;
            }
        }
    }

    /// Every node's raft state, for failure messages.
    fn dump(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let line = match &node.replica {
                Some(replica) => format!(
                    "  node {} {:?}: term {}, leader {:?}, is_leader {}, commit {}, applied {}, \
                     last {}, snapshot {}\n",
                    node.id,
                    node.status,
                    replica.term(),
                    replica.leader_id(),
                    replica.is_leader(),
                    replica.commit_index(),
                    replica.applied_index(),
                    replica.last_index(),
                    replica.snapshot_index()
                ),
                None => format!("  node {} {:?}\n", node.id, node.status),
            };
            out.push_str(&line);
        }
        out.push_str(&format!(
            "  global log: {} entries committed, {} gaps",
            self.checker.max_committed(),
            self.checker.gaps()
        ));
        out
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
            Some(command) => feed(&tandem_raft::codec::encode_command(command)),
            None => feed(b"-"),
        }
        feed(&entry.context);
    }
    hash
}
