//! `--only scale`: the control plane with many shards on many daemons (not part of a full run).
//!
//! `--scale-nodes` daemons on loopback, one 2n service per pair of neighbouring nodes in a ring
//! (service `s<i>`: unit `s<i>-a` on node i+1, `s<i>-b` on node i+2), `--scale-shards` shards
//! dealt round-robin over the services. Every unit is the test unit (`tandem-test-unit`): its
//! hooks only append a line to the record file, with no call back into its daemon, which makes
//! it lighter per shard than the counter example (whose every `assign` reads the checkpoint
//! through the daemon). Units are not relocated and restart however often they fail, as in the
//! other failover scenarios. Traffic only in the loaded window (see 4).
//!
//! Measured:
//! 1. from starting the daemons until every shard is healthy (a confirmed ACTIVE and a
//!    confirmed, in-sync STANDBY, no handover: `tandem_admin::status_view`);
//! 2. over `--scale-idle-secs` of quiet: Raft entries per second (the leader's applied index),
//!    each daemon's CPU time (`/proc/PID/stat` utime + stime, as % of one CPU) and resident
//!    memory (`VmRSS` at the end);
//! 3. over the same window, what must not happen without a fault: role changes, liveness
//!    verdicts, faults, relocations, handovers, possible losses (the event log of the node that
//!    led at the start, which logs every committed event), leader changes, and lease lapses (every
//!    daemon's log); slow loop passes are counted too;
//! 4. unless `--scale-traffic` is 0, the same over a second window of the same length under
//!    light traffic: `--scale-traffic` datagrams a second (100) sent in turn to the UDP ingress
//!    of the first shard of every service, each applied by its ACTIVE with a sync commit
//!    (replicated to its STANDBY); how many were applied within 5 s after the window;
//! 5. `--scale-trials` times each: `kill -9` of a daemon holding ACTIVEs that is not the Raft
//!    leader, `kill -9` of the leader (which holds ACTIVEs too), and SIGSTOP of a follower
//!    holding ACTIVEs (SIGCONT after the measurement): until every shard it held ACTIVE is
//!    ACTIVE on another unit and confirmed. Two figures: `takeover` from the kill until the last
//!    of those shards' new ACTIVE hooks returned (from the units' records, CLOCK_MONOTONIC), and
//!    `confirmed` until the leader's status showed them all confirmed (polled every
//!    `--scale-poll-ms`, so up to one poll late). Then the daemon is restarted (or continued),
//!    the cluster waited for until healthy again (`recovered`), and every service switched back
//!    to its first unit (`rebalance`, one `switchover --service` each, again for any left split),
//!    so that each trial starts from the same placement.
//!
//! Status is polled only as a summary (counts and at most a few unhealthy shards, built by the
//! daemon without a message per shard), a few times a second at most, and not at all during the
//! quiet and loaded windows. Every wait has a deadline and names what did not happen. The cluster (its
//! processes and its directory) goes away with the `TestCluster` when the scenario returns, on
//! error too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tandem_admin::client::{self, EventItem, EventStream};
use tandem_e2e::{monotonic_ns, TestCluster};
use tandem_proto::admin::{switchover_request, Status, StatusRequest, StatusSummary};

/// Sizes and limits of the scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Daemons.
    pub nodes: usize,
    /// Shards, over all services.
    pub shards: usize,
    /// Trials of each failover.
    pub trials: usize,
    /// Length of the quiet window.
    pub idle: Duration,
    /// Longest wait for the cluster to become healthy (at start, and after each trial).
    pub settle: Duration,
    /// Longest wait for a failover.
    pub failover: Duration,
    /// Time between two status polls.
    pub poll: Duration,
    /// Datagrams a second of the loaded window's light traffic (0: no loaded window).
    pub traffic: u64,
    /// `[cluster]` lines for the daemons (idle polling and `--cluster` settings).
    pub cluster_toml: String,
}

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct Scale {
    pub nodes: usize,
    pub shards: usize,
    pub services: usize,
    pub unit: &'static str,
    /// The `[cluster]` settings the daemons ran with besides their name and directory (the
    /// others at tandemd's defaults), as TOML lines.
    pub cluster: Vec<String>,
    /// From starting the daemons until every shard was healthy, seconds.
    pub settle_s: f64,
    pub idle: Idle,
    pub quiet: Quiet,
    /// The same window again, under light traffic (`--scale-traffic`, unless 0).
    pub loaded: Option<Loaded>,
    pub failovers: Vec<Failovers>,
}

/// A window as long as the quiet one, under light traffic: stream messages to the first shard
/// of every service (each applied by its ACTIVE with a sync commit, so replicated to its
/// STANDBY), sent at an even rate round the services.
#[derive(Debug, Serialize)]
pub struct Loaded {
    /// Datagrams a second.
    pub traffic_per_s: u64,
    /// Datagrams sent, and applied (recorded by an ACTIVE) within 5 s after the window.
    pub messages_sent: u64,
    pub messages_applied: u64,
    pub costs: Idle,
    pub events: Quiet,
}

/// A window's costs (the quiet one's, or the loaded one's).
#[derive(Debug, Serialize)]
pub struct Idle {
    pub seconds: f64,
    /// The Raft leader at the start of the window, and its CPU % (it does the most).
    pub leader: String,
    pub leader_cpu_pct: f64,
    /// Raft entries applied per second (the leader's applied index).
    pub raft_entries_per_s: f64,
    /// CPU time of each daemon over the window, % of one CPU, in node order.
    pub cpu_pct: Vec<f64>,
    pub cpu_pct_max: f64,
    pub cpu_pct_median: f64,
    /// Resident memory of each daemon at the end of the window, MiB, in node order.
    pub rss_mib: Vec<f64>,
    pub rss_mib_max: f64,
    pub rss_mib_median: f64,
}

