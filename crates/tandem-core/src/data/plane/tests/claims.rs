//! Scenario tests of in-sync claims: when they change, the local-disk wait, and claimed
//! STANDBYs kept in the wait set until a newer claim is committed.

use super::*;

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
    assert!(first.is_empty(), "a new plane has no claims: {first:?}");
    net.assign(1, 1, &[2], &[]);
    net.commit(1, 1, vec![put("a", b"1")], None, true);
    net.run();
    let claims = net.planes.get_mut(&1).unwrap().take_claims_change();
    assert_eq!(claims.len(), 1, "one shard's claim moved: {claims:?}");
    let claim = claims[&shard()].clone().expect("the STANDBY came in step");
    assert_eq!(claim.units, BTreeSet::from([unit("u2")]));
    // More commits move nothing a claim says: nothing to hand over, nor to check.
    for value in [b"2", b"3"] {
        net.commit(1, 1, vec![put("a", value)], None, true);
        net.run();
        assert_eq!(
            net.planes.get_mut(&1).unwrap().take_claims_change(),
            BTreeMap::new()
        );
        net.planes[&1].check_claim_cache().unwrap();
    }
    // The STANDBY leaves: the claim changes, and what was handed over is what `claims` says.
    net.assign(1, 1, &[], &[]);
    let claims = net.planes.get_mut(&1).unwrap().take_claims_change();
    let claim = claims[&shard()]
        .clone()
        .expect("the shard still has a primary here");
    assert!(claim.units.is_empty());
    assert!(claim.seq > 0);
    assert_eq!(net.planes.get_mut(&1).unwrap().claims()[&shard()], claim);
    net.planes[&1].check_claim_cache().unwrap();
    // The primary leaves: the claim goes, handed over as `None`.
    net.assign(2, 2, &[], &[]);
    let claims = net.planes.get_mut(&1).unwrap().take_claims_change();
    assert_eq!(claims.get(&shard()), Some(&None), "{claims:?}");
    assert!(net.planes.get_mut(&1).unwrap().claims().is_empty());
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
