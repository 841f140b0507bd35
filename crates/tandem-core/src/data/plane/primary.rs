//! A shard's primary: commit intake (checked, then applied as an op of its own or merged into
//! the open commit, see [`extend_open_commit`]), the op log that catches STANDBYs up with a
//! delta ([`OpLog`]), and the wait sets that hold sync commits and flushes (and async commits
//! while the wait set lags) until every member applied them ([`safe_version`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::data::protocol::{DataReply, RefusalCode};
use crate::data::replica::{ApplyError, ShardReplica};
use crate::data::{check_writes, writes_bytes, Op, OpKind, Write, Writes};
use crate::ids::UnitName;
use crate::time::Time;

use super::claims::ClaimLog;
use super::session::Session;
use super::view::ShardView;
use super::{error, DataEvent, DataPlane, PersistAction, ReplicaId, SlotRole};

/// The most recent ops of a replica, for deltas.
#[derive(Debug, Clone, Default)]
pub(super) struct OpLog {
    ops: VecDeque<Op>,
    /// For each op held, the bytes (as [`Op::size`] counts them) pushed before it, counted
    /// since the log was made.
    starts: VecDeque<u64>,
    /// Bytes pushed since the log was made (an op that grows by a merged commit counts its
    /// growth here too).
    total: u64,
}

impl OpLog {
    pub(super) fn push(&mut self, op: Op, retain_bytes: usize) {
        if let Some(last) = self.ops.back() {
            if last.seq + 1 != op.seq {
                self.clear();
            }
        }
        self.starts.push_back(self.total);
        self.total += op.size() as u64;
        self.ops.push_back(op);
        while self.bytes() > retain_bytes && self.ops.len() > 1 {
            self.ops.pop_front();
            self.starts.pop_front();
        }
    }

    /// Bytes of the ops held.
    fn bytes(&self) -> usize {
        self.starts
            .front()
            .map_or(0, |first| (self.total - first) as usize)
    }

    /// The last op grew by `bytes` (a commit merged into it).
    pub(super) fn grew(&mut self, bytes: usize) {
        self.total += bytes as u64;
    }

    pub(super) fn clear(&mut self) {
        self.ops.clear();
        self.starts.clear();
    }

    /// Bytes of the ops after `after` up to and including `upto`; `None` when some of them
    /// are no longer held (whoever has only `after` is further behind than the log reaches).
    fn bytes_between(&self, after: u64, upto: u64) -> Option<u64> {
        if after >= upto {
            return Some(0);
        }
        let first = self.ops.front()?.seq;
        let last = self.ops.back()?.seq;
        if after + 1 < first || upto > last {
            return None;
        }
        let start = self.starts[(after + 1 - first) as usize];
        let end = if upto == last {
            self.total
        } else {
            self.starts[(upto + 1 - first) as usize]
        };
        Some(end - start)
    }

    /// The op `seq`, if retained.
    pub(super) fn get(&self, seq: u64) -> Option<&Op> {
        let first = self.ops.front()?.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.ops.get(index)
    }
}

/// A sync commit, flush or lag-bound async commit waiting.
#[derive(Debug, Clone)]
pub(super) struct Waiter {
    pub(super) unit: UnitName,
    pub(super) generation: u64,
    pub(super) request: u64,
    pub(super) seq: u64,
    /// What to answer: a commit or a flush.
    pub(super) flush: bool,
}

