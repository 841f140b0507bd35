//! End-to-end SIP: the `sip` example (a call server) runs as a 2n service on real daemons, and
//! SIPp's built-in `uac` scenario (INVITE, 100/180/200, ACK, pause, BYE, 200) calls it through
//! the shard's UDP ingress. Calls are set up before a switchover (and a unit kill) and hung up
//! after it: every BYE must get its 200 from the new ACTIVE, so SIPp counts every call
//! successful.
//!
//! SIPp comes from Debian's `sip-tester` package (`.ci/run` installs it). Without it, these
//! tests say so and pass only outside CI; with `CI=true` a missing SIPp fails them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tandem_admin::client;
use tandem_e2e::{binary, unit, wait_for, TestCluster, DEADLINE};
use tandem_proto::admin::switchover_request;

const SHARD: &str = "sip-0";

fn sipp() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("sipp"))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "sipp is not installed (apt-get install sip-tester); CI must run the SIP tests"
        );
        eprintln!("SKIPPED: sipp is not installed (apt-get install sip-tester)");
    }
    found
}

/// A loopback port for the shard's ingress (see `free_ingress_port`).
fn free_udp_port() -> u16 {
    tandem_e2e::free_ingress_port()
}

fn sip_cluster(port: u16) -> TestCluster {
    let sip = binary("examples/sip");
    let services = format!(
        "\n[[services]]\nname = \"sip\"\nmodel = \"2n\"\nshards = [\"{SHARD}\"]\n\
         units = [{{ name = \"sip-a\", node = \"n1\" }}, {{ name = \"sip-b\", node = \"n2\" }}]\n\
         instantiate = [\"{}\"]\n\
         health_interval_ms = 100\nhealth_timeout_ms = 1000\ncallback_timeout_ms = 5000\n\
         [services.escalation]\nrestart_max = 1000000\nrelocate = false\n\
         [services.ingress.{SHARD}]\nudp = \"127.0.0.1:{port}\"\n",
        sip.display()
    );
    TestCluster::start_with(3, &services)
}

/// Runs SIPp's `uac` against the ingress: `calls` calls at 10 per second, each held `hold_ms`.
/// Bounded: SIPp gives up after 60 s.
fn uac(sipp: &Path, port: u16, calls: u32, hold_ms: u32) -> std::thread::JoinHandle<Output> {
    let sipp = sipp.to_path_buf();
    std::thread::spawn(move || {
        Command::new(sipp)
            .args(["-sn", "uac", &format!("127.0.0.1:{port}")])
            .args(["-i", "127.0.0.1", "-p", &free_udp_port().to_string()])
            .args([
                "-m",
                &calls.to_string(),
                "-r",
                "10",
                "-d",
                &hold_ms.to_string(),
            ])
            .args(["-nostdin", "-timeout", "60", "-timeout_error"])
            .output()
            .expect("run sipp")
    })
}

/// Successful calls in SIPp's final statistics.
fn successful(output: &Output) -> u32 {
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .rev()
        .find(|line| line.contains("Successful call"))
        .and_then(|line| line.split('|').nth(2))
        .and_then(|cell| cell.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the ACTIVE's checkpoint holds at least `dialogs` sections (calls set up).
fn wait_dialogs(cluster: &TestCluster, dialogs: u64) {
    wait_for(
        &format!("{dialogs} dialogs in the checkpoint"),
        DEADLINE,
        || {
            cluster.nodes.iter().find_map(|node| {
                let local = client::local_status(node.admin, DEADLINE).ok()?;
                local
                    .replicas
                    .iter()
                    .any(|replica| {
                        replica.shard == SHARD
                            && replica.role == "primary"
                            && replica.sections >= dialogs
                    })
                    .then_some(())
            })
        },
    );
}

#[test]
fn sipp_calls_set_up_before_a_switchover_and_a_unit_kill_end_cleanly_after_them() {
    let Some(sipp) = sipp() else { return };
    let port = free_udp_port();
    let cluster = sip_cluster(port);
    cluster.wait_in_sync(SHARD);

    // Calls held 3 s; once some are established, switch over: their BYEs reach the new ACTIVE.
    let run = uac(&sipp, port, 30, 3000);
    wait_dialogs(&cluster, 5);
    cluster
        .operation(
            0,
            client::switchover_kind(switchover_request::Target::Shard(SHARD.into())),
        )
        .expect("switchover");
    let output = run.join().expect("sipp thread");
    assert!(
        output.status.success() && successful(&output) == 30,
        "SIPp: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Again with the ACTIVE unit killed mid-calls (failover to the in-sync STANDBY).
    let (active, _) = cluster.wait_in_sync(SHARD);
    let run = uac(&sipp, port, 30, 3000);
    wait_dialogs(&cluster, 5);
    let pid = unit(&cluster.wait_leader_status(), &active).unwrap().pid;
    // SAFETY: kill(2) of a unit process this test started (through tandemd).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let output = run.join().expect("sipp thread");
    assert!(
        output.status.success() && successful(&output) == 30,
        "SIPp: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_restricted_shard_answers_new_invites_with_503() {
    let Some(sipp) = sipp() else { return };
    let port = free_udp_port();
    let cluster = sip_cluster(port);
    cluster.wait_in_sync(SHARD);
    let restrict = |fraction: Option<u32>| {
        client::call(
            cluster.nodes[0].admin,
            &tandem_proto::admin::AdminRequest {
                forwarded: false,
                timeout_ms: 0,
                kind: Some(tandem_proto::admin::admin_request::Kind::Restrict(
                    tandem_proto::admin::RestrictRequest {
                        shard: SHARD.into(),
                        admitted_permille: fraction,
                    },
                )),
            },
            DEADLINE,
        )
        .expect("restrict")
    };
    // The restriction reaches the ACTIVE unit shortly after it is committed: call until a
    // 503 comes back (bounded), then every call of a run is refused.
    restrict(Some(0));
    wait_for("a 503 for a new INVITE", DEADLINE, || {
        let output = uac(&sipp, port, 1, 0).join().expect("sipp thread");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        text.contains("503 Service Unavailable").then_some(())
    });
    let output = uac(&sipp, port, 3, 0).join().expect("sipp thread");
    assert!(
        !output.status.success() && successful(&output) == 0,
        "every call is refused: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    restrict(None);
    wait_for("calls admitted again", DEADLINE, || {
        let output = uac(&sipp, port, 3, 0).join().expect("sipp thread");
        (successful(&output) == 3).then_some(())
    });
}
