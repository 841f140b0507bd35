//! `cargo run --release -p tandem-bench -- [--trials N] [--only NAME] [--json FILE]`
//! (`--report A.json B.json ...` prints saved runs side by side instead: see `report`)
//!
//! Real `tandemd` processes on loopback, real unit processes (the test unit, which records its
//! hooks with CLOCK_MONOTONIC timestamps). Each scenario runs its trials and reports min /
//! median / p99 / max as a table and JSON. The figures are informative, never a pass/fail bar.
//! The report begins with what the host is (CPUs, kernel, how idle CPUs wait: see `host`),
//! because microsecond figures in a VM depend on it as much as on tandem.
//!
//! Scenarios:
//! - `leader-failover`: `kill -9` of the Raft leader until a new leader commits a no-op.
//! - `switchover`: admin switchover of an in-sync 2n shard, from the request until the reply,
//!   which comes when the new ACTIVE has confirmed its role (its hook returned).
//! - `unit-crash`: `kill -9` of the ACTIVE unit until the STANDBY's ACTIVE hook returned.
//! - `daemon-kill-follower` / `daemon-kill-leader`: `kill -9` of the daemon hosting the ACTIVE
//!   (a follower / the Raft leader) until the STANDBY's ACTIVE hook returned (fenced: the old
//!   ACTIVE's lease had run out first), with the default timers.
//! - `daemon-kill-follower-tuned`: the same with tuned timers (heartbeat 10 ms, lease 50 ms,
//!   node timeout 80 ms, Raft tick 5 ms).
//! - `wake`: cross-CPU round trips of two threads pinned to CPUs 0 and 1 over a Unix socket
//!   pair, on runtimes built by `tandem_io::idle_poll::runtime`, plain and polling
//!   (`--idle-poll-us`, else 200 µs): what waking a thread on another CPU costs on this host
//!   and what idle polling saves of it.
//!
//! Data plane (one run each, `--only data` for just these):
//! - `checkpoint`: sync and async commits of 128 B and 64 KiB values by the ACTIVE (SDK in the
//!   unit process) with an in-sync STANDBY on another daemon: after a tenth as many commits
//!   (at least 100) not measured, to warm up, as for the Redis peer, sequential latency
//!   p50/p99 and throughput with 32 and 256 commits in flight; then commits of 16 writes of 128 B each
//!   (a quarter as many), whose writes per second is the 256-deep rate times 16. Then queued
//!   (write-behind) commits of one write, 128 B (500 times as many, for a sustained rate) and
//!   64 KiB (a quarter): writes per second from the first `commit_queued` until the final
//!   flush returned.
//! - `data-queued` (when `data-checkpoint` is not run): only those queued commits of 128 B.
//! - `data-small` (when neither of those runs): only the sync and async commits of one 128 B
//!   write (latency and throughput), for profiling the per-commit path.
//! - `peer-redis`: the peer SPEC §7 names, side by side: Redis `SET` + `WAIT 1 0` (and plain
//!   `SET`) of 128 B values against a primary and one replica on loopback, `--commits` each,
//!   sequential and 32/256 in flight (see `peer`); skipped when `redis-server` is not installed.
//! - `transfer`: a STANDBY whose replica files were deleted gets `--transfer-mib` MiB (64 KiB
//!   sections) by full state transfer while the ACTIVE keeps writing, until digests match.
//! - `stream-switchover`: `--stream-messages` datagrams at 1000/s to the shard's UDP ingress,
//!   two switchovers meanwhile; lost and duplicated messages counted (must be 0).
//! - `soak` (only with `--soak-secs N`): N seconds of 500 datagrams/s to the ingress plus a sync
//!   checkpoint write every 2 ms; counts failovers (the ACTIVE moved), times the ACTIVE fenced
//!   itself, liveness changes, unit faults and lease lapses during the run (all must be 0; SPEC
//!   §7 asks for a 10-minute run).
//!
//! Scale (only with `--only scale`, never in a full run; see `scale`):
//! - `scale`: `--scale-nodes` daemons (16), `--scale-shards` shards (10000) in one 2n service
//!   of the test unit per pair of neighbouring nodes. Measures the time from the start until
//!   every shard has a confirmed ACTIVE and an in-sync STANDBY; over `--scale-idle-secs` (60)
//!   of quiet, Raft entries per second and each daemon's CPU and resident memory, and the role
//!   changes, liveness verdicts, faults, leader changes and lease lapses that must not happen;
//!   the same again under `--scale-traffic` (100) stream messages a second to the first shard
//!   of every service (0: skipped); then `--scale-trials` (5) each of `kill -9` of a follower holding ACTIVEs, `kill -9` of
//!   the leader, and SIGSTOP of a follower, until every shard the victim held ACTIVE is ACTIVE
//!   elsewhere and confirmed (p50/p99), the cluster healthy again after each. Status is
//!   polled as a summary every `--scale-poll-ms` (250), never during the quiet window. Waits
//!   are bounded by `--scale-settle-secs` (1800) and `--scale-failover-secs` (120). Its
//!   daemons take `--idle-poll-us` and `--cluster` as the data-plane scenarios' do.

