//! One node's Raft replica: raft-rs `RawNode` over [`WalStorage`], plus the applied cluster model.
//!
//! Sans-IO: the owner calls [`Replica::tick`] every tick, [`Replica::step`] for every message
//! received and [`Replica::propose`] for commands, then [`Replica::process_ready`], which makes
//! everything durable that must be, and returns the messages to send and the entries applied.
//! Messages returned may be sent at once: anything that acknowledges a write is only returned
//! after that write was synced.
//!
//! raft-rs draws election timeouts from the thread's RNG. To keep the simulation deterministic
//! the replica overrides each new timeout with one drawn from its own seeded generator.

use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use std::collections::BTreeMap;

use raft::{ProgressState, RawNode, Ready, SnapshotStatus, StateRole};
use tandem_core::{ApplyOutcome, ClusterState, Command, ModelEvent, NodeId};

use crate::disk::{Disk, DiskFile};
use crate::storage::{RecoveryReport, StorageError, WalOptions, WalStorage};
use tandem_proto::state_wire::{decode_command, decode_state, encode_command, encode_state};

/// Most bytes of committed entries one Ready applies (raft-rs's
/// `max_committed_size_per_ready`; an entry larger than this is applied alone). A director
/// batch of 128 commands is a few KiB.
pub const APPLY_BYTES_PER_READY_MAX: u64 = 16 * 1024;
/// What a replica needs to start.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This node's raft id.
    pub id: u64,
    /// Voting members (used only when bootstrapping an empty log).
    pub voters: Vec<u64>,
    /// Non-voting members (used only when bootstrapping an empty log).
    pub learners: Vec<u64>,
    /// Leader heartbeat period, in ticks.
    pub heartbeat_ticks: usize,
    /// Election timeout, in ticks; each timeout is drawn from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: usize,
    /// Take a snapshot and compact the log after this many entries applied since the last one.
    pub snapshot_interval_entries: u64,
    /// Seed of the election-timeout generator.
    pub election_seed: u64,
    /// Storage tunables.
    pub wal: WalOptions,
    /// Leave the log's fsync to the owner ([`Replica::take_sync`], [`Replica::synced`])
    /// instead of running it inside [`Replica::process_ready`]. A daemon runs it on another
    /// thread so that a slow disk never holds up heartbeats and lease renewals.
    pub deferred_sync: bool,
    /// After every applied entry, check the whole model's invariants
    /// (`ClusterState::check_invariants`, a walk over every shard) and report a broken one in
    /// [`Applied::model_broken`]. The simulation's setting; a daemon leaves it off.
    pub check_model: bool,
}

/// A log fsync the owner runs (see [`ReplicaConfig::deferred_sync`]): call
/// [`FileSyncer::sync`](crate::disk::FileSyncer::sync) on `syncer`, then
/// [`Replica::synced`] with `number` (or stop the node if it failed).
#[derive(Debug)]
pub struct SyncJob<S> {
    /// Everything raft-rs handed out up to this ready number is durable once the sync is done.
    pub number: u64,
    /// Makes the log's written bytes durable.
    pub syncer: S,
}

/// Deferred syncs: which readies wait for one, and the messages they hold back.
#[derive(Debug, Default)]
struct DeferredSync {
    /// The oldest and newest ready numbers that need a sync not yet handed out.
    wanted: Option<(u64, u64)>,
    /// The ready number of the sync handed out and not reported done.
    in_flight: Option<u64>,
    /// The newest ready number produced.
    newest: u64,
    /// Messages that may leave only once their ready is durable, by ready number.
    held: std::collections::VecDeque<(u64, Vec<Message>)>,
    /// Messages released by a finished sync, returned by the next `process_ready`.
    released: Vec<Message>,
}

