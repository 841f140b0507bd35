//! The node's data side: its [`DataPlane`] (checkpoint replicas, replication, streams) and the
//! [`ReplicaBooks`] of its replica files, fed and stepped through the node so that tandemd and
//! the simulation compose them the same way.
//!
//! Inputs: [`Node::on_data_peer`], [`Node::on_unit_data`], [`Node::accept_message`],
//! [`Node::on_replicas_synced`], [`Node::on_compaction_installed`] (and the unit events and
//! ticks the node already takes). After [`Node::drive`], the owner runs one data step:
//! [`Node::begin_data_step`], then [`Node::take_data_round`] until it returns `None` (or a
//! budget is spent), carrying out each round in order (messages, answers, deliveries, then the
//! file operations), then [`Node::end_data_step`], whose in-sync claims the node already took
//! into its next report.

use tandem_core::data::{
    Accepted, DataEvent, DataMessage, DataReply, DataRequest, DataView, Delivery, NotAccepted,
    ReplicaId, ReplicaStatus, ShardReplica, StreamMessage,
};
use tandem_core::{NodeId, ShardName, Time, UnitName};
use tandem_raft::disk::Disk;

use super::{MovedShards, Node};
use crate::replica_books::{FileOp, Installed, Synced};

/// What [`Node::begin_data_step`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataStepStart {
    /// The committed state moved since the last step: the data view was rebuilt (anything
    /// that follows the view, such as the ingress sockets, should follow it now).
    pub state_moved: bool,
    /// The node's lease lapsed since the last step while units here acted ACTIVE: they stop
    /// acting until it is renewed.
    pub lease_lapsed: bool,
}

/// One round of the data plane's output, to carry out in this order.
#[derive(Debug, Default)]
pub struct DataRound {
    /// Messages to other nodes' data planes.
    pub messages: Vec<(NodeId, DataMessage)>,
    /// Answers to units: (unit, generation, request id, answer).
    pub replies: Vec<(UnitName, u64, u64, DataReply)>,
    /// Deliveries to units: (unit, generation, delivery).
    pub deliveries: Vec<(UnitName, u64, Delivery)>,
    /// Events.
    pub events: Vec<DataEvent>,
    /// File operations, last: nothing sent in this round waits for them (a commit waiting
    /// for the local disk is answered once a sync is reported).
    pub file_ops: Vec<FileOp>,
}

/// What [`Node::end_data_step`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataStepEnd {
    /// The in-sync claims changed (the node's report carries them; drive it again to send it
    /// at once).
    pub claims_changed: bool,
    /// Some commit here may wait for the local disk (a primary with no STANDBY in step): the
    /// files' syncs should not be spaced out.
    pub awaits_local_durability: bool,
}

impl<D: Disk> Node<D> {
    /// A replica read back from its file at start, with the file's generation (distinct per
    /// file) and its length in bytes.
    pub fn load_replica(
        &mut self,
        id: ReplicaId,
        replica: ShardReplica,
        complete: bool,
        generation: u64,
        file_len: usize,
    ) {
        self.books
            .recovered(id.clone(), generation, replica.version(), file_len);
        self.data.load(id, replica, complete);
    }

    /// A message from another node's data plane.
    pub fn on_data_peer(&mut self, now: Time, from: NodeId, message: DataMessage) {
        self.data.on_peer(now, from, message);
    }

    /// A unit's checkpoint or stream call.
    pub fn on_unit_data(
        &mut self,
        now: Time,
        unit: &UnitName,
        generation: u64,
        id: u64,
        request: DataRequest,
    ) {
        self.data.on_unit(now, unit, generation, id, request);
    }

    /// An inbound stream message for `shard` (from its ingress or a client).
    pub fn accept_message(
        &mut self,
        now: Time,
        shard: &ShardName,
        message: StreamMessage,
    ) -> Result<Accepted, NotAccepted> {
        self.data.accept(now, shard, message)
    }

    /// Syncs of replica files reported: the versions they made durable reach the data plane,
    /// and a file that grew well past its replica starts its compaction.
    pub fn on_replicas_synced(&mut self, reports: Vec<Synced>) {
        for (id, version) in self.books.synced(reports) {
            self.data.persisted(&id, version);
            if let Some(replica) = self.data.replica(&id) {
                let complete = self.data.is_complete(&id);
                self.books.start_compaction(&id, replica, complete);
            }
        }
    }

    /// A compacted replica file was put in place (or not).
    pub fn on_compaction_installed(&mut self, done: Installed) {
        if let Some((id, version)) = self.books.installed(done) {
            self.data.persisted(&id, version);
        }
    }

    /// Whether the data plane holds work a step's budget left for later.
    pub fn has_data_work(&self) -> bool {
        self.data.has_pending_work()
    }

    /// Whether committed Raft entries wait to be applied (a drive applies a bounded amount):
    /// drive again once timers and messages had their turn.
    pub fn has_raft_work(&self) -> bool {
        self.replica.has_unapplied()
    }

