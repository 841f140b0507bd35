//! End-to-end availability: real `tandemd` processes run real unit processes (the SDK's test
//! unit) of a 2n service; units and daemons are killed and paused, shards switched over and
//! nodes locked. Every test checks from the units' own records (CLOCK_MONOTONIC, shared by all
//! processes of the machine) that two units never acted ACTIVE for the shard at once.

use std::collections::BTreeMap;

use tandem::AdminCode;
use tandem_admin::client::{self, AdminClientError};
use tandem_e2e::{
    assert_one_active, is_alive, monotonic_ns, pair_service, settled_pair, shard, unit, wait_for,
    TestCluster, DEADLINE,
};
use tandem_proto::admin::{operation_request, switchover_request};

const SHARD: &str = "pair-0";

fn node_of(cluster: &TestCluster, unit_name: &str) -> usize {
    let status = cluster.leader_status().expect("a leader answers");
    let node = &unit(&status, unit_name).expect("unit in status").node;
    cluster.index_of(node).expect("node in config")
}

fn pid_of(cluster: &TestCluster, unit_name: &str) -> u32 {
    wait_for(&format!("a pid for {unit_name}"), DEADLINE, || {
        let status = cluster.leader_status()?;
        let pid = unit(&status, unit_name)?.pid;
        (pid != 0).then_some(pid)
    })
}

fn switchover(
    cluster: &TestCluster,
    via: usize,
) -> Result<tandem_proto::admin::OperationDone, AdminClientError> {
    cluster.operation(
        via,
        client::switchover_kind(switchover_request::Target::Shard(SHARD.into())),
    )
}

#[test]
fn a_killed_active_unit_fails_over_and_comes_back_as_standby() {
    let cluster = TestCluster::start_with(3, &pair_service(false));
    let (active, standby) = cluster.wait_settled(SHARD);
    let pid = pid_of(&cluster, &active);
    let killed_at = monotonic_ns();
    // SAFETY: kill(2) of a unit process this test started (through tandemd).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);

    let (new_active, new_standby) = wait_for(
        "the STANDBY to take over and the unit to return",
        DEADLINE,
        || {
            let pair = settled_pair(&cluster.leader_status()?, SHARD)?;
            (pair.0 == standby).then_some(pair)
        },
    );
    assert_eq!(new_active, standby);
    assert_eq!(new_standby, active, "the killed unit came back as STANDBY");
    let status = cluster.leader_status().unwrap();
    let killed = unit(&status, &active).unwrap();
    assert_eq!(killed.generation, 2, "restarted once: {killed:?}");
    assert_eq!(killed.faults_total, 1);
    assert!(killed.last_fault.contains("L1 restart"), "{killed:?}");
    assert_ne!(killed.pid, pid);
    assert!(shard(&status, SHARD).unwrap().epoch >= 2);
    assert_one_active(
        &cluster.records(),
        SHARD,
        &BTreeMap::from([(pid, killed_at)]),
    );
}

#[test]
fn a_killed_daemon_fails_over_after_its_lease_and_takes_its_unit_along() {
    let mut cluster = TestCluster::start_with(3, &pair_service(false));
    let (active, standby) = cluster.wait_settled(SHARD);
    let victim = node_of(&cluster, &active);
    let pid = pid_of(&cluster, &active);
    let killed_at = monotonic_ns();
    cluster.kill9(victim);
    let survivors: Vec<usize> = (0..3).filter(|index| *index != victim).collect();
    cluster.wait_leader(&survivors);
    wait_for("the STANDBY to take over", DEADLINE, || {
        let status = cluster.leader_status()?;
        let shard = shard(&status, SHARD)?;
        shard
            .roles
            .iter()
            .any(|role| role.unit == standby && role.role == "ACTIVE" && role.confirmed)
            .then_some(())
    });
    // The daemon's death killed its unit (parent-death signal): no orphan keeps acting.
    wait_for("the dead daemon's unit to be gone", DEADLINE, || {
        (!is_alive(pid)).then_some(())
    });
    let records = cluster.records();
    let took_over = records
        .iter()
        .find(|record| record.unit == standby && record.event == "start" && record.role == "ACTIVE")
        .expect("the STANDBY recorded its ACTIVE hook");
    assert!(took_over.at_ns > killed_at);
    assert_one_active(&records, SHARD, &BTreeMap::from([(pid, killed_at)]));
}

