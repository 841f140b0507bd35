//! A primary's replication session with one STANDBY: what it sent and had acknowledged, the
//! delta or full state transfer it carries, the digest check that verifies the STANDBY, and
//! the lag that takes a verified STANDBY out of step. [`Session`] owns its transitions (opened,
//! items sent, acknowledged, verified, fallen behind the op log, restarted as a full
//! transfer, lagging, caught up) and checks its invariants at each; the [`DataPlane`] methods
//! here route a STANDBY's `Follow`, `Ack` and `Nack` to them and pump every session of a
//! primary.

use std::collections::VecDeque;

use crate::data::protocol::{DataMessage, Item, ReplicaStatus, SessionStart, TransferStatus};
use crate::data::replica::ShardReplica;
use crate::data::StreamMessage;
use crate::ids::{NodeId, ShardName, UnitName};
use crate::time::Time;

use super::primary::{OpLog, Primary};
use super::view::ShardView;
use super::{DataConfig, DataEvent, DataOutput, DataPlane, ReplicaId, SlotRole};

/// Items per `Items` message when unacknowledged items are sent again.
const RESEND_BATCH_ITEMS: usize = 256;

/// A state transfer in progress on a session.
#[derive(Debug, Clone)]
pub(super) struct Transfer {
    /// Keys in transfer order, as they were when it began.
    order: Vec<Vec<u8>>,
    /// Next key to copy.
    position: usize,
    /// The pending messages were copied.
    messages_done: bool,
    /// Progress.
    status: TransferStatus,
    /// When it began.
    started: Time,
}

impl Transfer {
    /// A transfer of `replica` as it is now.
    fn of(now: Time, replica: &ShardReplica) -> Self {
        let order = replica.transfer_order();
        Self {
            status: TransferStatus {
                sections_total: order.len() as u64,
                bytes_total: replica.section_bytes(),
                ..TransferStatus::default()
            },
            order,
            position: 0,
            messages_done: false,
            started: now,
        }
    }

    /// The next chunk of sections (up to `chunk_bytes`), or else, once, the pending stream
    /// messages if there are any; `None` when everything was copied.
    fn next_item(&mut self, chunk_bytes: usize, replica: &ShardReplica) -> Option<Item> {
        if self.position < self.order.len() {
            let mut sections = Vec::new();
            let mut bytes = 0usize;
            while self.position < self.order.len() && bytes < chunk_bytes {
                let key = &self.order[self.position];
                self.position += 1;
                if let Some(section) = replica.get(key) {
                    bytes += key.len() + section.value.len();
                    sections.push((key.clone(), section.clone()));
                }
            }
            self.status.sections_sent = self.position as u64;
            self.status.bytes_sent += bytes as u64;
            return Some(Item::Sections(sections));
        }
        if !self.messages_done {
            self.messages_done = true;
            let messages: Vec<(u64, StreamMessage)> = replica
                .pending()
                .map(|(seq, message)| (seq, message.clone()))
                .collect();
            if !messages.is_empty() {
                return Some(Item::Messages(messages));
            }
        }
        None
    }
}

/// The primary's side of a session with one STANDBY.
#[derive(Debug, Clone)]
pub(super) struct Session {
    node: NodeId,
    /// The STANDBY's instance (generation) in the view when the session began.
    generation: u64,
    id: u64,
    /// Number of the next item.
    next_n: u64,
    /// Last item acknowledged.
    acked_n: u64,
    /// The STANDBY's version as acknowledged.
    acked_version: u64,
    /// Items sent, not acknowledged.
    inflight: VecDeque<(u64, Item)>,
    inflight_bytes: usize,
    /// Next op to send; [`Session::LOST`] once the STANDBY is further behind than the op log
    /// reaches.
    next_op: u64,
    transfer: Option<Transfer>,
    verify_sent: bool,
    /// The STANDBY's digest matched in this session (it stays in step since: items apply in
    /// order or the session ends).
    verified: bool,
    /// The STANDBY held commits back longer than the sync timeout: it is left out of the claim
    /// (and, once the cluster took it out of sync, of the wait set) until it catches up.
    lagging: bool,
    /// Last time the STANDBY made progress (or items were re-sent).
    last_progress: Time,
}

