//! Scenario tests of the director: a committed state, agents that report their units, rounds
//! of planning and applying.

use super::*;
use crate::cluster::{AdminOp, AdminTarget, ApplyOutcome};
use crate::ladder::{FaultKind, Severity};
use crate::report::{AgentReport, UnitReport};
use crate::topology::Topology;

/// A cluster state plus agents that do whatever they are told at once.
struct Harness {
    state: ClusterState,
    director: Director,
    now: Time,
    index: u64,
    /// Units whose agents never confirm anything (e.g. a hook that hangs).
    silent: BTreeSet<UnitName>,
    /// Faults the agents report: unit → kind.
    faults: BTreeMap<UnitName, FaultKind>,
    /// STANDBYs the primaries' data planes have not verified (every other STANDBY is claimed
    /// in sync, as a data plane with nothing to transfer would at once).
    unsynced: BTreeSet<UnitName>,
    /// The observations the director was last told about.
    last_observations: Option<Observations>,
}

fn spec(model: RedundancyModel, units: &[(&str, u64)], shards: &[&str]) -> ServiceSpec {
    crate::topology::tests::service("svc", model, units, shards)
}

impl Harness {
    fn new(service: ServiceSpec, nodes: u64) -> Self {
        let mut state = ClusterState::bootstrap((1..=nodes).map(NodeId));
        let topology = Topology {
            services: vec![service],
            ..Topology::default()
        };
        assert_eq!(
            state.apply(1, &Command::SetTopology(topology)),
            ApplyOutcome::Changed
        );
        Self {
            state,
            director: Director::new(),
            now: Time::from_millis(1000),
            index: 1,
            silent: BTreeSet::new(),
            faults: BTreeMap::new(),
            unsynced: BTreeSet::new(),
            last_observations: None,
        }
    }

    fn unit(&self, name: &str) -> &UnitRecord {
        &self.state.units[&UnitName::from(name)]
    }

    fn shard(&self, name: &str) -> &ShardRecord {
        &self.state.shards[&ShardName::from(name)]
    }

    fn role(&self, shard: &str, unit: &str) -> Option<Role> {
        self.shard(shard).roles.get(&UnitName::from(unit)).copied()
    }

    /// What the agents report: every unit on an up node runs and has settled its committed
    /// roles (QUIESCING settles as QUIESCED), except silent ones.
    fn observations(&self) -> Observations {
        let mut observations = Observations::new(self.index);
        for node in self.state.nodes.values().filter(|node| node.up) {
            let mut report = AgentReport {
                applied_index: self.index,
                ..AgentReport::default()
            };
            for unit in self.state.units_on(node.id) {
                let mut unit_report = UnitReport {
                    generation: unit.generation,
                    presence: if self.state.should_run(unit) {
                        Presence::Running
                    } else {
                        Presence::Stopped
                    },
                    pid: Some(100),
                    ..UnitReport::default()
                };
                if let Some(kind) = self.faults.get(&unit.name) {
                    unit_report.faults.push((
                        FaultId {
                            generation: unit.generation,
                            seq: unit.fault_seen.seq + 1,
                        },
                        kind.clone(),
                    ));
                }
                if !self.silent.contains(&unit.name) {
                    unit_report.settled = Some(crate::report::SettledRoles::default());
                }
                report.units.insert(unit.name.clone(), unit_report);
            }
            for shard in self.state.shards.values() {
                let primary = shard
                    .acting()
                    .next()
                    .or_else(|| shard.handover.as_ref().map(|handover| &handover.from));
                if primary.is_some_and(|unit| self.state.units[unit].node == node.id) {
                    let verified: BTreeSet<UnitName> = shard
                        .units_in(Role::Standby)
                        .filter(|unit| !self.unsynced.contains(*unit))
                        .cloned()
                        .collect();
                    // A new claim whenever the verified units differ from the record.
                    let seq = shard.in_sync_claim + u64::from(verified != shard.in_sync);
                    report.in_sync.insert(
                        shard.name.clone(),
                        crate::report::InSyncClaim {
                            epoch: shard.epoch,
                            version: shard.version,
                            units: verified,
                            seq,
                        },
                    );
                }
            }
            observations.record(self.now, node.id, report);
        }
        observations
    }

