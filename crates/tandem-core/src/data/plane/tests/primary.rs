//! Scenario tests of a primary's commit intake and wait sets: sync commits held back by
//! the wait set, refusals, queued chains, merged commits, the local disk and lag bounds.

use super::*;
use crate::data::plane::primary::MERGED_WRITES_MAX;

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