/// A primary replica's state.
#[derive(Debug, Clone)]
pub(super) struct Primary {
    pub(super) epoch: u64,
    /// It stays passive (no commits, no messages, no sessions, no claims) until the cluster
    /// gives the shard a new epoch, because its replica cannot be what the cluster takes it
    /// for: the node restarted while this replica was the primary (its file may miss what the
    /// previous run acknowledged without waiting for the disk, and the ops it would create
    /// could collide with that run's at the same epoch), or the cluster continues the shard
    /// from this replica's memory ([`ShardView::continued_in_memory`]) while the replica is
    /// [`Slot::suspect`] (read back after a restart, or emptied, since the in-sync record that
    /// promotion rests on was made). Serving it would lose acknowledged writes with no
    /// possible loss reported; passive, it waits for the cluster to take the role away (the
    /// agent reports its restart; the next promotion is judged without it).
    pub(super) passive: bool,
    pub(super) sessions: BTreeMap<UnitName, Session>,
    pub(super) waiters: VecDeque<Waiter>,
    pub(super) lag_waiters: VecDeque<Waiter>,
    /// (instance, seq) of the last message delivered to the unit.
    pub(super) delivered: Option<(u64, u64)>,
    /// Since when a member of the wait set holds back the oldest waiter.
    pub(super) held_back_since: Option<Time>,
    /// The last batch of queued commits applied: (unit instance, chain, index).
    pub(super) queued_chain: Option<(u64, u64, u64)>,
    /// The highest version whose effect left this primary: a sync commit (or flush)
    /// answered, or a stream message delivered. A STANDBY is claimed in sync only once it
    /// has acknowledged this far, so that a promotion the cluster deems lossless is.
    pub(super) exposed: u64,
    /// STANDBYs of the view without a session here, and since when (or when they were last
    /// told so): one that does not follow within `resend_after` may believe it still has a
    /// session that this primary dropped, and is sent a `Stale`.
    pub(super) orphans: BTreeMap<UnitName, Time>,
}

impl Primary {
    /// A new primary at `epoch`, without sessions or waiters.
    pub(super) fn new(epoch: u64, passive: bool) -> Self {
        Self {
            epoch,
            passive,
            sessions: BTreeMap::new(),
            waiters: VecDeque::new(),
            lag_waiters: VecDeque::new(),
            delivered: None,
            held_back_since: None,
            queued_chain: None,
            exposed: 0,
            orphans: BTreeMap::new(),
        }
    }
}

/// The smallest acknowledged version over a primary's wait set; with an empty wait set, what
/// is durable on the local disk (nothing else holds the writes then). Besides the sessions in
/// step and the STANDBYs the view has in sync, the wait set holds the STANDBYs a claim of this
/// primary included while the cluster may still apply that claim (`claims`): a STANDBY that
/// left the verified set after it was claimed must not miss writes acknowledged before that
/// claim is recorded, or a STANDBY recorded in sync could lack them.
pub(super) fn safe_version(
    primary: &Primary,
    view: &ShardView,
    claims: Option<&ClaimLog>,
    version: u64,
    durable: u64,
) -> u64 {
    let claimed: BTreeSet<&UnitName> = ClaimLog::pending(claims, view).collect();
    let member = |unit: &UnitName| view.in_sync.contains(unit) || claimed.contains(unit);
    if !has_wait_set(primary, view, claims) {
        return version.min(durable);
    }
    let mut safe = version;
    for (unit, session) in &primary.sessions {
        if session.in_step() || member(unit) {
            safe = safe.min(session.acked_version());
        }
    }
    for unit in view.in_sync.iter().chain(claimed.iter().copied()) {
        if !primary.sessions.contains_key(unit) {
            safe = 0;
        }
    }
    safe
}

/// Whether a primary's wait set (see [`safe_version`]) has anyone in it: a session in step, a
/// STANDBY the view has in sync, or one a pending claim included. With nobody, its commits
/// wait for the local disk instead.
pub(super) fn has_wait_set(primary: &Primary, view: &ShardView, claims: Option<&ClaimLog>) -> bool {
    !view.in_sync.is_empty()
        || ClaimLog::pending(claims, view).next().is_some()
        || primary.sessions.values().any(|session| session.in_step())
}

/// Most writes a commit merged from several (see [`extend_open_commit`]) may hold.
pub(super) const MERGED_WRITES_MAX: usize = 256;
/// Most bytes (keys and values) a commit merged from several may hold.
const MERGED_BYTES_MAX: usize = 1024 * 1024;