    fn apply(&mut self, commands: &[Command]) {
        for command in commands {
            self.index += 1;
            let outcome = self.state.apply(self.index, command);
            assert!(
                outcome.refusal().is_none(),
                "{command:?} was refused: {outcome:?}"
            );
            if let Command::UnitFault { unit, .. } = command {
                self.faults.remove(unit);
            }
        }
        self.state.check_invariants().unwrap();
    }

    /// Tells the director what changed: the committed state, and every report as new.
    fn note(&mut self, observations: &Observations) {
        let changes = self.state.take_changes();
        self.director.note_changes(&self.state, &changes);
        for node in observations.nodes.keys() {
            let before = self
                .last_observations
                .as_ref()
                .and_then(|last| last.nodes.get(node))
                .map(|(_, report)| report.clone());
            let judged = crate::report::Judged {
                node: *node,
                before,
            };
            self.director
                .note_report(&self.state, observations, &judged);
        }
        self.last_observations = Some(observations.clone());
    }

    /// One round: plan, commit everything planned, move time on.
    fn round(&mut self) -> Vec<Command> {
        let observations = self.observations();
        self.note(&observations);
        let commands = self
            .director
            .plan(self.now, &self.state, &observations, 1_000_000);
        // The proposals kept are the ones neither committed nor expired, as a walk finds.
        self.director.pending.check(self.now, &self.state).unwrap();
        self.apply(&commands);
        self.now = self.now + Duration::from_millis(10);
        commands
    }

    /// Rounds until the director has nothing more to do (bounded).
    fn settle(&mut self) -> usize {
        for round in 0..50 {
            if self.round().is_empty() && !self.director.has_more() {
                return round;
            }
        }
        panic!(
            "the director did not settle in 50 rounds: {:#?}",
            self.state.shards
        );
    }
}

#[test]
fn two_n_places_every_shard_active_on_one_unit_and_standby_on_the_other() {
    let mut h = Harness::new(
        spec(
            RedundancyModel::TwoN,
            &[("a", 1), ("b", 2)],
            &["s0", "s1", "s2"],
        ),
        3,
    );
    h.settle();
    for shard in ["s0", "s1", "s2"] {
        assert_eq!(h.role(shard, "a"), Some(Role::Active), "{shard}");
        assert_eq!(h.role(shard, "b"), Some(Role::Standby), "{shard}");
        assert_eq!(h.shard(shard).epoch, 1);
    }
}

#[test]
fn a_crashed_active_fails_over_to_its_standby_in_one_command() {
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0", "s1"]),
        2,
    );
    h.settle();
    h.faults.insert(
        "a".into(),
        FaultKind::ProcessExit {
            code: None,
            signal: Some(9),
        },
    );
    let commands = h.round();
    assert_eq!(commands.len(), 1, "{commands:?}");
    let Command::UnitFault { promotions, .. } = &commands[0] else {
        panic!("{commands:?}");
    };
    assert_eq!(promotions.len(), 2);
    for shard in ["s0", "s1"] {
        assert_eq!(h.role(shard, "b"), Some(Role::Active));
        assert_eq!(h.role(shard, "a"), None);
        assert_eq!(h.shard(shard).epoch, 2);
    }
    assert_eq!(h.unit("a").generation, 2, "restarted by the ladder");
    // The restarted a comes back as STANDBY.
    h.settle();
    for shard in ["s0", "s1"] {
        assert_eq!(h.role(shard, "a"), Some(Role::Standby));
        assert_eq!(h.role(shard, "b"), Some(Role::Active));
    }
}

