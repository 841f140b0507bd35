//! Diagnostics for failure messages: every node's Raft state, the leader's view of shards
//! and units, every unit process, and every checkpoint replica and replication session.

use std::collections::BTreeMap;

use crate::sim::Sim;

impl Sim {
    /// Every replica of every node, for failure messages.
    pub(crate) fn data_dump(&self) -> String {
        let mut out = String::new();
        let in_sync = self.leader().map(|leader| {
            self.nodes[leader]
                .node
                .as_ref()
                .expect("runs")
                .state()
                .shards
                .values()
                .map(|shard| (shard.name.clone(), shard.in_sync.clone()))
                .collect::<BTreeMap<_, _>>()
        });
        for node in &self.nodes {
            let Some(n) = &node.node else { continue };
            for (id, replica) in n.checkpoint_replicas() {
                out.push_str(&format!(
                    "  node {} replica {}/{}: version {} consumed {} pending {} digest {} \
                     complete {} verified {} in-sync {:?}: {}\n",
                    node.id,
                    id.shard,
                    id.unit,
                    replica.version(),
                    replica.consumed(),
                    replica.pending_count(),
                    replica.digest(),
                    n.checkpoint_replica_complete(id),
                    n.checkpoint_replica_verified(id),
                    in_sync.as_ref().and_then(|map| map.get(&id.shard)),
                    n.describe_checkpoint_replica(id),
                ));
            }
            for status in n.replication_status(node.local_now(self.now)) {
                out.push_str(&format!("  node {} session {status:?}\n", node.id));
            }
        }
        out
    }

    /// Every node's state and every unit process, for failure messages.
    pub(crate) fn dump(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let line = match &node.node {
                Some(n) => {
                    let replica = n.replica();
                    format!(
                        "  node {} {:?}: term {}, leader {:?}, is_leader {}, commit {}, applied {}, \
                         last {}, snapshot {}\n",
                        node.id,
                        node.status,
                        replica.term(),
                        replica.leader_id(),
                        replica.is_leader(),
                        replica.commit_index(),
                        replica.applied_index(),
                        replica.last_index(),
                        replica.snapshot_index()
                    )
                }
                None => format!("  node {} {:?}\n", node.id, node.status),
            };
            out.push_str(&line);
        }
        if let Some(leader) = self.leader() {
            let state = self.nodes[leader].node.as_ref().expect("runs").state();
            for shard in state.shards.values() {
                out.push_str(&format!(
                    "  shard {} epoch {} version {}: {:?} handover {:?}\n",
                    shard.name, shard.epoch, shard.version, shard.roles, shard.handover
                ));
            }
            for unit in state.units.values() {
                out.push_str(&format!(
                    "  unit {} on node {} gen {} admin {:?} enabled {} pending restart {}\n",
                    unit.name,
                    unit.node,
                    unit.generation,
                    unit.admin,
                    unit.enabled,
                    unit.restart_pending
                ));
            }
        }
        for (pid, process) in &self.units.processes {
            out.push_str(&format!(
                "  process {pid}: unit {} gen {} on node {} hung {} belief {:?}\n",
                process.unit,
                process.generation,
                process.node + 1,
                process.hung,
                process.belief
            ));
        }
        out.push_str(&format!(
            "  global log: {} entries committed, {} gaps",
            self.checker.max_committed(),
            self.checker.gaps()
        ));
        out
    }
}
