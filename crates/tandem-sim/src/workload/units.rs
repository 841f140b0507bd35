//! The unit workload: simulated unit processes. A unit answers its agent's requests after a
//! delay, keeps its beliefs with the SDK's own bookkeeping ([`tandem_core::UnitBelief`]), and
//! can crash, hang, answer late (past the hook timeout), fail a hook or report a fault, as the
//! fault generator decides. While it acts ACTIVE it commits writes to its shard's checkpoint
//! (the write workload) and takes the shard's stream in delivery rounds, applying each message
//! with one sync commit.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tandem_core::data::{DataReply, DataRequest, Delivery, ReplicaId, Write};
use tandem_core::{Role, ShardName, UnitBelief, UnitCommand, UnitName};
use tandem_node::UnitEvent;

use crate::checks::Violation;
use crate::node::Inbound;
use crate::sim::{Event, Sim};
use crate::workload::stream::{applied_key, message_id};
use crate::FailureKind;

/// Data requests a unit keeps outstanding at most (the write workload waits beyond).
const UNIT_DATA_PENDING_MAX: usize = 4;

/// The unit processes and the unit workload's own bookkeeping.
#[derive(Debug)]
pub(crate) struct Units {
    /// Unit processes by pid.
    pub(crate) processes: BTreeMap<u32, SimUnit>,
    /// The next pid.
    next_pid: u32,
    /// Next data request id (unique in the run).
    next_data_request: u64,
    /// Next value written by the write workload.
    next_value: u64,
    /// The last commit answered: shard, epoch, version (to count merged commits).
    last_committed: Option<(ShardName, u64, u64)>,
}

impl Units {
    /// No process yet.
    pub(crate) fn new() -> Self {
        Self {
            processes: BTreeMap::new(),
            next_pid: 100,
            next_data_request: 1,
            next_value: 1,
            last_committed: None,
        }
    }

    /// The pid of `unit`'s instance `generation` on `node`, if it runs.
    pub(crate) fn find(&self, node: usize, unit: &UnitName, generation: u64) -> Option<u32> {
        self.processes
            .iter()
            .find(|(_, p)| p.node == node && &p.unit == unit && p.generation == generation)
            .map(|(pid, _)| *pid)
    }

    /// Starts instance `generation` of `unit` on `node` (in the node's `life`); returns its
    /// pid.
    pub(crate) fn start(&mut self, unit: UnitName, node: usize, life: u64, generation: u64) -> u32 {
        let pid = self.next_pid;
        self.next_pid += 1;
        self.processes.insert(
            pid,
            SimUnit {
                unit,
                node,
                life,
                generation,
                pid,
                belief: UnitBelief::new(),
                hung: false,
                hooks: VecDeque::new(),
                hook_running: false,
                data: UnitData::default(),
            },
        );
        pid
    }
}

/// One unit process. A unit may briefly have two (an old instance stopping on one node while a
/// relocated one starts on another), so processes are known by pid.
#[derive(Debug, Clone)]
pub struct SimUnit {
    /// The unit it is an instance of.
    pub unit: UnitName,
    /// Index of the node it runs on.
    pub node: usize,
    /// The node's life it was started in (a node crash kills it).
    pub life: u64,
    /// The instance.
    pub generation: u64,
    /// Its pid (unique in the run).
    pub pid: u32,
    /// What it believes it holds.
    pub belief: UnitBelief,
    /// A hung unit answers nothing and takes in nothing new; its beliefs freeze (its lease
    /// still runs out on its clock).
    pub hung: bool,
    /// Requests that arrived while a hook ran, in order: like the SDK, a unit runs one hook
    /// at a time, in the order its agent sent them.
    pub hooks: VecDeque<(u64, UnitCommand)>,
    /// A hook is running.
    pub hook_running: bool,
    /// Its data requests and stream deliveries.
    pub data: UnitData,
}