impl Session {
    /// `next_op` of a session whose STANDBY is further behind than the op log reaches.
    const LOST: u64 = u64::MAX;

    /// A new session with a STANDBY on `node`: a delta from `delta` when given, else a full
    /// transfer of `replica` as it is now.
    pub(super) fn open(
        now: Time,
        id: u64,
        (node, generation): (NodeId, u64),
        replica: &ShardReplica,
        delta: Option<u64>,
    ) -> Self {
        let version = replica.version();
        let session = Self {
            node,
            generation,
            id,
            next_n: 1,
            acked_n: 0,
            acked_version: delta.unwrap_or(0),
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            next_op: delta.map_or(version + 1, |from| from + 1),
            transfer: delta.is_none().then(|| Transfer::of(now, replica)),
            verify_sent: false,
            verified: false,
            lagging: false,
            last_progress: now,
        };
        session.check_invariants();
        session
    }

    /// The STANDBY's node.
    pub(super) fn node(&self) -> NodeId {
        self.node
    }

    /// The STANDBY's instance (generation) when the session began.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// The STANDBY's version as acknowledged.
    pub(super) fn acked_version(&self) -> u64 {
        self.acked_version
    }

    /// Whether the STANDBY's digest matched in this session.
    pub(super) fn is_verified(&self) -> bool {
        self.verified
    }

    /// Whether the primary counts this STANDBY as in sync.
    pub(super) fn in_step(&self) -> bool {
        self.verified && !self.lagging
    }

    /// Whether nothing of the session waits on a timer: nothing unacknowledged, no transfer,
    /// not lagging and not lost (see [`super::Slot::quiet`]).
    pub(super) fn quiet(&self) -> bool {
        self.inflight.is_empty() && self.transfer.is_none() && !self.lagging && !self.is_lost()
    }

    /// Whether the STANDBY fell further behind than the op log reaches: the session must
    /// start over as a full transfer ([`Session::restart_full`]).
    pub(super) fn is_lost(&self) -> bool {
        self.next_op == Self::LOST
    }

    /// The session's invariants, checked after every transition (O(1)).
    fn check_invariants(&self) {
        // Items are numbered without gaps: the unacknowledged ones are the last ones sent, in
        // order, and the next one follows the last.
        match (self.inflight.front(), self.inflight.back()) {
            (Some((front, _)), Some((back, _))) => {
                assert!(
                    back + 1 == self.next_n && front + self.inflight.len() as u64 == self.next_n,
                    "session {}: items in flight {front}..={back} ({} of them), next {}",
                    self.id,
                    self.inflight.len(),
                    self.next_n
                );
            }
            _ => assert!(
                self.inflight_bytes == 0,
                "session {}: nothing in flight, yet {} bytes counted",
                self.id,
                self.inflight_bytes
            ),
        }
        assert!(
            self.next_n >= 1,
            "session {}: items are numbered from 1",
            self.id
        );
        // A verified session is not in a transfer: verification ends it.
        assert!(
            !(self.verified && self.transfer.is_some()),
            "session {}: verified in the middle of a transfer",
            self.id
        );
        if let Some(transfer) = &self.transfer {
            assert!(
                transfer.position <= transfer.order.len(),
                "session {}: the transfer is past its last key",
                self.id
            );
        }
    }

    /// The STANDBY acknowledged items up to `received` and its replica at `version`, and said
    /// whether its digest matched (`verified`). Returns whether this verified the session.
    pub(super) fn on_ack(
        &mut self,
        now: Time,
        received: u64,
        version: u64,
        verified: Option<bool>,
    ) -> bool {
        let (acked_n, acked_version) = (self.acked_n, self.acked_version);
        if received > self.acked_n {
            self.acked_n = received;
            self.last_progress = now;
            while let Some((n, item)) = self.inflight.front() {
                if *n > received {
                    break;
                }
                self.inflight_bytes -= item.size();
                self.inflight.pop_front();
            }
        }
        self.acked_version = self.acked_version.max(version);
        let became_verified = match verified {
            Some(true) if !self.verified => {
                self.verified = true;
                self.transfer = None;
                true
            }
            Some(false) => {
                self.verified = false;
                false
            }
            _ => false,
        };
        // What the STANDBY acknowledged, it holds: a late or copied Ack never takes it back.
        assert!(
            self.acked_n >= acked_n && self.acked_version >= acked_version,
            "session {}: acknowledgement moved back",
            self.id
        );
        self.check_invariants();
        became_verified
    }

