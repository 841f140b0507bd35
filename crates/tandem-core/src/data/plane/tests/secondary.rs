//! Scenario tests of secondaries: when a STANDBY keeps or empties its replica, catching up
//! after a restart or a reinitialisation, failed digest checks, trust after a transfer.

use super::*;
use crate::data::{Item, OpKind};

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