#[test]
fn a_paused_daemon_finds_itself_demoted_and_two_units_never_act_at_once() {
    let cluster = TestCluster::start_with(3, &pair_service(false));
    let (active, standby) = cluster.wait_settled(SHARD);
    let paused = node_of(&cluster, &active);
    let paused_pid = pid_of(&cluster, &active);
    cluster.signal(paused, libc::SIGSTOP);
    let others: Vec<usize> = (0..3).filter(|index| *index != paused).collect();
    let took_over = wait_for(
        "the STANDBY to take over while the ACTIVE's daemon is paused",
        DEADLINE,
        || {
            let status = others
                .iter()
                .find_map(|index| cluster.status(*index).filter(|s| s.from_leader))?;
            let shard = shard(&status, SHARD)?;
            shard
                .roles
                .iter()
                .any(|role| role.unit == standby && role.role == "ACTIVE" && role.confirmed)
                .then_some(status)
        },
    );
    assert!(
        took_over
            .nodes
            .iter()
            .any(|node| node.name == cluster.nodes[paused].name && !node.up),
        "the paused node was declared down: {took_over:?}"
    );
    // The paused daemon's unit kept running and fenced itself by its own clock.
    assert!(is_alive(paused_pid));
    let records = cluster.records();
    assert!(
        records.iter().any(|record| record.pid == paused_pid
            && record.event == "done"
            && record.role == "QUIESCED"),
        "the paused node's unit quiesced itself when its lease ran out: {records:?}"
    );
    cluster.signal(paused, libc::SIGCONT);
    // Back, the node learns it was demoted: its unit (the same instance: this service does not
    // relocate) gives the shard up and returns as STANDBY; nothing ever acted twice.
    let (new_active, new_standby) =
        wait_for("the demoted unit to return as STANDBY", DEADLINE, || {
            let pair = settled_pair(&cluster.leader_status()?, SHARD)?;
            (pair.1 == active).then_some(pair)
        });
    assert_eq!(new_active, standby);
    assert_eq!(new_standby, active);
    assert_one_active(&cluster.records(), SHARD, &BTreeMap::new());
}

#[test]
fn switchover_both_ways_and_the_cli_says_what_happened() {
    let cluster = TestCluster::start_with(3, &pair_service(false));
    let (first, second) = cluster.wait_in_sync(SHARD);
    let done = switchover(&cluster, 2).expect("switchover");
    assert!(
        done.message.contains(&format!("now ACTIVE on {second}")),
        "{done:?}"
    );
    let (active, standby) = cluster.wait_settled(SHARD);
    assert_eq!(
        (active.as_str(), standby.as_str()),
        (second.as_str(), first.as_str())
    );
    // Only an in-sync STANDBY may take over by switchover: wait until the old ACTIVE, now
    // STANDBY, is verified at the new epoch.
    cluster.wait_in_sync(SHARD);

    // Back again, through tandemctl.
    let output = std::process::Command::new(tandem_e2e::binary("tandemctl"))
        .arg("--config")
        .arg(&cluster.config_path)
        .arg("switchover")
        .arg(SHARD)
        .output()
        .expect("run tandemctl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("now ACTIVE on {first}")),
        "{stdout}"
    );
    let (active, _) = cluster.wait_settled(SHARD);
    assert_eq!(active, first);
    let records = cluster.records();
    // Each switchover quiesced the old ACTIVE before the new one started.
    let quiesces = records
        .iter()
        .filter(|r| r.event == "done" && r.role == "QUIESCED")
        .count();
    assert!(quiesces >= 2, "{records:?}");
    assert_one_active(&records, SHARD, &BTreeMap::new());
}