    /// Sends the unacknowledged items from `from_n` on again.
    #[allow(clippy::too_many_arguments)] // The session's message header, unpacked.
    fn resend(
        &mut self,
        now: Time,
        from_n: u64,
        messages: &mut Vec<(NodeId, DataMessage)>,
        shard: &ShardName,
        epoch: u64,
        standby: &UnitName,
    ) {
        let items: Vec<(u64, Item)> = self
            .inflight
            .iter()
            .filter(|(n, _)| *n >= from_n)
            .cloned()
            .collect();
        let mut batch: Vec<Item> = Vec::new();
        let mut first = 0;
        let send = |first: u64, items: Vec<Item>, messages: &mut Vec<(NodeId, DataMessage)>| {
            messages.push((
                self.node,
                DataMessage::Items {
                    shard: shard.clone(),
                    epoch,
                    standby: standby.clone(),
                    session: self.id,
                    first,
                    items,
                },
            ));
        };
        for (n, item) in items {
            if batch.is_empty() {
                first = n;
            }
            batch.push(item);
            if batch.len() >= RESEND_BATCH_ITEMS {
                send(first, std::mem::take(&mut batch), messages);
            }
        }
        if !batch.is_empty() {
            send(first, batch, messages);
        }
        self.last_progress = now;
    }

    /// Sends the unacknowledged items again when the STANDBY made no progress for
    /// `resend_after`.
    fn resend_if_stalled(
        &mut self,
        now: Time,
        standby: &UnitName,
        epoch: u64,
        sending: &mut Sending<'_>,
    ) {
        if !self.inflight.is_empty()
            && now.saturating_since(self.last_progress) >= sending.config.resend_after
        {
            let first = self.acked_n + 1;
            self.resend(
                now,
                first,
                &mut sending.out.messages,
                &sending.id.shard,
                epoch,
                standby,
            );
        }
    }

    /// The next item to send: the next op, then the next transfer chunk, then (once nothing
    /// else is left) the digest to verify. `None` when there is nothing to send, or when the
    /// next op is no longer in the op log (the session is then lost).
    fn next_item(
        &mut self,
        chunk_bytes: usize,
        replica: &ShardReplica,
        oplog: &OpLog,
    ) -> Option<Item> {
        if self.next_op <= replica.version() {
            let Some(op) = oplog.get(self.next_op) else {
                self.fall_behind();
                return None;
            };
            self.next_op += 1;
            return Some(Item::Op(op.clone()));
        }
        if let Some(item) = self
            .transfer
            .as_mut()
            .and_then(|transfer| transfer.next_item(chunk_bytes, replica))
        {
            return Some(item);
        }
        if !self.verify_sent {
            self.verify_sent = true;
            return Some(Item::Verify {
                version: replica.version(),
                digest: replica.digest(),
            });
        }
        None
    }

    /// The STANDBY is further behind than the op log reaches: the session sends nothing more
    /// and starts over as a full transfer.
    fn fall_behind(&mut self) {
        self.next_op = Self::LOST;
        self.check_invariants();
    }

    /// Records `item` as sent, numbered next; its number.
    fn record_sent(&mut self, item: Item) -> u64 {
        let n = self.next_n;
        self.inflight_bytes += item.size();
        self.inflight.push_back((n, item));
        self.next_n += 1;
        self.check_invariants();
        n
    }