/// What happened during the quiet window that must not happen without a fault.
#[derive(Debug, Serialize)]
pub struct Quiet {
    /// Role changes (`role` events).
    pub role_changes: u64,
    /// Liveness verdicts (`node-liveness` events).
    pub liveness_verdicts: u64,
    /// Unit faults (`fault` and `fault-reported` events).
    pub faults: u64,
    /// Handovers, relocations, restarts and possible losses.
    pub other_events: u64,
    /// Leader changes (the term moved).
    pub leader_changes: u64,
    /// `lease lapsed` warnings in the daemons' logs.
    pub lease_lapses: u64,
    /// `the event loop was busy` warnings in the daemons' logs (informative).
    pub slow_passes: u64,
}

impl Quiet {
    /// The counts, in one line of the printed report.
    fn line(&self) -> String {
        format!(
            "{} role changes, {} liveness verdicts, {} faults, {} other events, {} leader changes, {} lease lapses (all must be 0); {} slow loop passes",
            self.role_changes,
            self.liveness_verdicts,
            self.faults,
            self.other_events,
            self.leader_changes,
            self.lease_lapses,
            self.slow_passes
        )
    }

    /// The count of what must be 0.
    pub fn spurious(&self) -> u64 {
        self.role_changes
            + self.liveness_verdicts
            + self.faults
            + self.other_events
            + self.leader_changes
            + self.lease_lapses
    }
}

/// One failover kind's trials.
#[derive(Debug, Serialize)]
pub struct Failovers {
    pub kind: &'static str,
    pub description: &'static str,
    pub trials: usize,
    /// Shards the victim held ACTIVE, per trial.
    pub shards_moved: Vec<u64>,
    /// Until the last new ACTIVE hook returned, ms (the units' records).
    pub takeover_ms: Vec<f64>,
    pub takeover_p50_ms: f64,
    pub takeover_p99_ms: f64,
    /// Until the leader's status showed every moved shard ACTIVE and confirmed, ms.
    pub confirmed_ms: Vec<f64>,
    pub confirmed_p50_ms: f64,
    pub confirmed_p99_ms: f64,
    /// From the restart (or SIGCONT) until every shard was healthy again, seconds.
    pub recovered_s: Vec<f64>,
    /// Switching every moved service back to its first unit, seconds per trial.
    pub rebalance_s: Vec<f64>,
}

/// The failovers measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillFollower,
    KillLeader,
    StopFollower,
}

impl Fault {
    fn kind(self) -> &'static str {
        match self {
            Fault::KillFollower => "kill-follower",
            Fault::KillLeader => "kill-leader",
            Fault::StopFollower => "stop-follower",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Fault::KillFollower => "kill -9 a follower holding ACTIVEs -> moved and confirmed",
            Fault::KillLeader => "kill -9 the Raft leader holding ACTIVEs -> moved and confirmed",
            Fault::StopFollower => "SIGSTOP a follower holding ACTIVEs -> moved and confirmed",
        }
    }
}

/// The services: (name, first unit's node index, second unit's node index), and the shards of
/// each, by service name.
struct Layout {
    services: Vec<(String, usize, usize)>,
    shards: BTreeMap<String, Vec<String>>,
}

impl Layout {
    fn new(nodes: usize, shards: usize) -> Self {
        // A ring of pairs; two nodes make one pair.
        let count = if nodes == 2 { 1 } else { nodes };
        let services: Vec<(String, usize, usize)> = (0..count)
            .map(|index| (format!("s{index}"), index, (index + 1) % nodes))
            .collect();
        let mut by_service: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for shard in 0..shards {
            let service = &services[shard % count].0;
            let list = by_service.entry(service.clone()).or_default();
            let name = format!("{service}-{}", list.len());
            list.push(name);
        }
        Self {
            services,
            shards: by_service,
        }
    }

    /// The first shard of every service, which takes the light traffic.
    fn traffic_shards(&self) -> Vec<&str> {
        self.services
            .iter()
            .map(|(name, _, _)| self.shards[name][0].as_str())
            .collect()
    }

    /// The `[[services]]` of the config; the shards of `ingress` with their UDP ingress port.
    fn toml(&self, ingress: &BTreeMap<String, u16>) -> String {
        let mut toml = String::new();
        for (name, first, second) in &self.services {
            let shards: Vec<String> = self.shards[name]
                .iter()
                .map(|shard| format!("\"{shard}\""))
                .collect();
            toml.push_str(&format!(
                "\n[[services]]\nname = \"{name}\"\nmodel = \"2n\"\nshards = [{}]\n\
                 units = [{{ name = \"{name}-a\", node = \"n{}\" }}, {{ name = \"{name}-b\", node = \"n{}\" }}]\n\
                 instantiate = [\"{{unit_bin}}\"]\n\
                 env = {{ TANDEM_TEST_RECORD = \"{{record}}\" }}\n\
                 health_interval_ms = 100\nhealth_timeout_ms = 1000\ncallback_timeout_ms = 2000\n\
                 [services.escalation]\nrestart_max = 1000000\nrelocate = false\n",
                shards.join(", "),
                first + 1,
                second + 1
            ));
            for shard in &self.shards[name] {
                if let Some(port) = ingress.get(shard) {
                    toml.push_str(&format!(
                        "[services.ingress.\"{shard}\"]\nudp = \"127.0.0.1:{port}\"\n"
                    ));
                }
            }
        }
        toml
    }
}

