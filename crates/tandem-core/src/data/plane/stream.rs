//! Stream messages: accepting one on this node (appended to the local primary's stream,
//! forwarded to the primary's node, or held while the shard has no primary taking messages),
//! releasing held ones once it has, dropping copies of forwards, and the delivery rounds that
//! hand replicated messages to the ACTIVE unit.

use std::collections::VecDeque;

use crate::data::protocol::{DataMessage, DataReply, Delivery, RefusalCode};
use crate::data::replica::ShardReplica;
use crate::data::{check_message, Op, OpKind, StreamMessage};
use crate::ids::{NodeId, ShardName, UnitName};
use crate::time::Time;

use super::primary::Primary;
use super::view::ShardView;
use super::{
    error, Accepted, DataEvent, DataPlane, NotAccepted, PersistAction, ReplicaId, SlotRole,
};

/// Times a stream message may be forwarded between nodes before it is dropped (a bound on
/// loops while the nodes' views of the primary disagree).
const FORWARD_HOPS_MAX: u32 = 4;

/// Forwarded messages remembered per sending node, to drop copies.
const FORWARDS_REMEMBERED: usize = 4096;

impl DataPlane {
    /// A stream message received on this node for `shard` (ingress or client).
    pub fn accept(
        &mut self,
        now: Time,
        shard: &ShardName,
        message: StreamMessage,
    ) -> Result<Accepted, NotAccepted> {
        self.accept_hops(now, shard, message, 0, None)
    }

    /// `from`: the node that forwarded the message here, if any. A message is never sent back
    /// to it: its view and ours disagree on the primary (one of us has not applied the change
    /// yet), so it is held until our view moves on.
    fn accept_hops(
        &mut self,
        now: Time,
        shard: &ShardName,
        message: StreamMessage,
        hops: u32,
        from: Option<NodeId>,
    ) -> Result<Accepted, NotAccepted> {
        check_message(&message).map_err(NotAccepted::Invalid)?;
        let Some(view) = self.view.shards.get(shard) else {
            return Err(NotAccepted::NoShard(shard.clone()));
        };
        let held_count = self.held.get(shard).map_or(0, VecDeque::len);
        // A primary creates ops only while its node holds a lease: without one it may have
        // been replaced already, and its ops would diverge from the new primary's.
        let takes = self.has_lease(now)
            && view
                .primary
                .as_ref()
                .is_some_and(|(unit, _)| self.takes_messages(shard, unit));
        match view.primary.clone() {
            Some((unit, node)) if node == self.node && view.active && held_count == 0 && takes => {
                let id = ReplicaId {
                    shard: shard.clone(),
                    unit,
                };
                Ok(self
                    .append_message(&id, message)
                    .map_or(Accepted::Held, Accepted::Appended))
            }
            Some((_, node))
                if node != self.node && hops < FORWARD_HOPS_MAX && Some(node) != from =>
            {
                self.next_forward += 1;
                self.out.messages.push((
                    node,
                    DataMessage::Forward {
                        shard: shard.clone(),
                        message,
                        hops: hops + 1,
                        id: self.next_forward,
                    },
                ));
                Ok(Accepted::Forwarded(node))
            }
            _ => {
                let held = self.held.entry(shard.clone()).or_default();
                if held.len() >= self.config.held_max {
                    return Err(NotAccepted::TooManyHeld {
                        shard: shard.clone(),
                        held: held.len(),
                    });
                }
                held.push_back((message, hops));
                let _ = now;
                Ok(Accepted::Held)
            }
        }
    }
    /// Whether `unit`'s replica of `shard` here is a primary that takes stream messages (not
    /// a passive one).
    fn takes_messages(&self, shard: &ShardName, unit: &UnitName) -> bool {
        let id = ReplicaId {
            shard: shard.clone(),
            unit: unit.clone(),
        };
        matches!(
            self.slots.get(&id).map(|slot| &slot.role),
            Some(SlotRole::Primary(Primary { passive: false, .. }))
        )
    }

    /// Appends a message to primary `id`'s stream; its seq.
    fn append_message(&mut self, id: &ReplicaId, message: StreamMessage) -> Option<u64> {
        let slot = self.slots.get_mut(id)?;
        let SlotRole::Primary(primary) = &slot.role else {
            return None;
        };
        let op = Op {
            seq: slot.replica.version() + 1,
            epoch: primary.epoch,
            kind: OpKind::Message(message),
        };
        slot.replica.apply(&op).ok()?;
        let seq = op.seq;
        self.out
            .persist
            .push((id.clone(), PersistAction::Op(op.clone())));
        slot.oplog.push(op, self.config.retain_bytes);
        self.dirty.insert(id.clone());
        Some(seq)
    }