    /// Sends what the session's window and the step's budget allow; whether the budget held
    /// some back.
    fn pump(&mut self, standby: &UnitName, epoch: u64, sending: &mut Sending<'_>) -> bool {
        let (config, id) = (sending.config, sending.id);
        let mut batch: Vec<Item> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut held_back = false;
        let mut first = self.next_n;
        let (node, session_id) = (self.node, self.id);
        let flush = |batch: &mut Vec<Item>, first: u64, out: &mut DataOutput| {
            if batch.is_empty() {
                return;
            }
            out.messages.push((
                node,
                DataMessage::Items {
                    shard: id.shard.clone(),
                    epoch,
                    standby: standby.clone(),
                    session: session_id,
                    first,
                    items: std::mem::take(batch),
                },
            ));
        };
        while self.inflight_bytes < config.window_bytes {
            if *sending.budget == 0 {
                held_back = true;
                break;
            }
            let Some(item) = self.next_item(config.chunk_bytes, sending.replica, sending.oplog)
            else {
                break;
            };
            let size = item.size();
            if batch.is_empty() {
                first = self.next_n;
            }
            self.record_sent(item.clone());
            *sending.budget = sending.budget.saturating_sub(size.max(1));
            batch.push(item);
            batch_bytes += size;
            if batch_bytes >= config.batch_bytes {
                flush(&mut batch, first, sending.out);
                batch_bytes = 0;
            }
        }
        flush(&mut batch, first, sending.out);
        held_back
    }

    /// The session starts over as a full transfer of `replica` as it is now, as session `id`
    /// with the same STANDBY.
    fn restart_full(&mut self, now: Time, id: u64, replica: &ShardReplica) {
        *self = Self::open(now, id, (self.node, self.generation), replica, None);
    }

    /// The STANDBY held a commit back past the sync timeout: if it is in step and behind
    /// `version`, it stops counting as in sync. Returns how far behind it is, if so.
    pub(super) fn mark_lagging(&mut self, version: u64) -> Option<u64> {
        if !(self.in_step() && self.acked_version < version) {
            return None;
        }
        self.lagging = true;
        self.check_invariants();
        Some(version - self.acked_version)
    }

    /// A lagging STANDBY that acknowledged `version` is back in step (if verified).
    pub(super) fn catch_up(&mut self, version: u64) {
        if self.lagging && self.acked_version >= version {
            self.lagging = false;
            self.check_invariants();
        }
    }

    /// Sends the session's `Start` and records the event.
    #[allow(clippy::too_many_arguments)] // The session's message header, unpacked.
    fn announce(
        &self,
        out: &mut DataOutput,
        shard: &ShardName,
        standby: &UnitName,
        epoch: u64,
        replica: &ShardReplica,
        have_version: u64,
    ) {
        let start = match &self.transfer {
            None => SessionStart::Delta {
                from: self.next_op - 1,
            },
            Some(transfer) => SessionStart::Full {
                snapshot: replica.snapshot(),
                sections: transfer.status.sections_total,
                bytes: transfer.status.bytes_total,
            },
        };
        out.events.push(DataEvent::SessionStarted {
            standby: ReplicaId {
                shard: shard.clone(),
                unit: standby.clone(),
            },
            epoch,
            full: self.transfer.is_some(),
            count: match &self.transfer {
                Some(transfer) => transfer.status.sections_total,
                None => replica.version().saturating_sub(have_version),
            },
            bytes: self
                .transfer
                .as_ref()
                .map_or(0, |transfer| transfer.status.bytes_total),
        });
        out.messages.push((
            self.node,
            DataMessage::Start {
                shard: shard.clone(),
                epoch,
                standby: standby.clone(),
                session: self.id,
                start,
            },
        ));
    }
}

/// What a primary's sessions send from and to, borrowed apart from its slot and the plane.
pub(super) struct Sending<'a> {
    pub(super) config: &'a DataConfig,
    pub(super) replica: &'a ShardReplica,
    pub(super) oplog: &'a OpLog,
    /// The primary's replica.
    pub(super) id: &'a ReplicaId,
    pub(super) out: &'a mut DataOutput,
    /// Bytes the sessions may still send in this step.
    pub(super) budget: &'a mut usize,
}

