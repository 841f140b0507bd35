//! A secondary: a STANDBY's replica following its shard's primary. It asks for a session
//! (`Follow`), takes the session's `Start` (a delta from what it holds, or a full transfer
//! that empties it unless it already holds the snapshot), applies the session's items strictly
//! in order (ops, transferred sections and messages, the digest check at the end), and
//! acknowledges them.

use crate::data::digest::Digest;
use crate::data::protocol::{DataMessage, Delivery, Item, SessionStart};
use crate::data::replica::{ReplicaSnapshot, Section};
use crate::data::{Op, OpKind, StreamMessage};
use crate::ids::{NodeId, UnitName};
use crate::time::Time;

use super::{DataEvent, DataOutput, DataPlane, PersistAction, ReplicaId, Slot, SlotRole};

/// A secondary replica's state.
#[derive(Debug, Clone)]
pub(super) struct Secondary {
    pub(super) epoch: u64,
    pub(super) primary: UnitName,
    pub(super) node: NodeId,
    /// The current session and the number of the next item it expects.
    pub(super) session: Option<(u64, u64)>,
    /// The current session is verified.
    pub(super) verified: bool,
    pub(super) follow_sent: Option<Time>,
    /// Ask for a full transfer.
    pub(super) want_full: bool,
}

impl Secondary {
    /// A secondary of `primary` on `node` at `epoch`, without a session yet.
    pub(super) fn new(epoch: u64, primary: UnitName, node: NodeId) -> Self {
        Self {
            epoch,
            primary,
            node,
            session: None,
            verified: false,
            follow_sent: None,
            want_full: false,
        }
    }

    /// The session ends (unverified): the secondary follows again at once.
    pub(super) fn follow_again(&mut self) {
        self.session = None;
        self.verified = false;
        self.follow_sent = None;
    }

    /// Sends a `Follow` for secondary `id` when it has no session and the last one was sent
    /// `follow_retry` ago (or never).
    pub(super) fn follow_if_due(
        &mut self,
        now: Time,
        follow_retry: std::time::Duration,
        id: &ReplicaId,
        (have_version, have_epoch): (u64, u64),
        complete: bool,
        messages: &mut Vec<(NodeId, DataMessage)>,
    ) {
        let due = self.session.is_none()
            && self
                .follow_sent
                .is_none_or(|sent| now.saturating_since(sent) >= follow_retry);
        if !due {
            return;
        }
        self.follow_sent = Some(now);
        messages.push((
            self.node,
            DataMessage::Follow {
                shard: id.shard.clone(),
                epoch: self.epoch,
                primary: self.primary.clone(),
                standby: id.unit.clone(),
                have_version,
                have_epoch,
                full: self.want_full || !complete,
            },
        ));
    }
}

/// What applying a batch of a session's items came to.
struct Applied {
    /// Number of the next item expected.
    next_n: u64,
    /// The outcome of a digest check among the items, if there was one.
    verified: Option<bool>,
    /// An item did not apply: the session ends.
    failed: bool,
}

impl Slot {
    /// The secondary's state, if this replica is one.
    fn as_secondary(&mut self) -> Option<&mut Secondary> {
        match &mut self.role {
            SlotRole::Secondary(secondary) => Some(secondary),
            _ => None,
        }
    }

    /// Whether this replica, complete, holds what a full transfer from `snapshot` copies: the
    /// same version created by the same epoch (the same ops, as a delta would assume).
    fn holds(&self, want_full: bool, snapshot: &ReplicaSnapshot) -> bool {
        self.complete
            && !want_full
            && snapshot.version == self.replica.version()
            && snapshot.consumed == self.replica.consumed()
            && snapshot.history.epoch_at(snapshot.version) == Some(self.replica.epoch())
    }

    /// Empties replica `id` for a full transfer starting at `snapshot`.
    fn reset_for_transfer(
        &mut self,
        id: &ReplicaId,
        snapshot: ReplicaSnapshot,
        out: &mut DataOutput,
    ) {
        self.replica.reset_to(&snapshot);
        self.oplog.clear();
        self.complete = false;
        self.suspect = true;
        self.durable = 0;
        out.persist
            .push((id.clone(), PersistAction::Reset(snapshot)));
        if let Some(generation) = self.subscriber {
            out.deliveries.push((
                id.unit.clone(),
                generation,
                Delivery::Changed {
                    shard: id.shard.clone(),
                    version: self.replica.version(),
                    writes: Vec::new(),
                    reset: true,
                },
            ));
        }
    }

