//! Replica-level scenarios with three in-memory replicas and a lossless in-order network.

use std::collections::VecDeque;

use tandem_core::Command;
use tandem_raft::disk::{Disk, MemDisk};
use tandem_raft::logging::discard_logger;
use tandem_raft::{Replica, ReplicaConfig, WalOptions};

struct Net {
    disks: Vec<MemDisk>,
    replicas: Vec<Option<Replica<MemDisk>>>,
    queue: VecDeque<raft::eraftpb::Message>,
}

fn config(id: u64) -> ReplicaConfig {
    ReplicaConfig {
        id,
        voters: vec![1, 2, 3],
        learners: vec![],
        heartbeat_ticks: 2,
        election_ticks: 10,
        snapshot_interval_entries: 1000,
        election_seed: id * 7919,
        wal: WalOptions::default(),
    }
}

impl Net {
    fn new() -> Self {
        let disks: Vec<MemDisk> = (0..3).map(|_| MemDisk::new()).collect();
        let replicas = (0..3)
            .map(|i| {
                Some(
                    Replica::open(&config(i as u64 + 1), disks[i].clone(), &discard_logger())
                        .unwrap(),
                )
            })
            .collect();
        Self {
            disks,
            replicas,
            queue: VecDeque::new(),
        }
    }

    /// Delivers messages and processes readies until quiet.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            for replica in self.replicas.iter_mut().flatten() {
                let output = replica.process_ready().unwrap();
                self.queue.extend(output.messages);
            }
            let Some(message) = self.queue.pop_front() else {
                return;
            };
            if let Some(Some(target)) = self.replicas.get_mut(message.to as usize - 1) {
                let _ = target.step(message);
            }
        }
        panic!("network did not settle");
    }

    fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for replica in self.replicas.iter_mut().flatten() {
                replica.tick();
            }
            self.settle();
        }
    }

    fn leader(&self) -> usize {
        (0..3)
            .find(|&i| self.replicas[i].as_ref().is_some_and(|r| r.is_leader()))
            .expect("a leader")
    }

    fn propose(&mut self, nonce: u64) {
        let leader = self.leader();
        self.replicas[leader]
            .as_mut()
            .unwrap()
            .propose(&Command::Noop { nonce }, Vec::new())
            .unwrap();
        self.settle();
    }
}

#[test]
fn follower_that_lost_an_acknowledged_tail_is_resent_what_it_lost() {
    let mut net = Net::new();
    net.tick(40);
    for nonce in 0..10 {
        net.propose(nonce);
    }
    let leader = net.leader();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let committed = net.replicas[leader].as_ref().unwrap().commit_index();
    assert_eq!(
        net.replicas[victim].as_ref().unwrap().applied_index(),
        committed
    );

    // Crash the follower and cut synced bytes off its log: the disk "lost" acknowledged data.
    net.replicas[victim] = None;
    let disk = &net.disks[victim];
    let segment = disk
        .list()
        .unwrap()
        .into_iter()
        .find(|name| name.starts_with("wal-"))
        .unwrap();
    let len = disk.read(&segment).unwrap().len() as u64;
    disk.truncate(&segment, len - 40).unwrap();
    let restarted =
        Replica::open(&config(victim as u64 + 1), disk.clone(), &discard_logger()).unwrap();
    assert!(
        restarted.last_index() < committed,
        "the tail really is gone"
    );
    net.replicas[victim] = Some(restarted);

    // Without new proposals, heartbeats alone must bring it back (and nothing may panic).
    net.tick(20);
    let victim_replica = net.replicas[victim].as_ref().unwrap();
    assert_eq!(victim_replica.last_index(), committed);
    assert_eq!(victim_replica.applied_index(), committed);
    assert_eq!(net.leader(), leader, "no election was needed");
}
