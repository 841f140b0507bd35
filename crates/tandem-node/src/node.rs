//! The node: Raft replica + liveness tracker + quorum clock + director + agent + data plane
//! and replica-file books, driven sans-IO.
//!
//! Inputs, each with the node's monotonic `now`:
//! - [`Node::tick`] every Raft tick;
//! - [`Node::heartbeat`] every heartbeat interval (liveness, leases, reports, planning);
//! - [`Node::on_peer`] for every message from a peer;
//! - [`Node::on_unit`] and [`Node::on_registered`] for what happens to this node's units;
//! - [`Node::admin`] for operator requests (on the leader);
//! - [`Node::on_data_peer`], [`Node::on_unit_data`] and [`Node::accept_message`] for the data
//!   plane (replication, checkpoint and stream calls, inbound stream messages);
//! - [`Node::on_replicas_synced`] and [`Node::on_compaction_installed`] for what the replica
//!   files made durable.
//!
//! After any input the owner calls [`Node::drive`], which makes writes durable, applies
//! committed entries, lets the agent reconcile and (on the leader) the director plan, and
//! returns everything to carry out in a [`NodeOutput`]; then it runs a data step (see
//! [`data_step`]): the node's data plane and replica-file books on what was committed.

mod data_step;

pub use data_step::{DataRound, DataStepEnd, DataStepStart};

use std::collections::BTreeMap;
use std::time::Duration;

use raft::eraftpb::MessageType;
use tandem_core::director::{node_down_promotions, View};
use tandem_core::{
    AdminCode, Agent, AgentAction, AgentReport, ApplyOutcome, ClusterState, Command, Director,
    GrantBook, GrantTiming, InSyncClaim, LivenessConfig, LivenessTracker, NodeId, NodeReport,
    Observations, QuorumClock, Refusal, ShardName, Time, Topology, UnitName,
};
use tandem_raft::disk::Disk;
use tandem_raft::{Applied, Replica, ReplicaConfig, ReplicaError};

use tandem_core::data::{DataConfig, DataPlane};

use crate::admin::{self, AdminAction, AdminDone, AdminResult, Waiting};
use crate::observe::{self, NodeEvent};
use crate::replica_books::{CompactionPolicy, ReplicaBooks};
use crate::{Grant, Heartbeat, PeerMessage, UnitEvent};

/// Context bytes on entries the director and the liveness tracker propose (admin requests use
/// 8-byte request ids; raft's own entries have none).
const CONTEXT_INTERNAL: &[u8] = b"tandem";

/// How often the leader proposes its config's topology again while the committed one differs.
const TOPOLOGY_RETRY: Duration = Duration::from_secs(2);

/// Director commands per Raft entry at most (each is tens of bytes): an entry is applied in
/// one piece, on every node, so it stays a few KiB.
const BATCH_COMMANDS: usize = 128;

/// Ready rounds per drive: proposals made while driving (director plans) go out in the same
/// call instead of waiting for the next input.
const DRIVE_ROUNDS_MAX: usize = 4;

/// What a node needs besides its disk.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The Raft replica's settings (id, members, timers, snapshots, WAL).
    pub replica: ReplicaConfig,
    /// Period of agent heartbeats and of the leader's liveness verdicts.
    pub heartbeat_interval: Duration,
    /// A node silent this long is declared down.
    pub node_timeout: Duration,
    /// Length of an agent's lease.
    pub lease: Duration,
    /// Every configured node.
    pub members: Vec<NodeId>,
    /// The topology of this node's config; the leader commits it when it differs.
    pub topology: Topology,
    /// Tuning of the node's data plane.
    pub data: DataConfig,
    /// Distinct per run of the node (the data plane draws session and forward ids from it).
    pub data_incarnation: u64,
    /// When a replica file is replaced by a compacted one.
    pub compaction: CompactionPolicy,
}

/// Why the node must stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The replica failed (storage error, unreadable snapshot): stop to protect the log.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// What one [`Node::drive`] produced.
#[derive(Debug, Default)]
pub struct NodeOutput {
    /// Messages to send: (destination, message).
    pub messages: Vec<(u64, PeerMessage)>,
    /// What to do to this node's units.
    pub actions: Vec<AgentAction>,
    /// Events for the event log.
    pub events: Vec<NodeEvent>,
    /// Answers to admin requests: (request id, answer).
    pub admin: Vec<(u64, AdminResult)>,
    /// Entries applied, in order (for the simulation's checkers and the daemon's logs).
    pub applied: Vec<Applied>,
    /// Set when a snapshot from the leader replaced the model.
    pub installed_snapshot: Option<u64>,
}

impl NodeOutput {
    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.actions.is_empty()
            && self.events.is_empty()
            && self.admin.is_empty()
            && self.applied.is_empty()
            && self.installed_snapshot.is_none()
    }

    fn extend(&mut self, other: NodeOutput) {
        self.messages.extend(other.messages);
        self.actions.extend(other.actions);
        self.events.extend(other.events);
        self.admin.extend(other.admin);
        self.applied.extend(other.applied);
        if other.installed_snapshot.is_some() {
            self.installed_snapshot = other.installed_snapshot;
        }
    }
}

