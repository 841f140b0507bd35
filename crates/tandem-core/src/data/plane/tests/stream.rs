//! Scenario tests of stream messages: held, replicated, delivered, and kept across a
//! failover.

use super::*;

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
fn messages_without_an_active_are_held_up_to_the_limit_then_refused_as_such() {
    let mut net = Net::with_config(
        1,
        DataConfig {
            held_max: 2,
            ..DataConfig::default()
        },
    );
    assert!(matches!(
        net.try_accept(1, "m0"),
        Err(NotAccepted::NoShard(_))
    ));
    // The primary's node has no lease: it takes no messages, they are held.
    net.assign(1, 1, &[], &[]);
    net.run();
    net.planes.get_mut(&1).unwrap().set_lease(None);
    assert_eq!(net.try_accept(1, "m1"), Ok(Accepted::Held));
    assert_eq!(net.try_accept(1, "m2"), Ok(Accepted::Held));
    assert_eq!(
        net.try_accept(1, "m3"),
        Err(NotAccepted::TooManyHeld {
            shard: shard(),
            held: 2
        })
    );
    let too_long = "x".repeat(crate::data::MESSAGE_LEN_MAX + 1);
    assert!(matches!(
        net.try_accept(1, &too_long),
        Err(NotAccepted::Invalid(_))
    ));
}