/// A data request of a simulated unit waiting for its answer.
#[derive(Debug, Clone)]
pub enum PendingData {
    /// A commit of the write workload.
    Writes {
        /// The checker's issue number.
        issue: u64,
        /// The shard.
        shard: ShardName,
        /// The epoch it was made at.
        epoch: u64,
        /// What it wrote.
        writes: Vec<Write>,
        /// Sync or async.
        sync: bool,
    },
    /// The commit applying a stream message.
    Apply {
        /// The shard.
        shard: ShardName,
        /// The epoch it was made at.
        epoch: u64,
        /// The message's id.
        id: u64,
        /// Its stream position.
        seq: u64,
    },
    /// The request to start delivering a shard's stream.
    Deliver {
        /// The shard.
        shard: ShardName,
    },
}

/// What a simulated unit remembers about the data plane.
#[derive(Debug, Clone, Default)]
pub struct UnitData {
    /// Requests waiting for answers, by request id.
    pub pending: BTreeMap<u64, PendingData>,
    /// Deliveries waiting to be applied, per shard: (seq, message id).
    pub queue: BTreeMap<ShardName, VecDeque<(u64, u64)>>,
    /// Shards with a message being applied.
    pub busy: BTreeSet<ShardName>,
    /// Last seq delivered, per shard.
    pub last_delivered: BTreeMap<ShardName, u64>,
    /// Shards whose stream the unit asked for and whose answer has not come: deliveries
    /// before it belong to an older round and are dropped.
    pub awaiting: BTreeSet<ShardName>,
    /// The request id of the newest `Deliver` per shard: only its answer starts the round (an
    /// answer to an older one is followed by that older round's deliveries).
    pub round: BTreeMap<ShardName, u64>,
    /// Last seq whose application was acknowledged, and the epoch of that commit, per shard.
    pub last_applied: BTreeMap<ShardName, (u64, u64)>,
    /// When the last message on the unit's SDK socket towards the unit arrives (simulated
    /// time): the socket keeps order, so later ones arrive after it.
    pub inbound_at: u64,
    /// The same for messages from the unit to its agent.
    pub outbound_at: u64,
}

impl UnitData {
    /// When a message sent now with `delay` arrives, keeping the socket's order.
    pub fn inbound(&mut self, now: u64, delay: u64) -> u64 {
        self.inbound_at = (now + delay).max(self.inbound_at + 1);
        self.inbound_at - now
    }

    /// The same towards the agent.
    pub fn outbound(&mut self, now: u64, delay: u64) -> u64 {
        self.outbound_at = (now + delay).max(self.outbound_at + 1);
        self.outbound_at - now
    }
}

impl Sim {
    /// A unit process registers with its agent through the SDK.
    pub(crate) fn on_unit_register(&mut self, pid: u32) -> Result<(), Violation> {
        let Some(process) = self.units.processes.get(&pid) else {
            return Ok(());
        };
        if process.hung {
            return Ok(());
        }
        let input = Inbound::Register(process.unit.clone(), process.generation);
        let (node, life) = (process.node, process.life);
        self.on_node_input(node, life, input)
    }

    /// A unit process exits (a graceful stop finished); its supervisor tells the node.
    pub(crate) fn on_unit_exit(&mut self, pid: u32) {
        if let Some(process) = self.units.processes.remove(&pid) {
            let unit = process.unit.clone();
            self.send_input(
                process.node,
                process.life,
                0,
                Inbound::Unit(UnitEvent::Exited {
                    unit,
                    generation: process.generation,
                    code: Some(0),
                    signal: None,
                }),
            );
        }
    }

    /// A request of its agent reaches a unit process: it waits for the hook running, if any,
    /// and the ones that came before it.
    pub(crate) fn on_unit_request(
        &mut self,
        pid: u32,
        request: u64,
        command: UnitCommand,
    ) -> Result<(), Violation> {
        let Some(process) = self.units.processes.get_mut(&pid) else {
            return Ok(());
        };
        if process.hung {
            return Ok(());
        }
        if process.hook_running {
            process.hooks.push_back((request, command));
            return Ok(());
        }
        self.start_hook(pid, request, command)
    }