/// A status request for counts and at most `listed` unhealthy shards: what the daemon answers
/// without a message per shard.
fn summary_request(listed: u32) -> StatusRequest {
    StatusRequest {
        summarise_above: Some(0),
        shards_max: listed.max(1),
        ..StatusRequest::default()
    }
}

/// How long one status call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Rounds of switching services back to their first units before the scenario gives up.
const SWITCH_BACK_ROUNDS_MAX: usize = 5;

/// The scenario's cluster and what it knows of it.
struct Bench {
    cluster: TestCluster,
    layout: Layout,
    /// The shards with a UDP ingress, and its port.
    ingress: BTreeMap<String, u16>,
    options: Options,
    /// Nodes not to ask (a stopped daemon would not answer).
    silent: BTreeSet<usize>,
    /// The node that answered last from the leader, tried first.
    ask_first: usize,
}

/// The answer to a summary request, from the leader.
struct View {
    status: Status,
    summary: StatusSummary,
}

impl View {
    fn healthy(&self) -> bool {
        self.summary.shards > 0 && self.summary.healthy == self.summary.shards
    }

    /// A line for progress and errors.
    fn describe(&self) -> String {
        let active: u64 = self
            .summary
            .services
            .iter()
            .map(|service| service.active)
            .sum();
        let mut line = format!(
            "{} of {} shards healthy, {} with a confirmed ACTIVE, leader {} (term {})",
            self.summary.healthy,
            self.summary.shards,
            active,
            if self.status.leader.is_empty() {
                "none"
            } else {
                &self.status.leader
            },
            self.status.term
        );
        if let Some(shard) = self.status.shards.first() {
            let model = "2n";
            let problems: Vec<&str> =
                tandem_admin::status_view::ShardFacts::of_status(shard, model)
                    .problems()
                    .into_iter()
                    .map(|problem| problem.text())
                    .collect();
            line.push_str(&format!("; e.g. {}: {}", shard.name, problems.join(", ")));
        }
        line
    }

    /// The node index of unit `unit`.
    fn node_of(&self, bench: &Bench, unit: &str) -> Option<usize> {
        let node = &self.status.units.iter().find(|u| u.name == unit)?.node;
        bench.cluster.index_of(node)
    }

    /// ACTIVE roles held per node index.
    fn actives_per_node(&self, bench: &Bench) -> BTreeMap<usize, u64> {
        let mut held = BTreeMap::new();
        for service in &self.summary.services {
            for roles in &service.units {
                if let Some(node) = self.node_of(bench, &roles.unit) {
                    *held.entry(node).or_default() += roles.active;
                }
            }
        }
        held
    }
}

impl Bench {
    /// The leader's summary, asked of the running nodes in turn (the last one that answered
    /// from the leader first; a follower forwards to the leader).
    fn view(&mut self, listed: u32) -> Option<View> {
        let count = self.cluster.nodes.len();
        for offset in 0..count {
            let index = (self.ask_first + offset) % count;
            if self.silent.contains(&index) || self.cluster.nodes[index].child.is_none() {
                continue;
            }
            let Ok(status) = client::status_with(
                self.cluster.nodes[index].admin,
                CALL_TIMEOUT,
                summary_request(listed),
                false,
            ) else {
                continue;
            };
            if !status.from_leader {
                continue;
            }
            let Some(summary) = status.summary.clone() else {
                continue;
            };
            // Next time, ask the leader itself.
            self.ask_first = self.cluster.index_of(&status.leader).unwrap_or(index);
            return Some(View { status, summary });
        }
        None
    }

