//! Simulation tests over whole clusters. A failure prints its seed and the command replaying
//! it: `TANDEM_SEED=<seed> cargo test -p tandem-sim --test sim -- replay --nocapture`.
//!
//! The long sweep: `cargo test --release -p tandem-sim --test sim -- --ignored sweep --nocapture`
//! (`TANDEM_SWEEP_SEEDS`, default 10000, seeds from `TANDEM_SWEEP_START`, default 0;
//! `TANDEM_SWEEP_SCALE=1` sweeps runs at scale instead, `SimConfig::at_scale`: 16 to 64
//! nodes and 1,000 to 3,000 more shards, one to several minutes a seed).

use std::time::Instant;

use tandem_sim::{run, run_with_log, SimConfig, SimFailure, SimReport};

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|error| panic!("{name}={value:?} is not a number: {error}")),
    )
}

/// Runs `seeds` with the standard configuration; returns the summed report and the failures.
fn run_seeds(seeds: impl Iterator<Item = u64>) -> (SimReport, Vec<SimFailure>, u64) {
    let mut total = SimReport::default();
    let mut failures = Vec::new();
    let mut count = 0;
    for seed in seeds {
        count += 1;
        match run(SimConfig::for_seed(seed)) {
            Ok(report) => total.accumulate(&report),
            Err(failure) => failures.push(failure),
        }
    }
    (total, failures, count)
}