    /// A unit process starts its hook for `request`: it updates its beliefs, and the hook
    /// answers after a while (now and then late, or with an error).
    fn start_hook(
        &mut self,
        pid: u32,
        request: u64,
        command: UnitCommand,
    ) -> Result<(), Violation> {
        let Some(process) = self.units.processes.get_mut(&pid) else {
            return Ok(());
        };
        process.hook_running = true;
        let (node, unit) = (process.node, process.unit.clone());
        for part in command.parts() {
            if let UnitCommand::Assign {
                shard,
                role: Role::Active,
                epoch,
            } = part
            {
                // From here the unit acts ACTIVE (its hook runs): its replica must hold every
                // acknowledged sync write.
                let replica_id = ReplicaId {
                    shard: shard.clone(),
                    unit: unit.clone(),
                };
                if let Some(replica) = self.nodes[node]
                    .node
                    .as_ref()
                    .and_then(|n| n.checkpoint_replica(&replica_id))
                {
                    self.data_checker
                        .check_active(shard, *epoch, unit.as_str(), replica)?;
                }
            }
            let process = self.units.processes.get_mut(&pid).expect("exists");
            match part {
                UnitCommand::Assign { shard, role, .. } if *role != Role::Active => {
                    process.data.queue.remove(shard);
                }
                UnitCommand::Assign { shard, .. } => {
                    // Until the hook is done and the unit asked for the stream, what arrives
                    // is from an older round.
                    process.data.queue.remove(shard);
                    process.data.awaiting.insert(shard.clone());
                }
                UnitCommand::Quiesce { shard, .. } | UnitCommand::Remove { shard } => {
                    process.data.queue.remove(shard);
                }
                _ => {}
            }
        }
        let process = self.units.processes.get_mut(&pid).expect("exists");
        process.belief.on_request(&command);
        self.note_belief(&command);
        // At scale a unit answers hundreds of hooks in a row: hook faults are a hundred times
        // rarer there, or no unit would get through its roles before the next one.
        let rarer = if self.config.wide_shards > 0 { 100 } else { 1 };
        let rng = &mut self.unit_rng;
        let (delay, ok) = if command == UnitCommand::Health {
            (rng.between(100, 2_000), true)
        } else if rng.chance(30_000 / rarer) {
            // Slower than the hook timeout (500 ms) now and then.
            (rng.between(100_000, 900_000), true)
        } else {
            (rng.between(100, 10_000), !rng.chance(5_000 / rarer))
        };
        self.schedule(
            delay,
            Event::UnitAnswer {
                pid,
                request,
                command,
                ok,
            },
        );
        Ok(())
    }

    /// A unit process's hook completes: it answers its agent.
    pub(crate) fn on_unit_answer(
        &mut self,
        pid: u32,
        request: u64,
        command: UnitCommand,
        ok: bool,
    ) -> Result<(), Violation> {
        let Some(process) = self.units.processes.get_mut(&pid) else {
            return Ok(());
        };
        if process.hung {
            return Ok(());
        }
        if ok {
            process.belief.on_done(&command);
            self.note_belief(&command);
            for part in command.parts() {
                if let UnitCommand::Assign {
                    shard,
                    role: Role::Active,
                    epoch,
                } = part
                {
                    self.start_delivery_round(pid, shard, *epoch);
                }
            }
        }
        let Some(process) = self.units.processes.get_mut(&pid) else {
            return Ok(());
        };
        if command != UnitCommand::Health && self.config.verbose {
            let unit = process.unit.clone();
            self.trace(|| format!("{unit} (pid {pid}) answers #{request} ok={ok}"));
        }
        let Some(process) = self.units.processes.get_mut(&pid) else {
            return Ok(());
        };
        let input = Inbound::Unit(UnitEvent::Reply {
            unit: process.unit.clone(),
            generation: process.generation,
            request,
            result: if ok {
                Ok(())
            } else {
                Err("simulated hook error".into())
            },
        });
        let (node, life) = (process.node, process.life);
        let delay = self.unit_rng.between(50, 300);
        self.send_input(node, life, delay, input);
        let Some(process) = self.units.processes.get_mut(&pid) else {
            return Ok(());
        };
        process.hook_running = false;
        match process.hooks.pop_front() {
            Some((request, command)) => self.start_hook(pid, request, command),
            None => Ok(()),
        }
    }