#[test]
fn switchover_quiesces_then_swaps_and_the_old_active_becomes_standby() {
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0"]),
        2,
    );
    h.settle();
    // a will not confirm QUIESCED until we let it.
    h.silent.insert("a".into());
    let observations = h.observations();
    let commands = plan_switchover(
        &View::new(&h.state, &observations),
        &SwitchoverTarget::Shard("s0".into()),
    );
    // a is silent, so its ACTIVE is not confirmed: refused, nothing changed.
    assert_eq!(commands.unwrap_err().code, AdminCode::Busy);
    h.silent.clear();
    let observations = h.observations();
    let commands = plan_switchover(
        &View::new(&h.state, &observations),
        &SwitchoverTarget::Shard("s0".into()),
    )
    .unwrap();
    h.apply(&commands);
    assert_eq!(h.role("s0", "a"), Some(Role::Quiescing));
    assert!(h.shard("s0").handover.is_some());
    // While a is still quiescing the director waits.
    h.silent.insert("a".into());
    assert!(h.round().is_empty());
    h.silent.clear();
    h.round();
    assert_eq!(h.role("s0", "a"), Some(Role::Standby));
    assert_eq!(h.role("s0", "b"), Some(Role::Active));
    assert!(h.shard("s0").handover.is_none());
    assert_eq!(h.shard("s0").epoch, 2);
    // And back, once b's agent verified a in sync at the new epoch.
    let observations = h.observations();
    let refused = plan_switchover(
        &View::new(&h.state, &observations),
        &SwitchoverTarget::Service("svc".into()),
    );
    assert_eq!(refused.unwrap_err().code, AdminCode::NotInSync);
    h.settle();
    let observations = h.observations();
    let commands = plan_switchover(
        &View::new(&h.state, &observations),
        &SwitchoverTarget::Service("svc".into()),
    )
    .unwrap();
    h.apply(&commands);
    h.settle();
    assert_eq!(h.role("s0", "a"), Some(Role::Active));
    assert_eq!(h.role("s0", "b"), Some(Role::Standby));
}

#[test]
fn switchover_is_refused_without_a_ready_standby() {
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0"]),
        2,
    );
    h.settle();
    h.silent.insert("b".into());
    let observations = h.observations();
    let error = plan_switchover(
        &View::new(&h.state, &observations),
        &SwitchoverTarget::Shard("s0".into()),
    )
    .unwrap_err();
    assert_eq!(error.code, AdminCode::NoStandby);
    assert!(
        error.message.contains("STANDBY b has not confirmed"),
        "{error}"
    );
    let error = plan_switchover(
        &View::new(&h.state, &observations),
        &SwitchoverTarget::Shard("nope".into()),
    )
    .unwrap_err();
    assert_eq!(error.code, AdminCode::NotFound);
}

#[test]
fn a_standby_dying_mid_switchover_rolls_it_back() {
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0"]),
        2,
    );
    h.settle();
    let observations = h.observations();
    let commands = plan_switchover(
        &View::new(&h.state, &observations),
        &SwitchoverTarget::Shard("s0".into()),
    )
    .unwrap();
    h.apply(&commands);
    // b dies before a has quiesced.
    h.silent.insert("a".into());
    h.faults.insert(
        "b".into(),
        FaultKind::ProcessExit {
            code: Some(1),
            signal: None,
        },
    );
    h.round();
    assert_eq!(h.shard("s0").handover.as_ref().unwrap().to, None);
    h.silent.clear();
    h.round();
    // Nobody to take over: a is ACTIVE again, with a new epoch.
    assert_eq!(h.role("s0", "a"), Some(Role::Active));
    assert!(h.shard("s0").handover.is_none());
}

#[test]
fn locking_the_active_unit_moves_its_shards_and_unlocking_brings_it_back_as_standby() {
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0", "s1"]),
        2,
    );
    h.settle();
    h.apply(&[Command::Admin {
        target: AdminTarget::Unit("a".into()),
        op: AdminOp::Lock,
    }]);
    h.round();
    assert_eq!(
        h.role("s0", "a"),
        Some(Role::Quiesced),
        "lock gives no grace"
    );
    h.settle();
    for shard in ["s0", "s1"] {
        assert_eq!(h.role(shard, "a"), None);
        assert_eq!(h.role(shard, "b"), Some(Role::Active));
    }
    h.apply(&[Command::Admin {
        target: AdminTarget::Unit("a".into()),
        op: AdminOp::Unlock,
    }]);
    h.settle();
    for shard in ["s0", "s1"] {
        assert_eq!(h.role(shard, "a"), Some(Role::Standby));
    }
}

#[test]
fn node_loss_fails_over_and_relocates_the_unit() {
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0"]),
        3,
    );
    h.settle();
    let observations = h.observations();
    let promotions = node_down_promotions(&View::new(&h.state, &observations), NodeId(1));
    assert_eq!(
        promotions,
        vec![(ShardName::from("s0"), UnitName::from("b"))]
    );
    h.apply(&[Command::SetNodeLiveness {
        node: NodeId(1),
        up: false,
        at_ms: 0,
        promotions,
    }]);
    assert_eq!(h.role("s0", "b"), Some(Role::Active));
    assert_eq!(h.role("s0", "a"), None);
    assert_eq!(h.unit("a").node, NodeId(3));
    h.settle();
    assert_eq!(
        h.role("s0", "a"),
        Some(Role::Standby),
        "re-created on n3 as STANDBY"
    );
}

