//! `tandemctl` as an operator runs it: exit codes, clear errors, JSON, `--config` failover,
//! and `dev up` / `dev down` of a real local cluster.

use std::net::TcpListener;
use std::process::{Command, Output};

use tandem_e2e::{wait_for, TestCluster, DEADLINE};

fn tandemctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandemctl"))
        .args(args)
        .env_remove("TANDEM_CONFIG")
        .output()
        .expect("run tandemctl")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn unreachable_endpoint_fails_with_a_clear_message() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let output = tandemctl(&["--endpoint", &endpoint, "status"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("cannot reach"), "{message}");
    assert!(message.contains(&endpoint), "{message}");
}

#[test]
fn status_json_names_the_leader_and_config_skips_a_dead_node() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&[0, 1, 2]).leader;
    let config = cluster.config_path.to_str().unwrap().to_owned();
    let output = tandemctl(&["--config", &config, "status", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["leader"], leader.as_str());
    assert!(json["term"].as_u64().unwrap() >= 1);
    let nodes = json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|node| node["up"] == true));

    // n1 is the first node tandemctl tries; with it dead the next one answers.
    cluster.kill9(0);
    let survivors = [1, 2];
    cluster.wait_leader(&survivors);
    let json = wait_for("status via --config to show n1 down", DEADLINE, || {
        let output = tandemctl(&["--config", &config, "status", "--json"]);
        if !output.status.success() {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        (json["nodes"][0]["up"] == false).then_some(json)
    });
    assert_ne!(json["leader"], "n1");
    assert!(json["leader"].is_string());

    let table = tandemctl(&["--config", &config, "status"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("down"), "{text}");
    assert!(text.contains("leader"), "{text}");
}

/// A base port P such that P+1..=P+3 and P+101..=P+103 are all free right now.
fn free_base_port() -> u16 {
    for base in (20_000u16..40_000).step_by(217) {
        let ports = (1..=3).chain(101..=103).map(|offset| base + offset);
        let listeners: Result<Vec<_>, _> = ports
            .map(|port| TcpListener::bind(("127.0.0.1", port)))
            .collect();
        if listeners.is_ok() {
            return base;
        }
    }
    panic!("no free port range on loopback");
}

#[test]
fn dev_up_starts_a_cluster_and_dev_down_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let dev_dir = dir.path().join("dev");
    let dev = dev_dir.to_str().unwrap();
    let base = free_base_port().to_string();
    let up = Command::new(env!("CARGO_BIN_EXE_tandemctl"))
        .args(["dev", "up", "--dir", dev, "--base-port", &base])
        .env("TANDEMD_BIN", tandem_e2e::binary("tandemd"))
        .output()
        .unwrap();
    assert!(up.status.success(), "dev up failed: {}", stderr(&up));
    let config = dev_dir.join("tandem.toml");
    let status = tandemctl(&["--config", config.to_str().unwrap(), "status", "--json"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(json["leader"].is_string(), "{json}");
    assert_eq!(json["nodes"].as_array().unwrap().len(), 3);
    // `dev up` returns once the counter service runs with a confirmed ACTIVE and a
    // confirmed STANDBY in sync, so both units run.
    let shard = &json["shards"][0];
    assert_eq!(shard["name"], "counter-0", "{json}");
    assert!(shard["active"]["unit"].is_string(), "{json}");
    assert!(
        shard["roles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|role| role["role"] == "ACTIVE" && role["confirmed"] == true),
        "{json}"
    );
    assert!(
        shard["roles"].as_array().unwrap().iter().any(|role| {
            role["role"] == "STANDBY"
                && role["confirmed"] == true
                && shard["in_sync"].as_array().unwrap().contains(&role["unit"])
        }),
        "{json}"
    );
    let pids: Vec<u64> = json["units"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|unit| unit["pid"].as_u64())
        .collect();
    assert_eq!(pids.len(), 2, "both counter units run: {json}");

    // The event log tells how the shard got its ACTIVE.
    let events = tandemctl(&["--config", config.to_str().unwrap(), "events"]);
    assert!(events.status.success(), "{}", stderr(&events));
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(text.contains("topology installed"), "{text}");
    assert!(text.contains("none -> ACTIVE"), "{text}");
    let events = tandemctl(&["--config", config.to_str().unwrap(), "events", "--json"]);
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&events.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(
        first["seq"].as_u64().is_some() && first["kind"].is_string(),
        "{first}"
    );

    // A second `dev up` in the same directory is refused while the first is running.
    let again = tandemctl(&["dev", "up", "--dir", dev, "--base-port", &base]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already running"),
        "{}",
        stderr(&again)
    );

    let down = tandemctl(&["dev", "down", "--dir", dev]);
    assert!(down.status.success(), "{}", stderr(&down));
    let after = tandemctl(&["--config", config.to_str().unwrap(), "status"]);
    assert!(!after.status.success(), "no daemon answers after dev down");
    for pid in pids {
        assert!(
            !tandem_e2e::is_alive(pid as u32),
            "counter unit {pid} outlived dev down"
        );
    }
}

/// A 2n service `many` of the test unit with `count` shards `many-0`.. on n1 and n2.
fn many_service(count: usize) -> String {
    let shards: Vec<String> = (0..count)
        .map(|index| format!("\"many-{index}\""))
        .collect();
    format!(
        "\n[[services]]\nname = \"many\"\nmodel = \"2n\"\nshards = [{}]\n\
         units = [{{ name = \"many-a\", node = \"n1\" }}, {{ name = \"many-b\", node = \"n2\" }}]\n\
         instantiate = [\"{{unit_bin}}\"]\n\
         env = {{ TANDEM_TEST_RECORD = \"{{record}}\" }}\n",
        shards.join(", ")
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn status_summarises_many_shards_and_filters_them() {
    let cluster = TestCluster::start_with(3, &many_service(60));
    let config = cluster.config_path.to_str().unwrap().to_owned();
    // What the benchmark asks for: counts and at most one unhealthy shard.
    let summary_request = tandem_proto::admin::StatusRequest {
        summarise_above: Some(0),
        shards_max: 1,
        ..Default::default()
    };
    let status = wait_for("every shard to be healthy", DEADLINE, || {
        let status = tandem_admin::client::status_with(
            cluster.nodes[2].admin,
            tandem_e2e::CALL_TIMEOUT,
            summary_request.clone(),
            false,
        )
        .ok()?;
        let healthy = status.summary.as_ref()?.healthy;
        (status.from_leader && healthy == 60).then_some(status)
    });
    let summary = status.summary.as_ref().unwrap();
    assert!(summary.summarised && status.shards.is_empty());
    assert!(status.replicas.is_empty() && status.sessions.is_empty());
    assert!(status.services[0].shards.is_empty());
    assert_eq!(summary.services[0].in_sync, 60);

    // The table of 60 shards is a summary.
    let output = tandemctl(&["--config", &config, "status"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("60 shards: 60 healthy, 0 not"), "{text}");
    assert!(text.contains("every shard is healthy"), "{text}");
    assert!(text.contains("60 ACTIVE"), "{text}");
    assert!(text.contains("60 STANDBY"), "{text}");
    assert!(!text.contains("many-17"), "{text}");

    // --all lists each, with the checkpoint replicas of both nodes.
    let text = stdout(&tandemctl(&["--config", &config, "status", "--all"]));
    assert!(text.contains("many-17  many"), "{text}");
    assert!(!text.contains("a summary"), "{text}");
    assert!(text.contains("REPLICA OF"), "{text}");

    // A glob picks ten shards: few enough for a table.
    let text = stdout(&tandemctl(&[
        "--config", &config, "status", "--shard", "many-1?",
    ]));
    for index in 10..20 {
        assert!(text.contains(&format!("many-{index}  many")), "{text}");
    }
    assert!(!text.contains("many-2  "), "{text}");
    assert!(!text.contains("many-20"), "{text}");

    // JSON honours the filters, keeps every field, and replicas only of those shards.
    let output = tandemctl(&[
        "--config",
        &config,
        "status",
        "--json",
        "--shard",
        "many-?",
        "--service",
        "many",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let shards = json["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 10, "{json}");
    assert!(shards.iter().all(|shard| shard["roles"].is_array()));
    assert_eq!(json["summary"]["shards"], 10);
    assert_eq!(json["summary"]["shards_total"], 60);
    assert_eq!(json["services"][0]["shards"].as_array().unwrap().len(), 10);
    let replicas = json["replicas"].as_array().unwrap();
    assert_eq!(
        replicas.len(),
        20,
        "an ACTIVE's and a STANDBY's replica each: {json}"
    );
    assert!(replicas
        .iter()
        .all(|replica| replica["shard"].as_str().unwrap().len() == "many-0".len()));

    // A filter that matches nothing says so.
    let output = tandemctl(&["--config", &config, "status", "--shard", "other-*"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("no shard matches --shard 'other-*' (the cluster has 60 shards)"),
        "{text}"
    );
    let output = tandemctl(&[
        "--config", &config, "status", "--json", "--shard", "other-*",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no shard matches"),
        "{}",
        stderr(&output)
    );

    // An unknown service is an error naming the services there are.
    let output = tandemctl(&["--config", &config, "status", "--service", "nosuch"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("there is no service \"nosuch\" (services: many)"),
        "{}",
        stderr(&output)
    );

    // An old client's request (no field set) still gets every shard from a follower.
    let leader = cluster.wait_leader(&[0, 1, 2]).leader;
    let follower = (0..3)
        .find(|index| cluster.nodes[*index].name != leader)
        .unwrap();
    let status = cluster.status(follower).expect("status from a follower");
    assert!(status.from_leader);
    assert_eq!(status.shards.len(), 60);
    assert_eq!(status.services[0].shards.len(), 60);
}