    /// Sends a data request of unit process `pid` to its agent; returns its id.
    fn unit_data_request(
        &mut self,
        pid: u32,
        body: DataRequest,
        pending: PendingData,
    ) -> Option<u64> {
        let process = self.units.processes.get_mut(&pid)?;
        let request = self.units.next_data_request;
        self.units.next_data_request += 1;
        process.data.pending.insert(request, pending);
        let input = Inbound::Data {
            unit: process.unit.clone(),
            generation: process.generation,
            request,
            body,
        };
        let (node, life) = (process.node, process.life);
        let delay = self.unit_rng.between(20, 200);
        let delay = process.data.outbound(self.now, delay);
        self.send_input(node, life, delay, input);
        Some(request)
    }

    /// The answer to one of a unit's data requests reaches it.
    pub(crate) fn on_unit_data_reply(
        &mut self,
        pid: u32,
        request: u64,
        reply: DataReply,
    ) -> Result<(), Violation> {
        let Some(process) = self.units.processes.get_mut(&pid) else {
            return Ok(());
        };
        if process.hung {
            return Ok(());
        }
        let Some(pending) = process.data.pending.remove(&request) else {
            return Ok(());
        };
        if self.config.verbose {
            let unit = process.unit.clone();
            self.trace(|| format!("{unit} (pid {pid}) data #{request} {pending:?} -> {reply:?}"));
        }
        let Some(process) = self.units.processes.get_mut(&pid) else {
            return Ok(());
        };
        match (pending, reply) {
            (
                PendingData::Writes {
                    issue,
                    shard,
                    epoch,
                    writes,
                    sync,
                },
                DataReply::Committed { version },
            ) => {
                let answered = (shard.clone(), epoch, version);
                if self.units.last_committed.as_ref() == Some(&answered) {
                    self.report.commits_merged += 1;
                }
                self.units.last_committed = Some(answered);
                if sync {
                    self.report.sync_commits_acked += 1;
                    self.data_checker
                        .on_acked(&shard, epoch, version, &writes, issue);
                }
            }
            (
                PendingData::Apply {
                    shard,
                    epoch,
                    id,
                    seq,
                },
                DataReply::Committed { .. },
            ) => {
                self.report.messages_applied += 1;
                process.data.busy.remove(&shard);
                process
                    .data
                    .last_applied
                    .insert(shard.clone(), (seq, epoch));
                self.trace(|| format!("pid {pid} applied m{id} on {shard}"));
                self.apply_next(pid, &shard);
            }
            (PendingData::Apply { shard, .. }, _) => {
                // No longer ACTIVE (or the epoch changed): whatever was queued is redelivered
                // to whoever is ACTIVE next.
                process.data.busy.remove(&shard);
                process.data.queue.remove(&shard);
            }
            (
                PendingData::Writes { shard, writes, .. },
                DataReply::Error {
                    code: tandem_core::data::RefusalCode::OutcomeUnknown,
                    ..
                },
            ) => self.data_checker.on_uncertain(&shard, &writes),
            (PendingData::Deliver { shard }, _) => {
                // The answer to an older `Deliver` than the newest is followed by that older
                // round's deliveries; the round the unit asked for last starts with its own.
                if process.data.round.get(&shard) == Some(&request) {
                    process.data.awaiting.remove(&shard);
                }
            }
            (PendingData::Writes { .. }, _) => {}
        }
        Ok(())
    }

