//! `cargo run --release -p tandem-bench -- [--trials N] [--json FILE]`
//!
//! Scenario `leader-failover`: a 3-node cluster of real `tandemd` processes on loopback with
//! the default timers. Each trial waits for a stable leader, `kill -9`s it, and measures the
//! time until a surviving node commits a no-op under a new leader (polled every millisecond
//! through the admin protocol), then restarts the killed node and lets it catch up.
//! Prints min / median / p99 / max as a table and as JSON.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde::Serialize;
use tandem_e2e::{wait_for, TestCluster, DEADLINE};
use tandemd::admin_client;

/// Benchmark options.
#[derive(Debug, Parser)]
#[command(about = "tandem benchmark: real daemons on loopback")]
struct Args {
    /// Trials per scenario.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Summary of one scenario.
#[derive(Debug, Serialize)]
struct Summary {
    scenario: &'static str,
    trials: usize,
    unit: &'static str,
    min: f64,
    median: f64,
    p99: f64,
    max: f64,
    samples: Vec<f64>,
}

fn summarize(scenario: &'static str, mut samples: Vec<f64>) -> Summary {
    samples.sort_by(f64::total_cmp);
    let at = |quantile: f64| {
        let rank = ((samples.len() as f64) * quantile).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1]
    };
    Summary {
        scenario,
        trials: samples.len(),
        unit: "ms",
        min: samples[0],
        median: at(0.5),
        p99: at(0.99),
        max: samples[samples.len() - 1],
        samples,
    }
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
                admin_client::noop(cluster.nodes[index].admin, Duration::from_millis(250))
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
        eprintln!("leader-failover trial {:>2}: {millis:8.1} ms", trial + 1);
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.trials == 0 {
        bail!("--trials must be at least 1");
    }
    eprintln!(
        "leader-failover: 3 daemons on loopback, default timers, {} trials",
        args.trials
    );
    let summaries = vec![summarize(
        "leader-failover (kill -9 leader -> new leader commits)",
        leader_failover(args.trials)?,
    )];
    println!(
        "{:<56} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "scenario", "trials", "min ms", "median ms", "p99 ms", "max ms"
    );
    for summary in &summaries {
        println!(
            "{:<56} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            summary.scenario, summary.trials, summary.min, summary.median, summary.p99, summary.max
        );
    }
    let json = serde_json::to_string_pretty(&summaries)?;
    println!("{json}");
    if let Some(path) = args.json {
        std::fs::write(&path, &json).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
