//! The topology every simulated cluster runs: which services, units and shards, on which
//! nodes, with which timeouts and escalation ladders.

use tandem_core::{
    EscalationPolicy, NodeId, ProcessSpec, RedundancyModel, ServiceSpec, Topology, UnitSpec,
    UnitTimeouts,
};

/// The topology every run uses: a 2n pair and a no-redundancy singleton on 3 nodes, plus an
/// n+m pool and an n-way-active front end on 5; a node-restart command for ladder L3. With
/// `wide_shards`, also 2n services `w<k>` with units on nodes `2k+1` and `2k+2`, sharing that
/// many shards between them. With `pinned_pair`, the pair's units are never relocated: a node
/// declared down keeps them, roles taken away, until it returns (ladder `AwaitNode`).
pub fn topology(nodes: usize, wide_shards: usize, pinned_pair: bool) -> Topology {
    let service = |name: &str, model, units: &[(&str, u64)], shards: &[&str]| {
        let mut spec = ServiceSpec::new(
            name,
            model,
            units
                .iter()
                .map(|(unit, node)| UnitSpec {
                    name: (*unit).into(),
                    node: NodeId(*node),
                    rank: 0,
                })
                .collect(),
            shards.iter().map(|shard| (*shard).into()).collect(),
            vec![format!("/sim/{name}")],
        );
        spec.timeouts = UnitTimeouts {
            instantiate_ms: 1_000,
            terminate_ms: 100,
            cleanup_ms: 100,
            health_interval_ms: 100,
            health_timeout_ms: 300,
            callback_ms: 500,
        };
        spec.escalation = EscalationPolicy {
            window_ms: 2_000,
            ..EscalationPolicy::default()
        };
        spec
    };
    // The singleton climbs its ladder quickly (one fault per level in a long window), so runs
    // reach L2, L3 (node restart) and L5.
    let mut solo = service(
        "solo",
        RedundancyModel::NoRedundancy,
        &[("s1", 3)],
        &["solo-0"],
    );
    solo.escalation = EscalationPolicy {
        reset_max: 1,
        restart_max: 1,
        reinitialise_max: 1,
        node_restart_max: 1,
        window_ms: 10_000,
        relocate: true,
    };
    let mut pair = service(
        "pair",
        RedundancyModel::TwoN,
        &[("p1", 1), ("p2", 2)],
        &["pair-0", "pair-1"],
    );
    pair.escalation.relocate = !pinned_pair;
    let mut services = vec![pair, solo];
    if nodes >= 5 {
        services.push(service(
            "pool",
            RedundancyModel::NPlusM { active_units: 2 },
            &[("u1", 1), ("u2", 2), ("u3", 3)],
            &["pool-0", "pool-1", "pool-2", "pool-3"],
        ));
        services.push(service(
            "front",
            RedundancyModel::NWayActive {
                actives_per_shard: 0,
            },
            &[("f1", 4), ("f2", 5)],
            &["front-0"],
        ));
    }
    let pairs = nodes / 2;
    for pair in 0..pairs.min(wide_shards) {
        let count = wide_shards / pairs + usize::from(pair < wide_shards % pairs);
        let shards: Vec<String> = (0..count).map(|shard| format!("w{pair}-{shard}")).collect();
        let shards: Vec<&str> = shards.iter().map(String::as_str).collect();
        let (a, b) = (format!("w{pair}a"), format!("w{pair}b"));
        let first = 2 * pair as u64 + 1;
        services.push(service(
            &format!("w{pair}"),
            RedundancyModel::TwoN,
            &[(&a, first), (&b, first + 1)],
            &shards,
        ));
    }
    Topology {
        services,
        node_restart: Some(ProcessSpec {
            argv: vec!["/sim/reboot".into()],
            ..ProcessSpec::default()
        }),
        ..Topology::default()
    }
}