/// What only the leader keeps.
#[derive(Debug)]
struct Leadership {
    liveness: LivenessTracker,
    director: Director,
    quorum: QuorumClock,
    /// Grants waiting to ride with the next quorum ask, and when each node's last one ends.
    grants: GrantBook,
    observations: Observations,
    /// When the leader last warned that its grants shrink.
    grants_warned_at: Option<Time>,
    /// When the last quorum confirmation was asked for.
    quorum_asked_at: Option<Time>,
    /// The log's last index when it was.
    index_at_ask: u64,
    /// When the config's topology was last proposed.
    topology_proposed_at: Option<Time>,
    /// The committed topology was found equal to the config's and has not changed since.
    topology_matches: bool,
    /// Whether the director should plan at the next drive.
    plan_due: bool,
    /// Admin requests waiting, by id.
    waiting: BTreeMap<u64, Waiting>,
}

/// How often the leader says at most that its lease grants shrink.
const GRANTS_WARNING_EVERY: Duration = Duration::from_secs(1);

impl Leadership {
    /// Quorum confirmations completed, by their context (the time each was asked for).
    fn note_confirmed(&mut self, contexts: &[Vec<u8>]) {
        for context in contexts {
            if let Ok(bytes) = <[u8; 8]>::try_from(context.as_slice()) {
                self.quorum
                    .confirmed(Time::from_micros(u64::from_be_bytes(bytes)));
            }
        }
    }

    /// Warns (at most every [`GRANTS_WARNING_EVERY`]) when a grant made now is cut by more
    /// than a quarter of the lease, or withheld, because the newest quorum confirmation is
    /// old: the confirmations or their answers wait on busy or starved loops (the leader's or
    /// the voters'), and the nodes' leases may lapse.
    fn warn_if_grants_shrink(
        &mut self,
        now: Time,
        shortened_by: Option<Duration>,
        lease: Duration,
    ) {
        // (A new leader grants nothing before its first confirmation: nothing to say then.)
        let Some(age) = self.quorum.age(now) else {
            return;
        };
        if shortened_by.is_some_and(|cut| cut <= lease / 4) {
            return;
        }
        if self
            .grants_warned_at
            .is_some_and(|at| now.saturating_since(at) < GRANTS_WARNING_EVERY)
        {
            return;
        }
        self.grants_warned_at = Some(now);
        let age_ms = age.as_millis() as u64;
        match shortened_by {
            Some(cut) => tracing::warn!(
                confirmation_age_ms = age_ms,
                cut_ms = cut.as_millis() as u64,
                lease_ms = lease.as_millis() as u64,
                "lease grants are cut short: the newest quorum confirmation is old (the leader's or the voters' loops are busy)"
            ),
            None => tracing::warn!(
                confirmation_age_ms = age_ms,
                lease_ms = lease.as_millis() as u64,
                "no lease grants: the newest quorum confirmation is older than a lease (the leader's or the voters' loops are busy)"
            ),
        }
    }
}

/// One node.
pub struct Node<D: Disk> {
    settings: NodeSettings,
    id: NodeId,
    replica: Replica<D>,
    agent: Agent,
    leadership: Option<Leadership>,
    /// Output gathered between drives (messages and actions from inputs).
    pending: NodeOutput,
    /// Whether the agent should reconcile at the next drive.
    reconcile_due: bool,
    /// The leader last seen, to report changes.
    last_leader: Option<u64>,
    /// The agent's last report sent to the leader (or recorded, on the leader), to send a new
    /// one as soon as anything in it changes.
    last_report: Option<AgentReport>,
    /// When this follower last sent the leader a heartbeat (see [`Node::heartbeat`]).
    heartbeat_sent_at: Option<Time>,
    /// What this node's data plane verified in sync, reported to the leader.
    in_sync_claims: BTreeMap<tandem_core::ShardName, tandem_core::InSyncClaim>,
    /// The claims of `in_sync_claims` the committed state does not hold yet (what the report
    /// carries). A claim leaves only by a commit (its sequence number, or a new epoch), so a
    /// commit is checked against the shards it touched; new claims rebuild it.
    pending_claims: BTreeMap<tandem_core::ShardName, tandem_core::InSyncClaim>,
    /// The data plane: checkpoint replicas, replication sessions, streams (see `data_step`).
    data: DataPlane,
    /// The books of the replica files.
    books: ReplicaBooks,
    /// The applied index the data plane's view was built at.
    data_applied: Option<u64>,
    /// Whether the data plane had a lease at the last data step.
    data_leased: bool,
    /// What applied entries changed since the data plane's view was last updated.
    data_changes: tandem_core::cluster::Changes,
    /// Shards whose committed record moved since the owner last took them (see
    /// [`Node::take_moved_shards`]).
    moved_shards: MovedShards,
}

/// Shards whose committed record changed over some stretch of applied entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MovedShards {
    /// These ones (perhaps none).
    Some(std::collections::BTreeSet<tandem_core::ShardName>),
    /// Any of them: the topology changed, or nothing was taken yet.
    All,
}

impl<D: Disk> std::fmt::Debug for Node<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("replica", &self.replica)
            .field("leader", &self.leadership.is_some())
            .finish()
    }
}

