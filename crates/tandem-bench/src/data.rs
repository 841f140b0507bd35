//! Data-plane scenarios: checkpoint commit latency and throughput, state transfer rate, and a
//! switchover under stream load (lost and duplicated messages counted).

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tandem_admin::client;
use tandem_e2e::{free_ingress_port, node_data_dir, unit, wait_for, TestCluster, DEADLINE};
use tandem_proto::admin::switchover_request;

const SHARD: &str = "pair-0";

/// A 2n `pair` service of the test unit with extra environment and an optional UDP ingress.
fn service(env: &str, ingress: Option<u16>) -> String {
    let mut text = format!(
        "\n[[services]]\nname = \"pair\"\nmodel = \"2n\"\nshards = [\"{SHARD}\"]\n\
         units = [{{ name = \"pair-a\", node = \"n1\" }}, {{ name = \"pair-b\", node = \"n2\" }}]\n\
         instantiate = [\"{{unit_bin}}\"]\n\
         env = {{ TANDEM_TEST_RECORD = \"{{record}}\"{env} }}\n\
         health_interval_ms = 100\nhealth_timeout_ms = 2000\ncallback_timeout_ms = 60000\n\
         [services.escalation]\nrestart_max = 1000000\nrelocate = false\n"
    );
    if let Some(port) = ingress {
        text.push_str(&format!(
            "[services.ingress.{SHARD}]\nudp = \"127.0.0.1:{port}\"\n"
        ));
    }
    text
}

/// One checkpoint measurement, as the unit reported it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Commits {
    /// `sync` or `async`.
    pub mode: String,
    /// Value bytes.
    pub size: u64,
    /// Writes (puts of distinct keys) in each commit.
    pub writes_per_commit: u64,
    /// Commits measured one at a time (the latency figures).
    pub count: u64,
    /// Sequential commit latency, median, µs.
    pub p50_us: f64,
    /// Sequential commit latency, 99th percentile, µs.
    pub p99_us: f64,
    /// Commits per second, one at a time.
    pub sequential_per_s: f64,
    /// Commits per second with 32 in flight.
    pub pipelined_per_s: f64,
    /// The same in MiB/s of values.
    pub pipelined_mib_per_s: f64,
    /// Commits per second with 256 in flight.
    pub deep_per_s: f64,
    /// Commits the 32-deep run made: `count`, or more to run at least half a second.
    pub pipelined_count: u64,
    /// The same for the 256-deep run.
    pub deep_count: u64,
}

/// Queued (write-behind) commits, as the unit reported them.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Queued {
    /// Value bytes (one write per commit).
    pub size: u64,
    /// Commits queued.
    pub count: u64,
    /// How long a `commit_queued` call took, median, µs.
    pub call_p50_us: f64,
    /// The same, 99th percentile (a call waits when the queue is full).
    pub call_p99_us: f64,
    /// The longest call, µs (the longest the queue was full).
    pub call_max_us: f64,
    /// Writes per second, from the first call until the final flush returned (the STANDBY
    /// had every write).
    pub writes_per_s: f64,
    /// The same in MiB/s of values.
    pub mib_per_s: f64,
    /// The final flush, ms.
    pub flush_ms: f64,
}

/// What the unit measured: commits waited for one by one or in flight, and queued commits.
pub type Measured = (Vec<Commits>, Vec<Queued>);

/// Which rows of the checkpoint benchmark run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Every row.
    All,
    /// Only the queued commits of 128 B (`QUEUED_SMALL_PER_COUNT` times `count`).
    Queued,
    /// Only the sync and async commits of one 128 B write.
    Small,
}