fn failure_list(failures: &[SimFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn fixed_seeds() {
    let started = Instant::now();
    let coverage = COVERAGE_SEEDS.iter().map(|(seed, _)| *seed);
    let (mut total, mut failures, mut count) = run_seeds((0..200).chain(coverage));
    if total.installs_started_over == 0 {
        // A change of timing moved the rarest path off the coverage seeds: find a seed that
        // takes it (about one in 500 does), so the check below still means something, and
        // name it for `COVERAGE_SEEDS`.
        let found = (COVERAGE_SEARCH_FROM..COVERAGE_SEARCH_FROM + COVERAGE_SEARCH_SEEDS_MAX)
            .find_map(|seed| {
                count += 1;
                match run(SimConfig::for_seed(seed)) {
                    Ok(report) if report.installs_started_over > 0 => Some((seed, report)),
                    Ok(report) => {
                        total.accumulate(&report);
                        None
                    }
                    Err(failure) => {
                        failures.push(failure);
                        None
                    }
                }
            });
        if let Some((seed, report)) = found {
            println!(
                "fixed_seeds: no coverage seed installs a replica that started over any more; \
                 seed {seed} does (put it in COVERAGE_SEEDS)"
            );
            total.accumulate(&report);
        }
    }
    println!(
        "fixed_seeds: {count} seeds in {:.1?}, {} failed: {total}",
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed:\n{}",
        failures.len(),
        failure_list(&failures)
    );
    // The fixed set as a whole must really exercise the faults it claims to, or passing it
    // means little.
    let exercised = [
        ("crashes", total.crashes),
        ("crashes during a write", total.crashes_mid_write),
        ("torn unsynced tails", total.torn_writes),
        ("garbage tails", total.garbage_tails),
        ("torn tails recovered", total.torn_tails_recovered),
        ("replica file compactions", total.compactions),
        ("compacted files installed", total.installs),
        ("install reports that came late", total.late_installs),
        (
            "installs of a replica that started over meanwhile",
            total.installs_started_over,
        ),
        (
            "compacted files lost to a crash before their install",
            total.installs_lost,
        ),
        ("restarts", total.restarts),
        ("pauses", total.pauses),
        ("partitions", total.partitions),
        ("closed connections heard of", total.links_lost),
        ("commits merged into one op", total.commits_merged),
        ("duplicated messages", total.messages_duplicated),
        ("snapshots taken", total.snapshots_taken),
        ("snapshots installed", total.snapshots_installed),
        ("liveness changes", total.liveness_changes),
        ("acknowledged proposals", total.proposals_acknowledged),
        ("unit crashes", total.unit_crashes),
        ("unit hangs", total.unit_hangs),
        ("faults units reported", total.unit_reported_faults),
        ("unit faults handled", total.unit_faults_handled),
        ("promotions of a STANDBY", total.promotions),
        ("handovers", total.handovers),
        ("relocations", total.relocations),
        ("L0 resets", total.ladder_levels[0]),
        ("L1 restarts", total.ladder_levels[1]),
        ("L2 reinitialisations", total.ladder_levels[2]),
        ("L3 node restarts", total.ladder_levels[3]),
        ("node-restart commands", total.node_restarts),
        ("operator requests completed", total.admin_done),
    ];
    for (what, value) in exercised {
        assert!(value > 0, "the fixed seeds exercised no {what}: {total}");
    }
    assert!(
        total.elections > count,
        "expected re-elections beyond one per run: {total}"
    );
}

/// Runs at scale in every test run (`SimConfig::at_scale`): seed 38 is 16 nodes (5 voting)
/// with 2,000 wide shards besides the standard services, under the standard faults. More
/// in the sweep (`TANDEM_SWEEP_SCALE=1`); each takes from half a minute to a few minutes.
const SCALE_SEEDS: &[u64] = &[38];

#[test]
fn scale_seeds() {
    for seed in SCALE_SEEDS {
        let config = SimConfig::at_scale(*seed);
        assert!(
            config.nodes >= 16 && config.wide_shards >= 1_000,
            "{config:?}"
        );
        match run(config) {
            Ok(report) => {
                assert!(
                    report.promotions > 0,
                    "seed {seed} failed nothing over: {report}"
                );
                println!("scale seed {seed}: {report}");
            }
            Err(failure) => panic!("{failure}"),
        }
    }
}

/// Seeds run with the fixed ones because they exercise a rare path the first 200 may miss
/// (found by sweeping), so that the coverage checks of `fixed_seeds` do not hang on timing.
const COVERAGE_SEEDS: &[(u64, &str)] = &[
    // One seed in 500 to 4,000 takes this path, and any change of timing moves it (3952 and
    // 50570 took it until lease grants rode with the leader's heartbeats). The sweep names
    // the seeds that take it, and `fixed_seeds` searches for one when none of these does.
    (
        60557,
        "a compacted replica file's install reported after the replica started over",
    ),
    (
        70622,
        "a compacted replica file's install reported after the replica started over",
    ),
];

/// Where `fixed_seeds` looks for a seed that takes the rarest path when no coverage seed
/// does, and how many it tries at most (each has a chance of 1 in 500 to 4,000).
const COVERAGE_SEARCH_FROM: u64 = 70_000;
const COVERAGE_SEARCH_SEEDS_MAX: u64 = 10_000;

/// Seeds that once failed, kept so the bug (or the checker's mistake) stays fixed. Each line
/// says what was wrong.
const REGRESSION_SEEDS: &[(u64, &str)] = &[
    (
        352,
        "director: the leader's own report, made at an applied index its observations had not \
         caught up with (entries that changed nothing), was never judged settled, so a \
         restart handover waited for ever",
    ),
    (390, "director: the same, for two shards of a 2n pair"),
    (
        3044,
        "checker: a node paused as a candidate of term 6 won it on resume, after term 7 had \
         committed more; leader completeness was asked of a stale leader",
    ),
    (
        3374,
        "checker: the same, with a leader of term 1 elected from delayed votes after term 2 \
         committed entries",
    ),
    (
        133,
        "agent: a shard was reported settled QUIESCED while an ACTIVE hook for it was still in \
         flight (the unit already acted); a lock then handed the shard over",
    ),
    (
        34,
        "leader: a node judged down was granted a lease around the verdict, and its unit acted \
         on an assignment being failed over (fixed: no lease for a down node, and the down \
         verdict takes the node's roles away in the same entry)",
    ),
    (
        488,
        "unit: an ACTIVE hook completing after the unit reported a fault made it act again",
    ),
    (
        213,
        "agent: the lease used only the newest grant, whose floor is usually not applied yet \
         under load, so units were fenced and unfenced every heartbeat",
    ),
    (401, "one ACTIVE: found with seed 213's and 488's bugs"),
    (1132, "one ACTIVE: found with seed 213's and 488's bugs"),
    (1557, "one ACTIVE: found with seed 213's and 488's bugs"),
    (1854, "one ACTIVE: found with seed 213's and 488's bugs"),
    (2607, "one ACTIVE: found with seed 213's and 488's bugs"),
    (2808, "one ACTIVE: found with seed 213's and 488's bugs"),
    (2889, "one ACTIVE: found with seed 213's and 488's bugs"),
    (
        147,
        "stream: the ACTIVE's lease lapsed and came back without a role change; the unit never \
         asked for the stream again, so pending messages were never delivered (fixed: a unit \
         whose lease is valid again starts a new delivery round)",
    ),
    (171, "stream: the same as seed 147"),
    (
        35,
        "data: a STANDBY was claimed in sync while it lacked a message delivered before it \
         joined the wait set (fixed: a claim needs the STANDBY to have acknowledged everything \
         the primary exposed)",
    ),
    (
        140,
        "data: a duplicated Start of the current session emptied a replica that had already \
         verified; it was then promoted empty (fixed: a Start of the current session is \
         ignored)",
    ),
    (
        104,
        "stream: the primary continued an old delivery round after its lease came back, and a \
         re-assigned ACTIVE consumed a later message while earlier ones had been dropped \
         (fixed: a lapsed lease ends the round; deliveries during an ACTIVE hook are dropped)",
    ),
    (
        780,
        "cluster: an L2 instance rebuilt its replica, became ACTIVE and acknowledged writes; \
         its daemon restarted while the unit held no role, the same instance started again \
         with the L2 flag and emptied the replica, and it became ACTIVE again as the shard's \
         continuation (fixed: a unit the cluster continues a shard from keeps its replicas)",
    ),
    (906, "cluster: the same as seed 780"),
    (1728, "cluster: the same as seed 780"),
    (
        1727,
        "cluster: a STANDBY promoted from in sync held the previous ACTIVE's acknowledged \
         write in memory only; its daemon restarted and lost it, and it became ACTIVE again \
         with no possible loss reported (fixed: a promoted in-sync STANDBY's replica counts as \
         memory-only, so its daemon restart is a loss). Also: the write was acknowledged by \
         the old primary, partitioned without a lease, once the in-sync STANDBY it could not \
         reach went lagging and its stale view did not show it in sync (fixed: sync commits \
         are answered only under a lease)",
    ),
    (
        944,
        "checker: after a possible loss, the stream continued from the new ACTIVE's replica at \
         lower seqs; the unit's round started after what it applied in the lost history \
         (fixed: the round starts from 0 when a possible loss was reported since)",
    ),
    (1134, "checker: the same as seed 944"),
    (
        1773,
        "unit: the answer to an older Deliver ended the wait for the newest round, so the \
         older round's deliveries were taken before the newer round's repeated them (fixed: \
         only the newest Deliver's answer starts the round)",
    ),
    (
        1416,
        "data: the primary's view saw a STANDBY leave and come back and dropped its session; \
         the STANDBY's view did not, so it kept waiting on the dropped session forever \
         (fixed: the primary sends Stale to a STANDBY that has no session and does not \
         follow; the STANDBY then follows again)",
    ),
    (
        311,
        "data: the same as seed 1416, with a session that had verified",
    ),
    (395, "data: the same as seed 1416"),
    (755, "data: the same as seed 1416"),
    (1193, "data: the same as seed 1416"),
    (
        102856,
        "data: a late copy of a STANDBY's first Follow (of its empty replica) started a second \
         full transfer after the first had verified and been claimed in sync; the STANDBY, \
         whose view did not show the claim committed yet, emptied its replica (fixed: a Follow \
         for a session in step gets a delta from what it acknowledged; a verified STANDBY \
         refuses a full transfer, and one at the snapshot's position keeps its replica)",
    ),
    (
        202116,
        "cluster: a unit reported a node fault and its node was declared down before the fault \
         was handled; the verdict took the agent's next fault number, so the unit's own fault \
         passed for handled (L5 wait for the node) and the still faulted unit was made ACTIVE \
         once its node was back, and never acted (fixed: a down verdict takes no fault number)",
    ),
    (
        701702,
        "disk: a deferred Raft log sync ran after the storage had deleted its segment (a \
         snapshot made it obsolete); the simulated disk failed the sync of the removed file, \
         where an fsync of an open descriptor of an unlinked file succeeds (fixed in MemFile)",
    ),
    (701843, "disk: the same, in a 5-node cluster"),
    (
        902188,
        "data: a STANDBY acknowledged a full transfer (in memory) and was claimed in sync; its \
         node crashed before the disk had the transfer and restarted; the claim committed and \
         the STANDBY was promoted as in sync before the cluster heard of the restart; its plane \
         took the incomplete replica as the truth and emptied the old ACTIVE's with a transfer, \
         so a later lossless promotion lacked an acknowledged write (fixed: a replica this run \
         never saw verified or serving since it was read back or emptied stays passive when the \
         cluster continues the shard from its memory)",
    ),
    (
        910192,
        "cluster: an ACTIVE promoted from in sync lost its role to a fault of its own, handled \
         after its daemon restarted; the restart fault found it without roles and left it the \
         shard's last ACTIVE, so giving it ACTIVE again was judged lossless, continuing from \
         memory the daemon had lost (with the fix for 902188 its plane stayed passive: the \
         shard stalled) (fixed: a daemon restart ends every continuation from the unit's memory)",
    ),
    (
        912357,
        "data: a STANDBY's daemon restarted; its restart fault took its role and gave it back, \
         and the primary's view went from before to after in one step: the session verified \
         before the restart stayed in step and the STANDBY was claimed in sync, then promoted \
         as such, with a replica read back 4 ops behind (with the fix for 902188 its plane \
         stayed passive: the shard stalled) (fixed: a session ends when its STANDBY comes back \
         as a new instance)",
    ),
    (
        30027,
        "agent: a unit's lease lapsed and its node was declared down; its units stayed (the \
         pair is pinned) with their roles taken away. On the next lease the unit resumed its \
         suspended ACTIVE before it heard that the shard had moved: two ACTIVEs (found by \
         sweeping without the agent's lease withholding, which this seed keeps checked)",
    ),
    (30111, "agent: the same, on the pair's other unit"),
];

#[test]
fn regression_seeds() {
    let failures: Vec<String> = REGRESSION_SEEDS
        .iter()
        .filter_map(|(seed, why)| {
            run(SimConfig::for_seed(*seed))
                .err()
                .map(|failure| format!("{failure}\n  (kept because {why})"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn replay() {
    let Some(seed) = env_u64("TANDEM_SEED") else {
        return;
    };
    let base = if std::env::var("TANDEM_SCALE").is_ok_and(|value| value == "1") {
        SimConfig::at_scale(seed)
    } else {
        SimConfig::for_seed(seed)
    };
    let config = SimConfig {
        nodes: env_u64("TANDEM_NODES").map_or(base.nodes, |nodes| nodes as usize),
        wide_shards: env_u64("TANDEM_WIDE_SHARDS")
            .map_or(base.wide_shards, |shards| shards as usize),
        verbose: std::env::var("TANDEM_QUIET").is_err(),
        lying_disk: std::env::var("TANDEM_LYING_DISK").is_ok_and(|value| value == "1"),
        units_ignore_lease: std::env::var("TANDEM_NO_FENCING").is_ok_and(|value| value == "1"),
        ..base
    };
    println!("replaying {config:?}");
    match run(config) {
        Ok(report) => println!("seed {seed} passed: {report}"),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
#[ignore = "long: run in release with --ignored sweep"]
fn sweep() {
    let start = env_u64("TANDEM_SWEEP_START").unwrap_or(0);
    let seeds = env_u64("TANDEM_SWEEP_SEEDS").unwrap_or(10_000);
    let started = Instant::now();
    let mut total = SimReport::default();
    let mut failures = Vec::new();
    let scale = std::env::var("TANDEM_SWEEP_SCALE").is_ok_and(|value| value == "1");
    for seed in start..start + seeds {
        let config = if scale {
            SimConfig::at_scale(seed)
        } else {
            SimConfig::for_seed(seed)
        };
        match run(config) {
            Ok(report) => {
                // The rarest path the fixed seeds must cover: a seed that takes it is a
                // candidate for `COVERAGE_SEEDS` when timing changes lose the ones there.
                if report.installs_started_over > 0 {
                    println!("sweep: seed {seed} installs a replica that started over");
                }
                total.accumulate(&report);
            }
            Err(failure) => {
                println!("{failure}");
                failures.push(failure);
            }
        }
        let done = seed - start + 1;
        if done.is_multiple_of(1000) {
            println!(
                "sweep: {done}/{seeds} seeds, {} failed, {:.1?}",
                failures.len(),
                started.elapsed()
            );
        }
    }
    println!(
        "sweep: seeds {start}..{} in {:.1?}, {} failed: {total}",
        start + seeds,
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failure_list(&failures)
    );
}

#[test]
fn same_seed_same_run() {
    for seed in [1, 2, 77] {
        let first = run_with_log(SimConfig::for_seed(seed)).unwrap_or_else(|f| panic!("{f}"));
        let second = run_with_log(SimConfig::for_seed(seed)).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(first.0, second.0, "seed {seed}: reports differ");
        assert!(
            first.1 == second.1,
            "seed {seed}: committed logs differ ({} and {} entries)",
            first.1.len(),
            second.1.len()
        );
        assert!(first.1.len() > 10, "seed {seed} committed almost nothing");
    }
}

/// The checkers can fail: with a disk whose fsync lies, crashes lose acknowledged writes, and
/// some seed in a small range must be caught breaking a safety property.
#[test]
fn lying_disk_is_caught() {
    let mut outcomes = Vec::new();
    for seed in 0..40 {
        let config = SimConfig {
            lying_disk: true,
            ..SimConfig::for_seed(seed)
        };
        match run(config) {
            Err(failure) if failure.kind.is_safety() => {
                println!("caught as expected: {failure}");
                return;
            }
            Err(failure) => outcomes.push(format!("seed {seed}: {:?}", failure.kind)),
            Ok(_) => outcomes.push(format!("seed {seed}: passed")),
        }
    }
    panic!(
        "no lying-disk run broke a checked safety property: {}",
        outcomes.join(", ")
    );
}

/// The one-ACTIVE checker can fail: with units that ignore their lease, pauses and partitions
/// leave an old ACTIVE acting after its shard moved, and some seed in a small range must be
/// caught with two ACTIVEs.
#[test]
fn units_without_fencing_are_caught() {
    let mut outcomes = Vec::new();
    for seed in 0..60 {
        let config = SimConfig {
            units_ignore_lease: true,
            ..SimConfig::for_seed(seed)
        };
        match run(config) {
            Err(failure) if failure.kind == tandem_sim::FailureKind::TwoActives => {
                println!("caught as expected: {failure}");
                return;
            }
            Err(failure) => outcomes.push(format!("seed {seed}: {:?}", failure.kind)),
            Ok(_) => outcomes.push(format!("seed {seed}: passed")),
        }
    }
    panic!(
        "no run without fencing had two ACTIVEs: {}",
        outcomes.join(", ")
    );
}