/// Merges a commit into the replica's last op when that op is a commit of this primary
/// (`epoch`) that has not left yet: created since the plane's output was last taken, so no
/// session has sent it and its file write is still queued in `persist`. Commits that arrive
/// together (a unit with many in flight) then cost one op: one file record, one item per
/// STANDBY, one acknowledgement. Applying the merged op is applying its commits in order, so
/// every replica ends the same; each commit is answered with the merged op's version.
/// Returns that version, or `None` when the commit needs an op of its own (nothing changed).
fn extend_open_commit(
    replica: &mut ShardReplica,
    oplog: &mut OpLog,
    persist: &mut [(ReplicaId, PersistAction)],
    id: &ReplicaId,
    epoch: u64,
    writes: &[Write],
    consumed: Option<u64>,
) -> Result<Option<u64>, ApplyError> {
    let seq = replica.version();
    /// The writes and consumed position of `op` if it is a commit at `seq` and `epoch`.
    fn open_commit(op: &mut Op, seq: u64, epoch: u64) -> Option<(&mut Writes, &mut Option<u64>)> {
        match &mut op.kind {
            OpKind::Commit { writes, consumed } if op.seq == seq && op.epoch == epoch => {
                Some((writes, consumed))
            }
            _ => None,
        }
    }
    let Some((held, held_consumed)) = oplog
        .ops
        .back_mut()
        .and_then(|last| open_commit(last, seq, epoch))
    else {
        return Ok(None);
    };
    if held.len() + writes.len() > MERGED_WRITES_MAX
        || writes_bytes(held) + writes_bytes(writes) > MERGED_BYTES_MAX
    {
        return Ok(None);
    }
    // Its file write is this replica's last queued action: nothing was written after it.
    let queued = match persist.iter_mut().rev().find(|(queued, _)| queued == id) {
        Some((_, PersistAction::Op(queued))) => open_commit(queued, seq, epoch),
        _ => None,
    };
    let Some((queued_writes, queued_consumed)) = queued else {
        return Ok(None);
    };
    replica.extend_last_commit(epoch, writes, consumed)?;
    // The queued file write shares the op log's writes: it lets go of them, so that they are
    // the op log's alone and grow in place, then shares them again (nothing else holds an op
    // that has not left; if something did, `make_mut` would copy, still correct).
    *queued_writes = Writes::default();
    held.make_mut().extend_from_slice(writes);
    *queued_writes = held.clone();
    *held_consumed = (*held_consumed).max(consumed);
    *queued_consumed = (*queued_consumed).max(consumed);
    oplog.grew(writes_bytes(writes) + 16 * writes.len());
    Ok(Some(seq))
}

/// A unit's commit request, as it came.
pub(super) struct CommitRequest {
    /// The epoch the unit holds ACTIVE at.
    pub(super) epoch: u64,
    pub(super) writes: Vec<Write>,
    /// Stream position consumed.
    pub(super) consumed: Option<u64>,
    /// Answer once the wait set applied it (else once it lags little enough).
    pub(super) sync: bool,
    /// `(chain, index)` of a batch of queued commits.
    pub(super) chain: Option<(u64, u64)>,
}

/// Whether `primary` takes `commit` from instance `generation` of its unit now; the refusal
/// otherwise.
fn check_commit(
    primary: &Primary,
    view: &ShardView,
    id: &ReplicaId,
    generation: u64,
    commit: &CommitRequest,
    leased: bool,
    replica: &ShardReplica,
) -> Result<(), DataReply> {
    let (epoch, consumed, chain) = (commit.epoch, commit.consumed, commit.chain);
    let writes = &commit.writes;
    if let Some((chain, index)) = chain {
        if index > 0 && primary.queued_chain != Some((generation, chain, index - 1)) {
            return Err(error(
                RefusalCode::QueueBroken,
                format!(
                    "queued batch {index} of chain {chain} does not follow the last batch \
                         applied (an earlier one was refused)"
                ),
            ));
        }
    }
    if primary.passive && view.acting && primary.epoch == view.epoch {
        return Err(error(
            RefusalCode::NotActive,
            format!(
                "the replica of unit {} for shard {} here may miss writes the \
                     cluster counts on (its node restarted, or it was emptied); it \
                     takes no commits until the cluster moves the shard on",
                id.unit, id.shard
            ),
        ));
    }
    if !view.acting || primary.epoch != view.epoch {
        return Err(error(
            RefusalCode::NotActive,
            format!(
                "unit {} no longer acts for shard {} (it is quiesced)",
                id.unit, id.shard
            ),
        ));
    }
    if epoch != primary.epoch {
        return Err(error(
            RefusalCode::StaleEpoch,
            format!(
                "commit at epoch {epoch}, the shard is at epoch {}",
                primary.epoch
            ),
        ));
    }
    if !leased {
        return Err(error(
            RefusalCode::NoLease,
            "this node's lease ran out (it lost the cluster's quorum); the unit \
                 must not act",
        ));
    }
    if let Err(reason) = check_writes(writes) {
        return Err(error(RefusalCode::BadRequest, reason));
    }
    if let Some(consumed) = consumed {
        let delivered = primary
            .delivered
            .filter(|(instance, _)| *instance == generation)
            .map_or(replica.consumed(), |(_, seq)| seq);
        if consumed > delivered {
            return Err(error(
                RefusalCode::BadRequest,
                format!(
                    "consumes up to {consumed}, but the last message delivered \
                         is {delivered}"
                ),
            ));
        }
    }
    Ok(())
}