    /// Polls until `done` accepts the leader's view, or fails after `timeout` naming `what`
    /// and the last view. Reports progress every 10 s.
    fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Bench, &View) -> Option<T>,
    ) -> anyhow::Result<(T, View)> {
        let started = Instant::now();
        let mut reported = started;
        let mut last = "no node answered from a leader".to_owned();
        loop {
            if let Some(view) = self.view(3) {
                if let Some(value) = done(self, &view) {
                    return Ok((value, view));
                }
                last = view.describe();
            }
            if started.elapsed() > timeout {
                bail!(
                    "timed out after {:.0} s waiting for {what}; last seen: {last}",
                    timeout.as_secs_f64()
                );
            }
            if reported.elapsed() >= Duration::from_secs(10) {
                eprintln!(
                    "scale: {:.0} s waiting for {what}: {last}",
                    started.elapsed().as_secs_f64()
                );
                reported = Instant::now();
            }
            std::thread::sleep(self.options.poll);
        }
    }

    fn wait_healthy(&mut self, what: &str) -> anyhow::Result<View> {
        let settle = self.options.settle;
        let ((), view) = self.wait(what, settle, |_, view| view.healthy().then_some(()))?;
        Ok(view)
    }

    fn pid(&self, index: usize) -> anyhow::Result<u32> {
        self.cluster.nodes[index]
            .child
            .as_ref()
            .map(|child| child.id())
            .with_context(|| format!("node {} is not running", self.cluster.nodes[index].name))
    }

    /// Switches services back (see [`Bench::rebalance`]) until every one has all its ACTIVEs
    /// on its first unit and every shard is healthy. A switchover that answered may still
    /// leave some shards where they were (one refused when applied, a handover given up in
    /// a lease lapse): those go round again, a few times at most.
    fn switch_back(&mut self, mut view: View) -> anyhow::Result<()> {
        for _ in 0..SWITCH_BACK_ROUNDS_MAX {
            if self.rebalance(&view)? == 0 {
                return Ok(());
            }
            view = self.wait_healthy("every shard to be healthy after switching back")?;
        }
        let split = split_services(&view);
        if !split.is_empty() {
            bail!(
                "services still split between their units after {SWITCH_BACK_ROUNDS_MAX} rounds of \
                 switching back: {}",
                split.join(", ")
            );
        }
        Ok(())
    }

    /// Switches every service whose ACTIVEs are not all on its first unit back to it: the
    /// whole service when none is there, else (a split service, which a switchover of the
    /// whole service would only invert) the shards whose ACTIVE is elsewhere, one by one.
    fn rebalance(&mut self, view: &View) -> anyhow::Result<usize> {
        let mut moved = 0;
        for service in &view.summary.services {
            let first = format!("{}-a", service.name);
            if on_first_unit(view, &service.name) {
                continue;
            }
            let on_first = service
                .units
                .iter()
                .find(|roles| roles.unit == first)
                .map_or(0, |roles| roles.active);
            let targets = if on_first == 0 {
                vec![switchover_request::Target::Service(service.name.clone())]
            } else {
                self.stray_shards(view, &service.name, &first)?
                    .into_iter()
                    .map(switchover_request::Target::Shard)
                    .collect()
            };
            for target in targets {
                self.switch_back_one(view, &service.name, target)?;
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// The shards of service `name` whose ACTIVE is not unit `first`, as the leader lists them.
    fn stray_shards(&self, view: &View, name: &str, first: &str) -> anyhow::Result<Vec<String>> {
        let index = self
            .cluster
            .index_of(&view.status.leader)
            .context("the leader is not in the config")?;
        let status = client::status_with(
            self.cluster.nodes[index].admin,
            CALL_TIMEOUT,
            StatusRequest {
                service: name.to_owned(),
                ..StatusRequest::default()
            },
            false,
        )
        .with_context(|| format!("list the shards of service {name}"))?;
        if !status.from_leader {
            bail!("list the shards of service {name}: the answer is not the leader's");
        }
        Ok(status
            .shards
            .into_iter()
            .filter(|shard| {
                shard
                    .active
                    .as_ref()
                    .is_none_or(|active| active.unit != first)
            })
            .map(|shard| shard.name)
            .collect())
    }

    /// One switchover of `target` (of service `name`), retried while refused (see below)
    /// until the settle time is up or the service is back on its first unit.
    fn switch_back_one(
        &mut self,
        view: &View,
        name: &str,
        target: switchover_request::Target,
    ) -> anyhow::Result<()> {
        let first = format!("{name}-a");
        let what = match &target {
            switchover_request::Target::Shard(shard) => format!("shard {shard}"),
            _ => format!("service {name}"),
        };
        // Refusals here are transient under load: a role confirmed a moment ago may be
        // confirmed again at a newer report (busy), a leader change aborts the request
        // (committed or not), a shard may lose its ACTIVE or its STANDBY's sync meanwhile
        // (a lease lapse). Each is retried once every shard is healthy again, within the
        // settle time; the summary tells whether an earlier attempt did the job.
        let deadline = Instant::now() + self.options.settle;
        let mut leader = view.status.leader.clone();
        loop {
            let index = self
                .cluster
                .index_of(&leader)
                .context("the leader is not in the config")?;
            let answer = client::operation(
                self.cluster.nodes[index].admin,
                client::switchover_kind(target.clone()),
                self.options.settle,
            );
            let refused = matches!(&answer, Err(client::AdminClientError::Refused { .. }));
            if !refused || Instant::now() >= deadline {
                answer.with_context(|| format!("switch {what} back to {first}"))?;
                return Ok(());
            }
            eprintln!("scale: switching {what} back to {first}: {answer:?}; again once healthy");
            while Instant::now() < deadline {
                std::thread::sleep(self.options.poll);
                if let Some(now) = self.view(0) {
                    leader = now.status.leader.clone();
                    if now.healthy() {
                        break;
                    }
                }
            }
            // A shard's switchover swaps its roles (and a refused one may still have been
            // committed, by a leader that changed): sent again only once the leader says the
            // shard is still away from the first unit.
            loop {
                if let Some(now) = self.view(0) {
                    if on_first_unit(&now, name) {
                        return Ok(());
                    }
                    let switchover_request::Target::Shard(shard) = &target else {
                        break;
                    };
                    if let Ok(stray) = self.stray_shards(&now, name, &first) {
                        if !stray.contains(shard) {
                            return Ok(());
                        }
                        break;
                    }
                }
                if Instant::now() >= deadline {
                    bail!("switch {what} back to {first}: no answer from the leader in time");
                }
                std::thread::sleep(self.options.poll);
            }
        }
    }
}

/// Whether every ACTIVE of service `name` is on its first unit (`NAME-a`).
fn on_first_unit(view: &View, name: &str) -> bool {
    let first = format!("{name}-a");
    view.summary
        .services
        .iter()
        .find(|service| service.name == name)
        .is_some_and(|service| {
            service
                .units
                .iter()
                .find(|roles| roles.unit == first)
                .map_or(0, |roles| roles.active)
                == service.shards
        })
}

/// The services whose ACTIVEs are not all on their first unit.
fn split_services(view: &View) -> Vec<String> {
    view.summary
        .services
        .iter()
        .filter(|service| !on_first_unit(view, &service.name))
        .map(|service| service.name.clone())
        .collect()
}

/// Utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces), from field 3 (state) on.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc/PID/stat without a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, so 11 and 12 here (field 3 is at 0).
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// VmRSS of process `pid`, MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The median (upper middle) and the maximum of `values`, which is not empty.
fn median_max(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (sorted[sorted.len() / 2], sorted[sorted.len() - 1])
}

/// Lines containing `needle` in each node's log from `offsets` on.
fn log_count_since(cluster: &TestCluster, offsets: &[u64], needle: &str) -> u64 {
    (0..cluster.nodes.len())
        .map(|index| {
            let text = fs::read(cluster.log_path(index)).unwrap_or_default();
            let from = (offsets[index] as usize).min(text.len());
            String::from_utf8_lossy(&text[from..])
                .lines()
                .filter(|line| line.contains(needle))
                .count() as u64
        })
        .sum()
}

/// The event log of the node at `index` from `since_seq`: every record, and the next seq.
fn events_since(
    cluster: &TestCluster,
    index: usize,
    since_seq: u64,
) -> anyhow::Result<(Vec<tandem_proto::admin::EventRecord>, u64)> {
    let node = &cluster.nodes[index];
    let mut stream = EventStream::open(node.admin, since_seq, false, CALL_TIMEOUT)
        .with_context(|| format!("read the event log of {}", node.name))?;
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match stream.next(CALL_TIMEOUT)? {
            EventItem::Event(record) => records.push(record),
            EventItem::End(next) => return Ok((records, next)),
            EventItem::Idle => {}
        }
        if Instant::now() > deadline {
            bail!("the event log of {} did not end within 30 s", node.name);
        }
    }
}

/// The record file's length now: records of a trial are read from here.
fn record_offset(cluster: &TestCluster) -> u64 {
    fs::metadata(cluster.dir.path().join("record.log")).map_or(0, |meta| meta.len())
}

/// The record file from `offset` on.
fn records_from(cluster: &TestCluster, offset: u64) -> anyhow::Result<String> {
    let mut file = fs::File::open(cluster.dir.path().join("record.log")).context("open records")?;
    file.seek(SeekFrom::Start(offset))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// For each of `shards`, the first time after `since_ns` a unit finished taking it ACTIVE,
/// from the record file's part from `offset` on.
fn active_hooks_done(
    cluster: &TestCluster,
    offset: u64,
    since_ns: u64,
    shards: &BTreeSet<&str>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = records_from(cluster, offset)?;
    let mut done: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [at, _unit, _generation, _pid, event, shard, role, _epoch] = fields[..] else {
            continue;
        };
        if event != "done" || role != "ACTIVE" || !shards.contains(shard) {
            continue;
        }
        let Ok(at) = at.parse::<u64>() else { continue };
        if at > since_ns {
            done.entry(shard.to_owned())
                .and_modify(|first| *first = (*first).min(at))
                .or_insert(at);
        }
    }
    Ok(done)
}

/// The `q` quantile (nearest rank) of `samples`; 0 when there are none.
fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    super::quantile(&sorted, q)
}