    /// Messages held for shards whose primary can now take them go there.
    pub(super) fn release_held(&mut self, now: Time) {
        let shards: Vec<ShardName> = self.held.keys().cloned().collect();
        for shard in shards {
            let Some(view) = self.view.shards.get(&shard) else {
                let count = self.held.remove(&shard).map_or(0, |held| held.len());
                self.out.events.push(DataEvent::Dropped {
                    shard,
                    count: count as u64,
                    reason: "the shard no longer exists",
                });
                continue;
            };
            let target = match &view.primary {
                Some((unit, node))
                    if *node == self.node
                        && view.active
                        && self.has_lease(now)
                        && self.takes_messages(&shard, unit) =>
                {
                    Some((unit.clone(), *node))
                }
                Some((unit, node)) if *node != self.node => Some((unit.clone(), *node)),
                _ => None,
            };
            let Some((unit, node)) = target else {
                continue;
            };
            let held = self.held.remove(&shard).unwrap_or_default();
            let mut dropped = 0u64;
            for (message, hops) in held {
                if node == self.node {
                    let id = ReplicaId {
                        shard: shard.clone(),
                        unit: unit.clone(),
                    };
                    if self.append_message(&id, message).is_none() {
                        dropped += 1;
                    }
                } else if hops < FORWARD_HOPS_MAX {
                    self.next_forward += 1;
                    self.out.messages.push((
                        node,
                        DataMessage::Forward {
                            shard: shard.clone(),
                            message,
                            hops: hops + 1,
                            id: self.next_forward,
                        },
                    ));
                } else {
                    dropped += 1;
                }
            }
            if dropped > 0 {
                self.out.events.push(DataEvent::Dropped {
                    shard,
                    count: dropped,
                    reason: "forwarded too often while the ACTIVE moved",
                });
            }
        }
        let _ = now;
    }

    /// A stream message node `from` forwarded here (message `id` of that node): a copy of one
    /// taken recently is dropped; else it is accepted as if received here, never sent back.
    pub(super) fn on_forward(
        &mut self,
        now: Time,
        from: NodeId,
        shard: ShardName,
        message: StreamMessage,
        (hops, id): (u32, u64),
    ) {
        let (seen, order) = self.forwards_seen.entry(from).or_default();
        if !seen.insert(id) {
            return;
        }
        order.push_back(id);
        if order.len() > FORWARDS_REMEMBERED {
            if let Some(old) = order.pop_front() {
                seen.remove(&old);
            }
        }
        if let Err(reason) = self.accept_hops(now, &shard, message, hops, Some(from)) {
            self.out.events.push(DataEvent::Dropped {
                shard,
                count: 1,
                reason: match reason {
                    NotAccepted::TooManyHeld { .. } => "too many messages held",
                    NotAccepted::Invalid(_) | NotAccepted::NoShard(_) => "refused",
                },
            });
        }
    }

    /// The ACTIVE instance `generation` of replica `id`'s unit asks for the stream at
    /// `epoch`: a delivery round (re)starts after what is consumed (what was delivered before
    /// and not consumed comes again, in order).
    pub(super) fn start_delivery(
        &mut self,
        id: &ReplicaId,
        generation: u64,
        epoch: u64,
    ) -> Option<DataReply> {
        let view = self.view.shards.get(&id.shard)?;
        let slot = self.slots.get_mut(id)?;
        match &mut slot.role {
            SlotRole::Primary(primary)
                if view.active
                    && primary.epoch == view.epoch
                    && primary.epoch == epoch
                    && !primary.passive =>
            {
                primary.delivered = Some((generation, slot.replica.consumed()));
                Some(DataReply::Done {
                    version: slot.replica.version(),
                })
            }
            _ => Some(error(
                RefusalCode::NotActive,
                format!(
                    "unit {} is not ACTIVE for shard {} at epoch {epoch}",
                    id.unit, id.shard
                ),
            )),
        }
    }
}

impl Primary {
    /// The delivery round's next messages: the stream messages the wait set holds (up to
    /// `safe`) go to the ACTIVE instance `registered` of the unit, once it asked for them,
    /// while this node holds a lease (`leased`), at most `window` undelivered at a time.
    #[allow(clippy::too_many_arguments)] // The pieces of one replica, borrowed apart.
    pub(super) fn deliver(
        &mut self,
        registered: Option<u64>,
        leased: bool,
        view: &ShardView,
        replica: &ShardReplica,
        id: &ReplicaId,
        (safe, window): (u64, usize),
        deliveries: &mut Vec<(UnitName, u64, Delivery)>,
    ) {
        let Some(generation) = registered else {
            return;
        };
        if !leased {
            // The unit fences itself when the lease runs out and drops what reaches it
            // meanwhile; the round ends here, and the unit asks for the stream again
            // (`Deliver`) once its lease is valid again. Going on with the old round instead
            // could hand it a later message while earlier ones were dropped.
            self.delivered = None;
            return;
        }
        if !view.active || self.epoch != view.epoch {
            return;
        }
        let consumed = replica.consumed();
        let delivered = match self.delivered {
            Some((instance, seq)) if instance == generation => seq.max(consumed),
            _ => return,
        };
        let outstanding = replica
            .pending()
            .take_while(|(seq, _)| *seq <= delivered)
            .count();
        let mut last = delivered;
        for (seq, message) in replica
            .pending_after(delivered)
            .take(window.saturating_sub(outstanding))
        {
            if seq > safe {
                break;
            }
            deliveries.push((
                id.unit.clone(),
                generation,
                Delivery::Message {
                    shard: id.shard.clone(),
                    epoch: self.epoch,
                    seq,
                    message: message.clone(),
                },
            ));
            last = seq;
        }
        self.delivered = Some((generation, last));
        self.exposed = self.exposed.max(last);
    }
}