/// Failure of a replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The durable storage failed; the node must stop.
    #[error("raft storage: {0}")]
    Storage(#[from] StorageError),
    /// raft-rs refused (e.g. a proposal while there is no leader).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A snapshot's content could not be decoded; the node must stop.
    #[error("snapshot at index {index} is unreadable: {reason}")]
    BadSnapshot {
        /// Index of the snapshot.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// This node is not the leader, so it cannot propose.
    #[error("this node is not the leader")]
    NotLeader,
}

/// One applied log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The proposer's context bytes (the daemon puts a request id there).
    pub context: Vec<u8>,
    /// The decoded command; `None` for raft's own empty entries.
    pub command: Option<Command>,
    /// What applying it did.
    pub outcome: ApplyOutcome,
    /// What happened to the model (empty unless it changed).
    pub events: Vec<ModelEvent>,
    /// With [`ReplicaConfig::check_model`]: the invariant the model broke after this entry.
    pub model_broken: Option<String>,
}

/// What one round of [`Replica::process_ready`] produced.
#[derive(Debug, Default)]
pub struct ReadyOutput {
    /// Messages to send to peers.
    pub messages: Vec<Message>,
    /// Entries applied to the cluster model, in order.
    pub applied: Vec<Applied>,
    /// Set when a snapshot from the leader replaced the model (no entries were applied for it).
    pub installed_snapshot: Option<u64>,
    /// Contexts of quorum confirmations ([`Replica::confirm_quorum`]) that completed: a quorum
    /// acknowledged this leader after the confirmation was asked for.
    pub quorum_confirmed: Vec<Vec<u8>>,
}

/// SplitMix64: a tiny seeded generator for election timeouts.
#[derive(Debug, Clone)]
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A node's Raft replica and its applied cluster model.
pub struct Replica<D: Disk> {
    /// raft-rs's node over our storage.
    raw: RawNode<WalStorage<D>>,
    /// The cluster model with every committed entry up to `applied_index` applied.
    state: ClusterState,
    /// Index of the last entry applied to `state`.
    applied_index: u64,
    /// Index of the newest snapshot (ours or the leader's).
    snapshot_index: u64,
    /// Entries between snapshots.
    snapshot_interval_entries: u64,
    /// Election timeout range `[min, max)` in ticks.
    election_range: (usize, usize),
    /// Seeded generator for election timeouts.
    jitter: Jitter,
    /// (term, role, leader) when the timeout was last drawn; a change means raft reset it.
    last_reset_key: (u64, StateRole, u64),
    /// On the leader: followers sent a snapshot, with the ticks waited since. raft-rs pauses a
    /// follower until its snapshot is acknowledged; if the message was lost, only a reported
    /// failure un-pauses it, so we report one after [`SNAPSHOT_ACK_TICKS_MAX`] ticks.
    snapshots_in_flight: BTreeMap<u64, usize>,
    /// Set when the owner runs the log's fsync ([`ReplicaConfig::deferred_sync`]).
    deferred: Option<DeferredSync>,
    /// [`ReplicaConfig::check_model`].
    check_model: bool,
}

/// Ticks a leader waits for a snapshot's acknowledgement before it counts the send as failed
/// and lets raft-rs probe the follower again (which resends the snapshot if still needed).
const SNAPSHOT_ACK_TICKS_MAX: usize = 50;

impl<D: Disk> std::fmt::Debug for Replica<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.raw.raft.id)
            .field("term", &self.term())
            .field("role", &self.raw.raft.state)
            .field("commit", &self.commit_index())
            .field("applied", &self.applied_index)
            .finish()
    }
}