impl<D: Disk> Node<D> {
    /// Opens the node's replica on `disk` (bootstrapping an empty one).
    pub fn open(settings: NodeSettings, disk: D, logger: &slog::Logger) -> Result<Self, NodeError> {
        // The leader's quorum confirmations (see `tick`) are Raft heartbeats sent at least
        // every `heartbeat_ticks`: raft-rs's own heartbeats are left as a backstop, at the
        // longest period it accepts, instead of doubling the leader's heartbeat traffic.
        let mut replica_config = settings.replica.clone();
        replica_config.heartbeat_ticks = replica_config
            .election_ticks
            .saturating_sub(1)
            .max(replica_config.heartbeat_ticks);
        let replica = Replica::open(&replica_config, disk, logger)?;
        let id = NodeId(settings.replica.id);
        Ok(Self {
            agent: Agent::new(id, settings.lease),
            id,
            replica,
            leadership: None,
            pending: NodeOutput::default(),
            reconcile_due: true,
            last_leader: None,
            last_report: None,
            heartbeat_sent_at: None,
            in_sync_claims: BTreeMap::new(),
            pending_claims: BTreeMap::new(),
            data: DataPlane::new(id, settings.data.clone(), settings.data_incarnation),
            books: ReplicaBooks::new(settings.compaction),
            data_applied: None,
            data_leased: false,
            data_changes: Default::default(),
            moved_shards: MovedShards::All,
            settings,
        })
    }

    /// The replica (read-only).
    pub fn replica(&self) -> &Replica<D> {
        &self.replica
    }

    /// The committed state.
    pub fn state(&self) -> &ClusterState {
        self.replica.state()
    }