    /// The unit (again) takes the stream of `shard`, from the first message not consumed:
    /// what was queued or dropped before comes again.
    pub(crate) fn start_delivery_round(&mut self, pid: u32, shard: &ShardName, epoch: u64) {
        let Some(process) = self.units.processes.get_mut(&pid) else {
            return;
        };
        process.data.queue.remove(shard);
        // The round starts after what this unit applied: the plane delivers from the replica's
        // consumed position, which holds every acknowledged application (each is a sync
        // commit). Unless the cluster reported a possible loss since that application: the
        // stream then continues from the new ACTIVE's replica, whose positions are a different
        // history and may be below the old one's (seqs compare only within one history). A
        // message applied before is still caught then, by its mark in the replica.
        let applied = match process.data.last_applied.get(shard) {
            Some(&(seq, applied_epoch)) if !self.data_checker.loss_after(shard, applied_epoch) => {
                seq
            }
            _ => 0,
        };
        process.data.last_delivered.insert(shard.clone(), applied);
        process.data.awaiting.insert(shard.clone());
        if let Some(request) = self.unit_data_request(
            pid,
            DataRequest::Deliver {
                shard: shard.clone(),
                epoch,
            },
            PendingData::Deliver {
                shard: shard.clone(),
            },
        ) {
            let process = self.units.processes.get_mut(&pid).expect("checked");
            process.data.round.insert(shard.clone(), request);
        }
    }

    /// A stream delivery reaches a unit: checked for order and duplicates, then queued to be
    /// applied.
    pub(crate) fn on_unit_delivery(
        &mut self,
        pid: u32,
        delivery: Delivery,
    ) -> Result<(), Violation> {
        let Some(process) = self.units.processes.get_mut(&pid) else {
            return Ok(());
        };
        if process.hung {
            return Ok(());
        }
        let Delivery::Message {
            shard,
            seq,
            message,
            ..
        } = delivery
        else {
            return Ok(());
        };
        // Deliveries of an older round, or while the unit does not act for the shard, are
        // dropped (the SDK does the same); they come again in the next round.
        let local_now = self.nodes[process.node].local_now(self.now);
        if process.data.awaiting.contains(&shard) || !process.belief.is_acting(&shard, local_now) {
            let awaiting = process.data.awaiting.contains(&shard);
            self.trace(|| {
                format!("pid {pid} drops delivery of seq {seq} on {shard} (awaiting {awaiting})")
            });
            return Ok(());
        }
        let Some(id) = message_id(&message.payload) else {
            return Err(Violation {
                kind: FailureKind::Codec,
                detail: format!("a stream message of {shard} with a foreign payload"),
            });
        };
        let last = process
            .data
            .last_delivered
            .get(&shard)
            .copied()
            .unwrap_or(0);
        if seq <= last {
            return Err(Violation {
                kind: FailureKind::DuplicateMessage,
                detail: format!(
                    "shard {shard}: {} (pid {pid}) got message m{id} at seq {seq} after seq {last}",
                    process.unit
                ),
            });
        }
        process.data.last_delivered.insert(shard.clone(), seq);
        let replica_id = ReplicaId {
            shard: shard.clone(),
            unit: process.unit.clone(),
        };
        let node = process.node;
        if let Some(replica) = self.nodes[node]
            .node
            .as_ref()
            .and_then(|n| n.checkpoint_replica(&replica_id))
        {
            if replica.get(&applied_key(id)).is_some() {
                return Err(Violation {
                    kind: FailureKind::DuplicateMessage,
                    detail: format!(
                        "shard {shard}: message m{id} (seq {seq}) delivered to {} again, though \
                         its replica shows it applied (consumed {})",
                        replica_id.unit,
                        replica.consumed()
                    ),
                });
            }
        }
        self.report.messages_accepted += 1;
        self.data_checker.on_delivered(&shard, id, self.now);
        let process = self.units.processes.get_mut(&pid).expect("checked");
        process
            .data
            .queue
            .entry(shard.clone())
            .or_default()
            .push_back((seq, id));
        self.apply_next(pid, &shard);
        Ok(())
    }