impl Primary {
    /// Sends again what stalled sessions have unacknowledged, and what each session's window
    /// allows; whether the step's budget held some back.
    pub(super) fn send_sessions(&mut self, now: Time, sending: &mut Sending<'_>) -> bool {
        let mut held_back = false;
        for (standby, session) in &mut self.sessions {
            session.resend_if_stalled(now, standby, self.epoch, sending);
            held_back |= session.pump(standby, self.epoch, sending);
        }
        held_back
    }

    /// A session whose STANDBY is further behind than the op log reaches starts over as a full
    /// transfer (a new session id from `next_session`); whether the step's budget held some of
    /// what it sends back.
    pub(super) fn restart_lost_sessions(
        &mut self,
        now: Time,
        next_session: &mut u64,
        sending: &mut Sending<'_>,
    ) -> bool {
        let mut held_back = false;
        for (standby, session) in &mut self.sessions {
            if !session.is_lost() {
                continue;
            }
            *next_session += 1;
            session.restart_full(now, *next_session, sending.replica);
            session.announce(
                sending.out,
                &sending.id.shard,
                standby,
                self.epoch,
                sending.replica,
                0,
            );
            held_back |= session.pump(standby, self.epoch, sending);
        }
        held_back
    }

    /// A STANDBY that has no session here and does not follow may hold on to one this primary
    /// dropped (when its view saw the STANDBY leave and come back and the STANDBY's own view
    /// did not): it would wait for items forever. Tell it, every `resend_after`.
    pub(super) fn tell_orphans(
        &mut self,
        now: Time,
        view: &ShardView,
        id: &ReplicaId,
        resend_after: std::time::Duration,
        messages: &mut Vec<(NodeId, DataMessage)>,
    ) {
        self.orphans
            .retain(|unit, _| view.standbys.contains_key(unit));
        if self.passive || self.epoch != view.epoch {
            return;
        }
        for (standby, node) in &view.standbys {
            if self.sessions.contains_key(standby) || *standby == id.unit {
                self.orphans.remove(standby);
                continue;
            }
            let since = self.orphans.entry(standby.clone()).or_insert(now);
            if now.saturating_since(*since) >= resend_after {
                *since = now;
                messages.push((
                    *node,
                    DataMessage::Stale {
                        shard: id.shard.clone(),
                        epoch: self.epoch,
                        standby: standby.clone(),
                    },
                ));
            }
        }
    }
}

impl DataPlane {
    /// Each primary's sessions, for status.
    pub fn status(&self, now: Time) -> Vec<ReplicaStatus> {
        let mut status = Vec::new();
        for (id, slot) in &self.slots {
            let SlotRole::Primary(primary) = &slot.role else {
                continue;
            };
            for (standby, session) in &primary.sessions {
                status.push(ReplicaStatus {
                    shard: id.shard.clone(),
                    standby: standby.clone(),
                    epoch: primary.epoch,
                    primary_version: slot.replica.version(),
                    standby_version: session.acked_version,
                    verified: session.in_step(),
                    transfer: session.transfer.as_ref().map(|transfer| TransferStatus {
                        elapsed_us: now.saturating_since(transfer.started).as_micros() as u64,
                        ..transfer.status.clone()
                    }),
                });
            }
        }
        status
    }