use std::time::{Duration, Instant};

mod data;
mod host;
mod peer;
mod report;
mod resp;
mod scale;
mod wake;

use anyhow::{bail, Context as _};
use clap::Parser;
use serde::Serialize;
use tandem_admin::client;
use tandem_e2e::{monotonic_ns, pair_service, settled_pair, unit, wait_for, TestCluster, DEADLINE};
use tandem_proto::admin::switchover_request;

/// Benchmark options.
#[derive(Debug, Parser)]
#[command(about = "tandem benchmark: real daemons and units on loopback")]
struct Args {
    /// Trials per scenario.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Run only the scenarios whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Commits per checkpoint measurement (64 KiB ones: a quarter).
    #[arg(long, default_value_t = 2000)]
    commits: usize,
    /// State to transfer, MiB.
    #[arg(long, default_value_t = 1024)]
    transfer_mib: u64,
    /// Messages of the stream-switchover scenario.
    #[arg(long, default_value_t = 6000)]
    stream_messages: u64,
    /// Seconds of the soak scenario (0, the default: not run; SPEC §7 asks for 600).
    #[arg(long, default_value_t = 0)]
    soak_secs: u64,
    /// The data-plane scenarios' daemons run with `cluster.idle_poll_us` set to this, 0 to
    /// 10000 (0: idle polling off; the default is tandemd's own, 200). Their units poll only
    /// with `--cluster unit_idle_poll_us=N`.
    #[arg(long, default_value_t = tandem_admin::config::DEFAULT_IDLE_POLL_US, value_parser = clap::value_parser!(u64).range(0..=tandem_admin::config::IDLE_POLL_US_MAX))]
    idle_poll_us: u64,
    /// A `[cluster]` setting for the data-plane scenarios' daemons, as `KEY=VALUE` in TOML
    /// (`--cluster replica_sync_interval_in_sync_us=2000`); repeat for more. Checked as tandemd
    /// checks its config before anything starts.
    #[arg(long = "cluster", value_name = "KEY=VALUE")]
    cluster: Vec<String>,
    /// `--only scale`: daemons on loopback.
    #[arg(long, default_value_t = 16)]
    scale_nodes: usize,
    /// `--only scale`: shards, over all services.
    #[arg(long, default_value_t = 10_000)]
    scale_shards: usize,
    /// `--only scale`: trials of each failover (kill -9 of a follower, of the leader, SIGSTOP).
    #[arg(long, default_value_t = 5)]
    scale_trials: usize,
    /// `--only scale`: seconds of quiet over which idle costs and spurious events are counted.
    #[arg(long, default_value_t = 60)]
    scale_idle_secs: u64,
    /// `--only scale`: longest wait for every shard to be healthy (at the start, after a trial).
    #[arg(long, default_value_t = 1800)]
    scale_settle_secs: u64,
    /// `--only scale`: longest wait for one failover.
    #[arg(long, default_value_t = 120)]
    scale_failover_secs: u64,
    /// `--only scale`: datagrams a second of light traffic in a second window as long as the
    /// quiet one (0: no such window).
    #[arg(long, default_value_t = 100)]
    scale_traffic: u64,
    /// `--only scale`: milliseconds between two status polls (a summary each).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(50..))]
    scale_poll_ms: u64,
    /// Run nothing: print the headline figures of these saved JSON reports (`--json FILE`)
    /// side by side, as a Markdown table (one column per file).
    #[arg(long, value_name = "JSON", num_args = 1..)]
    report: Vec<std::path::PathBuf>,
}

