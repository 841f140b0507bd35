//! Scenario tests of the data plane: two or three nodes' planes exchanging messages through
//! a hand-driven network that can lose, so every step is explicit.

use std::collections::{BTreeMap, BTreeSet};

use super::primary::MERGED_WRITES_MAX;
use super::*;
use crate::data::{Item, MessageOrigin, OpKind, Origin, Write};

const SHARD: &str = "s0";

fn unit(name: &str) -> UnitName {
    UnitName::from(name)
}

fn shard() -> ShardName {
    ShardName::from(SHARD)
}

fn put(key: &str, value: &[u8]) -> Write {
    Write {
        key: key.as_bytes().to_vec(),
        value: Some(value.to_vec().into()),
        priority: None,
    }
}

/// Nodes 1..=n, unit `u{i}` on node i, all in one service.
struct Net {
    planes: BTreeMap<u64, DataPlane>,
    now: Time,
    /// Messages in flight: (from, to, message).
    wire: Vec<(u64, u64, DataMessage)>,
    /// Replies to units: (node, unit, request, reply).
    replies: Vec<(u64, UnitName, u64, DataReply)>,
    /// Deliveries: (node, unit, delivery).
    deliveries: Vec<(u64, UnitName, Delivery)>,
    events: Vec<DataEvent>,
    /// Replica file writes: (node, replica, action).
    persisted: Vec<(u64, ReplicaId, PersistAction)>,
    next_request: u64,
    view: ShardView,
}

impl Net {
    fn new(nodes: u64) -> Self {
        Self::with_config(nodes, DataConfig::default())
    }

    fn with_config(nodes: u64, config: DataConfig) -> Self {
        let mut planes = BTreeMap::new();
        for node in 1..=nodes {
            let mut plane = DataPlane::new(NodeId(node), config.clone(), node);
            plane.set_lease(Some(Time::from_millis(1_000_000)));
            plane.unit_connected(&unit(&format!("u{node}")), 1);
            planes.insert(node, plane);
        }
        Self {
            planes,
            now: Time::from_millis(1),
            wire: Vec::new(),
            replies: Vec::new(),
            deliveries: Vec::new(),
            events: Vec::new(),
            persisted: Vec::new(),
            next_request: 1,
            view: ShardView {
                async_lag_max: 10_000,
                ..ShardView::default()
            },
        }
    }

    /// Sets the committed view: `primary` ACTIVE at `epoch`, `standbys` STANDBY.
    fn assign(&mut self, epoch: u64, primary: u64, standbys: &[u64], in_sync: &[u64]) {
        self.view.epoch = epoch;
        self.view.primary = Some((unit(&format!("u{primary}")), NodeId(primary)));
        self.view.active = true;
        self.view.acting = true;
        self.view.standbys = standbys
            .iter()
            .map(|node| (unit(&format!("u{node}")), NodeId(*node)))
            .collect();
        self.view.in_sync = in_sync
            .iter()
            .map(|node| unit(&format!("u{node}")))
            .collect();
        self.push_view();
    }

    fn push_view(&mut self) {
        let now = self.now;
        for (node, plane) in &mut self.planes {
            let mut view = self.view.clone();
            view.local_units = BTreeSet::from([unit(&format!("u{node}"))]);
            plane.set_view(
                now,
                DataView {
                    shards: BTreeMap::from([(shard(), view)]),
                },
            );
        }
    }

    /// Drains every plane's output; the disk syncs at once (every replica is durable after it).
    fn collect(&mut self) {
        let now = self.now;
        for (node, plane) in &mut self.planes {
            let mut out = plane.take_output(now);
            check_stamps(plane, &out.persist);
            let versions: Vec<(ReplicaId, u64)> = plane
                .replicas()
                .map(|(id, replica)| (id.clone(), replica.version()))
                .collect();
            for (id, version) in versions {
                plane.persisted(&id, version);
            }
            let more = plane.take_output(now);
            check_stamps(plane, &more.persist);
            out.messages.extend(more.messages);
            out.replies.extend(more.replies);
            out.deliveries.extend(more.deliveries);
            out.events.extend(more.events);
            out.persist.extend(more.persist);
            for (to, message) in out.messages {
                self.wire.push((*node, to.0, message));
            }
            for (unit, _, request, reply) in out.replies {
                self.replies.push((*node, unit, request, reply));
            }
            for (unit, _, delivery) in out.deliveries {
                self.deliveries.push((*node, unit, delivery));
            }
            self.events.extend(out.events);
            for (id, action) in out.persist {
                self.persisted.push((*node, id, action));
            }
        }
    }

    /// Delivers everything until quiet (at most `rounds` rounds), dropping messages for which
    /// `lose` says so.
    fn run_with(&mut self, rounds: usize, mut lose: impl FnMut(&DataMessage) -> bool) {
        for _ in 0..rounds {
            self.collect();
            if self.wire.is_empty() {
                return;
            }
            let wire = std::mem::take(&mut self.wire);
            for (from, to, message) in wire {
                if lose(&message) {
                    continue;
                }
                let now = self.now;
                if let Some(plane) = self.planes.get_mut(&to) {
                    plane.on_peer(now, NodeId(from), message);
                }
            }
        }
    }

    fn run(&mut self) {
        self.run_with(10_000, |_| false);
    }

    fn tick(&mut self, millis: u64) {
        self.now = self.now + Duration::from_millis(millis);
        let now = self.now;
        for plane in self.planes.values_mut() {
            plane.tick(now);
        }
    }

