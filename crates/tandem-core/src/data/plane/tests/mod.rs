//! Scenario tests of the data plane: two or three nodes' planes exchanging messages through
//! a hand-driven network that can lose, so every step is explicit.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::data::{MessageOrigin, Origin, Write};

mod claims;
mod primary;
mod secondary;
mod session;
mod stream;

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
        self.try_accept(node, payload).expect("accepted")
    }

    fn try_accept(&mut self, node: u64, payload: &str) -> Result<Accepted, NotAccepted> {
        let now = self.now;
        self.planes.get_mut(&node).unwrap().accept(
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