/// Checkpoint commits of the ACTIVE with an in-sync STANDBY on another daemon.
pub fn checkpoint(count: usize, rows: Rows, cluster_toml: &str) -> anyhow::Result<Measured> {
    let out = tempfile::NamedTempFile::new()?.into_temp_path();
    let mut env = format!(
        ", TANDEM_TEST_BENCH = \"{count}\", TANDEM_TEST_BENCH_OUT = \"{}\"",
        out.display()
    );
    let lines = match rows {
        Rows::All => 8,
        Rows::Queued => {
            env.push_str(", TANDEM_TEST_BENCH_ROWS = \"queued\"");
            1
        }
        Rows::Small => {
            env.push_str(", TANDEM_TEST_BENCH_ROWS = \"small\"");
            2
        }
    };
    let cluster = TestCluster::start_with_cluster(3, cluster_toml, &service(&env, None));
    let text = wait_for("the unit's checkpoint measurements", DEADLINE * 10, || {
        let text = std::fs::read_to_string(&out).ok()?;
        (text.lines().count() >= lines || text.contains("\"error\"")).then_some(text)
    });
    if text.contains("\"error\"") {
        eprintln!("{text}");
        // What the daemons warned about is what tells why.
        for index in 0..3 {
            for line in cluster.log(index).lines() {
                if (line.contains("WARN") || line.contains("ERROR")) && !line.contains("TLS") {
                    eprintln!("n{}: {line}", index + 1);
                }
            }
        }
    }
    drop(cluster);
    let mut measured = Measured::default();
    for line in text.lines() {
        let context = || format!("the unit reported {line}");
        if line.contains("\"mode\":\"queued\"") {
            measured
                .1
                .push(serde_json::from_str(line).with_context(context)?);
        } else {
            measured
                .0
                .push(serde_json::from_str(line).with_context(context)?);
        }
    }
    Ok(measured)
}

/// A state transfer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    /// Bytes the primary announced.
    pub bytes: u64,
    /// Sections copied.
    pub sections: u64,
    /// From the session's start to the digest verified, ms.
    pub millis: f64,
    /// MiB per second.
    pub mib_per_s: f64,
}

