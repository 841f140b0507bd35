//! End-to-end data plane: real daemons replicate the checkpoint of a 2n service whose ACTIVE
//! (the SDK's test unit) writes it without pause, a sync commit every 2 ms. Every value the
//! unit was told is committed is recorded; every new ACTIVE records what its replica holds when
//! it takes over. No acknowledged write may be missing from a new ACTIVE's replica, whatever
//! happened: switchover, unit kill, daemon `kill -9`.

use std::collections::BTreeMap;

use tandem_admin::client;
use tandem_e2e::{
    data_service, node_data_dir, settled_pair, shard, unit, wait_for, Record, TestCluster, DEADLINE,
};
use tandem_proto::admin::switchover_request;

const SHARD: &str = "pair-0";

/// The index of the node `unit_name` runs on (waiting for a leader to answer: one may be
/// being elected after a daemon was stopped).
fn node_of(cluster: &TestCluster, unit_name: &str) -> usize {
    wait_for(&format!("the node of {unit_name}"), DEADLINE, || {
        let status = cluster.leader_status()?;
        let node = &unit(&status, unit_name)?.node;
        cluster.index_of(node)
    })
}

fn acked(records: &[Record]) -> impl Iterator<Item = (u64, u64)> + '_ {
    records
        .iter()
        .filter(|record| record.event == "acked" && record.shard == SHARD)
        .filter_map(|record| Some((record.epoch, record.role.parse().ok()?)))
}

/// The value `unit` found in its replica when it took ACTIVE at an epoch above `after`.
fn wait_resume(cluster: &TestCluster, unit_name: &str, after: u64) -> (u64, u64) {
    wait_for(
        &format!("{unit_name} to take ACTIVE above epoch {after} and read its replica"),
        DEADLINE,
        || {
            cluster.records().iter().find_map(|record| {
                (record.event == "resume"
                    && record.unit == unit_name
                    && record.shard == SHARD
                    && record.epoch > after)
                    .then(|| (record.epoch, record.role.parse().expect("a number")))
            })
        },
    )
}

/// An admin switchover of the shard, which must move its ACTIVE away from `active`: the new
/// ACTIVE, once it has an in-sync STANDBY.
fn switch_over(cluster: &TestCluster, active: &str) -> String {
    cluster
        .operation(
            0,
            client::switchover_kind(switchover_request::Target::Shard(SHARD.into())),
        )
        .expect("switchover");
    let (next, _) = cluster.wait_in_sync(SHARD);
    assert_ne!(
        next, active,
        "the switchover moved the ACTIVE away from {active}"
    );
    next
}

/// Waits until the ACTIVE has had at least `count` more writes acknowledged.
fn wait_acked(cluster: &TestCluster, count: usize) {
    let before = acked(&cluster.records()).count();
    wait_for(
        &format!("{count} more acknowledged writes"),
        DEADLINE,
        || (acked(&cluster.records()).count() >= before + count).then_some(()),
    );
}

/// The invariant: every ACTIVE found, on taking over, at least every value acknowledged at an
/// earlier epoch. Returns how many takeovers were checked.
fn assert_no_acknowledged_write_lost(records: &[Record]) -> usize {
    let mut highest_by_epoch: BTreeMap<u64, u64> = BTreeMap::new();
    for (epoch, value) in acked(records) {
        let entry = highest_by_epoch.entry(epoch).or_default();
        *entry = (*entry).max(value);
    }
    let mut checked = 0;
    for record in records
        .iter()
        .filter(|record| record.event == "resume" && record.shard == SHARD)
    {
        let held: u64 = record.role.parse().expect("a number");
        let before = highest_by_epoch
            .range(..record.epoch)
            .map(|(_, value)| *value)
            .max()
            .unwrap_or(0);
        assert!(
            held >= before,
            "{} took ACTIVE at epoch {} with n = {held}, but n = {before} had been \
             acknowledged before",
            record.unit,
            record.epoch
        );
        checked += 1;
    }
    checked
}