impl<D: Disk> Replica<D> {
    /// Opens (or bootstraps) the replica on `disk`. The model is rebuilt from the newest
    /// snapshot; committed entries after it are re-applied by the first `process_ready`.
    pub fn open(
        config: &ReplicaConfig,
        disk: D,
        logger: &slog::Logger,
    ) -> Result<Self, ReplicaError> {
        let mut initial_conf = ConfState::default();
        initial_conf.set_voters(config.voters.clone());
        initial_conf.set_learners(config.learners.clone());
        let storage = WalStorage::open(disk, config.wal, initial_conf)?;
        let snapshot = storage.latest_snapshot().clone();
        let snapshot_index = snapshot.get_metadata().index;
        let state = if snapshot_index > 0 {
            decode_state(snapshot.get_data()).map_err(|error| ReplicaError::BadSnapshot {
                index: snapshot_index,
                reason: error.to_string(),
            })?
        } else {
            let conf = storage.conf_state();
            ClusterState::bootstrap(
                conf.get_voters()
                    .iter()
                    .chain(conf.get_learners())
                    .map(|id| NodeId(*id)),
            )
        };
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            min_election_tick: config.election_ticks,
            max_election_tick: config.election_ticks * 2,
            applied: snapshot_index,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            // A Ready applies this much of the log at most (and always at least one entry),
            // so the event loop gets back to heartbeats and leases between chunks of a
            // backlog instead of applying all of it in one pass.
            max_committed_size_per_ready: APPLY_BYTES_PER_READY_MAX,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config.validate()?;
        let raw = RawNode::new(&raft_config, storage, logger)?;
        let mut replica = Self {
            raw,
            state,
            applied_index: snapshot_index,
            snapshot_index,
            snapshot_interval_entries: config.snapshot_interval_entries.max(1),
            election_range: (config.election_ticks, config.election_ticks * 2),
            jitter: Jitter(config.election_seed),
            last_reset_key: (u64::MAX, StateRole::Follower, u64::MAX),
            snapshots_in_flight: BTreeMap::new(),
            deferred: config.deferred_sync.then(DeferredSync::default),
            check_model: config.check_model,
        };
        replica.redraw_election_timeout();
        Ok(replica)
    }

    /// Draws a new election timeout whenever raft-rs has reset it (term, role or leader changed).
    fn redraw_election_timeout(&mut self) {
        let raft = &self.raw.raft;
        let key = (raft.term, raft.state, raft.leader_id);
        if key != self.last_reset_key {
            self.last_reset_key = key;
            let (min, max) = self.election_range;
            let span = (max - min) as u64;
            let timeout = min + (self.jitter.next() % span) as usize;
            self.raw.raft.set_randomized_election_timeout(timeout);
        }
    }

    /// What recovery found in the storage.
    pub fn recovery(&self) -> &RecoveryReport {
        self.raw.store().recovery()
    }

    /// Advances raft's logical clock by one tick.
    pub fn tick(&mut self) {
        self.raw.tick();
        self.redraw_election_timeout();
        self.expire_snapshots_in_flight();
    }

    /// On a leader: ticks since raft-rs last broadcast its own heartbeat (it does so on the
    /// tick this returns to 0); 0 elsewhere.
    pub fn heartbeat_elapsed(&self) -> usize {
        if self.is_leader() {
            self.raw.raft.heartbeat_elapsed()
        } else {
            0
        }
    }

    fn expire_snapshots_in_flight(&mut self) {
        if self.snapshots_in_flight.is_empty() {
            return;
        }
        let is_leader = self.is_leader();
        let mut failed = Vec::new();
        let prs = self.raw.raft.prs();
        self.snapshots_in_flight.retain(|node, waited| {
            *waited += 1;
            let paused = is_leader
                && prs
                    .get(*node)
                    .is_some_and(|progress| progress.state == ProgressState::Snapshot);
            if paused && *waited >= SNAPSHOT_ACK_TICKS_MAX {
                failed.push(*node);
            }
            paused && *waited < SNAPSHOT_ACK_TICKS_MAX
        });
        for node in failed {
            tracing::info!(
                node,
                "snapshot not acknowledged in time; probing the follower again"
            );
            self.raw.report_snapshot(node, SnapshotStatus::Failure);
        }
    }