    fn request(&mut self, node: u64, request: DataRequest) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        let now = self.now;
        let name = unit(&format!("u{node}"));
        self.planes
            .get_mut(&node)
            .unwrap()
            .on_unit(now, &name, 1, id, request);
        id
    }

    fn commit(
        &mut self,
        node: u64,
        epoch: u64,
        writes: Vec<Write>,
        consumed: Option<u64>,
        sync: bool,
    ) -> u64 {
        let request = self.request(
            node,
            DataRequest::Commit {
                shard: shard(),
                epoch,
                writes,
                consumed,
                sync,
                chain: None,
            },
        );
        // One owner's pass per commit, so each is an op of its own (commits that arrive
        // together are merged: `commits_that_arrive_together_share_one_op`).
        self.collect();
        request
    }

    /// A commit handed to the plane without taking its output: the next commits of the same
    /// pass may join its op.
    fn commit_in_pass(&mut self, node: u64, writes: Vec<Write>, sync: bool) -> u64 {
        self.request(
            node,
            DataRequest::Commit {
                shard: shard(),
                epoch: 1,
                writes,
                consumed: None,
                sync,
                chain: None,
            },
        )
    }

    fn reply(&self, request: u64) -> Option<&DataReply> {
        self.replies
            .iter()
            .find(|(_, _, id, _)| *id == request)
            .map(|(_, _, _, reply)| reply)
    }

    fn replica(&self, node: u64) -> &ShardReplica {
        self.planes[&node]
            .replica(&ReplicaId {
                shard: shard(),
                unit: unit(&format!("u{node}")),
            })
            .unwrap()
    }

    /// Node `node` restarts (a new plane, its unit reconnected as instance 2) holding
    /// `replica` as read back from its files, sees the view, and a tick passes.
    fn restart(&mut self, node: u64, replica: ShardReplica, complete: bool) {
        let name = unit(&format!("u{node}"));
        let mut restarted = DataPlane::new(NodeId(node), DataConfig::default(), 99);
        restarted.set_lease(Some(Time::from_millis(1_000_000)));
        restarted.load(
            ReplicaId {
                shard: shard(),
                unit: name.clone(),
            },
            replica,
            complete,
        );
        restarted.unit_connected(&name, 2);
        self.planes.insert(node, restarted);
        self.push_view();
        self.tick(200);
    }

    /// The primary's claim, committed as the director would.
    fn commit_claim(&mut self, primary: u64) {
        let claims = self.planes.get_mut(&primary).unwrap().claims();
        let claim = claims.get(&shard()).cloned().unwrap_or_default();
        assert_eq!(claim.epoch, self.view.epoch);
        if claim.seq > self.view.in_sync_claim {
            self.view.in_sync = claim.units;
            self.view.in_sync_claim = claim.seq;
        }
        self.push_view();
    }

    fn accept(&mut self, node: u64, payload: &str) -> Accepted {
        let now = self.now;
        self.planes
            .get_mut(&node)
            .unwrap()
            .accept(
                now,
                &shard(),
                StreamMessage {
                    payload: payload.as_bytes().to_vec(),
                    origin: MessageOrigin {
                        origin: Origin::Udp,
                        peer: "127.0.0.1:5062".into(),
                    },
                },
            )
            .unwrap()
    }

    fn delivered(&self, node: u64) -> Vec<(u64, String)> {
        self.deliveries
            .iter()
            .filter(|(at, _, _)| *at == node)
            .filter_map(|(_, _, delivery)| match delivery {
                Delivery::Message { seq, message, .. } => {
                    Some((*seq, String::from_utf8_lossy(&message.payload).into_owned()))
                }
                Delivery::Changed { .. } => None,
            })
            .collect()
    }
}

#[test]
fn a_standby_follows_verifies_and_then_holds_back_sync_commits() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    // Before any standby is verified, a sync commit is answered at once.
    let early = net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.collect();
    assert_eq!(net.reply(early), Some(&DataReply::Committed { version: 1 }));
    net.run();
    assert!(net.planes[&2].is_verified(&ReplicaId {
        shard: shard(),
        unit: unit("u2")
    }));
    assert_eq!(net.replica(2), net.replica(1));
    net.commit_claim(1);
    assert_eq!(net.view.in_sync, BTreeSet::from([unit("u2")]));
    // Now a sync commit waits for the standby.
    let held = net.commit(1, 1, vec![put("b", b"2")], None, true);
    net.collect();
    assert_eq!(
        net.reply(held),
        None,
        "answered before the standby applied it"
    );
    let wire = std::mem::take(&mut net.wire);
    for (from, to, message) in wire {
        let now = net.now;
        net.planes
            .get_mut(&to)
            .unwrap()
            .on_peer(now, NodeId(from), message);
    }
    net.run();
    assert_eq!(net.reply(held), Some(&DataReply::Committed { version: 2 }));
    assert_eq!(net.replica(2).get(b"b").unwrap().value, &b"2"[..]);
}

#[test]
fn only_a_primary_with_nobody_to_wait_for_awaits_the_local_disk() {
    let mut net = Net::new(2);
    assert!(!net.planes[&1].awaits_local_durability(), "no primary yet");
    net.assign(1, 1, &[2], &[]);
    assert!(
        net.planes[&1].awaits_local_durability(),
        "the STANDBY is not in step yet: a sync commit waits for the disk"
    );
    assert!(
        !net.planes[&2].awaits_local_durability(),
        "a STANDBY's node has no commit to answer"
    );
    net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.run();
    net.commit_claim(1);
    assert_eq!(net.view.in_sync, BTreeSet::from([unit("u2")]));
    assert!(
        !net.planes[&1].awaits_local_durability(),
        "every commit now waits for the in-sync STANDBY"
    );
    // The STANDBY leaves: commits wait for the disk again.
    net.assign(1, 1, &[], &[]);
    assert!(net.planes[&1].awaits_local_durability());
}

#[test]
fn claims_are_handed_over_only_when_they_change() {
    let mut net = Net::new(2);
    let first = net.planes.get_mut(&1).unwrap().take_claims_change();
    assert_eq!(
        first,
        Some(BTreeMap::new()),
        "a new plane hands its (empty) claims once"
    );
    assert_eq!(net.planes.get_mut(&1).unwrap().take_claims_change(), None);
    net.assign(1, 1, &[2], &[]);
    net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.run();
    let claims = net.planes.get_mut(&1).unwrap().take_claims_change();
    let claim = claims.expect("the STANDBY came in step")[&shard()].clone();
    assert_eq!(claim.units, BTreeSet::from([unit("u2")]));
    // More commits move nothing a claim says: nothing to hand over, nor to check.
    for value in [b"2", b"3"] {
        net.commit(1, 1, vec![put("a", value)], None, true);
        net.run();
        assert_eq!(net.planes.get_mut(&1).unwrap().take_claims_change(), None);
        net.planes[&1].check_claim_cache().unwrap();
    }
    // The STANDBY leaves: the claim changes.
    net.assign(1, 1, &[], &[]);
    let claims = net.planes.get_mut(&1).unwrap().take_claims_change();
    let claim = claims.expect("the STANDBY left")[&shard()].clone();
    assert!(claim.units.is_empty());
    assert!(claim.seq > 0);
    net.planes[&1].check_claim_cache().unwrap();
}