/// The `[cluster]` lines of the data scenarios' config: `idle_poll_us` and each `--cluster`
/// setting, refused with tandemd's own message when tandemd would refuse them.
fn data_cluster_lines(idle_poll_us: u64, settings: &[String]) -> anyhow::Result<String> {
    let mut lines = format!("idle_poll_us = {idle_poll_us}\n");
    for setting in settings {
        let Some((key, value)) = setting.split_once('=') else {
            bail!("--cluster {setting}: expected KEY=VALUE");
        };
        lines.push_str(&format!("{} = {}\n", key.trim(), value.trim()));
    }
    let probe = format!(
        "[cluster]\nname = \"probe\"\ndata_dir = \"data\"\n{lines}\n[[nodes]]\nname = \"n1\"\n\
         peer_addr = \"127.0.0.1:1\"\nadmin_addr = \"127.0.0.1:2\"\n"
    );
    tandem_admin::config::Config::parse(&probe, std::path::Path::new("--cluster"))
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    Ok(lines)
}

/// The data-plane part of the report.
#[derive(Debug, Serialize)]
struct DataReport {
    /// `cluster.idle_poll_us` of the data scenarios' daemons.
    idle_poll_us: u64,
    /// The other `[cluster]` settings given with `--cluster`.
    cluster: Vec<String>,
    checkpoint: Vec<data::Commits>,
    queued: Vec<data::Queued>,
    /// The Redis peer's rows, when `redis-server` was there to measure.
    peer_redis: Option<peer::Redis>,
    transfer: Option<data::Transfer>,
    stream_switchover: Option<data::StreamSwitchover>,
    soak: Option<data::Soak>,
}

/// Summary of one scenario.
#[derive(Debug, Serialize)]
struct Summary {
    scenario: &'static str,
    description: &'static str,
    trials: usize,
    unit: &'static str,
    min: f64,
    median: f64,
    p99: f64,
    max: f64,
    samples: Vec<f64>,
}

/// Round trips of each `wake` row.
const WAKE_ROUND_TRIPS: usize = 20_000;

/// The `q` quantile (nearest rank) of `sorted`, which is sorted and not empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(scenario: &'static str, description: &'static str, mut samples: Vec<f64>) -> Summary {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| quantile(&samples, q);
    Summary {
        scenario,
        description,
        trials: samples.len(),
        unit: "ms",
        min: samples[0],
        median: at(0.5),
        p99: at(0.99),
        max: samples[samples.len() - 1],
        samples,
    }
}

fn report(scenario: &str, trial: usize, millis: f64) {
    eprintln!("{scenario} trial {:>2}: {millis:8.2} ms", trial + 1);
}