/// Runs the scenario.
pub fn scale(options: Options) -> anyhow::Result<Scale> {
    if options.nodes < 2 {
        bail!("--scale-nodes must be at least 2 (each service has units on two nodes)");
    }
    if options.shards < options.nodes {
        bail!("--scale-shards must be at least --scale-nodes (every service needs a shard)");
    }
    let layout = Layout::new(options.nodes, options.shards);
    eprintln!(
        "scale: {} daemons, {} shards in {} 2n services of the test unit",
        options.nodes,
        options.shards,
        layout.services.len()
    );
    let ingress: BTreeMap<String, u16> = if options.traffic > 0 {
        // Drawn in one call, so that no two services get the same port.
        let shards = layout.traffic_shards();
        let ports = tandem_e2e::free_loopback_ports(shards.len(), true);
        shards.into_iter().map(str::to_owned).zip(ports).collect()
    } else {
        BTreeMap::new()
    };
    let services_toml = layout.toml(&ingress);
    let started = Instant::now();
    let cluster =
        TestCluster::start_with_cluster(options.nodes, &options.cluster_toml, &services_toml);
    let mut bench = Bench {
        cluster,
        layout,
        ingress,
        options,
        silent: BTreeSet::new(),
        ask_first: 0,
    };
    let view = bench.wait_healthy("every shard to be healthy after the start")?;
    let settle_s = started.elapsed().as_secs_f64();
    eprintln!("scale: every shard healthy {settle_s:.1} s after the start");
    // The first units hold every ACTIVE: each trial starts from there.
    bench.switch_back(view)?;

    let (idle, quiet, _) = window(&mut bench, 0)?;
    eprintln!(
        "scale: quiet {:.0} s: {:.1} Raft entries/s, daemon CPU max {:.1} % median {:.1} %, RSS max {:.0} MiB; {} spurious events",
        idle.seconds,
        idle.raft_entries_per_s,
        idle.cpu_pct_max,
        idle.cpu_pct_median,
        idle.rss_mib_max,
        quiet.spurious()
    );

    let loaded = if bench.options.traffic > 0 {
        let rate = bench.options.traffic;
        let (costs, events, messages) = window(&mut bench, rate)?;
        let (messages_sent, messages_applied) = messages;
        eprintln!(
            "scale: loaded {:.0} s: {messages_applied} of {messages_sent} messages applied, \
             daemon CPU max {:.1} % median {:.1} %; {} spurious events",
            costs.seconds,
            costs.cpu_pct_max,
            costs.cpu_pct_median,
            events.spurious()
        );
        Some(Loaded {
            traffic_per_s: rate,
            messages_sent,
            messages_applied,
            costs,
            events,
        })
    } else {
        None
    };

    let mut failovers = Vec::new();
    for fault in [Fault::KillFollower, Fault::KillLeader, Fault::StopFollower] {
        failovers.push(failover(&mut bench, fault)?);
    }
    Ok(Scale {
        nodes: bench.options.nodes,
        shards: bench.options.shards,
        services: bench.layout.services.len(),
        unit: "tandem-test-unit",
        cluster: bench
            .options
            .cluster_toml
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect(),
        settle_s,
        idle,
        quiet,
        loaded,
        failovers,
    })
}