#[test]
fn acknowledged_writes_survive_switchover_unit_kill_and_daemon_kill() {
    let mut cluster = TestCluster::start_with(3, &data_service(0));
    let (first, _) = cluster.wait_in_sync(SHARD);
    wait_acked(&cluster, 50);
    let epoch = shard(&cluster.wait_leader_status(), SHARD).unwrap().epoch;

    // 1. Switchover (only to an in-sync STANDBY).
    let second = switch_over(&cluster, &first);
    let (epoch, held) = wait_resume(&cluster, &second, epoch);
    assert!(held > 0, "the new ACTIVE found the writes: n = {held}");
    wait_acked(&cluster, 50);

    // 2. The ACTIVE unit is killed: its STANDBY takes over.
    let pid = unit(&cluster.wait_leader_status(), &second).unwrap().pid;
    // SAFETY: kill(2) of a unit process this test started (through tandemd).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let (epoch, _) = wait_resume(&cluster, &first, epoch);
    cluster.wait_in_sync(SHARD);
    wait_acked(&cluster, 50);

    // 3. The ACTIVE's daemon is killed: failover after the lease; the daemon comes back, its
    //    unit reads its replica from disk and catches up by delta.
    let host = node_of(&cluster, &first);
    cluster.kill9(host);
    let (epoch, _) = wait_resume(&cluster, &second, epoch);
    wait_acked(&cluster, 50);
    cluster.spawn(host);
    let (active, standby) = cluster.wait_in_sync(SHARD);
    assert_eq!(
        (active.as_str(), standby.as_str()),
        (second.as_str(), first.as_str())
    );
    wait_acked(&cluster, 50);

    // 4. Back by switchover: the restarted unit's replica (from disk plus the delta) is whole.
    cluster
        .operation(
            0,
            client::switchover_kind(switchover_request::Target::Shard(SHARD.into())),
        )
        .expect("switchover to the restarted unit");
    wait_resume(&cluster, &first, epoch);
    wait_acked(&cluster, 20);

    let records = cluster.records();
    let checked = assert_no_acknowledged_write_lost(&records);
    assert!(checked >= 4, "{checked} takeovers checked");
    // The restarted daemon read its replica back rather than starting empty.
    assert!(
        cluster.log(host).contains("replica read back"),
        "{}",
        cluster.log(host)
    );
}

#[test]
fn with_idle_polling_daemons_and_units_poll_and_writes_survive_a_switchover() {
    // The event loops poll before they sleep: timers (Raft ticks, heartbeats, leases) and
    // every socket must still be served, and the units get their own window
    // (`unit_idle_poll_us`), not the daemon's.
    let cluster = TestCluster::start_with_cluster(
        3,
        "idle_poll_us = 200\nunit_idle_poll_us = 150\n",
        &data_service(0),
    );
    let (first, _) = cluster.wait_in_sync(SHARD);
    wait_acked(&cluster, 50);
    for index in 0..3 {
        assert!(
            cluster.log(index).contains("idle polling on"),
            "n{}: {}",
            index + 1,
            cluster.log(index)
        );
    }
    let pid = unit(&cluster.wait_leader_status(), &first).unwrap().pid;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the unit's environment");
    assert!(
        environ
            .split(|byte| *byte == 0)
            .any(|entry| entry == b"TANDEM_IDLE_POLL_US=150"),
        "the unit got the node's unit window"
    );
    let epoch = shard(&cluster.wait_leader_status(), SHARD).unwrap().epoch;
    let second = switch_over(&cluster, &first);
    let (_, held) = wait_resume(&cluster, &second, epoch);
    assert!(held > 0, "the new ACTIVE found the writes: n = {held}");
    wait_acked(&cluster, 50);
    assert!(assert_no_acknowledged_write_lost(&cluster.records()) >= 1);
}