fn leader_failover(trials: usize) -> anyhow::Result<Vec<f64>> {
    let mut cluster = TestCluster::start(3);
    let mut samples = Vec::with_capacity(trials);
    for trial in 0..trials {
        let before = cluster.wait_leader(&[0, 1, 2]);
        // A commit first, so the leader is settled and every node knows it.
        wait_for("a commit before the kill", DEADLINE, || cluster.noop(0));
        let old = cluster
            .index_of(&before.leader)
            .context("leader name not in config")?;
        let survivors: Vec<usize> = (0..3).filter(|&index| index != old).collect();
        let started = Instant::now();
        cluster.kill9(old);
        let elapsed = loop {
            let reply = survivors.iter().find_map(|&index| {
                client::noop(cluster.nodes[index].admin, Duration::from_millis(250))
                    .ok()
                    .filter(|reply| reply.leader != before.leader && reply.term > before.term)
            });
            if reply.is_some() {
                break started.elapsed();
            }
            if started.elapsed() > DEADLINE {
                bail!("trial {trial}: no new leader committed within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let millis = elapsed.as_secs_f64() * 1000.0;
        report("leader-failover", trial, millis);
        samples.push(millis);
        cluster.spawn(old);
        let target = cluster.wait_leader(&survivors).commit_index;
        wait_for("the restarted node to catch up", DEADLINE, || {
            let status = cluster.status(survivors[0])?;
            let node = &status.nodes[old];
            (node.up && node.applied_index >= target).then_some(())
        });
    }
    Ok(samples)
}

const SHARD: &str = "pair-0";

fn switchover(trials: usize) -> anyhow::Result<Vec<f64>> {
    let cluster = TestCluster::start_with(3, &pair_service(false));
    let mut samples = Vec::with_capacity(trials);
    for trial in 0..trials {
        let (_, standby) = cluster.wait_in_sync(SHARD);
        let leader = cluster.leader_status().context("no leader")?;
        let via = cluster
            .index_of(&leader.leader)
            .context("leader not in config")?;
        let started = Instant::now();
        let done = cluster
            .operation(
                via,
                client::switchover_kind(switchover_request::Target::Shard(SHARD.into())),
            )
            .with_context(|| format!("switchover trial {trial}"))?;
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        if !done.message.contains(&standby) {
            bail!(
                "trial {trial}: the switchover went elsewhere: {}",
                done.message
            );
        }
        report("switchover", trial, millis);
        samples.push(millis);
    }
    Ok(samples)
}

/// The time the STANDBY `unit` finished its ACTIVE hook after `since_ns`, from the records.
fn took_over_at(cluster: &TestCluster, unit_name: &str, since_ns: u64) -> Option<u64> {
    cluster
        .records()
        .into_iter()
        .find(|record| {
            record.unit == unit_name
                && record.event == "done"
                && record.role == "ACTIVE"
                && record.at_ns > since_ns
        })
        .map(|record| record.at_ns)
}

fn unit_crash(trials: usize) -> anyhow::Result<Vec<f64>> {
    let cluster = TestCluster::start_with(3, &pair_service(false));
    let mut samples = Vec::with_capacity(trials);
    for trial in 0..trials {
        let (active, standby) = cluster.wait_settled(SHARD);
        let pid = unit(&cluster.leader_status().context("no leader")?, &active)
            .map(|unit| unit.pid)
            .filter(|pid| *pid != 0)
            .context("the ACTIVE has no pid")?;
        let killed_at = monotonic_ns();
        // SAFETY: kill(2) of a unit process the benchmark's cluster started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let took_over = wait_for("the STANDBY to take over", DEADLINE, || {
            took_over_at(&cluster, &standby, killed_at)
        });
        let millis = (took_over - killed_at) as f64 / 1e6;
        report("unit-crash", trial, millis);
        samples.push(millis);
        // The killed unit restarts and returns as STANDBY before the next trial.
        wait_for("the killed unit to return as STANDBY", DEADLINE, || {
            let pair = settled_pair(&cluster.leader_status()?, SHARD)?;
            (pair.1 == active).then_some(())
        });
    }
    Ok(samples)
}

/// `kill -9` of the daemon hosting the ACTIVE, `leader` saying whether that node must be the
/// Raft leader or a follower.
fn daemon_kill(trials: usize, leader: bool, timers: &str) -> anyhow::Result<Vec<f64>> {
    let mut cluster = TestCluster::start_with_cluster(3, timers, &pair_service(false));
    let mut samples = Vec::with_capacity(trials);
    let mut trial = 0;
    let mut attempts = 0;
    while trial < trials {
        attempts += 1;
        if attempts > trials * 10 {
            bail!(
                "could not arrange the ACTIVE on a {} node",
                if leader { "leader" } else { "follower" }
            );
        }
        let (active, standby) = cluster.wait_in_sync(SHARD);
        let status = cluster.leader_status().context("no leader")?;
        let host = &unit(&status, &active).context("active unit")?.node;
        let host_index = cluster.index_of(host).context("host not in config")?;
        let host_leads = status.leader == *host;
        if host_leads != leader {
            // Move the ACTIVE to the other unit's node, or (for the leader variant, when the
            // leader hosts no unit) make another node lead.
            let other_host = &unit(&status, &standby).context("standby unit")?.node;
            if !leader || status.leader == *other_host {
                let via = cluster
                    .index_of(&status.leader)
                    .context("leader not in config")?;
                cluster
                    .operation(
                        via,
                        client::switchover_kind(switchover_request::Target::Shard(SHARD.into())),
                    )
                    .context("switchover to arrange the trial")?;
            } else {
                let current = cluster
                    .index_of(&status.leader)
                    .context("leader not in config")?;
                cluster.kill9(current);
                let others: Vec<usize> = (0..3).filter(|index| *index != current).collect();
                cluster.wait_leader(&others);
                cluster.spawn(current);
                wait_for("every node up", DEADLINE, || {
                    let status = cluster.leader_status()?;
                    status.nodes.iter().all(|node| node.up).then_some(())
                });
            }
            continue;
        }
        let killed_at = monotonic_ns();
        cluster.kill9(host_index);
        let took_over = wait_for("the STANDBY to take over", DEADLINE, || {
            took_over_at(&cluster, &standby, killed_at)
        });
        let millis = (took_over - killed_at) as f64 / 1e6;
        let name = match (leader, timers.is_empty()) {
            (true, _) => "daemon-kill-leader",
            (false, true) => "daemon-kill-follower",
            (false, false) => "daemon-kill-follower-tuned",
        };
        report(name, trial, millis);
        samples.push(millis);
        trial += 1;
        cluster.spawn(host_index);
        wait_for(
            "the killed node's unit to return as STANDBY",
            DEADLINE,
            || {
                let status = cluster.leader_status()?;
                let pair = settled_pair(&status, SHARD)?;
                (pair.1 == active && status.nodes.iter().all(|node| node.up)).then_some(())
            },
        );
    }
    Ok(samples)
}

/// Timers for the tuned scenario: heartbeat 10 ms, lease 50 ms, node timeout 80 ms; Raft
/// ticks of 5 ms, elections after 10 to 20 ticks.
const TUNED: &str =
    "heartbeat_interval_ms = 10\nlease_ms = 50\nnode_timeout_ms = 80\nraft_tick_ms = 5\n\
                     raft_heartbeat_ticks = 2\nraft_election_ticks = 10\n";

type Scenario = (
    &'static str,
    &'static str,
    fn(usize) -> anyhow::Result<Vec<f64>>,
);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.report.is_empty() {
        print!("{}", report::markdown(&args.report)?);
        return Ok(());
    }
    if args.trials == 0 {
        bail!("--trials must be at least 1");
    }
    let wants = |name: &str| args.only.as_deref().is_none_or(|only| name.contains(only));
    let host = host::Host::read();
    eprintln!("{}", host.line());
    let scenarios: [Scenario; 6] = [
        (
            "leader-failover",
            "kill -9 leader -> new leader commits",
            leader_failover,
        ),
        (
            "switchover",
            "admin switchover -> new ACTIVE confirmed",
            switchover,
        ),
        (
            "unit-crash",
            "kill -9 ACTIVE unit -> STANDBY ACTIVE",
            unit_crash,
        ),
        (
            "daemon-kill-follower",
            "kill -9 ACTIVE's daemon (follower) -> STANDBY ACTIVE, default timers",
            |trials| daemon_kill(trials, false, ""),
        ),
        (
            "daemon-kill-leader",
            "kill -9 ACTIVE's daemon (Raft leader) -> STANDBY ACTIVE, default timers",
            |trials| daemon_kill(trials, true, ""),
        ),
        (
            "daemon-kill-follower-tuned",
            "kill -9 ACTIVE's daemon (follower) -> STANDBY ACTIVE, tuned timers",
            |trials| daemon_kill(trials, false, TUNED),
        ),
    ];
    let mut summaries = Vec::new();
    for (name, description, run) in scenarios {
        if !wants(name) {
            continue;
        }
        eprintln!(
            "{name}: {description}, 3 daemons on loopback, {} trials",
            args.trials
        );
        summaries.push(summarize(name, description, run(args.trials)?));
    }
    println!("{}", host.line());
    if let Some(caveat) = host.caveat() {
        println!("{caveat}");
    }
    println!(
        "{:<28} {:<70} {:>6} {:>8} {:>9} {:>8} {:>8}",
        "scenario", "measures", "trials", "min ms", "median ms", "p99 ms", "max ms"
    );
    for summary in &summaries {
        println!(
            "{:<28} {:<70} {:>6} {:>8.2} {:>9.2} {:>8.2} {:>8.2}",
            summary.scenario,
            summary.description,
            summary.trials,
            summary.min,
            summary.median,
            summary.p99,
            summary.max
        );
    }
    let mut data_report = DataReport {
        idle_poll_us: args.idle_poll_us,
        cluster: args.cluster.clone(),
        checkpoint: Vec::new(),
        queued: Vec::new(),
        peer_redis: None,
        transfer: None,
        stream_switchover: None,
        soak: None,
    };
    let wake = if wants("wake") {
        // With polling turned off for the data scenarios, show what tandemd's default does.
        let window = if args.idle_poll_us > 0 {
            args.idle_poll_us
        } else {
            tandem_admin::config::DEFAULT_IDLE_POLL_US
        };
        eprintln!("wake: cross-CPU round trips on a Unix socket pair, plain and with {window} µs idle polling");
        let rows = wake::wake(window, WAKE_ROUND_TRIPS)?;
        if rows.is_none() {
            eprintln!("wake: skipped, this host has one CPU");
        }
        rows
    } else {
        None
    };
    if let Some(rows) = &wake {
        println!(
            "\n{:<8} {:>14} {:>12} {:>10} {:>10}",
            "wake", "idle_poll_us", "round trips", "p50 us", "p99 us"
        );
        for row in rows {
            println!(
                "{:<8} {:>14} {:>12} {:>10.1} {:>10.1}",
                "cpu0-1", row.idle_poll_us, row.round_trips, row.p50_us, row.p99_us
            );
        }
    }
    let data_cluster = data_cluster_lines(args.idle_poll_us, &args.cluster)?;
    if wants("data") {
        eprintln!("data plane: cluster.idle_poll_us = {}", args.idle_poll_us);
        for setting in &args.cluster {
            eprintln!("data plane: cluster.{}", setting.trim());
        }
    }
    let rows = if wants("data-checkpoint") {
        Some((
            data::Rows::All,
            format!(
                "checkpoint: commits with an in-sync STANDBY, {} each",
                args.commits
            ),
        ))
    } else if wants("data-queued") {
        Some((
            data::Rows::Queued,
            format!(
                "queued: {} queued commits of 128 B with an in-sync STANDBY",
                args.commits * tandem_e2e::QUEUED_SMALL_PER_COUNT
            ),
        ))
    } else if wants("data-small") {
        Some((
            data::Rows::Small,
            format!(
                "small: sync and async commits of one 128 B write with an in-sync STANDBY, {} each",
                args.commits
            ),
        ))
    } else {
        None
    };
    if let Some((rows, what)) = rows {
        eprintln!("{what}");
        (data_report.checkpoint, data_report.queued) =
            data::checkpoint(args.commits, rows, &data_cluster)?;
    }
    if wants("data-peer-redis") {
        eprintln!(
            "peer-redis: SET + WAIT 1 0 and SET of 128 B to a primary and one replica, {} each",
            args.commits
        );
        data_report.peer_redis = peer::redis(args.commits)?;
        if data_report.peer_redis.is_none() {
            eprintln!(
                "peer-redis: skipped, redis-server is not on the PATH (Debian: apt-get install redis-server)"
            );
        }
    }
    if wants("data-transfer") {
        eprintln!(
            "transfer: {} MiB to an emptied STANDBY under writes",
            args.transfer_mib
        );
        data_report.transfer = Some(data::transfer(args.transfer_mib, &data_cluster)?);
    }
    if wants("data-stream-switchover") {
        eprintln!(
            "stream-switchover: {} messages at 1000/s, switchovers meanwhile",
            args.stream_messages
        );
        data_report.stream_switchover = Some(data::stream_switchover(
            args.stream_messages,
            &data_cluster,
        )?);
    }
    let scale = if args.only.is_some() && wants("scale") {
        if args.scale_trials == 0 {
            bail!("--scale-trials must be at least 1");
        }
        Some(scale::scale(scale::Options {
            nodes: args.scale_nodes,
            shards: args.scale_shards,
            trials: args.scale_trials,
            idle: Duration::from_secs(args.scale_idle_secs),
            settle: Duration::from_secs(args.scale_settle_secs),
            failover: Duration::from_secs(args.scale_failover_secs),
            poll: Duration::from_millis(args.scale_poll_ms),
            traffic: args.scale_traffic,
            cluster_toml: data_cluster.clone(),
        })?)
    } else {
        None
    };
    if args.soak_secs > 0 && wants("soak") {
        eprintln!(
            "soak: {} s of stream messages and checkpoint writes, watched for failovers",
            args.soak_secs
        );
        data_report.soak = Some(data::soak(args.soak_secs, &data_cluster)?);
    }
    if !data_report.checkpoint.is_empty() {
        println!(
            "\ndata plane daemons: cluster.idle_poll_us = {}",
            args.idle_poll_us
        );
        println!(
            "{:<8} {:>8} {:>6} {:>7} {:>10} {:>10} {:>14} {:>14} {:>12} {:>12} {:>16}",
            "commit",
            "value",
            "writes",
            "count",
            "p50 us",
            "p99 us",
            "seq commits/s",
            "32-deep /s",
            "32-deep MiB/s",
            "256-deep /s",
            "256-deep writes/s"
        );
        for commits in &data_report.checkpoint {
            println!(
                "{:<8} {:>8} {:>6} {:>7} {:>10.1} {:>10.1} {:>14.0} {:>14.0} {:>12.1} {:>12.0} {:>16.0}",
                commits.mode,
                commits.size,
                commits.writes_per_commit,
                commits.count,
                commits.p50_us,
                commits.p99_us,
                commits.sequential_per_s,
                commits.pipelined_per_s,
                commits.pipelined_mib_per_s,
                commits.deep_per_s,
                commits.deep_per_s * commits.writes_per_commit as f64
            );
        }
    }
    if let Some(redis) = &data_report.peer_redis {
        println!(
            "\npeer: {}, a primary and one replica on loopback, persistence off",
            redis.version
        );
        println!(
            "{:<8} {:<16} {:>6} {:>7} {:>10} {:>10} {:>14} {:>14} {:>12}",
            "peer",
            "command",
            "value",
            "count",
            "p50 us",
            "p99 us",
            "seq ops/s",
            "32-deep /s",
            "256-deep /s"
        );
        for row in &redis.rows {
            println!(
                "{:<8} {:<16} {:>6} {:>7} {:>10.1} {:>10.1} {:>14.0} {:>14.0} {:>12.0}",
                format!("redis {}", row.mode),
                row.command,
                row.size,
                row.count,
                row.p50_us,
                row.p99_us,
                row.sequential_per_s,
                row.pipelined_per_s,
                row.deep_per_s
            );
        }
    }
    if !data_report.queued.is_empty() {
        println!(
            "\n{:<8} {:>8} {:>8} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10}",
            "queued",
            "value",
            "count",
            "call p50 us",
            "call p99 us",
            "call max us",
            "writes/s",
            "MiB/s",
            "flush ms"
        );
        for queued in &data_report.queued {
            println!(
                "{:<8} {:>8} {:>8} {:>12.2} {:>12.2} {:>12.0} {:>12.0} {:>10.1} {:>10.1}",
                "queued",
                queued.size,
                queued.count,
                queued.call_p50_us,
                queued.call_p99_us,
                queued.call_max_us,
                queued.writes_per_s,
                queued.mib_per_s,
                queued.flush_ms
            );
        }
    }
    if let Some(transfer) = &data_report.transfer {
        println!(
            "\nstate transfer: {} bytes ({} sections) in {:.0} ms = {:.1} MiB/s, digest verified",
            transfer.bytes, transfer.sections, transfer.millis, transfer.mib_per_s
        );
    }
    if let Some(stream) = &data_report.stream_switchover {
        println!(
            "\nswitchover under stream load: {} sent at {}/s, {} switchovers, {} applied, {} lost, {} duplicated",
            stream.sent, stream.rate, stream.switchovers, stream.applied, stream.lost, stream.duplicated
        );
    }
    if let Some(soak) = &data_report.soak {
        println!(
            "\nsoak: {} s, {} messages sent / {} applied, {} checkpoint writes acknowledged; \
             {} failovers, {} times the ACTIVE fenced itself, {} liveness changes, {} unit \
             faults, {} lease lapses (all must be 0), {} slow loop passes",
            soak.seconds,
            soak.messages_sent,
            soak.messages_applied,
            soak.writes_acked,
            soak.failovers,
            soak.fenced,
            soak.liveness_changes,
            soak.faults,
            soak.lease_lapses,
            soak.slow_passes
        );
    }
    if let Some(scale) = &scale {
        scale::print(scale);
    }
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "host": host,
        "failover": summaries,
        "data": data_report,
        "wake": wake,
        "scale": scale,
    }))?;
    println!("{json}");
    if let Some(path) = args.json {
        std::fs::write(&path, &json).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