/// A window of `--scale-idle-secs`, quiet or (`rate` > 0) under light traffic: its costs,
/// what must not happen, and the messages sent and applied.
fn window(bench: &mut Bench, rate: u64) -> anyhow::Result<(Idle, Quiet, (u64, u64))> {
    let seconds = bench.options.idle;
    let before = bench
        .view(1)
        .context("no leader answered before the window")?;
    let log_node = bench
        .cluster
        .index_of(&before.status.leader)
        .context("the leader is not in the config")?;
    let (_, since_seq) = events_since(&bench.cluster, log_node, u64::MAX)?;
    let offsets: Vec<u64> = (0..bench.cluster.nodes.len())
        .map(|index| fs::metadata(bench.cluster.log_path(index)).map_or(0, |meta| meta.len()))
        .collect();
    let pids: Vec<u32> = (0..bench.cluster.nodes.len())
        .map(|index| bench.pid(index))
        .collect::<anyhow::Result<_>>()?;
    let ticks_before: Vec<u64> = pids
        .iter()
        .map(|pid| cpu_ticks(*pid))
        .collect::<anyhow::Result<_>>()?;
    let records_from = record_offset(&bench.cluster);
    let window_start = Instant::now();
    let sent = if rate == 0 {
        eprintln!(
            "scale: quiet window of {} s (no polling meanwhile)",
            seconds.as_secs()
        );
        std::thread::sleep(seconds);
        0
    } else {
        eprintln!(
            "scale: loaded window of {} s, {rate} messages/s (no polling meanwhile)",
            seconds.as_secs()
        );
        send_traffic(&bench.ingress, rate, seconds)?
    };
    let ticks_after: Vec<u64> = pids
        .iter()
        .map(|pid| cpu_ticks(*pid))
        .collect::<anyhow::Result<_>>()?;
    let elapsed = window_start.elapsed().as_secs_f64();
    let rss: Vec<f64> = pids
        .iter()
        .map(|pid| rss_mib(*pid))
        .collect::<anyhow::Result<_>>()?;
    let after = bench
        .view(1)
        .context("no leader answered after the window")?;
    let (events, _) = events_since(&bench.cluster, log_node, since_seq)?;
    let tick = ticks_per_second();
    let cpu_pct: Vec<f64> = ticks_before
        .iter()
        .zip(&ticks_after)
        .map(|(before, after)| (after - before) as f64 / tick / elapsed * 100.0)
        .collect();
    let (cpu_pct_median, cpu_pct_max) = median_max(&cpu_pct);
    let (rss_mib_median, rss_mib_max) = median_max(&rss);
    let count = |kinds: &[&str]| {
        events
            .iter()
            .filter(|event| kinds.contains(&event.kind.as_str()))
            .count() as u64
    };
    let quiet = Quiet {
        role_changes: count(&["role"]),
        liveness_verdicts: count(&["node-liveness"]),
        faults: count(&["fault", "fault-reported"]),
        other_events: count(&[
            "handover-started",
            "handover-ended",
            "restart",
            "relocated",
            "possible-loss",
        ]),
        leader_changes: after.status.term.saturating_sub(before.status.term),
        lease_lapses: log_count_since(&bench.cluster, &offsets, "lease lapsed"),
        slow_passes: log_count_since(&bench.cluster, &offsets, "the event loop was busy"),
    };
    let idle = Idle {
        seconds: elapsed,
        leader: before.status.leader.clone(),
        leader_cpu_pct: cpu_pct[log_node],
        raft_entries_per_s: after
            .status
            .applied_index
            .saturating_sub(before.status.applied_index) as f64
            / elapsed,
        cpu_pct,
        cpu_pct_max,
        cpu_pct_median,
        rss_mib: rss,
        rss_mib_max,
        rss_mib_median,
    };
    // Every message applied, or 5 s more (outside the window's costs).
    let mut applied = messages_applied(&bench.cluster, records_from)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while applied < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        applied = messages_applied(&bench.cluster, records_from)?;
    }
    Ok((idle, quiet, (sent, applied)))
}

/// Sends `rate` datagrams a second for `seconds`, in turn to each of `ingress`; returns how
/// many it sent. Payloads are `t<n>`, unique.
fn send_traffic(
    ingress: &BTreeMap<String, u16>,
    rate: u64,
    seconds: Duration,
) -> anyhow::Result<u64> {
    let ports: Vec<u16> = ingress.values().copied().collect();
    anyhow::ensure!(!ports.is_empty(), "no ingress to send traffic to");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("bind the traffic socket")?;
    let messages = seconds.as_secs() * rate;
    let started = Instant::now();
    for id in 1..=messages {
        let due = started + Duration::from_micros(id * 1_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let port = ports[id as usize % ports.len()];
        socket
            .send_to(format!("t{id}").as_bytes(), ("127.0.0.1", port))
            .context("send a datagram")?;
    }
    Ok(messages)
}

/// Distinct traffic messages (`t<n>`) an ACTIVE recorded applied, in the record file from
/// `offset` on.
fn messages_applied(cluster: &TestCluster, offset: u64) -> anyhow::Result<u64> {
    let text = records_from(cluster, offset)?;
    let applied: BTreeSet<&str> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields[..] {
                [_, _, _, _, "msg", _, payload, _] if payload.starts_with('t') => Some(payload),
                _ => None,
            }
        })
        .collect();
    Ok(applied.len() as u64)
}