#[test]
fn a_transfer_under_live_writes_ends_with_equal_digests() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[], &[]);
    for batch in 0..50 {
        let writes = (0..20)
            .map(|i| put(&format!("k{batch:02}-{i:02}"), &vec![batch as u8; 300]))
            .collect();
        net.commit(1, 1, writes, None, false);
    }
    net.collect();
    // A standby arrives; writes continue while the transfer runs, a few sections at a time.
    net.assign(1, 1, &[2], &[]);
    let mut round = 0;
    loop {
        net.collect();
        if net.wire.is_empty() && round > 5 {
            break;
        }
        let writes = vec![
            put(
                &format!("k{:02}-00", round % 50),
                format!("live{round}").as_bytes(),
            ),
            put(&format!("new{round}"), b"x"),
        ];
        if round < 40 {
            net.commit(1, 1, writes, None, false);
        }
        let wire = std::mem::take(&mut net.wire);
        for (from, to, message) in wire {
            let now = net.now;
            net.planes
                .get_mut(&to)
                .unwrap()
                .on_peer(now, NodeId(from), message);
        }
        round += 1;
        assert!(round < 1000, "never settled");
    }
    assert_eq!(net.replica(2), net.replica(1));
    assert_eq!(net.replica(2).digest(), net.replica(1).compute_digest());
    assert!(net
        .events
        .iter()
        .any(|event| matches!(event, DataEvent::Verified { .. })));
}

#[test]
fn lost_items_are_sent_again_and_gaps_are_refused() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.run();
    net.commit_claim(1);
    let mut dropped = 0;
    // One pass: the six commits are one op, in one batch of items.
    let request = net.commit_in_pass(1, vec![put("a", b"1")], true);
    for i in 0..5 {
        net.commit_in_pass(1, vec![put(&format!("x{i}"), b"1")], false);
    }
    // Lose the first batch of items.
    net.run_with(100, |message| {
        if matches!(message, DataMessage::Items { .. }) && dropped == 0 {
            dropped += 1;
            return true;
        }
        false
    });
    assert_eq!(net.reply(request), None, "acknowledged without the standby");
    net.tick(300);
    net.run();
    assert_eq!(
        net.reply(request),
        Some(&DataReply::Committed { version: 1 })
    );
    assert_eq!(net.replica(2), net.replica(1));
}

#[test]
fn stream_messages_reach_the_active_only_once_replicated_and_survive_a_failover() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.run();
    net.commit_claim(1);
    net.request(
        1,
        DataRequest::Deliver {
            shard: shard(),
            epoch: 1,
        },
    );
    assert_eq!(net.accept(1, "m1"), Accepted::Appended(1));
    assert_eq!(net.accept(1, "m2"), Accepted::Appended(2));
    net.collect();
    assert!(
        net.delivered(1).is_empty(),
        "delivered before the standby had it"
    );
    net.run();
    assert_eq!(
        net.delivered(1),
        vec![(1, "m1".to_owned()), (2, "m2".to_owned())]
    );
    // The ACTIVE consumes m1 with its state change, then dies.
    net.commit(1, 1, vec![put("calls", b"1")], Some(1), true);
    net.run();
    // A message accepted on the standby's node is forwarded to the primary.
    assert_eq!(net.accept(2, "m3"), Accepted::Forwarded(NodeId(1)));
    net.run();
    net.deliveries.clear();
    // Failover: u2 ACTIVE at epoch 2 gets m2 and m3 again (not consumed), not m1.
    net.assign(2, 2, &[], &[]);
    net.run();
    assert!(
        net.delivered(2).is_empty(),
        "delivered before the unit asked"
    );
    net.request(
        2,
        DataRequest::Deliver {
            shard: shard(),
            epoch: 2,
        },
    );
    net.run();
    assert_eq!(
        net.delivered(2),
        vec![(2, "m2".to_owned()), (4, "m3".to_owned())]
    );
    assert_eq!(net.replica(2).get(b"calls").unwrap().value, &b"1"[..]);
    // Consuming beyond what was delivered is refused.
    let bad = net.commit(2, 2, vec![], Some(9), true);
    net.collect();
    assert!(matches!(
        net.reply(bad),
        Some(DataReply::Error {
            code: RefusalCode::BadRequest,
            ..
        })
    ));
}

#[test]
fn a_diverged_old_active_gets_a_full_transfer_and_a_close_one_a_delta() {
    let mut net = Net::new(3);
    net.assign(1, 1, &[2, 3], &[]);
    net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.run();
    net.commit_claim(1);
    // u1 writes one more op that nobody receives, then u2 takes over at epoch 2.
    net.commit(1, 1, vec![put("lost", b"1")], None, false);
    net.collect();
    net.wire.clear();
    net.assign(2, 2, &[1, 3], &[]);
    net.commit(2, 2, vec![put("b", b"2")], None, true);
    net.run();
    let sessions: Vec<(UnitName, bool)> = net
        .events
        .iter()
        .filter_map(|event| match event {
            DataEvent::SessionStarted {
                standby,
                epoch: 2,
                full,
                ..
            } => Some((standby.unit.clone(), *full)),
            _ => None,
        })
        .collect();
    assert!(sessions.contains(&(unit("u1"), true)), "{sessions:?}");
    assert!(sessions.contains(&(unit("u3"), false)), "{sessions:?}");
    assert_eq!(net.replica(1), net.replica(2));
    assert_eq!(net.replica(3), net.replica(2));
    assert!(net.replica(1).get(b"lost").is_none());
}

#[test]
fn an_in_sync_standby_keeps_its_replica_until_taken_out_of_sync() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.commit(1, 1, vec![put("a", b"1")], None, true);
    let (mut session, mut next) = (0, 0);
    net.run_with(10_000, |message| {
        if let DataMessage::Items {
            session: id,
            first,
            items,
            ..
        } = message
        {
            (session, next) = (*id, first + items.len() as u64);
        }
        false
    });
    net.commit_claim(1);
    // An item of its session does not apply (as if its replica broke): the standby asks for a
    // full transfer while in sync.
    let id = ReplicaId {
        shard: shard(),
        unit: unit("u2"),
    };
    let now = net.now;
    net.planes.get_mut(&2).unwrap().on_peer(
        now,
        NodeId(1),
        DataMessage::Items {
            shard: shard(),
            epoch: 1,
            standby: unit("u2"),
            session,
            first: next,
            items: vec![Item::Op(Op {
                seq: 9,
                epoch: 1,
                kind: OpKind::Commit {
                    writes: vec![put("z", b"9")].into(),
                    consumed: None,
                },
            })],
        },
    );
    net.run();
    assert!(net
        .events
        .iter()
        .any(|event| matches!(event, DataEvent::ItemRefused { .. })));
    assert!(net
        .events
        .iter()
        .any(|event| matches!(event, DataEvent::SessionStarted { full: true, .. })));
    assert_eq!(
        net.replica(2).get(b"a").unwrap().value,
        &b"1"[..],
        "emptied while in sync"
    );
    // The primary's claim no longer has it; once committed, the transfer goes ahead.
    assert!(net.planes.get_mut(&1).unwrap().claims()[&shard()]
        .units
        .is_empty());
    net.commit_claim(1);
    net.tick(200);
    net.run();
    assert!(net.planes[&2].is_verified(&id));
    assert_eq!(net.replica(2), net.replica(1));
}

