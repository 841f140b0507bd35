//! Replica-level scenarios with three in-memory replicas and a lossless in-order network.

use std::collections::VecDeque;

use tandem_core::Command;
use tandem_raft::disk::{Disk, FileSyncer, MemDisk};
use tandem_raft::logging::discard_logger;
use tandem_raft::{Replica, ReplicaConfig, WalOptions};

struct Net {
    disks: Vec<MemDisk>,
    replicas: Vec<Option<Replica<MemDisk>>>,
    queue: VecDeque<raft::eraftpb::Message>,
    /// Deferred mode: run every due log sync when settling.
    auto_sync: bool,
    /// Quorum confirmations seen, by replica.
    confirmed: Vec<Vec<Vec<u8>>>,
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
        deferred_sync: false,
        check_model: true,
    }
}

fn deferred_config(id: u64) -> ReplicaConfig {
    ReplicaConfig {
        deferred_sync: true,
        ..config(id)
    }
}

impl Net {
    fn new() -> Self {
        Self::with(config)
    }

    fn with(config: fn(u64) -> ReplicaConfig) -> Self {
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
            auto_sync: true,
            confirmed: vec![Vec::new(); 3],
        }
    }

    /// Runs the due log sync of every replica (deferred mode) and reports it done.
    fn sync_all(&mut self) {
        for replica in self.replicas.iter_mut().flatten() {
            if let Some(job) = replica.take_sync().unwrap() {
                job.syncer.sync().unwrap();
                replica.synced(job.number);
            }
        }
    }

    /// Delivers messages and processes readies until quiet.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            if self.auto_sync {
                self.sync_all();
            }
            for (index, replica) in self.replicas.iter_mut().enumerate() {
                let Some(replica) = replica else { continue };
                let output = replica.process_ready().unwrap();
                self.queue.extend(output.messages);
                self.confirmed[index].extend(output.quorum_confirmed);
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

#[test]
fn deferred_sync_holds_acknowledgements_until_the_log_is_durable_but_not_heartbeats() {
    let mut net = Net::with(deferred_config);
    net.tick(40);
    net.propose(1);
    let leader = net.leader();
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let committed = net.replicas[leader].as_ref().unwrap().commit_index();
    for &follower in &followers {
        assert_eq!(
            net.replicas[follower].as_ref().unwrap().applied_index(),
            committed,
            "with syncs run, deferred replicas apply like synchronous ones"
        );
    }

    // No log sync runs from here: the proposal reaches every log but nobody acknowledges it.
    net.auto_sync = false;
    net.propose(2);
    let last = net.replicas[leader].as_ref().unwrap().last_index();
    assert_eq!(last, committed + 1);
    for &follower in &followers {
        assert_eq!(net.replicas[follower].as_ref().unwrap().last_index(), last);
    }
    assert_eq!(
        net.replicas[leader].as_ref().unwrap().commit_index(),
        committed,
        "nothing commits before a quorum synced it"
    );

    // Heartbeat responses still flow: the leader confirms its leadership.
    net.replicas[leader]
        .as_mut()
        .unwrap()
        .confirm_quorum(b"ctx".to_vec());
    net.settle();
    assert!(
        net.confirmed[leader].contains(&b"ctx".to_vec()),
        "a quorum confirmation completes while log syncs are pending"
    );
    assert_eq!(
        net.replicas[leader].as_ref().unwrap().commit_index(),
        committed
    );

    // A follower that crashes before its sync loses the entry; the rest commit once synced.
    let victim = followers[0];
    net.replicas[victim] = None;
    net.disks[victim].crash(|_, _| 0);
    net.sync_all();
    net.settle();
    let commit = net.replicas[leader].as_ref().unwrap().commit_index();
    assert_eq!(commit, last, "the leader and one follower form a quorum");
    let restarted = Replica::open(
        &deferred_config(victim as u64 + 1),
        net.disks[victim].clone(),
        &discard_logger(),
    )
    .unwrap();
    assert_eq!(
        restarted.last_index(),
        committed,
        "the unsynced entry was lost"
    );
    net.replicas[victim] = Some(restarted);
    net.auto_sync = true;
    net.tick(10);
    for replica in net.replicas.iter().flatten() {
        assert_eq!(replica.applied_index(), last);
    }
}

#[test]
fn campaign_now_wins_at_once_past_the_other_voters_leader_lease() {
    let mut net = Net::new();
    net.tick(40);
    net.propose(1);
    let old_leader = net.leader();
    let old_term = net.replicas[old_leader].as_ref().unwrap().term();
    net.replicas[old_leader] = None;
    let candidate = (0..3).find(|&i| i != old_leader).unwrap();
    let other = (0..3).find(|&i| i != old_leader && i != candidate).unwrap();

    // An ordinary election would need the candidate's election timeout to pass, and its
    // pre-vote would be refused by the other voter, which heard the old leader within its
    // own timeout. No tick passes here.
    net.replicas[candidate].as_mut().unwrap().campaign_now();
    net.settle();
    assert_eq!(net.leader(), candidate);
    let term = net.replicas[candidate].as_ref().unwrap().term();
    assert_eq!(term, old_term + 1, "one election, no pre-vote round");
    assert_eq!(
        net.replicas[other].as_ref().unwrap().leader_id(),
        Some(candidate as u64 + 1)
    );
    // The new leader commits, and a leader asking again changes nothing.
    net.propose(2);
    net.replicas[candidate].as_mut().unwrap().campaign_now();
    net.settle();
    assert_eq!(net.replicas[candidate].as_ref().unwrap().term(), term);
}

#[test]
fn campaign_now_of_a_stale_follower_does_not_win() {
    let mut net = Net::new();
    net.tick(40);
    let leader = net.leader();
    let stale = (0..3).find(|&i| i != leader).unwrap();
    // The stale follower misses entries that the leader and the third voter commit.
    let kept = net.replicas[stale].take();
    for nonce in 0..5 {
        net.propose(nonce);
    }
    net.replicas[stale] = kept;
    let leader_last = net.replicas[leader].as_ref().unwrap().last_index();
    assert!(net.replicas[stale].as_ref().unwrap().last_index() < leader_last);
    net.replicas[leader] = None;
    net.replicas[stale].as_mut().unwrap().campaign_now();
    net.settle();
    assert!(
        !net.replicas[stale].as_ref().unwrap().is_leader(),
        "a voter with a longer log refuses its vote"
    );
}