    /// A unit applies its next queued message of `shard`, if it is not busy with one: its
    /// state change (a mark per message) and the stream position, in one sync commit.
    fn apply_next(&mut self, pid: u32, shard: &ShardName) {
        let Some(process) = self.units.processes.get_mut(&pid) else {
            return;
        };
        if process.data.busy.contains(shard) {
            return;
        }
        let Some((seq, id)) = process
            .data
            .queue
            .get_mut(shard)
            .and_then(VecDeque::pop_front)
        else {
            return;
        };
        let Some((_, epoch)) = process.belief.role(shard) else {
            return;
        };
        process.data.busy.insert(shard.clone());
        let body = DataRequest::Commit {
            shard: shard.clone(),
            epoch,
            writes: vec![
                Write {
                    key: applied_key(id),
                    value: Some(bytes::Bytes::from_static(b"1")),
                    priority: None,
                },
                Write {
                    key: b"last".to_vec(),
                    value: Some(id.to_string().into_bytes().into()),
                    priority: Some(10),
                },
            ],
            consumed: Some(seq),
            sync: true,
            chain: None,
        };
        self.unit_data_request(
            pid,
            body,
            PendingData::Apply {
                shard: shard.clone(),
                epoch,
                id,
                seq,
            },
        );
    }

    /// The write workload: a unit acting ACTIVE for a shard commits one write (sync or async,
    /// a value or a deletion).
    pub(crate) fn unit_writes(&mut self) {
        let candidates: Vec<(u32, ShardName, u64)> = self
            .units
            .processes
            .iter()
            .filter(|(_, process)| {
                !process.hung && process.data.pending.len() < UNIT_DATA_PENDING_MAX
            })
            .flat_map(|(pid, process)| {
                let local_now = self.nodes[process.node].local_now(self.now);
                process
                    .belief
                    .roles()
                    .filter(move |(shard, _, _)| process.belief.is_acting(shard, local_now))
                    .filter(|(shard, _, _)| self.is_data_shard(shard))
                    .map(|(shard, _, epoch)| (*pid, shard.clone(), epoch))
                    .collect::<Vec<_>>()
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (pid, shard, epoch) = candidates[self.workload.pick(candidates.len())].clone();
        let value = self.units.next_value;
        self.units.next_value += 1;
        // Async writes use keys of their own: the checker holds sync writes to their promise,
        // and an async write acknowledged later may or may not survive a failover.
        let sync = !self.workload.chance(150_000);
        let prefix = if sync { "k" } else { "async" };
        let key = format!("{prefix}{}", self.workload.below(8)).into_bytes();
        let write = if self.workload.chance(100_000) {
            Write {
                key,
                value: None,
                priority: None,
            }
        } else {
            Write {
                key,
                value: Some(format!("v{value}").into_bytes().into()),
                priority: None,
            }
        };
        self.report.commits += 1;
        let writes = vec![write];
        let issue = self.data_checker.on_issued(&shard, &writes);
        self.unit_data_request(
            pid,
            DataRequest::Commit {
                shard: shard.clone(),
                epoch,
                writes: writes.clone(),
                consumed: None,
                sync,
                chain: None,
            },
            PendingData::Writes {
                issue,
                shard,
                epoch,
                writes,
                sync,
            },
        );
    }

    /// Whether `shard` (of the topology) has a data plane: it belongs to a single-ACTIVE
    /// model.
    pub(crate) fn is_data_shard(&self, shard: &ShardName) -> bool {
        !self.multi_active.contains(shard)
    }
}