impl Primary {
    /// STANDBYs that lagged and acknowledged `version` since are back in step.
    pub(super) fn end_lagging(&mut self, version: u64) {
        for session in self.sessions.values_mut() {
            session.catch_up(version);
        }
    }

    /// Answers the sync commits and flushes the wait set has caught up with (`safe`), while
    /// this node holds a lease (`leased`).
    pub(super) fn answer_waiters(
        &mut self,
        safe: u64,
        leased: bool,
        replies: &mut Vec<(UnitName, u64, u64, DataReply)>,
    ) {
        // Without a lease, the view may be far behind the committed state: a STANDBY this
        // primary claimed may be committed in sync (and even promoted) though the view does
        // not show it, and it leaves the wait set (lagging, not in the view's in-sync set)
        // while it may lack the write. A lease means the view has caught up with what the
        // leader had recently; until then the answer waits, like deliveries do.
        while leased
            && self
                .waiters
                .front()
                .is_some_and(|waiter| waiter.seq <= safe)
        {
            let waiter = self.waiters.pop_front().expect("front exists");
            self.exposed = self.exposed.max(waiter.seq);
            let answer = if waiter.flush {
                DataReply::Done {
                    version: waiter.seq,
                }
            } else {
                DataReply::Committed {
                    version: waiter.seq,
                }
            };
            replies.push((waiter.unit, waiter.generation, waiter.request, answer));
        }
    }

    /// Answers the async commits the wait set (at `safe`) lags at most `async_lag_max` ops
    /// and at most half the op log's bytes (`lag_bytes_max`) behind: a STANDBY further behind
    /// than the log reaches would need a whole state transfer (with large values,
    /// `async_lag_max` ops are far more).
    pub(super) fn answer_lag_waiters(
        &mut self,
        safe: u64,
        async_lag_max: u64,
        oplog: &OpLog,
        lag_bytes_max: u64,
        replies: &mut Vec<(UnitName, u64, u64, DataReply)>,
    ) {
        while self.lag_waiters.front().is_some_and(|waiter| {
            waiter.seq.saturating_sub(safe) <= async_lag_max
                && oplog
                    .bytes_between(safe, waiter.seq)
                    .is_some_and(|bytes| bytes <= lag_bytes_max)
        }) {
            let waiter = self.lag_waiters.pop_front().expect("front exists");
            replies.push((
                waiter.unit,
                waiter.generation,
                waiter.request,
                DataReply::Committed {
                    version: waiter.seq,
                },
            ));
        }
    }

    /// A member of the wait set holding a waiter back longer than `sync_timeout` stops
    /// counting as verified (it lags); the cluster then takes it out of sync and the waiters
    /// go on.
    pub(super) fn watch_held_back(
        &mut self,
        now: Time,
        sync_timeout: std::time::Duration,
        version: u64,
        id: &ReplicaId,
        events: &mut Vec<DataEvent>,
    ) {
        let held_back = !self.waiters.is_empty() || !self.lag_waiters.is_empty();
        if !held_back {
            self.held_back_since = None;
            return;
        }
        let since = *self.held_back_since.get_or_insert(now);
        if now.saturating_since(since) >= sync_timeout {
            for (standby, session) in &mut self.sessions {
                if let Some(behind) = session.mark_lagging(version) {
                    events.push(DataEvent::Lagging {
                        standby: ReplicaId {
                            shard: id.shard.clone(),
                            unit: standby.clone(),
                        },
                        behind,
                    });
                }
            }
            self.held_back_since = Some(now);
        }
    }
}