/// `trials` failovers of one kind.
fn failover(bench: &mut Bench, fault: Fault) -> anyhow::Result<Failovers> {
    let trials = bench.options.trials;
    eprintln!(
        "scale: {}: {}, {trials} trials",
        fault.kind(),
        fault.description()
    );
    let mut result = Failovers {
        kind: fault.kind(),
        description: fault.description(),
        trials: 0,
        shards_moved: Vec::new(),
        takeover_ms: Vec::new(),
        takeover_p50_ms: 0.0,
        takeover_p99_ms: 0.0,
        confirmed_ms: Vec::new(),
        confirmed_p50_ms: 0.0,
        confirmed_p99_ms: 0.0,
        recovered_s: Vec::new(),
        rebalance_s: Vec::new(),
    };
    for trial in 0..trials {
        let view = bench.wait_healthy("every shard to be healthy before the trial")?;
        let leader = bench
            .cluster
            .index_of(&view.status.leader)
            .context("the leader is not in the config")?;
        let held = view.actives_per_node(bench);
        let victim = if fault == Fault::KillLeader {
            if held.get(&leader).copied().unwrap_or(0) == 0 {
                bail!(
                    "the leader {} holds no ACTIVE (every node should, after switching back)",
                    view.status.leader
                );
            }
            leader
        } else {
            // Followers holding ACTIVEs, a different one each trial.
            let candidates: Vec<usize> = held
                .iter()
                .filter(|(node, count)| **node != leader && **count > 0)
                .map(|(node, _)| *node)
                .collect();
            if candidates.is_empty() {
                bail!("no follower holds an ACTIVE");
            }
            candidates[trial % candidates.len()]
        };
        let victim_name = bench.cluster.nodes[victim].name.clone();
        // The services whose ACTIVEs are on the victim: all their shards move.
        let mut moving: Vec<(String, String)> = Vec::new();
        let mut shards_moved = 0u64;
        for service in &view.summary.services {
            for roles in &service.units {
                if roles.active == 0 || view.node_of(bench, &roles.unit) != Some(victim) {
                    continue;
                }
                if roles.active != service.shards {
                    bail!(
                        "service {}: {} holds {} of its {} ACTIVEs (a 2n service's are on one unit)",
                        service.name,
                        roles.unit,
                        roles.active,
                        service.shards
                    );
                }
                moving.push((service.name.clone(), roles.unit.clone()));
                shards_moved += roles.active;
            }
        }
        let shard_names: BTreeSet<String> = moving
            .iter()
            .flat_map(|(service, _)| bench.layout.shards[service].iter().cloned())
            .collect();
        let offset = record_offset(&bench.cluster);
        let killed_at = monotonic_ns();
        let started = Instant::now();
        match fault {
            Fault::KillFollower | Fault::KillLeader => bench.cluster.kill9(victim),
            Fault::StopFollower => {
                bench.cluster.signal(victim, libc::SIGSTOP);
                bench.silent.insert(victim);
            }
        }
        if bench.ask_first == victim {
            bench.ask_first = (victim + 1) % bench.cluster.nodes.len();
        }
        let failover_timeout = bench.options.failover;
        let waited = bench.wait(
            &format!(
                "the {shards_moved} shards ACTIVE on {victim_name} to be ACTIVE elsewhere and confirmed"
            ),
            failover_timeout,
            |_, view| {
                let moved = moving.iter().all(|(service, unit)| {
                    view.summary
                        .services
                        .iter()
                        .find(|summary| summary.name == *service)
                        .is_some_and(|summary| {
                            summary.active == summary.shards
                                && summary
                                    .units
                                    .iter()
                                    .find(|roles| roles.unit == *unit)
                                    .is_some_and(|roles| roles.active == 0)
                        })
                });
                moved.then(|| started.elapsed())
            },
        );
        let confirmed = match waited {
            Ok((elapsed, _)) => elapsed,
            Err(error) => {
                if fault == Fault::StopFollower {
                    bench.cluster.signal(victim, libc::SIGCONT);
                }
                return Err(error.context(format!("{} trial {}", fault.kind(), trial + 1)));
            }
        };
        let shard_set: BTreeSet<&str> = shard_names.iter().map(String::as_str).collect();
        let done = active_hooks_done(&bench.cluster, offset, killed_at, &shard_set)?;
        if done.len() != shard_set.len() {
            eprintln!(
                "scale: {} trial {}: {} of {} moved shards have no ACTIVE hook in the records",
                fault.kind(),
                trial + 1,
                shard_set.len() - done.len(),
                shard_set.len()
            );
        }
        let takeover_ms = done
            .values()
            .max()
            .map_or(f64::NAN, |last| (last - killed_at) as f64 / 1e6);
        let confirmed_ms = confirmed.as_secs_f64() * 1000.0;
        eprintln!(
            "scale: {} trial {}: {victim_name} ({shards_moved} shards ACTIVE): taken over in {takeover_ms:.0} ms, confirmed by {confirmed_ms:.0} ms",
            fault.kind(),
            trial + 1
        );
        // Back to whole.
        let resumed = Instant::now();
        match fault {
            Fault::KillFollower | Fault::KillLeader => bench.cluster.spawn(victim),
            Fault::StopFollower => {
                bench.cluster.signal(victim, libc::SIGCONT);
                bench.silent.remove(&victim);
            }
        }
        let view = bench.wait_healthy(&format!(
            "every shard to be healthy again after {victim_name} came back"
        ))?;
        let recovered_s = resumed.elapsed().as_secs_f64();
        let rebalancing = Instant::now();
        bench.switch_back(view)?;
        let rebalance_s = rebalancing.elapsed().as_secs_f64();
        eprintln!(
            "scale: {} trial {}: healthy {recovered_s:.1} s after {victim_name} came back, switched back in {rebalance_s:.1} s",
            fault.kind(),
            trial + 1
        );
        result.trials += 1;
        result.shards_moved.push(shards_moved);
        result.takeover_ms.push(takeover_ms);
        result.confirmed_ms.push(confirmed_ms);
        result.recovered_s.push(recovered_s);
        result.rebalance_s.push(rebalance_s);
    }
    result.takeover_p50_ms = quantile(&result.takeover_ms, 0.5);
    result.takeover_p99_ms = quantile(&result.takeover_ms, 0.99);
    result.confirmed_p50_ms = quantile(&result.confirmed_ms, 0.5);
    result.confirmed_p99_ms = quantile(&result.confirmed_ms, 0.99);
    Ok(result)
}