#[test]
fn n_plus_m_puts_actives_on_the_first_units_and_standbys_on_the_spare() {
    let service = spec(
        RedundancyModel::NPlusM { active_units: 2 },
        &[("u1", 1), ("u2", 2), ("spare", 3)],
        &["s0", "s1", "s2", "s3"],
    );
    let mut h = Harness::new(service, 3);
    h.settle();
    let mut actives = BTreeMap::new();
    for shard in ["s0", "s1", "s2", "s3"] {
        let record = h.shard(shard);
        let active = record.units_in(Role::Active).next().unwrap().clone();
        *actives.entry(active).or_insert(0) += 1;
        assert_eq!(
            record.roles.get(&UnitName::from("spare")),
            Some(&Role::Standby),
            "{shard}"
        );
    }
    assert_eq!(actives.get(&UnitName::from("u1")), Some(&2));
    assert_eq!(actives.get(&UnitName::from("u2")), Some(&2));
    // u1 fails: the spare takes its two shards.
    h.faults
        .insert("u1".into(), FaultKind::Reported(Severity::Restart));
    h.round();
    let spare_actives = h
        .state
        .shards
        .values()
        .filter(|shard| shard.roles.get(&UnitName::from("spare")) == Some(&Role::Active))
        .count();
    assert_eq!(spare_actives, 2);
}

#[test]
fn n_way_active_puts_every_shard_on_every_unit() {
    let service = spec(
        RedundancyModel::NWayActive {
            actives_per_shard: 0,
        },
        &[("f1", 1), ("f2", 2), ("f3", 3)],
        &["web"],
    );
    let mut h = Harness::new(service, 3);
    h.settle();
    assert_eq!(h.shard("web").units_in(Role::Active).count(), 3);
    h.faults.insert(
        "f2".into(),
        FaultKind::ProcessExit {
            code: Some(1),
            signal: None,
        },
    );
    h.settle();
    assert_eq!(
        h.shard("web").units_in(Role::Active).count(),
        3,
        "f2 came back"
    );
}

#[test]
fn admin_restart_hands_over_first_then_bumps_the_generation() {
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0"]),
        2,
    );
    h.settle();
    h.apply(&[Command::Admin {
        target: AdminTarget::Unit("a".into()),
        op: AdminOp::Restart,
    }]);
    h.round();
    assert_eq!(
        h.role("s0", "a"),
        Some(Role::Quiescing),
        "restart is graceful"
    );
    h.settle();
    assert_eq!(h.unit("a").generation, 2);
    assert!(!h.unit("a").restart_pending);
    assert_eq!(h.role("s0", "b"), Some(Role::Active));
    assert_eq!(h.role("s0", "a"), Some(Role::Standby));
}

#[test]
fn a_proposal_in_flight_is_not_repeated_until_it_expires() {
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0"]),
        2,
    );
    let observations = h.observations();
    let first = h.director.plan(h.now, &h.state, &observations, 0);
    assert_eq!(first.len(), 1);
    // Not committed yet: planning again proposes nothing new.
    assert!(h
        .director
        .plan(h.now, &h.state, &observations, 0)
        .is_empty());
    // After the retry interval, the same plan comes back (the proposal was lost).
    let later = h.now + RETRY_AFTER;
    assert_eq!(h.director.plan(later, &h.state, &observations, 0), first);
}