impl DataPlane {
    /// A flush: answered once everything committed so far is on the wait set (at once when
    /// the replica is no primary).
    pub(super) fn flush(
        &mut self,
        id: &ReplicaId,
        generation: u64,
        request_id: u64,
    ) -> Option<DataReply> {
        let slot = self.slots.get_mut(id)?;
        match &mut slot.role {
            SlotRole::Primary(primary) => {
                primary.waiters.push_back(Waiter {
                    unit: id.unit.clone(),
                    generation,
                    request: request_id,
                    seq: slot.replica.version(),
                    flush: true,
                });
                None
            }
            _ => Some(DataReply::Done {
                version: slot.replica.version(),
            }),
        }
    }

    /// A commit of instance `generation` of replica `id`'s unit: checked, applied, and queued
    /// to be answered once the wait set allows (`None`), or refused.
    pub(super) fn commit(
        &mut self,
        leased: bool,
        id: &ReplicaId,
        generation: u64,
        request_id: u64,
        commit: CommitRequest,
    ) -> Option<DataReply> {
        let view = self.view.shards.get(&id.shard)?;
        let slot = self.slots.get_mut(id)?;
        let SlotRole::Primary(primary) = &mut slot.role else {
            return Some(error(
                RefusalCode::NotActive,
                format!("unit {} is not ACTIVE for shard {}", id.unit, id.shard),
            ));
        };
        if let Err(refusal) = check_commit(
            primary,
            view,
            id,
            generation,
            &commit,
            leased,
            &slot.replica,
        ) {
            return Some(refusal);
        }
        let merged = extend_open_commit(
            &mut slot.replica,
            &mut slot.oplog,
            &mut self.out.persist,
            id,
            primary.epoch,
            &commit.writes,
            commit.consumed,
        );
        let seq = match merged {
            Ok(Some(seq)) => seq,
            Ok(None) => {
                let op = Op {
                    seq: slot.replica.version() + 1,
                    epoch: primary.epoch,
                    kind: OpKind::Commit {
                        writes: commit.writes.into(),
                        consumed: commit.consumed,
                    },
                };
                if let Err(reason) = slot.replica.apply(&op) {
                    return Some(error(RefusalCode::BadRequest, reason.to_string()));
                }
                let seq = op.seq;
                self.out
                    .persist
                    .push((id.clone(), PersistAction::Op(op.clone())));
                slot.oplog.push(op, self.config.retain_bytes);
                seq
            }
            Err(reason) => return Some(error(RefusalCode::BadRequest, reason.to_string())),
        };
        if let Some((chain, index)) = commit.chain {
            primary.queued_chain = Some((generation, chain, index));
        }
        let waiter = Waiter {
            unit: id.unit.clone(),
            generation,
            request: request_id,
            seq,
            flush: false,
        };
        if commit.sync {
            primary.waiters.push_back(waiter);
        } else {
            primary.lag_waiters.push_back(waiter);
        }
        None
    }

    /// Answers the waiters of a replica that is no longer this primary (`role` is what it
    /// was): a flush is refused with `code`, a commit's outcome is unknown.
    pub(super) fn fail_waiters(
        &mut self,
        id: &ReplicaId,
        role: SlotRole,
        code: RefusalCode,
        why: &str,
    ) {
        let SlotRole::Primary(primary) = role else {
            return;
        };
        for waiter in primary.waiters.into_iter().chain(primary.lag_waiters) {
            let answer = if waiter.flush {
                error(code, format!("{why} (shard {})", id.shard))
            } else {
                // The commit is in the replica already; whether it survives depends on whether
                // the next ACTIVE got it before the change.
                error(
                    RefusalCode::OutcomeUnknown,
                    format!(
                        "{why} (shard {}) before the commit at version {} was confirmed; it may \
                         or may not be kept: read the section back to know",
                        id.shard, waiter.seq
                    ),
                )
            };
            self.out
                .replies
                .push((waiter.unit, waiter.generation, waiter.request, answer));
        }
    }
}