    /// Applies the items of the current session from number `first` on, skipping those
    /// before `next_n` (applied already), up to the first that does not apply.
    fn apply_items(
        &mut self,
        id: &ReplicaId,
        first: u64,
        mut next_n: u64,
        items: Vec<Item>,
        out: &mut DataOutput,
        retain_bytes: usize,
    ) -> Applied {
        let mut verified = None;
        let mut failed = false;
        for (offset, item) in items.into_iter().enumerate() {
            let n = first + offset as u64;
            if n < next_n {
                continue;
            }
            let result = match item {
                Item::Op(op) => self.apply_op(id, op, out, retain_bytes),
                Item::Sections(sections) => self.install_sections(id, sections, out),
                Item::Messages(messages) => self.install_messages(id, messages, out),
                Item::Verify { version, digest } => {
                    verified = Some(self.check_digest(id, version, digest, out));
                    Ok(())
                }
            };
            if let Err(reason) = result {
                // An item that does not apply means our replica is not what the primary
                // thinks: start over with a full transfer.
                out.events.push(DataEvent::ItemRefused {
                    standby: id.clone(),
                    reason,
                });
                if let Some(secondary) = self.as_secondary() {
                    secondary.want_full = true;
                }
                failed = true;
                break;
            }
            next_n = n + 1;
        }
        Applied {
            next_n,
            verified,
            failed,
        }
    }

    /// Applies an op of the session (telling a subscribed unit what changed).
    fn apply_op(
        &mut self,
        id: &ReplicaId,
        op: Op,
        out: &mut DataOutput,
        retain_bytes: usize,
    ) -> Result<(), String> {
        self.replica.apply(&op).map_err(|error| error.to_string())?;
        if let Some(generation) = self.subscriber {
            let writes = match &op.kind {
                OpKind::Commit { writes, .. } => writes.to_vec(),
                OpKind::Message(_) => Vec::new(),
            };
            out.deliveries.push((
                id.unit.clone(),
                generation,
                Delivery::Changed {
                    shard: id.shard.clone(),
                    version: op.seq,
                    writes,
                    reset: false,
                },
            ));
        }
        out.persist
            .push((id.clone(), PersistAction::Op(op.clone())));
        self.oplog.push(op, retain_bytes);
        Ok(())
    }

    /// Installs sections a transfer copied.
    fn install_sections(
        &mut self,
        id: &ReplicaId,
        sections: Vec<(Vec<u8>, Section)>,
        out: &mut DataOutput,
    ) -> Result<(), String> {
        for (key, section) in &sections {
            self.replica
                .install_section(key.clone(), section.clone())
                .map_err(|error| error.to_string())?;
        }
        out.persist
            .push((id.clone(), PersistAction::Sections(sections)));
        Ok(())
    }

    /// Installs stream messages a transfer copied.
    fn install_messages(
        &mut self,
        id: &ReplicaId,
        messages: Vec<(u64, StreamMessage)>,
        out: &mut DataOutput,
    ) -> Result<(), String> {
        for (seq, message) in &messages {
            self.replica
                .install_message(*seq, message.clone())
                .map_err(|error| error.to_string())?;
        }
        out.persist
            .push((id.clone(), PersistAction::Messages(messages)));
        Ok(())
    }

    /// Compares the replica with the primary's digest at `version`: a match verifies the
    /// session and completes the replica; a mismatch makes it incomplete (and suspect) and
    /// asks for a full transfer. Whether it matched.
    fn check_digest(
        &mut self,
        id: &ReplicaId,
        version: u64,
        digest: Digest,
        out: &mut DataOutput,
    ) -> bool {
        let matches = version == self.replica.version() && digest == self.replica.digest();
        if matches {
            if !self.complete {
                self.complete = true;
                out.persist.push((id.clone(), PersistAction::Complete));
            }
            self.suspect = false;
            if let Some(secondary) = self.as_secondary() {
                secondary.verified = true;
            }
        } else {
            out.events.push(DataEvent::DigestMismatch {
                standby: id.clone(),
                version,
            });
            if let Some(secondary) = self.as_secondary() {
                secondary.verified = false;
                secondary.want_full = true;
            }
            self.suspect = true;
            if self.complete {
                self.complete = false;
                out.persist.push((id.clone(), PersistAction::Incomplete));
            }
        }
        matches
    }

    /// Acknowledges to the primary on `from` the items of `session` applied (`applied`); a
    /// session that failed an item or the digest check ends.
    fn acknowledge(
        &mut self,
        id: &ReplicaId,
        from: NodeId,
        (epoch, session): (u64, u64),
        applied: &Applied,
        out: &mut DataOutput,
    ) {
        let version = self.replica.version();
        let Some(secondary) = self.as_secondary() else {
            return;
        };
        secondary.session = Some((session, applied.next_n));
        out.messages.push((
            from,
            DataMessage::Ack {
                shard: id.shard.clone(),
                epoch,
                standby: id.unit.clone(),
                session,
                received: applied.next_n - 1,
                version,
                verified: applied.verified.or(secondary.verified.then_some(true)),
            },
        ));
        if applied.failed || applied.verified == Some(false) {
            secondary.follow_again();
        }
    }
}