/// Sessions the primary started, in order: (full, count).
fn sessions_started(net: &Net) -> Vec<(bool, u64)> {
    net.events
        .iter()
        .filter_map(|event| match event {
            DataEvent::SessionStarted { full, count, .. } => Some((*full, *count)),
            _ => None,
        })
        .collect()
}

/// Every replica an output wrote to and that is still kept gets its stamp last, saying what
/// the replica is now.
fn check_stamps(plane: &DataPlane, persist: &[(ReplicaId, PersistAction)]) {
    for (id, _) in persist {
        let Some(replica) = plane.replica(id) else {
            continue;
        };
        let last = persist
            .iter()
            .rev()
            .find(|(written, _)| written == id)
            .map(|(_, action)| action);
        assert_eq!(
            last,
            Some(&PersistAction::Stamp(ReplicaStamp::of(replica))),
            "{id:?}: {persist:?}"
        );
    }
}

/// How often node 2 emptied its replica for a full transfer since `net.persisted[first]`.
fn resets_after(net: &Net, first: usize) -> usize {
    net.persisted[first..]
        .iter()
        .filter(|(node, _, action)| *node == 2 && matches!(action, PersistAction::Reset(_)))
        .count()
}

/// Two nodes whose op logs keep only the last op, so a STANDBY that lacks more gets a full
/// transfer.
fn short_memory() -> Net {
    Net::with_config(
        2,
        DataConfig {
            retain_bytes: 1,
            ..DataConfig::default()
        },
    )
}

/// A STANDBY's first Follow (of its empty replica) is held back by the network; its second
/// one starts a full transfer that verifies. Returns the late Follow.
fn verify_with_a_follow_held_back(net: &mut Net, lose_acks: bool) -> Vec<(u64, u64, DataMessage)> {
    net.assign(1, 1, &[], &[]);
    net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.commit(1, 1, vec![put("b", b"2")], None, true);
    net.collect();
    net.assign(1, 1, &[2], &[]);
    net.collect();
    let late = std::mem::take(&mut net.wire);
    assert!(
        matches!(
            late.as_slice(),
            [(
                2,
                1,
                DataMessage::Follow {
                    have_version: 0,
                    ..
                }
            )]
        ),
        "{late:?}"
    );
    net.tick(100);
    net.run_with(10_000, |message| {
        lose_acks && matches!(message, DataMessage::Ack { .. })
    });
    let id = ReplicaId {
        shard: shard(),
        unit: unit("u2"),
    };
    assert!(net.planes[&2].is_verified(&id));
    assert_eq!(net.replica(2), net.replica(1));
    assert_eq!(sessions_started(net), vec![(true, 2)]);
    late
}

#[test]
fn a_late_copy_of_a_follow_gets_a_delta_and_never_empties_an_in_step_standby() {
    let mut net = short_memory();
    let late = verify_with_a_follow_held_back(&mut net, false);
    // The primary claims the STANDBY in sync (the cluster may commit that before the
    // STANDBY's node hears of it); then the late Follow arrives.
    assert_eq!(
        net.planes.get_mut(&1).unwrap().claims()[&shard()].units,
        BTreeSet::from([unit("u2")])
    );
    let first = net.persisted.len();
    net.wire.extend(late);
    net.run();
    assert_eq!(resets_after(&net, first), 0, "the STANDBY was emptied");
    assert_eq!(sessions_started(&net), vec![(true, 2), (false, 0)]);
    assert!(net.planes[&2].is_verified(&ReplicaId {
        shard: shard(),
        unit: unit("u2"),
    }));
    assert_eq!(net.replica(2), net.replica(1));
    assert_eq!(
        net.planes.get_mut(&1).unwrap().claims()[&shard()].units,
        BTreeSet::from([unit("u2")])
    );
}

#[test]
fn a_verified_standby_keeps_its_replica_when_a_late_follow_starts_a_full_transfer() {
    // The late Follow overtakes the Ack of the verification: the primary, which does not count
    // the STANDBY as verified yet, takes it at its word and starts a full transfer.
    let mut net = short_memory();
    let late = verify_with_a_follow_held_back(&mut net, true);
    let first = net.persisted.len();
    net.wire.extend(late);
    net.run();
    // The STANDBY holds the snapshot's position already: it keeps its replica.
    assert_eq!(resets_after(&net, first), 0, "the STANDBY was emptied");
    assert_eq!(sessions_started(&net), vec![(true, 2), (true, 2)]);
    assert!(net.planes[&2].is_verified(&ReplicaId {
        shard: shard(),
        unit: unit("u2"),
    }));
    assert_eq!(net.replica(2), net.replica(1));
}

#[test]
fn a_verified_standby_refuses_a_full_transfer_and_catches_up_with_a_delta() {
    // As above, and the primary committed more before the late Follow arrived (the items did
    // not reach the STANDBY yet): the transfer's snapshot is ahead of the STANDBY's replica.
    let mut net = short_memory();
    let late = verify_with_a_follow_held_back(&mut net, true);
    net.commit(1, 1, vec![put("c", b"3")], None, false);
    net.collect();
    net.wire
        .retain(|(_, _, message)| !matches!(message, DataMessage::Items { .. }));
    let first = net.persisted.len();
    net.wire.extend(late);
    net.run();
    assert_eq!(resets_after(&net, first), 0, "the STANDBY was emptied");
    assert_eq!(
        sessions_started(&net),
        vec![(true, 2), (true, 3), (false, 1)]
    );
    assert!(net.planes[&2].is_verified(&ReplicaId {
        shard: shard(),
        unit: unit("u2"),
    }));
    assert_eq!(net.replica(2), net.replica(1));
}

#[test]
fn a_restarted_secondary_catches_up_with_a_delta() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.run();
    let saved = net.replica(2).clone();
    // Node 2 restarts with its replica from disk; meanwhile two more commits.
    net.commit(1, 1, vec![put("b", b"2")], None, false);
    net.commit(1, 1, vec![put("c", b"3")], None, false);
    net.collect();
    net.wire.clear();
    net.restart(2, saved, true);
    net.run();
    let started: Vec<(bool, u64)> = net
        .events
        .iter()
        .filter_map(|event| match event {
            DataEvent::SessionStarted { full, count, .. } => Some((*full, *count)),
            _ => None,
        })
        .collect();
    assert_eq!(started.last(), Some(&(false, 2)), "{started:?}");
    assert_eq!(net.replica(2), net.replica(1));
}