#[test]
fn an_in_sync_claim_is_looked_at_when_it_changes_or_its_proposal_expires() {
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0"]),
        2,
    );
    h.unsynced.insert("b".into());
    h.settle();
    assert!(h.shard("s0").in_sync.is_empty());
    let claims = |commands: &[Command]| {
        commands
            .iter()
            .filter(|command| matches!(command, Command::SetInSync { .. }))
            .count()
    };
    // The ACTIVE's agent verifies b: its report's claim changes, and is proposed.
    h.unsynced.clear();
    let observations = h.observations();
    h.note(&observations);
    let first = h.director.plan(h.now, &h.state, &observations, 0);
    assert_eq!(claims(&first), 1, "{first:?}");
    // Not committed (lost, say), and the same report again: nothing to look at.
    h.note(&observations);
    let again = h.director.plan(h.now, &h.state, &observations, 0);
    assert_eq!(claims(&again), 0, "{again:?}");
    // Its proposal had its time: the claim comes back though no report changed.
    h.note(&observations);
    let later = h.now + RETRY_AFTER;
    let retried = h.director.plan(later, &h.state, &observations, 0);
    assert_eq!(claims(&retried), 1, "{retried:?}");
    h.apply(&retried);
    assert_eq!(h.shard("s0").in_sync, ["b".into()].into());
}

#[test]
fn a_proposal_made_again_is_kept_past_the_time_of_the_first() {
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0"]),
        2,
    );
    let key = PendingKey::Shard("s0".into());
    let version = h.shard("s0").version;
    h.director.pending.insert(key.clone(), h.now, version);
    // It expires, is planned again, and proposed again a little later.
    let mut expired = Vec::new();
    let later = h.now + RETRY_AFTER;
    h.director
        .pending
        .expire(later, &h.state, |key| expired.push(key.clone()));
    assert_eq!(expired, vec![key.clone()]);
    assert!(!h.director.pending.contains(&key));
    h.director.pending.insert(key.clone(), later, version);
    // The first proposal's time passing again forgets nothing: the second is its own.
    let mut expired = Vec::new();
    h.director
        .pending
        .expire(later + Duration::from_millis(1), &h.state, |key| {
            expired.push(key.clone())
        });
    assert!(expired.is_empty());
    assert!(h.director.pending.contains(&key));
    // A change of another shard's record leaves it; the shard's own version moving forgets it.
    let mut changes = crate::cluster::Changes::default();
    changes.shards.insert("s1".into());
    h.director.pending.note_changes(&changes);
    h.director.pending.expire(later, &h.state, |_| {});
    assert!(h.director.pending.contains(&key));
    h.director
        .pending
        .insert(key.clone(), later, version.wrapping_add(1));
    changes.shards.insert("s0".into());
    h.director.pending.note_changes(&changes);
    h.director.pending.expire(later, &h.state, |_| {});
    assert!(
        !h.director.pending.contains(&key),
        "planned from another version"
    );
}

#[test]
fn nothing_is_assigned_to_units_the_agents_have_not_reported() {
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0"]),
        2,
    );
    let commands = h
        .director
        .plan(h.now, &h.state, &Observations::default(), 0);
    assert!(commands.is_empty());
    h.settle();
    assert_eq!(h.role("s0", "a"), Some(Role::Active));
}

#[test]
fn the_director_records_claims_and_a_switchover_needs_an_in_sync_standby() {
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0"]),
        2,
    );
    h.unsynced.insert("b".into());
    h.settle();
    assert!(h.shard("s0").in_sync.is_empty());
    let observations = h.observations();
    let error = plan_switchover(
        &View::new(&h.state, &observations),
        &SwitchoverTarget::Shard("s0".into()),
    )
    .unwrap_err();
    assert_eq!(error.code, AdminCode::NotInSync);
    assert!(error.message.contains("STANDBY b"), "{error}");
    // Once the ACTIVE's agent verifies b, the director records it and the switchover goes.
    h.unsynced.clear();
    h.settle();
    assert_eq!(h.shard("s0").in_sync, ["b".into()].into());
    let observations = h.observations();
    let commands = plan_switchover(
        &View::new(&h.state, &observations),
        &SwitchoverTarget::Shard("s0".into()),
    )
    .unwrap();
    h.apply(&commands);
    // b falls out of sync while a quiesces, and the cluster records it: a takes the ACTIVE
    // back instead of handing it to a STANDBY that may miss writes.
    h.silent.insert("a".into());
    h.unsynced.insert("b".into());
    h.settle();
    assert!(h.shard("s0").in_sync.is_empty());
    h.silent.clear();
    h.settle();
    assert_eq!(h.role("s0", "a"), Some(Role::Active));
    assert_eq!(h.role("s0", "b"), Some(Role::Standby));
    assert!(h.shard("s0").handover.is_none());
}

