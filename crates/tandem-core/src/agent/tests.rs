//! Scenario tests of the agent: one node (n1, unit `a`) against a committed 2n state.

use super::*;
use crate::cluster::tests::two_n_state;
use crate::cluster::{AdminOp, AdminTarget, Command, HandoverUpdate, RoleChange};

const LEASE: Duration = Duration::from_millis(200);

fn ms(millis: u64) -> Time {
    Time::from_millis(millis)
}

fn a() -> UnitName {
    "a".into()
}

struct Harness {
    agent: Agent,
    state: ClusterState,
    applied: u64,
}

impl Harness {
    fn new() -> Self {
        Self {
            agent: Agent::new(NodeId(1), LEASE),
            state: two_n_state(),
            applied: 1,
        }
    }

    /// The 2n state of [`Harness::new`] with shards `s0`..`s{count - 1}`.
    fn with_shards(count: usize) -> Self {
        let mut state = ClusterState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let names: Vec<String> = (0..count).map(|index| format!("s{index}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let service = crate::topology::tests::service(
            "counter",
            crate::topology::RedundancyModel::TwoN,
            &[("a", 1), ("b", 2)],
            &names,
        );
        let topology = crate::topology::Topology {
            services: vec![service],
            ..crate::topology::Topology::default()
        };
        assert_eq!(
            state.apply(1, &Command::SetTopology(topology)),
            crate::cluster::ApplyOutcome::Changed
        );
        state.take_changes();
        Self {
            agent: Agent::new(NodeId(1), LEASE),
            state,
            applied: 1,
        }
    }

    fn apply(&mut self, command: Command) {
        self.applied += 1;
        let outcome = self.state.apply(self.applied, &command);
        assert!(outcome.refusal().is_none(), "{outcome:?}");
        let changes = self.state.take_changes();
        self.agent.on_changes(&self.state, &changes);
    }

    fn set_role(&mut self, shard: &str, role: Option<Role>) {
        let version = self.state.shards[&ShardName::from(shard)].version;
        self.apply(Command::Reassign {
            shard: shard.into(),
            expected_version: version,
            changes: vec![RoleChange { unit: a(), role }],
            handover: HandoverUpdate::Keep,
        });
    }

    /// Reconciles; health checks are answered at once (tests of health checks use
    /// `reconcile_raw`).
    fn reconcile(&mut self, now: Time) -> Vec<AgentAction> {
        let actions = self.reconcile_raw(now);
        for action in &actions {
            if let AgentAction::Send {
                unit,
                generation,
                request,
                command: UnitCommand::Health,
            } = action
            {
                assert!(self
                    .agent
                    .on_reply(unit, *generation, *request, Ok(()))
                    .is_none());
            }
        }
        actions
    }

    fn reconcile_raw(&mut self, now: Time) -> Vec<AgentAction> {
        self.agent.reconcile(now, &self.state, self.applied)
    }

    fn grant(&mut self, sent_at: Time) {
        assert!(self
            .agent
            .on_grant(sent_at, sent_at, self.applied, Duration::ZERO));
    }

    /// Starts unit a's first instance and registers it; returns the generation.
    fn running(&mut self, now: Time) -> u64 {
        self.grant(now);
        let actions = self.reconcile(now);
        let generation = match &actions[..] {
            [AgentAction::Start { generation, .. }] => *generation,
            other => panic!("expected a start: {other:?}"),
        };
        self.agent.on_started(&a(), generation, 4242);
        assert!(self.agent.on_registered(now, &a(), generation));
        generation
    }

    /// The hooks sent in `actions`: (request, command).
    fn sends(actions: &[AgentAction]) -> Vec<(u64, UnitCommand)> {
        actions
            .iter()
            .filter_map(|action| match action {
                AgentAction::Send {
                    request, command, ..
                } if *command != UnitCommand::Health => Some((*request, command.clone())),
                _ => None,
            })
            .collect()
    }

    /// The lease deadlines sent in `actions`.
    fn leases(actions: &[AgentAction]) -> Vec<Option<Time>> {
        actions
            .iter()
            .filter_map(|action| match action {
                AgentAction::Lease { valid_until, .. } => Some(*valid_until),
                _ => None,
            })
            .collect()
    }

    /// Answers the hooks `actions` sent to instance `generation` of unit a; returns the
    /// commands.
    fn answer_all(&mut self, generation: u64, actions: &[AgentAction]) -> Vec<UnitCommand> {
        let sends = Self::sends(actions);
        for (request, _) in &sends {
            self.agent.on_reply(&a(), generation, *request, Ok(()));
        }
        sends.into_iter().map(|(_, command)| command).collect()
    }
}

#[test]
fn nothing_starts_before_the_first_lease_and_then_the_unit_starts() {
    let mut h = Harness::new();
    assert!(h.reconcile(ms(0)).is_empty(), "no lease: not caught up");
    let generation = h.running(ms(10));
    assert_eq!(generation, 1);
    let report = h.agent.report(ms(10), &h.state, h.applied);
    let unit = &report.units[&a()];
    assert_eq!((unit.presence, unit.pid), (Presence::Running, Some(4242)));
}

#[test]
fn roles_are_sent_in_priority_order_and_settle_when_answered() {
    let mut h = Harness::new();
    let generation = h.running(ms(0));
    h.set_role("s0", Some(Role::Active));
    h.set_role("s1", Some(Role::Standby));
    let actions = h.reconcile(ms(1));
    assert!(actions.iter().any(|action| matches!(
        action,
        AgentAction::Lease {
            valid_until: Some(_),
            ..
        }
    )));
    // Both hooks go out at once (the unit runs them in order), STANDBY before ACTIVE.
    let sends = Harness::sends(&actions);
    assert_eq!(sends.len(), 2, "{sends:?}");
    assert!(matches!(
        &sends[0].1,
        UnitCommand::Assign {
            role: Role::Standby,
            ..
        }
    ));
    assert!(matches!(
        &sends[1].1,
        UnitCommand::Assign {
            role: Role::Active,
            epoch: 1,
            ..
        }
    ));
    // Nothing is sent twice while the answers are awaited.
    assert!(Harness::sends(&h.reconcile(ms(2))).is_empty());
    assert!(h
        .agent
        .on_reply(&a(), generation, sends[0].0, Ok(()))
        .is_none());
    let report = h.agent.report(ms(2), &h.state, h.applied);
    let settled = report.units[&a()].settled.as_ref().expect("running");
    assert_eq!(
        settled.unsettled.iter().collect::<Vec<_>>(),
        vec![&ShardName::from("s0")],
        "the ACTIVE hook in flight is unsettled"
    );
    h.agent.on_reply(&a(), generation, sends[1].0, Ok(()));
    let report = h.agent.report(ms(3), &h.state, h.applied);
    let settled = report.units[&a()].settled.as_ref().expect("running");
    assert!(settled.unsettled.is_empty(), "{settled:?}");
    assert!(!settled.acting_withheld);
    assert_eq!(h.state.roles_of(&a()).count(), 2);
    assert!(
        Harness::sends(&h.reconcile(ms(4))).is_empty(),
        "nothing left to do"
    );
}

#[test]
fn assignments_of_one_priority_go_in_one_batch_confirmed_by_one_answer() {
    let mut h = Harness::with_shards(5);
    let generation = h.running(ms(0));
    for shard in ["s0", "s1", "s2"] {
        h.set_role(shard, Some(Role::Active));
    }
    h.set_role("s3", Some(Role::Standby));
    let sends = Harness::sends(&h.reconcile(ms(1)));
    // STANDBY first (alone), then the three ACTIVEs in one batch, in name order.
    assert_eq!(sends.len(), 2, "{sends:?}");
    let epoch = |h: &Harness, shard: &str| h.state.shards[&ShardName::from(shard)].epoch;
    assert_eq!(
        sends[0].1,
        assign(&"s3".into(), Role::Standby, epoch(&h, "s3"))
    );
    assert_eq!(
        sends[1].1,
        UnitCommand::Batch(
            ["s0", "s1", "s2"]
                .iter()
                .map(|shard| assign(&(*shard).into(), Role::Active, epoch(&h, shard)))
                .collect()
        )
    );
    h.agent.on_reply(&a(), generation, sends[0].0, Ok(()));
    h.agent.on_reply(&a(), generation, sends[1].0, Ok(()));
    let confirmed = h.agent.confirmed(&a());
    for shard in ["s0", "s1", "s2"] {
        assert_eq!(confirmed[&ShardName::from(shard)], Role::Active, "{shard}");
    }
    let report = h.agent.report(ms(2), &h.state, h.applied);
    let settled = report.units[&a()].settled.as_ref().expect("running");
    assert!(settled.unsettled.is_empty(), "{settled:?}");
}

#[test]
fn hooks_in_flight_are_bounded_and_each_times_out_from_when_the_one_ahead_answered() {
    let count = HOOKS_IN_FLIGHT_MAX * ASSIGN_BATCH_MAX + 3;
    let mut h = Harness::with_shards(count);
    let generation = h.running(ms(0));
    for index in 0..count {
        h.set_role(&format!("s{index}"), Some(Role::Standby));
    }
    let first = Harness::sends(&h.reconcile(ms(1)));
    assert_eq!(first.len(), HOOKS_IN_FLIGHT_MAX);
    assert!(first.iter().all(
        |(_, command)| matches!(command, UnitCommand::Batch(items) if items.len() == ASSIGN_BATCH_MAX)
    ));
    // The first hook's timeout runs from 1 ms; the second's only from the first's answer.
    h.agent.on_reply(&a(), generation, first[0].0, Ok(()));
    let more = Harness::sends(&h.reconcile(ms(400)));
    assert_eq!(more.len(), 1, "one slot freed: {more:?}");
    assert!(matches!(&more[0].1, UnitCommand::Batch(items) if items.len() == 3));
    // The callback timeout is 2 s: at 2399 ms the second hook (running since 400) is still
    // within it, at 2400 it is not.
    assert!(!h
        .reconcile(ms(2399))
        .iter()
        .any(|action| matches!(action, AgentAction::Stop { .. })));
    assert!(h.reconcile(ms(2400)).iter().any(|action| matches!(
        action,
        AgentAction::Stop {
            how: StopSpec { kill: true, .. },
            ..
        }
    )));
}

#[test]
fn an_expired_lease_suspends_the_active_without_hooks_and_a_new_grant_resumes_it() {
    let mut h = Harness::new();
    let generation = h.running(ms(0));
    h.set_role("s0", Some(Role::Active));
    h.grant(ms(0));
    let sends = Harness::sends(&h.reconcile(ms(1)));
    h.agent.on_reply(&a(), generation, sends[0].0, Ok(()));
    let settled = |h: &Harness, now: u64| {
        let report = h.agent.report(ms(now), &h.state, h.applied);
        let settled = report.units[&a()].settled.clone().expect("running");
        settled.settled(&ShardName::from("s0"), Role::Active)
    };
    assert!(settled(&h, 2));
    // The lease (granted for a heartbeat sent at 0) ends at 200: the unit is told, and its
    // SDK suspends the role by itself; the agent sends no hook, and the role stays.
    let actions = h.reconcile(ms(200));
    assert!(actions.contains(&AgentAction::Lease {
        unit: a(),
        generation,
        valid_until: None
    }));
    assert!(Harness::sends(&actions).is_empty(), "{actions:?}");
    assert_eq!(
        h.agent.confirmed(&a())[&ShardName::from("s0")],
        Role::Active
    );
    assert!(!settled(&h, 200), "a suspended ACTIVE is not settled");
    // A grant whose floor is not applied yet does not help.
    h.agent
        .on_grant(ms(300), ms(300), h.applied + 1, Duration::ZERO);
    let actions = h.reconcile(ms(301));
    assert!(
        !Harness::leases(&actions).iter().any(Option::is_some),
        "{actions:?}"
    );
    // A grant for a heartbeat from this node's future (an earlier run on another clock) is
    // refused: taken, it would run until 10 s and hide every real grant.
    assert!(!h
        .agent
        .on_grant(ms(305), ms(9_800), h.applied, Duration::ZERO));
    assert!(
        !Harness::leases(&h.reconcile(ms(306)))
            .iter()
            .any(Option::is_some),
        "no lease from the future"
    );
    h.agent
        .on_grant(ms(310), ms(310), h.applied, Duration::ZERO);
    let actions = h.reconcile(ms(311));
    assert_eq!(
        actions,
        vec![AgentAction::Lease {
            unit: a(),
            generation,
            valid_until: Some(ms(510)),
        }],
        "the lease alone resumes the role"
    );
    assert!(settled(&h, 311));
}

#[test]
fn a_lapsed_unit_gets_its_lease_back_only_once_it_cannot_believe_in_a_moved_active() {
    let mut h = Harness::new();
    let generation = h.running(ms(0));
    h.set_role("s0", Some(Role::Active));
    h.set_role("s1", Some(Role::Active));
    h.grant(ms(0));
    let actions = h.reconcile(ms(1));
    h.answer_all(generation, &actions);
    let epoch = h.state.shards[&ShardName::from("s1")].epoch;
    // The lease lapses; meanwhile the cluster gives s0 a STANDBY role, and moves s1 to b and
    // back to a (a new epoch).
    assert_eq!(Harness::leases(&h.reconcile(ms(200))), vec![None]);
    h.set_role("s0", Some(Role::Standby));
    for (a_role, b_role) in [(None, Some(Role::Active)), (Some(Role::Active), None)] {
        let version = h.state.shards[&ShardName::from("s1")].version;
        h.apply(Command::Reassign {
            shard: "s1".into(),
            expected_version: version,
            changes: vec![
                RoleChange {
                    unit: a(),
                    role: a_role,
                },
                RoleChange {
                    unit: "b".into(),
                    role: b_role,
                },
            ],
            handover: HandoverUpdate::Keep,
        });
    }
    assert!(h.state.shards[&ShardName::from("s1")].epoch > epoch);
    // The grant comes back: the unit, which may still believe in both ACTIVEs at the old
    // epochs, is told the new roles first and gets no lease while any of them is unanswered.
    h.grant(ms(300));
    let mut all = Vec::new();
    let mut lease = Vec::new();
    for now in 301..320 {
        let actions = h.reconcile(ms(now));
        lease = Harness::leases(&actions);
        if !lease.is_empty() {
            break;
        }
        let sends = Harness::sends(&actions);
        assert!(
            !sends.is_empty(),
            "no lease and nothing to answer at {now}: {actions:?}"
        );
        let again = h.reconcile(ms(now));
        assert!(
            Harness::leases(&again).is_empty(),
            "a lease with hooks unanswered: {again:?}"
        );
        all.extend(h.answer_all(generation, &actions));
        h.answer_all(generation, &again);
    }
    assert_eq!(lease, vec![Some(ms(500))]);
    assert!(
        all.iter().any(|command| matches!(
            command,
            UnitCommand::Assign { shard, role: Role::Standby, .. } if shard.as_str() == "s0"
        )),
        "s0 is assigned STANDBY: {all:?}"
    );
    let new_epoch = h.state.shards[&ShardName::from("s1")].epoch;
    assert!(
        all.iter().any(|command| matches!(
            command,
            UnitCommand::Assign { shard, role: Role::Active, epoch } if shard.as_str() == "s1" && *epoch == new_epoch
        )),
        "s1 is assigned ACTIVE at its new epoch: {all:?}"
    );
}

#[test]
fn a_crash_is_reported_until_committed_and_the_next_generation_starts() {
    let mut h = Harness::new();
    let generation = h.running(ms(0));
    h.agent.on_exited(&a(), generation, None, Some(9));
    let report = h.agent.report(ms(1), &h.state, h.applied);
    let faults = &report.units[&a()].faults;
    assert_eq!(faults.len(), 1);
    let (id, kind) = faults[0].clone();
    assert_eq!(
        kind,
        FaultKind::ProcessExit {
            code: None,
            signal: Some(9)
        }
    );
    // No restart of the same generation while the fault is not handled.
    h.grant(ms(1));
    assert!(h.reconcile(ms(1)).is_empty());
    h.apply(Command::UnitFault {
        unit: a(),
        fault: id,
        kind,
        at_ms: 0,
        promotions: vec![],
    });
    let actions = h.reconcile(ms(2));
    assert!(
        matches!(&actions[..], [AgentAction::Start { generation: 2, .. }]),
        "{actions:?}"
    );
    assert!(h.agent.report(ms(2), &h.state, h.applied).units[&a()]
        .faults
        .is_empty());
}

#[test]
fn a_missed_health_check_kills_the_unit_and_the_fault_follows_its_exit() {
    let mut h = Harness::new();
    let generation = h.running(ms(0));
    let actions = h.reconcile_raw(ms(0));
    assert!(actions.iter().any(|action| matches!(
        action,
        AgentAction::Send {
            command: UnitCommand::Health,
            ..
        }
    )));
    // Default health timeout is 300 ms.
    h.grant(ms(300));
    let actions = h.reconcile_raw(ms(300));
    assert!(
        actions.iter().any(|action| matches!(
            action,
            AgentAction::Stop {
                how: StopSpec { kill: true, .. },
                ..
            }
        )),
        "{actions:?}"
    );
    assert!(
        h.agent.report(ms(300), &h.state, h.applied).units[&a()]
            .faults
            .is_empty(),
        "not before it exited"
    );
    h.agent.on_exited(&a(), generation, None, Some(9));
    let faults = &h.agent.report(ms(301), &h.state, h.applied).units[&a()].faults;
    assert_eq!(faults[0].1, FaultKind::HealthTimeout);
}

#[test]
fn a_hook_that_fails_kills_the_unit() {
    let mut h = Harness::new();
    let generation = h.running(ms(0));
    h.set_role("s0", Some(Role::Standby));
    let sends = Harness::sends(&h.reconcile(ms(1)));
    let stop = h
        .agent
        .on_reply(&a(), generation, sends[0].0, Err("no memory".into()));
    assert!(matches!(
        stop,
        Some(AgentAction::Stop {
            how: StopSpec { kill: true, .. },
            ..
        })
    ));
    h.agent.on_exited(&a(), generation, None, Some(9));
    let faults = &h.agent.report(ms(2), &h.state, h.applied).units[&a()].faults;
    assert_eq!(faults[0].1, FaultKind::CallbackFailed);
}

#[test]
fn a_reported_fault_quiesces_the_unit_until_the_fault_is_handled() {
    let mut h = Harness::new();
    let generation = h.running(ms(0));
    h.set_role("s0", Some(Role::Active));
    let sends = Harness::sends(&h.reconcile(ms(1)));
    h.agent.on_reply(&a(), generation, sends[0].0, Ok(()));
    h.agent.on_unit_fault(&a(), generation, Severity::Transient);
    assert_eq!(
        h.agent.confirmed(&a())[&ShardName::from("s0")],
        Role::Quiesced
    );
    // Still ACTIVE in the committed state, but the agent will not re-activate it.
    assert!(Harness::sends(&h.reconcile(ms(2))).is_empty());
    let report = h.agent.report(ms(2), &h.state, h.applied);
    let (id, kind) = report.units[&a()].faults[0].clone();
    h.apply(Command::UnitFault {
        unit: a(),
        fault: id,
        kind,
        at_ms: 0,
        promotions: vec![],
    });
    // L0: the committed fault took the role away and asks for a reset: the removal first,
    // the reset behind it.
    let sends = Harness::sends(&h.reconcile(ms(3)));
    let commands: Vec<&UnitCommand> = sends.iter().map(|(_, command)| command).collect();
    assert_eq!(
        commands,
        [
            &UnitCommand::Remove { shard: "s0".into() },
            &UnitCommand::Reset
        ]
    );
}

#[test]
fn a_fault_reported_before_its_node_was_declared_down_is_handled_when_the_node_returns() {
    let mut h = Harness::new();
    let generation = h.running(ms(0));
    h.set_role("s0", Some(Role::Standby));
    let sends = Harness::sends(&h.reconcile(ms(1)));
    h.agent.on_reply(&a(), generation, sends[0].0, Ok(()));
    // The unit reports a node fault and its node is cut off before the leader hears of it.
    // With nowhere to relocate to (n2 hosts b, n3 is down) the verdict waits for the node.
    h.agent.on_unit_fault(&a(), generation, Severity::Node);
    for (node, up) in [(3, false), (1, false), (1, true)] {
        h.apply(Command::SetNodeLiveness {
            node: NodeId(node),
            up,
            at_ms: 0,
            promotions: vec![],
        });
    }
    let ladder = &h.state.units[&a()].ladder;
    assert_eq!(
        ladder.last.as_ref().map(|record| record.action),
        Some(crate::ladder::RecoveryAction::AwaitNode)
    );
    // The verdict took the role away.
    let sends = Harness::sends(&h.reconcile(ms(2)));
    assert_eq!(sends[0].1, UnitCommand::Remove { shard: "s0".into() });
    h.agent.on_reply(&a(), generation, sends[0].0, Ok(()));
    // The node is back and the unit is still faulted: its own fault was not the node loss and
    // is still reported, so the leader handles it instead of giving the unit roles it would
    // never act on.
    let report = h.agent.report(ms(2), &h.state, h.applied);
    assert_eq!(
        report.units[&a()]
            .faults
            .iter()
            .map(|(_, kind)| kind.clone())
            .collect::<Vec<_>>(),
        vec![FaultKind::Reported(Severity::Node)]
    );
    let mut observations = crate::report::Observations::new(h.applied);
    observations.record(ms(2), NodeId(1), report);
    let commands = crate::director::Director::new().plan(ms(2), &h.state, &observations, 0);
    assert!(
        matches!(&commands[..], [Command::UnitFault { unit, .. }] if *unit == a()),
        "{commands:?}"
    );
    h.apply(commands[0].clone());
    assert_eq!(h.state.units[&a()].generation, generation + 1, "restarted");
    assert!(matches!(
        &h.reconcile(ms(3))[..],
        [AgentAction::Stop { generation: 1, .. }]
    ));
}

#[test]
fn a_new_generation_stops_the_old_instance_gracefully_then_starts() {
    let mut h = Harness::new();
    let generation = h.running(ms(0));
    h.apply(Command::Admin {
        target: AdminTarget::Unit(a()),
        op: AdminOp::Restart,
    });
    h.apply(Command::RestartUnit {
        unit: a(),
        expected_generation: 1,
    });
    let actions = h.reconcile(ms(1));
    assert!(
        matches!(
            &actions[..],
            [AgentAction::Stop {
                generation: 1,
                how: StopSpec { kill: false, .. },
                ..
            }]
        ),
        "{actions:?}"
    );
    h.agent.on_exited(&a(), generation, Some(0), None);
    assert!(
        h.agent.report(ms(2), &h.state, h.applied).units[&a()]
            .faults
            .is_empty(),
        "a requested stop is no fault"
    );
    let actions = h.reconcile(ms(2));
    assert!(matches!(
        &actions[..],
        [AgentAction::Start { generation: 2, .. }]
    ));
}

#[test]
fn a_restarted_agent_reports_the_units_that_held_roles() {
    let mut h = Harness::new();
    h.set_role("s0", Some(Role::Active));
    h.grant(ms(0));
    let actions = h.reconcile(ms(0));
    assert!(
        actions.is_empty(),
        "the unit waits for its fault to be handled: {actions:?}"
    );
    let report = h.agent.report(ms(0), &h.state, h.applied);
    assert_eq!(report.units[&a()].faults[0].1, FaultKind::AgentRestarted);
}

#[test]
fn registration_of_an_unexpected_instance_is_refused() {
    let mut h = Harness::new();
    let generation = h.running(ms(0));
    assert!(
        !h.agent.on_registered(ms(1), &a(), generation),
        "already registered"
    );
    assert!(!h.agent.on_registered(ms(1), &a(), generation + 1));
    assert!(!h.agent.on_registered(ms(1), &"zz".into(), 1));
}

#[test]
fn an_active_hook_in_flight_for_a_role_moved_meanwhile_keeps_a_lapsed_unit_unleased() {
    let mut h = Harness::new();
    let generation = h.running(ms(0));
    h.set_role("s0", Some(Role::Active));
    h.grant(ms(0));
    // The ACTIVE hook goes out and stays unanswered (the unit may already believe it).
    let activate = Harness::sends(&h.reconcile(ms(1)));
    assert!(
        matches!(
            &activate[..],
            [(
                _,
                UnitCommand::Assign {
                    role: Role::Active,
                    ..
                }
            )]
        ),
        "{activate:?}"
    );
    // The lease lapses and the cluster takes the role away meanwhile.
    assert_eq!(Harness::leases(&h.reconcile(ms(200))), vec![None]);
    h.set_role("s0", None);
    h.grant(ms(300));
    let actions = h.reconcile(ms(301));
    assert!(Harness::leases(&actions).is_empty(), "{actions:?}");
    // Answered, the ACTIVE is confirmed and differs from the committed state: the removal
    // goes out, and the lease comes back once it is answered.
    h.agent.on_reply(&a(), generation, activate[0].0, Ok(()));
    let actions = h.reconcile(ms(302));
    assert!(Harness::leases(&actions).is_empty(), "{actions:?}");
    let commands = h.answer_all(generation, &actions);
    assert!(
        matches!(&commands[..], [UnitCommand::Remove { .. }]),
        "{commands:?}"
    );
    assert_eq!(Harness::leases(&h.reconcile(ms(303))), vec![Some(ms(500))]);
}
