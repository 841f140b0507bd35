//! Scenario tests of replication sessions: deltas and full transfers, resends, late
//! Follows, the step budget, dropped sessions.

use super::*;
use crate::data::Item;

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
fn only_replicas_waiting_on_a_timer_are_busy() {
    let mut net = Net::new(2);
    net.assign(1, 1, &[2], &[]);
    net.run();
    net.commit_claim(1);
    net.run();
    // In step and verified: nothing waits on a timer, a tick looks at no replica but the
    // backstop sweep's slice.
    for (node, plane) in &net.planes {
        assert!(plane.busy.is_empty(), "node {node}: {:?}", plane.busy);
    }
    // Items lost on the way: the primary waits to resend them, so it is busy until the
    // STANDBY acknowledged what the resend carried.
    let mut dropped = false;
    let request = net.commit_in_pass(1, vec![put("a", b"1")], true);
    net.run_with(100, |message| {
        let lose = matches!(message, DataMessage::Items { .. }) && !dropped;
        dropped |= lose;
        lose
    });
    assert!(dropped);
    assert_eq!(net.reply(request), None);
    assert_eq!(net.planes[&1].busy.len(), 1, "the primary waits to resend");
    net.tick(300);
    net.run();
    assert_eq!(
        net.reply(request),
        Some(&DataReply::Committed { version: 1 })
    );
    for (node, plane) in &net.planes {
        assert!(plane.busy.is_empty(), "node {node}: {:?}", plane.busy);
    }
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