#[test]
fn a_standby_rebuilt_from_scratch_by_state_transfer_under_writes_reaches_digest_equality() {
    // 24000 sections of 1 KiB: more than the primary keeps of recent ops (16 MiB), so the
    // empty STANDBY gets a full state transfer of ~24 MiB (not a delta) while writes go on.
    let mut cluster = TestCluster::start_with(3, &data_service(24_000));
    let (active, standby) = cluster.wait_in_sync(SHARD);
    // The bulk is written before the first acknowledged `n`.
    wait_acked(&cluster, 20);

    // The STANDBY's node loses its replica files: its daemon stops, they are removed, it
    // starts again with nothing.
    let host = node_of(&cluster, &standby);
    assert!(cluster.terminate(host), "the daemon stopped cleanly");
    let replicas = node_data_dir(&cluster, host).join("replicas");
    let removed = std::fs::read_dir(&replicas)
        .expect("the STANDBY kept replica files")
        .count();
    assert!(removed > 0);
    std::fs::remove_dir_all(&replicas).expect("remove the replicas");
    cluster.spawn(host);

    // The primary copies the whole replica (a full transfer, not a delta)...
    let primary = node_of(&cluster, &active);
    wait_for(
        "the primary to start a full state transfer",
        DEADLINE,
        || {
            cluster
                .log(primary)
                .contains(&format!(
                    "state transfer to STANDBY {standby} of shard {SHARD} started"
                ))
                .then_some(())
        },
    );
    // ...and its session with the STANDBY ends verified: digests matched at one version.
    let admin = cluster.nodes[primary].admin;
    wait_for(
        "the rebuilt STANDBY to be verified in sync",
        DEADLINE,
        || {
            let local = client::local_status(admin, DEADLINE).ok()?;
            local
                .sessions
                .iter()
                .any(|session| {
                    session.shard == SHARD
                        && session.standby == standby
                        && session.verified
                        && session.transfer.is_none()
                })
                .then_some(())
        },
    );
    let (now_active, now_standby) = cluster.wait_in_sync(SHARD);
    assert_eq!((now_active, now_standby), (active.clone(), standby.clone()));
    wait_acked(&cluster, 20);

    // Both replicas at one version have the same digest (tandemctl compares them while the
    // ACTIVE keeps writing).
    let output = std::process::Command::new(tandem_e2e::binary("tandemctl"))
        .arg("--config")
        .arg(&cluster.config_path)
        .args(["checkpoint", "verify", SHARD, "--json"])
        .output()
        .expect("run tandemctl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let verdict: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(verdict["match"], true, "{verdict}");
    let replicas = verdict["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 2, "{verdict}");
    assert!(
        replicas
            .iter()
            .all(|replica| replica["sections"].as_u64() >= Some(24_000)),
        "{verdict}"
    );
    let status = cluster.wait_leader_status();
    assert!(settled_pair(&status, SHARD).is_some());
    assert_no_acknowledged_write_lost(&cluster.records());
}

#[test]
fn the_udp_and_tcp_ingress_follow_the_active_and_vip_commands_run_where_they_move() {
    let port = tandem_e2e::free_ingress_port();
    let services = format!(
        "\n[[services]]\nname = \"pair\"\nmodel = \"2n\"\nshards = [\"{SHARD}\"]\n\
         units = [{{ name = \"pair-a\", node = \"n1\" }}, {{ name = \"pair-b\", node = \"n2\" }}]\n\
         instantiate = [\"{{unit_bin}}\"]\n\
         env = {{ TANDEM_TEST_RECORD = \"{{record}}\" }}\n\
         vip_up = [\"sh\", \"-c\", \"echo $TANDEM_VIP $TANDEM_NODE $TANDEM_SHARD $TANDEM_UDP >> {{record}}.vip\"]\n\
         vip_down = [\"sh\", \"-c\", \"echo $TANDEM_VIP $TANDEM_NODE $TANDEM_SHARD $TANDEM_UDP >> {{record}}.vip\"]\n\
         health_interval_ms = 100\nhealth_timeout_ms = 1000\ncallback_timeout_ms = 5000\n\
         [services.escalation]\nrestart_max = 1000000\nrelocate = false\n\
         [services.ingress.{SHARD}]\nudp = \"127.0.0.1:{port}\"\ntcp = \"127.0.0.1:{port}\"\n"
    );
    let cluster = TestCluster::start_with(3, &services);
    let vip_log = cluster.dir.path().join("record.log.vip");
    let (first, _) = cluster.wait_in_sync(SHARD);
    let first_node = unit(&cluster.wait_leader_status(), &first)
        .unwrap()
        .node
        .clone();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("a socket");
    // A datagram reaches the ACTIVE through the stream (sent until the ingress is bound).
    let applied_by = |id: &str| {
        cluster
            .records()
            .iter()
            .find(|record| record.event == "msg" && record.role == id)
            .map(|record| record.unit.clone())
    };
    wait_for("m1 applied by the first ACTIVE", DEADLINE, || {
        let _ = sender.send_to(b"m1", ("127.0.0.1", port));
        applied_by("m1")
    });
    assert_eq!(applied_by("m1").as_deref(), Some(first.as_str()));
    let up = format!("up {first_node} {SHARD} 127.0.0.1:{port}");
    wait_for(&format!("vip_up to run on {first_node}"), DEADLINE, || {
        std::fs::read_to_string(&vip_log)
            .unwrap_or_default()
            .contains(&up)
            .then_some(())
    });

    let second = switch_over(&cluster, &first);
    let second_node = unit(&cluster.wait_leader_status(), &second)
        .unwrap()
        .node
        .clone();
    wait_for("m2 applied by the new ACTIVE", DEADLINE, || {
        let _ = sender.send_to(b"m2", ("127.0.0.1", port));
        applied_by("m2")
    });
    assert_eq!(applied_by("m2").as_deref(), Some(second.as_str()));

    // The TCP address moved too: a framed message reaches the new ACTIVE and its reply comes
    // back on the connection (connecting once the new node listens).
    let reply = wait_for("a TCP round trip through the new ACTIVE", DEADLINE, || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(DEADLINE)).ok()?;
        let frame = [&2u32.to_be_bytes()[..], b"t1"].concat();
        stream.write_all(&frame).ok()?;
        let mut length = [0u8; 4];
        stream.read_exact(&mut length).ok()?;
        let mut reply = vec![0u8; u32::from_be_bytes(length) as usize];
        stream.read_exact(&mut reply).ok()?;
        Some(String::from_utf8_lossy(&reply).into_owned())
    });
    assert_eq!(reply, "ok t1");
    assert_eq!(applied_by("t1").as_deref(), Some(second.as_str()));
    // The old node gives the address up after its grace period; the new one took it.
    wait_for(
        "vip_down on the old node and vip_up on the new one",
        DEADLINE,
        || {
            let log = std::fs::read_to_string(&vip_log).unwrap_or_default();
            (log.contains(&format!("down {first_node} {SHARD}"))
                && log.contains(&format!("up {second_node} {SHARD}")))
            .then_some(())
        },
    );
}