#[test]
fn commits_are_refused_unless_active_at_the_epoch_with_a_lease() {
    let mut net = Net::new(2);
    net.assign(3, 1, &[2], &[]);
    let standby = net.commit(2, 3, vec![put("a", b"1")], None, true);
    let stale = net.commit(1, 2, vec![put("a", b"1")], None, true);
    let empty_key = net.commit(1, 3, vec![put("", b"1")], None, true);
    net.collect();
    assert!(matches!(
        net.reply(standby),
        Some(DataReply::Error {
            code: RefusalCode::NotActive,
            ..
        })
    ));
    assert!(matches!(
        net.reply(stale),
        Some(DataReply::Error {
            code: RefusalCode::StaleEpoch,
            ..
        })
    ));
    assert!(matches!(
        net.reply(empty_key),
        Some(DataReply::Error {
            code: RefusalCode::BadRequest,
            ..
        })
    ));
    net.planes.get_mut(&1).unwrap().set_lease(Some(Time::ZERO));
    let no_lease = net.commit(1, 3, vec![put("a", b"1")], None, true);
    net.collect();
    assert!(matches!(
        net.reply(no_lease),
        Some(DataReply::Error {
            code: RefusalCode::NoLease,
            ..
        })
    ));
    assert_eq!(
        net.replica(1).version(),
        0,
        "a refused commit changed the replica"
    );
}

#[test]
fn a_queued_batch_applies_only_right_after_the_one_before_it_in_its_chain() {
    let mut net = Net::new(2);
    net.assign(3, 1, &[2], &[]);
    let batch = |net: &mut Net, generation: u64, chain: u64, index: u64, key: &str| {
        let id = net.next_request;
        net.next_request += 1;
        let now = net.now;
        net.planes.get_mut(&1).unwrap().on_unit(
            now,
            &unit("u1"),
            generation,
            id,
            DataRequest::Commit {
                shard: shard(),
                epoch: 3,
                writes: vec![put(key, b"1")],
                consumed: None,
                sync: false,
                chain: Some((chain, index)),
            },
        );
        net.collect();
        match net.reply(id) {
            Some(DataReply::Error { code, .. }) => Some(*code),
            _ => None,
        }
    };
    assert_eq!(batch(&mut net, 1, 1, 0, "a"), None);
    assert_eq!(batch(&mut net, 1, 1, 1, "b"), None);
    assert_eq!(net.replica(1).version(), 2);
    // Not right after the last one applied: again, or one skipped.
    assert_eq!(
        batch(&mut net, 1, 1, 1, "b"),
        Some(RefusalCode::QueueBroken)
    );
    assert_eq!(
        batch(&mut net, 1, 1, 3, "d"),
        Some(RefusalCode::QueueBroken)
    );
    // Batch 2 is refused for its own reason; batch 3, sent with it, must not leave a hole.
    net.planes.get_mut(&1).unwrap().set_lease(Some(Time::ZERO));
    assert_eq!(batch(&mut net, 1, 1, 2, "c"), Some(RefusalCode::NoLease));
    net.planes
        .get_mut(&1)
        .unwrap()
        .set_lease(Some(Time::from_millis(1_000_000)));
    assert_eq!(
        batch(&mut net, 1, 1, 3, "d"),
        Some(RefusalCode::QueueBroken)
    );
    assert_eq!(
        net.replica(1).version(),
        2,
        "a refused batch changed the replica"
    );
    // A new chain starts at index 0; another instance of the unit cannot continue it.
    assert_eq!(batch(&mut net, 1, 2, 0, "e"), None);
    net.planes
        .get_mut(&1)
        .unwrap()
        .unit_connected(&unit("u1"), 2);
    assert_eq!(
        batch(&mut net, 2, 2, 1, "f"),
        Some(RefusalCode::QueueBroken)
    );
    assert_eq!(batch(&mut net, 2, 1, 0, "f"), None);
    assert_eq!(net.replica(1).version(), 4);
}

#[test]
fn a_lagging_standby_stops_holding_back_commits_after_the_sync_timeout() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.run();
    net.commit_claim(1);
    // The standby goes silent.
    let request = net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.run_with(100, |message| matches!(message, DataMessage::Items { .. }));
    assert_eq!(net.reply(request), None);
    net.tick(1100);
    net.run_with(100, |message| matches!(message, DataMessage::Items { .. }));
    assert!(net
        .events
        .iter()
        .any(|event| matches!(event, DataEvent::Lagging { .. })));
    // Its claim is withdrawn; once the cluster commits that, the commit goes on.
    assert!(net.planes.get_mut(&1).unwrap().claims()[&shard()]
        .units
        .is_empty());
    assert_eq!(
        net.reply(request),
        None,
        "acknowledged while still committed in sync"
    );
    net.commit_claim(1);
    net.tick(1);
    net.collect();
    assert_eq!(
        net.reply(request),
        Some(&DataReply::Committed { version: 1 })
    );
}

#[test]
fn without_a_standby_a_sync_commit_waits_for_the_local_disk() {
    let mut net = Net::new(1);
    net.assign(1, 1, &[], &[]);
    let now = net.now;
    let name = unit("u1");
    let plane = net.planes.get_mut(&1).unwrap();
    plane.on_unit(
        now,
        &name,
        1,
        7,
        DataRequest::Commit {
            shard: shard(),
            epoch: 1,
            writes: vec![put("a", b"1")],
            consumed: None,
            sync: true,
            chain: None,
        },
    );
    let out = plane.take_output(now);
    assert!(out.replies.is_empty(), "acknowledged before it was on disk");
    let id = ReplicaId {
        shard: shard(),
        unit: name.clone(),
    };
    // The op, then the file's stamp: what its records make now.
    assert_eq!(out.persist.len(), 2, "{:?}", out.persist);
    assert!(
        matches!(&out.persist[0], (written, PersistAction::Op(op)) if *written == id && op.seq == 1)
    );
    assert_eq!(out.persist[1].0, id);
    assert_eq!(
        out.persist[1].1,
        PersistAction::Stamp(ReplicaStamp {
            epoch: 1,
            version: 1,
            digest: plane.replica(&id).expect("kept").digest().0,
        })
    );
    plane.persisted(&id, 1);
    let out = plane.take_output(now);
    assert_eq!(
        out.replies,
        vec![(name, 1, 7, DataReply::Committed { version: 1 })]
    );
}