    /// A STANDBY asks primary `id` for a session: a delta from `have_version` when the op log
    /// reaches it and the histories agree, else a full transfer.
    pub(super) fn on_follow(
        &mut self,
        now: Time,
        from: NodeId,
        id: ReplicaId,
        epoch: u64,
        standby: UnitName,
        (have_version, have_epoch, full): (u64, u64, bool),
    ) {
        let Some(view) = self.view.shards.get(&id.shard) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let SlotRole::Primary(primary) = &mut slot.role else {
            self.out.messages.push((
                from,
                DataMessage::Stale {
                    shard: id.shard.clone(),
                    epoch: view.epoch,
                    standby,
                },
            ));
            return;
        };
        if primary.passive {
            return;
        }
        if epoch != primary.epoch || view.standbys.get(&standby) != Some(&from) {
            if epoch < primary.epoch {
                self.out.messages.push((
                    from,
                    DataMessage::Stale {
                        shard: id.shard.clone(),
                        epoch: primary.epoch,
                        standby,
                    },
                ));
            }
            return;
        }
        let version = slot.replica.version();
        let oplog = &slot.oplog;
        let reaches = |base: u64| base == version || oplog.get(base + 1).is_some();
        let delta = if !full
            && have_version <= version
            && slot.replica.history().epoch_at(have_version) == Some(have_epoch)
            && reaches(have_version)
        {
            Some(have_version)
        } else if !full {
            // The network delays and duplicates: a Follow for a STANDBY whose session here is
            // in step may be a late copy of one sent before that session started, describing
            // the replica as it was then (empty, say), not as it is. Taken at its word it
            // would start a full transfer of a replica this primary verified and may have
            // claimed in sync. The session knows better: the STANDBY holds what it
            // acknowledged, so the new session is a delta from there (a STANDBY that holds
            // something else refuses it and follows again with its replica as it is).
            primary
                .sessions
                .get(&standby)
                .filter(|session| session.node == from && session.in_step())
                .map(|session| session.acked_version)
                .filter(|acked| *acked <= version && reaches(*acked))
        } else {
            None
        };
        self.next_session += 1;
        let generation = view.standby_generations.get(&standby).copied().unwrap_or(0);
        let session = Session::open(
            now,
            self.next_session,
            (from, generation),
            &slot.replica,
            delta,
        );
        session.announce(
            &mut self.out,
            &id.shard,
            &standby,
            epoch,
            &slot.replica,
            delta.unwrap_or(have_version),
        );
        primary.sessions.insert(standby, session);
        self.dirty.insert(id);
    }

    /// The session `session_id` of the primary here of `shard` at `epoch` with `standby` on
    /// `from`, if there is one; the primary's replica is marked touched.
    fn session_mut(
        &mut self,
        shard: &ShardName,
        epoch: u64,
        standby: &UnitName,
        session_id: u64,
        from: NodeId,
    ) -> Option<(ReplicaId, &mut Session)> {
        let view = self.view.shards.get(shard)?;
        let (unit, node) = view.primary.as_ref()?;
        if *node != self.node {
            return None;
        }
        let id = ReplicaId {
            shard: shard.clone(),
            unit: unit.clone(),
        };
        let slot = self.slots.get_mut(&id)?;
        let SlotRole::Primary(primary) = &mut slot.role else {
            return None;
        };
        if primary.epoch != epoch {
            return None;
        }
        let session = primary.sessions.get_mut(standby)?;
        if session.id != session_id || session.node != from {
            return None;
        }
        self.dirty.insert(id.clone());
        Some((id, session))
    }

    /// A STANDBY acknowledged items of its session.
    #[allow(clippy::too_many_arguments)] // One message's fields, unpacked.
    pub(super) fn on_ack(
        &mut self,
        now: Time,
        from: NodeId,
        shard: &ShardName,
        epoch: u64,
        standby: UnitName,
        session_id: u64,
        (received, version, verified): (u64, u64, Option<bool>),
    ) {
        let Some((id, session)) = self.session_mut(shard, epoch, &standby, session_id, from) else {
            return;
        };
        if session.on_ack(now, received, version, verified) {
            self.out.events.push(DataEvent::Verified {
                standby: ReplicaId {
                    shard: shard.clone(),
                    unit: standby,
                },
                epoch,
                version,
            });
        }
        self.dirty.insert(id);
    }