impl DataPlane {
    /// The primary on `from` starts `session` with secondary `id`.
    pub(super) fn on_start(
        &mut self,
        now: Time,
        from: NodeId,
        id: ReplicaId,
        epoch: u64,
        session: u64,
        start: SessionStart,
    ) {
        let in_sync = self
            .view
            .shards
            .get(&id.shard)
            .is_some_and(|view| view.in_sync.contains(&id.unit));
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let SlotRole::Secondary(secondary) = &mut slot.role else {
            return;
        };
        if secondary.epoch != epoch || secondary.node != from {
            return;
        }
        if secondary
            .session
            .is_some_and(|(current, _)| session <= current)
        {
            // A Start overtaken by a newer one, or a copy of the current session's (the
            // network duplicates): session ids grow within a primary's run, and a primary that
            // restarted serves no sessions at that epoch. Taking a copy again would empty a
            // replica the session may already have verified.
            return;
        }
        match start {
            SessionStart::Delta { from: version } => {
                if version != slot.replica.version() || !slot.complete {
                    // Our replica changed since we asked: ask again.
                    secondary.follow_again();
                    self.dirty.insert(id);
                    return;
                }
            }
            SessionStart::Full { snapshot, .. } => {
                // A complete replica at the snapshot's position holds what the transfer
                // copies already. It is kept: the copies only install what it has, and the
                // digest at the end checks it.
                let want_full = secondary.want_full;
                if !slot.holds(want_full, &snapshot) {
                    let SlotRole::Secondary(secondary) = &mut slot.role else {
                        return;
                    };
                    if in_sync || secondary.verified {
                        // The cluster counts this replica as holding every acknowledged write,
                        // or may do so soon: the primary claims it in sync once it verified,
                        // and the commit of that claim can reach our view after the
                        // primary's next session reached us (a late copy of an old Follow
                        // starts one). Emptying it now could lose an acknowledged write. A
                        // verified replica follows again at once with what it holds, for a
                        // delta; one the cluster counts in sync waits until the primary took
                        // it out of sync (this session never verifies, so the primary's
                        // claim no longer has it), then asks again.
                        secondary.session = None;
                        if std::mem::take(&mut secondary.verified) {
                            secondary.follow_sent = None;
                            self.dirty.insert(id);
                        }
                        return;
                    }
                    slot.reset_for_transfer(&id, snapshot, &mut self.out);
                }
            }
        }
        if let Some(secondary) = slot.as_secondary() {
            secondary.session = Some((session, 1));
            secondary.verified = false;
            secondary.want_full = false;
        }
        let _ = now;
    }

    /// Items `first..` of `session` from the primary on `from` for secondary `id`: applied in
    /// order and acknowledged; a gap is answered with a `Nack`, an unknown session or another
    /// epoch is ignored.
    #[allow(clippy::too_many_arguments)] // One message's fields, unpacked.
    pub(super) fn on_items(
        &mut self,
        now: Time,
        from: NodeId,
        id: ReplicaId,
        epoch: u64,
        session: u64,
        first: u64,
        items: Vec<Item>,
    ) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let SlotRole::Secondary(secondary) = &mut slot.role else {
            return;
        };
        if secondary.epoch != epoch || secondary.node != from {
            return;
        }
        let Some((current, next_n)) = secondary.session else {
            return;
        };
        if session > current {
            // The Start of a newer session went missing: ask again. `verified` stays: until
            // the new session starts, this replica may be the one the cluster counts in sync,
            // and `on_start` must not empty it for a full transfer (see there).
            secondary.session = None;
            secondary.follow_sent = None;
            self.dirty.insert(id);
            return;
        }
        if current != session {
            return;
        }
        if first > next_n {
            self.out.messages.push((
                from,
                DataMessage::Nack {
                    shard: id.shard.clone(),
                    epoch,
                    standby: id.unit.clone(),
                    session,
                    expected: next_n,
                },
            ));
            return;
        }
        let applied = slot.apply_items(
            &id,
            first,
            next_n,
            items,
            &mut self.out,
            self.config.retain_bytes,
        );
        slot.acknowledge(&id, from, (epoch, session), &applied, &mut self.out);
        let _ = now;
    }

    /// The primary on `from` says secondary `id`'s session at `epoch` is unknown to it.
    pub(super) fn on_stale(&mut self, from: NodeId, id: ReplicaId, epoch: u64) {
        // The primary we follow is not (or no longer) the primary of our epoch: our view is
        // behind or theirs is. The view will change; until then, retry slowly. Or it is, and
        // holds no session with us: it dropped the one we have (its view saw us leave STANDBY
        // and come back, ours did not), so we follow again.
        if let Some(Slot {
            role: SlotRole::Secondary(secondary),
            ..
        }) = self.slots.get_mut(&id)
        {
            if secondary.node == from && secondary.epoch == epoch && secondary.session.is_some() {
                secondary.follow_again();
                self.dirty.insert(id);
            }
        }
    }
}