#[test]
fn a_failover_to_a_standby_out_of_sync_is_reported_as_a_possible_loss() {
    for in_sync in [true, false] {
        let mut h = Harness::new(
            spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &["s0"]),
            2,
        );
        if !in_sync {
            h.unsynced.insert("b".into());
        }
        h.settle();
        h.faults.insert(
            "a".into(),
            FaultKind::ProcessExit {
                code: None,
                signal: Some(9),
            },
        );
        let observations = h.observations();
        h.note(&observations);
        let commands = h.director.plan(h.now, &h.state, &observations, 1_000_000);
        let mut events = Vec::new();
        for command in &commands {
            h.index += 1;
            h.state.apply_with_events(h.index, command, &mut events);
        }
        assert_eq!(h.role("s0", "b"), Some(Role::Active));
        let loss = events
            .iter()
            .any(|event| matches!(event, crate::cluster::ModelEvent::PossibleLoss { .. }));
        assert_eq!(loss, !in_sync, "in_sync {in_sync}: {events:?}");
        // The new epoch starts with nobody in sync.
        assert!(h.shard("s0").in_sync.is_empty());
    }
}

#[test]
fn a_round_looks_at_the_shards_that_changed_not_at_the_steady_rest() {
    for count in [10, 2_000] {
        let names: Vec<String> = (0..count).map(|shard| format!("s{shard}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut h = Harness::new(
            spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &names),
            3,
        );
        h.settle();
        let observations = h.observations();
        // Nothing changed since the last round: nothing is looked at.
        let changes = h.state.take_changes();
        h.director.note_changes(&h.state, &changes);
        assert!(h
            .director
            .plan(h.now, &h.state, &observations, 0)
            .is_empty());
        assert_eq!(h.director.planned_last_round(), 0, "{count} shards");
        // A switchover of one shard: the next round looks at that shard alone.
        let commands = plan_switchover(
            &View::new(&h.state, &observations),
            &SwitchoverTarget::Shard("s7".into()),
        )
        .unwrap();
        h.apply(&commands);
        let changes = h.state.take_changes();
        assert_eq!(changes.shards.len(), 1);
        h.director.note_changes(&h.state, &changes);
        let observations = h.observations();
        let planned = h.director.plan(h.now, &h.state, &observations, 0);
        assert_eq!(h.director.planned_last_round(), 1, "{count} shards");
        assert!(
            matches!(&planned[..], [Command::Reassign { shard, .. }] if shard.as_str() == "s7"),
            "{planned:?}"
        );
    }
}

#[test]
fn a_unit_that_may_no_longer_act_dirties_the_shards_it_acts_for_not_its_service() {
    let names: Vec<String> = (0..10).map(|shard| format!("s{shard}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut h = Harness::new(
        spec(RedundancyModel::TwoN, &[("a", 1), ("b", 2)], &names),
        3,
    );
    h.settle();
    let mut observations = h.observations();
    let changes = h.state.take_changes();
    h.director.note_changes(&h.state, &changes);
    h.director.plan(h.now, &h.state, &observations, 0);
    assert!(h.director.dirty.is_empty());
    for (node, unit) in [(2, "b"), (1, "a")] {
        let acting: BTreeSet<ShardName> = h
            .state
            .roles_of(&UnitName::from(unit))
            .filter(|(_, role)| role.is_acting())
            .map(|(shard, _)| shard.clone())
            .collect();
        // Its lease lapsed: the same process reports that it may not act.
        let mut report = observations.latest(NodeId(node)).expect("reported").clone();
        report
            .units
            .get_mut(&UnitName::from(unit))
            .and_then(|unit| unit.settled.as_mut())
            .expect("settled")
            .acting_withheld = true;
        let judged = observations
            .record(h.now, NodeId(node), report)
            .expect("a new report is judged");
        h.director.note_report(&h.state, &observations, &judged);
        assert_eq!(h.director.dirty, acting, "unit {unit}");
        h.director.dirty.clear();
    }
    // One unit acts for every shard, the other for none.
    assert!(
        h.state
            .roles_of(&UnitName::from("a"))
            .all(|(_, role)| role.is_acting())
            != h.state
                .roles_of(&UnitName::from("b"))
                .all(|(_, role)| role.is_acting())
    );
}