    /// Starts a data step on what the node committed: the data view (rebuilt only when the
    /// applied index moved) and the lease.
    pub fn begin_data_step(&mut self, now: Time) -> DataStepStart {
        let applied = self.replica.applied_index();
        let state_moved = self.data_applied != Some(applied);
        if state_moved {
            let changes = std::mem::take(&mut self.data_changes);
            match &mut self.moved_shards {
                MovedShards::Some(_) if changes.topology => self.moved_shards = MovedShards::All,
                MovedShards::Some(moved) => moved.extend(changes.shards.iter().cloned()),
                MovedShards::All => {}
            }
            if self.data_applied.is_none() {
                let view = DataView::from_state(self.replica.state(), self.id);
                self.data.set_view(now, view);
            } else {
                // Only what the applied entries changed: a step costs the shards they touched.
                let changed = self
                    .data
                    .view()
                    .changes(self.replica.state(), self.id, &changes);
                if !changed.is_empty() {
                    self.data.update_view(now, changed);
                }
            }
            self.data_applied = Some(applied);
        }
        let lease = self.lease_until(now);
        let lease_lapsed =
            lease.is_none() && self.data_leased && !self.data.active_shards().is_empty();
        self.data_leased = lease.is_some();
        self.data.set_lease(lease);
        self.data.begin_step();
        DataStepStart {
            state_moved,
            lease_lapsed,
        }
    }

    /// The shards whose committed record moved since the last call (every shard at the first
    /// call and after a topology change), as of the last [`Node::begin_data_step`]: what
    /// follows the committed shards outside the node (such as the processing restrictions
    /// told to units) follows these.
    pub fn take_moved_shards(&mut self) -> MovedShards {
        std::mem::replace(
            &mut self.moved_shards,
            MovedShards::Some(std::collections::BTreeSet::new()),
        )
    }

    /// The next round of the data step's output, with the file operations it queued; `None`
    /// when there is nothing more.
    pub fn take_data_round(&mut self, now: Time) -> Option<DataRound> {
        let output = self.data.take_output(now);
        if output.is_empty() && !self.books.has_ops() {
            return None;
        }
        for (id, action) in output.persist {
            self.books.apply(&id, action);
        }
        Some(DataRound {
            messages: output.messages,
            replies: output.replies,
            deliveries: output.deliveries,
            events: output.events,
            file_ops: self.books.take_ops(),
        })
    }

    /// Ends the data step: the data plane's in-sync claims go into the node's report.
    pub fn end_data_step(&mut self) -> DataStepEnd {
        let mut claims_changed = false;
        for (shard, claim) in self.data.take_claims_change() {
            if self.in_sync_claims.get(&shard) == claim.as_ref() {
                continue;
            }
            claims_changed = true;
            match claim {
                Some(claim) => {
                    if Self::claim_pending(self.replica.state(), &shard, &claim) {
                        self.pending_claims.insert(shard.clone(), claim.clone());
                    } else {
                        self.pending_claims.remove(&shard);
                    }
                    self.in_sync_claims.insert(shard, claim);
                }
                None => {
                    self.pending_claims.remove(&shard);
                    self.in_sync_claims.remove(&shard);
                }
            }
        }
        if claims_changed {
            self.reconcile_due = true;
        }
        DataStepEnd {
            claims_changed,
            awaits_local_durability: self.data.awaits_local_durability(),
        }
    }

    // ----- read-only views, for status and the simulation's checkers -----

    /// The data plane's view of the committed state.
    pub fn data_view(&self) -> &DataView {
        self.data.view()
    }

    /// The checkpoint replica of `id`, if this node keeps it.
    pub fn checkpoint_replica(&self, id: &ReplicaId) -> Option<&ShardReplica> {
        self.data.replica(id)
    }

    /// Every checkpoint replica this node keeps.
    pub fn checkpoint_replicas(&self) -> impl Iterator<Item = (&ReplicaId, &ShardReplica)> + '_ {
        self.data.replicas()
    }

    /// Whether the replica of `id` is complete (no state transfer into it left unfinished).
    pub fn checkpoint_replica_complete(&self, id: &ReplicaId) -> bool {
        self.data.is_complete(id)
    }

    /// Whether the replica of `id` was verified against its primary's digest.
    pub fn checkpoint_replica_verified(&self, id: &ReplicaId) -> bool {
        self.data.is_verified(id)
    }

    /// What the data plane knows of the replica of `id`, in one line (for traces).
    pub fn describe_checkpoint_replica(&self, id: &ReplicaId) -> String {
        self.data.describe(id)
    }

    /// The replication sessions of the shards this node is primary for.
    pub fn replication_status(&self, now: Time) -> Vec<ReplicaStatus> {
        self.data.status(now)
    }

    /// Bytes of records in the replica file of `id` as of its last sync.
    pub fn replica_file_len(&self, id: &ReplicaId) -> Option<usize> {
        self.books.file_len(id)
    }

    /// Checks the data plane's per-replica caches against a walk over every replica (for the
    /// simulation; costs a walk).
    pub fn check_data_caches(&self) -> Result<(), String> {
        self.data.check_claim_cache()?;
        let claims = self.data.cached_claims();
        if claims != self.in_sync_claims {
            return Err(format!(
                "the node's in-sync claims {:?} are not its data plane's {claims:?}",
                self.in_sync_claims
            ));
        }
        let state = self.replica.state();
        let pending: std::collections::BTreeMap<_, _> = claims
            .into_iter()
            .filter(|(shard, claim)| Self::claim_pending(state, shard, claim))
            .collect();
        if pending != self.pending_claims {
            return Err(format!(
                "the node's pending claims {:?} are not {pending:?}",
                self.pending_claims
            ));
        }
        Ok(())
    }
}
