//! Fault injection, from one place (BUGGIFY style): the fault generator's choices during the
//! fault phase (node crashes, also in the middle of a write, pauses, partitions, network
//! weather, unit crashes, hangs and reported faults), what a crash, a pause and a resume do
//! to a node, and the end of the fault phase, which heals everything.

use tandem_core::Severity;
use tandem_node::UnitEvent;

use crate::checks::Violation;
use crate::node::{Inbound, SimNode, Status};
use crate::sim::{Event, Sim};
use crate::FailureKind;

/// How a node goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashKind {
    /// Between two events: nothing unsynced is on the disk (unless garbage is added).
    Idle,
    /// During a write: the fsync of the last append never returned.
    MidWrite,
}

impl Sim {
    /// The fault generator acts: one fault of the kinds this seed enables, then the next one is
    /// scheduled.
    pub(crate) fn on_fault(&mut self) -> Result<(), Violation> {
        if !self.faults_active {
            return Ok(());
        }
        let gap = self.faults.between(10_000, self.params.fault_gap_max_us);
        self.schedule(gap, Event::Fault);
        // Usually keep a majority of the voters up so the cluster makes progress between
        // faults; now and then take it down further (even all nodes), which tests durability
        // across a whole-cluster crash. Learners (at scale) go down up to half of them.
        let voters = self.config.voters;
        let down = |nodes: &[SimNode]| {
            nodes
                .iter()
                .filter(|node| node.status != Status::Running)
                .count()
        };
        let voters_down = down(&self.nodes[..voters]);
        let learners_down = down(&self.nodes[voters..]);
        let voter_ok = voters_down < (voters - 1) / 2 || self.faults.chance(150_000);
        let learner_ok = learners_down < (self.nodes.len() - voters) / 2;
        let may_take_down = voter_ok || learner_ok;
        let allowed = move |node: &SimNode| {
            if (node.id as usize) <= voters {
                voter_ok
            } else {
                learner_ok
            }
        };
        match self.faults.below(100) {
            0..=19 if self.params.crashes && may_take_down => {
                let Some(node) =
                    self.pick_node(|node| node.status != Status::Crashed && allowed(node))
                else {
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
            20..=31 if self.params.pauses && may_take_down => {
                if let Some(node) =
                    self.pick_node(|node| node.status == Status::Running && allowed(node))
                {
                    self.pause(node);
                }
            }
            32..=51 if self.params.partitions => self.partition(),
            52..=59 if self.params.weather => {
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
            60..=84 if self.params.unit_faults => self.unit_fault()?,
            _ => {}
        }
        Ok(())
    }

    /// Hurts a unit process: crash, hang, or a fault it reports itself.
    fn unit_fault(&mut self) -> Result<(), Violation> {
        let pids: Vec<u32> = self.units.processes.keys().copied().collect();
        if pids.is_empty() {
            return Ok(());
        }
        let pid = pids[self.faults.pick(pids.len())];
        let process = self.units.processes[&pid].clone();
        let (node, life, unit, generation) = (
            process.node,
            process.life,
            process.unit.clone(),
            process.generation,
        );
        match self.faults.below(10) {
            0..=4 => {
                self.units.processes.remove(&pid);
                self.report.unit_crashes += 1;
                self.trace(|| format!("unit {unit} (pid {pid}) crashed"));
                let input = Inbound::Unit(UnitEvent::Exited {
                    unit,
                    generation,
                    code: None,
                    signal: Some(11),
                });
                self.send_input(node, life, 0, input);
            }
            5..=6 => {
                self.units.processes.get_mut(&pid).expect("listed").hung = true;
                self.report.unit_hangs += 1;
                self.trace(|| format!("unit {unit} (pid {pid}) hangs"));
            }
            _ => {
                if process.hung {
                    return Ok(());
                }
                self.units
                    .processes
                    .get_mut(&pid)
                    .expect("listed")
                    .belief
                    .on_fault();
                let severity =
                    [Severity::Transient, Severity::Restart, Severity::Node][self.faults.pick(3)];
                self.report.unit_reported_faults += 1;
                self.trace(|| {
                    format!(
                        "unit {unit} (pid {pid}) reports a {} fault",
                        severity.name()
                    )
                });
                let input = Inbound::Unit(UnitEvent::Fault {
                    unit,
                    generation,
                    severity,
                });
                self.send_input(node, life, 100, input);
            }
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
                    .node
                    .as_ref()
                    .is_some_and(|node| node.is_leader())
            }) {
                return Some(leader);
            }
        }
        Some(candidates[self.faults.pick(candidates.len())])
    }

    /// Cuts links for a while: one node isolated, the cluster split in two, or one-way cuts.
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
        // Some cut connections are reset while both daemons live on (a middlebox, a
        // keepalive): the receiving side hears of a closed link from a live node.
        if self.link_rng.chance(300_000) {
            for (from, to) in links.clone() {
                self.links_lost(from, &[to], 50_000);
            }
        }
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

    /// Crashes a node: its memory, unit processes and inbox are gone; its disk and replica files
    /// keep, lose or tear what was not synced. It restarts later.
    pub(crate) fn crash(&mut self, node: usize, kind: CrashKind) {
        let id = self.nodes[node].id;
        let disk = self.nodes[node].disk.clone();
        let sim_node = &mut self.nodes[node];
        // Dropping the Node is the crash of the daemon: everything in memory is gone,
        // including writes buffered but not yet handed to the disk. Its unit processes die
        // with it (the supervisor's parent-death signal).
        sim_node.node = None;
        sim_node.raft_sync = None;
        self.report.installs_lost += sim_node.files.pending_installs() as u64;
        self.report.replica_tails_torn += sim_node
            .files
            .crash(&mut self.disk_rng, &mut self.stamp_rng);
        let sim_node = &mut self.nodes[node];
        sim_node.status = Status::Crashed;
        sim_node.epoch += 1;
        sim_node.life += 1;
        sim_node.pass_due = false;
        sim_node.armed_at = None;
        let dropped = sim_node
            .inbox
            .iter()
            .filter(|input| matches!(input, Inbound::Peer(..)))
            .count();
        self.report.messages_dropped += dropped as u64;
        sim_node.inbox.clear();
        let epoch = sim_node.epoch;
        self.units
            .processes
            .retain(|_, process| process.node != node);
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
        // The dead daemon's kernel closes its connections: the peers that can still hear
        // from it learn so within a few milliseconds.
        let others: Vec<u64> = self.voters.iter().copied().filter(|o| *o != id).collect();
        self.links_lost(id, &others, 3_000);
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

    /// Pauses a node (SIGSTOP-like) for a while: no ticks, and its inputs wait in its inbox.
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

    /// Resumes a paused node: its timers restart and it takes in what waited in its inbox.
    pub(crate) fn resume(&mut self, node: usize) -> Result<(), Violation> {
        let id = self.nodes[node].id;
        let inbox = std::mem::take(&mut self.nodes[node].inbox);
        self.trace(|| format!("node {id} resumed with {} queued inputs", inbox.len()));
        self.start_timers(node);
        if let Some(number) = self.nodes[node].raft_sync.as_ref().map(|job| job.number) {
            let epoch = self.nodes[node].epoch;
            self.schedule(
                0,
                Event::RaftSynced {
                    node,
                    epoch,
                    number,
                },
            );
        }
        for input in inbox {
            self.receive(node, input)?;
        }
        self.drive(node)
    }

    /// The end of the fault phase: heal everything, restart everyone, un-hang every unit
    /// (a hung one is killed by its agent anyway), then probe and tidy up.
    pub(crate) fn end_faults(&mut self) -> Result<(), Violation> {
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
        self.schedule(0, Event::Tidy);
        Ok(())
    }

    /// A node's write (a drive, or a deferred log sync) failed: the simulated crash armed on
    /// its disk struck inside it, so the node dies with nothing the write would have
    /// acknowledged sent; any other failure is a bug.
    pub(crate) fn write_failed(
        &mut self,
        node: usize,
        what: &str,
        error: &dyn std::fmt::Display,
    ) -> Result<(), Violation> {
        if self.nodes[node].disk.fired() {
            self.crash(node, CrashKind::MidWrite);
            return Ok(());
        }
        Err(Violation {
            kind: FailureKind::NodeError,
            detail: format!("node {}: {what} failed: {error}", self.nodes[node].id),
        })
    }
}