/// The highest value the unit recorded `queued` at `epoch` (0 when none).
fn queued_at(records: &[Record], epoch: u64) -> u64 {
    records
        .iter()
        .filter(|record| record.event == "queued" && record.shard == SHARD && record.epoch == epoch)
        .filter_map(|record| record.role.parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn queued_commits_made_before_a_switchover_reach_the_new_active() {
    let service = data_service(0).replace(
        "TANDEM_TEST_WRITES = \"1\"",
        "TANDEM_TEST_WRITES = \"queued\"",
    );
    assert!(service.contains("\"queued\""));
    let cluster = TestCluster::start_with(3, &service);
    let (mut active, _) = cluster.wait_in_sync(SHARD);
    let mut epoch = shard(&cluster.wait_leader_status(), SHARD).unwrap().epoch;
    for round in 0..2 {
        // Enough rounds queued (20 values each, flushes among them) before each switch.
        wait_for("100 rounds of queued writes", DEADLINE, || {
            let records = cluster.records();
            let count = records
                .iter()
                .filter(|record| record.event == "queued" && record.epoch == epoch)
                .count();
            (count >= 100).then_some(())
        });
        let next = switch_over(&cluster, &active);
        let (next_epoch, held) = wait_resume(&cluster, &next, epoch);
        // Every value queued before the old ACTIVE's quiesce hook reached the new ACTIVE's
        // replica: the quiesce waited for the queue.
        let queued = queued_at(&cluster.records(), epoch);
        assert!(queued >= 2000, "round {round}: only {queued} values queued");
        assert!(
            held >= queued,
            "round {round}: {next} took ACTIVE with n = {held}, but {queued} was queued at \
             epoch {epoch} before the switchover"
        );
        (active, epoch) = (next, next_epoch);
    }
    // The last ACTIVE queues on from what it found.
    wait_for("queued writes at the last epoch", DEADLINE, || {
        (queued_at(&cluster.records(), epoch) > 0).then_some(())
    });
}