/// The report's table.
pub fn print(scale: &Scale) {
    println!(
        "\nscale: {} daemons, {} shards in {} 2n services ({}), start until every shard healthy: {:.1} s",
        scale.nodes, scale.shards, scale.services, scale.unit, scale.settle_s
    );
    println!(
        "[cluster] settings: {} (the others at tandemd's defaults)",
        scale.cluster.join(", ")
    );
    println!(
        "quiet {:.0} s: {:.1} Raft entries/s; daemon CPU % of one CPU: max {:.2}, median {:.2}, leader ({}) {:.2}; RSS MiB: max {:.1}, median {:.1}",
        scale.idle.seconds,
        scale.idle.raft_entries_per_s,
        scale.idle.cpu_pct_max,
        scale.idle.cpu_pct_median,
        scale.idle.leader,
        scale.idle.leader_cpu_pct,
        scale.idle.rss_mib_max,
        scale.idle.rss_mib_median
    );
    println!("quiet window: {}", scale.quiet.line());
    if let Some(loaded) = &scale.loaded {
        let costs = &loaded.costs;
        let events = &loaded.events;
        println!(
            "loaded {:.0} s, {} messages/s to {} shards: {} of {} applied; {:.1} Raft entries/s; daemon CPU %: max {:.2}, median {:.2}, leader {:.2}",
            costs.seconds,
            loaded.traffic_per_s,
            scale.services,
            loaded.messages_applied,
            loaded.messages_sent,
            costs.raft_entries_per_s,
            costs.cpu_pct_max,
            costs.cpu_pct_median,
            costs.leader_cpu_pct
        );
        println!("loaded window: {}", events.line());
    }
    println!(
        "{:<16} {:>6} {:>8} {:>15} {:>15} {:>16} {:>16} {:>15} {:>15}",
        "failover",
        "trials",
        "shards",
        "takeover p50 ms",
        "takeover p99 ms",
        "confirmed p50 ms",
        "confirmed p99 ms",
        "recovered p50 s",
        "recovered max s"
    );
    for failover in &scale.failovers {
        let moved: Vec<f64> = failover
            .shards_moved
            .iter()
            .map(|count| *count as f64)
            .collect();
        let moved = quantile(&moved, 0.5);
        println!(
            "{:<16} {:>6} {:>8.0} {:>15.0} {:>15.0} {:>16.0} {:>16.0} {:>15.1} {:>15.1}",
            failover.kind,
            failover.trials,
            moved,
            failover.takeover_p50_ms,
            failover.takeover_p99_ms,
            failover.confirmed_p50_ms,
            failover.confirmed_p99_ms,
            quantile(&failover.recovered_s, 0.5),
            quantile(&failover.recovered_s, 1.0)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_a_ring_of_pairs_with_shards_dealt_evenly() {
        let layout = Layout::new(4, 10);
        let services: Vec<(&str, usize, usize)> = layout
            .services
            .iter()
            .map(|(name, a, b)| (name.as_str(), *a, *b))
            .collect();
        assert_eq!(
            services,
            vec![("s0", 0, 1), ("s1", 1, 2), ("s2", 2, 3), ("s3", 3, 0)]
        );
        assert_eq!(layout.shards["s0"], vec!["s0-0", "s0-1", "s0-2"]);
        assert_eq!(layout.shards["s3"], vec!["s3-0", "s3-1"]);
        let toml = layout.toml(&BTreeMap::from([("s1-0".to_owned(), 4000)]));
        assert!(toml.contains(
            "units = [{ name = \"s3-a\", node = \"n4\" }, { name = \"s3-b\", node = \"n1\" }]"
        ));
        assert!(toml.contains("[services.ingress.\"s1-0\"]\nudp = \"127.0.0.1:4000\"\n"));
        assert_eq!(
            layout.traffic_shards(),
            vec!["s0-0", "s1-0", "s2-0", "s3-0"]
        );
        // Two nodes: one pair.
        assert_eq!(Layout::new(2, 4).services.len(), 1);
    }

    #[test]
    fn median_and_max() {
        assert_eq!(median_max(&[3.0, 1.0, 2.0]), (2.0, 3.0));
        assert_eq!(median_max(&[4.0, 1.0]), (4.0, 4.0));
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn cpu_ticks_of_this_process() {
        assert!(cpu_ticks(std::process::id()).is_ok());
        assert!(rss_mib(std::process::id()).unwrap() > 0.0);
    }
}