#[test]
fn locking_the_active_node_moves_its_work_and_unlocking_brings_a_standby_back() {
    let cluster = TestCluster::start_with(3, &pair_service(false));
    let (active, standby) = cluster.wait_settled(SHARD);
    let node = cluster.nodes[node_of(&cluster, &active)].name.clone();
    let done = cluster
        .operation(
            0,
            client::operation_kind(operation_request::Target::Node(node.clone()), "lock"),
        )
        .expect("lock the node");
    assert!(done.message.contains("now locked"), "{done:?}");
    let status = cluster.leader_status().unwrap();
    let shard_now = shard(&status, SHARD).unwrap();
    assert_eq!(
        shard_now.active.as_ref().map(|active| active.unit.as_str()),
        Some(standby.as_str())
    );
    assert!(
        shard_now.roles.iter().all(|role| role.unit != active),
        "{shard_now:?}"
    );
    assert_eq!(unit(&status, &active).unwrap().admin, "locked");
    assert_eq!(
        unit(&status, &active).unwrap().state,
        "running",
        "lock keeps the process"
    );

    cluster
        .operation(
            1,
            client::operation_kind(operation_request::Target::Node(node), "unlock"),
        )
        .expect("unlock the node");
    let (now_active, now_standby) = cluster.wait_settled(SHARD);
    assert_eq!((now_active, now_standby), (standby, active));
    assert_one_active(&cluster.records(), SHARD, &BTreeMap::new());
}

#[test]
fn bad_admin_requests_are_refused_and_change_nothing() {
    let cluster = TestCluster::start_with(3, &pair_service(false));
    let (active, standby) = cluster.wait_settled(SHARD);
    let before = shard(&cluster.leader_status().unwrap(), SHARD)
        .unwrap()
        .version;
    let refused = |kind, code: AdminCode| match cluster.operation(0, kind) {
        Err(AdminClientError::Refused { code: got, message }) => {
            assert_eq!(got, code, "{message}");
            message
        }
        other => panic!("expected a refusal with {code}, got {other:?}"),
    };
    let unit_op = |name: &str, op: &str| {
        client::operation_kind(operation_request::Target::Unit(name.into()), op)
    };
    refused(
        client::switchover_kind(switchover_request::Target::Shard("nope".into())),
        AdminCode::NotFound,
    );
    refused(
        client::switchover_kind(switchover_request::Target::Node("n9".into())),
        AdminCode::NotFound,
    );
    refused(unit_op("nope", "lock"), AdminCode::NotFound);
    refused(unit_op(&active, "unlock"), AdminCode::NoOp);
    let message = refused(unit_op(&active, "lock-instantiation"), AdminCode::Invalid);
    assert!(message.contains("lock it first"), "{message}");
    refused(unit_op(&active, "defenestrate"), AdminCode::BadRequest);
    // Without a ready STANDBY a switchover is refused with the reason.
    cluster
        .operation(0, unit_op(&standby, "lock"))
        .expect("lock the standby");
    wait_for(
        "the ACTIVE to confirm its role at the shard's new version",
        DEADLINE,
        || {
            let status = cluster.leader_status()?;
            shard(&status, SHARD)?
                .roles
                .iter()
                .any(|role| role.unit == active && role.role == "ACTIVE" && role.confirmed)
                .then_some(())
        },
    );
    let message = refused(
        client::switchover_kind(switchover_request::Target::Shard(SHARD.into())),
        AdminCode::NoStandby,
    );
    assert!(message.contains("has no STANDBY"), "{message}");
    let status = cluster.leader_status().unwrap();
    let now = shard(&status, SHARD).unwrap();
    assert_eq!(
        now.active.as_ref().map(|a| a.unit.as_str()),
        Some(active.as_str())
    );
    // Only the lock of the standby changed the shard (it lost its STANDBY).
    assert_eq!(now.version, before + 1);
}