    /// Feeds a message from a peer. Messages raft-rs refuses (e.g. from unknown peers) are
    /// reported as errors and change nothing.
    pub fn step(&mut self, mut message: Message) -> Result<(), ReplicaError> {
        // A leader's heartbeat carries min(its commit, what it believes we hold). If this node
        // lost the tail of its log (a disk that dropped synced bytes, or an operator's
        // truncation), that belief is stale: raft-rs would panic committing past our last
        // index, and the leader, trusting its match index, would never resend what we lost.
        // So we commit only what we hold, and flag our heartbeat response as a rejection
        // carrying our real last index; the leader then probes us from there.
        let mut lost_tail_of = None;
        if message.get_msg_type() == MessageType::MsgHeartbeat {
            let last_index = self.raw.raft.raft_log.last_index();
            if message.commit > last_index {
                tracing::warn!(
                    leader = message.from,
                    leader_commit = message.commit,
                    last_index,
                    "leader believes this node holds entries it lost; asking it to resend"
                );
                message.commit = last_index;
                lost_tail_of = Some((message.from, last_index));
            }
        }
        if message.get_msg_type() == MessageType::MsgHeartbeatResponse
            && message.reject
            && self.is_leader()
        {
            self.reset_lost_follower(message.from, message.reject_hint);
        }
        let result = self.raw.step(message);
        if let Some((leader, last_index)) = lost_tail_of {
            if let Some(response) =
                self.raw.raft.msgs.iter_mut().rev().find(|m| {
                    m.get_msg_type() == MessageType::MsgHeartbeatResponse && m.to == leader
                })
            {
                response.reject = true;
                response.reject_hint = last_index;
            }
        }
        self.redraw_election_timeout();
        result.map_err(ReplicaError::from)
    }

    /// The heartbeat answers stepping queued: they wait for no write, so the owner may send
    /// them now instead of after the next Ready (a leader's quorum confirmations are
    /// heartbeats; an answer that waits for the rest of a busy pass ages its leases).
    pub fn take_heartbeat_responses(&mut self) -> Vec<Message> {
        let (responses, rest) = std::mem::take(&mut self.raw.raft.msgs)
            .into_iter()
            .partition(|m| m.get_msg_type() == MessageType::MsgHeartbeatResponse);
        self.raw.raft.msgs = rest;
        responses
    }