    /// The agent (read-only).
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.replica.is_leader()
    }

    /// On the leader: the agents' latest reports.
    pub fn observations(&self) -> Option<&Observations> {
        self.leadership
            .as_ref()
            .map(|leadership| &leadership.observations)
    }

    /// On the leader: the liveness tracker.
    pub fn liveness(&self) -> Option<&LivenessTracker> {
        self.leadership
            .as_ref()
            .map(|leadership| &leadership.liveness)
    }

    /// This node's own agent report at `now`.
    pub fn own_report(&self, now: Time) -> AgentReport {
        let mut report = self
            .agent
            .report(now, self.replica.state(), self.replica.applied_index());
        // Only claims the committed state does not hold yet: a steady primary reports none.
        report.in_sync = self.pending_claims.clone();
        report
    }

    /// Whether the committed `state` does not hold `claim` for `shard` yet.
    fn claim_pending(state: &ClusterState, shard: &ShardName, claim: &InSyncClaim) -> bool {
        state
            .shards
            .get(shard)
            .is_some_and(|record| record.epoch == claim.epoch && claim.seq > record.in_sync_claim)
    }

    /// Rebuilds the pending claims from every claim (when the claims or the topology changed).
    pub(crate) fn refresh_pending_claims(&mut self) {
        let state = self.replica.state();
        self.pending_claims = self
            .in_sync_claims
            .iter()
            .filter(|(shard, claim)| Self::claim_pending(state, shard, claim))
            .map(|(shard, claim)| (shard.clone(), claim.clone()))
            .collect();
    }

    /// The Raft log fsync to run next when the replica defers them
    /// ([`tandem_raft::ReplicaConfig::deferred_sync`]); report it with [`Node::synced`].
    pub fn take_sync(
        &mut self,
    ) -> Result<
        Option<tandem_raft::SyncJob<<D::File as tandem_raft::disk::DiskFile>::Syncer>>,
        NodeError,
    > {
        Ok(self.replica.take_sync()?)
    }

    /// The log fsync for ready `number` finished; drive the node next to send what it released.
    pub fn synced(&mut self, number: u64) {
        self.replica.synced(number);
    }

    /// Until when this node's units may act (its agent's lease), if it holds one.
    pub fn lease_until(&self, now: Time) -> Option<Time> {
        self.agent.lease_until(now, self.replica.applied_index())
    }

    /// The newest lease grant: its heartbeat's send time and its floor (for logs).
    pub fn newest_grant(&self) -> Option<(Time, u64)> {
        self.agent.newest_grant()
    }

    /// Whether this node's lease is valid at `now`.
    pub fn has_lease(&self, now: Time) -> bool {
        self.agent
            .lease_until(now, self.replica.applied_index())
            .is_some()
    }

    /// Proposes `command` with `context` as it is, for tests and the simulation's client
    /// workload (the daemon goes through [`Node::admin`]).
    pub fn propose_raw(&mut self, command: &Command, context: Vec<u8>) -> Result<(), ReplicaError> {
        self.replica.propose(command, context)
    }

    // ----- inputs -----

    /// One Raft tick. On the leader, also asks the quorum to confirm it every Raft heartbeat
    /// period, and at least every heartbeat interval (the freshness a grant needs to be
    /// whole): a confirmation is a Raft heartbeat to every member (raft-rs's read index), so
    /// it stands in for raft-rs's own. Each ask also carries the grants waiting for it.
    ///
    /// The periodic asks keep in step with raft-rs's own heartbeat (every `election_ticks − 1`
    /// ticks, a backstop, see [`Node::open`]): one falls on the tick it goes out, so both reach
    /// a peer in one write and their answers come back in one, instead of a third exchange.
    pub fn tick(&mut self, now: Time, wall_ms: u64) {
        self.replica.tick();
        self.reconcile_due = true;
        let interval = self.settings.heartbeat_interval;
        let heartbeat_ticks = self.settings.replica.heartbeat_ticks.max(1);
        if let Some(leadership) = &mut self.leadership {
            let due = self
                .replica
                .heartbeat_elapsed()
                .is_multiple_of(heartbeat_ticks)
                || leadership
                    .quorum_asked_at
                    .is_none_or(|asked| now.saturating_since(asked) >= interval);
            if due {
                leadership.quorum_asked_at = Some(now);
                leadership.index_at_ask = self.replica.last_index();
                self.replica
                    .confirm_quorum(now.as_micros().to_be_bytes().to_vec());
                // The waiting grants leave in the same drive as the ask, so each shares its
                // node's write (the newest confirmation is still the previous ask's).
                for heartbeat in leadership.grants.take_due() {
                    Self::grant(
                        leadership,
                        &self.replica,
                        &mut self.pending.messages,
                        now,
                        self.settings.lease,
                        heartbeat,
                    );
                }
            }
        }
        self.follower_heartbeat(
            now,
            tandem_core::heartbeat_gap_max(self.settings.heartbeat_interval),
        );
        // Liveness is judged every tick, not every heartbeat interval, so a silent node is
        // declared down within a tick of its timeout.
        self.judge_liveness(now, wall_ms);
        self.data.tick(now);
    }

    /// On the leader: proposes the liveness verdicts due at `now`. A down verdict carries the
    /// STANDBYs that take over the node's ACTIVE shards.
    fn judge_liveness(&mut self, now: Time, wall_ms: u64) {
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        for command in leadership.liveness.decide(now, self.replica.state()) {
            let command = match command {
                Command::SetNodeLiveness {
                    node, up: false, ..
                } => {
                    let view = View::new(self.replica.state(), &leadership.observations);
                    Command::SetNodeLiveness {
                        node,
                        up: false,
                        at_ms: wall_ms,
                        promotions: node_down_promotions(&view, node),
                    }
                }
                other => other,
            };
            tracing::info!(?command, "proposing a liveness verdict");
            let _ = self.replica.propose(&command, CONTEXT_INTERNAL.to_vec());
        }
    }

    /// The heartbeat timer: the leader grants its own agent a lease, installs its config's
    /// topology if needed, and plans; a follower's agent sends its heartbeat to the leader if
    /// it sent none for a while.
    ///
    /// A follower's heartbeat rides with its answer to the leader's own heartbeat (its quorum
    /// confirmation) when three quarters of an interval passed since its last one
    /// ([`tandem_core::heartbeat_ride_gap`]), and the leader's grant for it rides with the
    /// leader's next heartbeat ([`GrantBook`]): one message each way instead of four, which is
    /// most of an idle leader's work at 16 nodes. The timer and the tick send one only when 1¼
    /// intervals passed since the last ([`tandem_core::heartbeat_gap_max`]): the leader's
    /// heartbeats stopped or came late.
    pub fn heartbeat(&mut self, now: Time) {
        if self.leadership.is_none() {
            self.follower_heartbeat(
                now,
                tandem_core::heartbeat_gap_max(self.settings.heartbeat_interval),
            );
            return;
        }
        let report = self.own_report(now);
        if let Some(leadership) = &mut self.leadership {
            if let Some(shortened_by) = leadership.quorum.grant(now, self.settings.lease) {
                self.agent
                    .on_grant(now, now, self.replica.last_index(), shortened_by);
            }
            let state = self.replica.state();
            // The topology lists every shard: compared again only after it changed.
            if !leadership.topology_matches {
                leadership.topology_matches = state.topology == self.settings.topology;
            }
            let topology_due = !leadership.topology_matches
                && leadership
                    .topology_proposed_at
                    .is_none_or(|at| now.saturating_since(at) >= TOPOLOGY_RETRY);
            if topology_due {
                leadership.topology_proposed_at = Some(now);
                tracing::info!("proposing this node's config topology");
                let command = Command::SetTopology(self.settings.topology.clone());
                let _ = self.replica.propose(&command, CONTEXT_INTERNAL.to_vec());
            }
            let state = self.replica.state();
            Self::record_report(
                leadership,
                state,
                &mut self.pending.events,
                now,
                self.id,
                report,
            );
        }
    }

    /// On the leader: grants `node` a lease for its heartbeat sent at `sent_at` (its clock)
    /// that arrived at `received_at`, if the newest quorum confirmation allows one at `now`
    /// and the node is committed up. No lease for a node judged down until its return is
    /// committed: the director may be failing its shards over right now, and a lease whose
    /// floor predates that would let the node's units act on the old assignment. Once the
    /// node is committed up again, every failover planned while it was down has a lower index
    /// than the grant's floor.
    fn grant(
        leadership: &mut Leadership,
        replica: &Replica<D>,
        messages: &mut Vec<(u64, PeerMessage)>,
        now: Time,
        lease: Duration,
        (node, sent_at, received_at): (NodeId, Time, Time),
    ) {
        let shortened_by = leadership.quorum.grant(now, lease);
        leadership.warn_if_grants_shrink(now, shortened_by, lease);
        let Some(shortened_by) = shortened_by.filter(|_| replica.state().is_up(node)) else {
            return;
        };
        let grant = Grant {
            sent_at,
            floor: replica.last_index(),
            term: replica.term(),
            shortened_by,
        };
        messages.push((node.0, PeerMessage::Grant(grant)));
        leadership.grants.sent(node, received_at, shortened_by);
    }

    /// On a follower: sends the leader a heartbeat unless one left less than `gap` ago.
    fn follower_heartbeat(&mut self, now: Time, gap: Duration) {
        if self.leadership.is_some()
            || self
                .heartbeat_sent_at
                .is_some_and(|sent| now.saturating_since(sent) < gap)
        {
            return;
        }
        let Some(leader) = self.replica.leader_id() else {
            return;
        };
        self.heartbeat_sent_at = Some(now);
        let heartbeat = Heartbeat {
            term: self.replica.term(),
            commit_index: self.replica.commit_index(),
            applied_index: self.replica.applied_index(),
            sent_at: now,
            report: self.own_report(now),
        };
        self.pending
            .messages
            .push((leader, PeerMessage::Heartbeat(heartbeat)));
    }

    fn record_report(
        leadership: &mut Leadership,
        state: &ClusterState,
        events: &mut Vec<NodeEvent>,
        now: Time,
        node: NodeId,
        report: AgentReport,
    ) {
        let before = leadership.observations.latest(node);
        if before == Some(&report) {
            // The same report again (reports are repeated with every heartbeat): only its
            // arrival time is news.
            leadership.observations.record(now, node, report);
            return;
        }
        for (unit, unit_report) in &report.units {
            let previous = before.and_then(|before| before.units.get(unit));
            for change in observe::diff(state, unit, previous, unit_report) {
                events.push(NodeEvent::Observed {
                    node,
                    unit: unit.clone(),
                    change,
                });
            }
        }
        if let Some(judged) = leadership.observations.record(now, node, report) {
            leadership
                .director
                .note_report(state, &leadership.observations, &judged);
            leadership.plan_due = true;
        }
    }

    /// The messages of the liveness path made since the last drive (lease grants, answers to
    /// the leader's heartbeats), taken out of its output so that the owner sends them at
    /// once: each answers a message just handled, and a lease ages while it waits.
    pub fn take_urgent(&mut self) -> Vec<(u64, PeerMessage)> {
        let urgent = |(_, message): &(u64, PeerMessage)| match message {
            PeerMessage::Grant(_) | PeerMessage::Heartbeat(_) => true,
            PeerMessage::Raft(raft) => raft.get_msg_type() == MessageType::MsgHeartbeatResponse,
            _ => false,
        };
        // Called after every peer message: most leave nothing urgent.
        if !self.pending.messages.iter().any(urgent) {
            return Vec::new();
        }
        let (taken, rest) = std::mem::take(&mut self.pending.messages)
            .into_iter()
            .partition(urgent);
        self.pending.messages = rest;
        taken
    }

    /// The connection peer `from` sends to this node on closed (its daemon died or stopped, or
    /// the connection broke): what it sent before has arrived. The leader judges the peer down
    /// as soon as its leases have run out instead of after a whole node timeout; a follower
    /// whose leader this is starts an election at once if it is the first voter, by id, among
    /// the others the cluster holds up, so that one candidate asks instead of several
    /// splitting the vote. If that one cannot win (it died too, or its log is behind), the
    /// usual election timeout follows. (Followers do not talk to each other, so a follower
    /// cannot tell which of them is still connected; the committed liveness is what all of
    /// them agree on.) A heartbeat heard from the peer later cancels the leader's haste.
    pub fn on_link_lost(&mut self, _now: Time, from: u64) {
        if from == self.id.0 || !self.settings.members.contains(&NodeId(from)) {
            return;
        }
        if let Some(leadership) = &mut self.leadership {
            leadership.liveness.link_lost(NodeId(from));
            leadership.grants.forget(NodeId(from));
            return;
        }
        if self.replica.leader_id() != Some(from) || !self.replica.is_voter(self.id.0) {
            return;
        }
        let first_voter_up = self
            .settings
            .members
            .iter()
            .map(|id| id.0)
            .filter(|id| {
                *id != from && self.replica.is_voter(*id) && self.replica.state().is_up(NodeId(*id))
            })
            .min();
        if first_voter_up == Some(self.id.0) {
            tracing::info!(
                leader = from,
                "the leader's connection closed; starting an election now"
            );
            self.replica.campaign_now();
        }
    }

    /// A message from peer `from`.
    pub fn on_peer(&mut self, now: Time, from: u64, message: PeerMessage) {
        match message {
            PeerMessage::Raft(raft) => {
                let kind = raft.get_msg_type();
                if let Err(error) = self.replica.step(raft) {
                    tracing::debug!(from, %error, "raft refused a message");
                }
                // Heartbeats carry the leader's quorum confirmations: answered, and the
                // answers counted, as they are read rather than after the pass.
                if kind == MessageType::MsgHeartbeat {
                    for response in self.replica.take_heartbeat_responses() {
                        self.pending
                            .messages
                            .push((response.to, PeerMessage::Raft(response)));
                    }
                    // This node's own heartbeat rides along when one is nearly due (see
                    // `heartbeat`).
                    self.follower_heartbeat(
                        now,
                        tandem_core::heartbeat_ride_gap(self.settings.heartbeat_interval),
                    );
                } else if kind == MessageType::MsgHeartbeatResponse {
                    let confirmed = self.replica.take_quorum_confirmed();
                    if let Some(leadership) = &mut self.leadership {
                        leadership.note_confirmed(&confirmed);
                    }
                }
            }
            PeerMessage::Heartbeat(heartbeat) => {
                let Some(leadership) = &mut self.leadership else {
                    return;
                };
                leadership.liveness.observe(
                    now,
                    NodeId(from),
                    NodeReport {
                        term: heartbeat.term,
                        commit_index: heartbeat.commit_index,
                        applied_index: heartbeat.applied_index,
                    },
                );
                if !self.settings.members.contains(&NodeId(from)) {
                    return;
                }
                // While the node's last grant runs long and the leader keeps up, this one
                // waits for the next quorum ask to the node and shares its write (see
                // `GrantBook`). Keeping up: a grant now would be whole, and the log is still
                // since the last ask (all of it applied); entries in flight (a failover, an
                // operation) mean long passes ahead, which a waiting grant would sit behind.
                let log_still = self.replica.last_index() == self.replica.applied_index()
                    && self.replica.last_index() == leadership.index_at_ask;
                let keeping_up = log_still
                    && leadership.quorum.grant(now, self.settings.lease) == Some(Duration::ZERO);
                let timing = leadership.grants.on_heartbeat(
                    now,
                    NodeId(from),
                    heartbeat.sent_at,
                    keeping_up,
                );
                if timing == GrantTiming::Now {
                    Self::grant(
                        leadership,
                        &self.replica,
                        &mut self.pending.messages,
                        now,
                        self.settings.lease,
                        (NodeId(from), heartbeat.sent_at, now),
                    );
                }
                Self::record_report(
                    leadership,
                    self.replica.state(),
                    &mut self.pending.events,
                    now,
                    NodeId(from),
                    heartbeat.report,
                );
            }
            PeerMessage::Grant(grant) => {
                let taken =
                    self.agent
                        .on_grant(now, grant.sent_at, grant.floor, grant.shortened_by);
                if !taken {
                    tracing::warn!(
                        from,
                        sent_at_us = grant.sent_at.as_micros(),
                        now_us = now.as_micros(),
                        "a lease grant for a heartbeat from this node's future dropped (one \
                         for an earlier run of this node)"
                    );
                    return;
                }
                self.reconcile_due = true;
            }
            PeerMessage::Report(report) => {
                if let Some(leadership) = &mut self.leadership {
                    if self.settings.members.contains(&NodeId(from)) {
                        Self::record_report(
                            leadership,
                            self.replica.state(),
                            &mut self.pending.events,
                            now,
                            NodeId(from),
                            report,
                        );
                    }
                }
            }
        }
    }

    /// Something happened to one of this node's units.
    pub fn on_unit(&mut self, _now: Time, event: UnitEvent) {
        self.reconcile_due = true;
        if let UnitEvent::Exited {
            unit, generation, ..
        }
        | UnitEvent::Disconnected { unit, generation } = &event
        {
            self.data.unit_disconnected(unit, *generation);
        }
        match event {
            UnitEvent::Started {
                unit,
                generation,
                pid,
            } => self.agent.on_started(&unit, generation, pid),
            UnitEvent::StartFailed {
                unit,
                generation,
                error,
            } => {
                tracing::warn!(%unit, generation, %error, "unit could not be started");
                self.agent.on_start_failed(&unit, generation);
            }
            UnitEvent::Exited {
                unit,
                generation,
                code,
                signal,
            } => self.agent.on_exited(&unit, generation, code, signal),
            UnitEvent::Disconnected { unit, generation } => {
                if let Some(action) = self.agent.on_disconnected(&unit, generation) {
                    self.pending.actions.push(action);
                }
            }
            UnitEvent::Reply {
                unit,
                generation,
                request,
                result,
            } => {
                if let Err(error) = &result {
                    tracing::warn!(%unit, generation, request, %error, "unit hook failed");
                }
                if let Some(action) = self.agent.on_reply(&unit, generation, request, result) {
                    self.pending.actions.push(action);
                }
            }
            UnitEvent::Fault {
                unit,
                generation,
                severity,
            } => self.agent.on_unit_fault(&unit, generation, severity),
            UnitEvent::Load {
                unit,
                generation,
                load,
            } => self.agent.on_load(&unit, generation, load),
            // The unit's SDK stopped it acting when its lease ran out; its roles stay, and the
            // agent sends it a lease again once that is safe. Nothing to decide here.
            UnitEvent::Fenced { .. } => {}
        }
    }

    /// Instance `generation` of `unit` registered through the SDK; false means refuse it.
    pub fn on_registered(&mut self, now: Time, unit: &UnitName, generation: u64) -> bool {
        self.reconcile_due = true;
        let accepted = self.agent.on_registered(now, unit, generation);
        if accepted {
            self.data.unit_connected(unit, generation);
        }
        accepted
    }

    /// An admin request with id `id`, to be answered by `deadline` at the latest. Only the
    /// leader takes requests; a refusal means nothing was proposed.
    pub fn admin(
        &mut self,
        now: Time,
        id: u64,
        action: AdminAction,
        deadline: Time,
    ) -> Result<(), Refusal> {
        let Some(leadership) = &mut self.leadership else {
            return Err(Refusal {
                code: AdminCode::NotLeader,
                message: "this node is not the leader".into(),
            });
        };
        let (commands, goal, summary) =
            admin::plan(self.replica.state(), &leadership.observations, &action)?;
        let count = commands.len();
        for (position, command) in commands.into_iter().enumerate() {
            let command = match command {
                Command::Noop { .. } => Command::Noop { nonce: id },
                other => other,
            };
            if let Err(error) = self.replica.propose(&command, id.to_be_bytes().to_vec()) {
                if position == 0 {
                    return Err(Refusal {
                        code: AdminCode::NotCommitted,
                        message: format!("proposal refused: {error}; retry"),
                    });
                }
                // Some commands are proposed already; count only those.
                leadership.waiting.insert(
                    id,
                    Waiting {
                        outstanding: position,
                        goal,
                        deadline,
                        index: 0,
                        term: 0,
                        summary,
                    },
                );
                return Ok(());
            }
        }
        let _ = now;
        leadership.waiting.insert(
            id,
            Waiting {
                outstanding: count,
                goal,
                deadline,
                index: 0,
                term: 0,
                summary,
            },
        );
        Ok(())
    }

    // ----- drive -----

    /// Makes writes durable, applies committed entries, reconciles the agent, plans (on the
    /// leader) and answers admin requests; returns everything to carry out.
    pub fn drive(&mut self, now: Time, wall_ms: u64) -> Result<NodeOutput, NodeError> {
        let mut output = std::mem::take(&mut self.pending);
        for round in 0..DRIVE_ROUNDS_MAX {
            let mut step = NodeOutput::default();
            let ready = self.replica.process_ready()?;
            step.messages.extend(
                ready
                    .messages
                    .into_iter()
                    .map(|message| (message.to, PeerMessage::Raft(message))),
            );
            step.installed_snapshot = ready.installed_snapshot;
            if let Some(leadership) = &mut self.leadership {
                leadership.note_confirmed(&ready.quorum_confirmed);
            }
            if !ready.applied.is_empty() || ready.installed_snapshot.is_some() {
                self.reconcile_due = true;
                if let Some(leadership) = &mut self.leadership {
                    leadership.plan_due = true;
                }
            }
            for applied in &ready.applied {
                for event in &applied.events {
                    step.events.push(NodeEvent::Model {
                        index: applied.index,
                        event: event.clone(),
                    });
                }
                self.note_applied(applied, &mut step);
            }
            step.applied = ready.applied;
            self.follow_leadership(now, &mut step);
            self.take_changes();

            if self.reconcile_due {
                self.reconcile_due = false;
                let applied = self.replica.applied_index();
                step.actions
                    .extend(self.agent.reconcile(now, self.replica.state(), applied));
                // Anything the director may be waiting for (a role settled at a new shard
                // version, a fault, a process change) goes out at once.
                let report = self.own_report(now);
                if self.last_report.as_ref() != Some(&report) {
                    self.last_report = Some(report.clone());
                    match &mut self.leadership {
                        Some(leadership) => Self::record_report(
                            leadership,
                            self.replica.state(),
                            &mut step.events,
                            now,
                            self.id,
                            report,
                        ),
                        None => {
                            if let Some(leader) = self.replica.leader_id() {
                                step.messages.push((leader, PeerMessage::Report(report)));
                            }
                        }
                    }
                }
            }
            let mut proposed = false;
            if let Some(leadership) = &mut self.leadership {
                if leadership.plan_due {
                    let commands = leadership.director.plan(
                        now,
                        self.replica.state(),
                        &leadership.observations,
                        wall_ms,
                    );
                    // Shards left for the next round keep the plan due.
                    leadership.plan_due = leadership.director.has_more();
                    proposed |= Self::propose_batched(&mut self.replica, commands);
                }
                Self::check_waiting(leadership, self.replica.state(), now, &mut step.admin);
            }
            let idle = step.is_empty() && !proposed;
            let applied_some = !step.applied.is_empty();
            output.extend(step);
            // A backlog of committed entries is applied one Ready per pass: the event loop
            // sends heartbeats and answers leases between them (see `has_raft_work`).
            let backlog = applied_some && self.replica.has_unapplied();
            if idle || backlog || round + 1 == DRIVE_ROUNDS_MAX {
                break;
            }
        }
        for action in &output.actions {
            if let AgentAction::Start {
                unit,
                reinitialise: true,
                ..
            } = action
            {
                // Escalation L2: the unit starts from an empty replica, rebuilt by state
                // transfer.
                self.data.reinitialise(unit);
            }
        }
        Ok(output)
    }

    /// Proposes the director's `commands`, many to an entry (see [`Command::Batch`]).
    /// Returns whether anything was proposed.
    fn propose_batched(replica: &mut Replica<D>, commands: Vec<Command>) -> bool {
        let mut proposed = false;
        let mut commands = commands.into_iter().peekable();
        while commands.peek().is_some() {
            let mut batch: Vec<Command> = commands.by_ref().take(BATCH_COMMANDS).collect();
            tracing::debug!(commands = batch.len(), "director proposes");
            let command = if batch.len() == 1 {
                batch.pop().expect("one")
            } else {
                Command::Batch(batch)
            };
            proposed |= replica.propose(&command, CONTEXT_INTERNAL.to_vec()).is_ok();
        }
        proposed
    }

    /// Hands what the applied entries changed to those who act on it: the agent, the
    /// leader's director and observations, and (at the next data step) the data plane.
    fn take_changes(&mut self) {
        let changes = self.replica.take_changes();
        let applied = self.replica.applied_index();
        let state = self.replica.state();
        if let Some(leadership) = &mut self.leadership {
            if changes.topology {
                leadership.topology_matches = false;
            }
            if leadership.observations.applied_index() != applied {
                // Reports that waited for this index are judged now.
                let judged =
                    leadership
                        .observations
                        .applied(applied, &changes.roles, changes.topology);
                leadership.director.note_changes(state, &changes);
                for judged in &judged {
                    leadership
                        .director
                        .note_report(state, &leadership.observations, judged);
                }
                leadership.plan_due = true;
            }
        }
        if changes.is_empty() {
            return;
        }
        if changes.topology {
            self.refresh_pending_claims();
        } else if !self.pending_claims.is_empty() {
            for shard in &changes.shards {
                if let Some(claim) = self.pending_claims.get(shard) {
                    if !Self::claim_pending(state, shard, claim) {
                        self.pending_claims.remove(shard);
                    }
                }
            }
        }
        let state = self.replica.state();
        self.agent.on_changes(state, &changes);
        self.data_changes.extend(changes);
    }

    /// An applied entry that answers (part of) an admin request.
    fn note_applied(&mut self, applied: &Applied, step: &mut NodeOutput) {
        let Ok(bytes) = <[u8; 8]>::try_from(applied.context.as_slice()) else {
            if let (Some(command), Some(reason)) = (&applied.command, applied.outcome.refusal()) {
                tracing::debug!(index = applied.index, ?command, %reason, "command refused at apply");
            }
            return;
        };
        let id = u64::from_be_bytes(bytes);
        let Some(leadership) = &mut self.leadership else {
            return;
        };
        let Some(waiting) = leadership.waiting.get_mut(&id) else {
            return;
        };
        waiting.outstanding = waiting.outstanding.saturating_sub(1);
        waiting.index = applied.index;
        waiting.term = applied.term;
        let why = match &applied.outcome {
            ApplyOutcome::Refused(_) => "the state changed meanwhile",
            ApplyOutcome::Unsafe(_) => "it would break the one-ACTIVE rule: a bug, nothing changed",
            ApplyOutcome::Changed | ApplyOutcome::Unchanged => return,
        };
        if let Some(reason) = applied.outcome.refusal() {
            leadership.waiting.remove(&id);
            step.admin.push((
                id,
                Err(Refusal {
                    code: AdminCode::Refused,
                    message: format!("refused when applied ({why}): {reason}"),
                }),
            ));
        }
    }

    fn check_waiting(
        leadership: &mut Leadership,
        state: &ClusterState,
        now: Time,
        answers: &mut Vec<(u64, AdminResult)>,
    ) {
        let observations = &leadership.observations;
        leadership.waiting.retain(|id, waiting| {
            if waiting.outstanding == 0 {
                match admin::reached(state, observations, &waiting.goal) {
                    Ok(true) => {
                        answers.push((
                            *id,
                            Ok(AdminDone {
                                message: waiting.summary.clone(),
                                index: waiting.index,
                                term: waiting.term,
                            }),
                        ));
                        return false;
                    }
                    Ok(false) => {}
                    Err(reason) => {
                        answers.push((
                            *id,
                            Err(Refusal {
                                code: AdminCode::Failed,
                                message: reason,
                            }),
                        ));
                        return false;
                    }
                }
            }
            if now >= waiting.deadline {
                let what = if waiting.outstanding > 0 {
                    "its commit".to_owned()
                } else {
                    admin::outstanding(state, &waiting.goal)
                };
                answers.push((
                    *id,
                    Err(Refusal {
                        code: AdminCode::InProgress,
                        message: format!(
                            "accepted, but not finished in time; still waiting for {what} \
                             (watch with `tandemctl status`)"
                        ),
                    }),
                ));
                return false;
            }
            true
        });
    }

    /// Starts or ends the leader's duties when leadership changes.
    fn follow_leadership(&mut self, now: Time, step: &mut NodeOutput) {
        let leader = self.replica.leader_id();
        if leader != self.last_leader {
            self.last_leader = leader;
            step.events.push(NodeEvent::Leader {
                term: self.replica.term(),
                leader: leader.map(NodeId),
            });
        }
        let is_leader = self.replica.is_leader();
        if is_leader && self.leadership.is_none() {
            self.leadership = Some(Leadership {
                liveness: LivenessTracker::new(
                    LivenessConfig {
                        node_timeout: self.settings.node_timeout,
                        first_verdict_after: tandem_core::fencing_bound(
                            self.settings.heartbeat_interval,
                            self.settings.lease,
                        ),
                        link_loss_timeout: tandem_core::lease_expiry_bound(self.settings.lease),
                        // A leader whose loop runs less often than every interval was
                        // paused, and did not listen (agents send a heartbeat about every
                        // interval).
                        pause_after: self.settings.heartbeat_interval,
                    },
                    self.id,
                    self.settings.members.iter().copied(),
                    now,
                ),
                director: Director::new(),
                quorum: QuorumClock::new(self.settings.heartbeat_interval),
                grants: GrantBook::new(self.settings.lease),
                observations: Observations::new(self.replica.applied_index()),
                quorum_asked_at: None,
                index_at_ask: 0,
                grants_warned_at: None,
                topology_proposed_at: None,
                topology_matches: false,
                plan_due: true,
                waiting: BTreeMap::new(),
            });
        } else if !is_leader {
            if let Some(leadership) = self.leadership.take() {
                // Requests of a deposed leader may never complete here; their callers retry.
                for id in leadership.waiting.keys() {
                    step.admin.push((
                        *id,
                        Err(Refusal {
                            code: AdminCode::Aborted,
                            message: "leadership changed while the request was in progress; \
                                      what was committed stays, check `tandemctl status`"
                                .into(),
                        }),
                    ));
                }
            }
        }
    }
}