    /// A STANDBY missed items of its session: they go again from `expected` on.
    #[allow(clippy::too_many_arguments)] // One message's fields, unpacked.
    pub(super) fn on_nack(
        &mut self,
        now: Time,
        from: NodeId,
        shard: &ShardName,
        epoch: u64,
        standby: &UnitName,
        session_id: u64,
        expected: u64,
    ) {
        let mut messages = Vec::new();
        if let Some((id, session)) = self.session_mut(shard, epoch, standby, session_id, from) {
            session.resend(now, expected, &mut messages, &id.shard, epoch, standby);
        }
        self.out.messages.extend(messages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Op, OpKind, Write};

    fn replica_with(ops: u64) -> (ShardReplica, OpLog) {
        let mut replica = ShardReplica::new();
        let mut oplog = OpLog::default();
        for seq in 1..=ops {
            let op = Op {
                seq,
                epoch: 1,
                kind: OpKind::Commit {
                    writes: vec![Write {
                        key: format!("k{seq}").into_bytes(),
                        value: Some(bytes::Bytes::from_static(b"value")),
                        priority: None,
                    }]
                    .into(),
                    consumed: None,
                },
            };
            replica.apply(&op).expect("applies");
            oplog.push(op, 1 << 20);
        }
        (replica, oplog)
    }

    fn at(millis: u64) -> Time {
        Time::from_millis(millis)
    }

    /// Pumps `session` with a fresh budget; the messages it sent.
    fn pump(
        session: &mut Session,
        config: &DataConfig,
        replica: &ShardReplica,
        oplog: &OpLog,
    ) -> Vec<(NodeId, DataMessage)> {
        let id = ReplicaId {
            shard: ShardName::from("s0"),
            unit: UnitName::from("primary"),
        };
        let mut out = DataOutput::default();
        let mut budget = usize::MAX;
        let mut sending = Sending {
            config,
            replica,
            oplog,
            id: &id,
            out: &mut out,
            budget: &mut budget,
        };
        session.pump(&UnitName::from("standby"), 1, &mut sending);
        out.messages
    }

    fn items(messages: &[(NodeId, DataMessage)]) -> Vec<(u64, Item)> {
        let mut numbered = Vec::new();
        for (_, message) in messages {
            let DataMessage::Items { first, items, .. } = message else {
                panic!("not items: {message:?}");
            };
            for (offset, item) in items.iter().enumerate() {
                numbered.push((first + offset as u64, item.clone()));
            }
        }
        numbered
    }

    #[test]
    fn a_delta_session_starts_after_its_base_and_a_full_one_at_the_start() {
        let (replica, _) = replica_with(3);
        let delta = Session::open(at(1), 7, (NodeId(2), 4), &replica, Some(1));
        assert_eq!((delta.next_op, delta.acked_version), (2, 1));
        assert!(delta.transfer.is_none() && !delta.is_verified() && !delta.is_lost());
        assert_eq!((delta.node(), delta.generation()), (NodeId(2), 4));
        let full = Session::open(at(1), 8, (NodeId(2), 4), &replica, None);
        assert_eq!((full.next_op, full.acked_version), (4, 0));
        let transfer = full.transfer.as_ref().expect("a full session transfers");
        assert_eq!(transfer.status.sections_total, 3);
        assert_eq!((full.next_n, full.acked_n), (1, 0));
    }

    #[test]
    fn items_are_sent_in_order_numbered_without_gaps_and_end_with_the_digest() {
        let (replica, oplog) = replica_with(3);
        let config = DataConfig::default();
        let mut session = Session::open(at(1), 7, (NodeId(2), 0), &replica, Some(1));
        let sent = items(&pump(&mut session, &config, &replica, &oplog));
        assert_eq!(sent.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(matches!(&sent[0].1, Item::Op(op) if op.seq == 2));
        assert!(matches!(&sent[1].1, Item::Op(op) if op.seq == 3));
        assert!(matches!(sent[2].1, Item::Verify { version: 3, .. }));
        assert_eq!(session.inflight.len(), 3);
        // Nothing more to send until something changes.
        assert!(pump(&mut session, &config, &replica, &oplog).is_empty());
    }

    #[test]
    fn a_full_session_sends_sections_then_the_digest() {
        let (replica, oplog) = replica_with(2);
        let config = DataConfig::default();
        let mut session = Session::open(at(1), 7, (NodeId(2), 0), &replica, None);
        let sent = items(&pump(&mut session, &config, &replica, &oplog));
        assert!(matches!(&sent[0].1, Item::Sections(sections) if sections.len() == 2));
        assert!(matches!(sent[1].1, Item::Verify { version: 2, .. }));
        let transfer = session.transfer.as_ref().expect("still transferring");
        assert_eq!(transfer.status.sections_sent, 2);
    }

    #[test]
    fn an_ack_drops_acknowledged_items_and_never_moves_back() {
        let (replica, oplog) = replica_with(3);
        let config = DataConfig::default();
        let mut session = Session::open(at(1), 7, (NodeId(2), 0), &replica, Some(0));
        pump(&mut session, &config, &replica, &oplog);
        assert!(!session.on_ack(at(2), 2, 2, None));
        assert_eq!((session.acked_n, session.acked_version), (2, 2));
        assert_eq!(session.inflight.len(), 2);
        assert_eq!(session.last_progress, at(2));
        // A late copy of an older Ack changes nothing.
        assert!(!session.on_ack(at(3), 1, 1, None));
        assert_eq!((session.acked_n, session.acked_version), (2, 2));
        assert_eq!(session.last_progress, at(2));
        assert!(!session.on_ack(at(4), 4, 3, None));
        assert!(session.inflight.is_empty() && session.inflight_bytes == 0);
    }

    #[test]
    fn verification_ends_the_transfer_and_a_mismatch_takes_it_back() {
        let (replica, oplog) = replica_with(2);
        let config = DataConfig::default();
        let mut session = Session::open(at(1), 7, (NodeId(2), 0), &replica, None);
        pump(&mut session, &config, &replica, &oplog);
        assert!(session.on_ack(at(2), 2, 2, Some(true)));
        assert!(session.is_verified() && session.in_step() && session.transfer.is_none());
        // Verified already: no second event.
        assert!(!session.on_ack(at(3), 2, 2, Some(true)));
        assert!(!session.on_ack(at(4), 2, 2, Some(false)));
        assert!(!session.is_verified() && !session.in_step());
    }

    #[test]
    fn a_session_behind_the_op_log_is_lost_and_restarts_as_a_full_transfer() {
        let (replica, _) = replica_with(3);
        let config = DataConfig::default();
        let mut session = Session::open(at(1), 7, (NodeId(2), 5), &replica, Some(0));
        // The op log holds none of the ops the STANDBY lacks.
        let empty = OpLog::default();
        assert!(pump(&mut session, &config, &replica, &empty).is_empty());
        assert!(session.is_lost());
        session.restart_full(at(2), 9, &replica);
        assert!(!session.is_lost() && session.transfer.is_some());
        assert_eq!(
            (session.id, session.node(), session.generation()),
            (9, NodeId(2), 5)
        );
        assert_eq!(
            (session.next_n, session.acked_n, session.acked_version),
            (1, 0, 0)
        );
        assert_eq!(session.last_progress, at(2));
    }

    #[test]
    fn a_stalled_session_sends_its_unacknowledged_items_again() {
        let (replica, oplog) = replica_with(3);
        let config = DataConfig::default();
        let mut session = Session::open(at(1), 7, (NodeId(2), 0), &replica, Some(0));
        pump(&mut session, &config, &replica, &oplog);
        session.on_ack(at(2), 1, 1, None);
        let mut messages = Vec::new();
        session.resend(
            at(3),
            2,
            &mut messages,
            &ShardName::from("s0"),
            1,
            &UnitName::from("standby"),
        );
        let again = items(&messages);
        assert_eq!(again.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(session.last_progress, at(3));
    }

    #[test]
    fn a_lagging_standby_is_out_of_step_until_it_catches_up() {
        let (replica, oplog) = replica_with(3);
        let config = DataConfig::default();
        let mut session = Session::open(at(1), 7, (NodeId(2), 0), &replica, Some(0));
        // Not verified: not in step, so not lagging either.
        assert_eq!(session.mark_lagging(3), None);
        pump(&mut session, &config, &replica, &oplog);
        session.on_ack(at(2), 1, 1, Some(true));
        assert_eq!(session.mark_lagging(3), Some(2));
        assert!(session.is_verified() && !session.in_step());
        session.catch_up(3);
        assert!(!session.in_step());
        session.on_ack(at(3), 4, 3, None);
        session.catch_up(3);
        assert!(session.in_step());
        assert_eq!(session.mark_lagging(3), None);
    }
}