    /// The quorum confirmations ([`Replica::confirm_quorum`]) that stepping completed, by
    /// their context, taken now instead of at the next Ready.
    pub fn take_quorum_confirmed(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.raw.raft.read_states)
            .into_iter()
            .map(|state| state.request_ctx)
            .collect()
    }

    /// On the leader: `node` reports that its log ends at `last_index`, below what it had
    /// acknowledged. Lowering the match index is safe (the commit index never decreases; the
    /// leader only resends), and probing from there lets the node catch up.
    fn reset_lost_follower(&mut self, node: u64, last_index: u64) {
        if let Some(progress) = self.raw.raft.mut_prs().get_mut(node) {
            if progress.matched > last_index {
                tracing::warn!(
                    node,
                    acknowledged = progress.matched,
                    last_index,
                    "follower lost log entries it had acknowledged; resending them"
                );
                progress.matched = last_index;
                progress.become_probe();
            }
        }
    }

    /// Proposes a command; `context` comes back with the entry when it is applied.
    pub fn propose(&mut self, command: &Command, context: Vec<u8>) -> Result<(), ReplicaError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ReplicaError::NotLeader);
        }
        self.raw.propose(context, encode_command(command))?;
        Ok(())
    }

    /// Makes durable what raft-rs produced, applies committed entries, and returns the messages
    /// to send and what was applied.
    pub fn process_ready(&mut self) -> Result<ReadyOutput, ReplicaError> {
        if self.deferred.is_some() {
            return self.process_ready_deferred();
        }
        let mut output = ReadyOutput::default();
        if !self.raw.has_ready() {
            self.maybe_snapshot()?;
            return Ok(output);
        }
        let mut ready = self.raw.ready();
        self.take_ready(&mut ready, &mut output)?;
        self.raw.mut_store().sync()?;
        // Votes and append acknowledgements: only now that the writes are durable.
        output.messages.extend(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            // Not synced here: a lost commit index is re-learned from the leader.
            self.raw.mut_store().set_commit(commit);
        }
        output.messages.extend(light.take_messages());
        self.apply_entries(light.take_committed_entries(), &mut output);
        self.raw.advance_apply();
        self.finish_ready(&output)?;
        Ok(output)
    }

    /// What both modes do alike with a ready, in order: the messages a leader may send before
    /// its own write is durable (raft thesis 10.2.1), completed quorum confirmations, a
    /// leader's snapshot installed (synced at once), committed entries applied (raft-rs hands
    /// out only entries this node persisted), and the new entries and hard state buffered in
    /// the storage. Returns whether the ready held a snapshot.
    fn take_ready(
        &mut self,
        ready: &mut Ready,
        output: &mut ReadyOutput,
    ) -> Result<bool, ReplicaError> {
        output.messages.extend(ready.take_messages());
        output.quorum_confirmed.extend(
            ready
                .take_read_states()
                .into_iter()
                .map(|state| state.request_ctx),
        );
        let has_snapshot = !ready.snapshot().is_empty();
        if has_snapshot {
            let snapshot = ready.snapshot().clone();
            self.install_snapshot(snapshot, output)?;
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed, output);
        let store = self.raw.mut_store();
        store.append(ready.entries());
        if let Some(hard_state) = ready.hs() {
            store.set_hard_state(hard_state.clone());
        }
        Ok(has_snapshot)
    }

    /// The end of a round in both modes: snapshots sent are tracked until acknowledged, and
    /// the log is compacted when due.
    fn finish_ready(&mut self, output: &ReadyOutput) -> Result<(), ReplicaError> {
        for message in &output.messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_in_flight.insert(message.to, 0);
            }
        }
        self.maybe_snapshot()
    }

    /// [`Replica::process_ready`] with the log's fsync left to the owner: records are written
    /// (not synced) at once; messages that acknowledge them wait for [`Replica::synced`].
    fn process_ready_deferred(&mut self) -> Result<ReadyOutput, ReplicaError> {
        let mut output = ReadyOutput::default();
        let deferred = self.deferred.as_mut().expect("deferred mode");
        output.messages.append(&mut deferred.released);
        if !self.raw.has_ready() {
            self.maybe_snapshot()?;
            return Ok(output);
        }
        let mut ready = self.raw.ready();
        let number = ready.number();
        let has_snapshot = self.take_ready(&mut ready, &mut output)?;
        let store = self.raw.mut_store();
        store.write_pending()?;
        if has_snapshot {
            // raft-rs counts the snapshot applied only once it is persisted: sync everything
            // now (this also covers any sync under way, whose report is then ignored).
            store.sync()?;
        }
        let must_sync = ready.must_sync() && !has_snapshot;
        let mut persisted_messages = ready.take_persisted_messages();
        self.raw.advance_append_async(ready);
        let deferred = self.deferred.as_mut().expect("deferred mode");
        deferred.newest = number;
        if has_snapshot {
            deferred.wanted = None;
            deferred.in_flight = None;
        }
        // A heartbeat response acknowledges no log content: it may leave before earlier writes
        // are durable. (Term and vote changes are synced before any vote is answered, so an
        // early response never lets a node vote twice in a term.) Holding it would tie lease
        // renewals to the disk's fsync latency.
        persisted_messages.retain(|message| {
            if message.get_msg_type() == MessageType::MsgHeartbeatResponse {
                output.messages.push(message.clone());
                false
            } else {
                true
            }
        });
        if must_sync {
            deferred.wanted = Some(match deferred.wanted {
                Some((oldest, _)) => (oldest, number),
                None => (number, number),
            });
        }
        if !persisted_messages.is_empty() {
            deferred.held.push_back((number, persisted_messages));
        }
        self.release_durable();
        // After the release: raft-rs checks that what is applied is persisted.
        self.raw.advance_apply();
        let deferred = self.deferred.as_mut().expect("deferred mode");
        output.messages.append(&mut deferred.released);
        self.finish_ready(&output)?;
        Ok(output)
    }

    /// Tells raft-rs which readies are durable (all before the oldest one still waiting for
    /// a sync) and releases the messages they held.
    fn release_durable(&mut self) {
        let deferred = self.deferred.as_mut().expect("deferred mode");
        let waiting = match (deferred.in_flight, deferred.wanted) {
            (Some(in_flight), _) => Some(in_flight),
            (None, Some((oldest, _))) => Some(oldest),
            (None, None) => None,
        };
        let durable = waiting.map_or(deferred.newest, |number| number - 1);
        while deferred
            .held
            .front()
            .is_some_and(|(number, _)| *number <= durable)
        {
            let (_, mut messages) = deferred.held.pop_front().expect("front exists");
            deferred.released.append(&mut messages);
        }
        if durable > 0 {
            self.raw.on_persist_ready(durable);
        }
    }

    /// The log fsync to run next, if one is due and none is running (one at a time: each
    /// covers every write made before it starts).
    pub fn take_sync(
        &mut self,
    ) -> Result<Option<SyncJob<<D::File as DiskFile>::Syncer>>, ReplicaError> {
        let Some(deferred) = self.deferred.as_mut() else {
            return Ok(None);
        };
        if deferred.in_flight.is_some() {
            return Ok(None);
        }
        let Some((_, newest)) = deferred.wanted.take() else {
            return Ok(None);
        };
        deferred.in_flight = Some(newest);
        let syncer = self.raw.store().syncer()?;
        Ok(Some(SyncJob {
            number: newest,
            syncer,
        }))
    }

    /// The sync handed out for ready `number` is done: what it covers is durable. Call
    /// [`Replica::process_ready`] next to send what it released.
    pub fn synced(&mut self, number: u64) {
        let Some(deferred) = self.deferred.as_mut() else {
            return;
        };
        if deferred.in_flight != Some(number) {
            return;
        }
        deferred.in_flight = None;
        self.release_durable();
    }

    fn install_snapshot(
        &mut self,
        snapshot: Snapshot,
        output: &mut ReadyOutput,
    ) -> Result<(), ReplicaError> {
        let index = snapshot.get_metadata().index;
        let state =
            decode_state(snapshot.get_data()).map_err(|error| ReplicaError::BadSnapshot {
                index,
                reason: error.to_string(),
            })?;
        self.raw.mut_store().apply_snapshot(snapshot)?;
        self.state = state;
        self.applied_index = index;
        self.snapshot_index = index;
        output.installed_snapshot = Some(index);
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, output: &mut ReadyOutput) {
        for entry in entries {
            if entry.index <= self.applied_index {
                continue;
            }
            assert_eq!(
                entry.index,
                self.applied_index + 1,
                "committed entries must be applied in order without gaps"
            );
            self.applied_index = entry.index;
            let command =
                if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                    // raft-rs's own empty entry at the start of a term, or a configuration change
                    // (not proposed by this version): nothing for the model.
                    Ok(None)
                } else {
                    decode_command(&entry.data).map(Some)
                };
            let commands = match command {
                Ok(Some(Command::Batch(commands))) => commands.into_iter().map(Some).collect(),
                Ok(command) => vec![command],
                Err(error) => {
                    // Every node holds the same bytes and refuses them alike, so the models
                    // stay equal; the entry is skipped loudly.
                    tracing::error!(index = entry.index, %error, "undecodable raft entry skipped");
                    output.applied.push(Applied {
                        index: entry.index,
                        term: entry.term,
                        context: entry.context.to_vec(),
                        command: None,
                        outcome: ApplyOutcome::Refused(error.to_string()),
                        events: Vec::new(),
                        model_broken: None,
                    });
                    continue;
                }
            };
            // A batch's commands apply one by one, each reported as if it had the entry.
            for command in commands {
                let mut events = Vec::new();
                let outcome = match &command {
                    Some(command) => {
                        self.state
                            .apply_with_events(entry.index, command, &mut events)
                    }
                    None => ApplyOutcome::Unchanged,
                };
                let model_broken = if self.check_model {
                    self.state.check_changed_invariants().err()
                } else {
                    None
                };
                output.applied.push(Applied {
                    index: entry.index,
                    term: entry.term,
                    context: entry.context.to_vec(),
                    command,
                    outcome,
                    events,
                    model_broken,
                });
            }
        }
    }

    fn maybe_snapshot(&mut self) -> Result<(), ReplicaError> {
        let wanted = self.raw.store().take_snapshot_wanted();
        let due = self.applied_index >= self.snapshot_index + self.snapshot_interval_entries;
        if (wanted || due) && self.applied_index > self.snapshot_index {
            let conf_state = self.raw.raft.prs().conf().to_conf_state();
            let data = encode_state(&self.state);
            self.raw
                .mut_store()
                .compact_with_snapshot(self.applied_index, conf_state, data)?;
            self.snapshot_index = self.applied_index;
            tracing::debug!(
                index = self.snapshot_index,
                "raft snapshot taken, log compacted"
            );
        }
        Ok(())
    }

    /// On the leader: asks a quorum to confirm this node still leads (raft-rs's read-index
    /// round, a heartbeat with `context`). When a quorum has answered, `context` comes back in
    /// [`ReadyOutput::quorum_confirmed`]: every voter of that quorum heard from this leader
    /// after the call. raft-rs ignores the request until the leader has committed an entry of
    /// its term; the caller simply asks again later.
    pub fn confirm_quorum(&mut self, context: Vec<u8>) {
        if self.is_leader() {
            self.raw.read_index(context);
        }
    }

    /// On a follower that may vote: starts an election now, without pre-vote and past the
    /// other voters' leader lease (raft-rs's leadership-transfer campaign), because the
    /// leader's daemon is known to be gone (its connection closed). Raft's safety does not
    /// depend on when elections start: a voter still grants its vote only to a log at least
    /// as up to date as its own, once per term. Elsewhere (leader, candidate, learner) this
    /// does nothing.
    pub fn campaign_now(&mut self) {
        if self.raw.raft.state != StateRole::Follower {
            return;
        }
        // A message of term 0 is local; raft-rs answers MsgTimeoutNow with `hup(true)`.
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgTimeoutNow);
        message.from = self.id();
        message.to = self.id();
        if let Err(error) = self.raw.step(message) {
            tracing::debug!(%error, "raft refused to start an election");
        }
    }

    /// This node's raft id.
    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// The applied cluster model.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Whether committed entries are left to apply (a Ready applies at most
    /// [`APPLY_BYTES_PER_READY_MAX`] of them): drive again soon, after other work had a turn.
    pub fn has_unapplied(&self) -> bool {
        let log = &self.raw.raft.raft_log;
        log.applied < log.committed.min(log.persisted)
    }

    /// What applied entries (or an installed snapshot: everything) changed since the last
    /// call.
    pub fn take_changes(&mut self) -> tandem_core::cluster::Changes {
        self.state.take_changes()
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Commit index.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Last applied index.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Last index in the log.
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// Index of the newest snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// The leader this node knows of, if any.
    pub fn leader_id(&self) -> Option<u64> {
        match self.raw.raft.leader_id {
            raft::INVALID_ID => None,
            id => Some(id),
        }
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader's match index for `node` (only on the leader).
    pub fn match_index(&self, node: u64) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        self.raw
            .raft
            .prs()
            .get(node)
            .map(|progress| progress.matched)
    }

    /// Term of the entry at `index`, if the log still holds it.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        self.raw.raft.raft_log.term(index).ok()
    }

    /// Whether `node` is a voter in the current configuration.
    pub fn is_voter(&self, node: u64) -> bool {
        self.raw.raft.prs().conf().voters().contains(node)
    }

    /// Tells raft a peer could not be reached, so it backs off sending to it.
    pub fn report_unreachable(&mut self, node: u64) {
        self.raw.report_unreachable(node);
    }
}