fn log_time(line: &str) -> Option<f64> {
    // `2026-11-23T23:17:46.600764Z ...`: seconds of the day are enough within one run.
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// A STANDBY that lost its replica files gets `mib` MiB (64 KiB sections) by full transfer
/// while the ACTIVE keeps writing; timed from the primary's log (session start to verified).
pub fn transfer(mib: u64, cluster_toml: &str) -> anyhow::Result<Transfer> {
    let sections = mib * 16;
    let env = format!(
        ", TANDEM_TEST_WRITES = \"1\", TANDEM_TEST_BULK = \"{sections}\", \
         TANDEM_TEST_BULK_VALUE = \"65536\""
    );
    let mut cluster = TestCluster::start_with_cluster(3, cluster_toml, &service(&env, None));
    cluster.wait_in_sync(SHARD);
    // The bulk is written before the first acknowledged `n`.
    wait_for("the bulk written", DEADLINE * 20, || {
        cluster
            .records()
            .iter()
            .any(|record| record.event == "acked")
            .then_some(())
    });
    let (active, standby) = cluster.wait_in_sync(SHARD);
    let status = cluster.leader_status().context("status")?;
    let host = cluster
        .index_of(&unit(&status, &standby).context("standby")?.node)
        .context("node")?;
    let primary = cluster
        .index_of(&unit(&status, &active).context("active")?.node)
        .context("node")?;
    if !cluster.terminate(host) {
        bail!("the STANDBY's daemon did not stop cleanly");
    }
    std::fs::remove_dir_all(node_data_dir(&cluster, host).join("replicas"))?;
    let log_start = cluster.log(primary).len();
    cluster.spawn(host);
    let (started, verified, bytes) = wait_for("the transfer verified", DEADLINE * 20, || {
        let log = cluster.log(primary);
        let tail = &log[log_start.min(log.len())..];
        let start = tail
            .lines()
            .find(|line| line.contains(&format!("state transfer to STANDBY {standby}")))?;
        let bytes: u64 = start
            .split(" sections, ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse()
            .ok()?;
        let done = tail
            .lines()
            .skip_while(|line| *line != start)
            .find(|line| {
                line.contains(&format!(
                    "STANDBY {standby} of shard {SHARD} verified in sync"
                ))
            })?;
        Some((log_time(start)?, log_time(done)?, bytes))
    });
    let millis = (verified - started) * 1000.0;
    Ok(Transfer {
        bytes,
        sections,
        millis,
        mib_per_s: bytes as f64 / (1024.0 * 1024.0) / (millis / 1000.0),
    })
}

/// A switchover under stream load.
#[derive(Debug, Clone, Serialize)]
pub struct StreamSwitchover {
    /// Datagrams sent to the ingress.
    pub sent: u64,
    /// Distinct messages applied.
    pub applied: u64,
    /// Sent and never applied.
    pub lost: u64,
    /// Applied more than once.
    pub duplicated: u64,
    /// Switchovers done while sending.
    pub switchovers: u64,
    /// Messages per second offered.
    pub rate: u64,
}

/// `messages` datagrams at 1000/s to the shard's UDP ingress, with a switchover after each
/// third of them; counts what the units applied (each applied message is a sync commit that
/// consumes it, recorded by the unit).
pub fn stream_switchover(messages: u64, cluster_toml: &str) -> anyhow::Result<StreamSwitchover> {
    let port = free_ingress_port();
    let cluster = TestCluster::start_with_cluster(3, cluster_toml, &service("", Some(port)));
    cluster.wait_in_sync(SHARD);
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let rate = 1000u64;
    let started = Instant::now();
    let mut switchovers = Vec::new();
    for id in 1..=messages {
        let due = started + Duration::from_micros(id * 1_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        socket.send_to(format!("m{id}").as_bytes(), ("127.0.0.1", port))?;
        if id % (messages / 3).max(1) == 0 && id < messages {
            // From a thread, so the sending goes on at its rate meanwhile.
            let admin = cluster.nodes[0].admin;
            switchovers.push(std::thread::spawn(move || {
                client::operation(
                    admin,
                    client::switchover_kind(switchover_request::Target::Shard(SHARD.into())),
                    DEADLINE,
                )
            }));
        }
    }
    // Every message applied, or nothing more for 3 s.
    let mut last = (0, Instant::now());
    let counts = loop {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for record in cluster.records().iter().filter(|r| r.event == "msg") {
            *counts.entry(record.role.clone()).or_default() += 1;
        }
        let total: u64 = counts.values().sum();
        if counts.len() as u64 >= messages && total == last.0 {
            break counts;
        }
        if total != last.0 {
            last = (total, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let switchovers = switchovers
        .into_iter()
        .filter_map(|thread| thread.join().ok())
        .filter(|result| {
            if let Err(error) = result {
                eprintln!("stream-switchover: a switchover was refused: {error}");
            }
            result.is_ok()
        })
        .count() as u64;
    let applied = counts.len() as u64;
    let duplicated = counts.values().map(|count| count - 1).sum();
    Ok(StreamSwitchover {
        sent: messages,
        applied,
        lost: messages - applied.min(messages),
        duplicated,
        switchovers,
        rate,
    })
}

/// A long run under load, watched for failovers nobody asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    /// Length of the run, s.
    pub seconds: u64,
    /// Datagrams sent to the shard's ingress (500/s).
    pub messages_sent: u64,
    /// Distinct messages applied (each a sync commit consuming it).
    pub messages_applied: u64,
    /// Checkpoint writes the ACTIVE's write loop had acknowledged (a sync commit every 2 ms).
    pub writes_acked: u64,
    /// Times the shard's ACTIVE moved (another unit, or a new epoch) during the run (must be 0).
    pub failovers: u64,
    /// Times the ACTIVE unit quiesced itself during the run, its lease lapsed (must be 0).
    pub fenced: u64,
    /// Liveness changes the cluster committed during the run (must be 0).
    pub liveness_changes: u64,
    /// Unit faults the cluster recorded during the run (must be 0).
    pub faults: u64,
    /// Lease lapses the daemons logged during the run (must be 0).
    pub lease_lapses: u64,
    /// Slow loop passes the daemons warned about during the run.
    pub slow_passes: u64,
}

/// Lines of node `index`'s log that contain `needle`.
fn log_count(cluster: &TestCluster, index: usize, needle: &str) -> u64 {
    cluster
        .log(index)
        .lines()
        .filter(|line| line.contains(needle))
        .count() as u64
}

/// What the three logs hold now: committed liveness changes and faults (as n1 applied them),
/// lease lapses and slow passes (every daemon's own).
fn log_counts(cluster: &TestCluster) -> [u64; 4] {
    let all = |needle: &str| (0..3).map(|index| log_count(cluster, index, needle)).sum();
    [
        log_count(cluster, 0, "kind=\"node-liveness\""),
        log_count(cluster, 0, "kind=\"fault\""),
        all("lease lapsed"),
        all("the event loop was busy"),
    ]
}

/// `seconds` of load on a settled pair: 500 datagrams/s to the shard's UDP ingress (each
/// applied with a sync commit) while the ACTIVE also commits a checkpoint write every 2 ms.
/// Counts what must not happen without a fault: a unit becoming ACTIVE, a liveness change, a
/// unit fault, a lease lapse, an ACTIVE fencing itself (SPEC §7: no spurious failover in a
/// 10-minute run under load).
pub fn soak(seconds: u64, cluster_toml: &str) -> anyhow::Result<Soak> {
    let port = free_ingress_port();
    let cluster = TestCluster::start_with_cluster(
        3,
        cluster_toml,
        &service(", TANDEM_TEST_WRITES = \"1\"", Some(port)),
    );
    cluster.wait_in_sync(SHARD);
    let before = cluster.records();
    let active = before
        .iter()
        .rev()
        .find(|r| r.event == "done" && r.role == "ACTIVE")
        .map(|r| (r.unit.clone(), r.epoch))
        .context("the shard has no ACTIVE")?;
    let [liveness, faults, lapses, slow] = log_counts(&cluster);
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let rate = 500u64;
    let messages = seconds * rate;
    let started = Instant::now();
    for id in 1..=messages {
        let due = started + Duration::from_micros(id * 1_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        socket.send_to(format!("m{id}").as_bytes(), ("127.0.0.1", port))?;
        if id % (rate * 60) == 0 {
            eprintln!("soak: {} s of {seconds}", id / rate);
        }
    }
    // Every message applied, or nothing more for 3 s.
    let applied = wait_for("the soak's messages to be applied", DEADLINE, || {
        std::thread::sleep(Duration::from_millis(200));
        let applied = cluster
            .records()
            .iter()
            .filter(|r| r.event == "msg")
            .map(|r| r.role.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64;
        (applied >= messages || started.elapsed() > Duration::from_secs(seconds + 3))
            .then_some(applied)
    });
    let records = cluster.records();
    let during = &records[before.len().min(records.len())..];
    // A move: an ACTIVE hook of another unit, or at another epoch. An ACTIVE whose lease
    // lapsed quiesces itself and takes ACTIVE again at the same epoch when the lease is back:
    // counted apart, as fenced.
    let failovers = during
        .iter()
        .filter(|r| r.event == "done" && r.role == "ACTIVE")
        .filter(|r| (r.unit.clone(), r.epoch) != active)
        .count() as u64;
    let fenced = during
        .iter()
        .filter(|r| r.event == "start" && r.role == "QUIESCED" && r.unit == active.0)
        .count() as u64;
    let [liveness_after, faults_after, lapses_after, slow_after] = log_counts(&cluster);
    Ok(Soak {
        seconds,
        messages_sent: messages,
        messages_applied: applied,
        writes_acked: records.iter().filter(|r| r.event == "acked").count() as u64,
        failovers,
        fenced,
        liveness_changes: liveness_after - liveness,
        faults: faults_after - faults,
        lease_lapses: lapses_after - lapses,
        slow_passes: slow_after - slow,
    })
}