#[test]
fn a_standby_whose_session_the_primary_dropped_is_told_and_follows_again() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.run();
    let id = ReplicaId {
        shard: shard(),
        unit: unit("u2"),
    };
    assert!(net.planes[&2].is_verified(&id));
    // Only the primary's view sees the STANDBY leave and come back (the STANDBY's node applied
    // both changes in one step): the primary drops the session, the STANDBY keeps it.
    let now = net.now;
    for standbys in [vec![], vec![(unit("u2"), NodeId(2))]] {
        let mut view = net.view.clone();
        view.standbys = standbys.into_iter().collect();
        view.local_units = BTreeSet::from([unit("u1")]);
        net.planes.get_mut(&1).unwrap().set_view(
            now,
            DataView {
                shards: BTreeMap::from([(shard(), view)]),
            },
        );
    }
    let request = net.commit(1, 1, vec![put("b", b"2")], None, false);
    net.run();
    assert!(net.reply(request).is_some());
    assert_eq!(net.replica(2).version(), 1, "the STANDBY gets nothing");
    // Once it has not followed for a while, the primary tells it; it follows again.
    net.tick(200);
    net.run();
    net.tick(200);
    net.run();
    assert!(net.planes[&2].is_verified(&id));
    assert_eq!(net.replica(2), net.replica(1));
}

#[test]
fn a_reinitialised_secondary_follows_again_for_a_full_transfer() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.run();
    net.planes.get_mut(&2).unwrap().reinitialise(&unit("u2"));
    net.tick(200);
    net.run();
    let id = ReplicaId {
        shard: shard(),
        unit: unit("u2"),
    };
    assert!(net.planes[&2].is_verified(&id));
    assert_eq!(net.replica(2), net.replica(1));
    assert!(net
        .events
        .iter()
        .any(|event| matches!(event, DataEvent::SessionStarted { full: true, .. })));
}

#[test]
fn a_step_sends_at_most_its_budget_and_the_rest_follows_after_begin_step() {
    const BUDGET: usize = 4096;
    let config = DataConfig {
        pump_bytes_per_step: BUDGET,
        chunk_bytes: 1024,
        batch_bytes: 1024,
        ..DataConfig::default()
    };
    let mut net = Net::with_config(2, config);
    net.assign(1, 1, &[], &[]);
    for batch in 0..20 {
        let writes = (0..20)
            .map(|i| put(&format!("k{batch:02}-{i:02}"), &[batch as u8; 300]))
            .collect();
        net.commit(1, 1, writes, None, false);
    }
    net.collect();
    net.assign(1, 1, &[2], &[]);
    let mut steps_held_back = 0;
    for round in 0.. {
        assert!(round < 10_000, "never settled");
        for plane in net.planes.values_mut() {
            plane.begin_step();
        }
        net.collect();
        let sent: usize = net
            .wire
            .iter()
            .filter(|(from, _, _)| *from == 1)
            .map(|(_, _, message)| match message {
                DataMessage::Items { items, .. } => items.iter().map(Item::size).sum(),
                _ => 0,
            })
            .sum();
        // `collect` takes the output twice; each may pass its budget by one item (a chunk).
        assert!(
            sent <= 2 * (BUDGET + 2048),
            "one step sent {sent} bytes of items"
        );
        if net.planes[&1].has_pending_work() {
            steps_held_back += 1;
        }
        if net.wire.is_empty() {
            break;
        }
        let wire = std::mem::take(&mut net.wire);
        for (from, to, message) in wire {
            let now = net.now;
            net.planes
                .get_mut(&to)
                .unwrap()
                .on_peer(now, NodeId(from), message);
        }
    }
    assert!(
        steps_held_back > 10,
        "the budget held the transfer back ({steps_held_back} steps)"
    );
    assert!(!net.planes[&1].has_pending_work());
    assert_eq!(net.replica(2), net.replica(1));
    assert_eq!(net.replica(2).digest(), net.replica(1).compute_digest());
    assert!(net
        .events
        .iter()
        .any(|event| matches!(event, DataEvent::Verified { .. })));
}

#[test]
fn a_standby_that_fails_its_digest_check_is_no_longer_complete_until_a_transfer_verifies() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.run();
    let id = ReplicaId {
        shard: shard(),
        unit: unit("u2"),
    };
    // Node 2 restarts with a replica at the primary's version whose content differs (what a
    // bug or a corruption the crcs missed would leave): a delta has nothing to send, and the
    // digest check fails.
    let mut tampered = net.replica(2).clone();
    let mut section = tampered.get(b"a").expect("section").clone();
    section.value = bytes::Bytes::from_static(b"X");
    tampered
        .install_section(b"a".to_vec(), section)
        .expect("installs");
    assert_eq!(tampered.version(), net.replica(1).version());
    net.restart(2, tampered, true);
    let first = net.persisted.len();
    // The delta session ends on the mismatch: the replica is marked incomplete, on disk too.
    net.run();
    let mismatch = net
        .events
        .iter()
        .position(|event| matches!(event, DataEvent::DigestMismatch { .. }));
    assert!(mismatch.is_some(), "{:?}", net.events);
    // The standby follows again (on its timer) for a full transfer.
    for _ in 0..3 {
        net.tick(200);
        net.run();
    }
    let actions: Vec<&PersistAction> = net.persisted[first..]
        .iter()
        .filter(|(node, replica, action)| {
            *node == 2 && *replica == id && !matches!(action, PersistAction::Stamp(_))
        })
        .map(|(_, _, action)| action)
        .collect();
    let incomplete = actions
        .iter()
        .position(|action| matches!(action, PersistAction::Incomplete))
        .expect("the replica is marked incomplete on disk");
    let reset = actions
        .iter()
        .position(|action| matches!(action, PersistAction::Reset(_)))
        .expect("a full transfer follows");
    assert!(incomplete < reset, "{actions:?}");
    // The full transfer verifies it again.
    assert!(net.planes[&2].is_complete(&id));
    assert_eq!(net.replica(2), net.replica(1));
    assert!(
        matches!(actions.last(), Some(PersistAction::Complete)),
        "{actions:?}"
    );
}