#[test]
fn no_unit_process_or_descendant_outlives_its_daemon() {
    let mut cluster = TestCluster::start_with(3, &pair_service(true));
    let (active, _) = cluster.wait_settled(SHARD);
    let node = node_of(&cluster, &active);
    let pid = pid_of(&cluster, &active);
    let child = wait_for("the unit's child pid in its log", DEADLINE, || {
        cluster
            .unit_log(node, &active)
            .lines()
            .find_map(|line| line.strip_prefix("tandem-test-unit: child pid "))
            .and_then(|pid| pid.trim().parse::<u32>().ok())
    });
    assert!(is_alive(child));
    // kill -9: the unit dies with its daemon; its child is reaped by the restarted daemon.
    cluster.kill9(node);
    wait_for("the unit to die with its daemon", DEADLINE, || {
        (!is_alive(pid)).then_some(())
    });
    cluster.spawn(node);
    wait_for(
        "the restarted daemon to kill the orphaned child",
        DEADLINE,
        || (!is_alive(child)).then_some(()),
    );
    // A graceful stop takes every unit and descendant along.
    cluster.wait_settled(SHARD);
    let mut pids = Vec::new();
    for index in 0..3 {
        for name in ["pair-a", "pair-b"] {
            pids.extend(
                cluster
                    .unit_log(index, name)
                    .lines()
                    .filter_map(|line| line.strip_prefix("tandem-test-unit: child pid "))
                    .filter_map(|pid| pid.trim().parse::<u32>().ok()),
            );
        }
    }
    let status = cluster.leader_status().expect("a leader answers");
    pids.extend(
        status
            .units
            .iter()
            .map(|unit| unit.pid)
            .filter(|pid| *pid != 0),
    );
    assert!(pids.len() >= 4, "two units and their children: {pids:?}");
    for index in 0..3 {
        assert!(cluster.terminate(index), "daemon {index} exits cleanly");
    }
    for pid in pids {
        assert!(!is_alive(pid), "process {pid} outlived its daemon");
    }
}

#[test]
fn terminate_and_cleanup_commands_run_and_instantiation_can_be_locked() {
    let marker = tempfile::NamedTempFile::new().unwrap();
    let path = marker.path().display().to_string();
    let service = pair_service(false).replace(
        "health_interval_ms",
        &format!(
            "terminate = [\"sh\", \"-c\", \"echo terminate $TANDEM_UNIT >> {path}; kill -TERM $TANDEM_PID\"]\n\
             cleanup = [\"sh\", \"-c\", \"echo cleanup $TANDEM_UNIT >> {path}\"]\n\
             health_interval_ms"
        ),
    );
    let cluster = TestCluster::start_with(3, &service);
    let (active, standby) = cluster.wait_settled(SHARD);
    let old_pid = pid_of(&cluster, &standby);
    // A restart of the STANDBY: graceful (its terminate command), then cleanup, then a new
    // instance that comes back as STANDBY.
    let done = cluster
        .operation(
            0,
            client::operation_kind(operation_request::Target::Unit(standby.clone()), "restart"),
        )
        .expect("restart the standby");
    assert!(done.message.contains("restart"), "{done:?}");
    let (now_active, now_standby) = cluster.wait_settled(SHARD);
    assert_eq!(
        (now_active.as_str(), now_standby.as_str()),
        (active.as_str(), standby.as_str())
    );
    assert_ne!(pid_of(&cluster, &standby), old_pid);
    let lines = wait_for("terminate and cleanup to have run", DEADLINE, || {
        let text = std::fs::read_to_string(&path).ok()?;
        (text.contains(&format!("terminate {standby}"))
            && text.contains(&format!("cleanup {standby}")))
        .then_some(text)
    });
    let terminate_at = lines.find("terminate").unwrap();
    assert!(
        lines.find("cleanup").unwrap() > terminate_at,
        "cleanup after terminate: {lines}\nunit log: {}{}",
        cluster.unit_log(0, &standby),
        cluster.unit_log(1, &standby)
    );

    // lock-instantiation needs a locked unit; then the process stops, and starts again after
    // unlock-instantiation.
    let unit_op =
        |op: &str| client::operation_kind(operation_request::Target::Unit(standby.clone()), op);
    cluster.operation(1, unit_op("lock")).expect("lock");
    let pid = pid_of(&cluster, &standby);
    cluster
        .operation(1, unit_op("lock-instantiation"))
        .expect("lock-instantiation");
    wait_for("the locked unit's process to stop", DEADLINE, || {
        (!is_alive(pid)).then_some(())
    });
    let status = cluster.leader_status().unwrap();
    assert_eq!(unit(&status, &standby).unwrap().state, "stopped");
    assert_eq!(
        unit(&status, &standby).unwrap().admin,
        "locked-instantiation"
    );
    cluster
        .operation(1, unit_op("unlock-instantiation"))
        .expect("unlock-instantiation");
    cluster.operation(1, unit_op("unlock")).expect("unlock");
    let (_, back) = cluster.wait_settled(SHARD);
    assert_eq!(back, standby);
    assert_one_active(&cluster.records(), SHARD, &BTreeMap::new());
}