#[test]
fn a_standby_promoted_in_sync_after_its_node_lost_its_replica_stays_passive() {
    // Seed 902188 of the simulation: u2 acknowledges a write (in memory) and is recorded in
    // sync; its node crashes before the disk had the write and restarts; before the cluster
    // hears of the restart, u1 fails and u2 is promoted as in sync (no possible loss
    // reported). Taking what node 2 read back as the truth would lose the write, and a full
    // transfer would empty u1, the one replica that has it.
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.run();
    net.commit_claim(1);
    assert_eq!(net.view.in_sync, BTreeSet::from([unit("u2")]));
    let acked = net.commit(1, 1, vec![put("k", b"v")], None, true);
    net.run();
    assert_eq!(net.reply(acked), Some(&DataReply::Committed { version: 1 }));
    net.restart(2, ShardReplica::new(), true);
    // (Its unit registers again; the requests below come from instance 1.)
    net.planes
        .get_mut(&2)
        .unwrap()
        .unit_connected(&unit("u2"), 1);
    net.collect();
    net.wire.clear();
    net.view.continued_in_memory = true;
    net.assign(2, 2, &[1], &[]);
    let first = net.persisted.len();
    for _ in 0..3 {
        net.tick(200);
        net.run();
    }
    let refused = net.commit(2, 2, vec![put("x", b"1")], None, true);
    net.collect();
    assert!(
        matches!(
            net.reply(refused),
            Some(DataReply::Error {
                code: RefusalCode::NotActive,
                ..
            })
        ),
        "{:?}",
        net.reply(refused)
    );
    assert!(
        !net.planes
            .get_mut(&2)
            .unwrap()
            .claims()
            .contains_key(&shard()),
        "a passive primary claims nobody in sync"
    );
    assert!(
        !net.persisted[first..]
            .iter()
            .any(|(node, _, action)| *node == 1 && matches!(action, PersistAction::Reset(_))),
        "u1 was emptied by a transfer from the replica that lost the write"
    );
    assert_eq!(net.replica(1).get(b"k").unwrap().value, &b"v"[..]);
    // The cluster hears of the restart: u2 loses its role and u1, not in sync at epoch 2,
    // becomes ACTIVE at epoch 3 (a possible loss is reported; nothing is lost). u2 catches up.
    net.view.continued_in_memory = false;
    net.assign(3, 1, &[2], &[]);
    net.tick(200);
    net.run();
    let id = ReplicaId {
        shard: shard(),
        unit: unit("u2"),
    };
    assert!(net.planes[&2].is_verified(&id));
    assert_eq!(net.replica(2), net.replica(1));
    // Verified in this run and recorded in sync, u2 is trusted: promoted as in sync, it serves.
    net.commit_claim(1);
    net.view.continued_in_memory = true;
    net.assign(4, 2, &[1], &[]);
    let served = net.commit(2, 4, vec![put("y", b"2")], None, true);
    net.run();
    assert_eq!(
        net.reply(served),
        Some(&DataReply::Committed { version: 2 })
    );
    assert_eq!(net.replica(2).get(b"k").unwrap().value, &b"v"[..]);
}

#[test]
fn a_standby_emptied_for_a_transfer_is_not_trusted_by_a_late_in_sync_record() {
    // The primary claims u2 in sync while it is verified; the commit of that claim is slow.
    // Meanwhile a late `Stale` (sent before the session began) ends u2's session, and its next
    // one is a full transfer (the primary's op log no longer reaches u2's version), which
    // empties u2's replica: its view does not count it in sync yet, and the session is not
    // verified. The transfer's items are lost. Then the old claim commits, and u2 is promoted
    // on its strength: the half-filled replica must not be taken as the truth.
    let mut net = short_memory();
    net.assign(1, 1, &[2], &[]);
    net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.run();
    let claim = net.planes.get_mut(&1).unwrap().claims()[&shard()].clone();
    assert_eq!(claim.units, BTreeSet::from([unit("u2")]));
    let now = net.now;
    net.planes.get_mut(&2).unwrap().on_peer(
        now,
        NodeId(1),
        DataMessage::Stale {
            shard: shard(),
            epoch: 1,
            standby: unit("u2"),
        },
    );
    net.commit(1, 1, vec![put("b", b"2")], None, false);
    net.commit(1, 1, vec![put("c", b"3")], None, false);
    net.collect();
    net.wire
        .retain(|(_, _, message)| !matches!(message, DataMessage::Items { .. }));
    let first = net.persisted.len();
    net.tick(200);
    net.run_with(10_000, |message| {
        matches!(message, DataMessage::Items { .. })
    });
    assert!(
        resets_after(&net, first) > 0,
        "{:?}",
        sessions_started(&net)
    );
    let id = ReplicaId {
        shard: shard(),
        unit: unit("u2"),
    };
    assert!(!net.planes[&2].is_complete(&id));
    // The old claim commits; u1 fails and u2 is promoted as in sync.
    net.view.in_sync = claim.units;
    net.push_view();
    net.view.continued_in_memory = true;
    net.assign(2, 2, &[1], &[]);
    let refused = net.commit(2, 2, vec![put("x", b"1")], None, true);
    net.run();
    assert!(matches!(
        net.reply(refused),
        Some(DataReply::Error {
            code: RefusalCode::NotActive,
            ..
        })
    ));
    assert!(!net
        .planes
        .get_mut(&2)
        .unwrap()
        .claims()
        .contains_key(&shard()));
    assert_eq!(net.replica(1).get(b"c").unwrap().value, &b"3"[..]);
    assert!(
        !net.planes[&2].is_complete(&id),
        "marked complete while passive"
    );
}

#[test]
fn a_standby_back_as_a_new_instance_is_not_claimed_on_its_old_session() {
    // Seed 912357 of the simulation: u2's node restarts; the cluster takes u2's role away
    // (its restart fault) and gives it back, and the primary's view goes from before to after
    // in one step. The session verified before the restart must not keep u2 claimed in sync:
    // the replica it verified may be gone.
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.run();
    assert_eq!(
        net.planes.get_mut(&1).unwrap().claims()[&shard()].units,
        BTreeSet::from([unit("u2")])
    );
    net.view.standby_generations = BTreeMap::from([(unit("u2"), 2)]);
    net.push_view();
    assert!(net.planes.get_mut(&1).unwrap().claims()[&shard()]
        .units
        .is_empty());
    // u2 is told, follows again, and is verified in a new session.
    for _ in 0..3 {
        net.tick(200);
        net.run();
    }
    assert_eq!(
        net.planes.get_mut(&1).unwrap().claims()[&shard()].units,
        BTreeSet::from([unit("u2")])
    );
}

/// The cluster commits the primary's claim `claim` (one the director proposed earlier, whose
/// commit reaches the view only now), as `Command::SetInSync` applies it.
fn commit_old_claim(net: &mut Net, claim: &crate::report::InSyncClaim) {
    if claim.seq > net.view.in_sync_claim {
        net.view.in_sync = claim.units.clone();
        net.view.in_sync_claim = claim.seq;
    }
    net.push_view();
}

#[test]
fn a_claimed_standby_that_lags_holds_back_commits_until_a_newer_claim_is_committed() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.run();
    // The primary claims u2; the director's proposal is in flight.
    let old = net.planes.get_mut(&1).unwrap().claims()[&shard()].clone();
    assert_eq!(old.units, BTreeSet::from([unit("u2")]));
    // The standby goes silent and is marked lagging: it leaves the verified set.
    let request = net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.run_with(100, |message| matches!(message, DataMessage::Items { .. }));
    net.tick(1100);
    net.run_with(100, |message| matches!(message, DataMessage::Items { .. }));
    assert!(net
        .events
        .iter()
        .any(|event| matches!(event, DataEvent::Lagging { .. })));
    net.tick(1);
    net.run_with(100, |message| matches!(message, DataMessage::Items { .. }));
    assert_eq!(
        net.reply(request),
        None,
        "acknowledged without a STANDBY whose claim may still be committed"
    );
    // The old claim commits: u2 is recorded in sync, and it does not have the write.
    commit_old_claim(&mut net, &old);
    net.tick(1);
    net.collect();
    assert_eq!(net.reply(request), None);
    // The newer claim without u2 commits: the write goes on.
    let new = net.planes.get_mut(&1).unwrap().claims()[&shard()].clone();
    assert!(new.units.is_empty());
    assert!(new.seq > old.seq);
    net.commit_claim(1);
    net.tick(1);
    net.collect();
    assert_eq!(
        net.reply(request),
        Some(&DataReply::Committed { version: 1 })
    );
    // The old claim arriving again changes nothing.
    commit_old_claim(&mut net, &old);
    assert!(net.view.in_sync.is_empty());
}

#[test]
fn a_claimed_standby_whose_session_is_replaced_holds_back_commits_until_a_newer_claim() {
    let mut net = short_memory();
    let late = verify_with_a_follow_held_back(&mut net, false);
    // The primary claims u2; the director's proposal is in flight.
    let old = net.planes.get_mut(&1).unwrap().claims()[&shard()].clone();
    assert_eq!(old.units, BTreeSet::from([unit("u2")]));
    // The late Follow replaces the session with a delta that is not verified yet (its Start
    // never arrives), so u2 is no longer in step.
    for (from, to, message) in late {
        let now = net.now;
        net.planes
            .get_mut(&to)
            .unwrap()
            .on_peer(now, NodeId(from), message);
    }
    net.collect();
    net.wire.clear();
    assert!(net.planes.get_mut(&1).unwrap().claims()[&shard()]
        .units
        .is_empty());
    let request = net.commit(1, 1, vec![put("c", b"3")], None, true);
    net.collect();
    net.wire.clear();
    assert_eq!(
        net.reply(request),
        None,
        "acknowledged without a STANDBY whose claim may still be committed"
    );
    // The old claim commits: u2 is recorded in sync, and it does not have the write.
    commit_old_claim(&mut net, &old);
    net.tick(1);
    net.collect();
    net.wire.clear();
    assert_eq!(net.reply(request), None);
    // The newer claim without u2 commits: the write goes on.
    net.commit_claim(1);
    net.tick(1);
    net.collect();
    assert_eq!(
        net.reply(request),
        Some(&DataReply::Committed { version: 3 })
    );
}

#[test]
fn commits_that_arrive_together_share_one_op() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.run();
    net.commit_claim(1);
    // Three commits in one pass, two of them to the same key: one op, applied in order.
    let first = net.commit_in_pass(1, vec![put("a", b"1")], true);
    let second = net.commit_in_pass(1, vec![put("a", b"2")], false);
    let third = net.commit_in_pass(1, vec![put("b", b"3"), put("c", b"4")], true);
    net.run();
    for request in [first, second, third] {
        assert_eq!(
            net.reply(request),
            Some(&DataReply::Committed { version: 1 })
        );
    }
    assert_eq!(net.replica(1).version(), 1);
    assert_eq!(net.replica(1).get(b"a").unwrap().value, &b"2"[..]);
    assert_eq!(net.replica(2), net.replica(1));
    assert_eq!(net.replica(2).digest(), net.replica(1).compute_digest());
    // A commit after the op left is an op of its own.
    let later = net.commit(1, 1, vec![put("d", b"5")], None, true);
    net.run();
    assert_eq!(net.reply(later), Some(&DataReply::Committed { version: 2 }));
    // A merged op holds at most MERGED_WRITES_MAX writes; the rest start the next op.
    let requests: Vec<u64> = (0..MERGED_WRITES_MAX + 1)
        .map(|i| net.commit_in_pass(1, vec![put(&format!("k{i}"), b"x")], true))
        .collect();
    net.run();
    assert_eq!(
        net.reply(requests[MERGED_WRITES_MAX - 1]),
        Some(&DataReply::Committed { version: 3 })
    );
    assert_eq!(
        net.reply(requests[MERGED_WRITES_MAX]),
        Some(&DataReply::Committed { version: 4 })
    );
    assert_eq!(net.replica(2), net.replica(1));
    // A commit the plane refuses leaves the open op as it was.
    let good = net.commit_in_pass(1, vec![put("e", b"6")], true);
    let bad = net.commit_in_pass(1, vec![put("", b"7")], true);
    net.run();
    assert!(matches!(
        net.reply(bad),
        Some(DataReply::Error {
            code: RefusalCode::BadRequest,
            ..
        })
    ));
    assert_eq!(net.reply(good), Some(&DataReply::Committed { version: 5 }));
    assert_eq!(net.replica(2), net.replica(1));
    assert_eq!(net.replica(2).digest(), net.replica(1).compute_digest());
}

#[test]
fn async_commits_wait_while_the_standby_lags_half_the_op_log_in_bytes() {
    // 100 ops of 64 KiB may lag by count, but not by bytes: a STANDBY further behind than
    // the op log reaches would need a whole state transfer.
    let config = DataConfig {
        retain_bytes: 1024 * 1024,
        ..DataConfig::default()
    };
    let mut net = Net::with_config(2, config);
    net.view.async_lag_max = 100;
    net.assign(1, 1, &[2], &[]);
    net.run();
    net.commit_claim(1);
    let value = vec![b'v'; 64 * 1024];
    let requests: Vec<u64> = (0..12)
        .map(|index| net.commit(1, 1, vec![put(&format!("k{index}"), &value)], None, false))
        .collect();
    // The STANDBY hears nothing meanwhile.
    net.wire.clear();
    let answered = |net: &Net| {
        requests
            .iter()
            .filter(|request| net.reply(**request).is_some())
            .count()
    };
    // Eight 64 KiB ops make half of the 1 MiB log (each op counts a little more than its
    // value): the first seven are answered, the rest wait.
    assert_eq!(answered(&net), 7);
    // Once the STANDBY has them all (resent after the resend timeout), every commit is
    // answered and no transfer was needed.
    net.tick(300);
    net.run();
    assert_eq!(answered(&net), 12);
    for request in &requests {
        assert!(matches!(
            net.reply(*request),
            Some(DataReply::Committed { .. })
        ));
    }
    assert_eq!(net.replica(2), net.replica(1));
    assert!(!sessions_started(&net).iter().any(|(full, _)| *full));
}
